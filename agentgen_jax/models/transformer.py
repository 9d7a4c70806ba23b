"""The decoder (Llama / Qwen2 / SmolLM: RMSNorm, RoPE, GQA, SwiGLU) as a flax.linen module applied to a
plain param dict, with a KV cache whose slots may hold holes; pure functions init_params / forward."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax.models.config import ModelConfig

_INIT_STD = 0.02  # HF's initializer_range default
# Finite, so a query with no visible key gives a uniform (ignored) row instead of NaN.
_MASKED = -1e30


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer; slot s of row b counts only where valid[b, s]."""
  # Heads before slots: a layer's window [B, Hkv, :W, Dh] is what the attention matmuls read, as is.
  # Stacked, k and v are [L, B, Hkv, S, Dh]; split (init_cache(split=True), for split_layers' params),
  # they are tuples of L per-layer [B, Hkv, S, Dh] buffers.
  k: jax.Array | tuple      # compute dtype
  v: jax.Array | tuple      # compute dtype
  valid: jax.Array  # [B, S] bool
  # An int32 scalar array, not a Python int: advancing it must not change the jit cache key.
  index: jax.Array  # [] int32: the first slot the next forward writes

  @property
  def split(self) -> bool:
    """Whether k and v are per-layer buffers (init_cache(split=True))."""
    return isinstance(self.k, tuple)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, split: bool = False) -> KVCache:
  """An empty cache of max_len slots per row. split: k and v as L per-layer buffers, the form that goes
  with split_layers' params on XLA:CPU: a layer's attention then reads its own buffer where a stacked
  cache had each layer's [B, Hkv, W, Dh] copied out of the stack in every decode step."""
  shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  if split:
    k = tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers))
    v = tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers))
  else:
    k = jnp.zeros((cfg.num_layers, *shape), cfg.dtype)
    v = jnp.zeros((cfg.num_layers, *shape), cfg.dtype)
  return KVCache(k=k, v=v, valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [Dh / 2] float32, with llama3 / linear / dynamic-free scaling as in transformers."""
  dim = cfg.head_dim
  inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2).astype(np.float32) / dim)))
  inv_freq = inv_freq.astype(np.float32)
  scaling = cfg.rope_scaling_dict or {}
  kind = scaling.get("rope_type", "default")
  if kind == "default":
    return inv_freq
  if kind == "linear":
    return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
  if kind == "llama3":
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  raise ValueError(f"rope_type={kind!r} is not supported; valid: default, linear, llama3")


def _rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """positions [B, T] -> cos, sin [B, T, Dh] float32 (HF's rotate-half layout: both halves repeat)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_frequencies(cfg))
  freqs = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(freqs), jnp.sin(freqs)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, H, Dh]; cos/sin [B, T, Dh]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
  return x * cos + rotated * sin


class RMSNorm(nn.Module):
  eps: float
  dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # As in transformers: normalise in f32, cast to the compute dtype, then scale.
    return scale.astype(self.dtype) * normed.astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def linear(x: jax.Array, w: jax.Array, transposed: bool = False, out_dtype=None) -> jax.Array:
  """x [..., I] times a weight w [I, O] (or [O, I] when `transposed`: the tied embedding as the head) ->
  [..., O] in out_dtype (default: the operands' dtype, as an einsum's preferred_element_type).

  The same function as the einsum, with the backward written out: dW = x^T g as einsum("...i,...o->io")
  (transposed afterwards for a [O, I] weight). For the rule jax derives from the forward einsum, XLA:CPU
  materialises g transposed: for the head that is every token's [V] logit gradient (a [2, 1024, 4096] copy,
  175 ms a micro-batch, the costliest single op in a profile of a tiny-model update), for the MLP the
  [T, F] activations' gradient.
  Here only x's layout changes, and the weight-sized result. Measured in docs/BENCHMARKS.md (train step).
  """
  spec = "...i,oi->...o" if transposed else "...i,io->...o"
  return jnp.einsum(spec, x, w, preferred_element_type=out_dtype)


def _linear_fwd(x, w, transposed, out_dtype):
  return linear(x, w, transposed, out_dtype), (x, w)


def _linear_bwd(transposed, out_dtype, residuals, g):
  x, w = residuals
  # As jax's own rule for a dot with preferred_element_type: the cotangent dots accumulate in the wider of
  # g's and the operand's dtype, and the results are cast to the primal dtypes.
  dx = jnp.einsum("...o,oi->...i" if transposed else "...o,io->...i", g, w,
                  preferred_element_type=jnp.promote_types(g.dtype, w.dtype))
  dw = jnp.einsum("...i,...o->io", x, g, preferred_element_type=jnp.promote_types(g.dtype, x.dtype))
  return dx.astype(x.dtype), (dw.T if transposed else dw).astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """nn.Dense's dot_general (x [..., I] . kernel [I, O]) through `linear`."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,) or lhs_batch or rhs_batch:
    raise ValueError(f"linear layers contract x's last dim with the kernel's first, not {dimension_numbers}")
  del precision  # the model's matmuls use the default precision (jax_default_matmul_precision applies)
  return linear(lhs, rhs, False, preferred_element_type)


class LoraDense(nn.Dense):
  """nn.Dense plus, when the "lora" collection holds this layer's adapter, the low-rank branch
  (x·A)·B·scale (scale = alpha / rank, see models/lora.py), computed beside x·W: the merged weight is
  never formed, so neither a second copy of the weights nor a weight-sized gradient exists. With a
  "dropout" rng and a per-layer "dropout" rate, the branch's input is dropped out (PEFT's lora_dropout)."""

  @nn.compact
  def __call__(self, x):
    y = super().__call__(x)
    if not self.has_variable("lora", "a"):
      return y
    a, b, scale = (self.get_variable("lora", k) for k in ("a", "b", "scale"))
    if self.has_variable("lora", "dropout") and self.has_rng("dropout"):
      keep = 1.0 - self.get_variable("lora", "dropout")
      kept = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
      x = jnp.where(kept, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))
    return y + (x @ a.astype(self.dtype)) @ b.astype(self.dtype) * scale.astype(self.dtype)


def _dense(cfg: ModelConfig, features: int, name: str, bias: bool = False) -> nn.Dense:
  return LoraDense(features, use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                   dot_general=_dense_dot_general,
                   kernel_init=nn.initializers.normal(_INIT_STD), name=name)


class Block(nn.Module):
  """One decoder layer under nn.scan. The carry holds x and the whole stacked cache, which is updated in
  place at [layer, :, index:index+T]: scanning the cache as xs -> ys would copy all of it every step.
  Under split params (Decoder.split) the carry may hold this layer's own cache buffers instead (a split
  KVCache), updated in place at [:, :, index:index+T].

  Attention reads only the cache's first `window` slots (a static size: the live part, so that a step's cost
  follows the tokens in the cache, not its capacity). With append=False the new keys are not written: they
  are attended after the window (scoring continuations of a shared prefix without touching the cache).
  With `branches` (no cache), x is a context followed by branch tokens and `mask` the triple of
  _attend_branches."""
  cfg: ModelConfig
  window: int | None = None
  append: bool = True
  branches: bool = False
  causal: bool = False  # no cache, mask causal (j <= i): attention skips the blocks above the diagonal

  @nn.compact
  def __call__(self, carry, layer, rope, mask, index):
    x, k_cache, v_cache = carry
    cfg = self.cfg
    b, t, _ = x.shape
    h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    y = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="input_norm")(x)
    q = _dense(cfg, h * dh, "q_proj", cfg.qkv_bias)(y).reshape(b, t, h, dh)
    k = _dense(cfg, kv * dh, "k_proj", cfg.qkv_bias)(y).reshape(b, t, kv, dh)
    v = _dense(cfg, kv * dh, "v_proj", cfg.qkv_bias)(y).reshape(b, t, kv, dh)
    q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
    # Heads-major [B, Hkv, T, Dh] operands: the attention matmuls then batch over (B, Hkv) on contiguous
    # [T, Dh] blocks (a [B, T, H, Dh] einsum made XLA:CPU transpose them, forward and backward).
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if k_cache is None:
      k_all, v_all = k, v
    else:
      window = self.window or k_cache.shape[-2]
      if k_cache.ndim == 4:  # this layer's own buffer (a split cache)
        if self.append:
          k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
          v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
        k_all, v_all = k_cache[:, :, :window], v_cache[:, :, :window]
      else:  # the stacked cache, written and read at [layer]
        if self.append:
          start = (layer, 0, 0, index, 0)
          k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype)[None], start)
          v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype)[None], start)
        live = (1, b, kv, window, dh)
        k_all = jax.lax.dynamic_slice(k_cache, (layer, 0, 0, 0, 0), live)[0]
        v_all = jax.lax.dynamic_slice(v_cache, (layer, 0, 0, 0, 0), live)[0]
      if not self.append:
        k_all = jnp.concatenate([k_all, k.astype(k_all.dtype)], axis=2)
        v_all = jnp.concatenate([v_all, v.astype(v_all.dtype)], axis=2)
    if self.branches:
      out = _attend_branches(q, k_all, v_all, mask, cfg.dtype)
    elif self.causal:
      out = _attend_causal(q, k_all, v_all, mask, cfg.dtype)
    else:
      out = _attend(q, k_all, v_all, mask, cfg.dtype)
    x = x + _dense(cfg, cfg.hidden_size, "o_proj", cfg.o_bias)(out)
    y = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="post_attention_norm")(x)
    gate = _dense(cfg, cfg.intermediate_size, "gate_proj")(y)
    up = _dense(cfg, cfg.intermediate_size, "up_proj")(y)
    x = x + _dense(cfg, cfg.hidden_size, "down_proj")(nn.silu(gate) * up)
    return (x, k_cache, v_cache), None


def _attend(q, k, v, mask, dtype):
  """q [B, T, H, Dh]; k, v [B, Hkv, S, Dh]; mask [B, T, S] -> [B, T, H * Dh]."""
  b, t, h, dh = q.shape
  kv = k.shape[1]
  g = h // kv
  # Queries as [B, Hkv, g * T, Dh]: the matmuls batch over (B, Hkv) on contiguous blocks.
  q = q.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4)
  out = _softmax_attention(q.reshape(b, kv, g * t, dh), k.astype(q.dtype), v.astype(dtype), mask, dtype)
  return out.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h * dh)


def _scores(q, k, mask):
  """Masked, scaled scores [B, Hkv, g, T, S] f32 of q [B, Hkv, g * T, Dh] against k [B, Hkv, S, Dh]."""
  b, kv, gt, dh = q.shape
  t = mask.shape[1]
  s = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(dh))
  return jnp.where(mask[:, None, None], s.reshape(b, kv, gt // t, t, -1), _MASKED)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _softmax_attention(q, k, v, mask, dtype):
  """softmax(q k^T / sqrt(Dh), masked) v: q [B, Hkv, g * T, Dh], k, v [B, Hkv, S, Dh], mask [B, T, S]
  -> [B, Hkv, g * T, Dh] in dtype.

  The backward is written out (as in FlashAttention): it keeps q, k, v, the output and each row's max and
  normaliser, recomputes the probabilities from them, and forms dS = P * (dP - rowsum(dO * O)). Jax's rule
  for the softmax keeps the [T, S] probabilities and its normalising divide, and takes several more
  [T, S] passes: on XLA:CPU the attention of a 256-token train step was a quarter of the backward."""
  return _softmax_attention_fwd(q, k, v, mask, dtype)[0]


def _softmax_attention_fwd(q, k, v, mask, dtype):
  s = _scores(q, k, mask)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - m)
  l = jnp.sum(p, axis=-1, keepdims=True)
  shape = q.shape[:2] + (-1, s.shape[-1])
  # Normalised after the product: a divide of the [T, Dh] output, not of the [T, S] probabilities.
  o = jnp.einsum("bkqs,bksd->bkqd", p.astype(dtype).reshape(shape), v, preferred_element_type=jnp.float32)
  o = (o / l.reshape(o.shape[:-1] + (1,))).astype(dtype)
  # Each row's max and normaliser, not their log-sum-exp: a row that sees no key has scores _MASKED + 0,
  # and m + log(l) rounds back to _MASKED (probabilities 1, not softmax's uniform 1 / S).
  return o, (q, k, v, mask, o, m, 1.0 / l)


def _softmax_attention_bwd(dtype, residuals, do):
  q, k, v, mask, o, m, inv_l = residuals
  s = _scores(q, k, mask)
  shape = q.shape[:2] + (-1, s.shape[-1])
  p = (jnp.exp(s - m) * inv_l).reshape(shape)
  dp = jnp.einsum("bkqd,bksd->bkqs", do.astype(dtype), v, preferred_element_type=jnp.float32)
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  ds = p * (dp - delta) * (1.0 / math.sqrt(q.shape[-1]))
  ds = jnp.where(mask[:, None, None], ds.reshape(s.shape), 0.0).reshape(shape)
  dq = jnp.einsum("bkqs,bksd->bkqd", ds.astype(q.dtype), k, preferred_element_type=jnp.float32)
  dk = jnp.einsum("bkqs,bkqd->bksd", ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
  dv = jnp.einsum("bkqs,bkqd->bksd", p.astype(dtype), do.astype(dtype), preferred_element_type=jnp.float32)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


# Causal attention without a cache (_attend_causal) runs in query blocks of at least CAUSAL_BLOCK tokens,
# at most CAUSAL_BLOCKS of them (long sequences get longer blocks, not a longer program).
CAUSAL_BLOCK = 128
CAUSAL_BLOCKS = 32


def _attend_causal(q, k, v, mask, dtype):
  """_attend for a causal mask (mask[b, i, j] False wherever j > i), T = S: query block i attends to the
  keys of blocks 0..i only, so the scores above the diagonal blocks are neither computed nor kept for the
  backward (with n blocks, (n + 1) / 2n of the [T, T] work and memory). A sequence shorter than two blocks,
  or with no block count that divides it, goes whole."""
  t = q.shape[1]
  blocks = next((n for n in range(min(t // CAUSAL_BLOCK, CAUSAL_BLOCKS), 1, -1) if t % n == 0), 1)
  if blocks == 1:
    return _attend(q, k, v, mask, dtype)
  size, out = t // blocks, []
  for end in range(size, t + 1, size):
    rows = slice(end - size, end)
    out.append(_attend(q[:, rows], k[:, :, :end], v[:, :, :end], mask[:, rows, :end], dtype))
  return jnp.concatenate(out, axis=1)


def _attend_branches(q, k, v, masks, dtype):
  """Attention over a context of T tokens followed by N branch tokens.

  q [B, T + N, H, Dh]; k, v [B, Hkv, T + N, Dh]; masks = (context [B, T, T], branch_context [B, N, T],
  ancestors [B, N, A]: the branch indices a branch token sees besides the context, -1 pad). Context
  queries see context keys; a branch query sees context keys (branch_context) and its A ancestors' keys
  (gathered), under one softmax: N x (T + A) scores, not (T + N)^2. -> [B, T + N, H * Dh].
  """
  context, branch_context, ancestors = masks
  b, n_all, h, dh = q.shape
  t = context.shape[1]
  n, kv = n_all - t, k.shape[1]
  g = h // kv
  out_ctx = _attend(q[:, :t], k[:, :, :t], v[:, :, :t], context, dtype)
  # Branch queries as [B, Hkv, g * N, Dh]: the context matmuls batch over (B, Hkv).
  qb = q[:, t:].reshape(b, n, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * n, dh)
  k_ctx, v_ctx = k[:, :, :t].astype(q.dtype), v[:, :, :t].astype(dtype)
  gather = jax.vmap(lambda x, i: x[:, i])  # [Hkv, N, Dh], [N, A] -> [Hkv, N, A, Dh]
  idx = jnp.clip(ancestors, 0, n - 1)
  k_anc, v_anc = gather(k[:, :, t:].astype(q.dtype), idx), gather(v[:, :, t:].astype(dtype), idx)
  scale = 1.0 / math.sqrt(dh)
  s_ctx = jnp.einsum("bkqd,bkjd->bkqj", qb, k_ctx, preferred_element_type=jnp.float32) * scale
  s_anc = jnp.einsum("bkgnd,bknad->bkgna", qb.reshape(b, kv, g, n, dh), k_anc,
                     preferred_element_type=jnp.float32) * scale
  s_ctx = jnp.where(branch_context[:, None, None], s_ctx.reshape(b, kv, g, n, t), _MASKED)
  s_anc = jnp.where((ancestors >= 0)[:, None, None], s_anc, _MASKED)
  probs = jax.nn.softmax(jnp.concatenate([s_ctx, s_anc], axis=-1), axis=-1).astype(dtype)
  p_ctx = probs[..., :t].reshape(b, kv, g * n, t)
  out = (jnp.einsum("bkqj,bkjd->bkqd", p_ctx, v_ctx).reshape(b, kv, g, n, dh)
         + jnp.einsum("bkgna,bknad->bkgnd", probs[..., t:], v_anc))
  out = out.transpose(0, 3, 1, 2, 4).reshape(b, n, h * dh)
  return jnp.concatenate([out_ctx, out], axis=1)

def _remat(block, policy: str):
  """The layer under the config's remat policy (REMAT_POLICIES in models/config.py)."""
  if policy == "none":
    return block
  # prevent_cse=False: under nn.scan the loop already keeps XLA from merging the recompute away.
  saveable = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[policy]
  return nn.remat(block, prevent_cse=False, policy=saveable)


