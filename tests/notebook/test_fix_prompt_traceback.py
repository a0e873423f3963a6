"""%oblix_fix and {Err[N]} send what a strong model needs: the user's own frames kept when a long traceback is
trimmed, machine paths shortened, and a DataFrame's columns for KeyError/AttributeError without --context."""
from __future__ import annotations

import os
import re

import pytest
from test_notebook_context import count, ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb.notebook.cell import fix_prompt
from oblix_nb.notebook.errhook import CellError, error_log
from oblix_nb.notebook.references import build_prompt
from oblix_nb.notebook.tracebacks import short_paths, trim

HOME = os.path.expanduser("~")
LIB_PATHS = ["/home/alice/.venv/lib/python3.11/site-packages", "/opt/conda/envs/ml/lib/python3.10/site-packages",
             "/usr/lib/python3/dist-packages", r"C:\Users\bob\venv\Lib\site-packages",
             "/work/main/.venv/lib/python3.11/site-packages"]


def ipython_traceback(lib: str, n_lib: int, user_frames: list[tuple[str, str]], sep: str = "/") -> str:
    """An IPython-style traceback: user frames (header, failing line), then ``n_lib`` long library frames."""
    parts = ["-" * 75, "KeyError                                  Traceback (most recent call last)"]
    for header, line in user_frames:
        parts += [header, "      1 x = 1", f"----> 2 {line}", "      3 y = 2", ""]
    for i in range(n_lib):
        path = sep.join([lib, "pandas", "core", f"mod{i}.py"])
        parts += [f"File {path}:{100 + i}, in Thing.method{i}(self, key)"]
        parts += [f"   {90 + j}     padding_line_{j} = compute(self, key, {j})  # long library source" for j in range(8)]
        parts += [f"-> {100 + i}     return self._engine.get_loc{i}(key)", ""]
    parts.append("KeyError: 'cost'")
    return "\n".join(parts)


def plain_traceback(lib: str, n_lib: int, user_lines: list[str]) -> str:
    parts = ["Traceback (most recent call last):"]
    for i, line in enumerate(user_lines):
        parts += [f'  File "{HOME}/project/analysis.py", line {10 + i}, in step{i}', f"    {line}"]
    for i in range(n_lib):
        parts += [f'  File "{lib}/numpy/core/f{i}.py", line {i + 1}, in inner{i}',
                  f"    return _wrapreduction(a, np.add, 'sum', axis, dtype, out, keepdims={i})" + " " * 40]
    parts.append("AttributeError: 'DataFrame' object has no attribute 'colour'")
    return "\n".join(parts)


@pytest.mark.parametrize("lib", LIB_PATHS)
@pytest.mark.parametrize("n_lib, budget", [(5, 900), (40, 1500), (200, 3000)])
def test_trim_keeps_every_user_frame_and_the_error_line(lib, n_lib, budget):
    sep = "\\" if lib.startswith("C:") else "/"
    users = [("Cell In[7], line 2", "total = sales['cost'].sum()"),
             ("Cell In[7], line 5, in helper(frame)", "return frame[column]"),
             (f"File {HOME}{sep}project{sep}etl.py:41, in load(path)", "df = frame.loc[:, wanted]")]
    text = ipython_traceback(lib, n_lib, users, sep)
    out = trim(text, budget)
    assert len(out) <= budget
    for header, line in users:
        assert line in out, (header, out)
    assert out.rstrip().endswith("KeyError: 'cost'")
    assert "site-packages" not in out and "dist-packages" not in out and lib not in out
    assert HOME not in out or HOME in ("/", "")
    assert re.search(r"library frames? omitted: pandas", out)


@pytest.mark.parametrize("lib", LIB_PATHS[:3])
def test_trim_plain_python_tracebacks(lib):
    users = ["result = pipeline(df)", "df.colour.sum()"]
    out = trim(plain_traceback(lib, 60, users), 1200)
    assert len(out) <= 1200 and all(u in out for u in users)
    assert out.endswith("no attribute 'colour'") and "site-packages" not in out and "dist-packages" not in out
    assert "~/project/analysis.py" in out


def test_short_paths():
    cases = {
        "/home/alice/.venv/lib/python3.12/site-packages/pandas/core/frame.py": "pandas/core/frame.py",
        r"C:\Users\bob\venv\Lib\site-packages\numpy\core\_methods.py": r"numpy\core\_methods.py",
        "/usr/lib/python3/dist-packages/requests/api.py": "requests/api.py",
        "/opt/conda/envs/x/lib/python3.10/asyncio/events.py": "asyncio/events.py",
        "/tmp/ipykernel_4242/3312345.py": "<cell>",
        "/usr/local/lib/python3.11/json/decoder.py": "json/decoder.py",
    }
    for path, short in cases.items():
        assert short_paths(f'File "{path}", line 3') == f'File "{short}", line 3', path
    assert short_paths(f"{HOME}/data/x.csv") == "~/data/x.csv"
    assert short_paths("no paths here: 1/2 and a/b") == "no paths here: 1/2 and a/b"


def test_a_short_traceback_is_only_shortened():
    text = ipython_traceback(LIB_PATHS[0], 1, [("Cell In[3], line 2", "x['a']")])
    assert trim(text, 10_000) == text.replace(LIB_PATHS[0] + "/", "")


# ------------------------------------------------------------------ recorded in a real IPython shell
CASES = [
    # (cell raising, the DataFrame name on the failing line, a column that must be listed)
    ("import pandas as pd\nsales = pd.DataFrame({'price': [1.0], 'qty': [3]})\nsales['cost']", "sales", "'qty'"),
    ("import pandas as pd\norders = pd.DataFrame({'Amount': [1], 'when': ['x']})\norders.amount", "orders",
     "'Amount'"),
    ("import pandas as pd\ndef total(frame):\n    return frame['cost'].sum()\n\n"
     "total(pd.DataFrame({'unit_price': [1], 'n': [2]}))", "frame", "'unit_price'"),
    ("import pandas as pd\nwide = pd.DataFrame({f'c{i}': [i] for i in range(100)})\nwide.loc[:, 'zz']", "wide",
     "'c59'"),
]


@pytest.mark.parametrize("cell, name, column", CASES)
def test_dataframe_columns_reach_fix_and_err_without_context(ip, cell, name, column):  # noqa: F811
    result, _ = run(ip, cell)
    assert not result.success
    record = error_log(ip).get(count(result))
    assert record is not None and record.ename in ("KeyError", "AttributeError")
    assert f"`{name}` is a pandas DataFrame" in record.hint and column in record.hint
    prompt = fix_prompt(record, code_only=False, max_chars=6000)
    assert f"`{name}` is a pandas DataFrame" in prompt and column in prompt
    assert "site-packages" not in prompt
    err = build_prompt(f"Why? {{Err[{count(result)}]}}", ip).question
    assert column in err and "site-packages" not in err


@pytest.mark.parametrize("cell", ["{}['nope']", "import types\ntypes.SimpleNamespace(a=1).b", "1/0",
                                  "import pandas as pd\ns = pd.Series([1])\ns.nope"])
def test_no_hint_when_no_dataframe_is_involved(ip, cell):  # noqa: F811
    result, _ = run(ip, cell)
    record = error_log(ip).get(count(result))
    assert record is not None and record.hint == ""
    assert "What the failing line works on" not in fix_prompt(record, code_only=True, max_chars=4000)


def test_old_records_without_hint_still_work():
    record = CellError(3, "KeyError", "'x'", "Traceback...\nKeyError: 'x'", "d['x']")
    assert "KeyError: 'x'" in fix_prompt(record, code_only=True, max_chars=2000)
