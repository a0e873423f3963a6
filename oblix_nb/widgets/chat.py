"""ChatPanel: a chat over one session, as an anywidget (``chat.js`` + ``chat.css``, no build step).

    from oblix_nb.widgets import ChatPanel
    ChatPanel()            # the kernel's shared client; the embedded model is hooked on first send if none is

One code path for JupyterLab 4, Notebook 7, VS Code, Colab and marimo: the front end is an ES module that
anywidget loads; the state lives in traits (``sessions``, ``session``, ``messages``, ``running``, ``status``,
``draft``); a streaming reply travels as custom messages carrying only the new text (``delta``), never the
whole reply again. Key handling (Enter sends, Shift+Enter newline) is the module's own.

Send schedules ``client.execute(..., sink=...)`` on the package's background loop
(:func:`oblix_nb.runtime.submit`) and returns at once, so the kernel keeps handling messages while the reply
streams: Stop (``job.cancel()``) works mid-stream, and the partial reply is shown and stored flagged
``partial``. Deltas are sent at most every ``stream_interval`` seconds (default 0.1), plus one final update
that replaces the live bubble by the reply rendered as safe Markdown with its badge.

The picker follows the store (:mod:`.live`): sessions made or changed elsewhere (``%%oblix``, code,
another kernel) appear within about a second, and the shown session is re-read when it changed. The
transcript shows the latest ``window`` messages of a session (default 100; "show earlier" loads more).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from .. import default_model, runtime
from .._util import title_from
from ..errors import NoModelHookedError
from ..notebook import state
from ..streaming import ThrottledSink, reading_status
from .html import badge_html, message_html, one_line, redact, session_labels, stored_message_html
from .live import watch

if TYPE_CHECKING:
    from ..client import OblixClient

HERE = Path(__file__).parent
DEFAULT_INTERVAL = 0.1
NEW_SESSION = ""  # ``session`` while the panel shows a new session (created on the first send)


class _LiveReply(ThrottledSink):
    """The StreamSink of one reply. Called on the package loop thread: sends the new text as ``delta``
    messages (throttled) and, at the end, the final bubble."""

    def __init__(self, panel: ChatPanel, key: str, session_id: str, interval: float):
        super().__init__(interval)
        self.panel = panel
        self.key = key
        self.session_id = session_id
        self.info: dict | None = None
        self.default_why: str | None = None  # why the model answering was hooked by default (first reply)
        self.response: dict | None = None
        self.error: BaseException | None = None
        self.renders = 0          # all updates sent, the final one included (``updates``: the throttled ones)
        self.shown = 0            # characters sent as deltas so far
        self.started_at = time.monotonic()
        self.first_text_at: float | None = None
        self.html = message_html("assistant", "", streaming=True,
                                 badge=badge_html(note="waiting for the model…", pending=True))

    def _live_html(self, note: str) -> str:
        info = self.info or {}
        return message_html("assistant", "", streaming=True,
                            badge=badge_html(info.get("model_id"), info.get("routing"), note=note, pending=True))

    def snapshot(self) -> str:
        """The text the front end has been sent so far (for a view that appears mid-stream)."""
        with self._lock:
            return self.text[: self.shown]

    def _show(self, html: str) -> None:
        self.html = html
        self.panel._replace_message(self.key, html)
        self.renders += 1

    # -- StreamSink
    def start(self, info: dict) -> None:
        reading = reading_status(info.get("input_tokens"))
        with self._lock:
            self.info = info
            if not self.closed:
                self._show(self._live_html(reading))
        self.panel._set_status(f"{reading.rstrip('…')} · {info.get('model_id', '?')} …")

    def progress(self, progress) -> None:
        """How far the model has read the prompt (the embedded engine reports it; servers do not)."""
        reading = reading_status((self.info or {}).get("input_tokens"), progress)
        with self._lock:
            if self.closed or self.first_text_at is not None:
                return
            self._show(self._live_html(reading))
        self.panel._set_status(f"{reading.rstrip('…')} · {(self.info or {}).get('model_id', '?')} …")

    def write(self, text: str) -> None:
        if self.first_text_at is None:
            self.first_text_at = time.monotonic()
            with self._lock:
                if not self.closed:
                    self._show(self._live_html("streaming…"))
            self.panel._set_status(f"streaming from {(self.info or {}).get('model_id', '?')} …")
        super().write(text)

    def redraw(self, text: str) -> None:  # under self._lock (ThrottledSink)
        delta = text[self.shown:]
        if delta:
            self.shown = len(text)
            self.panel._post("delta", key=self.key, text=delta)
            self.renders += 1

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        with self._lock:
            if not self._close_locked():
                return
            info = self.info or {}
            if error is None and response is not None:
                self.response = response
                text = response.get("response", self.text)
                # the first reply of a model hooked by default says so (the why goes to the status line)
                self.default_why = default_model.take_reason(self.panel.client, response.get("model_id"))
                self._show(message_html("assistant", text, badge=badge_html(
                    response.get("model_id"), response.get("routing_decision"), response.get("metrics"),
                    partial=bool(response.get("partial")),
                    note="hooked by default" if self.default_why else None)))
                return
            self.error = error
            if error is None or isinstance(error, (asyncio.CancelledError, KeyboardInterrupt,
                                                   concurrent.futures.CancelledError)):
                if self.text:
                    badge = badge_html(info.get("model_id"), info.get("routing"), partial=True,
                                       note=f"{len(self.text)} characters kept")
                else:
                    badge = badge_html(info.get("model_id"), info.get("routing"),
                                       note="■ stopped before the first token")
                self._show(message_html("assistant", self.text, partial=True, badge=badge))
            else:
                shown = redact(f"{type(error).__name__}: {error}", self.panel.client)
                self._show(message_html("assistant", self.text, partial=bool(self.text), error=True,
                                        badge=badge_html(info.get("model_id"), info.get("routing"),
                                                         partial=bool(self.text), error=shown)))

    def fail(self, error: BaseException) -> None:
        """The job ended without the sink being ended (an error or a stop before the model was called)."""
        with self._lock:
            if self.closed:
                return
        self.end(None, error)


def _ipython_kernel():
    """The running IPython kernel's shell (a Jupyter frontend can show ``set_next_input``), else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    from ..notebook.display import has_display_frontend

    shell = get_ipython()
    return shell if has_display_frontend(shell) else None


