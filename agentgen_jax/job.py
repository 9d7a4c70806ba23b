"""The train command's whole job: evaluate the base model, SFT warm start and/or RL, evaluate again, and write
results.json and report.md (and optionally an HF export). Every step is resumable: a rerun continues.
On several processes every one runs this, on the same shared workdir; process 0 alone writes."""

from __future__ import annotations

import json
import os
from typing import Callable

from agentgen_jax import agent as agent_lib
from agentgen_jax import checkpoint, distributed, logs, models, parallel, rl_loop
from agentgen_jax import config as config_lib
from agentgen_jax.evaluation import Evaluator
from agentgen_jax.study import failures, metrics, report
from agentgen_jax.tasks import make_pool


def cached_json(path: str, fn: Callable[[], object]):
  """fn() once: its JSON result is kept in `path`, so a resumed job does not redo finished work. (Whether
  it is kept is process 0's view, so that every process runs fn() or none does.)"""
  if distributed.agreed(os.path.exists(path)):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  value = fn()
  if not distributed.is_primary():
    return value
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, default=float)
  os.replace(tmp, path)
  return value


def run(cfg: config_lib.RunConfig, workdir: str, mesh=None) -> dict:
  """The train command on a resolved config (agentgen_jax.config.resolve): returns results.json's dict.

  mesh: agent.run_mesh(cfg) (built here when not given; a bad mesh or batch fails before anything is
  written)."""
  mesh = agent_lib.run_mesh(cfg) if mesh is None else mesh
  os.makedirs(workdir, exist_ok=True)
  if distributed.is_primary():
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      json.dump(config_lib.to_dict(cfg), f, indent=1, default=str)
  agent = agent_lib.from_config(cfg, mesh)
  eval_envs = list(cfg.eval.envs) or list(cfg.envs)
  logger = logs.Logger(workdir)
  final_stage = "rl" if cfg.iterations > 0 else "sft"
  with make_pool(cfg, sorted(set(eval_envs) | set(cfg.envs))) as pool:
    evaluator = Evaluator.from_config(cfg, agent, pool, trajectory_dir=os.path.join(workdir, "trajectories"))

    def evaluate(params, stage: str) -> dict:
      """Summaries and the failure table of one evaluation, kept in eval_<stage>.json."""
      def fresh():
        # Under LoRA, decode on merged weights (faster; see models/lora.py merged).
        ev = evaluator.run(models.lora.merged(params), stage, [] if stage == "base" else list(cfg.envs))
        return {"evals": ev.summaries, "failures": failures.failure_table(ev.records)}
      return cached_json(os.path.join(workdir, f"eval_{stage}.json"), fresh)

    evals = evaluate(agent.params, "base")["evals"]
    out = logs.StageOutput(workdir, logger, "train")
    params, curves = rl_loop.train_stage(cfg, agent, agent.params, pool, out,
                                         after_sft=lambda p: evaluate(p, "sft"))
    if cfg.sft.tasks > 0 and cfg.iterations > 0:
      evals = evals + evaluate(None, "sft")["evals"]  # cached by train_stage's after_sft
    final = evaluate(params, final_stage)
  logger.close()
  evals = evals + final["evals"]
  results = {"protocol": "train", "model": cfg.model, "config": config_lib.to_dict(cfg),
             "evals": evals, "metrics": {"transfer": metrics.transfer(evals)},
             "curves": curves, "failures": final["failures"],
             "final_params_digest": checkpoint.params_digest(params)}
  report.write_report(results, workdir)
  if cfg.export_hf:
    params = parallel.to_host(params)  # whole on every process (a gather of the FSDP shards)
    if distributed.is_primary():
      models.save_hf(agent.cfg, params, os.path.join(workdir, "hf_export"), tokenizer=agent.tokenizer)
    # LoRA: hf_export holds the merged weights, this the adapters alone
    if models.lora.is_attached(params) and distributed.is_primary():
      models.save_peft(models.lora.split(params)[1], cfg.lora, os.path.join(workdir, "peft_adapter"),
                       base_model=cfg.model)
  return results
