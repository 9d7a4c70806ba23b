"""Memory plan of a launch config: compiles its RL update, SFT step and rollout prefill / decode ahead of
time on abstract arrays (no weight is allocated) and prints what one device holds, from the compiled
executables. Exits non-zero, saying what to change, when that does not fit --hbm_gb.

  python -m launch.plan --config=launch/configs/paper_sequential.py --config.model=qwen2.5-7b \\
      --config.mesh=fsdp:8 --config.remat=full --config.learner.micro_batch_size=8 --config.pool_size=32 \
      --hbm_gb=80 --devices=8

--devices=N simulates N CPU devices (sets XLA_FLAGS before jax is imported); without it the plan is for
the devices this process sees. --config.model takes the shape-only presets (qwen2.5-0.5b/1.5b/3b/7b,
llama-3.1-8b), an HF folder (only config.json is read), or anything models.load takes. Temporaries are
those of the backend that compiles (XLA:CPU when simulated): a guide for GPU/TPU, not a measurement.
The update is planned in the free-text (generate) layout whatever rollout.mode says. With --config.lora.rank
the plan is a LoRA run's: the frozen base in the compute dtype (also the reference), float32 adapters and
their moments, the once-per-iteration merge as a phase, and rollout on the merged weights.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "a launch/configs/*.py file", lock_config=True)
_HBM_GB = flags.DEFINE_float("hbm_gb", None, "memory per device, GiB (H100: 80, TPU v5e: 16, TPU v4: 32)")
_JSON = flags.DEFINE_string("json", None, "also write the plan to this JSON file")
_DEVICES = flags.DEFINE_integer("devices", 0, "simulate this many CPU devices (0: the real ones)")
_PREFILL = flags.DEFINE_integer("prefill_tokens", 0, "tokens per row of the planned prefill call; 0: the "
                                "config's rollout.prefill_piece (what one Roller prefill call takes), or "
                                "1024 (a turn's whole prompt) where the config sets it to 0")
flags.mark_flags_as_required(["config", "hbm_gb"])

GIB = 2 ** 30
PARTS = ("params", "optimizer", "reference", "critic", "kv_cache", "activations_peak", "total")


def simulate_devices(argv: list[str]) -> None:
  """--devices=N: N host-platform (CPU) devices. Must run before jax is imported: XLA reads the flag once."""
  n = next((a.split("=", 1)[1] for a in argv if a.startswith("--devices=")), "0")
  if n.isdigit() and int(n) > 0:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={int(n)}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


# ---------------------------------------------------------------------------------------- reading the config

def model_config(c):
  """The model's shapes, compute dtype (bf16 unless the config says otherwise: plans are for accelerators),
  param dtype, remat policy and layer loop; no weights are read."""
  from agentgen_jax import models
  from agentgen_jax.models import config as models_config
  cfg = models.load_config(c.model, dtype=c.get("dtype") or "bfloat16",
                           param_dtype=c.get("param_dtype") or None)
  unroll = models_config.unroll_layers(c.get("layer_loop", "auto"), cfg.num_layers)
  return cfg.replace(remat=c.get("remat", "none"), unroll_layers=unroll)


def lora_config(c):
  """The LoraConfig of c.lora (rank 0: full fine-tuning)."""
  from agentgen_jax.models.lora import LoraConfig
  return LoraConfig(**c.lora.to_dict()) if "lora" in c else LoraConfig()


def learner_config(c, **overrides):
  """LearnerConfig from c.learner, keeping only the fields LearnerConfig has (the schema is moving)."""
  from agentgen_jax.rl import learner
  known = {f.name for f in dataclasses.fields(learner.LearnerConfig)}
  fields = {k: v for k, v in c.learner.to_dict().items() if k in known}
  return learner.LearnerConfig(**{**fields, **overrides})


# ------------------------------------------------------------------------------------------ compiling

def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _rows(mesh, rows: int, length: int, fields: dict):
  """Abstract [rows, length] batch fields, rows over the batch axes."""
  import jax

  from agentgen_jax import parallel
  sharding = parallel.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((rows, length), dt, sharding=sharding) for k, dt in fields.items()}


def _memory(compiled, resident_elsewhere: int) -> dict:
  """Per-device bytes of one executable: its arguments, temporaries and fresh outputs, plus what stays
  resident on the device without being an argument (e.g. the optimizer state during a rollout)."""
  m = compiled.memory_analysis()
  fresh_out = max(0, m.output_size_in_bytes - m.alias_size_in_bytes)
  total = resident_elsewhere + m.argument_size_in_bytes + m.temp_size_in_bytes + fresh_out
  return {"arguments": int(m.argument_size_in_bytes), "temp": int(m.temp_size_in_bytes),
          "fresh_outputs": int(fresh_out), "total": int(total)}


def _state(cfg, lcfg, lora_cfg, mesh):
  """The abstract TrainState (as learner.init_state builds it) with its FSDP shardings. Under LoRA, as
  agent.from_config builds it: the base cast to the compute dtype (TrainState.frozen), fresh float32
  adapters (TrainState.params) with their Adam moments, no reference copy."""
  import jax

  from agentgen_jax import models, parallel
  from agentgen_jax.models import lora
  from agentgen_jax.rl import learner
  params = jax.eval_shape(lambda: models.init_params(cfg, 0))
  if lora_cfg.enabled:
    params = jax.eval_shape(lambda p: lora.attach(jax.tree.map(lambda x: x.astype(cfg.dtype), p),
                                                  lora.init(cfg, lora_cfg, 0), lora_cfg), params)
  state = jax.eval_shape(lambda p: learner.init_state(cfg, p, lcfg, jax.random.PRNGKey(0)), params)
  shardings = parallel.state_shardings(mesh, state)
  return _abstract(state, shardings), shardings


def _state_parts(state, shardings) -> dict:
  """Per-device bytes of the state's parts. Under LoRA "params" is the frozen base plus the adapters and
  "optimizer" the adapters' moments; the base doubles as the reference (0 here)."""
  from agentgen_jax import parallel
  size = lambda name: parallel.per_device_bytes(getattr(state, name), getattr(shardings, name))
  return {"params": size("params") + size("frozen"), "optimizer": size("opt_state"),
          "reference": size("ref_params"), "critic": size("critic_params") + size("critic_opt_state")}


