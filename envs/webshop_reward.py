"""WebShop's purchase reward (Yao et al. 2022, web_agent_site/engine/goal.py), re-implemented.

Pure functions over product and goal dicts in the loader's normalised schema (envs/webshop_data.py).
"""

from __future__ import annotations

import re

# goal.py: EXACT_MATCH_OPTS -- option names compared by exact value rather than fuzzily ("large" must not
# match "x-large", which token_set_ratio scores 100).
EXACT_MATCH_OPTS = ("size",)
# goal.py: a fuzzy match counts when thefuzz's token_set_ratio is strictly above 85.
FUZZY_THRESHOLD = 85

# normalize.py::normalize_color maps an option value to the first listed colour word it contains, so
# "navy blue" and "blue" compare equal. Our own list; like the original it is in alphabetical order, which
# decides which word wins in "violet lavender" (-> lavender).
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "beige", "black", "blue", "blush", "bronze", "brown",
    "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "chocolate", "coffee", "copper",
    "coral", "cream", "denim", "fuchsia", "gold", "gray", "green", "grey", "indigo", "ivory", "khaki",
    "lavender", "lilac", "lime", "magenta", "maroon", "mauve", "mint", "multicolor", "mustard", "navy",
    "nude", "olive", "orange", "peach", "pink", "plum", "purple", "rainbow", "red", "rose", "rust", "sand",
    "silver", "tan", "taupe", "teal", "turquoise", "violet", "white", "wine", "yellow",
)

# The original keeps the NOUN/PROPN tokens of the two titles (spaCy en_core_web_lg). That model cannot be
# fetched offline, so "type words" are the alphabetic content words of a title: these stop words and
# marketing adjectives are dropped, everything else counts as a noun. Documented in docs/ENVIRONMENTS.md.
_NON_NOUNS = frozenset("""
a an the and or of for with without in on at to by from as is are be this that these those it its your our
my you we all any each per new best great premium high quality natural original classic soft light heavy
large small big mini extra super ultra pro plus free easy long short
""".split())


def full_process(text: str) -> str:
  """thefuzz's default processor: lower case, every non-alphanumeric character becomes a space."""
  return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _indel_ratio(a: str, b: str) -> float:
  """100 * (1 - InDel distance / (len a + len b)) = 100 * 2 LCS / (len a + len b), as in rapidfuzz."""
  if not a and not b:
    return 100.0
  prev = [0] * (len(b) + 1)
  for ca in a:
    cur = [0]
    for j, cb in enumerate(b):
      cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
    prev = cur
  return 200.0 * prev[-1] / (len(a) + len(b))


def token_set_ratio(s1: str, s2: str) -> int:
  """thefuzz.fuzz.token_set_ratio: the best ratio among "sorted intersection" vs each "intersection +
  remainder", and between the two; 100 when one token set contains the other. Rounded to an int."""
  tokens_a, tokens_b = set(full_process(s1).split()), set(full_process(s2).split())
  if not tokens_a or not tokens_b:
    return 0
  sect = " ".join(sorted(tokens_a & tokens_b))
  diff_ab = " ".join(sorted(tokens_a - tokens_b))
  diff_ba = " ".join(sorted(tokens_b - tokens_a))
  if sect and (not diff_ab or not diff_ba):
    return 100
  combined_ab = f"{sect} {diff_ab}".strip()
  combined_ba = f"{sect} {diff_ba}".strip()
  scores = [_indel_ratio(combined_ab, combined_ba)]
  if sect:
    scores += [_indel_ratio(sect, combined_ab), _indel_ratio(sect, combined_ba)]
  return int(round(max(scores)))


def normalize_color(value: str) -> str:
  """The first colour word of COLOR_SET contained in `value`, else `value` unchanged."""
  for color in COLOR_SET:
    if color in value:
      return color
  return value


def type_words(title: str) -> list[str]:
  """The title's stand-in for spaCy nouns: lower-cased alphabetic words minus _NON_NOUNS."""
  return [w for w in re.findall(r"[a-z]+", title.lower()) if len(w) > 1 and w not in _NON_NOUNS]


def type_reward(product: dict, goal: dict) -> dict:
  """goal.py::get_type_reward. r_type = 1 if the query matches, or >= 2 product_category levels are
  shared, or title_score > 0.2 (else 0.5); then 0.1 if title_score < 0.1 and 0 if title_score == 0.
  title_score = |type words of bought title & of goal title| / |type words of goal title| (0.2 if none)."""
  query_match = product["query"] == goal["query"]
  bought_cat = {x.strip() for x in product["product_category"].split("›")}
  goal_cat = {x.strip() for x in goal["product_category"].split("›")}
  category_match = len(bought_cat & goal_cat) >= 2
  desired = type_words(goal["name"])
  if desired:
    title_score = len(set(type_words(product["name"])) & set(desired)) / len(desired)
  else:
    title_score = 0.2
  r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
  if title_score < 0.1:
    r_type = 0.1
  if title_score == 0.0:
    r_type = 0.0
  return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
          "title_score": title_score}


def _in_texts(value: str, product: dict) -> bool:
  """goal.py's fallback: the phrase appears in the title, the bullet points or the description."""
  return (value in product["Title"].lower() or value in " ".join(product["BulletPoints"]).lower()
          or value in product["Description"].lower())


def attribute_matches(product: dict, goal_attributes: list[str]) -> int:
  """goal.py::get_attribute_reward: a goal attribute matches if some product attribute has
  token_set_ratio > 85 with it, or it appears verbatim in the product's texts."""
  matches = 0
  for g_attr in goal_attributes:
    if any(token_set_ratio(p_attr, g_attr) > FUZZY_THRESHOLD for p_attr in product["Attributes"]):
      matches += 1
    elif _in_texts(g_attr, product):
      matches += 1
  return matches


def option_matches(product: dict, goal_options: list[str], chosen: dict[str, str]) -> int:
  """goal.py::get_option_reward: each CHOSEN option (colour-normalised) counts once if it equals a goal
  option (size) or fuzzily matches one (other names), or appears in the product's texts.

  Unlike the original the count is capped at len(goal_options), so extra clicks cannot lift the reward
  above 1 (the original's total can exceed 1 when several chosen options hit the same goal option)."""
  goals = [normalize_color(o) for o in goal_options]
  matches = 0
  for name, value in sorted(chosen.items()):
    value = normalize_color(value)
    if name.lower() in EXACT_MATCH_OPTS:
      matched = value in goals
    else:
      matched = any(token_set_ratio(g, value) > FUZZY_THRESHOLD for g in goals)
    if matched or _in_texts(value, product):
      matches += 1
  return min(matches, len(goals))


def reward(product: dict, goal: dict, price: float, chosen: dict[str, str]) -> tuple[float, dict]:
  """goal.py::get_reward: r_type * (attribute matches + option matches + [price <= price_upper])
  / (|goal attributes| + |goal options| + 1). Returns (reward in [0, 1], the terms)."""
  r_type = type_reward(product, goal)
  r_price = float(price <= goal["price_upper"])
  n_att = attribute_matches(product, goal["attributes"])
  n_opt = option_matches(product, goal["goal_options"], chosen)
  denominator = len(goal["attributes"]) + len(goal["goal_options"]) + 1
  total = r_type["r_type"] * (n_att + n_opt + r_price) / denominator
  info = dict(r_type, r_price=r_price, attribute_matches=n_att, option_matches=n_opt,
              n_attributes=len(goal["attributes"]), n_options=len(goal["goal_options"]))
  return float(total), info
