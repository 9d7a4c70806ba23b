"""Failure-mode labels on hand-made episode records."""

import json

import pytest

from agentgen_jax.study import failures


def _ep(env="babyai", actions=(), invalid=(), success=False, **transcript):
  t = {"actions": list(actions), "step_invalid": list(invalid) or [False] * len(actions)}
  t.update(transcript)
  return {"env": env, "success": success, "turns": len(actions), "invalid": sum(invalid),
          "transcript": json.dumps(t)}


@pytest.mark.parametrize("episode,label", [
    (_ep(actions=["a"], success=True), None),
    (_ep(actions=["x", "y", "z"], invalid=[True, True, False]), "invalid_action"),
    (_ep(actions=["turn left"] * 3 + ["go"]), "repeated_loop"),
    (_ep(actions=["a", "b", "a", "b", "a", "b"]), "repeated_loop"),
    (_ep("webshop", ["search[red shoes]", "click[b0001]", "click[buy now]"], ended_by_env=True),
     "premature_commitment"),
    (_ep("webshop", ["search[red shoes]", "click[b0001]", "click[red]", "click[buy now]"],
         ended_by_env=True), "wrong_commitment"),
    (_ep("searchqa", ["<answer>paris</answer>"], ended_by_env=True), "premature_commitment"),
    (_ep("searchqa", ["<search>x</search>", "<answer>paris</answer>"], ended_by_env=True),
     "wrong_commitment"),
    (_ep(actions=["a", "b", "c", "d"], out_of_turns=True), "out_of_turns"),
    (_ep(actions=["a"], env_error="worker died"), "env_error"),
    (_ep(actions=["a", "b"]), "other"),
])
def test_rules(episode, label):
  assert failures.label_episode(episode) == label


def test_judge_is_asked_only_for_unlabelled_failures():
  asked = []
  judge = lambda ep: asked.append(ep) or "wrong_commitment"
  assert failures.label_episode(_ep(actions=["a", "b"]), judge) == "wrong_commitment"
  assert failures.label_episode(_ep(actions=["a"] * 3), judge) == "repeated_loop"
  assert len(asked) == 1


def test_judge_with_unknown_label_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown label"):
    failures.label_episode(_ep(actions=["a", "b"]), lambda ep: "lazy")


def test_table_percentages_per_env():
  eps = [_ep(actions=["a"] * 3), _ep(actions=["a", "b"], out_of_turns=True), _ep(actions=["a"], success=True),
         _ep("searchqa", ["<answer>x</answer>"])]
  table = failures.failure_table(eps)
  assert table["babyai"]["episodes"] == 3 and table["babyai"]["failures"] == 2
  assert table["babyai"]["labels"]["repeated_loop"] == pytest.approx(50.0)
  assert table["babyai"]["labels"]["out_of_turns"] == pytest.approx(50.0)
  assert table["searchqa"]["labels"]["premature_commitment"] == pytest.approx(100.0)
