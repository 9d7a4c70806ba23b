"""Study outputs: results.json, report.md (tables, intervals, the paper-findings table and the metric
definitions) and plots (transfer heatmap, R-matrix curves, success vs training iteration, turns and tokens
before/after).

`write_report(results, workdir)` is the one entry point; every number it prints comes from `results`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

from agentgen_jax import distributed
from agentgen_jax.study import failures, findings, metrics

COLUMNS = ("avg_success", "avg_score", "pass_at_k", "mean_turns", "mean_tokens", "invalid_rate")


def _fmt(x) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  if isinstance(x, float):
    return f"{x:.3f}"
  return str(x)


def _delta(x) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return out + [""]


def stages_in_order(evals: Sequence[dict]) -> list[str]:
  seen: list[str] = []
  for e in evals:
    if e["stage"] not in seen:
      seen.append(e["stage"])
  return seen


def envs_in_order(evals: Sequence[dict]) -> list[str]:
  seen: list[str] = []
  for e in evals:
    if e["env"] not in seen:
      seen.append(e["env"])
  return seen


# ---- plots ------------------------------------------------------------------------------------------

one_difficulty = metrics.one_difficulty  # kept here for callers of report.one_difficulty


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_transfer_heatmap(results: dict, path: str, metric: str = "avg_score") -> str | None:
  evals = one_difficulty(results["evals"])
  table = metrics.transfer(evals, metric=metric)
  if not table:
    return None
  envs = envs_in_order(evals)
  stages = list(table)
  grid = [[table[s]["delta"].get(env, math.nan) for env in envs] for s in stages]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(envs), 1.0 + 0.6 * len(stages)))
  bound = max([abs(v) for row in grid for v in row if not math.isnan(v)] + [1e-3])
  im = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
  ax.set_xticks(range(len(envs)), envs, rotation=30, ha="right")
  ax.set_yticks(range(len(stages)), [", ".join(table[s]["trained_on"]) or s for s in stages])
  for i, row in enumerate(grid):
    for j, v in enumerate(row):
      ax.text(j, i, "–" if math.isnan(v) else f"{v:+.2f}", ha="center", va="center", fontsize=8)
  ax.set_xlabel("evaluated on")
  ax.set_ylabel("trained on")
  ax.set_title(f"transfer: {metric} − base")
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_r_curves(results: dict, stages: Sequence[str], path: str, metric: str = "avg_score") -> str:
  envs = envs_in_order(results["evals"])
  r = metrics.r_matrix(results["evals"], stages, envs, metric)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(stages), 3.5))
  for j, env in enumerate(envs):
    ax.plot(range(len(stages)), [row[j] for row in r], marker="o", label=env)
  ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
  ax.set_ylabel(metric)
  ax.set_title("score on each env after each stage (R matrix)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_training_curves(results: dict, path: str) -> str | None:
  curves = results.get("curves") or []
  if not curves:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  by_stage: dict[str, list[dict]] = {}
  for point in curves:
    by_stage.setdefault(point.get("stage", "train"), []).append(point)
  for stage, points in by_stage.items():
    ax.plot([p["global_iteration"] for p in points], [p["success"] for p in points], marker=".",
            label=stage)
  ax.set_xlabel("training iteration")
  ax.set_ylabel("rollout success")
  ax.set_title("success of training rollouts")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_turns_tokens(results: dict, path: str) -> str | None:
  evals = results["evals"]
  stages = stages_in_order(evals)
  if len(stages) < 2:
    return None
  first, last = stages[0], stages[-1]
  envs = envs_in_order(evals)
  get = {(e["stage"], e["env"]): e for e in one_difficulty(evals)}
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  width = 0.38
  tokens = ("mean_generated_tokens" if all(e.get("mean_generated_tokens") is not None for e in get.values())
            else "mean_tokens")  # the agent's own tokens when recorded (the paper's number)
  for ax, key in zip(axes, ("mean_turns", tokens)):
    for k, stage in enumerate((first, last)):
      values = [(get[(stage, env)].get(key) or 0.0) if (stage, env) in get else 0.0 for env in envs]
      ax.bar([i + (k - 0.5) * width for i in range(len(envs))], values, width, label=stage)
    ax.set_xticks(range(len(envs)), envs, rotation=30, ha="right")
    ax.set_title(key)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---- report -----------------------------------------------------------------------------------------

def _ci(m: dict | None, signed: bool = False) -> str:
  """"mean [lo, hi]" of an interval metric."""
  if m is None:
    return "–"
  f = _delta if signed else _fmt
  return f"{f(m['mean'])} [{f(m['lo'])}, {f(m['hi'])}]"


SIGNED_FAMILIES = ("transfer", "turns_change", "generated_tokens_change", "curriculum_gain", "forgetting",
                   "mean_forgetting", "bwt", "fwt", "downstream_gain", "seq_minus_mixture")


def interval_sections(results: dict) -> list[str]:
  """Markdown for results with interval metrics: scores, every derived metric, efficiency before/after
  RL and the paper-findings table, each value as mean [95% interval]."""
  m = results.get("metrics") or {}
  intervals = m.get("intervals")
  if not intervals:
    return []
  boot = m.get("bootstrap", {})
  seeds = boot.get("seeds", [])
  lines = [f"## Scores: mean [95% interval] over {len(seeds)} seed(s) {seeds} and tasks", "",
           f"Bootstrap: {boot.get('replicates')} replicates, rng seed {boot.get('rng_seed')}, "
           f"resampling {boot.get('scheme')} (see Definitions).", ""]
  cells = list(dict.fromkeys(tuple(n.split("/")[1:]) for n in intervals
                             if n.split("/")[0] in metrics.SCORE_KEYS))
  lines += _table(("stage", "env", "difficulty") + metrics.SCORE_KEYS,
                  [cell + tuple(_ci(intervals.get(f"{k}/{'/'.join(cell)}")) for k in metrics.SCORE_KEYS)
                   for cell in cells])
  lines += efficiency_section(intervals)
  derived = [n for n in intervals if n.split("/")[0] in SIGNED_FAMILIES]
  if derived:
    lines += ["## Derived metrics: mean [95% interval], per seed", ""]
    lines += _table(("metric", "mean [95% interval]", "per seed"),
                    [(n, _ci(intervals[n], signed=True),
                      ", ".join(f"{s}: {_delta(v)}" for s, v in intervals[n]["per_seed"].items()))
                     for n in derived])
  lines += ["## The paper's findings at this scale", ""]
  rows = []
  for r in findings.verdicts(results):
    ours = r.get("ours") if "ours" in r else (
        None if r["metric"] is None else
        f"{_delta(r['mean'])} [{_delta(r['lo'])}, {_delta(r['hi'])}]")
    rows.append((r["claim"], r["paper"], ours or "–", f"`{r['metric']}`" if r["metric"] else "–",
                 f"**{r['verdict']}**"))
  lines += _table(("finding", "paper", "ours: mean [95% interval]", "our metric", "verdict"), rows)
  lines += [findings.VERDICT_RULES]
  return lines


def efficiency_section(intervals: dict) -> list[str]:
  """Turns and generated tokens per episode before and after RL, per env (the paper's efficiency finding)."""
  rows = []
  for name in intervals:
    family, stage, env, difficulty = (name.split("/") + ["", "", ""])[:4]
    if family != "turns_change":
      continue
    # the stage before RL, as metrics.seed_metrics picks it
    before_stage = "sft" if f"mean_turns/sft/{env}/{difficulty}" in intervals else "base"
    row = [env, difficulty, f"{before_stage} → {stage}"]
    for score, change in (("mean_turns", "turns_change"),
                          ("mean_generated_tokens", "generated_tokens_change")):
      a = intervals.get(f"{score}/{before_stage}/{env}/{difficulty}")
      b = intervals.get(f"{score}/{stage}/{env}/{difficulty}")
      d = intervals.get(f"{change}/{stage}/{env}/{difficulty}")
      row.append("–" if a is None or b is None else f"{a['mean']:.1f} → {b['mean']:.1f} ({_ci(d, True)})")
    rows.append(tuple(row))
  if not rows:
    return []
  return (["## Efficiency: turns and generated tokens per episode, before → after (change [95% interval])",
           ""] + _table(("env", "difficulty", "stages", "turns", "generated tokens"), rows))


def render_markdown(results: dict, plots: Sequence[str]) -> str:
  evals = results["evals"]
  lines = [f"# {results['protocol']} study — {results['model']}", ""]
  config = results.get("config", {})
  if config:
    keys = ("envs", "order", "mode", "iterations", "tasks_per_iteration", "group_size", "seed", "seeds")
    parts = [f"{k}={config[k]}" for k in keys if k in config]
    parts += [f"{k}={config[section][k]}" for section, k in (("rollout", "mode"), ("learner", "estimator"))
              if isinstance(config.get(section), dict) and k in config[section]]
    summary = ", ".join(parts)
    lines += [f"Config: {summary}", ""]
  lines += interval_sections(results)
  seeded = len(metrics.seeds_of(evals)) > 1
  if seeded:
    evals = metrics.mean_over_seeds(evals)
  lines += ["## Evaluations" + (" (means over seeds; per-seed evals in results.json)" if seeded else ""), ""]
  lines += _table(("stage", "env", "split", "difficulty", "tasks×k") + COLUMNS,
                  [(e["stage"], e["env"], e.get("split", "test"), e.get("difficulty", "all"),
                    f"{e['n_tasks']}×{e['k']}") + tuple(_fmt(e.get(c)) for c in COLUMNS)
                   for e in evals])
  m = results.get("metrics", {})
  if m.get("transfer"):
    lines += ["## Transfer (score − base score)", ""]
    envs = envs_in_order(evals)
    rows = []
    for stage, t in m["transfer"].items():
      rows.append((stage, ", ".join(t["trained_on"]), _delta(t["held_in"]), _delta(t["held_out"]))
                  + tuple(_delta(t["delta"].get(env)) for env in envs))
    lines += _table(("stage", "trained on", "held-in", "held-out") + tuple(envs), rows)
  for seq in m.get("sequences", []):
    lines += [f"## Sequence {' → '.join(seq['order'])}", ""]
    envs = seq["envs"]
    lines += _table(("R[stage][env]",) + tuple(envs),
                    [(stage,) + tuple(_fmt(v) for v in row) for stage, row in zip(seq["stages"], seq["r"])])
    lines += [f"BWT = {seq['bwt']:+.3f}, FWT = {seq['fwt']:+.3f}, forgetting: "
              + (", ".join(f"{k} {v:+.3f}" for k, v in seq["forgetting"].items()) or "–"), ""]
  if m.get("mixture_vs_sequential"):
    lines += ["## Sequential vs mixture (final scores)", ""]
    cmp = m["mixture_vs_sequential"]
    lines += _table(("env", "sequential", "mixture", "sequential − mixture"),
                    [(env, _fmt(v["sequential"]), _fmt(v["mixture"]), _delta(v["diff"]))
                     for env, v in cmp.items()])
  if m.get("downstream_gain"):
    lines += ["## Downstream gain (after A→B − after B alone)", ""]
    lines += _table(("sequence", "env", "gain"),
                    [(k, v["env"], _delta(v["gain"])) for k, v in m["downstream_gain"].items()])
  if m.get("difficulty"):
    lines += ["## Difficulty transfer", ""]
    lines += _table(("variant", "easy test", "hard test"),
                    [(v, _fmt(d.get("easy")), _fmt(d.get("hard"))) for v, d in m["difficulty"].items()])
  if results.get("failures"):
    lines += ["## Failure modes (% of failed episodes, last evaluation)", ""]
    labels = failures.LABELS
    lines += _table(("env", "failed/episodes") + labels,
                    [(env, f"{t['failures']}/{t['episodes']}")
                     + tuple(f"{t['labels'].get(k, 0.0):.0f}" for k in labels)  # old tables lack new labels
                     for env, t in results["failures"].items()])
    lines += [f"- **{k}**: {v}" for k, v in failures.DESCRIPTIONS.items()] + [""]
  if "final_params_digest" in results:
    lines += [f"Final params digest: `{results['final_params_digest']}`", ""]
  lines += ["## Definitions", "", metrics.DEFINITIONS]
  if plots:
    lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
  return "\n".join(lines)


def write_json(obj: dict, path: str) -> None:
  """obj as JSON at path (atomically), by process 0 alone on several processes."""
  if not distributed.is_primary():
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, default=float)
  os.replace(tmp, path)


def write_report(results: dict, workdir: str, sequence_stages: Sequence[Sequence[str]] = ()) -> dict:
  """Writes results.json, report.md and the plots into workdir; returns their paths. On several processes
  only process 0 writes (and the others return {})."""
  if not distributed.is_primary():
    return {}
  os.makedirs(workdir, exist_ok=True)
  plots = []
  view = dict(results, evals=metrics.mean_over_seeds(results["evals"]))  # one cell per stage and env
  for fn, name in ((plot_transfer_heatmap, "transfer_heatmap.png"),
                   (plot_training_curves, "training_success.png"),
                   (plot_turns_tokens, "turns_tokens.png")):
    p = fn(view, os.path.join(workdir, name))
    if p:
      plots.append(p)
  for i, seq in enumerate(results.get("metrics", {}).get("sequences", [])):
    plots.append(plot_r_curves(view, seq["stages"], os.path.join(workdir, f"r_matrix_{i}.png")))
  write_json(results, os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
    f.write(render_markdown(results, plots))
  return {"results": os.path.join(workdir, "results.json"), "report": os.path.join(workdir, "report.md"),
          "plots": plots}
