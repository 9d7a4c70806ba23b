"""The PPO / GRPO learner: config, train state, one jitted sharded update over a minibatch, PPO epochs.

One loss serves both action modes: it is written over loss units (tokens or turns, see rl/policy.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from agentgen_jax import models
from agentgen_jax.rl import advantages as adv_lib
from agentgen_jax.rl import losses, policy

KL_MODES = ("loss", "reward", "none")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """Optimiser, PPO loss and batching settings (frozen: hashable, safe to close over in jit)."""
  lr: float = 1e-6
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  max_grad_norm: float = 1.0
  clip_low: float = 0.2
  clip_high: float = 0.28
  value_clip: float | None = 0.2  # None or <= 0: unclipped value loss
  value_coef: float = 0.5
  entropy_coef: float = 0.0
  kl_coef: float = 0.0
  kl_estimator: str = "k3"  # "k1" | "k3"
  kl_mode: str = "loss"  # "loss" | "reward" | "none"
  critic: str = "none"  # "none" | "shared" (head on the policy trunk) | "separate" (own trunk + head)
  critic_lr: float | None = None  # default: lr
  micro_batch_size: int = 4  # rows per forward/backward; the minibatch is accumulated exactly
  mini_batch_size: int = 16  # rows per optimiser step
  epochs: int = 1
  warmup_steps: int = 0
  schedule: str = "constant"  # "constant" | "cosine" (cosine needs total_steps)
  total_steps: int = 0

  def __post_init__(self):
    for name, value, choices in (("kl_mode", self.kl_mode, KL_MODES),
                                 ("kl_estimator", self.kl_estimator, losses.KL_ESTIMATORS),
                                 ("critic", self.critic, policy.CRITICS),
                                 ("schedule", self.schedule, SCHEDULES)):
      if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")
    if self.micro_batch_size <= 0 or self.mini_batch_size % self.micro_batch_size:
      raise ValueError(f"mini_batch_size={self.mini_batch_size} is not a multiple of "
                       f"micro_batch_size={self.micro_batch_size}")
    if self.schedule == "cosine" and self.total_steps <= 0:
      raise ValueError(f"schedule='cosine' needs total_steps > 0, got {self.total_steps}")

  @property
  def uses_ref(self) -> bool:
    """Whether a frozen reference policy is kept (for the KL term or the KL reward penalty)."""
    return self.kl_mode != "none" and self.kl_coef > 0


@flax.struct.dataclass
class TrainState:
  """Everything the update changes, as one pytree (checkpointed whole)."""
  step: jax.Array  # [] i32
  params: Any  # policy params (plain pytree)
  opt_state: Any
  critic_params: Any  # None | value head ("shared") | {"trunk", "head"} ("separate")
  critic_opt_state: Any
  ref_params: Any  # frozen reference policy, None when no KL is used
  rng: jax.Array


def _schedule(lcfg: LearnerConfig, lr: float):
  if lcfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(lcfg.warmup_steps, 0), lcfg.total_steps)
  if lcfg.warmup_steps > 0:
    warmup = optax.linear_schedule(0.0, lr, lcfg.warmup_steps)
    return optax.join_schedules([warmup, optax.constant_schedule(lr)], [lcfg.warmup_steps])
  return lr


def make_optimizer(lcfg: LearnerConfig, lr: float | None = None) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW; weight decay on matrices only (not on norms and biases)."""
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  return optax.chain(
      optax.clip_by_global_norm(lcfg.max_grad_norm),
      optax.adamw(_schedule(lcfg, lcfg.lr if lr is None else lr), b1=lcfg.b1, b2=lcfg.b2, eps=lcfg.eps,
                  weight_decay=lcfg.weight_decay, mask=decay_mask))


