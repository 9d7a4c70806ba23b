"""RL core: advantage estimators, loss terms, the jitted PPO/GRPO learner and the SFT step.

`from agentgen_jax import rl` then `rl.batch` (episodes -> learner batch), `rl.advantages`, `rl.losses`,
`rl.policy`, `rl.learner`, `rl.sft`.
"""

from agentgen_jax.rl import advantages, batch, learner, losses, policy, sft  # noqa: F401
