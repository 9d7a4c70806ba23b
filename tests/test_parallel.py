"""Mesh helpers: mesh strings, the FSDP sharding rules, batch / param / cache sharding over 8 simulated
CPU devices (subprocess), and the single-host / multi-host decision of initialize_distributed."""

import glob
import importlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from agentgen_jax import distributed, models, parallel


def test_single_device_mesh_and_shardings():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.shape["data"] == len(jax.devices())
  assert mesh.axis_types == (AxisType.Auto,)
  x = parallel.shard_batch({"a": np.arange(8.0)}, mesh)["a"]
  np.testing.assert_array_equal(np.asarray(x), np.arange(8.0))
  assert parallel.data_size(None) == 1 and parallel.data_size(mesh) == len(jax.devices())


def test_bad_axes_name_the_problem():
  with pytest.raises(ValueError, match="need 4 devices"):
    parallel.make_mesh(axes={"data": 4})
  with pytest.raises(ValueError, match="at most one size"):
    parallel.make_mesh(axes={"data": -1, "fsdp": -1})


@pytest.mark.parametrize("spec, want", [
    ("data:-1", {"data": 8, "fsdp": 1}), ("fsdp:8", {"data": 1, "fsdp": 8}),
    ("fsdp:-1", {"data": 1, "fsdp": 8}), ("data:2,fsdp:4", {"data": 2, "fsdp": 4}),
    ("fsdp:4", {"data": 2, "fsdp": 4}), (" data : -1 , fsdp : 2 ", {"data": 4, "fsdp": 2}),
    ("data:8", {"data": 8, "fsdp": 1})])
def test_mesh_strings_resolve_to_axis_sizes(spec, want):
  assert parallel.parse_mesh(spec, 8) == want


@pytest.mark.parametrize("spec, why", [
    ("", "'' is not axis:size"), ("data", "'data' is not axis:size"), ("model:2", "unknown axis 'model'"),
    ("data:x", "size 'x' of axis 'data' is not an integer"), ("data:0", "size 0"),
    ("data:-1,fsdp:-1", "more than one size is -1"), ("data:2,data:4", "appears twice"),
    ("fsdp:16", "16 devices"), ("data:2,fsdp:2", "it spans 4 devices"), ("fsdp:3", "do not divide 8")])
def test_bad_mesh_strings_are_one_line_errors_naming_the_forms(spec, why):
  with pytest.raises(ValueError) as e:
    parallel.parse_mesh(spec, 8)
  message = str(e.value)
  assert why in message and "valid forms: 'data:-1', 'fsdp:8', 'data:2,fsdp:4'" in message
  assert "the 8 devices" in message and "\n" not in message


def test_mesh_from_spec_has_both_axes_with_auto_types():
  mesh = parallel.mesh_from_spec("data:-1")
  assert mesh.axis_names == ("data", "fsdp") and mesh.axis_types == (AxisType.Auto,) * 2
  assert parallel.batch_divisor(mesh) == len(jax.devices()) and parallel.batch_divisor(None) == 1


def test_fsdp_rule_splits_matrices_on_their_largest_divisible_dim_never_the_layer_axis():
  cfg = models.preset("tiny", tie_embeddings=False, qkv_bias=True, num_layers=8)
  shapes = jax.eval_shape(lambda: models.init_params(cfg, 0))
  specs = jax.tree_util.tree_map_with_path(lambda p, x: parallel.param_spec(p, x.shape, 8), shapes)
  layers = specs["layers"]
  assert layers["q_proj"]["kernel"] == PartitionSpec(None, "fsdp", None)      # [L, 128, 128]: first of equals
  assert layers["gate_proj"]["kernel"] == PartitionSpec(None, None, "fsdp")   # [L, 128, 384]
  assert layers["down_proj"]["kernel"] == PartitionSpec(None, "fsdp", None)   # [L, 384, 128]
  assert layers["q_proj"]["bias"] == PartitionSpec()                          # [L, out]: a stacked vector
  assert layers["input_norm"]["scale"] == PartitionSpec()
  assert specs["final_norm"]["scale"] == PartitionSpec()
  assert specs["embed"]["embedding"] == PartitionSpec("fsdp", None)            # [V, D]: V is larger
  assert specs["lm_head"] == PartitionSpec(None, "fsdp")
  # LoRA adapters stay whole on every device.
  path = (jax.tree_util.DictKey("lora"), jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("a"))
  assert parallel.param_spec(path, (8, 128, 16), 8) == PartitionSpec()
  # No dimension divisible: replicated rather than padded.
  assert parallel.param_spec((), (5, 7), 8) == PartitionSpec()
  assert parallel.param_spec((), (64, 64), 1) == PartitionSpec()


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")       # a single TPU VM
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  monkeypatch.setenv("SLURM_NTASKS", "1")                       # a one-task Slurm job
  assert distributed.launcher() is None
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.launcher() == "slurm"
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert distributed.launcher() == "tpu"
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert distributed.launcher() == "JAX_COORDINATOR_ADDRESS"


