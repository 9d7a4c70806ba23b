"""ModelConfig: the static shape of a Llama / Qwen2 / SmolLM decoder, hashable so jit can key on it;
presets for tests ("tiny", "small"), weight-less architecture presets of public models (qwen2.5-*,
llama-3.1-8b: shapes for launch.plan), and conversion to and from HF config.json dictionaries."""

from __future__ import annotations

import dataclasses
from typing import Any

ARCHITECTURES = ("llama", "qwen2")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DTYPES = ("float32", "bfloat16")
ROPE_TYPES = ("default", "linear", "llama3")
# Activation rematerialisation per decoder layer in the backward pass: "none" keeps every activation,
# "full" keeps only each layer's input, "dots" also keeps the outputs of the weight matmuls (not the
# attention scores, which grow with T^2): a middle ground between memory and recompute.
REMAT_POLICIES = ("none", "full", "dots")
# How the layers are traced (RunConfig.layer_loop): "scan" a loop over the stacked layer params everywhere,
# "unroll" straight-line code everywhere, "auto" straight-line code in the learner's forwards (no KV cache:
# the update, its log-prob recompute, SFT) for models of up to AUTO_UNROLL_LAYERS layers, and on CPU a
# sampler on per-layer params (sampler_layers below; straight-line code), elsewhere a loop in the sampler.
# Straight-line code over the *stacked* params made the sampler slower on XLA:CPU (SmolLM2-135M decoded at
# 97 vs 120 tok/s, each layer's weights copied out of the stack): per-layer params are what pays.
LAYER_LOOPS = ("auto", "scan", "unroll")
AUTO_UNROLL_LAYERS = 8
# ModelConfig.unroll_layers: which forwards trace their layers unrolled.
UNROLL_CHOICES = ("none", "learner", "all")


# The form of the params the sampler's programs take (ModelConfig.sampler_layers): "stacked", as the learner
# holds them, or "split" into per-layer buffers (models.split_layers, made by sampling.sampler_params on one
# device). On XLA:CPU a layer loop, or straight-line code over the stack, copies each layer's weights out of
# the stack before its matmuls, every decode step; split, the matmuls read them where they are. The price:
# straight-line programs compile slower (SmolLM2-135M's first decode call 6.5 s against 2.3 s; README).
SAMPLER_LAYERS = ("stacked", "split")


def sampler_layers(layer_loop: str, backend: str) -> str:
  """ModelConfig.sampler_layers under RunConfig.layer_loop on `backend` (jax.default_backend()): "split" for
  "unroll", and for "auto" on CPU; "stacked" otherwise (XLA:GPU and TPU read a stacked layer's weights
  in place, and a split copy would double the sampler's weight memory there)."""
  if layer_loop not in LAYER_LOOPS:
    raise ValueError(f"layer_loop={layer_loop!r}; valid: {', '.join(LAYER_LOOPS)}")
  return "split" if layer_loop == "unroll" or (layer_loop == "auto" and backend == "cpu") else "stacked"


def apply_layer_loop(cfg: ModelConfig, layer_loop: str, backend: str) -> ModelConfig:
  """cfg with unroll_layers and sampler_layers as RunConfig.layer_loop sets them on `backend`."""
  return cfg.replace(unroll_layers=unroll_layers(layer_loop, cfg.num_layers),
                     sampler_layers=sampler_layers(layer_loop, backend))


def unroll_layers(layer_loop: str, num_layers: int) -> str:
  """ModelConfig.unroll_layers for a model of num_layers layers under RunConfig.layer_loop."""
  if layer_loop not in LAYER_LOOPS:
    raise ValueError(f"layer_loop={layer_loop!r}; valid: {', '.join(LAYER_LOOPS)}")
  if layer_loop == "unroll":
    return "all"
  return "learner" if layer_loop == "auto" and num_layers <= AUTO_UNROLL_LAYERS else "none"
