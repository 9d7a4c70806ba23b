"""Small sequential study on the CPU: TextCraft → BabyAI from a warm-started tiny model, each stage evaluated
on both envs, against a TextCraft+BabyAI mixture with the same budget and a BabyAI-alone baseline
(downstream gain).

  python -m launch.study --config=launch/configs/study_sequential_small.py --workdir=runs/sequential_small

Expected: ~12 minutes on 2 CPU cores; report.md with the R matrix, forgetting, BWT/FWT and the
sequential-vs-mixture table; r_matrix_0.png.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft", "babyai"])
  c.study.protocol = "sequential"
  c.study.envs = ["textcraft", "babyai"]
  c.study.orders = [["textcraft", "babyai"]]
  c.study.mixture_baseline = True
  c.study.single_env_baselines = True
  return c
