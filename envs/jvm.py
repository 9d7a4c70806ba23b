"""One JVM behind a py4j gateway for the Java environments (ScienceWorld, TextWorld-Express).

The heap is capped, the JVM dies with the Python process (stdin watch), and `close` waits for it to exit.
"""

from __future__ import annotations

import logging
import os
import subprocess

from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway

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