# The vocabulary of the shipped tiny BPE tokenizer (agentgen_jax/assets/tiny_tokenizer); a test pins it.
TINY_VOCAB_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the shapes and the numerics of the forward pass (a jit static argument)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  # Sorted (key, value) items of HF's rope_scaling dict, e.g. (("factor", 8.0), ("rope_type", "llama3"), ...).
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_norm_eps: float = 1e-5
  qkv_bias: bool = False
  o_bias: bool = False          # Llama's attention_bias also puts a bias on o_proj (Qwen2's does not)
  tie_embeddings: bool = True
  max_position_embeddings: int = 2048
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  architecture: str = "llama"
  dtype: str = "float32"        # COMPUTE dtype of activations and matmuls (params are cast to it)
  # Storage dtype of the params (and so of the Adam moments): float32 master weights unless set. bf16
  # storage cannot take an lr-1e-6 step on a weight of size ~0.02 (the step is below bf16's spacing there).
  param_dtype: str = "float32"
  remat: str = "none"           # one of REMAT_POLICIES (True / False are read as "full" / "none")
  # Which forwards trace the layers as straight-line code instead of a loop over the stacked layer params
  # (same params, same function), one of UNROLL_CHOICES: "learner" (forwards without a KV cache), "all", or
  # "none". On XLA:CPU a tiny-model update ran 1.2x faster unrolled and a decode step 1.25x (no loop-carried
  # stacks of residuals to fill and slice), at a compile time that grows with the layer count. Set from
  # RunConfig.layer_loop (default "auto": "learner" up to 8 layers, "none" beyond).
  unroll_layers: str = "none"
  # One of SAMPLER_LAYERS: whether the sampler runs on per-layer copies of the layer params (straight-line
  # code). Set from RunConfig.layer_loop (sampler_layers above: "auto" splits them on CPU).
  sampler_layers: str = "stacked"

  def __post_init__(self):
    if isinstance(self.remat, bool):  # the older boolean flag
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; valid: {', '.join(REMAT_POLICIES)}")
    if self.unroll_layers not in UNROLL_CHOICES:
      raise ValueError(f"unroll_layers={self.unroll_layers!r}; valid: {', '.join(UNROLL_CHOICES)}")
    if self.sampler_layers not in SAMPLER_LAYERS:
      raise ValueError(f"sampler_layers={self.sampler_layers!r}; valid: {', '.join(SAMPLER_LAYERS)}")
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"architecture={self.architecture!r}; supported: {', '.join(ARCHITECTURES)}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        raise ValueError(f"{field}={getattr(self, field)!r}; valid: {', '.join(DTYPES)}")
    kind = (self.rope_scaling_dict or {}).get("rope_type", "default")
    if kind not in ROPE_TYPES:
      raise ValueError(f"rope_type={kind!r} is not supported; valid: {', '.join(ROPE_TYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (the embedding counted once when tied)."""
    d, h, kv, dh = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
    attn = d * h * dh + 2 * d * kv * dh + h * dh * d
    if self.qkv_bias:
      attn += h * dh + 2 * kv * dh
    if self.o_bias:
      attn += d
    layer = attn + 3 * d * self.intermediate_size + 2 * d
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return embed + self.num_layers * layer + d


_PRESETS = {
    # ~1.3M parameters: unit tests and smoke runs on CPU.
    "tiny": dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_layers=4,
                 num_heads=4, num_kv_heads=2, head_dim=32),
    # ~5M parameters: quick learning experiments on CPU.
    "small": dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=256, intermediate_size=768, num_layers=5,
                  num_heads=8, num_kv_heads=4, head_dim=32),
}
# The tiny tokenizer's specials: <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2 (as in SmolLM2).
_TINY_SPECIALS = dict(bos_token_id=0, eos_token_ids=(2, 0), pad_token_id=0, max_position_embeddings=4096,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=True)


_QWEN25 = dict(vocab_size=151936, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True,
               tie_embeddings=True, max_position_embeddings=32768, bos_token_id=151643,
               eos_token_ids=(151645, 151643), pad_token_id=151643, architecture="qwen2")
# Shapes only, from each model's public config.json (Qwen/Qwen2.5-*-Instruct,
# meta-llama/Llama-3.1-8B-Instruct, HuggingFaceTB/SmolLM2-135M-Instruct): there are no weights behind these
# names. launch.plan uses them, and the GPU benchmark times random weights of the SmolLM2 shape; training
# needs the HF folder (or, for SmolLM2, the embedded "smollm2-135m-instruct").
_ARCHITECTURES = {
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5, tie_embeddings=True,
        max_position_embeddings=8192, bos_token_id=1, eos_token_ids=(2,), pad_token_id=2,
        architecture="llama"),
    "qwen2.5-0.5b": dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                         num_kv_heads=2, head_dim=64),
    "qwen2.5-1.5b": dict(_QWEN25, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                         num_kv_heads=2),
    "qwen2.5-3b": dict(_QWEN25, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
                       num_kv_heads=2),
    "qwen2.5-7b": dict(_QWEN25, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                       num_heads=28, num_kv_heads=4, tie_embeddings=False),
    "llama-3.1-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5, tie_embeddings=False,
        rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                      ("original_max_position_embeddings", 8192), ("rope_type", "llama3")),
        max_position_embeddings=131072, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
        architecture="llama"),
}


