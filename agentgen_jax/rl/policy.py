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
  """Logits [B, T, V] and hidden [B, T, D] of the batch's tokens under the causal mask."""
  logits, hidden, _ = models.forward(model_cfg, params, batch["tokens"], batch["positions"],
                                     batch.get("valid"))
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


def node_logprobs(model_cfg, params, hidden, pred_rows, node_row, tokens):
  """logp[b, m] = log_softmax(logits at hidden[b, pred_rows[b, node_row[b, m]]])[tokens[b, m]]: the LM head
  runs on the [B, R] predicting rows only (siblings share theirs), not on every position."""
  h = jnp.take_along_axis(hidden, jnp.clip(pred_rows, 0, hidden.shape[1] - 1)[..., None], axis=1)
  logits = models.lm_head(model_cfg, params, h)  # [B, R, V]
  rows = jnp.arange(tokens.shape[0])[:, None]
  return logits[rows, node_row, tokens] - jax.nn.logsumexp(logits, axis=-1)[rows, node_row]


def candidate_scores(node_logp, cand_path):
  """node_logp [B, M], cand_path [B, C, P] (-1 pad) -> score [B, C]: the sum of each candidate's token
  log-probs (untempered, as the rollout scores them)."""
  rows = jnp.arange(node_logp.shape[0])[:, None, None]
  picked = node_logp[rows, jnp.clip(cand_path, 0, node_logp.shape[1] - 1)]
  return jnp.sum(jnp.where(cand_path >= 0, picked, 0.0), axis=-1)


def choice_scores(score, cand_turn, chosen, temperature: float = 1.0):
  """Per-turn log-prob and entropy of the choice among the turn's candidates.

  score, cand_turn: [B, C] (cand_turn -1 pad: no candidate); chosen: [B, K] (-1 pad). The turn's
  distribution is softmax(score / temperature), the one the rollout samples from. Returns
  (logp [B, K], entropy [B, K]), 0 on turns without choice.
  """
  c = cand_turn.shape[1]
  k = chosen.shape[1]
  score = score / temperature
  member = cand_turn[:, None, :] == jnp.arange(k)[None, :, None]  # [B, K, C]
  has = member.any(-1) & (chosen >= 0)
  masked = jnp.where(member, score[:, None, :], _NEG)
  lse = jax.nn.logsumexp(jnp.where(has[..., None], masked, 0.0), axis=-1)  # [B, K]
  chosen_score = jnp.take_along_axis(score, jnp.clip(chosen, 0, c - 1), axis=1)
  logp = jnp.where(has, chosen_score - lse, 0.0)
  logp_c = jnp.where(member, masked - lse[..., None], 0.0)
  entropy = jnp.where(has, -jnp.sum(jnp.exp(logp_c) * logp_c * member, axis=-1), 0.0)
  return logp, entropy


def _branches(batch) -> models.Branches:
  return models.Branches(batch["branch_tokens"], batch["branch_positions"], batch["branch_context"],
                         batch["branch_ancestors"])


def choose_units(model_cfg, params, batch, temperature: float = 1.0, critic: str = "none",
                 critic_params=None, with_entropy: bool = True) -> Units:
  """Choose mode: the turn's action distribution over its listed candidates (GLAM); units [B, K].

  One pass over the episode's context with its candidates as branches (rl/batch.py choice_batch): each
  candidate is scored against the shared prefix, as the rollout scored it against its KV cache. The value
  of turn k is read at state_pos[k], the last context token before its candidates.
  """
  del with_entropy  # the entropy over a handful of candidates costs nothing
  t = batch["tokens"].shape[1]
  hidden = models.forward_branches(model_cfg, params, batch["tokens"], batch["positions"], batch["valid"],
                                   _branches(batch))
  node_logp = node_logprobs(model_cfg, params, hidden, batch["pred_rows"], batch["node_row"],
                            batch["node_token"])
  logp, entropy = choice_scores(candidate_scores(node_logp, batch["cand_path"]), batch["cand_turn"],
                                batch["chosen"], temperature)
  values = last = None
  if critic != "none" and critic_params is not None:
    # The critic reads context states only: a separate critic runs the context alone.
    head, h = _critic(model_cfg, critic, critic_params, hidden[:, :t], batch)
    state_pos = jnp.clip(batch["state_pos"], 0, t - 1)
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
