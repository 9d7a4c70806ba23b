"""Seeds through the real train job: two seeds give different evaluations, the same seed the same ones."""

import json
import os

import pytest

from agentgen_jax import config as config_lib
from agentgen_jax import job
from agentgen_jax.study import seeds


def _config(n_seeds):
  c = config_lib.default_config()
  c.model, c.envs, c.train_difficulty = "tiny", ("babyai",), "easy"
  c.pool_size, c.workers = 4, 1
  c.rollout.mode = "choose"  # sampled actions of different lengths: the evals record them
  c.rollout.max_turns, c.rollout.max_episode_tokens = 3, 768
  c.iterations, c.tasks_per_iteration, c.group_size = 1, 2, 2
  c.learner.micro_batch_size, c.learner.mini_batch_size = 2, 4
  c.eval.tasks, c.eval.k, c.eval.difficulty, c.eval.temperature = 3, 2, "easy", 1.0
  c.seed, c.seeds = 0, n_seeds
  return config_lib.resolve(c)


def _without_seed(evals):
  return [{k: v for k, v in e.items() if k != "seed"} for e in evals]


@pytest.mark.slow
def test_two_seeds_differ_and_the_same_seed_repeats(tmp_path):
  merged = seeds.run_seeds(_config(2), str(tmp_path / "two"), job.run, n_boot=50)
  by_seed = {s: [e for e in merged["evals"] if e["seed"] == s] for s in (0, 1)}
  assert _without_seed(by_seed[0]) != _without_seed(by_seed[1])
  again = job.run(_config(1), str(tmp_path / "again"))  # seed 0 alone, in a fresh folder
  assert again["evals"] == _without_seed(by_seed[0])
  stored = json.load(open(tmp_path / "two" / "results.json"))
  assert stored["seeds"] == [0, 1] and os.path.exists(tmp_path / "two" / "seed_1" / "report.md")
  interval = stored["metrics"]["intervals"]["mean_generated_tokens/rl/babyai/easy"]
  assert set(interval["per_seed"]) == {"0", "1"} and interval["lo"] <= interval["mean"] <= interval["hi"]
