"""One end-to-end RL iteration on the code path of rl_loop.rl_train, split into generation, env stepping,
learning and checkpointing; the target is env time < 10% of the iteration. `run(quick)` -> benchmark rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import jax

from agentgen_jax import agent as agent_lib
from agentgen_jax import checkpoint, data, rollout
from agentgen_jax import config as config_lib
from agentgen_jax.rl import batch as rl_batch
from agentgen_jax.rl import learner
from agentgen_jax.tasks import TaskStream, make_pool

# Where an iteration's seconds go. generate / env / tokenize are the Roller's own timings (rollout.py);
# learn is the learner batch, advantages (with the learner's recompute of log-probs) and the update epochs;
# records is the trajectory JSONL rl_train writes each iteration. What none of them covers is the Python
# bookkeeping of the episode loop ("untimed").
PARTS = ("generate", "env", "tokenize", "learn", "checkpoint", "records")
_DESCRIBE = {"generate": "generation (jitted prefill/decode/candidate scoring)",
             "env": "env stepping (EnvPool reset/step/info)", "tokenize": "chat template (host)",
             "learn": "learning (batch, advantages, PPO/GRPO update)",
             "checkpoint": "checkpointing (orbax, whole TrainState)",
             "records": "trajectory JSONL", "untimed": "untimed host bookkeeping"}
ENV_SHARE_TARGET = 0.10


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  model: str
  mode: str
  tasks: int
  group: int
  max_turns: int
  max_new_tokens: int
  timed: int = 2                        # warm iterations measured (after one that compiles)
  note: str = ""


def settings(quick: bool) -> list[Setting]:
  """(a) the CPU quickstart (tiny model, textcraft easy, both action modes), (b) the embedded SmolLM2."""
  if quick:
    return [Setting("tiny choose", "tiny", "choose", 1, 2, 2, 16),
            Setting("tiny generate", "tiny", "generate", 1, 2, 2, 16),
            Setting("smollm2-135m generate", "smollm2-135m-instruct", "generate", 1, 2, 2, 16, timed=1)]
  # max_turns 4, not the quickstart's 10: the untrained policy plays every turn, and a choice batch packs
  # every listed candidate of every turn; at 10 turns its [B, T, T] attention outgrew 17 GB of memory
  # (before candidates were scored as branches off the context; kept for comparisons with a2df838).
  return [Setting("tiny choose", "tiny", "choose", 4, 4, 4, 48),
          Setting("tiny generate", "tiny", "generate", 4, 4, 4, 48),
          Setting("smollm2-135m generate", "smollm2-135m-instruct", "generate", 1, 2, 3, 32, timed=1,
                  note="shrunk from 2 tasks x group 2: that took over 4 minutes an iteration on this CPU")]


def config(s: Setting):
  """The CPU quickstart's RL settings (as of the textcraft quickstart: GRPO, textcraft easy, episodes of at
  most 1024 tokens), spelled out so that the benchmark does not move when a launch config does."""
  c = config_lib.default_config()
  c.model, c.seed = s.model, 0
  c.envs, c.train_difficulty = ("textcraft",), "easy"
  c.rollout.mode = s.mode
  c.rollout.max_turns = s.max_turns
  c.rollout.max_new_tokens = s.max_new_tokens
  c.rollout.max_episode_tokens = 1024
  c.learner.estimator = "grpo"
  c.tasks_per_iteration, c.group_size = s.tasks, s.group
  c.pool_size, c.workers = s.tasks * s.group, 2
  c.learner.lr = 3e-4
  c.learner.clip_low, c.learner.clip_high = 0.2, 0.28
  # One minibatch of exactly the iteration's episodes (no padded rows computed for nothing), in
  # micro-batches of 2: choice batches pack every candidate, so attention memory grows fast.
  c.learner.mini_batch_size = s.tasks * s.group
  c.learner.micro_batch_size = min(2, s.tasks * s.group)
  c.checkpoint_every, c.max_to_keep = 1, 2
  return c


class _CompileClock:
  """Seconds jax spends tracing, lowering and compiling, summed since the process started."""

  seconds = 0.0
  _registered = False

  @classmethod
  def now(cls) -> float:
    if not cls._registered:
      def listen(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
          cls.seconds += duration
      jax.monitoring.register_event_duration_secs_listener(listen)
      cls._registered = True
    return cls.seconds


def _iteration(c, policy, roller, stream, state, update, ckpt, workdir: str, it: int, floor: dict):
  """One iteration of rl_loop.rl_train's loop: -> (state, {part: seconds}, wall seconds, facts); `floor`
  (the learner batch's least sizes, rl_train's) is raised in place."""
  mode, lcfg = c.rollout.mode, c.learner
  parts = {}
  roller.timings = {}
  compile_start = _CompileClock.now()
  start = time.perf_counter()
  tasks = [t for t in stream.next(c.tasks_per_iteration) for _ in range(c.group_size)]
  rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), it)
  episodes = roller.run(state.params, tasks, jax.random.fold_in(rng, 0))
  rollout_s = time.perf_counter() - start
  parts.update({k: roller.timings.get(k, 0.0) for k in ("generate", "env", "tokenize")})
  compile_rollout = _CompileClock.now() - compile_start

  t, compile_learn = time.perf_counter(), _CompileClock.now()
  batch, _ = rl_batch.learner_batch(episodes, state, policy.cfg, lcfg, mode, floor=floor)
  floor.update(rl_batch.batch_dims(batch))
  state, _ = learner.train_epochs(update, state, batch, jax.random.fold_in(rng, 1), lcfg)
  state = jax.block_until_ready(state)
  parts["learn"] = time.perf_counter() - t
  compile_learn = _CompileClock.now() - compile_learn

  t = time.perf_counter()
  data.write_jsonl([ep.record(f"train:bench:{it}") for ep in episodes],
                   os.path.join(workdir, "trajectories", f"train_{it:05d}.jsonl"))
  parts["records"] = time.perf_counter() - t

  t = time.perf_counter()
  ckpt.save(it + 1, state, {"iteration": it + 1, "sampler_position": stream.position, "curves": [],
                            "stage": "bench", "batch_floor": floor})
  parts["checkpoint"] = time.perf_counter() - t
  wall = time.perf_counter() - start
  facts = {"rollout_s": rollout_s, "compile_s": _CompileClock.now() - compile_start,
           "compile_rollout_s": compile_rollout, "compile_learn_s": compile_learn, "episodes": len(episodes),
           "env_steps": sum(ep.turns for ep in episodes),
           "agent_tokens": sum(sum(ep.loss_mask) for ep in episodes),
           "episode_tokens": sum(len(ep.tokens) for ep in episodes)}
  return state, parts, wall, facts


def measure(s: Setting, warmup: int = 1, timed: int | None = None) -> dict:
  """Runs `warmup` iterations (compiles), then `timed` ones: their parts, wall time and facts, averaged."""
  c = config_lib.resolve(config(s))
  policy = agent_lib.from_config(c)
  lcfg = c.learner
  state = learner.init_state(policy.cfg, policy.params, lcfg, jax.random.PRNGKey(c.seed))
  update = learner.make_update(policy.cfg, lcfg, mode=c.rollout.mode)
  runs, timed = [], s.timed if timed is None else timed
  with tempfile.TemporaryDirectory() as workdir, make_pool(c, c.envs) as pool:
    roller = rollout.Roller(policy.cfg, policy.tokenizer, pool, c.rollout, profile=True)
    stream = TaskStream.training(c, pool, c.seed)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=c.max_to_keep)
    floor: dict = {}
    for it in range(warmup + timed):
      state, parts, wall, facts = _iteration(c, policy, roller, stream, state, update, ckpt, workdir, it,
                                             floor)
      if it >= warmup:
        runs.append((parts, wall, facts))
    ckpt.close()
  mean = lambda values: sum(values) / len(values)
  parts = {k: mean([r[0][k] for r in runs]) for k in PARTS}
  wall = mean([r[1] for r in runs])
  facts = {k: mean([r[2][k] for r in runs]) for k in runs[0][2]}
  parts["untimed"] = wall - sum(parts.values())
  return {"setting": s, "parts": parts, "wall": wall, "facts": facts, "timed": timed,
          "params": policy.cfg.num_params()}


def _row(group, metric, ours, unit="s", target="", met=None, notes=""):
  return {"group": group, "metric": metric, "ours": ours, "reference": None, "reference_name": "",
          "unit": unit, "target": target, "met": met, "notes": notes}


def rows(result: dict, load: tuple[float, float]) -> list[dict]:
  """Per part: seconds and share of the iteration; the total; the env share against the target."""
  s, parts, wall, f = result["setting"], result["parts"], result["wall"], result["facts"]
  group = f"e2e: one RL iteration, {s.name}"
  busy = max(load) > 0.5 * (os.cpu_count() or 1)
  iterations = "1 warm iteration" if result["timed"] == 1 else f"mean of {result['timed']} warm iterations"
  setup = (f"{s.model} ({result['params'] / 1e6:.1f}M params) float32, textcraft easy, {s.mode} mode, "
           f"GRPO, {s.tasks} tasks x group {s.group}, max_turns {s.max_turns}, max_new_tokens "
           f"{s.max_new_tokens}; {iterations} (after one that compiles): {f['env_steps']:.0f} env steps, "
           f"{f['agent_tokens']:.0f} agent / {f['episode_tokens']:.0f} episode tokens; load average "
           f"{load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} cores"
           + (" (machine busy with other processes: times inflated)" if busy else "")
           + (f"; {s.note}" if s.note else ""))
  compile_in = {"generate": f["compile_rollout_s"], "learn": f["compile_learn_s"]}
  out = []
  for k, v in parts.items():
    note = f"{100 * v / wall:.2f}% of the iteration"
    if compile_in.get(k, 0.0) >= 0.05:
      note += f"; incl. {compile_in[k]:.1f} s XLA compile (new shapes this iteration)"
    out.append(_row(group, _DESCRIBE[k], v, notes=note))
  out.append(_row(group, "iteration total", wall, notes=setup))
  # Compiles of new batch shapes inflate the model's parts; without them the env's share is larger,
  # and that (stricter) share is held against the target.
  share, steady = parts["env"] / wall, parts["env"] / max(wall - f["compile_s"], 1e-9)
  out.append(_row(group, "env share", 100 * share, "% of iteration", f"< {100 * ENV_SHARE_TARGET:.0f}%",
                  steady < ENV_SHARE_TARGET,
                  f"env {parts['env']:.2f} s of {wall:.2f} s; {100 * steady:.2f}% of the "
                  f"{wall - f['compile_s']:.2f} s left without the {f['compile_s']:.1f} s of XLA compile"))
  return out


# Run inside a tree (cwd and PYTHONPATH = its root): measures the named settings with that tree's own e2e
# module (the API of measure() is the same at the baseline commit) and prints one JSON line.
_DRIVER = """
import json, sys
from launch.benchmarks import e2e
names, timed, quick = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3] == "1"
out = {}
for s in e2e.settings(quick):
  if s.name in names:
    r = e2e.measure(s, warmup=1, timed=timed)
    out[s.name] = {"wall": r["wall"], "parts": r["parts"], "facts": r["facts"]}
