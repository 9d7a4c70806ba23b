"""Device meshes and the sharding rules, in one place: batch rows (and the KV cache rows) over the mesh
axes (data, fsdp) jointly, params / optimizer state / reference / critic sharded over `fsdp` (FSDP);
on several hosts, the rows each process holds and how they
become global arrays (start-up and agreement between processes: distributed.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from agentgen_jax import distributed

AXES = ("data", "fsdp")
MESH_FORMS = "'data:-1', 'fsdp:8', 'data:2,fsdp:4'"


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
  # Auto axes: the partitioner places the intermediates. (With Explicit axes the embedding gather of a
  # sharded table by sharded token ids is a ShardingTypeError.)
  axis_types = (AxisType.Auto,) * len(names)
  if len({d.process_index for d in devices}) > 1:
    # Process-major: each process's devices are contiguous in the mesh, so each holds one block of the
    # batch rows (process_rows), the layout the rollout's per-process rows assume. (jax.make_mesh may
    # order a TPU slice's devices by its physical rings, interleaving hosts.)
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(ordered, dtype=object).reshape(sizes), tuple(names), axis_types=axis_types)
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=axis_types,
                       devices=devices)


def parse_mesh(spec: str, n_devices: int) -> dict[str, int]:
  """"data:2,fsdp:4" -> {"data": 2, "fsdp": 4} with every size resolved for n_devices.

  Axes not named are 1, except `data`, which takes the remaining devices when no size is -1 (so
  "fsdp:4" on 16 devices is data:4,fsdp:4). One-line errors name the valid forms and the device count.
  """
  def bad(why: str) -> ValueError:
    return ValueError(f"mesh {spec!r}: {why}; valid forms: {MESH_FORMS} (axes {', '.join(AXES)}, sizes "
                      f"multiplying to the {n_devices} devices, one of them may be -1)")
  sizes: dict[str, int] = {}
  for part in str(spec).split(","):
    name, colon, size = (x.strip() for x in part.partition(":"))
    if not colon or not name:
      raise bad(f"{part.strip()!r} is not axis:size")
    if name not in AXES:
      raise bad(f"unknown axis {name!r}")
    if name in sizes:
      raise bad(f"axis {name!r} appears twice")
    try:
      sizes[name] = int(size)
    except ValueError:
      raise bad(f"size {size!r} of axis {name!r} is not an integer") from None
    if sizes[name] == 0 or sizes[name] < -1:
      raise bad(f"size {sizes[name]} of axis {name!r} (sizes are >= 1, or -1 for the rest)")
  if list(sizes.values()).count(-1) > 1:
    raise bad("more than one size is -1")
  if -1 not in sizes.values() and "data" not in sizes:
    sizes["data"] = -1
  sizes = {axis: sizes.get(axis, 1) for axis in AXES}
  known = math.prod(s for s in sizes.values() if s != -1)
  if -1 in sizes.values():
    if n_devices % known:
      raise bad(f"the fixed sizes ({known} devices) do not divide {n_devices}")
    sizes = {axis: n_devices // known if s == -1 else s for axis, s in sizes.items()}
  if math.prod(sizes.values()) != n_devices:
    raise bad(f"it spans {math.prod(sizes.values())} devices")
  return sizes


def mesh_from_spec(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp) mesh of a --config.mesh string over `devices` (default: every device of every
  host). Build it once, after initialize_distributed()."""
  devices = list(jax.devices() if devices is None else devices)
  return make_mesh(devices, parse_mesh(spec, len(devices)))


def run_mesh(spec: str, batches: Mapping[str, int] | None = None) -> Mesh | None:
  """The mesh a command runs on, checked once before anything is written: mesh_from_spec(spec), or None on
  a single device (the plain jit path runs the same program). `batches` {name: rows} are the batch sizes
  that must split over the batch axes (one-line error naming the valid multiples)."""
  mesh = mesh_from_spec(spec)
  for what, rows in (batches or {}).items():
    check_rows(rows, mesh, what)
  return None if mesh.devices.size == 1 else mesh


def place_params(params, mesh: Mesh | None):
  """params placed by the FSDP rule over `mesh` (unchanged without one)."""
  return params if mesh is None else jax.device_put(params, param_shardings(mesh, params))


# ---------------------------------------------------------------------------------------- batch sharding

def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes that split batch rows: data and fsdp jointly (FSDP devices also take their own rows)."""
  return tuple(a for a in AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (row) dimension split over the batch axes, the other dimensions replicated."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def batch_divisor(mesh: Mesh | None) -> int:
  """How many ways batch rows are split (1 without a mesh); row counts must be a multiple of it."""
  return 1 if mesh is None else math.prod(mesh.shape[a] for a in batch_axes(mesh))


def check_rows(rows: int, mesh: Mesh | None, what: str) -> None:
  """One-line error when `rows` (a batch size named `what`) does not split over the batch axes."""
  n = batch_divisor(mesh)
  if rows % n:
    axes = ",".join(f"{a}:{mesh.shape[a]}" for a in batch_axes(mesh))
    raise ValueError(f"{what}={rows} is not a multiple of the mesh's batch axes ({axes}: {n} devices); "
                     f"valid: multiples of {n}")


# Older names (data parallelism only): the batch axes are now data and fsdp together.
data_sharding = batch_sharding
data_size = batch_divisor


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (scalars, norms, biases)."""
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree, mesh: Mesh):
  """Places every leaf of `tree` (the whole batch, the same on every process) with its leading dimension
  over the batch axes; on several processes each keeps its own rows. (A process holding only its own rows
  uses from_process_rows.)"""
  return jax.device_put(tree, batch_sharding(mesh))


