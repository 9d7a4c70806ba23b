"""The seeds runner: one resumable run per seed in workdir/seed_<s>/, merged into one results.json with
per-seed evals, interval metrics and a report."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from agentgen_jax import agent as agent_lib
from agentgen_jax.study import metrics, seeds


def _train_like_run(c, workdir):
  """A deterministic stand-in for a protocol run at the results level: per-task outcomes drawn from
  config.seed, written to workdir/results.json as the protocols do."""
  rng = np.random.default_rng(c.seed)
  evals = []
  for stage, trained in (("base", []), ("rl", ["babyai"])):
    scores = rng.uniform(size=5) * (0.3 if stage == "base" else 1.0)
    rows = [{"task": f"t{i}", "episodes": 1, "success": float(s > 0.5), "score": float(s),
             "pass": float(s > 0.5), "turns": 4.0, "tokens": 80.0, "generated_tokens": 12.0, "invalid": 0.0}
            for i, s in enumerate(scores)]
    evals.append({"stage": stage, "trained_on": trained, "env": "babyai", "split": "test",
                  "difficulty": "all", "n_tasks": 5, "k": 1,
                  "avg_success": float(np.mean([r["success"] for r in rows])),
                  "avg_score": float(scores.mean()),
                  "mean_turns": 4.0, "mean_tokens": 80.0, "mean_generated_tokens": 12.0, "per_task": rows})
  results = {"protocol": "train", "model": "tiny", "config": c.to_dict(), "evals": evals,
             "failures": {"babyai": {"episodes": 5, "failures": 2,
                                     "labels": {"confirmation_bias": 50.0, "other": 50.0}}}}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)
  return results


def _config(n):
  return ml_collections.ConfigDict({"seed": 10, "seeds": n, "model": "tiny"})


def test_seed_list_and_configs():
  assert seeds.seed_list(_config(3)) == [10, 11, 12]
  assert seeds.seed_list(ml_collections.ConfigDict({"seed": 0})) == [0]
  sc = seeds.seed_config(_config(3), 12)
  assert sc.seed == 12 and sc.seeds == 1
  with pytest.raises(ValueError, match="seeds=0"):
    seeds.seed_list(_config(0))


def test_seed_config_of_a_frozen_dataclass():
  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class Run:
    seed: int = 0
    seeds: int = 1

  assert seeds.seed_list(Run(4, 2)) == [4, 5]
  assert seeds.seed_config(Run(4, 2), 5) == Run(5, 1)


def test_run_seeds_writes_one_folder_per_seed_and_a_merged_report(tmp_path):
  results = seeds.run_seeds(_config(2), str(tmp_path), _train_like_run, n_boot=50)
  assert sorted(os.listdir(tmp_path / "seed_10")) == ["results.json"]
  assert os.path.exists(tmp_path / "seed_11" / "results.json")
  assert [e["seed"] for e in results["evals"]] == [10, 10, 11, 11]
  stored = json.load(open(tmp_path / "results.json"))
  assert stored["seeds"] == [10, 11] and stored["config"]["seeds"] == 2
  t = stored["metrics"]["intervals"]["transfer/rl/babyai/all"]
  assert set(t["per_seed"]) == {"10", "11"} and t["per_seed"]["10"] != t["per_seed"]["11"]
  assert t["lo"] <= t["mean"] <= t["hi"]
  recomputed = metrics.study_metrics(stored, n_boot=50)  # recomputable from results.json
  assert {k: stored["metrics"][k] for k in recomputed} == recomputed
  assert stored["failures"]["babyai"]["failures"] == 4
  assert stored["failures"]["babyai"]["labels"]["confirmation_bias"] == pytest.approx(50.0)
  md = open(tmp_path / "report.md").read()
  assert "## Scores: mean [95% interval] over 2 seed(s) [10, 11]" in md
  assert "## The paper's findings at this scale" in md


def test_merge_from_disk_equals_the_merge_of_the_runs(tmp_path):
  merged = seeds.run_seeds(_config(2), str(tmp_path), _train_like_run, n_boot=20)
  from_disk = seeds.merge_from_disk(str(tmp_path), n_boot=20)
  assert from_disk["metrics"] == json.loads(json.dumps(merged["metrics"]))


def test_pooled_failure_tables_weight_by_failures():
  a = {"x": {"episodes": 10, "failures": 4, "labels": {"confirmation_bias": 25.0, "other": 75.0}}}
  b = {"x": {"episodes": 10, "failures": 1, "labels": {"confirmation_bias": 100.0, "other": 0.0}}}
  pooled = seeds.pool_failure_tables([a, b])["x"]
  assert pooled["episodes"] == 20 and pooled["failures"] == 5
  assert pooled["labels"]["confirmation_bias"] == pytest.approx(40.0)


def test_one_seed_runs_in_the_workdir_itself_and_gains_intervals(tmp_path):
  results = seeds.run_seeds(_config(1), str(tmp_path), _train_like_run, n_boot=20)
  assert not any(name.startswith("seed_") for name in os.listdir(tmp_path))
  assert [e["seed"] for e in results["evals"]] == [10, 10]
  stored = json.load(open(tmp_path / "results.json"))
  assert stored["metrics"]["bootstrap"]["seeds"] == [10]
  assert set(stored["metrics"]["intervals"]["transfer/rl/babyai/all"]["per_seed"]) == {"10"}
  assert "## Evaluations\n" in open(tmp_path / "report.md").read()


def test_the_random_init_of_a_preset_follows_the_run_seed():
  """config.seed reaches the tiny model's init (a study's seeds differ from the first step), and repeats."""
  def leaves(seed):
    return [np.asarray(x) for x in jax.tree.leaves(agent_lib.load("tiny", seed=seed).params)]

  a, b, a2 = leaves(0), leaves(1), leaves(0)
  assert all(np.array_equal(x, y) for x, y in zip(a, a2))
  assert sum(not np.array_equal(x, y) for x, y in zip(a, b)) >= len(a) // 2
