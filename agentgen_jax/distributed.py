"""Several processes (one per host) as one job: jax.distributed start-up, the process-0-writes rule, the host
values every process must agree on, and a watch that ends every process in one line when a peer dies.

Every process runs the same program on the same config: the host-side decisions that shape a collective
(how many turns a rollout takes, how long a padded chunk is) are taken on values gathered from all of them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

import jax
import numpy as np

# The explicit launch: every process gets the same address and count, and its own id.
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Seconds without a heartbeat after which a peer is declared dead (default 60; tests use a few).
PEER_TIMEOUT_ENV = "AGENTGEN_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 60.0
_KEY = "agentgen/alive/"

_watch: "_PeerWatch | None" = None


def launcher() -> str | None:
  """Which multi-host launcher this process runs under ("JAX_COORDINATOR_ADDRESS", "slurm", "tpu"), or None
  on a single host."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return "slurm"
  # A TPU VM pod slice lists every worker of the slice; a single TPU VM lists one (or none).
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return "tpu" if len(hosts) > 1 else None


def coordinator_env(env=os.environ) -> tuple[str, int, int]:
  """(address, process count, process id) of the explicit launch, each checked: a one-line ValueError names
  the bad variable, its value and what is valid."""
  address = env.get("JAX_COORDINATOR_ADDRESS", "")
  host, colon, port = address.rpartition(":")
  if not colon or not host or not port.isdigit():
    raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port (e.g. 10.0.0.2:1234, the "
                     "address of process 0, the same on every process)")
  def integer(name: str) -> int:
    value = env.get(name)
    if value is None:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {name} is not; set {', '.join(ENV)} on "
                       "every process (JAX_PROCESS_ID: 0 .. JAX_NUM_PROCESSES-1, a different one each)")
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"{name}={value!r} is not an integer") from None
  count, index = integer("JAX_NUM_PROCESSES"), integer("JAX_PROCESS_ID")
  if count < 1:
    raise ValueError(f"JAX_NUM_PROCESSES={count}; valid: the number of processes of the job, >= 1")
  if not 0 <= index < count:
    raise ValueError(f"JAX_PROCESS_ID={index} with JAX_NUM_PROCESSES={count}; valid: 0 .. {count - 1}, a "
                     "different one on each process")
  return address, count, index


def initialize(peer_timeout_s: float | None = None) -> bool:
  """Starts jax.distributed when run as several processes (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID, a TPU pod slice, or Slurm), and the peer watch; a no-op on one host. Call before anything
  touches jax.devices(). Returns whether the distributed runtime was started.

  A bad variable is a one-line ValueError; so is a job the peers never join (after the runtime's
  initialization timeout, AGENTGEN_INIT_TIMEOUT_S, default 300 s). CPU devices talk over gloo.
  """
  kind = launcher()
  if kind is None:
    return False
  timeout = float(peer_timeout_s or os.environ.get(PEER_TIMEOUT_ENV, DEFAULT_PEER_TIMEOUT_S))
  init_timeout = int(os.environ.get("AGENTGEN_INIT_TIMEOUT_S", 300))
  # The runtime's own heartbeat check aborts the process with a fatal log; ours fires first, in one line.
  kwargs = dict(heartbeat_timeout_seconds=int(2 * timeout) + 10, shutdown_timeout_seconds=int(timeout) + 10,
                initialization_timeout=init_timeout)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; accelerators ignore it
  where = "from the cluster's environment"
  try:
    if kind == "JAX_COORDINATOR_ADDRESS":
      address, count, index = coordinator_env()
      where = f"at {address} as process {index} of {count}"
      jax.distributed.initialize(address, count, index, **kwargs)
    else:  # TPU pod slices and Slurm: JAX reads the address, count and id from their environment
      jax.distributed.initialize(**kwargs)
  except ValueError:
    raise
  except Exception as e:  # noqa: BLE001 (the runtime raises several types; the message is what matters)
    raise ValueError(f"could not join the job {where} within {init_timeout} s: {one_line(e)}") from None
  global _watch
  if jax.process_count() > 1:
    _watch = _PeerWatch(timeout)
    _watch.start()
  return True


