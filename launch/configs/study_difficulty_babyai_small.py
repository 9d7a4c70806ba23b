"""Small difficulty-transfer study on the CPU, BabyAI, 3 seeds (easy = the GoTo/Pickup/Open single-room levels
an expert solves in 1.9 actions on average, hard = the 3x3-room and sequenced levels, 8.1 actions): from one
warm-started tiny model per seed (SFT on easy demos), train on easy, on hard, on both, and easy→hard; evaluate
each on the easy and the hard test split.

  python -m launch.study --config=launch/configs/study_difficulty_babyai_small.py \
      --workdir=runs/difficulty_babyai_small

Sized to the 2-core CPU: 60 easy expert demos (3 SFT epochs), 2 GRPO iterations of 4 tasks × 4 samples per
stage, 16 test tasks × 2 sampled episodes per split and stage, 6 turns in 1536 tokens (a BabyAI turn costs
~200 tokens, the first prompt ~420). Hard tasks need 8.1 expert actions on average, so most do not fit 6
turns: the hard split measures how close the policy gets, mostly at zero success (8 turns in 2048 tokens took
~160 s per GRPO iteration with two other jobs on the CPU, ~50 min per seed: too slow for 3 seeds). Writes
report.md with the difficulty table (every variant on both splits, mean and 95% interval over seeds and tasks)
and the paper-findings table.

Measured (2026-11-30, shared 2-core CPU, load 4-6 with other studies running), reusing the quickstart's
per-seed SFT (`--config.study.warm_start_from=runs/quickstart3/seed_{seed}/sft` after `launch.train
--config=launch/configs/quickstart.py --config.seeds=3`): 47 min for the 3 seeds (4 stages each, no SFT).
Without warm_start_from each seed first trains that SFT itself (~25 min per seed at that load). Results
(avg score, mean [95% interval]): easy test 0.43 (base) -> 0.61 after easy training; hard test 0.02 -> 0.06
[0.00, 0.13], inconclusive; report in docs/examples/difficulty_babyai_small_3seeds/.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["babyai"], iterations=2)
  c.seeds = 3
  c.study.protocol = "difficulty"
  c.study.envs = ["babyai"]
  c.study.difficulty_env = "babyai"
  c.study.warm_start_tasks_per_env = 300  # the quickstart's warm start (or reuse it: study.warm_start_from)
  c.rollout.max_turns = 6
  c.rollout.max_episode_tokens = 1536
  c.eval.tasks, c.eval.k = 16, 2
  c.study.eval_difficulties = ["easy", "hard"]
  return c
