"""Our KV-cache sampler against Tunix 0.1.7's (tunix.generate.sampler.Sampler) on one random Qwen2-shaped
model whose weights both hold, greedy: a single-turn batch (target >= 2x) and a 4-turn episode batch (>= 4x),
timed interleaved in one process. `run(quick)` -> benchmark rows. Opt-in: it needs Tunix (PIP below).

  python -m launch.benchmark --suites=tunix --out=/tmp/tunix_bench

Tunix's sampler keeps no cache between calls, so its episode re-samples the whole conversation every turn;
ours extends each episode's KV cache with the new observation only, as rollout.Roller does.
"""

from __future__ import annotations

import os
import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax import models, rollout, sampling
from agentgen_jax.models import config as models_config

PIP = "bash launch/install.sh (or pip install --no-deps google-tunix==0.1.7 and the modules it lists)"
SINGLE_TARGET = 2.0    # issue target 5: single-turn tokens/s >= 2x Tunix's
EPISODE_TARGET = 4.0   # and >= 4x on the 4-turn episode batch
MATCH_MIN = 16         # greedy tokens both samplers must agree on (per row) before anything is timed
PAD = 0                # Tunix's pad id; prompts and observations never hold it (drawn from [3, V))
NO_EOS = -1            # an EOS id no step can produce: every row generates all its tokens on both sides


def model_config(quick: bool = False) -> models.ModelConfig:
  """The random model: Qwen2-shaped (qkv biases, tied embeddings, GQA, rope theta 1e6), ~4M parameters."""
  size = dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=32, vocab_size=1024) if quick else {}
  cfg = models.ModelConfig(
      **{**dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                num_kv_heads=2, head_dim=64), **size},
      rope_theta=1e6, rms_norm_eps=1e-6, qkv_bias=True, tie_embeddings=True, architecture="qwen2",
      pad_token_id=PAD)
  # The layer loop a run of this size uses on this backend (RunConfig.layer_loop "auto").
  return models_config.apply_layer_loop(cfg, "auto", jax.default_backend())


def require_tunix() -> types.SimpleNamespace:
  """Tunix's sampler and Qwen2 modules, or a one-line exit naming the install command."""
  try:
    from tunix.generate import sampler
    from tunix.models.qwen2 import model as qwen2
  except ImportError as e:
    raise SystemExit(f"the tunix suite needs Tunix 0.1.7 ({e}): {PIP}") from None
  return types.SimpleNamespace(sampler=sampler, qwen2=qwen2)


# ------------------------------------------------------------------------------------------ the weights

