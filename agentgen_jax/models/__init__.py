"""Llama / Qwen2 / SmolLM decoders in JAX: config, forward with KV cache, value head, loading from HF
folders, GGUF files and embedded names, and export back to HF safetensors."""

from agentgen_jax.models import value
from agentgen_jax.models.config import ModelConfig, preset
from agentgen_jax.models.transformer import KVCache, forward, init_cache, init_params, logits

__all__ = ["KVCache", "ModelConfig", "forward", "init_cache", "init_params", "load", "logits", "preset",
           "save_hf", "value"]


def load(name_or_path: str, dtype: str | None = None):
  """(ModelConfig, params) for a preset, the embedded name, an HF folder or a .gguf file (see load.py)."""
  from agentgen_jax.models import load as _load
  return _load.load(name_or_path, dtype)


def save_hf(cfg, params, folder, tokenizer=None):
  """Writes config.json + model.safetensors (+ the tokenizer) that transformers loads (see export.py)."""
  from agentgen_jax.models import export
  return export.save_hf(cfg, params, folder, tokenizer)
