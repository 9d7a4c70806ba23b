"""Trains the tiny preset's byte-level BPE tokenizer on generated text-game dialogues (BabyAI, TextCraft,
ALFWorld, WebShop, search QA) in ChatML, and writes it to agentgen_jax/assets/tiny_tokenizer/.

  python -m launch.make_tiny_tokenizer            # deterministic: the same files every run
"""

from __future__ import annotations

import json
import os
import random

from absl import app, flags
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from agentgen_jax.models.config import TINY_VOCAB_SIZE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "agentgen_jax", "assets",
                   "tiny_tokenizer")

FLAGS = flags.DEFINE_string("out", OUT, "output folder")
EPISODES = flags.DEFINE_integer("episodes", 6000, "generated episodes of each kind")

COLORS = ["red", "green", "blue", "purple", "yellow", "grey"]
OBJECTS = ["ball", "box", "key", "door"]
ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway", "dining room"]
ITEMS = ["apple", "mug", "knife", "plate", "book", "pillow", "laptop", "cellphone", "towel", "soapbar",
         "pen", "pencil", "bowl", "cup", "egg", "lettuce", "potato", "tomato", "bread", "spoon", "keychain"]
RECEPTACLES = ["countertop", "cabinet", "drawer", "fridge", "microwave", "sinkbasin", "shelf", "desk", "bed",
               "sofa", "armchair", "dresser", "garbagecan", "sidetable", "coffeetable", "stoveburner"]
MATERIALS = ["oak", "birch", "spruce", "jungle", "acacia", "dark oak", "iron", "gold", "diamond", "stone",
             "cobblestone", "redstone", "lapis", "copper", "andesite", "granite", "diorite", "quartz"]
PRODUCTS = ["shoes", "sneakers", "t-shirt", "hoodie", "jeans", "dress", "jacket", "backpack", "headphones",
            "phone case", "shampoo", "conditioner", "face cream", "coffee", "green tea", "protein bars",
            "dog food", "candle", "lamp", "pillow cover", "yoga mat", "water bottle", "sunglasses", "watch"]
ADJECTIVES = ["organic", "waterproof", "wireless", "lightweight", "gluten free", "machine washable",
              "long lasting", "easy to clean", "high quality", "non slip", "fragrance free", "vegan",
              "slim fit", "leather", "cotton", "stainless steel", "bluetooth", "rechargeable", "natural"]
SIZES = ["small", "medium", "large", "x-large", "xx-large", "6", "7.5", "8", "9", "10.5", "11", "12 ounce",
         "16 ounce", "pack of 2", "pack of 6", "1 count", "32 fl oz"]
PEOPLE = ["Marie Curie", "Alan Turing", "Ada Lovelace", "Isaac Newton", "Nikola Tesla", "Jane Austen",
          "Leonardo da Vinci", "Charles Darwin", "Frida Kahlo", "Albert Einstein", "Rosalind Franklin"]
PLACES = ["Paris", "France", "London", "England", "Berlin", "Germany", "Rome", "Italy", "Madrid", "Spain",
          "Tokyo", "Japan", "Cairo", "Egypt", "Lima", "Peru", "Ottawa", "Canada", "Nairobi", "Kenya"]


def _react(rng: random.Random, thought: str, action: str) -> str:
  return f"Thought: {thought}\nAction: {action}" if rng.random() < 0.8 else action


def babyai(rng: random.Random) -> list[dict]:
  color, obj = rng.choice(COLORS), rng.choice(OBJECTS[:3])
  goal = rng.choice([f"go to the {color} {obj}", f"pick up the {color} {obj}",
                     f"open the {rng.choice(COLORS)} door", f"put the {color} {obj} next to the "
                     f"{rng.choice(COLORS)} {rng.choice(OBJECTS[:3])}"])
  msgs = [{"role": "system", "content": "You are an agent in a 2D grid world of rooms, doors and objects "
           "(BabyAI). Follow the goal. Answer as \"Thought: <your reasoning>\\nAction: <one available "
           "action>\"."}]
  for turn in range(rng.randint(2, 5)):
    seen = [f"a {rng.choice(COLORS)} {rng.choice(OBJECTS)} {rng.randint(1, 3)} {rng.randint(1, 9)} steps "
            f"{rng.choice(['ahead', 'to the left', 'to the right', 'behind'])}"
            for _ in range(rng.randint(1, 4))]
    actions = [f"go to {rng.choice(COLORS)} {rng.choice(OBJECTS)} {rng.randint(1, 3)}" for _ in range(3)]
    actions += ["turn left", "turn right", "move forward", "pick up", "drop", "toggle", "explore"]
    obs = (f"Goal: {goal}.\n" if turn == 0 else "") + f"You see {', '.join(seen)}. " \
          f"You carry {rng.choice(['nothing', f'a {color} {obj}'])}.\nAvailable actions: {', '.join(actions)}"
    msgs.append({"role": "user", "content": obs})
    msgs.append({"role": "assistant", "content": _react(rng, f"I need to {goal}; the {color} {obj} is "
                                                         "close.", rng.choice(actions))})
  return msgs


