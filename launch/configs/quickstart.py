"""Quickstart: a small agent learns TextCraft on the CPU, offline, in minutes.

  python -m launch.train --config=launch/configs/quickstart.py --workdir=runs/quickstart

The embedded SmolLM2-135M-Instruct is too slow to train on a 2-core CPU within minutes, so the CPU
quickstart uses the `tiny` preset (1.3M params, the project's own BPE tokenizer): an SFT warm start on
expert demonstrations, then GRPO in the `choose` action mode.

Measured so far (2-core CPU): base success 0.00 on held-in test tasks; after 60 SFT steps (160 demos,
6 epochs, ~8 s/step) still 0.00 with token accuracy 0.53 — the tiny model needs more SFT than fits in the
time budget, so this config does NOT yet show learning within 20 minutes (see the README). On an
accelerator use --config.model=smollm2-135m-instruct (or a local HF folder) and more SFT steps.
"""

from agentgen_jax import trainer


def get_config():
  c = trainer.default_config()
  c.model = "tiny"
  c.seed = 0
  c.envs = ["textcraft"]
  c.train_difficulty = "easy"
  c.pool_size, c.workers = 16, 2
  c.rollout.mode = "choose"
  c.rollout.max_turns = 10
  c.rollout.max_episode_tokens = 1024
  c.rollout.temperature = 1.0
  c.algo = "grpo"
  c.iterations = 12
  c.tasks_per_iteration = 4
  c.group_size = 4
  c.learner.lr = 3e-4
  c.learner.clip_low, c.learner.clip_high = 0.2, 0.28
  c.learner.micro_batch_size = 2  # choice batches pack every candidate: keep attention memory small
  c.learner.mini_batch_size = 16
  c.sft.tasks = 160
  c.sft.epochs = 3
  c.sft.batch_size = 16
  c.sft.lr = 2e-3
  c.eval.envs = ["textcraft"]
  c.eval.difficulty = "easy"
  c.eval.tasks = 24
  c.eval.k = 2
  c.eval.temperature = 1.0
  return c
