"""BabyAI (minigrid) as a text env: a view of the visible objects, high-level actions executed on the grid.

Actions such as "go to red ball 1" are macros of minigrid primitives, planned by BFS over the cells seen so
far; the expert is minigrid's BabyAIBot, with its primitive runs compressed into those macros.
"""

from __future__ import annotations

import collections
import contextlib
import io
import warnings

import gymnasium as gym
import minigrid  # noqa: F401 - registers the BabyAI levels with gymnasium
import numpy as np
from minigrid.utils.baby_ai_bot import BabyAIBot

from envs.base import Observation, Step, TextEnv, check_split

LEVELS = {
    "easy": ("GoToObj", "GoToLocal", "PickupLoc", "GoToRedBallGrey", "OpenDoor"),
    "hard": ("GoTo", "Pickup", "GoToSeq", "Open", "SynthLoc"),
}
# AgentGym's BabyAI server numbers its tasks over these 40 levels: data index i is level i % 40 (its
# all_levels[i % 40 + 1]) reset with seed i // 40. GoToObjS6 is registered as v1 by today's minigrid.
AGENTGYM_LEVELS = (
    "GoToRedBallGrey", "GoToRedBall", "GoToRedBallNoDists", "GoToObjS6-v1", "GoToLocalS8N7", "GoToObjMazeS7",
    "GoToImpUnlock", "GoToSeqS5R2", "GoToRedBlueBall", "GoToDoor", "GoToObjDoor", "Open", "OpenRedDoor",
    "OpenDoorLoc", "OpenRedBlueDoorsDebug", "OpenDoorsOrderN4Debug", "Pickup", "UnblockPickup", "PickupLoc",
    "PickupDistDebug", "PickupAbove", "PutNextLocalS6N4", "PutNextS7N4Carrying", "Unlock", "UnlockLocalDist",
    "KeyInBox", "UnlockPickupDist", "BlockedUnlockPickup", "UnlockToUnlock", "ActionObjDoor", "FindObjS7",
    "KeyCorridorS6R3", "OneRoomS20", "MoveTwoAcrossS8N9", "SynthS5R2", "SynthLoc", "SynthSeq",
    "MiniBossLevel", "BossLevel", "BossLevelNoUnlock")
_SEEDS = {"train": (0, 100_000), "test": (1_000_000, 1_000_000 + 20)}  # [start, stop) per level
_TRAIN_LISTED = 200  # train seeds per level that tasks() lists (any seed in the range is a valid task)

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
_MOVES = (LEFT, RIGHT, FORWARD)
_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid agent_dir 0..3: east, south, west, north
_PICKABLE = ("ball", "box", "key")
_PRIMITIVE_TEXT = {LEFT: "turn left", RIGHT: "turn right", FORWARD: "move forward", DROP: "drop",
                   TOGGLE: "toggle"}

_INSTRUCTION = """You are an agent in a 2D grid world of rooms, doors and objects (BabyAI). Follow the goal.
Each turn you see the objects in view, with their positions relative to you, and the available actions:
- turn left / turn right / move forward: one primitive move.
- go to <object>: walk next to a seen object and face it.  pick up <object>: go to it and pick it up.
- drop: put down what you carry, in front of you.  toggle: open/close the door or box in front of you.
- go through <door>: walk through an open door.  toggle and go through <door>: open a door, walk through.
- check available actions: list the actions again.
Objects are named by color, type and number, e.g. "red ball 1". Reply as
"Thought: <your reasoning>\\nAction: <one available action>"."""


