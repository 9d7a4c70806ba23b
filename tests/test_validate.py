"""Launch commands check the model, checkpoint, data folders and workdir before writing anything: a bad one
exits non-zero with one stderr line naming the value, what is wrong and what is accepted, and leaves no
workdir behind (an existing one untouched). A checkpoint found damaged only when read ends in one line too."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from agentgen_jax.checkpoint import Checkpointer
from launch import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRAIN = [sys.executable, "-m", "launch.train", "--config=tests/train_config_tiny.py"]
_STUDY = [sys.executable, "-m", "launch.study", "--config=launch/configs/study_difficulty_small.py"]
_EVAL = [sys.executable, "-m", "launch.evaluate", "--envs=textcraft"]
MODEL_ACCEPTED = ("accepted: a preset (tiny, small), the embedded name smollm2-135m-instruct, an HF folder "
                  "with config.json + *.safetensors, or a .gguf file")


def _fails_in_one_line(cmd: list[str]) -> str:
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr[-3000:]
  return lines[0]


def _snapshot(folder) -> dict:
  return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ---- subprocesses: one line, nothing written -----------------------------------------------------------

@pytest.mark.e2e  # a launch command in a subprocess
@pytest.mark.parametrize("cmd", [_TRAIN, _STUDY], ids=["train", "study"])
def test_missing_model_path_fails_in_one_line_without_making_the_workdir(tmp_path, cmd):
  workdir = tmp_path / "new"
  line = _fails_in_one_line(cmd + ["--config.model=/does/not/exist", f"--workdir={workdir}"])
  assert line == f"FATAL: --config.model=/does/not/exist: no such file or folder, and not a preset (tiny, " \
                 f"small) or an embedded name; {MODEL_ACCEPTED}"
  assert not workdir.exists()


@pytest.mark.e2e  # a launch command in a subprocess
def test_bad_model_leaves_an_existing_workdir_untouched(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  before = _snapshot(workdir)
  line = _fails_in_one_line(_TRAIN + [f"--config.model={tmp_path}", f"--workdir={workdir}"])
  assert "the folder has no config.json and no *.safetensors" in line
  assert _snapshot(workdir) == before


@pytest.mark.e2e  # a launch command in a subprocess
def test_missing_checkpoint_fails_in_one_line_without_making_the_workdir(tmp_path):
  workdir = tmp_path / "eval"
  line = _fails_in_one_line(_EVAL + ["--checkpoint=/does/not/exist", f"--workdir={workdir}"])
  assert line.startswith("FATAL: --checkpoint=/does/not/exist: no such file or folder")
  assert MODEL_ACCEPTED in line and "or a training workdir" in line
  assert not workdir.exists()


@pytest.mark.e2e  # a launch command in a subprocess
def test_workdir_that_is_a_file_fails_in_one_line_and_is_left_alone(tmp_path):
  file = tmp_path / "results"
  file.write_text("keep")
  line = _fails_in_one_line(_TRAIN + [f"--workdir={file}"])
  assert line == f"FATAL: --workdir={file}: a file, not a folder; accepted: a folder (made if missing)"
  assert file.read_text() == "keep"


@pytest.mark.e2e  # a launch command in a subprocess
def test_benchmark_output_that_is_a_file_fails_before_benchmarking(tmp_path):
  file = tmp_path / "docs"
  file.write_text("keep")
  line = _fails_in_one_line([sys.executable, "-m", "launch.benchmark", "--quick", f"--out={file}"])
  assert line == f"FATAL: --out={file}: a file, not a folder; accepted: a folder (made if missing)"
  assert file.read_text() == "keep"


@pytest.mark.e2e  # a launch command in a subprocess
def test_missing_data_folder_fails_in_one_line(tmp_path):
  config = tmp_path / "config.py"
  config.write_text("from tests import train_config_tiny\n\n\ndef get_config():\n"
                    "  c = train_config_tiny.get_config()\n  c.envs = ('webshop',)\n"
                    "  c.env_kwargs = {'webshop': {'data_dir': '/no/webshop'}}\n  return c\n")
  workdir = tmp_path / "new"
  line = _fails_in_one_line([sys.executable, "-m", "launch.train", f"--config={config}",
                             f"--workdir={workdir}"])
  assert line.startswith("FATAL: --config.env_kwargs.webshop.data_dir=/no/webshop: no such folder; "
                         "accepted: a folder with WebShop's items_shuffle*.json")
  assert not workdir.exists()


@pytest.mark.e2e  # a launch command in a subprocess
def test_evaluate_over_only_damaged_checkpoints_fails_in_one_line(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"model": "tiny", "rollout": {}}))
  ckpt = Checkpointer(str(run / "checkpoints"))
  ckpt.save(1, {"params": {"w": jnp.ones((8, 8))}}, {})
  ckpt.close()
  for data in (run / "checkpoints" / "1" / "state" / "d").iterdir():
    data.write_bytes(data.read_bytes()[:3])
  done = subprocess.run(_EVAL + [f"--checkpoint={run}", f"--workdir={tmp_path / 'eval'}"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "CorruptCheckpointWarning: checkpoint step 1 in" in done.stderr  # the warning, then the error
  line = done.stderr.strip().splitlines()[-1]
  assert line.startswith(f"FATAL: --checkpoint={run}: no good checkpoint in {run / 'checkpoints'}: step 1 (")
  assert not (tmp_path / "eval").exists()


# ---- the checks themselves -----------------------------------------------------------------------------

def test_models_that_are_accepted(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  gguf = tmp_path / "m.gguf"
  gguf.write_bytes(b"GGUF\x03\x00")
  for value in ("tiny", "small", str(hf), str(gguf)):
    validate.model(value)


@pytest.mark.parametrize("content,name,expected", [
    (b"PK\x03\x04", "m.gguf", "not a GGUF file"),
    (b"GGUF", "m.bin", "a file that is not a .gguf"),
])
def test_model_files_that_are_refused(tmp_path, content, name, expected):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(validate.InputError, match=expected):
    validate.model(str(tmp_path / name))


def test_training_workdir_without_a_checkpoint_is_refused(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(validate.InputError, match="a training workdir without a checkpoint"):
    validate.checkpoint(str(tmp_path))
  (tmp_path / "checkpoints" / "3").mkdir()
  validate.checkpoint(str(tmp_path))


def test_data_folder_without_its_files_is_refused(tmp_path):
  with pytest.raises(validate.InputError, match=r"data_dir=.*: the folder has no corpus.jsonl; accepted"):
    validate.data_folders({"searchqa": {"data_dir": str(tmp_path)}}, ["searchqa"])
  (tmp_path / "corpus.jsonl").write_text("")
  validate.data_folders({"searchqa": {"data_dir": str(tmp_path)}}, ["searchqa"])
  validate.data_folders({}, ["searchqa", "babyai"])  # no data_dir: the env generates its data


def test_workdir_under_a_file_cannot_be_made(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(validate.InputError, match="cannot be made"):
    validate.workdir(str(tmp_path / "f" / "run"))
  validate.workdir(str(tmp_path / "a" / "b"))  # missing folders under a writable one are fine
  assert not (tmp_path / "a").exists()