def state_bytes(c) -> dict:
  """Per-device bytes of the training state of config `c` on its mesh ({"params", "optimizer",
  "reference", "critic"}), from shapes alone: nothing is compiled."""
  from agentgen_jax import parallel
  mesh = parallel.mesh_from_spec(c.get("mesh", "data:-1"))
  return _state_parts(*_state(model_config(c), learner_config(c), lora_config(c), mesh))


def _jit_step(fn, mesh, state):
  """The program training runs for `fn` (learner.jit_step's), lowered on the abstract state and batch."""
  from agentgen_jax.rl import learner
  jitted = learner.jit_state_step(fn, mesh, state)
  return lambda batch: jitted.lower(state.replace(frozen=None), state.frozen, batch).compile()


def _text_mode() -> str:
  """The learner's name for free-text (token-level) updates: "generate" (older code: "token")."""
  from agentgen_jax.rl import policy
  return "generate" if "generate" in policy.MODES else "token"


def plan_update(cfg, lcfg, lora_cfg, mesh, seq_len: int):
  """The RL update (free-text mode) on one minibatch of lcfg.mini_batch_size rows x seq_len tokens."""
  import jax.numpy as jnp

  from agentgen_jax import parallel
  from agentgen_jax.rl import learner
  mode = _text_mode()
  parallel.check_rows(lcfg.micro_batch_size, mesh, "learner.micro_batch_size")
  state, shardings = _state(cfg, lcfg, lora_cfg, mesh)
  dtypes = {"tokens": jnp.int32, "positions": jnp.int32, "valid": jnp.bool_}
  batch = _rows(mesh, lcfg.mini_batch_size, seq_len,
                {k: dtypes.get(k, jnp.float32) for k in learner.batch_keys(mode, lcfg)})
  compiled = _jit_step(functools.partial(learner.update_step, cfg, lcfg, mode, mesh), mesh, state)(batch)
  return state, shardings, _memory(compiled, 0)


