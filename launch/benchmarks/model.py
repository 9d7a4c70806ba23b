"""Model benchmarks: the jitted KV-cache sampler against transformers.generate on SmolLM2-135M, and a jitted
AdamW train step (MFU over a float32 matmul peak measured in the same run) against the same step in torch."""

from __future__ import annotations

import functools
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agentgen_jax import models, sampling
from agentgen_jax.models import config as models_config

SAMPLER_MODEL = "smollm2-135m-instruct"
DECODE_TARGET = 1.5   # issue 12: greedy decode >= 1.5x transformers.generate on the CPU


def _row(group, metric, ours, reference=None, reference_name="", unit="", target="", met=None, notes=""):
  return {"group": group, "metric": metric, "ours": ours, "reference": reference,
          "reference_name": reference_name, "unit": unit, "target": target, "met": met, "notes": notes}


def _best_time(fn, repeats: int) -> float:
  """The fastest of `repeats` calls (seconds): the machine is shared, so the minimum is the least noisy."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def _sustained_matmul(m: int, k: int, n: int, seconds: float):
  """(runner -> (None, seconds per [m, k] x [k, n] float32 matmul, averaged over back-to-back calls
  for `seconds`), its FLOPs). On a shared CPU a short timing can catch a moment with every core free,
  so the peak is averaged over as long as the train step it is compared with takes."""
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  return _sustained(lambda: mm(a, b).block_until_ready(), seconds), 2 * m * k * n


def _sustained(fn, seconds: float):
  """A runner calling fn back to back for `seconds`: -> (None, mean seconds per call)."""
  def run():
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      fn()
      count += 1
    return None, (time.perf_counter() - start) / count
  return run


# --------------------------------------------------------------------------------------------- sampler

def _sampler_ours(cfg, params, prompts: np.ndarray, new_tokens: int):
  """A callable running prefill + greedy decode once: -> (tokens [B, N], prefill s, decode s)."""
  batch, length = prompts.shape
  valid = np.ones_like(prompts, bool)
  slots = sampling.bucket(length + new_tokens)
  params = sampling.sampler_params(cfg, params)  # in the form a rollout runs them (cfg.sampler_layers)

  def generate():
    ctx = sampling.new_context(cfg, batch, slots)
    ctx.last_logits.block_until_ready()
    start = time.perf_counter()
    ctx = sampling.extend(cfg, params, ctx, prompts, valid)
    ctx.last_logits.block_until_ready()
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    _, out = sampling.decode(cfg, params, ctx, jax.random.key(0), np.ones(batch, bool),
                             max_new_tokens=new_tokens, temperature=0.0, top_p=1.0, eos_ids=())
    out.tokens.block_until_ready()
    return np.asarray(out.tokens), prefill_s, time.perf_counter() - start

  return generate


def _sampler_torch(folder: str, prompts: np.ndarray, new_tokens: int, device: str = "cpu",
                   dtype: str = "float32"):
  """The same for transformers: decode s = generate s - prefill s (generate = prefill + N - 1 steps)."""
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
  model = model.to(device).eval()
  ids = torch.tensor(prompts, dtype=torch.long, device=device)
  mask = torch.ones_like(ids)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  @torch.inference_mode()
  def generate():
    sync()
    start = time.perf_counter()
    model(input_ids=ids, attention_mask=mask, use_cache=True)
    sync()
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    sync()
    decode_s = time.perf_counter() - start - prefill_s
    return tokens[:, prompts.shape[1]:].cpu().numpy(), prefill_s, decode_s

  return generate


def _interleaved(runs: dict, repeats: int) -> dict:
  """Calls each runner once to warm up (compiles), then `repeats` times in turn, so that all see the
  same load on a shared machine; keeps the first outputs and the fastest time of each phase."""
  results = {name: fn() for name, fn in runs.items()}
  results = {name: [r[0], *r[1:]] for name, r in results.items()}
  for _ in range(repeats):
    for name, fn in runs.items():
      out = fn()
      results[name][1:] = [min(a, b) for a, b in zip(results[name][1:], out[1:])]
  return results


def _load_note() -> str:
  return f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared)"


def sampler_rows(quick: bool) -> list[dict]:
  cfg, params = models.load(SAMPLER_MODEL)
  # The layout a run uses here (RunConfig.layer_loop "auto"), and the stacked one beside it.
  cfg = models_config.apply_layer_loop(cfg, "auto", jax.default_backend())
  stacked = cfg.replace(sampler_layers="stacked")
  batch, length, new_tokens = 16, (32 if quick else 128), (16 if quick else 64)
  prompts = np.random.default_rng(0).integers(100, cfg.vocab_size, (batch, length)).astype(np.int32)
  with tempfile.TemporaryDirectory() as folder:
    models.save_hf(cfg, params, folder)
    torch_run = _sampler_torch(folder, prompts, new_tokens)
  runs = {"ours": _sampler_ours(cfg, params, prompts, new_tokens), "torch": torch_run}
  if cfg.sampler_layers != "stacked":
    runs["stacked"] = _sampler_ours(stacked, params, prompts, new_tokens)
  res = _interleaved(runs, repeats=1 if quick else 2)
  (ours_tokens, ours_prefill, ours_decode), (ref_tokens, ref_prefill, ref_decode) = res["ours"], res["torch"]
  # Greedy paths agree until a near-tie in float32 flips one argmax; count the agreeing prefix per row.
  same = [int(np.argmax(np.append(a != b, True))) for a, b in zip(ours_tokens, ref_tokens)]
  setup = (f"{SAMPLER_MODEL} float32, batch {batch}, prompt {length}, {new_tokens} new tokens, greedy, "
           f"best of interleaved runs; tokens identical to transformers for the first "
           f"{int(np.median(same))} (median row) of {new_tokens}; {_load_note()}")
  ref_name = "transformers.generate (torch, CPU)"
  prefill_tps, ref_prefill_tps = batch * length / ours_prefill, batch * length / ref_prefill
  decode_tps, ref_decode_tps = batch * new_tokens / ours_decode, batch * new_tokens / ref_decode
  met = decode_tps >= DECODE_TARGET * ref_decode_tps
  why = "" if met else (f"; target missed: {decode_tps:.0f} vs {ref_decode_tps:.0f} tok/s = "
                        f"{decode_tps / ref_decode_tps:.2f}x. "
                        + _decode_notes(cfg, params, batch, new_tokens, ours_decode, ref_decode,
                                       sampling.bucket(length + new_tokens)))
  rows = [
      _row("sampler", "prefill", prefill_tps, ref_prefill_tps, ref_name, "tok/s", notes=setup),
      _row("sampler", "decode", decode_tps, ref_decode_tps, ref_name, "tok/s",
           f">= {DECODE_TARGET}x reference", met,
           setup + why),
  ]
  if "stacked" in res:
    stacked_tokens, stacked_prefill, stacked_decode = res["stacked"]
    note = (f"the same runs with the layer params stacked (sampler_layers 'stacked', the layout before "
            f"per-layer params; RunConfig.layer_loop 'scan'), interleaved with the two above; tokens "
            f"{'identical' if np.array_equal(stacked_tokens, ours_tokens) else 'DIFFERENT'} to the split "
            f"layout's; {_load_note()}")
    rows += [_row("sampler", "prefill, per-layer params vs stacked", prefill_tps,
                  batch * length / stacked_prefill, "ours, stacked layer params", "tok/s", notes=note),
             _row("sampler", "decode, per-layer params vs stacked", decode_tps,
                  batch * new_tokens / stacked_decode, "ours, stacked layer params", "tok/s", notes=note)]
  return rows


def _cached_step_ms(cfg, params, batch: int, slots: int) -> float:
  """Milliseconds of one jitted single-token models.forward with a cache of `slots` slots (best of 3), params
  and cache in the sampler's form."""
  token, position = jnp.ones((batch, 1), jnp.int32), jnp.full((batch, 1), 8, jnp.int32)
  params = sampling.sampler_params(cfg, params)
  step = jax.jit(lambda p, c: models.forward(cfg, p, token, position, cache=c)[2], donate_argnums=1)
  cache = [models.init_cache(cfg, batch, slots, split=sampling.split_cache(cfg))]  # as a rollout's context

  def one():
    cache[0] = step(params, cache[0]).replace(index=jnp.int32(8))
    jax.block_until_ready(cache[0])

  one()
  return 1000 * _best_time(one, 3)