# ------------------------------------------------------------------------------------------ FSDP rules

def _key(entry) -> str | None:
  return getattr(entry, "key", getattr(entry, "name", None))


def param_spec(path, shape: Sequence[int], fsdp: int) -> PartitionSpec:
  """Where one leaf of a params-like tree lives: a matrix is split over `fsdp` on its largest dimension
  that fsdp divides (the first of equals); a leaf under "layers" is stacked [L, ...] and never split on L;
  vectors (norms, biases, the value head), scalars, LoRA adapters (small, and read whole every step)
  and matrices no dimension of which fsdp divides stay replicated."""
  keys = [_key(k) for k in path]
  stacked = "layers" in keys
  dims = range(1 if stacked else 0, len(shape))
  candidates = [d for d in dims if shape[d] % fsdp == 0]
  if fsdp == 1 or len(dims) < 2 or not candidates or "lora" in keys:
    return PartitionSpec()
  best = max(candidates, key=lambda d: shape[d])
  return PartitionSpec(*["fsdp" if d == best else None for d in range(len(shape))])


def param_shardings(mesh: Mesh, tree):
  """NamedShardings for a tree of params, or of anything that mirrors them leaf for leaf: the
  TrainState (policy, optax moments, reference, critic), an optimizer state. Arrays or
  jax.ShapeDtypeStruct leaves."""
  fsdp = int(mesh.shape.get("fsdp", 1))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, param_spec(path, x.shape, fsdp)), tree)


def state_shardings(mesh: Mesh, state):
  """The learner's TrainState (or the SFT state): every part follows the one params rule, because optax
  states mirror the param tree (step, counts and the rng key are scalars or vectors: replicated)."""
  return param_shardings(mesh, state)


def cache_shardings(mesh: Mesh, tree):
  """A KV cache or a sampling context: k / v [L, B, Hkv, S, Dh] rows (axis 1) over the batch axes,
  every other array (valid [B, S], next_pos [B], last_logits [B, V]) on its axis 0, scalars replicated."""
  rows = batch_axes(mesh)
  def spec(path, x):
    if len(x.shape) == 0:
      return replicated(mesh)
    if _key(path[-1]) in ("k", "v") and len(x.shape) == 5:
      return NamedSharding(mesh, PartitionSpec(None, rows))
    return NamedSharding(mesh, PartitionSpec(rows))
  return jax.tree_util.tree_map_with_path(spec, tree)


def jit_state_step(fn, mesh: Mesh, state):
  """jit of `fn(state, batch) -> (state, metrics)` for `mesh`: the state (arrays or ShapeDtypeStructs, for
  its structure) in and out with its FSDP shardings and donated, the batch rows over the batch axes, the
  metrics replicated. XLA inserts the all-gathers and reduce-scatters; gradients of replicated leaves are
  summed by the partitioner, exactly once."""
  shardings = state_shardings(mesh, state)
  return jax.jit(fn, in_shardings=(shardings, batch_sharding(mesh)),
                 out_shardings=(shardings, replicated(mesh)), donate_argnums=0)


def per_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) placed with `shardings`."""
  leaves = jax.tree.leaves(tree)
  specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  assert len(leaves) == len(specs), (len(leaves), len(specs))
  return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, specs))


# ------------------------------------------------------------------------------------------ multi-host

def initialize_distributed() -> bool:
  """distributed.initialize(): jax.distributed on several hosts (TPU pod slice, Slurm, or
  JAX_COORDINATOR_ADDRESS set), a no-op on one. Call before anything touches jax.devices()."""
  return distributed.initialize()


def process_rows(mesh: Mesh | None, rows: int) -> tuple[int, slice]:
  """(block, rows) of a [rows, ...] batch split over the batch axes that this process holds: its rows are
  one contiguous block of rows / process_count (block = its position). Every process holds all of them
  without a mesh or on one process."""
  n = jax.process_count()
  if mesh is None or n == 1:
    return 0, slice(0, rows)
  indices = batch_sharding(mesh).addressable_devices_indices_map((rows,)).values()
  start = min(ix[0].start or 0 for ix in indices)
  stop = max(rows if ix[0].stop is None else ix[0].stop for ix in indices)
  if stop - start != rows // n or start % (rows // n):
    raise ValueError(f"process {jax.process_index()} holds rows {start}:{stop} of {rows}: not one block "
                     f"of {rows // n}; build the mesh with every host's devices contiguous (make_mesh)")
  return start // (rows // n), slice(start, stop)


def from_process_rows(tree, mesh: Mesh | None, rows: int):
  """Global arrays [rows, ...] from each process's own block of rows (process_rows(mesh, rows)): numpy
  leaves [rows / process_count, ...]. Without a mesh, the leaves as device arrays."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = batch_sharding(mesh)
  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (rows,) + x.shape[1:])
  return jax.tree.map(place, tree)


def own_rows(x) -> np.ndarray:
  """This process's block of rows (process_rows) of an array whose rows are split over the batch axes,
  as numpy; the whole array on one process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  blocks, seen = [], set()
  for shard in shards:  # rows replicated over a non-batch axis appear once per device
    key = shard.index[0].start or 0
    if key not in seen:
      seen.add(key)
      blocks.append(np.asarray(shard.data))
  return np.concatenate(blocks)


def to_host(tree):
  """Every leaf as numpy, whole, on every process (a collective on several processes: all must call it)."""
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)
