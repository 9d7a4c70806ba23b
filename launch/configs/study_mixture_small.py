"""Small joint (mixture) training on the CPU: TextCraft and BabyAI sampled 1:1 in every iteration, 6
iterations (the budget of the two 3-iteration stages of study_sequential_small.py, whose `mixture` stage is
this one: same name, same seed, same numbers).

  python -m launch.study --config=launch/configs/study_mixture_small.py --workdir=runs/mixture_small

Cost, measured on an idle 2-core CPU: ~18 minutes (warm start and base evaluation 8.5 min, 6 mixture
iterations 8 min, evaluation 1.5 min). Writes report.md with the transfer table of the mixture stage.
Measured at commit a2df838, when the RL stages trained on every difficulty (they now train on
config.train_difficulty, easy) — measured (seed 0): BabyAI 0.071 → 0.244, TextCraft 0.013 → 0.000.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft", "babyai"], iterations=6)
  c.study.protocol = "mixture"
  c.study.envs = ["textcraft", "babyai"]
  c.study.weights = [1.0, 1.0]
  return c
