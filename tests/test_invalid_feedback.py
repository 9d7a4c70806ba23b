"""Invalid actions in a row do not grow the observation: each shows its feedback once, before the last real
observation (BabyAI grew 269 -> 619 characters over six invalid actions when feedback was stacked up)."""

import pytest

import envs

# (env, an action the env rejects through its invalid-action feedback)
CASES = [
    ("babyai", "fly to the moon"),
    ("webshop", "fly[moon]"),
    ("searchqa", "no tags at all"),
    ("textcraft", "fly to the moon"),
    pytest.param("twx", "fly to the moon", marks=pytest.mark.java),
    pytest.param("sciworld", "", marks=pytest.mark.java),
]


@pytest.fixture(scope="module")
def made():
  cache = {}
  yield lambda name: cache.setdefault(name, envs.make(name))
  for env in cache.values():
    env.close()


@pytest.mark.parametrize("name,bad", CASES)
def test_six_invalid_actions_in_a_row_show_the_same_observation(made, name, bad):
  env = made(name)
  start = env.reset(env.tasks("test")[0])
  steps = [env.step(bad) for _ in range(6)]
  assert all(s.info["invalid"] and not s.done for s in steps)
  assert len({s.observation.text for s in steps}) == 1, [len(s.observation.text) for s in steps]
  assert steps[0].observation.valid_actions == start.valid_actions


@pytest.mark.parametrize("name,bad", CASES)
def test_unparseable_output_after_invalid_actions_does_not_stack_feedback(made, name, bad):
  env = made(name)
  start = env.reset(env.tasks("test")[0])
  outputs = [env.act("") for _ in range(3)] + [env.step(bad)] + [env.act("") for _ in range(3)]
  assert all(s.info["invalid"] for s in outputs)
  unparseable = {s.observation.text for i, s in enumerate(outputs) if i != 3}
  assert len(unparseable) == 1
  assert len(outputs[-1].observation.text) < len(start.text) + 300


@pytest.mark.parametrize("name", ["babyai", "webshop", "searchqa", "textcraft"])
def test_a_valid_action_after_invalid_ones_plays_as_without_them(made, name):
  env = made(name)
  task = env.tasks("test")[0]
  action = env.expert(task)[0]
  env.reset(task)
  clean = env.step(action)
  env.reset(task)
  for _ in range(4):
    env.act("")
  after = env.step(action)
  assert (after.observation, after.reward, after.done) == (clean.observation, clean.reward, clean.done)
