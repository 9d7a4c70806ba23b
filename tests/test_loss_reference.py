"""The learner's whole loss against an independent float64 reference, with every term switched on, and each
term's gradient pushing the way its sign says.

The reference (below, written from the formulas, not from rl/losses.py) takes the model's logits and values
in float64: clipped surrogate with separate low/high clip, entropy bonus, KL as a loss (k2, k3), clipped
value loss, every loss_agg, at a sampling temperature of 0.7. Its gradient with respect to (logits, values)
is pulled back through the float32 model forward and compared with the update's gradient.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax import models
from agentgen_jax.rl import learner, losses

B, T = 4, 16
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def small():
  cfg = models.preset("tiny", num_layers=1, hidden_size=32, intermediate_size=64, num_heads=2,
                      num_kv_heads=1, head_dim=16)
  return cfg, models.init_params(cfg, jax.random.PRNGKey(0))


def lconfig(**kw):
  base = dict(lr=1e-2, micro_batch_size=2, mini_batch_size=B, clip_low=0.2, clip_high=0.28, value_clip=0.2,
              value_coef=0.5, entropy_coef=0.05, kl_coef=0.3, kl_mode="loss", kl_estimator="k3",
              critic="shared", temperature=TEMPERATURE)
  return learner.LearnerConfig(**{**base, **kw})


def forward(cfg, params, head, batch):
  """(logits [B, T, V], values [B, T] read at each token) of the float32 model."""
  logits, hidden, _ = models.forward(cfg, params, batch["tokens"], batch["positions"], batch["valid"])
  return logits, models.value.values(head, hidden)


def rows(seed):
  """Rows with 6, 4, 2 and 0 loss tokens (the empty row must not count as a sequence)."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((B, T), np.float32)
  mask[0, 3:9] = 1
  mask[1, [4, 5, 10, 11]] = 1
  mask[2, 12:14] = 1
  return dict(tokens=rng.integers(3, 4000, size=(B, T)).astype(np.int32),
              positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)), valid=np.ones((B, T), bool),
              loss_mask=mask)


def rl_batch(cfg, params, head, seed):
  """A batch whose ratios and value changes fall on both sides of their clip ranges."""
  batch = rows(seed)
  rng = np.random.default_rng(seed + 1)
  logits, values = jax.device_get(forward(cfg, params, head, batch))
  logp_all = jax.nn.log_softmax(np.asarray(logits, np.float64) / TEMPERATURE, axis=-1)
  logp = np.zeros((B, T))
  logp[:, 1:] = np.take_along_axis(logp_all[:, :-1], batch["tokens"][:, 1:, None], axis=-1)[..., 0]
  shift = rng.choice([-0.5, -0.1, 0.0, 0.1, 0.5], size=(B, T))  # ratio exp(-shift): 1.65 ... 0.61
  v_prev = np.pad(values[:, :-1], ((0, 0), (1, 0)))
  batch.update(old_logprobs=(logp + shift).astype(np.float32),
               advantages=rng.choice([-1.5, -0.5, 0.7, 1.2], size=(B, T)).astype(np.float32),
               returns=rng.normal(size=(B, T)).astype(np.float32),
               old_values=(v_prev + rng.choice([-0.5, 0.05, 0.5], size=(B, T))).astype(np.float32),
               ref_logprobs=(logp - rng.normal(scale=0.3, size=(B, T))).astype(np.float32))
  return batch


