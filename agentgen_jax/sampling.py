"""Batched generation under jit: a KV-cache context that grows turn by turn (prefill = extend), a
lax.while_loop decoder with temperature / top-p / EOS / stop sequences and sampler log-probs."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax import models, parallel


@flax.struct.dataclass
class Context:
  """One batch of conversations on device."""
  cache: models.KVCache
  next_pos: jax.Array     # [B] int32: logical position of each row's next token (count of real tokens)
  last_logits: jax.Array  # [B, V] f32: logits after each row's last real token
  # The most slots the cache may grow to (new_context's max_len; 0: its capacity now). The cache holds
  # `capacity` slots and grows by buckets (grow) as the conversation needs them, so attention always
  # reads the whole cache, never a window sliced out of a larger one. Static: part of the pytree's shape.
  max_len: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def capacity(self) -> int:
    """The cache slots allocated now."""
    return self.cache.valid.shape[1]

  @property
  def limit(self) -> int:
    """The most slots this context can hold (grow's ceiling)."""
    return self.max_len or self.capacity


@flax.struct.dataclass
class Generated:
  """What one decode call produced; positions past `lengths` hold 0."""
  tokens: jax.Array    # [B, N] int32
  # [B, N] f32: the log-prob of each token under the distribution it was sampled from: log_softmax of
  # logits / temperature, restricted and renormalised to the nucleus when top_p < 1; with temperature 0
  # (greedy, for evaluation) the log_softmax of the untempered logits.
  logprobs: jax.Array
  lengths: jax.Array   # [B] int32: tokens generated, the EOS / stop token included; 0 for inactive rows


def bucket(n: int, minimum: int = 16) -> int:
  """The padded length for n: the smallest of minimum * {1, 1.5, 2, 3, 4, 6, 8, ...} that is >= n.

  Sizes grow geometrically, so a run sees a handful of shapes (one compile each) while padding
  wastes at most a third of the slots.
  """
  size = minimum
  while size < n:
    if size % 2 == 0 and size * 3 // 2 >= n:
      return size * 3 // 2
    size *= 2
  return size


def live_window(needed: int, capacity: int) -> int:
  """The cache slots a context allocates (grow) for a call that leaves `needed` slots in use, and so that
  call's static attention window: bucket(needed) (at least 128, so that short contexts share one
  program), at most the capacity. Attention then costs what the live cache holds, within a bucket,
  whatever the context's capacity."""
  return min(bucket(needed, minimum=128), capacity)


def sampler_params(cfg, params, mesh=None):
  """params in the form the sampler's programs take them: split into per-layer buffers
  (models.split_layers) when cfg.sampler_layers is "split" and there is no mesh, else as they are (a
  mesh's programs take the stacked params in their FSDP shardings). Once per batch of rollouts: the
  split copies the layer weights."""
  return models.split_layers(params) if split_cache(cfg, mesh) else params


def split_cache(cfg, mesh=None) -> bool:
  """Whether a context's KV cache is per-layer buffers (models.init_cache(split=True)): exactly when
  sampler_params splits the params (cfg.sampler_layers "split", no mesh). A layer then reads and writes
  its own cache buffer; a stacked cache had each layer's window copied out of the stack in every step."""
  return cfg.sampler_layers == "split" and mesh is None


def _check_forms(params, ctx: Context):
  """A one-line error when the context's cache and the params are not in matching forms."""
  if ctx.cache.split and not models.is_split(params):
    raise ValueError("this context has a split KV cache (cfg.sampler_layers='split'): pass the params "
                     "through sampling.sampler_params(cfg, params) first")


@functools.lru_cache(maxsize=64)
def _context_maker(cfg, batch: int, max_len: int, mesh):
  """A compiled zero-filled Context builder, cached so that each new batch does not re-jit."""
  def make():
    return Context(cache=models.init_cache(cfg, batch, max_len, split=split_cache(cfg, mesh)),
                   next_pos=jnp.zeros((batch,), jnp.int32),
                   last_logits=jnp.zeros((batch, cfg.vocab_size), jnp.float32))
  if mesh is None:
    return jax.jit(make)
  return jax.jit(make, out_shardings=parallel.cache_shardings(mesh, jax.eval_shape(make)))


def new_context(cfg, batch: int, max_len: int, mesh=None) -> Context:
  """An empty context for `batch` rows that can hold `max_len` cache slots (sharded over `mesh` if
  given). It starts with live_window(0, max_len) slots (128, or max_len if fewer) and grows by buckets
  as extend and decode need them (grow)."""
  parallel.check_rows(batch, mesh, "context batch")
  if max_len < 1:
    raise ValueError(f"max_len={max_len}; a context needs at least one cache slot")
  ctx = _context_maker(cfg, batch, live_window(0, max_len), mesh)()
  return ctx.replace(max_len=max_len)


def grow(ctx: Context, needed: int) -> Context:
  """ctx with room for `needed` slots: the cache re-allocated at live_window(needed, ctx.limit) slots
  (the new slots empty and invalid) when it has fewer; ctx itself otherwise. A conversation's
  cache grows a handful of times (buckets grow geometrically), each a copy of what it holds."""
  if needed <= ctx.capacity:
    return ctx
  size = live_window(needed, ctx.limit)
  if size <= ctx.capacity:
    return ctx
  return _pad_cache(ctx, size=size)


@functools.partial(jax.jit, static_argnames="size")
def _pad_cache(ctx: Context, *, size: int) -> Context:
  """ctx with its cache padded to `size` slots (empty, invalid). Under a mesh the padded arrays keep their
  inputs' row shardings (the pad is along the slots). No donation: the old buffers are smaller than any
  output, XLA could not reuse them."""
  cache = ctx.cache
  extra = size - cache.valid.shape[1]
  def slots(x):  # k / v: slots on axis -2
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, extra), (0, 0)])
  return ctx.replace(cache=cache.replace(k=jax.tree.map(slots, cache.k), v=jax.tree.map(slots, cache.v),
                                         valid=jnp.pad(cache.valid, [(0, 0), (0, extra)])))