def tunix_model(cfg: models.ModelConfig, seed: int = 0):
  """Tunix's nnx Qwen2 of cfg's shape with random weights, every one of them drawn here (Tunix's own init
  leaves the MLP kernels and the q/k/v biases zero and the norms one, which would leave them unchecked):
  kernels normal with std 1 / sqrt(fan in), the embedding normal(0, 1) as Tunix draws it, biases and norm
  scales near 0 and 1. The pad token's embedding row is zero (its logit 0 is below the argmax of a random
  model): Tunix masks every pad token in its buffer out of attention, generated ones included."""
  from flax import nnx
  qwen2 = require_tunix().qwen2
  if cfg.architecture != "qwen2" or not cfg.qkv_bias or cfg.rope_scaling:
    raise ValueError(f"Tunix's Qwen2 has qkv biases and plain RoPE; got architecture={cfg.architecture!r}, "
                     f"qkv_bias={cfg.qkv_bias}, rope_scaling={cfg.rope_scaling}")
  config = qwen2.ModelConfig(
      num_layers=cfg.num_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.hidden_size,
      hidden_dim=cfg.intermediate_size, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
      num_kv_heads=cfg.num_kv_heads, rope_theta=int(cfg.rope_theta), norm_eps=cfg.rms_norm_eps,
      use_tied_embedding=cfg.tie_embeddings)
  model = nnx.eval_shape(lambda: qwen2.Qwen2(config, rngs=nnx.Rngs(seed)))   # shapes only: no init work
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if "norm" in name:
      w = rng.normal(1.0, 0.1, x.shape)
    elif "bias" in name:
      w = rng.normal(0.0, 0.1, x.shape)
    elif "input_embedding" in name:
      w = rng.normal(0.0, 1.0, x.shape)
      w[PAD] = 0.0
    else:   # kernels: [in, out], q/k/v [D, heads, Dh], o_proj [heads, Dh, D]
      w = rng.normal(0.0, (x.size // x.shape[-1] if "o_proj" in name else x.shape[0]) ** -0.5, x.shape)
    return jnp.asarray(w, x.dtype)

  nnx.update(model, jax.tree_util.tree_map_with_path(draw, nnx.state(model, nnx.Param)))
  return model


def params_from_tunix(cfg: models.ModelConfig, model) -> dict:
  """Our param tree (models.init_params' layout: stacked [L, in, out] kernels) holding the Tunix model's
  weights. Tunix's q/k/v kernels are [D, heads, Dh] and o_proj's [heads, Dh, D]: the same head-major order
  as ours once flattened."""
  layers = list(model.layers)
  n, d = cfg.num_layers, cfg.hidden_size
  stack = lambda get: jnp.stack([jnp.asarray(get(layer)[...]) for layer in layers])
  params = {
      "embed": {"embedding": jnp.asarray(model.embedder.input_embedding[...])},
      "final_norm": {"scale": jnp.asarray(model.final_norm.w[...])},
      "layers": {
          "input_norm": {"scale": stack(lambda x: x.input_layernorm.w)},
          "post_attention_norm": {"scale": stack(lambda x: x.post_attention_layernorm.w)},
          "o_proj": {"kernel": stack(lambda x: x.attn.o_proj.w).reshape(n, -1, d)},
          **{name: {"kernel": stack(lambda x, name=name: getattr(x.mlp, name).kernel)}
             for name in ("gate_proj", "up_proj", "down_proj")},
          **{f"{p}_proj": {"kernel": stack(lambda x, p=p: getattr(x.attn, f"{p}_proj").w).reshape(n, d, -1),
                           "bias": stack(lambda x, p=p: getattr(x.attn, f"{p}_bias"))}
             for p in "qkv"},
      },
  }
  if not cfg.tie_embeddings:
    params["lm_head"] = jnp.asarray(model.lm_head.w[...])
  want = jax.eval_shape(lambda: models.init_params(cfg, jax.random.PRNGKey(0)))
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  if shapes(params) != shapes(want):
    raise ValueError(f"the copied weights do not match models.init_params' layout: {shapes(params)} vs "
                     f"{shapes(want)}")
  return params


def tunix_logits(model, tokens: np.ndarray) -> np.ndarray:
  """The Tunix model's plain causal forward: tokens [B, T] at positions 0..T-1 -> logits [B, T, V] f32."""
  from flax import nnx
  graph, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens):
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    return nnx.merge(graph, state)(tokens, positions, None, mask)[0]

  return np.asarray(forward(state, jnp.asarray(tokens, jnp.int32)))


# ------------------------------------------------------------------------------------------ the samplers

class IdTokenizer:
  """Token ids written as text ("17 4 902"): Tunix's Sampler takes strings, and this one maps them back to
  the same ids. bos_id() is 0, which the sampler reads as "no BOS to prepend"."""

  def encode(self, text: str) -> list[int]:
    return [int(t) for t in text.split()]

  def decode(self, ids) -> str:
    return " ".join(str(int(t)) for t in ids)

  def bos_id(self) -> int:
    return 0

  def eos_id(self) -> int:
    return NO_EOS

  def pad_id(self) -> int:
    return PAD


def tunix_sampler(cfg: models.ModelConfig, model, cache_size: int):
  """Tunix's Sampler with a KV cache of cache_size slots (its decode attends over all of them)."""
  sampler_lib = require_tunix().sampler
  return sampler_lib.Sampler(model, IdTokenizer(), sampler_lib.CacheConfig(
      cache_size=cache_size, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))


def tunix_generate(sampler, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
  """Greedy: prompts [B, T] (no padding: T is the prompt length Tunix compiles for) -> tokens [B, N]."""
  out = sampler([IdTokenizer().decode(row) for row in prompts], max_generation_steps=new_tokens,
                max_prompt_length=prompts.shape[1], eos_tokens=[NO_EOS], temperature=0.0)
  return np.stack([np.asarray(t) for t in out.tokens])


def ours_generate(cfg, params, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
  """Greedy with our sampler: a fresh context, prefill, decode: prompts [B, T] -> tokens [B, N]."""
  batch, length = prompts.shape
  params = sampling.sampler_params(cfg, params)  # as a rollout takes them
  ctx = sampling.new_context(cfg, batch, sampling.bucket(length + new_tokens))
  ctx = sampling.extend(cfg, params, ctx, prompts, np.ones(prompts.shape, bool))
  _, out = sampling.decode(cfg, params, ctx, 0, np.ones(batch, bool), max_new_tokens=new_tokens,
                           temperature=0.0, top_p=1.0, eos_ids=())
  return np.asarray(out.tokens)


def episode_lengths(prompt: int, observation: int, new_tokens: int, turns: int) -> list[int]:
  """The conversation's length before each turn's generation: prompt, then + new tokens + observation."""
  return [prompt + turn * (new_tokens + observation) for turn in range(turns)]


def episode_rollout_config(prompt: int, observation: int, new_tokens: int, turns: int):
  """The RolloutConfig a run of these episodes would have: its cache capacity (slots()) is ours."""
  return rollout.RolloutConfig(max_new_tokens=new_tokens, temperature=0.0, max_episode_tokens=episode_lengths(
      prompt, observation, new_tokens, turns)[-1] + new_tokens)


def ours_episodes(cfg, params, prompts: np.ndarray, observations: np.ndarray, new_tokens: int) -> np.ndarray:
  """A batch of episodes the way rollout.Roller plays them: one context per batch (capacity from the
  rollout's own rule), each turn appending its chunk (the prompt, then an observation) and decoding after
  it. prompts [B, P], observations [turns - 1, B, O] -> the generated tokens [B, turns * N]."""
  batch = prompts.shape[0]
  turns = len(observations) + 1
  rcfg = episode_rollout_config(prompts.shape[1], observations.shape[2], new_tokens, turns)
  params = sampling.sampler_params(cfg, params)  # as rollout.Roller.run takes them
  ctx = sampling.new_context(cfg, batch, rcfg.slots())
  generated = []
  for chunk in [prompts, *observations]:
    ctx = sampling.extend(cfg, params, ctx, chunk, np.ones(chunk.shape, bool), piece=rcfg.prefill_piece)
    ctx, out = sampling.decode(cfg, params, ctx, 0, np.ones(batch, bool), max_new_tokens=new_tokens,
                               temperature=0.0, top_p=1.0, eos_ids=())
    generated.append(np.asarray(out.tokens))
  return np.concatenate(generated, axis=1)


def tunix_episodes(samplers: list, prompts: np.ndarray, observations: np.ndarray,
                   new_tokens: int) -> np.ndarray:
  """The same episodes with Tunix's sampler, which keeps no cache between calls: every turn samples from
  the whole conversation so far (samplers[turn] sized for that turn) -> [B, turns * N]."""
  conversation, generated = prompts, []
  for turn, sampler in enumerate(samplers):
    if turn:
      conversation = np.concatenate([conversation, generated[-1], observations[turn - 1]], axis=1)
    generated.append(tunix_generate(sampler, conversation, new_tokens))
  return np.concatenate(generated, axis=1)


# ------------------------------------------------------------------------------------------ the suite

def agreeing_prefix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per row, how many leading tokens two [B, N] greedy outputs share."""
  return np.argmax(np.concatenate([a != b, np.ones((a.shape[0], 1), bool)], axis=1), axis=1)


def _timed(fn) -> tuple[np.ndarray, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _interleaved(runs: dict, repeats: int) -> dict:
  """Each runner once (compiles: jax's caches are cleared first, so that no program an earlier task compiled
  is reused), then `repeats` times in turn, so that all see the same load on a shared machine:
  name -> (first output, first call s, median of the warm calls s)."""
  jax.clear_caches()
  first = {name: _timed(fn) for name, fn in runs.items()}
  warm = {name: [] for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      warm[name].append(_timed(fn)[1])
  return {name: (first[name][0], first[name][1], statistics.median(warm[name])) for name in runs}


def _row(metric, ours, reference=None, unit="", target="", met=None, notes=""):
  return {"group": "sampler vs Tunix 0.1.7", "metric": metric, "ours": ours, "reference": reference,
          "reference_name": "Tunix 0.1.7 Sampler", "unit": unit, "target": target, "met": met,
          "notes": notes}


def check_copy(cfg, model, params, tokens: np.ndarray) -> str:
  """Raises unless our model gives the Tunix model's logits on tokens [B, T]; -> a note of the difference."""
  ref = tunix_logits(model, tokens)
  error = float(np.max(np.abs(np.asarray(models.logits(cfg, params, tokens)) - ref)))
  scale = float(np.max(np.abs(ref)))
  if not error <= 1e-4 * scale:
    raise AssertionError(f"the weight copy is wrong: logits differ from Tunix's by {error:.3g} (|logits| "
                         f"up to {scale:.3g})")
  return f"logits max |diff| {error:.1g} of |logits| <= {scale:.0f}"


def run(quick: bool) -> list[dict]:
  require_tunix()
  cfg = model_config(quick)
  batch, prompt, single_new = (4, 32, 16) if quick else (8, 256, 64)
  turns, observation, turn_new = (4, 16, 8) if quick else (4, 64, 32)
  repeats = 1 if quick else 3
  model = tunix_model(cfg, seed=0)
  params = params_from_tunix(cfg, model)
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
  observations = rng.integers(3, cfg.vocab_size, (turns - 1, batch, observation)).astype(np.int32)
  copy_note = check_copy(cfg, model, params, prompts[:2])

  # A Tunix Sampler jits its own prefill and decode for its one cache size: built once, outside the timing.
  sampler = tunix_sampler(cfg, model, prompt + single_new)
  single = _interleaved({"ours": lambda: ours_generate(cfg, params, prompts, single_new),
                         "tunix": lambda: tunix_generate(sampler, prompts, single_new)}, repeats=2 * repeats)
  lengths = episode_lengths(prompt, observation, turn_new, turns)
  samplers = [tunix_sampler(cfg, model, length + turn_new) for length in lengths]
  # A rollout sizes one cache for the whole episode before it starts: Tunix's sampler with that capacity
  # (the rollout's own, ours) attends over all of it from the first turn on.
  capacity = episode_rollout_config(prompt, observation, turn_new, turns).slots()
  roomy = [tunix_sampler(cfg, model, capacity)] * turns
  episodes = _interleaved({"ours": lambda: ours_episodes(cfg, params, prompts, observations, turn_new),
                           "tunix": lambda: tunix_episodes(samplers, prompts, observations, turn_new),
                           "tunix_roomy": lambda: tunix_episodes(roomy, prompts, observations, turn_new)},
                          repeats=repeats)
  same = agreeing_prefix(single["ours"][0], single["tunix"][0])
  episode_same = agreeing_prefix(episodes["ours"][0], episodes["tunix"][0])
  if same.min() < min(MATCH_MIN, single_new):
    raise AssertionError(f"greedy tokens differ from Tunix's within the first {MATCH_MIN} (rows agree on "
                         f"{same.tolist()} tokens): the two models are not the same")

  setup = (f"random Qwen2-shaped model ({cfg.num_params() / 1e6:.1f}M params: {cfg.num_layers} layers, "
           f"hidden {cfg.hidden_size}, {cfg.num_heads} heads / {cfg.num_kv_heads} KV heads of "
           f"{cfg.head_dim}, vocab {cfg.vocab_size}, tied), float32, the same weights in both ({copy_note}), "
           f"greedy, no EOS; "
           f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
  single_tps = {k: batch * single_new / v[2] for k, v in single.items()}
  episode_tps = {k: batch * turns * turn_new / v[2] for k, v in episodes.items()}
  compile_s = lambda res: {k: v[1] - v[2] for k, v in res.items()}
  return [
      _row("single turn, greedy", single_tps["ours"], single_tps["tunix"], "generated tok/s",
           f">= {SINGLE_TARGET}x reference", single_tps["ours"] >= SINGLE_TARGET * single_tps["tunix"],
           f"batch {batch}, prompt {prompt}, {single_new} new tokens; the whole call (prefill, decode, "
           f"tokens on the host), median of {2 * repeats} warm calls interleaved; Tunix's cache sized "
           f"exactly prompt + new tokens (its decode attends over every slot); {setup}"),
      _row(f"{turns}-turn episode batch, greedy", episode_tps["ours"], episode_tps["tunix"],
           "generated tok/s", f">= {EPISODE_TARGET}x reference",
           episode_tps["ours"] >= EPISODE_TARGET * episode_tps["tunix"],
           f"{batch} episodes: a prompt of {prompt}, then each turn {turn_new} new tokens and an observation "
           f"of {observation}; ours appends each turn's chunk to the episode's KV cache (as rollout.Roller "
           f"does), Tunix re-samples the whole conversation ({', '.join(map(str, lengths))} tokens) every "
           f"turn, with a sampler per turn whose prompt length and cache fit exactly; median of {repeats} "
           f"warm episode batches interleaved; {setup}"),
      _row(f"{turns}-turn episode batch, Tunix's cache sized for the episode", episode_tps["ours"],
           episode_tps["tunix_roomy"], "generated tok/s", f">= {EPISODE_TARGET}x reference",
           episode_tps["ours"] >= EPISODE_TARGET * episode_tps["tunix_roomy"],
           f"as above, but Tunix's one sampler has the cache a rollout sizes before the episode starts "
           f"({capacity} slots, the same capacity as ours: RolloutConfig.slots()); its decode attends over "
           f"every slot; ours allocates the slots in use (by buckets) and attends over them; tokens "
           f"identical to the exact-size run: "
           f"{bool(np.array_equal(episodes['tunix_roomy'][0], episodes['tunix'][0]))}"),
      _row("compile, single turn", compile_s(single)["ours"], compile_s(single)["tunix"], "s",
           notes="first call minus the median warm call; jax's caches cleared before the first calls"),
      _row(f"compile, {turns}-turn episode batch", compile_s(episodes)["ours"], compile_s(episodes)["tunix"],
           "s", notes=f"as above; Tunix compiles a prefill and a decode per prompt length ({turns} of each), "
                      f"ours a prefill per attention window and a decode per window"),
      _row("greedy tokens identical to Tunix's", int(same.min()), unit="tokens (fewest of a row)",
           target=f">= {min(MATCH_MIN, single_new)} of {single_new}",
           met=bool(same.min() >= min(MATCH_MIN, single_new)),
           notes=f"single turn: rows agree on {int(same.min())}-{int(same.max())} of {single_new} tokens; "
                 f"episodes: on {int(episode_same.min())}-{int(episode_same.max())} of {turns * turn_new}"),
  ]
