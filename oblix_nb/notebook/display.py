"""Streaming a reply into a notebook cell: one display id per reply, throttled updates, exact Markdown at the end.

Two ways in:

* ``%%oblix`` drives the display from the kernel's **main thread**: the sink that runs on the package's loop
  thread (:class:`QueueSink`) only puts deltas on a queue; :func:`drive` takes them off with a timeout equal to
  the time left until the next allowed update and publishes. Output therefore stays in the right cell, and a
  kernel interrupt (KeyboardInterrupt) lands in the main thread, where the request is cancelled upstream.
* ``client.sink_factory`` (a top-level ``await client.execute(...)`` in a cell) gets a :class:`NotebookSink`,
  which is called on the loop thread. It remembers the cell's parent header when it is made (in the cell's
  own context) and publishes throttled ``update_display_data`` messages, which frontends route by display id.

Every bundle carries a ``text/plain`` fallback. The reply's own display ends as exactly the reply (its
``text/markdown``), next to an inert ``text/html`` rendering of it that frontends prefer (model output must not
run as HTML in the page: see :func:`safe_html`). A second, small display below it is the status line that
ends as the footer (model, route, TTFT, tokens/s).
In terminal IPython (no display frontend) replies are plain tokens on stdout.
"""
from __future__ import annotations

import asyncio
import queue
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..streaming import ThrottledSink, format_footer, reading_status

CURSOR = "▌"
DEFAULT_INTERVAL = 0.1


# --------------------------------------------------------------------------- HTML that can't run code
def safe_html(text: str) -> str:
    """Model text (Markdown) as inert HTML, for the ``text/html`` entry of every rich bundle.

    Jupyter renders a kernel's live ``text/markdown`` output as *trusted* HTML, raw HTML included, so a reply
    containing ``<img src=x onerror=...>`` would run script in the notebook page (and from there, code in the
    kernel). Frontends prefer ``text/html`` over ``text/markdown``, so each bundle carries this rendering
    (markdown-it with raw HTML escaped and only http/https/mailto links, via :mod:`.render`) next to the exact
    Markdown. Without markdown-it-py: the escaped text in a ``<pre>``.
    """
    try:
        from .render import markdown
        return f'<div class="oblix-reply">{markdown(text)}</div>'
    except ImportError:
        import html

        return f'<pre class="oblix-reply" style="white-space:pre-wrap">{html.escape(text)}</pre>'


# --------------------------------------------------------------------------- the reply as a value
class Reply(str):
    """The reply text (a ``str``) carrying execute()'s whole response dict as ``.response``.

    Renders as Markdown in a notebook (``_repr_markdown_``); ``str`` everywhere else.
    """

    response: dict

    def __new__(cls, text: str, response: dict | None = None):
        obj = super().__new__(cls, text)
        obj.response = dict(response or {})
        return obj

    def __reduce__(self):  # pickles / copies as a Reply, response included
        return (Reply, (str(self), self.response))

    def _repr_markdown_(self) -> str:
        text = str(self)
        if self.partial:
            text += "\n\n*(partial reply: the request was stopped)*"
        return text

    def _repr_html_(self) -> str:  # preferred by frontends: inert HTML (see safe_html)
        return safe_html(self._repr_markdown_())

    @property
    def text(self) -> str:
        return str(self)

    @property
    def model_id(self) -> str | None:
        return self.response.get("model_id")

    @property
    def metrics(self) -> dict:
        return self.response.get("metrics") or {}

    @property
    def routing_decision(self) -> dict:
        return self.response.get("routing_decision") or {}

    @property
    def session_id(self) -> str | None:
        return self.response.get("session_id")

    @property
    def partial(self) -> bool:
        return bool(self.response.get("partial"))

    @property
    def parsed(self) -> Any:
        """The structured value (``%%oblix --schema`` / ``-f json``), else None."""
        return self.response.get("parsed")

    @property
    def footer(self) -> str:
        return format_footer(self.response) if self.response else ""

    @property
    def code(self) -> str:
        """The reply's fenced code (:func:`extract_code`): what ``-f code`` puts in a new cell."""
        return extract_code(str(self))

    @property
    def cut(self) -> bool:
        """True if the reply stopped at ``max_tokens`` (finish reason ``length``): its end is missing."""
        return self.metrics.get("finish_reason") == "length"


