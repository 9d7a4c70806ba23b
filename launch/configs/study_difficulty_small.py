"""Small difficulty-transfer study on the CPU (TextCraft: easy = crafting depth 1-2, hard = depth >= 3):
train on easy, on hard, on both, and easy→hard; evaluate each on the easy and hard test splits.

  python -m launch.study --config=launch/configs/study_difficulty_small.py --workdir=runs/difficulty_small

Cost on 2 CPU cores: ~2 hours, estimated from the cross-env study's TextCraft stage (choose-mode GRPO
iterations take 150-600 s on TextCraft, longer on hard tasks) — not run end to end on the CPU. The same
protocol at smoke size (1 iteration, 2 tasks, 3 turns) runs in ~3 minutes in
tests/test_study_protocols_run.py. Writes report.md with the difficulty table (every variant on the easy
and the hard test split).
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft"], iterations=3)
  c.study.protocol = "difficulty"
  c.study.envs = ["textcraft"]
  c.study.difficulty_env = "textcraft"
  c.rollout.max_episode_tokens = 1536  # hard TextCraft episodes average ~900 tokens
  c.study.eval_difficulties = ["easy", "hard"]
  return c
