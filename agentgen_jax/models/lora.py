"""LoRA adapters for the decoder: low-rank factors per target projection, a float32 param tree of their own,
attached to the frozen base for the forward (the merged weights are never formed there) and merged for export.

Adapters layout (stacked over layers, like the base's layers/<name>/kernel [L, in, out]):
  {"q_proj": {"a": [L, in, r] f32, "b": [L, r, out] f32}, ...}, one entry per target.
The update of a target kernel is W + (alpha / rank) · A·B, as in PEFT (not rsLoRA).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from agentgen_jax.models.config import ModelConfig

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank 0 switches LoRA off (full fine-tuning). Frozen: hashable, a jit static argument."""
  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0          # on the adapter's input while training (PEFT's lora_dropout)
  targets: tuple[str, ...] = TARGETS  # among TARGETS; on the command line --config.lora.targets="(q, v)"

  def __post_init__(self):
    # From the command line a tuple may arrive as one string ("q,v") or a tuple of one ("(q, v)",).
    items = (self.targets,) if isinstance(self.targets, str) else self.targets
    names = [n.strip(" ()'\"") for item in items for n in str(item).split(",")]
    object.__setattr__(self, "targets", tuple(n for n in names if n))
    bad = [t for t in self.targets if t not in TARGETS]
    if bad or not self.targets or len(set(self.targets)) != len(self.targets):
      raise ValueError(f"lora targets={self.targets!r}: each once, at least one, among {', '.join(TARGETS)}")
    if not isinstance(self.rank, int) or self.rank < 0:
      raise ValueError(f"lora rank={self.rank!r}; valid: an int >= 0 (0 = LoRA off)")
    if self.enabled and not self.alpha > 0:
      raise ValueError(f"lora alpha={self.alpha!r}; valid: > 0")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"lora dropout={self.dropout!r}; valid: 0 <= dropout < 1")

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def modules(self) -> tuple[str, ...]:
    """The base param names of the targets (also PEFT's target_modules)."""
    return tuple(f"{t}_proj" for t in self.targets)


def kernel_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
  """(in, out) of every projection's kernel."""
  d, q, kv, i = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, \
      cfg.intermediate_size
  return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d), "gate_proj": (d, i),
          "up_proj": (d, i), "down_proj": (i, d)}


def num_params(cfg: ModelConfig, lora_cfg: LoraConfig) -> int:
  """Adapter parameter count: rank · (in + out) per target per layer."""
  shapes = kernel_shapes(cfg)
  return cfg.num_layers * lora_cfg.rank * sum(sum(shapes[m]) for m in lora_cfg.modules)


def init(cfg: ModelConfig, lora_cfg: LoraConfig, rng) -> dict:
  """Fresh adapters: A ~ U(±1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0, so the adapted model
  starts equal to the base."""
  if not lora_cfg.enabled:
    raise ValueError("lora rank=0: LoRA is off, there are no adapters to initialise")
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  shapes, r, n = kernel_shapes(cfg), lora_cfg.rank, cfg.num_layers
  adapters = {}
  for name, key in zip(lora_cfg.modules, jax.random.split(rng, len(lora_cfg.modules))):
    fan_in, fan_out = shapes[name]
    bound = 1.0 / fan_in ** 0.5
    adapters[name] = {"a": jax.random.uniform(key, (n, fan_in, r), jnp.float32, -bound, bound),
                      "b": jnp.zeros((n, r, fan_out), jnp.float32)}
  return adapters


def attach(base: dict, adapters: dict, lora_cfg: LoraConfig, rng=None) -> dict:
  """base + adapters as one param tree for models.forward (and everything that calls it): the adapters
  sit under "lora", each with its per-layer scale alpha / rank (and dropout rate). With `rng` and
  lora_cfg.dropout > 0 (training), the adapters' inputs are dropped out."""
  lora = {}
  for name, ab in adapters.items():
    layers = ab["a"].shape[:1]
    lora[name] = {"a": ab["a"], "b": ab["b"], "scale": jnp.full(layers, lora_cfg.scale, jnp.float32)}
    if lora_cfg.dropout > 0:
      lora[name]["dropout"] = jnp.full(layers, lora_cfg.dropout, jnp.float32)
  params = {**base, "lora": lora}
  return params if rng is None else with_rng(params, rng)


def with_rng(params: dict, rng) -> dict:
  """An attached tree whose forward draws its adapter dropout from `rng` (no effect at dropout 0)."""
  return {**params, "lora": {**params["lora"], "rng": rng}}