_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)


def extract_code(text: str) -> str:
    """The contents of the fenced code blocks of ``text`` (joined by a blank line), or all of it if none.

    An unterminated last fence (a reply cut by max_tokens) counts up to the end of the text.
    """
    blocks = [m.group(2).rstrip("\n") for m in _FENCE_RE.finditer(text)]
    if not blocks:
        tail = re.search(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*)\Z", text, re.S | re.M)
        if tail:
            blocks = [tail.group(2).rstrip("\n")]
    return "\n\n".join(blocks) if blocks else text.strip("\n")


# --------------------------------------------------------------------------- frontends
def has_display_frontend(shell: Any) -> bool:
    """True in a Jupyter kernel (rich display), False in terminal IPython / no IPython."""
    if shell is None:
        return False
    if type(shell).__name__ == "ZMQInteractiveShell":
        return True
    try:
        return "IPKernelApp" in shell.config
    except Exception:  # noqa: BLE001
        return False


# The footer's look: JupyterLab's theme variables only (Light, Dark, high contrast), so text keeps AA contrast in
# every theme; without them (other frontends) the text inherits the output's own colour. Errors are marked by
# the ⚠ and a border in the theme's error colour, never by coloured text (too faint on dark backgrounds).
FOOTER_STYLE = ("font-size:0.85em;font-family:var(--jp-ui-font-family, inherit);margin-top:2px;"
                "color:var(--jp-ui-font-color2, inherit)")
FOOTER_ERROR_STYLE = ("font-size:0.85em;font-family:var(--jp-ui-font-family, inherit);margin-top:2px;"
                      "color:var(--jp-ui-font-color1, inherit);font-weight:600;padding-left:6px;"
                      "border-left:3px solid var(--jp-error-color1, currentColor)")
# Never typeset as maths: "$0.0012 … $0.05" would otherwise become run-together italics (MathJax 3 skips
# .mathjax_ignore, MathJax 2 .tex2jax_ignore).
NO_MATH = "tex2jax_ignore mathjax_ignore"
ROUTE_WORDS = 28  # the route's few words in the one-line footer (characters)
_TARGET_RE = re.compile(r"^\s*(local|cloud)\b\s*:?\s*", re.I)


def short_route(route: str) -> str:
    """A routing reason in a few words: ``local: forced by model_id=x; agents: …`` → ``local: forced``.

    The target, then the reason's first clause without ``key=value`` details (cut to :data:`ROUTE_WORDS`);
    the whole reason stays in the footer's details."""
    match = _TARGET_RE.match(route)
    if not match:
        return route if len(route) <= ROUTE_WORDS else route[:ROUTE_WORDS - 1].rstrip() + "…"
    target, rest = match.group(1).lower(), route[match.end():]
    while more := _TARGET_RE.match(rest):  # "local: cloud: forced by …" (a reason quoting another target)
        rest = rest[more.end():]
    head = re.split(r"[;(]", rest, maxsplit=1)[0]
    head = re.sub(r"\S+=\S*", "", head)  # model_id=…, n=3
    head = re.sub(r"\s+", " ", head).strip(" ,:.-")
    head = re.sub(r"\s+(by|to|from|of|for|with|at|on)$", "", head)
    if len(head) > ROUTE_WORDS:
        head = head[:ROUTE_WORDS - 1].rsplit(" ", 1)[0].rstrip(" ,:") + "…"
    return f"{target}: {head}" if head else target


def says_more(route: str, brief: str) -> bool:
    """Whether the whole routing reason says more than its few words (then it is offered on demand)."""
    plain = lambda text: re.sub(r"[\s,:;.]+", " ", text).strip().casefold()  # noqa: E731
    return plain(route) != plain(brief)


