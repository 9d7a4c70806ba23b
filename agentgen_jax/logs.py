"""Training logs in the workdir: JSON lines (log.jsonl) and TensorBoard event files (tb/), written by
process 0 alone when the job spans several processes."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from agentgen_jax import distributed


class Logger:
  """JSON lines and TensorBoard event files in the workdir (on process 0; elsewhere it writes nothing)."""

  def __init__(self, workdir: str):
    self._json = self._tb = None
    if not distributed.is_primary():
      return
    os.makedirs(workdir, exist_ok=True)
    self._json = open(os.path.join(workdir, "log.jsonl"), "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    except ImportError:
      self._tb = None

  def log(self, record: dict) -> None:
    if self._json is None:
      return
    self._json.write(json.dumps(dict(record, time=time.time()), default=float) + "\n")
    self._json.flush()

  def scalars(self, prefix: str, step: int, values: dict) -> None:
    if self._tb is None:
      return
    for k, v in values.items():
      if np.ndim(v) == 0:
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)

  def close(self) -> None:
    if self._json is not None:
      self._json.close()
    if self._tb is not None:
      self._tb.close()


def scalar_floats(tree: dict) -> dict[str, float]:
  """The scalar entries of a metrics dict as Python floats (for JSON)."""
  return {k: float(v) for k, v in tree.items() if np.ndim(v) == 0}


@dataclasses.dataclass(frozen=True)
class StageOutput:
  """Where a training stage writes: its folder, the shared logger, its name (in logs, curves and records)
  and its first iteration's index on the study's global curve."""

  workdir: str
  logger: Logger
  name: str = "train"
  global_offset: int = 0