class ChatPanel(anywidget.AnyWidget):
    """A chat over one session of ``client`` (default: the kernel's shared client).

    ``session_id``: the session to show (default: the client's current session, else a new session that is
    created, titled after the first prompt, on the first send). ``stream_interval``: seconds between
    streamed updates. ``auto_hook``: if no model is hooked when sending, hook the embedded model
    (SmolLM2-135M) when it is installed. ``window``: how many of the latest messages to show.
    ``follow_store``: follow the store (sessions made or changed elsewhere). Other keyword arguments go to
    ``client.execute`` (``max_tokens``, ``temperature``, ``model_id``, sampling options).

    Python API: :meth:`send`, :meth:`stop`, :meth:`wait`, :meth:`select_session`, :meth:`new_session`,
    :meth:`show_earlier`; ``session_id``, ``busy``, ``reply_text``, ``job``, ``last_response``,
    ``last_outcome`` ("ok", "stopped", "error"), ``last_error``, ``messages_html``; traits ``sessions``
    (picker entries ``{id, label}``), ``session``, ``messages`` (``{key, role, html}``), ``earlier``,
    ``running``, ``status``, ``status_error``, ``draft`` (the input box's text).
    """

    # keys.js (shared: notebook shortcuts stay out of the widget) in front of chat.js, as common.css is
    _esm = (HERE / "keys.js").read_text(encoding="utf-8") + (HERE / "chat.js").read_text(encoding="utf-8")
    _css = (HERE / "common.css").read_text(encoding="utf-8") + (HERE / "chat.css").read_text(encoding="utf-8")

    sessions = traitlets.List(traitlets.Dict()).tag(sync=True)
    session = traitlets.Unicode(NEW_SESSION).tag(sync=True)
    messages = traitlets.List(traitlets.Dict()).tag(sync=True)
    earlier = traitlets.Int(0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    status_error = traitlets.Bool(False).tag(sync=True)
    draft = traitlets.Unicode("").tag(sync=True)
    # "Insert cell" falls back to IPython's set_next_input where the front end cannot reach the notebook; in
    # hosts with neither (marimo, no IPython kernel) the button is not shown
    can_insert_cell = traitlets.Bool(False).tag(sync=True)

    def __init__(self, client: OblixClient | None = None, session_id: str | None = None, *, stream_interval: float = DEFAULT_INTERVAL,
                 auto_hook: bool = True, picker_limit: int = 50, window: int = 100, follow_store: bool = True,
                 **execute_kwargs: Any):
        super().__init__()
        self._unwatch: Callable[[], object] = lambda: None
        self.client = client if client is not None else state.get_client()
        self.stream_interval = stream_interval
        self.auto_hook = auto_hook
        self.picker_limit = picker_limit
        self.window = window
        self.execute_kwargs = dict(execute_kwargs)
        self._lock = threading.RLock()
        self._idle = threading.Event()
        self._idle.set()
        self._replies = 0
        self.job: runtime.Job | None = None
        self.reply: _LiveReply | None = None
        self.last_response: dict | None = None
        self.last_error: BaseException | None = None
        self.last_outcome: str | None = None   # "ok", "stopped" or "error"
        self._shown_version: tuple | None = None  # (updated_at, message_count) of the shown session
        self._shown_limit = window
        self.on_msg(self._on_front_end)
        self.can_insert_cell = _ipython_kernel() is not None

        if session_id is None:
            current = self.client.current_session_id
            if current is not None and self.client.sessions.exists(current):
                session_id = current
        if session_id is not None:
            self.select_session(session_id)
        else:
            self.new_session(quiet=True)
        if follow_store:
            self._unwatch = watch(self.client.sessions, self._on_store_change)

    def __repr__(self) -> str:  # the text/plain fallback of the widget's display
        return (f"<ChatPanel session={self.session_id or 'new'} messages={len(self.messages)}"
                f"{' streaming' if self.busy else ''}>")

    # ------------------------------------------------------------------ state
    @property
    def session_id(self) -> str | None:
        """The shown session's id (None for a new session, created on the first send)."""
        return self.session or None

    @property
    def messages_html(self) -> str:
        """The transcript's HTML (all shown bubbles, the live one with the text streamed so far)."""
        parts = []
        reply = self.reply
        for m in self.messages:
            html = m["html"]
            if reply is not None and m["key"] == reply.key and "oblix-live-text" in html:
                html = message_html("assistant", reply.snapshot(), streaming=True)
            parts.append(html)
        return "\n".join(parts)

    @property
    def busy(self) -> bool:
        """True while a reply is being generated (from Send until the reply is stored and shown)."""
        return not self._idle.is_set()

    @property
    def reply_text(self) -> str:
        """The text of the current (or last) reply so far."""
        reply = self.reply
        return reply.text if reply is not None else ""

    def _post(self, kind: str, **data: Any) -> None:
        """A custom message to the front end (``anywidget.AnyWidget.send``; ``send`` here sends a prompt)."""
        anywidget.AnyWidget.send(self, {"kind": kind, **data})

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status_error = error
        self.status = text

    def _announce(self, text: str) -> None:
        """Read out by screen readers (the panel's aria-live region)."""
        self._post("announce", text=text)

    def _replace_message(self, key: str, html: str) -> None:
        with self._lock:
            self.messages = [dict(m, html=html) if m["key"] == key else m for m in self.messages]

    def _refresh_picker(self) -> None:
        """Recent sessions (newest first), plus the shown one if it is older than the list."""
        with self._lock:
            summaries = self.client.sessions.summaries(limit=self.picker_limit)
            sid = self.session_id
            if sid and sid not in {s["id"] for s in summaries}:
                try:
                    summaries = summaries + [self.client.sessions.summary(sid)]
                except KeyError:
                    pass
            labels = session_labels(summaries)
            entries = [{"id": s["id"], "label": labels[s["id"]]} for s in summaries]
            if entries != self.sessions:
                self.sessions = entries

    # ------------------------------------------------------------------ what is shown
    def select_session(self, session_id: str, *, quiet: bool = False) -> None:
        """Show ``session_id``'s latest messages (replies are sent into it from now on)."""
        session = self.client.load_session(session_id)  # SessionNotFoundError for an unknown id
        with self._lock:
            if session["id"] != self.session_id:
                self._shown_limit = self.window
            messages = session["messages"]
            shown = messages[-self._shown_limit:] if self._shown_limit else messages
            rows = [{"key": m.get("id") or f"m{i}", "role": m.get("role", "system"), "html": stored_message_html(m)}
                    for i, m in enumerate(shown)]
            reply = self.reply
            if reply is not None and not reply.closed and reply.session_id == session["id"]:
                rows.append({"key": reply.key, "role": "assistant", "html": reply.html})  # still streaming
            self._shown_version = (session["updated_at"], len(messages))
            self.earlier = len(messages) - len(shown)
            self.session = session["id"]
            self.messages = rows
            self._refresh_picker()
        if not self.busy and not quiet:
            n = len(session["messages"])
            self._set_status(f"session “{one_line(session['title'], 80)}” — {n} message{'s' if n != 1 else ''}")

    def show_earlier(self, more: int | None = None) -> None:
        """Show ``more`` (default: ``window``) earlier messages of the shown session."""
        if self.session_id:
            self._shown_limit += more or self.window
            self.select_session(self.session_id, quiet=True)

    def new_session(self, quiet: bool = False) -> None:
        """Start a new conversation: the session is created (titled after the prompt) on the first send."""
        with self._lock:
            self.session = NEW_SESSION
            self._shown_version = None
            self.earlier = 0
            self.messages = []
            self._refresh_picker()
        if not quiet and not self.busy:
            self._set_status("new session — it is created when you send the first message")

    def _on_store_change(self) -> None:
        """The store changed (anything sharing it): refresh the picker; re-read the shown session if it
        changed and no reply of ours is streaming into it."""
        with self._lock:
            self._refresh_picker()
            sid = self.session_id
            if not sid or self.busy:
                return
            try:
                summary = self.client.sessions.summary(sid)
            except KeyError:
                self.new_session(quiet=True)
                self._set_status("the session shown here was deleted elsewhere — sending starts a new one")
                return
            if (summary["updated_at"], summary["message_count"]) != self._shown_version:
                self.select_session(sid, quiet=True)

    # ------------------------------------------------------------------ the front end
    def _on_front_end(self, _widget, content: Any, _buffers) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        try:
            if kind == "send":
                text = content.get("text")
                if self.send(text) is None and isinstance(text, str) and text.strip() and self.busy:
                    self.draft = text  # refused (a reply is still streaming): give the text back
            elif kind == "stop":
                self.stop()
            elif kind == "select":
                sid = content.get("id") or NEW_SESSION
                if sid == NEW_SESSION:
                    self.new_session()
                elif sid != self.session_id:
                    self.select_session(sid)
            elif kind == "new":
                self.new_session()
            elif kind == "earlier":
                self.show_earlier()
            elif kind == "hello":  # a view appeared (maybe mid-stream): give it the live text so far
                reply = self.reply
                if reply is not None and not reply.closed:
                    self._post("live", key=reply.key, text=reply.snapshot())
            elif kind == "insert_cell":
                self._insert_cell(str(content.get("code", "")))
        except KeyError as exc:  # a session deleted meanwhile
            self._set_status(f"session not found: {exc}", error=True)

    def _insert_cell(self, code: str) -> None:
        """Fallback of the front end's "insert as a new cell below" where it cannot reach the notebook:
        IPython's ``set_next_input`` (the front end shows it with the next execute reply)."""
        shell = _ipython_kernel()
        if shell is None:
            self._set_status("cannot insert a cell here: copy the code instead", error=True)
            return
        shell.set_next_input(code, replace=False)
        self._set_status("the code will appear in a new cell after the next cell you run")

    # ------------------------------------------------------------------ sending
    def send(self, text: str | None = None) -> runtime.Job | None:  # type: ignore[override]
        """Send ``text`` (default: the input box's text, ``draft``, which is then cleared); returns at once.

        Returns the :class:`~oblix_nb.runtime.Job` of the reply, or None if nothing was sent (empty text, or a
        reply is still streaming). The reply streams into the transcript; :meth:`wait` blocks until it ends.
        """
        from_input = text is None
        prompt = self.draft if from_input else text
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        with self._lock:
            if self.busy:
                self._set_status("a reply is still streaming — press Stop first")
                return None
            self.draft = ""
            if self.session_id is None or not self.client.sessions.exists(self.session_id):
                self.session = self.client.sessions.create(title=title_from(prompt, "Chat"))
                self.messages = []
                self.earlier = 0
                self._shown_limit = self.window
            sid = self.session_id
            assert sid is not None  # a session was made just above if there was none
            self._replies += 1
            key = f"live-{self._replies}"
            reply = _LiveReply(self, key, sid, self.stream_interval)
            self.messages = self.messages + [
                {"key": f"prompt-{self._replies}", "role": "user", "html": message_html("user", prompt)},
                {"key": key, "role": "assistant", "html": reply.html}]
            self.reply = reply
            self._idle.clear()
            self.running = True
            self.last_response = self.last_error = self.last_outcome = None
            self._set_status("sending …")
            self._refresh_picker()
            job = runtime.submit(self._run(prompt, sid, reply))
            self.job = job
            job.add_done_callback(lambda fut: self._on_done(fut, reply))
            return job

    async def _run(self, prompt: str, session_id: str, reply: _LiveReply) -> dict:
        client = self.client
        if self.auto_hook:  # the one default-model policy (oblix_nb.default_model)
            await default_model.ensure_model(
                client, on_hook=lambda model_id: self._set_status(f"loading the model {model_id} …"))
        return await client.execute(prompt, session_id=session_id, sink=reply, display_metrics=False,
                                    **self.execute_kwargs)

    def _on_done(self, job: concurrent.futures.Future, reply: _LiveReply) -> None:
        """Runs on the package loop thread when the reply's job has finished (cleanup included)."""
        try:
            try:
                response = job.result()
            except concurrent.futures.CancelledError as exc:
                reply.fail(exc)
                self.last_outcome = "stopped"
                self._set_status("stopped — the partial reply was kept, flagged partial" if reply.text
                                 else "stopped before the first token (no reply was stored)")
                self._announce("Reply stopped." + (f" Partial reply kept: {one_line(reply.text, 300)}"
                                                    if reply.text else ""))
            except BaseException as exc:  # noqa: BLE001 - shown in the panel, kept in last_error
                reply.fail(exc)
                self.last_error = exc
                self.last_outcome = "error"
                if isinstance(exc, NoModelHookedError):
                    self._set_status(state.HOW_TO_HOOK, error=True)
                else:
                    self._set_status(redact(f"error: {type(exc).__name__}: {exc}", self.client), error=True)
                self._announce("Reply failed: " + self.status)
            else:
                self.last_response = response
                self.last_outcome = "ok"
                why = getattr(reply, "default_why", None)
                self._set_status(f"ready · default model {response.get('model_id')}: {why}" if why else "ready")
                self._announce(f"Reply from {response.get('model_id', 'the model')}: "
                               f"{one_line(response.get('response', ''), 400)}")
            with self._lock:
                if self.job is job:
                    self.job = None
                self.running = False
                try:
                    if reply.session_id == self.session_id and self.client.sessions.exists(reply.session_id):
                        summary = self.client.sessions.summary(reply.session_id)
                        self._shown_version = (summary["updated_at"], summary["message_count"])
                    self._refresh_picker()
                except Exception:  # noqa: BLE001 - a stale label is not worth an error
                    pass
        finally:
            self._idle.set()

    def stop(self) -> bool:
        """Stop the streaming reply (returns at once; the partial reply is stored flagged). False if idle."""
        job = self.job
        if job is None or job.done():
            return False
        self._set_status("stopping …")
        job.cancel()
        return True

    def wait(self, timeout: float | None = None) -> dict | None:
        """Block until the current reply has finished (and is rendered). Returns execute()'s response dict, or
        None if it was stopped or failed (see ``last_outcome``/``last_error``). TimeoutError on timeout."""
        if not self._idle.wait(timeout):
            raise TimeoutError(f"the reply did not finish within {timeout} s")
        return self.last_response

    def close(self) -> None:
        getattr(self, "_unwatch", lambda: None)()
        super().close()


def show_chat_panel(client: OblixClient | None = None, session_id: str | None = None, **kwargs: Any) -> ChatPanel:
    """Display a :class:`ChatPanel` in the current cell and return it (for the ``%oblix_chat`` magic)."""
    from IPython.display import display

    panel = ChatPanel(client, session_id, **kwargs)
    display(panel)
    return panel


async def chat_handler(client: OblixClient, prompt: str, session_id: str, **kwargs: Any) -> dict:
    """A ``client.chat_handler`` for notebooks: ``execute(..., chat=True)`` shows a ChatPanel on the session,
    sends ``prompt`` into it and returns ``{"session_id": ...}`` (the conversation continues in the panel)."""
    options = {k: v for k, v in kwargs.items() if k in ("temperature", "max_tokens") and v is not None}
    panel = show_chat_panel(client, session_id, **options)
    if isinstance(prompt, str) and prompt.strip():
        panel.send(prompt)
    return {"session_id": session_id}


__all__ = ["ChatPanel", "show_chat_panel", "chat_handler"]
