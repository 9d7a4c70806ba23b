"""EnvPool: batches of text-env episodes run in worker processes, with per-call timeouts and restarts.

Slot s lives in worker s % workers; a worker that dies, hangs or loses an env reports its episodes as
failed-by-env (an `env_error` Step) instead of losing them, and is replaced so the pool keeps serving.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
import traceback
import weakref
from multiprocessing.connection import wait as wait_ready
from typing import Any

from envs import registry
from envs.base import Observation, Step


def error_step(why: str) -> Step:
  """The Step reported for an episode whose environment failed (crash, hang, exception)."""
  return Step(Observation(f"[environment error: {why}]"), 0.0, True, False, 0.0,
              {"invalid": False, "env_error": why})


# ---- worker side ---------------------------------------------------------------------------------


def _worker_main(conn, targets: dict[str, str], env_kwargs: dict[str, dict], seed: int) -> None:
  """Serves commands from the pool until "close" or EOF. Envs are created on first use per key."""
  # Own process group, so that killing the worker also takes JVMs and servers its envs started.
  try:
    os.setsid()
  except OSError:
    pass
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes us.
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
  for name, target in targets.items():
    registry.register(name, target)
  random.seed(seed)
  instances: dict[tuple, Any] = {}

  def env_for(key: tuple, name: str):
    if key not in instances:
      instances[key] = registry.make(name, **env_kwargs.get(name, {}))
    return instances[key]

  def drop(key: tuple) -> None:
    env = instances.pop(key, None)
    if env is not None:
      try:
        env.close()
      except Exception:  # noqa: BLE001 - the env is being discarded because it already failed.
        pass

  def guarded(key: tuple, fn, *args):
    try:
      return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - an env failure is reported per slot, not fatal.
      drop(key)
      return ("error", f"{type(e).__name__}: {e}".splitlines()[0][:300])

  def reset(slot, name, task):
    return env_for((slot, name), name).reset(task)

  def step(slot, name, action, parse):
    env = env_for((slot, name), name)
    return env.act(action) if parse else env.step(action)

  def call(name, method, args):
    return _call(env_for(("util", name), name), method, args)

  while True:
    try:
      seq, cmd, payload = conn.recv()
    except (EOFError, OSError):
      seq, cmd, payload = None, "close", None
    if cmd == "close":
      for key in list(instances):
        drop(key)
      try:
        conn.send((seq, ("ok", None)))
      except (OSError, ValueError):
        pass
      break
    try:
      if cmd == "reset":
        reply = [guarded((item[0], item[1]), reset, *item) for item in payload]
      elif cmd == "step":
        reply = [guarded((item[0], item[1]), step, *item) for item in payload]
      elif cmd == "call":  # A task-independent query on a utility instance of the env.
        reply = guarded(("util", payload[0]), call, *payload)
      else:
        reply = ("error", f"unknown command {cmd!r}")
      conn.send((seq, reply))
    except Exception:  # noqa: BLE001 - e.g. an unpicklable result; tell the parent, keep serving.
      conn.send((seq, ("error", traceback.format_exc().splitlines()[-1][:300])))


def _exit_with_parent(parent: int) -> None:
  """Kills this worker's process group (its JVMs too) once the pool's process is gone, even mid-step."""
  while True:
    time.sleep(1.0)
    if os.getppid() != parent:
      os.killpg(os.getpgrp(), signal.SIGKILL)


def _call(env, method: str, args: tuple):
  if method == "info":
    return {"instruction": env.instruction, "max_turns": int(env.max_turns)}
  if method == "tasks":
    return env.tasks(*args)
  if method == "expert":
    return [env.expert(task) for task in args]
  if method == "format_action":
    return env.format_action(*args)
  raise ValueError(f"unknown pool call {method!r}; valid: info, tasks, expert, format_action")


# ---- parent side ---------------------------------------------------------------------------------


def _kill_tree(proc) -> None:
  """SIGKILLs a worker, its process group and every descendant (JVMs included)."""
  if proc is None or proc.pid is None:
    return
  try:
    import psutil
    children = psutil.Process(proc.pid).children(recursive=True)
  except Exception:  # noqa: BLE001 - psutil missing or the process is already gone.
    children = []
  for target in [proc.pid] + [c.pid for c in children]:
    try:
      os.kill(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError, OSError):
    pass
  proc.join(timeout=5)


def _shutdown(workers: list) -> None:
  """Closes workers politely, then kills what is left (used by close, atexit and GC)."""
  for worker in workers:
    if worker is None:
      continue
    try:
      worker["conn"].send((None, "close", None))
    except (OSError, ValueError):
      pass
  deadline = time.monotonic() + 10.0
  for worker in workers:
    if worker is None:
      continue
    worker["proc"].join(timeout=max(0.0, deadline - time.monotonic()))
    _kill_tree(worker["proc"])
    try:
      worker["conn"].close()
    except OSError:
      pass
  workers.clear()


def _per_item(result: tuple, n: int) -> list[tuple[bool, Any]]:
  """A worker's answer to a batched command as n (ok, value-or-why) pairs."""
  status, reply = result
  if status != "ok":
    return [(False, reply)] * n
  if not isinstance(reply, list):  # the command as a whole failed inside the worker
    return [(False, reply[1])] * n
  return [(item[0] == "ok", item[1]) for item in reply]


