"""Per-unit RL loss terms (clipped surrogate, clipped value loss, KL estimators, entropy) and masked sums.

Every term is returned per unit ([B, U]); the learner sums them under the mask and divides by the number
of loss units of the whole minibatch, so that micro-batching does not change the reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")


def masked_sum(x, mask):
  """Sum of x over mask > 0 (any shape); unmasked entries never propagate NaN or inf."""
  return jnp.sum(jnp.where(jnp.asarray(mask) > 0, x, 0.0))


def masked_mean(x, mask, axis=None):
  """Mean of x over mask > 0 along axis (all axes by default); 0 where nothing is masked in."""
  m = (jnp.asarray(mask) > 0)
  total = jnp.sum(jnp.where(m, x, 0.0), axis=axis)
  count = jnp.sum(m, axis=axis)
  return total / jnp.maximum(count, 1)


def policy_surrogate(logp, old_logp, advantages, clip_low: float, clip_high: float):
  """PPO clipped surrogate with separate clip ranges (DAPO's clip-higher), as a loss to minimise.

  ratio = exp(logp - old_logp); loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A).
  Returns (loss [...], clipped [...] bool: the clipped branch is the active one, so no gradient flows).
  """
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
  loss = -jnp.minimum(unclipped, clipped)
  active = clipped < unclipped
  return loss, active


def value_loss(values, old_values, returns, value_clip: float | None):
  """Clipped value loss 0.5 * max((v - R)^2, (old + clip(v - old, -c, c) - R)^2), per unit.

  `value_clip` None or <= 0 gives the plain squared error 0.5 * (v - R)^2.
  """
  err = jnp.square(values - returns)
  if value_clip is None or value_clip <= 0:
    return 0.5 * err
  v_clipped = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
  return 0.5 * jnp.maximum(err, jnp.square(v_clipped - returns))


def kl_estimate(logp, ref_logp, estimator: str):
  """Per-unit estimate of KL(pi || ref) from samples of pi (Schulman, "Approximating KL divergence").

  k1 = logp - ref_logp (unbiased, can be negative); k3 = exp(r) - 1 - r with r = ref_logp - logp
  (unbiased, always >= 0, lower variance).
  """
  if estimator == "k1":
    return logp - ref_logp
  if estimator == "k3":
    r = ref_logp - logp
    return jnp.expm1(r) - r
  raise ValueError(f"kl estimator {estimator!r} is not one of {KL_ESTIMATORS}")


def kl_penalty_rewards(rewards, logp, ref_logp, mask, coef: float, estimator: str = "k1"):
  """Rewards with the KL penalty folded in: r_t - coef * kl_t on each masked unit ([B, U] each).

  logp is the sampling policy's log-prob (the PPO "old" one), ref_logp the frozen reference's.
  """
  kl = kl_estimate(jnp.asarray(logp, jnp.float32), jnp.asarray(ref_logp, jnp.float32), estimator)
  return jnp.where(jnp.asarray(mask) > 0, rewards - coef * kl, rewards)


def entropy_from_logits(logits):
  """Entropy of softmax(logits) over the last axis, in float32: [..., V] -> [...]."""
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def token_logprobs(logits, targets):
  """log softmax(logits)[target] over the last axis: logits [..., V], targets [...] i32 -> [...] f32."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - lse


def explained_variance(values, returns, mask):
  """1 - Var(returns - values) / Var(returns) over the masked units (a scalar; 0 when Var(returns) = 0)."""
  var_r = masked_mean(jnp.square(returns - masked_mean(returns, mask)), mask)
  err = returns - values
  var_e = masked_mean(jnp.square(err - masked_mean(err, mask)), mask)
  return jnp.where(var_r > 0, 1.0 - var_e / jnp.where(var_r > 0, var_r, 1.0), 0.0)