class Decoder(nn.Module):
  """Embedding, the scanned layers (params stacked on a leading [L] axis), final norm, LM head. With
  `split`, the layers' params are L separate subtrees layers_0 .. layers_<L-1> instead (split_layers)."""
  cfg: ModelConfig
  window: int | None = None
  append: bool = True
  branches: bool = False
  causal: bool = False
  split: bool = False

  @nn.compact
  def __call__(self, tokens, rope, mask, kv, index):
    cfg = self.cfg
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=nn.initializers.normal(_INIT_STD), name="embed")
    x = embed(tokens)
    block = _remat(Block, cfg.remat)
    k_cache, v_cache = kv if kv is not None else (None, None)
    carry = (x, k_cache, v_cache)
    per_layer = isinstance(k_cache, tuple)
    if per_layer and not self.split:
      raise ValueError("a split KV cache (init_cache(split=True)) needs split params (models.split_layers)")
    if self.split:
      # Per-layer params (split_layers; _apply names them layers_<i>): straight-line code whose matmuls read
      # each layer's own weight buffers, and with a split cache each layer's own cache buffers.
      ks, vs = list(k_cache) if per_layer else None, list(v_cache) if per_layer else None
      for i in range(cfg.num_layers):
        if per_layer:
          carry = (carry[0], ks[i], vs[i])
        carry, _ = block(cfg, self.window, self.append, self.branches, self.causal, name=f"layers_{i}")(
            carry, i, rope, mask, index)
        if per_layer:
          ks[i], vs[i] = carry[1], carry[2]
      if per_layer:
        carry = (carry[0], tuple(ks), tuple(vs))
    else:
      # Unrolled, the layers are straight-line code over the same stacked params: no loop-carried stacks of
      # residuals to fill and slice (ModelConfig.unroll_layers; "learner": the forwards without a cache).
      unroll = cfg.unroll_layers == "all" or (cfg.unroll_layers == "learner" and kv is None)
      layers = nn.scan(block, variable_axes={"params": 0, "lora": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                       unroll=cfg.num_layers if unroll else 1)
      carry, _ = layers(cfg, self.window, self.append, self.branches, self.causal, name="layers")(
          carry, jnp.arange(cfg.num_layers), rope, mask, index)
    x, k_cache, v_cache = carry
    hidden = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    if cfg.tie_embeddings:
      head = {"embed": {"embedding": embed.embedding}}
    else:
      head = {"lm_head": self.param("lm_head", nn.initializers.normal(_INIT_STD),
                                    (cfg.hidden_size, cfg.vocab_size), cfg.param_dtype)}
    new_kv = None if kv is None else (k_cache, v_cache)
    return lm_head(cfg, head, hidden), hidden.astype(jnp.float32), new_kv


def lm_head(cfg: ModelConfig, params: dict, hidden: jax.Array) -> jax.Array:
  """hidden [B, T, D] (forward's final-norm output) -> logits [B, T, V] f32, exactly as forward computes
  them; lets a caller run the head on a few positions only (e.g. each row's last token after a prefill)."""
  hidden = hidden.astype(cfg.dtype)
  if cfg.tie_embeddings:
    return linear(hidden, params["embed"]["embedding"].astype(cfg.dtype), True, jnp.float32)
  return linear(hidden, params["lm_head"].astype(cfg.dtype), False, jnp.float32)


def init_params(cfg: ModelConfig, rng) -> dict:
  """Random parameters (normal(0.02) kernels, unit norms, zero biases) as a plain nested dict.

  Layout: embed/embedding [V, D]; layers/<name>/kernel [L, in, out] (bias [L, out]), layers/*_norm/scale
  [L, D]; final_norm/scale [D]; lm_head [D, V] when the embeddings are untied.
  """
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  return flax.core.unfreeze(_init(cfg, rng))


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: ModelConfig, rng):
  tokens = jnp.zeros((1, 1), jnp.int32)
  mask = jnp.ones((1, 1, 1), bool)
  return Decoder(cfg).init(rng, tokens, _rope_tables(cfg, tokens), mask, None, jnp.int32(0))["params"]


