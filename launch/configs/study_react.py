"""Shared settings of the small ReAct studies (study_*_react_small.py): the choose-mode small studies
(study_small.py) with the policy writing its action as free text, "Action: <action>", parsed by each env's
own parser as in the paper, instead of scoring the env's listed actions. The SFT warm start teaches the
format: its expert demos are written as "Action: <action>" turns (no thought text). Not a config itself.
"""


def react(c, max_new_tokens: int = 16):
  """c in the `generate` action mode. BabyAI and TextCraft actions are 7-9 tokens of the tiny model's
  tokenizer with "Action: " (e.g. "Action: craft 1 stick using 2 planks" = 8), so 16 new tokens leave room
  for the end-of-turn token; longer outputs are cut and count as invalid."""
  c.rollout.mode = "generate"
  c.rollout.max_new_tokens = max_new_tokens
  return c
