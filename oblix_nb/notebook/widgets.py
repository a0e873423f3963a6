"""Chat panel and session browser (ipywidgets 8). Imported only when used: ``import oblix_nb`` stays light.

    from oblix_nb.notebook.widgets import ChatPanel, SessionBrowser
    ChatPanel()            # the kernel's shared client; the embedded model is hooked on first send if none is
    SessionBrowser()

**ChatPanel** — a session picker (recent sessions + "new session"), the transcript (one bubble per message,
model output rendered as safe Markdown), a multi-line input with Send and Stop, and under each reply a badge
(model, route and reason, time to first token, tokens/s). Send schedules ``client.execute(..., sink=...)`` on
the package's background loop (:func:`oblix_nb.runtime.submit`) and returns at once, so the kernel keeps
handling messages while the reply streams: Stop (``job.cancel()``) works mid-stream, and the partial reply
is shown and stored flagged ``partial``. The streaming bubble is updated at most every ``stream_interval``
seconds (default 0.1), plus one final update.

Keys: in JupyterLab (and Notebook 7) **Enter sends, Shift+Enter inserts a newline**. ipywidgets' Textarea
sends no key events, so a few lines of JavaScript (shown through an Output widget, which JupyterLab renders as
trusted) catch Enter in the panel's textarea, sync its value and click Send. Where JavaScript output does not
run, the textarea is a plain one (Enter = newline) and the Send button sends.

**SessionBrowser** — one page (25) of sessions as rows (title, updated, messages, model mix, metadata),
filters (title substring, metadata ``k=v`` with JSON-typed values, full text), paging, the selected session's
transcript, and actions on the selection: open in a chat panel, export, copy, merge, delete (after a confirm
step).

Everything untrusted that reaches an ``HTML`` widget (model output, titles, metadata) goes through
:mod:`oblix_nb.notebook.render`: raw HTML is escaped, links are http/https/mailto only, images are not loaded.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

import ipywidgets as widgets

from .. import runtime
from .._util import title_from
from ..errors import NoModelHookedError
from ..pricing import cost_label
from ..streaming import ThrottledSink
from . import render, state
from .kv import parse_pairs
from .render import escape

DEFAULT_INTERVAL = 0.1
CURSOR = "▌"
NEW_SESSION = ""  # the picker's value for "a new session, created on the first send"

# --------------------------------------------------------------------------------------------- styling
CSS = """
<style>
.oblix-chat, .oblix-browser { border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 8px;
  padding: 8px; background: var(--jp-layout-color1, #fff); box-sizing: border-box; }
.oblix-chat { max-width: 920px; }
.oblix-scroll { border: 1px solid var(--jp-border-color3, #eee); border-radius: 6px;
  background: var(--jp-layout-color0, #fff); }
.oblix-row { width: 100%; }
.oblix-row .widget-html-content, .oblix-detail .widget-html-content, .oblix-status .widget-html-content {
  line-height: normal; white-space: normal; }
.oblix-msg { display: flex; flex-direction: column; margin: 6px 8px; }
.oblix-msg.user { align-items: flex-end; }
.oblix-msg.assistant { align-items: flex-start; }
.oblix-msg.system { align-items: center; }
.oblix-bubble { padding: 7px 11px; border-radius: 12px; max-width: 85%; line-height: 1.45;
  font-family: var(--jp-content-font-family, system-ui, sans-serif); font-size: var(--jp-content-font-size1, 14px);
  color: var(--jp-content-font-color1, #1f2328); overflow-wrap: anywhere; box-sizing: border-box; }
.oblix-msg.user .oblix-bubble { background: var(--jp-brand-color4, #dbeafe); border-bottom-right-radius: 4px;
  white-space: pre-wrap; }
.oblix-msg.assistant .oblix-bubble { background: var(--jp-layout-color2, #f1f3f5); border-bottom-left-radius: 4px; }
.oblix-msg.system .oblix-bubble { background: transparent; font-style: italic;
  color: var(--jp-ui-font-color2, #6a737d); }
.oblix-msg.partial .oblix-bubble { border: 1px dashed var(--jp-warn-color1, #d97706); }
.oblix-msg.error .oblix-bubble { border: 1px solid var(--jp-error-color1, #b00020); }
.oblix-bubble p { margin: 0.25em 0; }
.oblix-bubble pre { background: var(--jp-cell-editor-background, #f6f8fa); border: 1px solid
  var(--jp-border-color2, #e0e0e0); border-radius: 6px; padding: 6px 8px; overflow-x: auto; margin: 0.4em 0; }
.oblix-bubble code, .oblix-bubble pre { font-family: var(--jp-code-font-family, ui-monospace, monospace);
  font-size: 0.9em; }
.oblix-bubble :not(pre) > code { background: rgba(127,127,127,0.15); border-radius: 3px; padding: 0 3px; }
.oblix-bubble table { border-collapse: collapse; margin: 0.4em 0; }
.oblix-bubble th, .oblix-bubble td { border: 1px solid var(--jp-border-color2, #ccc); padding: 2px 6px; }
.oblix-bubble blockquote { margin: 0.3em 0; padding-left: 8px; border-left: 3px solid #bbb; color: #555; }
.oblix-badge { font-size: 0.75em; color: var(--jp-ui-font-color2, #6a737d); margin: 2px 6px 0 6px;
  font-family: var(--jp-ui-font-family, system-ui, sans-serif); }
.oblix-flag { color: var(--jp-warn-color0, #b45309); font-weight: 600; }
.oblix-err { color: var(--jp-error-color1, #b00020); font-weight: 600; }
.oblix-cursor { color: var(--jp-brand-color1, #1976d2); }
.oblix-chat-input textarea { font-family: var(--jp-ui-font-family, system-ui, sans-serif);
  font-size: var(--jp-content-font-size1, 14px); }
.oblix-status { font-size: 0.8em; color: var(--jp-ui-font-color2, #6a737d); }
.oblix-table select { font-family: var(--jp-code-font-family, ui-monospace, monospace) !important;
  font-size: 12px !important; }
.oblix-table-head { font-family: var(--jp-code-font-family, ui-monospace, monospace); font-size: 12px;
  white-space: pre; color: var(--jp-ui-font-color2, #6a737d); padding-left: 4px; }
.oblix-detail .oblix-meta { font-family: var(--jp-code-font-family, monospace); font-size: 12px;
  white-space: pre-wrap; background: var(--jp-layout-color2, #f6f8fa); padding: 4px 6px; border-radius: 4px; }
.oblix-detail h4 { margin: 2px 0 4px 0; }
.oblix-snippet { font-size: 0.85em; color: var(--jp-ui-font-color1, #333); margin: 2px 0; }
</style>
"""

# Enter sends, Shift+Enter = newline, in any .oblix-chat panel of the page. Installed once per page.
# The text travels as ONE state update of a hidden Text (the panel's submit channel): a button click is a custom
# message that ipywidgets sends at once, while the textarea's value updates may still be held back by the
# frontend's per-model throttling (one message in flight per model while the kernel is busy) — so "type, then
# click Send" could reach the kernel as click-before-text. Clicks on Send take the same route when this runs.
KEYS_JS = r"""
(function () {
  if (window.__oblixChatKeys) { return; }
  window.__oblixChatKeys = true;
  var counter = 0;
  function submit(panel) {
    var box = panel.querySelector('.oblix-chat-input textarea');
    var channel = panel.querySelector('.oblix-submit input');
    var button = panel.querySelector('button.oblix-send-button');
    if (!box || !channel || !button) { return false; }
    if (button.disabled || !box.value.trim()) { return true; }
    counter += 1;
    channel.value = JSON.stringify([Date.now() + '-' + counter, box.value]);
    channel.dispatchEvent(new Event('change', { bubbles: true }));
    box.value = '';
    box.dispatchEvent(new Event('input', { bubbles: true }));
    return true;
  }
  document.addEventListener('keydown', function (e) {
    if (e.key !== 'Enter' || e.shiftKey || e.altKey || e.isComposing || e.keyCode === 229) { return; }
    var t = e.target;
    if (!t || t.tagName !== 'TEXTAREA' || !t.closest || !t.closest('.oblix-chat-input')) { return; }
    var panel = t.closest('.oblix-chat');
    if (!panel) { return; }
    e.preventDefault();
    e.stopPropagation();
    if (!submit(panel)) {
      var button = panel.querySelector('button.oblix-send-button');
      if (button && !button.disabled) { button.click(); }
    }
  }, true);
  document.addEventListener('click', function (e) {
    var button = e.target && e.target.closest && e.target.closest('button.oblix-send-button');
    var panel = button && button.closest('.oblix-chat');
    if (panel && submit(panel)) {
      e.preventDefault();
      e.stopPropagation();
    }
  }, true);
})();
"""


def _style() -> widgets.HTML:
    return widgets.HTML(CSS, layout=widgets.Layout(display="none"))


def _keys_output() -> widgets.Output:
    out = widgets.Output(layout=widgets.Layout(display="none"))
    out.outputs = ({"output_type": "display_data", "metadata": {},
                    "data": {"application/javascript": KEYS_JS, "text/plain": ""}},)
    return out


# --------------------------------------------------------------------------------------------- HTML pieces
def _ms(seconds: Optional[float]) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def badge_html(model_id: Optional[str] = None, routing: Optional[dict] = None, metrics: Optional[dict] = None,
               *, partial: bool = False, note: Optional[str] = None, error: Optional[str] = None,
               pending: bool = False) -> str:
    """One muted line under a reply: model · route: reason · TTFT · tok/s · tokens · cost (+ flags). All escaped."""
    routing, metrics = routing or {}, metrics or {}
    bits: list[str] = []
    if model_id:
        bits.append(f"<b>{escape(model_id)}</b>")
    target, reason = routing.get("target"), (routing.get("reason") or "").strip()
    if target:
        if reason.startswith(f"{target}:"):
            reason = reason[len(target) + 1:].strip()
        bits.append(escape(f"{target}: {reason}" if reason else target))
    if routing.get("fallback_from"):
        bits.append(escape(f"fallback from {routing['fallback_from']}"))
    ttft = metrics.get("time_to_first_token")
    if isinstance(ttft, (int, float)):
        bits.append(f"TTFT {_ms(ttft)}")
    tps = metrics.get("tokens_per_second")
    if isinstance(tps, (int, float)) and tps:
        bits.append(f"{tps:.1f} tok/s")
    out_tokens = metrics.get("output_tokens")
    if isinstance(out_tokens, int):
        bits.append(f"{out_tokens} tokens")
    cost = cost_label(metrics)  # cloud replies only
    if cost:
        bits.append(escape(cost))
    if metrics.get("finish_reason") == "length":
        bits.append("cut at max_tokens")
    if note:
        bits.append(escape(note))
    if partial:
        bits.append('<span class="oblix-flag">■ stopped — partial</span>')
    if error:
        bits.append(f'<span class="oblix-err">⚠ {escape(error)}</span>')
    return '<div class="oblix-badge">' + " · ".join(bits) + "</div>" if bits else ""


def message_html(role: str, content: str, *, badge: str = "", streaming: bool = False,
                 partial: bool = False, error: bool = False) -> str:
    """One message as a bubble. User text is shown as typed (escaped); other roles as safe Markdown."""
    role = role if role in ("user", "assistant", "system") else "system"
    if role == "user":
        body = escape(content)
    else:
        body = render.markdown(content)
        if streaming:
            cursor = f'<span class="oblix-cursor">{CURSOR}</span>'
            body = body[:-5] + cursor + "</p>\n" if body.endswith("</p>\n") else (body or "") + cursor
        elif not body:
            body = '<span class="oblix-cursor">…</span>' if not partial and not error else "<i>(no text)</i>"
    classes = " ".join(c for c in ("oblix-msg", role, "partial" if partial else "", "error" if error else "") if c)
    return f'<div class="{classes}"><div class="oblix-bubble">{body}</div>{badge}</div>'


def stored_message_html(message: dict) -> str:
    """A stored message (a dict from the session store) as a bubble with its badge."""
    role = message.get("role", "system")
    badge = ""
    if role == "assistant":
        badge = badge_html(message.get("model_id"), message.get("routing"), message.get("metrics"),
                           partial=bool(message.get("partial")))
    return message_html(role, message.get("content", ""), badge=badge, partial=bool(message.get("partial")))


_KEY_RE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,})")


def redact(text: str, client=None) -> str:
    """``text`` without API keys: the hooked models' keys and the env's, and anything shaped like one."""
    secrets = {os.environ.get(name) for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    for backend in (getattr(client, "models", None) or {}).values():
        for holder in (backend, getattr(backend, "_client", None)):
            for attr in ("api_key", "_api_key"):
                value = getattr(holder, attr, None) if holder is not None else None
                if isinstance(value, str):
                    secrets.add(value)
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return _KEY_RE.sub(lambda m: m.group(0)[:3] + "***" if m.group(0).startswith("sk-")
                       else m.group(0).split()[0] + " ***", text)


def _row_widget(value: str) -> widgets.HTML:
    w = widgets.HTML(value, layout=widgets.Layout(width="100%"))
    w.add_class("oblix-row")
    return w


def _one_line(text: Any, width: int) -> str:
    text = re.sub(r"[\x00-\x1f\x7f\s]+", " ", str(text or "")).strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_time(stamp: Optional[str]) -> str:
    """``2026-11-24T20:51:03.123Z`` → ``2026-11-24 20:51`` (UTC)."""
    return (stamp or "")[:16].replace("T", " ")


# --------------------------------------------------------------------------------------------- ChatPanel
class _LiveReply(ThrottledSink):
    """The StreamSink of one reply: renders into its bubble, throttled. Called on the package loop thread."""

    def __init__(self, session_id: str, interval: float, on_status=None, redact=lambda text: text):
        super().__init__(interval)
        self.session_id = session_id
        self._redact = redact
        self.widget = _row_widget(message_html("assistant", "", badge=badge_html(note="waiting for the model…",
                                                                                   pending=True)))
        self.info: Optional[dict] = None
        self.response: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self.renders = 0          # all renders, the final one included (``updates``: the throttled ones)
        self.started_at = time.monotonic()
        self.first_text_at: Optional[float] = None
        self._on_status = on_status

    def _render(self, value: str) -> None:
        self.widget.value = value
        self.renders += 1

    def _pending_badge(self, note: str) -> str:
        info = self.info or {}
        return badge_html(info.get("model_id"), info.get("routing"), note=note, pending=True)

    # -- StreamSink
    def start(self, info: dict) -> None:
        with self._lock:
            self.info = info
            if not self.closed:
                self._render(message_html("assistant", self.text, streaming=True,
                                          badge=self._pending_badge("waiting for the first token…")))
        if self._on_status:
            self._on_status(f"streaming from {info.get('model_id', '?')} …")

    def write(self, text: str) -> None:
        if self.first_text_at is None:
            self.first_text_at = time.monotonic()
        super().write(text)

    def redraw(self, text: str) -> None:
        self._render(message_html("assistant", text, streaming=True, badge=self._pending_badge("streaming…")))

    def end(self, response: Optional[dict], error: Optional[BaseException] = None) -> None:
        with self._lock:
            if not self._close_locked():
                return
            info = self.info or {}
            if error is None and response is not None:
                self.response = response
                text = response.get("response", self.text)
                self._render(message_html("assistant", text, badge=badge_html(
                    response.get("model_id"), response.get("routing_decision"), response.get("metrics"),
                    partial=bool(response.get("partial")))))
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
                self._render(message_html("assistant", self.text, partial=True, badge=badge))
            else:
                self._render(message_html("assistant", self.text, partial=bool(self.text), error=True,
                                          badge=badge_html(info.get("model_id"), info.get("routing"),
                                                           partial=bool(self.text),
                                                           error=self._redact(f"{type(error).__name__}: {error}"))))

    def fail(self, error: BaseException) -> None:
        """The job ended without the sink being ended (an error or a stop before the model was called)."""
        with self._lock:
            if self.closed:
                return
        self.end(None, error)


class ChatPanel(widgets.VBox):
    """A chat over one session of ``client`` (default: the kernel's shared client).

    ``session_id``: the session to show (default: the client's current session, else a new session that is
    created, titled after the first prompt, on the first send). ``stream_interval``: seconds between
    transcript updates while a reply streams. ``auto_hook``: if no model is hooked when sending, hook the
    embedded model (SmolLM2-135M) when it is installed. Other keyword arguments go to ``client.execute``
    (``max_tokens``, ``temperature``, ``model_id``, sampling options).

    Attributes for code and tests: ``picker``, ``new_button``, ``transcript`` (a VBox, one HTML per message),
    ``input``, ``send_button``, ``stop_button``, ``status``, ``session_id``, ``messages_html``, ``busy``,
    ``reply_text`` (the current reply so far), ``job`` (the running reply's :class:`oblix_nb.runtime.Job`),
    ``last_response``, ``last_outcome`` ("ok", "stopped", "error"), ``last_error``; methods :meth:`send`,
    :meth:`stop`, :meth:`wait`, :meth:`select_session`, :meth:`new_session`.
    """

    def __init__(self, client=None, session_id: Optional[str] = None, *, stream_interval: float = DEFAULT_INTERVAL,
                 auto_hook: bool = True, enter_sends: bool = True, picker_limit: int = 50,
                 **execute_kwargs: Any):
        self.client = client if client is not None else state.get_client()
        self.stream_interval = stream_interval
        self.auto_hook = auto_hook
        self.picker_limit = picker_limit
        self.execute_kwargs = dict(execute_kwargs)
        self._lock = threading.RLock()
        self._idle = threading.Event()
        self._idle.set()
        self._refreshing = False
        self.job: Optional[runtime.Job] = None
        self.reply: Optional[_LiveReply] = None
        self.last_response: Optional[dict] = None
        self.last_error: Optional[BaseException] = None
        self.last_outcome: Optional[str] = None   # "ok", "stopped" or "error"
        self._summary: Optional[dict] = None      # the shown session's summary (for the picker)

        self.picker = widgets.Dropdown(options=[("+ new session", NEW_SESSION)], value=NEW_SESSION,
                                       description="Session", layout=widgets.Layout(flex="1 1 auto", width="auto"),
                                       style={"description_width": "initial"})
        self.new_button = widgets.Button(description="New session", icon="plus", tooltip="Start a new session",
                                         layout=widgets.Layout(width="auto"))
        self.transcript = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.transcript.add_class("oblix-transcript")
        # column-reverse keeps the view scrolled to the newest message as bubbles are added and grow
        self.scroller = widgets.Box([self.transcript], layout=widgets.Layout(
            display="flex", flex_flow="column-reverse", overflow="auto", max_height="460px", min_height="120px",
            width="100%"))
        self.scroller.add_class("oblix-scroll")
        self.input = widgets.Textarea(placeholder="Message — Enter sends, Shift+Enter for a new line",
                                      rows=3, continuous_update=True,
                                      layout=widgets.Layout(flex="1 1 auto", width="auto"))
        self.input.add_class("oblix-chat-input")
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane",
                                          tooltip="Send (Enter)", layout=widgets.Layout(width="96px"))
        self.send_button.add_class("oblix-send-button")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True, button_style="warning",
                                          tooltip="Stop the reply (the partial reply is kept, flagged)",
                                          layout=widgets.Layout(width="96px"))
        self.stop_button.add_class("oblix-stop-button")
        self.status = widgets.HTML("")
        self.status.add_class("oblix-status")

        children = [_style(),
                    widgets.HBox([self.picker, self.new_button], layout=widgets.Layout(width="100%")),
                    self.scroller,
                    widgets.HBox([self.input, widgets.VBox([self.send_button, self.stop_button])],
                                 layout=widgets.Layout(width="100%", align_items="stretch")),
                    self.status]
        # the submit channel that the page's script (KEYS_JS) writes {nonce, text} into; hidden
        self._submit = widgets.Text("", continuous_update=False, layout=widgets.Layout(display="none"))
        self._submit.add_class("oblix-submit")
        if enter_sends:
            children += [self._submit, _keys_output()]
        super().__init__(children, layout=widgets.Layout(width="100%"))
        self.add_class("oblix-chat")

        self.send_button.on_click(lambda _b: self.send())
        self.stop_button.on_click(lambda _b: self.stop())
        self.new_button.on_click(lambda _b: self.new_session())
        self.picker.observe(self._on_pick, names="value")
        self._submit.observe(self._on_submit, names="value")

        if session_id is None:
            current = self.client.current_session_id
            if current is not None and self.client.sessions.exists(current):
                session_id = current
        self.session_id: Optional[str] = None
        if session_id is not None:
            self.select_session(session_id)
        else:
            self.new_session(quiet=True)

    def __repr__(self) -> str:  # the text/plain fallback of the widget's display
        n = len(self.transcript.children)
        return f"<ChatPanel session={self.session_id or 'new'} messages={n}{' streaming' if self.busy else ''}>"

    # ------------------------------------------------------------------ what is shown
    @property
    def messages_html(self) -> str:
        """The transcript's HTML (all bubbles), as the browser gets it."""
        return "\n".join(child.value for child in self.transcript.children)

    @property
    def busy(self) -> bool:
        """True while a reply is being generated (from Send until the reply is stored and shown)."""
        return not self._idle.is_set()

    @property
    def reply_text(self) -> str:
        """The text of the current (or last) reply so far."""
        reply = self.reply
        return reply.text if reply is not None else ""

    def _set_status(self, text: str, *, error: bool = False, html: bool = False) -> None:
        body = text if html else escape(text)
        self.status.value = f'<span class="oblix-err">{body}</span>' if error else body

    def _refresh_picker(self) -> None:
        """Recent sessions (newest first), plus the shown one if it is older than the list."""
        with self._lock:
            summaries = self.client.sessions.summaries(limit=self.picker_limit)
            ids = {s["id"] for s in summaries}
            if self.session_id and self.session_id not in ids:
                mine = self._summary or {"id": self.session_id, "title": self.session_id, "message_count": 0,
                                         "updated_at": ""}
                summaries = summaries + [mine]
            options = [("+ new session", NEW_SESSION)] + [(self._label(s), s["id"]) for s in summaries]
            self._refreshing = True
            try:
                self.picker.options = options
                self.picker.value = self.session_id or NEW_SESSION
            finally:
                self._refreshing = False

    @staticmethod
    def _label(summary: dict) -> str:
        n = summary.get("message_count", 0)
        when = _short_time(summary.get("updated_at"))
        return f"{_one_line(summary.get('title'), 60)}  ({n} msg{'s' if n != 1 else ''}{', ' + when if when else ''})"

    def _on_pick(self, change) -> None:
        if self._refreshing:
            return
        value = change["new"]
        if value == NEW_SESSION or value is None:
            self.new_session()
        else:
            self.select_session(value)

    def select_session(self, session_id: str) -> None:
        """Show ``session_id``'s history (replies are sent into it from now on)."""
        session = self.client.load_session(session_id)  # SessionNotFoundError for an unknown id
        with self._lock:
            self.session_id = session["id"]
            self._summary = {"id": session["id"], "title": session["title"],
                             "message_count": len(session["messages"]), "updated_at": session["updated_at"]}
            rows = [_row_widget(stored_message_html(m)) for m in session["messages"]]
            reply = self.reply
            if reply is not None and not reply.closed and reply.session_id == self.session_id:
                rows.append(reply.widget)  # its reply is still streaming: keep showing it live
            self.transcript.children = tuple(rows)
            self._refresh_picker()
        if not self.busy:
            n = len(session["messages"])
            self._set_status(f"session “{_one_line(session['title'], 80)}” — {n} message{'s' if n != 1 else ''}")

    def new_session(self, quiet: bool = False) -> None:
        """Start a new conversation: the session is created (titled after the prompt) on the first send."""
        with self._lock:
            self.session_id = None
            self._summary = None
            self.transcript.children = ()
            self._refresh_picker()
        if not quiet and not self.busy:
            self._set_status("new session — it is created when you send the first message")

    # ------------------------------------------------------------------ sending
    def send(self, text: Optional[str] = None) -> Optional[runtime.Job]:
        """Send ``text`` (default: the input box's text, which is then cleared) and return at once.

        Returns the :class:`~oblix_nb.runtime.Job` of the reply, or None if nothing was sent (empty text, or a
        reply is still streaming). The reply streams into the transcript; :meth:`wait` blocks until it ends.
        """
        from_input = text is None
        prompt = self.input.value if from_input else text
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        with self._lock:
            if self.busy:
                self._set_status("a reply is still streaming — press Stop first")
                return None
            if from_input:
                self.input.value = ""
            if self.session_id is None or not self.client.sessions.exists(self.session_id):
                title = title_from(prompt, "Chat")
                self.session_id = self.client.sessions.create(title=title)
                self._summary = {"id": self.session_id, "title": title, "message_count": 0,
                                 "updated_at": ""}
                self.transcript.children = ()
                self._refresh_picker()
            sid = self.session_id
            reply = _LiveReply(sid, self.stream_interval, on_status=self._set_status,
                               redact=lambda text: redact(text, self.client))
            self.transcript.children = self.transcript.children + (
                _row_widget(message_html("user", prompt)), reply.widget)
            self.reply = reply
            self._idle.clear()
            self.last_response = self.last_error = self.last_outcome = None
            self.send_button.disabled = True
            self.stop_button.disabled = False
            self._set_status("sending …")
            job = runtime.submit(self._run(prompt, sid, reply))
            self.job = job
            job.add_done_callback(lambda fut, reply=reply: self._on_done(fut, reply))
            return job

    def _on_submit(self, change) -> None:
        """Text sent by the page's script (Enter, or a click on Send): ``[nonce, text]`` as JSON."""
        try:
            _nonce, text = json.loads(change["new"])
        except (TypeError, ValueError):
            return
        if not isinstance(text, str) or not text.strip():
            return
        if self.send(text) is None and not self.input.value:
            self.input.value = text  # refused (a reply is still streaming): give the text back

    async def _run(self, prompt: str, session_id: str, reply: _LiveReply) -> dict:
        client = self.client
        if not client.models and self.auto_hook and state.embedded_model_available():
            self._set_status(f"loading the embedded model {state.EMBEDDED_MODEL_ID} …")
            await client.hook_model(*state.EMBEDDED_MODEL)
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
            except BaseException as exc:  # noqa: BLE001 - shown in the panel, kept in last_error
                reply.fail(exc)
                self.last_error = exc
                self.last_outcome = "error"
                if isinstance(exc, NoModelHookedError):
                    self._set_status(escape(state.HOW_TO_HOOK).replace("\n", "<br>"), error=True, html=True)
                else:
                    self._set_status(redact(f"error: {type(exc).__name__}: {exc}", self.client), error=True)
            else:
                self.last_response = response
                self.last_outcome = "ok"
                self._set_status("ready")
            with self._lock:
                if self.job is job:
                    self.job = None
                self.send_button.disabled = False
                self.stop_button.disabled = True
                try:
                    if reply.session_id == self.session_id and self.client.sessions.exists(reply.session_id):
                        self._summary = next((s for s in self.client.sessions.summaries(limit=self.picker_limit)
                                              if s["id"] == reply.session_id), self._summary)
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

    def wait(self, timeout: Optional[float] = None) -> Optional[dict]:
        """Block until the current reply has finished (and is rendered). Returns execute()'s response dict, or
        None if it was stopped or failed (see ``last_outcome``/``last_error``). TimeoutError on timeout."""
        if not self._idle.wait(timeout):
            raise TimeoutError(f"the reply did not finish within {timeout} s")
        return self.last_response


def show_chat_panel(client=None, session_id: Optional[str] = None, **kwargs: Any) -> ChatPanel:
    """Display a :class:`ChatPanel` in the current cell and return it (for the ``%oblix_chat`` magic)."""
    from IPython.display import display

    panel = ChatPanel(client, session_id, **kwargs)
    display(panel)
    return panel


async def chat_handler(client, prompt: str, session_id: str, **kwargs: Any) -> dict:
    """A ``client.chat_handler`` for notebooks: ``execute(..., chat=True)`` shows a ChatPanel on the session,
    sends ``prompt`` into it and returns ``{"session_id": ...}`` (the conversation continues in the panel)."""
    options = {k: v for k, v in kwargs.items() if k in ("temperature", "max_tokens") and v is not None}
    panel = show_chat_panel(client, session_id, **options)
    if isinstance(prompt, str) and prompt.strip():
        panel.send(prompt)
    return {"session_id": session_id}


# --------------------------------------------------------------------------------------------- SessionBrowser
def _split_pairs(text: str) -> list[str]:
    """Split on whitespace outside quotes ('…', "…") and brackets ([…], {…})."""
    tokens, current, quote, depth = [], [], None, 0
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch in "[{":
            depth += 1
            current.append(ch)
        elif ch in "]}":
            depth = max(0, depth - 1)
            current.append(ch)
        elif ch.isspace() and depth == 0:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(ch)
    if quote:
        raise ValueError("cannot parse the metadata filter: unclosed quote")
    if current:
        tokens.append("".join(current))
    return tokens


def parse_metadata_filter(text: str) -> dict:
    """``"project=alpha n=3 tags='[\"a\"]'"`` → ``{"project": "alpha", "n": 3, "tags": ["a"]}``.

    Values keep their JSON type exactly as in ``%oblix_session list --filter`` (:mod:`oblix_nb.notebook.kv`).
    ValueError on a token that is not ``key=value``.
    """
    return parse_pairs(_split_pairs(text or ""))


def _model_name(model_id: str) -> str:
    return model_id.split(":", 1)[1] if ":" in model_id else model_id


class SessionBrowser(widgets.VBox):
    """Browse, filter, page through and act on the sessions of ``client`` (default: the kernel's client).

    Attributes for code and tests: ``title_filter``, ``meta_filter``, ``search_box`` (Texts; Enter applies),
    ``apply_button``, ``clear_button``, ``table`` (a SelectMultiple of the page's rows; values are session
    ids), ``prev_button``, ``next_button``, ``page_label``, ``detail`` (HTML: the selection's transcript),
    ``open_button``, ``export_path``, ``export_button``, ``copy_button``, ``merge_button``, ``delete_button``,
    ``confirm_delete_button``, ``cancel_delete_button``, ``status``, ``chat_area`` (where "Open in chat"
    puts a ChatPanel unless ``chat_panel`` is given); ``page`` (0-based), ``pages``, ``total``, ``rows``
    (the page's summaries), ``selected_ids``.
    """

    TITLE_W, WHEN_W, COUNT_W, MIX_W = 32, 16, 5, 32

    def __init__(self, client=None, *, page_size: int = 25, chat_panel: Optional[ChatPanel] = None,
                 search_limit: int = 500, detail_messages: int = 100):
        self.client = client if client is not None else state.get_client()
        self.page_size = page_size
        self.chat_panel = chat_panel
        self.search_limit = search_limit
        self.detail_messages = detail_messages
        self.page = 0
        self.total = 0
        self.rows: list[dict] = []
        self._pending_delete: list[str] = []
        self._refreshing = False

        text_layout = widgets.Layout(flex="1 1 auto", width="auto")
        self.title_filter = widgets.Text(placeholder="title contains…", continuous_update=False,
                                         description="Title", layout=text_layout,
                                         style={"description_width": "initial"})
        self.meta_filter = widgets.Text(placeholder="k=v  n=3  flag=true", continuous_update=False,
                                        description="Metadata", layout=text_layout,
                                        style={"description_width": "initial"})
        self.search_box = widgets.Text(placeholder="words in titles or messages", continuous_update=False,
                                       description="Full text", layout=text_layout,
                                       style={"description_width": "initial"})
        self.apply_button = widgets.Button(description="Apply", icon="filter", button_style="primary",
                                           layout=widgets.Layout(width="auto"))
        self.clear_button = widgets.Button(description="Clear", layout=widgets.Layout(width="auto"))
        self.header = widgets.HTML(self._header_html())
        self.header.add_class("oblix-table-head")
        self.table = widgets.SelectMultiple(options=[], rows=12, layout=widgets.Layout(width="100%"))
        self.table.add_class("oblix-table")
        self.prev_button = widgets.Button(description="Prev", icon="chevron-left", layout=widgets.Layout(width="auto"))
        self.next_button = widgets.Button(description="Next", icon="chevron-right",
                                          layout=widgets.Layout(width="auto"))
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh", layout=widgets.Layout(width="auto"))
        self.page_label = widgets.HTML("")
        self.open_button = widgets.Button(description="Open in chat", icon="comments",
                                          layout=widgets.Layout(width="auto"))
        self.export_path = widgets.Text(placeholder="export path (.json, or a folder for several)",
                                        layout=widgets.Layout(flex="1 1 auto", width="auto"))
        self.export_button = widgets.Button(description="Export", icon="download", layout=widgets.Layout(width="auto"))
        self.copy_button = widgets.Button(description="Copy", icon="copy", layout=widgets.Layout(width="auto"))
        self.merge_button = widgets.Button(description="Merge", icon="compress", layout=widgets.Layout(width="auto"))
        self.delete_button = widgets.Button(description="Delete", icon="trash", button_style="danger",
                                            layout=widgets.Layout(width="auto"))
        self.confirm_label = widgets.HTML("")
        self.confirm_delete_button = widgets.Button(description="Delete", button_style="danger",
                                                    layout=widgets.Layout(width="auto"))
        self.cancel_delete_button = widgets.Button(description="Cancel", layout=widgets.Layout(width="auto"))
        self.confirm_box = widgets.HBox([self.confirm_label, self.confirm_delete_button, self.cancel_delete_button],
                                        layout=widgets.Layout(display="none", align_items="center"))
        self.status = widgets.HTML("")
        self.status.add_class("oblix-status")
        self.detail = widgets.HTML("", layout=widgets.Layout(width="100%"))
        self.detail.add_class("oblix-detail")
        detail_box = widgets.Box([self.detail], layout=widgets.Layout(
            display="flex", flex_flow="column", overflow="auto", max_height="420px", width="100%"))
        detail_box.add_class("oblix-scroll")
        self.chat_area = widgets.VBox()

        super().__init__([
            _style(),
            widgets.HBox([self.title_filter, self.meta_filter], layout=widgets.Layout(width="100%")),
            widgets.HBox([self.search_box, self.apply_button, self.clear_button], layout=widgets.Layout(width="100%")),
            self.header, self.table,
            widgets.HBox([self.prev_button, self.page_label, self.next_button, self.refresh_button],
                         layout=widgets.Layout(align_items="center")),
            widgets.HBox([self.open_button, self.copy_button, self.merge_button, self.delete_button,
                          self.export_path, self.export_button], layout=widgets.Layout(width="100%")),
            self.confirm_box, self.status, detail_box, self.chat_area,
        ], layout=widgets.Layout(width="100%"))
        self.add_class("oblix-browser")

        for box in (self.title_filter, self.meta_filter, self.search_box):
            box.observe(self._on_filter_change, names="value")
        self.apply_button.on_click(lambda _b: self.apply_filters())
        self.clear_button.on_click(lambda _b: self.clear_filters())
        self.prev_button.on_click(lambda _b: self.go_to_page(self.page - 1))
        self.next_button.on_click(lambda _b: self.go_to_page(self.page + 1))
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.table.observe(self._on_select, names="value")
        self.open_button.on_click(lambda _b: self.open_selected())
        self.export_button.on_click(lambda _b: self.export_selected())
        self.copy_button.on_click(lambda _b: self.copy_selected())
        self.merge_button.on_click(lambda _b: self.merge_selected())
        self.delete_button.on_click(lambda _b: self.delete_selected())
        self.confirm_delete_button.on_click(lambda _b: self.confirm_delete())
        self.cancel_delete_button.on_click(lambda _b: self.cancel_delete())
        self.refresh()

    def __repr__(self) -> str:  # the text/plain fallback of the widget's display
        return f"<SessionBrowser page {self.page + 1} of {self.pages}, {self.total} sessions>"

    # ------------------------------------------------------------------ table
    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    @property
    def selected_ids(self) -> list[str]:
        return list(self.table.value)

    def _header_html(self) -> str:
        head = (f"{'title':<{self.TITLE_W}} {'updated (UTC)':<{self.WHEN_W}} {'msgs':>{self.COUNT_W}}  "
                f"{'model mix':<{self.MIX_W}} metadata")
        return escape(head)

    def _row_label(self, summary: dict, mix: Counter) -> str:
        mix_text = ", ".join(f"{_model_name(m)}×{n}" for m, n in mix.most_common()) or "—"
        meta = summary.get("metadata") or {}
        meta_text = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()) or "—"
        return (f"{_one_line(summary.get('title'), self.TITLE_W):<{self.TITLE_W}} "
                f"{_short_time(summary.get('updated_at')):<{self.WHEN_W}} "
                f"{summary.get('message_count', 0):>{self.COUNT_W}}  "
                f"{_one_line(mix_text, self.MIX_W):<{self.MIX_W}} {_one_line(meta_text, 120)}")

    def model_mix(self, session_ids: Iterable[str]) -> dict[str, Counter]:
        """``{session_id: Counter(model_id -> assistant replies)}`` for the given (visible) sessions."""
        counts = self.client.sessions.model_counts(list(session_ids))
        return {sid: Counter(c) for sid, c in counts.items()}

    def _filters(self) -> tuple[str, dict, str]:
        return (self.title_filter.value.strip().lower(), parse_metadata_filter(self.meta_filter.value),
                self.search_box.value.strip())

    def refresh(self, select: Optional[Iterable[str]] = None) -> None:
        """Re-read the current page with the current filters (and select ``select`` where visible)."""
        try:
            title_q, meta, text_q = self._filters()
        except ValueError as exc:
            self._set_status(str(exc), error=True)
            return
        store = self.client.sessions
        meta_arg = meta or None
        offset = self.page * self.page_size
        if text_q or title_q:
            if text_q:
                candidates = self.client.search_sessions(text_q, limit=self.search_limit)
                if meta_arg:
                    allowed = {s["id"] for s in store.summaries(limit=None, filter_metadata=meta_arg)}
                    candidates = [c for c in candidates if c["id"] in allowed]
            else:
                candidates = store.summaries(limit=None, filter_metadata=meta_arg)
            if title_q:
                candidates = [c for c in candidates if title_q in (c.get("title") or "").lower()]
            self.total = len(candidates)
            if offset >= self.total and self.page > 0:
                self.page = max(0, self.pages - 1)
                offset = self.page * self.page_size
            rows = candidates[offset: offset + self.page_size]
        else:
            self.total = store.count(filter_metadata=meta_arg)
            if offset >= self.total and self.page > 0:
                self.page = max(0, self.pages - 1)
                offset = self.page * self.page_size
            rows = store.summaries(limit=self.page_size, filter_metadata=meta_arg, offset=offset)
        self.rows = rows
        mix = self.model_mix(r["id"] for r in rows)
        wanted = [sid for sid in (select if select is not None else self.table.value) if sid in {r["id"] for r in rows}]
        self._refreshing = True
        try:
            self.table.options = [(self._row_label(r, mix.get(r["id"], Counter())), r["id"]) for r in rows]
            self.table.rows = max(3, min(len(rows), 14))
            self.table.value = tuple(wanted)
        finally:
            self._refreshing = False
        self.prev_button.disabled = self.page <= 0
        self.next_button.disabled = self.page >= self.pages - 1
        filtered = bool(text_q or title_q or meta)
        self.page_label.value = (f"&nbsp;page {self.page + 1} of {self.pages} · {self.total} "
                                 f"{'matching ' if filtered else ''}session{'s' if self.total != 1 else ''}&nbsp;")
        self._show_detail()

    def _on_filter_change(self, _change) -> None:
        if not self._refreshing:
            self.apply_filters()

    def apply_filters(self) -> None:
        self.page = 0
        self.cancel_delete()
        self.refresh()

    def clear_filters(self) -> None:
        self._refreshing = True
        try:
            self.title_filter.value = self.meta_filter.value = self.search_box.value = ""
        finally:
            self._refreshing = False
        self.apply_filters()

    def go_to_page(self, page: int) -> None:
        self.page = min(max(0, page), self.pages - 1)
        self.cancel_delete()
        self.refresh(select=())

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.value = f'<span class="oblix-err">{escape(text)}</span>' if error else escape(text)

    # ------------------------------------------------------------------ selection
    def _on_select(self, _change) -> None:
        if self._refreshing:
            return
        if self._pending_delete and set(self._pending_delete) != set(self.selected_ids):
            self.cancel_delete()
        self._show_detail()

    def _show_detail(self) -> None:
        ids = self.selected_ids
        if not ids:
            self.detail.value = '<div class="oblix-status">Select a session to see its transcript ' \
                                '(Ctrl/Shift-click to select several for merge or delete).</div>'
            return
        if len(ids) > 1:
            titles = {r["id"]: r.get("title") for r in self.rows}
            items = "".join(f"<li>{escape(titles.get(sid, sid))} <span class='oblix-status'>{escape(sid)}</span></li>"
                            for sid in ids)
            self.detail.value = f"<h4>{len(ids)} sessions selected</h4><ul>{items}</ul>"
            self.export_path.placeholder = "a folder: one <id>.json per session"
            return
        sid = ids[0]
        try:
            session = self.client.load_session(sid)
        except KeyError:
            self.detail.value = f"<i>session {escape(sid)} no longer exists</i>"
            return
        messages = session["messages"]
        hidden = max(0, len(messages) - self.detail_messages)
        parts = [f"<h4>{escape(session['title'])}</h4>",
                 f"<div class='oblix-status'>{escape(sid)} · created {escape(_short_time(session['created_at']))}"
                 f" · updated {escape(_short_time(session['updated_at']))} · {len(messages)} messages</div>"]
        if session.get("metadata"):
            parts.append(f"<div class='oblix-meta'>{escape(json.dumps(session['metadata'], indent=1, ensure_ascii=False))}"
                         f"</div>")
        hit = next((r for r in self.rows if r["id"] == sid and r.get("matches")), None)
        if hit:
            parts += [f"<div class='oblix-snippet'>[{escape(m.get('role'))}] {render.markdown_inline(m.get('snippet'))}"
                      f"</div>" for m in hit["matches"]]
        if hidden:
            parts.append(f"<div class='oblix-status'>… {hidden} earlier messages not shown</div>")
        parts += [stored_message_html(m) for m in messages[hidden:]]
        self.detail.value = "\n".join(parts)
        if not self.export_path.value:
            self.export_path.placeholder = f"e.g. exports/{sid}.json"

    def select(self, session_ids: Iterable[str]) -> None:
        """Select these sessions (those on the current page)."""
        visible = {r["id"] for r in self.rows}
        self.table.value = tuple(s for s in session_ids if s in visible)

    # ------------------------------------------------------------------ actions
    def _need(self, n: int, what: str) -> Optional[list[str]]:
        ids = self.selected_ids
        if len(ids) < n:
            self._set_status(f"{what}: select {'a session' if n == 1 else f'at least {n} sessions'} first",
                             error=True)
            return None
        return ids

    def open_selected(self) -> Optional[ChatPanel]:
        """Open the (first) selected session in the chat panel (made below the browser if none was given)."""
        ids = self._need(1, "open")
        if ids is None:
            return None
        if self.chat_panel is None:
            self.chat_panel = ChatPanel(self.client, ids[0])
            self.chat_area.children = (self.chat_panel,)
        else:
            self.chat_panel.select_session(ids[0])
        self._set_status(f"opened {ids[0]} in the chat panel")
        return self.chat_panel

    def export_selected(self, path: Optional[str] = None) -> list[Path]:
        """Export the selection: one session to ``path`` (a .json file); several into ``path`` as a folder."""
        ids = self._need(1, "export")
        if ids is None:
            return []
        target = (path if path is not None else self.export_path.value).strip()
        if not target:
            target = f"{ids[0]}.json" if len(ids) == 1 else "exports"
        files = [Path(target)] if len(ids) == 1 and not target.endswith(("/", os.sep)) and not Path(target).is_dir() \
            else [Path(target) / f"{sid}.json" for sid in ids]
        try:
            for sid, file in zip(ids, files):
                runtime.run(self.client.export_session(sid, str(file)))
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._set_status(f"export failed: {type(exc).__name__}: {exc}", error=True)
            return []
        self._set_status("exported to " + ", ".join(str(f) for f in files))
        return files

    def copy_selected(self) -> list[str]:
        ids = self._need(1, "copy")
        if ids is None:
            return []
        copies = [runtime.run(self.client.copy_session(sid)) for sid in ids]
        self.page = 0
        self.refresh(select=copies)
        self._set_status(f"copied {len(copies)} session{'s' if len(copies) != 1 else ''}")
        return copies

    def merge_selected(self, title: Optional[str] = None) -> Optional[str]:
        ids = self._need(2, "merge")
        if ids is None:
            return None
        merged = runtime.run(self.client.merge_sessions(ids, title=title))
        self.page = 0
        self.refresh(select=[merged])
        self._set_status(f"merged {len(ids)} sessions into {merged}")
        return merged

    def delete_selected(self) -> None:
        """First step of delete: ask for confirmation (``confirm_delete`` deletes, ``cancel_delete`` doesn't)."""
        ids = self._need(1, "delete")
        if ids is None:
            return
        self._pending_delete = ids
        n = len(ids)
        self.confirm_label.value = f"<b>Confirm delete {n} session{'s' if n != 1 else ''}?</b>&nbsp;"
        self.confirm_delete_button.description = f"Delete {n}"
        self.confirm_box.layout.display = "flex"
        self._set_status("deleting cannot be undone (export first if unsure)")

    def confirm_delete(self) -> int:
        ids, self._pending_delete = self._pending_delete, []
        self.confirm_box.layout.display = "none"
        deleted = sum(bool(self.client.delete_session(sid)) for sid in ids)
        if self.chat_panel is not None and self.chat_panel.session_id in ids and not self.chat_panel.busy:
            self.chat_panel.new_session(quiet=True)
        self.refresh(select=())
        self._set_status(f"deleted {deleted} session{'s' if deleted != 1 else ''}")
        return deleted

    def cancel_delete(self) -> None:
        if self._pending_delete:
            self._set_status("delete cancelled")
        self._pending_delete = []
        self.confirm_box.layout.display = "none"


def show_session_browser(client=None, **kwargs: Any) -> SessionBrowser:
    """Display a :class:`SessionBrowser` in the current cell and return it."""
    from IPython.display import display

    browser = SessionBrowser(client, **kwargs)
    display(browser)
    return browser


__all__ = ["ChatPanel", "SessionBrowser", "show_chat_panel", "show_session_browser", "chat_handler",
           "badge_html", "message_html", "stored_message_html", "parse_metadata_filter"]
