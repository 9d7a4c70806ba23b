"""Small cross-environment transfer matrix on the CPU: train on TextCraft, and separately on BabyAI, from the
same warm-started tiny model; evaluate both envs after each.

  python -m launch.study --config=launch/configs/study_cross_env_small.py --workdir=runs/cross_env_small

Expected: ~10 minutes on 2 CPU cores; results.json, report.md, transfer_heatmap.png. Held-in deltas (the
diagonal) should be larger than held-out ones.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft", "babyai"])
  c.study.protocol = "cross_env"
  c.study.envs = ["textcraft", "babyai"]
  return c
