"""The ReAct (generate-mode) small study configs resolve and differ from their choose-mode twins only in the
action mode and its token budget."""

import pytest

from agentgen_jax import config as config_lib
from launch.configs import (
  quickstart,
  quickstart_react,
  study_cross_env_react_small,
  study_cross_env_small,
  study_difficulty_react_small,
  study_difficulty_small,
)


@pytest.mark.parametrize("react,choose", [(study_cross_env_react_small, study_cross_env_small),
                                          (study_difficulty_react_small, study_difficulty_small)])
def test_react_config_is_its_choose_twin_in_generate_mode(react, choose):
  r, c = config_lib.resolve(react.get_config()), config_lib.resolve(choose.get_config())
  assert r.rollout.mode == "generate" and c.rollout.mode == "choose"
  assert r.rollout.max_new_tokens == 16
  assert r.study == c.study and r.envs == c.envs and r.iterations == c.iterations
  assert "Cost MEASURED at" in react.__doc__  # its docstring states the cost it was measured at


def test_react_quickstart_is_the_quickstart_in_generate_mode():
  r, c = config_lib.resolve(quickstart_react.get_config()), config_lib.resolve(quickstart.get_config())
  assert r.rollout.mode == "generate" and c.rollout.mode == "choose" and r.rollout.max_new_tokens == 16
  assert (r.sft, r.learner, r.eval, r.iterations, r.envs) == (c.sft, c.learner, c.eval, c.iterations, c.envs)
  assert "Measured over 3 seeds" in quickstart_react.__doc__
