"""SearchQA data: a deterministic fictional encyclopedia with 1-hop/2-hop questions, and a loader for real
Search-R1 style data (a JSONL passage corpus plus NQ/HotpotQA style question files)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re

# Search-R1's evaluation sets; the multi-hop ones count as "hard" when loading real data.
MULTI_HOP_SOURCES = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
EASY_SOURCE, HARD_SOURCE = "synth1hop", "synth2hop"


@dataclasses.dataclass(frozen=True)
class Doc:
  title: str
  text: str


@dataclasses.dataclass(frozen=True)
class Question:
  """One task. expert_queries: searches that retrieve the evidence (generated data only)."""

  question: str
  answers: tuple[str, ...]
  split: str
  difficulty: str
  expert_queries: tuple[str, ...] = ()


# ---- the fictional encyclopedia ---------------------------------------------------------------------

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
           "th", "v", "w", "z", "ch", "sh", "j", "tr", "vl", "q")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "ia", "y")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "st", "x", "v")
_CITY_ENDS = ("ford", "holm", "vik", "dor", "stead", "mere", "gard", "wick", "burg", "port")
_COUNTRY_ENDS = ("ia", "and", "esh", "ovia", "aria", "istan", "ene", "ora")
_ORG_KINDS = (("Institute", "research institute"), ("Guild", "craft guild"), ("Company", "trading company"),
              ("Society", "learned society"), ("Academy", "music academy"), ("Foundry", "bell foundry"),
              ("Observatory", "astronomical observatory"), ("Press", "printing house"))
_OCCUPATIONS = ("cartographer", "glassblower", "astronomer", "shipwright", "composer", "botanist",
                "clockmaker", "lexicographer", "engineer", "painter", "physician", "architect")
_PRODUCTS = ("salt", "wool", "copper", "tea", "glass", "timber", "amber", "silk", "paper", "cheese")


class _Namer:
  """Invented, globally unique words, so that every entity name is unambiguous for retrieval."""

  def __init__(self, rng: random.Random):
    self._rng = rng
    self._used: set[str] = set()

  def word(self, syllables: int, end: str = "") -> str:
    while True:
      parts = [self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) for _ in range(syllables)]
      word = ("".join(parts) + self._rng.choice(_CODAS) + end).capitalize()
      if word.lower() not in self._used and len(word) >= 4:
        self._used.add(word.lower())
        return word


def _a(noun: str) -> str:
  return ("an " if noun[0] in "aeiou" else "a ") + noun


def _world(seed: int) -> tuple[list[Doc], list[tuple[str, Question]]]:
  """The encyclopedia and its questions (in a fixed order: easy ones, then hard ones).

  Countries are split 3:1 into train/test and every city, person and organisation belongs to the split
  of its country, so that no fact needed by a test question is stated by a train question.
  """
  rng = random.Random(seed)
  namer = _Namer(rng)
  countries = []
  for c in range(40):
    countries.append({"name": namer.word(2, rng.choice(_COUNTRY_ENDS)),
                      "split": "test" if c % 4 == 3 else "train",
                      "language": namer.word(2, "ic"), "currency": namer.word(2).lower()})
  cities = []
  for country in countries:
    members = []
    for _ in range(8):
      members.append({"name": namer.word(rng.choice((1, 2)), rng.choice(_CITY_ENDS)), "country": country,
                      "founded": rng.randint(800, 1650), "river": namer.word(2),
                      "product": rng.choice(_PRODUCTS), "size": rng.choice(("small", "large", "port"))})
    country["capital"] = members[0]
    cities.extend(members)
  people = []
  for city in cities:
    for _ in range(4):
      born = rng.randint(1700, 1950)
      people.append({"first": namer.word(rng.choice((1, 2))), "last": namer.word(2), "city": city,
                     "born": born, "died": born + rng.randint(35, 70),
                     "occupation": rng.choice(_OCCUPATIONS)})
  for person in people:
    person["name"] = f"{person['first']} {person['last']}"
  orgs = []
  for _ in range(400):
    founder = rng.choice(people)
    same_split = [c for c in cities if c["country"]["split"] == founder["city"]["country"]["split"]]
    kind, description = rng.choice(_ORG_KINDS)
    orgs.append({"name": f"{namer.word(2)} {kind}", "description": description, "founder": founder,
                 "founded": founder["born"] + rng.randint(22, 34), "city": rng.choice(same_split),
                 "staff": rng.randint(12, 900)})

  docs = []
  for k in countries:
    docs.append(Doc(k["name"], f"{k['name']} is a country whose capital is {k['capital']['name']}. Its "
                    f"official language is {k['language']} and its currency is the {k['currency']}."))
  for c in cities:
    capital = f" It is the capital of {c['country']['name']}." if c is c["country"]["capital"] else ""
    docs.append(Doc(c["name"], f"{c['name']} is {_a(c['size'])} city in {c['country']['name']}. It was "
                    f"founded in {c['founded']} on the banks of the {c['river']} river and is known for its "
                    f"{c['product']}.{capital}"))
  for p in people:
    docs.append(Doc(p["name"], f"{p['name']} was {_a(p['occupation'])} born in {p['city']['name']} in "
                    f"{p['born']}. {p['last']} died in {p['died']}."))
  for o in orgs:
    docs.append(Doc(o["name"], f"The {o['name']} is {_a(o['description'])} founded in {o['founded']} by "
                    f"{o['founder']['name']}. Its headquarters are in {o['city']['name']} and it employs "
                    f"about {o['staff']} people."))

  def q(text, answer, split, difficulty, *queries):
    return Question(text, (str(answer),), split, difficulty, tuple(queries))

  easy, hard = [], []
  for p in people:
    split, city = p["city"]["country"]["split"], p["city"]
    easy.append(q(f"In which year was {p['name']} born?", p["born"], split, "easy", p["name"]))
    easy.append(q(f"In which city was {p['name']} born?", city["name"], split, "easy", p["name"]))
    hard.append(q(f"In which country was {p['name']} born?", city["country"]["name"], split, "hard",
                  p["name"], city["name"]))
    hard.append(q(f"In which year was the city where {p['name']} was born founded?", city["founded"], split,
                  "hard", p["name"], city["name"]))
  for o in orgs:
    split, f = o["city"]["country"]["split"], o["founder"]
    easy.append(q(f"Who founded the {o['name']}?", f["name"], split, "easy", o["name"]))
    easy.append(q(f"In which year was the {o['name']} founded?", o["founded"], split, "easy", o["name"]))
    easy.append(q(f"In which city is the {o['name']} headquartered?", o["city"]["name"], split, "easy",
                  o["name"]))
    hard.append(q(f"In which year was the founder of the {o['name']} born?", f["born"], split, "hard",
                  o["name"], f["name"]))
    hard.append(q(f"In which city was the founder of the {o['name']} born?", f["city"]["name"], split, "hard",
                  o["name"], f["name"]))
    hard.append(q(f"In which country is the {o['name']} headquartered?", o["city"]["country"]["name"], split,
                  "hard", o["name"], o["city"]["name"]))
  for c in cities:
    split = c["country"]["split"]
    easy.append(q(f"In which country is {c['name']}?", c["country"]["name"], split, "easy", c["name"]))
    easy.append(q(f"In which year was {c['name']} founded?", c["founded"], split, "easy", c["name"]))
    hard.append(q(f"What is the capital of the country in which {c['name']} lies?",
                  c["country"]["capital"]["name"], split, "hard", c["name"], c["country"]["name"]))
  for k in countries:
    easy.append(q(f"What is the capital of {k['name']}?", k["capital"]["name"], k["split"], "easy",
                  k["name"]))
  rng.shuffle(easy)
  rng.shuffle(hard)
  return docs, ([(f"{EASY_SOURCE}/{i}", x) for i, x in enumerate(easy)]
                + [(f"{HARD_SOURCE}/{i}", x) for i, x in enumerate(hard)])


def generate(seed: int = 0) -> tuple[list[Doc], dict[str, Question]]:
  """The fictional encyclopedia of `seed`: (documents, task id -> Question); same seed, same data."""
  docs, questions = _world(seed)
  return docs, dict(questions)


# ---- real data --------------------------------------------------------------------------------------

def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def corpus_doc(row: dict) -> Doc:
  """A corpus line as a Doc: {"title", "text"} or Search-R1/FlashRAG {"contents": '"Title"\\ntext'}."""
  if "contents" in row:
    title, _, text = str(row["contents"]).partition("\n")
    return Doc(title.strip().strip('"'), text.strip())
  if "text" in row:
    return Doc(str(row.get("title", "")).strip(), str(row["text"]).strip())
  raise ValueError(f"corpus line has keys {sorted(row)}; expected 'contents' or 'title'+'text'")


def golden_answers(row: dict) -> tuple[str, ...]:
  """The gold answers of a QA line: "golden_answers" (FlashRAG/Search-R1), "answer" or "answers"."""
  for key in ("golden_answers", "answer", "answers"):
    if key in row:
      value = row[key]
      values = value if isinstance(value, list) else [value]
      answers = tuple(str(v).strip() for v in values if str(v).strip())
      if answers:
        return answers
  raise ValueError(f"QA line has keys {sorted(row)}; expected 'golden_answers', 'answer' or 'answers'")


def _qa_files(data_dir: str) -> list[tuple[str, str, str]]:
  """(source, split, path) for data_dir/{train,test,dev}.jsonl and data_dir/<source>/{...}.jsonl.

  dev.jsonl is used as the test split of a source without test.jsonl (HotpotQA ships no test answers).
  """
  found = []
  folders = [("", data_dir)] + sorted((name, os.path.join(data_dir, name)) for name in os.listdir(data_dir)
                                      if os.path.isdir(os.path.join(data_dir, name)))
  for source, folder in folders:
    files = {name[:-6]: os.path.join(folder, name) for name in os.listdir(folder)
             if name in ("train.jsonl", "test.jsonl", "dev.jsonl")}
    if "test" not in files and "dev" in files:
      files["test"] = files["dev"]
    for split in ("test", "train"):
      if split in files:
        found.append((source, split, files[split]))
  return found


def load(data_dir: str) -> tuple[list[Doc], dict[str, Question]]:
  """Real data from `data_dir`: corpus.jsonl plus QA files (see `_qa_files`).

  Task ids are "<source>/<index>", the source being the line's "data_source", else its folder, else "qa";
  indices count the test lines of a source first, then its train lines, so train and test ids differ.
  Multi-hop sources (MULTI_HOP_SOURCES) are "hard", the others "easy".
  """
  corpus_path = os.path.join(data_dir, "corpus.jsonl")
  if not os.path.exists(corpus_path):
    raise FileNotFoundError(f"SearchQA data_dir {data_dir!r} has no corpus.jsonl")
  docs = [corpus_doc(row) for row in _read_jsonl(corpus_path)]
  files = _qa_files(data_dir)
  if not files:
    raise FileNotFoundError(f"SearchQA data_dir {data_dir!r} has no train/test/dev.jsonl question files")
  questions: dict[str, Question] = {}
  counters: dict[str, int] = {}
  for folder_source, split, path in files:
    for row in _read_jsonl(path):
      source = re.sub(r"[^A-Za-z0-9_.-]", "_", str(row.get("data_source") or folder_source or "qa"))
      index = counters.get(source, 0)
      counters[source] = index + 1
      difficulty = "hard" if source.lower() in MULTI_HOP_SOURCES else "easy"
      questions[f"{source}/{index}"] = Question(str(row["question"]).strip(), golden_answers(row), split,
                                                difficulty, (str(row["question"]).strip(),))
  return docs, questions
