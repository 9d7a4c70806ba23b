"""Per-unit RL loss terms (clipped surrogate, clipped value loss, KL estimators, entropy), masked sums and
the per-unit weights of each loss aggregation (`loss_agg`).

Every term is returned per unit ([B, U]); the learner sums them weighted by `agg_weights`, computed over
the whole minibatch before it is split, so micro-batching and data parallelism do not change the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


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

  With r = ref_logp - logp:
  - k1 = -r: unbiased for KL(pi||ref), can be negative. As a LOSS its expected gradient (units sampled
    from pi, sampling not differentiated) is E_pi[grad log pi] = 0: it regularises nothing, so the
    learner refuses it with kl_mode="loss". In the reward it is the standard penalty.
  - k2 = r^2 / 2: biased, >= 0. Expected gradient E_pi[(log pi - log ref) grad log pi] = grad KL(pi||ref).
  - k3 = exp(r) - 1 - r (verl's "low_var_kl", used by AgentGym-RL): unbiased for KL(pi||ref), >= 0. As a
    loss its expected gradient is E_pi[(1 - ref/pi) grad log pi] = -sum ref grad log pi = grad KL(ref||pi):
    the reverse divergence (mass-covering toward ref), not grad KL(pi||ref).
  """
  if estimator == "k1":
    return logp - ref_logp
  if estimator == "k2":
    return 0.5 * jnp.square(logp - ref_logp)
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


def agg_weights(mask, loss_agg: str):
  """Per-unit weights [B, U] so that sum(weights * per-unit loss) is the minibatch loss of `loss_agg`.

  mask [B, U] marks loss units of the WHOLE minibatch (compute before splitting into micro-batches).
  - token-mean: every unit of the minibatch counts once: 1 / (units in the minibatch).
  - seq-mean-token-mean: each row's unit mean, averaged over rows with units: 1 / (row units * rows).
  - seq-mean-token-sum (Dr. GRPO): each row's unit SUM, averaged over rows with units: 1 / rows. We do not
    divide by a constant maximum length: the scale then grows with the episode length (mind the lr).
  Rows without loss units (padding, env failures) get weight 0 and are not counted.
  """
  m = (jnp.asarray(mask) > 0).astype(jnp.float32)
  per_row = jnp.sum(m, axis=1, keepdims=True)  # [B, 1]
  rows = jnp.maximum(jnp.sum(per_row > 0).astype(jnp.float32), 1.0)
  if loss_agg == "token-mean":
    return m / jnp.maximum(jnp.sum(m), 1.0)
  if loss_agg == "seq-mean-token-mean":
    return m / (jnp.maximum(per_row, 1.0) * rows)
  if loss_agg == "seq-mean-token-sum":
    return m / rows
  raise ValueError(f"loss_agg {loss_agg!r} is not one of {LOSS_AGGS}")