class EnvPool:
  """`size` env slots spread over `workers` spawned processes; batched reset/step over slots.

  Calls to different workers run concurrently; each call waits at most `timeout_s`. Slot s is served by
  worker s % workers, which holds one env instance per (slot, env name) it has seen.
  """

  def __init__(self, name_or_names: str | list[str], size: int, workers: int = 2, *,
               timeout_s: float = 120.0, env_kwargs: dict[str, dict] | None = None, seed: int = 0):
    names = [name_or_names] if isinstance(name_or_names, str) else list(name_or_names)
    known = registry.names()
    for name in names:
      if name not in known:
        raise ValueError(f"unknown env {name!r}; known envs: {', '.join(known)}")
    if size < 1 or workers < 1:
      raise ValueError(f"size={size} and workers={workers} must both be >= 1")
    self.names = names
    self.size = size
    self.timeout_s = float(timeout_s)
    self._targets = {name: registry._REGISTRY[name] for name in names}
    self._env_kwargs = dict(env_kwargs or {})
    self._seed = seed
    self._ctx = mp.get_context("spawn")
    self._workers: list = []
    # Per slot: the env name of its episode, and why its episode was lost (None if not lost).
    self._slot_env: list[str | None] = [None] * size
    self._slot_lost: list[str | None] = [None] * size
    self._cache: dict[tuple, Any] = {}
    self._seq = 0
    for index in range(min(workers, size)):
      self._workers.append(self._start(index))
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)

  # ---- process management ------------------------------------------------------------------------

  def _start(self, index: int) -> dict:
    parent, child = self._ctx.Pipe(duplex=True)
    proc = self._ctx.Process(target=_worker_main, name=f"envpool-{index}", daemon=True,
                             args=(child, self._targets, self._env_kwargs, self._seed + index))
    proc.start()
    child.close()
    return {"proc": proc, "conn": parent}

  def _restart(self, index: int, why: str) -> None:
    old = self._workers[index]
    _kill_tree(old["proc"])
    try:
      old["conn"].close()
    except OSError:
      pass
    for slot in range(index, self.size, len(self._workers)):
      if self._slot_env[slot] is not None and self._slot_lost[slot] is None:
        self._slot_lost[slot] = why
    self._workers[index] = self._start(index)

  def worker_pids(self) -> list[int]:
    """The worker process ids (for monitoring and for tests that kill one)."""
    return [w["proc"].pid for w in self._workers]

  def _exchange(self, requests: dict[int, tuple]) -> dict[int, tuple]:
    """Sends one command per worker, waits for all replies concurrently; failed workers are restarted.

    Returns {worker: ("ok", reply) | ("failed", why)}.
    """
    if not self._workers:
      raise RuntimeError("EnvPool is closed")
    results: dict[int, tuple] = {}
    pending: dict[Any, int] = {}
    # Replies carry the request's number: a reply left over from an interrupted call (Ctrl-C in a
    # notebook) is skipped instead of being taken for this call's answer.
    self._seq += 1
    for index, message in requests.items():
      worker = self._workers[index]
      try:
        worker["conn"].send((self._seq,) + message)
        pending[worker["conn"]] = index
      except (OSError, ValueError) as e:
        results[index] = ("failed", f"worker {index} is gone ({type(e).__name__})")
    deadline = time.monotonic() + self.timeout_s
    while pending:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        break
      for conn in wait_ready(list(pending), timeout=remaining):
        index = pending.pop(conn)
        try:
          seq, reply = conn.recv()
          if seq != self._seq:
            pending[conn] = index
            continue
          results[index] = ("ok", reply)
        except (EOFError, OSError):
          proc = self._workers[index]["proc"]
          proc.join(timeout=1)
          results[index] = ("failed", f"worker {index} died (exit code {proc.exitcode})")
    for index in pending.values():
      results[index] = ("failed", f"worker {index} timed out after {self.timeout_s:g}s")
    for index, (status, why) in results.items():
      if status == "failed":
        self._restart(index, why)
    return results

  def _worker_of(self, slot: int) -> int:
    if not self._workers:
      raise RuntimeError("EnvPool is closed")
    return slot % len(self._workers)

  # ---- the batched episode API -------------------------------------------------------------------

  def reset(self, tasks: list[tuple[str, str]]) -> list[Observation]:
    """Starts episode (env_name, task_id) in slot i for i, task in enumerate(tasks)."""
    if len(tasks) > self.size:
      raise ValueError(f"{len(tasks)} tasks for a pool of size {self.size}")
    for name, _ in tasks:
      if name not in self.names:
        raise ValueError(f"env {name!r} is not served by this pool; valid: {', '.join(self.names)}")
    by_worker: dict[int, list] = {}
    for slot, (name, task) in enumerate(tasks):
      by_worker.setdefault(self._worker_of(slot), []).append((slot, name, task))
      self._slot_env[slot] = name
      self._slot_lost[slot] = None
    results = self._exchange({w: ("reset", items) for w, items in by_worker.items()})
    out: list[Observation | None] = [None] * len(tasks)
    for w, items in by_worker.items():
      for (slot, _, _), (ok, value) in zip(items, _per_item(results[w], len(items))):
        if not ok:
          # The episode could not start: say so, and make its first step end it as failed-by-env.
          self._slot_lost[slot] = value
          value = Observation(f"[environment error: {value}]")
        out[slot] = value
    return out

  def step(self, actions: list[str | None], parse: bool = True) -> list[Step | None]:
    """One action per slot (None: the slot is idle). parse=True: model text (env.act); else an action
    string executed as is (env.step, the `choose` mode)."""
    if len(actions) > self.size:
      raise ValueError(f"{len(actions)} actions for a pool of size {self.size}")
    out: list[Step | None] = [None] * len(actions)
    by_worker: dict[int, list] = {}
    for slot, action in enumerate(actions):
      if action is None:
        continue
      name = self._slot_env[slot]
      if name is None:
        raise ValueError(f"step on slot {slot} before any reset of it")
      if self._slot_lost[slot] is not None:
        out[slot] = error_step(self._slot_lost[slot])
        continue
      by_worker.setdefault(self._worker_of(slot), []).append((slot, name, action, parse))
    results = self._exchange({w: ("step", items) for w, items in by_worker.items()})
    for w, items in by_worker.items():
      for (slot, _, _, _), (ok, value) in zip(items, _per_item(results[w], len(items))):
        if not ok:
          self._slot_lost[slot] = value
          value = error_step(value)
        out[slot] = value
    return out

  # ---- task-independent queries (served by worker 0, experts spread over all workers) ------------

  def _call(self, name: str, method: str, *args, worker: int = 0):
    if name not in self.names:
      raise ValueError(f"env {name!r} is not served by this pool; valid: {', '.join(self.names)}")
    status, reply = self._exchange({worker: ("call", (name, method, args))})[worker]
    if status != "ok":
      raise RuntimeError(f"EnvPool {method}({name!r}) failed: {reply}")
    if reply[0] != "ok":
      raise RuntimeError(f"EnvPool {method}({name!r}) failed: {reply[1]}")
    return reply[1]

  def info(self, name: str) -> dict:
    """{"instruction": str, "max_turns": int} of env `name`."""
    return dict(self._cached(("info", name), lambda: self._call(name, "info")))

  def tasks(self, name: str, split: str = "test", difficulty: str = "all") -> list[str]:
    return list(self._cached(("tasks", name, split, difficulty),
                             lambda: self._call(name, "tasks", split, difficulty)))

  def format_action(self, name: str, action: str) -> str:
    return self._cached(("format_action", name, action), lambda: self._call(name, "format_action", action))

  def _cached(self, key: tuple, compute):
    # Task-independent answers never change; caching them spares a worker round trip per episode/turn.
    if key not in self._cache:
      if len(self._cache) > 100_000:
        self._cache.clear()
      self._cache[key] = compute()
    return self._cache[key]

  def expert(self, tasks: list[tuple[str, str]]) -> list[list[str]]:
    """Expert action lists for (env_name, task_id) pairs, computed on all workers concurrently."""
    jobs: dict[tuple[int, str], list[int]] = {}
    for i, (name, _) in enumerate(tasks):
      worker = self._worker_of(i)
      if name not in self.names:
        raise ValueError(f"env {name!r} is not served by this pool; valid: {', '.join(self.names)}")
      jobs.setdefault((worker, name), []).append(i)
    out: list[list[str] | None] = [None] * len(tasks)
    # One round per env name, so that each worker gets a single command per exchange.
    for name in dict.fromkeys(name for name, _ in tasks):
      round_jobs = {w: idx for (w, n), idx in jobs.items() if n == name}
      results = self._exchange({w: ("call", (name, "expert", tuple(tasks[i][1] for i in idx)))
                                for w, idx in round_jobs.items()})
      for w, idx in round_jobs.items():
        status, reply = results[w]
        if status != "ok" or reply[0] != "ok":
          raise RuntimeError(f"EnvPool expert({name!r}) failed: {reply if status != 'ok' else reply[1]}")
        for i, actions in zip(idx, reply[1]):
          out[i] = actions
    return out

  # ---- lifetime ----------------------------------------------------------------------------------

  def close(self) -> None:
    """Stops every worker and whatever they started (idempotent)."""
    self._finalizer()

  def __enter__(self) -> EnvPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
