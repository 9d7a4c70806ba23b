"""The paper-findings table: which of our metrics measure each finding, and the verdict rules."""

import pytest

from agentgen_jax.study import findings


@pytest.mark.parametrize("sign,lo,hi,verdict", [
    (+1, 0.01, 0.3, "reproduced"), (+1, -0.1, 0.3, "inconclusive"), (+1, -0.3, -0.01, "contradicted"),
    (-1, -0.3, -0.01, "reproduced"), (-1, 0.01, 0.3, "contradicted"), (-1, -0.1, 0.1, "inconclusive"),
    (0, -0.04, 0.05, "reproduced"), (0, -0.04, 0.2, "inconclusive"), (0, 0.06, 0.2, "contradicted"),
    (+1, float("nan"), float("nan"), "inconclusive"),
    (0, 0.0, 0.0, "inconclusive"),  # nothing moved at all (every score 0): no evidence of "no change"
])
def test_verdict_rules(sign, lo, hi, verdict):
  assert findings.verdict(sign, lo, hi) == verdict


def _m(mean, lo, hi):
  return {"mean": mean, "lo": lo, "hi": hi, "per_seed": {"0": mean}}


def _by_key(rows):
  out = {}
  for r in rows:
    out.setdefault(r["finding"], []).append(r)
  return out


def test_a_difficulty_study_measures_easy_to_hard_and_the_curriculum_only():
  intervals = {"transfer/easy/babyai/hard": _m(0.2, 0.1, 0.3), "transfer/easy/babyai/easy": _m(0.5, 0.4, 0.6),
               "transfer/easy/held_in/hard": _m(0.2, 0.1, 0.3),
               "curriculum_gain/babyai/hard": _m(0.02, -0.05, 0.09),
               "turns_change/easy>hard/babyai/hard": _m(-2.0, -3.0, -1.0)}
  evals = [{"stage": "easy", "trained_on": ["babyai"]}, {"stage": "easy>hard", "trained_on": ["babyai"]}]
  rows = _by_key(findings.verdicts({"metrics": {"intervals": intervals}, "evals": evals}))
  assert [(r["metric"], r["verdict"]) for r in rows["easy_lifts_hard"]] == [
      ("transfer/easy/babyai/hard", "reproduced")]
  assert rows["curriculum"][0]["verdict"] == "inconclusive"
  assert rows["fewer_turns"][0]["verdict"] == "reproduced"
  # held-in gains are about single-env stages on all tasks, not the difficulty variants
  for key in ("held_in", "held_out", "babyai_hurts_webshop", "sequential_downstream", "sequential_keeps",
              "sequence_vs_joint", "fewer_tokens"):
    assert [r["verdict"] for r in rows[key]] == ["not measured"], key
  assert rows["confirmation_bias"][0]["verdict"] == "not measured"


def test_a_sequential_study_measures_forgetting_and_sequence_vs_mixture():
  intervals = {"forgetting/a>b/a": _m(0.01, -0.02, 0.04), "seq_minus_mixture/a>b/mean": _m(-0.2, -0.3, -0.1),
               "seq_minus_mixture/a>b/a": _m(-0.2, -0.3, -0.1), "downstream_gain/a>b": _m(0.1, 0.05, 0.2),
               "transfer/after:babyai/webshop/all": _m(-0.1, -0.2, 0.01),
               "transfer/after:babyai/held_out/all": _m(0.03, 0.01, 0.05)}
  evals = [{"stage": "after:babyai", "trained_on": ["babyai"]},
           {"stage": "after:a>b", "trained_on": ["a", "b"]}]
  rows = _by_key(findings.verdicts({"metrics": {"intervals": intervals}, "evals": evals}))
  assert rows["sequential_keeps"][0]["verdict"] == "reproduced"
  assert [r["metric"] for r in rows["sequence_vs_joint"]] == ["seq_minus_mixture/a>b/mean"]
  assert rows["sequence_vs_joint"][0]["verdict"] == "contradicted"
  assert rows["sequential_downstream"][0]["verdict"] == "reproduced"
  assert rows["babyai_hurts_webshop"][0]["verdict"] == "inconclusive"
  assert rows["held_out"][0]["verdict"] == "reproduced"


def test_confirmation_bias_needs_the_top_share_above_ten_percent_in_every_env():
  def table(*shares):
    return {f"env{i}": {"episodes": 10, "failures": 5, "labels": {"confirmation_bias": s, "other": 100 - s}}
            for i, s in enumerate(shares)}
  assert findings.confirmation_bias_verdict(table(60, 55))["verdict"] == "reproduced"
  assert findings.confirmation_bias_verdict(table(60, 40))["verdict"] == "contradicted"  # not the top label
  assert findings.confirmation_bias_verdict(table(60, 8))["verdict"] == "contradicted"
  assert findings.confirmation_bias_verdict({})["verdict"] == "not measured"
