"""A deterministic generator of WebShop-style data: products, attributes and human-style instructions,
written as the same records as the original files (items_shuffle, items_ins_v2, items_human_ins)."""

from __future__ import annotations

import random

# (category, query, product_category path, type noun, attribute phrases, {option name: values}).
# Attribute phrases are WebShop-like ("long lasting", "machine wash"); option value pools of one type are
# disjoint so that a click on a value names a single option.
_COLORS = ["black", "white", "navy blue", "red", "green", "gray", "pink", "beige", "brown", "purple",
           "olive", "teal", "yellow", "ivory", "burgundy"]
_APPAREL_SIZES = ["x-small", "small", "medium", "large", "x-large", "xx-large"]
_TYPES = [
    ("beauty", "deodorant", "Beauty & Personal Care › Personal Care › Deodorants & Antiperspirants",
     "deodorant", ["long lasting", "sensitive skin", "aluminum free", "cruelty free", "paraben free",
                   "travel size", "natural ingredients"],
     {"scent": ["lavender mint", "bright citrus", "unscented", "coconut vanilla", "cedar sage"],
      "size": ["2.65 ounce", "3 ounce", "2 count", "3 pack"]}),
    ("beauty", "shampoo", "Beauty & Personal Care › Hair Care › Shampoo & Conditioner", "shampoo",
     ["sulfate free", "dry hair", "color treated", "argan oil", "tea tree", "cruelty free", "hair growth"],
     {"size": ["8 fl oz", "12 fl oz", "16.9 fl oz", "33.8 fl oz"],
      "scent": ["coconut", "rosemary", "eucalyptus", "fragrance free"]}),
    ("beauty", "lipstick", "Beauty & Personal Care › Makeup › Lips › Lipstick", "lipstick",
     ["long lasting", "matte finish", "cruelty free", "highly pigmented", "moisturizing", "vegan"],
     {"color": ["ruby red", "nude beige", "hot pink", "plum", "coral"]}),
    ("beauty", "face serum", "Beauty & Personal Care › Skin Care › Face › Serums", "serum",
     ["hyaluronic acid", "vitamin c", "fine lines", "dark spots", "oil free", "sensitive skin"],
     {"size": ["1 fl oz", "2 fl oz", "0.5 fl oz"]}),
    ("beauty", "nail polish", "Beauty & Personal Care › Foot, Hand & Nail Care › Nail Polish", "polish",
     ["quick dry", "long lasting", "non toxic", "high gloss", "chip resistant"],
     {"color": ["cherry red", "baby pink", "midnight black", "pearl white", "teal"]}),
    ("food", "coffee", "Grocery & Gourmet Food › Beverages › Coffee › Ground Coffee", "coffee",
     ["medium roast", "dark roast", "fair trade", "usda organic", "low acid", "whole bean"],
     {"flavor name": ["hazelnut", "french vanilla", "caramel", "original blend"],
      "size": ["12 ounce", "2 pound", "32 ounce", "24 count"]}),
    ("food", "protein bar", "Grocery & Gourmet Food › Snack Foods › Bars › Protein Bars", "bar",
     ["gluten free", "low sugar", "high protein", "keto friendly", "non gmo", "plant based"],
     {"flavor name": ["chocolate chip", "peanut butter", "cookie dough", "almond crunch"],
      "size": ["12 count", "pack of 6", "18 count"]}),
    ("food", "herbal tea", "Grocery & Gourmet Food › Beverages › Tea › Herbal", "tea",
     ["caffeine free", "usda organic", "non gmo", "individually wrapped", "kosher certified"],
     {"flavor name": ["chamomile", "peppermint", "lemon ginger", "hibiscus"],
      "size": ["20 count", "40 count", "pack of 3", "100 count"]}),
    ("food", "trail mix", "Grocery & Gourmet Food › Snack Foods › Trail Mix", "mix",
     ["gluten free", "resealable bag", "no added sugar", "high protein", "vegan", "non gmo"],
     {"flavor name": ["sweet and salty", "tropical", "dark chocolate", "honey roasted"],
      "size": ["10 ounce", "26 ounce", "pack of 12"]}),
    ("food", "olive oil", "Grocery & Gourmet Food › Pantry Staples › Cooking Oils › Olive", "oil",
     ["extra virgin", "cold pressed", "usda organic", "non gmo", "single origin"],
     {"size": ["16.9 fl oz", "25.3 fl oz", "1 liter", "3 liter"]}),
    ("fashion", "t-shirt", "Clothing, Shoes & Jewelry › Men › Clothing › Shirts › T-Shirts", "shirt",
     ["machine wash", "short sleeve", "cotton spandex", "relaxed fit", "classic fit", "moisture wicking"],
     {"color": _COLORS[:10], "size": _APPAREL_SIZES}),
    ("fashion", "running shoes", "Clothing, Shoes & Jewelry › Women › Shoes › Athletic › Running",
     "sneakers", ["rubber sole", "non slip", "arch support", "lightweight", "breathable mesh", "memory foam"],
     {"color": _COLORS[:8], "size": ["6", "7", "7.5", "8", "8.5", "9", "10", "11"]}),
    ("fashion", "hoodie", "Clothing, Shoes & Jewelry › Men › Clothing › Fashion Hoodies", "hoodie",
     ["machine wash", "long sleeve", "fleece lined", "drawstring closure", "relaxed fit", "polyester cotton"],
     {"color": _COLORS[5:15], "size": _APPAREL_SIZES}),
    ("fashion", "jeans", "Clothing, Shoes & Jewelry › Women › Clothing › Jeans", "jeans",
     ["slim fit", "high waist", "button closure", "stretch denim", "machine wash", "straight leg"],
     {"color": ["light wash", "dark wash", "black", "medium indigo"],
      "size": ["26w x 30l", "28w x 30l", "30w x 32l", "32w x 32l", "34w x 34l"]}),
    ("fashion", "sunglasses", "Clothing, Shoes & Jewelry › Men › Accessories › Sunglasses", "sunglasses",
     ["polarized lenses", "uv protection", "lightweight frame", "metal frame", "scratch resistant"],
     {"color": ["gold frame", "black frame", "tortoise", "silver mirror"]}),
    ("furniture", "office chair", "Home & Kitchen › Furniture › Home Office Furniture › Chairs", "chair",
     ["lumbar support", "height adjustable", "easy assemble", "mesh back", "heavy duty", "swivel base"],
     {"color": ["black", "gray", "white", "blue"]}),
    ("furniture", "bookshelf", "Home & Kitchen › Furniture › Living Room Furniture › Bookcases",
     "bookshelf", ["easy assemble", "solid wood", "space saving", "engineered wood", "storage space"],
     {"color": ["espresso", "rustic brown", "white oak", "black walnut"],
      "size": ["3 tier", "4 tier", "5 tier"]}),
    ("furniture", "throw pillow covers", "Home & Kitchen › Home Décor › Throw Pillow Covers", "covers",
     ["machine washable", "hidden zipper", "living room", "faux linen", "super soft"],
     {"color": _COLORS[:12], "size": ["16 x 16 inch", "18 x 18 inch", "20 x 20 inch"]}),
    ("furniture", "bed frame", "Home & Kitchen › Furniture › Bedroom Furniture › Beds & Frames", "frame",
     ["metal frame", "easy assemble", "storage space", "noise free", "heavy duty"],
     {"size": ["twin", "full", "queen", "king"]}),
    ("furniture", "coffee table", "Home & Kitchen › Furniture › Living Room Furniture › Tables", "table",
     ["living room", "tempered glass", "solid wood", "easy assemble", "storage shelf"],
     {"color": ["walnut", "black", "natural oak", "white marble"]}),
    ("electronics", "wireless earbuds", "Electronics › Headphones › Earbud Headphones", "earbuds",
     ["noise cancelling", "bluetooth 5.0", "long battery life", "water resistant", "fast charging"],
     {"color": ["black", "white", "navy blue", "rose gold"]}),
    ("electronics", "phone case", "Cell Phones & Accessories › Cases & Covers › Basic Cases", "case",
     ["shockproof", "wireless charging", "slim fit", "raised edges", "tempered glass"],
     {"color": ["clear", "matte black", "sierra blue", "purple"],
      "size": ["iphone 13", "iphone 14", "iphone 14 pro", "galaxy s22"]}),
    ("electronics", "hdmi cable", "Electronics › Accessories & Supplies › Cables › HDMI Cables", "cable",
     ["high speed", "4k hdr", "gold plated", "braided nylon", "ethernet"],
     {"size": ["3 feet", "6 feet", "10 feet", "15 feet"]}),
    ("electronics", "power bank", "Cell Phones & Accessories › Chargers & Power Adapters › Power Banks",
     "charger", ["fast charging", "usb c", "portable", "led display", "high capacity"],
     {"color": ["black", "white", "blue"], "size": ["10000mah", "20000mah", "26800mah"]}),
    ("electronics", "bluetooth speaker", "Electronics › Portable Audio & Video › Bluetooth Speakers",
     "speaker", ["waterproof", "stereo sound", "long battery life", "built in microphone", "portable"],
     {"color": ["black", "red", "teal", "camo"]}),
]
_BRANDS = ["Acorn", "Bexley", "Calder", "Dunmore", "Elston", "Fairlow", "Garnet", "Halden", "Ivers", "Jolie",
           "Kestrel", "Lumio", "Marlow", "Norwick", "Orla", "Pellam", "Quillon", "Rowan", "Sable", "Tamsin",
           "Umber", "Vantor", "Wexley", "Yarrow", "Zephyr"]