def _apply(cfg: ModelConfig, params: dict, *args, window: int | None = None, append: bool = True,
           branches: bool = False, causal: bool = False):
  """Decoder(cfg, window, append, branches, causal).apply on a param tree that may carry LoRA adapters under
  "lora" (models/lora.py attach): they go to the "lora" collection, their optional "rng" to the dropout
  stream."""
  split = is_split(params)
  decoder = Decoder(cfg, window, append, branches, causal, split)
  params = dict(params)
  lora = dict(params.pop("lora", {}))
  rng = lora.pop("rng", None)
  if split:
    # The adapters stay stacked (they are small): each layer takes its slice under the caller's jit.
    layers = params.pop("layers")
    params.update({f"layers_{i}": p for i, p in enumerate(layers)})
    lora = {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], lora) for i in range(len(layers))
            } if lora else {}
  else:
    lora = {"layers": lora} if lora else {}
  if not lora:
    return decoder.apply({"params": params}, *args)
  return decoder.apply({"params": params, "lora": lora}, *args,
                       rngs=None if rng is None else {"dropout": rng})


def split_layers(params: dict) -> dict:
  """params with "layers" (every leaf stacked on a leading [L] axis) as a tuple of L per-layer trees, each
  leaf its own buffer: forward then runs the layers as straight-line code whose weight matmuls read those
  buffers. The sampler's form on XLA:CPU (sampling.sampler_params): there a layer loop, or straight-line
  code over the stacked params, copies each layer's weights out of the stack before its matmuls
  (SmolLM2-135M decodes 1.2x faster split: docs/BENCHMARKS.md, sampler rows). The same values:
  forward gives the same outputs either way. A second copy of the layer weights, made by its own jitted
  program (call it outside the sampler's jit, once per batch of rollouts)."""
  if is_split(params):
    return params
  return {**params, "layers": _split(params["layers"])}


