"""AgentGym's HTTP env-server protocol: a TextEnv client for AgentGym-compatible servers (`make_client`) and
a server exposing any of our envs over the same protocol (`serve`; `python -m envs.agentgym --env=NAME`,
in envs/agentgym_server.py)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from envs.base import Observation, Step, TextEnv, parse_react

SERVER_NAME = "agentgen_jax"


@dataclasses.dataclass(frozen=True)
class Dialect:
  """How one AgentGym env server spells the protocol (the agentenv-* servers differ in field names).

  id_key: the body/query field naming the env instance.  index_key: the /reset field naming the task.
  create_returns: "dict" ({"id": n}) or "int" (a bare n).  reset_returns: "dict" (with "observation"),
  "str" (the observation) or "pair" ([observation, null]).  observation_key: of /step responses.
  score_key, score_scale: the /step field read as the score; score_scale maps it (and the reward) to [0, 1]
  (ScienceWorld's servers count points out of 100).  success: "full_score" (score
  reaches 1) or "done_positive" (done with reward > 0).  parser: "react" or "tags" (Search-R1).
  """

  id_key: str = "id"
  index_key: str = "data_idx"
  create_returns: str = "dict"
  reset_returns: str = "dict"
  observation_key: str = "observation"
  score_key: str = "reward"
  score_scale: float = 1.0
  success: str = "full_score"
  parser: str = "react"
  reset_extra: tuple[tuple[str, Any], ...] = ()
  create_body: tuple[tuple[str, Any], ...] = ()


# Read from WooooDyy/AgentGym's agentenv-* servers and agentenv/envs/*.py clients; other names get the
# plain form (textcraft's).
DIALECTS = {
    "babyai": Dialect(score_key="score", success="done_positive"),
    "textcraft": Dialect(),
    "sciworld": Dialect(score_key="score", score_scale=0.01),
    "alfworld": Dialect(index_key="game", reset_extra=(("world_type", "Text"),)),
    "webshop": Dialect(id_key="env_idx", index_key="session_id", create_returns="int", reset_returns="pair",
                       observation_key="state"),
    "searchqa": Dialect(id_key="env_idx", index_key="id", create_returns="int", reset_returns="str",
                        parser="tags", create_body=(("id", 0),)),
}


def dialect_of(env_name: str) -> Dialect:
  return DIALECTS.get(env_name, Dialect())


class AgentGymError(RuntimeError):
  """A one-line failure of the server: down or timed out (reachable=False), or answering an error."""

  def __init__(self, message: str, reachable: bool = True):
    super().__init__(message)
    self.reachable = reachable


def _one_line(text: Any, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."


def _error_text(error: urllib.error.HTTPError) -> str:
  """The {"error": ...} message of an error response (AgentGym's body shape), else its raw text."""
  text = error.read().decode("utf-8", "replace")
  try:
    body = json.loads(text)
  except json.JSONDecodeError:
    body = None
  return _one_line(body["error"] if isinstance(body, dict) and "error" in body else text, 200)


# ---- the client ---------------------------------------------------------------------------------------

class AgentGymEnv(TextEnv):
  """A TextEnv whose episodes run on an AgentGym-compatible server at `url`.

  Task ids: a decimal data index ("12") for AgentGym's servers; our servers also take our own task ids.
  Network errors are retried with exponential backoff; a server that stays down makes reset() raise
  AgentGymError and step() return a done Step with info["env_error"]; the next reset() creates a fresh
  server-side instance, so the client recovers once the server is back.
  """

  def __init__(self, url: str, env_name: str, dialect: Dialect | None = None, timeout: float = 300.0,
               retries: int = 3, backoff: float = 0.2, tasks: dict[str, list[str]] | None = None):
    super().__init__()
    self.url = url.rstrip("/")
    self.env_name = env_name
    self.name = f"agentgym:{env_name}"
    self.dialect = dialect or dialect_of(env_name)
    self.timeout, self.retries, self.backoff = timeout, retries, backoff
    self._task_lists = tasks
    self._id: int | None = None  # the server-side instance; None until created or after it was lost
    self._ours: bool | None = None
    self._instruction: str | None = None

  # ---- HTTP ----

  def _call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Any:
    url = f"{self.url}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    # /step is not idempotent: retry it only when the connection was refused (nothing was sent).
    idempotent = path != "step"
    for attempt in range(self.retries + 1):
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          payload = response.read()
        break
      except urllib.error.HTTPError as e:
        if e.code in (502, 503, 504) and attempt < self.retries:
          time.sleep(self.backoff * 2 ** attempt)
          continue
        raise AgentGymError(
            f"AgentGym server {self.url}: {method} /{path} -> HTTP {e.code}: {_error_text(e)}") from None
      except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
              http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        refused = isinstance(reason, ConnectionRefusedError)
        if attempt < self.retries and (idempotent or refused):
          time.sleep(self.backoff * 2 ** attempt)
          continue
        raise AgentGymError(f"AgentGym server {self.url} is unreachable ({method} /{path}: "
                            f"{_one_line(reason, 120)}) after {attempt + 1} tries", reachable=False) from None
    try:
      result = json.loads(payload) if payload else None
    except json.JSONDecodeError:
      raise AgentGymError(f"AgentGym server {self.url}: {method} /{path} returned non-JSON "
                          f"{_one_line(payload, 80)!r}") from None
    if isinstance(result, dict) and "error" in result:
      raise AgentGymError(f"AgentGym server {self.url}: {method} /{path} error: {_one_line(result['error'])}")
    return result

  def _is_ours(self) -> bool:
    if self._ours is None:
      hello = self._call("GET", "")
      self._ours = isinstance(hello, dict) and hello.get("server") == SERVER_NAME
    return self._ours

  def _create(self) -> int:
    response = self._call("POST", "create", dict(self.dialect.create_body))
    return int(response if self.dialect.create_returns == "int" else response["id"])

  # ---- TextEnv ----

  @property
  def instruction(self) -> str:
    if self._instruction is None:
      if self._is_ours():
        self._instruction = self._call("GET", "instruction")
      elif self.dialect.parser == "tags":
        from envs.searchqa import INSTRUCTION
        self._instruction = INSTRUCTION
      else:
        self._instruction = (f"You act in the {self.env_name} environment. Each turn, reply as "
                             "'Thought: <your reasoning>\\nAction: <one action>'.")
    return self._instruction

  def tasks(self, split: str = "test", difficulty: str = "all") -> list[str]:
    if self._task_lists is not None:
      if difficulty != "all" or split not in self._task_lists:
        raise ValueError(f"tasks given to the client cover splits {sorted(self._task_lists)} and difficulty "
                         f"'all'; asked for split={split!r} difficulty={difficulty!r}")
      return [str(t) for t in self._task_lists[split]]
    if not self._is_ours():
      raise ValueError(f"{self.url} lists no tasks (not an {SERVER_NAME} server); pass "
                       "tasks={'train': [...], 'test': [...]} (data indices) to make_client")
    return self._call("GET", "tasks", query={"split": split, "difficulty": difficulty})

  def expert(self, task: str) -> list[str]:
    if not self._is_ours():
      raise NotImplementedError(f"{self.url} has no expert (only {SERVER_NAME} servers serve /expert)")
    return self._call("GET", "expert", query={"task": task})

  def parse(self, text: str) -> str | None:
    if self.dialect.parser == "tags":
      from envs.searchqa import parse_tags
      return parse_tags(text)
    return parse_react(text)

  def format_action(self, action: str, thought: str = "") -> str:
    if self.dialect.parser == "tags":
      return f"<think>{thought}</think>\n{action}" if thought else action
    return super().format_action(action, thought)

  def act(self, text: str) -> Step:
    if self.dialect.parser == "tags" and self.parse(text) is None:
      from envs.searchqa import malformed_feedback
      return self.invalid_step(malformed_feedback(text))
    return super().act(text)

  def _reset_body(self, task: str) -> dict:
    body = {self.dialect.id_key: self._id}
    if str(task).isdigit():
      body.update({self.dialect.index_key: int(task), **dict(self.dialect.reset_extra)})
    else:
      body["task"] = task  # our own task ids (only our servers know them)
    return body

  def _reset(self, task: str) -> Observation:
    for attempt in range(2):
      if self._id is None:
        self._id = self._create()
      try:
        response = self._call("POST", "reset", self._reset_body(task))
        break
      except AgentGymError as e:
        # The server may have restarted and forgotten our instance: make a new one, once.
        if e.reachable:
          self.close()
        self._id = None
        if attempt:
          raise
    if self.dialect.reset_returns in ("str", "pair"):
      if self._is_ours():  # these replies carry no action list; our /detail has it
        detail = self._call("GET", "detail", query={self.dialect.id_key: self._id})
        return Observation(detail["observation"], detail["available_actions"])
      if self.dialect.reset_returns == "str":
        return Observation(str(response))
      return Observation(str(self._call("GET", "observation", query={self.dialect.id_key: self._id})))
    text = str(response.get("observation", ""))
    if response.get("task_description"):
      text = f"{response['task_description']}\n{text}"
    return Observation(text, response.get("available_actions"))

  def _step(self, action: str) -> Step:
    try:
      response = self._call("POST", "step", {self.dialect.id_key: self._id, "action": action})
    except AgentGymError as e:
      if e.reachable:
        self.close()  # the server is up but refused this instance: free it before making a new one
      self._id = None
      return Step(Observation(str(e)), 0.0, True, False, 0.0, {"invalid": False, "env_error": str(e)})
    d = self.dialect
    text = response.get(d.observation_key, response.get("observation", response.get("state", "")))
    reward = float(response.get("reward") or 0.0) * d.score_scale
    score = min(1.0, max(0.0, float(response.get(d.score_key) or 0.0) * d.score_scale))
    done = bool(response.get("done", False))
    if "success" in response:
      success = bool(response["success"])
    else:
      success = score >= 1.0 if d.success == "full_score" else done and reward > 0
    info = response.get("info") if isinstance(response.get("info"), dict) else {}
    info = {**info, "invalid": bool(response.get("invalid", info.get("invalid", False)))}
    return Step(Observation(str(text), response.get("available_actions")), reward, done, success,
                1.0 if success else score, info)

  def close(self) -> None:
    if self._id is not None:
      try:
        self._call("POST", "close", {self.dialect.id_key: self._id})
      except AgentGymError:
        pass
      self._id = None


def make_client(url: str, env_name: str, **kwargs) -> AgentGymEnv:
  """A TextEnv client of the AgentGym server of `env_name` at `url` (kwargs: see AgentGymEnv)."""
  return AgentGymEnv(url, env_name, **kwargs)


# ---- the server (envs/agentgym_server.py) ------------------------------------------------------------

def serve(env_name: str, **kwargs):
  """Starts an AgentGym-protocol server for `env_name` on a background thread (see agentgym_server.serve)."""
  from envs import agentgym_server
  return agentgym_server.serve(env_name, **kwargs)


def main(argv: list[str] | None = None) -> None:
  from envs import agentgym_server
  agentgym_server.main(argv)


if __name__ == "__main__":
  main()
