"""The learner on the tiny model: choice-mode log-probs against separate forwards of each candidate,
exact micro-batch reduction, 8 simulated devices against one, and PPO moving log-probs the right way."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax import models
from agentgen_jax.rl import advantages, learner, policy
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rollout import Episode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
  cfg = models.preset("tiny")
  return cfg, models.init_params(cfg, jax.random.PRNGKey(0))


def token_batch(seed, b=8, t=24, vocab=4096):
  """A generate-mode batch: [obs][agent][obs][agent] rows, some right-padded, with random RL fields."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, size=(b, t)).astype(np.int32)
  valid = np.ones((b, t), bool)
  loss_mask = np.zeros((b, t), np.float32)
  for i in range(b):
    length = t - int(rng.integers(0, 6))
    valid[i, length:] = False
    loss_mask[i, 5:9] = 1.0
    loss_mask[i, 13:min(length, 13 + int(rng.integers(0, 6)))] = 1.0  # 4 to 9 loss tokens a row
  return dict(tokens=tokens, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)), valid=valid,
              loss_mask=loss_mask,
              rewards=np.where(loss_mask > 0, rng.normal(size=(b, t)), 0).astype(np.float32),
              advantages=rng.normal(size=(b, t)).astype(np.float32),
              returns=rng.normal(size=(b, t)).astype(np.float32))


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tree_rel_err(a, b):
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  return rel_err(flat(a), flat(b))


def param_delta(state, params0):
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), state.params,
                      params0)


# ---------------------------------------------------------------------------------------------------------
# Choice mode: a packed tree of candidates must score each candidate as if it were forwarded on its own.

def choice_batch(rows):
  """Packs episodes into the choose-mode layout (rl/batch.py choice_batch).

  rows: list of episodes; an episode is a list of turns (context tokens, candidates [token lists], chosen).
  Returns the batch dict and, per row, [(context prefix, candidate token lists, chosen)] for references.
  """
  episodes, refs = [], []
  for turns in rows:
    ep, ref = Episode(env="babyai", task="t", max_turns=len(turns), messages=[]), []
    for ctx, cands, pick in turns:
      ep.add(ctx, agent=False)
      ref.append((list(ep.tokens), cands, pick))
      ep.add(cands[pick], agent=True)
      ep.choices.append((cands, pick, 0.0))
    episodes.append(ep)
    refs.append(ref)
  return rl_batch.choice_batch(episodes), refs


def random_episodes(seed, b=2, vocab=4096):
  rng = np.random.default_rng(seed)
  tok = lambda n: [int(x) for x in rng.integers(3, vocab, size=n)]
  rows = []
  for i in range(b):
    turns = []
    for _ in range(2 + i % 2):
      cands = [tok(int(rng.integers(1, 4))) for _ in range(int(rng.integers(2, 4)))]
      turns.append((tok(int(rng.integers(2, 5))), cands, int(rng.integers(0, len(cands)))))
    rows.append(turns)
  return rows


def reference_choice(cfg, params, head, refs):
  """Each candidate forwarded on its own after its context (plain causal attention, one row per
  sequence, right-padded to one length so that one jitted forward serves them all): per-turn log-prob,
  entropy and value (read at the context's last token of a context-only row)."""
  seqs = []
  for row in refs:
    for ctx, cands, _ in row:
      seqs += [ctx + cand for cand in cands] + [ctx]
  length = max(len(s) for s in seqs)
  tokens = np.zeros((len(seqs), length), np.int32)
  for i, seq in enumerate(seqs):
    tokens[i, :len(seq)] = seq
  positions = np.tile(np.arange(length, dtype=np.int32), (len(seqs), 1))
  logits, hidden = jax.jit(lambda p, t, q: models.forward(cfg, p, t, q)[:2])(params, tokens, positions)
  logp_all = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  value_all = np.asarray(models.value.values(head, hidden), np.float64)
  out, n = [], 0
  for row in refs:
    logps, ents, vals = [], [], []
    for ctx, cands, pick in row:
      scores = []
      for cand in cands:
        scores.append(sum(logp_all[n, len(ctx) - 1 + m, tok] for m, tok in enumerate(cand)))
        n += 1
      scores = np.array(scores)
      log_pi = scores - scores.max() - np.log(np.sum(np.exp(scores - scores.max())))
      logps.append(log_pi[pick])
      ents.append(-np.sum(np.exp(log_pi) * log_pi))
      vals.append(value_all[n, len(ctx) - 1])
      n += 1
    out.append((logps, ents, vals))
  return out