def _on_eight_devices(code: str, timeout: int) -> dict:
  """Runs `code` in a fresh process with 8 simulated CPU devices; returns the JSON of its last line."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


EIGHT_DEVICES = textwrap.dedent("""
  import json
  import jax, jax.numpy as jnp, numpy as np
  from agentgen_jax import models, parallel
  mesh = parallel.make_mesh()
  two_d = parallel.make_mesh(axes={"data": -1, "fsdp": 2})
  batch = parallel.shard_batch({"x": np.arange(32.0).reshape(16, 2)}, mesh)
  w = jax.device_put(jnp.ones((2, 3)), parallel.replicated(mesh))
  y = jax.jit(lambda b, w: b["x"] @ w)(batch, w)
  print(json.dumps({"devices": len(jax.devices()), "mesh": dict(mesh.shape), "two_d": dict(two_d.shape),
                    "shard_rows": [s.data.shape[0] for s in batch["x"].addressable_shards],
                    "w_copies": [s.data.shape for s in w.addressable_shards][0],
                    "y_rows": [s.data.shape[0] for s in y.addressable_shards],
                    "y": np.asarray(y).tolist()}))
""")


def test_batch_is_split_over_eight_devices():
  out = _on_eight_devices(EIGHT_DEVICES, timeout=120)
  assert out["devices"] == 8 and out["mesh"] == {"data": 8} and out["two_d"] == {"data": 4, "fsdp": 2}
  assert out["shard_rows"] == [2] * 8 and out["w_copies"] == [2, 3] and out["y_rows"] == [2] * 8
  np.testing.assert_allclose(out["y"], np.arange(32.0).reshape(16, 2) @ np.ones((2, 3)))


FSDP_ON_EIGHT_DEVICES = textwrap.dedent("""
  import json
  import jax, numpy as np
  from agentgen_jax import models, parallel
  from agentgen_jax.rl import learner
  cfg = models.preset("tiny", tie_embeddings=False)
  params = models.init_params(cfg, 0)
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (16, 12)).astype(np.int32)
  want = np.asarray(models.logits(cfg, jax.device_put(params, jax.devices()[0]), tokens), np.float64)
  lcfg = learner.LearnerConfig(kl_coef=0.1)
  state = jax.eval_shape(lambda p: learner.init_state(cfg, p, lcfg, jax.random.PRNGKey(0)), params)
  cache = jax.eval_shape(lambda: models.init_cache(cfg, 16, 32))
  out = {"total": total, "cache_total": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))}
  for spec in ("fsdp:8", "data:2,fsdp:4", "data:8"):
    mesh = parallel.mesh_from_spec(spec)
    shardings = parallel.param_shardings(mesh, params)
    placed = jax.device_put(params, shardings)
    held = {}
    for x in jax.tree.leaves(placed):
      for shard in x.addressable_shards:
        held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
    got = np.asarray(models.logits(cfg, placed, parallel.shard_batch(tokens, mesh)), np.float64)
    cache_sh = parallel.cache_shardings(mesh, cache)
    try:
      parallel.check_rows(6, mesh, "pool_size")
      rows_error = None
    except ValueError as e:
      rows_error = str(e)
    out[spec] = {"rule_bytes": parallel.per_device_bytes(params, shardings), "held": sorted(held.values()),
                 "state_bytes": parallel.per_device_bytes(state, parallel.state_shardings(mesh, state)),
                 "cache_bytes": parallel.per_device_bytes(cache, cache_sh),
                 "k_spec": list(map(str, cache_sh.k.spec)),
                 "rel_err": float(np.abs(got - want).max() / np.abs(want).max()),
                 "rows_error": rows_error}
  try:
    parallel.mesh_from_spec("fsdp:16")
  except ValueError as e:
    out["too_big"] = str(e)
  print(json.dumps(out))
