"""The quickstart (quickstart.py: tiny model, easy BabyAI, SFT on 300 expert demos, 8 GRPO iterations,
40 held-in test tasks, greedy) with a ReAct agent: the `generate` action mode, where the policy writes
"Action: <action>" as free text and BabyAI parses it, as in the paper (study_react.py), instead of scoring
the listed valid actions.

  python -m launch.train --config=launch/configs/quickstart_react.py --workdir=runs/quickstart_react \
      --config.seeds=3

Measured over 3 seeds (seeds 0-2, 2026-11-30, shared 2-core CPU at load 2-4 with benchmarks running): 92 min
for the 3 seeds. Greedy held-in success on 40 test tasks: base 0.000 (every turn invalid) -> SFT 0.125-0.175
-> GRPO 0.100-0.200 (GRPO - SFT per seed 0.000, +0.025, -0.075: no gain). 77% of the trained agent's turns
name an action that is not available; 86% of failed episodes repeat an action the env already rejected (the
confirmation-bias label). Report: docs/examples/quickstart_react_3seeds/.
"""

from launch.configs import quickstart, study_react


def get_config():
  return study_react.react(quickstart.get_config())
