"""Paper scale: sequential training WebShop → SearchQA → TextCraft → ALFWorld → BabyAI (and the reverse
order), each stage evaluated on all five envs, against joint mixture training with the same total budget.

  python -m launch.study --config=launch/configs/paper_sequential.py \
      --config.model=/models/Qwen2.5-7B-Instruct --workdir=/runs/sequential_7b

Expected cost: 10 sequential stages + 1 mixture stage (750 iterations) + the single-env baselines of the
three middle envs (the first env of each order is already trained alone): the full cross-env matrix.
Time: not measured (no accelerator was lent); "~25-40 H100-hours for 7B" is an estimate, not a
measurement.
Memory (python -m launch.plan --config=<this file> --config.model=qwen2.5-7b --config.remat=full --devices=N
--hbm_gb=80 and the flags below; XLA:CPU temporaries: a guide, not a measurement; 2026-11-30, commit c6af930):
- 8×H100-80GB, --config.mesh=fsdp:8 --config.learner.micro_batch_size=8 --config.pool_size=32: per device
  params 3.55 + Adam moments 7.09 + reference 3.55 + KV cache 5.25 GiB; peak 49.2 GiB in the RL update: fits.
- one 80 GB GPU, --config.learner.micro_batch_size=1 --config.pool_size=4: full fine-tuning 202 GiB (does
  not fit); with --config.lora.rank=64 --config.lora.alpha=128, 79.8 GiB at the prefill: fits, barely
  (README, LoRA).
Expected result (the paper's finding): little upstream forgetting (|BWT| small), positive downstream gain,
sequential close to the mixture.
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
