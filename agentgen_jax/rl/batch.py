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
                  lcfg: learner.LearnerConfig, mode: str, mesh=None) -> tuple[dict, dict]:
  """(batch, metrics): the rows of `episodes` in `mode` ("generate" | "choose") with every field the
  update reads: old_logprobs (the sampler's), advantages and returns [B, U], old_values (with a critic,
  whatever the estimator) and ref_logprobs (with a reference).

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
  metrics: env_failures, truncated, logprob_mismatch, mismatch_kl, adv_mean/std/min/max, return_mean
  (over loss units), kl_reward (mean per-unit KL penalty, reward mode).
  """
  if not episodes:
    raise ValueError("learner_batch needs at least one episode")
  mask_key = policy.unit_mask_key(mode)
  batch = token_batch(episodes) if mode == "generate" else choice_batch(episodes)
  valid = np.array([not ep.env_error for ep in episodes])
  batch[mask_key] = (batch[mask_key] * valid[:, None]).astype(np.float32)
  mask = batch[mask_key] > 0
  ev = learner.evaluate_batch(model_cfg, state, batch, mode, lcfg.micro_batch_size, lcfg, mesh)
  for key in ("old_values", "ref_logprobs"):
    if key in ev:
      batch[key] = ev[key]
  rewards = batch["rewards"]
  metrics = {"env_failures": float((~valid).sum()), "logprob_mismatch": ev["logprob_mismatch"],
             "mismatch_kl": ev["mismatch_kl"]}
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


def token_batch(episodes: Sequence[Episode], seq_len: int | None = None) -> dict[str, np.ndarray]:
  """The generate-mode rows: [B, T] arrays, right-padded, positions 0..n-1; last_pos [B] = n - 1."""
  t = seq_len or sampling.bucket(max(len(ep.tokens) for ep in episodes))
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
                 max_turns: int | None = None, max_candidates: int | None = None) -> dict[str, np.ndarray]:
  """The choose-mode rows: episode tokens plus the unchosen candidates packed after them as a tree.

  tokens/positions/valid/pred_pos/cand_id [B, T] and attn_mask [B, T, T] (each candidate token sees its
  context and its own earlier tokens; pred_pos = the index whose logits predict it; cand_id = its
  candidate, -1 for context); cand_turn [B, C] (the turn of each candidate), chosen/state_pos [B, K] (the
  chosen candidate and the last context token of each turn); old_logprobs, rewards, unit_mask [B, K] per
  turn; last_pos [B] = the last token of the main sequence.
  """
  rows = []
  for ep in episodes:
    tokens = list(ep.tokens)
    positions = list(range(len(tokens)))
    parent = list(range(-1, len(tokens) - 1))      # index whose logits predict this token
    cand_id = [-1] * len(tokens)
    cand_turn, chosen, state_pos, unit_lp, unit_rewards = [], [], [], [], []
    # Agent turns in the main sequence, in order: (start, end) of each.
    spans, start = [], None
    for i, m in enumerate(ep.loss_mask + [0]):
      if m and start is None:
        start = i
      if not m and start is not None:
        spans.append((start, i))
        start = None
    extra = []
    for k, ((cands, choice, lp), (s, e)) in enumerate(zip(ep.choices, spans)):
      state_pos.append(s - 1)
      chosen.append(len(cand_turn) + choice)
      unit_lp.append(lp)
      unit_rewards.append(ep.rewards[e - 1])
      for c, cand in enumerate(cands):
        cid = len(cand_turn)
        cand_turn.append(k)
        if c == choice:
          for i in range(s, e):
            cand_id[i] = cid
        else:
          extra.append((cid, cand, s))
    seq_tokens, seq_pos, seq_parent, seq_cand = tokens, positions, parent, cand_id
    branch_of = [-1] * len(tokens)  # -1: main sequence; else the start index (context end) of a branch
    for cid, cand, s in extra:
      base = len(seq_tokens)
      for j, tok in enumerate(cand):
        seq_tokens.append(tok)
        seq_pos.append(s + j)
        seq_parent.append(s - 1 if j == 0 else base + j - 1)
        seq_cand.append(cid)
        branch_of.append(s)
    rows.append(dict(tokens=seq_tokens, positions=seq_pos, pred_pos=seq_parent, cand_id=seq_cand,
                     branch=branch_of, cand_turn=cand_turn, chosen=chosen, state_pos=state_pos,
                     unit_lp=unit_lp, unit_rewards=unit_rewards))
  b = len(rows)
  t = seq_len or sampling.bucket(max(len(r["tokens"]) for r in rows))
  # Bucketed like the length, so that the jitted update sees a handful of shapes (one compile each).
  c = max_candidates or sampling.bucket(max(max(len(r["cand_turn"]) for r in rows), 1), minimum=16)
  k = max_turns or sampling.bucket(max(max(len(r["chosen"]) for r in rows), 1), minimum=4)
  out = {"tokens": np.zeros((b, t), np.int32), "positions": np.zeros((b, t), np.int32),
         "valid": np.zeros((b, t), bool), "pred_pos": np.zeros((b, t), np.int32),
         "cand_id": np.full((b, t), -1, np.int32), "attn_mask": np.zeros((b, t, t), bool),
         "cand_turn": np.full((b, c), -1, np.int32), "chosen": np.full((b, k), -1, np.int32),
         "state_pos": np.zeros((b, k), np.int32), "old_logprobs": np.zeros((b, k), np.float32),
         "rewards": np.zeros((b, k), np.float32), "unit_mask": np.zeros((b, k), np.float32)}
  for row, r in enumerate(rows):
    n = len(r["tokens"])
    if n > t:
      raise ValueError(f"choice batch row of {n} tokens exceeds seq_len={t}")
    out["tokens"][row, :n] = r["tokens"]
    out["positions"][row, :n] = r["positions"]
    out["valid"][row, :n] = True
    out["pred_pos"][row, :n] = np.maximum(r["pred_pos"], 0)
    out["cand_id"][row, :n] = r["cand_id"]
    branch = np.asarray(r["branch"])
    idx = np.arange(n)
    main = branch < 0
    # Main tokens see earlier main tokens; a branch token sees the main context before its branch point
    # and the earlier tokens of its own candidate.
    same_cand = (np.asarray(r["cand_id"])[:, None] == np.asarray(r["cand_id"])[None, :])
    mask = np.zeros((n, n), bool)
    mask[np.ix_(main, main)] = np.tril(np.ones((main.sum(), main.sum()), bool))
    for q in np.nonzero(~main)[0]:
      mask[q, :branch[q]] = True
      mask[q] |= (~main) & same_cand[q] & (idx <= q)
    out["attn_mask"][row, :n, :n] = mask
    nc, nk = len(r["cand_turn"]), len(r["chosen"])
    out["cand_turn"][row, :nc] = r["cand_turn"]
    out["chosen"][row, :nk] = r["chosen"]
    out["state_pos"][row, :nk] = r["state_pos"]
    out["old_logprobs"][row, :nk] = r["unit_lp"]
    out["rewards"][row, :nk] = r["unit_rewards"]
    out["unit_mask"][row, :nk] = 1.0
  out["group_ids"] = group_ids(episodes)
  out["last_pos"] = np.array([len(ep.tokens) - 1 for ep in episodes], np.int32)
  return out
