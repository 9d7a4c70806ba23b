"""The one config schema: `default_config()` builds the ConfigDict from the typed dataclasses below (and
LearnerConfig, RolloutConfig), so every field has one default and is settable as --config.a.b;
`resolve(config)` turns it, once, at the entry point, into a frozen `RunConfig` or a one-line error.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from agentgen_jax.models import config as models_config
from agentgen_jax.models.lora import LoraConfig
from agentgen_jax.rl.learner import LearnerConfig
from agentgen_jax.rollout import RolloutConfig

PROTOCOLS = ("difficulty", "cross_env", "sequential", "mixture")
# LearnerConfig fields that are not set on their own: the learner scores tokens at the sampling temperature.
DERIVED = {"learner": ("temperature",)}


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The SFT warm start on expert demonstrations (before RL)."""
  tasks: int = 0                   # expert demos to collect; 0: no warm start
  epochs: int = 2
  batch_size: int = 8
  micro_batch_size: int = 0        # rows per forward/backward (0: the whole batch at once)
  lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """avg@k evaluation: the first `tasks` tasks of each env's split, k episodes each."""
  envs: tuple[str, ...] = ()       # default: the training envs
  split: str = "test"
  difficulty: str = "all"
  tasks: int = 10
  k: int = 1
  temperature: float = 0.0         # 0: greedy


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """The protocol of launch.study (agentgen_jax/study/protocols.py)."""
  protocol: str = "cross_env"      # one of PROTOCOLS
  envs: tuple[str, ...] = ()       # default: the training envs
  orders: tuple[tuple[str, ...], ...] = ()  # sequential: env orders (default: envs in order)
  weights: tuple[float, ...] = ()  # mixture sampling weights (default uniform)
  mixture_baseline: bool = True    # sequential: also train on the mixture with the same budget
  single_env_baselines: bool = True  # sequential: also train every env of an order alone (the matrix)
  difficulty_env: str = ""         # difficulty protocol: the env (default: the first of envs)
  eval_difficulties: tuple[str, ...] = ("all",)
  warm_start_tasks_per_env: int = 0  # SFT demos per env before every stage (the base stage)
  # The base stage's params from an earlier run's SFT checkpoint instead (a train run's workdir/sft, or a
  # study's stages/base/sft; "{seed}" is replaced by the seed, e.g. runs/qs/seed_{seed}/sft): no SFT here.
  warm_start_from: str = ""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a train, evaluate or study command is configured by (frozen: resolved once)."""
  model: str = "tiny"              # preset | embedded name | HF folder | .gguf file
  tokenizer: str = ""              # default: the model's own
  dtype: str = ""                  # compute dtype; default float32 on CPU, bfloat16 on accelerators
  param_dtype: str = ""            # storage dtype of params and Adam moments; default float32
  remat: str = "none"              # per-layer activation remat in the backward: none | full | dots
  layer_loop: str = "auto"         # scan | unroll | auto: learner unrolled <= 8 layers, CPU sampler split
  mesh: str = "data:-1"            # device mesh, axes data and fsdp: data:-1 | fsdp:8 | data:2,fsdp:4
  seed: int = 0
  seeds: int = 1                   # launch: run the protocol once per seed (study/seeds.py)
  envs: tuple[str, ...] = ("babyai",)  # training envs (on the command line: --config.envs="(a, b)")
  env_weights: tuple[float, ...] = ()  # mixture sampling weights (default uniform)
  env_kwargs: dict = dataclasses.field(default_factory=dict)  # {env: {kwarg: value}}
  train_split: str = "train"
  train_difficulty: str = "all"
  pool_size: int = 8               # episodes stepped at once
  workers: int = 2                 # env worker processes
  env_timeout_s: float = 120.0
  iterations: int = 10             # RL iterations; 0: SFT only
  tasks_per_iteration: int = 4
  group_size: int = 4              # episodes per task (the GRPO group)
  checkpoint_every: int = 1
  max_to_keep: int = 2
  export_hf: bool = False          # also write the final policy as an HF folder (workdir/hf_export)
  rollout: RolloutConfig = RolloutConfig()
  learner: LearnerConfig = LearnerConfig()
  lora: LoraConfig = LoraConfig()  # rank > 0: SFT and RL train LoRA adapters on the frozen base
  sft: SFTConfig = SFTConfig()
  eval: EvalConfig = EvalConfig()
  study: StudyConfig = StudyConfig()


# ---- the ConfigDict, built from the dataclasses --------------------------------------------------------

def _optional_type(hint) -> type | None:
  """T for `T | None`, else None."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else None


