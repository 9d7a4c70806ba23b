"""Small cross-environment transfer matrix with ReAct agents: study_cross_env_small.py (TextCraft and BabyAI,
each trained from the same warm-started tiny model, both evaluated after each) in the `generate` action
mode: the policy writes "Action: <action>" and each env parses it (study_react.py).

  python -m launch.study --config=launch/configs/study_cross_env_react_small.py --workdir=runs/cross_env_react
  python -m launch.study --config=launch/configs/study_cross_env_react_small.py --workdir=runs/ce_react3 \
      --config.seeds=3

Cost MEASURED at full size, 3 seeds (2026-12-01, shared 2-core CPU, nothing else heavy): 6.9, 6.3 and 5.7
min of wall time per seed (~295 demos of SFT, 3 GRPO iterations of 4 × 4 per env, 40 × 2 eval tasks per
env). Result (docs/examples/cross_env_react_small_3seeds/): the warm start writes invalid actions in 90%
(TextCraft) and 79% (BabyAI) of its turns, solves no TextCraft task and 0.042 [0.013, 0.075] of BabyAI's;
TextCraft training has no signal, BabyAI training moves BabyAI by -0.012 [-0.035, +0.012]: every transfer
verdict inconclusive. Earlier smoke-size measurement (1 iteration of 2 × 2, 4 demos): 4 min 53 s under a
load of ~13, every turn invalid.
"""

from launch.configs import study_cross_env_small, study_react


def get_config():
  return study_react.react(study_cross_env_small.get_config())
