"""Study protocols: the stage plans of each protocol and the metrics recomputed from the evals list."""

import dataclasses

import pytest

from agentgen_jax import config
from agentgen_jax.study import protocols


def _config(protocol, **study):
  c = config.default_config()
  c.envs = ("textcraft", "babyai")
  c.iterations = 3
  c.study.protocol = protocol
  c.study.update(study)
  return config.resolve(c)


def test_cross_env_trains_each_env_from_the_base():
  stages, envs, diffs = protocols.plan(_config("cross_env"))
  assert [(s.name, s.parent, s.envs) for s in stages] == [
      ("after:textcraft", "base", ("textcraft",)), ("after:babyai", "base", ("babyai",))]
  assert envs == ["textcraft", "babyai"] and diffs == ["all"]


def test_sequential_chains_stages_and_adds_baselines_with_equal_budget():
  stages, _, _ = protocols.plan(_config("sequential", orders=[["textcraft", "babyai"]]))
  by = {s.name: s for s in stages}
  assert by["after:textcraft>babyai"].parent == "after:textcraft"
  assert by["after:textcraft>babyai"].trained_on == ("textcraft", "babyai")
  assert by["after:babyai"].parent == "base"            # downstream-gain baseline
  assert by["mixture"].iterations == 2 * 3              # same budget as the two sequential stages


def test_sequential_baselines_train_every_env_of_the_order_alone():
  stages, _, _ = protocols.plan(_config("sequential", envs=["alfworld", "textcraft", "babyai"],
                                        orders=[["alfworld", "textcraft", "babyai"]]))
  singles = sorted(s.name for s in stages if s.parent == "base" and len(s.envs) == 1)
  assert singles == ["after:alfworld", "after:babyai", "after:textcraft"]  # the full cross-env matrix
  assert [s.name for s in stages].count("after:alfworld") == 1            # the order's first stage is reused
  assert len(stages) == 3 + 2 + 1                                         # sequence, two baselines, mixture
  easy, _, _ = protocols.plan(dataclasses.replace(_config("sequential"), train_difficulty="easy"))
  assert {s.difficulty for s in easy} == {"easy"}                         # stages train what the config says


def test_difficulty_curriculum_starts_from_the_easy_stage():
  stages, envs, diffs = protocols.plan(_config("difficulty", difficulty_env="textcraft"))
  by = {s.name: s for s in stages}
  assert by["easy>hard"].parent == "easy" and by["easy>hard"].difficulty == "hard"
  assert envs == ["textcraft"] and diffs == ["easy", "hard"]


def test_unknown_protocol_is_a_clear_error():
  with pytest.raises(ValueError, match="valid: difficulty, cross_env, sequential, mixture"):
    _config("zigzag")


def test_sequential_metrics_recomputed_from_evals(tmp_path):
  study = protocols.Study(_config("sequential", orders=[["textcraft", "babyai"]]), str(tmp_path))
  scores = {"base": (0.1, 0.2), "after:textcraft": (0.6, 0.25), "after:textcraft>babyai": (0.4, 0.7),
            "after:babyai": (0.1, 0.5), "mixture": (0.5, 0.6)}
  evals = [{"stage": st, "env": env, "split": "test", "difficulty": "all", "avg_score": v[i],
            "trained_on": []} for st, v in scores.items() for i, env in enumerate(["textcraft", "babyai"])]
  m = study.compute_metrics(evals)
  assert m["forgetting"] == {"textcraft": pytest.approx(0.2)}     # 0.6 -> 0.4
  assert m["bwt"] == pytest.approx(-0.2)
  assert m["fwt"] == pytest.approx(0.05)                            # 0.25 - 0.2
  assert m["downstream_gain"]["textcraft>babyai"]["gain"] == pytest.approx(0.2)   # 0.7 - 0.5
  assert m["mixture_vs_sequential"]["babyai"]["diff"] == pytest.approx(0.1)
