"""Small cross-env + sequential + mixture study on the CPU, three envs (ALFWorld, TextCraft, BabyAI), 3 seeds:
from one warm-started tiny model, train on each env alone (the cross-env transfer matrix), on the sequence
ALFWorld → TextCraft → BabyAI (downstream gain, upstream forgetting, BWT/FWT), and on the 1:1:1 mixture with
the sequence's budget; evaluate every stage on all three envs (easy test tasks).

  python -m launch.train --config=launch/configs/study_transfer_small.py --workdir=runs/transfer_ws
      --config.iterations=0 --config.sft.tasks=1200 --config.seeds=1          (the warm start, once)
  python -m launch.study --config=launch/configs/study_transfer_small.py --workdir=runs/transfer_small
      --config.study.warm_start_from=runs/transfer_ws/sft                      (the study)

(each command on one line). The first trains the warm start once (SFT on 400 easy expert demos per env, 8
epochs) and evaluates it on the three envs; every seed of the study then starts from it, as the paper's
seeds share one instruct model. Without study.warm_start_from each seed trains its own
warm start (the same SFT, ~30 min per seed on two cores), so that the seeds' intervals also cover the SFT.

Sized to the 2-core CPU: 3 GRPO iterations of 4 tasks × 4 samples per stage (9 for the mixture), 20 evaluation
tasks × 2 sampled episodes per env and stage, 10 turns in 1024 tokens (the easy experts need 4.8 (ALFWorld),
4.9 (TextCraft), 1.9 (BabyAI) actions; their demos average 740, 480 and 600 tokens). Stages per seed: base,
after:alfworld, after:alfworld>textcraft, after:alfworld>textcraft>babyai, after:textcraft, after:babyai,
mixture.

Measured (2026-12-01, shared 2-core CPU with benchmarks beside it, load 3-8): the warm start 37 min (SFT on
1183 demos, 608 steps, final token accuracy 0.94, plus its evaluation); the three seeds as three processes
side by side 50 min; 88 min in all. Results (avg score, mean [95% interval] over seeds and tasks): the warm
start solves ALFWorld 0.017 [0.000, 0.067], TextCraft 0.100 [0.033, 0.183], BabyAI 0.599 [0.495, 0.699]
(100 demos per env for 4 epochs had solved no ALFWorld or TextCraft task). ALFWorld and TextCraft scores do
not move in any stage (success is nearly all-or-nothing per task); training on TextCraft lifts held-out
BabyAI +0.023 [+0.000, +0.054] (every seed +0.02); BabyAI training lowers BabyAI (alone −0.067 [−0.164,
+0.014]; the mixture, with three times the BabyAI updates, −0.171 [−0.286, −0.051]). Report:
docs/examples/transfer_small_3seeds/.
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
