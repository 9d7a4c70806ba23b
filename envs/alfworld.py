"""ALFWorld on the real engine: the `alfworld` package's PDDL domain and grammar, played by TextWorld.

Loads the official json_2.1.1 games when ALFWORLD_DATA (or `data_dir`) points at them, else generates games of
the same file format from the package's floor plans (envs/alfworld_gen.py) into a cache folder.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import re
import zlib

import fast_downward
import textworld
from alfworld.agents.utils.misc import Demangler
from textworld.envs.pddl import PddlEnv
from textworld.envs.pddl import logic as pddl_logic
from textworld.envs.pddl import textgen as pddl_textgen

from envs import alfworld_gen as gen
from envs.base import Observation, Step, TextEnv, check_split

OFFICIAL_SPLITS = ("train", "valid_seen", "valid_unseen")
_WELCOME = "-= Welcome to TextWorld, ALFRED! =-"
_PUT = re.compile(r"put (.+?) (?:in/on|into|in|on|to) (.+)")

INSTRUCTION = """You are in a household and must complete the task given in the first observation.
Each turn, choose one action. The admissible actions are listed after every observation; their forms are:
  go to {receptacle}                 open {receptacle}              close {receptacle}
  take {object} from {receptacle}    move {object} to {receptacle}  examine {receptacle or object}
  use {object}                       heat {object} with {receptacle}
  clean {object} with {receptacle}   cool {object} with {receptacle}
  inventory                          look
