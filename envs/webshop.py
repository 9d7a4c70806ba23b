"""WebShop (Yao et al. 2022) on our own engine: search[...] / click[...] over text pages in the original's
"[SEP]" style, bm25s search, and the original purchase reward (envs/webshop_reward.py)."""

from __future__ import annotations

import json
import os
import re

import bm25s

from envs import webshop_data, webshop_reward
from envs.base import Observation, Step, TextEnv, check_split

# engine.py: 50 search hits, shown 10 per results page.
SEARCH_RETURN_N = 50
PRODUCT_WINDOW = 10
BUY_NOW, NEXT_PAGE, PREV_PAGE, BACK_TO_SEARCH = "Buy Now", "Next >", "< Prev", "Back to Search"
SUB_PAGES = ("Description", "Features", "Reviews")
# Test goals are the first min(500, n // 5) of the shuffled goals (the original's test band is goals
# [0, 500)); train goals are all the others.
TEST_GOALS = 500
EASY_MAX, HARD_MIN = 2, 3
_ACTION_RE = re.compile(r"\s*([A-Za-z_]+)\s*\[(.*)\]\s*", re.DOTALL)
_PRICE_TEXT_RE = re.compile(r",?\s*and price lower than [\d.]+ dollars\s*$")
_MAX_QUERY_CHARS = 500

INSTRUCTION = """You are web shopping. I will give you an instruction about what to buy, and you act on \
the shop's web pages to buy the best matching product.
Every observation is the visible text of the current page; its parts are separated by [SEP]. Buttons and \
links on a page are clickable; the list of valid actions is given with each observation.
Actions:
- search[<keywords>]: search the shop (only on a page with a search box);
- click[<button>]: click a button, a product id or an option value shown on the page (e.g. click[Buy Now], \
click[Next >], click[< Prev], click[Back to Search], click[b0000123], click[large]).
Choose the product's options (size, color, ...) before clicking Buy Now; Buy Now ends the episode and gives \
a reward in [0, 1] for how well the product, its options and its price match the instruction.
Reply as:
Thought: <your reasoning>
Action: <one action>"""


def search_keywords(instruction_text: str) -> str:
  """The instruction without its budget clause: the expert's (and listed) search query."""
  return _PRICE_TEXT_RE.sub("", instruction_text).strip()


