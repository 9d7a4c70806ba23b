"""TextWorld-Express env: seed-fold splits, difficulty presets, expert replay, valid actions, reward =
score delta, failure, fuzzing, determinism and JVM cleanup, against the package's own games and gold paths."""

import os
import pickle
import subprocess
import sys

import psutil
import pytest
from textworld_express.constants import GAME_NAMES

import envs
from envs import twx
from tests import env_checks

pytestmark = pytest.mark.java


@pytest.fixture(scope="module")
def env():
  env = envs.make("twx")
  yield env
  env.close()


def test_splits_are_the_packages_seed_folds_and_disjoint(env):
  train, test = env.tasks("train"), env.tasks("test")
  assert not set(train) & set(test)
  # The package's folds: train seeds 0-999, test seeds 20000-20999, for every game and parameter set.
  assert {twx.parse_task(t)[2] for t in train} == set(range(1000))
  assert {twx.parse_task(t)[2] for t in test} == set(range(20000, 21000))
  easy, hard = env.tasks("test", "easy"), env.tasks("test", "hard")
  assert len(easy) == 6000 and len(hard) == 7000 and sorted(easy + hard) == sorted(test)
  assert {twx.parse_task(t)[0] for t in test} == set(GAME_NAMES)


def test_task_list_prefix_spans_games(env):
  for difficulty in ("easy", "hard"):
    n = len(twx.GAME_PARAMS[difficulty])
    first = env.tasks("test", difficulty)[:n]
    assert {twx.parse_task(t)[0] for t in first} == set(twx.GAME_PARAMS[difficulty])


def test_difficulty_presets_are_accepted_by_the_package(env):
  for level in ("easy", "hard"):
    for game, params in twx.GAME_PARAMS[level].items():
      assert not env._sim().load(game, params), (game, params)
      env._loaded = None


def test_hard_games_are_larger_than_easy(env):
  def mean_gold(difficulty, game):
    tasks = [t for t in env.tasks("test", difficulty) if t.startswith(game + "/")][:10]
    return sum(len(env.expert(t)) for t in tasks) / len(tasks)
  for game in ("twc", "cookingworld", "coin", "mapreader", "simonsays"):
    assert mean_gold("hard", game) > 1.2 * mean_gold("easy", game), game


def test_a_seed_the_generator_gives_up_on_is_a_value_error(env):
  params = "numLocations=8,maxDistanceApart=4,maxDistractorItemsPerLocation=3"
  with pytest.raises(ValueError, match="cannot generate"):
    env.reset(f"mapreader/{params}/20030")
  assert env.reset(env.tasks("test")[0]).valid_actions  # the env still works


def test_bad_task_ids_raise_one_line(env):
  task = env.tasks("test")[0]
  before = env.reset(task)
  for bad in ("coin/20000", "chess//20000", "coin//x", "coin/numRooms=3/20000", "coin//5000"):
    with pytest.raises(ValueError, match="twx"):
      env.reset(bad)
  with pytest.raises(ValueError, match="valid: easy, hard, all"):
    env.tasks("test", "medium")
  assert env.reset(task) == before  # a rejected game-parameter string leaves no trace


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay_fast(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=len(twx.GAME_PARAMS[difficulty]))
  assert rate == 1.0, failed


def test_valid_actions_are_listed_and_contain_the_gold_path(env):
  task = env.tasks("test", "hard")[0]
  obs = env.reset(task)
  for action in env.expert(task):
    assert action in obs.valid_actions
    assert obs.valid_actions == sorted(obs.valid_actions)
    step = env.step(action)
    obs = step.observation
    if step.done:  # TWC's gold path may go on after the last item is put away
      break
  assert step.success


def test_reward_is_score_delta_and_success_is_full_score(env):
  task = next(t for t in env.tasks("test", "hard") if t.startswith("cookingworld/"))
  env.reset(task)
  scores, rewards = [0.0], []
  for action in env.expert(task):
    step = env.step(action)
    env_checks.check_step(step, env.name)
    scores.append(step.score)
    rewards.append(step.reward)
    if step.done:
      break
  assert step.done and step.success and step.score == 1.0
  assert rewards == pytest.approx([b - a for a, b in zip(scores, scores[1:])], abs=1e-12)
  assert any(0 < s < 1 for s in scores), "cooking gives partial credit per recipe step"