def _copy(tree):
  # Real copies: the state is donated, and two leaves must never share a buffer.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def init_state(model_cfg, params, lcfg: LearnerConfig, rng, mesh=None) -> TrainState:
  """A fresh TrainState; the critic starts from the policy trunk ("separate") or a new head.

  The state holds copies of `params`: the update donates the state, and the caller's params stay usable.
  """
  params = _copy(params)
  rng, head_rng = jax.random.split(rng)
  critic_params = critic_opt_state = None
  if lcfg.critic != "none":
    head = models.value.init_value_head(model_cfg, head_rng)
    critic_params = head if lcfg.critic == "shared" else {"trunk": _copy(params), "head": head}
    critic_opt_state = make_optimizer(lcfg, lcfg.critic_lr).init(critic_params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=make_optimizer(lcfg).init(params), critic_params=critic_params,
                     critic_opt_state=critic_opt_state,
                     ref_params=_copy(params) if lcfg.uses_ref else None, rng=rng)
  if mesh is not None:
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  return state


def batch_keys(mode: str, lcfg: LearnerConfig, for_update: bool = True) -> tuple[str, ...]:
  """The batch fields the update (or evaluate_batch, for_update=False) reads in `mode`."""
  if mode == "token":
    keys = ["tokens", "positions", "valid"]
  else:
    keys = ["tokens", "positions", "valid", "attn_mask", "pred_pos", "cand_id", "cand_turn", "chosen",
            "state_pos"]
  keys.append(policy.unit_mask_key(mode))
  if for_update:
    keys += ["old_logprobs", "advantages"]
    if lcfg.critic != "none":
      keys += ["returns", "old_values"]
    if lcfg.uses_ref:
      keys.append("ref_logprobs")
  return tuple(keys)


def _unit_sums(lcfg, mode, model_cfg, params, critic_params, mb):
  """Masked SUMS over one micro-batch of the loss and the metrics (divided by the global count later)."""
  mask = mb[policy.unit_mask_key(mode)] > 0
  logp, entropy, values = policy.units(mode, model_cfg, params, critic_params, lcfg.critic, mb,
                                       with_entropy=True)
  pl, clipped = losses.policy_surrogate(logp, mb["old_logprobs"], mb["advantages"], lcfg.clip_low,
                                        lcfg.clip_high)
  s = lambda x: losses.masked_sum(x, mask)
  sums = {"policy_loss": s(pl), "clip_frac": s(clipped.astype(jnp.float32)), "entropy": s(entropy),
          # k3 of the sampling policy against the current one: how far this epoch has moved.
          "approx_kl": s(losses.kl_estimate(mb["old_logprobs"], logp, "k3"))}
  loss = sums["policy_loss"] - lcfg.entropy_coef * sums["entropy"]
  if lcfg.uses_ref:
    sums["kl"] = s(losses.kl_estimate(logp, mb["ref_logprobs"], lcfg.kl_estimator))
    if lcfg.kl_mode == "loss":
      loss = loss + lcfg.kl_coef * sums["kl"]
  if values is not None:
    sums["value_loss"] = s(losses.value_loss(values, mb["old_values"], mb["returns"], lcfg.value_clip))
    loss = loss + lcfg.value_coef * sums["value_loss"]
    err = mb["returns"] - values
    sums.update(ret=s(mb["returns"]), ret2=s(jnp.square(mb["returns"])), err=s(err), err2=s(jnp.square(err)))
  return loss, sums


def _explained_variance(sums, n):
  var_r = sums["ret2"] / n - jnp.square(sums["ret"] / n)
  var_e = sums["err2"] / n - jnp.square(sums["err"] / n)
  return jnp.where(var_r > 1e-12, 1.0 - var_e / jnp.maximum(var_r, 1e-12), 0.0)


