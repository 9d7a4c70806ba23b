"""The difficulty and mixture protocols run end to end at smoke sizes: every stage is trained and evaluated
on the planned splits, and the report holds the protocol's table."""

import json
import os

import pytest

from agentgen_jax import config
from agentgen_jax.study import protocols
from launch.configs import study_difficulty_small, study_mixture_small, study_small


@pytest.mark.slow
def test_difficulty_protocol_end_to_end(tmp_path):
  results = protocols.run_study(config.resolve(study_small.smoke(study_difficulty_small.get_config())),
                                str(tmp_path))
  cells = {(e["stage"], e["difficulty"]) for e in results["evals"]}
  stages = ("base", "easy", "hard", "mixed", "easy>hard")
  assert cells == {(s, d) for s in stages for d in ("easy", "hard")}
  assert set(results["metrics"]["difficulty"]) == set(stages)
  # The curriculum starts from the easy stage's params, not from the base.
  easy_hard = json.load(open(os.path.join(str(tmp_path), "stages", "easy_hard", "final.json")))
  assert easy_hard["stage"] == "easy>hard"
  assert "## Difficulty transfer" in open(os.path.join(str(tmp_path), "report.md")).read()


@pytest.mark.slow
def test_mixture_protocol_end_to_end(tmp_path):
  c = study_small.smoke(study_mixture_small.get_config())
  c.iterations, c.tasks_per_iteration = 2, 4  # 8 weighted draws of the env: both envs come up
  results = protocols.run_study(config.resolve(c), str(tmp_path))
  assert {(e["stage"], e["env"]) for e in results["evals"]} == {
      (s, env) for s in ("base", "mixture") for env in ("textcraft", "babyai")}
  curves = json.load(open(os.path.join(str(tmp_path), "stages", "mixture", "final.json")))["curves"]
  assert len(curves) == 2
  trained = {json.loads(line)["env"] for it in range(2) for line in
             open(os.path.join(str(tmp_path), "stages", "mixture", "trajectories", f"train_{it:05d}.jsonl"))}
  assert trained == {"textcraft", "babyai"}  # both envs sampled in the mixture's iterations
  transfer = results["metrics"]["transfer"]["mixture"]
  assert set(transfer["delta"]) == {"textcraft", "babyai"}
