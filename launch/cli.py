"""What the launch/*.py commands share: flag parsing that ends a bad command in one line naming the bad
value and the valid choices, never in a traceback (config values are checked by
agentgen_jax.config.resolve).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import ConfigDict


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (use as app.run's flags_parser), each error reported as one line.

  Library INFO logging (orbax logs every checkpoint save) is off unless --verbosity/-v is given: progress
  goes to the progress bars, log.jsonl and TensorBoard.
  """
  try:
    rest = flags.FLAGS(argv)
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    return rest
  except flags.Error as e:
    message = " ".join(str(e).split())
  except (AttributeError, KeyError):  # ml_collections rejecting an unknown --config.<field>
    message = _unknown_config_field(argv)
    if message is None:  # something else: its traceback is the useful message
      raise
  sys.exit(f"FATAL Flags parsing error: {message}")


def _unknown_config_field(argv: list[str]) -> str | None:
  """Which --config.<path> override names no field of the config file, and the fields it could name."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  if path is None:
    return None
  file, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_launch_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for a in argv:
    if not a.startswith("--config."):
      continue
    keys = a[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(keys):
      if not isinstance(node, (ConfigDict, dict)) or key not in node:
        field, parent = ".".join(keys[:depth + 1]), ".".join(["config"] + keys[:depth])
        valid = ", ".join(sorted(node.keys())) if isinstance(node, (ConfigDict, dict)) else "none"
        return f"unknown config field {field!r}; valid fields of {parent}: {valid}"
      node = node[key]
  return None


def initialize_distributed():
  """distributed.initialize() (jax.distributed on several hosts, a no-op on one), a bad JAX_* variable or a
  job the peers never join ending the command in one line."""
  from agentgen_jax import distributed
  try:
    return distributed.initialize()
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def run_mesh(cfg):
  """The resolved config's device mesh (agent.run_mesh: None on one device), a bad mesh string or a batch
  that does not split over it ending the command in one line. Call after jax.distributed has started."""
  from agentgen_jax import agent as agent_lib
  try:
    return agent_lib.run_mesh(cfg)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def resolve(config: ConfigDict):
  """agentgen_jax.config.resolve(config), a bad value ending the command in one line (a usage error)."""
  from agentgen_jax import config as config_lib
  try:
    return config_lib.resolve(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


@contextlib.contextmanager
def stop_in_one_line(what: str):
  """Ends the command in one line when a run diverges (the message names the metric and the last good
  checkpoint) or every checkpoint of a stage is damaged (the message names each)."""
  from agentgen_jax import checkpoint
  try:
    yield
  except (FloatingPointError, checkpoint.CheckpointError) as e:
    sys.exit(f"{what} stopped: {e}")
