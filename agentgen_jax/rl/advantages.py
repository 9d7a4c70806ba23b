"""Advantage estimators: GAE over agent tokens or turns, GRPO group normalisation, leave-one-out baseline.

All functions are pure and jittable; masks select the units (tokens or turns) that the policy chose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_gae(rewards, values, mask, gamma: float, lam: float):
  """GAE over the masked units of each row, skipping the unmasked ones (a reverse `lax.scan`).

  rewards, values, mask: [B, U] (U = tokens in token mode, turns in choice mode). The "next value" of a
  masked unit is the value of the next MASKED unit of the same row (environment tokens are skipped, not
  bootstrapped through), and 0 after the last one: episodes end at the end of their row. Rewards on
  unmasked units are ignored: the rollout puts every reward on an agent token.
  Returns (advantages [B, U], returns [B, U]) float32, both 0 where mask == 0.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  mask = jnp.asarray(mask) > 0

  def step(carry, xs):
    next_value, next_adv = carry
    r, v, m = xs
    delta = r + gamma * next_value - v
    adv = delta + gamma * lam * next_adv
    # An unmasked unit passes the carry through unchanged: it is invisible to the recursion.
    carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv))
    return carry, jnp.where(m, adv, 0.0)

  zeros = jnp.zeros(rewards.shape[0], jnp.float32)
  xs = (rewards.T, values.T, mask.T)
  _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
  adv = adv.T
  returns = jnp.where(mask, adv + values, 0.0)
  return adv, returns


def turn_gae(rewards, values, mask, turn_ids, gamma: float, lam: float, num_turns: int | None = None):
  """Turn-level GAE: one value and one reward per agent turn, the advantage broadcast to its tokens.

  rewards, values, mask, turn_ids: [B, T]. A turn's value is the value at its first agent token (the
  state after the observation, before the turn's first token was chosen); its reward is the sum of the
  rewards on its tokens. Discounting is per turn. `num_turns` (static) bounds the turn ids (default T).
  Returns (advantages [B, T], returns [B, T]): the turn's advantage and return on each of its tokens.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  mask = jnp.asarray(mask) > 0
  turn_ids = jnp.asarray(turn_ids, jnp.int32)
  b, t = rewards.shape
  k = t if num_turns is None else num_turns
  # Tokens outside any turn scatter to index k, which mode="drop" discards.
  tid = jnp.where(mask & (turn_ids >= 0), turn_ids, k)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
  turn_reward = jnp.zeros((b, k), jnp.float32).at[rows, tid].add(rewards, mode="drop")
  turn_valid = jnp.zeros((b, k), bool).at[rows, tid].set(True, mode="drop")
  first_pos = jnp.full((b, k), t, jnp.int32).at[rows, tid].min(jnp.broadcast_to(jnp.arange(t), (b, t)),
                                                               mode="drop")
  turn_value = jnp.take_along_axis(values, jnp.minimum(first_pos, t - 1), axis=1)
  turn_adv, turn_ret = token_gae(turn_reward, turn_value, turn_valid, gamma, lam)
  safe = jnp.minimum(tid, k - 1)
  adv = jnp.where(tid < k, jnp.take_along_axis(turn_adv, safe, axis=1), 0.0)
  ret = jnp.where(tid < k, jnp.take_along_axis(turn_ret, safe, axis=1), 0.0)
  return adv, ret


def _group_stats(x, group_ids, valid):
  """Per-element sum, sum of squares and count over its group's valid elements ([N] each)."""
  same = (group_ids[:, None] == group_ids[None, :]) & valid[None, :]
  w = same.astype(jnp.float32)
  return w @ x, w @ (x * x), w.sum(axis=1)


def grpo(returns, group_ids, eps: float = 1e-6, normalize_std: bool = True, valid=None):
  """GRPO advantage: (return - group mean) / (group std + eps), groups = episodes of the same task.

  returns [N] f32, group_ids [N] i32 (any integers), valid [N] bool or None (padding rows: advantage 0,
  excluded from the statistics). The std is the population std (ddof=0), so a group of one gets 0.
  `normalize_std=False` gives the mean-centred return only (Dr. GRPO). Returns [N] f32.
  """
  returns = jnp.asarray(returns, jnp.float32)
  group_ids = jnp.asarray(group_ids)
  valid = jnp.ones(returns.shape, bool) if valid is None else jnp.asarray(valid, bool)
  s, ss, n = _group_stats(returns, group_ids, valid)
  n = jnp.maximum(n, 1.0)
  mean = s / n
  adv = returns - mean
  if normalize_std:
    var = jnp.maximum(ss / n - mean * mean, 0.0)
    adv = adv / (jnp.sqrt(var) + eps)
  return jnp.where(valid, adv, 0.0)


def reinforce_baseline(returns, group_ids, valid=None):
  """REINFORCE with the leave-one-out baseline (RLOO): return - mean of the OTHER returns of its group.

  returns [N] f32, group_ids [N], valid [N] bool or None. A group of one has no baseline (0), so its
  advantage is its return. Returns [N] f32, 0 on invalid rows.
  """
  returns = jnp.asarray(returns, jnp.float32)
  group_ids = jnp.asarray(group_ids)
  valid = jnp.ones(returns.shape, bool) if valid is None else jnp.asarray(valid, bool)
  s, _, n = _group_stats(returns, group_ids, valid)
  others = n - 1.0
  baseline = jnp.where(others > 0, (s - returns) / jnp.maximum(others, 1.0), 0.0)
  return jnp.where(valid, returns - baseline, 0.0)


def broadcast_to_tokens(adv, mask):
  """Episode advantages [B] onto the episode's loss tokens: [B, T] f32, 0 where mask == 0."""
  adv = jnp.asarray(adv, jnp.float32)
  return jnp.where(jnp.asarray(mask) > 0, adv[:, None], 0.0)
