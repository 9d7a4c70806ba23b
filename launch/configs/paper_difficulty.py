"""Paper scale: difficulty transfer inside one env (default WebShop): train on easy, on hard, on both, and
easy→hard curriculum; evaluate each on the easy and hard test splits.

  python -m launch.study --config=launch/configs/paper_difficulty.py \
      --config.model=/models/Qwen2.5-3B-Instruct --config.study.difficulty_env=alfworld --workdir=...

Expected cost: 4 stages x 150 iterations. Time: not measured (no accelerator was lent); "~6-12 H100-hours
for 3B" is an estimate, not a measurement.
Memory (python -m launch.plan --config=<this file> --config.model=qwen2.5-3b --devices=8 --hbm_gb=80 and the
flags below; XLA:CPU temporaries: a guide, not a measurement; 2026-11-30, commit c6af930), Qwen2.5-3B on
8×H100-80GB with --config.mesh=fsdp:8 --config.remat=full
--config.learner.micro_batch_size=8 --config.pool_size=32 (the recipe's micro-batch 4 does not split over 8
devices): per device params 1.44 + Adam moments 2.88 + reference 1.44 + KV cache 3.38 GiB; peak 35.0 GiB in
the RL update (prefill 22.2, decode 11.0): fits.
Expected result: training on easy tasks transfers to hard ones; the curriculum is at least as good as
training on hard alone.
"""

from launch.configs import paper_common


def get_config():
  c = paper_common.recipe()
  c.envs = ("webshop",)
  c.study.protocol = "difficulty"
  c.study.envs = ("webshop",)
  c.study.difficulty_env = "webshop"
  c.study.eval_difficulties = ("easy", "hard")
  return c