def test_cutting_an_ingredient_the_wrong_way_fails_the_task(env):
  task = next(t for t in env.tasks("test", "easy") if t.startswith("cookingworld/"))
  gold = env.expert(task)
  k = next(i for i, a in enumerate(gold) if a.split()[0] in ("slice", "dice", "chop"))
  verb, item = gold[k].split(" ", 1)
  wrong = f"{'chop' if verb != 'chop' else 'slice'} {item}"  # the recipe asks for `verb`
  env.reset(task)
  for action in gold[:k]:
    env.step(action)
  step = env.step(wrong)
  assert step.done and not step.success and not step.info["invalid"]
  assert env.step(gold[k]).info["invalid"]  # the episode is over


def test_rejected_actions_are_invalid_steps_and_change_nothing(env):
  task = env.tasks("test", "easy")[0]
  obs = env.reset(task)
  for text in ("Action: xyzzy", "Action: move north " * 50, "Thought: hmm", "Action: LOOK AROUND!"):
    step = env.act(text)
    env_checks.check_step(step, env.name)
    assert step.info["invalid"] and not step.done and step.reward == 0.0
    assert step.observation.valid_actions == obs.valid_actions
  assert not env.act("Action: LOOK   Around").info["invalid"]  # case and spacing are forgiven


def test_fuzz_2000(env):
  task = env.tasks("test", "easy")[0]
  invalid = env_checks.fuzz(env, task, env_checks.malformed_outputs(seed=0, n=2000))
  assert invalid >= 1900


def test_expert_call_mid_episode_keeps_the_episode(env):
  task = next(t for t in env.tasks("test", "hard") if t.startswith("twc/"))
  env.reset(task)
  gold = env.expert(task)
  for action in gold[:3]:
    env.step(action)
  env.expert(env.tasks("test", "hard")[5])  # generates another game inside the simulator
  for action in gold[3:]:
    step = env.step(action)
    if step.done:
      break
  assert step.success


def test_same_first_observation_in_another_process(env):
  task, text, actions = env_checks.first_observation_in_process("twx", split="test", index=1)
  obs = env.reset(task)
  assert (text, actions) == (obs.text, obs.valid_actions)


def test_close_leaves_no_java_process():
  env = envs.make("twx")
  env.reset(env.tasks("test")[0])
  pid = env.java_pid
  assert psutil.Process(pid).is_running()
  env.close()
  assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
  env.close()  # idempotent


@pytest.mark.slow
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay_50_tasks(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, failed


@pytest.mark.slow
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay_every_game_on_train(env, difficulty):
  n = 70 * len(twx.GAME_PARAMS[difficulty])  # 70 tasks of each game
  rate, failed = env_checks.expert_success_rate(env, "train", difficulty, n=n)
  assert rate >= 0.95, failed


@pytest.mark.slow
def test_every_preset_generates_every_seed(env):
  sim = env._sim()
  for level in ("easy", "hard"):
    for game, params in twx.GAME_PARAMS[level].items():
      assert not sim.load(game, params)
      env._loaded = None
      for fold, split in (("train", "train"), ("test", "test")):
        for seed in env._seeds()[split]:
          sim.generateNewGameJSON(seed, fold, True)  # raises if the generator gives up


def test_a_dead_jvm_ends_the_episode_and_the_next_reset_restarts_it():
  env = envs.make("twx")
  task = env.tasks("test")[0]
  obs = env.reset(task)
  old = env.java_pid
  proc = psutil.Process(old)
  proc.kill()
  try:
    proc.wait(timeout=10)
  except psutil.NoSuchProcess:  # already reaped by its parent: dead either way
    pass
  step = env.step(obs.valid_actions[0])
  env_checks.check_step(step, env.name)
  assert step.done and not step.success and "env_error" in step.info
  assert env.reset(task) == obs and env.java_pid != old
  env.close()


def test_pickled_env_is_a_fresh_copy_with_its_own_jvm(env):
  task = env.tasks("test")[3]
  obs = env.reset(task)
  copy = pickle.loads(pickle.dumps(env))
  try:
    assert copy.java_pid is None and copy.last_observation is None
    assert copy.reset(task) == obs and copy.java_pid != env.java_pid
  finally:
    copy.close()


def test_the_jvm_dies_with_its_python_process():
  # What a crashed or killed EnvPool worker leaves behind: nothing (py4j's die_on_exit watches stdin).
  code = ("import envs, sys; env = envs.make('twx'); env.reset(env.tasks('test')[0]); "
          "print(env.java_pid, flush=True); sys.stdin.read()")
  worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), text=True)
  java_pid = int(worker.stdout.readline())
  assert psutil.Process(java_pid).is_running()
  worker.kill()
  worker.wait(timeout=10)
  gone, alive = psutil.wait_procs([psutil.Process(java_pid)], timeout=20)
  assert not alive
