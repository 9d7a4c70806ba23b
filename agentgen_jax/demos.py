"""Expert demonstrations and the SFT warm start: the envs' experts played teacher-forced in the rollout's
token layout, written once as a TFDS dataset, then trained on (cross-entropy on the agent tokens)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from agentgen_jax import config as config_lib
from agentgen_jax import data, distributed, logs, rollout, sampling
from agentgen_jax.rl import learner, sft
from agentgen_jax.tasks import TaskStream


def expert_episodes(pool, chat: rollout.ChatFormat, tasks: Sequence[tuple[str, str]], mode: str,
                    tag: str = "expert") -> list[rollout.Episode]:
  """Teacher-forced episodes of the env experts, in the same token layout as rollouts (successes only)."""
  out = []
  for start in range(0, len(tasks), pool.size):
    batch = list(tasks[start:start + pool.size])
    plans = pool.expert(batch)
    observations = pool.reset(batch)
    eps = []
    for (name, task), obs in zip(batch, observations):
      info = pool.info(name)
      ep = rollout.Episode(env=name, task=task, max_turns=10**6,
                           messages=chat.first_messages(info["instruction"], obs.text))
      ep.pending = chat.prompt(ep.messages)
      eps.append(ep)
    for turn in range(max(len(p) for p in plans)):
      actions: list[str | None] = []
      for ep, plan in zip(eps, plans):
        if ep.done or turn >= len(plan):
          ep.done = True
          actions.append(None)
          continue
        action = plan[turn]
        text = action if mode == "choose" else pool.format_action(ep.env, action)
        ep.add(ep.pending, agent=False)
        ep.add(chat.encode(text) + chat.end_of_turn, agent=True)
        ep.messages.append({"role": "assistant", "content": text})
        ep.pending = []
        actions.append(action)
      steps = pool.step(actions, parse=False)
      for ep, action, step in zip(eps, actions, steps):
        if action is None or step is None:
          continue
        ep.turns += 1
        ep.actions.append(action)
        ep.rewards[-1] += float(step.reward)
        ep.success, ep.score = bool(step.success), float(step.score)
        if step.done:
          ep.done = True
        else:
          ep.messages.append({"role": "user", "content": step.observation.text})
          ep.pending = chat.continuation(ep.messages, chat.end_of_turn)
    out += [ep for ep in eps if ep.success]
  return out


def load_demos(cfg: config_lib.RunConfig, agent, pool, workdir: str) -> list[dict]:
  """The run's expert demos (workdir/demos, written on first use), those that fit an episode's tokens.

  On several processes each plays every demo (the experts are deterministic), process 0 writes them, and
  all read them back from the shared workdir."""
  demo_dir = os.path.join(workdir, "demos")
  if not distributed.agreed(os.path.exists(os.path.join(demo_dir, "train.jsonl"))):
    stream = TaskStream.training(cfg, pool, cfg.seed + 1)
    eps = expert_episodes(pool, agent.chat, stream.next(cfg.sft.tasks), cfg.rollout.mode)
    data.write_episodes([ep.record("expert") for ep in eps], demo_dir)
    distributed.sync("agentgen_demos_written")
  source = data.read_episodes(demo_dir)
  # Demos longer than an episode may be in a rollout teach nothing usable and cost T^2 attention memory.
  demos = [d for d in (data.decode_record(source[i]) for i in range(len(source)))
           if len(d["tokens"]) <= cfg.rollout.max_episode_tokens]
  if not demos:
    raise ValueError(f"no expert demo fits rollout.max_episode_tokens={cfg.rollout.max_episode_tokens}")
  return demos


def sft_warm_start(cfg: config_lib.RunConfig, agent, pool, out: logs.StageOutput) -> tuple[Any, int]:
  """Writes expert demos as a TFDS dataset, then trains on them; returns (params, number of demos)."""
  from tqdm import tqdm
  demos = load_demos(cfg, agent, pool, out.workdir)
  lcfg = config_lib.sft_learner_config(cfg)
  state = learner.init_state(agent.cfg, agent.params, lcfg, jax.random.PRNGKey(cfg.seed), mesh=agent.mesh)
  step_fn = sft.make_sft_step(agent.cfg, lcfg, mesh=agent.mesh)
  rng = np.random.default_rng(cfg.seed)
  step = 0
  per_epoch = len(sft_batches(demos, cfg.sft.batch_size, np.random.default_rng(0)))  # fixed per epoch
  with tqdm(total=cfg.sft.epochs * per_epoch, desc=f"SFT on {len(demos)} demos",
            disable=not distributed.is_primary()) as bar:
    for epoch in range(cfg.sft.epochs):
      for idx, seq_len in sft_batches(demos, cfg.sft.batch_size, rng):
        batch = records_to_token_batch([demos[i] for i in idx], seq_len)
        state, m = step_fn(state, batch)
        step += 1
        m = jax.device_get(m)
        out.logger.scalars("sft", step, m)
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{float(m['loss']):.3f}")
      out.logger.log({"phase": "sft", "epoch": epoch, "steps": step, **logs.scalar_floats(m)})
  return learner.policy_params(state), len(demos)


def sft_batches(demos: Sequence[dict], batch_size: int, rng: np.random.Generator):
  """One epoch of (row indices, padded length) batches: demos are grouped by length bucket, so a short
  demo is not padded to the longest one (attention costs T^2); a handful of shapes, one compile each.

  Every demo appears once per epoch; the last batch of a bucket is filled up with other demos of the same
  bucket (a fixed batch shape per bucket), and the batch order is shuffled across buckets.
  """
  buckets: dict[int, list[int]] = {}
  for i in rng.permutation(len(demos)):
    buckets.setdefault(sampling.bucket(len(demos[i]["tokens"])), []).append(int(i))
  batches = []
  for seq_len, members in sorted(buckets.items()):
    for start in range(0, len(members), batch_size):
      idx = members[start:start + batch_size]
      idx += [members[j % len(members)] for j in range(batch_size - len(idx))]
      batches.append((np.asarray(idx), seq_len))
  return [batches[i] for i in rng.permutation(len(batches))]


def records_to_token_batch(records: Sequence[dict], seq_len: int) -> dict[str, np.ndarray]:
  """Episode records -> the SFT step's batch: tokens, positions [B, T] i32, valid [B, T], loss_mask."""
  b = len(records)
  out = {"tokens": np.zeros((b, seq_len), np.int32), "positions": np.zeros((b, seq_len), np.int32),
         "valid": np.zeros((b, seq_len), bool), "loss_mask": np.zeros((b, seq_len), np.float32)}
  for row, r in enumerate(records):
    n = min(len(r["tokens"]), seq_len)
    out["tokens"][row, :n] = r["tokens"][:n]
    out["positions"][row, :n] = np.arange(n)
    out["valid"][row, :n] = True
    out["loss_mask"][row, :n] = r["loss_mask"][:n]
  return out
