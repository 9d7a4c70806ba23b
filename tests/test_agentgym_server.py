"""The AgentGym server under bad input, load and restarts (loopback only, bounded in time): malformed
requests get an HTTP status with AgentGym's {"error": ...} body and never hang or kill a thread; many
clients at once lose nothing and see the episodes of a sequential run; instance ids do not survive a
restart; ScienceWorld scores on AgentGym's 0-100 scale; AgentGym's task numbering on request."""

import json
import socket
import time
import urllib.parse

import pytest

import envs
from envs.agentgym import DIALECTS, AgentGymError, make_client, serve
from tests import agentgym_load


@pytest.fixture(scope="module")
def server():
  server = serve("babyai", read_timeout=1.0, max_body_bytes=1 << 16, threads=4)
  yield server
  server.close()


def _raw(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, dict]:
  """Sends bytes as they are on one connection; (status, JSON body) of the answer."""
  host, port = urllib.parse.urlsplit(url).netloc.split(":")
  with socket.create_connection((host, int(port)), timeout=timeout) as s:
    s.sendall(request)
    data = b""
    while chunk := s.recv(65536):
      data += chunk
  head, _, body = data.partition(b"\r\n\r\n")
  return int(head.split()[1]), json.loads(body)


def _post(path: str, body: bytes, length: str | None = None) -> bytes:
  length = str(len(body)) if length is None else length
  return (f"POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          f"Content-Length: {length}\r\n\r\n").encode() + body


def _instance(url: str) -> int:
  env_id = agentgym_load.post(url, "create", {})["id"]
  agentgym_load.post(url, "reset", {"id": env_id, "data_idx": 0})
  return env_id


# ---- bad requests: a status and a one-line JSON error, in bounded time --------------------------------

@pytest.mark.parametrize("request_bytes,status,message", [
    (_post("step", b"{}", length="-5"), 400, "bad Content-Length -5: negative"),
    (_post("step", b"{}", length="ten"), 400, "not an integer"),
    (_post("step", b"{}", length=str(10 ** 12)), 413, "over the limit of 65536"),
    (_post("step", b'{"id": 1, "action": "\xff\xfe"}'), 400, "not valid UTF-8"),
    (_post("step", b"{not json"), 400, "body is not JSON"),
    (_post("step", b"[1, 2]"), 400, "must be a JSON object"),
    (_post("reset", b"{}"), 400, "missing field 'id'"),
    (_post("step", b'{"id": "x", "action": "go"}'), 400, "'id' must be an integer"),
    (_post("create", b"", length=None).replace(b"/create", b"/nowhere"), 404, "no route POST /nowhere"),
])
def test_bad_request_gets_a_status_and_a_json_error(server, request_bytes, status, message):
  got, body = _raw(server.url, request_bytes)
  assert got == status and message in body["error"] and "\n" not in body["error"]


def test_missing_fields_of_an_instance_are_400(server):
  env_id = _instance(server.url)
  for path, body, missing in (("reset", {"id": env_id}, "data_idx"), ("step", {"id": env_id}, "action")):
    got, reply = _raw(server.url, _post(path, json.dumps(body).encode()))
    assert (got, reply["error"]) == (400, f"missing field {missing!r}")


def test_unknown_instance_is_404_with_the_error_body(server):
  got, body = _raw(server.url, _post("step", b'{"id": 7, "action": "turn left"}'))
  assert got == 404 and body["error"].startswith("unknown env instance id=7")


def test_body_shorter_than_declared_times_out_instead_of_hanging(server):
  t0 = time.monotonic()
  got, body = _raw(server.url, _post("step", b'{"id": 1', length="100"))
  assert got == 408 and "did not arrive within 1 s" in body["error"]
  assert time.monotonic() - t0 < 8


def test_silent_connections_do_not_block_other_clients(server):
  idle = [socket.create_connection(server.server_address[:2]) for _ in range(6)]  # more than its 4 threads
  try:
    t0 = time.monotonic()
    assert agentgym_load.post(server.url, "create", {}, timeout=20)["id"] >= 0
    assert time.monotonic() - t0 < 10  # idle connections are dropped after read_timeout (1 s)
  finally:
    for s in idle:
      s.close()


def test_the_server_still_serves_after_every_bad_request(server):
  for bad in (_post("step", b"\xff"), _post("step", b"{}", length="-1"), _post("x", b"")):
    _raw(server.url, bad)
  env_id = _instance(server.url)
  step = agentgym_load.post(server.url, "step", {"id": env_id, "action": "turn left"})
  assert not step["done"] and step["available_actions"]


def test_listen_backlog_and_loopback_by_default(server):
  assert server.request_queue_size >= 128
  assert server.server_address[0] == "127.0.0.1"


def test_client_reports_an_unknown_instance_clearly(server):
  client = make_client(server.url, "babyai")
  client.reset("0")
  agentgym_load.post(server.url, "close", {"id": client._id})  # as if the server had forgotten it
  step = client.step("turn left")
  assert step.done and not step.success and "HTTP 404: unknown env instance id=" in step.info["env_error"]


# ---- load: 32 clients at once, as AgentGym's clients send (a connection per request, no retry) --------

def _no_loss_and_sequential_episodes(url: str, clients: int, steps: int, runs: int) -> None:
  indices = list(range(clients))
  expected = agentgym_load.sequential("babyai", indices, steps)
  for _ in range(runs):
    result = agentgym_load.concurrent(url, indices, steps)
    assert [e for e in result["errors"] if e] == []
    assert result["episodes"] == expected


def test_concurrent_clients_lose_nothing_and_match_a_sequential_run_quick():
  server = serve("babyai", threads=8)
  try:
    _no_loss_and_sequential_episodes(server.url, clients=12, steps=5, runs=1)
  finally:
    server.close()


@pytest.mark.slow
def test_32_concurrent_clients_by_20_steps_lose_nothing_over_3_runs():
  proc, url = agentgym_load.start_server("babyai")
  try:
    _no_loss_and_sequential_episodes(url, clients=32, steps=20, runs=3)
  finally:
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()


# ---- restarts: ids from before a restart are unknown, never someone else's env ------------------------

def test_instance_ids_differ_across_server_starts():
  first = serve("babyai")
  port = first.server_address[1]
  old = _instance(first.url)
  first.close()
  second = serve("babyai", port=port)
  try:
    new = _instance(second.url)
    assert new != old
    got, body = _raw(second.url, _post("step", json.dumps({"id": old, "action": "turn left"}).encode()))
    assert got == 404 and f"unknown env instance id={old}" in body["error"]
  finally:
    second.close()


def test_server_killed_and_restarted_mid_episode_gives_the_old_client_unknown_instance():
  proc, url = agentgym_load.start_server("babyai")
  procs = [proc]
  try:
    raw_id = _instance(url)  # an AgentGym client, raw requests
    client = make_client(url, "babyai", retries=0)  # our client
    client.reset("0")
    assert not client.step("turn left").done
    proc.kill()
    proc.wait(timeout=30)
    port = urllib.parse.urlsplit(url).port
    proc, again = agentgym_load.start_server("babyai", f"--port={port}")
    procs.append(proc)
    assert again == url
    _instance(url)  # someone else's env on the restarted server
    got, body = _raw(url, _post("step", json.dumps({"id": raw_id, "action": "turn left"}).encode()))
    assert got == 404 and f"unknown env instance id={raw_id}" in body["error"]
    lost = client.step("turn left")
    assert lost.done and "unknown env instance" in lost.info["env_error"]
    client.reset("0")  # and a new episode works on the new server
    assert not client.step("turn left").done
  finally:
    for p in procs:
      p.kill()
      p.wait(timeout=30)
      p.stdout.close()


# ---- dialect fidelity ----------------------------------------------------------------------------------

def test_sciworld_dialect_scores_out_of_100_and_our_client_reads_0_to_1():
  server = serve("searchqa", dialect=DIALECTS["sciworld"])  # sciworld's spelling, a fast env behind it
  try:
    client = make_client(server.url, "sciworld")
    task = client.tasks("test")[0]
    env_id = agentgym_load.post(server.url, "create", {})["id"]
    agentgym_load.post(server.url, "reset", {"id": env_id, "task": task})
    client.reset(task)
    for action in client.expert(task):
      raw = agentgym_load.post(server.url, "step", {"id": env_id, "action": action})
      step = client.step(action)
    assert (raw["score"], raw["reward"]) == (100.0, 100.0)
    assert (step.score, step.reward, step.success) == (1.0, 1.0, True)
  finally:
    server.close()


@pytest.mark.java
def test_sciworld_server_scores_a_solved_task_100_in_agentgym_dialect():
  server = serve("sciworld")
  try:
    client = make_client(server.url, "sciworld")
    task = client.tasks("test", "easy")[0]
    actions = client.expert(task)
    client.reset(task)
    for action in actions:
      step = client.step(action)
      if step.done:
        break
    assert step.success and step.score == 1.0
    env_id = agentgym_load.post(server.url, "create", {})["id"]  # the same episode, raw
    agentgym_load.post(server.url, "reset", {"id": env_id, "task": task})
    raws = []
    for action in actions:
      raws.append(agentgym_load.post(server.url, "step", {"id": env_id, "action": action}))
      if raws[-1]["done"]:
        break
    assert raws[-1]["score"] == 100.0 and sum(r["reward"] for r in raws) == pytest.approx(100.0)
  finally:
    server.close()


def test_agentgym_task_ids_map_babyai_indices_to_agentgym_levels_and_seeds():
  from envs.babyai import AGENTGYM_LEVELS
  local = envs.make("babyai")
  server = serve("babyai", agentgym_task_ids=True)
  try:
    for index, task in ((0, "GoToRedBallGrey/0"), (41, "GoToRedBall/1"), (79, "BossLevelNoUnlock/1")):
      assert f"{AGENTGYM_LEVELS[index % 40]}/{index // 40}" == task
      env_id = agentgym_load.post(server.url, "create", {})["id"]
      reset = agentgym_load.post(server.url, "reset", {"id": env_id, "data_idx": index})
      assert reset["task"] == task and reset["observation"] == local.reset(task).text
  finally:
    server.close()
    local.close()


def test_agentgym_task_ids_is_refused_for_envs_numbered_alike():
  with pytest.raises(ValueError, match="applies to babyai, sciworld"):
    serve("textcraft", agentgym_task_ids=True)


@pytest.mark.java
def test_agentgym_task_ids_map_sciworld_indices_to_agentgym_task_variations():
  local = envs.make("sciworld")
  server = serve("sciworld", agentgym_task_ids=True)
  try:
    tasks = local.agentgym_tasks()
    assert tasks[:2] == ["boil/0", "boil/1"] and not any(t.startswith("inclined-plane") for t in tasks[:1])
    env_id = agentgym_load.post(server.url, "create", {})["id"]
    reset = agentgym_load.post(server.url, "reset", {"id": env_id, "data_idx": 30})
    assert reset["task"] == tasks[30] and reset["observation"] == local.reset(tasks[30]).text
  finally:
    server.close()
    local.close()


def test_client_error_on_a_refused_request_is_one_line(server):
  client = make_client(server.url, "babyai")
  with pytest.raises(AgentGymError, match=r"HTTP 400: data_idx=\d+ out of range") as e:
    client.reset(str(10 ** 9))
  assert "\n" not in str(e.value)
