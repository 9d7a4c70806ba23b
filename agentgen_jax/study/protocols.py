"""The study's protocols as lists of resumable stages: difficulty transfer, the cross-environment transfer
matrix, sequential training (A→B→…) and joint mixture training, each evaluated on every env after every stage.

A stage trains from the params of its parent stage (the warm-started base for first stages) and is finished
when its `final.json` exists: rerunning a study skips finished stages and resumes a half-done one from its
last RL checkpoint. `run_study(config, workdir)` runs a whole protocol; `only` runs selected stages (one job
of a batch array) and `merge` only writes the report from the stages on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import zlib
from typing import Any, Sequence

import ml_collections

from agentgen_jax import checkpoint, data, trainer
from agentgen_jax.study import failures, metrics, report

PROTOCOLS = ("difficulty", "cross_env", "sequential", "mixture")
BASE = "base"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run: `envs` (with weights) at `difficulty`, starting from stage `parent`."""

  name: str
  parent: str
  envs: tuple[str, ...]
  trained_on: tuple[str, ...]        # every env trained on along the path from the base
  difficulty: str = "all"
  weights: tuple[float, ...] = ()
  iterations: int = 0


STUDY_DEFAULTS = dict(protocol="cross_env", envs=[], orders=[], weights=[], mixture_baseline=True,
                      single_env_baselines=True, difficulty_env="", eval_difficulties=["all"],
                      warm_start_tasks_per_env=0)


