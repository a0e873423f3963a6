"""Sessions the user meant (21.4): %oblix_chat with a question starts its own session, a session asked with
--context is titled from the question, %oblix_stats labels requests without a reply; --theme is exact."""
from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from batch.test_batch import FakeBackend  # noqa: E402
from test_magics import client, ip, run  # noqa: E402,F401  (ip is a fixture)

from oblix_nb import runtime  # noqa: E402
from oblix_nb.notebook.references import CONTEXT_HEADING  # noqa: E402


@pytest.fixture
def fake(ip):  # noqa: F811
    c = client()
    backend = FakeBackend(name="meant", reply=lambda messages: "fine")
    c._models[backend.model_id] = backend
    return c


def unrelated(c) -> str:
    sid = runtime.run(c.create_and_use_session(title="Unrelated work"))
    c.sessions.append_message(sid, "user", "earlier, about something else")
    return sid


def wait_messages(c, sid, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(c.sessions.messages(sid)) < n:
        time.sleep(0.05)
    return c.sessions.messages(sid)


@pytest.mark.parametrize("question", ["What is a p-value?", "Explain  groupby   in pandas", "why?"])
def test_chat_with_a_question_starts_its_own_session(ip, fake, question):  # noqa: F811
    old = unrelated(fake)
    result, _ = run(ip, f"%oblix_chat {question}")
    assert result.success, result.error_in_exec
    sid = fake.current_session_id
    assert sid != old
    assert fake.load_session(sid)["title"] == " ".join(question.split()) or \
        fake.load_session(sid)["title"].startswith(question.split()[0])
    assert [m["role"] for m in wait_messages(fake, sid, 2)] == ["user", "assistant"]
    assert len(fake.sessions.messages(old)) == 1  # nothing appended to the unrelated session


def test_chat_session_flag_and_bare_panel_keep_the_session(ip, fake):  # noqa: F811
    old = unrelated(fake)
    result, _ = run(ip, "%oblix_chat")  # no question: the panel opens on the current session
    assert result.success and fake.current_session_id == old
    result, _ = run(ip, f"%oblix_chat --session {old} and one more thing")
    assert result.success and fake.current_session_id == old
    assert len(wait_messages(fake, old, 3)) == 3


@pytest.mark.parametrize("cell, expected", [
    ("%%oblix --new-session --context df\nWhat is the mean price?", "What is the mean price?"),
    ("%%oblix --new-session --max-tokens 8\nSummarise {df} briefly", "Summarise `df` briefly"),
    ("%%oblix --new-session --context df --context d\nWhich column has gaps?", "Which column has gaps?"),
])
def test_context_does_not_become_the_title(ip, fake, cell, expected):  # noqa: F811
    ip.user_ns["df"] = pd.DataFrame({"price": [1.0, None, 3.0], "qty": [1, 2, 3]})
    ip.user_ns["d"] = {"a": 1}
    result, _ = run(ip, cell)
    assert result.success, result.error_in_exec
    session = fake.load_session(fake.current_session_id)
    assert session["title"] != CONTEXT_HEADING and not session["title"].startswith("Context")
    assert session["title"].startswith(expected.split()[0])
    first = fake.sessions.messages(fake.current_session_id)[0]["content"]
    assert first.startswith(CONTEXT_HEADING)  # the context is still sent and stored


def test_fix_with_context_is_titled_from_the_error(ip, fake):  # noqa: F811
    ip.user_ns["df"] = pd.DataFrame({"price": [1.0]})
    run(ip, "df['cost']")
    result, _ = run(ip, "%oblix_fix --new-session --context df")
    assert result.success, result.error_in_exec
    title = fake.load_session(fake.current_session_id)["title"]
    assert "KeyError" in title and not title.startswith("Context")


def test_stats_labels_requests_without_a_reply(ip, fake):  # noqa: F811
    sid = fake.sessions.create(title="s")
    fake.sessions.append_message(sid, "user", "q1", request_id="r1")          # failed on every model
    fake.sessions.append_message(sid, "user", "q2", request_id="r2")
    fake.sessions.append_message(sid, "assistant", "a", request_id="r2", model_id="x:y", routing={"target": "local"})
    for by in ("model", "route"):
        result, _ = run(ip, f"%oblix_stats --by {by} --no-plot --var t")
        frame = result.result
        assert result.success and isinstance(frame, pd.DataFrame)
        assert not frame.index.isna().any() and None not in list(frame.index)
        labels = [k for k in frame.index if str(k).startswith("(no reply")]
        assert len(labels) == 1 and frame.loc[labels[0], "requests"] == 1
        assert ip.user_ns["t"] is frame
    assert fake.stats(by="model").index.isna().any()  # client.stats() itself keeps None


@pytest.mark.parametrize("line, theme, follow", [("", "light", True), ("--theme dark", "dark", False),
                                                 ("--theme light", "light", False),
                                                 ("--theme auto", "light", True)])
def test_theme_flag_is_exact(ip, fake, monkeypatch, line, theme, follow):  # noqa: F811
    seen = {}
    real = type(fake).plot_stats

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(fake), "plot_stats", spy)
    result, _ = run(ip, f"%oblix_stats {line}")
    assert result.success, result.error_in_exec
    assert seen["theme"] == theme and seen["follow_page"] is follow