_STEP_KERNELS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _weight_matmul_runs(cfg, params, batch: int) -> dict:
  """{"ours", "torch"}: callables running a decode step's weight matmuls alone, [batch, D] activations
  through every layer's seven kernels and the head, nothing else (no attention, norms or cache): jax on
  per-layer buffers (the sampler's form here) and torch on the same float32 weights. Each returns the
  final [batch, V] logits."""
  import torch
  layers = [{k: np.asarray(params["layers"][k]["kernel"][i]) for k in _STEP_KERNELS}
            for i in range(cfg.num_layers)]
  head = np.asarray(params["embed"]["embedding"]) if cfg.tie_embeddings else np.asarray(params["lm_head"]).T
  x0 = np.random.default_rng(0).standard_normal((batch, cfg.hidden_size)).astype(np.float32)

  def chain(x, w, mm, silu, total):
    for layer in w:
      keys_values = total(mm(x, layer["k_proj"])) + total(mm(x, layer["v_proj"]))
      x = x + mm(mm(x, layer["q_proj"]), layer["o_proj"]) + 1e-9 * keys_values
      x = x + mm(silu(mm(x, layer["gate_proj"])) * mm(x, layer["up_proj"]), layer["down_proj"])
    return x

  jw = [{k: jnp.asarray(v) for k, v in layer.items()} for layer in layers]
  jhead, jx = jnp.asarray(head), jnp.asarray(x0)
  ours = jax.jit(lambda x, w, h: chain(x, w, jnp.matmul, jax.nn.silu, jnp.sum) @ h.T)
  tw = [{k: torch.from_numpy(np.array(v)) for k, v in layer.items()} for layer in layers]  # writable copies
  thead, tx = torch.from_numpy(np.array(head)), torch.from_numpy(x0)

  @torch.inference_mode()
  def theirs():
    return (chain(tx, tw, torch.matmul, torch.nn.functional.silu, torch.sum) @ thead.T).numpy()

  return {"ours": lambda: np.asarray(ours(jx, jw, jhead)), "torch": theirs}


