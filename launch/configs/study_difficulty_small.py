"""Small difficulty-transfer study on the CPU (TextCraft: easy = crafting depth 1-2, hard = depth >= 3):
train on easy, on hard, on both, and easy→hard; evaluate each on the easy and hard test splits.

  python -m launch.study --config=launch/configs/study_difficulty_small.py --workdir=runs/difficulty_small

Expected: ~15 minutes on 2 CPU cores; report.md with the difficulty table.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft"])
  c.study.protocol = "difficulty"
  c.study.envs = ["textcraft"]
  c.study.difficulty_env = "textcraft"
  c.study.eval_difficulties = ["easy", "hard"]
  return c
