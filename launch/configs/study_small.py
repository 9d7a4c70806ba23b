"""Shared settings of the small CPU studies (study_*_small.py): the `tiny` model warm-started by SFT on
expert demonstrations of every study env (the stand-in for an instruct model's general ability), then GRPO
in the `choose` action mode, on the easy tasks. Not a launch config itself.
"""

from agentgen_jax.config import default_config


def small(envs, iterations: int = 8):
  c = default_config()
  c.model = "tiny"
  c.seed = 0
  c.envs = tuple(envs)
  c.train_difficulty = "easy"
  c.pool_size, c.workers = 16, 2
  c.rollout.mode = "choose"
  # Easy tasks: the expert needs 1.9 (BabyAI) and 4.6 (TextCraft; 80% within 6) actions on average; every
  # turn adds ~14 TextCraft candidates (~100 tokens) to score in the choose-mode learner batch.
  c.rollout.max_turns = 6
  # Easy expert demos (24 train tasks each, tiny tokenizer): BabyAI mean 600 tokens (max 1208), TextCraft 480
  # (690), ALFWorld 740 (857). 768 cut BabyAI after 2 turns; attention is T^2, longer demos are skipped.
  c.rollout.max_episode_tokens = 1024
  c.learner.estimator = "grpo"
  c.iterations = iterations
  c.tasks_per_iteration = 4
  c.group_size = 4
  c.learner.lr = 5e-4
  c.learner.clip_low, c.learner.clip_high = 0.2, 0.28
  c.learner.micro_batch_size = 2  # choice batches score every candidate: keep activation memory small
  c.learner.mini_batch_size = 8  # two optimiser steps per iteration
  c.sft.epochs = 6
  c.sft.batch_size = 16
  c.sft.micro_batch_size = 16
  c.sft.lr = 2e-3
  c.eval.difficulty = "easy"
  c.eval.tasks = 40
  c.eval.k = 2  # avg@2 and pass@2 of the sampled policy (the policy RL trains)
  c.eval.temperature = 1.0
  c.study.warm_start_tasks_per_env = 150
  c.study.eval_difficulties = ("easy",)
  return c


def smoke(c):
  """c shrunk to the smallest sizes that still run every step of a study (for tests): 1 iteration of
  2 tasks × 2 samples, 3 turns, 4 warm-start demos per env, 2 evaluation tasks."""
  c.iterations = 1
  c.tasks_per_iteration, c.group_size = 2, 2
  c.sft.epochs = 1
  c.eval.tasks, c.eval.k = 2, 1
  c.rollout.max_turns = 3
  c.rollout.max_episode_tokens = 768
  c.pool_size = 4
  c.study.warm_start_tasks_per_env = 4
  return c