def test_choice_logprobs_equal_separate_candidate_forwards(tiny):
  cfg, params = tiny
  head = models.value.init_value_head(cfg, jax.random.PRNGKey(1))
  batch, refs = choice_batch(random_episodes(0, b=3))
  units = jax.jit(lambda p, h, bt: policy.units("choose", cfg, p, bt, critic="shared", critic_params=h))
  logp, ent, values, _ = units(params, head, batch)
  for i, (r_logp, r_ent, r_val) in enumerate(reference_choice(cfg, params, head, refs)):
    k = len(r_logp)
    np.testing.assert_allclose(np.asarray(logp)[i, :k], r_logp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent)[i, :k], r_ent, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(values)[i, :k], r_val, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(logp)[i, k:] == 0)  # padded turns


# ---------------------------------------------------------------------------------------------------------
# Token mode.

def test_evaluate_batch_logprobs_values_and_mismatch(tiny):
  cfg, params = tiny
  lcfg = learner.LearnerConfig(critic="shared", kl_coef=0.1, micro_batch_size=2, mini_batch_size=4)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(0))
  batch = token_batch(1, b=3)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)
  logits, hidden, _ = models.forward(cfg, params, batch["tokens"], batch["positions"], batch["valid"])
  lp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  ref = np.zeros(batch["tokens"].shape)
  for i in range(3):
    for t in range(1, ref.shape[1]):
      ref[i, t] = lp[i, t - 1, batch["tokens"][i, t]]
  np.testing.assert_allclose(ev["logprobs"], ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ev["ref_logprobs"], ev["logprobs"], rtol=1e-6)  # the reference is a copy
  v = np.asarray(models.value.values(state.critic_params, hidden))
  np.testing.assert_allclose(ev["old_values"][:, 1:], v[:, :-1], rtol=1e-5, atol=1e-6)
  batch["old_logprobs"] = ev["logprobs"] + np.where(batch["loss_mask"] > 0, 0.5, 7.0)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)
  assert abs(ev["logprob_mismatch"] - 0.5) < 1e-5


def test_train_epochs_reports_the_first_updates_mismatch_like_evaluate_batch(tiny):
  """Without a critic or a reference no forward runs before the update: the first update's own forward
  measures the sampler/learner log-prob mismatch, equal to evaluate_batch's on the same rows (one
  minibatch), before the update moves the params (later epochs do not count)."""
  cfg, params = tiny
  lcfg = learner.LearnerConfig(lr=3e-3, micro_batch_size=2, mini_batch_size=8, epochs=2)
  assert not lcfg.needs_evaluation
  assert learner.LearnerConfig(critic="shared").needs_evaluation and learner.LearnerConfig(
      kl_coef=0.1).needs_evaluation
  batch = token_batch(4)
  state = _fresh(cfg, params, lcfg)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)
  rng = np.random.default_rng(0)
  batch = dict(batch, old_logprobs=(ev["logprobs"] + 0.3 * rng.normal(size=ev["logprobs"].shape)).astype(
      np.float32), advantages=rng.normal(size=ev["logprobs"].shape).astype(np.float32))
  want = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)
  _, metrics = learner.train_epochs(learner.make_update(cfg, lcfg, "generate"), state, batch,
                                    jax.random.PRNGKey(0), lcfg)
  np.testing.assert_allclose(metrics["logprob_mismatch"], want["logprob_mismatch"], rtol=1e-5)
  np.testing.assert_allclose(metrics["mismatch_kl"], want["mismatch_kl"], rtol=1e-4)
  assert metrics["mismatch_kl"] != metrics["approx_kl"]   # approx_kl averages both epochs' updates


def _fresh(cfg, params, lcfg):
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(3))


def _rl_fields(cfg, params, lcfg, batch):
  state = _fresh(cfg, params, lcfg)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)
  rng = np.random.default_rng(5)
  batch = dict(batch, old_logprobs=ev["logprobs"] + 0.1 * rng.normal(size=ev["logprobs"].shape),
               old_values=ev["old_values"], ref_logprobs=ev["ref_logprobs"] - 0.05)
  return {k: np.asarray(v, np.float32) if np.asarray(v).dtype == np.float64 else v for k, v in batch.items()}


