"""Claude backend over the official ``anthropic.AsyncAnthropic`` (extra ``oblix-nb[claude]``): the Messages API.

The SDK is imported only when a Claude model is hooked. Configuration, first match wins:

* key: ``api_key=``, else env ``ANTHROPIC_API_KEY`` (required for api.anthropic.com; a placeholder is sent to
  other endpoints that don't need one). It lives only in the SDK client: never in reprs, logs or the store.
* endpoint: ``base_url=`` / ``endpoint=``, else env ``ANTHROPIC_BASE_URL``, else ``https://api.anthropic.com``.
  The base URL has no ``/v1`` (the SDK adds ``/v1/messages``); a trailing ``/v1`` is dropped.

**Hooking never bills.** ``connect()`` asks ``GET /v1/models/{model}`` (the Models API is free), which checks at
once that the endpoint answers, the key is accepted and the model exists (and gives its context window when the
server says). On a 404 it asks ``GET /v1/models`` (is the model listed, or is there no Models API?); a server
without one is asked ``POST /v1/messages/count_tokens`` (also free); a server with none of these is hooked once
it has answered (``verified`` stays False). ``POST /v1/messages`` (billed) is never sent on hook.

Requests: system messages go to the top-level ``system`` parameter (joined in order); consecutive messages of one
role are merged and leading assistant messages dropped, as the API wants a conversation that starts with the
user. ``max_tokens`` is always sent (the API requires it): the caller's, else :meth:`default_max_tokens`.
``stop`` goes as ``stop_sequences``. Sampling (``temperature``, clamped to the API's [0, 1], ``top_p``,
``top_k``) is sent the way the installed SDK allows (:func:`sdk_sampling`, read once from its
``messages.create`` signature and API version): as keywords (anthropic < 1), in the request body through
``extra_body`` (anthropic 1.x: the keywords are gone but its API version 2023-06-01 still takes them), or not at
all (anthropic 2.x sends API version 2026-10-21, which removed them: the API would answer 400). ``seed`` and the
repetition penalties have no Messages-API equivalent. Options given but not sent are listed in the call's
``Usage.options_not_applied`` (and a warning names them once per model): the reply is generated without them.
Nothing else is passed to the SDK but keywords its ``messages.create`` declares.
With ``prompt_cache=True`` the history before the new prompt is marked ``cache_control: ephemeral`` (prompt
caching: later turns read it at a tenth of the input price; writing it costs 1.25x).

Usage comes from the API: ``input_tokens`` here is everything the model read (the API's ``input_tokens`` plus
``cache_creation_input_tokens`` plus ``cache_read_input_tokens``), with the two cache counts kept apart in
``Usage.cache_write_tokens`` / ``cache_read_tokens`` so cost is exact. Stop reasons map onto the shared finish
reasons: ``end_turn``/``stop_sequence`` -> ``stop``, ``max_tokens``/``model_context_window_exceeded`` ->
``length``, ``tool_use`` -> ``tool_calls``, ``refusal`` -> ``content_filter``, ``pause_turn`` -> ``pause``.

``max_retries=0``: a 429/529/5xx or connection error before the first token goes straight back to routing,
which falls back to the next candidate. Anything the SDK raises during a call comes out as
:class:`~oblix_nb.errors.BackendError` (see :func:`oblix_nb.models.base.backend_error`).
"""
from __future__ import annotations

import functools
import os
import warnings
from collections.abc import AsyncGenerator

from ..errors import ModelUnavailableError
from .base import SAMPLING_OPTIONS, GenerationParams, ModelBackend, ModelType, StreamItem, Usage

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_CONTEXT = 200_000      # every current Claude model reads at least 200k tokens
DEFAULT_REPLY_TOKENS = 4096    # max_tokens when the caller gives none (the API needs one)
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
                  "pause_turn": "pause"}


SAMPLING_KEYWORDS = ("temperature", "top_p", "top_k")
SAMPLING_REMOVED_IN = "2026-10-21"  # the first anthropic-version without temperature/top_p/top_k