def preset(name: str, **overrides) -> ModelConfig:
  """A named config: "tiny" / "small" (random init, the tiny tokenizer's vocabulary) or a shape-only
  architecture preset (see architecture_names())."""
  if name in _ARCHITECTURES:
    return ModelConfig(**{**_ARCHITECTURES[name], **overrides})
  if name not in _PRESETS:
    raise ValueError(f"unknown preset {name!r}; valid: {', '.join(_PRESETS)}, {', '.join(_ARCHITECTURES)}")
  return ModelConfig(**{**_PRESETS[name], **_TINY_SPECIALS, **overrides})


def preset_names() -> tuple[str, ...]:
  """The presets models.load initialises randomly."""
  return tuple(_PRESETS)


def architecture_names() -> tuple[str, ...]:
  """The shape-only presets: models.load refuses them (no weights), launch.plan plans them."""
  return tuple(_ARCHITECTURES)


def _rope_items(scaling: dict | None) -> tuple[tuple[str, Any], ...] | None:
  if not scaling:
    return None
  items = {k: (tuple(v) if isinstance(v, list) else v) for k, v in scaling.items()}
  kind = items.pop("type", None)
  items.setdefault("rope_type", kind or "default")
  items.pop("rope_theta", None)
  if items["rope_type"] == "default" and len(items) == 1:
    return None
  return tuple(sorted(items.items()))


def from_hf_dict(hf: dict, dtype: str | None = None) -> ModelConfig:
  """A ModelConfig from an HF config.json dict (transformers 4.x rope_scaling or 5.x rope_parameters)."""
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type", "")
  if model_type in ARCHITECTURES:
    arch = model_type
  elif any(a in HF_ARCHITECTURES.values() for a in archs):
    arch = next(k for k, v in HF_ARCHITECTURES.items() if v in archs)
  else:
    found = model_type or ",".join(archs) or "none"
    raise ValueError(f"unsupported architecture {found!r} in config.json; supported: "
                     f"{', '.join(HF_ARCHITECTURES.values())} (model_type {', '.join(ARCHITECTURES)})")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or None
  theta = hf.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  eos = hf.get("eos_token_id")
  eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
  if hf.get("mlp_bias"):
    raise ValueError("mlp_bias=true in config.json is not supported (Llama / Qwen2 / SmolLM have no "
                     "MLP biases)")
  bias = bool(hf.get("attention_bias", False))
  return ModelConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim, rope_theta=float(theta),
      rope_scaling=_rope_items(rope), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      qkv_bias=bias or arch == "qwen2", o_bias=bias and arch == "llama",
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      bos_token_id=hf.get("bos_token_id"), eos_token_ids=eos, pad_token_id=hf.get("pad_token_id"),
      architecture=arch, dtype=dtype or "float32")


def to_hf_dict(cfg: ModelConfig) -> dict:
  """The config.json that transformers reads back into the same model."""
  rope = dict(cfg.rope_scaling) if cfg.rope_scaling else None
  out = {
      "architectures": [HF_ARCHITECTURES[cfg.architecture]], "model_type": cfg.architecture,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta, "rope_scaling": rope,
      "rope_parameters": {**(rope or {"rope_type": "default"}), "rope_theta": cfg.rope_theta},
      "tie_word_embeddings": cfg.tie_embeddings,
      "max_position_embeddings": cfg.max_position_embeddings, "bos_token_id": cfg.bos_token_id,
      "eos_token_id": (list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1
                       else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)),
      "pad_token_id": cfg.pad_token_id, "dtype": cfg.param_dtype, "torch_dtype": cfg.param_dtype,
      "initializer_range": 0.02, "use_cache": True,
  }
  if cfg.architecture == "llama":
    out.update(attention_bias=cfg.qkv_bias, mlp_bias=False, pretraining_tp=1)
  else:
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  return out