def study_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of c with c.study completed by STUDY_DEFAULTS (envs default to c.envs)."""
  c = copy.deepcopy(c)
  with c.unlocked():
    if "study" not in c:
      c.study = ml_collections.ConfigDict()
    for key, value in STUDY_DEFAULTS.items():
      if key not in c.study:
        c.study[key] = value
    if not c.study.envs:
      c.study.envs = list(c.envs)
    if not c.study.difficulty_env:
      c.study.difficulty_env = c.study.envs[0]
  if c.study.protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {c.study.protocol!r}; valid: {', '.join(PROTOCOLS)}")
  return c


def plan(c: ml_collections.ConfigDict) -> tuple[list[Stage], list[str], list[str]]:
  """(stages in run order, envs to evaluate, eval difficulties) of the configured protocol."""
  s = c.study
  envs = list(s.envs)
  iters = int(c.iterations)
  stages: dict[str, Stage] = {}

  def add(stage: Stage) -> Stage:
    stages.setdefault(stage.name, stage)
    return stages[stage.name]

  def single(env: str) -> Stage:
    return add(Stage(f"after:{env}", BASE, (env,), (env,), iterations=iters))

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
        stage = add(Stage("after:" + ">".join(prefix), parent, (env,), tuple(prefix), iterations=iters))
        parent = stage.name
    if s.single_env_baselines:
      for env in {o[-1] for o in orders if len(o) > 1}:
        single(env)
  if s.protocol == "mixture" or (s.protocol == "sequential" and s.mixture_baseline):
    orders = [list(o) for o in s.orders] or [envs]
    mix_envs = tuple(dict.fromkeys(e for o in orders for e in o)) if s.protocol == "sequential" \
        else tuple(envs)
    budget = iters * (len(mix_envs) if s.protocol == "sequential" else 1)
    add(Stage("mixture", BASE, mix_envs, mix_envs, weights=tuple(s.weights), iterations=budget))
  return list(stages.values()), envs, list(s.eval_difficulties)


def stage_config(c: ml_collections.ConfigDict, stage: Stage) -> ml_collections.ConfigDict:
  sc = copy.deepcopy(c)
  with sc.unlocked():
    sc.envs = tuple(stage.envs)
    sc.env_weights = tuple(stage.weights)
    sc.train_difficulty = stage.difficulty
    sc.iterations = stage.iterations
    sc.sft.tasks = 0  # the warm start happens once, before every stage
    sc.seed = c.seed + zlib.crc32(stage.name.encode()) % 100_000
  return sc


class Study:
  """Runs the stages of one protocol in one workdir."""

  def __init__(self, c: ml_collections.ConfigDict, workdir: str):
    self.c = study_config(c)
    self.workdir = workdir
    self.stages, self.envs, self.difficulties = plan(self.c)
    self.by_name = {s.name: s for s in self.stages}

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, "stages", trainer._slug(name))

  def finished(self, name: str) -> bool:
    return os.path.exists(os.path.join(self.stage_dir(name), "final.json"))

  def _save_params(self, name: str, params) -> None:
    ckpt = checkpoint.Checkpointer(os.path.join(self.stage_dir(name), "final_params"), max_to_keep=1)
    ckpt.save(0, params, {"stage": name})
    ckpt.close()

  def _load_params(self, name: str, like):
    ckpt = checkpoint.Checkpointer(os.path.join(self.stage_dir(name), "final_params"), max_to_keep=1)
    params, _ = ckpt.restore(like)
    ckpt.close()
    return params

  def _evaluate(self, policy, params, pool, stage: str, trained_on: Sequence[str]) -> list[dict]:
    c = self.c
    out = []
    for difficulty in self.difficulties:
      out += trainer.evaluate(policy, params, pool, self.envs, split=c.eval.split, difficulty=difficulty,
                              n_tasks=c.eval.tasks, k=c.eval.k, rcfg=trainer.eval_rollout_config(c),
                              seed=c.seed, stage=stage, trained_on=trained_on,
                              trajectory_dir=os.path.join(self.stage_dir(stage), "trajectories"))
    return out

  def _finish(self, name: str, params, evals: list[dict], curves: list[dict]) -> None:
    self._save_params(name, params)
    report.write_json({"stage": name, "evals": evals, "curves": curves,
                       "params_digest": checkpoint.params_digest(params)},
                      os.path.join(self.stage_dir(name), "final.json"))

  def run(self, only: Sequence[str] = ()) -> dict:
    """Runs the base stage (warm start + evaluation) and every unfinished stage (or just `only`)."""
    c = self.c
    unknown = [n for n in only if n not in self.by_name and n != BASE]
    if unknown:
      raise ValueError(f"unknown stages {unknown}; this study has: {', '.join([BASE] + list(self.by_name))}")
    policy = trainer.load_policy(c)
    all_envs = sorted(set(self.envs) | {e for s in self.stages for e in s.envs})
    logger = trainer.Logger(self.workdir)
    with trainer.make_pool(c, all_envs) as pool:
      if not self.finished(BASE):
        params = policy.params
        if c.study.warm_start_tasks_per_env > 0:
          wc = copy.deepcopy(c)
          with wc.unlocked():
            wc.envs, wc.iterations = tuple(all_envs), 0
            wc.sft.tasks = c.study.warm_start_tasks_per_env * len(all_envs)
          params, _ = trainer.train_stage(wc, policy, params, pool, self.stage_dir(BASE), logger, BASE)
        self._finish(BASE, params, self._evaluate(policy, params, pool, BASE, []), [])
      todo = [s for s in self.stages if not only or s.name in only]
      offset = 0
      for stage in todo:
        if self.finished(stage.name):
          offset += stage.iterations
          continue
        parent = stage.parent
        if not self.finished(parent):
          raise RuntimeError(f"stage {stage.name!r} needs stage {parent!r}, which is not finished "
                             "(run it first, or run the study without --only)")
        params = self._load_params(parent, policy.params)
        sc = stage_config(c, stage)
        params, curves = trainer.train_stage(sc, policy, params, pool, self.stage_dir(stage.name), logger,
                                             stage.name, global_offset=offset)
        offset += stage.iterations
        evals = self._evaluate(policy, params, pool, stage.name, stage.trained_on)
        self._finish(stage.name, params, evals, curves)
    logger.close()
    return self.merge()

  def merge(self) -> dict:
    """Collects the finished stages into results.json, report.md and the plots."""
    missing = [n for n in [BASE] + list(self.by_name) if not self.finished(n)]
    if missing:
      print(f"note: stages not finished yet (left out of the report): {', '.join(missing)}")
    finals = {}
    for name in [BASE] + list(self.by_name):
      if self.finished(name):
        with open(os.path.join(self.stage_dir(name), "final.json"), encoding="utf-8") as f:
          finals[name] = json.load(f)
    evals = [e for f in finals.values() for e in f["evals"]]
    curves = [p for f in finals.values() for p in f["curves"]]
    results = {"protocol": self.c.study.protocol, "model": self.c.model, "config": self.c.to_dict(),
               "evals": evals, "curves": curves, "metrics": self.compute_metrics(evals),
               "stages": {n: {"parent": s.parent, "trained_on": list(s.trained_on), "envs": list(s.envs),
                              "difficulty": s.difficulty, "iterations": s.iterations,
                              "finished": n in finals} for n, s in self.by_name.items()}}
    last = list(finals)[-1] if finals else None
    if last:
      records = []
      traj = os.path.join(self.stage_dir(last), "trajectories")
      for root, _, files in os.walk(traj):
        records += [r for f in files if f == "train.jsonl" for r in data.read_jsonl(os.path.join(root, f))]
      results["failures"] = failures.failure_table(records)
      results["final_params_digest"] = finals[last]["params_digest"]
    report.write_report(results, self.workdir)
    return results

  def compute_metrics(self, evals: list[dict]) -> dict[str, Any]:
    """Protocol metrics, recomputable from `evals` alone (see metrics.DEFINITIONS)."""
    s = self.c.study
    all_diff = report.one_difficulty(evals)
    out: dict[str, Any] = {"transfer": metrics.transfer(all_diff)}
    if s.protocol == "difficulty":
      table = {}
      for e in evals:
        table.setdefault(e["stage"], {})[e["difficulty"]] = e["avg_score"]
      out["difficulty"] = table
    if s.protocol == "sequential":
      final = {(e["stage"], e["env"]): e["avg_score"] for e in all_diff}
      sequences, gains = [], {}
      for order in [list(o) for o in s.orders] or [self.envs]:
        stages = [BASE] + ["after:" + ">".join(order[:i + 1]) for i in range(len(order))]
        if not all((st, order[0]) in final for st in stages):
          continue
        r = metrics.r_matrix(all_diff, stages, self.envs)
        seq = metrics.sequence_metrics(r, order, self.envs)
        sequences.append(dict(seq, order=order, envs=self.envs, stages=stages, r=r))
        last_env = order[-1]
        alone = final.get((f"after:{last_env}", last_env))
        if len(order) > 1 and alone is not None:
          gains[">".join(order)] = {"env": last_env,
                                    "gain": metrics.downstream_gain(final[(stages[-1], last_env)], alone)}
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


def run_study(c: ml_collections.ConfigDict, workdir: str, only: Sequence[str] = (),
              merge_only: bool = False) -> dict:
  study = Study(c, workdir)
  return study.merge() if merge_only else study.run(only)
