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
    # ALFWorld: the apple is not in the fridge ("Nothing happens."); the agent looks again and retries.
    (_ep("alfworld", ["Thought: the apple is in the fridge.\nAction: take apple 1 from fridge 1",
                      "Action: open fridge 1", "Action: look",
                      "Thought: it must be there.\nAction: take apple 1 from fridge 1"],
         [True, False, False, True]), "confirmation_bias"),
    # TextCraft: crafting failed for lack of items; fetched them, crafted again fine: a corrected belief.
    (_ep("textcraft", ["craft 1 stick using 2 planks", "get 2 planks", "craft 1 stick using 2 planks",
                       "inventory"], [True, False, False, False]), "other"),
    # WebShop: the same invalid click twice, in different words around it.
    (_ep("webshop", ["search[red shoes]", "Action: click[Size 9]", "click[b0001]", "click[size 9]."],
         [False, True, False, True]), "confirmation_bias"),
    # Two different rejected actions are not a repeated belief.
    (_ep("alfworld", ["take apple 1 from fridge 1", "look", "take apple 1 from table 1", "look", "look"],
         [True, False, True, False, False]), "other"),
    # The same unparseable text twice is an output-format failure, not a belief.
    (_ep("alfworld", ["I think\nwe should", "I think\nwe should", "look"], [True, True, False]),
     "invalid_action"),
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


def _with_messages(ep, messages):
  t = json.loads(ep["transcript"])
  t["messages"] = messages
  return dict(ep, transcript=json.dumps(t))


def test_llm_judge_reads_the_transcript_and_returns_the_label_it_names():
  ep = _with_messages(_ep("sciworld", ["focus on water", "wait"]),
                      [{"role": "system", "content": "rules"}, {"role": "user", "content": "You see water."},
                       {"role": "assistant", "content": "Action: focus on water"}])
  prompts = []
  judge = failures.llm_judge(lambda p: prompts.append(p) or "Label: confirmation_bias (then other)")
  assert failures.label_episode(ep, judge) == "confirmation_bias"
  assert "USER: You see water." in prompts[0] and "ASSISTANT: Action: focus on water" in prompts[0]
  assert "rules" not in prompts[0] and "- confirmation_bias:" in prompts[0]


def test_llm_judge_without_a_known_label_leaves_other():
  judge = failures.llm_judge(lambda p: "no idea")
  assert failures.label_episode(_ep(actions=["a", "b"]), judge) == "other"
