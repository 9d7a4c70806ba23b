"""Choose-mode learning scores each turn's candidates as branches off the shared episode context
(rl/batch.py choice_batch, models.forward_branches): on real TextCraft and BabyAI episodes it must give the
per-candidate log-probs, choice log-probs, values, loss and gradients of the dense formulation it replaced
(every candidate packed after the context, one [B, T, T] tree mask), kept here as the reference."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax import models, sampling
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import losses, policy
from agentgen_jax.rollout import Episode

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "choose_episodes.json")


def real_episodes():
  """Two TextCraft and two BabyAI episodes of the untrained tiny model in choose mode (6 and 4 turns, ~500
  and ~700 context tokens; TextCraft lists ~14 candidates a turn), recorded from rollout.Roller with
  RolloutConfig(mode="choose", max_turns=6, max_episode_tokens=768) on easy train tasks."""
  with open(DATA) as f:
    records = json.load(f)
  out = []
  for r in records:
    ep = Episode(env=r["env"], task=r["task"], max_turns=6, messages=[])
    for key in ("tokens", "loss_mask", "logprobs", "rewards", "turn_ids", "turns"):
      setattr(ep, key, r[key])
    ep.choices = [(cands, choice, lp) for cands, choice, lp in r["choices"]]
    out.append(ep)
  return out


# ---- the dense reference: every candidate packed after the context, one [B, T, T] tree mask -------------

def dense_batch(episodes):
  """The replaced layout: tokens/positions/valid/pred_pos/cand_id [B, T], attn_mask [B, T, T] (a candidate
  token sees the context before its turn and its own earlier tokens), cand_turn [B, C], chosen/state_pos
  [B, K]."""
  rows = []
  for ep in episodes:
    tokens, positions = list(ep.tokens), list(range(len(ep.tokens)))
    pred, cand_id, branch = list(range(-1, len(tokens) - 1)), [-1] * len(tokens), [-1] * len(tokens)
    cand_turn, chosen, state_pos = [], [], []
    for k, ((cands, choice, _), (s, e)) in enumerate(zip(ep.choices, rl_batch._agent_spans(ep.loss_mask))):
      state_pos.append(s - 1)
      chosen.append(len(cand_turn) + choice)
      for c, cand in enumerate(cands):
        cid = len(cand_turn)
        cand_turn.append(k)
        if c == choice:
          cand_id[s:e] = [cid] * (e - s)
          continue
        base = len(tokens)
        for j, tok in enumerate(cand):
          tokens.append(tok)
          positions.append(s + j)
          pred.append(s - 1 if j == 0 else base + j - 1)
          cand_id.append(cid)
          branch.append(s)
    rows.append((tokens, positions, pred, cand_id, branch, cand_turn, chosen, state_pos))
  b, t = len(rows), sampling.bucket(max(len(r[0]) for r in rows))
  c, k = max(len(r[5]) for r in rows), max(len(r[6]) for r in rows)
  out = {"tokens": np.zeros((b, t), np.int32), "positions": np.zeros((b, t), np.int32),
         "valid": np.zeros((b, t), bool), "pred_pos": np.zeros((b, t), np.int32),
         "cand_id": np.full((b, t), -1, np.int32), "attn_mask": np.zeros((b, t, t), bool),
         "cand_turn": np.full((b, c), -1, np.int32), "chosen": np.full((b, k), -1, np.int32),
         "state_pos": np.zeros((b, k), np.int32)}
  for row, (tokens, positions, pred, cand_id, branch, cand_turn, chosen, state_pos) in enumerate(rows):
    n = len(tokens)
    out["tokens"][row, :n], out["positions"][row, :n], out["valid"][row, :n] = tokens, positions, True
    out["pred_pos"][row, :n], out["cand_id"][row, :n] = np.maximum(pred, 0), cand_id
    branch, ids = np.asarray(branch), np.asarray(cand_id)
    main = branch < 0
    mask = np.zeros((n, n), bool)
    mask[np.ix_(main, main)] = np.tril(np.ones((main.sum(), main.sum()), bool))
    for q in np.nonzero(~main)[0]:
      mask[q, :branch[q]] = True
      mask[q] |= ~main & (ids == ids[q]) & (np.arange(n) <= q)
    out["attn_mask"][row, :n, :n] = mask
    out["cand_turn"][row, :len(cand_turn)] = cand_turn
    out["chosen"][row, :len(chosen)], out["state_pos"][row, :len(state_pos)] = chosen, state_pos
  return out


def dense_scores(cfg, params, batch):
  """(candidate scores [B, C], hidden [B, T, D]) of the dense layout: one forward under the tree mask."""
  logits, hidden, _ = models.forward(cfg, params, batch["tokens"], batch["positions"], batch["valid"],
                                     attn_mask=batch["attn_mask"])
  lse = jax.nn.logsumexp(logits, axis=-1)
  rows = jnp.arange(logits.shape[0])[:, None]
  token_logp = logits[rows, batch["pred_pos"], batch["tokens"]] - lse[rows, batch["pred_pos"]]
  c = batch["cand_turn"].shape[1]
  slot = jnp.where(batch["cand_id"] >= 0, batch["cand_id"], c)
  return jnp.zeros(batch["cand_turn"].shape).at[rows, slot].add(token_logp, mode="drop"), hidden


def branch_scores(cfg, params, batch):
  """(candidate scores [B, C], hidden [B, T, D]) of the branch layout (policy.choose_units' steps)."""
  hidden = models.forward_branches(cfg, params, batch["tokens"], batch["positions"], batch["valid"],
                                   policy._branches(batch))
  node_logp = policy.node_logprobs(cfg, params, hidden, batch["pred_rows"], batch["node_row"],
                                   batch["node_token"])
  return policy.candidate_scores(node_logp, batch["cand_path"]), hidden[:, :batch["tokens"].shape[1]]


def rl_loss(scores, hidden, head, batch, fields):
  """A PPO-style loss of the candidate scores and values: clipped surrogate plus value loss, per turn."""
  logp, entropy = policy.choice_scores(scores, batch["cand_turn"], batch["chosen"], 0.7)
  values = models.value.values(head, jnp.take_along_axis(hidden, batch["state_pos"][..., None], axis=1))
  mask = fields["unit_mask"] > 0
  pl, _ = losses.policy_surrogate(logp, fields["old_logprobs"], fields["advantages"], 0.2, 0.28)
  vl = losses.value_loss(values, fields["old_values"], fields["returns"], 0.2)
  return losses.masked_sum(pl + 0.5 * vl - 0.01 * entropy, mask), (logp, values)


@pytest.fixture(scope="module")
def setup():
  # Two layers: a branch's keys in layer 2 depend on what layer 1 let it see; more only cost compile time.
  cfg = models.preset("tiny", num_layers=2)
  params = models.init_params(cfg, jax.random.PRNGKey(0))
  head = models.value.init_value_head(cfg, jax.random.PRNGKey(1))
  episodes = real_episodes()
  return cfg, params, head, episodes, rl_batch.choice_batch(episodes), dense_batch(episodes)


@pytest.fixture(scope="module")
def pair(setup):
  """One TextCraft and one BabyAI episode (the gradient's backward at the dense layout's length is slow)."""
  cfg, params, head, episodes, _, _ = setup
  episodes = [episodes[0], episodes[3]]
  return cfg, params, head, episodes, rl_batch.choice_batch(episodes), dense_batch(episodes)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_episodes_exercise_shared_prefixes(setup):
  """The recorded turns hold what the trie must get right: candidates sharing a branch prefix
  (TextCraft's "craft ..."), and candidates sharing their first tokens with the chosen one (BabyAI's
  "turn left" / "turn right")."""
  _, _, _, episodes, batch, dense = setup
  n_candidate_tokens = (dense["cand_id"] >= 0).sum()
  n_branch_inputs = (batch["branch_context"] > 1).sum()
  assert n_branch_inputs < 0.9 * (n_candidate_tokens - sum(ep.loss_mask.count(1) for ep in episodes))
  shares_chosen = [any(c[0] == cands[choice][0] for i, c in enumerate(cands) if i != choice)
                   for ep in episodes for cands, choice, _ in ep.choices]
  assert any(shares_chosen)


def test_candidate_scores_and_values_equal_the_dense_formulation(setup):
  cfg, params, head, _, batch, dense = setup
  new, h_new = jax.jit(lambda p: branch_scores(cfg, p, batch))(params)
  ref, h_ref = jax.jit(lambda p: dense_scores(cfg, p, dense))(params)
  real = dense["cand_turn"] >= 0
  c = dense["cand_turn"].shape[1]
  assert rel_err(np.asarray(new)[:, :c][real], np.asarray(ref)[real]) < 1e-5
  at_state = lambda h: np.take_along_axis(np.asarray(h), batch["state_pos"][..., None], axis=1)
  assert rel_err(at_state(h_new), at_state(h_ref)) < 1e-5


def test_choice_logprobs_loss_and_gradients_equal_the_dense_formulation(pair):
  cfg, params, head, _, batch, dense = pair
  rng = np.random.default_rng(0)
  k = batch["unit_mask"].shape[1]
  shape = batch["unit_mask"].shape
  fields = {"unit_mask": batch["unit_mask"], "old_logprobs": -rng.random(shape).astype(np.float32),
            "advantages": rng.normal(size=shape).astype(np.float32),
            "returns": rng.normal(size=shape).astype(np.float32),
            "old_values": rng.normal(size=shape).astype(np.float32) * 0.1}

  def loss_new(p, h):
    scores, hidden = branch_scores(cfg, p, batch)
    return rl_loss(scores, hidden, h, batch, fields)

  def loss_ref(p, h):
    scores, hidden = dense_scores(cfg, p, dense)
    kd = dense["chosen"].shape[1]
    pad = lambda x, v: jnp.pad(x, ((0, 0), (0, k - kd)), constant_values=v)
    dense_k = dict(dense, chosen=pad(jnp.asarray(dense["chosen"]), -1),
                   state_pos=pad(jnp.asarray(dense["state_pos"]), 0))
    return rl_loss(scores, hidden, h, dense_k, fields)

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, head)
  (l_new, (lp_new, v_new)), g_new = grad(loss_new)
  (l_ref, (lp_ref, v_ref)), g_ref = grad(loss_ref)
  mask = batch["unit_mask"] > 0
  assert rel_err(np.asarray(lp_new)[mask], np.asarray(lp_ref)[mask]) < 1e-5
  assert rel_err(np.asarray(v_new)[mask], np.asarray(v_ref)[mask]) < 1e-5
  assert rel_err(l_new, l_ref) < 1e-5
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  assert rel_err(flat(g_new), flat(g_ref)) < 1e-5
  assert np.abs(flat(g_ref)).max() > 0