def _plural(n: int, word: str) -> str:
  return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Episode:
  """One minigrid episode with the text layer: object names, the seen-cell mask and the macro actions."""

  def __init__(self, level: str, seed: int, track: bool = True):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.gym_env = gym.make(f"BabyAI-{level}" + ("" if "-v" in level else "-v0"))
    self.env = self.gym_env.unwrapped
    self.track = track  # keep the seen-cell mask (off for the bot's own run, which needs none)
    # Level generation prints its rejected samples; they are not ours to show.
    with contextlib.redirect_stdout(io.StringIO()):
      self.gym_env.reset(seed=seed)
    self.names: dict[int, str] = {}
    self._counts: collections.Counter = collections.Counter()
    grid = self.env.grid
    for y in range(grid.height):  # name objects in row-major order, so names are stable per task
      for x in range(grid.width):
        self._name(grid.get(x, y))
    self._name(self.env.carrying)
    self.seen = np.zeros((grid.width, grid.height), dtype=bool)
    self.done = False
    self.success = False
    self.reward = 0.0
    self._macros = None
    self._update_seen()

  def _name(self, obj) -> str | None:
    if obj is None or obj.type in ("wall", "floor", "goal", "lava"):
      return None
    if id(obj) not in self.names:
      self._counts[(obj.color, obj.type)] += 1
      self.names[id(obj)] = f"{obj.color} {obj.type} {self._counts[(obj.color, obj.type)]}"
    return self.names[id(obj)]

  # ---- what the agent sees -----------------------------------------------------------------------

  def _visible_cells(self):
    """Yields (x, y, forward, right) for cells in the agent's view that are not occluded."""
    env = self.env
    _, vis = env.gen_obs_grid()
    size, half = env.agent_view_size, env.agent_view_size // 2
    (ax, ay), (dx, dy) = env.agent_pos, _DIRS[env.agent_dir]
    for vx, vy in zip(*np.nonzero(vis)):
      fwd, right = size - 1 - int(vy), int(vx) - half
      # minigrid's right vector is (-dy, dx)
      x, y = ax + fwd * dx - right * dy, ay + fwd * dy + right * dx
      if 0 <= x < env.grid.width and 0 <= y < env.grid.height:
        yield int(x), int(y), fwd, right

  def _update_seen(self) -> None:
    for x, y, _, _ in self._visible_cells():
      self.seen[x, y] = True
      self._name(self.env.grid.get(x, y))

  def objects(self) -> dict[str, tuple[int, int]]:
    """Seen objects (not carried) -> position, in name order."""
    out = {}
    grid = self.env.grid
    for x in range(grid.width):
      for y in range(grid.height):
        obj = grid.get(x, y)
        if self.seen[x, y] and obj is not None and id(obj) in self.names:
          out[self.names[id(obj)]] = (x, y)
    return dict(sorted(out.items()))

  def describe(self) -> str:
    env = self.env
    seen = []
    for x, y, fwd, right in sorted(self._visible_cells(), key=lambda c: (c[2], abs(c[3]), c[3])):
      obj = env.grid.get(x, y)
      name = self.names.get(id(obj)) if obj is not None else None
      if name is None or (x, y) == tuple(env.agent_pos):
        continue
      state = ""
      if obj.type == "door":
        state = "open " if obj.is_open else ("locked " if obj.is_locked else "closed ")
      where = []
      if fwd:
        where.append(_plural(fwd, "step") + " forward")
      if right:
        where.append(_plural(abs(right), "step") + (" right" if right > 0 else " left"))
      seen.append(f"a {state}{name} {' and '.join(where)}")
    ahead, (x, y) = 0, tuple(env.agent_pos)
    dx, dy = _DIRS[env.agent_dir]
    while True:
      x, y, ahead = x + dx, y + dy, ahead + 1
      cell = env.grid.get(x, y)
      if cell is not None and not cell.can_overlap():
        break
    blocker = self.names.get(id(cell), cell.type) if cell.type != "wall" else "a wall"
    lines = [f"Goal: {env.mission}",
             "You see: " + ("; ".join(seen) if seen else "no objects") + ".",
             f"In front of you: {blocker}, {_plural(ahead, 'step')} away.",
             "You are carrying " + (self.names.get(id(env.carrying), "something") if env.carrying
                                    else "nothing") + "."]
    return "\n".join(lines)

  # ---- planning on the seen grid -----------------------------------------------------------------

  def _passable(self, x: int, y: int) -> bool:
    if not self.seen[x, y]:
      return False
    cell = self.env.grid.get(x, y)
    return cell is None or cell.can_overlap()

  def _bfs(self) -> dict:
    """Shortest primitive paths from the agent's pose: pose -> (previous pose, action)."""
    start = (int(self.env.agent_pos[0]), int(self.env.agent_pos[1]), int(self.env.agent_dir))
    parent = {start: None}
    queue = collections.deque([start])
    while queue:
      pose = queue.popleft()
      x, y, d = pose
      dx, dy = _DIRS[d]
      for action, nxt in ((FORWARD, (x + dx, y + dy, d)), (LEFT, (x, y, (d - 1) % 4)),
                          (RIGHT, (x, y, (d + 1) % 4))):
        if nxt in parent or (action == FORWARD and not self._passable(nxt[0], nxt[1])):
          continue
        parent[nxt] = (pose, action)
        queue.append(nxt)
    return parent

  def path_to(self, target: tuple[int, int], tree: dict | None = None) -> list[int] | None:
    """Primitives that end next to `target` facing it (None: no known path)."""
    tree = tree if tree is not None else self._bfs()
    tx, ty = target
    best = None
    for d, (dx, dy) in enumerate(_DIRS):
      pose = (tx - dx, ty - dy, d)
      if pose in tree:
        path = []
        while tree[pose] is not None:
          pose, action = tree[pose]
          path.append(action)
        if best is None or len(path) < len(best):
          best = path[::-1]
    return best

  # ---- actions -------------------------------------------------------------------------------------

  def macros(self) -> dict[str, tuple[list[int], list[int]]]:
    """The actions valid now: text -> (path, tail) primitives; the path only moves (turns, forward)."""
    if self._macros is None:  # cached until the next primitive: invalid actions then cost nothing
      self._macros = self._compute_macros()
    return self._macros

  def _compute_macros(self) -> dict[str, tuple[list[int], list[int]]]:
    env = self.env
    out = {"turn left": ([], [LEFT]), "turn right": ([], [RIGHT]), "move forward": ([], [FORWARD])}
    tree = self._bfs()
    for name, pos in self.objects().items():
      path = self.path_to(pos, tree)
      if path is None:
        continue
      obj = env.grid.get(*pos)
      out[f"go to {name}"] = (path, [])
      if obj.type in _PICKABLE and env.carrying is None:
        out[f"pick up {name}"] = (path, [PICKUP])
      if obj.type == "door":
        if obj.is_open:
          out[f"go through {name}"] = (path, [FORWARD, FORWARD])
        elif not obj.is_locked or (env.carrying is not None and env.carrying.type == "key"
                                   and env.carrying.color == obj.color):
          out[f"toggle and go through {name}"] = (path, [TOGGLE, FORWARD, FORWARD])
    front = env.grid.get(*env.front_pos)
    if front is not None and front.type in ("door", "box"):
      out["toggle"] = ([], [TOGGLE])
    if env.carrying is not None:
      out["drop"] = ([], [DROP])
    out["check available actions"] = ([], [])
    return out

  def run(self, primitives: list[int]) -> float:
    """Executes primitives until the episode ends; returns the summed reward."""
    total = 0.0
    for action in primitives:
      if self.done:
        break
      _, reward, terminated, truncated, _ = self.gym_env.step(action)
      self._macros = None
      total += float(reward)
      if self.track:
        self._update_seen()
      if terminated or truncated:
        self.done, self.success = True, bool(reward > 0)
    self.reward += total
    return total

  def pose(self) -> tuple[int, int, int]:
    return int(self.env.agent_pos[0]), int(self.env.agent_pos[1]), int(self.env.agent_dir)


