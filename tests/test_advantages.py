"""Advantage estimators against float64 numpy loop references, on random inputs with gaps in the mask."""

import numpy as np
import pytest

from agentgen_jax.rl import advantages as adv_lib


def _random_episode_batch(seed, b=5, t=40):
  """Random rewards/values and a mask of agent turns separated by environment tokens (gaps)."""
  rng = np.random.default_rng(seed)
  rewards = rng.normal(size=(b, t))
  values = rng.normal(size=(b, t))
  mask = np.zeros((b, t), bool)
  turn_ids = np.full((b, t), -1, np.int32)
  for i in range(b):
    pos, turn = int(rng.integers(1, 5)), 0
    while pos < t - 2:
      length = int(rng.integers(1, 6))
      end = min(pos + length, t - int(rng.integers(0, 3)))
      mask[i, pos:end] = True
      turn_ids[i, pos:end] = turn
      turn += 1
      pos = end + int(rng.integers(1, 6))  # environment tokens in between
  return rewards, values, mask, turn_ids


def _ref_gae(rewards, values, mask, gamma, lam):
  """Float64 loop: walk each row backwards over masked positions only."""
  b, t = rewards.shape
  adv = np.zeros((b, t))
  for i in range(b):
    idx = [j for j in range(t) if mask[i, j]]
    last = 0.0
    for n in reversed(range(len(idx))):
      j = idx[n]
      next_v = values[i, idx[n + 1]] if n + 1 < len(idx) else 0.0
      delta = rewards[i, j] + gamma * next_v - values[i, j]
      last = delta + gamma * lam * last
      adv[i, j] = last
  returns = np.where(mask, adv + values, 0.0)
  return adv, returns


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 1.0), (1, 0.99, 0.95), (2, 0.9, 0.0)])
def test_token_gae_matches_loop_reference_and_skips_env_tokens(seed, gamma, lam):
  rewards, values, mask, _ = _random_episode_batch(seed)
  adv, ret = adv_lib.token_gae(rewards, values, mask, gamma, lam)
  ref_adv, ref_ret = _ref_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-5, atol=1e-5)
  # Env tokens carry nothing, whatever their reward or value.
  assert np.all(np.asarray(adv)[~mask] == 0)


def test_token_gae_ignores_values_and_rewards_of_env_tokens():
  rewards, values, mask, _ = _random_episode_batch(3)
  rng = np.random.default_rng(9)
  noisy_v = np.where(mask, values, rng.normal(size=values.shape) * 100)
  noisy_r = np.where(mask, rewards, rng.normal(size=rewards.shape) * 100)
  a1, _ = adv_lib.token_gae(rewards, values, mask, 0.97, 0.9)
  a2, _ = adv_lib.token_gae(noisy_r, noisy_v, mask, 0.97, 0.9)
  np.testing.assert_allclose(np.asarray(a1), np.asarray(a2), rtol=1e-5, atol=1e-5)


