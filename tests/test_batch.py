"""rl/batch.py, the one path from episodes to the learner batch: advantages of every estimator in both
action modes against float64 references, env failures masked and counted, the KL reward penalty, and
truncated episodes bootstrapped from the critic."""

import functools

import jax
import numpy as np
import pytest

from agentgen_jax import models
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import learner, policy
from agentgen_jax.rollout import Episode


@pytest.fixture(scope="module")
def tiny():
  # One narrow layer: these tests check the batch arithmetic, and compiles dominate their time.
  cfg = models.preset("tiny", num_layers=1, hidden_size=32, intermediate_size=64, num_heads=2,
                      num_kv_heads=1, head_dim=16)
  return cfg, models.init_params(cfg, jax.random.PRNGKey(0))


def episode(seed, task, turn_rewards, mode="generate", **flags):
  """An episode as the Roller records it: [obs][agent] per turn, the step reward on the turn's last agent
  token; in choose mode the agent tokens are the chosen one of three listed candidates."""
  rng = np.random.default_rng(seed)
  ep = Episode(env="babyai", task=task, max_turns=8, messages=[])
  for k, r in enumerate(turn_rewards):
    ep.add([int(x) for x in rng.integers(3, 4000, size=3)], agent=False)
    if mode == "generate":
      toks = [int(x) for x in rng.integers(3, 4000, size=2 + k % 2)]
      ep.add(toks, agent=True, logprobs=list(-rng.random(len(toks))))
    else:
      cands = [[int(x) for x in rng.integers(3, 4000, size=n)] for n in (1, 2, 3)]
      pick = (seed + k) % 3
      ep.add(cands[pick], agent=True, logprobs=list(-rng.random(len(cands[pick]))))
      ep.choices.append((cands, pick, -float(rng.random()) - 0.5))
    ep.rewards[-1] += r
    ep.turns += 1
  for name, value in flags.items():
    setattr(ep, name, value)
  return ep


def state_for(cfg, params, lcfg):
  return learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))


def lconfig(**kw):
  return learner.LearnerConfig(**dict(dict(micro_batch_size=2, mini_batch_size=4), **kw))


def units_of(batch, mode):
  return batch[policy.unit_mask_key(mode)] > 0


def test_grpo_advantages_follow_group_outcomes(tiny):
  cfg, params = tiny
  # Task a: success, failure, failure, success; task b: one success of four (rewards over two turns).
  eps = [episode(i, "a", [0.0, r]) for i, r in enumerate([1.0, 0.0, 0.0, 1.0])]
  eps += [episode(10 + i, "b", [r, 0.0]) for i, r in enumerate([0.0, 0.0, 0.5, 0.0])]
  lcfg = lconfig()
  batch, metrics = rl_batch.learner_batch(eps, state_for(cfg, params, lcfg), cfg, lcfg, "generate")
  ret = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.0])
  ref = np.zeros(8)
  for g in (slice(0, 4), slice(4, 8)):
    ref[g] = (ret[g] - ret[g].mean()) / (ret[g].std() + 1e-6)
  m = units_of(batch, "generate")
  for i in range(8):
    np.testing.assert_allclose(batch["advantages"][i][m[i]], ref[i], rtol=1e-5)
    assert np.all(batch["advantages"][i][~m[i]] == 0)
  assert batch["advantages"][0][m[0]][0] > 0 > batch["advantages"][1][m[1]][0]  # success is reinforced
  # returns: the return-to-go (gamma 1): episode 6 got its 0.5 on turn 0, so its turn-1 tokens have 0.
  assert np.all(batch["returns"][6][batch["turn_ids"][6] == 0] == 0.5)
  assert np.all(batch["returns"][6][batch["turn_ids"][6] == 1] == 0.0)
  # GRPO without KL needs no forward before the update: train_epochs reports the mismatch instead.
  assert metrics["env_failures"] == 0 and "logprob_mismatch" not in metrics
  kl = lconfig(kl_coef=0.1)
  _, with_kl = rl_batch.learner_batch(eps, state_for(cfg, params, kl), cfg, kl, "generate")
  assert with_kl["logprob_mismatch"] > 0
  assert set(learner.batch_keys("generate", lcfg)) <= set(batch)


def test_rloo_and_reinforce_advantages(tiny):
  cfg, params = tiny
  eps = [episode(i, "a", [0.0, r]) for i, r in enumerate([1.0, 0.0, 0.5])]
  out = {}
  for est in ("rloo", "reinforce"):
    lcfg = lconfig(estimator=est)
    batch, _ = rl_batch.learner_batch(eps, state_for(cfg, params, lcfg), cfg, lcfg, "generate")
    m = units_of(batch, "generate")
    out[est] = [batch["advantages"][i][m[i]] for i in range(3)]
  np.testing.assert_allclose(out["rloo"][0], 1.0 - 0.25, rtol=1e-6)
  np.testing.assert_allclose(out["rloo"][1], 0.0 - 0.75, rtol=1e-6)
  np.testing.assert_allclose(out["reinforce"][2], 0.5)  # the undiscounted return-to-go, no baseline


