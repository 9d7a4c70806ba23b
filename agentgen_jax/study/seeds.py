"""Runs a protocol once per seed (workdir/seed_<s>/, each resumable) and merges the runs into one
results.json with per-seed evals, interval metrics (study.metrics.bootstrap) and report.md.

Seed s sets config.seed = s, which drives the SFT demo draws and shuffles, the RL task stream and sampling,
and the evaluation sampling; with config.seeds = N the seeds are config.seed, ..., config.seed + N − 1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Callable

from agentgen_jax.study import metrics, report

RunProtocol = Callable[[object, str], dict]  # (config of one seed, its workdir) -> results dict


def seed_list(c) -> list[int]:
  """The seeds of a config: config.seed + 0 .. config.seeds − 1 (`seeds` defaults to 1)."""
  n = int(getattr(c, "seeds", 1))
  if n < 1:
    raise ValueError(f"seeds={n}: must be >= 1")
  return [int(c.seed) + i for i in range(n)]


def seed_config(c, seed: int):
  """c for one seed's run (seed = `seed`, seeds = 1): a ConfigDict copy or a replaced frozen dataclass."""
  if dataclasses.is_dataclass(c):
    names = {f.name for f in dataclasses.fields(c)}
    return dataclasses.replace(c, seed=seed, **({"seeds": 1} if "seeds" in names else {}))
  sc = copy.deepcopy(c)
  with sc.unlocked():
    sc.seed = seed
    sc.seeds = 1
  return sc


def seed_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


def merge_seeds(per_seed: dict[int, dict], n_boot: int = 1000, rng_seed: int = 0) -> dict:
  """One results dict from the results of each seed's run: evals and curves tagged with "seed", the
  failure tables pooled (and kept per seed), and metrics = study_metrics (intervals over seeds and tasks).
  """
  if not per_seed:
    raise ValueError("merge_seeds: no finished seed")
  seeds = sorted(per_seed)
  first = per_seed[seeds[0]]
  config = dict(first.get("config") or {})
  config.update(seed=seeds[0], seeds=len(seeds))
  results = {"protocol": first.get("protocol"), "model": first.get("model"), "config": config,
             "seeds": seeds,
             "evals": [dict(e, seed=s) for s in seeds for e in per_seed[s]["evals"]],
             "curves": [dict(p, seed=s) for s in seeds for p in per_seed[s].get("curves") or []]}
  tables = {str(s): per_seed[s]["failures"] for s in seeds if per_seed[s].get("failures")}
  if tables:
    results["failures"] = pool_failure_tables(list(tables.values()))
    results["failures_by_seed"] = tables
  digests = {str(s): r["final_params_digest"] for s, r in per_seed.items() if "final_params_digest" in r}
  if digests:
    results["final_params_digest_by_seed"] = digests
  results["metrics"] = metrics.study_metrics(results, n_boot=n_boot, rng_seed=rng_seed)
  # the R matrices of the seed means, for the report's matrix tables and plots
  means = metrics.one_difficulty(metrics.mean_over_seeds(results["evals"]))
  results["metrics"]["sequences"] = metrics.sequences(means, metrics.study_shape(results).orders)
  return results


def pool_failure_tables(tables: list[dict]) -> dict:
  """Failure tables of several runs as one: counts summed, label percentages over all failures."""
  out: dict[str, dict] = {}
  for table in tables:
    for env, t in table.items():
      row = out.setdefault(env, {"episodes": 0, "failures": 0, "counts": {}})
      row["episodes"] += t["episodes"]
      row["failures"] += t["failures"]
      for label, pct in t["labels"].items():
        row["counts"][label] = row["counts"].get(label, 0.0) + pct * t["failures"] / 100.0
  for row in out.values():
    counts = row.pop("counts")
    row["labels"] = {k: 100.0 * v / row["failures"] if row["failures"] else 0.0 for k, v in counts.items()}
  return out


def run_seeds(c, workdir: str, run_protocol: RunProtocol,
              n_boot: int = 1000) -> dict:
  """Runs `run_protocol(config_for_seed, seed_dir)` for every seed of c (each run resumes from its own
  folder), then writes the merged results.json and report.md into workdir. Returns the merged results.

  One seed runs in workdir itself, as without this runner (same layout, resumable as before); its results
  gain the interval metrics (over tasks only) beside the protocol's own.
  """
  if len(seed_list(c)) == 1:
    results = run_protocol(c, workdir)
    results["evals"] = [dict(e, seed=int(c.seed)) for e in results["evals"]]
    results.setdefault("metrics", {}).update(metrics.study_metrics(results, n_boot=n_boot))
    report.write_report(results, workdir)
    return results
  per_seed = {}
  for seed in seed_list(c):
    per_seed[seed] = run_protocol(seed_config(c, seed), seed_dir(workdir, seed))
  results = merge_seeds(per_seed, n_boot=n_boot)
  report.write_report(results, workdir)
  return results


def merge_from_disk(workdir: str, n_boot: int = 1000) -> dict:
  """Merges the seed_<s>/results.json found in workdir (e.g. after the seeds ran as separate jobs)."""
  per_seed = {}
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, "results.json")
    if name.startswith("seed_") and name[5:].isdigit() and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        per_seed[int(name[5:])] = json.load(f)
  results = merge_seeds(per_seed, n_boot=n_boot)
  report.write_report(results, workdir)
  return results
