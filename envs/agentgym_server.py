"""The AgentGym-protocol HTTP server in front of any of our envs (`python -m envs.agentgym --env=NAME`): a
bounded thread pool, a listen backlog, read timeouts and a body limit, so that many clients, slow ones and
malformed requests cannot hang or kill it; errors are HTTP statuses with AgentGym's {"error": ...} body."""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import envs
from envs.agentgym import SERVER_NAME, Dialect, _one_line, dialect_of
from envs.base import TextEnv

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
  """A request the server refuses: the HTTP status and a one-line reason (sent as {"error": reason})."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _agentgym_babyai(probe: TextEnv, index: int) -> str:
  from envs.babyai import agentgym_task
  return agentgym_task(index)


def _agentgym_sciworld(probe: TextEnv, index: int) -> str:
  tasks = probe.agentgym_tasks()
  if not 0 <= index < len(tasks):
    raise RequestError(400, f"data index {index} out of range [0, {len(tasks)}) of AgentGym's ScienceWorld")
  return tasks[index]


#: Envs whose AgentGym server numbers tasks differently from our tasks("test") + tasks("train"), and the map
#: from AgentGym's data index to our task id (used with --agentgym_task_ids). The others (textcraft, alfworld,
#: webshop, searchqa) number items of AgentGym's own data files, which this project does not ship.
AGENTGYM_NUMBERING: dict[str, Callable[[TextEnv, int], str]] = {
    "babyai": _agentgym_babyai, "sciworld": _agentgym_sciworld}


class _Handler(BaseHTTPRequestHandler):
  server: EnvServer
  protocol_version = "HTTP/1.1"

  def setup(self) -> None:
    self.timeout = self.server.read_timeout  # every read (request line, headers, body) waits at most this
    super().setup()

  def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
    if self.server.verbose:
      super().log_message(format, *args)

  def _reply(self, payload: Any, code: int = 200) -> None:
    data = json.dumps(payload).encode()
    try:
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      # One request per connection, as AgentGym's clients send them: an idle kept-alive connection would
      # hold a worker of the pool.
      self.send_header("Connection", "close")
      self.end_headers()
      self.wfile.write(data)
    except OSError:
      pass  # the client gave up (timeout, reset) while the env was working; nothing left to tell it
    self.close_connection = True

  def _body(self) -> dict:
    """The JSON object of a POST body; RequestError for anything else (so nothing can hang the thread)."""
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      raise RequestError(411, "chunked bodies are not accepted; send Content-Length")
    declared = self.headers.get("Content-Length")
    if declared is None:
      return {}
    try:
      length = int(declared)
    except ValueError:
      raise RequestError(400, f"bad Content-Length {_one_line(declared, 40)!r}: not an integer") from None
    if length < 0:
      raise RequestError(400, f"bad Content-Length {length}: negative")
    if length > self.server.max_body_bytes:
      raise RequestError(413, f"body of {length} bytes is over the limit of {self.server.max_body_bytes}")
    try:
      raw = self.rfile.read(length)
    except TimeoutError:
      raise RequestError(408, f"the body (Content-Length {length}) did not arrive within "
                              f"{self.server.read_timeout:g} s") from None
    if len(raw) < length:
      raise RequestError(400, f"body of {len(raw)} bytes, shorter than its Content-Length {length}")
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise RequestError(400, f"body is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
      return {}
    try:
      body = json.loads(text)
    except json.JSONDecodeError as e:
      raise RequestError(400, f"body is not JSON ({e})") from None
    if not isinstance(body, dict):
      raise RequestError(400, f"body must be a JSON object, got {type(body).__name__}")
    return body

  def _handle(self, method: str) -> None:
    parsed = urllib.parse.urlsplit(self.path)
    args = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
    route = self.server.routes.get((method, parsed.path.rstrip("/") or "/"))
    try:
      if route is None:
        known = ", ".join(f"{m} {p}" for m, p in sorted(self.server.routes))
        raise RequestError(404, f"no route {method} {_one_line(parsed.path, 80)}; routes: {known}")
      if method == "POST":
        args.update(self._body())
      payload, code = route(args), 200
    except RequestError as e:
      payload, code = {"error": _one_line(e)}, e.status
    except Exception as e:  # noqa: BLE001 (an env failure: answered, never a dropped connection)
      payload, code = {"error": _one_line(f"{type(e).__name__}: {e}")}, 500
    self._reply(payload, code)

  def do_GET(self):  # noqa: N802
    self._handle("GET")

  def do_POST(self):  # noqa: N802
    self._handle("POST")


class EnvServer(ThreadingHTTPServer):
  """One of our envs behind AgentGym's protocol, in `env_name`'s dialect; one env instance per /create.

  Extensions our client uses: GET /tasks?split=&difficulty=, /instruction, /expert?task=, /detail?id=,
  and a "task" field in /reset naming our task id. A /reset data index i names task i of
  tasks("test") + tasks("train"), or with agentgym_task_ids AgentGym's own task i (AGENTGYM_NUMBERING).
  Instance ids start at a random offset per server start: an id from before a restart is unknown (404),
  never someone else's env.
  """

  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, address: tuple[str, int], env_name: str, env_kwargs: dict, verbose: bool = False,
               dialect: Dialect | None = None, threads: int = 32, backlog: int = 128,
               read_timeout: float = 30.0, max_body_bytes: int = 8 << 20, agentgym_task_ids: bool = False):
    if agentgym_task_ids and env_name not in AGENTGYM_NUMBERING:
      known = ", ".join(AGENTGYM_NUMBERING)
      raise ValueError(f"agentgym_task_ids: no AgentGym numbering for {env_name!r} (its indices name items "
                       f"of AgentGym's own data files); the option applies to {known}")
    if threads < 1 or backlog < 1 or read_timeout <= 0 or max_body_bytes < 1:
      raise ValueError(f"threads={threads}, backlog={backlog}, read_timeout={read_timeout}, "
                       f"max_body_bytes={max_body_bytes}: each must be positive")
    self.env_name, self.env_kwargs, self.verbose = env_name, env_kwargs, verbose
    self.dialect = dialect or dialect_of(env_name)
    self.read_timeout, self.max_body_bytes = read_timeout, max_body_bytes
    self.agentgym_task_ids = agentgym_task_ids
    self.request_queue_size = backlog  # listen()'s backlog, set before the base class activates the socket
    self.instances: dict[int, tuple[TextEnv, threading.Lock]] = {}
    self._lock = threading.Lock()
    # 2^31 random offsets of 2^20 ids each (ids stay below 2^53, exact in every JSON reader).
    self._next_id = secrets.randbelow(1 << 31) << 20
    self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
    self._probe = envs.make(env_name, **env_kwargs)  # fails fast on a bad name or kwargs; answers lookups
    self._probe_lock = threading.Lock()
    self._index: list[str] | None = None
    self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"agentgym-{env_name}")
    self.routes = {
        ("GET", "/"): self.hello, ("POST", "/create"): self.create, ("POST", "/reset"): self.reset,
        ("POST", "/step"): self.step, ("GET", "/observation"): self.observation,
        ("GET", "/available_actions"): self.available_actions, ("POST", "/close"): self.close_instance,
        ("GET", "/tasks"): self.tasks, ("GET", "/instruction"): lambda a: self._probe.instruction,
        ("GET", "/expert"): self.expert, ("GET", "/detail"): self.detail,
    }
    super().__init__(address, _Handler)

  def process_request(self, request, client_address) -> None:
    # A bounded pool instead of a thread per connection: a flood of clients queues (in the pool and the
    # listen backlog) instead of starting unboundedly many threads.
    self._pool.submit(self.process_request_thread, request, client_address)

  def handle_error(self, request, client_address) -> None:
    if self.verbose:
      print(f"agentgym server: request from {client_address} failed: {_one_line(sys.exc_info()[1])}",
            file=sys.stderr)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}"

  # ---- argument checks: 400 for a missing or malformed field, 404 for an unknown instance ----

  def _field(self, args: dict, key: str, kind: type = str) -> Any:
    if args.get(key) is None:
      raise RequestError(400, f"missing field {key!r}")
    value = args[key]
    if kind is int:
      if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
        raise RequestError(400, f"field {key!r} must be an integer, got {_one_line(value, 40)!r}")
      return int(value)
    if not isinstance(value, str):
      raise RequestError(400, f"field {key!r} must be a string, got {type(value).__name__}")
    return value

  def _instance(self, args: dict) -> tuple[TextEnv, threading.Lock]:
    key = self.dialect.id_key
    other = "env_idx" if key == "id" else "id"
    # Accept the other spelling too, unless this dialect uses it for the task (searchqa's reset "id").
    if args.get(key) is None and other != self.dialect.index_key and args.get(other) is not None:
      key = other
    env_id = self._field(args, key, int)
    try:
      return self.instances[env_id]
    except KeyError:
      raise RequestError(404, f"unknown env instance {key}={env_id} (closed, or created before this server "
                              f"started at {self.started}): create a new one") from None

  def _task_of(self, args: dict) -> str:
    if args.get("task") is not None:
      return self._field(args, "task")
    index = self._field(args, self.dialect.index_key, int)
    if self.agentgym_task_ids:
      with self._probe_lock:
        return AGENTGYM_NUMBERING[self.env_name](self._probe, index)
    with self._probe_lock:
      if self._index is None:
        self._index = self._probe.tasks("test") + self._probe.tasks("train")
    if not 0 <= index < len(self._index):
      raise RequestError(400, f"{self.dialect.index_key}={index} out of range [0, {len(self._index)})")
    return self._index[index]

  # ---- routes: each takes the merged query/body args and returns the JSON payload ----

  def hello(self, args):
    return {"server": SERVER_NAME, "env": self.env_name, "protocol": "agentgym",
            "instances": len(self.instances), "started": self.started}

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
      try:
        obs = env.reset(task)
      except (ValueError, KeyError) as e:  # a task id the env does not know
        raise RequestError(400, f"bad task {task!r}: {_one_line(e)}") from None
    if self.dialect.reset_returns == "str":
      return obs.text
    if self.dialect.reset_returns == "pair":
      return [obs.text, None]
    return {"id": args.get(self.dialect.id_key), "observation": obs.text,
            "available_actions": obs.valid_actions, "reward": 0.0, "score": 0.0, "done": False, "task": task,
            "task_description": ""}

  def step(self, args):
    env, lock = self._instance(args)
    action = self._field(args, "action")
    with lock:
      if env.last_observation is None:
        raise RequestError(400, "step before reset: reset the instance first")
      step = env.act(action) if args.get("parse") else env.step(action)
    text = step.observation.text
    scale = self.dialect.score_scale  # AgentGym's scale (ScienceWorld: points out of 100)
    return {"observation": text, "state": text, "reward": step.reward / scale, "score": step.score / scale,
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
      try:
        return self._probe.tasks(args.get("split", "test"), args.get("difficulty", "all"))
      except ValueError as e:
        raise RequestError(400, str(e)) from None

  def expert(self, args):
    task = self._field(args, "task")
    with self._probe_lock:
      return self._probe.expert(task)

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
    self._pool.shutdown(wait=False, cancel_futures=True)
    for env, _ in list(self.instances.values()) + [(self._probe, None)]:
      env.close()
    self.instances = {}


def serve(env_name: str, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
          dialect: Dialect | None = None, threads: int = 32, backlog: int = 128, read_timeout: float = 30.0,
          max_body_bytes: int = 8 << 20, agentgym_task_ids: bool = False, **env_kwargs) -> EnvServer:
  """Starts serving `env_name` (created with env_kwargs) on a background thread; returns the server
  (`.url`, `.close()`). port=0 picks a free port; dialect defaults to AgentGym's for `env_name`."""
  server = EnvServer((host, port), env_name, env_kwargs, verbose=verbose, dialect=dialect, threads=threads,
                     backlog=backlog, read_timeout=read_timeout, max_body_bytes=max_body_bytes,
                     agentgym_task_ids=agentgym_task_ids)
  threading.Thread(target=server.serve_forever, name=f"agentgym-{env_name}", daemon=True).start()
  return server


