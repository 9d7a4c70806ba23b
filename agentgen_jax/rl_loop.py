"""The RL training loop: iterations of rollout -> rl.batch.learner_batch (advantages) -> PPO epochs, resumable
from orbax checkpoints, logged to log.jsonl and TensorBoard; and `train_stage`, a stage's SFT warm start
followed by RL."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from agentgen_jax import checkpoint, data, demos, distributed, logs, models, rollout
from agentgen_jax import config as config_lib
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import learner
from agentgen_jax.tasks import TaskStream


def _all_finite(tree) -> bool:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(jax.device_get(jnp.all(jnp.stack(leaves)))) if leaves else True


def check_finite(m: dict, params, iteration: int, ckpt_dir: str, last_good: int | None) -> None:
  """Stops the run before a non-finite loss, metric or parameter can reach a checkpoint."""
  bad = [k for k, v in m.items() if np.ndim(v) == 0 and not math.isfinite(float(v))]
  if not bad and not _all_finite(params):
    bad = ["params"]
  if bad:
    raise FloatingPointError(
        f"non-finite {', '.join(sorted(bad))} at RL iteration {iteration}; stopped without saving it "
        f"(last good checkpoint: step {last_good} in {ckpt_dir})")


def _progress(start: int, total: int, stage: str):
  try:
    from tqdm import tqdm
    return tqdm(range(start, total), desc=f"RL {stage}", initial=start, total=total,
                disable=not distributed.is_primary())
  except ImportError:
    return range(start, total)


def _curve_point(episodes, out: logs.StageOutput, it: int) -> dict:
  turns = max(1, sum(ep.turns for ep in episodes))
  return {"stage": out.name, "iteration": it, "global_iteration": out.global_offset + it,
          "success": float(np.mean([ep.success for ep in episodes])),
          "score": float(np.mean([ep.score for ep in episodes])),
          "mean_turns": float(np.mean([ep.turns for ep in episodes])),
          "invalid_rate": float(sum(ep.invalid for ep in episodes) / turns)}


def rl_train(cfg: config_lib.RunConfig, agent, params, pool, out: logs.StageOutput) -> tuple[Any, list[dict]]:
  """RL iterations on cfg.envs from `params`; resumes from out.workdir/checkpoints when present.

  Returns the final params and the training curve (success/score per iteration).
  """
  mode, lcfg = cfg.rollout.mode, cfg.learner
  mesh = agent.mesh
  roller = rollout.Roller(agent.cfg, agent.tokenizer, pool, cfg.rollout, mesh=mesh)
  stream = TaskStream.training(cfg, pool, cfg.seed)
  state = learner.init_state(agent.cfg, params, lcfg, jax.random.PRNGKey(cfg.seed), mesh=mesh)
  update = learner.make_update(agent.cfg, lcfg, mode=mode, mesh=mesh)
  ckpt_dir = os.path.join(out.workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=cfg.max_to_keep)
  # floor: the learner batch's padded sizes only grow over a run (rl.batch.learner_batch), so the update
  # compiles once per growth; checkpointed, so that a resumed run pads (and rounds) as the unbroken one.
  start, curves, floor = 0, [], {}
  if ckpt.latest_step() is not None:
    restored, meta = ckpt.restore(state.checkpointable())
    state = restored.replace(frozen=state.frozen)
    start, stream.position, curves = meta["iteration"], meta["sampler_position"], meta["curves"]
    floor = meta.get("batch_floor", {})
    out.logger.log({"event": "resumed", "stage": out.name, "iteration": start})
  last_good = ckpt.latest_step()
  bar = _progress(start, cfg.iterations, out.name)
  for it in bar:
    t0 = time.time()
    tasks = [t for t in stream.next(cfg.tasks_per_iteration) for _ in range(cfg.group_size)]
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), it)
    # Under LoRA the rollout decodes on weights merged once per iteration (faster than the branch per step).
    policy = models.lora.merged(learner.policy_params(state))
    episodes = roller.run(policy, tasks, jax.random.fold_in(rng, 0))
    del policy
    t_rollout = time.time() - t0
    batch, batch_metrics = rl_batch.learner_batch(episodes, state, agent.cfg, lcfg, mode, mesh, floor)
    floor = rl_batch.batch_dims(batch)
    state, m = learner.train_epochs(update, state, batch, jax.random.fold_in(rng, 1), lcfg)
    m = dict(logs.scalar_floats(jax.device_get(m)), **batch_metrics)
    check_finite(m, state.params, it, ckpt_dir, last_good)
    point = _curve_point(episodes, out, it)
    curves.append(point)
    out.logger.log({**point, **m, "rollout_s": t_rollout, "iteration_s": time.time() - t0})
    out.logger.scalars(f"rl/{out.name}", it, {**m, "success": point["success"], "score": point["score"]})
    data.write_jsonl([ep.record(f"train:{out.name}:{it}") for ep in episodes],
                     os.path.join(out.workdir, "trajectories", f"train_{it:05d}.jsonl"))
    if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
      # Under LoRA the checkpoint holds the adapters and their optimiser state; the base is cfg.model.
      meta = {"iteration": it + 1, "sampler_position": stream.position, "curves": curves, "stage": out.name,
              "base_model": cfg.model, "batch_floor": floor}
      ckpt.save(it + 1, state.checkpointable(), meta)
      last_good = it + 1
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(success=f"{point['success']:.2f}", kl=f"{m.get('kl', 0):.3g}")
  ckpt.close()
  return learner.policy_params(state), curves


def trained_part(params):
  """What a checkpoint of params holds: the adapters under LoRA, else everything."""
  return models.lora.split(params)[1] if models.lora.is_attached(params) else params


def _with_trained_part(params, trained):
  if models.lora.is_attached(params):
    return models.lora.join(models.lora.split(params)[0], trained)
  return trained


def restore_trained(ckpt: checkpoint.Checkpointer, params):
  """params with their trained part (see trained_part) replaced by the one in the SFT checkpoint `ckpt`."""
  trained, _ = ckpt.restore(trained_part(params))
  return _with_trained_part(params, trained)


def train_stage(cfg: config_lib.RunConfig, agent, params, pool, out: logs.StageOutput,
                after_sft: Callable[[Any], Any] | None = None) -> tuple[Any, list[dict]]:
  """SFT warm start (if cfg.sft.tasks) then RL (if cfg.iterations), resumable; returns (params, curves).

  after_sft(params) runs between the two when both happen (the train command evaluates the SFT policy).
  """
  os.makedirs(out.workdir, exist_ok=True)
  if cfg.sft.tasks > 0:
    sft_ckpt = checkpoint.Checkpointer(os.path.join(out.workdir, "sft"), max_to_keep=1)
    if sft_ckpt.latest_step() is None:
      params, n_demos = demos.sft_warm_start(cfg, agent, pool, out)
      sft_ckpt.save(1, trained_part(params), {"demos": n_demos, "base_model": cfg.model})
    else:
      params = restore_trained(sft_ckpt, params)
    sft_ckpt.close()
    if after_sft is not None and cfg.iterations > 0:
      after_sft(params)
  curves: list[dict] = []
  if cfg.iterations > 0:
    params, curves = rl_train(cfg, agent, params, pool, out)
  return params, curves

