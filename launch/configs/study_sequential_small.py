"""Small sequential study on the CPU: TextCraft → BabyAI from a warm-started tiny model, each stage evaluated
on both envs, against a TextCraft+BabyAI mixture with the same budget and a BabyAI-alone baseline
(downstream gain).

  python -m launch.study --config=launch/configs/study_sequential_small.py --workdir=runs/sequential_small

Cost, measured on an idle 2-core CPU: ~30 minutes (5 stages: base, after:textcraft, after:textcraft>babyai,
after:babyai, mixture of 6 iterations; the base and single-env stages are the cross-env study's, so a
workdir holding those finishes in 13 minutes). Writes report.md with the R matrix, forgetting, BWT/FWT, the
sequential-vs-mixture table and the downstream gain; r_matrix_0.png and the cross-env plots.

Measured at commit a2df838, when the RL stages trained on every difficulty (they now train on
config.train_difficulty, easy) — measured (seed 0, BabyAI score): after BabyAI alone 0.224, mixture 0.244,
TextCraft→BabyAI 0.012. With 3 iterations a stage gets one or two non-zero GRPO updates (most groups fail
together), so one update can help or hurt: these numbers are noise-level; the README has a larger run.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft", "babyai"], iterations=3)
  c.study.protocol = "sequential"
  c.study.envs = ["textcraft", "babyai"]
  c.study.orders = [["textcraft", "babyai"]]
  c.study.mixture_baseline = True
  c.study.single_env_baselines = True
  return c
