"""The policy (and critic) seen as distributions over loss units: tokens in generate mode, turns in choose
mode. `units` maps (params, batch) to Units(logp [B, U], entropy [B, U], values [B, U] | None, last_value).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from agentgen_jax import models
from agentgen_jax.rl import losses

MODES = ("generate", "choose")
CRITICS = ("none", "shared", "separate")
# Finite stand-in for -inf: a turn without candidates must not put inf - inf into the gradient.
_NEG = -1e30


class Units(NamedTuple):
  logp: jax.Array  # [B, U] log-prob of the chosen unit under the tempered policy
  entropy: jax.Array  # [B, U] entropy of the tempered distribution the unit was chosen from
  values: jax.Array | None  # [B, U] critic value of the state before the unit (None without a critic)
  last_value: jax.Array | None  # [B] value of the state after the row's last main token (batch["last_pos"])


def unit_mask_key(mode: str) -> str:
  """The batch field that marks loss units in `mode`: "loss_mask" (generate) or "unit_mask" (choose)."""
  if mode not in MODES:
    raise ValueError(f"mode {mode!r} is not one of {MODES}")
  return "loss_mask" if mode == "generate" else "unit_mask"


def _shift_right(x):
  """[B, T] -> [B, T] with x[:, t-1] at t and 0 at t = 0 (quantities predicted for the next token)."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


def _forward(model_cfg, params, batch):
  """Logits [B, T, V] and hidden [B, T, D] of the batch, with its tree attention mask if it has one."""
  logits, hidden, _ = models.forward(model_cfg, params, batch["tokens"], batch["positions"],
                                     batch.get("valid"), attn_mask=batch.get("attn_mask"))
  return logits, hidden


def _critic(model_cfg, critic: str, critic_params, hidden, batch):
  """(value head, hidden states it reads): the policy's trunk ("shared") or the critic's own ("separate")."""
  if critic == "separate":
    _, hidden = _forward(model_cfg, critic_params["trunk"], batch)
    return critic_params["head"], hidden
  return critic_params, hidden


def _last_value(head, hidden, batch):
  """Value read at batch["last_pos"] [B] (the state after the last main token), or None without it."""
  if "last_pos" not in batch:
    return None
  pos = jnp.clip(batch["last_pos"], 0, hidden.shape[1] - 1)
  h = jnp.take_along_axis(hidden, pos[:, None, None], axis=1)  # [B, 1, D]
  return models.value.values(head, h)[:, 0]


def generate_units(model_cfg, params, batch, temperature: float = 1.0, critic: str = "none",
                   critic_params=None, with_entropy: bool = True) -> Units:
  """Generate mode: logp[t] = log_softmax(logits[t-1] / temperature)[tokens[t]], value[t] = head(hidden[t-1]).

  The sampler drew each token from softmax(logits / temperature): the learner scores that distribution.
  """
  logits, hidden = _forward(model_cfg, params, batch)
  logits = logits.astype(jnp.float32) / temperature
  tokens = batch["tokens"]
  logp = jnp.pad(losses.token_logprobs(logits[:, :-1], tokens[:, 1:]), ((0, 0), (1, 0)))
  entropy = _shift_right(losses.entropy_from_logits(logits)) if with_entropy else jnp.zeros_like(logp)
  values = last = None
  if critic != "none" and critic_params is not None:
    head, h = _critic(model_cfg, critic, critic_params, hidden, batch)
    full = models.value.values(head, h)
    values, last = _shift_right(full), _last_value(head, h, batch)
  return Units(logp, entropy, values, last)


def candidate_token_logprobs(logits, tokens, pred_pos):
  """logp[b, t] = log_softmax(logits[b, pred_pos[b, t]])[tokens[b, t]] without copying the logits."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  rows = jnp.arange(tokens.shape[0])[:, None]
  pos = jnp.clip(pred_pos, 0, tokens.shape[1] - 1)
  return logits[rows, pos, tokens] - lse[rows, pos]


def choice_scores(token_logp, cand_id, cand_turn, chosen, temperature: float = 1.0):
  """Per-turn log-prob and entropy of the choice among the turn's candidates.

  token_logp, cand_id: [B, T]; cand_turn: [B, C] (-1 pad); chosen: [B, K] (-1 pad). A candidate's score
  is the sum of its tokens' (untempered) log-probs; the turn's distribution is softmax(score / temperature),
  the one the rollout samples from. Returns (logp [B, K], entropy [B, K]), 0 on turns without choice.
  """
  b, c = cand_turn.shape
  k = chosen.shape[1]
  rows = jnp.arange(b)[:, None]
  slot = jnp.where(cand_id >= 0, cand_id, c)
  score = jnp.zeros((b, c), jnp.float32).at[rows, slot].add(token_logp, mode="drop") / temperature
  member = cand_turn[:, None, :] == jnp.arange(k)[None, :, None]  # [B, K, C]
  has = member.any(-1) & (chosen >= 0)
  masked = jnp.where(member, score[:, None, :], _NEG)
  lse = jax.nn.logsumexp(jnp.where(has[..., None], masked, 0.0), axis=-1)  # [B, K]
  chosen_score = jnp.take_along_axis(score, jnp.clip(chosen, 0, c - 1), axis=1)
  logp = jnp.where(has, chosen_score - lse, 0.0)
  logp_c = jnp.where(member, masked - lse[..., None], 0.0)
  entropy = jnp.where(has, -jnp.sum(jnp.exp(logp_c) * logp_c * member, axis=-1), 0.0)
  return logp, entropy


def choose_units(model_cfg, params, batch, temperature: float = 1.0, critic: str = "none",
                 critic_params=None, with_entropy: bool = True) -> Units:
  """Choose mode: the turn's action distribution over its listed candidates (GLAM); units [B, K].

  The value of turn k is read at state_pos[k], the last context token before its candidates.
  """
  del with_entropy  # the entropy over a handful of candidates costs nothing
  logits, hidden = _forward(model_cfg, params, batch)
  token_logp = candidate_token_logprobs(logits, batch["tokens"], batch["pred_pos"])
  logp, entropy = choice_scores(token_logp, batch["cand_id"], batch["cand_turn"], batch["chosen"],
                                temperature)
  values = last = None
  if critic != "none" and critic_params is not None:
    head, h = _critic(model_cfg, critic, critic_params, hidden, batch)
    state_pos = jnp.clip(batch["state_pos"], 0, h.shape[1] - 1)
    h_state = jnp.take_along_axis(h, state_pos[..., None], axis=1)  # [B, K, D]
    values, last = models.value.values(head, h_state), _last_value(head, h, batch)
  return Units(logp, entropy, values, last)


def units(mode: str, model_cfg, params, batch, temperature: float = 1.0, critic: str = "none",
          critic_params=None, with_entropy: bool = True) -> Units:
  """Units of `mode` in MODES; values only when `critic` is not "none" and critic_params are given."""
  if mode == "generate":
    return generate_units(model_cfg, params, batch, temperature, critic, critic_params, with_entropy)
  if mode == "choose":
    return choose_units(model_cfg, params, batch, temperature, critic, critic_params, with_entropy)
  raise ValueError(f"mode {mode!r} is not one of {MODES}")