@pytest.mark.parametrize("mode", ["generate", "choose"])
def test_env_failure_rows_give_no_gradient_and_are_counted(tiny, mode):
  cfg, params = tiny
  good = [episode(i, "a", [0.0, r], mode) for i, r in enumerate([1.0, 0.0, 1.0])]
  # A worker crashed mid-episode: reward 0, which GRPO would otherwise read as an agent failure.
  crashed = episode(9, "a", [0.0], mode, env_error="worker died", truncated=True)
  lcfg = lconfig(micro_batch_size=1, mini_batch_size=1, critic="shared", kl_coef=0.1, entropy_coef=0.01)
  state = state_for(cfg, params, lcfg)
  with_crash, metrics = rl_batch.learner_batch(good + [crashed], state, cfg, lcfg, mode)
  without, _ = rl_batch.learner_batch(good, state, cfg, lcfg, mode)
  assert metrics["env_failures"] == 1
  assert not units_of(with_crash, mode)[3].any()
  # The others' advantages are those of the group without the crashed episode.
  np.testing.assert_allclose(with_crash["advantages"][:3], without["advantages"], atol=1e-6)
  if mode == "choose":
    return  # the same masked sums as generate mode: one gradient comparison (two compiles) is enough
  grads = jax.jit(functools.partial(learner.loss_gradients, cfg, lcfg, mode, None))
  keys = learner.batch_keys(mode, lcfg)
  g_with, m_with = grads(state, {k: with_crash[k] for k in keys})
  g_without, m_without = grads(state, {k: without[k] for k in keys})
  for a, b in zip(jax.tree.leaves(g_with), jax.tree.leaves(g_without)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(m_with["loss"]), float(m_without["loss"]), rtol=1e-6)


