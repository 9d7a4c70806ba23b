"""EnvPool: batched results equal single-env results; crashed, hung and raising workers are reported as
env_error steps and replaced; nothing (workers, their child processes) outlives close()."""

import gc
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import envs
from envs.base import Observation, Step, TextEnv


class FlakyEnv(TextEnv):
  """A test env: "sleep" hangs, "nap" takes 1 s, "raise" raises, anything else echoes. Starts a child
  process (like a JVM) that must not outlive the pool."""

  name = "flaky"

  def __init__(self):
    super().__init__()
    self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

  @property
  def instruction(self):
    return "echo"

  def tasks(self, split="test", difficulty="all"):
    return ["a", "b", "c"]

  def _reset(self, task):
    return Observation(f"task {task} pid {os.getpid()} child {self.child.pid}")

  def _step(self, action):
    if action == "sleep":
      time.sleep(600)
    if action == "nap":
      time.sleep(1)
    if action == "raise":
      raise RuntimeError("flaky env broke")
    return Step(Observation(f"echo {action}"), 0.0, action == "stop", False, 0.0, {"invalid": False})

  def expert(self, task):
    return ["stop"]

  def close(self):
    self.child.kill()
    self.child.wait()


envs.register("flaky", f"{FlakyEnv.__module__}:FlakyEnv")


def _descendants():
  # The resource tracker is multiprocessing's own helper, shared by all spawned processes.
  return [p for p in psutil.Process().children(recursive=True)
          if "resource_tracker" not in " ".join(p.cmdline())]


def _pids_from(obs):
  words = obs.text.split()
  return int(words[words.index("pid") + 1]), int(words[words.index("child") + 1])


def _gone(pid, wait_s=10.0):
  deadline = time.monotonic() + wait_s
  while time.monotonic() < deadline:
    try:
      if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
        return True
    except psutil.NoSuchProcess:
      return True
    time.sleep(0.05)
  return False


def test_batched_results_equal_single_env_results():
  tasks = [("textcraft", t) for t in envs.make("textcraft").tasks("test", "easy")[:2]] + \
          [("babyai", t) for t in envs.make("babyai").tasks("test", "easy")[:3]]
  singles = [envs.make(name) for name, _ in tasks]  # one reference env per slot
  with envs.EnvPool(["textcraft", "babyai"], size=len(tasks), workers=2) as pool:
    experts = pool.expert(tasks)
    assert experts == [single.expert(task) for single, (_, task) in zip(singles, tasks)]
    observations = pool.reset(tasks)
    for single, (_, task), obs in zip(singles, tasks, observations):
      assert obs == single.reset(task)
    for turn in range(max(len(e) for e in experts)):
      actions = [pool.format_action(name, e[turn]) if turn < len(e) else None
                 for (name, _), e in zip(tasks, experts)]
      steps = pool.step(actions)
      for single, action, step in zip(singles, actions, steps):
        assert step == (None if action is None else single.act(action))
    assert all(s is None or s.success for s in steps)
    assert pool.info("babyai") == {"instruction": singles[-1].instruction, "max_turns": 20}
    assert pool.tasks("textcraft", "train", "hard") == singles[0].tasks("train", "hard")


def test_choose_mode_steps_actions_without_parsing():
  with envs.EnvPool("textcraft", size=1, workers=1) as pool:
    task = pool.tasks("textcraft", "test", "easy")[0]
    pool.reset([("textcraft", task)])
    action = pool.expert([("textcraft", task)])[0][0]
    assert not pool.step([action], parse=False)[0].info["invalid"]
    assert pool.step(["Thought: x\nAction: inventory"], parse=False)[0].info["invalid"]


def test_killed_worker_reports_env_error_and_pool_keeps_serving():
  with envs.EnvPool("flaky", size=4, workers=2, timeout_s=30) as pool:
    observations = pool.reset([("flaky", "a")] * 4)
    pids = pool.worker_pids()
    os.kill(pids[0], signal.SIGKILL)
    orphan = _pids_from(observations[0])[1]
    steps = pool.step(["Action: hello"] * 4)
    for slot in (0, 2):  # slots of worker 0
      assert steps[slot].done and not steps[slot].success
      assert "died" in steps[slot].info["env_error"]
      assert steps[slot].observation.text.startswith("[environment error:")
    for slot in (1, 3):
      assert steps[slot].observation.text == "echo hello" and "env_error" not in steps[slot].info
    assert pool.worker_pids()[0] != pids[0] and pool.worker_pids()[1] == pids[1]
    assert _gone(orphan)  # the killed worker's own child (a JVM, say) was killed with its group
    observations = pool.reset([("flaky", "b")] * 4)
    assert all(o.text.startswith("task b") for o in observations)
    assert all(s.observation.text == "echo again" for s in pool.step(["Action: again"] * 4))