def test_token_gae_hand_case():
  # Tokens: [env, agent, agent, env, agent]; gamma = 0.5, lam = 1: next value of index 2 is index 4's.
  r = np.array([[0.0, 0.0, 1.0, 9.0, 2.0]])
  v = np.array([[5.0, 1.0, 2.0, 7.0, 3.0]])
  m = np.array([[0, 1, 1, 0, 1]], bool)
  adv, ret = adv_lib.token_gae(r, v, m, 0.5, 1.0)
  # Index 4: 2 - 3 = -1; index 2: 1 + 0.5*3 - 2 + 0.5*(-1) = 0; index 1: 0 + 0.5*2 - 1 + 0.5*0 = 0.
  np.testing.assert_allclose(np.asarray(adv), [[0, 0, 0, 0, -1]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(ret), [[0, 1, 2, 0, 2]], atol=1e-6)


def _ref_turn_gae(rewards, values, mask, turn_ids, gamma, lam):
  b, t = rewards.shape
  adv = np.zeros((b, t))
  ret = np.zeros((b, t))
  for i in range(b):
    turns = sorted({int(k) for k in turn_ids[i][mask[i]]})
    tr = [sum(rewards[i, j] for j in range(t) if mask[i, j] and turn_ids[i, j] == k) for k in turns]
    tv = [values[i, min(j for j in range(t) if mask[i, j] and turn_ids[i, j] == k)] for k in turns]
    last, ta = 0.0, [0.0] * len(turns)
    for n in reversed(range(len(turns))):
      next_v = tv[n + 1] if n + 1 < len(turns) else 0.0
      last = tr[n] + gamma * next_v - tv[n] + gamma * lam * last
      ta[n] = last
    for n, k in enumerate(turns):
      sel = mask[i] & (turn_ids[i] == k)
      adv[i, sel] = ta[n]
      ret[i, sel] = ta[n] + tv[n]
  return adv, ret


@pytest.mark.parametrize("seed,gamma,lam", [(4, 1.0, 1.0), (5, 0.95, 0.9)])
def test_turn_gae_matches_loop_reference(seed, gamma, lam):
  rewards, values, mask, turn_ids = _random_episode_batch(seed)
  adv, ret = adv_lib.turn_gae(rewards, values, mask, turn_ids, gamma, lam)
  ref_adv, ref_ret = _ref_turn_gae(rewards, values, mask, turn_ids, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-5, atol=1e-5)


def _ref_grpo(returns, groups, eps, normalize_std):
  out = np.zeros_like(returns)
  for i in range(len(returns)):
    g = returns[groups == groups[i]]
    out[i] = returns[i] - g.mean()
    if normalize_std:
      out[i] /= g.std() + eps
  return out


@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_matches_reference(normalize_std):
  rng = np.random.default_rng(6)
  returns = rng.normal(size=24)
  groups = rng.integers(0, 5, size=24) * 7 + 3  # arbitrary ids, uneven group sizes
  out = adv_lib.grpo(returns, groups, eps=1e-6, normalize_std=normalize_std)
  np.testing.assert_allclose(np.asarray(out), _ref_grpo(returns, groups, 1e-6, normalize_std),
                             rtol=1e-4, atol=1e-5)


def test_grpo_constant_group_and_padding_rows_give_zero():
  returns = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 5.0])
  groups = np.array([0, 0, 0, 1, 1, 1])
  valid = np.array([1, 1, 1, 1, 1, 0], bool)
  out = np.asarray(adv_lib.grpo(returns, groups, valid=valid))
  np.testing.assert_allclose(out[:3], 0.0, atol=1e-6)
  # Group 1 without the padding row: returns {0, 1}, mean 0.5, std 0.5.
  np.testing.assert_allclose(out[3:], [-1.0, 1.0, 0.0], atol=1e-4)


def test_rloo_leave_one_out_matches_reference():
  rng = np.random.default_rng(7)
  returns = rng.normal(size=20)
  groups = rng.integers(0, 6, size=20)
  out = np.asarray(adv_lib.rloo(returns, groups))
  ref = np.zeros(20)
  for i in range(20):
    others = [returns[j] for j in range(20) if groups[j] == groups[i] and j != i]
    ref[i] = returns[i] - (np.mean(others) if others else 0.0)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_broadcast_to_tokens():
  mask = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], np.float32)
  out = np.asarray(adv_lib.broadcast_to_tokens(np.array([2.0, -1.0]), mask))
  np.testing.assert_array_equal(out, [[0, 2, 2, 0], [-1, 0, 0, -1]])