def plan_sft(cfg, c, lora_cfg, mesh, seq_len: int):
  """The SFT step on one batch of sft.batch_size demos x seq_len tokens (its own state, no reference)."""
  import jax.numpy as jnp

  from agentgen_jax import parallel
  from agentgen_jax.rl import sft
  micro = c.sft.get("micro_batch_size") or c.sft.batch_size
  lcfg = learner_config(c, lr=c.sft.lr, kl_coef=0.0, critic="none", mini_batch_size=c.sft.batch_size,
                        micro_batch_size=micro)
  parallel.check_rows(micro, mesh, "sft.micro_batch_size (or sft.batch_size)")
  state, _ = _state(cfg, lcfg, lora_cfg, mesh)
  batch = _rows(mesh, c.sft.batch_size, seq_len, {"tokens": jnp.int32, "positions": jnp.int32,
                                                  "valid": jnp.bool_, "loss_mask": jnp.float32})
  return _memory(_jit_step(functools.partial(sft.sft_step, cfg, lcfg, mesh), mesh, state)(batch), 0)


def rollout_params(state, shardings, mesh):
  """The abstract params a rollout decodes on, their shardings, and the per-device bytes they share with
  the state. Full fine-tuning: the policy params themselves. LoRA: the weights merged once per iteration
  (rl_loop: lora.merged), new target kernels in the compute dtype, every other leaf the frozen base's."""
  import jax

  from agentgen_jax import parallel
  from agentgen_jax.models import lora
  from agentgen_jax.rl import learner
  if state.frozen is None:
    return state.params, shardings.params, parallel.per_device_bytes(state.params, shardings.params)
  merged = jax.eval_shape(lambda s: lora.merge_attached(learner.policy_params(s)), state)
  merged_sh = parallel.param_shardings(mesh, merged)
  base = lora.detach(state.frozen)
  kernels = lora.target_kernels(state.frozen)
  shared = (parallel.per_device_bytes(base, parallel.param_shardings(mesh, base)) -
            parallel.per_device_bytes(kernels, parallel.param_shardings(mesh, kernels)))
  return _abstract(merged, merged_sh), merged_sh, shared


def plan_merge(state, resident: int) -> dict:
  """LoRA's once-per-iteration merge (lora.merged, jitted): the base's target kernels and the adapters in
  (the rest of the `resident` state bytes stays where it is), merged kernels out, placed as the base's."""
  import jax

  from agentgen_jax import parallel
  from agentgen_jax.models import lora
  # The state's leaves carry their shardings (the adapters' too: the FSDP rule shards them in the state).
  kernels = lora.target_kernels(state.frozen)
  adapters = lora.join(state.frozen, state.params)["lora"]
  inputs = parallel.per_device_bytes((kernels, adapters), jax.tree.map(lambda x: x.sharding,
                                                                        (kernels, adapters)))
  return _memory(lora.jitted_merge(kernels).lower(kernels, adapters).compile(), resident - inputs)


