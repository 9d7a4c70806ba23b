"""BabyAI env: expert replay, fuzzing, determinism, splits, and the text view and macros checked against
minigrid's own state (agent pose, direction vectors, front cell, step counter)."""

import re

import numpy as np
import pytest

import envs
from envs import babyai
from tests import env_checks


@pytest.fixture(scope="module")
def env():
  env = envs.make("babyai")
  yield env
  env.close()


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_solves_test_tasks(env, difficulty):
  # 50 tasks per difficulty take ~10 s here, so this stays in the fast suite.
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, f"expert failed on {failed}"


def test_expert_actions_are_listed_as_valid(env):
  # The `choose` action mode can only follow the expert if its actions are among valid_actions.
  for task in env.tasks("test", "hard")[:5]:
    obs = env.reset(task)
    for action in env.expert(task):
      assert action in obs.valid_actions, (task, action)
      obs = env.step(action).observation


def test_expert_is_shorter_than_the_bot(env):
  # The compression into macros is what makes episodes fit max_turns.
  for task in env.tasks("test", "hard")[:5]:
    level, seed = task.split("/")
    primitives, _ = babyai._bot_trajectory(level, int(seed))
    assert len(env.expert(task)) < len(primitives)


def test_splits_are_disjoint_seed_ranges(env):
  for difficulty in ("easy", "hard"):
    train, test = env.tasks("train", difficulty), env.tasks("test", difficulty)
    assert len(test) >= 50 and train
    assert not set(train) & set(test)
    train_seeds = {int(t.split("/")[1]) for t in train}
    test_seeds = {int(t.split("/")[1]) for t in test}
    assert max(train_seeds) < min(test_seeds)
  levels = lambda tasks: {t.split("/")[0] for t in tasks}
  assert levels(env.tasks("test", "easy")) == set(babyai.LEVELS["easy"])
  assert not levels(env.tasks("test", "easy")) & levels(env.tasks("test", "hard"))


def test_view_positions_match_minigrid_geometry(env):
  # Independent reference: minigrid's dir_vec/right_vec and the grid itself.
  checked = 0
  for task in env.tasks("test", "easy")[:10]:
    obs = env.reset(task)
    raw = env.episode.env
    names = {v: k for k, v in env.episode.names.items()}
    line = next(line for line in obs.text.splitlines() if line.startswith("You see:"))
    for name, fwd, right in _parse_view(line):
      pos = np.array(raw.agent_pos) + fwd * np.array(raw.dir_vec) + right * np.array(raw.right_vec)
      assert id(raw.grid.get(*pos)) == names[name], (task, name)
      checked += 1
  assert checked >= 10


def _parse_view(line):
  out = []
  if line == "You see: no objects.":
    return out
  for part in line.removeprefix("You see: ").rstrip(".").split("; "):
    match = re.fullmatch(r"a (?:open |closed |locked )?(\w+ \w+ \d+)(.*)", part)
    fwd = re.search(r"(\d+) steps? forward", match.group(2))
    side = re.search(r"(\d+) steps? (left|right)", match.group(2))
    right = 0 if side is None else int(side.group(1)) * (1 if side.group(2) == "right" else -1)
    out.append((match.group(1), int(fwd.group(1)) if fwd else 0, right))
  return out


def test_go_to_faces_the_object_and_pick_up_carries_it(env):
  env.reset("PickupLoc/1000001")
  raw = env.episode.env
  target = next(a for a in env.last_observation.valid_actions if a.startswith("go to "))
  name = target.removeprefix("go to ")
  pos = env.episode.objects()[name]
  step = env.step(target)
  if not step.done:
    assert tuple(raw.front_pos) == pos
    step = env.step(f"pick up {name}")
    assert env.episode.names[id(raw.carrying)] == name
    assert "You are carrying " + name in step.observation.text or step.done


def test_invalid_action_changes_nothing(env):
  env.reset("GoToLocal/1000002")
  raw = env.episode.env
  before = (tuple(raw.agent_pos), raw.agent_dir, raw.step_count)
  step = env.act("Action: fly to the moon")
  assert step.info["invalid"] and not step.done
  assert (tuple(raw.agent_pos), raw.agent_dir, raw.step_count) == before
  step = env.step("check available actions")
  assert not step.info["invalid"] and "Available actions:" in step.observation.text


def test_success_score_is_minigrid_reward(env):
  task = "GoToObj/1000003"
  env.reset(task)
  for action in env.expert(task):
    step = env.step(action)
  raw = env.episode.env
  expected = 1 - 0.9 * raw.step_count / raw.max_steps  # minigrid's reward formula
  assert step.success and step.done
  assert step.score == pytest.approx(expected) and step.reward == pytest.approx(expected)


def test_fuzz_with_malformed_outputs(env):
  outputs = env_checks.malformed_outputs(seed=0, n=2000)
  invalid = env_checks.fuzz(env, "GoToLocal/1000004", outputs)
  assert invalid >= 0.95 * len(outputs)


def test_same_first_observation_in_two_processes(env):
  a = env_checks.first_observation_in_process("babyai", index=7)
  b = env_checks.first_observation_in_process("babyai", index=7)
  assert a == b
  task, text, valid = a
  obs = env.reset(task)
  assert (obs.text, obs.valid_actions) == (text, valid)


def test_bad_task_ids_raise(env):
  with pytest.raises(ValueError, match="bad babyai task"):
    env.reset("NoSuchLevel/3")
  with pytest.raises(ValueError, match="outside the train"):
    env.reset("GoToLocal/500000")
