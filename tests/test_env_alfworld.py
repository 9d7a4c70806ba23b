"""ALFWorld env: generated games on the real PDDL engine, official json_2.1.1 loading, expert, fuzzing.

The fast part shares one generated-games cache per session (tmp); the 50-task expert replay is marked slow.
"""

import json
import os

import pytest

import envs
from envs import alfworld_gen as gen
from envs.alfworld import ALFWorldEnv
from tests import env_checks


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  # $ALFWORLD_GEN_CACHE lets repeated runs reuse generated games (generation is deterministic).
  return os.environ.get("ALFWORLD_GEN_CACHE") or str(tmp_path_factory.mktemp("alfworld_cache"))


# Small rooms keep the fast tests fast (the engine's load time grows with objects x receptacles).
FAST = {"easy": ["pick_and_place_simple/FloorPlan202/0", "look_at_obj_in_light/FloorPlan304/0"],
        "hard": ["pick_clean_then_place_in_recep/FloorPlan404/0", "pick_two_obj_and_place/FloorPlan202/0",
                 "pick_heat_then_place_in_recep/FloorPlan3/0"]}
SMALL = FAST["easy"][0]


@pytest.fixture(scope="module")
def env(cache_dir):
  env = envs.make("alfworld", data_dir="", cache_dir=cache_dir)  # "": generated even if ALFWORLD_DATA is set
  yield env
  env.close()


# ---- tasks and splits ----------------------------------------------------------------------------

def test_generated_mode_without_official_data(env):
  assert env.source == "generated"


def test_splits_are_disjoint_and_difficulties_partition_all(env):
  for difficulty in ("easy", "hard", "all"):
    train, test = env.tasks("train", difficulty), env.tasks("test", difficulty)
    assert len(test) >= 50 and len(train) > len(test)
    assert not set(train) & set(test)
    # ALFRED's held-out floor plans (1-6, 201-206, 301-306, 401-406) are the test scenes, and only they.
    test_scenes = {int(t.split("/")[1][len("FloorPlan"):]) for t in test}
    train_scenes = {int(t.split("/")[1][len("FloorPlan"):]) for t in train}
    held_out = {fp for start in (1, 201, 301, 401) for fp in range(start, start + 6)}
    assert test_scenes <= held_out
    assert not test_scenes & train_scenes
  easy, hard = env.tasks("test", "easy"), env.tasks("test", "hard")
  assert sorted(easy + hard) == sorted(env.tasks("test", "all"))
  assert {t.split("/")[0] for t in easy} == {"pick_and_place_simple", "look_at_obj_in_light"}
  assert {t.split("/")[0] for t in hard} == {
      "pick_clean_then_place_in_recep", "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep",
      "pick_two_obj_and_place"}
  # Every task type appears early in the list (the first 50 are what the replay tests use).
  assert {t.split("/")[0] for t in hard[:50]} == {t.split("/")[0] for t in hard}


def test_bad_split_difficulty_and_task_raise_one_line_errors(env):
  for kwargs in ({"split": "dev"}, {"difficulty": "medium"}):
    with pytest.raises(ValueError) as e:
      env.tasks(**kwargs)
    assert "\n" not in str(e.value) and "valid" in str(e.value)
  for task in ("pick_and_place_simple/FloorPlan999/0", "cook_dinner/FloorPlan1/0", "x", 3):
    with pytest.raises(ValueError, match="valid"):
      env.reset(task)
  with pytest.raises(ValueError, match="data_dir"):
    ALFWorldEnv(data_dir="/nonexistent/alfworld")


# ---- generated game files --------------------------------------------------------------------------

