"""Runs a generalisation study (difficulty, cross_env, sequential or mixture) as one resumable command:
every stage trains, then evaluates every env; results.json, report.md and plots land in --workdir.

  python -m launch.study --config=launch/configs/study_cross_env_small.py --workdir=runs/cross_env
  python -m launch.study --config=... --workdir=... --only=after:webshop   # one stage (a batch-array job)
  python -m launch.study --config=... --workdir=... --merge                # report from finished stages
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "a launch/configs/*.py study config",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the study folder (shared by all its jobs)")
_ONLY = flags.DEFINE_list("only", [], "run only these stages (plus the base stage if missing)")
_MERGE = flags.DEFINE_bool("merge", False, "only collect finished stages into the report")
_LIST = flags.DEFINE_bool("list_stages", False, "print the stages of the study and exit")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from agentgen_jax import parallel
  from agentgen_jax.study import protocols
  cfg = cli.resolve(_CONFIG.value)
  parallel.initialize_distributed()
  cli.run_mesh(cfg)  # a bad --config.mesh or batch ends here, before the study writes anything
  study = protocols.Study(cfg, _WORKDIR.value)
  if _LIST.value:
    for stage in study.stages:
      print(f"{stage.name}\tparent={stage.parent}\tenvs={','.join(stage.envs)}\t"
            f"difficulty={stage.difficulty}\titerations={stage.iterations}")
    return
  try:
    results = study.merge() if _MERGE.value else study.run(_ONLY.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  except FloatingPointError as e:  # diverged: the message names the metric and the last good checkpoint
    sys.exit(f"study stopped: {e}")
  print(json.dumps({k: results["metrics"].get(k) for k in ("bwt", "fwt", "forgetting")
                    if k in results["metrics"]}, indent=1))
  print(f"wrote {_WORKDIR.value}/report.md")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
