"""The agent being trained: a model's config and params with its tokenizer and chat format, loaded from a
preset, the embedded model name, an HF folder or a .gguf file."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from agentgen_jax import models, parallel, rollout
from agentgen_jax import tokenizer as tokenizer_lib
from agentgen_jax.models import config as models_config


@dataclasses.dataclass
class Agent:
  """The model (config + params, a plain pytree), its tokenizer and chat format, and the device mesh every
  loop runs it on (None: one device; the params are then placed by parallel.py's FSDP rule)."""

  cfg: models.ModelConfig
  params: Any
  tokenizer: Any
  chat: rollout.ChatFormat
  mesh: Any = None


def load(model: str, tokenizer: str = "", dtype: str = "", system_prompt: str | None = None,
         param_dtype: str = "", remat: str = "none", seed: int = 0, mesh=None,
         layer_loop: str = "auto") -> Agent:
  """The agent `model` names (see models.load); `tokenizer` defaults to the model's own. `dtype` is the
  compute dtype; params stay float32 unless `param_dtype` says otherwise; a preset's random init follows
  `seed`; `layer_loop` (models.config.LAYER_LOOPS) says whether the layers are traced as a loop. With a
  mesh the params go from the host straight into their FSDP shardings."""
  place = None if mesh is None else (lambda params: parallel.place_params(params, mesh))
  cfg, params = models.load(model, dtype=dtype or None, param_dtype=param_dtype or None, seed=seed,
                            place=place)
  cfg = models_config.apply_layer_loop(cfg.replace(remat=remat), layer_loop, jax.default_backend())
  tok = tokenizer_lib.load(tokenizer or model)
  tokenizer_lib.check_compatible(tok, cfg)
  return Agent(cfg, params, tok, rollout.ChatFormat(tok, system_prompt or None), mesh)


def run_mesh(cfg):
  """The RunConfig's mesh (None on one device), checked against the batches that must split over it:
  the learner's and the SFT micro-batches (rollouts pad their rows). Call it before writing anything."""
  return parallel.run_mesh(cfg.mesh, {"learner.micro_batch_size": cfg.learner.micro_batch_size,
                                      "sft.micro_batch_size": cfg.sft.micro_batch_size or cfg.sft.batch_size})


def from_config(cfg, mesh=None) -> Agent:
  """The agent of a RunConfig (agentgen_jax.config): its model, tokenizer, dtype and system prompt, its
  params placed over `mesh` (from run_mesh(cfg)). With cfg.lora.rank > 0 its params are the base in the
  compute dtype with fresh LoRA adapters attached (equal to the base until trained)."""
  agent = load(cfg.model, cfg.tokenizer, cfg.dtype, cfg.rollout.system_prompt, cfg.param_dtype, cfg.remat,
               seed=cfg.seed, mesh=mesh, layer_loop=cfg.layer_loop)
  params = agent.params
  if cfg.lora.enabled:
    base = jax.tree.map(lambda x: x.astype(agent.cfg.dtype), params)
    params = models.lora.attach(base, models.lora.init(agent.cfg, cfg.lora, jax.random.PRNGKey(cfg.seed)),
                                cfg.lora)
  return dataclasses.replace(agent, params=parallel.place_params(params, mesh), mesh=mesh)
