"""Every advantage estimator, reached from a launch config, raises BabyAI training success (slow).

The runs go the way a user's do: launch/configs/quickstart.py (the tiny model, BabyAI easy, choose mode),
command-line style overrides, agentgen_jax.config.resolve, job.run. The SFT warm start (the randomly
initialised model never succeeds, so RL alone gets no reward) runs once; each estimator's workdir starts with
a copy of its checkpoint and of its evaluations, which job.run then restores instead of redoing them, so every
estimator trains from the same params.

What is asserted and why that margin (issue 16: a margin must stand over the noise):
the training success of the sampled policy, 16 episodes per iteration, averaged over the first WINDOW and the
last WINDOW iterations (64 episodes each). For success rates between 0.2 and 0.8 the standard error of that
difference is at most sqrt(2 * 0.25 / 64) = 0.088, so RISE = 0.2 is 2.3 standard errors: a run that did not
learn passes with probability ~1%. Measured before this test (tests/test_rl_learning.py's setup, GRPO, one
seed): 0.21 -> 0.54 over 8 iterations, a rise of 0.33, 3.7 standard errors, so a run that learns as that one
did fails with probability ~7%. Runs are deterministic on the CPU for a seed: a failure is a change of code
(or of seed), not a flake.

Measured once (grpo, seed 0, 2-core CPU at load ~4, 14 min 45 s wall incl. the 10 min SFT warm start):
SFT greedy eval 0.60; training success per iteration 0.19 0.25 0.38 0.44 0.63 0.50 0.63 0.75 0.63 0.31 0.75
0.00 -> first 4 = 0.31, last 4 = 0.42: the test FAILS (rise 0.11 < 0.2) because success fell to 0.0 at the
12th iteration (lr 3e-4 past the quickstart's 8 iterations). Not tuned after the fact; to be investigated.
"""

import json
import os
import shutil

import pytest

from agentgen_jax import config, job
from launch.configs import quickstart

ITERATIONS, WINDOW, RISE = 12, 4, 0.2
ESTIMATORS = [("grpo", "none"), ("rloo", "none"), ("reinforce", "none"),
              ("token_gae", "shared"), ("turn_gae", "shared")]


def _config(estimator: str = "grpo", critic: str = "none", iterations: int = ITERATIONS):
  c = quickstart.get_config()
  c.iterations = iterations
  c.learner.estimator, c.learner.critic = estimator, critic
  c.eval.tasks = 20  # the final greedy evaluation is reported, not asserted: keep it short
  return config.resolve(c)


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
  """A workdir holding the SFT checkpoint and the base and SFT evaluations (job.run with no RL)."""
  workdir = str(tmp_path_factory.mktemp("warm_start"))
  job.run(_config(iterations=0), workdir)
  return workdir


def _from_warm_start(warm: str, workdir: str) -> None:
  shutil.copytree(os.path.join(warm, "sft"), os.path.join(workdir, "sft"))
  for name in ("eval_base.json", "eval_sft.json"):
    shutil.copy(os.path.join(warm, name), workdir)


@pytest.mark.slow
@pytest.mark.parametrize("estimator, critic", ESTIMATORS)
def test_estimator_raises_training_success(estimator, critic, warm_start, tmp_path):
  workdir = str(tmp_path)
  _from_warm_start(warm_start, workdir)
  results = job.run(_config(estimator, critic), workdir)
  train = [p["success"] for p in results["curves"]]
  first, last = sum(train[:WINDOW]) / WINDOW, sum(train[-WINDOW:]) / WINDOW
  evals = {e["stage"]: e["avg_success"] for e in results["evals"] if "stage" in e}
  print(json.dumps({"estimator": estimator, "train": [round(s, 3) for s in train], "first": first,
                    "last": last, "greedy_eval": evals}))
  assert len(train) == ITERATIONS
  assert last >= first + RISE, (estimator, train)


@pytest.mark.parametrize("estimator, critic", ESTIMATORS)
def test_every_estimator_config_can_warm_start_by_sft(estimator, critic):
  """What job.run hands the SFT warm start for the quickstart config with each estimator (fast)."""
  lcfg = config.sft_learner_config(_config(estimator, critic))
  assert lcfg.critic == "none" and lcfg.kl_coef == 0.0
