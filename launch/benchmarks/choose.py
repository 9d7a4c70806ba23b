"""Choose-mode learning against generate-mode learning on the same episodes: the cost per episode token of
scoring every listed candidate (issue 12's target: at most 1.5x), and one choose-mode GRPO iteration, at
launch/configs/study_cross_env_small.py's settings for each of its envs (TextCraft lists ~14 candidates a
turn, BabyAI ~6 short ones). `run(quick)` / `compare(baseline)` -> rows.

The episodes are rolled out once (the untrained tiny model plays every turn: the largest batches); each tree
then scores and trains on the very same episodes in a fresh process, in both modes (generate mode over the
same tokens, its loss on the chosen actions' tokens), so the ratio is free of episode-length effects.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

import jax

from launch.benchmarks import e2e

TARGET = 1.5  # choose-mode learning cost per episode token, relative to generate mode

# Run inside a tree (cwd and PYTHONPATH = its root), with APIs that exist at the baseline too: the learn
# step of rl_loop.rl_train (learner_batch, then train_epochs) timed in both modes, alternating.
_DRIVER = """
import json, pickle, statistics, sys, time
import jax
from agentgen_jax import agent as agent_lib
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import learner
folder, repeats = sys.argv[1], int(sys.argv[2])
with open(folder + "/episodes.pkl", "rb") as f:
  episodes, c = pickle.load(f)
policy = agent_lib.from_config(c)
lcfg = c.learner
runs, states, updates, shapes = {}, {}, {}, {}
for mode in ("generate", "choose"):
  states[mode] = learner.init_state(policy.cfg, policy.params, lcfg, jax.random.PRNGKey(0))
  updates[mode] = learner.make_update(policy.cfg, lcfg, mode=mode)
  runs[mode] = []
def learn(mode):
  start = time.perf_counter()
  batch, _ = rl_batch.learner_batch(episodes, states[mode], policy.cfg, lcfg, mode)
  states[mode], _ = learner.train_epochs(updates[mode], states[mode], batch, jax.random.PRNGKey(1), lcfg)
  jax.block_until_ready(states[mode])
  shapes[mode] = {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
  return time.perf_counter() - start
for mode in runs:  # compiles
  learn(mode)
for _ in range(repeats):
  for mode in runs:
    runs[mode].append(learn(mode))
print("CHOOSE_JSON " + json.dumps({"runs": runs, "shapes": shapes}))
"""


ENVS = ("textcraft", "babyai")


def config(quick: bool, env: str = "textcraft"):
  """The `env` stage of launch/configs/study_cross_env_small.py (resolved), from the untrained tiny model
  (the study warm-starts it by SFT; untrained, episodes run longest: the largest batches)."""
  from agentgen_jax import config as config_lib
  from launch.configs import study_cross_env_small, study_small
  c = study_cross_env_small.get_config()
  c.envs = (env,)
  if quick:
    c = study_small.smoke(c)
  return config_lib.resolve(c)


def rollout_episodes(quick: bool, env: str):
  """(episodes, seconds) of one warm rollout of the `env` stage's iteration (after one that compiles)."""
  from agentgen_jax import agent as agent_lib
  from agentgen_jax import rollout
  from agentgen_jax.tasks import TaskStream, make_pool
  c = config(quick, env)
  policy = agent_lib.from_config(c)
  with make_pool(c, c.envs) as pool:
    roller = rollout.Roller(policy.cfg, policy.tokenizer, pool, c.rollout)
    stream = TaskStream.training(c, pool, c.seed)
    for it in range(2):
      tasks = [t for t in stream.next(c.tasks_per_iteration) for _ in range(c.group_size)]
      start = time.perf_counter()
      episodes = roller.run(policy.params, tasks, jax.random.fold_in(jax.random.PRNGKey(c.seed), it))
      seconds = time.perf_counter() - start
  for ep in episodes:
    ep.last_obs = None  # env objects need not travel to the other tree
  return episodes, seconds


def _measure_tree(root: str, folder: str, repeats: int) -> dict:
  """The learn step timed in a fresh Python process running the code of the tree at `root` on the
  episodes and config pickled in `folder`."""
  env = dict(os.environ, PYTHONPATH=root)
  proc = subprocess.run([sys.executable, "-c", _DRIVER, folder, str(repeats)], cwd=root, env=env,
                        capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("CHOOSE_JSON ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"the choose benchmark failed in {root} (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("CHOOSE_JSON "):])


def _row(env, metric, ours, reference=None, reference_name="", unit="s", target="", met=None, notes=""):
  name = {"textcraft": "TextCraft", "babyai": "BabyAI"}.get(env, env)
  return {"group": f"choose-mode learning vs generate mode (same {name} episodes)", "metric": metric,
          "ours": ours, "reference": reference, "reference_name": reference_name, "unit": unit,
          "target": target, "met": met, "notes": notes}


def measure(trees: dict[str, str], quick: bool, repeats: int, env: str) -> tuple[dict, float, dict]:
  """({tree name: driver output}, rollout seconds, facts) for the named tree roots, on one episode set."""
  episodes, rollout_s = rollout_episodes(quick, env)
  facts = {"episodes": len(episodes), "episode_tokens": sum(len(ep.tokens) for ep in episodes),
           "turns": sum(ep.turns for ep in episodes),
           "candidate_tokens": sum(len(c) for ep in episodes for cands, _, _ in ep.choices for c in cands)}
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "episodes.pkl"), "wb") as f:
      pickle.dump((episodes, config(quick, env)), f)
    out = {name: _measure_tree(root, tmp, repeats) for name, root in trees.items()}
  return out, rollout_s, facts


