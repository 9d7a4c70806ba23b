"""WebShop data: the loader of the original files (items_shuffle*.json, items_ins_v2*.json,
items_human_ins.json) and of our generated catalogue, both through the same normalisation and goals."""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import random
import re

from envs import webshop_catalog

# goal.py: PRICE_RANGE, the budgets an instruction can state ("price lower than 40.00 dollars").
PRICE_RANGE = [10.0 * i for i in range(1, 100)]
NO_BUDGET = 1_000_000.0
# web_agent_text_env.py: goals are shuffled with this seed before the test/dev/train bands are cut.
GOAL_SHUFFLE_SEED = 233
GOAL_KINDS = ("human", "synthetic")


@dataclasses.dataclass(frozen=True)
class Catalog:
  """Normalised products (engine.py::load_products schema), their prices, and the goals.

  goals[i] = {asin, category, query, name, product_category, instruction_text, attributes, price_upper,
  goal_options (list of option values)}; the task id of goals[i] is f"{source}/{i}"."""

  source: str
  products: list[dict]
  by_asin: dict[str, dict]
  prices: dict[str, float]
  goals: list[dict]


def _parse_pricing(pricing: str | None) -> tuple[list[float], str]:
  """engine.py: "$12.99" -> [12.99]; "$10.00 - $20.00" -> [10.0, 20.0]; missing -> [100.0]."""
  if not pricing:
    return [100.0], "$100.0"
  values = []
  for part in pricing.split("$")[1:]:
    digits = re.sub(r"[^\d.]", "", part)
    try:
      values.append(float(digits))
    except ValueError:
      continue
  if not values:
    return [100.0], "$100.0"
  if len(values) == 1:
    return values, f"${values[0]}"
  return values[:2], f"${values[0]} to ${values[1]}"


def normalize_products(items: list[dict], attributes: dict, human: dict | None,
                       reviews: list[dict] | None = None) -> list[dict]:
  """engine.py::load_products on in-memory records: Title/Description/BulletPoints/Price/options/
  Attributes; duplicate asins and asins that are "nan" or longer than 10 characters are dropped."""
  all_reviews = {r["asin"]: r.get("reviews", []) for r in reviews or []}
  ratings = {r["asin"]: r.get("average_rating", "N.A.") for r in reviews or []}
  products, seen = [], set()
  for item in items:
    asin = item["asin"]
    if asin == "nan" or len(asin) > 10 or asin in seen:
      continue
    seen.add(asin)
    pricing, price_tag = _parse_pricing(item.get("pricing"))
    options = {}
    for name, contents in (item.get("customization_options") or {}).items():
      if contents is None:
        continue
      options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
    bullets = item.get("small_description") or []
    product = {
        "asin": asin, "name": item["name"], "Title": item["name"],
        "Description": item.get("full_description") or "",
        "BulletPoints": bullets if isinstance(bullets, list) else [bullets],
        "pricing": pricing, "Price": price_tag, "options": options,
        "Attributes": (attributes.get(asin) or {}).get("attributes") or ["DUMMY_ATTR"],
        "query": item["query"].lower().strip(), "category": item["category"],
        "product_category": item.get("product_category") or "",
        "Reviews": all_reviews.get(asin, []), "Rating": ratings.get(asin, item.get("average_rating", "N.A.")),
    }
    if human is not None and asin in human:
      product["instructions"] = human[asin]
    if asin in attributes:
      product["instruction_text"] = attributes[asin].get("instruction")
      product["instruction_attributes"] = attributes[asin].get("instruction_attributes")
    products.append(product)
  return products


def product_prices(products: list[dict]) -> dict[str, float]:
  """engine.py::generate_product_prices: the single price, or a uniform draw in a price range. The draw is
  seeded by the asin (the original used the global RNG), so prices do not depend on load order."""
  prices = {}
  for p in products:
    pricing = p["pricing"]
    prices[p["asin"]] = pricing[0] if len(pricing) == 1 else random.Random(p["asin"]).uniform(*pricing[:2])
  return prices


def _budget(price: float, rng: random.Random) -> tuple[float, str]:
  """goal.py: the larger of two draws among the 4 PRICE_RANGE values just above the price."""
  above = [p for p in PRICE_RANGE if p > price][:4]
  if len(above) < 2:
    return NO_BUDGET, ""
  upper = sorted(rng.sample(above, 2))[1]
  return upper, f", and price lower than {upper:.2f} dollars"