def test_kl_reward_penalty_enters_the_episode_return(tiny):
  cfg, params = tiny
  eps = [episode(i, "a", [0.0, r]) for i, r in enumerate([1.0, 0.0, 0.0, 1.0])]
  lcfg = lconfig(kl_coef=0.5, kl_mode="reward", kl_estimator="k1")
  state = state_for(cfg, params, lcfg)
  # A reference that differs from the policy: its logits are shifted per token, so the KL is not zero.
  ref = jax.tree.map(lambda x: x, state.ref_params)
  ref["embed"]["embedding"] = ref["embed"]["embedding"] * 3.0
  state = state.replace(ref_params=ref)
  batch, metrics = rl_batch.learner_batch(eps, state, cfg, lcfg, "generate")
  ev = learner.evaluate_batch(cfg, state, batch, "generate", 2, lcfg)
  m = units_of(batch, "generate")
  kl = np.where(m, ev["logprobs"].astype(np.float64) - ev["ref_logprobs"], 0.0)
  ret = np.array([1.0, 0.0, 0.0, 1.0]) - 0.5 * kl.sum(1)
  ref_adv = (ret - ret.mean()) / (ret.std() + 1e-6)
  for i in range(4):
    np.testing.assert_allclose(batch["advantages"][i][m[i]], ref_adv[i], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(metrics["kl_reward"], kl.sum() / m.sum(), rtol=1e-4)
  assert abs(metrics["kl_reward"]) > 1e-3


@pytest.mark.parametrize("mode", ["generate", "choose"])
def test_gae_with_bootstrap_from_the_value_at_the_cut(tiny, mode):
  cfg, params = tiny
  eps = [episode(0, "a", [0.0, 1.0], mode), episode(1, "a", [0.5, 0.0, 0.0], mode, out_of_turns=True),
         episode(2, "b", [0.0, 0.25], mode, truncated=True)]
  gamma = 0.9
  out = {}
  for boot in (False, True):
    lcfg = lconfig(estimator="token_gae", critic="shared", gamma=gamma, lam=0.7, bootstrap_truncated=boot)
    batch, metrics = rl_batch.learner_batch(eps, state_for(cfg, params, lcfg), cfg, lcfg, mode)
    out[boot] = batch
  assert metrics["truncated"] == 2
  ev = learner.evaluate_batch(cfg, state_for(cfg, params, lcfg), out[True], mode, 2, lcfg)
  m = units_of(out[True], mode)
  for i in range(3):
    last = np.nonzero(m[i])[0][-1]
    r = out[True]["rewards"][i, last]
    # The terminal episode ends with its reward; a cut one adds gamma * V(state after its last token).
    boot = gamma * ev["last_value"][i] if i > 0 else 0.0
    np.testing.assert_allclose(out[True]["returns"][i, last], r + boot, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[False]["returns"][i, last], r, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(ev["last_value"][1:]) > 1e-4)  # the bootstrap did change something


def test_last_value_is_the_critic_at_the_last_main_token(tiny):
  cfg, params = tiny
  eps = [episode(0, "a", [0.0, 1.0]), episode(1, "a", [0.5, 0.0, 0.0])]
  lcfg = lconfig(critic="shared")
  state = state_for(cfg, params, lcfg)
  batch, _ = rl_batch.learner_batch(eps, state, cfg, lcfg, "generate")
  ev = learner.evaluate_batch(cfg, state, batch, "generate", 2, lcfg)
  _, hidden, _ = models.forward(cfg, params, batch["tokens"], batch["positions"], batch["valid"])
  v = np.asarray(models.value.values(state.critic_params, hidden))
  for i, ep in enumerate(eps):
    np.testing.assert_allclose(ev["last_value"][i], v[i, len(ep.tokens) - 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["generate", "choose"])
def test_every_estimator_gives_a_batch_the_update_takes(tiny, mode):
  cfg, params = tiny
  eps = [episode(i, "a", [0.0, float(i % 2)], mode) for i in range(4)]
  # Evaluation compiles once per critic kind: two kinds here (test_learner covers "separate").
  for estimator, critic in [("grpo", "shared"), ("rloo", "none"), ("reinforce", "none"),
                            ("token_gae", "shared"), ("turn_gae", "shared")]:
    lcfg = lconfig(estimator=estimator, critic=critic, kl_coef=0.01, gamma=0.95, lam=0.9)
    state = state_for(cfg, params, lcfg)
    batch, metrics = rl_batch.learner_batch(eps, state, cfg, lcfg, mode)
    assert set(learner.batch_keys(mode, lcfg)) <= set(batch), estimator
    assert all(np.isfinite(v) for v in metrics.values()), (estimator, metrics)
    m = units_of(batch, mode)
    assert np.abs(batch["advantages"][m]).max() > 0 and np.all(batch["advantages"][~m] == 0), estimator
    if estimator == "grpo":  # grpo with a critic used to reach the update without old_values
      _, upd = learner.make_update(cfg, lcfg, mode)(state, batch)
      assert np.isfinite(float(upd["loss"])) and np.isfinite(float(upd["value_loss"])), estimator


@pytest.mark.parametrize("mode", ["generate", "choose"])
def test_a_floor_pads_every_dim_and_leaves_the_update_unchanged(tiny, mode):
  cfg, params = tiny
  eps = [episode(i, "a", [0.0, float(i % 2), 1.0], mode) for i in range(4)]
  lcfg = lconfig(mini_batch_size=4, micro_batch_size=4)
  state = state_for(cfg, params, lcfg)
  plain, _ = rl_batch.learner_batch(eps, state, cfg, lcfg, mode)
  dims = rl_batch.batch_dims(plain)
  assert set(dims) == ({"t"} if mode == "generate" else {"t", "n_in", "a", "n_pred", "m", "c", "p", "k"})
  low, _ = rl_batch.learner_batch(eps, state, cfg, lcfg, mode, floor={k: 1 for k in dims})
  assert rl_batch.batch_dims(low) == dims  # a floor below the need changes nothing
  floor = {k: 2 * v for k, v in dims.items()}
  padded, _ = rl_batch.learner_batch(eps, state, cfg, lcfg, mode, floor=floor)
  assert rl_batch.batch_dims(padded) == floor
  update = learner.make_update(cfg, lcfg, mode)  # donates the state: a fresh one for each call
  (s1, m1), (s2, m2) = update(state, plain), update(state_for(cfg, params, lcfg), padded)
  for key in ("loss", "policy_loss", "entropy", "grad_norm"):
    np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=1e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_turn_gae_in_generate_mode_gives_one_advantage_per_turn(tiny):
  cfg, params = tiny
  eps = [episode(i, "a", [0.2, 0.0, float(i)]) for i in range(2)]
  lcfg = lconfig(estimator="turn_gae", critic="shared", gamma=0.9, lam=0.8)
  batch, _ = rl_batch.learner_batch(eps, state_for(cfg, params, lcfg), cfg, lcfg, "generate")
  m = units_of(batch, "generate")
  for i in range(2):
    for k in range(3):
      vals = batch["advantages"][i][m[i] & (batch["turn_ids"][i] == k)]
      assert len(vals) >= 2 and np.all(vals == vals[0])


def test_turn_gae_in_choose_mode_is_token_gae_over_the_turns(tiny):
  """In the choose mode each loss unit already is a turn, so turn_gae and token_gae give the same batch
  (the learning test's token_gae run therefore also stands for turn_gae in this mode)."""
  cfg, params = tiny
  eps = [episode(i, "a", [0.2, 0.0, float(i % 2)], "choose") for i in range(4)]
  batches = {}
  for estimator in ("token_gae", "turn_gae"):
    lcfg = lconfig(estimator=estimator, critic="shared", gamma=0.9, lam=0.8)
    batches[estimator], _ = rl_batch.learner_batch(eps, state_for(cfg, params, lcfg), cfg, lcfg, "choose")
  m = units_of(batches["token_gae"], "choose")
  assert np.abs(batches["token_gae"]["advantages"][m]).max() > 0
  for key in ("advantages", "returns"):
    np.testing.assert_array_equal(batches["turn_gae"][key], batches["token_gae"][key])
