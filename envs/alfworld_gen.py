"""ALFWorld-style game files generated from the `alfworld` package's 120 floor plans and object constants.

A task id "<task_type>/<FloorPlanN>/<index>" deterministically becomes a PDDL problem for the package's
alfred.pddl domain, written as game.tw-pddl + traj_data.json in the layout of the official json_2.1.1 data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import textwrap
from typing import Any

import alfworld
import alfworld.gen.constants as C
import alfworld.gen.goal_library as goal_library
import numpy as np

# Bumped whenever the generated problems change, so that stale cached game files are never reused.
GENERATOR_VERSION = "1"

ALFWORLD_DIR = os.path.dirname(alfworld.__file__)
DOMAIN_PATH = os.path.join(ALFWORLD_DIR, "data", "alfred.pddl")
GRAMMAR_PATH = os.path.join(ALFWORLD_DIR, "data", "alfred.twl2")
LAYOUT_DIR = os.path.join(ALFWORLD_DIR, "gen", "layouts")

TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
EASY_TYPES = ("pick_and_place_simple", "look_at_obj_in_light")
HARD_TYPES = tuple(t for t in TASK_TYPES if t not in EASY_TYPES)

# ALFRED's own seen/unseen scene split: floor plans 1-6, 201-206, 301-306, 401-406 are held out for test.
TRAIN_SCENES = tuple(C.TRAIN_SCENE_NUMBERS)
TEST_SCENES = tuple(C.TEST_SCENE_NUMBERS)

STATIC_RECEPTACLES = frozenset(C.RECEPTACLES) - frozenset(C.MOVABLE_RECEPTACLES)
# Object types that can be placed somewhere (sliced variants are excluded, as in ALFWorld's text games).
PLACEABLE = frozenset(o for objs in C.VAL_RECEPTACLE_OBJECTS.values() for o in objs
                      if not o.endswith("Sliced"))
LAMPS = ("DeskLamp", "FloorLamp")
LAMP_HOLDERS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "DiningTable", "TVStand", "Cart")
OTYPES = sorted((set(C.OBJECTS) | set(C.MOVABLE_RECEPTACLES)) - STATIC_RECEPTACLES)
RTYPES = sorted(STATIC_RECEPTACLES)
# The receptacle a state-change task needs, and the objects it applies to.
_TOOL = {"pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
         "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
         "pick_cool_then_place_in_recep": ("Fridge", "Coolable")}


def mangle(name: str) -> str:
  """ALFRED object id -> PDDL identifier, with the substitutions of the official data ('|' -> '_bar_')."""
  for char, word in (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
    name = name.replace(char, word)
  return name


def _recep_type(object_id: str) -> str:
  parts = object_id.split("|")
  return parts[-1] if len(parts) > 4 else parts[0]  # "Sink|x|y|z|SinkBasin" is the basin


@functools.lru_cache(maxsize=None)
def scene(floor_plan: int) -> dict[str, Any]:
  """The static content of a floor plan: receptacle ids with agent poses, object types, navigable points."""
  base = os.path.join(LAYOUT_DIR, f"FloorPlan{floor_plan}")
  with open(base + "-objects.json") as f:
    types = set(json.load(f))
  with open(base + "-openable.json") as f:
    poses = {k: v for k, v in json.load(f).items() if _recep_type(k) in STATIC_RECEPTACLES}
  points = np.load(base + "-layout.npy")
  recep_types = {_recep_type(k) for k in poses} | (types & STATIC_RECEPTACLES)
  objects = sorted(t for t in types if t in PLACEABLE and _holders(t, recep_types))
  lamps = sorted(t for t in types if t in LAMPS) if set(LAMP_HOLDERS) & recep_types else []
  return {"poses": poses, "recep_types": sorted(recep_types), "objects": objects, "lamps": lamps,
          "points": points.tolist(), "missing": sorted((types & STATIC_RECEPTACLES) -
                                                       {_recep_type(k) for k in poses})}


def _holders(obj: str, recep_types) -> list[str]:
  return sorted(r for r in recep_types if obj in C.VAL_RECEPTACLE_OBJECTS.get(r, ()))


@functools.lru_cache(maxsize=None)
def goal_candidates(task_type: str, floor_plan: int) -> list[tuple[str, str, str]]:
  """(object, parent receptacle, toggle) choices that make a solvable, non-trivial task in the scene."""
  info = scene(floor_plan)
  recep_types = info["recep_types"]
  out = []
  for obj in info["objects"]:
    holders = _holders(obj, recep_types)
    if task_type == "look_at_obj_in_light":
      if obj in C.MOVABLE_RECEPTACLES:  # ALFRED looks at small items, not dishes
        continue
      out += [(obj, "", lamp) for lamp in info["lamps"]]
      continue
    if task_type in _TOOL:
      tool, action = _TOOL[task_type]
      if tool not in recep_types or obj not in C.VAL_ACTION_OBJECTS[action]:
        continue
      holders = [r for r in holders if r != tool]
    for parent in holders:
      # The object must start somewhere else than the goal receptacle type.
      if any(r != parent for r in _holders(obj, recep_types)):
        out.append((obj, parent, ""))
  return out


def task_ids(task_type: str, floor_plans, per_scene: int) -> list[str]:
  return [f"{task_type}/FloorPlan{fp}/{i}" for i in range(per_scene) for fp in floor_plans
          if goal_candidates(task_type, fp)]


def parse_task(task: str) -> tuple[str, int, int]:
  """'<task_type>/FloorPlan<N>/<index>' -> (task_type, N, index); ValueError naming the bad id."""
  match = re.fullmatch(r"([a-z_]+)/FloorPlan(\d+)/(\d+)", task) if isinstance(task, str) else None
  if not match or match.group(1) not in TASK_TYPES or not os.path.exists(
      os.path.join(LAYOUT_DIR, f"FloorPlan{match.group(2)}-objects.json")):
    raise ValueError(f"unknown alfworld task {task!r}; valid: '<task_type>/FloorPlan<N>/<index>' with "
                     f"task_type in {', '.join(TASK_TYPES)} and N a floor plan of the alfworld package")
  return match.group(1), int(match.group(2)), int(match.group(3))


def _rng(*parts) -> random.Random:
  digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
  return random.Random(int.from_bytes(digest[:8], "little"))


def _coord(rng: random.Random) -> str:
  return "|".join(f"{rng.uniform(-3.0, 3.0):+06.2f}" for _ in range(3))


def _loc(pose, used: set[str]) -> str:
  x, z, rot, hor = round(pose[0] / 0.25), round(pose[1] / 0.25), int(pose[2]) % 360, int(pose[3])
  loc = f"loc|{x}|{z}|{rot}|{hor}"
  while loc in used:  # two receptacles at one pose would merge into one "go to" command
    hor += 15
    loc = f"loc|{x}|{z}|{rot}|{hor}"
  used.add(loc)
  return loc


def build_problem(task: str, attempt: int = 0) -> tuple[str, dict[str, Any]]:
  """The PDDL problem text of `task` and its traj_data (the fields of ALFRED's traj_data.json we use)."""
  task_type, floor_plan, index = parse_task(task)
  info = scene(floor_plan)
  rng = _rng(GENERATOR_VERSION, task, attempt)
  candidates = goal_candidates(task_type, floor_plan)
  if not candidates:
    raise ValueError(f"task {task!r}: floor plan {floor_plan} has no objects for {task_type}")
  obj, parent, toggle = rng.choice(candidates)

  used: set[str] = set()
  receptacles: dict[str, tuple[str, str]] = {}  # id -> (type, location)
  for rid in sorted(info["poses"]):
    receptacles[rid] = (_recep_type(rid), _loc(info["poses"][rid], used))
  points = info["points"]
  for rtype in info["missing"]:
    for _ in range(rng.randint(2, 4) if rtype == "StoveBurner" else 1):
      x, z = rng.choice(points)
      rid = f"{rtype}|{_coord(rng)}"
      receptacles[rid] = (rtype, _loc([x, z, rng.choice([0, 90, 180, 270]), 30], used))
  x, z = rng.choice(points)
  agent_loc = _loc([x, z, rng.choice([0, 90, 180, 270]), 30], used)
  by_type: dict[str, list[str]] = {}
  for rid, (rtype, _) in receptacles.items():
    by_type.setdefault(rtype, []).append(rid)

  # Objects: every placeable type of the scene, 1-3 instances (mostly 1: the engine's load and step times
  # grow with the number of objects), each in a random receptacle that can hold it.
  # Instances of the target never start in the goal receptacle type (the task would be solved already).
  objects: dict[str, tuple[str, str]] = {}  # id -> (type, receptacle id)
  for otype in info["objects"]:
    count = rng.choice((1, 1, 1, 2, 2, 3))
    if otype == obj and task_type == "pick_two_obj_and_place":
      count = rng.randint(2, 3)
    holders = _holders(otype, by_type)
    if otype == obj:
      holders = [r for r in holders if r != parent]
    for _ in range(count):
      rid = rng.choice(by_type[rng.choice(holders)])
      objects[f"{otype}|{_coord(rng)}"] = (otype, rid)
  if toggle:
    holders = [r for r in LAMP_HOLDERS if r in by_type]
    objects[f"{toggle}|{_coord(rng)}"] = (toggle, rng.choice(by_type[rng.choice(holders)]))

  problem = _problem_text(task, receptacles, objects, agent_loc, task_type, obj, parent, toggle)
  template = rng.choice(goal_library.gdict[task_type]["templates"])
  desc = template.format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower(), mrecep="")
  traj_data = {
      "task_id": task, "task_type": task_type,
      "pddl_params": {"object_target": obj, "parent_target": parent, "toggle_target": toggle,
                      "mrecep_target": "", "object_sliced": False},
      "scene": {"floor_plan": f"FloorPlan{floor_plan}", "scene_num": floor_plan, "random_seed": index},
      "turk_annotations": {"anns": [{"task_desc": desc}]},
      "generator": {"name": "agentgen_jax.envs.alfworld_gen", "version": GENERATOR_VERSION,
                    "attempt": attempt},
  }
  return problem, traj_data


