"""study.warm_start_from: a study's base stage takes its params from an earlier run's SFT checkpoint (one per
seed through "{seed}") instead of training its own warm start; missing or foreign checkpoints are one-line
errors."""

import dataclasses

import jax
import numpy as np
import pytest

from agentgen_jax import checkpoint, config, models
from agentgen_jax.study import protocols


def _cfg(**study):
  c = config.default_config()
  c.model = "tiny"
  c.envs = ("babyai",)
  c.study.update(study)
  return config.resolve(c)


def _save(path, params, model="tiny"):
  ckpt = checkpoint.Checkpointer(str(path), max_to_keep=1)
  ckpt.save(1, params, {"demos": 3, "base_model": model})
  ckpt.close()


def test_restores_the_seeds_checkpoint(tmp_path):
  _, like = models.load("tiny", seed=0)
  trained = {s: jax.tree.map(lambda x, s=s: x + (s + 1) * 0.5, like) for s in (3, 4)}
  for s, p in trained.items():
    _save(tmp_path / f"seed_{s}" / "sft", p)
  cfg = _cfg(warm_start_from=str(tmp_path / "seed_{seed}" / "sft"))
  for s, p in trained.items():
    got = protocols.warm_start_params(dataclasses.replace(cfg, seed=s), like)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(p)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_or_foreign_checkpoint_is_a_one_line_error(tmp_path):
  _, like = models.load("tiny", seed=0)
  with pytest.raises(FileNotFoundError, match="no such directory"):
    protocols.warm_start_params(_cfg(warm_start_from=str(tmp_path / "nope")), like)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint there"):
    protocols.warm_start_params(_cfg(warm_start_from=str(tmp_path / "empty")), like)
  _save(tmp_path / "other", like, model="smollm2-135m-instruct")
  with pytest.raises(ValueError, match="trained from model 'smollm2-135m-instruct'"):
    protocols.warm_start_params(_cfg(warm_start_from=str(tmp_path / "other")), like)