def split_footer(text: str) -> tuple[str, str | None]:
    """A footer line (:func:`oblix_nb.streaming.format_footer`: ``model · target: reason · TTFT … · tok/s ·
    tokens · cost``) as (one short line, the details it left out or None).

    The short line keeps the model, the route in a few words (:func:`short_route`), TTFT, tok/s, tokens, cost
    and the flags; the details are the full routing reason (and the model a fallback came from)."""
    parts = [p for p in text.split(" · ") if p]
    if len(parts) < 2:
        return text, None
    details: list[str] = []
    short = [parts[0]]
    for part in parts[1:]:
        if _TARGET_RE.match(part) and not details:
            brief = short_route(part)
            short.append(brief)
            if says_more(part, brief):
                details.append(f"route: {part.strip()}")
        elif part.startswith("fallback from "):
            short.append("fallback")
            details.append(part)
        elif part.startswith("default model: "):  # why this model answered (hooked because none was)
            short.append("default model")
            details.append(part)
        else:
            short.append(part)
    return " · ".join(short), ("\n".join(details) or None)


def _footer_bundle(text: str, *, error: bool = False, pending: bool = False) -> dict:
    """The status line / footer display: one line; a finished footer's full routing reason in a ``details``
    element under it (closed). Nothing in it is typeset as maths (:data:`NO_MATH`)."""
    from html import escape

    style = FOOTER_ERROR_STYLE if error else FOOTER_STYLE
    icon = "⏳ " if pending else ("⚠ " if error else "")
    kind = "oblix-footer oblix-footer-error" if error else "oblix-footer"
    short, details = (text, None) if pending or error else split_footer(text)
    if details:
        body = (f'<details class="oblix-footer-details"><summary style="cursor:pointer">{icon}{escape(short)}'
                f'</summary><div style="white-space:pre-wrap;overflow-wrap:anywhere;padding-left:1.2em">'
                f'{escape(details)}</div></details>')
    else:
        body = f"{icon}{escape(text)}"
    return {"text/html": f'<div class="{kind} {NO_MATH}" style="{style}">{body}</div>',
            "text/plain": f"[{icon}{text}]"}


class ReplyDisplay:
    """The two displays of one reply (reply + status/footer), published through ``publish(data, display_id,
    update)``. Counts the reply's updates. Not thread-safe: one thread drives it."""

    def __init__(self, publish: Callable[[dict, str, bool], None], fmt: str = "markdown",
                 show_footer: bool = True):
        self._publish = publish
        self.fmt = fmt
        self.show_footer = show_footer
        self.reply_id = uuid.uuid4().hex
        self.footer_id = uuid.uuid4().hex
        self.text = ""
        self.updates = 0
        self.shown = False

    def _bundle(self, text: str, final: bool) -> dict:
        if self.fmt == "text":
            return {"text/plain": text if final else text + CURSOR}
        shown = text if final else text + CURSOR
        return {"text/html": safe_html(shown), "text/markdown": shown, "text/plain": text}

    def show(self, status: str = "") -> None:
        """Create both displays (the reply empty, the status line saying what is happening)."""
        self._publish(self._bundle("", final=False), self.reply_id, False)
        if self.show_footer:
            self._publish(_footer_bundle(status or "waiting for the model…", pending=True), self.footer_id, False)
        self.shown = True

    def status(self, text: str) -> None:
        if self.show_footer:
            self._publish(_footer_bundle(text, pending=True), self.footer_id, True)

    def update(self, text: str) -> None:
        """An intermediate update with the text so far (the caller throttles)."""
        self.text = text
        self._publish(self._bundle(text, final=False), self.reply_id, True)
        self.updates += 1

    def final(self, text: str, footer: str | None = None, *, error: bool = False,
              bundle: dict | None = None) -> None:
        """The last update: exactly ``text`` (or the given MIME ``bundle``); the status line becomes ``footer``."""
        self.text = text
        self._publish(bundle if bundle is not None else self._bundle(text, final=True), self.reply_id, True)
        if self.show_footer and footer is not None:
            self._publish(_footer_bundle(footer, error=error), self.footer_id, True)


