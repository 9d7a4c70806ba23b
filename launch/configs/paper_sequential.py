"""Paper scale: sequential training WebShop → SearchQA → TextCraft → ALFWorld → BabyAI (and the reverse
order), each stage evaluated on all five envs, against joint mixture training with the same total budget.

  python -m launch.study --config=launch/configs/paper_sequential.py \
      --config.model=/models/Qwen2.5-7B-Instruct --workdir=/runs/sequential_7b

Expected cost: 10 sequential stages + 1 mixture stage (750 iterations) + the two single-env baselines of the
last envs; ~25-40 H100-hours for 7B. Expected result (the paper's finding): little upstream forgetting
(|BWT| small), positive downstream gain, sequential close to the mixture.
"""

from launch.configs import paper_common


def get_config():
  c = paper_common.recipe()
  c.envs = tuple(paper_common.ENVS)
  order = list(paper_common.ENVS)
  c.study.protocol = "sequential"
  c.study.envs = tuple(paper_common.ENVS)
  c.study.orders = (tuple(order), tuple(order[::-1]))
  c.study.mixture_baseline = c.study.single_env_baselines = True
  return c
