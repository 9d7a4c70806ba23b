"""Checkpoints restore the exact run state; max_to_keep prunes; digests detect any bit change; a damaged
step (truncated, overwritten or deleted data) is skipped for the newest good one."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agentgen_jax import checkpoint
from agentgen_jax.checkpoint import Checkpointer, params_digest

MANIFEST, CheckpointError = checkpoint.MANIFEST, checkpoint.CheckpointError
CorruptCheckpointWarning, verify_manifest = checkpoint.CorruptCheckpointWarning, checkpoint.verify_manifest


def _state(seed):
  params = {"w": jax.random.normal(jax.random.PRNGKey(seed), (4, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  opt = optax.adamw(1e-3)
  return {"params": params, "opt": opt.init(params), "step": jnp.int32(seed),
          "rng": jax.random.PRNGKey(seed + 1), "key": jax.random.key(seed + 2)}


def test_restore_is_bit_identical_with_metadata(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "c"))
  state = _state(3)
  ckpt.save(7, state, {"stage": "after:babyai", "sampler_position": 12})
  restored, meta = ckpt.restore(_state(0))
  assert meta == {"stage": "after:babyai", "sampler_position": 12}
  assert params_digest(restored) == params_digest(state)
  assert restored["params"]["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(state["key"]))


def test_max_to_keep_prunes_old_steps(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "c"), max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {})
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3


def test_digest_changes_with_one_bit():
  state = _state(1)
  flipped = jax.tree.map(lambda x: x, state)
  flipped["params"] = dict(state["params"], w=state["params"]["w"].at[0, 0].add(1e-7))
  assert params_digest(flipped["params"]) != params_digest(state["params"])


def test_restore_from_empty_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    Checkpointer(str(tmp_path / "none")).restore(_state(0))


# ---- damaged checkpoints: verified at restore, the newest good step is used ------------------------------

def _data_file(step_dir) -> str:
  """The largest array-data file that a restore reads (state/d/: the OCDBT data merged from every process)."""
  return str(max((step_dir / "state" / "d").iterdir(), key=lambda p: p.stat().st_size))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(max(1, f.seek(0, 2) // 2))


def _overwrite(path):
  with open(path, "r+b") as f:
    size = f.seek(0, 2)
    f.seek(size // 2)
    data = f.read(8)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in data))  # same size, different bytes


def _delete(path):
  os.remove(path)


def _three_steps(directory, max_to_keep=3):
  ckpt = Checkpointer(str(directory), max_to_keep=max_to_keep)
  states = {step: _state(step) for step in (1, 2, 3)}
  for step, state in states.items():
    ckpt.save(step, state, {"step": step})
  return ckpt, states


@pytest.mark.parametrize("damage", [_truncate, _overwrite, _delete])
def test_damaged_latest_step_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
  ckpt, states = _three_steps(tmp_path / "c")
  damage(_data_file(tmp_path / "c" / "3"))
  with pytest.warns(CorruptCheckpointWarning, match=r"step 3 in .* is damaged"):
    restored, meta = Checkpointer(str(tmp_path / "c")).restore(_state(0))
  assert meta == {"step": 2}
  assert params_digest(restored) == params_digest(states[2])


def test_a_writer_moves_the_bad_step_aside_so_it_can_be_saved_again(tmp_path):
  ckpt, states = _three_steps(tmp_path / "c")
  _truncate(_data_file(tmp_path / "c" / "3"))
  writer = Checkpointer(str(tmp_path / "c"))
  with pytest.warns(CorruptCheckpointWarning):
    writer.restore(_state(0))
  assert writer.latest_step() == 2
  assert any(name.startswith("3.corrupt-") for name in os.listdir(tmp_path / "c"))
  writer.save(3, states[3], {"step": 3})
  assert params_digest(writer.restore(_state(0))[0]) == params_digest(states[3])


def test_a_reader_leaves_the_bad_step_in_place(tmp_path):
  _three_steps(tmp_path / "c")
  _delete(_data_file(tmp_path / "c" / "3"))
  reader = Checkpointer(str(tmp_path / "c"), read_only=True)
  with pytest.warns(CorruptCheckpointWarning):
    state, meta = reader.restore_raw()
  assert meta == {"step": 2} and reader.all_steps() == [1, 2, 3]


def test_a_step_without_manifest_is_checked_by_the_restore_itself(tmp_path):
  _three_steps(tmp_path / "c")
  os.remove(tmp_path / "c" / "3" / MANIFEST)  # as written before manifests existed
  _delete(_data_file(tmp_path / "c" / "3"))
  with pytest.warns(CorruptCheckpointWarning, match="restore failed"):
    _, meta = Checkpointer(str(tmp_path / "c"), read_only=True).restore(_state(0))
  assert meta == {"step": 2}


def test_a_damaged_manifest_makes_its_step_bad(tmp_path):
  _three_steps(tmp_path / "c")
  (tmp_path / "c" / "3" / MANIFEST).write_text('{"files": ')
  with pytest.warns(CorruptCheckpointWarning, match=f"unreadable {MANIFEST}"):
    _, meta = Checkpointer(str(tmp_path / "c"), read_only=True).restore(_state(0))
  assert meta == {"step": 2}


def test_every_step_damaged_is_a_one_line_error_naming_each(tmp_path):
  _three_steps(tmp_path / "c")
  for step, damage in zip((1, 2, 3), (_truncate, _overwrite, _delete)):
    damage(_data_file(tmp_path / "c" / str(step)))
  with pytest.warns(CorruptCheckpointWarning), pytest.raises(CheckpointError) as e:
    Checkpointer(str(tmp_path / "c"), read_only=True).restore(_state(0))
  message = str(e.value)
  assert "\n" not in message and message.startswith("no good checkpoint in ")
  assert all(f"step {s} (" in message for s in (1, 2, 3))
  assert "bytes" in message and "CRC-32" in message and "missing" in message


def test_intact_files_that_do_not_fit_the_target_stop_the_search_and_are_kept(tmp_path):
  _three_steps(tmp_path / "c")
  other = _state(0)
  other["params"]["w"] = jnp.zeros((5, 3))  # a different model than the one saved
  with pytest.raises(CheckpointError, match=r"step 3 \(files intact, but restore failed: .*config match"):
    Checkpointer(str(tmp_path / "c")).restore(other)
  assert Checkpointer(str(tmp_path / "c")).all_steps() == [1, 2, 3]


def test_an_explicitly_asked_step_does_not_fall_back(tmp_path):
  _three_steps(tmp_path / "c")
  _truncate(_data_file(tmp_path / "c" / "2"))
  with pytest.raises(CheckpointError, match=r"step 2 \("):
    Checkpointer(str(tmp_path / "c"), read_only=True).restore(_state(0), step=2)


def test_manifest_lists_every_file_of_the_step(tmp_path):
  _three_steps(tmp_path / "c")
  step_dir = tmp_path / "c" / "1"
  with open(step_dir / MANIFEST, encoding="utf-8") as f:
    listed = set(json.load(f)["files"])
  on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()} - {MANIFEST}
  assert listed == on_disk and verify_manifest(str(step_dir)) is None


@pytest.mark.slow
def test_train_rerun_over_a_damaged_latest_checkpoint_resumes_from_the_previous(tmp_path):
  """`launch.train` twice on one workdir, the latest checkpoint's data truncated in between: the rerun warns
  naming step 2, resumes from step 1 and ends with the params of the uninterrupted run, bit for bit."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.train", "--config=tests/train_config_tiny.py",
         "--config.iterations=2", f"--workdir={workdir}"]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  first = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(workdir / "results.json", encoding="utf-8") as f:
    uninterrupted = json.load(f)["final_params_digest"]
  _truncate(_data_file(workdir / "checkpoints" / "2"))
  again = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "checkpoint step 2 in" in again.stderr and "is damaged, skipped" in again.stderr
  with open(workdir / "log.jsonl", encoding="utf-8") as f:
    resumed = [r for r in map(json.loads, f) if r.get("event") == "resumed"]
  assert [r["iteration"] for r in resumed] == [1]
  with open(workdir / "results.json", encoding="utf-8") as f:
    assert json.load(f)["final_params_digest"] == uninterrupted
