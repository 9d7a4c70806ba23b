"""Small difficulty-transfer study on the CPU, BabyAI (easy = the GoTo/Pickup/Open levels an expert solves in
1.9 actions on average, hard = the composed levels, 8.1 actions): train on easy, on hard, on both, and
easy→hard from one warm-started tiny model; evaluate each on the easy and the hard test split.

  python -m launch.study --config=launch/configs/study_difficulty_babyai_small.py \
      --workdir=runs/difficulty_babyai_small --config.seeds=3

Cost: measured in the docstring's last paragraph once run. Writes report.md with the difficulty table
(every variant on both splits, mean and 95% interval over seeds and tasks) and the paper-findings table.
"""

from launch.configs import study_small


def get_config():
  c = study_small.small(["babyai"], iterations=4)
  c.study.protocol = "difficulty"
  c.study.envs = ["babyai"]
  c.study.difficulty_env = "babyai"
  # Hard levels: 8.1 expert actions on average (96% within 20). A BabyAI turn costs ~200 tokens, the first
  # prompt ~420: 2560 tokens hold ~10 turns.
  c.rollout.max_turns = 10
  c.rollout.max_episode_tokens = 2560
  c.eval.tasks = 30
  c.study.eval_difficulties = ["easy", "hard"]
  return c
