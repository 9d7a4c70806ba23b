"""agentgen_jax: reinforcement fine-tuning of LLM agents in multi-turn text environments, in JAX.

The flat API a notebook needs (each name imported on first use, so `import agentgen_jax` stays cheap):

  cfg = agentgen_jax.resolve(agentgen_jax.default_config())   # the one config schema, typed
  agent = agentgen_jax.load_agent("tiny")                     # model + tokenizer + chat format
  pool = agentgen_jax.make_pool(cfg, ["babyai"])              # envs in worker processes (envs.EnvPool)
  episodes = agentgen_jax.Roller(agent.cfg, agent.tokenizer, pool, cfg.rollout).run(params, tasks, rng)
  batch, metrics = agentgen_jax.learner_batch(episodes, state, agent.cfg, cfg.learner, cfg.rollout.mode)
  state, metrics = agentgen_jax.train_epochs(update, state, batch, rng, cfg.learner)
  evaluation = agentgen_jax.Evaluator.from_config(cfg, agent, pool).run(params, "base")
  results = agentgen_jax.run_job(cfg, workdir)                # the train command; run_study: a protocol
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute)
_EXPORTS = {
    # config
    "default_config": ("agentgen_jax.config", "default_config"),
    "resolve": ("agentgen_jax.config", "resolve"),
    "RunConfig": ("agentgen_jax.config", "RunConfig"),
    # models and the agent
    "load_model": ("agentgen_jax.models", "load"),
    "load_agent": ("agentgen_jax.agent", "load"),
    "Agent": ("agentgen_jax.agent", "Agent"),
    # envs
    "make_env": ("envs", "make"),
    "env_names": ("envs", "names"),
    "EnvPool": ("envs", "EnvPool"),
    "make_pool": ("agentgen_jax.tasks", "make_pool"),
    "TaskStream": ("agentgen_jax.tasks", "TaskStream"),
    # rollout
    "Roller": ("agentgen_jax.rollout", "Roller"),
    "RolloutConfig": ("agentgen_jax.rollout", "RolloutConfig"),
    "expert_episodes": ("agentgen_jax.demos", "expert_episodes"),
    # the learner batch and the update
    "learner_batch": ("agentgen_jax.rl.batch", "learner_batch"),
    "ESTIMATORS": ("agentgen_jax.rl.batch", "ESTIMATORS"),
    "LearnerConfig": ("agentgen_jax.rl.learner", "LearnerConfig"),
    "init_state": ("agentgen_jax.rl.learner", "init_state"),
    "make_update": ("agentgen_jax.rl.learner", "make_update"),
    "train_epochs": ("agentgen_jax.rl.learner", "train_epochs"),
    # loops, evaluation, jobs
    "rl_train": ("agentgen_jax.rl_loop", "rl_train"),
    "train_stage": ("agentgen_jax.rl_loop", "train_stage"),
    "sft_warm_start": ("agentgen_jax.demos", "sft_warm_start"),
    "Evaluator": ("agentgen_jax.evaluation", "Evaluator"),
    "run_job": ("agentgen_jax.job", "run"),
    "run_study": ("agentgen_jax.study.protocols", "run_study"),
    "Study": ("agentgen_jax.study.protocols", "Study"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'agentgen_jax' has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  value = getattr(importlib.import_module(module), attr)
  globals()[name] = value
  return value


def __dir__():
  return __all__ + ["__version__"]
