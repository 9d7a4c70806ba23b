"""Env names -> classes, imported lazily so that a missing optional package only breaks its own env."""

from __future__ import annotations

import importlib

from envs.base import TextEnv

_REGISTRY: dict[str, str] = {
    "babyai": "envs.babyai:BabyAIEnv",
    "textcraft": "envs.textcraft:TextCraftEnv",
    "alfworld": "envs.alfworld:ALFWorldEnv",
    "webshop": "envs.webshop:WebShopEnv",
    "searchqa": "envs.searchqa:SearchQAEnv",
    "sciworld": "envs.sciworld:ScienceWorldEnv",
    "twx": "envs.twx:TextWorldExpressEnv",
}


def names() -> list[str]:
  """The registered env names."""
  return sorted(_REGISTRY)


def env_class(name: str) -> type[TextEnv]:
  if name not in _REGISTRY:
    raise ValueError(f"unknown env {name!r}; known envs: {', '.join(names())}")
  module_name, class_name = _REGISTRY[name].split(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ImportError(f"env {name!r} needs a package that is not installed ({e}); "
                      "install the extras: pip install -e '.[envs]'") from e
  return getattr(module, class_name)


def make(name: str, **kwargs) -> TextEnv:
  """Creates the env called `name` (see `names()`); kwargs go to its constructor."""
  return env_class(name)(**kwargs)


def register(name: str, target: str) -> None:
  """Adds an env: `target` is "module:Class" (imported on first use)."""
  _REGISTRY[name] = target
