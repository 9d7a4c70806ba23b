"""The short TextCraft run that the resume and fault tests train (tests/test_train_resume.py imports it,
tests/test_train_faults.py passes it to `launch.train --config=`): the tiny model, 4 iterations of 2 tasks
× 2 samples, 2 turns of 8 tokens. entropy_coef makes every update move the params (the tiny model never
succeeds at TextCraft, so GRPO's advantages are all zero and would leave them unchanged)."""

from agentgen_jax.config import default_config


def get_config():
  c = default_config()
  c.model, c.envs = "tiny", ("textcraft",)
  c.train_difficulty = "easy"
  c.pool_size, c.workers = 4, 1
  c.rollout.mode = "generate"
  c.rollout.max_turns, c.rollout.max_new_tokens, c.rollout.max_episode_tokens = 2, 8, 768
  c.iterations, c.tasks_per_iteration, c.group_size = 4, 2, 2
  c.learner.micro_batch_size, c.learner.mini_batch_size = 2, 4
  c.learner.lr = 1e-3
  c.learner.entropy_coef = 0.01
  c.eval.tasks, c.eval.k, c.eval.difficulty = 2, 1, "easy"
  return c
