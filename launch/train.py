"""Trains an agent: evaluate the base model, SFT warm start and/or RL (GRPO/PPO), evaluate again, and
write results.json, report.md, checkpoints, trajectories and TensorBoard logs into --workdir.

  python -m launch.train --config=launch/configs/quickstart.py --workdir=runs/quickstart
  python -m launch.train --config=launch/configs/quickstart.py --config.iterations=40 --workdir=...
  python -m launch.train --config=launch/configs/quickstart.py --config.seeds=3 --workdir=...  # seed_<s>/

Several hosts (one process each, the same command and shared --workdir on every one): set
JAX_COORDINATOR_ADDRESS=<process 0's host:port>, JAX_NUM_PROCESSES and JAX_PROCESS_ID (a TPU pod slice or
Slurm needs none of them); see the README's "Multi-host" section.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from launch import cli, validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "a launch/configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where results, checkpoints and logs go")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "resolve the config, print it as JSON and exit")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from agentgen_jax import config as config_lib
  from agentgen_jax import distributed, job
  from agentgen_jax.study import seeds
  cfg = cli.resolve(_CONFIG.value)
  if _PRINT_CONFIG.value:
    print(json.dumps(config_lib.to_dict(cfg), indent=1, default=str))
    return
  cli.initialize_distributed()
  mesh = cli.run_mesh(cfg)
  # On several processes, any failure ends this one in one line, and the others with it (distributed.job).
  with distributed.job("training"):
    validate.or_exit(validate.train, cfg, _WORKDIR.value)  # before anything is written
    with cli.stop_in_one_line("training"):
      # --config.seeds=N: the job once per seed in workdir/seed_<s>/, merged with intervals
      results = seeds.run_seeds(cfg, _WORKDIR.value,
                                lambda seed_cfg, workdir: job.run(seed_cfg, workdir, mesh))
  if not distributed.is_primary():
    return
  summary = [{k: e[k] for k in ("seed", "stage", "env", "avg_success", "avg_score", "pass_at_k") if k in e}
             for e in results["evals"]]
  print(json.dumps(summary, indent=1))
  print(f"wrote {os.path.join(_WORKDIR.value, 'report.md')}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