print("E2E_JSON " + json.dumps(out))
"""
SPEEDUP_TARGET = 3.0


def _measure_tree(root: str, names: Sequence[str], timed: int, quick: bool) -> dict:
  """The settings measured in a fresh Python process running the code of the tree at `root`."""
  env = dict(os.environ, PYTHONPATH=root)
  proc = subprocess.run([sys.executable, "-c", _DRIVER, ",".join(names), str(timed), "1" if quick else "0"],
                        cwd=root, env=env, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("E2E_JSON ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"the e2e benchmark failed in {root} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("E2E_JSON "):])


def _repo_root() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  return subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                        check=True).stdout.strip()


@contextlib.contextmanager
def worktree(root: str, commit: str):
  """Yields the path of a temporary git worktree of `commit` (of the repository at `root`), removed after."""
  with tempfile.TemporaryDirectory() as tmp:
    tree = os.path.join(tmp, "baseline")
    subprocess.run(["git", "worktree", "add", "--detach", tree, commit], cwd=root, check=True,
                   capture_output=True)
    try:
      yield tree
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=root, check=False,
                     capture_output=True)


def compare(baseline: str, quick: bool = False, repeats: int = 3, timed: int = 2) -> list[dict]:
  """The tiny RL iteration of both action modes at commit `baseline` (checked out in a temporary git
  worktree, removed after) and in this tree, alternating in one run: `repeats` fresh processes each, every
  one the mean of `timed` warm iterations; rows of the medians and their ratio (this tree / baseline)."""
  root = _repo_root()
  names = [s.name for s in settings(quick) if s.name.startswith("tiny")]   # minutes per run, not hours
  commit = subprocess.run(["git", "rev-parse", "--short", baseline], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                        check=True).stdout.strip()
  runs: dict[str, list[dict]] = {"baseline": [], "current": []}
  load = [os.getloadavg()[0]]
  with worktree(root, baseline) as tree:
    for _ in range(repeats):
      runs["baseline"].append(_measure_tree(tree, names, timed, quick))
      runs["current"].append(_measure_tree(root, names, timed, quick))
      load.append(os.getloadavg()[0])
  return compare_rows(runs, names, commit, head, load, timed)


def compare_rows(runs: dict[str, list[dict]], names: Sequence[str], commit: str, head: str,
                 load: Sequence[float], timed: int) -> list[dict]:
  """Per setting: iteration, rollout and learning seconds (medians over the runs), this tree against the
  baseline; the iteration row holds the speed-up target."""
  out = []
  busy = max(load) > 0.5 * (os.cpu_count() or 1)
  for name in names:
    group = f"e2e vs baseline {commit}: one RL iteration, {name}"
    def median(tree, f, name=name):
      return statistics.median(f(r[name]) for r in runs[tree])
    parts = {"iteration": lambda r: r["wall"], "rollout (generation + env + chat template)":
             lambda r: r["facts"]["rollout_s"], "learning (batch, advantages, update)":
             lambda r: r["parts"]["learn"]}
    note = (f"medians of {len(runs['current'])} alternating fresh processes per tree, each the mean of "
            f"{timed} warm iterations; this tree at {head} (+ uncommitted changes, if any); load average "
            f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores"
            + (" (machine busy with other processes: ratios only)" if busy else ""))
    for metric, f in parts.items():
      ours, ref = median("current", f), median("baseline", f)
      row = {"group": group, "metric": metric, "ours": ours, "reference": ref,
             "reference_name": f"commit {commit}", "unit": "s", "target": "", "met": None, "notes": note}
      if metric == "iteration":
        row["target"] = f"<= 1/{SPEEDUP_TARGET:g} of baseline"
        row["met"] = ours * SPEEDUP_TARGET <= ref
        current = statistics.median(r[name]["facts"]["rollout_s"] / r[name]["wall"] for r in runs["current"])
        row["notes"] += (f"; {ref / ours:.2f}x faster; rollout {100 * current:.0f}% of this tree's "
                         "iteration")
      out.append(row)
  return out


def run(quick: bool) -> list[dict]:
  out = []
  for s in settings(quick):
    before = os.getloadavg()[0]
    result = measure(s)
    out += rows(result, (before, os.getloadavg()[0]))
  return out


if __name__ == "__main__":
  for r in run(quick=True):
    print(f"{r['group']:45s} {r['metric']:55s} {r['ours']:10.3f} {r['unit']}")