def _problem_text(task, receptacles, objects, agent_loc, task_type, obj, parent, toggle) -> str:
  m = mangle
  locations = sorted({loc for _, loc in receptacles.values()} | {agent_loc})
  decl = (["agent1 - agent"] + [f"{t}Type - otype" for t in OTYPES] + [f"{t}Type - rtype" for t in RTYPES]
          + [f"{m(o)} - object" for o in sorted(objects)]
          + [f"{m(r)} - receptacle" for r in sorted(receptacles)]
          + [f"{m(loc)} - location" for loc in locations])
  present_o = sorted({t for t, _ in objects.values()})
  present_r = sorted({t for t, _ in receptacles.values()})
  init = [f"(atLocation agent1 {m(agent_loc)})"]
  init += [f"(canContain {r}Type {o}Type)" for r in present_r for o in present_o
           if o in C.VAL_RECEPTACLE_OBJECTS.get(r, ())]
  for rid, (rtype, loc) in sorted(receptacles.items()):
    init += [f"(receptacleType {m(rid)} {rtype}Type)", f"(receptacleAtLocation {m(rid)} {m(loc)})"]
    if rtype in C.OPENABLE_CLASS_SET:
      init.append(f"(openable {m(rid)})")
  for oid, (otype, rid) in sorted(objects.items()):
    init += [f"(objectType {m(oid)} {otype}Type)", f"(inReceptacle {m(oid)} {m(rid)})",
             f"(objectAtLocation {m(oid)} {m(receptacles[rid][1])})"]
    if otype in LAMPS:
      init.append(f"(toggleable {m(oid)})")
      continue
    init.append(f"(pickupable {m(oid)})")
    if otype in C.MOVABLE_RECEPTACLES:
      init.append(f"(isReceptacleObject {m(oid)})")
    for action, predicate in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable"),
                              ("Sliceable", "sliceable")):
      if otype in C.VAL_ACTION_OBJECTS[action]:
        init.append(f"({predicate} {m(oid)})")
  # goal_library writes '#' for PDDL's type dash; its text ends with the ')' that closes the problem.
  goal = goal_library.gdict[task_type]["pddl"].format(obj=obj, recep=parent, toggle=toggle, mrecep="")
  goal = textwrap.indent(textwrap.dedent(goal.replace("#", "-")).strip(), "    ")
  name = m(task.replace("/", "|"))
  return ("\n(define (problem plan_{name})\n    (:domain alfred)\n    (:objects\n        {decl}\n    )\n"
          "    (:init\n        {init}\n    )\n{goal}\n").format(
              name=name, decl="\n        ".join(decl), init="\n        ".join(init), goal=goal)


