"""Paper scale: the cross-environment transfer matrix (train on each of the five envs, evaluate on all).

  python -m launch.study --config=launch/configs/paper_cross_env.py \
      --config.model=/models/Qwen2.5-3B-Instruct --workdir=/runs/cross_env_3b
  # or as a Slurm array, one env per job:
  CONFIG=launch/configs/paper_cross_env.py WORKDIR=/runs/cross_env_3b \
      EXTRA=--config.model=/models/Qwen2.5-3B-Instruct bash launch/batch/cross_env.slurm

Expected cost: per stage 150 GRPO iterations x 64 episodes (~1.5-3 GPU-hours for 3B on one H100 at 8k tokens
per episode), plus 6 evaluations x 5 envs x 200 tasks x k=8; the study reports held-in gains well above
held-out gains (the paper's first cross-env finding).
"""

from launch.configs import paper_common


def get_config():
  c = paper_common.recipe()
  c.envs = tuple(paper_common.ENVS)
  c.study.protocol = "cross_env"
  c.study.envs = tuple(paper_common.ENVS)
  return c
