"""Benchmarks: sampler and train-step speed against PyTorch transformers, env throughput, and one
end-to-end training iteration. Writes docs/BENCHMARKS.md and docs/benchmarks.json with the machine.

  python -m launch.benchmark --suites=model,envs,e2e,cache
  python -m launch.benchmark --suites=e2e --baseline=a2df838   # this tree against a commit, side by side
  python -m launch.benchmark --suites=choose --baseline=2caea5e   # choose vs generate learning, both trees
  python -m launch.benchmark --suites=gpu      # on a GPU machine: decode vs the HBM floor, bf16 train MFU
  python -m launch.benchmark --suites=tunix    # our sampler vs Tunix 0.1.7's (opt-in: needs google-tunix)

Rows of suites not run are kept from earlier runs, with the machine each was measured on: a GPU machine's
rows and this CPU's share one BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os

from absl import app, flags

from launch import validate
from launch.benchmarks.report import machine, render

SUITES = ("model", "envs", "e2e", "cache", "choose", "gpu", "tunix")
# Run only when named: tunix needs Tunix 0.1.7, which launch/install.sh installs best effort only.
OPT_IN = ("tunix",)
_SUITES = flags.DEFINE_list("suites", [s for s in SUITES if s not in OPT_IN],
                            f"which benchmarks to run, of {SUITES} (default: all but {', '.join(OPT_IN)})")
_OUT = flags.DEFINE_string("out", "docs", "folder for BENCHMARKS.md and benchmarks.json")
_QUICK = flags.DEFINE_bool("quick", False, "smaller sizes (a smoke run, not for reporting)")
_BASELINE = flags.DEFINE_string(
    "baseline", "", "a git commit: the e2e and choose suites then also run the code of that commit (in a "
    "temporary git worktree) alternating with this tree's, and report both and their ratio")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "with --baseline: fresh processes per tree (e2e) or warm learn steps per mode (choose); "
    "medians reported")


def main(argv):
  del argv
  unknown = [s for s in _SUITES.value if s not in SUITES]
  if unknown:
    raise app.UsageError(f"unknown suites {unknown}; valid: {', '.join(SUITES)}")
  validate.or_exit(validate.workdir, _OUT.value, "--out")  # before minutes of benchmarks, not after
  if "tunix" in _SUITES.value:
    importlib.import_module("launch.benchmarks.tunix").require_tunix()   # likewise: exits naming the install
  info = machine()
  info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  rows = []
  for suite in _SUITES.value:
    module = importlib.import_module(f"launch.benchmarks.{suite}")
    if suite in ("e2e", "choose") and _BASELINE.value:
      rows += module.compare(_BASELINE.value, quick=_QUICK.value, repeats=_REPEATS.value)
    else:
      rows += module.run(quick=_QUICK.value)
  os.makedirs(_OUT.value, exist_ok=True)
  json_path = os.path.join(_OUT.value, "benchmarks.json")
  previous = {}
  if os.path.exists(json_path):
    with open(json_path) as f:
      previous = json.load(f)
  # Rows of suites not run this time (or from another machine, e.g. a GPU) are kept.
  key = lambda r: (r["group"], r["metric"], r.get("machine", ""))
  merged = {key(r): dict(r, date=r.get("date", previous["machine"].get("date", "")))
            for r in previous.get("rows", [])}
  for r in rows:
    r.setdefault("machine", info["backend"])
    r["date"] = info["date"]
    merged[key(r)] = r
  rows = list(merged.values())
  machines = previous.get("machines", {})
  if "machine" in previous:
    machines.setdefault(previous["machine"].get("backend", "cpu"), previous["machine"])
  machines[info["backend"]] = info
  with open(json_path, "w") as f:
    json.dump({"machine": info, "machines": machines, "rows": rows}, f, indent=1)
  text = render(rows, info, machines)
  with open(os.path.join(_OUT.value, "BENCHMARKS.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
