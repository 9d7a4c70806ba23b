"""Study metrics against hand-computed matrices."""

import math

import numpy as np
import pytest

from agentgen_jax.study import metrics


def _ep(task, success, score, turns=4, tokens=100, invalid=0, agent_tokens=None):
  ep = {"task": task, "success": success, "score": score, "turns": turns, "n_tokens": tokens,
        "invalid": invalid}
  if agent_tokens is not None:
    ep["loss_mask"] = [1] * agent_tokens + [0] * (tokens - agent_tokens)
  return ep


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
  assert s["mean_generated_tokens"] is None  # records without a loss mask


def test_per_task_rows_and_generated_tokens():
  eps = [_ep("a", True, 1.0, agent_tokens=10), _ep("a", False, 0.5, turns=6, agent_tokens=30),
         _ep("b", False, 0.0, invalid=1, agent_tokens=5)]
  s = metrics.summarize_episodes(eps, k=2)
  assert s["mean_generated_tokens"] == pytest.approx(45 / 3)
  a, b = s["per_task"]
  assert a == {"task": "a", "episodes": 2, "success": 0.5, "score": 0.75, "pass": 1.0, "turns": 5.0,
               "tokens": 100.0, "generated_tokens": 20.0, "invalid": 0.0}
  assert b["task"] == "b" and b["pass"] == 0.0 and b["invalid"] == 1.0


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
  # forgetting a = max(0.1, 0.7, 0.5) - 0.4 = 0.3; b = max(0.2, 0.3, 0.8) - 0.6 = 0.2
  assert m["forgetting"] == pytest.approx({"a": 0.3, "b": 0.2})
  # BWT = ((0.4 - 0.7) + (0.6 - 0.8)) / 2 = -0.25
  assert m["bwt"] == pytest.approx(-0.25)
  # FWT = ((R[1][b] - R[0][b]) + (R[2][c] - R[0][c])) / 2 = ((0.3-0.2) + (0.4-0.3)) / 2 = 0.1
  assert m["fwt"] == pytest.approx(0.1)


def test_forgetting_counts_every_earlier_row_not_only_those_after_training():
  # b peaks at 0.9 after training on a (before b's own stage); the last row has b at 0.5.
  r = [[0.2, 0.6, 0.0],
       [0.8, 0.9, 0.1],
       [0.7, 0.7, 0.2],
       [0.6, 0.5, 0.8]]
  m = metrics.sequence_metrics(r, ["a", "b", "c"], ["a", "b", "c"])
  # a: max(0.2, 0.8, 0.7) - 0.6 = 0.2; b: max(0.6, 0.9, 0.7) - 0.5 = 0.4 (rows from b's stage only: 0.2)
  assert m["forgetting"] == pytest.approx({"a": 0.2, "b": 0.4})
  assert m["mean_forgetting"] == pytest.approx(0.3)
  # BWT = ((0.6 - 0.8) + (0.5 - 0.7)) / 2; FWT = ((0.9 - 0.6) + (0.2 - 0.0)) / 2
  assert m["bwt"] == pytest.approx(-0.2) and m["fwt"] == pytest.approx(0.25)


def test_forgetting_definition_in_docstring_and_definitions_agree():
  assert "max over the earlier rows i < last (the base row included)" in metrics.DEFINITIONS
  assert "max_{i < T} R[i][j] − R[T][j]" in metrics.sequence_metrics.__doc__


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


# ---- per-seed metrics and bootstrap intervals -------------------------------------------------------------

def _cell(stage, env, score, trained=(), difficulty="all", seed=None, turns=4.0, **extra):
  e = {"stage": stage, "env": env, "split": "test", "difficulty": difficulty, "trained_on": list(trained),
       "avg_success": score, "avg_score": score, "mean_turns": turns, **extra}
  if seed is not None:
    e["seed"] = seed
  return e


