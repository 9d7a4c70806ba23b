"""The training and evaluation loops shared by launch/train.py, launch/evaluate.py and the study protocols:
expert demonstrations and SFT warm start, RL iterations (rollout -> advantages -> PPO/GRPO epochs), and
avg@k evaluation, each resumable from orbax checkpoints and logged to TensorBoard and JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agentgen_jax import checkpoint, data, models, rollout
from agentgen_jax import tokenizer as tokenizer_lib
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import learner, sft
from agentgen_jax.study import metrics


def default_config() -> ml_collections.ConfigDict:
  """Every field a training config may set (launch/configs/*.py override some)."""
  c = ml_collections.ConfigDict()
  c.model = "tiny"                 # preset | embedded name | HF folder | .gguf file
  c.tokenizer = ""                 # default: the model's own
  c.dtype = ""                     # compute dtype; default float32 on CPU, bfloat16 on accelerators
  c.seed = 0
  c.envs = ("babyai",)             # training envs (tuples: overridable as --config.envs="(a, b)")
  c.env_weights = ()               # mixture sampling weights (default uniform)
  c.env_kwargs = {}                # {env: {kwarg: value}}
  c.train_split, c.train_difficulty = "train", "all"
  c.pool_size, c.workers = 8, 2
  c.env_timeout_s = 120.0
  c.rollout = ml_collections.ConfigDict(dict(
      mode="generate", max_turns=0, max_new_tokens=48, max_episode_tokens=1024, temperature=1.0,
      top_p=1.0, max_candidates=32, system_prompt=""))
  c.iterations = 10
  c.tasks_per_iteration = 4
  c.group_size = 4                 # episodes per task (the GRPO group)
  c.learner = ml_collections.ConfigDict(dict(
      lr=1e-5, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0, clip_low=0.2,
      clip_high=0.2, value_clip=0.2, value_coef=0.5, entropy_coef=0.0, kl_coef=0.0, kl_estimator="k3",
      kl_mode="loss", critic="none", micro_batch_size=8, mini_batch_size=16, epochs=1, estimator="grpo",
      gamma=1.0, lam=1.0, bootstrap_truncated=False, loss_agg="token-mean"))
  c.sft = ml_collections.ConfigDict(dict(tasks=0, epochs=2, batch_size=8, micro_batch_size=0, lr=1e-3))
  # sft.micro_batch_size: rows per forward/backward (0: the whole batch at once)
  c.eval = ml_collections.ConfigDict(dict(
      envs=(), split="test", difficulty="all", tasks=10, k=1, temperature=0.0))
  c.checkpoint_every = 1
  c.max_to_keep = 2
  c.export_hf = False              # also write the final policy as an HF folder (workdir/hf_export)
  return c


def learner_config(c: ml_collections.ConfigDict, **overrides) -> learner.LearnerConfig:
  # The learner scores the distribution the rollout sampled from: one temperature, the rollout's.
  fields = dict(c.learner.to_dict(), temperature=c.rollout.temperature)
  fields.update(overrides)
  return learner.LearnerConfig(**fields)


def rollout_config(c: ml_collections.ConfigDict, **overrides) -> rollout.RolloutConfig:
  r = dict(c.rollout.to_dict())
  r.update(overrides)
  r["max_turns"] = r.get("max_turns") or None
  r["system_prompt"] = r.get("system_prompt") or None
  return rollout.RolloutConfig(**r)


def check_config(c: ml_collections.ConfigDict) -> None:
  """One-line errors for bad values, naming the valid choices (before any model or env is loaded)."""
  import envs
  from envs import base as env_base
  if c.rollout.mode not in rollout.MODES:
    raise ValueError(f"unknown rollout.mode {c.rollout.mode!r}; valid: {', '.join(rollout.MODES)}")
  for name in list(c.envs) + list(c.eval.envs):
    if name not in envs.names():
      raise ValueError(f"unknown env {name!r}; known envs: {', '.join(envs.names())}")
  if c.env_weights and len(c.env_weights) != len(c.envs):
    raise ValueError(f"env_weights has {len(c.env_weights)} entries for {len(c.envs)} envs")
  if c.sft.micro_batch_size and c.sft.batch_size % c.sft.micro_batch_size:
    raise ValueError(f"sft.batch_size={c.sft.batch_size} is not a multiple of "
                     f"sft.micro_batch_size={c.sft.micro_batch_size}")
  if c.group_size < 1 or c.tasks_per_iteration < 1:
    raise ValueError("group_size and tasks_per_iteration must be >= 1")
  learner_config(c)  # estimator, kl_mode, kl_estimator, critic, loss_agg, temperature, batch sizes
  rollout_config(c)
  for field, value, valid in (("train_split", c.train_split, env_base.SPLITS),
                              ("train_difficulty", c.train_difficulty, env_base.DIFFICULTIES),
                              ("eval.split", c.eval.split, env_base.SPLITS),
                              ("eval.difficulty", c.eval.difficulty, env_base.DIFFICULTIES)):
    if value not in valid:
      raise ValueError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")


@dataclasses.dataclass
class Policy:
  """The model being trained, its tokenizer and chat format."""

  cfg: models.ModelConfig
  params: Any
  tokenizer: Any
  chat: rollout.ChatFormat


def load_policy(c: ml_collections.ConfigDict) -> Policy:
  cfg, params = models.load(c.model, dtype=c.dtype or None)
  tok = tokenizer_lib.load(c.tokenizer or c.model)
  tokenizer_lib.check_compatible(tok, cfg)
  return Policy(cfg, params, tok, rollout.ChatFormat(tok, c.rollout.system_prompt or None))


class TaskStream:
  """A deterministic, resumable stream of (env, task) draws: draw i depends only on (seed, i)."""

  def __init__(self, pool, env_names: Sequence[str], weights: Sequence[float], split: str, difficulty: str,
               seed: int):
    self.names = list(env_names)
    w = np.asarray(weights or [1.0] * len(self.names), np.float64)
    self.weights = w / w.sum()
    self.tasks = {n: pool.tasks(n, split, difficulty) for n in self.names}
    for n, ts in self.tasks.items():
      if not ts:
        raise ValueError(f"env {n!r} has no tasks for split={split!r} difficulty={difficulty!r}")
    self.seed = seed
    self.position = 0

  def next(self, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
      rng = np.random.default_rng([self.seed, self.position])
      name = self.names[int(rng.choice(len(self.names), p=self.weights))]
      out.append((name, self.tasks[name][int(rng.integers(len(self.tasks[name])))]))
      self.position += 1
    return out


# ---- expert demonstrations and SFT ------------------------------------------------------------------

def expert_episodes(pool, chat: rollout.ChatFormat, tasks: Sequence[tuple[str, str]], mode: str,
                    tag: str = "expert") -> list[rollout.Episode]:
  """Teacher-forced episodes of the env experts, in the same token layout as rollouts."""
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


def sft_warm_start(c, policy: Policy, pool, workdir: str, logger) -> Any:
  """Writes expert demos as a TFDS dataset, then trains on them (cross-entropy on agent tokens)."""
  demo_dir = os.path.join(workdir, "demos")
  if not os.path.exists(os.path.join(demo_dir, "train.jsonl")):
    stream = TaskStream(pool, c.envs, c.env_weights, c.train_split, c.train_difficulty, c.seed + 1)
    eps = expert_episodes(pool, policy.chat, stream.next(c.sft.tasks), c.rollout.mode)
    data.write_episodes([ep.record("expert") for ep in eps], demo_dir)
  source = data.read_episodes(demo_dir)
  # Demos longer than an episode may be in a rollout teach nothing usable and cost T^2 attention memory.
  demos = [d for d in (data.decode_record(source[i]) for i in range(len(source)))
           if len(d["tokens"]) <= c.rollout.max_episode_tokens]
  if not demos:
    raise ValueError(f"no expert demo fits rollout.max_episode_tokens={c.rollout.max_episode_tokens}")
  lcfg = learner_config(c, lr=c.sft.lr, kl_coef=0.0, critic="none", mini_batch_size=c.sft.batch_size,
                        micro_batch_size=c.sft.micro_batch_size or c.sft.batch_size)
  state = learner.init_state(policy.cfg, policy.params, lcfg, jax.random.PRNGKey(c.seed))
  step_fn = sft.make_sft_step(policy.cfg, lcfg)
  rng = np.random.default_rng(c.seed)
  step = 0
  from tqdm import tqdm
  per_epoch = len(sft_batches(demos, c.sft.batch_size, np.random.default_rng(0)))  # fixed per epoch
  with tqdm(total=c.sft.epochs * per_epoch, desc=f"SFT on {len(demos)} demos") as bar:
    for epoch in range(c.sft.epochs):
      for idx, seq_len in sft_batches(demos, c.sft.batch_size, rng):
        batch = _records_to_token_batch([demos[i] for i in idx], seq_len)
        state, m = step_fn(state, batch)
        step += 1
        m = jax.device_get(m)
        logger.scalars("sft", step, m)
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{float(m['loss']):.3f}")
      logger.log({"phase": "sft", "epoch": epoch, "steps": step, **_floats(m)})
  return state.params, len(demos)


def sft_batches(demos: Sequence[dict], batch_size: int, rng: np.random.Generator):
  """One epoch of (row indices, padded length) batches: demos are grouped by length bucket, so a short
  demo is not padded to the longest one (attention costs T^2); a handful of shapes, one compile each.

  Every demo appears once per epoch; the last batch of a bucket is filled up with other demos of the same
  bucket (a fixed batch shape per bucket), and the batch order is shuffled across buckets.
  """
  buckets: dict[int, list[int]] = {}
  for i in rng.permutation(len(demos)):
    buckets.setdefault(rollout.sampling.bucket(len(demos[i]["tokens"])), []).append(int(i))
  batches = []
  for seq_len, members in sorted(buckets.items()):
    for start in range(0, len(members), batch_size):
      idx = members[start:start + batch_size]
      idx += [members[j % len(members)] for j in range(batch_size - len(idx))]
      batches.append((np.asarray(idx), seq_len))
  return [batches[i] for i in rng.permutation(len(batches))]


def _records_to_token_batch(records: Sequence[dict], seq_len: int) -> dict[str, np.ndarray]:
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


def _floats(tree) -> dict[str, float]:
  return {k: float(v) for k, v in tree.items() if np.ndim(v) == 0}


# ---- evaluation -------------------------------------------------------------------------------------

def evaluate(policy: Policy, params, pool, env_names: Sequence[str], *, split: str, difficulty: str,
             n_tasks: int, k: int, rcfg: rollout.RolloutConfig, seed: int, stage: str,
             trained_on: Sequence[str], trajectory_dir: str | None = None) -> list[dict]:
  """avg@k evaluation: the first n_tasks tasks of each env, k episodes each. One eval dict per env."""
  roller = rollout.Roller(policy.cfg, policy.tokenizer, pool, rcfg)
  out = []
  for name in env_names:
    tasks = pool.tasks(name, split, difficulty)[:n_tasks]
    if not tasks:
      raise ValueError(f"env {name!r} has no tasks for split={split!r} difficulty={difficulty!r}")
    draws = [(name, t) for t in tasks for _ in range(k)]
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), _stable_hash(f"{stage}/{name}/{difficulty}"))
    episodes = roller.run(params, draws, rng)
    records = [ep.record(f"eval:{stage}") for ep in episodes]
    if trajectory_dir:
      data.write_episodes(records, os.path.join(trajectory_dir, f"eval_{_slug(stage)}_{name}_{difficulty}"))
    summary = metrics.summarize_episodes(records, k)
    out.append({"stage": stage, "trained_on": list(trained_on), "env": name, "split": split,
                "difficulty": difficulty, **summary})
  return out


def _slug(text: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _stable_hash(text: str) -> int:
  import zlib
  return zlib.crc32(text.encode()) & 0x7FFFFFFF


# ---- RL ---------------------------------------------------------------------------------------------

class Logger:
  """JSON lines and TensorBoard event files in the workdir."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self._json = open(os.path.join(workdir, "log.jsonl"), "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    except ImportError:
      self._tb = None

  def log(self, record: dict) -> None:
    self._json.write(json.dumps(dict(record, time=time.time()), default=float) + "\n")
    self._json.flush()

  def scalars(self, prefix: str, step: int, values: dict) -> None:
    if self._tb is None:
      return
    for k, v in values.items():
      if np.ndim(v) == 0:
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)

  def close(self) -> None:
    self._json.close()
    if self._tb is not None:
      self._tb.close()


def _all_finite(tree) -> bool:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(jax.device_get(jnp.all(jnp.stack(leaves)))) if leaves else True


def _check_finite(m: dict, params, iteration: int, ckpt_dir: str, last_good: int | None) -> None:
  """Stops the run before a non-finite loss, metric or parameter can reach a checkpoint."""
  bad = [k for k, v in m.items() if np.ndim(v) == 0 and not math.isfinite(float(v))]
  if not bad and not _all_finite(params):
    bad = ["params"]
  if bad:
    raise FloatingPointError(
        f"non-finite {', '.join(sorted(bad))} at RL iteration {iteration}; stopped without saving it "
        f"(last good checkpoint: step {last_good} in {ckpt_dir})")


def rl_train(c, policy: Policy, params, pool, workdir: str, logger: Logger, *, stage: str = "train",
             global_offset: int = 0, resume: bool = True) -> tuple[Any, list[dict]]:
  """RL iterations on c.envs from `params`; resumes from workdir/checkpoints when present.

  Returns the final params and the training curve (success/score per iteration).
  """
  mode = c.rollout.mode
  lcfg = learner_config(c)
  rcfg = rollout_config(c)
  roller = rollout.Roller(policy.cfg, policy.tokenizer, pool, rcfg)
  stream = TaskStream(pool, c.envs, c.env_weights, c.train_split, c.train_difficulty, c.seed)
  state = learner.init_state(policy.cfg, params, lcfg, jax.random.PRNGKey(c.seed))
  update = learner.make_update(policy.cfg, lcfg, mode=mode)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=c.max_to_keep)
  start, curves = 0, []
  if resume and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    start, stream.position, curves = meta["iteration"], meta["sampler_position"], meta["curves"]
    logger.log({"event": "resumed", "stage": stage, "iteration": start})
  last_good = ckpt.latest_step()
  try:
    from tqdm import tqdm
    bar = tqdm(range(start, c.iterations), desc=f"RL {stage}", initial=start, total=c.iterations)
  except ImportError:
    bar = range(start, c.iterations)
  for it in bar:
    t0 = time.time()
    tasks = [t for t in stream.next(c.tasks_per_iteration) for _ in range(c.group_size)]
    rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), it)
    episodes = roller.run(state.params, tasks, jax.random.fold_in(rng, 0))
    t_rollout = time.time() - t0
    batch, batch_metrics = rl_batch.learner_batch(episodes, state, policy.cfg, lcfg, mode)
    state, m = learner.train_epochs(update, state, batch, jax.random.fold_in(rng, 1), lcfg)
    m = dict(_floats(jax.device_get(m)), **batch_metrics)
    _check_finite(m, state.params, it, ckpt_dir, last_good)
    success = float(np.mean([ep.success for ep in episodes]))
    score = float(np.mean([ep.score for ep in episodes]))
    point = {"stage": stage, "iteration": it, "global_iteration": global_offset + it, "success": success,
             "score": score, "mean_turns": float(np.mean([ep.turns for ep in episodes])),
             "invalid_rate": float(sum(ep.invalid for ep in episodes)
                                   / max(1, sum(ep.turns for ep in episodes)))}
    curves.append(point)
    logger.log({**point, **m, "rollout_s": t_rollout, "iteration_s": time.time() - t0})
    logger.scalars(f"rl/{stage}", it, {**m, "success": success, "score": score})
    data.write_jsonl([ep.record(f"train:{stage}:{it}") for ep in episodes],
                     os.path.join(workdir, "trajectories", f"train_{it:05d}.jsonl"))
    if (it + 1) % c.checkpoint_every == 0 or it + 1 == c.iterations:
      ckpt.save(it + 1, state, {"iteration": it + 1, "sampler_position": stream.position, "curves": curves,
                                "stage": stage})
      last_good = it + 1
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(success=f"{success:.2f}", kl=f"{m.get('kl', 0):.3g}")
  ckpt.close()
  return state.params, curves


# ---- the whole job ----------------------------------------------------------------------------------

def make_pool(c, env_names: Sequence[str]):
  import envs
  kwargs = {name: dict(c.env_kwargs.get(name, {})) for name in env_names}
  return envs.EnvPool(list(env_names), size=c.pool_size, workers=c.workers, timeout_s=c.env_timeout_s,
                      env_kwargs=kwargs, seed=c.seed)


def eval_rollout_config(c) -> rollout.RolloutConfig:
  return rollout_config(c, temperature=c.eval.temperature)


def _cached(path: str, fn):
  """fn() once: its JSON result is kept in `path`, so a resumed job does not redo finished work."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  value = fn()
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, default=float)
  os.replace(tmp, path)
  return value


def train_stage(c, policy: Policy, params, pool, workdir: str, logger: Logger, stage: str,
                global_offset: int = 0, evaluate_sft=None) -> tuple[Any, list[dict]]:
  """SFT warm start (if c.sft.tasks) then RL (if c.iterations), resumable; returns (params, curves)."""
  os.makedirs(workdir, exist_ok=True)
  if c.sft.tasks > 0:
    sft_ckpt = checkpoint.Checkpointer(os.path.join(workdir, "sft"), max_to_keep=1)
    if sft_ckpt.latest_step() is None:
      params, n_demos = sft_warm_start(c, policy, pool, workdir, logger)
      sft_ckpt.save(1, params, {"demos": n_demos})
    else:
      params, _ = sft_ckpt.restore(params)
    sft_ckpt.close()
    if evaluate_sft is not None and c.iterations > 0:
      evaluate_sft(params)
  curves: list[dict] = []
  if c.iterations > 0:
    params, curves = rl_train(c, policy, params, pool, workdir, logger, stage=stage,
                              global_offset=global_offset)
  return params, curves


def run(c, workdir: str) -> dict:
  """The train command: evaluate the base model, train (SFT warm start and/or RL), evaluate again,
  write results.json and report.md. Every step is resumable: rerunning continues where it stopped."""
  from agentgen_jax.study import failures, report
  check_config(c)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(c.to_dict(), f, indent=1, default=str)
  policy = load_policy(c)
  eval_envs = list(c.eval.envs) or list(c.envs)
  logger = Logger(workdir)
  traj = os.path.join(workdir, "trajectories")
  ercfg = eval_rollout_config(c)

  def do_eval(params, stage):
    return evaluate(policy, params, pool, eval_envs, split=c.eval.split, difficulty=c.eval.difficulty,
                    n_tasks=c.eval.tasks, k=c.eval.k, rcfg=ercfg, seed=c.seed, stage=stage,
                    trained_on=[] if stage == "base" else list(c.envs), trajectory_dir=traj)

  with make_pool(c, sorted(set(eval_envs) | set(c.envs))) as pool:
    evals = _cached(os.path.join(workdir, "eval_base.json"), lambda: do_eval(policy.params, "base"))
    params, curves = train_stage(c, policy, policy.params, pool, workdir, logger, stage="train",
                                 evaluate_sft=lambda p: _cached(os.path.join(workdir, "eval_sft.json"),
                                                                lambda: do_eval(p, "sft")))
    final_stage = "rl" if c.iterations > 0 else "sft"
    if c.sft.tasks > 0 and c.iterations > 0:
      evals = evals + _cached(os.path.join(workdir, "eval_sft.json"), lambda: None)
    evals = evals + _cached(os.path.join(workdir, f"eval_{final_stage}.json"),
                            lambda: do_eval(params, final_stage))
  logger.close()
  last_records = []
  for name in eval_envs:
    path = os.path.join(traj, f"eval_{final_stage}_{name}_{c.eval.difficulty}", "train.jsonl")
    if os.path.exists(path):
      last_records += data.read_jsonl(path)
  results = {"protocol": "train", "model": c.model, "config": c.to_dict(), "evals": evals,
             "metrics": {"transfer": metrics.transfer(evals)}, "curves": curves,
             "failures": failures.failure_table(last_records),
             "final_params_digest": checkpoint.params_digest(params)}
  report.write_report(results, workdir)
  if c.export_hf:
    models.save_hf(policy.cfg, params, os.path.join(workdir, "hf_export"), tokenizer=policy.tokenizer)
  return results