class SearchEngine:
  """bm25s over each product's title, description, bullet points and option values (the original
  indexes the same fields with Lucene)."""

  def __init__(self, products: list[dict]):
    self._asins = [p["asin"] for p in products]
    docs = [" ".join([p["Title"], p["Description"], " ".join(p["BulletPoints"]),
                      " ".join(v for vs in p["options"].values() for v in vs)]) for p in products]
    self._bm25 = bm25s.BM25()
    self._bm25.index(bm25s.tokenize(docs, stopwords="en", return_ids=False, show_progress=False),
                     show_progress=False)

  def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[str]:
    """Asins of the top-k documents with a positive score, best first."""
    tokens = bm25s.tokenize([query[:_MAX_QUERY_CHARS]], stopwords="en", return_ids=False,
                            show_progress=False)
    if not tokens or not tokens[0]:
      return []
    docs, scores = self._bm25.retrieve(tokens, k=min(k, len(self._asins)), show_progress=False)
    return [self._asins[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0]


_ENGINES: dict[int, tuple[webshop_data.Catalog, SearchEngine]] = {}


def _engine(catalog: webshop_data.Catalog) -> SearchEngine:
  """One index per catalogue per process (the catalogue object itself is cached by webshop_data)."""
  if id(catalog) not in _ENGINES:
    _ENGINES[id(catalog)] = (catalog, SearchEngine(catalog.products))
  return _ENGINES[id(catalog)][1]


def _join(parts: list[str]) -> str:
  return " [SEP] ".join(str(p).strip() for p in parts if str(p).strip())


class WebShopEnv(TextEnv):
  """WebShop. Task ids are "<source>/<goal index>" (source: gen | human | synthetic).

  data_dir (or $WEBSHOP_DATA) points at the original files; without it a generated catalogue of
  n_products products (seed) is used. goals: "human" | "synthetic" (real data only)."""

  name = "webshop"
  max_turns = 15

  def __init__(self, data_dir: str | None = None, goals: str = "human", num_products: int | None = None,
               n_products: int = 2500, seed: int = 0):
    super().__init__()
    data_dir = data_dir or os.environ.get("WEBSHOP_DATA") or None
    if data_dir:
      self.catalog = webshop_data.load(data_dir, goals, num_products)
    else:
      self.catalog = webshop_data.generated(n_products, seed)
    self.engine = _engine(self.catalog)
    self._goal: dict | None = None
    self._page: dict = {}

  @property
  def instruction(self) -> str:
    return INSTRUCTION

  # ---- tasks ---------------------------------------------------------------------------------------

  def _n_test(self) -> int:
    return min(TEST_GOALS, len(self.catalog.goals) // 5)

  @staticmethod
  def difficulty(goal: dict) -> str:
    """easy: <= 2 required attributes + options; hard: >= 3."""
    return "easy" if len(goal["attributes"]) + len(goal["goal_options"]) <= EASY_MAX else "hard"

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    check_split(split, difficulty)
    n_test = self._n_test()
    indices = range(n_test) if split == "test" else range(n_test, len(self.catalog.goals))
    return [f"{self.catalog.source}/{i}" for i in indices
            if difficulty == "all" or self.difficulty(self.catalog.goals[i]) == difficulty]

  def goal(self, task: str) -> dict:
    source, _, index = str(task).partition("/")
    if source != self.catalog.source or not index.isdigit() or int(index) >= len(self.catalog.goals):
      raise ValueError(f"unknown webshop task {task!r}; valid: '{self.catalog.source}/<index>' with index "
                       f"< {len(self.catalog.goals)}")
    return self.catalog.goals[int(index)]

  # ---- pages ---------------------------------------------------------------------------------------

  def _render(self) -> tuple[str, dict[str, tuple], Observation]:
    """(text, clickables: lower-case label -> (kind, payload), observation) of the current page."""
    page, goal = self._page, self._goal
    head = ["Instruction:", goal["instruction_text"]]
    clickables: dict[str, tuple] = {}
    kind = page["kind"]
    if kind == "search":
      parts = ["WebShop"] + head + ["Search"]
    elif kind == "results":
      hits, number = page["hits"], page["number"]
      parts = head + [BACK_TO_SEARCH, f"Page {number} (Total results: {len(hits)})"]
      clickables[BACK_TO_SEARCH.lower()] = ("back", None)
      if number > 1:
        parts.append(PREV_PAGE)
        clickables[PREV_PAGE.lower()] = ("prev", None)
      if len(hits) > number * PRODUCT_WINDOW:
        parts.append(NEXT_PAGE)
        clickables[NEXT_PAGE.lower()] = ("next", None)
      for asin in hits[(number - 1) * PRODUCT_WINDOW:number * PRODUCT_WINDOW]:
        product = self.catalog.by_asin[asin]
        parts += [asin, product["Title"], product["Price"]]
        clickables[asin.lower()] = ("item", asin)
    elif kind == "item":
      product = self.catalog.by_asin[page["asin"]]
      parts = head + [BACK_TO_SEARCH, PREV_PAGE]
      clickables[BACK_TO_SEARCH.lower()] = ("back", None)
      clickables[PREV_PAGE.lower()] = ("prev", None)
      for option_name, values in product["options"].items():
        parts.append(option_name)
        for value in values:
          parts.append(value)
          clickables[value.lower()] = ("option", option_name, value)
      parts += [product["Title"], f"Price: {product['Price']}", f"Rating: {product['Rating']}"]
      for button in (*SUB_PAGES, BUY_NOW):
        parts.append(button)
        clickables[button.lower()] = ("sub", button) if button != BUY_NOW else ("buy", None)
    elif kind == "sub":
      product = self.catalog.by_asin[page["asin"]]
      parts = head + [BACK_TO_SEARCH, PREV_PAGE]
      clickables[BACK_TO_SEARCH.lower()] = ("back", None)
      clickables[PREV_PAGE.lower()] = ("prev", None)
      if page["sub"] == "Description":
        parts.append(product["Description"])
      elif page["sub"] == "Features":
        parts += product["BulletPoints"]
      else:
        for review in product["Reviews"]:
          parts += [review.get("title", ""), str(review.get("score", "")), review.get("body", "")]
    else:
      parts = ["Thank you for shopping with us!", "Purchased", f"asin: {page['asin']}",
               f"options: {json.dumps(page['options'], sort_keys=True)}",
               "Your score (min 0.0, max 1.0)", f"{page['reward']:.4f}"]
    valid = [f"click[{label}]" for label in clickables]
    if kind == "search":
      valid.insert(0, f"search[{search_keywords(goal['instruction_text'])}]")
    text = _join(parts)
    if kind == "item" and page["selected"]:
      # Not in the original's simple mode (its rich mode says "You have clicked ..."): without it the agent
      # cannot see which options are chosen.
      text += " [SEP] Selected: " + ", ".join(f"{k}: {v}" for k, v in sorted(page["selected"].items()))
    return text, clickables, Observation(text, valid)

  def _reset(self, task: str) -> Observation:
    self._goal = self.goal(task)
    self._page = {"kind": "search"}
    return self._render()[2]

  def _invalid(self, feedback: str) -> Step:
    step = self.invalid_step(feedback)
    return Step(step.observation, 0.0, False, False, 0.0, {"invalid": True, "page": self._page["kind"]})

  def _step(self, action: str) -> Step:
    match = _ACTION_RE.fullmatch(action) if isinstance(action, str) else None
    if match is None:
      return self._invalid(f"Invalid action {str(action)[:80]!r}: use search[<keywords>] or click[<button>].")
    verb, arg = match.group(1).lower(), match.group(2).strip()
    _, clickables, _ = self._render()
    if verb == "search":
      if self._page["kind"] != "search":
        return self._invalid("There is no search box on this page; click[Back to Search] first.")
      if not arg:
        return self._invalid("Empty search: use search[<keywords>].")
      self._page = {"kind": "results", "keywords": arg, "number": 1, "hits": self.engine.search(arg)}
    elif verb == "click":
      target = clickables.get(arg.lower())
      if target is None:
        return self._invalid(f"Invalid click {arg[:80]!r}: not a button on this page.")
      done_step = self._click(target)
      if done_step is not None:
        return done_step
    else:
      return self._invalid(f"Unknown action {verb[:40]!r}; valid: search[...], click[...].")
    return Step(self._render()[2], 0.0, False, False, 0.0, {"invalid": False, "page": self._page["kind"]})

  def _click(self, target: tuple) -> Step | None:
    """Moves between pages; returns the final Step when Buy Now was clicked."""
    page, kind = self._page, target[0]
    if kind == "back":
      self._page = {"kind": "search"}
    elif kind == "next":
      page["number"] += 1
    elif kind == "prev" and page["kind"] == "results":
      page["number"] -= 1
    elif kind == "prev" and page["kind"] == "item":
      self._page = page["results"]
    elif kind == "prev":
      page.update(kind="item")
    elif kind == "item":
      self._page = {"kind": "item", "asin": target[1], "selected": {}, "results": page}
    elif kind == "option":
      page["selected"][target[1]] = target[2]
    elif kind == "sub":
      page.update(kind="sub", sub=target[1])
    else:  # Buy Now
      product = self.catalog.by_asin[page["asin"]]
      value, terms = webshop_reward.reward(product, self._goal, self.catalog.prices[page["asin"]],
                                           page["selected"])
      value = min(max(value, 0.0), 1.0)
      self._page = {"kind": "done", "asin": page["asin"], "options": dict(page["selected"]), "reward": value}
      success = value >= 1.0 - 1e-9
      info = {"invalid": False, "page": "done", "asin": page["asin"], "reward_terms": terms}
      return Step(self._render()[2], value, True, success, value, info)
    return None

  # ---- expert --------------------------------------------------------------------------------------

  def expert(self, task: str) -> list[str]:
    """Search the instruction's key words (or the target's title when the target is not among the 50
    hits), page to the target, click it, click each goal option, Buy Now."""
    goal = self.goal(task)
    asin = goal["asin"]
    query = search_keywords(goal["instruction_text"])
    hits = self.engine.search(query)
    if asin not in hits:
      query = self.catalog.by_asin[asin]["Title"]
      hits = self.engine.search(query)
    actions = [f"search[{query}]"]
    if asin in hits:
      actions += [f"click[{NEXT_PAGE}]"] * (hits.index(asin) // PRODUCT_WINDOW)
    actions.append(f"click[{asin.lower()}]")
    options = self.catalog.by_asin[asin]["options"]
    for wanted in goal["goal_options"]:
      values = [v for vs in options.values() for v in vs]
      if not values:
        break
      best = max(values, key=lambda v: (v == wanted.lower(), webshop_reward.token_set_ratio(v, wanted)))
      actions.append(f"click[{best}]")
    actions.append(f"click[{BUY_NOW}]")
    return actions
