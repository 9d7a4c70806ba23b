"""Where training tasks come from: the EnvPool of a run's envs and a deterministic, resumable stream of
(env, task) draws over them."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def make_pool(cfg, env_names: Sequence[str]):
  """An envs.EnvPool over `env_names` with the RunConfig's pool size, workers, timeout, kwargs and seed."""
  import envs
  kwargs = {name: dict(cfg.env_kwargs.get(name, {})) for name in env_names}
  return envs.EnvPool(list(env_names), size=cfg.pool_size, workers=cfg.workers, timeout_s=cfg.env_timeout_s,
                      env_kwargs=kwargs, seed=cfg.seed)


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

  @classmethod
  def training(cls, cfg, pool, seed: int) -> "TaskStream":
    """The stream of a RunConfig's training tasks (envs, weights, train split and difficulty)."""
    return cls(pool, cfg.envs, cfg.env_weights, cfg.train_split, cfg.train_difficulty, seed)

  def next(self, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
      rng = np.random.default_rng([self.seed, self.position])
      name = self.names[int(rng.choice(len(self.names), p=self.weights))]
      out.append((name, self.tasks[name][int(rng.integers(len(self.tasks[name])))]))
      self.position += 1
    return out
