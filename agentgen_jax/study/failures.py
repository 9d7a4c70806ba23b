"""Failure-mode labels for unsuccessful episodes: invalid output, confirmation bias (acting again on a belief
the env already contradicted), repeated-action loops, premature commitment without verification, running out
of turns, and a judge hook (`llm_judge`) for what the rules cannot see.

Rules read only the episode record (actions, per-step invalid flags, the env's feedback in the transcript),
so they run on saved trajectories as well as on live rollouts.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Callable, Sequence

import envs

LABELS = ("env_error", "confirmation_bias", "invalid_action", "repeated_loop", "premature_commitment",
          "out_of_turns", "wrong_commitment", "other")
DESCRIPTIONS = {
    "env_error": "the environment itself failed (crashed or timed-out worker)",
    "invalid_action": "at least half of the agent's turns were unparseable or inadmissible",
    "confirmation_bias": "the agent issued again an action the env had already rejected (said it failed, "
                         "was invalid, or the thing is not there: ALFWorld 'Nothing happens.', TextCraft "
                         "'Could not ...', WebShop's invalid click, ...) and it was rejected again: it kept "
                         "acting on a belief a later observation contradicted (the judge hook covers the "
                         "cases without such a signal)",
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


def _action_of(text: str) -> str | None:
  """The action in agent text, normalised: ReAct "Action: ..." when present, else the text itself (choose
  mode records the action); None when empty."""
  action = envs.parse_react(text)  # the envs' own parser: the action the env executed
  if action is None and "\n" not in text.strip():
    action = text  # a bare action with a colon in it (choose mode, tool syntax)
  action = " ".join((action or "").lower().split())
  return action or None


def _confirmation_bias(actions: Sequence[str], step_invalid: Sequence[bool]) -> bool:
  """True when an action the env rejected is issued again later and rejected again."""
  rejected: set[str] = set()
  for text, invalid in zip(actions, step_invalid):
    action = _action_of(str(text))
    if action is None or not invalid:
      continue
    if action in rejected:
      return True
    rejected.add(action)
  return False


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
  """The failure label of one episode record (None for a success): the first rule of LABELS' order that
  holds. `judge` (an LLM judge, say: `llm_judge`) is asked for episodes the rules leave as "other" and may
  return one of LABELS or None."""
  if episode.get("success"):
    return None
  t = _transcript(episode)
  actions = list(t.get("actions", []))
  step_invalid = list(t.get("step_invalid", []))
  turns = int(episode.get("turns", len(actions)))
  if episode.get("env_error") or t.get("env_error"):
    return "env_error"
  if _confirmation_bias(actions, step_invalid):
    return "confirmation_bias"
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


JUDGE_INSTRUCTIONS = """\
You label why an AI agent failed a task in a text environment. Read the transcript and answer with exactly
one label from this list, and nothing else:
{labels}
"""


def judge_prompt(episode: dict, max_chars: int = 6000) -> str:
  """The text an LLM judge reads: the labels with their meanings, then the episode's transcript (the env's
  observations and the agent's turns), cut to its last max_chars characters."""
  labels = "\n".join(f"- {k}: {DESCRIPTIONS[k]}" for k in LABELS if k != "env_error")
  messages = _transcript(episode).get("messages") or []
  turns = [f"{m.get('role', '?').upper()}: {m.get('content', '')}" for m in messages
           if m.get("role") != "system"]
  text = "\n".join(turns)[-max_chars:]
  return (JUDGE_INSTRUCTIONS.format(labels=labels) + f"\nEnvironment: {episode.get('env', '?')}\n"
          f"Transcript:\n{text}\n\nLabel:")


def llm_judge(complete: Callable[[str], str]) -> Judge:
  """A Judge from any text-completion function (an API client, a local model's sampler): it gets
  judge_prompt(episode) and its answer's first known label wins; an answer naming no label gives None."""
  def judge(episode: dict) -> str | None:
    answer = complete(judge_prompt(episode)).lower()
    found = [(answer.find(label), label) for label in LABELS if label in answer]
    return min(found)[1] if found else None
  return judge


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
