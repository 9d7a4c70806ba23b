"""avg@k evaluation as an object built from config: `Evaluator.run(params, stage, trained_on)` plays the
first `tasks` tasks of each env k times and returns the summaries and the episode records, for the train
loop, launch.evaluate and the study alike."""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Sequence

import jax

from agentgen_jax import config as config_lib
from agentgen_jax import data, rollout
from agentgen_jax.study import metrics


@dataclasses.dataclass
class Evaluation:
  """What one evaluation found: one summary dict per (env, difficulty) and every episode's record."""

  summaries: list[dict]
  records: list[dict]

  def __add__(self, other: "Evaluation") -> "Evaluation":
    return Evaluation(self.summaries + other.summaries, self.records + other.records)


def slug(text: str) -> str:
  """text as a file name: letters, digits, '-' and '_' kept, anything else '_'."""
  return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


@dataclasses.dataclass
class Evaluator:
  """Evaluates params on `envs` x `difficulties` of `split`: the first `n_tasks` tasks, `k` episodes each.

  The sampling randomness of an evaluation depends only on (seed, env, difficulty), not on the stage: every
  stage's evaluation of an (env, difficulty) draws the same random numbers for the same (task, episode, turn)
  (common random numbers), so the difference between two stages is paired and its noise is that of the
  episodes whose play the policy change altered, not of two independent draws. The same params give the
  same numbers under any stage name. With `trajectory_dir`, each
  (stage, env, difficulty) evaluation is also written there as a TFDS dataset.
  """

  agent: object                    # agentgen_jax.agent.Agent
  pool: object                     # envs.EnvPool
  envs: Sequence[str]
  rollout_cfg: rollout.RolloutConfig
  split: str = "test"
  difficulties: Sequence[str] = ("all",)
  n_tasks: int = 10
  k: int = 1
  seed: int = 0
  trajectory_dir: str | None = None

  def __post_init__(self):
    self.roller = rollout.Roller(self.agent.cfg, self.agent.tokenizer, self.pool, self.rollout_cfg,
                                 mesh=getattr(self.agent, "mesh", None))

  @classmethod
  def from_config(cls, cfg: config_lib.RunConfig, agent, pool, difficulties: Sequence[str] | None = None,
                  trajectory_dir: str | None = None) -> "Evaluator":
    """The evaluator of a RunConfig's `eval` section (envs default to the training envs)."""
    e = cfg.eval
    return cls(agent, pool, list(e.envs) or list(cfg.envs), config_lib.eval_rollout_config(cfg),
               split=e.split, difficulties=tuple(difficulties or (e.difficulty,)), n_tasks=e.tasks, k=e.k,
               seed=cfg.seed, trajectory_dir=trajectory_dir)

  def run(self, params, stage: str, trained_on: Sequence[str] = ()) -> Evaluation:
    """One summary per (difficulty, env) in that order, plus the episode records (tagged eval:<stage>)."""
    out = Evaluation([], [])
    for difficulty in self.difficulties:
      for name in self.envs:
        out = out + self._run_one(params, stage, trained_on, name, difficulty)
    return out

  def _run_one(self, params, stage, trained_on, name: str, difficulty: str) -> Evaluation:
    tasks = self.pool.tasks(name, self.split, difficulty)[:self.n_tasks]
    if not tasks:
      raise ValueError(f"env {name!r} has no tasks for split={self.split!r} difficulty={difficulty!r}")
    draws = [(name, t) for t in tasks for _ in range(self.k)]
    key = zlib.crc32(f"{name}/{difficulty}".encode()) & 0x7FFFFFFF
    rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), key)
    records = [ep.record(f"eval:{stage}") for ep in self.roller.run(params, draws, rng)]
    if self.trajectory_dir:
      folder = f"eval_{slug(stage)}_{name}_{difficulty}"
      data.write_episodes(records, os.path.join(self.trajectory_dir, folder))
    summary = {"stage": stage, "trained_on": list(trained_on), "env": name, "split": self.split,
               "difficulty": difficulty, **metrics.summarize_episodes(records, self.k)}
    return Evaluation([summary], records)
