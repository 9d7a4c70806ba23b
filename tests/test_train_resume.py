"""Training resumes exactly: a run stopped after iteration 1 and restarted ends with the same params (bit
for bit, on CPU) as an uninterrupted run with the same seed."""

import os

import pytest

from agentgen_jax import agent, checkpoint, config, logs, rl_loop, tasks
from tests import train_config_tiny


def _config(iterations):
  c = train_config_tiny.get_config()
  c.iterations = iterations
  return c


def _train(c, workdir):
  cfg = config.resolve(c)
  policy = agent.from_config(cfg)
  logger = logs.Logger(workdir)
  with tasks.make_pool(cfg, cfg.envs) as pool:
    params, curves = rl_loop.rl_train(cfg, policy, policy.params, pool, logs.StageOutput(workdir, logger))
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
  # The learner batch's sizes only grow over a run; the resumed run starts from the checkpointed ones.
  meta = checkpoint.Checkpointer(os.path.join(part, "checkpoints"), read_only=True).restore_meta(1)
  assert meta["batch_floor"]["t"] >= 16