def _ref_group_norm_f64(returns, groups, valid, eps=1e-6):
  """Two-pass float64 GRPO on the same float32 inputs, and RLOO."""
  x = np.asarray(returns, np.float32).astype(np.float64)
  grpo_ref, rloo_ref = np.zeros_like(x), np.zeros_like(x)
  for i in np.nonzero(valid)[0]:
    g = x[(groups == groups[i]) & valid]
    grpo_ref[i] = (x[i] - g.mean()) / (g.std() + eps)
    rloo_ref[i] = x[i] - (g.sum() - x[i]) / (len(g) - 1) if len(g) > 1 else x[i]
  return grpo_ref, rloo_ref


@pytest.mark.parametrize("returns", [
    [0.5, 0.5001, 0.4999, 0.5],                  # near-constant: E[x^2] - E[x]^2 gave +-100 here
    [1000.0, 1000.01, 1000.02, 999.99],          # offset group: the one-pass variance is pure rounding
    [1e4 + 0.25, 1e4 - 0.25, 1e4 + 0.5, 1e4],
])
def test_group_statistics_are_accurate_in_float32(returns):
  groups, valid = np.zeros(4, np.int32), np.ones(4, bool)
  grpo_ref, rloo_ref = _ref_group_norm_f64(returns, groups, valid)
  np.testing.assert_allclose(np.asarray(adv_lib.grpo(np.float32(returns), groups)), grpo_ref, rtol=2e-3)
  np.testing.assert_allclose(np.asarray(adv_lib.rloo(np.float32(returns), groups)), rloo_ref,
                             rtol=2e-3, atol=1e-6)


def test_invalid_episodes_are_left_out_of_group_statistics():
  # Episode 2 of group 0 crashed (env failure, reward 0): the group's statistics are those of the rest.
  returns = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], np.float32)
  groups = np.array([0, 0, 0, 0, 1, 1])
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  grpo_ref, rloo_ref = _ref_group_norm_f64(returns, groups, valid)
  out = np.asarray(adv_lib.grpo(returns, groups, valid=valid))
  np.testing.assert_allclose(out, grpo_ref, rtol=1e-4, atol=1e-5)
  assert out[2] == 0.0
  np.testing.assert_allclose(np.asarray(adv_lib.rloo(returns, groups, valid=valid)), rloo_ref, atol=1e-6)


def test_token_gae_bootstraps_truncated_rows_from_the_given_value():
  # One row, agent units at 0, 2, 3 (1 is an env token); gamma 0.5, lam 1, cut after unit 3 with V = 4.
  rewards = np.array([[1.0, 9.0, 0.0, 2.0]], np.float32)
  values = np.array([[0.5, 7.0, 1.0, 3.0]], np.float32)
  mask = np.array([[1, 0, 1, 1]], np.float32)
  adv, ret = adv_lib.token_gae(rewards, values, mask, 0.5, 1.0, bootstrap=np.array([4.0]))
  # returns: unit 3: 2 + 0.5 * 4 = 4; unit 2: 0 + 0.5 * 4 = 2; unit 0: 1 + 0.5 * 2 = 2.
  np.testing.assert_allclose(np.asarray(ret), [[2.0, 0.0, 2.0, 4.0]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(adv), [[1.5, 0.0, 1.0, 1.0]], atol=1e-6)
  # Without bootstrap (termination): unit 3's return is its reward.
  _, ret0 = adv_lib.token_gae(rewards, values, mask, 0.5, 1.0)
  np.testing.assert_allclose(np.asarray(ret0), [[1.5, 0.0, 1.0, 2.0]], atol=1e-6)
  # Turn GAE: the same bootstrap after the last turn. Turns: {0}, {2, 3}; turn values 0.5, 1.0.
  turn_ids = np.array([[0, -1, 1, 1]])
  _, tret = adv_lib.turn_gae(rewards, values, mask, turn_ids, 0.5, 1.0, bootstrap=np.array([4.0]))
  # turn 1: 2 + 0.5 * 4 = 4; turn 0: 1 + 0.5 * 4 = 3.
  np.testing.assert_allclose(np.asarray(tret), [[3.0, 0.0, 4.0, 4.0]], atol=1e-6)
