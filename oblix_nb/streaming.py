"""Where streamed tokens go: pluggable sinks. The core ships stdout; the notebook layer adds cell output."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO, runtime_checkable

from .pricing import cost_label


@runtime_checkable
class StreamSink(Protocol):
    """Receives one reply as it is generated. Called from the package's event-loop thread."""

    def start(self, info: dict) -> None:
        """Before the first token: ``info`` has ``model_id``, ``request_id``, ``session_id``, ``routing`` and
        ``input_tokens`` (the prompt as counted for the context window: what the model now reads).

        A sink may also have a ``progress(p)`` method (optional, not part of this protocol): it then gets the
        engine's :class:`~oblix_nb.models.base.PromptProgress` events while the model reads the prompt."""

    def write(self, text: str) -> None:
        """One text delta, as it arrives."""

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        """After the last token (``response`` is execute()'s dict) or on failure/cancel (``error`` set)."""


def format_footer(response: dict) -> str:
    """One line: model, route and reason, time to first token, tokens/s, tokens; whether the reply was cut at
    ``max_tokens`` (finish reason ``length``) or is partial; the cost of a cloud reply."""
    m = response.get("metrics") or {}
    route = response.get("routing_decision") or {}
    bits = [response.get("model_id") or "?"]
    target, reason = route.get("target"), (route.get("reason") or "").strip()
    if target:  # routing reasons usually start with their target already ("local: ...")
        bits.append(reason if reason.startswith(f"{target}:") else f"{target}: {reason}".strip().rstrip(":"))
    if route.get("fallback_from"):
        bits.append(f"fallback from {route['fallback_from']}")
    if m.get("time_to_first_token") is not None:
        bits.append(f"TTFT {m['time_to_first_token'] * 1000:.0f} ms")
    if m.get("tokens_per_second"):
        bits.append(f"{m['tokens_per_second']:.1f} tok/s")
    if m.get("output_tokens") is not None:
        bits.append(f"{m['output_tokens']} tokens")
    if m.get("finish_reason") == "length":
        bits.append("cut at max_tokens")
    cost = cost_label(m)  # cloud replies only
    if cost:
        bits.append(cost)
    if response.get("partial"):
        bits.append("PARTIAL")
    return " · ".join(bits)


def reading_status(input_tokens: int | None, progress: Any = None) -> str:
    """The status while the model reads the prompt: ``reading 3,400 tokens…``, or with the engine's
    :class:`~oblix_nb.models.base.PromptProgress` ``reading 1,200 of 3,400 tokens (35 %)…`` (cached tokens
    said), ``read 3,400 tokens; waiting for the first token…`` once read."""
    if progress is not None and getattr(progress, "total", None):
        done, total, cached = int(progress.done), int(progress.total), int(getattr(progress, "cached", 0) or 0)
        reused = f", {cached:,} cached" if cached else ""
        if done >= total:
            return f"read {total:,} tokens{reused}; waiting for the first token…"
        return f"reading {done:,} of {total:,} tokens ({100 * done // total} %{reused})…"
    if input_tokens:
        return f"reading {int(input_tokens):,} token{'s' if input_tokens != 1 else ''}…"
    return "reading the prompt…"


class StdoutSink:
    """Plain tokens on a text stream (stdout by default); a metrics footer when ``display_metrics``."""

    def __init__(self, stream: TextIO | None = None, display_metrics: bool = True):
        self._stream = stream
        self.display_metrics = display_metrics

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def start(self, info: dict) -> None:
        pass

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        if error is not None:
            self.stream.write("\n[stopped]\n" if isinstance(error, (KeyboardInterrupt,)) or
                              type(error).__name__ == "CancelledError" else "\n")
        else:
            self.stream.write("\n")
            if self.display_metrics and response:
                self.stream.write(f"[{format_footer(response)}]\n")
        self.stream.flush()


class ThrottledSink:
    """Base for sinks that redraw the whole reply so far at most every ``interval`` seconds.

    ``write`` runs on the package's loop thread. A delta arriving before the next redraw is due schedules one
    on that loop, so the last words before a pause show without waiting for another delta. Subclasses
    implement :meth:`redraw` (an intermediate update) and do their final rendering in ``end`` after
    :meth:`_close_locked`, under ``self._lock``.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self.pieces: list[str] = []
        self.closed = False
        self.updates = 0  # intermediate redraws
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def redraw(self, text: str) -> None:
        raise NotImplementedError

    def start(self, info: dict) -> None:
        pass

    def write(self, text: str) -> None:
        with self._lock:
            self.pieces.append(text)
            if self.closed:
                return
            now = time.monotonic()
            if now >= self._next_at:
                self._flush_locked(now)
            elif self._timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # called off the loop: the next write or the end redraws
                    return
                self._timer = loop.call_later(self._next_at - now, self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if not self.closed:
                self._flush_locked(time.monotonic())

    def _flush_locked(self, now: float) -> None:
        self.redraw(self.text)
        self.updates += 1
        self._next_at = now + self.interval

    def _close_locked(self) -> bool:
        """Stop intermediate redraws (call with the lock held). False if it was closed already."""
        if self.closed:
            return False
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return True

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        raise NotImplementedError


class CallbackSink:
    """Adapts a plain ``callable(text)`` into a sink."""

    def __init__(self, callback: Callable[[str], None]):
        self._callback = callback

    def start(self, info: dict) -> None:
        pass

    def write(self, text: str) -> None:
        self._callback(text)

    def end(self, response: dict | None, error: BaseException | None = None) -> None:
        pass


SinkLike = StreamSink | Callable[[str], None] | None


def as_sink(sink: SinkLike) -> StreamSink | None:
    if sink is None or isinstance(sink, StreamSink):
        return sink
    if callable(sink):
        return CallbackSink(sink)
    raise TypeError("sink must be a StreamSink (start/write/end) or a callable taking the text")
