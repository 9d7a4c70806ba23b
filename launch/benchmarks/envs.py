"""Env throughput: steps/s of every registered env, in-process and through EnvPool (workers=2), replaying
expert actions so that the steps are the ones an episode really takes.  `run(quick)` -> benchmark rows.
"""

from __future__ import annotations

import time

import envs

_GROUP = "envs: throughput (expert replay)"


def _row(metric: str, ours, unit: str = "steps/s", notes: str = "") -> dict:
  return {"group": _GROUP, "metric": metric, "ours": ours, "reference": None, "reference_name": "",
          "unit": unit, "target": "", "met": None, "notes": notes}


def _in_process(env, tasks: list[str], experts: list[list[str]]) -> tuple[float, float]:
  """(steps/s, ms per reset) replaying each expert on one env instance."""
  steps, step_s, reset_s = 0, 0.0, 0.0
  for task, actions in zip(tasks, experts):
    start = time.perf_counter()
    env.reset(task)
    reset_s += time.perf_counter() - start
    start = time.perf_counter()
    for action in actions:
      steps += 1
      if env.step(action).done:
        break
    step_s += time.perf_counter() - start
  return steps / max(step_s, 1e-9), 1000 * reset_s / len(tasks)


def _through_pool(name: str, tasks: list[str], experts: list[list[str]]) -> tuple[float, float]:
  """(steps/s, ms per batched reset) with all tasks as one batch in a pool of 2 workers."""
  with envs.EnvPool(name, size=len(tasks), workers=2, timeout_s=600) as pool:
    pool.reset([(name, t) for t in tasks])  # warm-up: workers construct their envs here
    start = time.perf_counter()
    pool.reset([(name, t) for t in tasks])
    reset_s = time.perf_counter() - start
    steps, done = 0, [False] * len(tasks)
    start = time.perf_counter()
    for turn in range(max(len(e) for e in experts)):
      actions = [e[turn] if turn < len(e) and not d else None for e, d in zip(experts, done)]
      if not any(a is not None for a in actions):
        break
      for i, step in enumerate(pool.step(actions, parse=False)):
        if step is not None:
          steps += 1
          done[i] = step.done
    step_s = time.perf_counter() - start
  return steps / max(step_s, 1e-9), 1000 * reset_s


def run(quick: bool) -> list[dict]:
  n_tasks = 4 if quick else 16
  rows = []
  for name in envs.names():
    try:
      start = time.perf_counter()
      env = envs.make(name)
      construct_s = time.perf_counter() - start
      tasks = env.tasks("test", "all")
      # Spread over the list, so that easy and hard tasks (and all levels) are both represented.
      tasks = [tasks[i * len(tasks) // n_tasks] for i in range(n_tasks)]
      experts = [env.expert(t) for t in tasks]
    except Exception as e:  # noqa: BLE001 - an env that cannot start is reported, not fatal.
      rows.append(_row(f"{name}: skipped", None, notes=f"{type(e).__name__}: {str(e)[:120]}"))
      continue
    try:
      rate, reset_ms = _in_process(env, tasks, experts)
      rows.append(_row(f"{name}: in-process", rate,
                       notes=f"{n_tasks} tasks; reset {reset_ms:.1f} ms; construct {construct_s:.1f} s"))
      rate, reset_ms = _through_pool(name, tasks, experts)
      rows.append(_row(f"{name}: EnvPool workers=2, {n_tasks} slots", rate,
                       notes=f"batched reset {reset_ms:.0f} ms"))
    except Exception as e:  # noqa: BLE001
      rows.append(_row(f"{name}: failed", None, notes=f"{type(e).__name__}: {str(e)[:120]}"))
    finally:
      env.close()
  return rows


if __name__ == "__main__":
  for r in run(quick=True):
    print(f"{r['metric']:45s} {r['ours'] if r['ours'] is None else round(r['ours'], 1)!s:>10} {r['notes']}")
