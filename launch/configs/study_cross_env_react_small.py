"""Small cross-environment transfer matrix with ReAct agents: study_cross_env_small.py (TextCraft and BabyAI,
each trained from the same warm-started tiny model, both evaluated after each) in the `generate` action
mode: the policy writes "Action: <action>" and each env parses it (study_react.py).

  python -m launch.study --config=launch/configs/study_cross_env_react_small.py --workdir=runs/cross_env_react
  python -m launch.study --config=launch/configs/study_cross_env_react_small.py --workdir=runs/ce_react3 \
      --config.seeds=3

Cost MEASURED at smoke size only (study_small.smoke: 1 iteration of 2 tasks × 2 samples, 3 turns, 4 demos
per env, 2 eval tasks; 24 new tokens per turn): 4 min 53 s wall (285 s in the study) on the shared 2-core
CPU under a load average of ~13, 1 min 46 s of CPU time. At smoke size 4 demos do not teach the format:
every turn was invalid (invalid_rate 1.0, success 0). The full size (300 demos, 3 iterations of 4 × 4,
40 × 2 eval tasks) was NOT run; the choose-mode study of the same size takes 17 min on an idle CPU, and
generate mode decodes up to 16 tokens per turn instead of scoring ~14 candidates at once.
"""

from launch.configs import study_cross_env_small, study_react


def get_config():
  return study_react.react(study_cross_env_small.get_config())
