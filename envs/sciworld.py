"""ScienceWorld (the `scienceworld` package: a Scala simulator of elementary-science tasks) as a TextEnv.

Task ids are "<task_name>/<variation>" over the package's train/test variation splits; one JVM per env.
"""

from __future__ import annotations

import re

from py4j.protocol import Py4JError
from scienceworld.constants import BASEPATH, JAR_PATH

from envs.base import Observation, Step, check_split
from envs.jvm import JavaTextEnv

#: Task families whose gold paths are short (median <= 25 actions over their first test variations; the
#: other families need 31 to 260). Measured with the package's gold agent, see docs/ENVIRONMENTS.md.
EASY_TASKS = frozenset({
    "chemistry-mix", "chemistry-mix-paint-secondary-color", "find-animal", "find-living-thing",
    "find-non-living-thing", "find-plant", "identify-life-stages-2", "lifespan-longest-lived",
    "lifespan-longest-lived-then-shortest-lived", "lifespan-shortest-lived", "power-component",
    "power-component-renewable-vs-nonrenewable-energy", "test-conductivity",
    "test-conductivity-of-unknown-substances", "use-thermometer",
})
#: The simulator's answer to input that matches no action.
UNKNOWN_ACTION = "No known action matches that input."
#: Longer actions are rejected before they reach the simulator (its parser is slow on huge inputs).
MAX_ACTION_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The task ids that AgentGym's ScienceWorld server leaves out of its data-index numbering.
AGENTGYM_EXCLUDED = ("5-1", "5-2", "9-1", "9-2", "9-3", "10-1", "10-2")
# The package's variation splits, per process: {"train"|"test": {task_name: [variation, ...]}}.
_SPLITS: dict[str, dict[str, list[int]]] = {}

INSTRUCTION = """You are an agent in ScienceWorld, a text simulation of a house with a kitchen, \
greenhouse, workshop, foundry and outside area, where you perform elementary-science experiments.
Each turn, reply with one line of reasoning and one action, exactly in this format:
Thought: <your reasoning>
Action: <action>
Actions (OBJ is an object or place named in the observation):
  look around | look at OBJ | look in OBJ | read OBJ | inventory | task
  go to OBJ (a room; open its door first) | open OBJ | close OBJ
  pick up OBJ | put down OBJ | move OBJ to OBJ | pour OBJ in OBJ | dunk OBJ in OBJ | mix OBJ
  activate OBJ | deactivate OBJ | use OBJ on OBJ | connect OBJ to OBJ | disconnect OBJ
  eat OBJ | flush OBJ | wait (10 time steps) | wait1 (1 time step)
  focus on OBJ (marks the object the task is about; focusing on the wrong object fails the task)
When the simulator asks which of several objects you mean, answer with the number of your choice."""


def parse_task(task: str) -> tuple[str, int]:
  """"<task_name>/<variation>" -> (task_name, variation)."""
  name, sep, variation = str(task).rpartition("/")
  if not sep or not name or not variation.isdigit():
    raise ValueError(f"bad sciworld task id {task!r}; expected '<task_name>/<variation>', e.g. 'boil/21'")
  return name, int(variation)


def variation_splits(count: int) -> tuple[list[int], list[int], list[int]]:
  """(train, dev, test) variations of a task with `count` variations, as the package splits them (its
  getVariationsTrain/Dev/Test, which need a task load each, 10-20 s for all 30): quarters of
  floor(count / 4), train = the first two, dev = the third, test = the fourth plus any remainder."""
  size = count // 4
  groups = [list(range(i, min(i + size, count))) for i in range(0, count, size)]
  return groups[0] + groups[1], groups[2], groups[3] + (groups[4] if len(groups) > 4 else [])


def difficulty_of(task_name: str) -> str:
  return "easy" if task_name in EASY_TASKS else "hard"


def canonical_listing(text: str) -> str:
  """Sorts the simulator's tab-indented object lists (each item with its deeper-indented lines).

  The simulator lists objects of a room in an order that drifts with every task load in the same JVM
  (e.g. three wood cups of paint), so the same task would show different first observations in
  different worker processes; sorted, it shows one.
  """
  lines = text.split("\n")

  def depth(line: str) -> int:
    return len(line) - len(line.lstrip("\t"))

  def block(start: int, level: int) -> tuple[list[str], int]:
    """Lines from `start` while indented >= level, siblings at `level` sorted; returns (lines, end)."""
    items, i = [], start
    while i < len(lines) and lines[i].startswith("\t") and depth(lines[i]) >= level:
      head, i = lines[i], i + 1
      children, i = block(i, depth(head) + 1)
      items.append([head] + children)
    items.sort()
    return [line for item in items for line in item], i

  out, i = [], 0
  while i < len(lines):
    if lines[i].startswith("\t"):
      sorted_lines, i = block(i, 1)
      out.extend(sorted_lines)
    else:
      out.append(lines[i])
      i += 1
  return "\n".join(out)


