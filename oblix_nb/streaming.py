"""Where streamed tokens go: pluggable sinks. The core ships stdout; the notebook layer adds cell output."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Protocol, TextIO, Union, runtime_checkable


@runtime_checkable
class StreamSink(Protocol):
    """Receives one reply as it is generated. Called from the package's event-loop thread."""

    def start(self, info: dict) -> None:
        """Before the first token: ``info`` has ``model_id``, ``request_id``, ``session_id``, ``routing``."""

    def write(self, text: str) -> None:
        """One text delta, as it arrives."""

    def end(self, response: Optional[dict], error: Optional[BaseException] = None) -> None:
        """After the last token (``response`` is execute()'s dict) or on failure/cancel (``error`` set)."""


def format_footer(response: dict) -> str:
    """One line: model, route and reason, time to first token, tokens/s."""
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
    if response.get("partial"):
        bits.append("PARTIAL")
    return " · ".join(bits)


class StdoutSink:
    """Plain tokens on a text stream (stdout by default); a metrics footer when ``display_metrics``."""

    def __init__(self, stream: Optional[TextIO] = None, display_metrics: bool = True):
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

    def end(self, response: Optional[dict], error: Optional[BaseException] = None) -> None:
        if error is not None:
            self.stream.write("\n[stopped]\n" if isinstance(error, (KeyboardInterrupt,)) or
                              type(error).__name__ == "CancelledError" else "\n")
        else:
            self.stream.write("\n")
            if self.display_metrics and response:
                self.stream.write(f"[{format_footer(response)}]\n")
        self.stream.flush()


class CallbackSink:
    """Adapts a plain ``callable(text)`` into a sink."""

    def __init__(self, callback: Callable[[str], None]):
        self._callback = callback

    def start(self, info: dict) -> None:
        pass

    def write(self, text: str) -> None:
        self._callback(text)

    def end(self, response: Optional[dict], error: Optional[BaseException] = None) -> None:
        pass


SinkLike = Union[StreamSink, Callable[[str], None], None]


def as_sink(sink: SinkLike) -> Optional[StreamSink]:
    if sink is None or isinstance(sink, StreamSink):
        return sink
    if callable(sink):
        return CallbackSink(sink)
    raise TypeError("sink must be a StreamSink (start/write/end) or a callable taking the text")
