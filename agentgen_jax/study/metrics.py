"""Generalisation metrics of the study: per-evaluation summaries (avg@k, pass@k, turns, tokens, invalid
rate), transfer, the R matrix, forgetting, BWT and FWT, and per-seed metrics with 95% bootstrap intervals
over seeds and tasks.

Every function is pure and works on the plain dicts stored in results.json, so any number in a report can be
recomputed from the `evals` list (`study_metrics(results)`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

DEFINITIONS = """\
- **avg@k success / score**: the mean over all n_tasks × k episodes (k samples per task).
- **pass@k**: the fraction of tasks solved by at least one of their k episodes.
- **invalid rate**: invalid actions (unparseable or inadmissible) / all agent turns.
- **transfer to env e** = score on e after training − score of the base model on e (held-in when e was
  trained on, held-out otherwise); the held-out average is over envs not in the training set.
- **R[i][j]** = score on env j after sequential stage i (stage 0 = the base model).
- **forgetting of env j** = max over the earlier rows i < last (the base row included) of
  R[i][j] − R[last][j], for every env trained before the last stage (Chaudhry et al. 2018 take the max
  over the stages after training on j; a score that was higher before j was trained counts here too).
- **BWT** (backward transfer, GEM, Lopez-Paz & Ranzato 2017) = mean over j < T of R[T][j] − R[j][j], where
  env j is the one trained at stage j and T is the last stage. Negative = forgetting.
- **FWT** (forward transfer, GEM) = mean over j > 1 of R[j−1][j] − R[0][j]: how much training on the earlier
  envs helps env j before it is trained on.
- **downstream gain** of env B after A→B = score on B after A→B − score on B after training on B alone.
- **sequential − mixture** of env e = score on e after the whole sequence − score on e after joint (mixture)
  training on the same envs with the same total iterations; "mean" averages it over the evaluated envs.
- **curriculum gain** = score after easy→hard − score after hard alone (same env, same test difficulty).
- **turns / generated tokens change** = mean turns (agent tokens) per episode after a stage − before RL
  (the "sft" stage of a train run, else the base stage, which in a study is the warm-started model).
- Transfer, forgetting, BWT/FWT, gains and differences use avg_score (success where score = success).
- **Seeds and intervals**: every metric is computed per seed from that seed's evals; "mean" is the mean over
  seeds. The 95% interval is a percentile bootstrap over seeds and tasks (1000 replicates, numpy
  default_rng(0)): each replicate draws S seeds with replacement, then, within each drawn seed and for each
  (env, split, difficulty) in sorted order, n task indices with replacement, shared by all stages (paired:
  the same tasks before and after training); it recomputes every eval from those tasks' per-task means,
  computes the metric per drawn seed and averages. Evals without per-task rows are resampled over seeds
  only. With one seed the interval reflects task sampling alone.