def split(params: dict) -> tuple[dict, dict]:
  """An attached tree -> (frozen, adapters): everything but A and B (the base, scales, dropout rates), and
  {name: {"a", "b"}}, the trainable part. join(frozen, adapters) rebuilds the tree."""
  lora = {k: v for k, v in params["lora"].items() if k != "rng"}
  adapters = {name: {"a": e["a"], "b": e["b"]} for name, e in lora.items()}
  frozen_lora = {name: {k: v for k, v in e.items() if k not in ("a", "b")} for name, e in lora.items()}
  return {**detach(params), "lora": frozen_lora}, adapters


def join(frozen: dict, adapters: dict, rng=None) -> dict:
  """The inverse of split; with `rng`, the adapters' dropout is on (training)."""
  lora = {name: {**e, **adapters[name]} for name, e in frozen["lora"].items()}
  params = {**frozen, "lora": lora}
  return params if rng is None else with_rng(params, rng)


def is_attached(params) -> bool:
  return isinstance(params, dict) and "lora" in params


def detach(params: dict) -> dict:
  """The base of an attached tree (the reference policy under LoRA: the same weights, adapters off)."""
  return {k: v for k, v in params.items() if k != "lora"}


def merge_kernels(kernels: dict, lora: dict) -> dict:
  """{name: W + scale·A·B} for the target kernels {name: [L, in, out]} and their adapter entries (an attached
  tree's "lora"), each in its kernel's dtype. Layer by layer into a copy of W (fori_loop): the float32 product
  of one layer is the only temporary (XLA:CPU, Qwen2.5-0.5B rank 64: 0.23 GB of temporaries against 1.6 GB
  with lax.map and 2.5 GB unrolled, for 0.72 GB of kernels)."""
  def one(w, e):
    def layer(i, out):
      delta = jnp.dot(e["a"][i].astype(jnp.float32), e["b"][i].astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
      return out.at[i].set((out[i].astype(jnp.float32) + e["scale"][i].astype(jnp.float32) * delta)
                           .astype(w.dtype))
    return jax.lax.fori_loop(0, w.shape[0], layer, w)
  return {name: one(w, lora[name]) for name, w in kernels.items()}


def target_kernels(params: dict) -> dict:
  """{name: kernel} of the base kernels an attached tree's adapters apply to."""
  return {name: params["layers"][name]["kernel"] for name in params["lora"] if name != "rng"}


def _with_kernels(params: dict, kernels: dict) -> dict:
  """The base of an attached tree with these target kernels; every other leaf is the base's (not copied)."""
  layers = {**params["layers"], **{n: {**params["layers"][n], "kernel": k} for n, k in kernels.items()}}
  return {**detach(params), "layers": layers}


def merge_attached(params: dict) -> dict:
  """An attached tree -> plain params with W + scale·A·B in each target kernel (in its dtype)."""
  return _with_kernels(params, merge_kernels(target_kernels(params), params["lora"]))


_MERGE_JITS: dict = {}


def jitted_merge(kernels: dict):
  """merge_kernels jitted for these kernels (arrays or ShapeDtypeStructs), each merged kernel placed as its
  base kernel (FSDP-sharded under a mesh)."""
  shardings = {n: getattr(k, "sharding", None) for n, k in kernels.items()}
  key = tuple(sorted(shardings.items(), key=lambda kv: kv[0]))
  if key not in _MERGE_JITS:
    placed = all(isinstance(s, jax.sharding.Sharding) for s in shardings.values())
    _MERGE_JITS[key] = jax.jit(merge_kernels, out_shardings=shardings if placed else None)
  return _MERGE_JITS[key]


def merged(params: dict) -> dict:
  """params with any attached adapters merged in (plain params unchanged): a rollout merges once per
  iteration, since decoding on merged weights is faster than running the branch at every step. Jitted, each
  merged kernel where its base kernel lives: op by op, every [L, in, out] float32 product would be
  materialised whole, and replicated on every device under a mesh."""
  if not is_attached(params):
    return params
  kernels = target_kernels(params)
  lora = {n: e for n, e in params["lora"].items() if n != "rng"}
  return _with_kernels(params, jitted_merge(kernels)(kernels, lora))


def merge(base: dict, adapters: dict, lora_cfg: LoraConfig) -> dict:
  """Plain params whose forward equals the adapted forward (export, or a rollout that merges once)."""
  return merge_attached(attach(base, adapters, lora_cfg))
