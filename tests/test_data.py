"""Episodes round-trip through the TFDS array_record dataset and the JSONL copy."""

import subprocess
import sys
import tempfile

import numpy as np
import pytest

from agentgen_jax import data


def _records(n):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    t = int(rng.integers(3, 40))
    out.append({"tokens": rng.integers(0, 1000, t), "loss_mask": rng.integers(0, 2, t),
                "logprobs": -rng.random(t), "rewards": np.where(np.arange(t) == t - 1, 1.0, 0.0),
                "turn_ids": np.arange(t) // 5, "env": "babyai", "task": f"GoToLocal/{i}",
                "success": i % 2 == 0, "score": 0.25 * (i % 5), "turns": 3, "n_tokens": t,
                "invalid": i % 3, "tag": "eval:base", "transcript": [{"role": "user", "content": "hé"}]})
  return out


def test_episodes_round_trip_through_tfds(tmp_path):
  records = _records(7)
  path = data.write_episodes(records, str(tmp_path / "ep"))
  source = data.read_episodes(str(tmp_path / "ep"))
  assert len(source) == 7
  for i, original in enumerate(records):
    got = data.decode_record(source[i])
    np.testing.assert_array_equal(got["tokens"], original["tokens"])
    np.testing.assert_allclose(got["logprobs"], original["logprobs"], rtol=1e-6)
    np.testing.assert_array_equal(got["loss_mask"], original["loss_mask"])
    assert got["task"] == original["task"] and bool(got["success"]) == original["success"]
    assert got["transcript"] == '[{"role": "user", "content": "h\\u00e9"}]'
  assert path.endswith("1.0.0")


def test_read_without_tensorflow_in_a_fresh_process(tmp_path):
  data.write_episodes(_records(3), str(tmp_path / "ep"))
  code = ("import sys; from agentgen_jax import data; s = data.read_episodes(sys.argv[1]); "
          "print(len(s), int(s[2]['n_tokens'])); assert 'tensorflow' not in sys.modules")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ep")], capture_output=True, text=True,
                       check=True)
  assert out.stdout.split() == ["3", str(len(_records(3)[2]["tokens"]))]


def test_jsonl_copy_matches(tmp_path):
  records = _records(4)
  data.write_episodes(records, str(tmp_path / "ep"))
  rows = data.read_jsonl(str(tmp_path / "ep" / "train.jsonl"))
  assert [r["task"] for r in rows] == [r["task"] for r in records]
  assert rows[1]["tokens"] == list(records[1]["tokens"])


def test_mismatched_field_length_is_a_clear_error():
  bad = _records(1)[0]
  bad["loss_mask"] = bad["loss_mask"][:-1]
  with pytest.raises(ValueError, match="loss_mask"):
    data.normalize_record(bad)


def test_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TFDS dataset"):
    data.read_episodes(str(tmp_path))


def test_writing_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  data.write_episodes(_records(2), str(tmp_path / "a"))
  data.write_episodes(_records(3), str(tmp_path / "b"), split="test")
  assert list(temp.iterdir()) == []
  assert tempfile.tempdir == str(temp)  # restored


def test_writing_prints_nothing(tmp_path, capfd):
  data.write_episodes(_records(2), str(tmp_path / "a"))
  out, err = capfd.readouterr()
  assert out == "" and "Generating" not in err and "Shuffling" not in err, (out, err[-500:])
