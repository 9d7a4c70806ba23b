"""Checkpoints restore the exact run state; max_to_keep prunes; digests detect any bit change."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agentgen_jax.checkpoint import Checkpointer, params_digest


def _state(seed):
  params = {"w": jax.random.normal(jax.random.PRNGKey(seed), (4, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  opt = optax.adamw(1e-3)
  return {"params": params, "opt": opt.init(params), "step": jnp.int32(seed),
          "rng": jax.random.PRNGKey(seed + 1), "key": jax.random.key(seed + 2)}


def test_restore_is_bit_identical_with_metadata(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "c"))
  state = _state(3)
  ckpt.save(7, state, {"stage": "after:babyai", "sampler_position": 12})
  restored, meta = ckpt.restore(_state(0))
  assert meta == {"stage": "after:babyai", "sampler_position": 12}
  assert params_digest(restored) == params_digest(state)
  assert restored["params"]["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(state["key"]))


def test_max_to_keep_prunes_old_steps(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "c"), max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {})
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3


def test_digest_changes_with_one_bit():
  state = _state(1)
  flipped = jax.tree.map(lambda x: x, state)
  flipped["params"] = dict(state["params"], w=state["params"]["w"].at[0, 0].add(1e-7))
  assert params_digest(flipped["params"]) != params_digest(state["params"])


def test_restore_from_empty_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    Checkpointer(str(tmp_path / "none")).restore(_state(0))
