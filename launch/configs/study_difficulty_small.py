"""Small difficulty-transfer study on the CPU, TextCraft, 3 seeds (easy = crafting depth 1-2, the expert needs
4.9 actions on average; hard = depth >= 3, 14.5 actions): from one warm-started tiny model per seed (SFT on
easy demos), train on easy, on hard, on both, and easy→hard; evaluate each on the easy and the hard split.

  python -m launch.study --config=launch/configs/study_difficulty_small.py --workdir=runs/difficulty_small

Sized to the 2-core CPU: 100 easy expert demos (4 SFT epochs), 2 GRPO iterations of 4 tasks × 4 samples per
stage, 20 test tasks × 2 sampled episodes per split and stage, 10 turns in 1024 tokens (a TextCraft turn is
~60 tokens; ~14 candidate actions per turn are scored in the choose mode). Writes report.md with the
difficulty table and the paper-findings table. The same protocol at smoke size runs in
tests/test_study_protocols_run.py.

Measured (2026-11-30, shared 2-core CPU, load 4-6), warm-started from study_transfer_small.py's per-seed SFT
(`--config.study.warm_start_from=runs/transfer_small/seed_{seed}/stages/base/sft`: 100 demos of each of
ALFWorld, TextCraft and BabyAI, 4 epochs): ~20 min per seed. Every score was 0 on both splits for every
variant (seeds 0 and 1; seed 2 did not finish within the session): the warm-started tiny model solves no
TextCraft task in 10 turns, every GRPO group fails, the advantages are all zero and the params stay bit-
identical. A TextCraft difficulty study needs a stronger warm start (more demos and epochs: hours on this CPU)
or a larger model on an accelerator.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft"], iterations=2)
  c.seeds = 3
  c.study.protocol = "difficulty"
  c.study.envs = ["textcraft"]
  c.study.difficulty_env = "textcraft"
  c.study.warm_start_tasks_per_env = 100
  c.sft.epochs = 4
  c.rollout.max_turns = 10
  c.rollout.max_episode_tokens = 1024
  c.eval.tasks, c.eval.k = 20, 2
  c.study.eval_difficulties = ["easy", "hard"]
  return c