def shell_publisher(shell: Any, parent: dict | None = None) -> Callable[[dict, str, bool], None]:
    """``publish(data, display_id, update)`` through the shell's current display publisher.

    With ``parent`` (a kernel message header), messages are sent with that parent even from another thread,
    so they are attributed to the cell that started the reply.
    """
    def publish(data: dict, display_id: str, update: bool) -> None:
        pub = shell.display_pub
        token = None
        setter = getattr(pub, "set_thread_parent", None)
        if parent and callable(setter):
            token = setter(parent)
        try:
            pub.publish(data=data, metadata={}, transient={"display_id": display_id}, update=update)
        finally:
            if token is not None:
                pub.reset_thread_parent(token)
    return publish


# --------------------------------------------------------------------------- sinks
class QueueSink:
    """A StreamSink for the loop thread that only queues events for :func:`drive` (main thread)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple] = queue.Queue()

    def start(self, info: dict) -> None:
        self.queue.put(("start", info))

    def write(self, text: str) -> None:
        self.queue.put(("text", text))

    def progress(self, progress: Any) -> None:
        """The engine's prompt-reading progress (:class:`~oblix_nb.models.base.PromptProgress`)."""
        self.queue.put(("progress", progress))

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        self.queue.put(("end", response, error))

    def done(self, result: Any = None, error: BaseException | None = None) -> None:
        """Put by the job wrapper when the whole execute() coroutine has finished (cleanup included)."""
        self.queue.put(("done", result, error))


class DriveResult:
    def __init__(self) -> None:
        self.text = ""
        self.info: dict | None = None
        self.response: dict | None = None
        self.error: BaseException | None = None
        self.interrupted = False
        self.first_delta_at: float | None = None
        self.last_delta_at: float | None = None
        self.updates = 0


def _status_line(info: dict, reading: str | None = None) -> str:
    """The status line: ``reading 3,400 tokens… · model · route`` until the first token (``reading``: the
    :func:`~oblix_nb.streaming.reading_status` text), then ``streaming from model · route …``."""
    route = info.get("routing") or {}
    bits = [f"{reading.rstrip('…')} · {info.get('model_id', '?')}" if reading else
            f"streaming from {info.get('model_id', '?')}"]
    if route.get("target"):
        reason = route.get("reason") or ""
        full = reason if reason.startswith(route["target"] + ":") else f"{route['target']}: {reason}".strip()
        bits.append(short_route(full))  # one line while streaming too; the footer offers the whole reason
    return " · ".join(bits) + " …"