def textcraft(rng: random.Random) -> list[dict]:
  kinds = ['planks', 'slab', 'stairs', 'pickaxe', 'door', 'ingot', 'block', 'fence', 'sword', 'button']
  target = f"{rng.choice(MATERIALS)} {rng.choice(kinds)}"
  recipes = [f"craft {rng.randint(1, 8)} {target} using {rng.randint(1, 6)} {rng.choice(MATERIALS)} "
             f"{rng.choice(['logs', 'planks', 'ingots', 'sticks', 'nuggets'])}, {rng.randint(1, 3)} stick"
             for _ in range(rng.randint(2, 5))]
  msgs = [{"role": "system", "content": "You are in a Minecraft crafting world. Your goal is to craft the "
           "item named in the task. Actions: get <count> <item>, craft <count> <item> using <ingredients>, "
           "inventory."},
          {"role": "user",
           "content": "Crafting commands:\n" + "\n".join(recipes) + f"\nGoal: craft {target}."}]
  for _ in range(rng.randint(2, 5)):
    n = rng.randint(1, 9)
    action = rng.choice([f"get {n} {rng.choice(MATERIALS)} logs", f"craft {n} {target} using {n} "
                         f"{rng.choice(MATERIALS)} planks", "inventory"])
    msgs.append({"role": "assistant", "content": _react(rng, f"I need {n} more items first.", action)})
    msgs.append({"role": "user", "content": rng.choice([
        f"Got {n} {rng.choice(MATERIALS)} logs", f"Crafted {n} minecraft:{target.replace(' ', '_')}",
        f"Inventory: [{rng.choice(MATERIALS)} planks] ({n}) [stick] ({rng.randint(1, 4)})",
        "Could not find enough items to craft minecraft:" + target.replace(" ", "_")])})
  return msgs


def alfworld(rng: random.Random) -> list[dict]:
  item, place = rng.choice(ITEMS), rng.choice(RECEPTACLES)
  task = rng.choice([f"put a {item} in {place}", f"put a clean {item} in {place}",
                     f"heat some {item} and put it in {place}", f"examine the {item} with the desklamp",
                     f"put two {item} in {place}"])
  around = ", ".join(f"a {r} {rng.randint(1, 4)}" for r in rng.sample(RECEPTACLES, rng.randint(4, 9)))
  msgs = [{"role": "system", "content": "Interact with a household to solve a task. Actions: go to, take, "
           "put, open, close, toggle, clean, heat, cool, use, examine, look, inventory."},
          {"role": "user", "content": f"You are in the middle of a {rng.choice(ROOMS)}. Looking quickly "
           f"around you, you see {around}.\nYour task is to: {task}."}]
  for _ in range(rng.randint(2, 5)):
    r = rng.choice(RECEPTACLES)
    k = rng.randint(1, 4)
    action = rng.choice([f"go to {r} {k}", f"take {item} {k} from {r} {k}", f"put {item} {k} in/on {place} 1",
                         f"open {r} {k}", f"clean {item} {k} with sinkbasin 1", "look", "inventory"])
    msgs.append({"role": "assistant", "content": _react(rng, f"The {item} may be in the {r}.", action)})
    msgs.append({"role": "user", "content": rng.choice([
        f"You arrive at {r} {k}. On the {r} {k}, you see a {rng.choice(ITEMS)} {rng.randint(1, 3)}.",
        f"You pick up the {item} {k} from the {r} {k}.", f"You open the {r} {k}. The {r} {k} is open.",
        "Nothing happens.", f"You put the {item} {k} in/on the {place} 1."])})
  return msgs


