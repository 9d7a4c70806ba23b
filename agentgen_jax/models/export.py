"""save_hf: params -> an HF folder (config.json, model.safetensors, generation_config.json, optionally the
tokenizer) that transformers' AutoModelForCausalLM.from_pretrained loads to the same logits."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from agentgen_jax.models import config as config_lib
from agentgen_jax.models.config import ModelConfig
from agentgen_jax.models.load import _LAYER_NAMES, _LAYER_NORMS


def to_hf_weights(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  """Our param tree -> HF-named float32 numpy tensors ([out, in] kernels, one tensor per layer)."""
  layers = params["layers"]
  f32 = lambda x: np.asarray(x, np.float32)
  out = {"model.embed_tokens.weight": f32(params["embed"]["embedding"]),
         "model.norm.weight": f32(params["final_norm"]["scale"])}
  for i in range(cfg.num_layers):
    for hf, ours in _LAYER_NAMES.items():
      out[f"model.layers.{i}.{hf}.weight"] = np.ascontiguousarray(f32(layers[ours]["kernel"][i]).T)
      if "bias" in layers[ours]:
        out[f"model.layers.{i}.{hf}.bias"] = f32(layers[ours]["bias"][i])
    for hf, ours in _LAYER_NORMS.items():
      out[f"model.layers.{i}.{hf}.weight"] = f32(layers[ours]["scale"][i])
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = np.ascontiguousarray(f32(params["lm_head"]).T)
  return out


def save_hf(cfg: ModelConfig, params: dict, folder: str, tokenizer=None) -> str:
  """Writes the folder (float32 weights) and returns its path."""
  if cfg.architecture == "qwen2" and (not cfg.qkv_bias or cfg.o_bias):
    raise ValueError(f"qwen2 in transformers has q/k/v biases and no o_proj bias; this config has "
                     f"qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias}")
  if cfg.architecture == "llama" and cfg.qkv_bias != cfg.o_bias:
    raise ValueError(f"llama's attention_bias covers q/k/v and o_proj together; this config has "
                     f"qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias} (use architecture='qwen2')")
  os.makedirs(folder, exist_ok=True)
  hf = config_lib.to_hf_dict(cfg.replace(param_dtype="float32"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf["eos_token_id"],
                "pad_token_id": cfg.pad_token_id}
  with open(os.path.join(folder, "generation_config.json"), "w") as f:
    json.dump(generation, f, indent=2)
  save_file(to_hf_weights(cfg, params), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)
  return folder
