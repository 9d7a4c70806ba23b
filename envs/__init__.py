"""Python-side text environments for agent RL: `envs.make(name)`, `envs.names()`, `envs.EnvPool`."""

from envs.base import Observation, Step, TextEnv, parse_react
from envs.registry import env_class, make, names, register


def __getattr__(name):
  # EnvPool pulls in multiprocessing machinery; import it only when asked for.
  if name == "EnvPool":
    from envs.pool import EnvPool
    return EnvPool
  raise AttributeError(name)


__all__ = ["EnvPool", "Observation", "Step", "TextEnv", "env_class", "make", "names", "parse_react",
           "register"]