def plan_rollout(cfg, c, mesh, params, params_sh, resident_elsewhere: int, prefill_tokens: int):
  """Prefill (extend) of a prefill_tokens piece and a decode of rollout.max_new_tokens on `params`, for
  pool_size rows with the Roller's KV cache capacity. Returns (kv cache bytes per device, {phase: memory})."""
  import jax
  import jax.numpy as jnp

  from agentgen_jax import models, parallel, sampling
  rows = c.pool_size
  parallel.check_rows(rows, mesh, "pool_size")
  # As rollout.Roller sizes its context: every turn's bucketed chunk plus the decoded tokens.
  slots = (c.rollout.get("cache_slots") or
           sampling.bucket(2 * c.rollout.max_episode_tokens + 4 * c.rollout.max_new_tokens))
  # Where attention runs over a live window of the cache, plan the last turn's: the whole capacity.
  window = {"window": slots} if "window" in inspect.signature(sampling.extend_step).parameters else {}
  ctx = jax.eval_shape(lambda: sampling.Context(
      cache=models.init_cache(cfg, rows, slots), next_pos=jnp.zeros((rows,), jnp.int32),
      last_logits=jnp.zeros((rows, cfg.vocab_size), jnp.float32)))
  ctx_sh = parallel.cache_shardings(mesh, ctx)
  ctx = _abstract(ctx, ctx_sh)
  kv = parallel.per_device_bytes(ctx.cache, ctx_sh.cache)
  rows_sh, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  chunk = _rows(mesh, rows, prefill_tokens, {"tokens": jnp.int32, "valid": jnp.bool_})
  prefill = jax.jit(functools.partial(sampling.extend_step, cfg, **window), out_shardings=ctx_sh,
                    in_shardings=(params_sh, ctx_sh, rows_sh, rows_sh), donate_argnums=1)
  out = {"prefill": _memory(prefill.lower(params, ctx, chunk["tokens"], chunk["valid"]).compile(),
                            resident_elsewhere)}
  decode_fn = functools.partial(sampling.decode_loop, cfg, max_new_tokens=c.rollout.max_new_tokens,
                                eos_ids=tuple(cfg.eos_token_ids), stop_seqs=(), **window)
  decode = jax.jit(decode_fn, in_shardings=(params_sh, ctx_sh, rep, rows_sh, rep, rep), donate_argnums=1)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
  active = jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=rows_sh)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  out["decode"] = _memory(decode.lower(params, ctx, key, active, scalar, scalar).compile(),
                          resident_elsewhere)
  return kv, out


def plan(c, hbm_gb: float, prefill_tokens: int = 0) -> dict:
  """The whole plan as the --json dict (plus "phases" and "model" for the table)."""
  import jax

  from agentgen_jax import parallel, sampling
  from agentgen_jax.models import lora
  cfg = model_config(c)
  mesh = parallel.mesh_from_spec(c.get("mesh", "data:-1"))
  lcfg, lora_cfg = learner_config(c), lora_config(c)
  seq_len = sampling.bucket(c.rollout.max_episode_tokens)
  state, shardings, update = plan_update(cfg, lcfg, lora_cfg, mesh, seq_len)
  parts = _state_parts(state, shardings)
  resident = sum(parts.values())
  prefill_tokens = prefill_tokens or c.rollout.get("prefill_piece", sampling.PIECE) or 1024
  prefill_tokens = min(prefill_tokens, seq_len)  # a rollout's chunk never exceeds its episode
  params, params_sh, shared = rollout_params(state, shardings, mesh)
  phases = {"merge": plan_merge(state, resident)} if lora_cfg.enabled else {}
  kv, rollout = plan_rollout(cfg, c, mesh, params, params_sh, resident - shared, prefill_tokens)
  phases.update(rollout, rl_update=update)
  if c.sft.tasks > 0:
    phases["sft"] = plan_sft(cfg, c, lora_cfg, mesh, seq_len)
  peak = max(phases, key=lambda k: phases[k]["total"])
  per_device = dict(parts, kv_cache=kv, activations_peak=max(p["temp"] for p in phases.values()),
                    total=phases[peak]["total"])
  hbm = int(hbm_gb * GIB)
  lora_info = ({"rank": lora_cfg.rank, "targets": list(lora_cfg.targets),
                "adapter_params": lora.num_params(cfg, lora_cfg)} if lora_cfg.enabled else None)
  return {"devices": len(jax.devices()), "mesh": dict(mesh.shape), "per_device_bytes": per_device,
          "hbm_bytes": hbm, "fits": per_device["total"] <= hbm, "peak_phase": peak, "phases": phases,
          "model": {"name": c.model, "num_params": cfg.num_params(), "dtype": cfg.dtype,
                    "param_dtype": cfg.param_dtype, "remat": cfg.remat, "seq_len": seq_len,
                    "mini_batch_size": lcfg.mini_batch_size, "micro_batch_size": lcfg.micro_batch_size,
                    "pool_size": c.pool_size, "prefill_tokens": prefill_tokens,
                    "backend": jax.default_backend(), "lora": lora_info}}


