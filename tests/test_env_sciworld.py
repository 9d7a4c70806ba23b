"""ScienceWorld env: splits, expert replay, reward = score delta, failure, fuzzing, determinism and JVM
cleanup, against the package's own numbers (gold paths, variation splits)."""

import psutil
import pytest

import envs
from envs import sciworld
from tests import env_checks

pytestmark = pytest.mark.java


@pytest.fixture(scope="module")
def env():
  env = envs.make("sciworld")
  yield env
  env.close()


def _java_children() -> list[psutil.Process]:
  return [p for p in psutil.Process().children(recursive=True) if "java" in p.name()]


def test_splits_are_the_packages_and_disjoint(env):
  train, test = env.tasks("train"), env.tasks("test")
  assert not set(train) & set(test)
  # The package splits "boil" (30 variations) into train 0-13, dev 14-20, test 21-29.
  assert sorted(int(t.split("/")[1]) for t in test if t.startswith("boil/")) == list(range(21, 30))
  assert sorted(int(t.split("/")[1]) for t in train if t.startswith("boil/")) == list(range(14))
  easy, hard = env.tasks("test", "easy"), env.tasks("test", "hard")
  assert not set(easy) & set(hard) and sorted(easy + hard) == sorted(test)
  assert {sciworld.parse_task(t)[0] for t in easy} == set(sciworld.EASY_TASKS)
  assert len({sciworld.parse_task(t)[0] for t in test}) == 30


def _package_splits(env, name):
  sim = env._sim()
  sim.load(name, 0, "", False)
  return list(sim.getVariationsTrain()), list(sim.getVariationsDev()), list(sim.getVariationsTest())


@pytest.mark.parametrize("name", ["boil", "chemistry-mix", "identify-life-stages-2"])
def test_variation_splits_match_the_package(env, name):
  count = env._sim().getTaskMaxVariations(name)
  assert sciworld.variation_splits(count) == _package_splits(env, name)


@pytest.mark.slow
def test_variation_splits_match_the_package_for_every_task(env):
  for name in env._splits()["test"]:
    count = env._sim().getTaskMaxVariations(name)
    assert sciworld.variation_splits(count) == _package_splits(env, name), name


def test_task_list_prefix_spans_families(env):
  first = env.tasks("test", "easy")[:len(sciworld.EASY_TASKS)]
  assert {sciworld.parse_task(t)[0] for t in first} == set(sciworld.EASY_TASKS)


def test_bad_task_id_and_split_raise_one_line(env):
  for bad in ("boil", "boil/x", "no-such-task/3"):
    with pytest.raises(ValueError, match="sciworld task"):
      env.reset(bad)
  with pytest.raises(ValueError, match="valid: train, test"):
    env.tasks("dev")


def test_expert_replay_fast(env):
  rate, failed = env_checks.expert_success_rate(env, "test", "easy", n=5)
  assert rate == 1.0, failed


def test_reward_is_score_delta_and_success_is_full_score(env):
  task = env.tasks("test", "easy")[2]
  env.reset(task)
  scores, rewards = [0.0], []
  for action in env.expert(task):
    step = env.step(action)
    env_checks.check_step(step, env.name)
    scores.append(step.score)
    rewards.append(step.reward)
  assert step.done and step.success and step.score == 1.0
  assert rewards == pytest.approx([b - a for a, b in zip(scores, scores[1:])], abs=1e-12)
  assert sum(rewards) == pytest.approx(1.0)
  assert any(0 < s < 1 for s in scores), "the package gives partial credit along the gold path"


def test_focus_on_wrong_object_fails_the_task(env):
  env.reset("find-plant/225")
  step = env.act("Thought: the air is surely a plant.\nAction: focus on air")
  assert step.done and not step.success and step.score == 0.0
  assert step.info["raw_score"] < 0 and not step.info["invalid"]
  assert env.act("Action: look around").info["invalid"]  # the episode is over


def test_rejected_actions_are_invalid_steps(env):
  env.reset("find-plant/225")
  for text in ("Action: xyzzy", "Action: " + "look at door " * 100, "no action here: at all", "Action: \x00"):
    step = env.act(text)
    env_checks.check_step(step, env.name)
    assert step.info["invalid"] and not step.done and step.reward == 0.0


def test_fuzz_fast(env):
  outputs = env_checks.malformed_outputs(seed=0, n=300)
  invalid = env_checks.fuzz(env, "find-plant/225", outputs)
  assert invalid >= 250  # nearly all of it is garbage; a few are real actions ("look around")


def test_valid_actions_on_request(env):
  env.valid_actions = True
  try:
    obs = env.reset("use-thermometer/405")
    gold = env.expert("use-thermometer/405")
    assert obs.valid_actions and "look around" in obs.valid_actions
    step = env.step(gold[0])
    assert gold[1] in step.observation.valid_actions
  finally:
    env.valid_actions = False
  assert env.reset("use-thermometer/405").valid_actions is None


def test_expert_call_mid_episode_keeps_the_episode(env):
  task = "find-animal/225"
  env.reset(task)
  gold = env.expert(task)
  for action in gold[:3]:
    env.step(action)
  env.expert("lifespan-longest-lived/93")  # loads another task inside the simulator
  for action in gold[3:]:
    step = env.step(action)
  assert step.success


def test_canonical_listing_sorts_items_with_their_children():
  text = "Room:\n\tb cup\n\ta table. On it:\n\t\tz\n\t\ty\nYou also see:\n\tdoor 2\n\tdoor 1"
  expected = "Room:\n\ta table. On it:\n\t\ty\n\t\tz\n\tb cup\nYou also see:\n\tdoor 1\n\tdoor 2"
  assert sciworld.canonical_listing(text) == expected


def test_first_observation_does_not_drift_with_earlier_loads(env):
  # The simulator reorders same-kind objects (three wood cups of paint here) on every load in a JVM.
  first = env.reset("find-plant/225")
  for task in ("find-plant/226", "find-plant/225"):
    env.reset(task)
  assert env.reset("find-plant/225") == first
  assert "wood cup (containing blue paint)" in first.text


def test_same_first_observation_in_another_process(env):
  task, text, actions = env_checks.first_observation_in_process("sciworld", split="test", index=0)
  obs = env.reset(task)
  assert (text, actions) == (obs.text, obs.valid_actions)
  assert "Task Description" in text


def test_close_leaves_no_java_process():
  env = envs.make("sciworld")
  env.reset("find-plant/225")
  pid = env.java_pid
  assert psutil.Process(pid).is_running()
  env.close()
  assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
  assert pid not in [p.pid for p in _java_children()]
  env.close()  # idempotent


@pytest.mark.slow
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay_50_tasks(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, failed


@pytest.mark.slow
def test_fuzz_2000(env):
  invalid = env_checks.fuzz(env, "find-plant/225", env_checks.malformed_outputs(seed=1, n=2000))
  assert invalid >= 1900


@pytest.mark.slow  # two JVM starts; the same code path is covered fast by tests/test_env_twx.py
def test_a_dead_jvm_ends_the_episode_and_the_next_reset_restarts_it():
  env = envs.make("sciworld")
  obs = env.reset("find-plant/225")
  old = env.java_pid
  psutil.Process(old).kill()
  psutil.Process(old).wait(timeout=10)
  step = env.act("Action: look around")
  env_checks.check_step(step, env.name)
  assert step.done and not step.success and "env_error" in step.info
  assert env.reset("find-plant/225") == obs and env.java_pid != old
  env.close()
