"""Small difficulty-transfer study with ReAct agents: study_difficulty_small.py (TextCraft: easy, hard,
mixed and easy→hard, each evaluated on the easy and the hard test split) in the `generate` action mode: the
policy writes "Action: <action>" and TextCraft parses it (study_react.py).

  python -m launch.study --config=launch/configs/study_difficulty_react_small.py --workdir=runs/diff_react
  python -m launch.study --config=launch/configs/study_difficulty_react_small.py --workdir=runs/diff_react3 \
      --config.seeds=3

Cost MEASURED at smoke size only: (measurement pending). The full size was NOT run (the choose-mode twin is estimated at
~2 hours on an idle CPU).
"""

from launch.configs import study_difficulty_small, study_react


def get_config():
  return study_react.react(study_difficulty_small.get_config())
