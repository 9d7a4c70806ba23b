"""Checks of what a launch command is given (model, checkpoint, data folders, workdir), made before it
writes anything: a bad value ends the command in one line naming the value, what is wrong with it and what
is accepted, instead of a traceback after a half-made workdir."""

from __future__ import annotations

import glob
import os
import sys
from typing import Any, Callable

from agentgen_jax.models import config as model_config
from agentgen_jax.models.load import EMBEDDED, embedded_path


class InputError(Exception):
  """A launch input that cannot work; the message is the one line to show."""


def _model_accepted() -> str:
  return (f"accepted: a preset ({', '.join(model_config.preset_names())}), the embedded name "
          f"{' or '.join(EMBEDDED)}, an HF folder with config.json + *.safetensors, or a .gguf file")


def model(value: str, flag: str = "--config.model") -> None:
  """A value models.load accepts, checked without loading it."""
  head = f"{flag}={value}"
  if value in model_config.preset_names():
    return
  if value in EMBEDDED:
    try:
      embedded_path(value)
    except FileNotFoundError as e:
      raise InputError(f"{head}: {e}") from None
    return
  path = os.path.expanduser(value)
  if not os.path.exists(path):
    presets = ", ".join(model_config.preset_names())
    raise InputError(f"{head}: no such file or folder, and not a preset ({presets}) or an embedded name; "
                     f"{_model_accepted()}")
  if os.path.isdir(path):
    missing = [what for what, pattern in (("config.json", "config.json"), ("*.safetensors", "*.safetensors"))
               if not glob.glob(os.path.join(path, pattern))]
    if missing:
      raise InputError(f"{head}: the folder has no {' and no '.join(missing)}; {_model_accepted()}")
    return
  if not path.endswith(".gguf"):
    raise InputError(f"{head}: a file that is not a .gguf; {_model_accepted()}")
  with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
      raise InputError(f"{head}: not a GGUF file (its first bytes are not 'GGUF'); {_model_accepted()}")


def is_training_workdir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def checkpoint(value: str, flag: str = "--checkpoint") -> None:
  """A training workdir with a checkpoint, or anything `model` accepts."""
  if is_training_workdir(value):
    if not any(_has_step(os.path.join(value, sub)) for sub in ("checkpoints", "sft")):
      raise InputError(f"{flag}={value}: a training workdir without a checkpoint (no step in checkpoints/ or "
                       "sft/): train it first, or name a model")
    return
  try:
    model(value, flag)
  except InputError as e:
    raise InputError(f"{e} (or a training workdir: a folder with config.json and checkpoints/)") from None


def _has_step(folder: str) -> bool:
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


# What a data_dir must hold, per env: (file patterns, how to say it).
_DATA_FILES = {
    "webshop": (("items_shuffle*.json", "items_ins_v2*.json"),
                "WebShop's items_shuffle*.json and items_ins_v2*.json"),
    "searchqa": (("corpus.jsonl",), "corpus.jsonl and train/test/dev.jsonl"),
}
_DATA_ENV_VARS = {"webshop": "WEBSHOP_DATA", "searchqa": "SEARCHQA_DATA"}


def data_folders(env_kwargs: dict[str, dict[str, Any]], env_names: list[str]) -> None:
  """Every data_dir (config.env_kwargs.<env>.data_dir, else the env's variable) exists and holds its files;
  every *cache_dir is a folder or can be made."""
  for env in env_names:
    kwargs = dict(env_kwargs.get(env, {}))
    given = kwargs.get("data_dir")
    flag = f"--config.env_kwargs.{env}.data_dir"
    if not given and os.environ.get(_DATA_ENV_VARS.get(env, "")):
      given, flag = os.environ[_DATA_ENV_VARS[env]], f"${_DATA_ENV_VARS[env]}"
    if given:
      _data_dir(env, os.path.expanduser(str(given)), flag)
    for key, value in kwargs.items():
      if key.endswith("cache_dir") and value:
        _writable_folder(os.path.expanduser(str(value)), f"--config.env_kwargs.{env}.{key}")


def _data_dir(env: str, path: str, flag: str) -> None:
  patterns, holds = _DATA_FILES.get(env, ((), "the env's data files"))
  accepted = f"accepted: a folder with {holds} (or no data_dir: the env generates its own data)"
  if not os.path.isdir(path):
    raise InputError(f"{flag}={path}: {'not a folder' if os.path.exists(path) else 'no such folder'}; "
                     f"{accepted}")
  missing = [p for p in patterns if not glob.glob(os.path.join(path, p))]
  if missing:
    raise InputError(f"{flag}={path}: the folder has no {', '.join(missing)}; {accepted}")


def _writable_folder(path: str, flag: str) -> None:
  """path is a writable folder, or does not exist and its nearest existing parent is a writable folder."""
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise InputError(f"{flag}={path}: a file, not a folder; accepted: a folder (made if missing)")
    if not os.access(path, os.W_OK | os.X_OK):
      raise InputError(f"{flag}={path}: the folder is not writable; accepted: a writable folder")
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise InputError(f"{flag}={path}: cannot be made ({parent} is not a writable folder); accepted: a "
                     "folder (made if missing) under a writable one")


def workdir(path: str, flag: str = "--workdir") -> None:
  if not path:
    raise InputError(f"{flag} is empty; accepted: a folder (made if missing)")
  _writable_folder(os.path.expanduser(path), flag)


def train(config, workdir_path: str) -> None:
  """launch.train / launch.study: the model (and tokenizer), the envs' data folders and the workdir.

  `config` is the command's ConfigDict or a resolved run config: only attributes are read."""
  model(config.model)
  if getattr(config, "tokenizer", ""):
    _tokenizer(config.tokenizer)
  study = getattr(config, "study", None)
  names = list(config.envs) + list(config.eval.envs) + list(getattr(study, "envs", None) or ())
  kwargs = config.env_kwargs
  data_folders(kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs), names)
  workdir(workdir_path)


def _tokenizer(value: str) -> None:
  try:
    model(value, "--config.tokenizer")
  except InputError:  # a tokenizer folder need not hold weights: config.json or tokenizer.json suffices
    path = os.path.expanduser(value)
    if not (os.path.isdir(path) and any(os.path.exists(os.path.join(path, f))
                                        for f in ("tokenizer.json", "tokenizer_config.json"))):
      raise


def evaluate(checkpoint_value: str, workdir_path: str) -> None:
  """launch.evaluate: the checkpoint and the output workdir."""
  checkpoint(checkpoint_value)
  workdir(workdir_path)


def or_exit(check: Callable[..., None], *args) -> None:
  """Runs a check; a failure ends the command with its one line on stderr (exit status 1)."""
  try:
    check(*args)
  except InputError as e:
    sys.exit(f"FATAL: {e}")
