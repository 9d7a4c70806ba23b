"""Study metrics against hand-computed matrices."""

import math

import pytest

from agentgen_jax.study import metrics


def _ep(task, success, score, turns=4, tokens=100, invalid=0):
  return {"task": task, "success": success, "score": score, "turns": turns, "n_tokens": tokens,
          "invalid": invalid}


def test_avg_and_pass_at_k_by_hand():
  # 3 tasks x k=2: task a solved once, b never, c twice.
  eps = [_ep("a", True, 1.0), _ep("a", False, 0.5), _ep("b", False, 0.0, invalid=2),
         _ep("b", False, 0.2, invalid=2), _ep("c", True, 1.0, turns=2), _ep("c", True, 1.0, turns=2)]
  s = metrics.summarize_episodes(eps, k=2)
  assert s["n_tasks"] == 3 and s["n_episodes"] == 6
  assert s["avg_success"] == pytest.approx(3 / 6)
  assert s["avg_score"] == pytest.approx((1 + 0.5 + 0 + 0.2 + 1 + 1) / 6)
  assert s["pass_at_k"] == pytest.approx(2 / 3)
  assert s["mean_turns"] == pytest.approx(20 / 6)
  assert s["invalid_rate"] == pytest.approx(4 / 20)


def _evals(rows, stages, envs, trained):
  return [{"stage": s, "env": e, "split": "test", "avg_score": rows[i][j], "trained_on": trained[i]}
          for i, s in enumerate(stages) for j, e in enumerate(envs)]


def test_transfer_held_in_and_held_out():
  envs = ["webshop", "babyai", "textcraft"]
  evals = _evals([[0.2, 0.4, 0.1], [0.6, 0.5, 0.0]], ["base", "train:webshop"], envs,
                 [[], ["webshop"]])
  t = metrics.transfer(evals)["train:webshop"]
  assert t["delta"] == pytest.approx({"webshop": 0.4, "babyai": 0.1, "textcraft": -0.1})
  assert t["held_in"] == pytest.approx(0.4)
  assert t["held_out"] == pytest.approx(0.0)


def test_sequence_with_forgetting_by_hand():
  envs = ["a", "b", "c"]
  # rows: base, after a, after b, after c
  r = [[0.1, 0.2, 0.3],
       [0.7, 0.3, 0.3],
       [0.5, 0.8, 0.4],
       [0.4, 0.6, 0.9]]
  m = metrics.sequence_metrics(r, ["a", "b", "c"], envs)
  # forgetting a = max(0.7, 0.5) - 0.4 = 0.3; b = max(0.8) - 0.6 = 0.2
  assert m["forgetting"] == pytest.approx({"a": 0.3, "b": 0.2})
  # BWT = ((0.4 - 0.7) + (0.6 - 0.8)) / 2 = -0.25
  assert m["bwt"] == pytest.approx(-0.25)
  # FWT = ((R[1][b] - R[0][b]) + (R[2][c] - R[0][c])) / 2 = ((0.3-0.2) + (0.4-0.3)) / 2 = 0.1
  assert m["fwt"] == pytest.approx(0.1)


def test_sequence_without_forgetting_is_zero():
  r = [[0.0, 0.0], [0.5, 0.1], [0.6, 0.7]]
  m = metrics.sequence_metrics(r, ["a", "b"], ["a", "b"])
  assert m["forgetting"] == {"a": pytest.approx(-0.1)} and m["bwt"] == pytest.approx(0.1)


def test_r_matrix_from_evals_and_missing_cells_are_nan():
  evals = _evals([[0.1, 0.2], [0.3, 0.4]], ["base", "after:a"], ["a", "b"], [[], ["a"]])
  r = metrics.r_matrix(evals, ["base", "after:a", "after:b"], ["a", "b"])
  assert r[:2] == [[0.1, 0.2], [0.3, 0.4]] and all(math.isnan(x) for x in r[2])


def test_wrong_r_shape_is_a_clear_error():
  with pytest.raises(ValueError, match="expected base"):
    metrics.sequence_metrics([[0.0]], ["a", "b"], ["a", "b"])
