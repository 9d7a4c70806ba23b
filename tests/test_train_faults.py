"""Faults of the real commands, run as subprocesses: a kill -9 at any moment (a checkpoint save included)
then a rerun ends bit-identical to an uninterrupted run, with no orphan env worker left; a diverging run
stops with one line naming the non-finite metric and the last good checkpoint; bad flags fail in seconds
with one line naming the valid choices, never a traceback."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from agentgen_jax import rl_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join("tests", "train_config_tiny.py")  # relative to REPO, the commands' cwd


def _train_cmd(workdir, *overrides) -> list[str]:
  return [sys.executable, "-m", "launch.train", f"--config={CONFIG}", *overrides, f"--workdir={workdir}"]


def _run(cmd: list[str], timeout: float = 300, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def shared_compile_cache(tmp_path) -> dict:
  """The environment for runs that share XLA's persistent compilation cache: a rerun does not compile again
  what an earlier run compiled (the same executables, so the same numbers), which keeps the test short."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def final_digest(workdir) -> str:
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)["final_params_digest"]


def _saving(ckpt_dir) -> bool:
  """An orbax save in progress: its step is still a `<step>.orbax-checkpoint-tmp-*` folder."""
  try:
    return any(".orbax-checkpoint-tmp" in name for name in os.listdir(ckpt_dir))
  except FileNotFoundError:
    return False


def has_step(ckpt_dir, step: int) -> bool:
  return os.path.isdir(os.path.join(ckpt_dir, str(step)))