"""


def _mean_generated_tokens(eps: Sequence[dict]) -> float | None:
  """Mean agent (generated or chosen) tokens per episode: the loss mask's sum; None when a record has no
  loss mask (records written before it was kept)."""
  if any(ep.get("loss_mask") is None for ep in eps):
    return None
  return sum(float(sum(int(m) for m in ep["loss_mask"])) for ep in eps) / len(eps)


def summarize_episodes(episodes: Sequence[dict], k: int) -> dict:
  """avg@k, pass@k and per-episode means of a batch of episodes, plus `per_task`: one row per task (in
  first-seen order) with its means over its episodes — what the bootstrap resamples.

  episodes: dicts with task, success, score, turns, n_tokens (agent+env tokens), invalid (count) and,
  optionally, loss_mask (its sum = the agent's tokens, "generated tokens").
  """
  if not episodes:
    raise ValueError("summarize_episodes: no episodes")
  by_task: dict[str, list[dict]] = collections.defaultdict(list)
  for ep in episodes:
    by_task[str(ep["task"])].append(ep)
  n = len(episodes)
  turns = sum(int(ep["turns"]) for ep in episodes)
  per_task = [task_row(task, eps) for task, eps in by_task.items()]
  return {
      "n_tasks": len(by_task),
      "k": k,
      "n_episodes": n,
      "avg_success": sum(float(ep["success"]) for ep in episodes) / n,
      "avg_score": sum(float(ep["score"]) for ep in episodes) / n,
      "pass_at_k": sum(row["pass"] for row in per_task) / len(per_task),
      "mean_turns": turns / n,
      "mean_tokens": sum(float(ep["n_tokens"]) for ep in episodes) / n,
      "mean_generated_tokens": _mean_generated_tokens(episodes),
      "invalid_rate": sum(int(ep["invalid"]) for ep in episodes) / max(turns, 1),
      "env_error_rate": sum(bool(ep.get("env_error")) for ep in episodes) / n,
      "per_task": per_task,
  }


def task_row(task: str, eps: Sequence[dict]) -> dict:
  """One task's outcome over its episodes: means of success, score, turns, tokens, generated tokens and
  invalid actions, and pass (1.0 when any episode succeeded)."""
  m = len(eps)
  return {"task": task, "episodes": m,
          "success": sum(float(ep["success"]) for ep in eps) / m,
          "score": sum(float(ep["score"]) for ep in eps) / m,
          "pass": float(any(ep["success"] for ep in eps)),
          "turns": sum(int(ep["turns"]) for ep in eps) / m,
          "tokens": sum(float(ep["n_tokens"]) for ep in eps) / m,
          "generated_tokens": _mean_generated_tokens(eps),
          "invalid": sum(int(ep["invalid"]) for ep in eps) / m}


def _lookup(evals: Iterable[dict], metric: str) -> dict[tuple[str, str], float]:
  """(stage, env) -> metric, for evaluations on the test split (the last one wins)."""
  return {(e["stage"], e["env"]): float(e[metric]) for e in evals if e.get("split", "test") == "test"}


def transfer(evals: Sequence[dict], base_stage: str = "base", metric: str = "avg_score") -> dict:
  """Per trained stage: {env: score − base score}, with held-in and held-out means.

  Returns {stage: {"trained_on": [...], "delta": {env: d}, "held_in": m | None, "held_out": m | None}}.
  """
  table = _lookup(evals, metric)
  base = {env: v for (stage, env), v in table.items() if stage == base_stage}
  out = {}
  for e in evals:
    stage = e["stage"]
    if stage == base_stage or stage in out:
      continue
    trained = list(e.get("trained_on", []))
    delta = {env: table[(stage, env)] - base[env] for (s, env) in table if s == stage and env in base}
    held_in = [d for env, d in delta.items() if env in trained]
    held_out = [d for env, d in delta.items() if env not in trained]
    out[stage] = {"trained_on": trained, "delta": delta,
                  "held_in": sum(held_in) / len(held_in) if held_in else None,
                  "held_out": sum(held_out) / len(held_out) if held_out else None}
  return out


def r_matrix(evals: Sequence[dict], stages: Sequence[str], envs: Sequence[str],
             metric: str = "avg_score") -> list[list[float]]:
  """R[i][j] = metric on envs[j] after stages[i] (NaN where not evaluated)."""
  table = _lookup(evals, metric)
  return [[table.get((stage, env), math.nan) for env in envs] for stage in stages]


def sequence_metrics(r: Sequence[Sequence[float]], order: Sequence[str], envs: Sequence[str]) -> dict:
  """Forgetting, BWT and FWT of one sequential run (see DEFINITIONS).

  forgetting[env] = max_{i < T} R[i][j] − R[T][j] for each env of order[:-1] (row 0, the base, included);
  BWT = mean_{j < T} R[T][j] − R[j][j]; FWT = mean_{j ≥ 2} R[j−1][j] − R[0][j] (stages numbered from 1).
  r: R matrix with rows = [base, after order[0], after order[1], ...] and columns = envs.
  order: the envs in training order (each must be in `envs`).
  """
  t = len(order)
  if len(r) != t + 1:
    raise ValueError(f"R has {len(r)} rows; expected base + {t} stages")
  col = {env: envs.index(env) for env in order}
  last = r[t]
  # Every earlier row counts (the base included): a score lost relative to any earlier point is forgotten,
  # whether or not that point came after the env's own stage.
  forgetting = {env: max(r[i][col[env]] for i in range(t)) - last[col[env]] for env in order[:-1]}
  bwt = (sum(last[col[env]] - r[i][col[env]] for i, env in enumerate(order[:-1], start=1)) / (t - 1)
         if t > 1 else 0.0)
  fwt = (sum(r[i - 1][col[env]] - r[0][col[env]] for i, env in enumerate(order[1:], start=2)) / (t - 1)
         if t > 1 else 0.0)
  return {"forgetting": forgetting, "bwt": bwt, "fwt": fwt,
          "mean_forgetting": sum(forgetting.values()) / len(forgetting) if forgetting else 0.0}


def downstream_gain(after_sequence: float, after_alone: float) -> float:
  """Score on B after A→B minus score on B after B alone."""
  return after_sequence - after_alone


# ---- per-seed metrics and bootstrap intervals over seeds and tasks ---------------------------------------

SCORE_KEYS = ("avg_success", "avg_score", "pass_at_k", "mean_turns", "mean_generated_tokens")
# eval field <- per-task column whose mean it is (invalid_rate is a ratio of sums, done separately)
_COLUMN_OF = {"avg_success": "success", "avg_score": "score", "pass_at_k": "pass", "mean_turns": "turns",
              "mean_tokens": "tokens", "mean_generated_tokens": "generated_tokens"}


@dataclasses.dataclass(frozen=True)
class Shape:
  """What a study's metrics need besides its evals: the protocol and its training orders (sequential)."""

  protocol: str
  orders: tuple[tuple[str, ...], ...] = ()


def study_shape(results: dict) -> Shape:
  """The Shape of a results.json dict (its protocol and config.study.orders / envs)."""
  study = (results.get("config") or {}).get("study") or {}
  protocol = study.get("protocol") or results.get("protocol", "")
  orders = [tuple(o) for o in study.get("orders") or []]
  if protocol == "sequential" and not orders and study.get("envs"):
    orders = [tuple(study["envs"])]
  return Shape(protocol, tuple(orders))


def one_difficulty(evals: Sequence[dict]) -> list[dict]:
  """The evals of one difficulty, for views with one cell per (stage, env): "all" when present, else the
  first difficulty evaluated (e.g. "easy" for a study evaluated on easy tasks only)."""
  difficulties = list(dict.fromkeys(e.get("difficulty") or "all" for e in evals))
  pick = "all" if "all" in difficulties else (difficulties[0] if difficulties else "all")
  return [e for e in evals if (e.get("difficulty") or "all") == pick]


def _difficulty(e: dict) -> str:
  return e.get("difficulty") or "all"


def seed_metrics(evals: Sequence[dict], shape: Shape, metric: str = "avg_score") -> dict[str, float]:
  """Every metric of one seed's evals, flat: {"family/stage/env/difficulty": value} (see DEFINITIONS).

  Families: the SCORE_KEYS per cell; transfer (per env, held_in, held_out); turns_change and
  generated_tokens_change; curriculum_gain (difficulty); forgetting, mean_forgetting, bwt, fwt,
  downstream_gain and seq_minus_mixture per sequential order (named "a>b>c").
  """
  evals = [e for e in evals if e.get("split", "test") == "test"]
  out: dict[str, float] = {}
  cell = {}
  for e in evals:
    key = (e["stage"], e["env"], _difficulty(e))
    cell[key] = e
    for name in SCORE_KEYS:
      if e.get(name) is not None:
        out[f"{name}/{'/'.join(key)}"] = float(e[name])
  difficulties = list(dict.fromkeys(_difficulty(e) for e in evals))
  stages = list(dict.fromkeys(e["stage"] for e in evals))
  before_rl = "sft" if "sft" in stages else "base"
  for d in difficulties:
    for stage, t in transfer([e for e in evals if _difficulty(e) == d], metric=metric).items():
      for env, delta in t["delta"].items():
        out[f"transfer/{stage}/{env}/{d}"] = delta
      for side in ("held_in", "held_out"):
        if t[side] is not None:
          out[f"transfer/{stage}/{side}/{d}"] = t[side]
  for (stage, env, d), e in cell.items():
    before = cell.get((before_rl, env, d))
    if stage in (before_rl, "base") or before is None:  # base precedes the SFT reference: no change of RL
      continue
    for name, family in (("mean_turns", "turns_change"),
                         ("mean_generated_tokens", "generated_tokens_change")):
      if e.get(name) is not None and before.get(name) is not None:
        out[f"{family}/{stage}/{env}/{d}"] = float(e[name]) - float(before[name])
  for (stage, env, d), e in cell.items():
    if stage == "easy>hard" and ("hard", env, d) in cell:
      out[f"curriculum_gain/{env}/{d}"] = float(e[metric]) - float(cell[("hard", env, d)][metric])
  if shape.protocol == "sequential":
    out.update(_sequence_seed_metrics(one_difficulty(evals), shape.orders, metric))
  return out


def sequences(evals: Sequence[dict], orders: Sequence[Sequence[str]],
              metric: str = "avg_score") -> list[dict]:
  """Per training order whose stages were all evaluated: sequence_metrics with its R matrix, stages (base
  first) and envs (columns: every env evaluated). evals: one per (stage, env), e.g. one_difficulty(...)."""
  table = _lookup(evals, metric)
  envs = list(dict.fromkeys(e["env"] for e in evals))
  out = []
  for order in orders:
    stages = ["base"] + ["after:" + ">".join(order[:i + 1]) for i in range(len(order))]
    if all((stage, env) in table for stage in stages for env in order):
      r = r_matrix(evals, stages, envs, metric)
      seq = sequence_metrics(r, list(order), envs)
      out.append(dict(seq, order=list(order), envs=envs, stages=stages, r=r))
  return out


def _sequence_seed_metrics(evals: Sequence[dict], orders, metric: str) -> dict[str, float]:
  out: dict[str, float] = {}
  table = _lookup(evals, metric)
  envs = list(dict.fromkeys(e["env"] for e in evals))
  for seq in sequences(evals, orders, metric):
    order, stages = seq["order"], seq["stages"]
    name = ">".join(order)
    for env, f in seq["forgetting"].items():
      out[f"forgetting/{name}/{env}"] = f
    if seq["forgetting"]:
      out[f"mean_forgetting/{name}"] = seq["mean_forgetting"]
    if len(order) > 1:
      out[f"bwt/{name}"], out[f"fwt/{name}"] = seq["bwt"], seq["fwt"]
      alone = table.get((f"after:{order[-1]}", order[-1]))
      if alone is not None:
        out[f"downstream_gain/{name}"] = downstream_gain(table[(stages[-1], order[-1])], alone)
    diffs = {env: table[(stages[-1], env)] - table[("mixture", env)] for env in envs
             if ("mixture", env) in table and (stages[-1], env) in table}
    for env, d in diffs.items():
      out[f"seq_minus_mixture/{name}/{env}"] = d
    if diffs:
      out[f"seq_minus_mixture/{name}/mean"] = sum(diffs.values()) / len(diffs)
  return out


def _task_group(e: dict) -> tuple[str, str, str]:
  return (e["env"], e.get("split", "test"), _difficulty(e))


@dataclasses.dataclass
class _SeedData:
  """One seed's evals with their per-task columns as arrays, grouped for paired resampling."""

  evals: list[dict]
  columns: list[dict[str, np.ndarray] | None]   # per eval; None without per-task rows
  groups: list[tuple[tuple[str, str, str], int]]  # sorted (group, n_tasks)


def _prepare(evals: Sequence[dict]) -> _SeedData:
  columns, sizes, tasks = [], {}, {}
  for e in evals:
    rows = e.get("per_task")
    if not rows:
      columns.append(None)
      continue
    group = _task_group(e)
    ids = [str(r["task"]) for r in rows]
    if tasks.setdefault(group, ids) != ids:
      raise ValueError(f"eval {e['stage']}/{e['env']}/{group[2]} has tasks {ids[:3]}... but another stage "
                       f"of {group} was evaluated on {tasks[group][:3]}...: paired resampling needs one "
                       "task list")
    sizes[group] = len(rows)
    cols = {c: np.asarray([np.nan if r.get(c) is None else float(r[c]) for r in rows])
            for c in set(_COLUMN_OF.values()) | {"invalid"}}
    columns.append(cols)
  return _SeedData(list(evals), columns, sorted(sizes.items()))


def _resample(data: _SeedData, rng: np.random.Generator) -> list[dict]:
  """The seed's evals recomputed on one bootstrap draw of tasks (one draw per group, in sorted order)."""
  draws = {group: rng.integers(0, n, n) for group, n in data.groups}
  out = []
  for e, cols in zip(data.evals, data.columns):
    if cols is None:
      out.append(e)
      continue
    idx = draws[_task_group(e)]
    new = {k: v for k, v in e.items() if k != "per_task"}
    for field, column in _COLUMN_OF.items():
      if field in e and e[field] is not None:
        new[field] = float(np.mean(cols[column][idx]))
    if "invalid_rate" in e:
      new["invalid_rate"] = float(np.sum(cols["invalid"][idx]) / max(np.sum(cols["turns"][idx]), 1.0))
    out.append(new)
  return out


def seeds_of(evals: Sequence[dict]) -> list[int]:
  """The seeds in evals (an eval without "seed" belongs to seed 0), sorted."""
  return sorted({int(e.get("seed", 0)) for e in evals})


def bootstrap(evals: Sequence[dict], shape: Shape, n_boot: int = 1000, rng_seed: int = 0,
              metric: str = "avg_score", level: float = 0.95) -> dict[str, dict]:
  """{metric name: {"mean", "lo", "hi", "per_seed": {seed: value}}}: seed_metrics per seed, their mean,
  and the percentile-bootstrap interval over seeds and tasks described in DEFINITIONS.

  Replicate b: seeds = rng.integers(0, S, S); for each drawn seed in that order, for each task group in
  sorted order, idx = rng.integers(0, n, n); the metric is averaged over the drawn seeds that have it.
  """
  seeds = seeds_of(evals)
  by_seed = {s: [e for e in evals if int(e.get("seed", 0)) == s] for s in seeds}
  point = {s: seed_metrics(by_seed[s], shape, metric) for s in seeds}
  names = list(dict.fromkeys(name for s in seeds for name in point[s]))
  data = [_prepare(by_seed[s]) for s in seeds]
  rng = np.random.default_rng(rng_seed)
  replicates: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(n_boot):
    values: dict[str, list[float]] = collections.defaultdict(list)
    for i in rng.integers(0, len(seeds), len(seeds)):
      for name, v in seed_metrics(_resample(data[i], rng), shape, metric).items():
        values[name].append(v)
    for name, vs in values.items():
      if name in replicates:
        replicates[name].append(float(np.mean(vs)))
  tail = 100.0 * (1.0 - level) / 2.0
  out = {}
  for name in names:
    per_seed = {str(s): point[s][name] for s in seeds if name in point[s]}
    reps = [v for v in replicates[name] if not math.isnan(v)]
    lo, hi = (np.percentile(reps, [tail, 100.0 - tail]) if reps else (math.nan, math.nan))
    out[name] = {"mean": float(np.mean(list(per_seed.values()))), "lo": float(lo), "hi": float(hi),
                 "per_seed": per_seed}
  return out


def mean_over_seeds(evals: Sequence[dict]) -> list[dict]:
  """One eval per (stage, env, split, difficulty): numeric fields averaged over seeds, per-task rows and
  the seed dropped, "n_seeds" added. For tables and plots with one cell per stage and env."""
  groups: dict[tuple, list[dict]] = {}
  for e in evals:
    groups.setdefault((e["stage"], e["env"], e.get("split", "test"), _difficulty(e)), []).append(e)
  out = []
  for members in groups.values():
    merged = {k: v for k, v in members[0].items() if k not in ("per_task", "seed")}
    for key, value in members[0].items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
        vs = [m.get(key) for m in members if m.get(key) is not None]
        if len(set(vs)) == 1 and len(vs) == len(members):
          continue  # the same in every seed (n_tasks, k): kept as it is
        merged[key] = sum(vs) / len(vs) if len(vs) == len(members) else None
    merged["n_seeds"] = len(members)
    out.append(merged)
  return out


def study_metrics(results: dict, n_boot: int = 1000, rng_seed: int = 0) -> dict:
  """The interval metrics of a results.json dict: {"intervals": bootstrap(...), "bootstrap": settings}."""
  evals = results["evals"]
  return {"intervals": bootstrap(evals, study_shape(results), n_boot, rng_seed),
          "bootstrap": {"replicates": n_boot, "rng_seed": rng_seed, "level": 0.95,
                        "seeds": seeds_of(evals), "scheme": "seeds, then tasks within each seed (paired)"}}
