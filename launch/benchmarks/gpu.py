"""GPU benchmarks, run where jax's default backend is a GPU (on a CPU only --quick, as a smoke run):

- the two ceilings, measured in the same run: HBM bandwidth (a large copy, bytes read + written) and the
  bf16 matmul rate (8192^3);
- SmolLM2-135M greedy decode at batch 64 (bf16) against the HBM floor (weights + live KV cache read per
  step / the measured bandwidth; target within 2x) and against transformers.generate on the same GPU;
- the bf16 train step (float32 master weights, AdamW) of SmolLM2-135M: MFU over the measured matmul rate,
  against the same step in torch (bf16 autocast);
- correctness on the GPU against torch on the same weights: float32 logits and greedy tokens, and the gap
  between the sampler's and the learner's log-probs of sampled tokens (bf16 and float32).

The weights are random, of the SmolLM2-135M shape (models.preset("smollm2-135m"), equal to the embedded
model's config): speed does not depend on their values, and the embedded GGUF (98 MB) is more than a lent
GPU machine takes with the working tree.

  python -m launch.benchmark --suites=gpu
"""

from __future__ import annotations

import statistics
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax import models, sampling
from launch.benchmarks import model as model_bench

MODEL = "smollm2-135m"
_row = model_bench._row
DECODE_TARGET = 2.0   # decode step within 2x of the HBM floor


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
  """Median seconds of fn() (which blocks until its device work is done) after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ------------------------------------------------------------------------------------------- ceilings

def bandwidth(mib: int) -> float:
  """Bytes per second of a jitted elementwise pass over `mib` MiB of float32 (bytes read + written)."""
  x = jax.random.normal(jax.random.key(0), (mib * 2 ** 20 // 4,), jnp.float32)
  scale = jax.jit(lambda x: x * 1.0001)
  return 2 * x.nbytes / _median_time(lambda: scale(x).block_until_ready(), repeats=10)


def matmul_rate(n: int, dtype) -> float:
  """FLOP/s of a jitted [n, n] x [n, n] matmul on random data (output in `dtype`, f32 accumulation)."""
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  mm = jax.jit(jnp.matmul)
  return 2 * n ** 3 / _median_time(lambda: mm(a, b).block_until_ready(), repeats=10)


# --------------------------------------------------------------------------------------------- decode

def kv_bytes_per_token(cfg, batch: int) -> int:
  """Bytes of keys and values that one cached token adds over all layers and rows (compute dtype)."""
  return 2 * cfg.num_layers * batch * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def decode_floor_s(cfg, batch: int, prompt: int, new_tokens: int, bytes_per_s: float) -> float:
  """The HBM floor of one decode step: every weight read once (the tied embedding too, as the head) plus
  the keys and values in the cache at that step, averaged over the steps, at the measured bandwidth."""
  weights = cfg.num_params() * jnp.dtype(cfg.dtype).itemsize
  live = prompt + (new_tokens + 1) / 2       # tokens in the cache, mean over the steps
  return (weights + live * kv_bytes_per_token(cfg, batch)) / bytes_per_s


def decode_rows(cfg, params, folder: str, bytes_per_s: float, quick: bool, device: str) -> list[dict]:
  group = f"gpu: {MODEL} decode, bf16"
  batch, length, new_tokens = (4, 16, 8) if quick else (64, 128, 64)
  prompts = np.random.default_rng(0).integers(100, cfg.vocab_size, (batch, length)).astype(np.int32)
  runs = {"ours": model_bench._sampler_ours(cfg, params, prompts, new_tokens),
          "torch": model_bench._sampler_torch(folder, prompts, new_tokens, device=device, dtype="bfloat16")}
  res = model_bench._interleaved(runs, repeats=2 if quick else 5)
  (_, ours_prefill, ours_decode), (_, ref_prefill, ref_decode) = res["ours"], res["torch"]
  step_s, ref_step_s = ours_decode / new_tokens, ref_decode / new_tokens
  floor_s = decode_floor_s(cfg, batch, length, new_tokens, bytes_per_s)
  window = sampling.live_window(length + new_tokens, sampling.bucket(length + new_tokens))
  step_alone_ms = model_bench._cached_step_ms(cfg, params, batch, window)
  # The same at 1/8 of the batch: a step that costs as much there is bound by launches, not by bytes.
  step_small_ms = model_bench._cached_step_ms(cfg, params, max(batch // 8, 1), window)
  weights_mb = cfg.num_params() * jnp.dtype(cfg.dtype).itemsize / 2 ** 20
  setup = (f"random weights of the {MODEL} shape, bf16 params and compute, batch {batch}, prompt {length}, "
           f"{new_tokens} new tokens, greedy, best of interleaved runs")
  floor_note = (f"{setup}; floor = ({weights_mb:.3g} MB of weights + {length + (new_tokens + 1) / 2:.0f} "
                f"live tokens x {kv_bytes_per_token(cfg, batch) / 2 ** 20:.3g} MB of KV) / "
                f"{bytes_per_s / 1e12:.3g} TB/s measured in this run = {1e3 * floor_s:.3g} ms; our attention "
                f"reads a {window}-slot window; one jitted cached forward of one token (outside the decode "
                f"loop) takes {step_alone_ms:.3g} ms ({step_small_ms:.3g} ms at batch {max(batch // 8, 1)}); "
                f"transformers.generate takes {1e3 * ref_step_s:.3g} ms a step")
  ref_name = f"transformers.generate (torch, {device}, bf16)"
  met = step_s <= DECODE_TARGET * floor_s
  return [
      _row(group, "decode step", 1e3 * step_s, 1e3 * floor_s, "HBM floor", "ms", f"<= {DECODE_TARGET}x floor",
           met, floor_note),
      _row(group, "decode", batch * new_tokens / ours_decode, batch * new_tokens / ref_decode, ref_name,
           "tok/s", notes=setup),
      _row(group, "prefill", batch * length / ours_prefill, batch * length / ref_prefill, ref_name, "tok/s",
           notes=setup),
  ]


# ----------------------------------------------------------------------------------------- train step

def train_rows(cfg, peak: float, quick: bool, device: str) -> list[dict]:
  group = f"gpu: {MODEL} train step, bf16"
  batch, length = (2, 64) if quick else (16, 1024)
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, length + 1)).astype(np.int32)
  res = model_bench._interleaved({"ours": model_bench._train_ours(cfg, tokens),
                                  "torch": model_bench._train_torch(cfg, tokens, device=device)},
                                 repeats=3 if quick else 10)
  n = cfg.num_params()
  tps, ref_tps = batch * length / res["ours"][1], batch * length / res["torch"][1]
  mfu, ref_mfu = 6 * n * tps / peak, 6 * n * ref_tps / peak
  # Attention's own matmuls (QK^T and PV, causal: half of T^2) are not in 6N: their share of the FLOPs.
  attention = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length
  setup = (f"random weights of the {MODEL} shape ({n / 1e6:.1f}M params), float32 master weights and "
           f"AdamW, bf16 compute, batch {batch} x {length} tokens, cross-entropy on every token, best of "
           f"interleaved steps; bf16 matmul rate {peak / 1e12:.3g} TFLOP/s measured in this run (8192^3); "
           f"MFU = 6 * params * tok/s / that rate (attention's matmuls add {attention / (6 * n):.0%} more "
           f"FLOPs, not counted)")
  ref_name = f"same step in torch ({device}, bf16 autocast, transformers Llama, torch.optim.AdamW)"
  return [
      _row(group, "throughput", tps, ref_tps, ref_name, "tok/s", notes=setup),
      _row(group, "MFU", mfu, ref_mfu, ref_name, "fraction of peak", notes=setup),
  ]


# ---------------------------------------------------------------------------------------- correctness

def _torch_logits(folder: str, tokens: np.ndarray, device: str, dtype: str) -> np.ndarray:
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
  model = model.to(device).eval()
  with torch.inference_mode():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long, device=device)).logits
  return out.float().cpu().numpy()


def sampler_learner_gap(cfg, params, prompts: np.ndarray, new_tokens: int) -> float:
  """Mean |sampler log-prob - learner log-prob| of tokens sampled at temperature 1: the sampler's come from
  the KV-cache decode, the learner's from one full forward over prompt + sampled tokens (as the PPO
  ratio's denominator and numerator)."""
  batch, length = prompts.shape
  ctx = sampling.new_context(cfg, batch, sampling.bucket(length + new_tokens))
  ctx = sampling.extend(cfg, params, ctx, prompts, np.ones_like(prompts, bool))
  _, out = sampling.decode(cfg, params, ctx, jax.random.key(3), np.ones(batch, bool),
                           max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, eos_ids=())
  sampled = np.asarray(out.tokens)
  full = np.concatenate([prompts, sampled], axis=1)
  logp = jax.nn.log_softmax(models.logits(cfg, params, full)[:, length - 1:-1], axis=-1)
  learner = np.take_along_axis(np.asarray(logp), sampled[..., None], axis=-1)[..., 0]
  return float(np.mean(np.abs(np.asarray(out.logprobs) - learner)))