def extend_step(cfg, params, ctx: Context, tokens: jax.Array, valid: jax.Array, window: int,
                advance: jax.Array | None = None) -> Context:
  """extend's device program, unjitted (launch.plan compiles it with its own shardings): appends the
  already padded chunk tokens, valid [B, T], attending over the first `window` cache slots. The cache's
  index then moves by `advance` (an int32 scalar <= T; default T): slots past it hold the chunk's padding,
  invalid, and the next write starts over them."""
  valid = valid.astype(bool)
  counts = valid.sum(axis=1).astype(jnp.int32)                                    # [B]
  positions = ctx.next_pos[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
  positions = jnp.maximum(positions, 0)
  _, hidden, cache = models.forward(cfg, params, tokens.astype(jnp.int32), positions, valid,
                                    cache=ctx.cache, window=window)
  # Only each row's last real token (wherever the padding sits: left, right or holes) goes through the
  # head: the forward's own [B, T, V] logits are then unused and XLA drops them (for SmolLM2-135M the
  # head is a fifth of the prefill FLOPs and the largest activation).
  slots = jnp.arange(tokens.shape[1], dtype=jnp.int32)
  last = jnp.max(jnp.where(valid, slots[None], -1), axis=1)                       # [B]
  last_hidden = jnp.take_along_axis(hidden, jnp.maximum(last, 0)[:, None, None], axis=1)   # [B, 1, D]
  row_logits = models.lm_head(cfg, params, last_hidden)[:, 0]
  last_logits = jnp.where((counts > 0)[:, None], row_logits, ctx.last_logits)
  if advance is not None:
    cache = cache.replace(index=ctx.cache.index + advance)
  return ctx.replace(cache=cache, next_pos=ctx.next_pos + counts, last_logits=last_logits)


_extend_jit = jax.jit(extend_step, static_argnames=("cfg", "window"), donate_argnames="ctx")


# Prefill pieces: a chunk is appended PIECE tokens at a time (sampling.extend).
PIECE = 128


def extend(cfg, params, ctx: Context, tokens, valid, piece: int | None = PIECE) -> Context:
  """Appends a chunk per row: tokens [B, T] int32, valid [B, T] bool (rows with no valid token keep
  their state). Every row uses the same cache slots [index, index + T); slots of rows' own padding stay
  invalid. `ctx` is donated.

  The chunk goes in pieces of `piece` tokens, each padded to `piece` (to its own bucket where the cache
  has fewer slots left): every call has the shape [B, piece], so the compiled programs differ only by
  their attention window. A run then compiles one prefill per window bucket however its turns' lengths
  vary, where a shape per (chunk bucket, window) pair kept compiling new programs for several
  iterations. Piece by piece, attention is blockwise causal: a piece attends over the slots before it,
  not over the whole chunk's window. piece=None: one call, the chunk padded to bucket(T).

  The cache's index moves by the real length only: the next piece, chunk or decoded token is written over
  a piece's padding, so that padding leaves no holes in the cache (and attention windows stay small).
  """
  _check_forms(params, ctx)
  tokens, valid = np.asarray(tokens, np.int32), np.asarray(valid, bool)
  if tokens.shape != valid.shape or tokens.ndim != 2:
    raise ValueError(f"tokens {tokens.shape} and valid {valid.shape} must both be [B, T]")
  if piece is not None and piece < 1:
    raise ValueError(f"piece={piece}; it must be >= 1 (or None: the whole chunk in one call)")
  slots = ctx.limit
  index = int(ctx.cache.index)
  length = tokens.shape[1]
  if length > slots - index:
    raise ValueError(f"chunk of {length} tokens does not fit: {slots - index} of {slots} cache slots "
                     "left; use a larger max_len")
  step = piece or max(length, 1)
  for start in range(0, max(length, 1), step):
    n = min(step, length - start)
    # A piece that does not fit in the slots left (a small cache, or its end) pads to its bucket.
    padded = piece if piece and piece <= slots - index else min(bucket(n), slots - index)
    part_tokens = np.zeros((tokens.shape[0], padded), np.int32)
    part_valid = np.zeros((tokens.shape[0], padded), bool)
    part_tokens[:, :n], part_valid[:, :n] = tokens[:, start:start + n], valid[:, start:start + n]
    ctx = grow(ctx, index + padded)
    ctx = _extend_jit(cfg, params, ctx, _like_rows(ctx, part_tokens), _like_rows(ctx, part_valid),
                      window=ctx.capacity, advance=np.int32(n))
    index += n
  return ctx


def _like_rows(ctx: Context, x: np.ndarray):
  """Places a host array [B, ...] with the context's batch sharding (no-op without a mesh). On several
  processes x is either all B rows (the same on every process) or this process's block of them
  (parallel.process_rows: B / process_count rows, as the rollout passes them)."""
  sharding = ctx.cache.valid.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):  # rows over the mesh's batch axes, whatever x's rank
    rows = ctx.cache.valid.shape[0]
    if jax.process_count() > 1 and x.shape[0] != rows:
      return parallel.from_process_rows(x, sharding.mesh, rows)
    return jax.device_put(x, parallel.batch_sharding(sharding.mesh))
  return x


