"""The JVM behind each Java environment (ScienceWorld, TextWorld-Express): a py4j gateway with a capped
heap that dies with the Python process, and the TextEnv base class that starts, restarts and stops it."""

from __future__ import annotations

import logging
import os
import subprocess
import weakref

from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway

from envs.base import Observation, Step, TextEnv

# py4j logs every failed connection with a traceback at ERROR level; the envs turn a dead JVM into an
# env_error Step (and restart it on the next reset), so those logs would only be noise in rollouts.
logging.getLogger("py4j").setLevel(logging.CRITICAL)

#: Overrides every env's default JVM heap cap (a -Xmx value such as "512m" or "2g").
HEAP_ENV_VAR = "AGENTGEN_JAVA_HEAP"


class JavaServer:
  """A JVM running `jar` with a py4j gateway; `jvm` is the gateway's view of its classes."""

  def __init__(self, jar: str, cwd: str, heap: str = "1g"):
    heap = os.environ.get(HEAP_ENV_VAR, heap)
    # SerialGC: one GC thread instead of one per core; these simulators allocate little and several
    # JVMs share the machine's cores with the learner.
    opts = [f"-Xmx{heap}", "-XX:+UseSerialGC"]
    port, self.proc = launch_gateway(classpath=jar, cwd=cwd, javaopts=opts, die_on_exit=True,
                                     return_proc=True)
    self.gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port, auto_field=True),
                               java_process=self.proc)
    self.jvm = self.gateway.jvm

  @property
  def pid(self) -> int:
    return self.proc.pid

  def alive(self) -> bool:
    return self.proc.poll() is None

  def close(self, timeout: float = 10.0) -> None:
    """Shuts the gateway down and waits for the JVM to exit (killing it if it does not)."""
    if not self.alive():  # nothing to talk to: just drop our side of the sockets
      self.gateway.close()
      self.proc.wait(timeout=timeout)
      return
    try:
      self.gateway.shutdown()
    except Exception:  # a JVM dying meanwhile cannot be shut down politely
      pass
    if self.alive():
      try:
        # py4j's die_on_exit thread exits the JVM once its stdin sees a line or closes.
        self.proc.stdin.write(b"\n")
        self.proc.stdin.close()
      except (OSError, ValueError):
        pass
    try:
      self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait(timeout=timeout)


class JavaTextEnv(TextEnv):
  """A TextEnv whose simulator lives in its own JVM: started on first use, restarted by the next `_sim()`
  after it died, stopped by `close()`. Pickling gives the same configuration with no JVM and no episode.

  Subclasses set `jar` and `jar_dir`, implement `_new_server(jvm)` (the simulator object) and list in
  `simulator_state` the attributes that describe what the JVM holds (reset with it).
  """

  jar: str = ""
  jar_dir: str = ""
  simulator_state: tuple[str, ...] = ()

  def __init__(self, java_heap: str):
    super().__init__()
    self.java_heap = java_heap
    self._java: JavaServer | None = None
    self._server = None
    self._forget_simulator()

  def _new_server(self, jvm):
    raise NotImplementedError

  def _forget_simulator(self) -> None:
    self._java = self._server = None
    for attribute in self.simulator_state:
      setattr(self, attribute, None)

  def _sim(self):
    """The simulator, starting a JVM on first use (and again if the last one died)."""
    if self._java is None or not self._java.alive():
      self.close()
      self._java = JavaServer(self.jar, self.jar_dir, self.java_heap)
      self._finalizer = weakref.finalize(self, self._java.close)
      self._server = self._new_server(self._java.jvm)
    return self._server

  @property
  def java_pid(self) -> int | None:
    """The JVM's process id (None before first use and after close)."""
    return self._java.pid if self._java is not None else None

  def close(self) -> None:
    if self._java is not None:
      self._finalizer.detach()
      self._java.close()
    self._forget_simulator()

  def __getstate__(self) -> dict:
    state = dict(self.__dict__, _java=None, _server=None, _last=None, _before_feedback=None, _done=True,
                 _task=None)
    state.update({attribute: None for attribute in self.simulator_state})
    state.pop("_finalizer", None)
    return state

  def simulator_failed(self, error: Exception) -> Step:
    """The Step for a JVM that died or broke mid-episode: the episode ends as the env's failure, and the
    JVM is dropped so that the next reset starts a fresh one."""
    self.close()
    return Step(Observation(f"The simulator failed: {type(error).__name__}"), 0.0, True, False, 0.0,
                {"invalid": False, "env_error": repr(error)[:500]})