def reference_loss(logits, values, batch, lcfg):
  """The loss in float64 from logits [B, T, V] and per-token values [B, T] (jax.numpy under x64)."""
  f64 = lambda k: jnp.asarray(batch[k], jnp.float64)
  m = jnp.asarray(batch["loss_mask"] > 0)
  z = logits / lcfg.temperature
  logp_all = z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)
  tok = jnp.asarray(batch["tokens"])
  # Token t is predicted by position t - 1; token 0 is never a loss unit.
  logp = jnp.pad(jnp.take_along_axis(logp_all[:, :-1], tok[:, 1:, None], axis=-1)[..., 0], ((0, 0), (1, 0)))
  entropy = jnp.pad(-jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)[:, :-1], ((0, 0), (1, 0)))
  v = jnp.pad(values[:, :-1], ((0, 0), (1, 0)))

  ratio = jnp.exp(logp - f64("old_logprobs"))
  adv = f64("advantages")
  surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - lcfg.clip_low, 1 + lcfg.clip_high) * adv)
  d = logp - f64("ref_logprobs")
  kl = 0.5 * d * d if lcfg.kl_estimator == "k2" else jnp.exp(-d) - 1 + d
  ret, old_v = f64("returns"), f64("old_values")
  v_clip = old_v + jnp.clip(v - old_v, -lcfg.value_clip, lcfg.value_clip)
  value = 0.5 * jnp.maximum((v - ret) ** 2, (v_clip - ret) ** 2)
  per_unit = (surrogate - lcfg.entropy_coef * entropy + lcfg.kl_coef * kl + lcfg.value_coef * value)
  per_unit = jnp.where(m, per_unit, 0.0)

  row_sum, row_n = per_unit.sum(axis=1), m.sum(axis=1)
  has = row_n > 0
  if lcfg.loss_agg == "token-mean":
    return row_sum.sum() / row_n.sum()
  if lcfg.loss_agg == "seq-mean-token-mean":
    return jnp.sum(jnp.where(has, row_sum / jnp.maximum(row_n, 1), 0.0)) / has.sum()
  return jnp.sum(jnp.where(has, row_sum, 0.0)) / has.sum()  # seq-mean-token-sum


def tree_rel_err(a, b):
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  a, b = flat(a), flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("loss_agg,kl_estimator", [("token-mean", "k3"), ("seq-mean-token-mean", "k2"),
                                                   ("seq-mean-token-sum", "k3")])
def test_loss_and_gradient_match_the_float64_reference(small, loss_agg, kl_estimator):
  cfg, params = small
  lcfg = lconfig(loss_agg=loss_agg, kl_estimator=kl_estimator)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))
  head = state.critic_params
  batch = rl_batch(cfg, params, head, seed=3)

  (logits, values), pullback = jax.vjp(functools.partial(forward, cfg, batch=batch), params, head)
  with jax.enable_x64(True):
    ref_fn = jax.value_and_grad(reference_loss, argnums=(0, 1))
    ref_loss, (g_logits, g_values) = ref_fn(jnp.asarray(np.asarray(logits), jnp.float64),
                                            jnp.asarray(np.asarray(values), jnp.float64), batch, lcfg)
    ref_loss, g_logits, g_values = float(ref_loss), np.asarray(g_logits), np.asarray(g_values)
  ref_g_policy, ref_g_head = pullback((g_logits.astype(np.float32), g_values.astype(np.float32)))

  grads = jax.jit(functools.partial(learner.loss_gradients, cfg, lcfg, "generate", None))
  (g_policy, g_head), metrics = grads(state, {k: batch[k] for k in learner.batch_keys("generate", lcfg)})
  np.testing.assert_allclose(float(metrics["loss"]), ref_loss, rtol=1e-5)
  assert tree_rel_err(g_policy, ref_g_policy) < 1e-4
  assert tree_rel_err(g_head, ref_g_head) < 1e-4
  # Every term was live: some ratios clipped, entropy and KL non-zero.
  assert 0 < float(metrics["clip_frac"]) < 1
  assert float(metrics["kl"]) > 1e-3 and float(metrics["entropy"]) > 0.1


def _step(cfg, params, lcfg, batch, ref_params=None):
  """One small update from a fresh state: (evaluation before, evaluation after, update metrics).

  AdamW's first step is about -lr * sign(grad): a descent direction, so a small lr lowers the loss."""
  lcfg = dataclasses.replace(lcfg, lr=3e-4)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))
  if ref_params is not None:
    state = state.replace(ref_params=ref_params)
  before = learner.evaluate_batch(cfg, state, batch, "generate", B, lcfg)
  state, metrics = learner.make_update(cfg, lcfg, "generate")(state, batch)
  after = learner.evaluate_batch(cfg, state, batch, "generate", B, lcfg)
  return before, after, jax.device_get(metrics)


