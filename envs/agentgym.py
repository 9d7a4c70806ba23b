"""AgentGym's HTTP env-server protocol: a TextEnv client for AgentGym-compatible servers (`make_client`) and
a server exposing any of our envs over the same protocol (`serve`; `python -m envs.agentgym --env=NAME`)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import envs
from envs.base import Observation, Step, TextEnv, parse_react

SERVER_NAME = "agentgen_jax"


@dataclasses.dataclass(frozen=True)
class Dialect:
  """How one AgentGym env server spells the protocol (the agentenv-* servers differ in field names).

  id_key: the body/query field naming the env instance.  index_key: the /reset field naming the task.
  create_returns: "dict" ({"id": n}) or "int" (a bare n).  reset_returns: "dict" (with "observation"),
  "str" (the observation) or "pair" ([observation, null]).  observation_key: of /step responses.
  score_key, score_scale: the /step field read as the score in [0, 1].  success: "full_score" (score
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
        detail = _one_line(e.read().decode("utf-8", "replace"), 200)
        raise AgentGymError(
            f"AgentGym server {self.url}: {method} /{path} -> HTTP {e.code} {detail}") from None
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
    reward = float(response.get("reward") or 0.0)
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


# ---- the server ---------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
  server: EnvServer
  protocol_version = "HTTP/1.1"

  def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
    if self.server.verbose:
      super().log_message(format, *args)

  def _reply(self, payload: Any, code: int = 200) -> None:
    data = json.dumps(payload).encode()
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _handle(self, method: str) -> None:
    parsed = urllib.parse.urlsplit(self.path)
    args = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
    if method == "POST":
      length = int(self.headers.get("Content-Length") or 0)
      try:
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
      except json.JSONDecodeError as e:
        return self._reply({"error": f"request body is not JSON ({e})"}, 400)
      args.update(body if isinstance(body, dict) else {})
    route = self.server.routes.get((method, parsed.path.rstrip("/") or "/"))
    if route is None:
      known = ", ".join(f"{m} {p}" for m, p in sorted(self.server.routes))
      return self._reply({"error": f"no route {method} {parsed.path}; routes: {known}"}, 404)
    try:
      payload = route(args)
    except Exception as e:  # noqa: BLE001 (AgentGym servers answer errors as {"error": ...} with 200)
      payload = {"error": _one_line(f"{type(e).__name__}: {e}")}
    try:
      self._reply(payload)
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client gave up (timeout) while the env was working; nothing left to tell it

  def do_GET(self):  # noqa: N802
    self._handle("GET")

  def do_POST(self):  # noqa: N802
    self._handle("POST")


class EnvServer(ThreadingHTTPServer):
  """One of our envs behind AgentGym's protocol, in `env_name`'s dialect; one env instance per /create.

  Extensions our client uses: GET /tasks?split=&difficulty=, /instruction, /expert?task=, /detail?id=,
  and a "task" field in /reset naming our task id. A /reset data index i names task i of
  tasks("test") + tasks("train").
  """

  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, address: tuple[str, int], env_name: str, env_kwargs: dict, verbose: bool = False,
               dialect: Dialect | None = None):
    self.env_name, self.env_kwargs, self.verbose = env_name, env_kwargs, verbose
    self.dialect = dialect or dialect_of(env_name)
    self.instances: dict[int, tuple[TextEnv, threading.Lock]] = {}
    self._lock = threading.Lock()
    self._next_id = 0
    self._probe = envs.make(env_name, **env_kwargs)  # fails fast on a bad name or kwargs; answers lookups
    self._probe_lock = threading.Lock()
    self._index: list[str] | None = None
    self.routes = {
        ("GET", "/"): self.hello, ("POST", "/create"): self.create, ("POST", "/reset"): self.reset,
        ("POST", "/step"): self.step, ("GET", "/observation"): self.observation,
        ("GET", "/available_actions"): self.available_actions, ("POST", "/close"): self.close_instance,
        ("GET", "/tasks"): self.tasks, ("GET", "/instruction"): lambda a: self._probe.instruction,
        ("GET", "/expert"): self.expert, ("GET", "/detail"): self.detail,
    }
    super().__init__(address, _Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}"

  def _instance(self, args: dict) -> tuple[TextEnv, threading.Lock]:
    key = self.dialect.id_key
    other = "env_idx" if key == "id" else "id"
    # Accept the other spelling too, unless this dialect uses it for the task (searchqa's reset "id").
    value = args.get(key, args.get(other) if other != self.dialect.index_key else None)
    try:
      return self.instances[int(value)]
    except (KeyError, TypeError, ValueError):
      raise KeyError(f"unknown env instance {key}={value!r}; known: {sorted(self.instances)}") from None

  def _task_of(self, args: dict) -> str:
    if args.get("task") is not None:
      return str(args["task"])
    with self._probe_lock:
      if self._index is None:
        self._index = self._probe.tasks("test") + self._probe.tasks("train")
    index = int(args.get(self.dialect.index_key) or 0)
    if not 0 <= index < len(self._index):
      raise IndexError(f"{self.dialect.index_key}={index} out of range [0, {len(self._index)})")
    return self._index[index]

  # ---- routes: each takes the merged query/body args and returns the JSON payload ----

  def hello(self, args):
    return {"server": SERVER_NAME, "env": self.env_name, "protocol": "agentgym",
            "instances": len(self.instances)}

  def create(self, args):
    env = envs.make(self.env_name, **self.env_kwargs)
    with self._lock:
      env_id = self._next_id
      self._next_id += 1
      self.instances[env_id] = (env, threading.Lock())
    return env_id if self.dialect.create_returns == "int" else {"id": env_id, "observation": "",
                                                                "reward": 0.0, "done": False}

  def reset(self, args):
    env, lock = self._instance(args)
    task = self._task_of(args)
    with lock:
      obs = env.reset(task)
    if self.dialect.reset_returns == "str":
      return obs.text
    if self.dialect.reset_returns == "pair":
      return [obs.text, None]
    return {"id": self._instance_id(args), "observation": obs.text, "available_actions": obs.valid_actions,
            "reward": 0.0, "score": 0.0, "done": False, "task": task, "task_description": ""}

  def _instance_id(self, args):
    return args.get(self.dialect.id_key)

  def step(self, args):
    env, lock = self._instance(args)
    action = str(args.get("action", ""))
    with lock:
      step = env.act(action) if args.get("parse") else env.step(action)
    text = step.observation.text
    return {"observation": text, "state": text, "reward": step.reward, "score": step.score,
            "done": step.done, "success": step.success, "invalid": bool(step.info.get("invalid")),
            "available_actions": step.observation.valid_actions, "info": step.info}

  def observation(self, args):
    env, lock = self._instance(args)
    with lock:
      last = env.last_observation
    return last.text if last is not None else ""

  def available_actions(self, args):
    env, lock = self._instance(args)
    with lock:
      last = env.last_observation
    actions = (last.valid_actions if last is not None else None) or []
    if self.dialect.observation_key == "state":  # webshop's shape
      return {"has_search_bar": any(a.startswith("search[") for a in actions),
              "clickables": [a[6:-1] for a in actions if a.startswith("click[")]}
    return actions

  def close_instance(self, args):
    env, lock = self._instance(args)
    with self._lock:
      self.instances = {k: v for k, v in self.instances.items() if v[0] is not env}
    with lock:
      env.close()
    return {"closed": True}

  def tasks(self, args):
    with self._probe_lock:
      return self._probe.tasks(args.get("split", "test"), args.get("difficulty", "all"))

  def expert(self, args):
    with self._probe_lock:
      return self._probe.expert(str(args["task"]))

  def detail(self, args):
    env, lock = self._instance(args)
    with lock:
      last = env.last_observation
      return {"task": env.task, "env": self.env_name, "observation": last.text if last else "",
              "available_actions": last.valid_actions if last else None}

  def close(self) -> None:
    """Stops serving and closes every env instance."""
    self.shutdown()
    self.server_close()
    for env, _ in list(self.instances.values()) + [(self._probe, None)]:
      env.close()
    self.instances = {}


def serve(env_name: str, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
          dialect: Dialect | None = None, **env_kwargs) -> EnvServer:
  """Starts serving `env_name` (created with env_kwargs) on a background thread; returns the server
  (`.url`, `.close()`). port=0 picks a free port; dialect defaults to AgentGym's for `env_name`."""
  server = EnvServer((host, port), env_name, env_kwargs, verbose=verbose, dialect=dialect)
  threading.Thread(target=server.serve_forever, name=f"agentgym-{env_name}", daemon=True).start()
  return server


def main(argv: list[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(description="Serve one of our envs over AgentGym's HTTP protocol.")
  parser.add_argument("--env", required=True, help=f"env name: {', '.join(envs.names())}")
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
  parser.add_argument("--kwargs", default="{}", help='env constructor kwargs as JSON, e.g. \'{"top_k": 5}\'')
  parser.add_argument("--verbose", action="store_true", help="log every request")
  flags = parser.parse_args(argv)
  server = serve(flags.env, flags.host, flags.port, verbose=flags.verbose, **json.loads(flags.kwargs))
  print(f"serving {flags.env} at {server.url}", flush=True)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    server.close()


if __name__ == "__main__":
  main()
