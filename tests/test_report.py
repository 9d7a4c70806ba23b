"""The report writer produces results.json, report.md and plots whose numbers come from the evals."""

import json
import os

from agentgen_jax.study import metrics, report


def _eval(stage, env, score, trained):
  return {"stage": stage, "trained_on": trained, "env": env, "split": "test", "difficulty": "all",
          "n_tasks": 5, "k": 2, "avg_success": score, "avg_score": score, "pass_at_k": min(1.0, 2 * score),
          "mean_turns": 4.0, "mean_tokens": 120.0, "invalid_rate": 0.1}


def test_report_files_and_numbers(tmp_path):
  evals = [_eval("base", "a", 0.1, []), _eval("base", "b", 0.2, []),
           _eval("after:a", "a", 0.6, ["a"]), _eval("after:a", "b", 0.25, ["a"]),
           _eval("after:b", "a", 0.4, ["a", "b"]), _eval("after:b", "b", 0.7, ["a", "b"])]
  stages = ["base", "after:a", "after:b"]
  r = metrics.r_matrix(evals, stages, ["a", "b"])
  seq = dict(metrics.sequence_metrics(r, ["a", "b"], ["a", "b"]), order=["a", "b"], envs=["a", "b"],
             stages=stages, r=r)
  results = {"protocol": "sequential", "model": "tiny", "config": {"envs": ["a", "b"]}, "evals": evals,
             "metrics": {"transfer": metrics.transfer(evals), "sequences": [seq]},
             "curves": [{"stage": "after:a", "global_iteration": i, "success": 0.1 * i} for i in range(4)]}
  paths = report.write_report(results, str(tmp_path))
  for p in [paths["results"], paths["report"]] + paths["plots"]:
    assert os.path.getsize(p) > 0
  assert {os.path.basename(p) for p in paths["plots"]} == {
      "transfer_heatmap.png", "training_success.png", "turns_tokens.png", "r_matrix_0.png"}
  md = open(paths["report"]).read()
  assert "BWT = -0.200" in md  # R[2][a] - R[1][a] = 0.4 - 0.6
  assert "forgetting: a +0.200" in md
  assert "| after:a | a | +0.500 | +0.050 |" in md  # held-in 0.6-0.1, held-out 0.25-0.2
  assert json.load(open(paths["results"]))["evals"] == evals


def test_one_difficulty_prefers_all_then_the_first_evaluated():
  easy = [{"stage": "base", "env": "a", "difficulty": d} for d in ("easy", "hard")]
  assert report.one_difficulty(easy) == easy[:1]
  mixed = easy + [{"stage": "base", "env": "a", "difficulty": "all"}]
  assert report.one_difficulty(mixed) == mixed[2:]
  assert report.one_difficulty([{"stage": "s", "env": "a"}]) == [{"stage": "s", "env": "a"}]


def test_seeded_sequential_report_shows_intervals_matrix_and_findings(tmp_path):
  from agentgen_jax.study import seeds
  per_seed = {}
  for seed, shift in ((0, 0.0), (1, 0.1)):
    evals = [_eval("base", "a", 0.1, []), _eval("base", "b", 0.2, []),
             _eval("after:a", "a", 0.6 + shift, ["a"]), _eval("after:a", "b", 0.25, ["a"]),
             _eval("after:a>b", "a", 0.4, ["a", "b"]), _eval("after:a>b", "b", 0.7, ["a", "b"]),
             _eval("mixture", "a", 0.5, ["a", "b"]), _eval("mixture", "b", 0.5, ["a", "b"])]
    per_seed[seed] = {"protocol": "sequential", "model": "tiny", "evals": evals,
                      "config": {"study": {"protocol": "sequential", "orders": [["a", "b"]]}}}
  results = seeds.merge_seeds(per_seed, n_boot=50)
  md = open(report.write_report(results, str(tmp_path))["report"]).read()
  # forgetting of a = max(0.1, 0.6 + shift) − 0.4: 0.2 and 0.3 in the two seeds; no tasks to resample
  assert "| forgetting/a>b/a | +0.250 [+0.200, +0.300] | 0: +0.200, 1: +0.300 |" in md
  assert "| seq_minus_mixture/a>b/mean | +0.050 [+0.050, +0.050] |" in md
  assert "## Sequence a → b" in md and "| after:a | 0.650 | 0.250 |" in md  # R matrix of the seed means
  assert "| a sequence ends close to joint (mixture) training |" in md
  assert os.path.exists(tmp_path / "r_matrix_0.png")
