"""TextWorld-Express (the `textworld-express` package: fast Scala text games) as a TextEnv.

Task ids are "<game>/<params>/<seed>" over the package's train/test seed folds; one JVM per env.
"""

from __future__ import annotations

import json
import re

from py4j.protocol import Py4JError, Py4JJavaError
from textworld_express.constants import BASEPATH, JAR_PATH

from envs.base import Observation, Step, check_split
from envs.jvm import JavaTextEnv

#: difficulty -> game -> the package's game-parameter string. Easy: one to three rooms, one item or
#: ingredient, no doors or distractors; hard: more rooms, items, doors and distractors. Games without
#: parameters sit in one difficulty by their gold-path length (arithmetic 5; sorting 6-10, pecking order 9).
GAME_PARAMS = {
    "easy": {
        "twc": "numLocations=1,numItemsToPutAway=1,includeDoors=0,limitInventorySize=0",
        "cookingworld": ("numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,"
                         "limitInventorySize=0"),
        "coin": "numLocations=2,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
        "mapreader": ("numLocations=3,maxDistanceApart=1,maxDistractorItemsPerLocation=0,includeDoors=0,"
                      "limitInventorySize=0"),
        "simonsays": "gameLength=3,numDistractors=2,memorization=0",
        "arithmetic": "",
    },
    "hard": {
        "twc": "numLocations=3,numItemsToPutAway=4,includeDoors=1,limitInventorySize=0",
        "cookingworld": ("numLocations=5,numIngredients=3,numDistractorItems=5,includeDoors=1,"
                         "limitInventorySize=0"),
        "coin": "numLocations=6,numDistractorItems=5,includeDoors=1,limitInventorySize=0",
        # 15 rooms: with 8, maxDistanceApart=4 fails to generate a few seeds (e.g. 652, 20030).
        "mapreader": ("numLocations=15,maxDistanceApart=4,maxDistractorItemsPerLocation=3,includeDoors=0,"
                      "limitInventorySize=0"),
        "simonsays": "gameLength=8,numDistractors=4,memorization=1",
        "sorting": "",
        "peckingorder": "",
    },
}
GAMES = ("twc", "cookingworld", "coin", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder")
#: Longer actions are rejected outright (no valid action is anywhere near this long).
MAX_ACTION_CHARS = 300

# The package's seed folds, per process: {"train"|"test": [seed, ...]}.
_SEEDS: dict[str, list[int]] = {}

INSTRUCTION = """You are playing a TextWorld-Express text game (one of: tidying up a house, cooking a \
recipe, finding a coin, following a map, arithmetic, sorting, Simon says, pecking order).
The first observation says what the task is. Each turn, reply with one line of reasoning and one action, \
exactly in this format:
Thought: <your reasoning>
Action: <action>
Typical actions: look around, inventory, task, move <north|south|east|west>, open door to <direction>, \
take <item>, put <item> in <container>, examine <item>, read <item>, open <container>, \
chop|slice|dice <item>, cook <item> in <appliance>, prepare meal, eat meal, touch <item>.
An action must name objects exactly as the observation does; an action that is not valid in the current \
state changes nothing."""


def parse_task(task: str) -> tuple[str, str, int]:
  """"<game>/<params>/<seed>" -> (game, params, seed)."""
  parts = str(task).split("/")
  if len(parts) != 3 or parts[0] not in GAMES or not parts[2].isdigit():
    raise ValueError(f"bad twx task id {task!r}; expected '<game>/<params>/<seed>' with game in "
                     f"{', '.join(GAMES)}, e.g. 'coin/numLocations=2/20000'")
  return parts[0], parts[1], int(parts[2])


def _interleave(groups: list[list[str]]) -> list[str]:
  """Round-robin over groups, so that any prefix of the list spans every group."""
  out = []
  for i in range(max((len(g) for g in groups), default=0)):
    out.extend(g[i] for g in groups if i < len(g))
  return out


def _normalise(action: str) -> str:
  return re.sub(r"\s+", " ", action).strip().lower()


class TextWorldExpressEnv(JavaTextEnv):
  """TextWorld-Express: score = the package's normalised score, reward = its change, success = the game's
  task-success flag; valid actions are always listed (cheap here).

  java_heap: the JVM's -Xmx (AGENTGEN_JAVA_HEAP overrides).
  """

  name = "twx"
  max_turns = 50
  jar, jar_dir = JAR_PATH, BASEPATH
  simulator_state = ("_loaded",)  # the (game, params) loaded in the JVM

  def __init__(self, java_heap: str = "512m"):
    super().__init__(java_heap)
    self._score = 0.0
    self._valid: dict[str, str] = {}
    self._history: list[str] = []
    self._gold: dict[str, list[str]] = {}

  def _new_server(self, jvm):
    return jvm.textworldexpress.runtime.PythonInterface()

  # ---- TextEnv ---------------------------------------------------------------------------------------

  @property
  def instruction(self) -> str:
    return INSTRUCTION

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    """Task ids of the package's `split` seed fold; games interleaved so a prefix spans them all."""
    check_split(split, difficulty)
    seeds = self._seeds()[split]
    levels = ("easy", "hard") if difficulty == "all" else (difficulty,)
    groups = [[f"{game}/{params}/{seed}" for seed in seeds]
              for level in levels for game, params in GAME_PARAMS[level].items()]
    return _interleave(groups)

  def _seeds(self) -> dict[str, list[int]]:
    if not _SEEDS:
      sim = self._sim()
      self._load_game("coin", "")  # the seed folds are the same for every game
      _SEEDS.update(train=list(sim.getSeedsTrain()), test=list(sim.getSeedsTest()))
    return _SEEDS

  def _load_game(self, game: str, params: str) -> None:
    sim = self._sim()  # first: a restarted JVM has no game loaded
    if self._loaded != (game, params):
      self._loaded = None  # a failed load leaves the simulator with some other game
      error = sim.load(game, params)
      if error:
        raise ValueError(f"bad twx game parameters {params!r} for {game!r}: {error.strip()}")
      self._loaded = (game, params)

  def _new_game(self, task: str, gold: bool = False) -> dict:
    game, params, seed = parse_task(task)
    folds = [fold for fold, seeds in self._seeds().items() if seed in seeds]
    if not folds:
      raise ValueError(f"seed {seed} of twx task {task!r} is in no fold; train and test seeds: "
                       f"{self._seeds()['train'][0]}..{self._seeds()['train'][-1]}, "
                       f"{self._seeds()['test'][0]}..{self._seeds()['test'][-1]}")
    self._load_game(game, params)
    try:
      return json.loads(self._server.generateNewGameJSON(seed, folds[0], gold))
    except Py4JJavaError as e:  # the generator gives up on some parameter/seed combinations
      first_line = str(e.java_exception).splitlines()[0] if e.java_exception else repr(e)
      raise ValueError(f"twx cannot generate task {task!r}: {first_line}") from None

  def _observation(self, text: str, response: dict) -> Observation:
    actions = sorted(response["validActions"])
    self._valid = {_normalise(a): a for a in actions}
    return Observation(text.strip(), actions)

  def _reset(self, task: str) -> Observation:
    response = self._new_game(task)
    self._score, self._history = 0.0, []
    description = self._server.getTaskDescription().strip()
    return self._observation(f"{description}\n\n{response['observation'].strip()}", response)

  def _step(self, action: str) -> Step:
    canonical = self._valid.get(_normalise(action)) if len(action) <= MAX_ACTION_CHARS else None
    if canonical is None:
      shown = action if len(action) <= 80 else action[:80] + "..."
      return self.invalid_step(f"'{shown}' is not a valid action here. Nothing happened.")
    try:
      response = json.loads(self._server.stepJSON(canonical))
      observation = self._observation(response["observation"], response)
    except Py4JError as e:
      return self.simulator_failed(e)
    self._history.append(canonical)
    score = min(max(float(response["score"]), 0.0), 1.0)
    reward, self._score = score - self._score, score
    success = bool(response["tasksuccess"])
    done = success or bool(response["taskfailure"]) or score >= 1.0
    info = {"invalid": False, "raw_score": float(response["scoreRaw"]), "moves": len(self._history)}
    return Step(observation, float(reward), done, success, score, info)

  def expert(self, task: str) -> list[str]:
    """The package's gold action sequence for `task`; an episode in progress is restored by replay."""
    if task not in self._gold:
      self._new_game(task, gold=True)
      self._gold[task] = [str(a) for a in self._server.getGoldActionSequence()]
      if self._task is not None:
        self._new_game(self._task)
        for action in self._history:
          self._server.stepJSON(action)
    return list(self._gold[task])
