"""Every notebook in colabs/ executes headless (nbclient) at smoke size, over 2 seeds, and shows what it is
for: the scores and derived metrics as mean [95% interval] and the paper-findings table.

All three run in CI (e2e). Measured with /usr/bin/time around `pytest -k <name>` (kernel and env workers
included; CPU = user + sys), on the 2-core machine under load (load average ~7: other jobs on the same cores):
  quickstart        91 s wall,  83 s CPU   (SFT + 1 GRPO iteration per seed, 1 turn of <= 512 tokens: each
                                            distinct SFT/GRPO batch shape costs ~10 s of XLA compile)
  transfer_matrix   82 s wall,  71 s CPU   (the study stages evaluated, not trained: see the notebooks'
  sequential        91 s wall,  81 s CPU    shrink(train=False); trained GRPO stages made it 120-300 s)
XLA's persistent compilation cache (a fresh one per test) lets the second seed and later stages reuse the
programs the first compiled.
"""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"[+-]?\d+\.\d{3}"
INTERVAL = rf"{NUMBER} \[{NUMBER}, {NUMBER}\]"  # report._ci's "mean [lo, hi]" and the notebooks' prints
# notebook -> (its workdir under AGENTGEN_WORKDIR, a metric it prints with its interval)
NOTEBOOKS = {"quickstart.ipynb": ("quickstart", "avg_success/rl/babyai/"),
             "transfer_matrix.ipynb": ("cross_env", "transfer/after:babyai/held_in/"),
             "sequential.ipynb": ("sequential", "bwt/textcraft>babyai")}


def execute(name: str) -> list[dict]:
  """Runs colabs/<name> (sizes and workdir from the AGENTGEN_* variables); returns its code cells' outputs."""
  book = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
  NotebookClient(book, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
  return [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_shows_interval_tables(name, tmp_path, monkeypatch):
  monkeypatch.setenv("AGENTGEN_SMOKE", "1")
  monkeypatch.setenv("AGENTGEN_WORKDIR", str(tmp_path))
  monkeypatch.setenv("AGENTGEN_ROOT", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # XLA's persistent cache: a program that another stage or seed already compiled is not compiled again
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla_cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  outputs = execute(name)
  assert not [o for o in outputs if o.get("output_type") == "error"]
  folder, metric = NOTEBOOKS[name]
  for seed in (0, 1):  # each seed ran in its own folder; the merged report sits above them
    assert os.path.exists(os.path.join(str(tmp_path), folder, f"seed_{seed}", "results.json"))
  assert os.path.getsize(os.path.join(str(tmp_path), folder, "report.md")) > 0
  printed = "".join(o["text"] for o in outputs if o.get("output_type") == "stream")
  assert "over seeds [0, 1]" in printed
  assert re.search(rf"{re.escape(metric)}\S*\s+{INTERVAL}", printed), printed
  shown = "".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
  assert "## Scores: mean [95% interval] over 2 seed(s) [0, 1]" in shown
  assert re.search(rf"\| {INTERVAL} \|", shown)  # a score cell with its interval
  findings = shown.split("## The paper's findings at this scale")[1]
  assert re.search(r"\*\*(reproduced|contradicted|inconclusive)\*\*", findings), findings