def test_seed_metrics_of_a_sequence_with_mixture_by_hand():
  s = {("base", "a"): 0.1, ("base", "b"): 0.2, ("after:a", "a"): 0.6, ("after:a", "b"): 0.3,
       ("after:a>b", "a"): 0.4, ("after:a>b", "b"): 0.7, ("after:b", "b"): 0.5, ("after:b", "a"): 0.1,
       ("mixture", "a"): 0.5, ("mixture", "b"): 0.5}
  trained = {"base": (), "after:a": ("a",), "after:a>b": ("a", "b"), "after:b": ("b",), "mixture": ("a", "b")}
  evals = [_cell(st, env, v, trained[st]) for (st, env), v in s.items()]
  m = metrics.seed_metrics(evals, metrics.Shape("sequential", (("a", "b"),)))
  assert m["forgetting/a>b/a"] == pytest.approx(0.6 - 0.4)
  assert m["bwt/a>b"] == pytest.approx(0.4 - 0.6)
  assert m["fwt/a>b"] == pytest.approx(0.3 - 0.2)
  assert m["downstream_gain/a>b"] == pytest.approx(0.7 - 0.5)
  assert m["seq_minus_mixture/a>b/a"] == pytest.approx(-0.1)
  assert m["seq_minus_mixture/a>b/mean"] == pytest.approx((-0.1 + 0.2) / 2)
  assert m["transfer/after:a/held_in/all"] == pytest.approx(0.5)
  assert m["transfer/after:a/b/all"] == pytest.approx(0.1)
  assert m["avg_score/mixture/b/all"] == 0.5


def test_seed_metrics_curriculum_gain_and_turns_change():
  evals = [_cell("base", "babyai", 0.1, (), "hard", turns=9.0),
           _cell("hard", "babyai", 0.3, ["babyai"], "hard"),
           _cell("easy>hard", "babyai", 0.45, ["babyai"], "hard", turns=5.0),
           _cell("easy", "babyai", 0.25, ["babyai"], "hard")]
  m = metrics.seed_metrics(evals, metrics.Shape("difficulty"))
  assert m["curriculum_gain/babyai/hard"] == pytest.approx(0.15)
  assert m["transfer/easy/babyai/hard"] == pytest.approx(0.15)
  assert m["turns_change/easy>hard/babyai/hard"] == pytest.approx(-4.0)


def test_turns_change_is_measured_from_sft_and_only_for_the_stages_after_it():
  """With an SFT warm start, turns change from SFT to each RL stage; base (before SFT) gets no row (it was
  reported as an "sft -> base" change)."""
  evals = [_cell("base", "babyai", 0.0, (), turns=6.0), _cell("sft", "babyai", 0.4, ["babyai"], turns=4.0),
           _cell("rl", "babyai", 0.5, ["babyai"], turns=3.0)]
  m = metrics.seed_metrics(evals, metrics.Shape("train"))
  assert m["turns_change/rl/babyai/all"] == pytest.approx(-1.0)
  assert [k for k in m if k.startswith("turns_change/")] == ["turns_change/rl/babyai/all"]


def _per_task(scores, turns=None):
  turns = turns or [3.0] * len(scores)
  return [{"task": f"t{i}", "episodes": 1, "success": float(s >= 0.5), "score": s, "pass": float(s >= 0.5),
           "turns": t, "tokens": 50.0, "generated_tokens": 10.0, "invalid": 0.0}
          for i, (s, t) in enumerate(zip(scores, turns))]


def _seeded_evals(rng):
  """2 seeds x stages (base, after:a) x envs (a: 4 tasks, b: 3 tasks), per-task scores drawn at random."""
  evals, raw = [], {}
  for seed in (3, 8):
    for env, n in (("a", 4), ("b", 3)):
      for stage, trained in (("base", []), ("after:a", ["a"])):
        scores = np.round(rng.uniform(size=n), 2)
        raw[(seed, stage, env)] = scores
        rows = _per_task(list(scores))
        evals.append(_cell(stage, env, float(np.mean(scores)), trained, seed=seed, per_task=rows,
                           avg_success=float(np.mean([r["success"] for r in rows]))))
  return evals, raw


