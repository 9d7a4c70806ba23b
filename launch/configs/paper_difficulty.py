"""Paper scale: difficulty transfer inside one env (default WebShop): train on easy, on hard, on both, and
easy→hard curriculum; evaluate each on the easy and hard test splits.

  python -m launch.study --config=launch/configs/paper_difficulty.py \
      --config.model=/models/Qwen2.5-3B-Instruct --config.study.difficulty_env=alfworld --workdir=...

Expected cost: 4 stages x 150 iterations. Time: not measured (no accelerator was lent); "~6-12 H100-hours
for 3B" is an estimate, not a measurement.
Memory: as launch/configs/paper_cross_env.py's (the same model, mesh and batch sizes; launch.plan gives the
same numbers for this config).
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
