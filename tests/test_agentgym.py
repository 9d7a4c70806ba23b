"""AgentGym's HTTP protocol over loopback, for real: our client against our server (expert episodes), the
request sequences of AgentGym's own clients, errors, a killed server and the client's recovery."""

import json
import pathlib
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

import envs
from envs.agentgym import DIALECTS, AgentGymError, make_client, serve

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def searchqa_server():
  server = serve("searchqa")
  yield server
  server.close()


def _call(url, path, body=None, method=None):
  """One raw request as AgentGym's clients send it (requests.post/get); POST when there is a body."""
  data = json.dumps(body).encode() if body is not None else None
  method = method or ("POST" if data is not None else "GET")
  request = urllib.request.Request(f"{url}/{path}", data=data, method=method,
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.loads(response.read())


def _status(url, path, body=None):
  """(HTTP status, JSON body) of a request that may fail."""
  try:
    return 200, _call(url, path, body)
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _run_expert(client, task):
  obs = client.reset(task)
  step = None
  for action in client.expert(task):
    step = client.step(action)
    if step.done:
      break
  return obs, step


# ---- our client <-> our server ------------------------------------------------------------------------

@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_searchqa_expert_episodes_succeed_over_loopback(searchqa_server, difficulty):
  client = make_client(searchqa_server.url, "searchqa")
  local = envs.make("searchqa")
  tasks = client.tasks("test", difficulty)
  assert tasks == local.tasks("test", difficulty)
  for task in tasks[:10]:
    obs = client.reset(task)
    assert obs.text == local.reset(task).text
    for action in client.expert(task):
      step, expected = client.step(action), local.step(action)
      assert step.observation.text == expected.observation.text
      assert (step.reward, step.done, step.success, step.score) == (expected.reward, expected.done,
                                                                    expected.success, expected.score)
    assert step.success and step.info["em"] == 1.0
  client.close()


def test_client_parses_model_output_like_the_env(searchqa_server):
  client = make_client(searchqa_server.url, "searchqa")
  client.reset(client.tasks("test")[0])
  assert client.instruction == envs.make("searchqa").instruction
  bad = client.act("<search>never closed")
  assert bad.info["invalid"] and "not closed" in bad.observation.text
  good = client.act("<think>look it up</think><search>Velaria</search>")
  assert not good.info["invalid"] and good.observation.text.startswith("<information>")
  assert client.parse(client.format_action("<answer>x</answer>", "sure")) == "<answer>x</answer>"


def test_data_index_names_test_tasks_then_train_tasks(searchqa_server):
  client = make_client(searchqa_server.url, "searchqa")
  local = envs.make("searchqa")
  n_test = len(local.tasks("test"))
  assert client.reset("3").text == local.reset(local.tasks("test")[3]).text
  assert client.reset(str(n_test)).text == local.reset(local.tasks("train")[0]).text
  with pytest.raises(AgentGymError, match="out of range"):
    client.reset(str(10 ** 7))


@pytest.mark.parametrize("name", ["babyai", "textcraft", "webshop",
                                  pytest.param("alfworld", marks=pytest.mark.slow)])
def test_other_env_expert_episodes_over_loopback(name):
  try:
    local = envs.make(name)
  except ImportError as e:
    pytest.skip(f"{name} is not available: {e}")
  server = serve(name)
  try:
    client = make_client(server.url, name)
    for task in client.tasks("test")[:3]:
      obs, step = _run_expert(client, task)
      expected = local.reset(task)
      assert (obs.text, obs.valid_actions) == (expected.text, expected.valid_actions)
      assert step is not None and step.success and step.score == 1.0
    client.close()
  finally:
    server.close()


@pytest.mark.parametrize("dialect", ["babyai", "alfworld", "webshop", "sciworld"])
def test_client_and_server_agree_in_every_dialect(dialect):
  server = serve("searchqa", dialect=DIALECTS[dialect])
  try:
    client = make_client(server.url, dialect)  # that dialect's field names, searchqa behind them
    client.reset("0")  # a data index, sent in the dialect's own reset field
    for action in client.expert(client.tasks("test")[0]):
      step = client.step(action)
    assert step.success and step.done and step.reward == 1.0
  finally:
    server.close()


def test_concurrent_clients_get_their_own_instances(searchqa_server):
  tasks = envs.make("searchqa").tasks("test", "hard")[:12]
  results = {}

  def worker(part):
    client = make_client(searchqa_server.url, "searchqa")
    for task in part:
      results[task] = _run_expert(client, task)[1].success
    client.close()

  threads = [threading.Thread(target=worker, args=(tasks[i::4],)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert results == {task: True for task in tasks}


def test_client_runs_in_envpool_workers(searchqa_server, monkeypatch):
  from envs import registry

  # Registered for this test only (monkeypatch restores the registry): the pool's workers import it.
  monkeypatch.setitem(registry._REGISTRY, "agentgym", "envs.agentgym:AgentGymEnv")
  kwargs = {"agentgym": {"url": searchqa_server.url, "env_name": "searchqa"}}
  with envs.EnvPool("agentgym", size=4, workers=2, env_kwargs=kwargs) as pool:
    tasks = [("agentgym", t) for t in pool.tasks("agentgym", "test", "hard")[:4]]
    pool.reset(tasks)
    experts = pool.expert(tasks)
    for turn in range(3):
      steps = pool.step([pool.format_action("agentgym", e[turn]) for e in experts])
  assert [s.success for s in steps] == [True] * 4


# ---- the request sequences of AgentGym's own clients (agentenv/envs/*.py) -----------------------------

def test_agentgym_searchqa_client_sequence(searchqa_server):
  url = searchqa_server.url
  env_idx = _call(url, "create", {"id": 0})
  assert isinstance(env_idx, int)
  question = _call(url, "reset", {"env_idx": env_idx, "id": 5})
  assert isinstance(question, str) and question.startswith("Question:")
  step = _call(url, "step", {"env_idx": env_idx, "action": "<think>hmm</think>\n<search>Velaria</search>"})
  assert {"observation", "reward", "done"} <= set(step) and not step["done"]
  assert step["observation"].startswith("<information>")
  assert _call(url, f"observation?env_idx={env_idx}") == step["observation"]
  assert _call(url, "close", {"env_idx": env_idx}) == {"closed": True}
  status, body = _status(url, "step", {"env_idx": env_idx, "action": "<search>x</search>"})
  assert status == 404 and "unknown env instance" in body["error"]


def test_agentgym_babyai_and_webshop_client_sequences():
  server = serve("searchqa", dialect=DIALECTS["babyai"])
  try:
    env_id = _call(server.url, "create", method="POST")["id"]
    reset = _call(server.url, "reset", {"id": env_id, "data_idx": 0})
    assert {"observation", "reward", "score", "done"} <= set(reset)
    step = _call(server.url, "step", {"id": env_id, "action": "<answer>no idea</answer>"})
    assert {"observation", "reward", "score", "done"} <= set(step) and step["done"]
  finally:
    server.close()
  server = serve("searchqa", dialect=DIALECTS["webshop"])
  try:
    env_idx = _call(server.url, "create", method="POST")
    first = _call(server.url, "reset", {"env_idx": env_idx, "session_id": 2})
    assert first[1] is None and _call(server.url, f"observation?env_idx={env_idx}") == first[0]
    step = _call(server.url, "step", {"env_idx": env_idx, "action": "<search>Velaria</search>"})
    assert {"state", "reward", "done", "info"} <= set(step)
    assert _call(server.url, f"available_actions?env_idx={env_idx}") == {"has_search_bar": False,
                                                                         "clickables": []}
  finally:
    server.close()


# ---- errors -------------------------------------------------------------------------------------------

def test_server_errors_are_one_line_json(searchqa_server):
  url = searchqa_server.url
  status, unknown = _status(url, "step", {"env_idx": 12345, "action": "<search>x</search>"})
  assert status == 404 and "unknown env instance env_idx=12345" in unknown["error"]
  assert "\n" not in unknown["error"]
  status, body = _status(url, "nowhere")
  assert status == 404 and "routes:" in body["error"]
  with pytest.raises(ValueError, match="unknown env 'nope'"):
    serve("nope")


def test_unreachable_server_is_a_one_line_error():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # free, and nobody listens once the socket is closed
  client = make_client(f"http://127.0.0.1:{port}", "searchqa", retries=2, backoff=0.01)
  with pytest.raises(AgentGymError) as e:
    client.reset("0")
  message = str(e.value)
  assert "\n" not in message and f"127.0.0.1:{port} is unreachable" in message and "after 3 tries" in message


def test_silent_server_times_out_with_a_one_line_error():
  with socket.socket() as listener:  # accepts connections (backlog) but never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    client = make_client(f"http://127.0.0.1:{listener.getsockname()[1]}", "searchqa", timeout=0.3,
                         retries=1, backoff=0.01)
    with pytest.raises(AgentGymError, match="timed out") as e:
      client.tasks("test")
    assert "\n" not in str(e.value)


def _start(port):
  proc = subprocess.Popen([sys.executable, "-m", "envs.agentgym", "--env=searchqa", f"--port={port}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  line = proc.stdout.readline()
  assert line.startswith("serving searchqa at http://127.0.0.1:"), line
  return proc, line.split()[-1]


def test_killed_server_fails_cleanly_and_the_client_recovers_when_it_is_back():
  proc, url = _start(0)
  procs = [proc]
  try:
    client = make_client(url, "searchqa", retries=2, backoff=0.05)
    task = client.tasks("test", "hard")[0]
    actions = client.expert(task)
    client.reset(task)
    assert not client.step(actions[0]).done
    proc.kill()
    proc.wait(timeout=30)
    lost = client.step(actions[1])
    assert lost.done and not lost.success and "\n" not in lost.info["env_error"]
    assert f"{url} is unreachable" in lost.info["env_error"]
    with pytest.raises(AgentGymError, match="is unreachable") as e:
      client.reset(task)
    assert "\n" not in str(e.value)
    proc, again = _start(int(url.rsplit(":", 1)[1]))  # back on the same port
    procs.append(proc)
    assert again == url
    client.reset(task)
    for action in actions:
      step = client.step(action)
    assert step.success
  finally:
    for p in procs:
      p.kill()
      p.wait(timeout=30)
      p.stdout.close()