_LINES = ["Essentials", "Signature", "Daily", "Studio", "Nova", "Summit", "Harbor", "Meadow", "Atlas",
          "Willow", "Vertex", "Echo", "Haven", "Pioneer", "Aurora"]


def _price(rng: random.Random) -> str:
  """items_shuffle's "pricing" string: "$12.99", or a range "$12.99 - $18.49" for ~15% of items."""
  low = round(rng.uniform(4.0, 180.0), 2)
  if rng.random() < 0.15:
    return f"${low:.2f} - ${low * rng.uniform(1.1, 1.5):.2f}"
  return f"${low:.2f}"


def _product(index: int, rng: random.Random) -> tuple[dict, list[str]]:
  """One items_shuffle-style record and its attribute list (for items_ins_v2)."""
  category, query, path, noun, attr_pool, option_pool = _TYPES[index % len(_TYPES)]
  asin = f"B0{index:08d}"
  attributes = sorted(rng.sample(attr_pool, rng.randint(2, min(4, len(attr_pool)))))
  brand = rng.choice(_BRANDS)
  line = rng.choice(_LINES)
  title_attr = attributes[0].title()
  title = f"{brand} {line} {query.title()} - {title_attr} {noun.title()}, Model {rng.randint(100, 999)}"
  options = {}
  for name, pool in option_pool.items():
    values = rng.sample(pool, rng.randint(2, min(5, len(pool))))
    options[name] = [{"value": v.title(), "image": None} for v in values]
  bullets = [f"{attr.capitalize()}: designed by {brand} for everyday use." for attr in attributes]
  bullets.append(f"What you get: one {query} from the {line} line.")
  description = (f"The {brand} {line} {query} is made with care. " + " ".join(
      f"It is {attr}." for attr in attributes))
  record = {
      "asin": asin, "name": title, "full_description": description, "small_description": bullets,
      "pricing": _price(rng), "customization_options": options, "images": [""], "query": query,
      "category": category, "product_category": path, "average_rating": round(rng.uniform(3.0, 5.0), 1),
  }
  return record, attributes


