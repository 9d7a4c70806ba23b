"""SFT step on the tiny model: the loss is the exact token-mean NLL, and a few steps reduce it."""

import jax
import numpy as np

from agentgen_jax import models
from agentgen_jax.rl import learner, sft


def _batch(seed, b=4, t=20):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 4096, size=(b, t)).astype(np.int32)
  loss_mask = np.zeros((b, t), np.float32)
  valid = np.ones((b, t), bool)
  for i in range(b):
    loss_mask[i, 6:6 + 2 + 3 * i] = 1.0  # rows hold different numbers of loss tokens
    valid[i, t - i:] = False
  return dict(tokens=tokens, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)), valid=valid,
              loss_mask=loss_mask)


def _reference_nll(cfg, params, batch):
  """Float64 mean next-token NLL over all loss tokens of the batch."""
  logits, _, _ = models.forward(cfg, params, batch["tokens"], batch["positions"], batch["valid"])
  lp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  total, count = 0.0, 0
  b, t = batch["tokens"].shape
  for i in range(b):
    for j in range(1, t):
      if batch["loss_mask"][i, j] > 0:
        total -= lp[i, j - 1, batch["tokens"][i, j]]
        count += 1
  return total / count


def test_sft_steps_reduce_the_exact_token_mean_loss():
  cfg = models.preset("tiny")
  params = models.init_params(cfg, jax.random.PRNGKey(0))
  batch = _batch(0)
  before = _reference_nll(cfg, params, batch)
  lcfg = learner.LearnerConfig(lr=3e-3, micro_batch_size=2, mini_batch_size=4)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(1))
  step = sft.make_sft_step(cfg, lcfg)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  # The first step reports the loss of the initial params, reduced over tokens, not micro-batch means.
  assert abs(losses[0] - before) < 1e-4 * before, (losses[0], before)
  assert float(metrics["n_tokens"]) == batch["loss_mask"].sum()
  after = _reference_nll(cfg, state.params, batch)
  assert after < 0.7 * before, (before, after, losses)
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert int(state.step) == 6
  # The update donates the state, not the caller's params: they still hold the initial values.
  assert abs(_reference_nll(cfg, params, batch) - before) < 1e-9


def test_sft_batches_group_demos_by_length_bucket():
  from agentgen_jax import demos as demos_lib
  from agentgen_jax import sampling
  rng = np.random.default_rng(0)
  lengths = [int(n) for n in rng.integers(20, 700, size=37)]
  demos = [{"tokens": np.zeros(n, np.int32)} for n in lengths]
  batches = demos_lib.sft_batches(demos, 8, np.random.default_rng(1))
  seen = [int(i) for idx, _ in batches for i in idx]
  assert set(seen) == set(range(len(demos)))  # every demo in the epoch
  for idx, seq_len in batches:
    assert len(idx) == 8  # one shape per bucket
    assert {sampling.bucket(lengths[i]) for i in idx} == {seq_len}  # no demo padded to another bucket
  # Fill-ups only repeat demos of the same bucket: each demo appears once plus at most 7 fills per bucket.
  n_buckets = len({sampling.bucket(n) for n in lengths})
  assert len(seen) - len(demos) <= 7 * n_buckets
  again = demos_lib.sft_batches(demos, 8, np.random.default_rng(1))
  assert [(list(a), s) for a, s in batches] == [(list(a), s) for a, s in again]  # seeded
  assert len({s for _, s in batches}) == n_buckets  # short demos get short batches
