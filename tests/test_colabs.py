"""Every notebook in colabs/ executes headless (nbclient) on the smallest sizes of its config.

The quickstart notebook (one SFT + 1-iteration GRPO train job through the flat API) runs in CI (e2e):
measured 4 min 18 s wall but 1 min 56 s of CPU (user + sys, kernel included) on the 2-core machine while it
ran ~12 other processes, so about a minute idle. The two study notebooks run several stages each (the
cross-env one: base + one stage per env) and stay in the slow suite."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = [pytest.param("quickstart.ipynb", marks=pytest.mark.e2e),
             pytest.param("transfer_matrix.ipynb", marks=pytest.mark.slow),
             pytest.param("sequential.ipynb", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("AGENTGEN_SMOKE", "1")
  monkeypatch.setenv("AGENTGEN_WORKDIR", str(tmp_path))
  monkeypatch.setenv("AGENTGEN_ROOT", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  book = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
  NotebookClient(book, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
  outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any(o.get("output_type") in ("stream", "display_data", "execute_result") for o in outputs)
  assert os.path.exists(os.path.join(str(tmp_path), os.listdir(str(tmp_path))[0], "report.md"))
