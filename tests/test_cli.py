"""launch/cli.py: the one-line stop shared by launch.train and launch.study."""

import pytest

from agentgen_jax import checkpoint
from launch import cli


@pytest.mark.parametrize("error, message", [(FloatingPointError("non-finite loss at RL iteration 3"),
                                             "training stopped: non-finite loss at RL iteration 3"),
                                            (checkpoint.CheckpointError("no good step in ckpt/"),
                                             "training stopped: no good step in ckpt/")])
def test_divergence_and_damaged_checkpoints_end_in_one_line(error, message):
  with pytest.raises(SystemExit) as stop:
    with cli.stop_in_one_line("training"):
      raise error
  assert stop.value.code == message


def test_other_errors_pass_through():
  with pytest.raises(ValueError):
    with cli.stop_in_one_line("study"):
      raise ValueError("bad flag")