def _top_p_logits(logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """Masks to -inf every token outside the nucleus: the most likely tokens whose mass reaches top_p.

  logits [B, V] (already divided by the temperature) -> [B, V].
  """
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(ordered, axis=-1)
  # A token is kept when the mass strictly before it is below top_p, so the nucleus always holds the
  # token that crosses top_p (and at least the argmax).
  keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  n_keep = jnp.maximum(keep.sum(axis=-1), 1)
  threshold = jnp.take_along_axis(ordered, (n_keep - 1)[:, None], axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _sample(logits: jax.Array, rng: jax.Array, temperature: jax.Array, top_p: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """logits [B, V] f32 -> (tokens [B] int32, logprobs [B] f32 of each token under the distribution sampled
  from: logits / temperature, top-p-truncated and renormalised); argmax and untempered log-probs when
  temperature == 0."""
  def pick(token, dist):
    return token, jnp.take_along_axis(jax.nn.log_softmax(dist, axis=-1), token[:, None], axis=-1)[:, 0]
  def sampled(_):
    scaled = logits / temperature
    scaled = jax.lax.cond(top_p < 1.0, lambda x: _top_p_logits(x, top_p), lambda x: x, scaled)
    return pick(jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32), scaled)
  def greedy(_):
    return pick(jnp.argmax(logits, axis=-1).astype(jnp.int32), logits)
  # A real branch (not jnp.where): greedy decoding skips the sort that top-p needs.
  return jax.lax.cond(temperature > 0, sampled, greedy, None)


def decode_loop(cfg, params, ctx: Context, rng, active, temperature, top_p, *, max_new_tokens: int,
                eos_ids: tuple[int, ...], stop_seqs: tuple[tuple[int, ...], ...], window: int):
  """decode's device program, unjitted (launch.plan compiles it with its own shardings): a while_loop of
  one-token steps; temperature and top_p are traced f32 scalars."""
  batch, _ = ctx.cache.valid.shape
  stop_len = max([len(s) for s in stop_seqs], default=1)
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  def cond(state):
    step, ctx, _, _, _, done, _, _ = state
    # Stop when every row is done, at max_new_tokens, or when the attention window (the cache) is full.
    return (step < max_new_tokens) & ~jnp.all(done) & (ctx.cache.index < window)

  def body(state):
    step, ctx, rng, tokens, logprobs, done, lengths, recent = state
    rng, key = jax.random.split(rng)
    running = ~done
    token, logprob = _sample(ctx.last_logits, key, temperature, top_p)
    logprob = logprob[:, None]
    token = jnp.where(running, token, 0)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    logprobs = jax.lax.dynamic_update_slice(logprobs, jnp.where(running[:, None], logprob, 0.0), (0, step))
    # The sampled token (EOS included) goes into the cache so that the next turn continues after it.
    logits, _, cache = models.forward(cfg, params, token[:, None], ctx.next_pos[:, None], running[:, None],
                                      cache=ctx.cache, window=window)
    last_logits = jnp.where(running[:, None], logits[:, 0].astype(jnp.float32), ctx.last_logits)
    ctx = ctx.replace(cache=cache, next_pos=ctx.next_pos + running, last_logits=last_logits)
    lengths = lengths + running
    recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
    stopped = jnp.isin(token, eos)
    for seq in stop_seqs:
      match = jnp.all(recent[:, stop_len - len(seq):] == jnp.asarray(seq, jnp.int32)[None], axis=1)
      stopped |= match & (lengths >= len(seq))
    done = done | (running & stopped)
    return step + 1, ctx, rng, tokens, logprobs, done, lengths, recent

  state = (jnp.int32(0), ctx, rng, jnp.zeros((batch, max_new_tokens), jnp.int32),
           jnp.zeros((batch, max_new_tokens), jnp.float32), ~active.astype(bool),
           jnp.zeros((batch,), jnp.int32), jnp.full((batch, stop_len), -1, jnp.int32))
  _, ctx, _, tokens, logprobs, _, lengths, _ = jax.lax.while_loop(cond, body, state)
  return ctx, Generated(tokens=tokens, logprobs=logprobs, lengths=lengths)


_decode_jit = jax.jit(decode_loop,
                      static_argnames=("cfg", "max_new_tokens", "eos_ids", "stop_seqs", "window"),
                      donate_argnames="ctx")


def decode(cfg, params, ctx: Context, rng, active, *, max_new_tokens: int, temperature: float,
           top_p: float, eos_ids: Sequence[int], stop_seqs: Sequence[Sequence[int]] = ()
           ) -> tuple[Context, Generated]:
  """Samples up to max_new_tokens per active row [B] bool, appending them to the context (donated).

  Rows stop on a token in eos_ids or when their generated tokens end with one of stop_seqs; the stop
  token is kept (in the cache and in the output). temperature == 0 decodes greedily.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}; it must be >= 1")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p}; it must be in (0, 1]")
  if temperature < 0:
    raise ValueError(f"temperature={temperature}; it must be >= 0 (0 = greedy)")
  _check_forms(params, ctx)
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  ctx = grow(ctx, int(ctx.cache.index) + max_new_tokens)
  window = ctx.capacity
  # temperature and top_p enter as traced arrays, not Python floats: a float would be baked into the
  # compiled program as a constant, and every new value (a schedule, eval vs train) would recompile.
  return _decode_jit(cfg, params, ctx, rng, _like_rows(ctx, np.asarray(active, bool)),
                     jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                     max_new_tokens=int(max_new_tokens), eos_ids=tuple(int(i) for i in eos_ids),
                     stop_seqs=tuple(tuple(int(t) for t in s) for s in stop_seqs if len(s)), window=window)


def truncate_at_stop_strings(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
  """Cuts `text` before the earliest occurrence of any stop string; returns (text, whether one was found)."""
  cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


@dataclasses.dataclass
class GenerationResult:
  text: str               # the completion, cut before a stop string, special tokens removed
  tokens: list[int]       # generated ids up to and including the EOS / the token completing a stop string
  logprobs: list[float]   # sampler log-prob of each of those tokens


class Sampler:
  """Text in, text out: tokenizes (chat template for message lists), prefills, decodes.

  With a mesh, the batch rows are split over its batch axes and the params placed by the FSDP rule.
  """

  def __init__(self, cfg, params, tokenizer, *, max_len: int = 2048, mesh=None,
               eos_ids: Sequence[int] | None = None):
    self.cfg, self.tokenizer, self.max_len, self.mesh = cfg, tokenizer, max_len, mesh
    self.params = sampler_params(cfg, parallel.place_params(params, mesh), mesh)
    if eos_ids is None:
      # The model's own end ids (e.g. <|im_end|> and <|endoftext|>) and the tokenizer's.
      eos = tokenizer.eos_token_id
      eos_ids = list(getattr(cfg, "eos_token_ids", ())) + ([eos] if isinstance(eos, int) else list(eos or []))
    self.eos_ids = tuple(dict.fromkeys(int(i) for i in eos_ids))

  def encode(self, prompt: str | list[dict]) -> list[int]:
    """A plain string is tokenized as is; a list of chat messages goes through the chat template."""
    if isinstance(prompt, str):
      return list(self.tokenizer(prompt)["input_ids"])
    text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def generate(self, prompts: Sequence[str] | Sequence[list[dict]], *, max_new_tokens: int = 64,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
               stop: Sequence[str] = ()) -> list[GenerationResult]:
    if not prompts:
      return []
    ids = [self.encode(p) for p in prompts]
    longest = max(len(x) for x in ids)
    # Batch and lengths are bucketed so that repeated calls reuse the compiled prefill and decoder.
    shards = parallel.batch_divisor(self.mesh)
    batch = math.ceil(bucket(len(ids), minimum=1) / shards) * shards
    width = bucket(longest)
    slots = min(bucket(width + max_new_tokens), self.max_len)
    if width >= slots:
      raise ValueError(f"prompt of {longest} tokens (padded {width}) leaves no room in max_len="
                       f"{self.max_len} for {max_new_tokens} new tokens")
    tokens = np.zeros((batch, width), np.int32)
    valid = np.zeros((batch, width), bool)
    for row, x in enumerate(ids):
      tokens[row, :len(x)], valid[row, :len(x)] = x, True
    ctx = new_context(self.cfg, batch, slots, mesh=self.mesh)
    ctx = extend(self.cfg, self.params, ctx, tokens, valid)
    stop_seqs = [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in stop]
    active = np.arange(batch) < len(ids)
    _, out = decode(self.cfg, self.params, ctx, jax.random.key(seed), active,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    eos_ids=self.eos_ids, stop_seqs=stop_seqs)
    out = jax.device_get(out)
    return [self._result(out.tokens[r, :out.lengths[r]], out.logprobs[r, :out.lengths[r]], stop)
            for r in range(len(ids))]

  def _result(self, tokens: np.ndarray, logprobs: np.ndarray, stop: Sequence[str]) -> GenerationResult:
    decode_text = lambda t: self.tokenizer.decode(list(t), skip_special_tokens=True)
    text, found = truncate_at_stop_strings(decode_text(tokens), stop)
    if found:
      # Keep the tokens up to the first one whose text completes a stop string.
      for n in range(1, len(tokens) + 1):
        if truncate_at_stop_strings(decode_text(tokens[:n]), stop)[1]:
          tokens, logprobs = tokens[:n], logprobs[:n]
          break
    return GenerationResult(text=text, tokens=[int(t) for t in tokens],
                            logprobs=[float(x) for x in logprobs])
