"""A whole (tiny) sequential study: every stage runs, the report and plots are written, the numbers are
recomputable from the evals, and rerunning the same study after an interruption redoes no finished stage."""

import json
import os

import pytest

from agentgen_jax import config
from agentgen_jax.study import metrics, protocols
from launch.configs import study_sequential_small, study_small


def _config():
  return config.resolve(study_small.smoke(study_sequential_small.get_config()))


@pytest.mark.slow
def test_interrupted_study_finishes_without_redoing_stages(tmp_path):
  workdir = str(tmp_path)
  protocols.run_study(_config(), workdir, only=["after:textcraft"])   # "interrupted" after one stage
  first = os.path.join(workdir, "stages", "after_textcraft", "final.json")
  stamp = os.path.getmtime(first)
  results = protocols.run_study(_config(), workdir)
  assert os.path.getmtime(first) == stamp
  for name in ("results.json", "report.md", "r_matrix_0.png", "transfer_heatmap.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  stored = json.load(open(os.path.join(workdir, "results.json")))
  seq = stored["metrics"]["sequences"][0]
  r = metrics.r_matrix(stored["evals"], seq["stages"], seq["envs"])
  assert r == seq["r"]
  assert metrics.sequence_metrics(r, seq["order"], seq["envs"])["bwt"] == pytest.approx(seq["bwt"])
  assert {e["stage"] for e in results["evals"]} == {"base", "after:textcraft", "after:textcraft>babyai",
                                                     "after:babyai", "mixture"}