_SHARDED = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  sys.path.insert(0, {tests!r})
  from agentgen_jax import models, parallel
  from agentgen_jax.rl import batch as rl_batch
  from agentgen_jax.rl import learner
  import test_choice_branches as tc
  assert jax.device_count() == 4, jax.devices()
  cfg = models.preset("tiny", num_layers=2)
  lora_cfg = models.LoraConfig(rank=4)
  base = models.init_params(cfg, 0)
  params = models.lora.attach(base, models.lora.init(cfg, lora_cfg, jax.random.PRNGKey(1)), lora_cfg)
  # eps 1: Adam near plain SGD, so that float noise on near-zero gradients is not normalised into steps.
  lcfg = learner.LearnerConfig(lr=1.0, eps=1.0, max_grad_norm=1e6, critic="separate", kl_coef=0.1,
                               micro_batch_size=4, mini_batch_size=8)
  episodes = tc.real_episodes() + tc.real_episodes()
  for ep in episodes:
    ep.rewards[-1] = float(len(ep.tokens) % 2)
  out = {{}}
  for name, mesh in (("one", None), ("data:2,fsdp:2", parallel.mesh_from_spec("data:2,fsdp:2"))):
    state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(0), mesh=mesh)
    batch, metrics = rl_batch.learner_batch(episodes, state, cfg, lcfg, "choose", mesh=mesh)
    update = learner.make_update(cfg, lcfg, "choose", mesh=mesh)
    state, m = learner.train_epochs(update, state, batch, jax.random.PRNGKey(2), lcfg)
    flat = lambda t: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(t)])
    frozen0, adapters0 = models.lora.split(params)
    out[name] = dict(params=flat(state.params).tolist(), critic=flat(state.critic_params).tolist(),
                     loss=m["loss"], adapters_moved=float(np.abs(flat(state.params) - flat(adapters0)).max()),
                     base_moved=float(np.abs(flat(state.frozen) - flat(frozen0)).max()))
  print(json.dumps(out))
""")


@pytest.mark.slow  # minutes: a subprocess with 4 simulated devices, two compiles of the update
def test_choose_update_with_lora_and_separate_critic_on_a_mesh_equals_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _SHARDED.format(tests=os.path.join(root, "tests"))], env=env,
                        capture_output=True, text=True, timeout=900, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  one, mesh = out["one"], out["data:2,fsdp:2"]
  assert rel_err(mesh["params"], one["params"]) < 1e-5 and rel_err(mesh["critic"], one["critic"]) < 1e-5
  assert abs(mesh["loss"] - one["loss"]) < 1e-5 * (abs(one["loss"]) + 1e-3)
  assert one["base_moved"] == 0.0 and mesh["base_moved"] == 0.0  # LoRA trains the adapters only
  assert one["adapters_moved"] > 0 and np.isfinite(one["loss"])
