"""The README's cluster launchers: launch/tpu_vm.sh and launch/batch/cross_env.slurm, run for real with
stand-ins for the cluster commands (`gcloud`, `sbatch`, and `python` for the array jobs) that record how
they were called. The study plan the Slurm script submits comes from the real `launch.study --list_stages`."""

import os
import stat
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(REPO, "launch", "batch", "cross_env.slurm")
TPU_VM = os.path.join(REPO, "launch", "tpu_vm.sh")
CONFIG = "launch/configs/study_cross_env_small.py"


def _stand_in(folder, name: str, prints: str = "") -> str:
  """An executable `name` in folder that appends its argv (one call per line, args tab-separated) to
  name.calls, then prints `prints` (a shell expression)."""
  calls = os.path.join(folder, f"{name}.calls")
  path = os.path.join(folder, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(f'#!/usr/bin/env bash\n(IFS=$\'\\t\'; echo "$*") >> {calls}\n{prints}\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return calls


def _calls(path) -> list[list[str]]:
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]


def _env(bin_dir, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  return {**env, **extra}


def test_scripts_parse():
  for script in (SLURM, TPU_VM):
    subprocess.run(["bash", "-n", script], check=True)


def test_tpu_vm_runs_the_command_on_every_worker(tmp_path):
  calls = _stand_in(tmp_path, "gcloud")
  done = subprocess.run(["bash", TPU_VM, "my-tpu", "us-central2-b", "python", "-m", "launch.study"],
                        env=_env(tmp_path), capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert _calls(calls) == [["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-central2-b",
                            "--worker=all", "--command", "cd ~/agentgen_jax && python -m launch.study"]]
  usage = subprocess.run(["bash", TPU_VM, "my-tpu"], env=_env(tmp_path), capture_output=True, text=True)
  assert usage.returncode == 2 and "usage:" in usage.stderr


def test_slurm_submits_base_then_one_array_job_per_stage_then_merge(tmp_path):
  stages = subprocess.run([sys.executable, "-m", "launch.study", f"--config={CONFIG}",
                           f"--workdir={tmp_path / 'plan'}", "--list_stages"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=True).stdout.strip().splitlines()
  names = [line.split("\t")[0] for line in stages]
  assert len(names) >= 2, stages
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = _stand_in(bin_dir, "sbatch", prints='wc -l < "$(dirname "$0")/sbatch.calls"')  # job ids 1, 2, 3
  done = subprocess.run(["bash", SLURM], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=_env(bin_dir, CONFIG=CONFIG, WORKDIR=str(tmp_path / "run")))
  assert done.returncode == 0, done.stderr[-2000:]
  base, array, merge = _calls(calls)
  assert base == ["--parsable", "--export=ALL,STAGE=base", SLURM]
  assert array == ["--parsable", "--dependency=afterok:1", f"--array=0-{len(names) - 1}",
                   f"--export=ALL,STAGES={' '.join(names)}", SLURM]
  assert merge == ["--dependency=afterany:2", "--export=ALL,STAGE=merge", SLURM]


def test_slurm_jobs_run_their_stage(tmp_path):
  calls = _stand_in(tmp_path, "python")
  common = dict(CONFIG=CONFIG, WORKDIR="/w", SLURM_JOB_ID="7")
  for extra, only in [(dict(STAGE="base"), "--only=base"), (dict(STAGE="merge"), "--merge"),
                      (dict(STAGES="after:textcraft after:babyai", SLURM_ARRAY_TASK_ID="1"),
                       "--only=after:babyai")]:
    subprocess.run(["bash", SLURM], check=True, timeout=60, env=_env(tmp_path, **common, **extra))
    assert _calls(calls)[-1] == ["-m", "launch.study", f"--config={CONFIG}", "--workdir=/w", only]