def test_bootstrap_interval_matches_an_independent_implementation():
  evals, raw = _seeded_evals(np.random.default_rng(1))
  out = metrics.bootstrap(evals, metrics.Shape("cross_env"), n_boot=300, rng_seed=5)
  # By hand: draw 2 seeds; per drawn seed, task indices for groups (a,test,all) then (b,test,all).
  rng = np.random.default_rng(5)
  reps_a, reps_out = [], []
  for _ in range(300):
    va, vo = [], []
    for i in rng.integers(0, 2, 2):
      seed = (3, 8)[i]
      ia, ib = rng.integers(0, 4, 4), rng.integers(0, 3, 3)
      va.append(raw[(seed, "after:a", "a")][ia].mean() - raw[(seed, "base", "a")][ia].mean())
      vo.append(raw[(seed, "after:a", "b")][ib].mean() - raw[(seed, "base", "b")][ib].mean())
    reps_a.append(np.mean(va))
    reps_out.append(np.mean(vo))
  for name, reps, env in (("transfer/after:a/a/all", reps_a, "a"), ("transfer/after:a/held_out/all", reps_out,
                                                                      "b")):
    lo, hi = np.percentile(reps, [2.5, 97.5])
    per_seed = {s: raw[(s, "after:a", env)].mean() - raw[(s, "base", env)].mean() for s in (3, 8)}
    assert out[name]["lo"] == pytest.approx(lo, abs=1e-12) and out[name]["hi"] == pytest.approx(hi, abs=1e-12)
    assert out[name]["per_seed"] == pytest.approx({str(s): v for s, v in per_seed.items()})
    assert out[name]["mean"] == pytest.approx(np.mean(list(per_seed.values())))
    assert out[name]["lo"] <= out[name]["mean"] <= out[name]["hi"]


def test_bootstrap_is_reproducible_and_depends_on_the_rng_seed():
  evals, _ = _seeded_evals(np.random.default_rng(2))
  shape = metrics.Shape("cross_env")
  a = metrics.bootstrap(evals, shape, n_boot=50, rng_seed=0)
  assert a == metrics.bootstrap(evals, shape, n_boot=50, rng_seed=0)
  assert a != metrics.bootstrap(evals, shape, n_boot=50, rng_seed=1)


def test_bootstrap_without_per_task_rows_resamples_seeds_only():
  evals = [_cell("base", "a", 0.0, seed=s) for s in (0, 1)] + [_cell("rl", "a", v, ["a"], seed=s)
                                                             for s, v in ((0, 0.2), (1, 0.6))]
  out = metrics.bootstrap(evals, metrics.Shape("train"), n_boot=200)["transfer/rl/a/all"]
  assert out["mean"] == pytest.approx(0.4)
  assert out["lo"] == pytest.approx(0.2) and out["hi"] == pytest.approx(0.6)  # draws: {0,0}, {0,1}, {1,1}
  one = metrics.bootstrap(evals[:1] + evals[2:3], metrics.Shape("train"), n_boot=20)["transfer/rl/a/all"]
  assert one["lo"] == one["hi"] == one["mean"] == pytest.approx(0.2)


def test_bootstrap_refuses_stages_evaluated_on_different_tasks():
  rows = _per_task([0.1, 0.2])
  other = [dict(r, task="x" + r["task"]) for r in rows]
  evals = [_cell("base", "a", 0.15, per_task=rows), _cell("rl", "a", 0.15, ["a"], per_task=other)]
  with pytest.raises(ValueError, match="paired resampling needs one task list"):
    metrics.bootstrap(evals, metrics.Shape("train"), n_boot=2)


def test_mean_over_seeds_averages_cells():
  evals = [_cell("base", "a", 0.2, seed=0, per_task=[]), _cell("base", "a", 0.4, seed=1)]
  (m,) = metrics.mean_over_seeds(evals)
  assert m["avg_score"] == pytest.approx(0.3) and m["n_seeds"] == 2
  assert "per_task" not in m and "seed" not in m


def test_study_metrics_recomputable_from_results_json(tmp_path):
  import json
  evals, _ = _seeded_evals(np.random.default_rng(3))
  results = {"protocol": "cross_env", "config": {"study": {"protocol": "cross_env"}}, "evals": evals}
  path = tmp_path / "results.json"
  path.write_text(json.dumps(dict(results, metrics=metrics.study_metrics(results, n_boot=40))))
  stored = json.loads(path.read_text())
  assert stored["metrics"] == metrics.study_metrics(stored, n_boot=40)
  assert stored["metrics"]["bootstrap"]["seeds"] == [3, 8]