def test_microbatched_update_equals_full_batch_update(tiny):
  cfg, params = tiny
  # eps = 1 makes the first AdamW step linear in the gradient (-lr * g / (|g| + 1)), so comparing the
  # parameter deltas compares the gradients (with eps = 1e-8 it is sign(g), blind to gradient errors);
  # lr = 1 keeps the deltas far above the float32 rounding of the parameters; no clipping, so a scaled
  # gradient would show.
  base = dict(lr=1.0, eps=1.0, max_grad_norm=1e6, critic="shared", kl_coef=0.1, kl_mode="loss",
              entropy_coef=0.01, mini_batch_size=8)
  micro = learner.LearnerConfig(micro_batch_size=2, **base)
  full = learner.LearnerConfig(micro_batch_size=8, **base)
  batch = _rl_fields(cfg, params, micro, token_batch(2))
  results = []
  for lcfg in (micro, full):
    state, metrics = learner.make_update(cfg, lcfg, "generate")(_fresh(cfg, params, lcfg), batch)
    results.append((param_delta(state, params), state.critic_params, jax.device_get(metrics)))
  (d_micro, c_micro, m_micro), (d_full, c_full, m_full) = results
  assert tree_rel_err(d_micro, d_full) < 1e-5
  assert tree_rel_err(c_micro, c_full) < 1e-5
  for key in ("policy_loss", "value_loss", "kl", "entropy", "grad_norm", "clip_frac", "explained_variance"):
    # Float32 sums of ~100 signed terms: relative 1e-5 or absolute 1e-6 (cancellation, e.g. the KL).
    np.testing.assert_allclose(m_micro[key], m_full[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # Exact reduction, not a mean of micro-batch means: the rows hold different numbers of loss tokens.
  assert m_full["n_units"] == batch["loss_mask"].sum()


def test_ppo_epochs_raise_logprobs_of_positive_advantage_tokens(tiny):
  cfg, params = tiny
  lcfg = learner.LearnerConfig(lr=3e-3, micro_batch_size=2, mini_batch_size=4, epochs=3)
  state = _fresh(cfg, params, lcfg)
  batch = token_batch(3, b=6)
  ev = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)
  sign = np.where(np.arange(batch["tokens"].shape[1]) % 2 == 0, 1.0, -1.0)[None]
  batch.update(old_logprobs=ev["logprobs"], advantages=(sign * batch["loss_mask"]).astype(np.float32))
  update = learner.make_update(cfg, lcfg, "generate")
  state, metrics = learner.train_epochs(update, state, batch, jax.random.PRNGKey(7), lcfg)
  assert int(state.step) == 6  # 3 epochs x 2 minibatches (6 rows: 4, then 2 padded with masked rows)
  after = learner.evaluate_batch(cfg, state, batch, "generate", micro_batch_size=4)["logprobs"]
  diff = (after - ev["logprobs"])
  pos = (batch["loss_mask"] > 0) & (sign > 0)
  neg = (batch["loss_mask"] > 0) & (sign < 0)
  assert diff[pos].mean() > 0.05 and diff[neg].mean() < -0.05, (diff[pos].mean(), diff[neg].mean())
  assert metrics["clip_frac"] > 0  # later epochs hit the trust region
  # Same seed, same numbers.
  again, _ = learner.train_epochs(update, _fresh(cfg, params, lcfg), batch, jax.random.PRNGKey(7), lcfg)
  assert tree_rel_err(again.params, state.params) == 0.0


# ---------------------------------------------------------------------------------------------------------
# 8 simulated devices: the sharded update, evaluation and SFT step equal their 1-device versions.

_SHARDED_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
  from agentgen_jax import models, parallel
  from agentgen_jax.rl import learner, sft
  import test_learner as tl
  assert jax.device_count() == 8, jax.devices()
  cfg = models.preset("tiny"); params = models.init_params(cfg, jax.random.PRNGKey(0))
  # seq-mean-token-mean: per-row weights from the whole (sharded) minibatch, the hardest aggregation to get
  # right across devices.
  lcfg = learner.LearnerConfig(lr=1.0, eps=1.0, max_grad_norm=1e6, critic="shared", kl_coef=0.1,
                               entropy_coef=0.01, micro_batch_size=8, mini_batch_size=16,
                               loss_agg="seq-mean-token-mean")
  batch = tl._rl_fields(cfg, params, lcfg, tl.token_batch(4, b=16))
  mesh = parallel.make_mesh(axes=("data",))
  s1, m1 = learner.make_update(cfg, lcfg, "generate")(tl._fresh(cfg, params, lcfg), batch)
  s8 = jax.device_put(tl._fresh(cfg, params, lcfg), parallel.replicated(mesh))
  s8, m8 = learner.make_update(cfg, lcfg, "generate", mesh=mesh)(s8, batch)
  m1, m8 = jax.device_get((m1, m8))
  fresh = tl._fresh(cfg, params, lcfg)
  e1 = learner.evaluate_batch(cfg, fresh, batch, "generate", micro_batch_size=8)
  e8 = learner.evaluate_batch(cfg, fresh, batch, "generate", micro_batch_size=8, mesh=mesh)
  t1, tm1 = sft.make_sft_step(cfg, lcfg)(tl._fresh(cfg, params, lcfg), batch)
  t8 = jax.device_put(tl._fresh(cfg, params, lcfg), parallel.replicated(mesh))
  t8, tm8 = sft.make_sft_step(cfg, lcfg, mesh=mesh)(t8, batch)
  out = dict(params=tl.tree_rel_err(tl.param_delta(s8, params), tl.param_delta(s1, params)),
             critic=tl.tree_rel_err(s8.critic_params, s1.critic_params),
             metrics={{k: abs(float(m8[k]) - float(m1[k])) / (abs(float(m1[k])) + 0.1) for k in m1}},
             evaluate={{k: tl.rel_err(e8[k], e1[k]) for k in ("logprobs", "old_values", "ref_logprobs")}},
             sft=tl.tree_rel_err(tl.param_delta(t8, params), tl.param_delta(t1, params)),
             sft_loss=tl.rel_err(tm8["loss"], tm1["loss"]),
             sharded=str(s8.params["embed"]["embedding"].sharding))
  print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_update_on_8_simulated_devices_equals_1_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  script = _SHARDED_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out["params"] < 1e-5 and out["critic"] < 1e-5, out
  assert all(err < 1e-5 for err in out["metrics"].values()), out
  assert all(err < 1e-5 for err in out["evaluate"].values()), out
  assert out["sft"] < 1e-5 and out["sft_loss"] < 1e-5, out


@pytest.mark.slow
def test_choice_mode_ppo_with_separate_critic_moves_chosen_actions(tiny):
  cfg, params = tiny
  lcfg = learner.LearnerConfig(lr=3e-3, critic="separate", kl_coef=0.01, kl_mode="reward", epochs=4,
                               micro_batch_size=2, mini_batch_size=4)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(0))
  batch, _ = choice_batch(random_episodes(1, b=4))
  good = np.array([1.0, 1.0, -1.0, -1.0], np.float32)[:, None]
  batch["rewards"] = (good * batch["unit_mask"]).astype(np.float32)
  ev = learner.evaluate_batch(cfg, state, batch, "choose", micro_batch_size=4, lcfg=lcfg)
  adv, ret = advantages.token_gae(batch["rewards"], ev["old_values"], batch["unit_mask"], 1.0, 1.0)
  batch.update(old_logprobs=ev["logprobs"], old_values=ev["old_values"], ref_logprobs=ev["ref_logprobs"],
               advantages=np.asarray(adv), returns=np.asarray(ret))
  before = batch["old_logprobs"]
  update = learner.make_update(cfg, lcfg, "choose")
  state, metrics = learner.train_epochs(update, state, batch, jax.random.PRNGKey(1), lcfg)
  after = learner.evaluate_batch(cfg, state, batch, "choose", micro_batch_size=4)
  m = batch["unit_mask"] > 0
  diff = after["logprobs"] - before
  assert diff[:2][m[:2]].mean() > 0.05 and diff[2:][m[2:]].mean() < -0.05, diff
  # The separate critic learnt the returns: its error dropped.
  err = lambda v: np.mean(np.square(v - batch["returns"])[m])
  assert err(after["old_values"]) < 0.5 * err(batch["old_values"])
  assert np.isfinite(metrics["value_loss"]) and metrics["explained_variance"] > 0