def _weight_matmuls_ms(cfg, params, batch: int, repeats: int = 5) -> tuple[float, float]:
  """(ours, torch) milliseconds of _weight_matmul_runs, interleaved (_interleaved), best of `repeats`: the
  floor under either framework's decode step on this machine."""
  def timed(fn):
    def run():
      start = time.perf_counter()
      fn()
      return None, time.perf_counter() - start
    return run
  res = _interleaved({name: timed(fn) for name, fn in _weight_matmul_runs(cfg, params, batch).items()},
                     repeats)
  return 1000 * res["ours"][1], 1000 * res["torch"][1]


def _decode_notes(cfg, params, batch, new_tokens, ours_s, ref_s, slots) -> str:
  """Per-step times, and what bounds them on a CPU: every step streams all the weights through a matmul."""
  weight_mb = cfg.num_params() * 4 / 2 ** 20
  ours_ms, ref_ms = 1000 * ours_s / new_tokens, 1000 * ref_s / new_tokens
  floor_ours, floor_torch = _weight_matmuls_ms(cfg, params, batch)
  floor = (f" The step's weight matmuls alone (every kernel and the head, no attention or cache) take "
           f"{floor_ours:.0f} ms in jax and {floor_torch:.0f} ms in torch on the same weights in this run: "
           f"{DECODE_TARGET}x transformers' whole step ({ref_ms / DECODE_TARGET:.0f} ms) is "
           f"{'below' if ref_ms / DECODE_TARGET < floor_ours else 'above'} our matmul floor.")
  slower = ""
  if ours_ms > ref_ms:
    small, large = _cached_step_ms(cfg, params, batch, 16), _cached_step_ms(cfg, params, batch, slots)
    cache_mb = 2 * cfg.num_layers * batch * slots * cfg.num_kv_heads * cfg.head_dim * 4 / 2 ** 20
    slower = (f" Our step is {ours_ms - ref_ms:.0f} ms slower; the difference lies outside the weight "
              f"matmuls, in attention over the cache: in this run one cached models.forward of one token "
              f"takes {small:.0f} ms with 16 cache slots and {large:.0f} ms with {slots} ({cache_mb:.0f} MB "
              f"of cache, in the sampler's form: "
              f"{'per-layer buffers' if sampling.split_cache(cfg) else 'stacked [L, B, Hkv, S, Dh]'}).")
  return (f"Per decode step (batch {batch}): ours {ours_ms:.0f} ms, transformers {ref_ms:.0f} ms. A step "
          f"multiplies [{batch}, {cfg.hidden_size}] activations with all {weight_mb:.0f} MB of float32 "
          f"weights: on a CPU both frameworks spend most of it in those matmuls, and what jit removes "
          f"(per-step Python and dispatch) is a few ms.{floor}{slower}")


