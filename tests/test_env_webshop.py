"""WebShop: the original reward's terms on hand-computed cases, the loader on files in the real schema,
the pages and their actions, expert replay, fuzzing, splits and determinism across processes."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

import envs
from envs import webshop_catalog, webshop_data
from envs.webshop import search_keywords
from envs.webshop_reward import normalize_color, reward, token_set_ratio, type_reward
from tests import env_checks


@pytest.fixture(scope="module")
def env():
  return envs.make("webshop")


# ---- reward: hand-built products, values computed by hand from goal.py's formula ---------------------
# total = r_type * (attribute matches + option matches + [price <= price_upper]) / (|attrs| + |opts| + 1)

def _product(**overrides):
  product = {
      "asin": "B0TARGET01", "name": "Acme Deodorant Stick", "Title": "Acme Deodorant Stick",
      "query": "deodorant", "product_category": "Beauty & Personal Care › Personal Care › Deodorants",
      "Attributes": ["long lasting", "sensitive skin"], "BulletPoints": ["Gentle on skin."],
      "Description": "A deodorant stick.", "options": {"scent": ["lavender", "citrus"],
                                                       "size": ["3 ounce", "2 count"]},
  }
  product.update(overrides)
  return product


def _goal(**overrides):
  goal = {"asin": "B0TARGET01", "name": "Acme Deodorant Stick", "query": "deodorant",
          "product_category": "Beauty & Personal Care › Personal Care › Deodorants",
          "attributes": ["long lasting", "sensitive skin"], "goal_options": ["lavender", "3 ounce"],
          "price_upper": 20.0}
  goal.update(overrides)
  return goal


RIGHT_OPTIONS = {"scent": "lavender", "size": "3 ounce"}


def test_reward_exact_match_is_one():
  value, terms = reward(_product(), _goal(), 10.0, RIGHT_OPTIONS)
  assert value == 1.0  # (2 + 2 + 1) / (2 + 2 + 1), r_type 1
  assert terms["title_score"] == 1.0 and terms["query_match"] and terms["category_match"]


def test_reward_missing_attribute():
  goal = _goal(attributes=["long lasting", "aluminum free"])  # "aluminum free": not in attrs nor texts
  value, terms = reward(_product(), goal, 10.0, RIGHT_OPTIONS)
  assert terms["attribute_matches"] == 1
  assert value == pytest.approx((1 + 2 + 1) / (2 + 2 + 1))


def test_reward_attribute_found_in_texts_counts():
  # goal.py's fallback: a goal attribute written verbatim in title, bullets or description matches.
  goal = _goal(attributes=["long lasting", "gentle on skin"])
  value, _ = reward(_product(), goal, 10.0, RIGHT_OPTIONS)
  assert value == 1.0


def test_reward_wrong_option():
  value, terms = reward(_product(), _goal(), 10.0, {"scent": "citrus", "size": "3 ounce"})
  assert terms["option_matches"] == 1
  assert value == pytest.approx((2 + 1 + 1) / 5)


def test_reward_option_not_chosen():
  value, _ = reward(_product(), _goal(), 10.0, {})
  assert value == pytest.approx((2 + 0 + 1) / 5)


def test_reward_size_is_exact_but_color_is_fuzzy_and_normalised():
  product = _product(options={"size": ["large", "x-large"], "color": ["navy blue", "red"]})
  goal = _goal(goal_options=["large", "blue"])
  # "x-large" vs "large": token_set_ratio is 100, but size is an EXACT_MATCH_OPTS name -> no match.
  assert token_set_ratio("x-large", "large") == 100
  value, _ = reward(product, goal, 10.0, {"size": "x-large", "color": "navy blue"})
  assert value == pytest.approx((2 + 1 + 1) / 5)  # "navy blue" -> "blue" (normalize_color) matches
  assert normalize_color("navy blue") == "blue" and normalize_color("violet lavender") == "lavender"


def test_reward_price_over_budget():
  value, terms = reward(_product(), _goal(), 25.0, RIGHT_OPTIONS)
  assert terms["r_price"] == 0.0
  assert value == pytest.approx((2 + 2 + 0) / 5)


def test_reward_wrong_type_is_zero():
  mug = _product(name="Bexley Ceramic Coffee Mug", Title="Bexley Ceramic Coffee Mug", query="coffee mug",
                 product_category="Home & Kitchen › Kitchen & Dining › Mugs")
  value, terms = reward(mug, _goal(), 10.0, RIGHT_OPTIONS)
  assert (terms["query_match"], terms["category_match"], terms["title_score"]) == (False, False, 0.0)
  assert value == 0.0


def test_type_reward_half_and_tenth():
  other = dict(query="shaving cream", product_category="Health › Shaving › Creams")
  # goal type words: acme deodorant stick lavender scent travel (6); shared: "stick" -> 1/6 in [0.1, 0.2]
  goal = _goal(name="Acme Deodorant Stick Lavender Scent Travel")
  bought = _product(name="Bexley Shaving Stick", **other)
  terms = type_reward(bought, goal)
  assert terms["title_score"] == pytest.approx(1 / 6) and terms["r_type"] == 0.5
  # 11 goal type words, 1 shared -> 1/11 < 0.1 -> r_type 0.1 (even with a query match)
  goal = _goal(name="Acme Deodorant Stick Lavender Scent Travel Pouch Bundle Gift Box Refill")
  assert len(set(goal["name"].lower().split())) == 11
  terms = type_reward(_product(name="Bexley Shaving Stick", **other), goal)
  assert terms["title_score"] == pytest.approx(1 / 11) and terms["r_type"] == 0.1
  value, _ = reward(_product(name="Bexley Shaving Stick", **other), goal, 10.0, RIGHT_OPTIONS)
  assert value == pytest.approx(0.1 * (2 + 2 + 1) / 5)


def test_token_set_ratio_by_hand():
  # sect "shirt"; "shirt red" vs "shirt blue": LCS "shirt " + "e" = 7 -> 2 * 7 / 19 = 73.7 -> 74
  assert token_set_ratio("Red shirt", "blue SHIRT!") == 74
  assert token_set_ratio("", "x") == 0 and token_set_ratio("a b", "b a") == 100


def test_token_set_ratio_matches_rapidfuzz():
  fuzz = pytest.importorskip("rapidfuzz.fuzz")
  utils = pytest.importorskip("rapidfuzz.utils")
  words = "red navy blue x-large large cotton blend long lasting sensitive skin 3.4 oz men's pack".split()
  import random
  rng = random.Random(0)
  for _ in range(500):
    a = " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
    b = " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
    assert token_set_ratio(a, b) == round(fuzz.token_set_ratio(a, b, processor=utils.default_process))


# ---- loader: files in the original schema ---------------------------------------------------------------

def _write_real_files(folder):
  items = [
      {"asin": "B01ABCDEF1", "name": "Acme Deodorant Stick", "full_description": "Deodorant for all.",
       "small_description": ["Long lasting", "Aluminum free"], "pricing": "$12.99",
       "customization_options": {"Scent": [{"value": "Lavender", "image": "u"},
                                           {"value": "Citrus/Lime", "image": None}]},
       "images": ["u"], "query": "Deodorant ", "category": "beauty",
       "product_category": "Beauty › Personal Care › Deodorants", "brand": "Acme"},
      {"asin": "B01ABCDEF1", "name": "duplicate", "query": "x", "category": "x"},
      {"asin": "B01ABCDEF12345", "name": "asin too long", "query": "x", "category": "x"},
      {"asin": "B02ABCDEF2", "name": "Bexley Coffee Mug", "full_description": "", "small_description": "Mug",
       "pricing": "$10.00 - $20.00", "customization_options": None, "images": [""], "query": "mug",
       "category": "home", "product_category": "Home › Kitchen › Mugs"},
  ]
  ins_v2 = {"B01ABCDEF1": {"attributes": ["long lasting", "aluminum free"], "instruction": "i want deodorant",
                           "instruction_attributes": ["long lasting"]}}
  human = {"B01ABCDEF1": [
      {"asin": "B01ABCDEF1", "instruction": "i need a long lasting deodorant in lavender.",
       "instruction_attributes": ["long lasting"], "instruction_options": ["lavender"]},
      {"asin": "B01ABCDEF1", "instruction": "skipped: no attributes", "instruction_attributes": [],
       "instruction_options": []}]}
  for name, data in [("items_shuffle_1000.json", items), ("items_ins_v2_1000.json", ins_v2),
                     ("items_human_ins.json", human)]:
    (folder / name).write_text(json.dumps(data))


def test_loader_reads_the_original_schema(tmp_path):
  _write_real_files(tmp_path)
  catalog = webshop_data.load(str(tmp_path))
  assert [p["asin"] for p in catalog.products] == ["B01ABCDEF1", "B02ABCDEF2"]
  deo, mug = catalog.products
  assert deo["Title"] == "Acme Deodorant Stick" and deo["query"] == "deodorant"
  assert deo["options"] == {"scent": ["lavender", "citrus | lime"]}
  assert deo["Attributes"] == ["long lasting", "aluminum free"] and mug["Attributes"] == ["DUMMY_ATTR"]
  assert (deo["pricing"], deo["Price"]) == ([12.99], "$12.99")
  assert (mug["pricing"], mug["Price"], mug["BulletPoints"]) == ([10.0, 20.0], "$10.0 to $20.0", ["Mug"])
  assert 10.0 <= catalog.prices["B02ABCDEF2"] <= 20.0
  [goal] = catalog.goals  # the instruction without attributes is skipped, as in goal.py
  assert goal["goal_options"] == ["lavender"] and goal["attributes"] == ["long lasting"]
  # budget: the larger of two of the 4 PRICE_RANGE steps above 12.99 (20, 30, 40, 50)
  assert goal["price_upper"] in (30.0, 40.0, 50.0)
  assert goal["instruction_text"] == (
      f"i need a long lasting deodorant in lavender, and price lower than {goal['price_upper']:.2f} dollars")
  synthetic = webshop_data.load(str(tmp_path), goals="synthetic")
  assert [g["goal_options"] for g in synthetic.goals] in (
      [["lavender"], ["citrus | lime"]], [["citrus | lime"], ["lavender"]])


def test_env_on_real_files_via_env_var(tmp_path, monkeypatch):
  _write_real_files(tmp_path)
  monkeypatch.setenv("WEBSHOP_DATA", str(tmp_path))
  env = envs.make("webshop")
  task = env.tasks("train")[0]  # 1 goal: 0 test goals (min(500, n // 5)), all train
  assert task == "human/0" and env.tasks("test") == []
  env.reset(task)
  for action in env.expert(task):
    step = env.step(action)
  assert step.done and step.success and step.reward == 1.0


def test_generated_catalogue_goes_through_the_same_loader(tmp_path):
  items, ins_v2, human = webshop_catalog.generate(n_products=60, seed=3)
  for name, data in [("items_shuffle.json", items), ("items_ins_v2.json", ins_v2),
                     ("items_human_ins.json", human)]:
    (tmp_path / name).write_text(json.dumps(data))
  from_files = webshop_data.load(str(tmp_path))
  in_memory = webshop_data.generated(60, 3)
  assert from_files.goals == in_memory.goals and from_files.products == in_memory.products


# ---- pages, actions ------------------------------------------------------------------------------------

def test_search_page_lists_the_search_action(env):
  task = env.tasks("test")[0]
  obs = env.reset(task)
  goal = env.goal(task)
  assert obs.text == f"WebShop [SEP] Instruction: [SEP] {goal['instruction_text']} [SEP] Search"
  assert obs.valid_actions == [f"search[{search_keywords(goal['instruction_text'])}]"]


def test_navigation_between_pages(env):
  task = env.tasks("test")[1]
  env.reset(task)
  results = env.step(env.last_observation.valid_actions[0]).observation
  assert "Page 1 (Total results: 50)" in results.text and "click[next >]" in results.valid_actions
  page2 = env.step("click[Next >]").observation
  assert "Page 2 (Total results: 50)" in page2.text and "click[< prev]" in page2.valid_actions
  asin = page2.valid_actions[3][len("click["):-1]
  item = env.step(f"click[{asin.upper()}]").observation
  assert "click[buy now]" in item.valid_actions and "click[description]" in item.valid_actions
  assert env.step("search[shoes]").info["invalid"]  # no search box on an item page
  features = env.step("click[features]").observation
  assert "Instruction:" in features.text and features.valid_actions == ["click[back to search]",
                                                                          "click[< prev]"]
  assert env.step("click[< prev]").observation.text == item.text
  assert env.step("click[< prev]").observation.text == page2.text
  assert env.step("click[back to search]").observation.valid_actions[0].startswith("search[")


def test_every_listed_action_is_accepted(env):
  task = env.tasks("test", "hard")[2]
  expert = env.expert(task)
  for prefix_len in range(len(expert)):
    env.reset(task)
    for action in expert[:prefix_len]:
      env.step(action)
    listed = env.last_observation.valid_actions
    for action in listed:
      env.reset(task)
      for previous in expert[:prefix_len]:
        env.step(previous)
      assert not env.step(action).info["invalid"], (prefix_len, action)


def test_buy_ends_episode_with_reward_and_later_steps_are_invalid(env):
  task = env.tasks("test", "hard")[0]
  goal = env.goal(task)
  expert = env.expert(task)
  env.reset(task)
  for action in expert[:expert.index(f"click[{goal['asin'].lower()}]") + 1]:
    env.step(action)
  step = env.step("click[Buy Now]")  # the target, no option chosen
  n_opt = len(goal["goal_options"])
  terms = step.info["reward_terms"]
  assert step.done and step.reward == pytest.approx(
      terms["r_type"] * (len(goal["attributes"]) + terms["option_matches"] + 1)
      / (len(goal["attributes"]) + n_opt + 1))
  assert step.success == (step.reward == 1.0) and 0.0 <= step.score <= 1.0
  later = env.step("click[Buy Now]")
  assert later.info["invalid"] and later.done


# ---- the shared checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, failed


def test_difficulty_definition_and_splits(env):
  train, test = env.tasks("train"), env.tasks("test")
  assert len(test) == 500 and not set(train) & set(test)
  assert sorted(env.tasks("test", "easy") + env.tasks("test", "hard")) == sorted(test)
  for task in env.tasks("test", "easy")[:50]:
    goal = env.goal(task)
    assert len(goal["attributes"]) + len(goal["goal_options"]) <= 2
  for task in env.tasks("test", "hard")[:50]:
    goal = env.goal(task)
    assert len(goal["attributes"]) + len(goal["goal_options"]) >= 3
  with pytest.raises(ValueError, match="valid: train, test"):
    env.tasks("dev")
  with pytest.raises(ValueError, match="unknown webshop task"):
    env.reset("gen/999999")


def test_fuzz_malformed_outputs(env):
  outputs = env_checks.malformed_outputs(seed=0, n=2000)
  invalid = env_checks.fuzz(env, env.tasks("test")[0], outputs)
  assert invalid > 1000  # almost none is a valid action on the page it meets


def _episodes(queue) -> None:
  env = envs.make("webshop")
  out = []
  for task in env.tasks("test")[:5]:
    texts = [env.reset(task).text]
    for action in env.expert(task):
      texts.append(env.step(action).observation.text)
    out.append((task, env.expert(task), texts))
  queue.put(out)


def test_determinism_across_processes():
  ctx = mp.get_context("spawn")
  results = []
  for _ in range(2):
    queue = ctx.Queue()
    proc = ctx.Process(target=_episodes, args=(queue,))
    proc.start()
    results.append(queue.get(timeout=300))
    proc.join(timeout=60)
  assert results[0] == results[1]
  first = env_checks.first_observation_in_process("webshop")
  assert first[0] == results[0][0][0] and first[1] == results[0][0][2][0]


@pytest.mark.slow
def test_expert_solves_every_generated_goal(env):
  for split in ("train", "test"):
    rate, failed = env_checks.expert_success_rate(env, split, "all", n=10**6)
    assert rate == 1.0, failed[:10]