def _interleave(groups: list[list[str]]) -> list[str]:
  """Round-robin over groups, so that any prefix of the list spans every group."""
  out = []
  for i in range(max((len(g) for g in groups), default=0)):
    out.extend(g[i] for g in groups if i < len(g))
  return out


class ScienceWorldEnv(JavaTextEnv):
  """ScienceWorld with score = the package's score / 100 and reward = the change of score.

  valid_actions: list the valid action-object combinations in each Observation (about 10x the step time:
  ~0.14 s instead of ~0.014 s, so off by default). java_heap: the JVM's -Xmx (AGENTGEN_JAVA_HEAP overrides).
  """

  name = "sciworld"
  max_turns = 100
  jar, jar_dir = JAR_PATH, BASEPATH

  def __init__(self, valid_actions: bool = False, java_heap: str = "1g"):
    super().__init__(java_heap)
    self.valid_actions = valid_actions
    self._score = 0.0
    self._history: list[str] = []
    self._gold: dict[str, list[str]] = {}

  def _new_server(self, jvm):
    return jvm.scienceworld.runtime.pythonapi.PythonInterface()

  # ---- TextEnv ---------------------------------------------------------------------------------------

  @property
  def instruction(self) -> str:
    return INSTRUCTION

  def _splits(self) -> dict[str, dict[str, list[int]]]:
    if not _SPLITS:
      sim = self._sim()
      splits = {"train": {}, "test": {}}
      for name in sorted(sim.getTaskNames()):
        count = int(sim.getTaskMaxVariations(name))
        if count >= 8:
          train, _, test = variation_splits(count)
        else:  # the package special-cases tiny tasks (none exist today): ask it, at the cost of a load
          sim.load(name, 0, "", False)
          train, test = list(sim.getVariationsTrain()), list(sim.getVariationsTest())
        splits["train"][name], splits["test"][name] = train, test
      _SPLITS.update(splits)
    return _SPLITS

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    """Task ids of the package's `split` variations; families interleaved so a prefix spans them all."""
    check_split(split, difficulty)
    by_name = self._splits()[split]
    groups = [[f"{name}/{v}" for v in variations] for name, variations in sorted(by_name.items())
              if difficulty in ("all", difficulty_of(name))]
    return _interleave(groups)

  def agentgym_tasks(self) -> list[str]:
    """Our task ids in the order of AgentGym's ScienceWorld server: data index i is item i of its list of
    (task, variation) over the package's task ids (tasks.json order) minus the seven it excludes, each task
    with all its variations (train, dev and test alike)."""
    from scienceworld.constants import ID2TASK
    sim = self._sim()
    return [f"{name}/{v}" for key, name in ID2TASK.items() if key not in AGENTGYM_EXCLUDED
            for v in range(int(sim.getTaskMaxVariations(name)))]

  def _load(self, task: str, gold: bool = False) -> str:
    name, variation = parse_task(task)
    sim = self._sim()
    if name not in self._splits()["test"]:
      valid = ", ".join(sorted(_SPLITS["test"]))
      raise ValueError(f"unknown sciworld task {name!r} in {task!r}; valid: {valid}")
    sim.load(name, variation, "", gold)
    sim.reset()
    return sim.step("look around")  # what the package's reset() shows; it costs no move

  def _observation(self, text: str) -> Observation:
    actions = sorted(self._server.getValidActionObjectCombinations()) if self.valid_actions else None
    return Observation(canonical_listing(text), actions)

  def _reset(self, task: str) -> Observation:
    look = self._load(task)
    self._score, self._history = 0.0, []
    return self._observation(f"{self._server.freeActionTaskDesc().strip()}\n\n{look.strip()}")

  def _step(self, action: str) -> Step:
    action = _CONTROL.sub(" ", action).strip()
    if not action or len(action) > MAX_ACTION_CHARS:
      return self.invalid_step(f"{UNKNOWN_ACTION} (Actions are short commands such as 'look around'.)")
    try:
      text = self._server.step(action)
      raw = round(100 * float(self._server.getScore()))  # the package's integer score
      completed = bool(self._server.getCompleted())
      moves = int(self._server.getNumMoves())
      observation = self._observation(text.strip())
    except Py4JError as e:
      return self.simulator_failed(e)
    self._history.append(action)
    score = min(max(raw, 0), 100) / 100
    reward, self._score = score - self._score, score
    # A negative score is the simulator's verdict that the task failed (e.g. focus on a wrong object).
    done = completed or raw < 0
    success = completed and raw >= 100
    info = {"invalid": text.strip() == UNKNOWN_ACTION, "raw_score": raw, "moves": moves}
    return Step(observation, float(reward), done, success, score, info)

  def expert(self, task: str) -> list[str]:
    """The package's gold action sequence for `task` (generated by its gold agent; tens of seconds for
    the Mendelian-genetics tasks). An episode in progress is restored by replaying its actions."""
    if task not in self._gold:
      self._load(task, gold=True)
      self._gold[task] = [str(a) for a in self._server.getGoldActionSequence()]
      if self._task is not None:
        self._load(self._task)
        for action in self._history:
          self._server.step(action)
    return list(self._gold[task])