@jax.jit
def _split(layers):
  count = jax.tree.leaves(layers)[0].shape[0]
  return tuple(jax.tree.map(lambda x, i=i: x[i], layers) for i in range(count))


def is_split(params: dict) -> bool:
  """Whether params carry their layers as split_layers' per-layer tuple."""
  return isinstance(params.get("layers"), tuple)


def forward(cfg: ModelConfig, params: dict, tokens: jax.Array, positions: jax.Array,
            valid: jax.Array | None = None, cache: KVCache | None = None,
            attn_mask: jax.Array | None = None, *, window: int | None = None,
            append: bool = True) -> tuple[jax.Array, jax.Array, KVCache | None]:
  """tokens, positions [B, T] int32 (logical RoPE positions), valid [B, T] bool (default all True).

  Without a cache, query i sees key j iff attn_mask[b, i, j] if given, else j <= i and valid[b, j].
  With a cache, a query sees the valid slots before `index` among the first `window` slots (a static int;
  default all S: the cost follows the window, so callers pass a bucket of the live length), plus the new
  tokens per attn_mask [B, T, T] (default causal & valid). append=True writes the T tokens to slots
  [index, index + T) (valid copied there) and returns the cache advanced by T; the caller keeps
  index + T <= window <= S (XLA clamps writes past the end, unchecked). append=False leaves the cache as
  it is (returns None for it): the tokens are scored as a continuation of the cached prefix.
  Returns logits [B, T, V] f32, hidden [B, T, D] f32 (final-norm output), the new cache or None.
  params may carry LoRA adapters (models.lora.attach): base + adapters, without merging the weights.
  """
  b, t = tokens.shape
  valid = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
  causal = attn_mask is None
  if causal:
    attn_mask = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
  attn_mask = attn_mask.astype(bool)
  rope = _rope_tables(cfg, positions)
  if cache is None:
    logits, hidden, _ = _apply(cfg, params, tokens, rope, attn_mask, None, jnp.int32(0), causal=causal)
    return logits, hidden, None
  window = window or cache.valid.shape[1]
  index = cache.index.astype(jnp.int32)
  earlier = (jnp.arange(window) < index)[None, None, :] & cache.valid[:, None, :window]
  if append:
    new = jax.lax.dynamic_update_slice(jnp.zeros((b, t, window), bool), attn_mask, (0, 0, index))
    mask = earlier | new
  else:
    mask = jnp.concatenate([jnp.broadcast_to(earlier, (b, t, window)), attn_mask], axis=-1)
  logits, hidden, (k, v) = _apply(cfg, params, tokens, rope, mask, (cache.k, cache.v), index,
                                  window=window, append=append)
  if not append:
    return logits, hidden, None
  new_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))
  return logits, hidden, KVCache(k=k, v=v, valid=new_valid, index=index + t)