def _instruction(rng: random.Random, query: str, attributes: list[str], options: dict[str, str]) -> str:
  """A human-style instruction naming the product type, its attributes and option values."""
  attr_text = " and ".join(attributes)
  start = rng.choice([f"i need a {query} that is {attr_text}", f"i am looking for {attr_text} {query}",
                      f"find me a {query} with {attr_text}", f"i want to buy a {attr_text} {query}"])
  option_text = " and ".join(f"{value} {name.replace(' name', '')}" for name, value in options.items())
  return f"{start}, with {option_text}" if option_text else start


def generate(n_products: int = 2500, seed: int = 0) -> tuple[list[dict], dict, dict]:
  """(items_shuffle list, items_ins_v2 dict, items_human_ins dict) of a catalogue of n_products.

  Each product gets one or two instructions asking for 1-3 of its attributes and 0-2 of its options, so
  that easy (attributes + options <= 2) and hard (>= 3) goals both occur."""
  rng = random.Random(seed)
  items, ins_v2, human = [], {}, {}
  for index in range(n_products):
    record, attributes = _product(index, rng)
    items.append(record)
    asin = record["asin"]
    ins_v2[asin] = {"attributes": attributes, "instruction": None, "instruction_attributes": None}
    human[asin] = []
    for _ in range(rng.choice([1, 1, 2])):
      wanted = sorted(rng.sample(attributes, rng.randint(1, min(3, len(attributes)))))
      names = sorted(record["customization_options"])
      chosen_names = sorted(rng.sample(names, min(rng.choice([0, 1, 1, 2]), len(names))))
      chosen = {n: rng.choice(record["customization_options"][n])["value"].lower() for n in chosen_names}
      human[asin].append({
          "asin": asin, "instruction": _instruction(rng, record["query"], wanted, chosen),
          "instruction_attributes": wanted, "instruction_options": list(chosen.values()),
      })
  return items, ins_v2, human