def rows(out: dict, rollout_s: float, facts: dict, baseline: str | None, load, quick: bool,
         env: str) -> list[dict]:
  median = lambda tree, mode: statistics.median(out[tree]["runs"][mode])
  c = config(quick, env)
  setup = (f"tiny model (untrained) float32, {env} easy, study_cross_env_small's {env} stage: "
           f"{c.tasks_per_iteration} tasks x group {c.group_size}, max_turns {c.rollout.max_turns}, "
           f"max_episode_tokens {c.rollout.max_episode_tokens}, GRPO, micro-batch "
           f"{c.learner.micro_batch_size}, mini-batch {c.learner.mini_batch_size}; {facts['episodes']} "
           f"episodes, {facts['turns']} turns, {facts['episode_tokens']} episode tokens, "
           f"{facts['candidate_tokens']} candidate tokens; medians of "
           f"{len(out['current']['runs']['choose'])} warm learn steps per mode, alternating; load average "
           f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores shared with other jobs; choose batch "
           "shapes "
           + ", ".join(f"{k} {v}" for k, v in out["current"]["shapes"]["choose"].items()
                       if k in ("tokens", "branch_tokens", "pred_rows", "node_token", "cand_path")))
  ref = (lambda mode: median("baseline", mode)) if baseline else (lambda mode: None)
  ref_name = f"commit {baseline}" if baseline else ""
  ratio = median("current", "choose") / median("current", "generate")
  ref_ratio = ref("choose") / ref("generate") if baseline else None
  current = median("current", "choose")
  out_rows = [
      _row(env, "choose-mode learning (learner batch + GRPO update)", current, ref("choose"),
           ref_name, notes=setup),
      _row(env, "generate-mode learning, same episodes", median("current", "generate"), ref("generate"),
           ref_name),
      _row(env, "choose / generate learning cost per episode token", ratio, ref_ratio, ref_name, unit="x",
           target=f"<= {TARGET:g}", met=ratio <= TARGET,
           notes="both modes learn from the same episode tokens; choose mode also scores every unchosen "
                 "candidate" + (f"; the baseline's ratio is {ref_ratio:.2f}" if baseline else "")),
      _row(env, "choose-mode GRPO iteration (rollout + learning)", rollout_s + current,
           rollout_s + ref("choose") if baseline else None, ref_name,
           notes=f"one warm rollout of this tree ({rollout_s:.1f} s; the rollout is the same code in both "
                 "trees) plus each tree's learn step; no checkpoint or records")]
  return out_rows


def compare(baseline: str, quick: bool = False, repeats: int = 3) -> list[dict]:
  """Both trees on the same episodes: this one and `baseline` (a commit, checked out in a temporary git
  worktree, removed after)."""
  root = e2e._repo_root()
  commit = subprocess.run(["git", "rev-parse", "--short", baseline], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
  out_rows = []
  with e2e.worktree(root, baseline) as tree:
    for env in ENVS:
      load = [os.getloadavg()[0]]
      out, rollout_s, facts = measure({"current": root, "baseline": tree}, quick, repeats, env)
      load.append(os.getloadavg()[0])
      out_rows += rows(out, rollout_s, facts, commit, load, quick, env)
  return out_rows


def run(quick: bool, repeats: int = 3) -> list[dict]:
  out_rows = []
  for env in ENVS:
    load = [os.getloadavg()[0]]
    out, rollout_s, facts = measure({"current": e2e._repo_root()}, quick, repeats, env)
    load.append(os.getloadavg()[0])
    out_rows += rows(out, rollout_s, facts, None, load, quick, env)
  return out_rows
