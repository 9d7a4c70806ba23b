"""Failure-mode labels for unsuccessful episodes: invalid output, repeated-action loops, running out of turns,
premature commitment without verification (the study's "confirmation bias"), and a hook for an LLM judge.

Rules read only the episode record (actions, per-step invalid flags, turns, env), so they run on saved
trajectories as well as on live rollouts.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Callable, Sequence

LABELS = ("env_error", "invalid_action", "repeated_loop", "premature_commitment", "out_of_turns",
          "wrong_commitment", "other")
DESCRIPTIONS = {
    "env_error": "the environment itself failed (crashed or timed-out worker)",
    "invalid_action": "at least half of the agent's turns were unparseable or inadmissible",
    "repeated_loop": "the agent repeated the same action (or a 2-cycle of actions) 3+ times in a row",
    "premature_commitment": "the agent committed to a final answer/purchase without verifying first "
                            "(WebShop: bought without opening options/details; SearchQA: answered without "
                            "searching; others: ended in under a third of the expert's usual turns)",
    "out_of_turns": "the episode hit the turn or token cap",
    "wrong_commitment": "the agent ended the episode itself, with a wrong result",
    "other": "none of the above",
}

Judge = Callable[[dict], "str | None"]


def _transcript(episode: dict) -> dict:
  t = episode.get("transcript") or "{}"
  if isinstance(t, bytes):
    t = t.decode("utf-8")
  return json.loads(t) if isinstance(t, str) else dict(t)


def _loop(actions: Sequence[str], repeats: int = 3) -> bool:
  norm = [a.strip().lower() for a in actions]
  for i in range(len(norm) - repeats + 1):
    if len(set(norm[i:i + repeats])) == 1:
      return True
  for i in range(len(norm) - 2 * repeats + 1):  # a-b-a-b-a-b
    window = norm[i:i + 2 * repeats]
    if window[0] != window[1] and window[0::2] == [window[0]] * repeats and \
        window[1::2] == [window[1]] * repeats:
      return True
  return False


def _premature(env: str, actions: Sequence[str]) -> bool:
  low = [a.lower() for a in actions]
  if not low:
    return False
  if env == "webshop":
    bought = "buy" in low[-1]
    checked = any(re.search(r"click\[(description|features|reviews)\]", a) for a in low)
    options = sum(a.startswith("click[") and not re.search(r"b0|buy|next|prev|back|search", a) for a in low)
    return bought and not checked and options == 0
  if env == "searchqa":
    return "<answer>" in low[-1] and not any("<search>" in a for a in low)
  return False


def label_episode(episode: dict, judge: Judge | None = None) -> str | None:
  """The failure label of one episode record (None for a success). `judge` (an LLM judge, say) is asked
  for episodes the rules leave as "other" and may return one of LABELS or None."""
  if episode.get("success"):
    return None
  t = _transcript(episode)
  actions = list(t.get("actions", []))
  step_invalid = list(t.get("step_invalid", []))
  turns = int(episode.get("turns", len(actions)))
  if episode.get("env_error") or t.get("env_error"):
    return "env_error"
  invalid = sum(step_invalid) if step_invalid else int(episode.get("invalid", 0))
  if turns and invalid * 2 >= turns:
    return "invalid_action"
  if _loop(actions):
    return "repeated_loop"
  if _premature(str(episode.get("env", "")), actions):
    return "premature_commitment"
  if t.get("truncated") or t.get("out_of_turns") or turns >= int(t.get("max_turns", 10**9)):
    return "out_of_turns"
  if t.get("ended_by_env"):
    return "wrong_commitment"
  if judge is not None:
    label = judge(episode)
    if label is not None:
      if label not in LABELS:
        raise ValueError(f"judge returned unknown label {label!r}; valid: {', '.join(LABELS)}")
      return label
  return "other"


def failure_table(episodes: Sequence[dict], judge: Judge | None = None) -> dict[str, dict]:
  """Per env: {"failures": n, "episodes": n, "labels": {label: percent of failures}}."""
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  totals: collections.Counter = collections.Counter()
  for ep in episodes:
    env = str(ep.get("env", "?"))
    totals[env] += 1
    label = label_episode(ep, judge)
    if label is not None:
      counts[env][label] += 1
  out = {}
  for env in sorted(totals):
    n_fail = sum(counts[env].values())
    out[env] = {"episodes": totals[env], "failures": n_fail,
                "labels": {label: 100.0 * counts[env][label] / n_fail if n_fail else 0.0
                           for label in LABELS}}
  return out