def test_generated_game_file_has_the_official_format(env, cache_dir):
  task = FAST["hard"][2]
  path = env.game_file(task)
  assert path.startswith(cache_dir) and path.endswith(os.path.join(task, "game.tw-pddl"))
  with open(path) as f:
    data = json.load(f)
  with open(os.path.join(os.path.dirname(path), "traj_data.json")) as f:
    traj = json.load(f)
  with open(gen.DOMAIN_PATH) as f:
    assert data["pddl_domain"] == f.read()
  assert {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"} <= set(data)
  assert data["solvable"] is True and data["walkthrough"]
  assert traj["task_type"] == "pick_heat_then_place_in_recep" and traj["scene"]["scene_num"] == 3
  params = traj["pddl_params"]
  desc = traj["turk_annotations"]["anns"][0]["task_desc"]
  assert params["object_target"].lower() in desc and params["parent_target"].lower() in desc
  assert "UNKNOWN GOAL" not in data["grammar"] and f"Your task is to: {desc}." in data["grammar"]
  # Ids mangled as in ALFRED's files, goal on the object type and the parent receptacle type.
  assert "(:domain alfred)" in data["pddl_problem"] and "_bar_" in data["pddl_problem"]
  assert f"(objectType ?o {params['object_target']}Type)" in data["pddl_problem"]
  assert f"(receptacleType ?r {params['parent_target']}Type)" in data["pddl_problem"]
  assert "(isHot ?o)" in data["pddl_problem"]


def test_generation_is_deterministic_per_task_id():
  task = "pick_two_obj_and_place/FloorPlan301/2"
  a, b = gen.game_data(task), gen.game_data(task)
  assert a == b
  assert gen.game_data("pick_two_obj_and_place/FloorPlan301/3")[0]["pddl_problem"] != a[0]["pddl_problem"]


# ---- observations, actions, reward -----------------------------------------------------------------

def test_reset_observation_is_alfworld_text_with_admissible_actions(env):
  task = SMALL
  obs = env.reset(task)
  lines = obs.text.split("\n")
  assert len(lines) == 2
  assert lines[0].startswith("You are in the middle of a room. Looking quickly around you, you see a ")
  with open(os.path.join(os.path.dirname(env.game_file(task)), "traj_data.json")) as f:
    desc = json.load(f)["turk_annotations"]["anns"][0]["task_desc"]
  assert lines[1] == f"Your task is to: {desc}."
  assert {"look", "inventory"} <= set(obs.valid_actions)
  # Every receptacle named in the overview can be walked to, and nothing else.
  seen = lines[0].split("you see ", 1)[1].rstrip(".").replace(", and ", ", ").split(", ")
  gotos = sorted(a[len("go to "):] for a in obs.valid_actions if a.startswith("go to "))
  assert sorted(s[len("a "):] for s in seen) == gotos
  assert len(gotos) >= 3


def test_expert_replay_on_a_few_tasks_rewards_only_the_last_step(env):
  for task in FAST["easy"] + FAST["hard"]:
    assert task in env.tasks("test", "easy" if task in FAST["easy"] else "hard")
    env.reset(task)
    plan = env.expert(task)
    assert 2 <= len(plan) <= 15
    for i, action in enumerate(plan):
      assert action in env.last_observation.valid_actions, (task, action)
      step = env.step(action)
      env_checks.check_step(step, env.name)
      last = i == len(plan) - 1
      assert step.done == last and step.success == last and step.reward == float(last), (task, i)
      assert step.score == float(last) and not step.info["invalid"]
  # After the end nothing more is accepted.
  assert env.step("look").info["invalid"]


def test_inadmissible_actions_get_alfworld_feedback_and_count_invalid(env):
  task = SMALL
  env.reset(task)
  step = env.step("fly to the moon")
  assert step.observation.text == "Nothing happens." and step.info["invalid"] and not step.done
  assert step.observation.valid_actions == env.reset(task).valid_actions
  # Case, spacing and a final period do not matter; the older "put X in/on Y" names "move X to Y".
  plan = env.expert(task)
  assert not env.step("  " + plan[0].upper() + ". ").info["invalid"]
  assert not env.step(plan[1]).info["invalid"]
  move = next(a for a in plan if a.startswith("move "))
  obj, recep = move[len("move "):].split(" to ")
  for action in plan[2:]:
    if action == move:
      step = env.step(f"put {obj} in/on {recep}")
    else:
      step = env.step(action)
  assert step.success and step.info["command"] == move


def test_fuzz_2000_malformed_outputs_never_raise(env):
  task = SMALL
  invalid = env_checks.fuzz(env, task, env_checks.malformed_outputs(seed=0, n=2000))
  assert invalid >= 1900


def test_translation_cache_on_disk_is_reused_and_a_corrupt_entry_is_redone(env, tmp_path):
  cache = tmp_path / "cache"
  envs.alfworld._DOWNWARD._memory.clear()  # earlier tests translated SMALL in this process
  first = ALFWorldEnv(data_dir="", cache_dir=str(cache)).reset(SMALL)
  entries = list((cache / f"v{gen.GENERATOR_VERSION}" / "sas").rglob("*.pkl.z"))
  assert len(entries) == 1
  entries[0].write_bytes(b"not a pickle")
  envs.alfworld._DOWNWARD._memory.clear()  # as in a fresh worker process
  again = ALFWorldEnv(data_dir="", cache_dir=str(cache)).reset(SMALL)
  assert again == first and entries[0].stat().st_size > 1000


def test_first_observation_is_the_same_in_two_fresh_processes(env, tmp_path):
  index = env.tasks("test").index(FAST["hard"][1])
  kwargs = [{"data_dir": "", "cache_dir": str(tmp_path / d)} for d in "ab"]
  a = env_checks.first_observation_in_process("alfworld", kwargs[0], index=index)
  b = env_checks.first_observation_in_process("alfworld", kwargs[1], index=index)
  assert a == b and a[1].startswith("You are in the middle of a room.")
  files = [tmp_path / d / f"v{gen.GENERATOR_VERSION}" / a[0] / "game.tw-pddl" for d in "ab"]
  assert files[0].read_bytes() == files[1].read_bytes()


# ---- official json_2.1.1 data ----------------------------------------------------------------------

# A tiny game in the official files' style: ALFRED object ids mangled ("|" -> "_bar_", "-" -> "_minus_"...).
APPLE = "Apple_bar__plus_00_dot_10_bar__plus_00_dot_95_bar__minus_02_dot_40"
COUNTER = "CounterTop_bar__plus_00_dot_69_bar__plus_00_dot_95_bar__minus_02_dot_48"
FRIDGE = "Fridge_bar__minus_02_dot_10_bar__plus_00_dot_00_bar__plus_01_dot_09"
SINK = "Sink_bar__minus_01_dot_90_bar__plus_00_dot_97_bar__minus_01_dot_50_bar_SinkBasin"
MUG = "Mug_bar__plus_00_dot_30_bar__plus_00_dot_95_bar__minus_02_dot_30"  # not in any goal
LOCS = {COUNTER: "loc_bar_3_bar__minus_7_bar_180_bar_30", FRIDGE: "loc_bar__minus_4_bar_4_bar_270_bar_0",
        SINK: "loc_bar__minus_4_bar__minus_6_bar_270_bar_45"}
START = "loc_bar_0_bar_0_bar_0_bar_30"
GOALS = {
    "pick_and_place_simple": ("put a apple in fridge", "FridgeType", ""),
    "pick_cool_then_place_in_recep": ("put a cool apple in countertop", "CounterTopType", "(isCool ?o)"),
}


def _problem(task_type: str, apple_in: str) -> str:
  _, recep_type, extra = GOALS[task_type]
  rtypes = {COUNTER: "CounterTopType", FRIDGE: "FridgeType", SINK: "SinkBasinType"}
  objects = ["agent1 - agent", "AppleType - otype", "MugType - otype", "MicrowaveType - rtype"]
  objects += [f"{t} - rtype" for t in rtypes.values()] + [f"{APPLE} - object", f"{MUG} - object"]
  objects += [f"{r} - receptacle" for r in rtypes] + [f"{loc} - location" for loc in [*LOCS.values(), START]]
  init = [f"(atLocation agent1 {START})", f"(objectType {APPLE} AppleType)", f"(pickupable {APPLE})",
          f"(coolable {APPLE})", f"(cleanable {APPLE})", f"(heatable {APPLE})", f"(openable {FRIDGE})",
          f"(inReceptacle {APPLE} {apple_in})", f"(objectAtLocation {APPLE} {LOCS[apple_in]})",
          f"(objectType {MUG} MugType)", f"(pickupable {MUG})", f"(inReceptacle {MUG} {COUNTER})",
          f"(objectAtLocation {MUG} {LOCS[COUNTER]})"]
  for r, t in rtypes.items():
    init += [f"(receptacleType {r} {t})", f"(receptacleAtLocation {r} {LOCS[r]})",
             f"(canContain {t} AppleType)", f"(canContain {t} MugType)"]
  goal = (f"(:goal (and (exists (?r - receptacle) (exists (?o - object) (and (inReceptacle ?o ?r) "
          f"(objectType ?o AppleType) (receptacleType ?r {recep_type}) {extra})))))")
  return ("(define (problem plan_trial)\n  (:domain alfred)\n  (:objects\n    " + "\n    ".join(objects)
          + "\n  )\n  (:init\n    " + "\n    ".join(init) + "\n  )\n  " + goal + "\n)\n")


def _write_game(root, split, folder, task_type, apple_in, solvable=True):
  path = root / "json_2.1.1" / split / folder / "trial_T20190907_000000_000000"
  path.mkdir(parents=True)
  desc = GOALS[task_type][0]
  with open(gen.DOMAIN_PATH) as f:
    domain = f.read()
  with open(gen.GRAMMAR_PATH) as f:
    grammar = f.read().replace("UNKNOWN GOAL", desc)
  game = {"pddl_domain": domain, "grammar": grammar, "pddl_problem": _problem(task_type, apple_in),
          "solvable": solvable, "walkthrough": ["look"]}
  (path / "game.tw-pddl").write_text(json.dumps(game))
  traj = {"task_type": task_type, "pddl_params": {"object_target": "Apple", "parent_target": "Fridge",
                                                  "toggle_target": "", "mrecep_target": "",
                                                  "object_sliced": False},
          "scene": {"floor_plan": "FloorPlan1", "scene_num": 1},
          "turk_annotations": {"anns": [{"task_desc": desc}]}}
  (path / "traj_data.json").write_text(json.dumps(traj))
  return os.path.relpath(path / "game.tw-pddl", root)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  root = tmp_path_factory.mktemp("alfworld_data")
  easy = _write_game(root, "valid_unseen", "pick_and_place_simple-Apple-None-Fridge-1",
                     "pick_and_place_simple", COUNTER)
  hard = _write_game(root, "valid_unseen", "pick_cool_then_place_in_recep-Apple-None-CounterTop-1",
                     "pick_cool_then_place_in_recep", SINK)
  train = _write_game(root, "train", "pick_and_place_simple-Apple-None-Fridge-2", "pick_and_place_simple",
                      SINK)
  # Skipped as AlfredTWEnv skips them: unsolvable, movable receptacle, sliced.
  _write_game(root, "valid_unseen", "pick_and_place_simple-Apple-None-Fridge-3", "pick_and_place_simple",
              COUNTER, solvable=False)
  _write_game(root, "valid_unseen", "pick_and_place_with_movable_recep-Apple-Bowl-Fridge-1",
              "pick_and_place_simple", COUNTER)
  _write_game(root, "train", "pick_and_place_simple-AppleSliced-None-Fridge-1", "pick_and_place_simple",
              COUNTER)
  return root, {"easy": easy, "hard": hard, "train": train}


def test_official_layout_lists_solvable_games_by_split_and_difficulty(official, cache_dir, monkeypatch):
  root, ids = official
  monkeypatch.setenv("ALFWORLD_DATA", str(root))  # the env var, as the official tools use it
  env = ALFWorldEnv(cache_dir=cache_dir)
  assert env.source == "official"
  assert ALFWorldEnv(data_dir="", cache_dir=cache_dir).source == "generated"
  assert env.tasks("test", "easy") == [ids["easy"]] and env.tasks("test", "hard") == [ids["hard"]]
  assert env.tasks("train") == [ids["train"]]
  assert ids["easy"].startswith(os.path.join("json_2.1.1", "valid_unseen"))
  # Pointing at the json_2.1.1 folder itself works too (ids are then relative to it).
  inner = ALFWorldEnv(data_dir=str(root / "json_2.1.1"), cache_dir=cache_dir)
  assert inner.tasks("test", "easy") == [os.path.relpath(ids["easy"], "json_2.1.1")]
  with pytest.raises(ValueError, match="valid"):
    env.reset("json_2.1.1/../../etc/game.tw-pddl")
  env.close()


def test_official_games_play_and_the_planner_expert_solves_them(official, cache_dir):
  root, ids = official
  env = ALFWorldEnv(data_dir=str(root), cache_dir=cache_dir)
  obs = env.reset(ids["easy"])
  assert obs.text == ("You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
                      "a fridge 1, and a sinkbasin 1.\nYour task is to: put a apple in fridge.")
  step = env.step("go to countertop 1")
  assert step.observation.text == ("You arrive at countertop 1. On the countertop 1, you see a apple 1, "
                                   "and a mug 1.")
  assert "take apple 1 from countertop 1" in step.observation.valid_actions
  # Hand-computed shortest plans (the stored walkthrough ["look"] must not be what the expert returns).
  assert env.expert(ids["easy"]) == ["go to countertop 1", "take apple 1 from countertop 1", "go to fridge 1",
                                     "open fridge 1", "move apple 1 to fridge 1"]
  assert env.expert(ids["hard"]) == ["go to sinkbasin 1", "take apple 1 from sinkbasin 1", "go to fridge 1",
                                     "cool apple 1 with fridge 1", "go to countertop 1",
                                     "move apple 1 to countertop 1"]
  for task in ids.values():
    last = envs.base.replay(env, task, env.expert(task))
    assert last.success and last.reward == 1.0
  # The cool task is not won by placing an apple that was never cooled.
  env.reset(ids["hard"])
  for action in ["go to sinkbasin 1", "take apple 1 from sinkbasin 1", "go to countertop 1",
                 "move apple 1 to countertop 1"]:
    step = env.step(action)
  assert not step.info["invalid"] and not step.success and not step.done
  env.close()


def test_planning_problem_keeps_only_the_goal_objects():
  problem = _problem("pick_and_place_simple", COUNTER)
  reduced = gen.planning_problem(problem)
  assert MUG in problem and MUG not in reduced
  kept = [line for line in problem.split("\n") if MUG not in line]
  assert reduced.split("\n") == kept and APPLE in reduced


# ---- slow: the full replay ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay_succeeds_on_50_test_tasks(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, failed