def agentgym_task(index: int) -> str:
  """Our task id for data index `index` of AgentGym's BabyAI server (a train seed: AgentGym's seeds are
  small numbers, which our split puts in train)."""
  return f"{AGENTGYM_LEVELS[index % len(AGENTGYM_LEVELS)]}/{index // len(AGENTGYM_LEVELS)}"


def _parse_task(task: str) -> tuple[str, int]:
  level, _, seed = str(task).partition("/")
  known = LEVELS["easy"] + LEVELS["hard"]
  if level not in known + AGENTGYM_LEVELS or not seed.isdigit():
    raise ValueError(f"bad babyai task {task!r}; valid: '<level>/<seed>' with level in {', '.join(known)} "
                     "(or one of AgentGym's levels, envs.babyai.AGENTGYM_LEVELS)")
  return level, int(seed)


def _normalise(action: str) -> str:
  text = " ".join(action.lower().replace("pickup", "pick up").split())
  return text.strip(" .\"'`")


class BabyAIEnv(TextEnv):
  """Task id "<Level>/<seed>", e.g. "GoToLocal/1000003". Reward: minigrid's, at the step that ends it."""

  name = "babyai"
  max_turns = 20

  def __init__(self):
    super().__init__()
    self.episode: _Episode | None = None

  @property
  def instruction(self) -> str:
    return _INSTRUCTION

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    check_split(split, difficulty)
    levels = [lv for d in ("easy", "hard") if difficulty in (d, "all") for lv in LEVELS[d]]
    start, stop = _SEEDS[split]
    stop = min(stop, start + _TRAIN_LISTED)
    # Seed-major order, so that the first n tasks cover every level.
    return [f"{level}/{seed}" for seed in range(start, stop) for level in levels]

  def _observation(self, prefix: str = "") -> Observation:
    macros = self.episode.macros()
    text = self.episode.describe()
    if prefix:
      text = f"{prefix}\n{text}"
    text += "\nAvailable actions: " + ", ".join(f'"{a}"' for a in macros)
    return Observation(text, list(macros))

  def _reset(self, task: str) -> Observation:
    level, seed = _parse_task(task)
    start, stop = _SEEDS["test"]
    if not (seed < _SEEDS["train"][1] or start <= seed < stop):
      raise ValueError(f"babyai seed {seed} of {task!r} is outside the train {_SEEDS['train']} and "
                       f"test {_SEEDS['test']} ranges")
    if self.episode is not None:
      self.episode.gym_env.close()
    self.episode = _Episode(level, seed)
    return self._observation()

  def _step(self, action: str) -> Step:
    episode = self.episode
    text = _normalise(action)
    macros = episode.macros()
    if text not in macros:
      shown = action if len(action) <= 100 else action[:100] + "..."
      return self.invalid_step(f"Invalid action {shown!r}: choose one of the available actions.")
    if text == "check available actions":
      return Step(self._observation(), 0.0, False, False, 0.0, {"invalid": False})
    reward = episode.run(sum(macros[text], []))
    if episode.done:
      outcome = "Mission complete." if episode.success else "The episode ended without completing the goal."
      score = float(np.clip(episode.reward, 0.0, 1.0)) if episode.success else 0.0
      return Step(Observation(f"You chose: {text}. {outcome}", []), float(reward), True, episode.success,
                  score, {"invalid": False})
    return Step(self._observation(f"You chose: {text}."), float(reward), False, False, 0.0,
                {"invalid": False})

  def close(self) -> None:
    if self.episode is not None:
      self.episode.gym_env.close()
      self.episode = None

  # ---- the expert ----------------------------------------------------------------------------------

  def expert(self, task: str) -> list[str]:
    """BabyAIBot's primitive actions, with runs replaced by the macros that reach the same state."""
    level, seed = _parse_task(task)
    primitives, poses = _bot_trajectory(level, seed)
    compressed = _compress(level, seed, primitives, poses)
    if compressed is not None:
      return compressed
    return _translate(level, seed, primitives)


