"""Mixed precision: `dtype` is the compute dtype only. Params and Adam moments stay float32 master weights,
so an lr-1e-6 step moves the weights; stored in bfloat16 the same step is lost to rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentgen_jax import models
from agentgen_jax.rl import learner, sft


def _batch(cfg, rows=4, length=24, seed=0):
  rng = np.random.default_rng(seed)
  return {"tokens": rng.integers(0, cfg.vocab_size, (rows, length)).astype(np.int32),
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
          "valid": np.ones((rows, length), bool), "loss_mask": np.ones((rows, length), np.float32)}


def _moved_fraction(param_dtype: str) -> tuple[float, set]:
  """Fraction of weights one lr-1e-6 AdamW step changes, bf16 compute; and the dtypes in the state."""
  cfg = models.preset("tiny", num_layers=1, dtype="bfloat16", param_dtype=param_dtype)
  params = models.init_params(cfg, 0)
  lcfg = learner.LearnerConfig(lr=1e-6, micro_batch_size=4, mini_batch_size=4, kl_coef=0.0)
  state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(0))
  state, _ = sft.make_sft_step(cfg, lcfg)(state, _batch(cfg))
  before, after = jax.tree.leaves(params), jax.tree.leaves(state.params)
  moved = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in zip(before, after))
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim > 0}
  return moved / sum(x.size for x in before), dtypes


def test_float32_master_weights_take_an_lr_1e6_step_under_bf16_compute():
  moved, dtypes = _moved_fraction("float32")
  assert dtypes == {jnp.dtype(jnp.float32)}  # params, Adam mu and nu
  assert moved > 0.9, moved


def test_bfloat16_storage_loses_the_same_step():
  # A weight of size ~0.02 has a bf16 spacing of 2**-13 ~ 1.2e-4: a 1e-6 step rounds back to it, and
  # norm scales (1.0, spacing 2**-7) never move. This is why param_dtype defaults to float32.
  moved, dtypes = _moved_fraction("bfloat16")
  assert jnp.dtype(jnp.bfloat16) in dtypes
  assert moved < 0.05, moved


def test_forward_casts_float32_params_to_the_compute_dtype():
  cfg, params = models.load("tiny", dtype="bfloat16")
  tokens = _batch(cfg, rows=2, length=10)["tokens"]
  cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  from_f32 = models.logits(cfg, params, tokens)
  from_bf16 = models.logits(cfg.replace(param_dtype="bfloat16"), cast, tokens)
  np.testing.assert_array_equal(np.asarray(from_f32), np.asarray(from_bf16))
  f32_compute = models.logits(cfg.replace(dtype="float32"), params, tokens)
  assert not np.array_equal(np.asarray(from_f32), np.asarray(f32_compute))  # it really ran in bf16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_init_params_stores_param_dtype_whatever_the_compute_dtype(dtype):
  cfg = models.preset("tiny", dtype=dtype)
  assert {x.dtype for x in jax.tree.leaves(models.init_params(cfg, 0))} == {jnp.dtype(jnp.float32)}
