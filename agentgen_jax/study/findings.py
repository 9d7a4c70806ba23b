"""The paper's findings (AgentGym-RL generalisation study, arXiv 2603.12011 via secondary sources; Qwen2.5
3B/7B, avg@8) and the verdict of our study on each, from the interval metrics of study.metrics.

A finding names the metrics of ours that measure it and the sign the paper reports; `verdicts(results)`
returns one row per (finding, metric of ours), or one "not measured" row when the study has none.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

NEAR_ZERO = 0.05  # "close to", "keeps": |difference| within this many score points (of 1.0)

VERDICT_RULES = f"""\
- **reproduced**: the 95% interval lies on the paper's side of zero (lo > 0 for a gain, hi < 0 for a
  drop); for a "no change" finding, the interval lies within ±{NEAR_ZERO}.
- **contradicted**: the interval lies on the other side of zero (for "no change": entirely outside
  ±{NEAR_ZERO}).
- **inconclusive**: the interval spans zero (for "no change": it crosses ±{NEAR_ZERO}), or is exactly
  [0, 0]: no score moved in any resample (e.g. every score is 0), which is no evidence either way.
- **not measured**: the study did not run the protocol (or env) that measures it.
Scores here are fractions of 1 where the paper gives percent; turns and tokens are per episode.
"""


@dataclasses.dataclass(frozen=True)
class Finding:
  """One of the paper's findings: `sign` is +1 (a gain), -1 (a drop) or 0 (no change), and `ours` picks
  the names of our interval metrics that measure it (given the intervals and the stage → trained-on map)."""

  key: str
  claim: str
  paper: str
  sign: int
  ours: Callable[[dict, dict], list[str]]


def _family(intervals: dict, family: str, **parts: str | set) -> list[str]:
  """Metric names of a family whose name parts match: stage=, env= (a value or a set of values)."""
  positions = {"stage": 1, "env": 2}
  out = []
  for name in intervals:
    fields = name.split("/")
    if fields[0] != family:
      continue
    if all(len(fields) > positions[k] and (fields[positions[k]] in v if isinstance(v, set)
                                           else fields[positions[k]] == v) for k, v in parts.items()):
      out.append(name)
  return out


def _single_env_stages(trained: dict) -> set[str]:
  """Stages trained on one env only, on all its tasks (difficulty variants excluded)."""
  return {s for s, envs in trained.items() if len(envs) == 1 and s not in ("easy", "hard", "easy>hard")}


def _held(side: str) -> Callable[[dict, dict], list[str]]:
  def pick(intervals, trained):
    return _family(intervals, "transfer", stage=_single_env_stages(trained), env=side)
  return pick


def _babyai_efficiency(family: str) -> Callable[[dict, dict], list[str]]:
  def pick(intervals, trained):
    stages = {s for s, envs in trained.items() if list(envs) == ["babyai"]}
    return _family(intervals, family, stage=stages, env="babyai")
  return pick


FINDINGS = (
    Finding("easy_lifts_hard", "training on easy tasks lifts hard ones",
            "WebShop hard 17.4 → 77.5 (+60.1); ALFWorld hard 14.5 → 49.4 (+34.9)", +1,
            lambda i, t: [n for n in _family(i, "transfer", stage="easy")
                          if n.endswith("/hard") and "/held_" not in n]),
    Finding("curriculum", "an easy→hard curriculum beats training on hard alone",
            "+2 to +3 points (up to +3.3 on BabyAI)", +1,
            lambda i, t: [n for n in _family(i, "curriculum_gain") if n.endswith("/hard")]),
    Finding("held_in", "held-in gains are large", "ALFWorld (3B) 13.2 → 91.8 (+78.6)", +1, _held("held_in")),
    Finding("held_out", "the held-out average moves a little, upwards", "+3.3 (3B), +3.4 (7B)", +1,
            _held("held_out")),
    Finding("babyai_hurts_webshop", "training on BabyAI drops WebShop", "WebShop 28.6 → 10.3 (−18.3)", -1,
            lambda i, t: _family(i, "transfer", stage="after:babyai", env="webshop")),
    Finding("sequential_downstream", "sequential A → B helps B (vs B alone)",
            "WebShop → TextCraft: TextCraft 80.9 → 82.5 (+1.6)", +1,
            lambda i, t: _family(i, "downstream_gain")),
    Finding("sequential_keeps", "sequential training keeps the earlier env (little forgetting)",
            "WebShop 86.5 → 86.3 after TextCraft (−0.2)", 0,
            lambda i, t: _family(i, "forgetting")),
    Finding("sequence_vs_joint", "a sequence ends close to joint (mixture) training",
            "five-env sequence ≈ joint training, little affected by order", 0,
            lambda i, t: [n for n in _family(i, "seq_minus_mixture") if n.endswith("/mean")]),
    Finding("fewer_turns", "after RL, BabyAI episodes take fewer turns", "10.8 → 4.2 turns (−6.6)", -1,
            _babyai_efficiency("turns_change")),
    Finding("fewer_tokens", "after RL, BabyAI episodes generate fewer tokens", "625 → 161 tokens (−464)", -1,
            _babyai_efficiency("generated_tokens_change")),
)

CONFIRMATION_BIAS = ("confirmation_bias", "confirmation bias is the most common failure mode",
                     "above 10% of failures in every env")


def verdict(sign: int, lo: float, hi: float) -> str:
  """reproduced / contradicted / inconclusive for an interval [lo, hi] (see VERDICT_RULES)."""
  if math.isnan(lo) or math.isnan(hi) or lo == hi == 0.0:
    return "inconclusive"  # [0, 0]: nothing moved in any resample (e.g. every score 0): no evidence
  if sign == 0:
    if -NEAR_ZERO <= lo and hi <= NEAR_ZERO:
      return "reproduced"
    return "contradicted" if lo > NEAR_ZERO or hi < -NEAR_ZERO else "inconclusive"
  lo, hi = (lo, hi) if sign > 0 else (-hi, -lo)
  if lo > 0:
    return "reproduced"
  return "contradicted" if hi < 0 else "inconclusive"


def _trained_on(evals: Sequence[dict]) -> dict[str, list[str]]:
  return {e["stage"]: list(e.get("trained_on") or []) for e in evals}


def confirmation_bias_verdict(failures: dict | None) -> dict:
  """The failure-mode finding from a failures table ({env: {"failures", "labels": {label: %}}})."""
  key, claim, paper = CONFIRMATION_BIAS
  row = {"finding": key, "claim": claim, "paper": paper, "metric": "failures: confirmation_bias %"}
  measured = {env: t for env, t in (failures or {}).items() if t.get("failures")}
  if not measured:
    return dict(row, ours=None, verdict="not measured")
  shares = {env: t["labels"].get("confirmation_bias", 0.0) for env, t in measured.items()}
  top = all(shares[env] >= max(t["labels"].values()) for env, t in measured.items())
  ours = ", ".join(f"{env} {v:.0f}%" for env, v in shares.items())
  ok = top and all(v > 10.0 for v in shares.values())
  return dict(row, ours=ours, verdict="reproduced" if ok else "contradicted")


def verdicts(results: dict) -> list[dict]:
  """Rows {finding, claim, paper, metric, mean, lo, hi, verdict} for every finding (see VERDICT_RULES)."""
  intervals = (results.get("metrics") or {}).get("intervals") or {}
  trained = _trained_on(results.get("evals", []))
  rows = []
  for f in FINDINGS:
    base = {"finding": f.key, "claim": f.claim, "paper": f.paper}
    names = f.ours(intervals, trained)
    if not names:
      rows.append(dict(base, metric=None, mean=None, lo=None, hi=None, verdict="not measured"))
    for name in names:
      m = intervals[name]
      rows.append(dict(base, metric=name, mean=m["mean"], lo=m["lo"], hi=m["hi"],
                       verdict=verdict(f.sign, m["lo"], m["hi"])))
  rows.append(confirmation_bias_verdict(results.get("failures")))
  return rows