def _neutral(cfg, params, lcfg, ref_params=None):
  """A batch on which every term but the one under test has zero gradient: advantages 0, returns = the
  current values, old values = values (no clipping), reference = policy unless given."""
  batch = rows(5)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))
  ev = learner.evaluate_batch(cfg, state, batch, "generate", B, lcfg)
  values = ev.get("old_values", np.zeros((B, T), np.float32))
  ref = ev["logprobs"]
  if ref_params is not None:
    ref = learner.evaluate_batch(cfg, state.replace(ref_params=ref_params), batch, "generate", B,
                                 lcfg)["ref_logprobs"]
  batch.update(old_logprobs=ev["logprobs"], advantages=np.zeros((B, T), np.float32), returns=values,
               old_values=values, ref_logprobs=ref)
  return batch


def test_entropy_bonus_raises_entropy(small):
  cfg, params = small
  lcfg = lconfig(entropy_coef=1.0, kl_coef=0.0, critic="none")
  before, after, _ = _step(cfg, params, lcfg, _neutral(cfg, params, lcfg))
  m = rows(5)["loss_mask"] > 0
  assert after["entropy"][m].mean() > before["entropy"][m].mean() + 1e-5


@pytest.mark.parametrize("kl_estimator", ["k2", "k3"])
def test_kl_loss_moves_the_policy_toward_the_reference(small, kl_estimator):
  cfg, params = small
  lcfg = lconfig(entropy_coef=0.0, kl_coef=1.0, kl_estimator=kl_estimator, critic="none")
  ref_params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)  # the update donates the state
  ref_params["embed"] = {"embedding": params["embed"]["embedding"] * 2.0}
  batch = _neutral(cfg, params, lcfg, ref_params)
  before, after, metrics = _step(cfg, params, lcfg, batch, ref_params)
  m = batch["loss_mask"] > 0
  gap = lambda ev: np.mean(np.square(ev["logprobs"] - ev["ref_logprobs"])[m])
  assert metrics["kl"] > 1e-3 and gap(after) < 0.99 * gap(before), (gap(before), gap(after))


def test_value_loss_moves_values_toward_returns(small):
  cfg, params = small
  lcfg = lconfig(entropy_coef=0.0, kl_coef=0.0, value_coef=1.0, value_clip=None)
  batch = _neutral(cfg, params, lcfg)
  batch["returns"] = (batch["returns"] + np.where(batch["loss_mask"] > 0, 1.0, 0.0)).astype(np.float32)
  before, after, _ = _step(cfg, params, lcfg, batch)
  m = batch["loss_mask"] > 0
  err = lambda ev: np.mean(np.square(ev["old_values"] - batch["returns"])[m])
  assert err(after) < 0.99 * err(before), (err(before), err(after))


def test_positive_advantage_raises_its_tokens_logprob(small):
  cfg, params = small
  lcfg = lconfig(entropy_coef=0.0, kl_coef=0.0, critic="none")
  batch = _neutral(cfg, params, lcfg)
  sign = np.array([1.0, -1.0, 1.0, -1.0], np.float32)[:, None]
  batch["advantages"] = (sign * batch["loss_mask"]).astype(np.float32)
  before, after, metrics = _step(cfg, params, lcfg, batch)
  m = batch["loss_mask"] > 0
  diff = after["logprobs"] - before["logprobs"]
  assert diff[m & (sign > 0)].mean() > 1e-4 and diff[m & (sign < 0)].mean() < -1e-4
  assert metrics["loss"] < 0  # -A * ratio at ratio 1 with these advantages


def test_learner_logprobs_are_those_of_the_tempered_distribution(small):
  cfg, params = small
  batch = rows(2)
  logits, _ = forward(cfg, params, models.value.init_value_head(cfg, 0), batch)
  for temperature in (1.0, TEMPERATURE):
    lcfg = learner.LearnerConfig(temperature=temperature)
    ev = learner.evaluate_batch(cfg, learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(0)), batch,
                                "generate", B, lcfg)
    ref = losses.token_logprobs(np.asarray(logits, np.float64)[:, :-1] / temperature, batch["tokens"][:, 1:])
    np.testing.assert_allclose(ev["logprobs"][:, 1:], np.asarray(ref), rtol=1e-5, atol=1e-5)