def test_choice_scores_at_a_temperature_are_the_tempered_softmax_over_candidates():
  # One row, two turns: candidates 0, 1 (turn 0) and 2, 3, 4 (turn 1); nodes 0-1 are candidate 0's tokens,
  # 2 candidate 1's, 3-4 candidate 2's, 5 candidate 3's, 6 candidate 4's; turn 0 chose 1, turn 1 chose 2.
  node_logp = np.array([[-1.0, -0.5, -2.0, -0.3, -0.2, -1.5, -0.1, 0.0]], np.float32)
  cand_path = np.array([[[0, 1], [2, -1], [3, 4], [5, -1], [6, -1]]])
  cand_turn, chosen = np.array([[0, 0, 1, 1, 1]]), np.array([[1, 2]])
  for temperature in (1.0, 0.7):
    score = policy.candidate_scores(node_logp, cand_path)
    logp, ent = policy.choice_scores(score, cand_turn, chosen, temperature)
    for k, (scores, pick) in enumerate([(np.array([-1.5, -2.0]), 1), (np.array([-0.5, -1.5, -0.1]), 0)]):
      z = scores / temperature
      log_pi = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
      np.testing.assert_allclose(float(logp[0, k]), log_pi[pick], rtol=1e-6)
      np.testing.assert_allclose(float(ent[0, k]), -np.sum(np.exp(log_pi) * log_pi), rtol=1e-5)
