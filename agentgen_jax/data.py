"""Trajectories and expert demonstrations on disk: TFDS datasets in array_record format (random access with
`tfds.data_source`, no TensorFlow needed) plus a JSONL copy for reading by eye and by other tools.

One record is one episode: its token sequence with masks and per-token arrays, and its episode stats.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np

from agentgen_jax import distributed

# Per-token arrays of a record, with their dtypes on disk.
TOKEN_FIELDS = {"tokens": np.int32, "loss_mask": np.int8, "logprobs": np.float32,
                "rewards": np.float32, "turn_ids": np.int32}
# Episode-level scalars and strings.
EPISODE_FIELDS = {"env": str, "task": str, "success": bool, "score": np.float32, "turns": np.int32,
                  "n_tokens": np.int32, "invalid": np.int32, "env_error": bool, "tag": str,
                  "transcript": str}


def _features():
  import tensorflow_datasets as tfds
  spec = {name: tfds.features.Tensor(shape=(None,), dtype=dtype) for name, dtype in TOKEN_FIELDS.items()}
  for name, kind in EPISODE_FIELDS.items():
    spec[name] = tfds.features.Text() if kind is str else (np.bool_ if kind is bool else kind)
  return tfds.features.FeaturesDict(spec)


@functools.cache  # TFDS registers builder classes by name: define it once per process
def _builder_class():
  """The TFDS builder, defined lazily so that importing agentgen_jax does not import TFDS."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # TFDS's per-write bars would bury the run's own progress bars

  class Episodes(tfds.core.GeneratorBasedBuilder):
    """Episodes of agent-environment interaction (rollouts or expert demonstrations)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, records: Sequence[dict] = (), split: str = "train", **kwargs):
      self._records = records
      self._split = split
      super().__init__(**kwargs)

    def _info(self):
      # Episodes keep their rollout order (TFDS would otherwise shuffle by key hash).
      return self.dataset_info_from_configs(features=_features(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {self._split: self._generate_examples()}

    def _generate_examples(self):
      for i, record in enumerate(self._records):
        yield i, record

  return Episodes


def normalize_record(record: dict[str, Any]) -> dict[str, Any]:
  """Fills missing fields with defaults and casts arrays, so every record has the same schema."""
  n = len(record["tokens"])
  out: dict[str, Any] = {}
  for name, dtype in TOKEN_FIELDS.items():
    value = record.get(name)
    out[name] = np.zeros(n, dtype) if value is None else np.asarray(value, dtype)
    if out[name].shape != (n,):
      raise ValueError(f"record field {name!r} has shape {out[name].shape}, expected ({n},)")
  for name, kind in EPISODE_FIELDS.items():
    value = record.get(name)
    if kind is str:
      out[name] = value if isinstance(value, str) else json.dumps(value) if value is not None else ""
    elif kind is bool:
      out[name] = bool(value)
    else:
      out[name] = kind(value if value is not None else 0)
  return out


def write_episodes(records: Iterable[dict[str, Any]], folder: str, split: str = "train") -> str:
  """Writes episodes as a TFDS array_record dataset under `folder` plus `folder/<split>.jsonl`.

  Returns the dataset directory (pass it to `read_episodes`). On several processes only process 0 writes
  (every process has the same records); the others return `folder`.
  """
  if not distributed.is_primary():
    return folder
  records = [normalize_record(r) for r in records]
  os.makedirs(folder, exist_ok=True)
  # A new TFDS builder mkdtemp()s a folder for metadata from its (disabled) GCS bucket and never removes it:
  # point tempfile at a scratch folder of ours for the duration, so that no run litters the temp folder.
  saved = tempfile.tempdir
  # Its 'downloaded and prepared' line is a print: kept off stdout.
  with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
    tempfile.tempdir = scratch
    try:
      builder = _builder_class()(records=records, split=split, data_dir=folder, file_format="array_record")
      builder.download_and_prepare()
    finally:
      tempfile.tempdir = saved
  write_jsonl(records, os.path.join(folder, f"{split}.jsonl"))
  return str(builder.data_dir)


def read_episodes(dataset_dir: str, split: str = "train"):
  """A random-access source of episodes (`len`, `[i]`) from a folder written by `write_episodes`.

  `dataset_dir` is the folder given to `write_episodes` or the versioned dir it returned.
  """
  import tensorflow_datasets as tfds
  if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
    candidates = sorted(os.path.join(root) for root, _, files in os.walk(dataset_dir)
                        if "dataset_info.json" in files)
    if not candidates:
      raise FileNotFoundError(f"no TFDS dataset under {dataset_dir!r} (no dataset_info.json)")
    dataset_dir = candidates[-1]
  return tfds.builder_from_directory(dataset_dir).as_data_source(split=split)


def decode_record(example: dict[str, Any]) -> dict[str, Any]:
  """Turns a record read back from TFDS (bytes for text) into Python types."""
  out = dict(example)
  for name, kind in EPISODE_FIELDS.items():
    if kind is str and isinstance(out.get(name), bytes):
      out[name] = out[name].decode("utf-8")
  return out


def _jsonable(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def write_jsonl(records: Iterable[dict[str, Any]], path: str) -> None:
  """Writes records as one JSON object per line (atomically: a temp file then rename); on process 0 alone."""
  if not distributed.is_primary():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