def _bot_trajectory(level: str, seed: int, limit: int = 1000) -> tuple[list[int], list[tuple]]:
  """The bot's primitives and the agent pose before each of them (and after the last)."""
  episode = _Episode(level, seed, track=False)
  bot = BabyAIBot(episode.gym_env)
  primitives, poses = [], [episode.pose()]
  while not episode.done and len(primitives) < limit:
    action = int(bot.replan())
    if action == DONE:
      break
    episode.run([action])
    primitives.append(action)
    poses.append(episode.pose())
  episode.gym_env.close()
  return primitives, poses


def _compress(level: str, seed: int, primitives: list[int], poses: list[tuple]) -> list[str] | None:
  """Greedy: at each point take the macro that reproduces the longest stretch of the bot's run.

  A macro (path + tail) reproduces P[i:k] when P[i:m] only moves, the bot's pose at m is the path's end
  pose, and P[m:k] is the tail. Moves change nothing but the pose, so the states then agree.
  """
  episode = _Episode(level, seed)
  try:
    actions, i, n = [], 0, len(primitives)
    while i < n and not episode.done:
      stop = i
      while stop < n and primitives[stop] in _MOVES:
        stop += 1
      best, best_k = None, i
      for text, (path, tail) in episode.macros().items():
        if text == "check available actions":
          continue
        end = _end_pose(episode.pose(), path)
        for m in range(stop, i - 1, -1):
          k = m + len(tail)
          if poses[m] == end and primitives[m:k] == tail and k > best_k:
            best, best_k = text, k
            break
        # The bot's final run of moves ends the episode: any macro ending at its last pose does too.
        if not tail and stop == n and end == poses[n] and n > best_k:
          best, best_k = text, n
      if best is None:
        return None
      episode.run(sum(episode.macros()[best], []))
      actions.append(best)
      if not episode.done and episode.pose() != poses[best_k]:
        return None
      i = best_k
    return actions if episode.success else None
  finally:
    episode.gym_env.close()


def _end_pose(pose: tuple[int, int, int], moves: list[int]) -> tuple[int, int, int]:
  x, y, d = pose
  for action in moves:
    if action == LEFT:
      d = (d - 1) % 4
    elif action == RIGHT:
      d = (d + 1) % 4
    else:
      x, y = x + _DIRS[d][0], y + _DIRS[d][1]
  return x, y, d


def _translate(level: str, seed: int, primitives: list[int]) -> list[str]:
  """The bot's run one primitive per action (the fallback when compression fails)."""
  episode = _Episode(level, seed)
  actions = []
  for action in primitives:
    if action == PICKUP:
      front = episode.env.grid.get(*episode.env.front_pos)
      actions.append(f"pick up {episode.names.get(id(front), '?')}")
    else:
      actions.append(_PRIMITIVE_TEXT[action])
    episode.run([action])
  episode.gym_env.close()
  return actions
