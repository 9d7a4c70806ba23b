"""Checkpoints of the whole run state (params, optimizer state, rng, step, protocol stage, task-sampler
position) with orbax: atomic saves (written to a temporary folder, then renamed), `max_to_keep` kept.

The state is any pytree of arrays; the metadata is a JSON dict (stage names, sampler positions, metrics).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _to_savable(tree):
  # Typed PRNG keys cannot be written by orbax; they are stored as their raw key data.
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _is_typed_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _restore_keys(restored, like):
  return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r) if _is_typed_key(t) else r, restored, like)


class Checkpointer:
  """Saves and restores (state pytree, metadata dict) by step under `directory`."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    # A run killed mid-save leaves a `<step>.orbax-checkpoint-tmp-*` folder: never restored, removed by the
    # next writer. A reader (read_only) leaves it alone: it may be the save of a run still going.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                                           cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Writes checkpoint `step` and waits for it: a kill after this returns cannot lose it."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(_to_savable(state)),
                              meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores into the structure, shapes, dtypes and shardings of `like` (latest step by default)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    savable = _to_savable(like)
    abstract = jax.tree.map(_abstract, savable)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return _restore_keys(restored.state, like), dict(restored.meta)

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def restore_raw(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores without a target structure (as saved: nested dicts of numpy arrays)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def close(self) -> None:
    self._manager.close()


def _abstract(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, (np.ndarray, np.generic)):
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
  return x


def params_digest(params: Any) -> str:
  """A SHA-256 over every leaf's bytes, in tree order: equal digests = bit-identical params."""
  import hashlib
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(_to_savable(params))[0]:
    h.update(jax.tree_util.keystr(path).encode())
    arr = np.asarray(jax.device_get(leaf))
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()
