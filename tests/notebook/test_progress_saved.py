"""client.map()'s progress bar in a saved notebook: the widget is replaced, when the batch ends, by one line of
text (rows, errors, cached, time), so a notebook reopened without the kernel shows no "model not found"."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)
WIDGET = "application/vnd.jupyter.widget-view+json"

SETUP = """
from oblix_nb import OblixClient
from batch.test_batch import FakeBackend
client = OblixClient()
def reply(messages):
    if messages[-1]['content'] == 'row 3':
        raise ConnectionError('refused')
    return 'ok'
model = FakeBackend(delay=0.01, reply=reply)
client._models[model.model_id] = model
rows = [f"row {i}" for i in range(N)]
"""


def execute(tmp_path, cells: list[str]):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {"OBLIX_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")] +
                                         [p for p in [os.environ.get("PYTHONPATH")] if p])}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4)  # what a reader reopens


@pytest.mark.parametrize("n, call", [(12, "await client.map(rows, '{value}', concurrency=2)"),
                                     (7, "client.map_sync(rows, '{value}', concurrency=3)")])
def test_saved_notebook_keeps_a_readable_final_line(tmp_path, n, call):
    nb = execute(tmp_path, [SETUP.replace("N)", f"{n})"), f"df = {call}\ndf.error.notna().sum()",
                            f"df2 = {call}\nint(df2.cached.sum())"])
    for cell, errors, cached in ((nb.cells[1], 1, 0), (nb.cells[2], 1, n - 1)):
        outputs = cell.outputs
        assert not any(WIDGET in o.get("data", {}) for o in outputs), outputs  # no widget left behind
        lines = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "display_data"]
        finals = [t for t in lines if t.startswith("map ")]
        assert len(finals) == 1, lines
        m = re.match(r"map (finished|stopped): (\d+)/(\d+) rows, (\d+) errors?, (\d+) cached, ([\d.]+) s", finals[0])
        assert m, finals[0]
        assert m.group(1) == "finished" and int(m.group(2)) == int(m.group(3)) == n
        # a row that fails is retried on the second run (not cached): the counts say so
        assert int(m.group(4)) == errors and int(m.group(5)) == cached and float(m.group(6)) >= 0