""")


def test_fsdp_divides_param_state_and_cache_memory_over_eight_devices():
  out = _on_eight_devices(FSDP_ON_EIGHT_DEVICES, timeout=300)
  total = out["total"]
  for spec, fsdp in (("fsdp:8", 8), ("data:2,fsdp:4", 4), ("data:8", 1)):
    r = out[spec]
    # The rule's count is what the devices really hold, and ~ total / fsdp (norms are replicated).
    assert r["held"] == [r["rule_bytes"]] * 8
    assert abs(r["rule_bytes"] / (total / fsdp) - 1) < 0.1, (spec, r["rule_bytes"], total / fsdp)
    # params + Adam mu, nu + reference: 4 param-sized trees, all under the same rule.
    assert abs(r["state_bytes"] / (4 * total / fsdp) - 1) < 0.1, (spec, r["state_bytes"])
    # The KV cache rows go over data and fsdp together: 1/8 per device whatever the split (the int32
    # write index is replicated).
    assert r["cache_bytes"] == (out["cache_total"] - 4) // 8 + 4
    assert r["k_spec"] == ["None", "('data', 'fsdp')"]
    assert r["rel_err"] < 1e-5, (spec, r["rel_err"])
    assert "pool_size=6 is not a multiple of the mesh's batch axes" in r["rows_error"]
    assert "valid: multiples of 8" in r["rows_error"]
  assert "mesh 'fsdp:16'" in out["too_big"] and "the 8 devices" in out["too_big"]


FSDP_UPDATE = textwrap.dedent("""
  import functools, json
  import jax, numpy as np
  from agentgen_jax import models, parallel
  from agentgen_jax.rl import learner
  cfg = models.preset("tiny", tie_embeddings=False, num_layers=2)
  params = models.init_params(cfg, 0)
  lcfg = learner.LearnerConfig(lr=1e-3, kl_coef=0.1, entropy_coef=0.01, micro_batch_size=8,
                               mini_batch_size=16)
  mode = "generate" if "generate" in learner.policy.MODES else "token"
  rng = np.random.default_rng(0)
  b, t = 16, 24
  batch = {"tokens": rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
           "valid": np.ones((b, t), bool), "loss_mask": (rng.random((b, t)) < 0.5).astype(np.float32),
           "old_logprobs": -3 * rng.random((b, t)).astype(np.float32),
           "advantages": rng.normal(size=(b, t)).astype(np.float32),
           "ref_logprobs": -3 * rng.random((b, t)).astype(np.float32)}
  fn = functools.partial(learner.update_step, cfg, lcfg, mode, None)

  def train(mesh):
    state = learner.init_state(cfg, params, lcfg, jax.random.PRNGKey(0))
    if mesh is None:
      step, rows = jax.jit(fn, donate_argnums=0), jax.device_put(batch, jax.devices()[0])
      state = jax.device_put(state, jax.devices()[0])
    else:
      step, rows = parallel.jit_state_step(fn, mesh, state), parallel.shard_batch(batch, mesh)
      state = jax.device_put(state, parallel.state_shardings(mesh, state))
    losses = []
    for _ in range(3):
      state, metrics = step(state, rows)
      losses.append(float(metrics["policy_loss"]))
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state.params)])
    shards = {str(getattr(x.sharding, "spec", "one device")) for x in jax.tree.leaves(state.opt_state)
              if x.ndim == 3}
    return flat, losses, sorted(shards)

  init = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(params)])
  want, want_losses, _ = train(None)
  out = {}
  for spec in ("data:8", "fsdp:8", "data:2,fsdp:4"):
    got, losses, shards = train(parallel.mesh_from_spec(spec))
    out[spec] = {"rel_err": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
                 "err_of_change": float(np.linalg.norm(got - want) / np.linalg.norm(want - init)),
                 "loss_err": float(np.max(np.abs(np.array(losses) - np.array(want_losses)))),
                 "moment_specs": shards}
  print(json.dumps(out))