@functools.cache
def sdk_sampling() -> str:
    """How the installed ``anthropic`` SDK can send temperature/top_p/top_k: ``"keyword"`` (arguments of
    ``messages.create``, anthropic < 1), ``"extra_body"`` (no such arguments, but the API version it sends still
    has them: anthropic 1.x) or ``"none"`` (its API version has none: anthropic 2.x)."""
    import inspect

    from anthropic.resources.messages import AsyncMessages

    if set(SAMPLING_KEYWORDS) <= set(inspect.signature(AsyncMessages.create).parameters):
        return "keyword"
    try:
        from anthropic._constants import ANTHROPIC_API_VERSION as version
    except ImportError:  # pragma: no cover - a layout we have not seen: do not guess
        return "none"
    return "extra_body" if str(version) < SAMPLING_REMOVED_IN else "none"


def finish_reason(stop_reason: str | None) -> str | None:
    """An Anthropic ``stop_reason`` as one of the finish reasons every backend reports."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, stop_reason)


def to_messages_api(messages: list[dict], prompt_cache: bool = False) -> tuple[str | None, list[dict]]:
    """``(system, messages)`` for the Messages API from chat messages (see the module docstring)."""
    system = [m.get("content") or "" for m in messages if m.get("role") == "system"]
    turns: list[dict] = []
    for m in messages:
        role, content = m.get("role"), m.get("content") or ""
        if role not in ("user", "assistant") or not content.strip():
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        elif turns or role == "user":
            turns.append({"role": role, "content": content})
    if prompt_cache and len(turns) > 1:
        before_prompt = turns[-2]
        before_prompt["content"] = [{"type": "text", "text": before_prompt["content"],
                                     "cache_control": {"type": "ephemeral"}}]
    joined = "\n\n".join(s for s in system if s.strip())
    return (joined or None), turns


def _clean_base(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


class ClaudeBackend(ModelBackend):
    model_type = ModelType.CLAUDE

    def __init__(self, model_name: str, endpoint: str | None = None, *, api_key: str | None = None,
                 base_url: str | None = None, timeout: float = 120.0, max_retries: int = 0,
                 prompt_cache: bool = False, **kwargs):
        base = _clean_base(base_url or endpoint or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL)
        super().__init__(model_name, base, **kwargs)
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            if base == DEFAULT_BASE_URL:
                raise ValueError("Anthropic API key missing: pass api_key=... or set the ANTHROPIC_API_KEY "
                                 "environment variable")
            key = "sk-ant-no-key-required"  # a self-hosted Messages-API server may not check it; the SDK needs one
        try:
            import anthropic
        except ImportError as exc:
            raise ModelUnavailableError(
                "Claude models need the anthropic SDK: pip install 'oblix-nb[claude]'") from exc
        # max_retries=0: a failing endpoint must fail fast so routing can fall back to the next model.
        self._client = anthropic.AsyncAnthropic(api_key=key, base_url=base, timeout=timeout,
                                                max_retries=max_retries)
        self.prompt_cache = bool(prompt_cache)
        self.max_output_tokens: int | None = None
        self._warned: set[str] = set()  # options already reported as not applied
        self.verified = False  # True once the endpoint confirmed the model (not only answered)

    # ------------------------------------------------------------------------------------------ hook
    async def connect(self) -> None:
        """Check endpoint, key and model with free requests only (see the module docstring)."""
        import anthropic

        try:
            info = await self._model_info()
            if info is not None:
                self._limits(info)
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            raise ModelUnavailableError(
                f"Anthropic endpoint {self.endpoint} did not answer ({type(exc).__name__}); is it reachable?") from exc
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as exc:
            raise ModelUnavailableError(
                f"Anthropic endpoint {self.endpoint} rejected the API key (HTTP {exc.status_code}); check "
                f"api_key= or ANTHROPIC_API_KEY") from exc
        except anthropic.NotFoundError as exc:
            raise ModelUnavailableError(
                f"Anthropic endpoint {self.endpoint} does not know model {self.model_name!r} "
                f"({_error_message(exc)})") from exc
        except anthropic.APIStatusError as exc:
            raise ModelUnavailableError(
                f"Anthropic endpoint {self.endpoint} answered HTTP {exc.status_code} while checking model "
                f"{self.model_name!r}: {_error_message(exc)}") from exc
        if self.context_window is None:
            self.context_window = DEFAULT_CONTEXT

    async def _model_info(self):
        """The model's Models-API entry; None when the server has no Models API and only ``count_tokens`` (free)
        could confirm the model, or has neither (then only that it answers, with this key, is known)."""
        import anthropic

        try:
            info = await self._client.models.retrieve(self.model_name)
            self.verified = True
            return info
        except (anthropic.NotFoundError, anthropic.APIStatusError) as exc:
            if getattr(exc, "status_code", None) not in (404, 405):
                raise
        try:  # no such model, or no such route: the listing tells which
            names = []
            async for model in self._client.models.list(limit=1000):
                if self.model_name in (model.id, getattr(model, "display_name", None)):
                    self.verified = True
                    return model
                names.append(model.id)
        except anthropic.APIStatusError as exc:
            if exc.status_code not in (404, 405):
                raise
        else:
            raise ModelUnavailableError(
                f"Anthropic endpoint {self.endpoint} does not list model {self.model_name!r} "
                f"(it lists: {', '.join(sorted(names)) or 'nothing'})")
        try:  # no Models API at all
            await self._client.messages.count_tokens(model=self.model_name,
                                                     messages=[{"role": "user", "content": "ping"}])
            self.verified = True
        except anthropic.APIStatusError as exc:
            if exc.status_code not in (404, 405) or _is_model_not_found(exc):
                raise
        return None

    def _limits(self, info) -> None:
        window = getattr(info, "max_input_tokens", None)
        if self.context_window is None and isinstance(window, int) and window > 0:
            self.context_window = window
        out = getattr(info, "max_tokens", None)
        if isinstance(out, int) and out > 0:
            self.max_output_tokens = out

    def default_max_tokens(self) -> int | None:
        """The Messages API requires ``max_tokens``: 4096, or the model's own limit if that is lower."""
        return min(DEFAULT_REPLY_TOKENS, self.max_output_tokens or DEFAULT_REPLY_TOKENS)

    def describe(self) -> dict:
        return {**super().describe(), "verified": self.verified, "prompt_cache": self.prompt_cache}

    # ------------------------------------------------------------------------------------------ calls
    def _payload(self, messages: list[dict], params: GenerationParams) -> dict:
        """The keyword arguments of ``messages.create`` (all declared by the installed SDK; see the module doc)."""
        system, turns = to_messages_api(messages, self.prompt_cache)
        payload: dict = {"model": self.model_name, "messages": turns,
                         "max_tokens": params.max_tokens or self.default_max_tokens()}
        if system:
            payload["system"] = system
        stop = params.options.get("stop")
        if stop:
            payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        sampling = self._sampling(params)
        if sampling:
            if sdk_sampling() == "keyword":
                payload.update(sampling)
            else:  # "extra_body"; with "none" _sampling() gives nothing
                payload["extra_body"] = sampling
        return payload

    def _sampling(self, params: GenerationParams) -> dict:
        if sdk_sampling() == "none":
            return {}
        out = {}
        if params.temperature is not None:
            out["temperature"] = min(1.0, max(0.0, float(params.temperature)))
        for key in ("top_p", "top_k"):
            if params.options.get(key) is not None:
                out[key] = params.options[key]
        return out

    def options_not_applied(self, params: GenerationParams) -> tuple:
        """The sampling options of ``params`` this backend does not send (in SAMPLING_OPTIONS order)."""
        given = {k for k, v in params.options.items() if v is not None and k != "stop"}
        if params.temperature is not None:
            given.add("temperature")
        sent = set(self._sampling(params))
        missing = tuple(k for k in ("temperature",) + SAMPLING_OPTIONS if k in given and k not in sent)
        new = [k for k in missing if k not in self._warned]
        if new:
            self._warned.update(new)
            why = (f"the installed anthropic SDK sends API version {SAMPLING_REMOVED_IN} or later, which has no "
                   "temperature/top_p/top_k" if sdk_sampling() == "none" else "the Messages API has no such option")
            warnings.warn(f"{self.model_id}: {', '.join(new)} not applied ({why}); replies are generated without "
                          "them (listed in each reply's options_not_applied)", UserWarning, stacklevel=3)
        return missing

    async def _create(self, payload: dict, **kwargs):
        try:
            return await self._client.messages.create(**payload, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes the one type routing handles
            raise self.failure(exc) from exc

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncGenerator[StreamItem, None]:
        not_applied = self.options_not_applied(params)
        stream = await self._create(self._payload(messages, params), stream=True)
        counts = _Counts()
        live: Usage | None = None  # yielded after the first text, kept current (see ModelBackend)
        chunks = 0
        try:
            try:
                async for event in stream:
                    kind = event.type
                    if kind == "content_block_delta":
                        text = getattr(event.delta, "text", None)
                        if text:
                            chunks += 1
                            yield text
                            if live is None:
                                live = counts.usage(chunks, not_applied)
                                yield live
                            else:
                                counts.refresh(live, chunks)
                    elif kind == "message_start":
                        counts.update(event.message.usage)
                    elif kind == "message_delta":
                        counts.update(event.usage)
                        counts.stop_reason = event.delta.stop_reason or counts.stop_reason
            except Exception as exc:  # noqa: BLE001 - in-stream error events, dropped connections
                raise self.failure(exc) from exc
        finally:
            if live is not None:
                counts.refresh(live, chunks)
            await stream.close()
        yield counts.usage(options_not_applied=not_applied)

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        not_applied = self.options_not_applied(params)
        reply = await self._create(self._payload(messages, params))
        counts = _Counts()
        counts.update(reply.usage)
        counts.stop_reason = reply.stop_reason
        text = "".join(getattr(block, "text", "") for block in reply.content if block.type == "text")
        return text, counts.usage(options_not_applied=not_applied)

    async def aclose(self) -> None:
        await self._client.close()

    # -- confidence (oblix_nb.confidence) ---------------------------------------------------------------------
    # The Messages API returns no token log-probabilities: every confidence from a Claude model is NaN.
    logprob_method = None


class _Counts:
    """Usage as it arrives: ``message_start`` has the input counts, ``message_delta`` the cumulative output."""

    def __init__(self):
        self.input = self.output = self.cache_write = self.cache_read = None
        self.stop_reason: str | None = None

    def update(self, usage) -> None:
        if usage is None:
            return
        for attr, field in (("input", "input_tokens"), ("output", "output_tokens"),
                            ("cache_write", "cache_creation_input_tokens"), ("cache_read", "cache_read_input_tokens")):
            value = getattr(usage, field, None)
            if isinstance(value, int):
                setattr(self, attr, value)

    def usage(self, chunks: int | None = None, options_not_applied: tuple = ()) -> Usage:
        """The usage so far: final once ``message_delta`` came; with ``chunks``, a live one for a reply still
        streaming (output counted in text chunks until the server's count arrives, finish "interrupted")."""
        usage = Usage(options_not_applied=options_not_applied)
        if chunks is not None:
            self.refresh(usage, chunks)
            return usage
        if self.input is None and self.output is None:
            usage.input_source = usage.output_source = "none"
            usage.finish_reason = finish_reason(self.stop_reason)
            return usage
        usage.input_tokens, usage.output_tokens = self._total_in(), self.output
        usage.finish_reason = finish_reason(self.stop_reason)
        usage.cache_read_tokens, usage.cache_write_tokens = self.cache_read, self.cache_write
        return usage

    def _total_in(self) -> int | None:
        return None if self.input is None else self.input + (self.cache_write or 0) + (self.cache_read or 0)

    def refresh(self, usage: Usage, chunks: int) -> None:
        """Bring a live Usage up to date: the server's input counts (from ``message_start``), and the output
        as the larger of the server's count so far and the text chunks received."""
        usage.input_tokens = self._total_in()
        usage.input_source = "server" if usage.input_tokens is not None else "none"
        usage.cache_read_tokens, usage.cache_write_tokens = self.cache_read, self.cache_write
        server_out = self.output or 0
        usage.output_tokens = max(server_out, chunks)
        usage.output_source = "server" if server_out >= chunks else "stream_chunks"
        usage.finish_reason = "interrupted"


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return str(exc)[:200]


def _is_model_not_found(exc) -> bool:
    """A 404 in Anthropic's own error format (the model is unknown), not a 404 for a route the server lacks."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("type") == "not_found_error"
