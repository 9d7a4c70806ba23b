"""Generalisation metrics of the study: per-evaluation summaries (avg@k, pass@k, turns, tokens, invalid
rate) and, from lists of evaluations, transfer, the R matrix, forgetting, BWT and FWT.

Every function is pure and works on the plain dicts stored in results.json, so any number in a report can be
recomputed from the `evals` list.
"""

from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

DEFINITIONS = """\
- **avg@k success / score**: the mean over all n_tasks × k episodes (k samples per task).
- **pass@k**: the fraction of tasks solved by at least one of their k episodes.
- **invalid rate**: invalid actions (unparseable or inadmissible) / all agent turns.
- **transfer to env e** = score on e after training − score of the base model on e (held-in when e was
  trained on, held-out otherwise); the held-out average is over envs not in the training set.
- **R[i][j]** = score on env j after sequential stage i (stage 0 = the base model).
- **forgetting of env j** = max over stages i < last of R[i][j] − R[last][j] (only envs trained before the
  last stage; Chaudhry et al. 2018).
- **BWT** (backward transfer, GEM, Lopez-Paz & Ranzato 2017) = mean over j < T of R[T][j] − R[j][j], where
  env j is the one trained at stage j and T is the last stage. Negative = forgetting.
- **FWT** (forward transfer, GEM) = mean over j > 1 of R[j−1][j] − R[0][j]: how much training on the earlier
  envs helps env j before it is trained on.
- **downstream gain** of env B after A→B = score on B after A→B − score on B after training on B alone.
"""


def summarize_episodes(episodes: Sequence[dict], k: int) -> dict:
  """avg@k, pass@k and per-episode means of a batch of episodes.

  episodes: dicts with task, success, score, turns, n_tokens (agent+env tokens), invalid (count).
  """
  if not episodes:
    raise ValueError("summarize_episodes: no episodes")
  by_task: dict[str, list[dict]] = collections.defaultdict(list)
  for ep in episodes:
    by_task[str(ep["task"])].append(ep)
  n = len(episodes)
  turns = sum(int(ep["turns"]) for ep in episodes)
  return {
      "n_tasks": len(by_task),
      "k": k,
      "n_episodes": n,
      "avg_success": sum(float(ep["success"]) for ep in episodes) / n,
      "avg_score": sum(float(ep["score"]) for ep in episodes) / n,
      "pass_at_k": sum(any(ep["success"] for ep in eps) for eps in by_task.values()) / len(by_task),
      "mean_turns": turns / n,
      "mean_tokens": sum(float(ep["n_tokens"]) for ep in episodes) / n,
      "invalid_rate": sum(int(ep["invalid"]) for ep in episodes) / max(turns, 1),
      "env_error_rate": sum(bool(ep.get("env_error")) for ep in episodes) / n,
  }


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
  """Forgetting, BWT and FWT of one sequential run.

  r: R matrix with rows = [base, after order[0], after order[1], ...] and columns = envs.
  order: the envs in training order (each must be in `envs`).
  """
  t = len(order)
  if len(r) != t + 1:
    raise ValueError(f"R has {len(r)} rows; expected base + {t} stages")
  col = {env: envs.index(env) for env in order}
  last = r[t]
  forgetting = {}
  for i, env in enumerate(order[:-1], start=1):
    j = col[env]
    forgetting[env] = max(r[s][j] for s in range(i, t)) - last[j]
  bwt = (sum(last[col[env]] - r[i][col[env]] for i, env in enumerate(order[:-1], start=1)) / (t - 1)
         if t > 1 else 0.0)
  fwt = (sum(r[i - 1][col[env]] - r[0][col[env]] for i, env in enumerate(order[1:], start=2)) / (t - 1)
         if t > 1 else 0.0)
  return {"forgetting": forgetting, "bwt": bwt, "fwt": fwt,
          "mean_forgetting": sum(forgetting.values()) / len(forgetting) if forgetting else 0.0}


def downstream_gain(after_sequence: float, after_alone: float) -> float:
  """Score on B after A→B minus score on B after B alone."""
  return after_sequence - after_alone