def main(argv: list[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(description="Serve one of our envs over AgentGym's HTTP protocol.")
  parser.add_argument("--env", required=True, choices=envs.names(), metavar="ENV",
                      help=f"env name: {', '.join(envs.names())}")
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to listen on; loopback by default, 0.0.0.0 exposes it to the network")
  parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
  parser.add_argument("--threads", type=int, default=32, help="request worker threads")
  parser.add_argument("--backlog", type=int, default=128, help="listen backlog (connections waiting)")
  parser.add_argument("--read_timeout", type=float, default=30.0, help="seconds a request may take to arrive")
  parser.add_argument("--max_body_mb", type=float, default=8.0, help="larger request bodies get 413")
  parser.add_argument("--agentgym_task_ids", action="store_true",
                      help="data index i names AgentGym's task i, not ours "
                           f"({', '.join(AGENTGYM_NUMBERING)})")
  parser.add_argument("--kwargs", default="{}", help='env constructor kwargs as JSON, e.g. \'{"top_k": 5}\'')
  parser.add_argument("--verbose", action="store_true", help="log every request")
  flags = parser.parse_args(argv)
  try:
    kwargs = json.loads(flags.kwargs)
    server = serve(flags.env, flags.host, flags.port, verbose=flags.verbose, threads=flags.threads,
                   backlog=flags.backlog, read_timeout=flags.read_timeout,
                   max_body_bytes=int(flags.max_body_mb * (1 << 20)),
                   agentgym_task_ids=flags.agentgym_task_ids, **kwargs)
  except (ValueError, TypeError, OSError) as e:
    parser.exit(2, f"{parser.prog}: error: {_one_line(e)}\n")
  if flags.host not in LOOPBACK:
    print(f"warning: listening on {flags.host}: anyone who can reach port {server.server_address[1]} can "
          "run envs here (no authentication)", file=sys.stderr, flush=True)
  print(f"serving {flags.env} at {server.url}", flush=True)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    server.close()