def correctness_rows(cfg32, params, folder: str, quick: bool, device: str) -> list[dict]:
  group = f"gpu: {MODEL} correctness against torch"
  batch, length, new_tokens = (2, 16, 8) if quick else (16, 128, 32)
  rng = np.random.default_rng(1)
  prompts = rng.integers(100, cfg32.vocab_size, (batch, length)).astype(np.int32)
  rows = []
  with jax.default_matmul_precision("highest"):   # true float32 matmuls (XLA's GPU default is TF32)
    ours = np.asarray(models.logits(cfg32, params, prompts))
    greedy = model_bench._sampler_ours(cfg32, params, prompts, new_tokens)()[0]
    gap32 = sampler_learner_gap(cfg32, params, prompts, new_tokens)
  ref = _torch_logits(folder, prompts, device, "float32")
  err = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
  rows.append(_row(group, "float32 logits, relative error", err, unit="norm(ours - torch) / norm(torch)",
                   target="<= 1e-4", met=err <= 1e-4,
                   notes=f"batch {batch} x {length} tokens; matmul precision 'highest' (torch: TF32 off)"))
  ref_tokens = model_bench._sampler_torch(folder, prompts, new_tokens, device=device)()[0]
  same = [int(np.argmax(np.append(a != b, True))) for a, b in zip(greedy, ref_tokens)]
  rows.append(_row(group, "float32 greedy tokens identical to transformers", float(min(same)),
                   unit="tokens (worst row)", target=f">= {new_tokens}", met=min(same) >= new_tokens,
                   notes=f"batch {batch}, prompt {length}, {new_tokens} new tokens"))
  cfg16 = cfg32.replace(dtype="bfloat16")
  gap_default = sampler_learner_gap(cfg32, params, prompts, new_tokens)
  gap16 = sampler_learner_gap(cfg16, params, prompts, new_tokens)
  note = (f"mean abs(sampler - learner) log-prob of {batch} x {new_tokens} tokens sampled at temperature 1 "
          f"(KV-cache decode vs one full forward); float32 params")
  rows += [_row(group, "sampler/learner log-prob gap, float32 ('highest')", gap32, unit="nats",
                target="< 1e-3", met=gap32 < 1e-3, notes=note),
           _row(group, "sampler/learner log-prob gap, float32 (XLA default precision)", gap_default,
                unit="nats", notes=note + "; XLA's default GPU matmul precision (TF32 on Hopper)"),
           _row(group, "sampler/learner log-prob gap, bf16 compute", gap16, unit="nats",
                notes=note + "; bf16 activations and matmuls, float32 accumulation")]
  return rows


