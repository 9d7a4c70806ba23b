"""Quickstart: a small agent learns BabyAI on the CPU, offline, in minutes.

  python -m launch.train --config=launch/configs/quickstart.py --workdir=runs/quickstart

The embedded SmolLM2-135M-Instruct is too slow to train on a 2-core CPU within minutes, so the CPU
quickstart uses the `tiny` preset (1.3M params, the project's own BPE tokenizer) on the easy BabyAI levels:
an SFT warm start on 300 expert demonstrations, then 8 GRPO iterations in the `choose` action mode (the
policy scores each valid action). Evaluation: 40 held-in test tasks (unseen seeds), greedy.
On an accelerator use --config.model=smollm2-135m-instruct (or a local HF folder).

Measured at commit a2df838 (then 768 episode tokens) on an idle 2-core CPU, seed 0: 8 min 14 s; held-in
success 0.000 (base) -> 0.425 (SFT) -> 0.475 (GRPO); another machine gave 0.450 -> 0.375 (one seed each: the
GRPO step is within the run-to-run spread). With 1536 tokens (seed 0, loaded CPU): SFT on 296 demos, 132
steps, 27 min under load; sampled-policy success on 40 held-in tasks x 4: 0.04 (base) -> 0.45 (SFT).
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
