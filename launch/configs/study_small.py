"""Shared settings of the small CPU studies (study_*_small.py): the `tiny` model warm-started by SFT on
expert demonstrations of every study env (the stand-in for an instruct model's general ability), then GRPO
in the `choose` action mode. Not a launch config itself.
"""

from agentgen_jax import trainer


def small(envs, iterations: int = 6):
  c = trainer.default_config()
  c.model = "tiny"
  c.seed = 0
  c.envs = tuple(envs)
  c.pool_size, c.workers = 16, 2
  c.rollout.mode = "choose"
  c.rollout.max_turns = 10
  c.rollout.max_episode_tokens = 1024
  c.algo = "grpo"
  c.iterations = iterations
  c.tasks_per_iteration = 4
  c.group_size = 4
  c.learner.lr = 3e-4
  c.learner.clip_low, c.learner.clip_high = 0.2, 0.28
  c.learner.micro_batch_size = 2  # choice batches pack every candidate: keep attention memory small
  c.learner.mini_batch_size = 16
  c.sft.epochs = 3
  c.sft.batch_size = 16
  c.sft.lr = 2e-3
  c.eval.tasks = 16
  c.eval.k = 2
  c.eval.temperature = 1.0
  c.study = dict(warm_start_tasks_per_env=60)
  return c
