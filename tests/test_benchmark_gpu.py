"""The GPU benchmark suite where no GPU is: its HBM floor against a hand count, its refusal to report GPU rows
from a CPU, the smoke run of every part (slow), and BENCHMARKS.md naming the machine of each row."""

import pytest

from agentgen_jax import models
from launch.benchmarks import gpu
from launch.benchmarks import report as benchmark


def test_decode_floor_counts_the_weights_once_and_the_live_cache():
  cfg = models.preset("smollm2-135m", dtype="bfloat16", param_dtype="bfloat16")
  # By hand: 134,515,008 params x 2 bytes; per cached token K and V of 30 layers x 64 rows x 3 heads x 64
  # dims x 2 bytes = 1,474,560 bytes; prompt 128 + 64 new tokens: 128 + 65 / 2 = 160.5 tokens on average.
  assert cfg.num_params() == 134_515_008
  assert gpu.kv_bytes_per_token(cfg, 64) == 1_474_560
  want = (134_515_008 * 2 + 160.5 * 1_474_560) / 4e12
  assert gpu.decode_floor_s(cfg, 64, 128, 64, 4e12) == pytest.approx(want, rel=1e-12)


def test_full_gpu_suite_on_a_cpu_is_a_one_line_refusal():
  with pytest.raises(SystemExit, match="the gpu suite needs a GPU"):
    gpu.run(quick=False)


def test_rows_of_two_machines_keep_their_own_machine_lines():
  cpu = {"backend": "cpu", "cpu": "Xeon", "date": "2026-11-30 10:00 UTC"}
  gpu_info = {"backend": "gpu", "device_kind": "NVIDIA H200", "date": "2026-12-01 10:00 UTC"}
  rows = [{"group": "sampler", "metric": "decode", "ours": 2.0, "reference": 1.0, "reference_name": "torch",
           "machine": "cpu", "date": cpu["date"]},
          {"group": "gpu: ceilings", "metric": "HBM bandwidth", "ours": 4300.0, "reference": None,
           "machine": "gpu", "date": gpu_info["date"]}]
  text = benchmark.render(rows, gpu_info, {"cpu": cpu, "gpu": gpu_info})
  assert "Machine (gpu rows): backend=gpu, device_kind=NVIDIA H200" in text
  assert "Machine (cpu rows, as of 2026-11-30 10:00 UTC): backend=cpu, cpu=Xeon" in text
  assert "## gpu: ceilings (gpu)" in text and "## sampler\n" in text
  assert "sampler: 2026-11-30 10:00 UTC" in text      # the older row's date is named


@pytest.mark.slow  # ~45 s: every part of the suite at smoke size on the CPU (no GPU rows come of it)
def test_quick_run_gives_every_row_and_passes_its_correctness_checks():
  rows = gpu.run(quick=True)
  assert not [r for r in rows if r["metric"] == "failed"], rows
  by_metric = {r["metric"]: r for r in rows}
  assert by_metric["float32 logits, relative error"]["met"]
  assert by_metric["float32 greedy tokens identical to transformers"]["met"]
  assert by_metric["sampler/learner log-prob gap, float32 ('highest')"]["met"]
  assert by_metric["decode step"]["reference"] > 0 and by_metric["MFU"]["ours"] > 0
