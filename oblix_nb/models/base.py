"""The backend protocol every model module implements, and the small data classes they exchange."""
from __future__ import annotations

import enum
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import BackendError


class ModelType(str, enum.Enum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    CLAUDE = "claude"
    LLAMACPP = "llamacpp"  # embedded in the kernel's process via llama-cpp-python

    @classmethod
    def parse(cls, value: ModelType | str) -> ModelType:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown model type {value!r}; expected one of {[m.value for m in cls]}") from None


# Which side of the hybrid each type sits on unless hook_model(..., target=...) says otherwise.
DEFAULT_TARGET = {ModelType.OLLAMA: "local", ModelType.LLAMACPP: "local",
                  ModelType.OPENAI: "cloud", ModelType.CLAUDE: "cloud"}

# Sampling options execute() understands; each backend maps them to where its API documents them.
SAMPLING_OPTIONS = ("top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty", "repeat_penalty")


@dataclass(frozen=True)
class PromptProgress:
    """How far the model has read the prompt (the event ``GenerationParams.on_progress`` receives).

    ``done`` of ``total`` prompt tokens are in the model's context; ``cached`` of them were reused from an earlier
    call (not read again). ``total`` is the exact input token count of the call: a reply stopped before its first
    token still knows it. Sent by engines that read the prompt in steps they can report (the embedded llama.cpp
    model: once before reading, after each step, and once with ``done == total``); servers do not report it.
    """
    done: int
    total: int
    cached: int = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.total


@dataclass
class GenerationParams:
    max_tokens: int | None = None
    temperature: float | None = None
    options: dict = field(default_factory=dict)  # only keys from SAMPLING_OPTIONS
    schema: dict | None = None  # a JSON Schema the reply must match (see ModelBackend.structured_output)
    # Called with a PromptProgress while the model reads the prompt, on the event loop that iterates the stream
    # (never from a worker thread); an exception it raises is ignored. Not part of the request: not compared.
    on_progress: Callable[[PromptProgress], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class Usage:
    """Token counts for one call, and where they came from: "server", "engine" (in-process llama.cpp), "tokenizer", "stream_chunks", "estimate"."""
    input_tokens: int | None = None   # everything the model read, cached parts included
    output_tokens: int | None = None
    input_source: str = "server"
    output_source: str = "server"
    finish_reason: str | None = None
    cache_read_tokens: int | None = None   # of input_tokens: read from the provider's prompt cache
    cache_write_tokens: int | None = None  # of input_tokens: written to it (Anthropic bills these extra)
    # Sampling options of the call that the backend could not send (e.g. ``temperature`` with an Anthropic SDK
    # whose API version has none): the reply was generated without them. Empty when everything was applied.
    options_not_applied: tuple = ()


StreamItem = str | Usage


def usage_when_cut(usage: Usage, backend: ModelBackend, messages: list[dict], pieces: list[str],
                   progress: PromptProgress | None) -> Usage:
    """The usage of a reply cut (stopped or failed) before ``backend`` reported all of it: the input count from
    the engine's last prompt-reading report (``progress``) when there is one, else estimated from ``messages``;
    the output estimated from the text that arrived (``pieces``). Never 0 input for a prompt that was sent."""
    input_tokens, input_source = usage.input_tokens, usage.input_source
    if input_tokens is None:
        if progress is not None:
            input_tokens, input_source = progress.total, "engine"
        else:
            text = "\n".join(str(m.get("content") or "") for m in messages)
            input_tokens, input_source = backend.estimate_tokens(text), backend.estimate_source
    output_tokens, output_source = usage.output_tokens, usage.output_source
    if output_tokens is None:
        output_tokens = backend.estimate_tokens("".join(pieces)) if pieces else 0
        output_source = backend.estimate_source if pieces else "none"
    return replace(usage, input_tokens=input_tokens, input_source=input_source, output_tokens=output_tokens,
                   output_source=output_source, finish_reason=usage.finish_reason or "interrupted")


def report_progress(params: GenerationParams, progress: PromptProgress) -> None:
    """Call ``params.on_progress`` (if any) with ``progress``; a failing callback never breaks the call."""
    callback = params.on_progress
    if callback is not None:
        try:
            callback(progress)
        except Exception:  # noqa: BLE001 - display code must not stop the model
            pass


class ModelBackend(ABC):
    """One hooked model. ``stream`` yields text deltas as they arrive and ends with its final ``Usage``.

    A backend may also yield one ``Usage`` object *after* its first text delta and keep updating that same object
    while the reply streams (``finish_reason`` "interrupted" until the end): if the stream is stopped or fails
    midway, the consumer's last ``Usage`` then already has the real input token count and the output so far. The
    last ``Usage`` yielded is the call's usage; a ``Usage`` never comes before the first text delta.
    """

    model_type: ModelType

    def __init__(self, model_name: str, endpoint: str | None = None, *, target: str | None = None,
                 context_window: int | None = None):
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError("model_name must be a non-empty string")
        self.model_name = model_name
        self.endpoint = endpoint
        self.target = target or DEFAULT_TARGET[self.model_type]
        if self.target not in ("local", "cloud"):
            raise ValueError(f"target must be 'local' or 'cloud', not {self.target!r}")
        self.context_window = context_window

    @property
    def model_id(self) -> str:
        return f"{self.model_type.value}:{self.model_name}"

    def __repr__(self) -> str:  # never shows credentials
        where = f" endpoint={self.endpoint!r}" if self.endpoint else ""
        return f"<{type(self).__name__} {self.model_id} target={self.target}{where}>"

    @abstractmethod
    async def connect(self) -> None:
        """Check the endpoint answers and has the model; raise ModelUnavailableError otherwise.

        Must never download anything nor send a billable request.
        """

    @abstractmethod
    def stream(self, messages: list[dict], params: GenerationParams) -> AsyncGenerator[StreamItem, None]:
        """Yield text deltas as they arrive, then the final ``Usage``. Closing or cancelling the iterator stops
        the upstream request (the connection is closed; the embedded engine stops within one prompt step or
        token). Whatever the SDK raises comes out as :class:`~oblix_nb.errors.BackendError`."""

    def failure(self, exc: BaseException) -> BackendError:
        """``exc`` (raised by this backend's SDK) as the BackendError routing handles; see :func:`backend_error`."""
        return backend_error(exc, self.model_id)

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        """Non-streaming call. Default: drain ``stream``; backends with a native non-stream call override it."""
        parts: list[str] = []
        usage = Usage()
        async for item in self.stream(messages, params):
            if isinstance(item, Usage):
                usage = item
            else:
                parts.append(item)
        return "".join(parts), usage

    # What estimate_tokens() is, for metrics["usage_source"]: "estimate" here, "tokenizer" where it is exact.
    estimate_source = "estimate"

    def estimate_tokens(self, text: str) -> int:
        """A conservative token count for budgeting history (over-estimates English by ~25%)."""
        return len(text.encode("utf-8")) // 3 + 1

    def default_max_tokens(self) -> int | None:
        """Reply length when the caller gives none. Hosted APIs know their own limits (None: don't send one);
        local engines would otherwise generate until the context is full, so they cap it at the reply reserve
        that the history budget already set aside (a quarter of the context window)."""
        if self.target == "local" and self.context_window:
            return self.context_window // 4
        return None

    # How this backend enforces ``GenerationParams.schema`` while decoding: "grammar" (llama.cpp), "json_schema"
    # (OpenAI response_format), "format" (Ollama), or None (not enforced: the reply is only validated afterwards).
    schema_enforcement: str | None = None
    # True for a model running inside this process (not re-entrant: map() defaults to one row at a time).
    in_process = False

    def structured_output(self, schema: dict) -> dict:
        """Request arguments that make this backend constrain its reply to the JSON Schema ``schema``.

        Backends merge the result into their request whenever ``params.schema`` is set; a new backend plugs into
        structured output by overriding this (and ``schema_enforcement``). The default ({}) enforces nothing;
        callers still tell the model the schema and validate the reply after parsing.
        """
        return {}

    def message_overhead(self) -> int:
        """Template tokens around each chat message (ChatML-style role markers)."""
        return 5

    async def aclose(self) -> None:
        """Release what this backend opened."""

    def describe(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_type": self.model_type.value, "model_name": self.model_name,
                "endpoint": self.endpoint, "target": self.target, "context_window": self.context_window}

    # -- confidence (oblix_nb.confidence) ---------------------------------------------------------------------
    # How this backend can tell how likely an answer is: "exact" (it scores any given continuation of the prompt:
    # the embedded llama.cpp), "top_logprobs" (it returns the generated tokens' log-probabilities with the top
    # alternatives at each position: OpenAI-compatible servers, Ollama >= 0.12.11), or None (Claude: NaN).
    logprob_method: str | None = None

    @property
    def supports_logprobs(self) -> bool:
        return self.logprob_method is not None

    async def score_continuations(self, messages: list[dict], prefix: str,
                                  continuations: list[str]) -> list[list[float]]:
        """The log-probability of each token of each continuation, given the chat ``messages`` and the start
        ``prefix`` of the assistant's reply (teacher forcing). Only where ``logprob_method == "exact"``."""
        raise LogprobsUnavailable(f"{self.model_id} cannot score given continuations")

    async def complete_with_logprobs(self, messages: list[dict], params: GenerationParams,
                                     top_logprobs: int = 20) -> tuple[str, Usage, list]:
        """``complete()`` plus the generated tokens as :class:`TokenLogprob` (with up to ``top_logprobs``
        alternatives each). LogprobsUnavailable when the backend or its server gives none."""
        raise LogprobsUnavailable(f"{self.model_id} returns no log-probabilities")


def is_connection_failure(exc: BaseException) -> bool:
    """Errors before the first token that justify trying the next candidate (refused, 5xx, 429, 529, timeout,
    an error a server sent inside its stream). A :class:`BackendError` says itself (``retryable``)."""
    import httpx

    if isinstance(exc, BackendError):
        return exc.retryable
    if isinstance(exc, (ConnectionError, TimeoutError, httpx.TransportError)):
        return True
    try:
        import openai

        if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
            return True
        if isinstance(exc, openai.APIStatusError) and (exc.status_code >= 500 or exc.status_code == 429):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import ollama

        # -1: an error inside a 200 stream (the runner failed after the reply started, "Connection error." ...)
        if isinstance(exc, ollama.ResponseError) and (exc.status_code >= 500 or exc.status_code in (429, -1)):
            return True
    except ImportError:  # pragma: no cover
        pass
    anthropic = sys.modules.get("anthropic")  # only loaded if a Claude model was hooked
    if anthropic is not None:
        if isinstance(exc, (anthropic.APIConnectionError, anthropic.APITimeoutError)):
            return True
        if isinstance(exc, anthropic.APIStatusError):
            # An SSE `error` event (e.g. overloaded_error) arrives with the stream's HTTP 200.
            body = exc.body if isinstance(exc.body, dict) else {}
            inner = body.get("error")
            error = inner if isinstance(inner, dict) else body
            if error.get("type") in RETRYABLE_ERROR_TYPES:
                return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status >= 500 or status == 429)


# Anthropic error types worth trying another model for (429, 500, 529 and their in-stream equivalents).
RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


@dataclass
class TokenLogprob:
    """One generated token: its text, its natural-log probability, and the ``top`` alternatives the server listed
    at its position as ``(text, logprob)`` pairs."""
    text: str
    logprob: float
    top: list = field(default_factory=list)


class LogprobsUnavailable(Exception):
    """The backend (or its server) gives no log-probabilities: confidence is NaN. ``reply``: ``(text, Usage)``
    when the call was answered anyway (a server that ignored the request for log-probabilities)."""

    def __init__(self, message: str, reply: tuple | None = None):
        super().__init__(message)
        self.reply = reply


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _api_error(exc: BaseException) -> tuple[str | None, str | None]:
    """``(error type, message)`` from an SDK exception's parsed body (Anthropic/OpenAI/Ollama error formats)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            kind = error.get("type") if isinstance(error.get("type"), str) else None
            return kind, (message if isinstance(message, str) else (str(message) if message else None))
        if isinstance(error, str):
            return None, error
        if isinstance(body.get("detail"), (str, list)):
            return None, str(body["detail"])
    error = getattr(exc, "error", None)  # ollama.ResponseError
    if isinstance(error, str):
        return None, error
    return None, None


def backend_error(exc: BaseException, model_id: str | None = None) -> BackendError:
    """What an SDK raised, as a :class:`BackendError`: one line naming the SDK's exception type, the HTTP status
    and the server's own reason (every line of it), and whether the next model should be tried (see
    BackendError). A BackendError is returned as it is."""
    if isinstance(exc, BackendError):
        return exc
    status = _status(exc)
    kind, reason = _api_error(exc)
    if status is not None and (status >= 500 or status in (429, -1)):
        retryable = True
    elif status is not None and 400 <= status < 500:
        retryable = False
    elif kind is not None and _status(exc) == 200:  # Anthropic: an SSE error event inside the 200 stream
        retryable = kind in RETRYABLE_ERROR_TYPES
    else:  # connection, timeout, malformed reply, an SDK that rejects its arguments: another model may answer
        retryable = True
    parts = [type(exc).__name__ + ":"]
    if status is not None and status > 0 and status != 200:
        parts.append(f"HTTP {status}")
    if kind:
        parts.append(kind + ":" if reason else kind)
    parts.append(reason or str(exc) or "(no message)")
    message = " ".join(" ".join(parts).split())
    from .._util import ERROR_TEXT_LIMIT

    if len(message) > ERROR_TEXT_LIMIT:
        message = message[: ERROR_TEXT_LIMIT - 1].rstrip() + "…"
    error = BackendError(message, model_id=model_id, retryable=retryable, status_code=status, cause=exc)
    error.__cause__ = exc
    return error
