"""The policy (and critic) seen as distributions over loss units: tokens in token mode, turns in choice
mode. Each mode maps (params, critic params, batch) to (logp [B, U], entropy [B, U], values [B, U] | None).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agentgen_jax import models
from agentgen_jax.rl import losses

MODES = ("token", "choice")
CRITICS = ("none", "shared", "separate")
# Finite stand-in for -inf: a turn without candidates must not put inf - inf into the gradient.
_NEG = -1e30


def unit_mask_key(mode: str) -> str:
  """The batch field that marks loss units in `mode`."""
  if mode not in MODES:
    raise ValueError(f"mode {mode!r} is not one of {MODES}")
  return "loss_mask" if mode == "token" else "unit_mask"


def _shift_right(x):
  """[B, T] -> [B, T] with x[:, t-1] at t and 0 at t = 0 (quantities predicted for the next token)."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


def _forward(model_cfg, params, batch):
  """Logits [B, T, V] and hidden [B, T, D] of the batch, with its tree attention mask if it has one."""
  logits, hidden, _ = models.forward(model_cfg, params, batch["tokens"], batch["positions"],
                                     batch.get("valid"), attn_mask=batch.get("attn_mask"))
  return logits, hidden


def _critic_hidden(model_cfg, critic_params, critic: str, hidden, batch):
  """The hidden states the value head reads: the policy's (shared) or the critic trunk's (separate)."""
  if critic == "separate":
    _, hidden = _forward(model_cfg, critic_params["trunk"], batch)
    return critic_params["head"], hidden
  return critic_params, hidden


def token_units(model_cfg, params, critic_params, critic: str, batch, with_entropy: bool = True):
  """Token mode: logp[t] = log_softmax(logits[t-1])[tokens[t]], value[t] = head(hidden[t-1]); [B, T]."""
  logits, hidden = _forward(model_cfg, params, batch)
  tokens = batch["tokens"]
  logp = jnp.pad(losses.token_logprobs(logits[:, :-1], tokens[:, 1:]), ((0, 0), (1, 0)))
  entropy = _shift_right(losses.entropy_from_logits(logits)) if with_entropy else jnp.zeros_like(logp)
  values = None
  if critic != "none":
    head, h = _critic_hidden(model_cfg, critic_params, critic, hidden, batch)
    values = _shift_right(models.value.values(head, h))
  return logp, entropy, values


def candidate_token_logprobs(logits, tokens, pred_pos):
  """logp[b, t] = log_softmax(logits[b, pred_pos[b, t]])[tokens[b, t]] without copying the logits."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  rows = jnp.arange(tokens.shape[0])[:, None]
  pos = jnp.clip(pred_pos, 0, tokens.shape[1] - 1)
  return logits[rows, pos, tokens] - lse[rows, pos]


def choice_scores(token_logp, cand_id, cand_turn, chosen):
  """Per-turn log-prob and entropy of the choice among the turn's candidates.

  token_logp, cand_id: [B, T]; cand_turn: [B, C] (-1 pad); chosen: [B, K] (-1 pad). A candidate's score
  is the sum of its tokens' log-probs. Returns (logp [B, K], entropy [B, K]), 0 on turns without choice.
  """
  b, c = cand_turn.shape
  k = chosen.shape[1]
  rows = jnp.arange(b)[:, None]
  slot = jnp.where(cand_id >= 0, cand_id, c)
  score = jnp.zeros((b, c), jnp.float32).at[rows, slot].add(token_logp, mode="drop")
  member = cand_turn[:, None, :] == jnp.arange(k)[None, :, None]  # [B, K, C]
  has = member.any(-1) & (chosen >= 0)
  masked = jnp.where(member, score[:, None, :], _NEG)
  lse = jax.nn.logsumexp(jnp.where(has[..., None], masked, 0.0), axis=-1)  # [B, K]
  chosen_score = jnp.take_along_axis(score, jnp.clip(chosen, 0, c - 1), axis=1)
  logp = jnp.where(has, chosen_score - lse, 0.0)
  logp_c = jnp.where(member, masked - lse[..., None], 0.0)
  entropy = jnp.where(has, -jnp.sum(jnp.exp(logp_c) * logp_c * member, axis=-1), 0.0)
  return logp, entropy


def choice_units(model_cfg, params, critic_params, critic: str, batch, with_entropy: bool = True):
  """Choice mode: the turn's action distribution over its listed candidates (GLAM); units [B, K].

  The value of turn k is read at state_pos[k], the last context token before its candidates.
  """
  del with_entropy  # the entropy over a handful of candidates costs nothing
  logits, hidden = _forward(model_cfg, params, batch)
  token_logp = candidate_token_logprobs(logits, batch["tokens"], batch["pred_pos"])
  logp, entropy = choice_scores(token_logp, batch["cand_id"], batch["cand_turn"], batch["chosen"])
  values = None
  if critic != "none":
    head, h = _critic_hidden(model_cfg, critic_params, critic, hidden, batch)
    state_pos = jnp.clip(batch["state_pos"], 0, h.shape[1] - 1)
    h_state = jnp.take_along_axis(h, state_pos[..., None], axis=1)  # [B, K, D]
    values = models.value.values(head, h_state)
  return logp, entropy, values


def units(mode: str, model_cfg, params, critic_params, critic: str, batch, with_entropy: bool = True):
  """(logp [B, U], entropy [B, U], values [B, U] | None) for `mode` in MODES."""
  if mode == "token":
    return token_units(model_cfg, params, critic_params, critic, batch, with_entropy)
  if mode == "choice":
    return choice_units(model_cfg, params, critic_params, critic, batch, with_entropy)
  raise ValueError(f"mode {mode!r} is not one of {MODES}")
