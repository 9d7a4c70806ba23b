"""Small cross-environment transfer matrix on the CPU: train on TextCraft, and separately on BabyAI, from the
same warm-started tiny model; evaluate both envs after each (easy test tasks, 40 tasks × 2 samples).

  python -m launch.study --config=launch/configs/study_cross_env_small.py --workdir=runs/cross_env_small

Cost, measured on an idle 2-core CPU: 17 minutes. Warm start (300 expert demos written as TFDS, 108 SFT
steps) 6.5 min, each evaluation of both envs ~2 min, the TextCraft stage 5 min (~14 candidate actions per
turn: 65-130 s per GRPO iteration), the BabyAI stage 50 s; measured before choose-mode learning scored
candidates as branches off the shared context. Since then (`python -m launch.benchmark --suites=choose
--baseline=2caea5e`, the untrained model's 6-turn TextCraft iteration, shared CPU at load ~5.5): learning
12.6 s instead of 35.3 s, the iteration 36 s instead of 58 s. Writes results.json, report.md,
transfer_heatmap.png, training_success.png, turns_tokens.png.

Measured at commit a2df838, when the RL stages trained on every difficulty (they now train on
config.train_difficulty, easy) — measured (seed 0; score: success, discounted by steps for BabyAI): base
textcraft 0.013 / babyai 0.071; after BabyAI: held-in +0.154, held-out (textcraft) -0.013; after TextCraft:
held-in +0.000, held-out +0.021. Three iterations of 4 tasks × 4 samples give GRPO a signal only where the
warm-started policy already succeeds sometimes (BabyAI); for more, --config.iterations=5
--config.tasks_per_iteration=8 --config.study.warm_start_tasks_per_env=300 (see README, "Running the study").
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft", "babyai"], iterations=3)
  c.study.protocol = "cross_env"
  c.study.envs = ["textcraft", "babyai"]
  return c
