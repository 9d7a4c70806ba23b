"""The study's protocols as lists of resumable stages: difficulty transfer, the cross-environment transfer
matrix, sequential training (A→B→…) and joint mixture training, each evaluated on every env after every stage.

A stage trains from the params of its parent stage (the warm-started base for first stages) and is finished
when its `final.json` exists: rerunning a study skips finished stages and resumes a half-done one from its
last RL checkpoint. `run_study(config, workdir)` runs a whole protocol; `only` runs selected stages (one job
of a batch array) and `merge` only writes the report from the stages on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from typing import Any, Sequence

from agentgen_jax import agent as agent_lib
from agentgen_jax import checkpoint, distributed, logs, rl_loop
from agentgen_jax import config as config_lib
from agentgen_jax.config import RunConfig
from agentgen_jax.evaluation import Evaluator, slug
from agentgen_jax.study import failures, metrics, report
from agentgen_jax.tasks import make_pool

BASE = "base"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run: `envs` (with weights) at `difficulty` (config.train_difficulty outside the difficulty
  protocol), starting from stage `parent`."""

  name: str
  parent: str
  envs: tuple[str, ...]
  trained_on: tuple[str, ...]        # every env trained on along the path from the base
  difficulty: str = "all"
  weights: tuple[float, ...] = ()
  iterations: int = 0


def plan(cfg: RunConfig) -> tuple[list[Stage], list[str], list[str]]:
  """(stages in run order, envs to evaluate, eval difficulties) of the configured protocol."""
  s = cfg.study
  envs = list(s.envs)
  iters = int(cfg.iterations)
  stages: dict[str, Stage] = {}

  def add(stage: Stage) -> Stage:
    stages.setdefault(stage.name, stage)
    return stages[stage.name]

  diff = cfg.train_difficulty  # the difficulty protocol sets its own per stage

  def single(env: str) -> Stage:
    return add(Stage(f"after:{env}", BASE, (env,), (env,), diff, iterations=iters))

  if s.protocol == "difficulty":
    env = s.difficulty_env
    easy = add(Stage("easy", BASE, (env,), (env,), "easy", iterations=iters))
    add(Stage("hard", BASE, (env,), (env,), "hard", iterations=iters))
    add(Stage("mixed", BASE, (env,), (env,), "all", iterations=iters))
    add(Stage("easy>hard", easy.name, (env,), (env,), "hard", iterations=iters))
    return list(stages.values()), [env], ["easy", "hard"]
  if s.protocol == "cross_env":
    for env in envs:
      single(env)
  if s.protocol == "sequential":
    orders = [list(o) for o in s.orders] or [envs]
    for order in orders:
      parent = BASE
      for i, env in enumerate(order):
        prefix = order[:i + 1]
        stage = add(Stage("after:" + ">".join(prefix), parent, (env,), tuple(prefix), diff, iterations=iters))
        parent = stage.name
    if s.single_env_baselines:  # every env of an order alone: the cross-env matrix and downstream gains
      for env in dict.fromkeys(e for o in orders if len(o) > 1 for e in o):
        single(env)
  if s.protocol == "mixture" or (s.protocol == "sequential" and s.mixture_baseline):
    orders = [list(o) for o in s.orders] or [envs]
    mix_envs = tuple(dict.fromkeys(e for o in orders for e in o)) if s.protocol == "sequential" \
        else tuple(envs)
    budget = iters * (len(mix_envs) if s.protocol == "sequential" else 1)
    add(Stage("mixture", BASE, mix_envs, mix_envs, diff, weights=tuple(s.weights), iterations=budget))
  return list(stages.values()), envs, list(s.eval_difficulties)


def stage_config(cfg: RunConfig, stage: Stage) -> RunConfig:
  """The RunConfig of one stage: its envs, weights, difficulty and budget, no SFT of its own (the warm
  start happens once, in the base stage), and a seed of its own."""
  return dataclasses.replace(cfg, envs=tuple(stage.envs), env_weights=tuple(stage.weights),
                             train_difficulty=stage.difficulty, iterations=stage.iterations,
                             sft=dataclasses.replace(cfg.sft, tasks=0),
                             seed=cfg.seed + zlib.crc32(stage.name.encode()) % 100_000)