def run(quick: bool) -> list[dict]:
  backend = jax.default_backend()
  if backend != "gpu" and not quick:
    raise SystemExit(f"the gpu suite needs a GPU (jax's default backend is {backend!r}); on a CPU only "
                     f"--quick runs it, as a smoke run")
  device = "cuda" if backend == "gpu" else "cpu"
  cfg32 = models.preset(MODEL)
  if quick:  # the same code paths on a model a CPU runs in seconds
    cfg32 = cfg32.replace(num_layers=2, vocab_size=4096, hidden_size=128, intermediate_size=256,
                          num_heads=4, num_kv_heads=2, head_dim=32)
  params = models.init_params(cfg32, 0)
  bytes_per_s = bandwidth(64 if quick else 4096)
  peak = matmul_rate(512 if quick else 8192, jnp.float32 if quick else jnp.bfloat16)
  ceilings = [
      _row("gpu: ceilings", "HBM bandwidth", bytes_per_s / 1e9, unit="GB/s",
           notes=f"a jitted x * c over {64 if quick else 4096} MiB of float32, bytes read + written, "
                 f"median of 10"),
      _row("gpu: ceilings", "bf16 matmul", peak / 1e12, unit="TFLOP/s",
           notes=f"jitted {512 if quick else 8192}^3 matmul on random data, median of 10"),
  ]
  rows = list(ceilings)
  cfg16 = cfg32.replace(dtype="bfloat16", param_dtype="bfloat16")
  params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  with tempfile.TemporaryDirectory() as folder:
    models.save_hf(cfg32, params, folder)
    # A lent GPU machine is used once, briefly: one part failing must not lose the others' rows.
    parts = {"correctness": lambda: correctness_rows(cfg32, params, folder, quick, device),
             "decode": lambda: decode_rows(cfg16, params16, folder, bytes_per_s, quick, device),
             "train step": lambda: train_rows(cfg32.replace(dtype="bfloat16"), peak, quick, device)}
    for name, part in parts.items():
      try:
        rows += part()
      except Exception as e:  # noqa: BLE001 - reported as a row, with the error, and the run goes on
        traceback.print_exc()
        rows.append(_row(f"gpu: {MODEL} {name}", "failed", None, notes=f"{type(e).__name__}: {e}"[:500]))
  return rows