def _section(cls, skip: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  hints = typing.get_type_hints(cls)
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(value):
      out[f.name] = _section(type(value), DERIVED.get(f.name, ()))
    elif value is None:  # typed, so that --config.<field>=<value> parses
      out[f.name] = config_dict.placeholder(_optional_type(hints[f.name]))
    else:
      out[f.name] = value
  return out


def default_config() -> ml_collections.ConfigDict:
  """Every field a config may set, with its one default (launch/configs/*.py override some)."""
  return _section(RunConfig)


# ---- resolve: ConfigDict -> RunConfig ------------------------------------------------------------------

def _plain(value):
  """ConfigDict/list values as the frozen dataclasses want them: dicts, tuples."""
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _build(cls, values: dict, path: str, extra: dict | None = None):
  """cls(**values) with unknown names and bad values reported as one line naming the section."""
  known = {f.name for f in dataclasses.fields(cls)} - set(DERIVED.get(path, ()))
  unknown = sorted(set(values) - known)
  if unknown:
    where = f"config.{path}" if path else "config"
    raise ValueError(f"unknown config field {(path + '.' if path else '') + unknown[0]!r}; valid fields of "
                     f"{where}: {', '.join(sorted(known))}")
  kwargs = {k: _plain(v) for k, v in values.items()}
  kwargs.update(extra or {})
  try:
    return cls(**kwargs)
  except ValueError as e:
    raise ValueError(f"{path}: {e}" if path else str(e)) from None
  except TypeError as e:
    raise ValueError(f"config.{path}: {e}") from None


def resolve(c: ml_collections.ConfigDict | dict) -> RunConfig:
  """The typed, frozen RunConfig of `c`, checked before any model or env is loaded.

  Missing fields take the schema's defaults; unknown fields and bad values raise ValueError with one line
  naming the bad value and the valid choices.
  """
  values = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else dict(c)
  sections = {f.name: f.default for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.default)}
  typed = {}
  # The rollout first: the learner computes log-probs at the temperature the rollout samples at.
  rcfg = _build(RolloutConfig, dict(values.pop("rollout", {}) or {}), "rollout")
  typed["rollout"] = dataclasses.replace(rcfg, max_turns=rcfg.max_turns or None,
                                         system_prompt=rcfg.system_prompt or None)
  _check_rl_sampling(typed["rollout"], values.get("iterations", RunConfig.iterations))
  for name, default in sections.items():
    if name == "rollout":
      continue
    section = dict(values.pop(name, {}) or {})
    # Without RL (iterations=0) a greedy rollout temperature is fine: the learner then never scores it.
    extra = {"temperature": rcfg.temperature if rcfg.temperature > 0 else 1.0} if name == "learner" else None
    typed[name] = _build(type(default), section, name, extra)
  cfg = _build(RunConfig, values, "", typed)
  cfg = _fill_defaults(cfg)
  check(cfg)
  return cfg


def _check_rl_sampling(rcfg: RolloutConfig, iterations: int) -> None:
  """RL trains on the log-probs of what was sampled: the learner scores softmax(logits / temperature), so the
  rollout may not truncate (top_p) or be greedy (temperature 0) in training."""
  if iterations > 0 and rcfg.top_p < 1.0:
    raise ValueError(f"rollout.top_p={rcfg.top_p} in RL training: the learner scores the full "
                     "distribution, so PPO's ratio would be wrong; valid: 1.0 (top_p < 1 only to evaluate)")
  if iterations > 0 and rcfg.temperature <= 0:
    raise ValueError(f"rollout.temperature={rcfg.temperature} in RL training: greedy episodes have "
                     "no log-probs to train on; valid: > 0 (0 only to evaluate, as eval.temperature)")