def split_micro(tree, micro_batch_size: int, mesh=None):
  """[M, ...] -> [M / micro, micro, ...]; micro-batch i takes rows i, i + n, i + 2n, ... (n = M / micro).

  The strided split keeps every micro-batch spread over all devices when rows are sharded over `data`.
  """
  def split(x):
    m = x.shape[0]
    if m % micro_batch_size:
      raise ValueError(f"minibatch of {m} rows is not a multiple of micro_batch_size={micro_batch_size}")
    y = x.reshape(micro_batch_size, m // micro_batch_size, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, PartitionSpec(None, "data")))
    return y
  return jax.tree.map(split, tree)


def accumulate(loss_and_sums, trainable, micro, n_units):
  """Gradient of sum_i loss_i / n_units over the micro-batches (lax.scan): the exact minibatch mean.

  loss_and_sums(trainable, mb) -> (loss sum, {name: sum}). Returns (grads, {name: sum}).
  """
  def scaled(trainable, mb):
    loss, sums = loss_and_sums(trainable, mb)
    return loss / n_units, sums

  grad_fn = jax.grad(scaled, has_aux=True)
  first = jax.tree.map(lambda x: x[0], micro)
  sums_shape = jax.eval_shape(lambda t, mb: loss_and_sums(t, mb)[1], trainable, first)
  zeros = (jax.tree.map(jnp.zeros_like, trainable),
           jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), sums_shape))

  def body(carry, mb):
    g, s = grad_fn(trainable, mb)
    return jax.tree.map(jnp.add, carry, (g, s)), None

  (grads, sums), _ = jax.lax.scan(body, zeros, micro)
  return grads, sums


def _update(model_cfg, lcfg: LearnerConfig, mode: str, mesh, state: TrainState, minibatch):
  mask = minibatch[policy.unit_mask_key(mode)] > 0
  n_units = jnp.maximum(jnp.sum(mask).astype(jnp.float32), 1.0)
  micro = split_micro(minibatch, lcfg.micro_batch_size, mesh)
  loss_and_sums = lambda t, mb: _unit_sums(lcfg, mode, model_cfg, t[0], t[1], mb)
  (g_policy, g_critic), sums = accumulate(loss_and_sums, (state.params, state.critic_params), micro, n_units)

  tx = make_optimizer(lcfg)
  updates, opt_state = tx.update(g_policy, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {k: v / n_units for k, v in sums.items() if k not in ("ret", "ret2", "err", "err2")}
  metrics.update(grad_norm=optax.global_norm(g_policy), n_units=n_units)
  critic_params, critic_opt_state = state.critic_params, state.critic_opt_state
  if lcfg.critic != "none":
    ctx = make_optimizer(lcfg, lcfg.critic_lr)
    c_updates, critic_opt_state = ctx.update(g_critic, critic_opt_state, critic_params)
    critic_params = optax.apply_updates(critic_params, c_updates)
    metrics.update(critic_grad_norm=optax.global_norm(g_critic),
                   explained_variance=_explained_variance(sums, n_units))
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, critic_params=critic_params,
                        critic_opt_state=critic_opt_state)
  return state, metrics


