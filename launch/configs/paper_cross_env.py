"""Paper scale: the cross-environment transfer matrix (train on each of the five envs, evaluate on all).

  python -m launch.study --config=launch/configs/paper_cross_env.py \
      --config.model=/models/Qwen2.5-3B-Instruct --workdir=/runs/cross_env_3b
  # or as a Slurm array, one env per job:
  CONFIG=launch/configs/paper_cross_env.py WORKDIR=/runs/cross_env_3b \
      EXTRA=--config.model=/models/Qwen2.5-3B-Instruct bash launch/batch/cross_env.slurm

Expected cost: per stage 150 GRPO iterations x 64 episodes, plus 6 evaluations x 5 envs x 200 tasks x k=8.
Time: not measured (no accelerator was lent); "~1.5-3 GPU-hours per stage for 3B on one H100 at 8k tokens
per episode" is an estimate, not a measurement.
Memory (python -m launch.plan --config=<this file> --config.model=qwen2.5-3b --devices=8 --hbm_gb=80 and the
flags below; XLA:CPU temporaries: a guide, not a measurement; 2026-11-30, commit c6af930), Qwen2.5-3B on
8×H100-80GB with --config.mesh=fsdp:8 --config.remat=full
--config.learner.micro_batch_size=8 --config.pool_size=32 (the recipe's micro-batch 4 does not split over 8
devices): per device params 1.44 + Adam moments 2.88 + reference 1.44 + KV cache 3.38 GiB; peak 35.0 GiB in
the RL update (prefill 22.2, decode 11.0): fits.
Expected result: held-in gains well above held-out gains (the paper's first cross-env finding).
"""

from launch.configs import paper_common


def get_config():
  c = paper_common.recipe()
  c.envs = tuple(paper_common.ENVS)
  c.study.protocol = "cross_env"
  c.study.envs = tuple(paper_common.ENVS)
  return c
