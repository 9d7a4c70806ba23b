"""Episodes -> the learner batch: THE one path from rollout records to advantages and returns.

`learner_batch` packs the rows of either action mode, scores them with the learner (log-probs, critic
values, reference log-probs), folds the KL penalty into the rewards if asked, and runs the estimator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from agentgen_jax import sampling
from agentgen_jax.rl import advantages as adv_lib
from agentgen_jax.rl import learner, losses, policy
from agentgen_jax.rl.advantages import ESTIMATORS  # noqa: F401  (re-exported: the estimator names)

if TYPE_CHECKING:
  from agentgen_jax.rollout import Episode


def learner_batch(episodes: Sequence[Episode], state: learner.TrainState, model_cfg,
                  lcfg: learner.LearnerConfig, mode: str, mesh=None,
                  floor: dict[str, int] | None = None) -> tuple[dict, dict]:
  """(batch, metrics): the rows of `episodes` in `mode` ("generate" | "choose") with every field the
  update reads: old_logprobs (the sampler's), advantages and returns [B, U], old_values (with a critic,
  whatever the estimator) and ref_logprobs (with a reference).

  - floor: the least padded size of each batch dimension (`batch_dims` of an earlier batch): rl_train
    passes the dims of its last batch, so that a run's shapes only grow and the jitted update compiles
    once per growth, not once per new combination of the dims (see `choice_batch`).

  - Episodes ended by an env failure (`env_error`) get a zero loss mask (no gradient) and are left out
    of the group statistics; metrics["env_failures"] counts them.
  - kl_mode="reward": r_u - kl_coef * KL_u on each loss unit, KL between the learner's own log-probs and
    the reference's (same forward code, so it is exactly 0 at the start).
  - grpo / rloo: the episode's summed (penalised) reward, normalised in its group (same env and task);
    reinforce: the discounted return-to-go, no baseline. Their returns (the critic's target, if any) are
    the discounted return-to-go.
  - token_gae / turn_gae: GAE over loss units / agent turns with the critic's values (in choose mode the
    units already are turns, so both are GAE over turns); with bootstrap_truncated, an episode cut by
    max_turns or max_episode_tokens bootstraps from the critic's value after its last token, not 0.
  metrics: env_failures, truncated, adv_mean/std/min/max, return_mean (over loss units), kl_reward (mean
  per-unit KL penalty, reward mode), and logprob_mismatch / mismatch_kl over every row when the batch
  needs a forward pass anyway (lcfg.needs_evaluation: a critic or a reference); without one, no forward
  runs here and learner.train_epochs reports them from the first update's forward.
  """
  if not episodes:
    raise ValueError("learner_batch needs at least one episode")
  mask_key = policy.unit_mask_key(mode)
  batch = token_batch(episodes, floor=floor) if mode == "generate" else choice_batch(episodes, floor=floor)
  valid = np.array([not ep.env_error for ep in episodes])
  batch[mask_key] = (batch[mask_key] * valid[:, None]).astype(np.float32)
  mask = batch[mask_key] > 0
  metrics = {"env_failures": float((~valid).sum())}
  ev = {}
  if lcfg.needs_evaluation:
    ev = learner.evaluate_batch(model_cfg, state, batch, mode, lcfg.micro_batch_size, lcfg, mesh)
    metrics.update(logprob_mismatch=ev["logprob_mismatch"], mismatch_kl=ev["mismatch_kl"])
  for key in ("old_values", "ref_logprobs"):
    if key in ev:
      batch[key] = ev[key]
  rewards = batch["rewards"]
  if lcfg.uses_ref and lcfg.kl_mode == "reward":
    penalised = np.asarray(losses.kl_penalty_rewards(rewards, ev["logprobs"], ev["ref_logprobs"], mask,
                                                     lcfg.kl_coef, lcfg.kl_estimator))
    metrics["kl_reward"] = float(((rewards - penalised)[mask]).sum() / max(mask.sum(), 1) / lcfg.kl_coef)
    rewards = penalised
  truncated = np.array([ep.truncated or ep.out_of_turns for ep in episodes]) & valid
  metrics["truncated"] = float(truncated.sum())
  adv, ret = _estimate(lcfg, mode, rewards, mask, batch, ev, valid, truncated)
  batch["advantages"], batch["returns"] = np.asarray(adv, np.float32), np.asarray(ret, np.float32)
  metrics.update(_stats(batch["advantages"], batch["returns"], mask))
  return batch, metrics


def _estimate(lcfg, mode, rewards, mask, batch, ev, valid, truncated):
  """(advantages, returns) [B, U] of lcfg.estimator."""
  est = lcfg.estimator
  if est in learner.GAE_ESTIMATORS:
    bootstrap = np.where(truncated, ev["last_value"], 0.0) if lcfg.bootstrap_truncated else None
    if est == "turn_gae" and mode == "generate":
      return adv_lib.turn_gae(rewards, ev["old_values"], mask, batch["turn_ids"], lcfg.gamma, lcfg.lam,
                              bootstrap=bootstrap)
    return adv_lib.token_gae(rewards, ev["old_values"], mask, lcfg.gamma, lcfg.lam, bootstrap)
  ret = adv_lib.token_gae(rewards, np.zeros_like(rewards), mask, lcfg.gamma, 1.0)[1]
  if est == "reinforce":
    return ret, ret
  episode_return = rewards.sum(axis=1)  # env rewards plus the KL penalty on loss units
  fn = adv_lib.grpo if est == "grpo" else adv_lib.rloo
  return adv_lib.broadcast_to_tokens(fn(episode_return, batch["group_ids"], valid=valid), mask), ret


def _stats(adv, ret, mask):
  a, r = adv[mask].astype(np.float64), ret[mask].astype(np.float64)
  if not a.size:
    return {"adv_mean": 0.0, "adv_std": 0.0, "adv_min": 0.0, "adv_max": 0.0, "return_mean": 0.0}
  return {"adv_mean": float(a.mean()), "adv_std": float(a.std()), "adv_min": float(a.min()),
          "adv_max": float(a.max()), "return_mean": float(r.mean())}


# ---- packing episodes into rows -----------------------------------------------------------------------

def group_ids(episodes: Sequence[Episode]) -> np.ndarray:
  """GRPO groups: episodes of the same (env, task) share an id."""
  keys: dict[tuple[str, str], int] = {}
  return np.array([keys.setdefault((ep.env, ep.task), len(keys)) for ep in episodes], np.int32)


def batch_dims(batch: dict[str, np.ndarray]) -> dict[str, int]:
  """The padded sizes of a token_batch / choice_batch, by the names their `floor` takes."""
  dims = {"t": batch["tokens"].shape[1]}
  if "cand_path" in batch:
    dims.update(n_in=batch["branch_tokens"].shape[1], a=batch["branch_ancestors"].shape[2],
                n_pred=batch["pred_rows"].shape[1], m=batch["node_row"].shape[1],
                c=batch["cand_path"].shape[1], p=batch["cand_path"].shape[2], k=batch["chosen"].shape[1])
  return dims


def _floored(dims: dict[str, int], floor: dict[str, int] | None) -> dict[str, int]:
  return {k: max(v, (floor or {}).get(k, 0)) for k, v in dims.items()}


def _seq_len(episodes: Sequence[Episode], seq_len: int | None, floor: dict[str, int] | None) -> int:
  """T of a batch: seq_len if given, else the bucket of the longest row, at least floor["t"]."""
  return seq_len or _floored({"t": sampling.bucket(max(len(ep.tokens) for ep in episodes))}, floor)["t"]


def token_batch(episodes: Sequence[Episode], seq_len: int | None = None,
                floor: dict[str, int] | None = None) -> dict[str, np.ndarray]:
  """The generate-mode rows: [B, T] arrays, right-padded, positions 0..n-1; last_pos [B] = n - 1.
  T is seq_len (longer rows are cut), else the bucket of the longest row, at least floor["t"]."""
  t = _seq_len(episodes, seq_len, floor)
  b = len(episodes)
  out = {"tokens": np.zeros((b, t), np.int32), "positions": np.zeros((b, t), np.int32),
         "valid": np.zeros((b, t), bool), "loss_mask": np.zeros((b, t), np.float32),
         "old_logprobs": np.zeros((b, t), np.float32), "rewards": np.zeros((b, t), np.float32),
         "turn_ids": np.full((b, t), -1, np.int32)}
  for row, ep in enumerate(episodes):
    n = min(len(ep.tokens), t)
    out["tokens"][row, :n] = ep.tokens[:n]
    out["positions"][row, :n] = np.arange(n)
    out["valid"][row, :n] = True
    out["loss_mask"][row, :n] = ep.loss_mask[:n]
    out["old_logprobs"][row, :n] = ep.logprobs[:n]
    out["rewards"][row, :n] = ep.rewards[:n]
    out["turn_ids"][row, :n] = ep.turn_ids[:n]
  out["group_ids"] = group_ids(episodes)
  out["last_pos"] = np.array([min(len(ep.tokens), t) - 1 for ep in episodes], np.int32)
  return out


def choice_batch(episodes: Sequence[Episode], seq_len: int | None = None,
                 floor: dict[str, int] | None = None) -> dict[str, np.ndarray]:
  """The choose-mode rows: the episode tokens (the context: prompt, observations, chosen actions) and each
  turn's unchosen candidates as branches off it, for models.forward_branches.

  A turn's candidates form a trie whose chosen path is the context itself: a candidate sharing its first m
  tokens with the chosen one branches off after them, candidates sharing a prefix share its branch tokens,
  and a token only enters the forward if it predicts another (last tokens are scored, never run).
  - tokens/positions/valid [B, T]: the context, positions 0..n-1 (causal attention).
  - branch_tokens/branch_positions/branch_context [B, N] and branch_ancestors [B, N, A]: the branch tokens
    that enter the forward; each sees the context's first branch_context tokens and the branch tokens
    branch_ancestors lists (its trie ancestors and itself; models.Branches).
  - pred_rows [B, R]: the rows of the [T + N] forward output whose logits predict a candidate token (each
    once: siblings share their parent's); node_row/node_token [B, M]: every scored trie node (a candidate
    token) and the pred_rows entry that predicts it.
  - cand_path [B, C, P]: each candidate's scored nodes (-1 pad): its score is the sum of their log-probs;
    cand_turn [B, C] (-1 pad); chosen/state_pos [B, K] (the chosen candidate and the last context token
    before each turn); old_logprobs, rewards, unit_mask [B, K] per turn; last_pos [B] = n - 1.

  Every size is bucketed, and at least its floor (`batch_dims`' names): eight sizes vary with the episodes,
  and without a floor each new combination of their buckets compiled the update again (4-7 s each for the
  tiny model, in most of a run's first iterations).
  """
  rows = [_choice_row(ep) for ep in episodes]
  b = len(rows)
  t = _seq_len(episodes, seq_len, floor)
  preds = [_predictor_rows(r["nodes"], t) for r in rows]
  dims = _floored({
      "n_in": sampling.bucket(max(max(len(r["inputs"]) for r in rows), 1)),
      "a": sampling.bucket(max([len(chain) for r in rows for chain in r["ancestors"]] + [1]), minimum=8),
      "m": sampling.bucket(max(len(r["nodes"]) for r in rows)),
      "n_pred": sampling.bucket(max(len(p[0]) for p in preds)),
      "c": sampling.bucket(max(max(len(r["paths"]) for r in rows), 1), minimum=16),
      "p": sampling.bucket(max([len(path) for r in rows for path in r["paths"]] + [1]), minimum=8),
      "k": sampling.bucket(max(max(len(r["chosen"]) for r in rows), 1), minimum=4)}, floor)
  n_in, a, m, n_pred, c, p, k = (dims[key] for key in ("n_in", "a", "m", "n_pred", "c", "p", "k"))
  out = {"tokens": np.zeros((b, t), np.int32), "positions": np.zeros((b, t), np.int32),
         "valid": np.zeros((b, t), bool), "branch_tokens": np.zeros((b, n_in), np.int32),
         "branch_positions": np.zeros((b, n_in), np.int32), "branch_context": np.ones((b, n_in), np.int32),
         "branch_ancestors": np.full((b, n_in, a), -1, np.int32),
         "pred_rows": np.zeros((b, n_pred), np.int32), "node_row": np.zeros((b, m), np.int32),
         "node_token": np.zeros((b, m), np.int32),
         "cand_path": np.full((b, c, p), -1, np.int32), "cand_turn": np.full((b, c), -1, np.int32),
         "chosen": np.full((b, k), -1, np.int32), "state_pos": np.zeros((b, k), np.int32),
         "old_logprobs": np.zeros((b, k), np.float32), "rewards": np.zeros((b, k), np.float32),
         "unit_mask": np.zeros((b, k), np.float32)}
  for row, (ep, r, (pred_rows, node_row)) in enumerate(zip(episodes, rows, preds)):
    n = len(ep.tokens)
    if n > t:
      raise ValueError(f"choice batch row of {n} tokens exceeds seq_len={t}")
    out["tokens"][row, :n] = ep.tokens
    out["positions"][row, :n] = np.arange(n)
    out["valid"][row, :n] = True
    for i, ((token, position, context, _), chain) in enumerate(zip(r["inputs"], r["ancestors"])):
      out["branch_tokens"][row, i], out["branch_positions"][row, i] = token, position
      out["branch_context"][row, i] = context
      out["branch_ancestors"][row, i, :len(chain)] = chain
    out["pred_rows"][row, :len(pred_rows)] = pred_rows
    out["node_row"][row, :len(node_row)] = node_row
    out["node_token"][row, :len(node_row)] = [token for _, token in r["nodes"]]
    for ci, path in enumerate(r["paths"]):
      out["cand_path"][row, ci, :len(path)] = path
    nc, nk = len(r["paths"]), len(r["chosen"])
    out["cand_turn"][row, :nc] = r["cand_turn"]
    out["chosen"][row, :nk] = r["chosen"]
    out["state_pos"][row, :nk] = r["state_pos"]
    out["old_logprobs"][row, :nk] = r["unit_lp"]
    out["rewards"][row, :nk] = r["unit_rewards"]
    out["unit_mask"][row, :nk] = 1.0
  out["group_ids"] = group_ids(episodes)
  out["last_pos"] = np.array([len(ep.tokens) - 1 for ep in episodes], np.int32)
  return out



def _predictor_rows(nodes, t: int) -> tuple[list[int], list[int]]:
  """(the distinct predicting rows of the [T + N] forward output, each node's index among them); branch
  input i's output is row t + i."""
  rows: dict[int, int] = {}
  node_row = [rows.setdefault(pred if isinstance(pred, int) else t + pred[1], len(rows)) for pred, _ in nodes]
  return list(rows), node_row

def _agent_spans(loss_mask) -> list[tuple[int, int]]:
  """(start, end) of each run of agent tokens, in order."""
  spans, start = [], None
  for i, m in enumerate(list(loss_mask) + [0]):
    if m and start is None:
      start = i
    if not m and start is not None:
      spans.append((start, i))
      start = None
  return spans


def _choice_row(ep: Episode) -> dict:
  """One episode's candidate tries. nodes: (predictor, token) per scored candidate token, the predictor a
  context index or ("branch", input id); inputs: per branch input (token, position, context length, parent
  input id or None); ancestors: per branch input, itself and its branch ancestors; paths: each candidate's
  node indices."""
  nodes, inputs, paths, cand_turn, chosen, state_pos, unit_lp, unit_rewards = [], [], [], [], [], [], [], []
  for k, ((cands, choice, lp), (s, e)) in enumerate(zip(ep.choices, _agent_spans(ep.loss_mask))):
    state_pos.append(s - 1)
    chosen.append(len(paths) + choice)
    unit_lp.append(lp)
    unit_rewards.append(ep.rewards[e - 1])
    # The turn's trie: prefix -> node (index into `nodes`); the chosen candidate's tokens are the
    # context's [s, e), the others' new tokens branch off it.
    trie = {tuple(cands[choice][:j + 1]): s + j for j in range(len(cands[choice]))}  # context nodes
    parent_of, token_of, depth_of = {}, {}, {}
    for cand in cands:
      for j in range(len(cand)):
        key = tuple(cand[:j + 1])
        if key not in trie:
          trie[key] = ("branch", len(token_of))
          parent_of[key], token_of[key], depth_of[key] = trie.get(key[:-1], s - 1), cand[j], j
    # A branch token is run through the model only if it predicts another: then it is an input, seeing
    # the context up to its branch point and its branch ancestors.
    has_child = {parent_of[key] for key in parent_of}
    input_of, index_of = {}, {}
    for key in token_of:  # parents before children (insertion order)
      parent = parent_of[key]
      if trie[key] in has_child:
        up = input_of.get(parent)
        context = inputs[up][2] if up is not None else parent + 1
        input_of[trie[key]] = len(inputs)
        inputs.append((token_of[key], s + depth_of[key], context, up))
      index_of[key] = len(nodes)
      nodes.append((("branch", input_of[parent]) if parent in input_of else parent, token_of[key]))
    for j, tok in enumerate(cands[choice]):
      index_of[tuple(cands[choice][:j + 1])] = len(nodes)
      nodes.append((s + j - 1, tok))
    for cand in cands:
      paths.append([index_of[tuple(cand[:j + 1])] for j in range(len(cand))])
      cand_turn.append(k)
  ancestors = []
  for inp in inputs:  # parents come first: extend the parent's chain
    ancestors.append([len(ancestors)] + (ancestors[inp[3]] if inp[3] is not None else []))
  return dict(nodes=nodes, inputs=inputs, paths=paths, cand_turn=cand_turn, chosen=chosen,
              state_pos=state_pos, unit_lp=unit_lp, unit_rewards=unit_rewards, ancestors=ancestors)