class Branches(NamedTuple):
  """Continuations of a context scored without copying it (models.forward_branches), [B, N] each.

  Branch token n sits at RoPE position positions[b, n] and sees the context's first context[b, n] tokens
  and the branch tokens ancestors[b, n, :] (its own earlier tokens and itself; -1 pad).
  """
  tokens: jax.Array     # [B, N] int32
  positions: jax.Array  # [B, N] int32
  context: jax.Array    # [B, N] int32
  ancestors: jax.Array  # [B, N, A] int32


def forward_branches(cfg: ModelConfig, params: dict, tokens: jax.Array, positions: jax.Array,
                     valid: jax.Array, branches: Branches) -> jax.Array:
  """The context tokens [B, T] under the causal mask, and `branches` continuing it, in one pass over the
  layers: hidden [B, T + N, D] f32 (final-norm output; models.lm_head gives the logits of chosen rows).
  Context outputs equal forward(tokens, positions, valid)'s; a branch token's equal those of a forward of
  the sequence it continues (the visible context, then its ancestors)."""
  t = tokens.shape[1]
  context = jnp.tril(jnp.ones((t, t), bool))[None] & valid.astype(bool)[:, None, :]
  branch_context = jnp.arange(t)[None, None, :] < branches.context[..., None]
  rope = _rope_tables(cfg, jnp.concatenate([positions, branches.positions], axis=1))
  masks = (context, branch_context, branches.ancestors)
  _, hidden, _ = _apply(cfg, params, jnp.concatenate([tokens, branches.tokens], axis=1), rope, masks, None,
                        jnp.int32(0), branches=True)
  return hidden

@functools.partial(jax.jit, static_argnums=0)
def logits(cfg: ModelConfig, params: dict, token_ids: jax.Array) -> jax.Array:
  """The plain forward: token_ids [B, T] at positions 0..T-1 -> logits [B, T, V] float32 (jitted)."""
  token_ids = jnp.asarray(token_ids, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(token_ids.shape[1], dtype=jnp.int32), token_ids.shape)
  return forward(cfg, params, token_ids, positions)[0]
