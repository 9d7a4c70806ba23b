"""Checkpoints of the whole run state (params, optimizer state, rng, step, protocol stage, task-sampler
position) with orbax: atomic saves (written to a temporary folder, then renamed), `max_to_keep` kept.

The state is any pytree of arrays; the metadata is a JSON dict (stage names, sampler positions, metrics).
Every save also writes a manifest (size and CRC-32 of each file of the step); a restore checks it and falls
back to the newest step that verifies and restores, with a warning naming each bad one (a partial copy, a
bad disk): a run resumes from the checkpoint before the damaged one instead of dying in a TensorStore error.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import warnings
import zlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

MANIFEST = "agentgen_manifest.json"
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
  """No checkpoint (of those asked for) verifies and restores; the one-line message names each and why."""


class CorruptCheckpointWarning(UserWarning):
  """A damaged checkpoint step was skipped (the restore fell back to an older one)."""


def _to_savable(tree):
  # Typed PRNG keys cannot be written by orbax; they are stored as their raw key data.
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _is_typed_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _restore_keys(restored, like):
  return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r) if _is_typed_key(t) else r, restored, like)


# ---- the manifest: what a step's files were when they were written --------------------------------------

def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names]
  return sorted(f for f in out if f != MANIFEST)


def _crc32s(paths: list[str]) -> list[int]:
  # zlib releases the GIL on large buffers: files are checksummed in parallel (~0.8 GB/s per core).
  with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
    return list(pool.map(_crc32, paths))


def write_manifest(step_dir: str) -> None:
  """Records {file: [size, crc32]} of every file under step_dir (atomically: a tmp file renamed)."""
  names = _files(step_dir)
  paths = [os.path.join(step_dir, f) for f in names]
  files = {f: [os.path.getsize(p), crc] for f, p, crc in zip(names, paths, _crc32s(paths))}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"version": 1, "files": files}, f)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> str | None:
  """Why step_dir differs from its manifest (a file missing, truncated or changed), or None when it matches.

  A step without a manifest (written before manifests existed, or killed between the commit and the
  manifest) passes: the restore itself is then the check.
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"unreadable {MANIFEST} ({type(e).__name__})"
  names = sorted(files)
  for name in names:  # the cheap checks first: a missing or truncated file needs no checksum
    full = os.path.join(step_dir, name)
    if not os.path.exists(full):
      return f"{name} is missing"
    actual, size = os.path.getsize(full), files[name][0]
    if actual != size:
      return f"{name} has {actual} bytes, {size} were written"
  crcs = _crc32s([os.path.join(step_dir, name) for name in names])
  for name, crc in zip(names, crcs):
    if crc != files[name][1]:
      return f"{name} changed since it was written (CRC-32 mismatch)"
  return None


def _one_line(text: Any, limit: int = 200) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."


class Checkpointer:
  """Saves and restores (state pytree, metadata dict) by step under `directory`."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    # A run killed mid-save leaves a `<step>.orbax-checkpoint-tmp-*` folder: never restored, removed by the
    # next writer. A reader (read_only) leaves it alone: it may be the save of a run still going.
    # (A reader's own save_interval_steps=0 and max_to_keep=None: orbax warns when it has to set them.)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep, save_interval_steps=0 if read_only else 1,
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Writes checkpoint `step` and its manifest and waits for both: a kill after this returns cannot
    lose it."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(_to_savable(state)),
                              meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()
    if jax.process_index() == 0 and os.path.isdir(self.step_dir(step)):
      write_manifest(self.step_dir(step))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores into the structure, shapes, dtypes and shardings of `like`: step `step`, or by default the
    newest step that verifies and restores (see `_newest_good`)."""
    abstract = jax.tree.map(_abstract, _to_savable(like))
    restored = self._newest_good(step, lambda s: self._manager.restore(s, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())))
    return _restore_keys(restored.state, like), dict(restored.meta)

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    restored = self._newest_good(step, lambda s: self._manager.restore(
        s, args=ocp.args.Composite(meta=ocp.args.JsonRestore())))
    return dict(restored.meta)

  def restore_raw(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores without a target structure (as saved: nested dicts of arrays), each array whole on this
    process's first device, whatever mesh or number of processes saved it (orbax refuses to restore a
    saved sharding on another topology: a pod's run evaluated on one host)."""
    def read(s):
      return self._manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_whole_on_one_device(os.path.join(self.step_dir(s), "state"))),
          meta=ocp.args.JsonRestore()))
    restored = self._newest_good(step, read)
    return restored.state, dict(restored.meta)

  def _newest_good(self, step: int | None, read: Callable[[int], Any]) -> Any:
    """read(s) for the given step, or for the newest step whose files are intact and whose restore succeeds.

    A damaged step (its files differ from its manifest, or it has no manifest and the restore fails) is
    named in a CorruptCheckpointWarning and, when this Checkpointer may write, moved aside to
    `<step>.corrupt-<time>` (so that training can save that step again); the next older step is tried. A
    step whose files are intact but do not restore into `like` stops the search: that is a config that
    differs from the run's, not damage, and an older step would not fit either. No good step is a one-line
    CheckpointError naming every step tried and what was wrong with it.
    """
    steps = self.all_steps() if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    failures = []
    for s in sorted(steps, reverse=True):
      why = verify_manifest(self.step_dir(s))
      if why is None:
        try:
          return read(s)
        except Exception as e:  # noqa: BLE001 (orbax and TensorStore raise many types for damaged files)
          why = f"restore failed: {type(e).__name__}: {_one_line(e)}"
        if os.path.exists(os.path.join(self.step_dir(s), MANIFEST)):
          failures.append(f"step {s} (files intact, but {why}; does the config match the run that wrote it?)")
          break
      failures.append(f"step {s} ({why})")
      if step is None:
        warnings.warn(f"checkpoint step {s} in {self.directory} is damaged, skipped: {why}",
                      CorruptCheckpointWarning, stacklevel=3)
        self._set_aside(s)
    raise CheckpointError(f"no good checkpoint in {self.directory}: {'; '.join(failures)}")

  def _set_aside(self, step: int) -> None:
    if self.read_only:
      return
    if jax.process_index() == 0:
      os.rename(self.step_dir(step), f"{self.step_dir(step)}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_count() > 1:  # every process sees the step gone before any lists its steps again
      ocp.multihost.sync_global_processes(f"agentgen_set_aside_{step}")
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def _whole_on_one_device(state_dir: str):
  """The saved tree's shapes and dtypes (from its orbax metadata), each on this process's first device."""
  from etils import epath
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(epath.Path(state_dir)).tree
  finally:
    handler.close()
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)


def _abstract(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, (np.ndarray, np.generic)):
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
  return x


def params_digest(params: Any) -> str:
  """A SHA-256 over every leaf's bytes, in tree order: equal digests = bit-identical params (on several
  processes a collective: each leaf is gathered whole)."""
  import hashlib

  from agentgen_jax import parallel
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(_to_savable(params))[0]:
    h.update(jax.tree_util.keystr(path).encode())
    arr = parallel.to_host(leaf)
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()