def _goal(product: dict, text: str, attributes: list[str], options: list[str], upper: float) -> dict:
  return {"asin": product["asin"], "category": product["category"], "query": product["query"],
          "name": product["name"], "product_category": product["product_category"],
          "instruction_text": text, "attributes": list(attributes), "price_upper": upper,
          "goal_options": list(options)}


def human_goals(products: list[dict], prices: dict[str, float]) -> list[dict]:
  """goal.py::get_human_goals: one goal per human instruction with at least one attribute."""
  goals = []
  for p in products:
    for k, ins in enumerate(p.get("instructions") or []):
      if not ins.get("instruction_attributes"):
        continue
      upper, price_text = _budget(prices[p["asin"]], random.Random(f"{p['asin']}/{k}"))
      goals.append(_goal(p, ins["instruction"].strip(".") + price_text, ins["instruction_attributes"],
                         ins.get("instruction_options") or [], upper))
  return goals


def synthetic_goals(products: list[dict], prices: dict[str, float]) -> list[dict]:
  """goal.py::get_synthetic_goals: items_ins_v2 instruction x every combination of the product's options
  ("... with color: red, and size: large")."""
  goals = []
  for p in products:
    if not p.get("instruction_text") or not p.get("instruction_attributes"):
      continue
    upper, price_text = _budget(prices[p["asin"]], random.Random(p["asin"]))
    names = sorted(p["options"])
    combos = [[]]
    for name in names:
      combos = [c + [(name, v)] for c in combos for v in p["options"][name]]
    for combo in combos:
      option_text = ", and ".join(f"{k}: {v}" for k, v in combo)
      option_text = f" with {option_text}" if option_text else ""
      goals.append(_goal(p, f"{p['instruction_text']}{option_text}{price_text}",
                         p["instruction_attributes"], [v for _, v in combo], upper))
  return goals


def _catalog(source: str, products: list[dict], goal_kind: str) -> Catalog:
  if goal_kind not in GOAL_KINDS:
    raise ValueError(f"unknown goals {goal_kind!r}; valid: {', '.join(GOAL_KINDS)}")
  prices = product_prices(products)
  goals = (human_goals if goal_kind == "human" else synthetic_goals)(products, prices)
  random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
  return Catalog(source, products, {p["asin"]: p for p in products}, prices, goals)


def _find(data_dir: str, pattern: str, required: bool = True) -> str | None:
  """The first file (sorted: items_shuffle.json before items_shuffle_1000.json) matching pattern."""
  paths = sorted(glob.glob(os.path.join(data_dir, pattern)))
  if not paths and required:
    raise FileNotFoundError(f"no {pattern} in WebShop data dir {data_dir!r}; expected the files of "
                            "princeton-nlp/WebShop's setup.sh (items_shuffle*.json, items_ins_v2*.json, "
                            "items_human_ins.json)")
  return paths[0] if paths else None


def _read_json(path: str | None):
  if path is None:
    return None
  with open(path) as f:
    return json.load(f)


@functools.lru_cache(maxsize=4)
def load(data_dir: str, goals: str = "human", num_products: int | None = None) -> Catalog:
  """The original files in `data_dir` (cached per process). goals="human" reads items_human_ins.json
  (the AgentGym setting), "synthetic" the instructions of items_ins_v2. num_products keeps the first N
  items (items_shuffle is pre-shuffled), like the original's num_products."""
  items = _read_json(_find(data_dir, "items_shuffle*.json"))
  attributes = _read_json(_find(data_dir, "items_ins_v2*.json"))
  human = _read_json(_find(data_dir, "items_human_ins*.json", required=goals == "human"))
  reviews = _read_json(_find(data_dir, "*reviews*.json", required=False))
  if num_products is not None:
    items = items[:num_products]
  return _catalog(goals, normalize_products(items, attributes, human, reviews), goals)


@functools.lru_cache(maxsize=4)
def generated(n_products: int = 2500, seed: int = 0) -> Catalog:
  """Our generated catalogue in the original schema, read by the same code as the real files."""
  items, attributes, human = webshop_catalog.generate(n_products, seed)
  return _catalog("gen", normalize_products(items, attributes, human), "human")