def test_hung_worker_times_out_and_is_replaced():
  with envs.EnvPool("flaky", size=2, workers=2, timeout_s=3) as pool:
    observations = pool.reset([("flaky", "a")] * 2)
    hung_pid, hung_child = _pids_from(observations[0])
    start = time.monotonic()
    steps = pool.step(["Action: sleep", "Action: fine"])
    assert time.monotonic() - start < 15
    assert "timed out" in steps[0].info["env_error"] and steps[0].done
    assert steps[1].observation.text == "echo fine"
    assert _gone(hung_pid) and _gone(hung_child)  # the JVM-like child went with its worker
    assert pool.reset([("flaky", "c")] * 2)[0].text.startswith("task c")
    assert pool.step(["Action: ok", None])[0].observation.text == "echo ok"


class _Interrupted(Exception):
  pass


def test_reply_of_an_interrupted_call_is_not_taken_for_the_next_one():
  def interrupt(signum, frame):
    raise _Interrupted()

  previous = signal.signal(signal.SIGALRM, interrupt)
  try:
    with envs.EnvPool("flaky", size=1, workers=1) as pool:
      pool.reset([("flaky", "a")])
      signal.setitimer(signal.ITIMER_REAL, 0.3)
      with pytest.raises(_Interrupted):
        pool.step(["Action: nap"])  # its reply arrives after the caller gave up on it
      assert pool.step(["Action: next"])[0].observation.text == "echo next"
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_raising_env_reports_env_error_for_its_slot_only():
  with envs.EnvPool("flaky", size=2, workers=1) as pool:
    pool.reset([("flaky", "a")] * 2)
    steps = pool.step(["Action: raise", "Action: fine"])
    assert steps[0].info["env_error"] == "RuntimeError: flaky env broke" and steps[0].done
    assert steps[1].observation.text == "echo fine"
    # The lost episode stays reported as failed until the slot is reset.
    assert "env_error" in pool.step(["Action: again", None])[0].info
    pool.reset([("flaky", "b")])
    assert pool.step(["Action: again"])[0].observation.text == "echo again"


def test_close_leaves_no_process_behind():
  pool = envs.EnvPool("flaky", size=4, workers=2)
  observations = pool.reset([("flaky", "a")] * 4)
  pids = set(pool.worker_pids()) | {pid for o in observations for pid in _pids_from(o)}
  assert len(pids) == 6  # 2 workers, 4 env children
  pool.close()
  pool.close()  # idempotent
  assert all(_gone(pid) for pid in pids)
  assert _descendants() == []
  with pytest.raises(RuntimeError, match="closed"):
    pool.step(["Action: x"])


def test_garbage_collected_pool_stops_its_workers():
  pool = envs.EnvPool("flaky", size=2, workers=2)
  pids = pool.worker_pids()
  del pool
  gc.collect()
  assert all(_gone(pid) for pid in pids)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="unknown env 'nope'"):
    envs.EnvPool("nope", size=1)
  with envs.EnvPool("flaky", size=1, workers=1) as pool:
    with pytest.raises(ValueError, match="not served by this pool"):
      pool.reset([("textcraft", "stick")])
    with pytest.raises(ValueError, match="before any reset"):
      pool.step(["Action: x"])


@pytest.mark.java
@pytest.mark.parametrize("kill_first", [False, True])
def test_no_jvm_outlives_the_pool(kill_first):
  # TextWorld-Express runs in a JVM started by its worker (py4j): it must go with the worker.
  pool = envs.EnvPool("twx", size=2, workers=2, timeout_s=300)
  tasks = pool.tasks("twx", "test", "easy")[:2]
  pool.reset([("twx", t) for t in tasks])
  jvms = [p for p in _descendants() if "java" in p.name()]
  assert len(jvms) >= 2
  if kill_first:  # a crashed worker leaves its JVM orphaned: the restart must still remove it
    os.kill(pool.worker_pids()[0], signal.SIGKILL)
    assert "env_error" in pool.step(["Action: look", None])[0].info
  pool.close()
  assert all(_gone(p.pid) for p in jvms)
  assert _descendants() == []


def test_workers_and_their_children_die_with_the_parent(tmp_path):
  # A parent killed without any chance to clean up (SIGKILL) must not leave workers or JVMs behind.
  script = tmp_path / "parent.py"
  script.write_text(
      "import sys, time\n"
      f"sys.path[:0] = {[os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]!r}\n"
      "import envs\n"
      f"envs.register('flaky', '{FlakyEnv.__module__}:FlakyEnv')\n"
      "if __name__ == '__main__':\n"
      "  pool = envs.EnvPool('flaky', size=2, workers=2)\n"
      "  obs = pool.reset([('flaky', 'a')] * 2)\n"
      "  print(*pool.worker_pids(), *[o.text.split()[-1] for o in obs], flush=True)\n"
      "  pool.step(['Action: sleep', None])\n")
  parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
  pids = [int(p) for p in parent.stdout.readline().split()]
  assert len(pids) == 4
  time.sleep(0.5)  # worker 0 is now inside its sleeping step
  parent.kill()
  parent.wait()
  assert all(_gone(pid) for pid in pids)