# -------------------------------------------------------------------------------------------- reporting

def advice(report: dict) -> list[str]:
  """What to change when the plan does not fit, the most effective first."""
  b, m, mesh = report["per_device_bytes"], report["model"], report["mesh"]
  n, fsdp = report["devices"], mesh.get("fsdp", 1)
  state = b["params"] + b["optimizer"] + b["reference"] + b["critic"]
  out = []
  if fsdp < n:
    out.append((state * (1 - fsdp / n), f"more fsdp (--config.mesh=fsdp:{n}: params, optimizer, reference "
                                        f"and critic split {n} ways instead of {fsdp})"))
  update = report["phases"]["rl_update"]["temp"]
  if report["peak_phase"] in ("rl_update", "sft"):
    divisor = mesh.get("data", 1) * fsdp
    if m["micro_batch_size"] > divisor:
      out.append((update / 2, f"a smaller micro-batch (--config.learner.micro_batch_size, now "
                              f"{m['micro_batch_size']}; a multiple of {divisor})"))
    if m["remat"] != "full":
      out.append((update / 2, f"remat (--config.remat=full, or dots; now {m['remat']})"))
    # The [T, vocab] logits and the [T, T] attention scores of a row are materialised whole.
    out.append((update / 4, f"shorter episodes (--config.rollout.max_episode_tokens, now {m['seq_len']}: "
                            "the update's logits and attention temporaries grow with it)"))
  if report["peak_phase"] in ("prefill", "decode"):
    out.append((b["kv_cache"] / 2, f"fewer parallel episodes or shorter ones (--config.pool_size, now "
                                   f"{m['pool_size']}; --config.rollout.max_episode_tokens)"))
  out.append((0, "more devices, or a smaller model"))
  return [text for _, text in sorted(out, key=lambda x: -x[0])]


def table(report: dict) -> str:
  b, m = report["per_device_bytes"], report["model"]
  mesh = ",".join(f"{k}:{v}" for k, v in report["mesh"].items())
  lines = [f"{m['name']}: {m['num_params'] / 1e9:.3g}B params ({m['param_dtype']}), compute {m['dtype']}, "
           f"remat {m['remat']}; mesh {mesh} on {report['devices']} {m['backend']} devices",
           f"update: {m['mini_batch_size']} rows x {m['seq_len']} tokens, micro-batch "
           f"{m['micro_batch_size']}; rollout: {m['pool_size']} rows, prefill chunk {m['prefill_tokens']}",
           *([f"LoRA rank {m['lora']['rank']} on {','.join(m['lora']['targets'])}: "
              f"{m['lora']['adapter_params'] / 1e6:.4g}M float32 adapter params; params = the frozen base "
              f"({m['dtype']}, also the reference) + the adapters, optimizer = the adapters' moments"]
             if m.get("lora") else []),
           f"{'per device':<18}{'GiB':>9}"]
  for part in PARTS:
    note = f"   (peak phase: {report['peak_phase']})" if part == "total" else ""
    lines.append(f"{part:<18}{b[part] / GIB:>9.2f}{note}")
  verdict = "fits" if report["fits"] else "DOES NOT FIT"
  lines.append(f"{'HBM':<18}{report['hbm_bytes'] / GIB:>9.2f}   {verdict}")
  lines.append("phases (GiB, arguments + temporaries + resident state): " + ", ".join(
      f"{k} {v['total'] / GIB:.2f}" for k, v in report["phases"].items()))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    report = plan(_CONFIG.value, _HBM_GB.value, _PREFILL.value)
  except ValueError as e:  # a bad mesh, model or batch size: one line naming the valid values
    sys.exit(f"launch.plan: {e}")
  print(table(report))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  if not report["fits"]:
    total = report["per_device_bytes"]["total"] / GIB
    sys.exit(f"does not fit {_HBM_GB.value:g} GiB per device ({total:.2f} GiB at {report['peak_phase']}); "
             "change: " + "; or ".join(advice(report)))


if __name__ == "__main__":
  simulate_devices(sys.argv)
  app.run(main, flags_parser=cli.parse_flags)
