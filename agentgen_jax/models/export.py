"""save_hf: params -> an HF folder (config.json, model.safetensors, generation_config.json, optionally the
tokenizer) that transformers' AutoModelForCausalLM.from_pretrained loads to the same logits (LoRA adapters
merged in); save_peft: LoRA adapters -> a PEFT adapter folder that peft.PeftModel loads onto the base."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from agentgen_jax.models import config as config_lib
from agentgen_jax.models import lora as lora_lib
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
  """Writes the folder (float32 weights) and returns its path; params with LoRA adapters attached
  (models.lora.attach) are written merged."""
  if lora_lib.is_attached(params):
    params = lora_lib.merge_attached(params)
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


# PEFT's names: the adapted model wraps the HF model as base_model.model; its LoRA layers keep
# lora_A.weight [r, in] and lora_B.weight [out, r] (torch's [out, in] layout), without the adapter name.
_PEFT_PREFIX = "base_model.model.model.layers"


def to_peft_weights(adapters: dict) -> dict[str, np.ndarray]:
  """Our adapters -> PEFT-named float32 tensors (B unscaled: PEFT applies alpha / r itself)."""
  hf_names = {ours: hf for hf, ours in _LAYER_NAMES.items()}
  out = {}
  for name, ab in adapters.items():
    a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
    for i in range(a.shape[0]):
      key = f"{_PEFT_PREFIX}.{i}.{hf_names[name]}"
      out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
      out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  return out


def save_peft(adapters: dict, lora_cfg: lora_lib.LoraConfig, folder: str,
              base_model: str | None = None) -> str:
  """Writes adapter_config.json + adapter_model.safetensors (PEFT's LoRA format) and returns the folder;
  `base_model` (a name or path) is recorded as base_model_name_or_path."""
  if set(adapters) != set(lora_cfg.modules):
    raise ValueError(f"adapters for {sorted(adapters)} do not match lora targets {list(lora_cfg.modules)}")
  os.makedirs(folder, exist_ok=True)
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": lora_cfg.rank, "lora_alpha": lora_cfg.alpha, "lora_dropout": lora_cfg.dropout,
            "target_modules": list(lora_cfg.modules), "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "modules_to_save": None, "layers_to_transform": None}
  with open(os.path.join(folder, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  save_file(to_peft_weights(adapters), os.path.join(folder, "adapter_model.safetensors"),
            metadata={"format": "pt"})
  return folder
