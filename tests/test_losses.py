"""Loss terms against hand-computed cases and float64 numpy formulas."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax.rl import learner, losses


def test_policy_surrogate_hand_cases_with_asymmetric_clip():
  # clip_low = 0.2, clip_high = 0.28: the trust region is ratio in [0.8, 1.28].
  ratio = np.array([1.0, 1.5, 1.5, 0.5, 0.5, 1.2])
  adv = np.array([2.0, 1.0, -1.0, 1.0, -1.0, 1.0])
  old = np.zeros(6)
  loss, active = losses.policy_surrogate(np.log(ratio), old, adv, 0.2, 0.28)
  # A>0 ratio 1.5 -> clipped at 1.28; A<0 ratio 1.5 -> unclipped 1.5 (min picks the more pessimistic);
  # A>0 ratio 0.5 -> unclipped 0.5; A<0 ratio 0.5 -> clipped at 0.8; ratio 1.2 inside the region.
  np.testing.assert_allclose(np.asarray(loss), [-2.0, -1.28, 1.5, -0.5, 0.8, -1.2], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(active), [False, True, False, False, True, False])


def test_value_loss_clipped_and_unclipped():
  v = np.array([3.0, 0.0, 1.1])
  old = np.array([1.0, 1.0, 1.0])
  ret = np.array([0.0, 0.0, 5.0])
  # Row 0: (3-0)^2=9, clipped v = 1.5 -> 2.25, max 9 -> 4.5. Row 1: 0 vs (0.5)^2 -> 0.125.
  # Row 2: (1.1-5)^2 = 15.21, clipped 1.1 (inside) -> same -> 7.605.
  out = np.asarray(losses.value_loss(v, old, ret, 0.5))
  np.testing.assert_allclose(out, [4.5, 0.125, 7.605], rtol=1e-6)
  out = np.asarray(losses.value_loss(v, old, ret, None))
  np.testing.assert_allclose(out, [4.5, 0.0, 7.605], rtol=1e-6)


def test_kl_estimators_hand_cases():
  logp = np.array([-1.0, -2.0, -0.5])
  ref = np.array([-1.5, -2.0, -0.1])
  k1 = np.asarray(losses.kl_estimate(logp, ref, "k1"))
  k3 = np.asarray(losses.kl_estimate(logp, ref, "k3"))
  np.testing.assert_allclose(k1, [0.5, 0.0, -0.4], rtol=1e-6, atol=1e-7)
  expect = [math.exp(r) - 1 - r for r in (-0.5, 0.0, 0.4)]
  np.testing.assert_allclose(k3, expect, rtol=1e-5, atol=1e-7)
  assert np.all(k3 >= 0)
  k2 = np.asarray(losses.kl_estimate(logp, ref, "k2"))
  np.testing.assert_allclose(k2, [0.125, 0.0, 0.08], rtol=1e-5)
  with pytest.raises(ValueError, match="k4"):
    losses.kl_estimate(logp, ref, "k4")


def test_kl_estimators_are_unbiased_on_samples():
  # Sample from p; E_p[k1] and E_p[k3] both equal KL(p || q).
  rng = np.random.default_rng(0)
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.3, 0.5])
  x = rng.choice(3, size=200_000, p=p)
  kl = float(np.sum(p * np.log(p / q)))
  for est in ("k1", "k3"):
    mean = float(np.mean(np.asarray(losses.kl_estimate(np.log(p[x]), np.log(q[x]), est))))
    assert abs(mean - kl) < 0.01, (est, mean, kl)


def test_kl_penalty_rewards_only_on_masked_units():
  r = np.array([[0.0, 1.0, 0.0]])
  out = np.asarray(losses.kl_penalty_rewards(r, np.array([[-1.0, -1.0, -1.0]]),
                                             np.array([[-2.0, -2.0, -2.0]]),
                                             np.array([[0, 1, 1]]), 0.1, "k1"))
  np.testing.assert_allclose(out, [[0.0, 0.9, -0.1]], rtol=1e-6)


def test_entropy_and_token_logprobs_match_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 7)) * 3
  targets = rng.integers(0, 7, size=(2, 3))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(losses.entropy_from_logits(logits)), -(p * np.log(p)).sum(-1),
                             rtol=1e-5)
  ref_lp = np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])
  np.testing.assert_allclose(np.asarray(losses.token_logprobs(logits, targets)), ref_lp, rtol=1e-5)


def test_masked_reductions_ignore_nan_outside_mask():
  x = np.array([[1.0, np.nan], [3.0, np.inf]])
  m = np.array([[1, 0], [1, 0]])
  assert float(losses.masked_sum(x, m)) == 4.0
  assert float(losses.masked_mean(x, m)) == 2.0
  np.testing.assert_allclose(np.asarray(losses.masked_mean(x, m, axis=1)), [1.0, 3.0])
  assert float(losses.masked_mean(x, np.zeros_like(m))) == 0.0


def test_explained_variance():
  ret = np.array([1.0, 2.0, 3.0, 100.0])
  m = np.array([1, 1, 1, 0])
  assert abs(float(losses.explained_variance(ret, ret, m)) - 1.0) < 1e-6
  assert abs(float(losses.explained_variance(np.full(4, 2.0), ret, m))) < 1e-6


# ---- which divergence each KL estimator's gradient follows, on an exact categorical ---------------------

def _expected_kl_loss_grad(estimator, theta, ref_logp):
  """E_{a ~ pi}[grad kl_estimate(log pi(a), log ref(a))] summed exactly over all outcomes, the sampling
  weights pi(a) held fixed (the learner differentiates the estimate at sampled units, not the sampler)."""
  def expected(theta):
    logp = jax.nn.log_softmax(theta)
    weights = jax.lax.stop_gradient(jnp.exp(logp))
    return jnp.sum(weights * losses.kl_estimate(logp, ref_logp, estimator))
  return np.asarray(jax.grad(expected)(theta), np.float64)


def _kl(p, q):
  return float(np.sum(p * (np.log(p) - np.log(q))))


def _categorical(seed, v=6):
  rng = np.random.default_rng(seed)
  theta = (rng.normal(size=v) * 1.5).astype(np.float32)
  ref_theta = (rng.normal(size=v) * 1.5).astype(np.float32)
  return jnp.asarray(theta), jax.nn.log_softmax(jnp.asarray(ref_theta)), ref_theta


def _grad_kl_analytic(theta, ref_theta, forward: bool):
  """d/dtheta of KL(pi||ref) (forward) or KL(ref||pi), pi = softmax(theta), in float64."""
  theta = np.asarray(theta, np.float64)
  softmax = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()
  pi, ref = softmax(theta), softmax(np.asarray(ref_theta, np.float64))
  if forward:  # d KL(pi||ref) / d theta_j = pi_j (log pi_j - log ref_j - KL(pi||ref))
    return pi * (np.log(pi) - np.log(ref) - _kl(pi, ref))
  return pi - ref  # d KL(ref||pi) / d theta = -d sum ref log pi / d theta = pi - ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k2_loss_gradient_is_the_gradient_of_kl_pi_ref(seed):
  theta, ref_logp, ref_theta = _categorical(seed)
  g = _expected_kl_loss_grad("k2", theta, ref_logp)
  np.testing.assert_allclose(g, _grad_kl_analytic(theta, ref_theta, forward=True), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k3_loss_gradient_is_the_gradient_of_kl_ref_pi(seed):
  theta, ref_logp, ref_theta = _categorical(seed)
  g = _expected_kl_loss_grad("k3", theta, ref_logp)
  np.testing.assert_allclose(g, _grad_kl_analytic(theta, ref_theta, forward=False), rtol=1e-4, atol=1e-6)
  # ... which is not the gradient of KL(pi||ref), unless pi = ref.
  assert np.abs(g - _grad_kl_analytic(theta, ref_theta, forward=True)).max() > 1e-2


def test_k1_loss_has_zero_expected_gradient_and_is_refused():
  theta, ref_logp, _ = _categorical(3)
  np.testing.assert_allclose(_expected_kl_loss_grad("k1", theta, ref_logp), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="k1.*kl_mode='loss'.*k2"):
    learner.LearnerConfig(kl_estimator="k1", kl_mode="loss")
  learner.LearnerConfig(kl_estimator="k1", kl_mode="reward")  # as a reward penalty it is fine


# ---- loss aggregation and config refusals ---------------------------------------------------------------

def test_agg_weights_per_mode():
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)  # rows of 3, 1 and 0 units
  w = {m: np.asarray(losses.agg_weights(mask, m)) for m in losses.LOSS_AGGS}
  np.testing.assert_allclose(w["token-mean"], mask / 4)
  np.testing.assert_allclose(w["seq-mean-token-mean"][0], [1 / 6, 1 / 6, 1 / 6, 0])
  np.testing.assert_allclose(w["seq-mean-token-mean"][1], [1 / 2, 0, 0, 0])
  np.testing.assert_allclose(w["seq-mean-token-sum"], mask / 2)  # the empty row is not a sequence
  for m in losses.LOSS_AGGS:
    assert np.all(w[m][2] == 0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(estimator="ppo"), "estimator='ppo' is not one of ('grpo', 'rloo', 'reinforce'"),
    (dict(loss_agg="mean"), "loss_agg='mean' is not one of ('token-mean'"),
    (dict(temperature=0.0), "temperature=0.0 must be > 0"),
    (dict(estimator="token_gae"), "needs a critic"),
    (dict(bootstrap_truncated=True), "bootstrap_truncated needs estimator in ('token_gae', 'turn_gae')"),
    (dict(gamma=1.5), "gamma=1.5"),
])
def test_learner_config_refuses_bad_values_naming_the_choices(kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    learner.LearnerConfig(**kwargs)
