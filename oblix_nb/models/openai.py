"""OpenAI backend over the official ``openai.AsyncOpenAI``: api.openai.com or any OpenAI-compatible ``base_url``."""
from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ModelUnavailableError
from .base import GenerationParams, ModelBackend, ModelType, StreamItem, Usage

if TYPE_CHECKING:
    import httpx

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONTEXT = 4096
# Context windows of well-known hosted models (prefix match); anything else: context_window= or the default.
KNOWN_CONTEXT = {"gpt-4.1": 1_047_576, "gpt-4o": 128_000, "gpt-4-turbo": 128_000, "o1": 200_000, "o3": 200_000,
                 "o4": 200_000, "gpt-5": 400_000, "gpt-3.5-turbo": 16_385, "gpt-4": 8_192}
# OpenAI's chat completions accept these sampling options directly.
OPENAI_OPTIONS = ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
# The server's tokenizer (exact counts when a server streams no usage): a failed call is not the end of it.
TOKENIZE_TIMEOUT = 5.0        # s per tokenizer request
TOKENIZE_BACKOFF_MAX = 60.0   # s: longest pause after timeouts / connection errors / 5xx in a row
TOKENIZE_RECHECK = 600.0      # s: a server that answered "no such endpoint" (404/405/501) is asked again after this


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_usage(usage, finish) -> Usage:
    """The server's usage; ``prompt_tokens`` includes cached tokens, which OpenAI reports (and bills) apart."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(usage.prompt_tokens, usage.completion_tokens, "server", "server", finish,
                 cache_read_tokens=cached if isinstance(cached, int) else None)


def _strict_compatible(schema: Any) -> bool:
    """True if OpenAI's strict mode accepts the schema: every object lists all its properties as required and
    forbids additional ones (the concise specs are written that way; most hand-written schemas are not)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties") or {}
            if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != set(props):
                return False
        return all(_strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const", "default"))
    if isinstance(schema, list):
        return all(_strict_compatible(v) for v in schema)
    return True


class OpenAIBackend(ModelBackend):
    model_type = ModelType.OPENAI

    def __init__(self, model_name: str, endpoint: str | None = None, *, api_key: str | None = None,
                 base_url: str | None = None, timeout: float = 120.0, max_retries: int = 0, **kwargs):
        base = (base_url or endpoint or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        super().__init__(model_name, base, **kwargs)
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base == DEFAULT_BASE_URL:
                raise ValueError("OpenAI API key missing: pass api_key=... or set the OPENAI_API_KEY "
                                 "environment variable")
            key = "sk-no-key-required"  # local OpenAI-compatible servers ignore it; the client insists on one
        import openai

        # max_retries=0: a failing endpoint must fail fast so routing can fall back to the next model.
        self._client = openai.AsyncOpenAI(api_key=key, base_url=base, timeout=timeout, max_retries=max_retries)
        self._http: httpx.AsyncClient | None = None  # httpx.AsyncClient for the tokenizer, made on first use
        self._tokenize_supported: bool | None = None if _is_loopback(base) else False  # False: never ask
        self._tokenize_failures = 0      # transient tokenizer failures in a row
        self._tokenize_retry_at = 0.0    # time.monotonic() before which the tokenizer is not asked
        self._schema_style = "json_schema"  # or "json_object" once the server rejected json_schema

    async def connect(self) -> None:
        import openai

        try:
            page = await self._client.models.list()
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ModelUnavailableError(
                f"OpenAI-compatible endpoint {self.endpoint} did not answer ({type(exc).__name__}); "
                f"is the server running?") from exc
        except openai.APIStatusError as exc:
            raise ModelUnavailableError(
                f"OpenAI-compatible endpoint {self.endpoint} refused to list models "
                f"(HTTP {exc.status_code}); check the API key and base_url") from exc
        models = {m.id: m for m in page.data}
        if self.model_name not in models:
            raise ModelUnavailableError(
                f"endpoint {self.endpoint} does not list model {self.model_name!r} "
                f"(it lists: {', '.join(sorted(models)) or 'nothing'})")
        if self.context_window is None:
            self.context_window = self._context_from_listing(models[self.model_name])

    def _context_from_listing(self, entry) -> int:
        extra = getattr(entry, "model_extra", None) or {}
        meta = extra.get("meta") or {}
        for key in ("context_length", "context_window", "n_ctx"):
            value = extra.get(key) or meta.get(key)
            if isinstance(value, int) and value > 0:
                return value
        for prefix, size in sorted(KNOWN_CONTEXT.items(), key=lambda kv: -len(kv[0])):
            if self.model_name.startswith(prefix):
                return size
        return DEFAULT_CONTEXT

    def _payload(self, messages: list[dict], params: GenerationParams) -> dict:
        payload: dict[str, Any] = {"model": self.model_name, "messages": messages}
        if params.max_tokens is not None:
            payload["max_tokens"] = params.max_tokens
        if params.temperature is not None:
            payload["temperature"] = params.temperature
        for key, value in params.options.items():
            if key in OPENAI_OPTIONS:
                payload[key] = value
        if params.schema is not None:
            payload.update(self.structured_output(params.schema))
        return payload

    schema_enforcement = "json_schema"

    def structured_output(self, schema: dict) -> dict:
        """OpenAI's ``response_format`` ``json_schema`` (strict when the schema allows it). Servers that reject
        that form -- llama-cpp-python's ``llama_cpp.server`` takes only ``{"type": "json_object", "schema": ...}``,
        which it compiles to a grammar -- get the latter from then on (see ``_create``)."""
        if self._schema_style == "json_object":
            return {"response_format": {"type": "json_object", "schema": schema}}
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "reply", "schema": schema, "strict": _strict_compatible(schema)}}}

    async def _create(self, payload: dict, **kwargs):
        """``chat.completions.create``; a server that rejects the ``json_schema`` response format (an HTTP error
        naming response_format) is asked again with ``json_object`` + schema, and remembered."""
        import openai

        try:
            return await self._client.chat.completions.create(**payload, **kwargs)
        except openai.APIStatusError as exc:
            # llama_cpp.server answers 500 (its request validation error), others 400/422.
            fmt = payload.get("response_format") or {}
            if fmt.get("type") != "json_schema" or exc.status_code not in (400, 422, 500) or \
                    "response_format" not in str(exc) + str(getattr(exc, "body", "")):
                raise
            self._schema_style = "json_object"
            retry = dict(payload, response_format={"type": "json_object", "schema": fmt["json_schema"]["schema"]})
            return await self._client.chat.completions.create(**retry, **kwargs)

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncGenerator[StreamItem, None]:
        """Deltas as they arrive; SDK failures come out as BackendError. Closing the stream closes the HTTP
        connection, which is what stops generation on the server (llama_cpp.server checks between tokens)."""
        chunks = 0
        finish = None
        server_usage = None
        pieces: list[str] = []
        live: Usage | None = None  # yielded after the first text and kept current (see ModelBackend)
        stream = None
        try:
            try:
                stream = await self._create(self._payload(messages, params), stream=True,
                                            stream_options={"include_usage": True})
                async for chunk in stream:
                    if chunk.usage is not None:
                        server_usage = chunk.usage
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            chunks += 1
                            pieces.append(text)
                            yield text
                            if live is None:
                                live = Usage(self._estimate_input(messages), chunks, "estimate", "stream_chunks",
                                             "interrupted")
                                yield live
                            else:
                                live.output_tokens = chunks
                        if choice.finish_reason:
                            finish = choice.finish_reason
            except Exception as exc:  # noqa: BLE001 - every SDK failure becomes the one type routing handles
                raise self.failure(exc) from exc
        finally:
            if live is not None:
                live.output_tokens = chunks
            if stream is not None:
                await stream.close()
        if server_usage is not None:
            yield _server_usage(server_usage, finish)
        else:  # some servers (llama_cpp.server 0.3.x) ignore include_usage: count it ourselves and say how
            yield await self._counted_usage(messages, "".join(pieces), finish, chunks)

    def _estimate_input(self, messages: list[dict]) -> int:
        """The prompt's tokens until the server's (or its tokenizer's) count is known."""
        return sum(self.estimate_tokens(m.get("content") or "") + self.message_overhead() for m in messages)

    async def _counted_usage(self, messages: list[dict], text: str, finish, chunks: int | None) -> Usage:
        contents = [m.get("content") or "" for m in messages]
        # Two requests whatever the history's length: the messages' text joined (each "\n" stands for part of
        # the template's per-message markup, counted in message_overhead) and the reply.
        counts = await self._tokenizer_counts(["\n".join(contents), text])
        if counts is not None:
            overhead = self.message_overhead() * len(contents)
            return Usage(counts[0] + overhead, counts[1], "tokenizer", "tokenizer", finish)
        input_tokens = sum(self.estimate_tokens(c) + self.message_overhead() for c in contents)
        if chunks is not None:
            return Usage(input_tokens, chunks, "estimate", "stream_chunks", finish)
        return Usage(input_tokens, self.estimate_tokens(text), "estimate", "estimate", finish)

    async def _tokenizer_counts(self, texts: list[str]) -> list[int] | None:
        """Exact counts from the server's tokenizer (llama.cpp's ``/extras/tokenize/count``), if it has one.

        Only asked on loopback servers. A failure makes this call's counts estimates, never later ones for good:
        after a timeout, a connection error or a 5xx/429 the next reply asks again (after 2+ such failures in a
        row: a pause of 1, 2, 4... s, at most TOKENIZE_BACKOFF_MAX); a server without the endpoint (404, 405,
        501, or an answer without a count) is asked again after TOKENIZE_RECHECK seconds.
        """
        if self._tokenize_supported is False or time.monotonic() < self._tokenize_retry_at:
            return None
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=TOKENIZE_TIMEOUT)
        assert self.endpoint is not None  # __init__ always sets one
        root = self.endpoint[:-3] if self.endpoint.endswith("/v1") else self.endpoint
        try:
            counts = []
            for text in texts:
                r = await self._http.post(f"{root}/extras/tokenize/count", json={"input": text})
                r.raise_for_status()
                counts.append(int(r.json()["count"]))
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            self._tokenizer_failed(transient=status >= 500 and status != 501 or status in (408, 429))
            return None
        except httpx.HTTPError:  # timeouts, refused/reset connections: the server is busy or restarting
            self._tokenizer_failed(transient=True)
            return None
        except (KeyError, ValueError, TypeError):  # not llama.cpp's answer
            self._tokenizer_failed(transient=False)
            return None
        self._tokenize_supported = True
        self._tokenize_failures = 0
        self._tokenize_retry_at = 0.0
        return counts

    def _tokenizer_failed(self, transient: bool) -> None:
        if transient:
            self._tokenize_failures += 1
            pause = 0.0 if self._tokenize_failures == 1 else min(TOKENIZE_BACKOFF_MAX,
                                                                  2.0 ** (self._tokenize_failures - 2))
        else:
            pause = TOKENIZE_RECHECK
        self._tokenize_retry_at = time.monotonic() + pause

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        try:
            reply = await self._create(self._payload(messages, params))
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes the one type routing handles
            raise self.failure(exc) from exc
        choice = reply.choices[0]
        text = choice.message.content or ""
        if reply.usage is not None:
            return text, _server_usage(reply.usage, choice.finish_reason)
        return text, await self._counted_usage(messages, text, choice.finish_reason, None)

    async def aclose(self) -> None:
        await self._client.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- confidence (oblix_nb.confidence) ---------------------------------------------------------------------
    # Chat completions' ``logprobs`` + ``top_logprobs`` (OpenAI: up to 20; llama_cpp.server: with its default
    # ``--logits_all True``). A server that refuses them gives LogprobsUnavailable (confidence NaN).
    logprob_method = "top_logprobs"

    async def complete_with_logprobs(self, messages: list[dict], params: GenerationParams,
                                     top_logprobs: int = 20) -> tuple[str, Usage, list]:
        import openai

        from .base import LogprobsUnavailable, TokenLogprob

        payload = dict(self._payload(messages, params), logprobs=True, top_logprobs=max(0, min(20, top_logprobs)))
        try:
            reply = await self._create(payload)
        except openai.BadRequestError as exc:
            raise LogprobsUnavailable(f"{self.model_id}: the server refused logprobs ({exc.status_code})") from exc
        choice = reply.choices[0]
        text = choice.message.content or ""
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        usage = _server_usage(reply.usage, choice.finish_reason) if reply.usage is not None else \
            await self._counted_usage(messages, text, choice.finish_reason, None)
        if not content:
            raise LogprobsUnavailable(f"{self.model_id}: the server sent no logprobs", reply=(text, usage))
        tokens = [TokenLogprob(t.token, float(t.logprob),
                               [(a.token, float(a.logprob)) for a in (t.top_logprobs or [])]) for t in content]
        return text, usage, tokens