def one_line(text: Any, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------- who writes, what is agreed

def is_primary() -> bool:
  """Whether this process writes the job's files (results, reports, logs, trajectories): process 0."""
  return jax.process_index() == 0


def allgather(value: Any) -> list[Any]:
  """Every process's `value` (any picklable host object), in process order, on every process. A collective:
  every process must call it at the same point."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils
  data = np.frombuffer(pickle.dumps(value), np.uint8)
  sizes = multihost_utils.process_allgather(np.int64(data.size))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [pickle.loads(gathered[i, :int(sizes[i])].tobytes()) for i in range(len(sizes))]


def global_max(n: int) -> int:
  """The largest of every process's `n` (a collective; n itself on one process)."""
  return max(allgather(int(n))) if jax.process_count() > 1 else int(n)


def agreed(value: Any) -> Any:
  """Process 0's `value` on every process (a collective): for decisions read from the shared workdir, which
  a process may see a moment before another (a file process 0 has just written)."""
  return allgather(value)[0] if jax.process_count() > 1 else value


def sync(name: str) -> None:
  """Waits until every process got here (after process 0 wrote a file the others read)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------- when a peer dies

def fail(message: str, code: int = 1) -> NoReturn:
  """Ends this process now with `message` as its one line on stderr: marks it failed for the peers' watch,
  ends its env workers, and skips jax.distributed's exit barrier (which would wait for a dead peer, then
  abort with a fatal log)."""
  if _watch is not None:
    _watch.mark(f"failed: {message}")
  sys.stderr.write("\n" + message + "\n")  # on a line of its own (a progress bar may hold the current one)
  sys.stderr.flush()
  sys.stdout.flush()
  for child in multiprocessing.active_children():  # EnvPool workers; they also exit with their parent
    child.terminate()
  os._exit(code)


_PEER_ERRORS = ("gloo", "connection", "unavailable", "heartbeat", "socket closed", "deadline")


@contextlib.contextmanager
def job(what: str = "training"):
  """Runs the body as this process's part of the job. With several processes: any exception ends this
  process in one line (`what` stopped: ...) and, through the watch, every other; on success, waits for the
  others before the exit. A no-op on one process."""
  if jax.process_count() == 1:
    yield
    return
  me = f"process {jax.process_index()} of {jax.process_count()}"
  if _watch is not None:
    _watch.what = what
  try:
    yield
  except SystemExit as e:  # a command's own one-line stop (sys.exit("training stopped: ..."))
    if e.code in (None, 0):
      _finished()
      raise
    fail(e.code if isinstance(e.code, str) else f"{what} stopped on {me} (exit {e.code})",
         e.code if isinstance(e.code, int) else 1)
  except BaseException as e:  # noqa: BLE001
    text = one_line(e)
    if isinstance(e, jax.errors.JaxRuntimeError) and any(w in text.lower() for w in _PEER_ERRORS):
      fail(f"{what} stopped on {me}: a peer process is gone (a collective failed: {text})")
    traceback.print_exc()  # a bug, not a lost peer: the traceback is the useful part
    fail(f"{what} stopped on {me}: {type(e).__name__}: {text}")
  _finished()


def _finished() -> None:
  """Every process got to the end: the watch stops (peers that exit now are not dead)."""
  sync("agentgen_job_done")
  if _watch is not None:
    _watch.stop()


class _PeerWatch(threading.Thread):
  """Heartbeats in the coordinator's key-value store: each process bumps its own counter every second and
  checks the others'. A counter that has not moved for `timeout_s` (a killed or hung process), a peer that
  marked itself failed, or a coordinator that no longer answers (process 0 is gone) ends this process."""

  def __init__(self, timeout_s: float, interval_s: float = 1.0):
    super().__init__(name="agentgen-peer-watch", daemon=True)
    from jax._src import distributed as jax_distributed  # the runtime's client: its key-value store
    self.client = jax_distributed.global_state.client
    self.me, self.n = jax.process_index(), jax.process_count()
    self.timeout_s, self.interval_s = timeout_s, interval_s
    self._stopped = threading.Event()
    self.what = "the job"  # what stopped, in the one-line message (distributed.job names it)

  def mark(self, value: str) -> None:
    with contextlib.suppress(Exception):
      self.client.key_value_set(_KEY + str(self.me), value, allow_overwrite=True)

  def stop(self) -> None:
    self._stopped.set()
    self.mark("done")

  def _peer(self, q: int) -> str | None:
    try:
      return self.client.key_value_try_get(_KEY + str(q))
    except Exception as e:  # noqa: BLE001
      if "not_found" in str(e).lower() or "not found" in str(e).lower():
        return None
      raise

  def run(self) -> None:
    peers = [q for q in range(self.n) if q != self.me]
    seen = {q: (None, time.monotonic()) for q in peers}
    beat = 0
    while not self._stopped.wait(self.interval_s):
      beat += 1
      try:
        self.client.key_value_set(_KEY + str(self.me), str(beat), allow_overwrite=True)
        values = {q: self._peer(q) for q in peers}
      except Exception as e:  # noqa: BLE001
        if self._stopped.is_set():
          return
        fail(f"{self.what} stopped on process {self.me} of {self.n}: lost the job's coordinator (process 0 "
             f"is gone: {one_line(e, 120)})")
      now = time.monotonic()
      for q, value in values.items():
        if value == "done":
          continue
        if value and value.startswith("failed: "):
          fail(f"{self.what} stopped on process {self.me} of {self.n}: process {q} failed ({value[8:]})")
        if value != seen[q][0]:
          seen[q] = (value, now)
        elif now - seen[q][1] > self.timeout_s:
          fail(f"{self.what} stopped on process {self.me} of {self.n}: process {q} sent no heartbeat for "
               f"{self.timeout_s:.0f} s (killed or hung)")
