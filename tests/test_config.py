"""The one config schema: every dataclass field is a config field with the dataclass's default, settable on
the command line as --config.a.b; unknown fields and bad values are one-line errors naming the choices."""

import dataclasses
import json
import subprocess
import sys

import pytest

from agentgen_jax import config
from agentgen_jax.rl.learner import LearnerConfig
from agentgen_jax.rollout import RolloutConfig

REPO = __file__.rsplit("/tests/", 1)[0]
QUICKSTART = "launch/configs/quickstart.py"


def _train_config(*overrides) -> dict:
  """The resolved config `launch.train --config=quickstart <overrides>` would run (its --print_config)."""
  out = subprocess.run([sys.executable, "-m", "launch.train", f"--config={QUICKSTART}", *overrides,
                        "--workdir=/nonexistent/not_used", "--print_config"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout)


@pytest.mark.parametrize("section, cls", [("rollout", RolloutConfig), ("learner", LearnerConfig),
                                          ("sft", config.SFTConfig), ("eval", config.EvalConfig),
                                          ("study", config.StudyConfig), ("", config.RunConfig)])
def test_every_dataclass_field_is_a_config_field_with_the_same_default(section, cls):
  node = config.default_config()
  for key in filter(None, section.split(".")):
    node = node[key]
  for f in dataclasses.fields(cls):
    if f.name in config.DERIVED.get(section, ()):
      assert f.name not in node, f"{section}.{f.name} is derived and must not be settable"
      continue
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(default):
      continue
    value = node[f.name]
    value = value.to_dict() if hasattr(value, "to_dict") else value
    assert value == default, (section, f.name, value, default)


def test_defaults_resolve_to_the_dataclass_defaults():
  cfg = config.resolve(config.default_config())
  assert cfg.learner == LearnerConfig() and cfg.rollout == RolloutConfig()
  assert cfg.sft == config.SFTConfig() and cfg.eval == config.EvalConfig()


def test_every_learner_field_is_overridable_on_the_command_line():
  names = [f.name for f in dataclasses.fields(LearnerConfig) if f.name not in config.DERIVED["learner"]]
  node = config.default_config().learner
  assert sorted(node.keys()) == sorted(names)
  new = {"critic": "shared", "kl_estimator": "k1", "kl_mode": "reward", "schedule": "cosine",
         "estimator": "turn_gae", "loss_agg": "seq-mean-token-sum",
         "total_steps": 7, "value_clip": 0.3, "critic_lr": 0.5, "micro_batch_size": 2, "mini_batch_size": 8}
  for f in dataclasses.fields(LearnerConfig):
    if f.name not in new and f.name in names:
      default = f.default
      new[f.name] = (not default if isinstance(default, bool) else default + 1 if isinstance(default, int)
                     else default * 0.5 if isinstance(default, float) else new.get(f.name))
  learner = _train_config(*[f"--config.learner.{k}={v}" for k, v in new.items() if v is not None])["learner"]
  for k, v in new.items():
    if v is not None:
      assert learner[k] == v, (k, learner[k], v)


def test_cosine_schedule_is_accepted_from_the_train_command():
  learner = _train_config("--config.learner.schedule=cosine", "--config.learner.total_steps=100")["learner"]
  assert (learner["schedule"], learner["total_steps"]) == ("cosine", 100)


def test_optional_fields_take_values_and_zero_means_the_env_cap():
  c = config.default_config()
  c.rollout.max_turns, c.rollout.system_prompt = 7, "Be brief."
  cfg = config.resolve(c)
  assert cfg.rollout.max_turns == 7 and cfg.rollout.system_prompt == "Be brief."
  c.rollout.max_turns = 0
  assert config.resolve(c).rollout.max_turns is None  # the env's own cap


def test_unknown_field_names_the_valid_fields():
  c = config.default_config().to_dict()
  c["learner"]["klcoef"] = 0.1
  with pytest.raises(ValueError, match=r"unknown config field 'learner.klcoef'; valid fields of "
                                       r"config.learner: b1, b2, bootstrap_truncated"):
    config.resolve(c)
  with pytest.raises(ValueError, match="valid fields of config: .*checkpoint_every, dtype"):
    config.resolve(dict(config.default_config().to_dict(), iteratons=3))


def test_missing_fields_take_the_schema_defaults():
  cfg = config.resolve({"envs": ("textcraft",), "study": {"protocol": "difficulty"}})
  assert cfg.learner == config.resolve(config.default_config()).learner
  assert cfg.study.envs == ("textcraft",) and cfg.study.difficulty_env == "textcraft"  # follow envs


@pytest.mark.parametrize("field, value, message", [
    ("rollout.top_p", 0.9, "rollout.top_p=0.9 in RL training"),
    ("rollout.temperature", 0.0, "rollout.temperature=0.0 in RL training"),
    ("study.protocol", "zigzag", "valid: difficulty, cross_env, sequential, mixture"),
    ("eval.difficulty", "medium", "valid: easy, hard, all"),
    ("rollout.mode", "chose", "valid: generate, choose"),
    ("learner.estimator", "ppo", "'grpo', 'rloo', 'reinforce', 'token_gae', 'turn_gae'"),
    ("learner.estimator", "token_gae", "needs a critic"),
])
def test_bad_values_are_one_line_errors_naming_the_choices(field, value, message):
  section, name = field.split(".")
  c = config.default_config().to_dict()
  c[section][name] = value
  with pytest.raises(ValueError, match=message):
    config.resolve(c)


def test_bad_layer_loop_is_a_one_line_error_naming_the_choices():
  c = config.default_config().to_dict()
  c["layer_loop"] = "loop"
  with pytest.raises(ValueError, match="unknown layer_loop 'loop'; valid: auto, scan, unroll"):
    config.resolve(c)


def test_sampling_settings_that_only_evaluation_may_use_are_fine_without_rl():
  c = config.default_config().to_dict()
  c["iterations"], c["rollout"]["top_p"], c["rollout"]["temperature"] = 0, 0.9, 0.0
  assert config.resolve(c).rollout.top_p == 0.9


def test_resolved_config_is_frozen():
  cfg = config.resolve(config.default_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 1  # type: ignore[misc]


def test_the_learner_scores_at_the_rollout_temperature():
  c = config.default_config()
  c.rollout.temperature = 0.7
  assert config.resolve(c).learner.temperature == 0.7


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce", "token_gae", "turn_gae"])
def test_every_estimator_resolves_from_a_launch_config(estimator):
  from agentgen_jax.rl.batch import ESTIMATORS
  assert estimator in ESTIMATORS
  c = _quickstart()
  c.learner.estimator = estimator
  if estimator.endswith("gae"):
    c.learner.critic = "shared"
  assert config.resolve(c).learner.estimator == estimator


def _quickstart():
  from launch.configs import quickstart
  return quickstart.get_config()