# ------------------------------------------------------------------------------------------ train step

def _cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy: logits [B, T, V] f32, targets [B, T] int32."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.mean(logz - picked)


def make_train_step(cfg, optimizer):
  """A jitted update (params and optimizer state donated): tokens [B, T + 1] -> new state and loss."""
  def loss_fn(params, tokens):
    return _cross_entropy(models.logits(cfg, params, tokens[:, :-1]), tokens[:, 1:])

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _train_ours(cfg, tokens: np.ndarray):
  """A runner doing one train step: -> (None, seconds); the state carries over between calls."""
  optimizer = optax.adamw(3e-4, weight_decay=0.01)
  params = models.init_params(cfg, 0)
  state = [params, optimizer.init(params)]
  step = make_train_step(cfg, optimizer)
  tokens = jnp.asarray(tokens)

  def run():
    start = time.perf_counter()
    state[0], state[1], loss = step(state[0], state[1], tokens)
    loss.block_until_ready()
    return None, time.perf_counter() - start

  return run


def _loss_parts_ours(cfg, tokens: np.ndarray, seconds: float):
  """Runners timing the loss forward alone and forward + backward (no optimizer), each averaged over
  `seconds`: they split the step's time into forward, backward and AdamW update."""
  params = models.init_params(cfg, 0)
  loss_fn = lambda p, t: _cross_entropy(models.logits(cfg, p, t[:, :-1]), t[:, 1:])
  tokens = jnp.asarray(tokens)
  runners = {}
  for name, fn in (("forward", jax.jit(loss_fn)), ("grad", jax.jit(jax.value_and_grad(loss_fn)))):
    jax.block_until_ready(fn(params, tokens))
    runners[name] = _sustained(lambda fn=fn: jax.block_until_ready(fn(params, tokens)), seconds)
  return runners


