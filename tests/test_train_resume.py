"""Training resumes exactly: a run stopped after iteration 1 and restarted ends with the same params (bit
for bit, on CPU) as an uninterrupted run with the same seed."""

import os

import pytest

from agentgen_jax import checkpoint, trainer
from tests import train_config_tiny


def _config(iterations):
  c = train_config_tiny.get_config()
  c.iterations = iterations
  return c


def _train(c, workdir):
  policy = trainer.load_policy(c)
  logger = trainer.Logger(workdir)
  with trainer.make_pool(c, c.envs) as pool:
    params, curves = trainer.rl_train(c, policy, policy.params, pool, workdir, logger)
  logger.close()
  return checkpoint.params_digest(params), curves


@pytest.mark.slow
def test_stop_and_resume_gives_bit_identical_params(tmp_path):
  full, full_curves = _train(_config(2), str(tmp_path / "full"))
  part = str(tmp_path / "part")
  _train(_config(1), part)                      # "killed" after iteration 1 (its checkpoint is saved)
  resumed, curves = _train(_config(2), part)    # the same command again, with the full budget
  assert resumed == full
  assert [p["iteration"] for p in curves] == [0, 1]
  assert os.path.exists(os.path.join(part, "checkpoints", "2"))
  assert curves == full_curves
