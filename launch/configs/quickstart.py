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

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft"], iterations=12)  # tiny model, choose mode, GRPO (shared settings)
  c.train_difficulty = "easy"
  c.sft.tasks = 160
  c.eval.envs = ("textcraft",)
  c.eval.difficulty = "easy"
  c.eval.tasks = 24
  return c