def drive(sink: QueueSink, future, view: ReplyDisplay | None, *, interval: float = DEFAULT_INTERVAL,
          stream: Any | None = None, cancel_timeout: float = 30.0) -> DriveResult:
    """Main-thread loop: take the sink's events off its queue and render them, at most one reply update per
    ``interval`` seconds (plus a final one). ``view=None`` means terminal mode: deltas go to ``stream``
    (stdout) as they arrive.

    Returns when the job wrapper says ``done``. A KeyboardInterrupt while waiting cancels ``future`` (the
    upstream request stops; the client stores the partial reply flagged) and waits for that cleanup, then
    returns with ``interrupted`` set; the caller decides whether to re-raise.
    """
    out = DriveResult()
    pieces: list[str] = []
    pending = False
    next_at = 0.0
    finished = False

    def handle(event: tuple) -> None:
        nonlocal pending, finished
        kind = event[0]
        if kind == "text":
            now = time.monotonic()
            if out.first_delta_at is None:
                out.first_delta_at = now
                if view is not None and out.info is not None:  # read: now it streams
                    view.status(_status_line(out.info))
            out.last_delta_at = now
            pieces.append(event[1])
            if view is None:
                (stream or sys.stdout).write(event[1])
                (stream or sys.stdout).flush()
            else:
                pending = True
        elif kind == "start":
            out.info = event[1]
            if view is not None:
                view.status(_status_line(event[1], reading_status(event[1].get("input_tokens"))))
        elif kind == "progress":
            if view is not None and out.info is not None and out.first_delta_at is None:
                view.status(_status_line(out.info, reading_status(out.info.get("input_tokens"), event[1])))
        elif kind == "end":
            if event[1] is not None:
                out.response = event[1]
        elif kind == "done":
            if event[2] is not None:
                out.error = event[2]
            elif event[1] is not None:
                out.response = event[1]
            finished = True

    def wait_done() -> None:
        deadline = time.monotonic() + cancel_timeout
        while not finished:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                handle(sink.queue.get(timeout=min(left, 0.5)))
            except queue.Empty:
                continue

    try:
        while not finished:
            if pending:
                timeout = max(0.0, next_at - time.monotonic())
            else:
                timeout = 0.5
            try:
                event = sink.queue.get(timeout=timeout)
            except queue.Empty:
                event = None
            if event is not None:
                handle(event)
                while not finished:  # take whatever else is already there
                    try:
                        handle(sink.queue.get_nowait())
                    except queue.Empty:
                        break
            if pending and view is not None and not finished and time.monotonic() >= next_at:  # pending: a view
                view.update("".join(pieces))
                next_at = time.monotonic() + interval
                pending = False
            if event is None and not finished and future.done():
                # The job ended without its wrapper saying so (should not happen); don't hang.
                try:
                    out.response = future.result()
                except BaseException as exc:  # noqa: BLE001
                    out.error = exc
                finished = True
    except KeyboardInterrupt:
        out.interrupted = True
        future.cancel()
        try:
            wait_done()
            future.result(timeout=cancel_timeout)  # and for the task itself to have finished
        except KeyboardInterrupt:  # a second interrupt: stop waiting for the cleanup
            pass
        except BaseException:  # noqa: BLE001 - CancelledError, or the job's own error: already reported
            pass
    out.text = "".join(pieces)
    if view is not None:
        out.updates = view.updates
    return out


class NotebookSink(ThrottledSink):
    """``client.sink_factory``'s sink in a kernel: called on the package loop thread, publishes throttled
    display updates with the parent header of the cell that created it."""

    def __init__(self, shell: Any, display_metrics: bool = True, interval: float | None = None):
        super().__init__(DEFAULT_INTERVAL if interval is None else interval)
        self.shell = shell
        pub = getattr(shell, "display_pub", None)
        parent = getattr(pub, "parent_header", None)
        self.parent = dict(parent) if isinstance(parent, dict) and parent else None
        self.view = ReplyDisplay(shell_publisher(shell, self.parent), show_footer=display_metrics)

    def start(self, info: dict) -> None:
        with self._lock:
            self.info = info
            line = _status_line(info, reading_status(info.get("input_tokens")))
            if not self.view.shown:
                self.view.show(line)
            else:
                self.view.status(line)

    def progress(self, progress: Any) -> None:
        with self._lock:
            info = getattr(self, "info", None)
            if info is not None and not self.pieces and not self.closed:
                self.view.status(_status_line(info, reading_status(info.get("input_tokens"), progress)))

    def redraw(self, text: str) -> None:
        info = getattr(self, "info", None)
        if self.updates == 0 and info is not None:  # the first text: reading is over, it streams
            self.view.status(_status_line(info))
        self.view.update(text)

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        with self._lock:
            self._close_locked()
            if not self.view.shown:
                self.view.show()
            if error is None and response is not None:
                self.view.final(response.get("response", self.text), format_footer(response))
            else:
                stopped = isinstance(error, (KeyboardInterrupt, asyncio.CancelledError))
                footer = ("interrupted: partial reply kept, flagged partial" if stopped
                          else f"error: {error}") if error is not None else "stopped"
                self.view.final(self.text, footer, error=True)


def notebook_sink_factory(shell: Any, interval: Callable[[], float] | float | None = None):
    """A ``client.sink_factory`` for a kernel: each call makes a :class:`NotebookSink` (in the cell's context)."""
    def factory(display_metrics: bool = True):
        value = interval() if callable(interval) else interval
        return NotebookSink(shell, display_metrics=display_metrics, interval=value)
    factory.oblix_notebook = True  # type: ignore[attr-defined]
    return factory
