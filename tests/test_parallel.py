"""Mesh helpers: mesh shapes and axis types, batch sharding over 8 simulated CPU devices (subprocess),
and the single-host / multi-host decision of initialize_distributed."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from agentgen_jax import parallel


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


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")       # a single TPU VM
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  monkeypatch.setenv("SLURM_NTASKS", "1")                       # a one-task Slurm job
  assert parallel._multi_host_environment() is None
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert parallel._multi_host_environment() == "slurm"
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert parallel._multi_host_environment() == "tpu"
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert parallel._multi_host_environment() == "JAX_COORDINATOR_ADDRESS"


EIGHT_DEVICES = textwrap.dedent("""
  import json
  import jax, jax.numpy as jnp, numpy as np
  from agentgen_jax import parallel
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
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True,
                        timeout=120, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["mesh"] == {"data": 8} and out["two_d"] == {"data": 4, "fsdp": 2}
  assert out["shard_rows"] == [2] * 8 and out["w_copies"] == [2, 3] and out["y_rows"] == [2] * 8
  np.testing.assert_allclose(out["y"], np.arange(32.0).reshape(16, 2) @ np.ones((2, 3)))