def _fill_defaults(cfg: RunConfig) -> RunConfig:
  """Defaults that follow other fields: eval and study envs are the training envs unless set."""
  study = cfg.study
  envs = study.envs or cfg.envs
  study = dataclasses.replace(study, envs=tuple(envs), difficulty_env=study.difficulty_env or envs[0])
  return dataclasses.replace(cfg, study=study)


def _one_of(field: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")


def check(cfg: RunConfig) -> None:
  """Cross-field checks (each section's own are in its dataclass): one-line errors naming the choices."""
  import envs
  from envs import base as env_base
  for name in list(cfg.envs) + list(cfg.eval.envs) + list(cfg.study.envs):
    if name not in envs.names():
      raise ValueError(f"unknown env {name!r}; known envs: {', '.join(envs.names())}")
  if not cfg.envs:
    raise ValueError("envs is empty: name at least one training env")
  if cfg.env_weights and len(cfg.env_weights) != len(cfg.envs):
    raise ValueError(f"env_weights has {len(cfg.env_weights)} entries for {len(cfg.envs)} envs")
  if cfg.sft.micro_batch_size and cfg.sft.batch_size % cfg.sft.micro_batch_size:
    raise ValueError(f"sft.batch_size={cfg.sft.batch_size} is not a multiple of "
                     f"sft.micro_batch_size={cfg.sft.micro_batch_size}")
  if cfg.group_size < 1 or cfg.tasks_per_iteration < 1:
    raise ValueError("group_size and tasks_per_iteration must be >= 1")
  _check_rl_sampling(cfg.rollout, cfg.iterations)
  for field, value, valid in (("train_split", cfg.train_split, env_base.SPLITS),
                              ("train_difficulty", cfg.train_difficulty, env_base.DIFFICULTIES),
                              ("eval.split", cfg.eval.split, env_base.SPLITS),
                              ("eval.difficulty", cfg.eval.difficulty, env_base.DIFFICULTIES)):
    _one_of(field, value, valid)
  _one_of("remat", cfg.remat, models_config.REMAT_POLICIES)
  _one_of("layer_loop", cfg.layer_loop, models_config.LAYER_LOOPS)
  if cfg.param_dtype:
    _one_of("param_dtype", cfg.param_dtype, models_config.DTYPES)
  for difficulty in cfg.study.eval_difficulties:
    _one_of("study.eval_difficulties entry", difficulty, env_base.DIFFICULTIES)
  _one_of("study.protocol", cfg.study.protocol, PROTOCOLS)
  if cfg.study.weights and len(cfg.study.weights) != len(cfg.study.envs):
    raise ValueError(f"study.weights has {len(cfg.study.weights)} entries for {len(cfg.study.envs)} envs")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
  """cfg as plain JSON-able data (results.json, config.json)."""
  return dataclasses.asdict(cfg)


def sft_learner_config(cfg: RunConfig) -> LearnerConfig:
  """The learner settings of the SFT warm start: the RL optimiser's betas and clipping, SFT's lr and batch,
  no KL, no critic, constant learning rate. SFT has no advantages: the estimator is reset to one that needs
  no critic (the RL run's GAE estimator would be refused without one)."""
  return dataclasses.replace(cfg.learner, lr=cfg.sft.lr, kl_coef=0.0, critic="none", estimator="grpo",
                             bootstrap_truncated=False, schedule="constant",
                             warmup_steps=0, mini_batch_size=cfg.sft.batch_size,
                             micro_batch_size=cfg.sft.micro_batch_size or cfg.sft.batch_size)


def eval_rollout_config(cfg: RunConfig) -> RolloutConfig:
  """The rollout settings of evaluation: the training ones at eval.temperature."""
  return dataclasses.replace(cfg.rollout, temperature=cfg.eval.temperature)