def webshop(rng: random.Random) -> list[dict]:
  product = rng.choice(PRODUCTS)
  adjs = rng.sample(ADJECTIVES, 2)
  price = rng.choice([20, 30, 40, 50, 60, 100])
  goal = f"i need {adjs[0]} {product} that is {adjs[1]}, and price lower than {price}.00 dollars"
  msgs = [{"role": "system", "content": "You are web shopping. Actions: search[keywords], click[value]."},
          {"role": "user", "content": f"WebShop [SEP] Instruction: [SEP] {goal} [SEP] Search"},
          {"role": "assistant",
           "content": _react(rng, "Search for the product.", f"search[{adjs[0]} {product}]")}]
  results = []
  for _ in range(rng.randint(3, 6)):
    asin = "B0" + "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(8))
    brand = rng.choice(['Acme', 'Zenith', 'NorthPeak', 'Lumina', 'Verde'])
    title = f"{brand} {rng.choice(ADJECTIVES)} {product}"
    results.append(f"{asin} [SEP] {title} [SEP] ${rng.randint(5, 150)}.{rng.randint(0, 99):02d}")
  msgs.append({"role": "user", "content": "Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > "
               "[SEP] " + " [SEP] ".join(results)})
  asin = results[0].split(" ")[0]
  msgs.append({"role": "assistant",
               "content": _react(rng, "The first item matches.", f"click[{asin.lower()}]")})
  msgs.append({"role": "user", "content": f"Back to Search [SEP] < Prev [SEP] size [SEP] "
               f"{' [SEP] '.join(rng.sample(SIZES, 3))} [SEP] color [SEP] "
               f"{' [SEP] '.join(rng.sample(COLORS, 2))}"
               " [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now"})
  msgs.append({"role": "assistant", "content": _react(rng, "Choose the size, then buy.", rng.choice(
      [f"click[{rng.choice(SIZES)}]", "click[buy now]"]))})
  return msgs


def searchqa(rng: random.Random) -> list[dict]:
  person, place = rng.choice(PEOPLE), rng.choice(PLACES)
  q = rng.choice([f"Where was {person} born?", f"What is the capital of {place}?", f"In which year did "
                  f"{person} publish their first work?", f"Who founded the university in {place}?"])
  year = rng.randint(1500, 2020)
  msgs = [{"role": "system", "content": "Answer the question. Use <search> query </search> to search and "
           "<answer> answer </answer> to answer."},
          {"role": "user", "content": f"Question: {q}"},
          {"role": "assistant", "content": f"<think>I should look up {person}.</think>\n<search> {person} "
           f"{place} </search>"},
          {"role": "user", "content": "<information>" + " ".join(
              f"Doc {i + 1}(Title: \"{rng.choice(PEOPLE)}\") {rng.choice(PEOPLE)} was born in {year} in "
              f"{rng.choice(PLACES)} and later moved to {rng.choice(PLACES)}." for i in range(3))
           + "</information>"},
          {"role": "assistant", "content": f"<answer> {rng.choice([place, person, str(year)])} </answer>"}]
  return msgs


def chatml(messages: list[dict]) -> str:
  return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def corpus(episodes: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [chatml(make(rng)) for _ in range(episodes) for make in (babyai, textcraft, alfworld, webshop,
                                                                   searchqa)]


def train(texts: list[str], vocab_size: int = TINY_VOCAB_SIZE) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return tok


def main(_):
  tok = train(corpus(EPISODES.value))
  if tok.get_vocab_size() != TINY_VOCAB_SIZE:
    raise SystemExit(f"trained {tok.get_vocab_size()} tokens, expected {TINY_VOCAB_SIZE}: more --episodes")
  os.makedirs(FLAGS.value, exist_ok=True)
  tok.save(os.path.join(FLAGS.value, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False,
            "model_max_length": 4096, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
            "additional_special_tokens": SPECIALS[1:]}
  with open(os.path.join(FLAGS.value, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  print(f"wrote {FLAGS.value}: {tok.get_vocab_size()} tokens")


if __name__ == "__main__":
  app.run(main)
