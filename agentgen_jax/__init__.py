"""agentgen_jax: reinforcement fine-tuning of LLM agents in multi-turn text environments, in JAX."""

__version__ = "0.1.0"
