"""The PPO / GRPO learner: config, train state, one jitted sharded update over a minibatch, PPO epochs.

One loss serves both action modes: it is written over loss units (tokens or turns, see rl/policy.py).
Batches come from rl/batch.py (`learner_batch`), the one path from episodes to advantages.
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

from agentgen_jax import models, parallel
from agentgen_jax.models import lora
from agentgen_jax.rl import advantages as adv_lib
from agentgen_jax.rl import losses, policy

KL_MODES = ("loss", "reward", "none")
GAE_ESTIMATORS = ("token_gae", "turn_gae")
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
  kl_estimator: str = "k3"  # "k1" (reward only) | "k2" (grad of KL(pi||ref)) | "k3" (grad of KL(ref||pi))
  kl_mode: str = "loss"  # "loss" | "reward" | "none"
  critic: str = "none"  # "none" | "shared" (head on the policy trunk) | "separate" (own trunk + head)
  critic_lr: float | None = None  # default: lr
  micro_batch_size: int = 4  # rows per forward/backward; the minibatch is accumulated exactly
  mini_batch_size: int = 16  # rows per optimiser step
  epochs: int = 1
  warmup_steps: int = 0
  schedule: str = "constant"  # "constant" | "cosine" (cosine needs total_steps)
  total_steps: int = 0
  estimator: str = "grpo"  # advantage estimator, one of rl.advantages.ESTIMATORS
  gamma: float = 1.0  # discount per unit (token, or turn for turn_gae and choose mode)
  lam: float = 1.0  # GAE lambda
  bootstrap_truncated: bool = False  # GAE: an episode cut by a budget bootstraps from the critic's value
  loss_agg: str = "token-mean"  # "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum" (Dr. GRPO)
  temperature: float = 1.0  # the rollout's sampling temperature: the learner scores softmax(logits / T)

  def __post_init__(self):
    for name, value, choices in (("kl_mode", self.kl_mode, KL_MODES),
                                 ("kl_estimator", self.kl_estimator, losses.KL_ESTIMATORS),
                                 ("critic", self.critic, policy.CRITICS),
                                 ("schedule", self.schedule, SCHEDULES),
                                 ("estimator", self.estimator, adv_lib.ESTIMATORS),
                                 ("loss_agg", self.loss_agg, losses.LOSS_AGGS)):
      if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")
    if self.kl_estimator == "k1" and self.kl_mode == "loss":
      raise ValueError("kl_estimator='k1' with kl_mode='loss' has zero expected gradient; use 'k2' or 'k3' "
                       "as a loss, or kl_mode='reward'")
    if self.temperature <= 0:
      raise ValueError(f"temperature={self.temperature} must be > 0: the learner scores the sampled "
                       "distribution softmax(logits / temperature), and greedy rollouts have none")
    if self.estimator in GAE_ESTIMATORS and self.critic == "none":
      raise ValueError(f"estimator={self.estimator!r} needs a critic: set critic to 'shared' or 'separate'")
    if self.bootstrap_truncated and self.estimator not in GAE_ESTIMATORS:
      raise ValueError(f"bootstrap_truncated needs estimator in {GAE_ESTIMATORS}, got {self.estimator!r}")
    if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
      raise ValueError(f"gamma={self.gamma} and lam={self.lam} must lie in [0, 1]")
    if self.micro_batch_size <= 0 or self.mini_batch_size % self.micro_batch_size:
      raise ValueError(f"mini_batch_size={self.mini_batch_size} is not a multiple of "
                       f"micro_batch_size={self.micro_batch_size}")
    if self.schedule == "cosine" and self.total_steps <= 0:
      raise ValueError(f"schedule='cosine' needs total_steps > 0, got {self.total_steps}")

  @property
  def uses_ref(self) -> bool:
    """Whether a frozen reference policy is kept (for the KL term or the KL reward penalty)."""
    return self.kl_mode != "none" and self.kl_coef > 0

  @property
  def needs_evaluation(self) -> bool:
    """Whether the learner batch needs a forward pass before the update (evaluate_batch): for the critic's
    values or the reference's log-probs. Without either (GRPO, RLOO, REINFORCE without KL) the update
    reads only the sampler's log-probs, and the first update's own forward measures the sampler/learner
    log-prob mismatch (train_epochs)."""
    return self.critic != "none" or self.uses_ref


@flax.struct.dataclass
class TrainState:
  """Everything the update changes, as one pytree (checkpointed whole, less `frozen`: checkpointable()).

  Under LoRA, params are the adapters (float32), `frozen` is the base they are attached to (models/lora.py
  split: stored in its own dtype, never donated, never copied), the reference is that base with the adapters
  off (ref_params None), and a "separate" critic's trunk is its own adapters on the same base.
  """
  step: jax.Array  # [] i32
  params: Any  # policy params (plain pytree); the LoRA adapters under LoRA
  opt_state: Any
  critic_params: Any  # None | value head ("shared") | {"trunk", "head"} ("separate")
  critic_opt_state: Any
  ref_params: Any  # frozen reference policy, None when no KL is used (or under LoRA)
  rng: jax.Array
  frozen: Any = None  # the frozen base under LoRA, else None

  def checkpointable(self) -> TrainState:
    """The state without the frozen base: what checkpoints hold (the base is reloaded from its source)."""
    return self.replace(frozen=None)


def policy_params(state: TrainState) -> Any:
  """The policy's param tree for any forward (rollout, evaluation, export): under LoRA the adapters
  attached to the base (models.save_hf writes it merged; lora.merge_attached merges it)."""
  return with_frozen(state.frozen, state.params)


def with_frozen(frozen, params, rng=None):
  """params as the forward reads them: under LoRA (frozen not None) the trainable adapters joined to the
  frozen base, with adapter dropout when rng is given; else params unchanged."""
  return params if frozen is None else lora.join(frozen, params, rng)


def _forward_params(frozen, params, critic_params, critic: str, rng=None):
  """(policy tree, critic params) for the forward; a separate critic's trunk is its own adapters."""
  if frozen is not None and critic == "separate":
    critic_params = {"trunk": with_frozen(frozen, critic_params["trunk"], rng), "head": critic_params["head"]}
  return with_frozen(frozen, params, rng), critic_params


