"""Value head (the critic) on top of the decoder's final hidden states: a linear map to one scalar per
token, kept as its own small param dict so the policy params stay unchanged."""

import jax
import jax.numpy as jnp

from agentgen_jax.models.config import ModelConfig


def init_value_head(cfg: ModelConfig, rng) -> dict:
  """{"kernel": [D] f32, "bias": [] f32}; small init so initial values sit near 0."""
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  kernel = jax.random.normal(rng, (cfg.hidden_size,), jnp.float32) * (0.1 / cfg.hidden_size ** 0.5)
  return {"kernel": kernel, "bias": jnp.zeros((), jnp.float32)}


def values(head_params: dict, hidden: jax.Array) -> jax.Array:
  """hidden [B, T, D] (the forward's final-norm output) -> values [B, T] float32."""
  hidden = hidden.astype(jnp.float32)
  return jnp.einsum("btd,d->bt", hidden, head_params["kernel"].astype(jnp.float32)) + head_params["bias"]
