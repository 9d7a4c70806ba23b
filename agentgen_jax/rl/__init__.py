"""RL core: advantage estimators, loss terms, the jitted PPO/GRPO learner and the SFT step.

`from agentgen_jax import rl` then `rl.advantages`, `rl.losses`, `rl.learner`, `rl.sft`.
"""

from agentgen_jax.rl import advantages, losses  # noqa: F401
