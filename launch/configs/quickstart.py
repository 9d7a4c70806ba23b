"""Quickstart: a small agent learns BabyAI on the CPU, offline, in minutes.

  python -m launch.train --config=launch/configs/quickstart.py --workdir=runs/quickstart

The embedded SmolLM2-135M-Instruct is too slow to train on a 2-core CPU within minutes, so the CPU
quickstart uses the `tiny` preset (1.3M params, the project's own BPE tokenizer) on the easy BabyAI levels:
an SFT warm start on 300 expert demonstrations, then 8 GRPO iterations in the `choose` action mode (the
policy scores each valid action). Evaluation: 40 held-in test tasks (unseen seeds), greedy.
On an accelerator use --config.model=smollm2-135m-instruct (or a local HF folder).

Measured over 3 seeds (--config.seeds=3, seeds 0-2, 2026-11-30, shared 2-core CPU at load ~6 with two
studies running): greedy held-in success on 40 test tasks 0.000-0.025 (base) -> 0.25-0.30 (SFT on 296
demos, 126-132 steps) -> 0.425-0.55 (GRPO); GRPO above SFT on every seed (+0.125 to +0.300). 117 min for
the 3 seeds under that load (~39 min each); the first wave's 768-token version took 8 min 14 s idle.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["babyai"], iterations=8)
  c.sft.tasks = 300
  # A BabyAI turn costs ~200 tokens (observation + the listed valid actions), the first prompt ~420: 1536
  # tokens hold 5-6 turns (the easy expert needs 1.9 on average, at most 5). The first wave's 768 held 2-3, so
  # every task needing a third action was cut ("episode_tokens") and its demos were skipped from SFT.
  c.rollout.max_turns = 6
  c.rollout.max_episode_tokens = 1536
  c.eval.envs = ("babyai",)
  c.learner.lr, c.learner.mini_batch_size = 3e-4, 16
  c.eval.k, c.eval.temperature = 1, 0.0  # greedy
  return c
