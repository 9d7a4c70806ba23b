"""Supervised fine-tuning on expert demonstrations: next-token cross-entropy on the agent tokens.

Same generate-mode batch layout and TrainState as the RL learner (init_state with critic "none").
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import optax

from agentgen_jax import models
from agentgen_jax.rl import learner, losses

SFT_KEYS = ("tokens", "positions", "valid", "loss_mask")


def _sums(model_cfg, params, mb):
  """Summed NLL and correct next-token predictions over one micro-batch's loss tokens."""
  logits, _, _ = models.forward(model_cfg, params, mb["tokens"], mb["positions"], mb["valid"])
  targets = mb["tokens"][:, 1:]
  mask = mb["loss_mask"][:, 1:]
  nll = -losses.masked_sum(losses.token_logprobs(logits[:, :-1], targets), mask)
  correct = losses.masked_sum((jnp.argmax(logits[:, :-1], -1) == targets).astype(jnp.float32), mask)
  return nll, {"loss": nll, "accuracy": correct}


def sft_step(model_cfg, lcfg: learner.LearnerConfig, mesh, state: learner.TrainState, batch):
  """One SFT step as a pure function, `(state, batch) -> (state, metrics)`: what make_sft_step jits and
  launch.plan compiles ahead of time."""
  # Token 0 of a row has no prediction: it never counts as a loss token.
  n_tokens = jnp.maximum(jnp.sum(batch["loss_mask"][:, 1:] > 0).astype(jnp.float32), 1.0)
  micro = learner.split_micro(learner.with_row_index(batch), lcfg.micro_batch_size, mesh)
  # Under LoRA the adapters are joined to the frozen base inside the differentiated function.
  loss = lambda params, mb: _sums(model_cfg, learner.with_frozen(state.frozen, params,
                                                                 learner.dropout_rng(state, mb)), mb)
  grads, sums = learner.accumulate(loss, state.params, micro, n_tokens)
  updates, opt_state = learner.make_optimizer(lcfg).update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
  metrics = {k: v / n_tokens for k, v in sums.items()}
  metrics.update(grad_norm=optax.global_norm(grads), n_tokens=n_tokens)
  return state, metrics


def make_sft_step(model_cfg, lcfg: learner.LearnerConfig, mesh=None):
  """`step(state, batch) -> (state, metrics)`: mean NLL over all loss tokens of the batch (exact under
  micro-batching), one AdamW step; jitted, state donated, rows sharded over `data` with a mesh.

  batch: tokens, positions [B, T] i32, valid [B, T] bool, loss_mask [B, T] (B a multiple of
  lcfg.micro_batch_size). Metrics: loss (NLL per token), accuracy (greedy next-token), grad_norm, n_tokens.
  """
  jitted = learner.jit_step(functools.partial(sft_step, model_cfg, lcfg, mesh), mesh)

  def step(state, batch):
    return jitted(state, {k: batch[k] for k in SFT_KEYS})

  return step
