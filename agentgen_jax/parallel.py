"""Device meshes and shardings for data parallelism (batch over the `data` axis, params replicated),
and jax.distributed start-up when the job spans several hosts."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def make_mesh(devices: Sequence[jax.Device] | None = None,
              axes: Sequence[str] | Mapping[str, int] = ("data",)) -> Mesh:
  """A mesh with Auto axis types over `devices` (default: all devices of all hosts).

  `axes` is either names (the first axis takes every device, the others size 1) or {name: size} where
  one size may be -1 for "the rest".
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(axes, Mapping):
    names, sizes = list(axes.keys()), list(axes.values())
  else:
    names = list(axes)
    sizes = [-1] + [1] * (len(names) - 1)
  if not names:
    raise ValueError("axes is empty; give at least one axis name, e.g. ('data',)")
  if sizes.count(-1) > 1:
    raise ValueError(f"axes {dict(zip(names, sizes))}: at most one size may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into axes {dict(zip(names, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"axes {dict(zip(names, sizes))} need {int(np.prod(sizes))} devices, "
                     f"got {len(devices)}")
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the `data` axis, the other dimensions replicated."""
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (params, scalars)."""
  return NamedSharding(mesh, PartitionSpec())


def data_size(mesh: Mesh | None) -> int:
  """How many ways the batch is split (1 without a mesh); batch sizes must be a multiple of this."""
  return 1 if mesh is None else int(mesh.shape["data"])


def shard_batch(tree, mesh: Mesh):
  """Places every leaf of `tree` with its leading dimension over `data`.

  Single host: leaves are the global batch. Multi-host: each process passes its own slice of the
  batch (leading dim = global / process_count) and gets back global arrays.
  """
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def _multi_host_environment() -> str | None:
  """Which multi-host launcher this process runs under, or None when it is a single host."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return "slurm"
  # A TPU VM pod slice lists every worker of the slice; a single TPU VM lists one (or none).
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    return "tpu"
  return None


def initialize_distributed() -> bool:
  """Calls jax.distributed.initialize() when run on several hosts (TPU pod slice, Slurm, or
  JAX_COORDINATOR_ADDRESS set); a no-op on one host. Call before anything touches jax.devices().

  Returns whether the distributed runtime was started.
  """
  kind = _multi_host_environment()
  if kind is None:
    return False
  if kind == "JAX_COORDINATOR_ADDRESS":
    # Explicit launch: the address, process count and id come from the environment.
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None,
        process_id=int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  else:
    # TPU pod slices and Slurm are detected by JAX itself from their environment variables.
    jax.distributed.initialize()
  return True
