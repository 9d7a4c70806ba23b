"""SearchQA (the Search-R1 protocol): answer a question by issuing <search> queries to a BM25 engine over a
passage corpus and finishing with <answer>; reward = exact match after SQuAD normalisation."""

from __future__ import annotations

import collections
import os
import re
import shutil
import string
import threading

from envs.base import Observation, Step, TextEnv, check_split
from envs.searchqa_data import Doc, Question, generate, load

# ---- answer normalisation and scores (SQuAD style; pure functions) ----------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD v1.1 eval)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers) -> float:
  """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
  prediction = normalize_answer(prediction)
  return float(any(prediction == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers) -> float:
  """The best token-level F1 between the prediction and any gold answer (both normalised)."""
  predicted = normalize_answer(prediction).split()
  best = 0.0
  for answer in answers:
    gold = normalize_answer(answer).split()
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common:
      precision, recall = common / len(predicted), common / len(gold)
      best = max(best, 2 * precision * recall / (precision + recall))
    elif not predicted and not gold:
      best = max(best, 1.0)
  return best


# ---- the action format ------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<(search|answer)>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_OPEN = re.compile(r"<(search|answer)>", re.IGNORECASE)
MAX_QUERY_CHARS = 500


def _first_tag(text: str) -> tuple[str, str] | None:
  if not isinstance(text, str):
    return None
  text = _THINK.sub(" ", text.replace("\x00", ""))
  match = _TAG.search(text)
  if match is None:
    return None
  return match.group(1).lower(), " ".join(match.group(2).split())


def parse_tags(text: str) -> str | None:
  """The first complete non-empty <search>q</search> or <answer>a</answer> (outside <think>), as that
  canonical tag string; None for output without one (no tag, empty tag, unclosed tag)."""
  tag = _first_tag(text)
  if tag is None or not tag[1]:
    return None
  return f"<{tag[0]}>{tag[1]}</{tag[0]}>"


def malformed_feedback(text: str) -> str:
  """Says what is wrong with output that `parse_tags` rejects."""
  how = "Reply with <search>your query</search> or <answer>your answer</answer>."
  tag = _first_tag(text)
  if tag is not None:
    return f"Invalid output: the <{tag[0]}> tag is empty. {how}"
  opened = _OPEN.search(_THINK.sub(" ", text)) if isinstance(text, str) else None
  if opened is not None:
    name = opened.group(1).lower()
    return f"Invalid output: <{name}> is not closed with </{name}>. {how}"
  return f"Invalid output: no <search> or <answer> tag found. {how}"


# ---- retrieval ----------------------------------------------------------------------------------------

class BM25Index:
  """bm25s over title + text of each document; `search` returns the indices of the top-k docs.

  cache_dir: where the index is saved after building and loaded from when it is newer than `source`
  (a real corpus is indexed once, not once per worker process).
  """

  def __init__(self, docs: list[Doc], cache_dir: str | None = None, source: str | None = None):
    import bm25s  # imported here so that `import envs.searchqa` stays cheap for the pure functions

    self._bm25s = bm25s
    self.docs = docs
    fresh = (cache_dir is not None and os.path.exists(os.path.join(cache_dir, "params.index.json"))
             and (source is None or os.path.getmtime(cache_dir) >= os.path.getmtime(source)))
    if fresh:
      self._retriever = bm25s.BM25.load(cache_dir, mmap=True, show_progress=False, verbosity=0)
      if self._retriever.scores.get("num_docs") == len(docs):
        return
    self._retriever = bm25s.BM25()
    tokens = bm25s.tokenize([f"{d.title} {d.text}" for d in docs], show_progress=False)
    self._retriever.index(tokens, show_progress=False)
    if cache_dir is not None:
      self._save(cache_dir)

  def _save(self, cache_dir: str) -> None:
    # Written next to the target and renamed, so that concurrent workers never read a half-written index;
    # an unwritable data folder just means no cache.
    tmp = f"{cache_dir}.tmp{os.getpid()}"
    try:
      self._retriever.save(tmp, show_progress=False)
      if os.path.exists(cache_dir):
        shutil.rmtree(cache_dir, ignore_errors=True)
      os.replace(tmp, cache_dir)
    except OSError:
      shutil.rmtree(tmp, ignore_errors=True)

  def search(self, query: str, k: int) -> list[int]:
    tokens = self._bm25s.tokenize([query[:MAX_QUERY_CHARS]], return_ids=False, show_progress=False)
    if not tokens or not tokens[0]:
      return []
    k = min(k, len(self.docs))
    ids, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
    return [int(i) for i, s in zip(ids[0], scores[0]) if s > 0]


def format_information(docs: list[Doc]) -> str:
  """The <information> block shown after a search (Search-R1's "Doc i(Title: ...) text" layout)."""
  if not docs:
    return "<information>No results found.</information>"
  lines = [f"Doc {i + 1}(Title: {d.title}) {d.text}" for i, d in enumerate(docs)]
  return "<information>" + "\n".join(lines) + "</information>"


# ---- candidate actions (for the `choose` action mode) --------------------------------------------------

_NAME = re.compile(r"[A-Z][\w'-]*(?:[ \t]+[A-Z][\w'-]*)*")
_NUMBER = re.compile(r"\b\d{3,4}\b")
# Capitalised only because they start a sentence or a question; never a name on their own.
_NOT_NAMES = {"A", "An", "The", "In", "On", "At", "Of", "It", "Its", "He", "She", "They", "His", "Her",
              "Their", "This", "That", "What", "Which", "Who", "Whom", "Whose", "Where", "When", "How",
              "Why", "Is", "Was", "Are", "Were", "Did", "Does", "Do"}


def candidate_spans(text: str) -> list[str]:
  """Names (runs of capitalised words, leading function words dropped) and 3-4 digit numbers of `text`,
  in order of first appearance, without repeats."""
  spans = []
  for match in _NAME.finditer(text):
    words = match.group(0).split()
    while words and words[0] in _NOT_NAMES:
      words = words[1:]
    if words and " ".join(words) not in _NOT_NAMES:
      spans.append(" ".join(words))
  spans += _NUMBER.findall(text)
  return list(dict.fromkeys(spans))


def candidate_actions(question: str, passages: list[Doc], searched: set[str]) -> list[str]:
  """The listed actions: answers drawn from the latest passages, then searches for the names of the
  question and of those passages not searched yet, then the question itself as a query."""
  seen = list(dict.fromkeys(span for d in passages for span in candidate_spans(f"{d.title}. {d.text}")))
  answers = [f"<answer>{span}</answer>" for span in seen]
  names = [span for span in candidate_spans(question) + seen if not span.isdigit()]
  queries = [q for q in dict.fromkeys(names + [" ".join(question.split())]) if q not in searched]
  return answers + [f"<search>{q}</search>" for q in queries]


# Built once per process and data source: every env instance of a worker shares the index.
_DATA: dict[tuple, tuple[BM25Index, dict[str, Question]]] = {}
_DATA_LOCK = threading.Lock()


def _data(data_dir: str | None, seed: int) -> tuple[BM25Index, dict[str, Question]]:
  key = (os.path.abspath(data_dir), 0) if data_dir else (None, seed)
  with _DATA_LOCK:
    if key not in _DATA:
      if data_dir:
        docs, questions = load(data_dir)
        corpus = os.path.join(data_dir, "corpus.jsonl")
        index = BM25Index(docs, os.path.join(data_dir, ".bm25s_index"), source=corpus)
      else:
        docs, questions = generate(seed)
        index = BM25Index(docs)
      _DATA[key] = (index, questions)
    return _DATA[key]


INSTRUCTION = """\
Answer the question. You may search a text collection as often as you need: write \
<search>your query</search> and the top passages come back between <information> and </information>. \
Think inside <think>...</think> if you like. When you know the answer, write <answer>the answer</answer> \
(a short phrase, e.g. <answer>Oslo</answer>); the episode ends there. Write exactly one <search> or \
<answer> per turn. The facts are only in the collection: search before you answer."""


class SearchQAEnv(TextEnv):
  """Search-R1 question answering over a BM25-indexed corpus.

  data_dir: a folder with real data (see `envs.searchqa_data.load`); default $SEARCHQA_DATA, else the
  generated fictional encyclopedia of `seed`. top_k: passages per search.
  """

  name = "searchqa"
  max_turns = 5

  def __init__(self, data_dir: str | None = None, top_k: int = 3, seed: int = 0):
    super().__init__()
    if top_k < 1:
      raise ValueError(f"top_k={top_k} must be >= 1")
    self.data_dir = data_dir or os.environ.get("SEARCHQA_DATA") or None
    self.top_k = top_k
    self._index, self._questions = _data(self.data_dir, seed)
    self._question: Question | None = None
    self._searches = 0
    self._searched: set[str] = set()

  @property
  def instruction(self) -> str:
    return INSTRUCTION

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    check_split(split, difficulty)
    return [task for task, q in self._questions.items()
            if q.split == split and difficulty in ("all", q.difficulty)]

  def question(self, task: str) -> Question:
    if task not in self._questions:
      raise ValueError(f"unknown searchqa task {task!r}; valid ids look like {next(iter(self._questions))!r}")
    return self._questions[task]

  def _reset(self, task: str) -> Observation:
    self._question = self.question(task)
    self._searches = 0
    self._searched = set()
    question = self._question.question
    return Observation(f"Question: {question}", candidate_actions(question, [], self._searched))

  def parse(self, text: str) -> str | None:
    return parse_tags(text)

  def format_action(self, action: str, thought: str = "") -> str:
    return f"<think>{thought}</think>\n{action}" if thought else action

  def act(self, text: str) -> Step:
    action = self.parse(text)
    if action is None:
      return self.invalid_step(malformed_feedback(text))
    return self.step(action)

  def _step(self, action: str) -> Step:
    tag = _first_tag(action)
    if tag is None or not tag[1]:
      return self.invalid_step(malformed_feedback(action))
    kind, content = tag
    info = {"invalid": False, "searches": self._searches}
    if kind == "search":
      self._searches += 1
      self._searched.add(content)
      info["searches"] = self._searches
      passages = [self._index.docs[i] for i in self._index.search(content, self.top_k)]
      valid = candidate_actions(self._question.question, passages, self._searched)
      return Step(Observation(format_information(passages), valid), 0.0, False, False, 0.0, info)
    em = exact_match(content, self._question.answers)
    info.update(em=em, f1=f1_score(content, self._question.answers), answer=content[:200])
    verdict = "correct" if em else "incorrect"
    return Step(Observation(f"Your answer is {verdict}. The episode is over."), em, True, em == 1.0, em, info)

  def expert(self, task: str) -> list[str]:
    """The evidence searches, then the first gold answer."""
    q = self.question(task)
    return [f"<search>{query}</search>" for query in q.expert_queries] + [f"<answer>{q.answers[0]}</answer>"]