def game_logic() -> dict[str, str]:
  with open(DOMAIN_PATH) as f:
    domain = f.read()
  with open(GRAMMAR_PATH) as f:
    grammar = f.read()
  return {"pddl_domain": domain, "grammar": grammar}


def game_data(task: str, attempt: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
  """(game.tw-pddl content, traj_data) of a generated task; solvable/walkthrough still unset (None)."""
  problem, traj_data = build_problem(task, attempt)
  logic = game_logic()
  desc = traj_data["turk_annotations"]["anns"][0]["task_desc"]
  # As alfworld-generate does: the goal text is baked into the game's grammar.
  grammar = logic["grammar"].replace("UNKNOWN GOAL", desc)
  return ({"pddl_domain": logic["pddl_domain"], "grammar": grammar, "pddl_problem": problem,
           "solvable": None, "walkthrough": None}, traj_data)


_TOKEN = re.compile(r"[^\s()]+")


def planning_problem(problem: str) -> str:
  """The problem without the objects whose type the goal does not name (line-based, as ALFRED writes them).

  The planner's search is then seconds instead of minutes. ALFWorld numbers the instances of each name on
  their own ("apple 1", "apple 2"), so a plan for the reduced problem names the same entities as the game,
  and it stays valid there (other objects never block an action of this domain).
  """
  head, sep, goal = problem.partition("(:goal")
  keep = {t.lower() for t in re.findall(r"\(objectType\s+\?\S+\s+([^\s()]+)\)", goal, re.IGNORECASE)}
  if not sep or not keep:
    return problem
  types = re.findall(r"\(objectType\s+([^\s()]+)\s+([^\s()]+)\)", head, re.IGNORECASE)
  drop = {o.lower() for o, t in types if t.lower() not in keep}
  lines = [line for line in head.split("\n") if not {tok.lower() for tok in _TOKEN.findall(line)} & drop]
  return "\n".join(lines) + sep + goal
