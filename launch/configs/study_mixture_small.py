"""Small joint (mixture) training on the CPU: TextCraft and BabyAI sampled 1:1 in every iteration.

  python -m launch.study --config=launch/configs/study_mixture_small.py --workdir=runs/mixture_small

Expected: ~8 minutes on 2 CPU cores; report.md with the transfer table of the mixture stage.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft", "babyai"], iterations=8)
  c.study.protocol = "mixture"
  c.study.envs = ["textcraft", "babyai"]
  c.study.weights = [1.0, 1.0]
  return c
