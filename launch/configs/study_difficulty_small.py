"""Small difficulty-transfer study on the CPU, TextCraft, 3 seeds (easy = crafting depth 1-2, the expert needs
4.9 actions on average; hard = depth >= 3, 14.5 actions): from one warm-started tiny model per seed (SFT on
easy demos), train on easy, on hard, on both, and easy→hard; evaluate each on the easy and the hard split.

  python -m launch.study --config=launch/configs/study_difficulty_small.py --workdir=runs/difficulty_small

Sized to the 2-core CPU: 400 easy expert demos (8 SFT epochs), 3 GRPO iterations of 4 tasks × 4 samples per
stage, 20 test tasks × 2 sampled episodes per split and stage, 10 turns in 1024 tokens (a TextCraft turn is
~60 tokens; ~14 candidate actions per turn are scored in the choose mode). Writes report.md with the
difficulty table and the paper-findings table. The same protocol at smoke size runs in
tests/test_study_protocols_run.py.

Measured (2026-12-01, shared 2-core CPU at load 3-6: seeds 0-1 in one process, 80 min; seed 2 beside them
as its own process, 55 min; ~17 min of each is the SFT). Results (avg@2, mean [95% interval] over seeds and
tasks):
- The warm start solves 0.092 [0.033, 0.167] of the easy tasks and none of the hard ones. The earlier warm
  start, 100 demos of each of three envs for 4 epochs, solved none.
- Every variant keeps exactly these scores. Only 4 of the 36 GRPO iterations had a group with mixed outcomes
  (success is nearly all or nothing per task:
  avg@2 0.092, pass@2 0.100), so every verdict is inconclusive.
Report: docs/examples/difficulty_textcraft_small_3seeds/.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["textcraft"], iterations=3)
  c.seeds = 3
  c.study.protocol = "difficulty"
  c.study.envs = ["textcraft"]
  c.study.difficulty_env = "textcraft"
  # 100 demos x 4 epochs (of three envs) solved no TextCraft task; 400 x 8 of TextCraft alone solve ~10%.
  c.study.warm_start_tasks_per_env = 400
  c.sft.epochs = 8
  c.rollout.max_turns = 10
  c.rollout.max_episode_tokens = 1024
  c.eval.tasks, c.eval.k = 20, 2
  c.study.eval_difficulties = ["easy", "hard"]
  return c