Objects and receptacles carry a number ("apple 1", "countertop 2"). Heat in the microwave, cool in the
fridge, clean in the sinkbasin; you can carry one object at a time. An inadmissible action gives
"Nothing happens.". Reply as:
Thought: <your reasoning>
Action: <one admissible action>"""


class _Downward:
  """fast_downward as seen by TextWorld's PDDL logic, with the PDDL -> SAS translation cached.

  Each PddlEnv.load/reset translates the problem twice (seconds each for a full room): results are kept in
  memory and, zlib-pickled, under `folder` (shared by worker processes), so a game is translated once.
  While `plan` is False (the acting engine never calls the planner) the planner's optimised translation is
  replaced by the plain one.
  """

  plan = True
  folder: str | None = None
  _memory: dict = {}

  def __getattr__(self, name):
    return getattr(fast_downward, name)

  def pddl2sas(self, domain, problem, verbose=False, optimize=False):
    optimize = bool(optimize and self.plan)
    key = hashlib.sha256(f"{optimize}\0{domain}\0{problem}".encode()).hexdigest()
    if key in self._memory:
      return self._memory[key]
    path = os.path.join(self.folder, "sas", key[:2], key + ".pkl.z") if self.folder else None
    result = None
    if path and os.path.exists(path):
      try:
        with open(path, "rb") as f:
          result = pickle.loads(zlib.decompress(f.read()))
      except Exception:  # a truncated or foreign file: translate again
        result = None
    if result is None:
      result = fast_downward.pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
      if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_bytes(path, zlib.compress(pickle.dumps(result, protocol=5), 1))
    if len(self._memory) >= 4:
      self._memory.pop(next(iter(self._memory)))
    self._memory[key] = result
    return result


_DOWNWARD = _Downward()
pddl_logic.fast_downward = _DOWNWARD

_parse_symbols = pddl_textgen._parse_and_convert
_parsed: dict = {}


def _parse_memo(text, **kwargs):
  """TextWorld's grammar parser, memoised. Every step re-parses the template of each admissible command
  (about half the step time) from a small fixed set of strings; callers mutate the parsed symbols, so each
  call gets a deep copy."""
  key = (text, tuple(sorted(kwargs.items())))
  if key not in _parsed:
    if len(_parsed) > 10_000:
      _parsed.clear()
    _parsed[key] = _parse_symbols(text, **kwargs)
  return copy.deepcopy(_parsed[key])


pddl_textgen._parse_and_convert = _parse_memo


@contextlib.contextmanager
def _translation(plan: bool, folder: str | None):
  """Settings of the translation cache for the engine calls inside (load and reset both translate)."""
  _DOWNWARD.plan, _DOWNWARD.folder = plan, folder
  try:
    yield
  finally:
    _DOWNWARD.plan, _DOWNWARD.folder = True, None


def _load(engine: PddlEnv, game) -> None:
  """Loads a game (file or its dict) and names entities as ALFWorld does ("apple 1" for Apple_bar_...)."""
  engine.load(game)
  names = Demangler(game_infos=engine._entity_infos)
  for info in engine._entity_infos.values():
    info.name = names.demangle_alfred_name(info.id)


def _intro(feedback: str) -> str:
  """The reset text as ALFWorld/AgentGym show it: the room overview, then the task, one per line."""
  text = feedback.replace(_WELCOME, "").strip()
  return re.sub(r"\n\s*\n", "\n", text)


def official_root(path: str | None) -> str | None:
  """The folder holding train/valid_seen/valid_unseen (path itself or path/json_2.1.1), else None."""
  if not path or not os.path.isdir(path):
    return None
  for root in (os.path.join(path, "json_2.1.1"), path):
    if any(os.path.isdir(os.path.join(root, s)) for s in OFFICIAL_SPLITS):
      return root
  return None


def official_games(root: str, split: str) -> list[tuple[str, str]]:
  """(game file, task type) of the solvable games of an official split, skipping what AlfredTWEnv skips
  (movable receptacles, sliced objects, missing or unsolvable game files)."""
  out = []
  for folder, _, files in sorted(os.walk(os.path.join(root, split))):
    if "traj_data.json" not in files or "game.tw-pddl" not in files:
      continue
    if "movable" in folder or "Sliced" in folder:
      continue
    game_file = os.path.join(folder, "game.tw-pddl")
    with open(game_file) as f:
      if not json.load(f).get("solvable"):
        continue
    # The trial folder sits in "<task_type>-<object>-<mrecep>-<recep>-<scene>"; traj_data says it too.
    task_type = os.path.basename(os.path.dirname(folder)).split("-")[0]
    if task_type not in gen.TASK_TYPES:
      with open(os.path.join(folder, "traj_data.json")) as f:
        task_type = json.load(f).get("task_type", "")
    if task_type in gen.TASK_TYPES:
      out.append((game_file, task_type))
  return out


def _difficulty_types(difficulty: str) -> tuple[str, ...]:
  return {"easy": gen.EASY_TYPES, "hard": gen.HARD_TYPES, "all": gen.TASK_TYPES}[difficulty]


def default_cache_dir() -> str:
  return os.environ.get("ALFWORLD_GEN_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "agentgen_jax", "alfworld")


class ALFWorldEnv(TextEnv):
  """ALFWorld text games (six task types) on TextWorld's PDDL engine.

  data_dir: the official data (json_2.1.1 or its parent; default $ALFWORLD_DATA, which the alfworld package
  sets to ~/.cache/alfworld when unset). Without official games there, games are generated into cache_dir
  (default $ALFWORLD_GEN_CACHE or ~/.cache/agentgen_jax/alfworld); data_dir="" always generates.
  test_split: the official split used as "test" (valid_unseen or valid_seen).
  per_scene: generated tasks per (task type, floor plan) for (train, test).
  """

  name = "alfworld"
  max_turns = 30

  def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
               test_split: str = "valid_unseen", per_scene: tuple[int, int] = (25, 5)) -> None:
    super().__init__()
    if test_split not in ("valid_seen", "valid_unseen"):
      raise ValueError(f"unknown test_split {test_split!r}; valid: valid_seen, valid_unseen")
    # `import alfworld` sets ALFWORLD_DATA to ~/.cache/alfworld (where alfworld-download puts the data) when
    # unset; a folder without the official games there means: generate.
    self.data_dir = data_dir if data_dir is not None else os.environ.get("ALFWORLD_DATA")
    self.root = official_root(self.data_dir)
    if data_dir and self.root is None:
      raise ValueError(f"data_dir {data_dir!r} holds no official ALFWorld games; valid: a json_2.1.1 folder "
                       f"(with {', '.join(OFFICIAL_SPLITS)}) or its parent")
    self.source = "official" if self.root else "generated"
    self.cache_dir = os.path.join(cache_dir or default_cache_dir(), f"v{gen.GENERATOR_VERSION}")
    self.test_split = test_split
    self.per_scene = tuple(per_scene)
    self._official: dict[str, list[tuple[str, str]]] = {}
    self._engine: PddlEnv | None = None  # built on first reset: construction stays cheap
    self._planner: PddlEnv | None = None
    self._loaded: str | None = None
    self._admissible: list[str] = []
    self._plans: dict[str, list[str]] = {}

  @property
  def instruction(self) -> str:
    return INSTRUCTION

  # ---- tasks -------------------------------------------------------------------------------------

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    check_split(split, difficulty)
    types = _difficulty_types(difficulty)
    if self.root:
      folder = "train" if split == "train" else self.test_split
      if folder not in self._official:
        self._official[folder] = official_games(self.root, folder)
      base = self.data_dir
      return [os.path.relpath(path, base) for path, task_type in self._official[folder] if task_type in types]
    scenes = gen.TRAIN_SCENES if split == "train" else gen.TEST_SCENES
    per_scene = self.per_scene[0 if split == "train" else 1]
    ids = {t: set(gen.task_ids(t, scenes, per_scene)) for t in types}
    # Interleave types and scenes so that any prefix of the list covers all of them.
    return [f"{t}/FloorPlan{fp}/{i}" for i in range(per_scene) for fp in scenes for t in types
            if f"{t}/FloorPlan{fp}/{i}" in ids[t]]

  def game_file(self, task: str) -> str:
    """The game.tw-pddl of a task (generated and cached on first use)."""
    if self.root and isinstance(task, str) and task.endswith("game.tw-pddl"):
      path = os.path.realpath(os.path.join(self.data_dir, task))
      if not path.startswith(os.path.realpath(self.root) + os.sep) or not os.path.isfile(path):
        raise ValueError(f"unknown alfworld task {task!r}; valid: game files listed by tasks()")
      return path
    gen.parse_task(task)  # raises a one-line ValueError for a bad id
    path = os.path.join(self.cache_dir, task, "game.tw-pddl")
    if not os.path.exists(path):
      self._generate(task, path)
    return path

  def _generate(self, task: str, path: str) -> None:
    # Different random draws of the same task id until the planner solves it (first draw almost always).
    for attempt in range(4):
      data, traj_data = gen.game_data(task, attempt)
      plan = self._plan(data)
      if plan:
        data["solvable"], data["walkthrough"] = True, plan
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_json(os.path.join(os.path.dirname(path), "traj_data.json"), traj_data)
        _write_json(path, data)  # last: its presence marks a complete game folder
        return
    raise RuntimeError(f"alfworld task {task!r}: no solvable game after 4 draws")

  def _plan(self, data: dict) -> list[str]:
    """The PDDL planner's commands from the initial state (TextWorld's policy_commands), planned on the
    problem reduced to the goal's objects, else on the whole problem; [] when neither has a plan."""
    if self._planner is None:
      self._planner = PddlEnv(textworld.EnvInfos(policy_commands=True, won=True))
    reduced = dict(data, pddl_problem=gen.planning_problem(data["pddl_problem"]))
    for game in [reduced] + ([data] if reduced["pddl_problem"] != data["pddl_problem"] else []):
      try:
        with _translation(plan=True, folder=None):
          _load(self._planner, game)
          plan = list(self._planner.reset()["policy_commands"])
      except Exception:  # e.g. a reduced problem that no longer parses: plan on the whole one
        plan = []
      if plan:
        return plan
    return []

  # ---- episode -----------------------------------------------------------------------------------

  def _reset(self, task: str) -> Observation:
    path = self.game_file(task)
    if self._engine is None:
      self._engine = PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True))
    with _translation(plan=False, folder=self.cache_dir):
      if path != self._loaded:
        self._loaded = None
        _load(self._engine, path)
        self._loaded = path
      state = self._engine.reset()
    self._admissible = list(state["admissible_commands"])
    return Observation(_intro(state.feedback), list(self._admissible))

  def _match(self, action: str) -> str | None:
    """The admissible command an action names (case and spacing ignored; "put X in Y" = "move X to Y")."""
    text = " ".join(str(action).lower().split()).rstrip(".").strip()
    if text in self._admissible:
      return text
    match = _PUT.fullmatch(text)
    if match and f"move {match.group(1)} to {match.group(2)}" in self._admissible:
      return f"move {match.group(1)} to {match.group(2)}"
    return None

  def _step(self, action: str) -> Step:
    command = self._match(action)
    if command is None:
      # What ALFWorld itself answers to an inadmissible command.
      return Step(Observation("Nothing happens.", list(self._admissible)), 0.0, False, False, 0.0,
                  {"invalid": True})
    try:
      state, _, _ = self._engine.step(command)
    except Exception as e:  # an engine failure ends the episode as failed-by-env, it does not crash the run
      return Step(Observation(f"Environment error: {e}", []), 0.0, True, False, 0.0,
                  {"invalid": False, "env_error": repr(e)[:500]})
    won = bool(state["won"])
    self._admissible = [] if won else list(state["admissible_commands"])
    return Step(Observation(state.feedback.strip(), list(self._admissible)), float(won), won, won,
                float(won), {"invalid": False, "command": command})

  # ---- expert ------------------------------------------------------------------------------------

  def expert(self, task: str) -> list[str]:
    """The PDDL planner's plan (generated games store it as their walkthrough; official games are planned
    on demand, since their stored walkthrough comes from the hand-coded expert)."""
    path = self.game_file(task)
    if path not in self._plans:
      with open(path) as f:
        data = json.load(f)
      if data.get("walkthrough") and path.startswith(self.cache_dir + os.sep):
        self._plans[path] = list(data["walkthrough"])
      else:
        self._plans[path] = self._plan(data) or list(data.get("walkthrough") or [])
    return list(self._plans[path])

  def close(self) -> None:
    for engine in (self._engine, self._planner):
      if engine is not None:
        engine.close()
    self._engine = self._planner = None
    self._loaded = None


def _write_json(path: str, data) -> None:
  _write_bytes(path, json.dumps(data).encode())


def _write_bytes(path: str, data: bytes) -> None:
  """Atomic write: worker processes may generate the same game at the same time."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
