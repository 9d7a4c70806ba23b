"""Small cross-env + sequential + mixture study on the CPU, three envs (ALFWorld, TextCraft, BabyAI), 3 seeds:
from one warm-started tiny model per seed, train on each env alone (the cross-env transfer matrix), on the
sequence ALFWorld → TextCraft → BabyAI (downstream gain, upstream forgetting, BWT/FWT), and on the 1:1:1
mixture with the sequence's budget; evaluate every stage on all three envs (easy test tasks).

  python -m launch.study --config=launch/configs/study_transfer_small.py --workdir=runs/transfer_small

Sized to the 2-core CPU: 100 expert demos per env (4 SFT epochs), 2 GRPO iterations of 4 tasks × 4 samples
per stage (6 for the mixture), 20 evaluation tasks × 2 sampled episodes per env and stage, 6 turns in 1024
tokens (the easy experts need 4.8 (ALFWorld), 4.9 (TextCraft), 1.9 (BabyAI) actions; their demos average
740, 480 and 600 tokens). Stages per seed: base, after:alfworld, after:alfworld>textcraft,
after:alfworld>textcraft>babyai, after:textcraft, after:babyai, mixture.

Measured (2026-11-30, shared 2-core CPU at load 4-6 with other studies running): 142 min for the 3 seeds
(~47 min each: warm start ~15 min, 6 stages, 7 evaluations of 3 envs). Results (avg score, mean [95%
interval] over seeds and tasks): BabyAI 0.18 (base) -> 0.32 after BabyAI, 0.35 after the sequence, 0.43
after the mixture; ALFWorld and TextCraft 0 everywhere (the warm start solves none of them, so their GRPO
stages leave the params bit-identical). Report: docs/examples/transfer_small_3seeds/.
"""

from launch.configs import study_small


def get_config():
  envs = ["alfworld", "textcraft", "babyai"]
  c = study_small.small(envs, iterations=3)
  c.seeds = 3
  c.study.protocol = "sequential"
  c.study.envs = envs
  c.study.orders = [envs]
  c.study.mixture_baseline = True
  c.study.single_env_baselines = True
  # 100 demos per env x 4 epochs solved no ALFWorld or TextCraft task; 400 x 8 solve a few (see above).
  c.study.warm_start_tasks_per_env = 400
  c.sft.epochs = 8
  c.rollout.max_turns = 10
  c.rollout.max_episode_tokens = 1024
  c.eval.tasks, c.eval.k = 20, 2
  return c
