"""Small difficulty-transfer study with ReAct agents: study_difficulty_small.py (TextCraft: easy, hard,
mixed and easy→hard, each evaluated on the easy and the hard test split) in the `generate` action mode: the
policy writes "Action: <action>" and TextCraft parses it (study_react.py).

  python -m launch.study --config=launch/configs/study_difficulty_react_small.py --workdir=runs/diff_react

(3 seeds, the twin's default; each seed can also run as its own job: --config.seed=S --config.seeds=1
--workdir=runs/diff_react/seed_S, after which the 3-seed command only merges.)

Cost MEASURED at full size, 3 seeds (2026-12-01, shared 2-core CPU): 16.7, 12.8 and 9.5 min of wall time per
seed (load ~2 for the first two, idle for the third), of which the SFT (400 demos, 8 epochs) took 5-7 min.
Result (docs/examples/difficulty_textcraft_react_small_3seeds/): the warm start writes the format (99% of
turns start with "Action:") but 80% of its turns are invalid; it solves 0.025 [0.000, 0.083] of the easy
tasks and no hard one. GRPO had a non-zero advantage in 2 of 36 iterations and moved no score: every
verdict inconclusive, as in the choose-mode twin (which solves 0.092 of the easy tasks).
"""

from launch.configs import study_difficulty_small, study_react


def get_config():
  return study_react.react(study_difficulty_small.get_config())
