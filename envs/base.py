"""The text-environment interface: what every environment implements and the records it returns.

An env is a plain Python object living in one process (EnvPool puts many of them in worker processes).
Task ids are JSON-serialisable strings, so that a task can be sent to a worker, stored in a trajectory
and grouped for GRPO by equality.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any, Sequence

SPLITS = ("train", "test")
DIFFICULTIES = ("easy", "hard", "all")


@dataclasses.dataclass(frozen=True)
class Observation:
  """What the agent sees after reset or step.

  valid_actions: the admissible actions when the env can list them (needed by the `choose` action
  mode), else None.
  """

  text: str
  valid_actions: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class Step:
  """The result of one agent turn.

  reward: the step reward (outcome envs give the final score on the last step and 0 before).
  success: the task is solved.  score: task progress/quality in [0, 1] (env-defined; BabyAI scores a
  success by its step-discounted reward, so a success may score below 1).
  info: at least {"invalid": bool}; env_error=str when the environment itself failed.
  """

  observation: Observation
  reward: float
  done: bool
  success: bool
  score: float
  info: dict[str, Any]


_ACTION_RE = re.compile(r"Action\s*:\s*(.+)", re.IGNORECASE)


def parse_react(text: str) -> str | None:
  """Returns the action of ReAct output ("Thought: ... Action: <action>"), or None.

  The first "Action:" line wins (a model that writes several only gets its first executed); the action
  ends at the line end. Text without "Action:" is accepted when it is a single short line, since small
  models often answer with the bare action.
  """
  if not isinstance(text, str):
    return None
  text = text.replace("\x00", "")
  match = _ACTION_RE.search(text)
  if match:
    action = match.group(1).strip().strip("`'\"").strip()
  else:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1 or len(lines[0]) > 200 or ":" in lines[0]:
      return None
    action = lines[0]
  action = action.rstrip(".").strip()
  return action or None


class TextEnv(abc.ABC):
  """One text environment instance. Subclasses implement `_reset`, `_step`, `tasks` and `expert`.

  Public methods never raise on bad model output: unparseable or inadmissible actions become a normal
  step with feedback text and info["invalid"] = True.
  """

  name: str = ""
  #: Default cap on agent turns per episode (the rollout enforces it; envs do not).
  max_turns: int = 20

  def __init__(self) -> None:
    self._last: Observation | None = None
    # The last observation that was not invalid-action feedback: what the next feedback is prefixed to, so
    # that repeated invalid actions show one feedback line each time instead of stacking them up.
    self._before_feedback: Observation | None = None
    self._done = True
    self._task: str | None = None

  # ---- what subclasses provide -------------------------------------------------------------------

  @property
  @abc.abstractmethod
  def instruction(self) -> str:
    """Task-independent instructions shown once at the start (environment rules, action format)."""

  @abc.abstractmethod
  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    """Task ids of a split ("train" | "test", disjoint) and difficulty ("easy" | "hard" | "all")."""

  @abc.abstractmethod
  def _reset(self, task: str) -> Observation:
    """Starts the episode of `task`."""

  @abc.abstractmethod
  def _step(self, action: str) -> Step:
    """Executes a parsed action (inadmissible actions give an invalid Step, not an exception)."""

  @abc.abstractmethod
  def expert(self, task: str) -> list[str]:
    """A list of actions that solves `task` from its reset state."""

  def parse(self, text: str) -> str | None:
    """Extracts the action from model output; None when there is none."""
    return parse_react(text)

  def format_action(self, action: str, thought: str = "") -> str:
    """Agent text that `parse` maps back to `action` (used for SFT demonstrations)."""
    if thought:
      return f"Thought: {thought}\nAction: {action}"
    return f"Action: {action}"

  def close(self) -> None:
    """Releases external resources (JVMs, servers)."""

  # ---- the public protocol -----------------------------------------------------------------------

  def reset(self, task: str) -> Observation:
    self._task = task
    self._last = self._before_feedback = self._reset(task)
    self._done = False
    return self._last

  def step(self, action: str) -> Step:
    """Executes an action string directly (the `choose` action mode)."""
    if self._last is None:
      raise RuntimeError(f"{self.name}: step() before reset()")
    if self._done:
      return self.invalid_step("The episode is over; no further actions are accepted.", done=True)
    step = self._step(action)
    self._last = step.observation
    if not step.info.get("invalid"):
      self._before_feedback = step.observation
    self._done = step.done
    return step

  def act(self, text: str) -> Step:
    """Parses model output and executes it; unparseable output is an invalid step with feedback."""
    action = self.parse(text)
    if action is None:
      return self.invalid_step(
          "Invalid output: no action found. Reply as 'Thought: <your reasoning>\\nAction: <action>'.")
    return self.step(action)

  def invalid_step(self, feedback: str, done: bool = False) -> Step:
    """A step that changed nothing: feedback first, then the last observation that was not feedback."""
    last = self._before_feedback or Observation("")
    text = feedback if not last.text else f"{feedback}\n{last.text}"
    return Step(Observation(text, last.valid_actions), 0.0, done or self._done, False, 0.0,
                {"invalid": True})

  @property
  def last_observation(self) -> Observation | None:
    return self._last

  @property
  def task(self) -> str | None:
    return self._task


def check_split(split: str, difficulty: str) -> None:
  """Raises a one-line ValueError naming the bad split/difficulty and the valid choices."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"unknown difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}")


def replay(env: TextEnv, task: str, actions: Sequence[str]) -> Step | None:
  """Resets to `task` and executes `actions`; returns the last Step (None for no actions)."""
  env.reset(task)
  step = None
  for action in actions:
    step = env.step(action)
    if step.done:
      break
  return step