def _reference(state: TrainState, uses_ref: bool):
  if state.frozen is None:
    return state.ref_params
  return lora.detach(state.frozen) if uses_ref else None


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
  `params` with LoRA adapters attached (models.lora.attach) trains the adapters only: the base becomes
  `frozen`, shared with the caller's tree, not copied.
  """
  frozen = None
  if lora.is_attached(params):
    frozen, params = lora.split(params)
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
                     ref_params=_copy(params) if lcfg.uses_ref and frozen is None else None, rng=rng)
  if mesh is not None:  # params, moments, reference and critic sharded over fsdp (parallel.py's rule)
    state = jax.device_put(state, parallel.state_shardings(mesh, state))
  # The frozen base keeps the placement the caller gave it (agent.from_config: FSDP over the mesh).
  state = state.replace(frozen=frozen)
  return state


def batch_keys(mode: str, lcfg: LearnerConfig, for_update: bool = True) -> tuple[str, ...]:
  """The batch fields the update (or evaluate_batch, for_update=False) reads in `mode`."""
  if mode == "generate":
    keys = ["tokens", "positions", "valid"]
  else:
    keys = ["tokens", "positions", "valid", "branch_tokens", "branch_positions", "branch_context",
            "branch_ancestors", "pred_rows", "node_row", "node_token", "cand_path", "cand_turn", "chosen",
            "state_pos"]
  keys.append(policy.unit_mask_key(mode))
  if for_update:
    keys += ["old_logprobs", "advantages"]
    if lcfg.critic != "none":
      keys += ["returns", "old_values"]
    if lcfg.uses_ref:
      keys.append("ref_logprobs")
  return tuple(keys)


def _loss_and_sums(lcfg, mode, model_cfg, params, critic_params, mb):
  """One micro-batch: the weighted loss sum (mb["unit_weight"] carries loss_agg) and masked metric SUMS."""
  mask = mb[policy.unit_mask_key(mode)] > 0
  u = policy.units(mode, model_cfg, params, mb, lcfg.temperature, lcfg.critic, critic_params)
  pl, clipped = losses.policy_surrogate(u.logp, mb["old_logprobs"], mb["advantages"], lcfg.clip_low,
                                        lcfg.clip_high)
  s = lambda x: losses.masked_sum(x, mask)
  sums = {"policy_loss": s(pl), "clip_frac": s(clipped.astype(jnp.float32)), "entropy": s(u.entropy),
          # k3 of the sampling policy against the current one: how far this epoch has moved.
          "approx_kl": s(losses.kl_estimate(mb["old_logprobs"], u.logp, "k3")),
          "logprob_gap": s(jnp.abs(mb["old_logprobs"] - u.logp))}
  per_unit = pl - lcfg.entropy_coef * u.entropy
  if lcfg.uses_ref:
    kl = losses.kl_estimate(u.logp, mb["ref_logprobs"], lcfg.kl_estimator)
    sums["kl"] = s(kl)
    if lcfg.kl_mode == "loss":
      per_unit = per_unit + lcfg.kl_coef * kl
  if u.values is not None:
    vl = losses.value_loss(u.values, mb["old_values"], mb["returns"], lcfg.value_clip)
    sums["value_loss"] = s(vl)
    per_unit = per_unit + lcfg.value_coef * vl
    err = mb["returns"] - u.values
    sums.update(ret=s(mb["returns"]), ret2=s(jnp.square(mb["returns"])), err=s(err), err2=s(jnp.square(err)))
  loss = s(per_unit * mb["unit_weight"])
  sums["loss"] = loss
  return loss, sums


def _explained_variance(sums, n):
  var_r = sums["ret2"] / n - jnp.square(sums["ret"] / n)
  var_e = sums["err2"] / n - jnp.square(sums["err"] / n)
  return jnp.where(var_r > 1e-12, 1.0 - var_e / jnp.maximum(var_r, 1e-12), 0.0)


def split_micro(tree, micro_batch_size: int, mesh=None):
  """[M, ...] -> [M / micro, micro, ...]; micro-batch i takes rows i, i + n, i + 2n, ... (n = M / micro).

  The strided split keeps every micro-batch spread over all devices when rows are sharded over the batch
  axes (data and fsdp).
  """
  def split(x):
    m = x.shape[0]
    if m % micro_batch_size:
      raise ValueError(f"minibatch of {m} rows is not a multiple of micro_batch_size={micro_batch_size}")
    y = x.reshape(micro_batch_size, m // micro_batch_size, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      rows = NamedSharding(mesh, PartitionSpec(None, parallel.batch_axes(mesh)))
      y = jax.lax.with_sharding_constraint(y, rows)
    return y
  return jax.tree.map(split, tree)


def with_row_index(batch):
  """batch plus "row_index" [M]: after split_micro, a micro-batch knows which rows it holds."""
  return dict(batch, row_index=jnp.arange(len(batch[next(iter(batch))])))


def dropout_rng(state: TrainState, mb):
  """The LoRA dropout key of this step and micro-batch (mb from split_micro(with_row_index(...)))."""
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), mb["row_index"][0])


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


def loss_gradients(model_cfg, lcfg: LearnerConfig, mode: str, mesh, state: TrainState, minibatch):
  """((policy grads, critic grads), metrics) of the minibatch loss: the update's gradient, exact under
  micro-batching (loss_agg weights come from the whole minibatch) and data parallelism (XLA sums rows)."""
  mask = minibatch[policy.unit_mask_key(mode)] > 0
  n_units = jnp.maximum(jnp.sum(mask).astype(jnp.float32), 1.0)
  minibatch = dict(minibatch, unit_weight=losses.agg_weights(mask, lcfg.loss_agg))
  micro = split_micro(with_row_index(minibatch), lcfg.micro_batch_size, mesh)

  def loss_and_sums(trainable, mb):
    # Under LoRA the adapters are joined to the frozen base here, inside the differentiated function:
    # gradients reach the adapters only.
    params, critic_params = _forward_params(state.frozen, *trainable, lcfg.critic, dropout_rng(state, mb))
    return _loss_and_sums(lcfg, mode, model_cfg, params, critic_params, mb)

  grads, sums = accumulate(loss_and_sums, (state.params, state.critic_params), micro, 1.0)
  # Metrics are unit means (whatever loss_agg), "loss" the aggregated loss that was differentiated.
  metrics = {k: v / n_units for k, v in sums.items() if k not in ("ret", "ret2", "err", "err2", "loss")}
  metrics.update(loss=sums["loss"], grad_norm=optax.global_norm(grads[0]), n_units=n_units)
  if lcfg.critic != "none":
    metrics.update(critic_grad_norm=optax.global_norm(grads[1]),
                   explained_variance=_explained_variance(sums, n_units))
  return grads, metrics


def update_step(model_cfg, lcfg: LearnerConfig, mode: str, mesh, state: TrainState, minibatch):
  """One optimiser step as a pure function, `(state, minibatch) -> (state, metrics)`: what make_update jits
  and launch.plan compiles ahead of time."""
  (g_policy, g_critic), metrics = loss_gradients(model_cfg, lcfg, mode, mesh, state, minibatch)
  updates, opt_state = make_optimizer(lcfg).update(g_policy, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  critic_params, critic_opt_state = state.critic_params, state.critic_opt_state
  if lcfg.critic != "none":
    c_updates, critic_opt_state = make_optimizer(lcfg, lcfg.critic_lr).update(g_critic, critic_opt_state,
                                                                              critic_params)
    critic_params = optax.apply_updates(critic_params, c_updates)
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, critic_params=critic_params,
                        critic_opt_state=critic_opt_state)
  return state, metrics


def jit_state_step(fn, mesh, state):
  """jax.jit of `fn(state, batch) -> (state, metrics)` called as `jitted(state less frozen, frozen, batch)`:
  the state donated, its frozen LoRA base (None without LoRA) passed beside it, neither donated nor returned
  (never copied). With a mesh: the state in and out with its FSDP shardings, the base with the params' rule,
  the batch rows over the batch axes, the metrics replicated. `state` (arrays or ShapeDtypeStructs) gives the
  structure the shardings follow; launch.plan lowers the result on abstract arrays."""
  def without_frozen(state, frozen, batch):
    state, metrics = fn(state.replace(frozen=frozen), batch)
    return state.replace(frozen=None), metrics

  if mesh is None:
    return jax.jit(without_frozen, donate_argnums=0)
  shardings = parallel.state_shardings(mesh, state.replace(frozen=None))
  frozen = None if state.frozen is None else parallel.param_shardings(mesh, state.frozen)
  return jax.jit(without_frozen, in_shardings=(shardings, frozen, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


def jit_step(fn, mesh=None):
  """`step(state, batch) -> (state, metrics)`: jit_state_step of fn, built at the first call (the shardings
  follow the state's structure), the frozen base put back into the returned state."""
  jitted = []

  def step(state, batch):
    if not jitted:
      jitted.append(jit_state_step(fn, mesh, state))
    if mesh is not None:  # every process holds the whole batch: each places its own rows
      batch = parallel.shard_batch(batch, mesh)
    new_state, metrics = jitted[0](state.replace(frozen=None), state.frozen, batch)
    return new_state.replace(frozen=state.frozen), metrics
  return step


def make_update(model_cfg, lcfg: LearnerConfig, mode: str = "generate", mesh=None):
  """`update(state, minibatch) -> (state, metrics)`: one optimiser step, jitted, the state donated.

  minibatch: dict of arrays with a leading row dimension (a multiple of micro_batch_size, itself a
  multiple of the mesh's `data` size); extra fields are ignored. With a mesh the rows are sharded over
  `data` and the state replicated: XLA sums the per-device gradients, exactly once.
  """
  policy.unit_mask_key(mode)  # validates mode
  keys = batch_keys(mode, lcfg)
  jitted = jit_step(functools.partial(update_step, model_cfg, lcfg, mode, mesh), mesh)

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
  The shuffle is seeded by `rng`. Returns (state, metrics averaged over the updates, as floats), and the
  sampler/learner log-prob mismatch as the first update saw it, before it moved the params:
  "logprob_mismatch" (mean |sampler - learner| log-prob) and "mismatch_kl" (k3) over the units of the
  first minibatch (the whole batch when it is one minibatch; evaluate_batch measures them over every row).
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
  if not history:
    return state, {}
  metrics = {k: float(np.mean([m[k] for m in history])) for k in history[0] if k != "logprob_gap"}
  first = history[0]
  metrics.update(logprob_mismatch=float(first["logprob_gap"]), mismatch_kl=float(first["approx_kl"]))
  return state, metrics


def _evaluate(model_cfg, mode, critic, temperature, params, critic_params, ref_params, batch):
  u = policy.units(mode, model_cfg, params, batch, temperature, critic, critic_params)
  out = {"logprobs": u.logp, "entropy": u.entropy}
  if u.values is not None:
    out["old_values"] = u.values
  if u.last_value is not None:
    out["last_value"] = u.last_value
  if ref_params is not None:
    out["ref_logprobs"] = policy.units(mode, model_cfg, ref_params, batch, temperature,
                                       with_entropy=False).logp
  return out


_EVALUATORS: dict = {}


def _jitted_evaluate(model_cfg, mode, critic, temperature, mesh):
  # Keyed by the config's repr: a model config need not be hashable.
  key = (repr(model_cfg), mode, critic, temperature, mesh)
  if key not in _EVALUATORS:
    fn = functools.partial(_evaluate, model_cfg, mode, critic, temperature)
    if mesh is None:
      _EVALUATORS[key] = jax.jit(fn)
    else:  # the params keep the shardings they carry (FSDP); rows in and out over the batch axes
      _EVALUATORS[key] = jax.jit(fn, out_shardings=parallel.batch_sharding(mesh))
  return _EVALUATORS[key]


def _critic_kind(state: TrainState) -> str:
  if state.critic_params is None:
    return "none"
  separate = isinstance(state.critic_params, dict) and "trunk" in state.critic_params
  return "separate" if separate else "shared"


def evaluate_batch(model_cfg, state: TrainState, batch, mode: str = "generate", micro_batch_size: int = 8,
                   lcfg: LearnerConfig | None = None, mesh=None):
  """Forward passes before an update: current logprobs, critic values and reference logprobs, all of the
  tempered distribution softmax(logits / lcfg.temperature) (default lcfg: temperature 1, the state's critic).

  batch: numpy rows, run micro_batch_size rows at a time (a multiple of the mesh's `data` size; rows
  sharded over `data` with a mesh). Returns numpy {"logprobs", "entropy", "old_values" (with a critic),
  "last_value" [B] (with a critic and batch["last_pos"]), "ref_logprobs" (with a reference)} [B, U], plus
  scalars "logprob_mismatch" (mean |sampler - learner| logprob) and "mismatch_kl" (k3) over the loss
  units when the batch has "old_logprobs".
  """
  lcfg = lcfg or LearnerConfig(critic=_critic_kind(state))
  keys = batch_keys(mode, lcfg, for_update=False) + (("last_pos",) if "last_pos" in batch else ())
  fn = _jitted_evaluate(model_cfg, mode, lcfg.critic, lcfg.temperature, mesh)
  b = len(batch["tokens"])
  chunks = []
  for start in range(0, b, micro_batch_size):
    idx = np.arange(start, min(start + micro_batch_size, b))
    rows = _pad_rows({k: batch[k] for k in keys}, idx, micro_batch_size, None)
    rows = rows if mesh is None else parallel.shard_batch(rows, mesh)
    params, critic_params = _forward_params(state.frozen, state.params, state.critic_params, lcfg.critic)
    # Rows come back whole on every process (a gather across processes on several hosts).
    out = parallel.to_host(fn(params, critic_params, _reference(state, lcfg.uses_ref), rows))
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
