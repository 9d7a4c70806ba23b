"""Load on an AgentGym-protocol server as AgentGym's own clients make it: every request on a new connection,
no retry, many clients at once. Used by tests/test_agentgym_server.py, and to measure the figures in
docs/AGENTGYM.md:

  python -m tests.agentgym_load --env=babyai --clients=32 --steps=20 --runs=5 [--backlog=5]

Each client creates an instance, resets it to data index `first_index + k` and steps `steps` times with a
policy that depends on what it sees (action t = available action t mod their number), so that an episode
mixed up with another client's, or a lost request, shows as a difference from the sequential run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

import envs


def post(url: str, path: str, body: dict, timeout: float = 60.0):
  request = urllib.request.Request(f"{url}/{path}", data=json.dumps(body).encode(), method="POST",
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=timeout) as response:
    return json.loads(response.read())


def _choose(actions: list[str], t: int) -> str:
  return actions[t % len(actions)] if actions else "look"


def sequential(env_name: str, indices: list[int], steps: int) -> list[list[tuple]]:
  """The episodes of a local env, one after another: [(observation, reward, done), ...] per index."""
  env = envs.make(env_name)
  try:
    tasks = env.tasks("test") + env.tasks("train")
    out = []
    for index in indices:
      obs = env.reset(tasks[index])
      actions, episode = obs.valid_actions, []
      for t in range(steps):
        step = env.step(_choose(actions, t))
        actions = step.observation.valid_actions
        episode.append((step.observation.text, step.reward, step.done))
      out.append(episode)
    return out
  finally:
    env.close()


def concurrent(url: str, indices: list[int], steps: int) -> dict:
  """All clients at once against a server in the babyai/textcraft dialect ({"id"}, "data_idx").

  Returns episodes (None for a lost client), errors (what lost each), latencies [s] and wall time [s].
  """
  n = len(indices)
  episodes: list = [None] * n
  errors: list = [None] * n
  latencies: list[list[float]] = [[] for _ in range(n)]
  start = threading.Barrier(n)

  def timed(k, path, body):
    t0 = time.perf_counter()
    result = post(url, path, body)
    latencies[k].append(time.perf_counter() - t0)
    return result

  def client(k: int) -> None:
    try:
      start.wait()
      env_id = timed(k, "create", {})["id"]
      reset = timed(k, "reset", {"id": env_id, "data_idx": indices[k]})
      actions, episode = reset["available_actions"], []
      for t in range(steps):
        step = timed(k, "step", {"id": env_id, "action": _choose(actions, t)})
        actions = step["available_actions"]
        episode.append((step["observation"], step["reward"], step["done"]))
      timed(k, "close", {"id": env_id})
      episodes[k] = episode
    except Exception as e:  # noqa: BLE001 (a lost client is the measurement, whatever lost it)
      errors[k] = f"{type(e).__name__}: {e}"

  threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
  t0 = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=600)
  wall = time.perf_counter() - t0
  return {"episodes": episodes, "errors": errors, "wall": wall,
          "latencies": [x for per in latencies for x in per]}


def start_server(env_name: str, *flags: str) -> tuple[subprocess.Popen, str]:
  """`python -m envs.agentgym` on a free loopback port; returns (process, url) once it serves."""
  proc = subprocess.Popen([sys.executable, "-m", "envs.agentgym", f"--env={env_name}", "--port=0", *flags],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  line = proc.stdout.readline()
  if not line.startswith("serving "):
    proc.kill()
    raise RuntimeError(f"server did not start: {line}{proc.stdout.read()}")
  return proc, line.split()[-1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--env", default="babyai")
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--backlog", type=int, default=128)
  parser.add_argument("--threads", type=int, default=32)
  flags = parser.parse_args()
  indices = list(range(flags.clients))
  expected = sequential(flags.env, indices, flags.steps)
  proc, url = start_server(flags.env, f"--backlog={flags.backlog}", f"--threads={flags.threads}")
  try:
    lost, differ, rates, lat = [], [], [], []
    for _ in range(flags.runs):
      r = concurrent(url, indices, flags.steps)
      lost.append(sum(e is None for e in r["episodes"]))
      differ.append(sum(e is not None and e != x for e, x in zip(r["episodes"], expected)))
      rates.append(len(r["latencies"]) / r["wall"])
      lat += r["latencies"]
  finally:
    proc.kill()
    proc.wait()
  print(json.dumps({
      "env": flags.env, "clients": flags.clients, "steps": flags.steps, "runs": flags.runs,
      "backlog": flags.backlog, "threads": flags.threads, "lost_clients_per_run": lost,
      "episodes_different_per_run": differ, "requests_per_s": [round(x, 1) for x in rates],
      "latency_ms_p50": round(1e3 * float(np.percentile(lat, 50)), 1),
      "latency_ms_p99": round(1e3 * float(np.percentile(lat, 99)), 1),
      "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
                 f"Python {platform.python_version()}",
      "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
  main()
