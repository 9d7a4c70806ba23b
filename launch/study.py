"""Runs a generalisation study (difficulty, cross_env, sequential or mixture) as one resumable command:
every stage trains, then evaluates every env; results.json, report.md and plots land in --workdir.

  python -m launch.study --config=launch/configs/study_cross_env_small.py --workdir=runs/cross_env
  python -m launch.study --config=... --workdir=... --only=after:webshop   # one stage (a batch-array job)
  python -m launch.study --config=... --workdir=... --merge                # report from finished stages
  python -m launch.study --config=... --workdir=... --config.seeds=3       # seed_<s>/ each, one report

With seeds > 1 every seed runs in workdir/seed_<s>/ (--only and --merge apply to each) and workdir gets the
merged results.json and report.md: mean and 95% bootstrap interval over seeds and tasks for every metric.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from launch import cli, validate

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
  from agentgen_jax import distributed
  from agentgen_jax.study import findings, protocols, seeds
  cfg = cli.resolve(_CONFIG.value)
  cli.initialize_distributed()
  cli.run_mesh(cfg)  # a bad --config.mesh or batch ends here, before the study writes anything
  validate.or_exit(validate.train, cfg, _WORKDIR.value)  # before anything is written
  study = protocols.Study(cfg, _WORKDIR.value)
  if _LIST.value:
    for stage in study.stages:
      print(f"{stage.name}\tparent={stage.parent}\tenvs={','.join(stage.envs)}\t"
            f"difficulty={stage.difficulty}\titerations={stage.iterations}")
    return
  def run_one(seed_cfg, workdir):
    one = protocols.Study(seed_cfg, workdir)
    return one.merge() if _MERGE.value else one.run(_ONLY.value)

  # On several processes, any failure ends this one in one line, and the others with it (distributed.job).
  with distributed.job("study"):
    try:  # --config.seeds=N: the study once per seed in workdir/seed_<s>/, merged with intervals
      with cli.stop_in_one_line("study"):
        results = seeds.run_seeds(cfg, _WORKDIR.value, run_one)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  if not distributed.is_primary():
    return
  for row in findings.verdicts(results):  # the paper-findings table, one line each
    if row.get("metric") and "mean" in row:
      print(f"{row['verdict']:>13}  {row['claim']}: {row['metric']} = {row['mean']:+.3f} "
            f"[{row['lo']:+.3f}, {row['hi']:+.3f}]")
    else:
      print(f"{row['verdict']:>13}  {row['claim']}" + (f": {row['ours']}" if row.get("ours") else ""))
  print(f"wrote {_WORKDIR.value}/report.md")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