""")


@pytest.mark.e2e  # in CI: seconds on an idle 2-core CPU
def test_fsdp_update_on_eight_devices_equals_one_device():
  # ~20 s of CPU: the update compiled four times. Gradients of sharded and replicated leaves are
  # reduced by the partitioner (never pmean'ed twice), so every mesh trains like one device.
  out = _on_eight_devices(FSDP_UPDATE, timeout=900)
  for spec, r in out.items():
    assert r["rel_err"] < 1e-4 and r["err_of_change"] < 1e-3 and r["loss_err"] < 1e-5, (spec, r)
  # The Adam moments of stacked kernels stay sharded over fsdp between steps (not silently replicated).
  assert any("fsdp" in s for s in out["fsdp:8"]["moment_specs"])
  assert not any("fsdp" in s for s in out["data:8"]["moment_specs"])


def _train(workdir, *args, devices: int = 8, timeout: int = 1500):
  """launch.train on the shared tiny config (tests/train_config_tiny.py) with `devices` simulated CPUs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-m", "launch.train", "--config=tests/train_config_tiny.py",
                         f"--workdir={workdir}", *args], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=root)


@pytest.mark.parametrize("args, message", [
    (["--config.mesh=fsdp:3"], "mesh 'fsdp:3': the fixed sizes (3 devices) do not divide 8; valid forms:"),
    pytest.param(["--config.mesh=data:16"], "mesh 'data:16': it spans 16 devices; valid forms:",
                 marks=pytest.mark.slow),
    pytest.param(["--config.mesh=data:8", "--config.learner.micro_batch_size=2"],
                 "learner.micro_batch_size=2 is not a multiple of the mesh's batch axes (data:8,fsdp:1: 8 "
                 "devices); valid: multiples of 8", marks=pytest.mark.slow)])
def test_bad_mesh_or_batch_ends_train_in_one_line_and_writes_nothing(tmp_path, args, message):
  workdir = tmp_path / "run"
  proc = _train(workdir, *args, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
  assert not workdir.exists()


def _final_params(workdir) -> np.ndarray:
  """The trained weights as written by --config.export_hf (host arrays: readable whatever the mesh was)."""
  load_lib = importlib.import_module("agentgen_jax.models.load")  # `models.load` is the function
  weights = {}
  for path in sorted(glob.glob(os.path.join(workdir, "hf_export", "*.safetensors"))):
    weights.update(load_lib.read_safetensors(path))
  return np.concatenate([np.asarray(weights[k], np.float64).ravel() for k in sorted(weights)])


def _curve(workdir) -> list[dict]:
  with open(os.path.join(workdir, "log.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  keep = ("success", "score", "mean_turns", "loss", "policy_loss", "entropy", "grad_norm")
  return [{k: r[k] for k in keep if k in r} for r in rows if "iteration" in r]


@pytest.mark.slow
def test_training_on_eight_devices_matches_one_device(tmp_path):
  # Minutes: four tiny training runs (one device, then data:8, fsdp:8, data:2,fsdp:4 on 8 simulated
  # devices). Rollout rows are padded to the 8 devices; micro-batches of 8 rows split one row per device.
  args = ["--config.learner.micro_batch_size=8", "--config.learner.mini_batch_size=8",
          "--config.iterations=2", "--config.export_hf=True"]
  one = tmp_path / "one"
  proc = _train(one, *args, devices=1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  want_params, want_curve = _final_params(one), _curve(one)
  assert len(want_curve) == 2
  for mesh in ("data:8", "fsdp:8", "data:2,fsdp:4"):
    workdir = tmp_path / mesh.replace(":", "").replace(",", "_")
    proc = _train(workdir, *args, f"--config.mesh={mesh}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got_curve = _curve(workdir)
    assert [set(r) for r in got_curve] == [set(r) for r in want_curve]
    for got, want in zip(got_curve, want_curve):
      for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), (mesh, k)
    got_params = _final_params(workdir)
    assert np.linalg.norm(got_params - want_params) / np.linalg.norm(want_params) < 1e-4, mesh
