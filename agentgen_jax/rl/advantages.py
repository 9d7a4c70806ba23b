"""Advantage estimators: GAE over agent tokens or turns, GRPO group normalisation, leave-one-out baseline.

All functions are pure and jittable; masks select the units (tokens or turns) that the policy chose.
rl/batch.py picks among them (`ESTIMATORS`) and is the only caller in training.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# grpo: group-normalised episode return; rloo: return minus the leave-one-out group mean; reinforce: the
# discounted return-to-go, no baseline; token_gae / turn_gae: GAE with the critic per token / per turn.
ESTIMATORS = ("grpo", "rloo", "reinforce", "token_gae", "turn_gae")


@functools.partial(jax.jit, static_argnames=("gamma", "lam"))
def token_gae(rewards, values, mask, gamma: float, lam: float, bootstrap=None):
  """GAE over the masked units of each row, skipping the unmasked ones (a reverse `lax.scan`).

  rewards, values, mask: [B, U] (U = tokens in generate mode, turns in choose mode). The "next value" of
  a masked unit is the value of the next MASKED unit of the same row (environment tokens are skipped, not
  bootstrapped through); after the last one it is bootstrap[b] ([B], default 0: the episode terminated;
  pass the critic's value at the cut for an episode truncated by a budget). Rewards on unmasked units are
  ignored: the rollout puts every reward on an agent token.
  Returns (advantages [B, U], returns [B, U]) float32, both 0 where mask == 0. Jitted (gamma and lam
  static): called eagerly, the scan's step would be traced and compiled anew at every call.
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
  last = zeros if bootstrap is None else jnp.asarray(bootstrap, jnp.float32)
  xs = (rewards.T, values.T, mask.T)
  _, adv = jax.lax.scan(step, (last, zeros), xs, reverse=True)
  adv = adv.T
  returns = jnp.where(mask, adv + values, 0.0)
  return adv, returns


def turn_gae(rewards, values, mask, turn_ids, gamma: float, lam: float, num_turns: int | None = None,
             bootstrap=None):
  """Turn-level GAE: one value and one reward per agent turn, the advantage broadcast to its tokens.

  rewards, values, mask, turn_ids: [B, T]. A turn's value is the value at its first agent token (the
  state after the observation, before the turn's first token was chosen); its reward is the sum of the
  rewards on its tokens. Discounting is per turn. `num_turns` (static) bounds the turn ids (default T);
  `bootstrap` [B] is the value after the last turn (see token_gae).
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
  turn_adv, turn_ret = token_gae(turn_reward, turn_value, turn_valid, gamma, lam, bootstrap)
  safe = jnp.minimum(tid, k - 1)
  adv = jnp.where(tid < k, jnp.take_along_axis(turn_adv, safe, axis=1), 0.0)
  ret = jnp.where(tid < k, jnp.take_along_axis(turn_ret, safe, axis=1), 0.0)
  return adv, ret


def _group_centred(x, group_ids, valid):
  """Per element: (x - its group's mean, the group's count), over the group's valid elements ([N] each).

  Two passes on shifted data, accurate in float32: each value is first taken relative to one member of
  its group (exact for nearby values), then the mean of those differences is removed. E[x^2] - E[x]^2
  would lose all precision on near-constant or offset groups (e.g. 1000 + small rewards).
  """
  same = (group_ids[:, None] == group_ids[None, :]) & valid[None, :]
  w = same.astype(jnp.float32)
  n = w.sum(axis=1)
  pivot = jnp.take(x, jnp.argmax(same, axis=1))  # the group's first valid member
  shifted = x - pivot
  centred = shifted - (w @ shifted) / jnp.maximum(n, 1.0)
  return centred, n


def grpo(returns, group_ids, eps: float = 1e-6, normalize_std: bool = True, valid=None):
  """GRPO advantage: (return - group mean) / (group std + eps), groups = episodes of the same task.

  returns [N] f32, group_ids [N] i32 (any integers), valid [N] bool or None (invalid rows: padding and
  env failures; advantage 0, excluded from the statistics). The std is the population std (ddof=0), so a
  group of one gets 0. `normalize_std=False` gives the mean-centred return only (Dr. GRPO). Returns [N] f32.
  """
  returns = jnp.asarray(returns, jnp.float32)
  group_ids = jnp.asarray(group_ids)
  valid = jnp.ones(returns.shape, bool) if valid is None else jnp.asarray(valid, bool)
  adv, n = _group_centred(returns, group_ids, valid)
  if normalize_std:
    same = ((group_ids[:, None] == group_ids[None, :]) & valid[None, :]).astype(jnp.float32)
    var = (same @ jnp.where(valid, adv * adv, 0.0)) / jnp.maximum(n, 1.0)
    adv = adv / (jnp.sqrt(var) + eps)
  return jnp.where(valid, adv, 0.0)


def rloo(returns, group_ids, valid=None):
  """REINFORCE with the leave-one-out baseline (RLOO): return - mean of the OTHER returns of its group.

  returns [N] f32, group_ids [N], valid [N] bool or None. A group of one has no baseline (0), so its
  advantage is its return. Returns [N] f32, 0 on invalid rows. (x - mean of others = n/(n-1) (x - mean).)
  """
  returns = jnp.asarray(returns, jnp.float32)
  group_ids = jnp.asarray(group_ids)
  valid = jnp.ones(returns.shape, bool) if valid is None else jnp.asarray(valid, bool)
  centred, n = _group_centred(returns, group_ids, valid)
  adv = jnp.where(n > 1, centred * n / jnp.maximum(n - 1.0, 1.0), returns)
  return jnp.where(valid, adv, 0.0)


def broadcast_to_tokens(adv, mask):
  """Episode advantages [B] onto the episode's loss tokens: [B, T] f32, 0 where mask == 0."""
  adv = jnp.asarray(adv, jnp.float32)
  return jnp.where(jnp.asarray(mask) > 0, adv[:, None], 0.0)
