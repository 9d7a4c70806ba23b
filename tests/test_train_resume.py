"""Training resumes exactly: a run stopped after iteration 1 and restarted ends with the same params (bit
for bit, on CPU) as an uninterrupted run with the same seed."""

import os

import pytest

from agentgen_jax import checkpoint, trainer


def _config(iterations):
  c = trainer.default_config()
  c.model, c.envs = "tiny", ("textcraft",)
  c.train_difficulty = "easy"
  c.pool_size, c.workers = 4, 1
  c.rollout.mode = "generate"
  c.rollout.max_turns, c.rollout.max_new_tokens, c.rollout.max_episode_tokens = 2, 8, 768
  c.iterations, c.tasks_per_iteration, c.group_size = iterations, 2, 2
  c.learner.micro_batch_size, c.learner.mini_batch_size = 2, 4
  c.learner.lr = 1e-3
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