def warm_start_config(cfg: RunConfig, env_names: Sequence[str]) -> RunConfig:
  """The RunConfig of the base stage's SFT warm start on every env of the study (no RL)."""
  demos = cfg.study.warm_start_tasks_per_env * len(env_names)
  return dataclasses.replace(cfg, envs=tuple(env_names), env_weights=(), iterations=0,
                             sft=dataclasses.replace(cfg.sft, tasks=demos))


def warm_start_params(cfg: RunConfig, like):
  """The params of the SFT checkpoint at cfg.study.warm_start_from ("{seed}" -> cfg.seed), restored into
  `like`; a one-line error when it is missing or was trained from another model."""
  path = cfg.study.warm_start_from.replace("{seed}", str(cfg.seed))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"study.warm_start_from={path}: no such directory (a train run's workdir/sft)")
  ckpt = checkpoint.Checkpointer(path, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"study.warm_start_from={path}: no checkpoint there (a run's workdir/sft)")
    base_model = ckpt.restore_meta().get("base_model")
    if base_model not in (None, cfg.model):
      raise ValueError(f"study.warm_start_from={path}: trained from model {base_model!r}, this study "
                       f"uses {cfg.model!r}")
    return rl_loop.restore_trained(ckpt, like)
  finally:
    ckpt.close()


