"""Several processes as one job (jax.distributed on local CPU processes, gloo collectives): the training
command run by two processes of two devices each equals one process of four devices, writes one results.json,
and a killed process ends the other in one line; bad JAX_* variables are one-line errors."""

import glob
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from agentgen_jax import checkpoint, distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared tiny config (tests/train_config_tiny.py), one micro-batch of 4 rows: one row per device.
ARGS = ["--config=tests/train_config_tiny.py", "--config.learner.micro_batch_size=4",
        "--config.learner.mini_batch_size=4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
  return env


def _start(workdir, processes: int, devices: int, *args, peer_timeout_s: int = 20) -> list:
  """`processes` launch.train processes of `devices` CPU devices each, joined at a local coordinator."""
  port = _free_port()
  out = []
  for i in range(processes):
    env = _env(devices, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(i), AGENTGEN_PEER_TIMEOUT_S=str(peer_timeout_s))
    log = open(f"{workdir}.process{i}.err", "w+")
    out.append((subprocess.Popen([sys.executable, "-m", "launch.train", *ARGS, f"--workdir={workdir}", *args],
                                 env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                 start_new_session=True), log))
  return out


def _finish(procs, timeout: float) -> list[tuple[int, str]]:
  """(exit code, stderr) of each process; any still running after `timeout` s is killed (and fails)."""
  deadline = time.monotonic() + timeout
  results = []
  for proc, log in procs:
    try:
      proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    log.seek(0)
    results.append((proc.returncode, log.read()))
    log.close()
  return results


def _lines(stderr: str) -> list[str]:
  """stderr without gloo's connection notes and progress bars."""
  return [line for line in stderr.splitlines()
          if line.strip() and not line.startswith("[Gloo]") and "\r" not in line and "it/s]" not in line]


def _curve(workdir) -> list[dict]:
  with open(os.path.join(workdir, "log.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  keep = ("success", "score", "mean_turns", "loss", "policy_loss", "entropy", "grad_norm")
  return [{k: r[k] for k in keep if k in r} for r in rows if "iteration" in r]


def _tokens(workdir) -> list[list[int]]:
  with open(os.path.join(workdir, "trajectories", "train_00001.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["tokens"] for line in f]


def _final_params(workdir) -> np.ndarray:
  load_lib = importlib.import_module("agentgen_jax.models.load")
  weights = {}
  for path in sorted(glob.glob(os.path.join(workdir, "hf_export", "*.safetensors"))):
    weights.update(load_lib.read_safetensors(path))
  return np.concatenate([np.asarray(weights[k], np.float64).ravel() for k in sorted(weights)])


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost"}, "JAX_COORDINATOR_ADDRESS='localhost' is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"},
     "JAX_COORDINATOR_ADDRESS is set but JAX_PROCESS_ID is not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' is not an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES=0; valid: the number of processes of the job, >= 1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2 with JAX_NUM_PROCESSES=2; valid: 0 .. 1")])
def test_bad_launch_variables_name_the_variable_and_the_valid_values(env, message):
  with pytest.raises(ValueError) as e:
    distributed.coordinator_env(env)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_coordinator_env_reads_a_good_launch():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.coordinator_env(env) == ("10.0.0.2:1234", 4, 3)


def test_one_process_gathers_and_agrees_with_itself():
  assert distributed.allgather({"a": 1}) == [{"a": 1}]
  assert distributed.global_max(7) == 7 and distributed.agreed("x") == "x"
  assert distributed.is_primary()


def test_bad_process_id_ends_train_in_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  env = _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2",
             JAX_PROCESS_ID="5")
  proc = subprocess.run([sys.executable, "-m", "launch.train", *ARGS, f"--workdir={workdir}"], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].endswith(
      "JAX_PROCESS_ID=5 with JAX_NUM_PROCESSES=2; valid: 0 .. 1, a different one on each process")
  assert not workdir.exists()


@pytest.mark.slow
def test_two_processes_train_as_one_job_equal_to_one_process_of_four_devices(tmp_path):
  # ~4 min on 2 cores: two processes x 2 CPU devices, then one process x 4 devices, 2 iterations each.
  args = ["--config.iterations=2", "--config.export_hf=True"]
  job = tmp_path / "two_processes"
  results = _finish(_start(job, 2, 2, *args), timeout=1200)
  assert [code for code, _ in results] == [0, 0], [_lines(err)[-5:] for _, err in results]
  one = tmp_path / "one_process"
  proc = subprocess.run([sys.executable, "-m", "launch.train", *ARGS, f"--workdir={one}", *args], env=_env(4),
                        cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # One job: one results.json, one log, one set of trajectories (process 0 writes; process 1 nothing).
  assert len(glob.glob(str(tmp_path / "two_processes*" / "**" / "results.json"), recursive=True)) == 1
  assert sorted(os.listdir(job / "trajectories")) == sorted(os.listdir(one / "trajectories"))
  got, want = _curve(job), _curve(one)
  assert len(want) == 2 and [set(r) for r in got] == [set(r) for r in want]
  for g, w in zip(got, want):
    for k in w:
      assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
  assert _tokens(job) == _tokens(one)  # the same episodes
  a, b = _final_params(job), _final_params(one)
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4
  # The checkpoint the two processes saved together reads back in this one-device process (launch.evaluate).
  state, meta = checkpoint.Checkpointer(str(job / "checkpoints"), read_only=True).restore_raw()
  assert meta["iteration"] == 2
  embedding = np.asarray(state["params"]["embed"]["embedding"], np.float64).ravel()
  assert np.isfinite(embedding).all() and np.abs(embedding).sum() > 0


@pytest.mark.e2e
def test_killing_one_process_ends_the_other_in_one_line_without_orphans(tmp_path):
  job = tmp_path / "run"
  procs = _start(job, 2, 2, "--config.iterations=50", peer_timeout_s=10)
  deadline = time.monotonic() + 300
  while not (job / "config.json").exists():  # both joined, the mesh is built, the job has begun
    assert time.monotonic() < deadline and all(p.poll() is None for p, _ in procs), _finish(procs, 1)
    time.sleep(0.5)
  time.sleep(3)
  family = [c.pid for p, _ in procs for c in psutil.Process(p.pid).children(recursive=True)]
  killed_at = time.monotonic()
  os.kill(procs[1][0].pid, signal.SIGKILL)
  (code, err), _ = _finish(procs, timeout=90)
  took = time.monotonic() - killed_at
  lines = _lines(err)
  assert code not in (0, None) and took < 60, (code, took, lines[-5:])
  assert lines == lines[-1:] and lines[-1].startswith("training stopped on process 0 of 2: "), lines[-5:]
  time.sleep(3)  # env workers notice their parent is gone within a second
  alive = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
  assert not alive, alive
