"""The agent being trained: a model's config and params with its tokenizer and chat format, loaded from a
preset, the embedded model name, an HF folder or a .gguf file."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from agentgen_jax import models, rollout
from agentgen_jax import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Agent:
  """The model (config + params, a plain pytree), its tokenizer and its chat format."""

  cfg: models.ModelConfig
  params: Any
  tokenizer: Any
  chat: rollout.ChatFormat


def load(model: str, tokenizer: str = "", dtype: str = "", system_prompt: str | None = None) -> Agent:
  """The agent `model` names (see models.load); `tokenizer` defaults to the model's own."""
  cfg, params = models.load(model, dtype=dtype or None)
  tok = tokenizer_lib.load(tokenizer or model)
  tokenizer_lib.check_compatible(tok, cfg)
  return Agent(cfg, params, tok, rollout.ChatFormat(tok, system_prompt or None))


def from_config(cfg) -> Agent:
  """The agent of a RunConfig (agentgen_jax.config): its model, tokenizer, dtype and system prompt; with
  cfg.lora.rank > 0 its params are the base in the compute dtype with fresh LoRA adapters attached (equal
  to the base until trained)."""
  agent = load(cfg.model, cfg.tokenizer, cfg.dtype, cfg.rollout.system_prompt)
  if cfg.lora.enabled:
    base = jax.tree.map(lambda x: x.astype(agent.cfg.dtype), agent.params)
    adapters = models.lora.init(agent.cfg, cfg.lora, jax.random.PRNGKey(cfg.seed))
    agent.params = models.lora.attach(base, adapters, cfg.lora)
  return agent