def _alive(p: psutil.Process) -> bool:
  try:
    return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def _family(pid: int) -> list[psutil.Process]:
  try:
    return [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
  except psutil.NoSuchProcess:
    return []


def kill_9_when(cmd: list[str], env: dict, log, ready, delay: float = 0.0, timeout: float = 240) -> None:
  """Starts cmd, waits until ready() (then `delay` seconds more), SIGKILLs its whole process group while it
  still runs, and checks that none of its processes (env workers included) survive."""
  with open(log, "w", encoding="utf-8") as out:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
  deadline = time.monotonic() + timeout
  seen_ready, family, listed = None, [], 0.0
  while True:
    if time.monotonic() - listed > 0.5:  # kept fresh, so that the kill itself is not delayed by listing
      family, listed = _family(proc.pid), time.monotonic()
    if proc.poll() is not None:
      pytest.fail(f"the run ended (rc={proc.returncode}) before the kill: nothing was interrupted")
    now = time.monotonic()
    assert now < deadline, "the kill moment never came"
    if seen_ready is None and ready():
      seen_ready = now
    if seen_ready is not None and now - seen_ready >= delay:
      break
    time.sleep(0.005)
  assert len(family) > 1, "expected env worker processes under the train command"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL  # it was still running: the kill, not the run, ended it
  # Env workers run in their own sessions (so their JVMs die with them) and exit once their parent is
  # gone; give them a few of their 1 s parent checks.
  deadline = time.monotonic() + 15
  while any(_alive(p) for p in family) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not [p.pid for p in family if _alive(p)], "processes of the killed run survived it"


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_gives_bit_identical_params(tmp_path):
  env = shared_compile_cache(tmp_path)
  full = tmp_path / "full"
  done = _run(_train_cmd(full), env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  expected = final_digest(full)

  work = tmp_path / "killed"
  ckpt = work / "checkpoints"
  cmd = _train_cmd(work)
  # 1: in the middle of saving checkpoint 2 (its orbax tmp folder exists), after 1 was finalised.
  kill_9_when(cmd, env, tmp_path / "kill1.log", lambda: has_step(ckpt, 1) and _saving(ckpt))
  assert [s for s in (1, 2) if has_step(ckpt, s)] == [1]
  assert _saving(ckpt)                                       # the half-written checkpoint 2 is left
  # 2: the resumed run, at a random moment in the 5 s after its first own checkpoint (2) is written.
  delay = float(np.random.default_rng(5).uniform(0.0, 5.0))
  kill_9_when(cmd, env, tmp_path / "kill2.log", lambda: has_step(ckpt, 2), delay=delay)
  # 3: the same command once more runs to the end.
  done = _run(cmd, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert final_digest(work) == expected
  assert not _saving(ckpt), "a half-written checkpoint folder was left behind"
  assert has_step(ckpt, 4)
  with open(work / "log.jsonl", encoding="utf-8") as f:
    resumed = [r["iteration"] for r in map(json.loads, f) if r.get("event") == "resumed"]
  assert len(resumed) == 2 and resumed[0] == 1 and resumed[1] >= 2   # each rerun went on, none restarted


@pytest.mark.slow
def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
  from agentgen_jax import checkpoint
  workdir = tmp_path / "diverged"
  # lr 1e10: the first update is fine (its metrics are finite, checkpoint 1 is saved) but leaves weights so
  # large that the next forward pass overflows float32 into inf - inf = nan.
  done = _run(_train_cmd(workdir, "--config.learner.lr=1e10", "--config.iterations=3"))
  assert done.returncode != 0
  assert "Traceback" not in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert "non-finite" in last and "policy_loss" in last and "RL iteration 1" in last, last
  ckpt_dir = str(workdir / "checkpoints")
  assert f"last good checkpoint: step 1 in {ckpt_dir}" in last, last
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  assert ckpt.all_steps() == [1]                     # nothing saved for the bad iteration
  state, meta = ckpt.restore_raw()
  ckpt.close()
  assert meta["iteration"] == 1
  leaves = [np.asarray(x) for x in _leaves(state["params"])]
  assert leaves and all(np.all(np.isfinite(x)) for x in leaves)
  assert not _saving(ckpt_dir)


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


# ---- bad flags: one line with the valid choices, in seconds ----------------------------------------------

_TRAIN = [sys.executable, "-m", "launch.train", "--config=launch/configs/quickstart.py"]
_STUDY = [sys.executable, "-m", "launch.study", "--config=launch/configs/study_difficulty_small.py"]
_EVAL = [sys.executable, "-m", "launch.evaluate", "--checkpoint=tiny", "--envs=textcraft"]


@pytest.mark.e2e  # each case starts a launch command (a Python + JAX start-up: ~3-8 s)
@pytest.mark.parametrize("cmd,args,choices", [
    (_TRAIN, ['--config.envs=("webshp",)'], "known envs: alfworld, babyai"),
    (_TRAIN, ["--config.eval.envs=('textcraft', 'babyia')"], "known envs: alfworld, babyai"),
    (_TRAIN, ["--config.learner.estimator=ppx"], "('grpo', 'rloo', 'reinforce', 'token_gae', 'turn_gae')"),
    (_TRAIN, ["--config.rollout.mode=chose"], "valid: generate, choose"),
    (_TRAIN, ["--config.learner.kl_mode=rewad"], "('loss', 'reward', 'none')"),
    (_TRAIN, ["--config.learner.critic=big"], "('none', 'shared', 'separate')"),
    (_TRAIN, ["--config.eval.difficulty=medium"], "valid: easy, hard, all"),
    (_TRAIN, ["--config.train_split=dev"], "valid: train, test"),
    (_TRAIN, ["--config.learner.klcoef=0.1"], "valid fields of config.learner: b1, b2, bootstrap_truncated"),
    (_TRAIN, ["--config.iteratons=3"], "valid fields of config: checkpoint_every, dtype"),
    (_STUDY, ['--config.envs=("webshp",)'], "known envs: alfworld, babyai"),
    (_STUDY, ["--config.study.protocl=x"], "valid fields of config.study:"),
    (_STUDY, ["--config.eval.split=dev"], "valid: train, test"),
    (_EVAL, ["--envs=webshp"], "known envs: alfworld, babyai"),
    (_EVAL, ["--split=dev"], "one of <train|test>"),
    (_EVAL, ["--difficulty=medium"], "one of <easy|hard|all>"),
    (_EVAL, ["--mode=chose"], "one of <generate|choose>"),
    (_EVAL, ["--checkpoint=no/such/run"], "not a preset (tiny, small)"),
])
def test_bad_flag_fails_with_the_valid_choices(tmp_path, cmd, args, choices):
  _fails_with(cmd + args + [f"--workdir={tmp_path / 'out'}"], choices)


@pytest.mark.e2e
@pytest.mark.parametrize("cmd", [_TRAIN, _STUDY, _EVAL])
def test_missing_workdir_fails_naming_it(cmd):
  _fails_with(cmd, "--workdir")


def _fails_with(cmd: list[str], expected: str) -> None:
  """cmd exits non-zero within seconds (before loading any model or env), its last stderr line names
  `expected`, and no traceback was printed."""
  t0 = time.monotonic()
  done = _run(cmd, timeout=120)
  assert done.returncode != 0
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert expected in last, last
  assert time.monotonic() - t0 < 30


def test_non_finite_params_stop_the_run_even_when_the_metrics_are_finite():
  finite = {"w": np.ones(3, np.float32), "step": np.int32(1)}
  rl_loop.check_finite({"loss": 0.5}, finite, 3, "ckpts", 2)  # no error
  with pytest.raises(FloatingPointError, match=r"non-finite params at RL iteration 3.*step 2 in ckpts"):
    rl_loop.check_finite({"loss": 0.5}, {"w": np.array([1.0, np.inf], np.float32)}, 3, "ckpts", 2)


@pytest.mark.parametrize("args, level", [([], "WARNING"), (["-v", "0"], "INFO")])
def test_library_info_logging_is_off_unless_verbosity_is_given(args, level):
  code = ("import sys; from absl import logging; from launch import cli;"
          "cli.parse_flags(['x'] + sys.argv[1:]); print(logging.get_absl_logger().getEffectiveLevel())")
  out = _run([sys.executable, "-c", code] + args, timeout=60)
  assert out.returncode == 0, out.stderr
  assert int(out.stdout.split()[-1]) == getattr(logging, level), out.stdout