def jit_step(fn, mesh=None):
  """jit of `fn(state, batch) -> (state, metrics)` with the state donated; with a mesh, the state and
  metrics replicated and the batch rows sharded over `data`."""
  if mesh is None:
    return jax.jit(fn, donate_argnums=0)
  rep, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  return jax.jit(fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def make_update(model_cfg, lcfg: LearnerConfig, mode: str = "token", mesh=None):
  """`update(state, minibatch) -> (state, metrics)`: one optimiser step, jitted, the state donated.

  minibatch: dict of arrays with a leading row dimension (a multiple of micro_batch_size, itself a
  multiple of the mesh's `data` size); extra fields are ignored. With a mesh the rows are sharded over
  `data` and the state replicated: XLA sums the per-device gradients, exactly once.
  """
  policy.unit_mask_key(mode)  # validates mode
  keys = batch_keys(mode, lcfg)
  jitted = jit_step(functools.partial(_update, model_cfg, lcfg, mode, mesh), mesh)

  def update(state, minibatch):
    missing = [k for k in keys if k not in minibatch]
    if missing:
      raise KeyError(f"minibatch lacks {missing}; {mode} mode with critic={lcfg.critic!r}, "
                     f"kl_mode={lcfg.kl_mode!r} needs {list(keys)}")
    return jitted(state, {k: minibatch[k] for k in keys})

  update.mode, update.lcfg, update.keys = mode, lcfg, keys
  return update


def _pad_rows(batch, idx, size, mask_key):
  """Rows idx of batch, padded to `size` rows by repeating row idx[0] with its loss mask zeroed."""
  out = {k: np.asarray(v)[idx] for k, v in batch.items()}
  extra = size - len(idx)
  if extra > 0:
    for k, v in out.items():
      pad = np.repeat(v[:1], extra, axis=0)
      if k == mask_key:
        pad = np.zeros_like(pad)
      out[k] = np.concatenate([v, pad])
  return out


def train_epochs(update, state, batch, rng, lcfg: LearnerConfig):
  """`lcfg.epochs` passes over `batch` (numpy, [B, ...] per field) in shuffled minibatches.

  The last minibatch of an epoch is padded to full size with masked-out rows, which the exact reduction
  ignores.
  The shuffle is seeded by `rng`. Returns (state, metrics averaged over the updates, as floats).
  """
  mask_key = policy.unit_mask_key(update.mode)
  batch = {k: batch[k] for k in update.keys}
  b = len(batch[mask_key])
  seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
  perm_rng = np.random.default_rng(seed)
  history = []
  for _ in range(lcfg.epochs):
    perm = perm_rng.permutation(b)
    for start in range(0, b, lcfg.mini_batch_size):
      idx = perm[start:start + lcfg.mini_batch_size]
      # Always a full minibatch: one shape, one compile.
      state, metrics = update(state, _pad_rows(batch, idx, lcfg.mini_batch_size, mask_key))
      history.append(metrics)
  history = jax.device_get(history)
  return state, {k: float(np.mean([m[k] for m in history])) for k in history[0]} if history else {}


def _evaluate(model_cfg, mode, critic, params, critic_params, ref_params, batch):
  logp, entropy, values = policy.units(mode, model_cfg, params, critic_params, critic, batch)
  out = {"logprobs": logp, "entropy": entropy}
  if values is not None:
    out["old_values"] = values
  if ref_params is not None:
    ref = policy.units(mode, model_cfg, ref_params, None, "none", batch, with_entropy=False)
    out["ref_logprobs"] = ref[0]
  return out


_EVALUATORS: dict = {}


def _jitted_evaluate(model_cfg, mode, critic, mesh):
  # Keyed by the config's repr: a model config need not be hashable.
  key = (repr(model_cfg), mode, critic, mesh)
  if key not in _EVALUATORS:
    fn = functools.partial(_evaluate, model_cfg, mode, critic)
    if mesh is None:
      _EVALUATORS[key] = jax.jit(fn)
    else:
      rep, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
      _EVALUATORS[key] = jax.jit(fn, in_shardings=(rep, rep, rep, data), out_shardings=data)
  return _EVALUATORS[key]


def evaluate_batch(model_cfg, state: TrainState, batch, mode: str = "token", micro_batch_size: int = 8,
                   lcfg: LearnerConfig | None = None, mesh=None):
  """Forward passes before an update: current logprobs, critic values and reference logprobs.

  batch: numpy rows, run micro_batch_size rows at a time (a multiple of the mesh's `data` size; rows
  sharded over `data` with a mesh). Returns numpy {"logprobs", "entropy", "old_values" (with a critic),
  "ref_logprobs" (with a reference)} [B, U], plus scalars "logprob_mismatch" (mean |sampler - learner|
  logprob) and "mismatch_kl" (k3) over the loss units when the batch has "old_logprobs".
  """
  if lcfg is not None:
    critic = lcfg.critic
  elif state.critic_params is None:
    critic = "none"
  else:
    separate = isinstance(state.critic_params, dict) and "trunk" in state.critic_params
    critic = "separate" if separate else "shared"
  keys = batch_keys(mode, LearnerConfig(), for_update=False)
  fn = _jitted_evaluate(model_cfg, mode, critic, mesh)
  b = len(batch["tokens"])
  chunks = []
  for start in range(0, b, micro_batch_size):
    idx = np.arange(start, min(start + micro_batch_size, b))
    rows = _pad_rows({k: batch[k] for k in keys}, idx, micro_batch_size, None)
    out = jax.device_get(fn(state.params, state.critic_params, state.ref_params, rows))
    chunks.append({k: v[:len(idx)] for k, v in out.items()})
  result = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  if "old_logprobs" in batch:
    mask = np.asarray(batch[policy.unit_mask_key(mode)]) > 0
    old = np.asarray(batch["old_logprobs"], np.float64)[mask]
    new = result["logprobs"].astype(np.float64)[mask]
    n = max(mask.sum(), 1)
    result["logprob_mismatch"] = float(np.abs(old - new).sum() / n)
    result["mismatch_kl"] = float((np.expm1(new - old) - (new - old)).sum() / n)
  return result


ESTIMATORS = ("gae", "turn_gae", "grpo", "reinforce")


def prepare_batch(model_cfg, state: TrainState, batch, lcfg: LearnerConfig, mode: str = "token",
                  estimator: str = "gae", gamma: float = 1.0, lam: float = 1.0,
                  recompute_old_logprobs: bool = False, micro_batch_size: int = 8, mesh=None):
  """A rollout batch made ready for `train_epochs`: evaluate_batch, KL reward penalty, advantages.

  Adds "old_values" / "ref_logprobs" (when used), "advantages" and "returns" ([B, U]); with
  `recompute_old_logprobs` the learner's own logprobs replace the sampler's as the PPO "old" ones.
  "gae" / "turn_gae" use the critic's values (zeros without a critic: Monte-Carlo returns); "grpo" and
  "reinforce" use episode_return and group_ids ([B]), adjusted by the KL penalty when kl_mode="reward".
  Returns (batch, metrics of the evaluation).
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator {estimator!r} is not one of {ESTIMATORS}")
  if estimator == "turn_gae" and mode != "token":
    raise ValueError(f"estimator 'turn_gae' needs mode 'token' (choice-mode units are turns), got {mode!r}")
  ev = evaluate_batch(model_cfg, state, batch, mode, micro_batch_size, lcfg, mesh)
  out = dict(batch)
  mask = np.asarray(batch[policy.unit_mask_key(mode)])
  if recompute_old_logprobs or "old_logprobs" not in out:
    out["old_logprobs"] = ev["logprobs"]
  for key in ("old_values", "ref_logprobs"):
    if key in ev:
      out[key] = ev[key]
  raw = np.asarray(batch["rewards"], np.float32)
  rewards = raw
  if lcfg.uses_ref and lcfg.kl_mode == "reward":
    rewards = np.asarray(losses.kl_penalty_rewards(raw, out["old_logprobs"], out["ref_logprobs"], mask,
                                                   lcfg.kl_coef, lcfg.kl_estimator))
  values = out.get("old_values", np.zeros_like(raw))
  if estimator == "gae":
    adv, ret = adv_lib.token_gae(rewards, values, mask, gamma, lam)
  elif estimator == "turn_gae":
    adv, ret = adv_lib.turn_gae(rewards, values, mask, batch["turn_ids"], gamma, lam)
  else:
    episode = np.asarray(batch["episode_return"], np.float32) + ((rewards - raw) * (mask > 0)).sum(1)
    fn = adv_lib.grpo if estimator == "grpo" else adv_lib.reinforce_baseline
    adv = adv_lib.broadcast_to_tokens(fn(episode, batch["group_ids"]), mask)
    ret = adv_lib.token_gae(rewards, np.zeros_like(raw), mask, gamma, 1.0)[1]
  out["advantages"], out["returns"] = np.asarray(adv), np.asarray(ret)
  metrics = {k: v for k, v in ev.items() if np.ndim(v) == 0}
  return out, metrics
