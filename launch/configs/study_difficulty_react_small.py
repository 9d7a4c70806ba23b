"""Small difficulty-transfer study with ReAct agents: study_difficulty_small.py (TextCraft: easy, hard,
mixed and easy→hard, each evaluated on the easy and the hard test split) in the `generate` action mode: the
policy writes "Action: <action>" and TextCraft parses it (study_react.py).

  python -m launch.study --config=launch/configs/study_difficulty_react_small.py --workdir=runs/diff_react
  python -m launch.study --config=launch/configs/study_difficulty_react_small.py --workdir=runs/diff_react3 \
      --config.seeds=3

Cost MEASURED at smoke size only (study_small.smoke: 1 iteration of 2 tasks × 2 samples per stage, 3 turns,
4 demos, 2 eval tasks per difficulty): 11 min 23 s wall (660 s in the study) on the shared 2-core CPU under a
load average of ~15 with another study of ours running, 2 min 13 s of CPU time. At smoke size 4 demos do
not teach the format: every turn was invalid (invalid_rate 1.0, success 0, 16 generated tokens per turn).
The smoke run above predates the twin's 400-demo, 8-epoch warm start; smoke size overrides both. The full
size was NOT run. Its choose-mode twin takes ~40 min per seed on the loaded CPU, and its GRPO stages move no
score; see study_difficulty_small.py.
"""

from launch.configs import study_difficulty_small, study_react


def get_config():
  return study_react.react(study_difficulty_small.get_config())