class Study:
  """Runs the stages of one protocol in one workdir."""

  def __init__(self, cfg: RunConfig, workdir: str):
    self.cfg = cfg
    self.workdir = workdir
    self.stages, self.envs, self.difficulties = plan(cfg)
    self.by_name = {s.name: s for s in self.stages}

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, "stages", slug(name))

  def finished(self, name: str) -> bool:
    # Process 0's view on every process: all skip a stage or none does (distributed.agreed).
    return distributed.agreed(os.path.exists(os.path.join(self.stage_dir(name), "final.json")))

  def final(self, name: str) -> dict:
    """The final.json of a finished stage."""
    with open(os.path.join(self.stage_dir(name), "final.json"), encoding="utf-8") as f:
      return json.load(f)

  def _save_params(self, name: str, params) -> None:
    ckpt = checkpoint.Checkpointer(os.path.join(self.stage_dir(name), "final_params"), max_to_keep=1)
    ckpt.save(0, params, {"stage": name})
    ckpt.close()

  def _load_params(self, name: str, like):
    ckpt = checkpoint.Checkpointer(os.path.join(self.stage_dir(name), "final_params"), max_to_keep=1)
    params, _ = ckpt.restore(like)
    ckpt.close()
    return params

  def _evaluator(self, agent, pool, stage: str) -> Evaluator:
    return Evaluator.from_config(self.cfg, agent, pool, difficulties=self.difficulties,
                                 trajectory_dir=os.path.join(self.stage_dir(stage), "trajectories"))

  def _finish(self, name: str, start_params, params, evaluation, curves: list[dict]) -> None:
    """Writes the stage's final params and final.json: evals, curves, failure table and lineage (the digest
    of the params the stage started from, and of its parent's final params)."""
    self._save_params(name, params)
    stage = self.by_name.get(name)
    parent = stage.parent if stage else None
    report.write_json({"stage": name, "evals": evaluation.summaries, "curves": curves,
                       "failures": failures.failure_table(evaluation.records),
                       "parent": parent,
                       "parent_params_digest": self.final(parent)["params_digest"] if parent else None,
                       "start_params_digest": checkpoint.params_digest(start_params),
                       "params_digest": checkpoint.params_digest(params)},
                      os.path.join(self.stage_dir(name), "final.json"))

  def run(self, only: Sequence[str] = ()) -> dict:
    """Runs the base stage (warm start + evaluation) and every unfinished stage (or just `only`)."""
    cfg = self.cfg
    unknown = [n for n in only if n not in self.by_name and n != BASE]
    if unknown:
      raise ValueError(f"unknown stages {unknown}; this study has: {', '.join([BASE] + list(self.by_name))}")
    agent = agent_lib.from_config(cfg, agent_lib.run_mesh(cfg))
    all_envs = sorted(set(self.envs) | {e for s in self.stages for e in s.envs})
    logger = logs.Logger(self.workdir)
    with make_pool(cfg, all_envs) as pool:
      if not self.finished(BASE):
        params = agent.params
        if cfg.study.warm_start_from:
          params = warm_start_params(cfg, params)
        elif cfg.study.warm_start_tasks_per_env > 0:
          out = logs.StageOutput(self.stage_dir(BASE), logger, BASE)
          params, _ = rl_loop.train_stage(warm_start_config(cfg, all_envs), agent, params, pool, out)
        self._finish(BASE, agent.params, params, self._evaluator(agent, pool, BASE).run(params, BASE, []), [])
      todo = [s for s in self.stages if not only or s.name in only]
      offset = 0
      for stage in todo:
        if self.finished(stage.name):
          offset += stage.iterations
          continue
        if not self.finished(stage.parent):
          raise RuntimeError(f"stage {stage.name!r} needs stage {stage.parent!r}, which is not finished "
                             "(run it first, or run the study without --only)")
        start = self._load_params(stage.parent, agent.params)
        out = logs.StageOutput(self.stage_dir(stage.name), logger, stage.name, offset)
        params, curves = rl_loop.train_stage(stage_config(cfg, stage), agent, start, pool, out)
        offset += stage.iterations
        evaluation = self._evaluator(agent, pool, stage.name).run(params, stage.name, stage.trained_on)
        self._finish(stage.name, start, params, evaluation, curves)
    logger.close()
    return self.merge()

  def merge(self) -> dict:
    """Collects the finished stages into results.json, report.md and the plots."""
    missing = [n for n in [BASE] + list(self.by_name) if not self.finished(n)]
    if missing:
      print(f"note: stages not finished yet (left out of the report): {', '.join(missing)}")
    finals = {name: self.final(name) for name in [BASE] + list(self.by_name) if self.finished(name)}
    evals = [e for f in finals.values() for e in f["evals"]]
    curves = [p for f in finals.values() for p in f["curves"]]
    results = {"protocol": self.cfg.study.protocol, "model": self.cfg.model,
               "config": config_lib.to_dict(self.cfg), "evals": evals, "curves": curves,
               "metrics": self.compute_metrics(evals),
               "stages": {n: {"parent": s.parent, "trained_on": list(s.trained_on), "envs": list(s.envs),
                              "difficulty": s.difficulty, "iterations": s.iterations,
                              "finished": n in finals} for n, s in self.by_name.items()}}
    last = list(finals)[-1] if finals else None
    if last:
      results["failures"] = finals[last].get("failures", {})
      results["final_params_digest"] = finals[last]["params_digest"]
    report.write_report(results, self.workdir)
    return results

  def compute_metrics(self, evals: list[dict]) -> dict[str, Any]:
    """Protocol metrics, recomputable from `evals` alone (see metrics.DEFINITIONS)."""
    s = self.cfg.study
    all_diff = report.one_difficulty(evals)
    out: dict[str, Any] = {"transfer": metrics.transfer(all_diff)}
    if s.protocol == "difficulty":
      table = {}
      for e in evals:
        table.setdefault(e["stage"], {})[e["difficulty"]] = e["avg_score"]
      out["difficulty"] = table
    if s.protocol == "sequential":
      final = {(e["stage"], e["env"]): e["avg_score"] for e in all_diff}
      sequences = metrics.sequences(all_diff, [list(o) for o in s.orders] or [self.envs])
      gains = {}
      for seq in sequences:
        order, stages = seq["order"], seq["stages"]
        alone = final.get((f"after:{order[-1]}", order[-1]))
        if len(order) > 1 and alone is not None:
          gains[">".join(order)] = {"env": order[-1],
                                    "gain": metrics.downstream_gain(final[(stages[-1], order[-1])], alone)}
        if ("mixture", order[0]) in final:
          out["mixture_vs_sequential"] = {
              env: {"sequential": final[(stages[-1], env)], "mixture": final[("mixture", env)],
                    "diff": final[(stages[-1], env)] - final[("mixture", env)]} for env in self.envs}
      out["sequences"] = sequences
      out["downstream_gain"] = gains
      if sequences:
        out["bwt"] = sequences[0]["bwt"]
        out["fwt"] = sequences[0]["fwt"]
        out["forgetting"] = sequences[0]["forgetting"]
    return out


def run_study(cfg: RunConfig, workdir: str, only: Sequence[str] = (), merge_only: bool = False) -> dict:
  """Runs (or, with merge_only, only reports) the protocol of a resolved config in `workdir`."""
  study = Study(cfg, workdir)
  return study.merge() if merge_only else study.run(only)