def _train_torch(cfg, tokens: np.ndarray, device: str = "cpu"):
  """The same step in torch: float32 weights and AdamW, the forward under bf16 autocast when cfg computes
  in bfloat16 (as ours: float32 master weights, bf16 matmuls)."""
  import torch
  import transformers
  with tempfile.TemporaryDirectory() as folder:
    models.save_hf(cfg, models.init_params(cfg, 0), folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
  tokens = torch.tensor(tokens, dtype=torch.long, device=device)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  cuda = device.startswith("cuda")
  autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

  def run():
    if cuda:
      torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      logits = model(input_ids=inputs).logits
    logits = logits.float().reshape(-1, logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(logits, targets.reshape(-1))
    loss.backward()
    optimizer.step()
    if cuda:
      torch.cuda.synchronize()
    return None, time.perf_counter() - start

  return run


def train_rows(quick: bool) -> list[dict]:
  # The layer loop a training run of this preset uses (layer_loop "auto": the learner's forwards unrolled).
  cfg = models.preset("small", unroll_layers=models_config.unroll_layers("auto", 5))
  batch, length = (8, 128) if quick else (16, 256)
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, length + 1)).astype(np.int32)
  ours = _train_ours(cfg, tokens)
  ours()                   # compiles
  step_s = ours()[1]
  peak_run, peak_flops = _sustained_matmul(2048, 2048, 2048, step_s)
  layer_run, layer_flops = _sustained_matmul(batch * length, cfg.hidden_size, cfg.intermediate_size, step_s)
  # The peak matmul and the steps are timed in turn, so that they all see the same load.
  runners = {"peak": peak_run, "layer": layer_run, "ours": ours, **_loss_parts_ours(cfg, tokens, step_s),
             "torch": _train_torch(cfg, tokens)}
  res = _interleaved(runners, repeats=2 if quick else 3)
  peak, layer = peak_flops / res["peak"][1], layer_flops / res["layer"][1]
  split = {k: res[k][1] for k in ("forward", "grad", "ours")}
  ours_s, torch_s = res["ours"][1], res["torch"][1]
  n = cfg.num_params()
  tps, ref_tps = batch * length / ours_s, batch * length / torch_s
  mfu, ref_mfu = 6 * n * tps / peak, 6 * n * ref_tps / peak
  setup = (f"preset 'small' ({n / 1e6:.1f}M params, layers unrolled: layer_loop auto), batch {batch} x "
           f"{length} tokens, AdamW, float32, best of interleaved steps; float32 matmul peak (2048^3, "
           f"sustained for one step's time) {peak / 1e9:.0f} GFLOP/s measured in this run; MFU = 6 * params "
           f"* tok/s / peak; {_load_note()}")
  met = mfu >= 0.40
  why = "" if met else f"; target missed: {_mfu_notes(cfg, batch, length, mfu, layer / peak, split, ref_mfu)}"
  ref_name = "same step in torch (transformers Llama, torch.optim.AdamW)"
  return [
      _row("train step", "throughput", tps, ref_tps, ref_name, "tok/s", notes=setup),
      _row("train step", "MFU", mfu, ref_mfu, ref_name, "fraction of peak", ">= 0.40", met, setup + why),
  ]


def _mfu_notes(cfg, batch, length, mfu, layer_fraction, split, ref_mfu) -> str:
  """Where the step's time goes, in numbers measured in the same run."""
  step, forward = split["ours"], split["forward"]
  # Timed separately, so noise can make the update's share slightly negative: it is a few ms at most.
  backward, update = split["grad"] - forward, max(step - split["grad"], 0.0)
  return (f"MFU {mfu:.2f} (torch {ref_mfu:.2f} on the same peak). Step {1000 * step:.0f} ms = "
          f"forward {1000 * forward:.0f} + backward {1000 * backward:.0f} + AdamW {1000 * update:.0f}: the "
          f"forward alone runs at {mfu * step / (3 * forward):.2f} "
          f"MFU and the largest layer matmul ([{batch * length}, {cfg.hidden_size}] x "
          f"[{cfg.hidden_size}, {cfg.intermediate_size}]) at {layer_fraction:.0%} of peak, but the backward "
          f"(2x the forward's FLOPs) takes {backward / forward:.1f}x its time. Traced with the JAX profiler "
          f"(2026-11-30): the weight gradients' transposed copies of the logit and MLP gradients took most "
          f"of the gap (5.0x before models.linear wrote dW = x^T g out), and with the layers unrolled "
          f"(layer_loop auto) no stacks of residuals are filled and sliced; what remains is attention's "
          f"backward at head_dim 32 (batched [T, 32] x [32, T] matmuls far below the matmul rate) and the "
          f"elementwise softmax and SwiGLU gradients.")


def run(quick: bool) -> list[dict]:
  return sampler_rows(quick) + train_rows(quick)
