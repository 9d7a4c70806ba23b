"""Llama / Qwen2 / SmolLM decoders in JAX: config, forward with KV cache, value head, LoRA adapters, loading
from HF folders, GGUF files and embedded names, and export back to HF safetensors (and PEFT adapters)."""

from agentgen_jax.models import export as _export
from agentgen_jax.models import load as _load_module
from agentgen_jax.models import lora, value
from agentgen_jax.models.config import ModelConfig, preset
from agentgen_jax.models.lora import LoraConfig
from agentgen_jax.models.transformer import (
           Branches,
           KVCache,
           forward,
           forward_branches,
           init_cache,
           init_params,
           is_split,
           linear,
           lm_head,
           logits,
           split_layers,
)

# The submodule `load` is shadowed on purpose: `models.load` is the function (the module stays importable
# as agentgen_jax.models.load through sys.modules).
load = _load_module.load
load_config = _load_module.load_config
save_hf = _export.save_hf
save_peft = _export.save_peft

__all__ = ["Branches", "KVCache", "LoraConfig", "ModelConfig", "forward", "forward_branches", "init_cache",
           "init_params", "is_split", "linear", "lm_head", "load", "load_config", "logits", "lora", "preset",
           "save_hf", "save_peft", "split_layers", "value"]
