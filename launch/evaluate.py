"""Evaluates a policy on environments: avg@k success and score, pass@k, turns, tokens, invalid actions and
failure modes; writes results.json, report.md and the trajectories into --workdir.

  python -m launch.evaluate --checkpoint=runs/quickstart --envs=babyai,textcraft --k=8 --workdir=runs/eval
  python -m launch.evaluate --checkpoint=smollm2-135m-instruct --envs=babyai --mode=choose --workdir=...

--checkpoint: a training workdir (its latest checkpoint), an HF folder, a .gguf file or a model name.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from launch import cli, validate

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "training workdir, HF folder, .gguf or model name")
_ENVS = flags.DEFINE_list("envs", None, "environments to evaluate on")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
_K = flags.DEFINE_integer("k", 8, "episodes per task (avg@k, pass@k)")
_TASKS = flags.DEFINE_integer("tasks", 20, "tasks per environment (the first N of the split)")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "test"], "task split")
_DIFFICULTY = flags.DEFINE_enum("difficulty", "all", ["easy", "hard", "all"], "task difficulty")
_MODE = flags.DEFINE_enum("mode", None, ["generate", "choose"], "action mode (default: the run's)")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sampling temperature (0 = greedy)")
_MAX_TURNS = flags.DEFINE_integer("max_turns", 0, "turn cap (0 = each env's own; default: a training "
                                   "workdir's own, else each env's)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_POOL = flags.DEFINE_integer("pool_size", 8, "parallel episodes")
_WORKERS = flags.DEFINE_integer("workers", 2, "environment worker processes")
_MESH = flags.DEFINE_string("mesh", "data:-1", "device mesh, axes data and fsdp (data:-1 | fsdp:8 | ...)")
flags.mark_flags_as_required(["checkpoint", "envs", "workdir"])


def load_checkpoint(path: str, config):
  """(config, params) for a training workdir (its model, tokenizer and rollout settings, its latest RL or
  SFT checkpoint), or for anything models.load accepts."""
  from agentgen_jax import checkpoint, models
  workdir_config = os.path.join(path, "config.json")
  if os.path.isdir(path) and os.path.exists(workdir_config):
    with open(workdir_config, encoding="utf-8") as f:
      saved = json.load(f)
    config.model = saved["model"]
    config.tokenizer = saved.get("tokenizer", "")
    config.rollout.update({k: v for k, v in saved.get("rollout", {}).items() if k in config.rollout})
    for sub in ("checkpoints", "sft"):
      ckpt_dir = os.path.join(path, sub)
      if os.path.isdir(ckpt_dir):
        ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
        if ckpt.latest_step() is not None:
          state, _ = ckpt.restore_raw()
          ckpt.close()
          return config, (state["params"] if sub == "checkpoints" else state)
        ckpt.close()
    raise FileNotFoundError(f"no checkpoint under {path!r} (looked in checkpoints/ and sft/)")
  config.model = path
  return config, models.load(path)[1]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import envs
  unknown = [e for e in _ENVS.value if e not in envs.names()]
  if unknown:
    raise app.UsageError(f"unknown envs {unknown}; known envs: {', '.join(envs.names())}")
  validate.or_exit(validate.evaluate, _CHECKPOINT.value, _WORKDIR.value)  # before anything is written
  from agentgen_jax import agent as agent_lib
  from agentgen_jax import checkpoint, distributed, parallel
  from agentgen_jax import config as config_lib
  from agentgen_jax.evaluation import Evaluator
  cli.initialize_distributed()
  from agentgen_jax.study import failures, report
  from agentgen_jax.tasks import make_pool
  config = config_lib.default_config()
  try:
    config, params = load_checkpoint(_CHECKPOINT.value, config)
  except FileNotFoundError as e:  # the message names what --checkpoint may be
    raise app.UsageError(str(e)) from None
  except checkpoint.CheckpointError as e:  # every step damaged: the one line names each and why
    sys.exit(f"FATAL: --checkpoint={_CHECKPOINT.value}: {e}")
  if _MODE.value:
    config.rollout.mode = _MODE.value
  if flags.FLAGS["max_turns"].present:
    config.rollout.max_turns = _MAX_TURNS.value
  config.iterations, config.seed = 0, _SEED.value
  config.pool_size, config.workers, config.envs = _POOL.value, _WORKERS.value, tuple(_ENVS.value)
  config.mesh = _MESH.value
  config.eval.update(dict(envs=tuple(_ENVS.value), split=_SPLIT.value, difficulty=_DIFFICULTY.value,
                          tasks=_TASKS.value, k=_K.value, temperature=_TEMPERATURE.value))
  cfg = cli.resolve(config)
  mesh = cli.run_mesh(cfg)  # built once, after jax.distributed; nothing is written before it
  with distributed.job("evaluation"):  # several processes: a failure ends every one in one line
    agent = agent_lib.from_config(cfg, mesh)
    params = parallel.place_params(params, mesh)
    with make_pool(cfg, _ENVS.value) as pool:
      trajectories = os.path.join(_WORKDIR.value, "trajectories")
      evaluation = Evaluator.from_config(cfg, agent, pool, trajectory_dir=trajectories).run(params, "eval")
  results = {"protocol": "evaluate", "model": cfg.model, "config": config_lib.to_dict(cfg),
             "evals": evaluation.summaries, "metrics": {},
             "failures": failures.failure_table(evaluation.records)}
  report.write_report(results, _WORKDIR.value)  # by process 0 alone
  if not distributed.is_primary():
    return
  print(json.dumps([{k: e[k] for k in ("env", "avg_success", "avg_score", "pass_at_k", "mean_turns")}
                    for e in evaluation.summaries], indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
