"""Ollama backend over the official ``ollama.AsyncClient`` (a real Ollama, or any server speaking its API)."""
from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast
from urllib.parse import urlsplit

from ..errors import ModelUnavailableError
from .base import GenerationParams, ModelBackend, ModelType, StreamItem, Usage

DEFAULT_ENDPOINT = "http://127.0.0.1:11434"  # what the official client and the `ollama` CLI use
DEFAULT_PORT = 11434
DEFAULT_NUM_CTX = 2048  # Ollama's own default context; we always send num_ctx so the history budget is exact


def parse_ollama_host(host: str | None) -> str:
    """An Ollama endpoint URL from the host forms the official ``ollama`` client accepts (its ``OLLAMA_HOST``).

    Same rules as ``ollama.Client(host=...)``: no scheme means ``http``; no port means 11434 without a scheme,
    80/443 with ``http://``/``https://``; ``:PORT`` alone means 127.0.0.1; IPv6 in brackets; a path is kept,
    trailing slashes dropped. One addition: the unspecified bind addresses ``0.0.0.0`` and ``::`` (what
    ``OLLAMA_HOST`` is often set to so that the *server* listens on every interface) are connected to as
    127.0.0.1 / ``[::1]``, the same machine over loopback. Examples::

        None, ""                 -> http://127.0.0.1:11434
        "0.0.0.0"                -> http://127.0.0.1:11434
        "example.com:8080"       -> http://example.com:8080
        "https://example.com"    -> https://example.com:443
        "[::1]:9000/ollama/"     -> http://[::1]:9000/ollama

    Raises ValueError for a scheme other than http/https, a bad port, or a string with whitespace inside.
    """
    if host is not None and not isinstance(host, str):
        raise TypeError(f"Ollama host must be a string, not {type(host).__name__}")
    text = (host or "").strip()
    if any(ch.isspace() for ch in text):
        raise ValueError(f"Ollama host {host!r} contains whitespace")
    scheme, sep, hostport = text.partition("://")
    port = DEFAULT_PORT
    if not sep:
        scheme, hostport = "http", text
    elif scheme.lower() == "http":
        port = 80
    elif scheme.lower() == "https":
        port = 443
    else:
        raise ValueError(f"Ollama host {host!r}: scheme must be http or https, not {scheme!r}")
    scheme = scheme.lower()
    split = urlsplit(f"{scheme}://{hostport}")
    try:
        port = split.port or port
    except ValueError as exc:
        raise ValueError(f"Ollama host {host!r}: {exc}") from None
    name = split.hostname or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        name = "127.0.0.1" if ip.version == 4 else "::1"
        ip = ipaddress.ip_address(name)
    if ip is not None and ip.version == 6:
        name = f"[{name}]"
    path = split.path.strip("/")
    return f"{scheme}://{name}:{port}" + (f"/{path}" if path else "")


def default_endpoint() -> str:
    """``$OLLAMA_HOST`` parsed as the official client does, else http://127.0.0.1:11434."""
    return parse_ollama_host(os.environ.get("OLLAMA_HOST"))


class OllamaBackend(ModelBackend):
    model_type = ModelType.OLLAMA

    def __init__(self, model_name: str, endpoint: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, keep_alive: str | None = None, **kwargs):
        # An explicit endpoint wins; else $OLLAMA_HOST, as the official client and CLI do. Both accept the
        # client's host forms ("host", "host:port", ":port", "http(s)://host[:port][/path]").
        super().__init__(model_name, parse_ollama_host(endpoint) if endpoint else default_endpoint(), **kwargs)
        import ollama

        self._timeout = timeout
        self._keep_alive = keep_alive
        # An api_key (for an Ollama behind an authenticating proxy) travels only in the request header.
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = ollama.AsyncClient(host=self.endpoint, timeout=timeout, headers=headers)

    async def connect(self) -> None:
        import ollama

        try:
            listing = await self._client.list()
        except (ConnectionError, ollama.ResponseError, OSError) as exc:
            raise ModelUnavailableError(
                f"Ollama endpoint {self.endpoint} did not answer ({type(exc).__name__}: {exc}); "
                f"is the server running?") from exc
        names = {m.model for m in listing.models if m.model}
        wanted = {self.model_name, f"{self.model_name}:latest"} if ":" not in self.model_name else {self.model_name}
        match = next((n for n in names if n in wanted), None)
        if match is None:
            raise ModelUnavailableError(
                f"Ollama endpoint {self.endpoint} does not have model {self.model_name!r} "
                f"(it lists: {', '.join(sorted(names)) or 'nothing'}); run `ollama pull {self.model_name}` "
                f"yourself — oblix_nb never downloads models")
        if self.context_window is None:
            self.context_window = await self._discover_num_ctx()

    async def _discover_num_ctx(self) -> int:
        """num_ctx from the model's Modelfile parameters if set, else Ollama's default, capped by the trained length."""
        try:
            info = await self._client.show(self.model_name)
        except Exception:  # noqa: BLE001 - /api/show is optional for the budget
            return DEFAULT_NUM_CTX
        num_ctx = DEFAULT_NUM_CTX
        for line in (info.parameters or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "num_ctx" and parts[1].isdigit():
                num_ctx = int(parts[1])
        trained = next((int(v) for k, v in (info.modelinfo or {}).items()
                        if k.endswith(".context_length") and isinstance(v, int)), None)
        return min(num_ctx, trained) if trained else num_ctx

    def _options(self, params: GenerationParams) -> dict:
        options: dict[str, Any] = {"num_ctx": self.context_window or DEFAULT_NUM_CTX}
        if params.max_tokens is not None:
            options["num_predict"] = params.max_tokens
        if params.temperature is not None:
            options["temperature"] = params.temperature
        options.update(params.options)  # every SAMPLING_OPTIONS key is an Ollama option of the same name
        return options

    schema_enforcement = "format"

    def structured_output(self, schema: dict) -> dict:
        """Ollama's ``format``: a JSON Schema that the server turns into a decoding grammar."""
        return {"format": schema}

    def _extra(self, params: GenerationParams) -> dict:
        kwargs = {"keep_alive": self._keep_alive} if self._keep_alive else {}
        if params.schema is not None:
            kwargs.update(self.structured_output(params.schema))
        return kwargs

    @staticmethod
    def _usage(final) -> Usage:
        return Usage(input_tokens=final.prompt_eval_count, output_tokens=final.eval_count,
                     input_source="server", output_source="server", finish_reason=final.done_reason)

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncGenerator[StreamItem, None]:
        """Deltas as they arrive. The request is sent on the first iteration; an error the server writes into
        the stream (``{"error": ...}``, HTTP 200: the SDK's ``ResponseError`` with status -1) is a retryable
        BackendError like a 5xx, so routing falls back when it comes before the first token. Closing the stream
        closes the connection, which stops generation on the server."""
        kwargs = self._extra(params)
        final = None
        live: Usage | None = None  # yielded after the first text and kept current (see ModelBackend)
        chunks = 0
        response = None
        try:
            try:
                response = await self._client.chat(model=self.model_name, messages=messages, stream=True,
                                                   options=self._options(params), **kwargs)
                async for part in response:
                    text = part.message.content if part.message else None
                    if text:
                        chunks += 1
                        yield text
                        if live is None:
                            live = Usage(self._estimate_input(messages), chunks, "estimate", "stream_chunks",
                                         "interrupted")
                            yield live
                        else:
                            live.output_tokens = chunks
                    if part.done:
                        final = part
            except Exception as exc:  # noqa: BLE001 - HTTP errors, in-stream errors, dropped connections
                raise self.failure(exc) from exc
        finally:
            if live is not None:
                live.output_tokens = chunks
            if response is not None:
                # ollama's stubs say AsyncIterator; the stream is an async generator
                await response.aclose()  # type: ignore[attr-defined]
        yield self._usage(final) if final is not None else Usage(input_source="none", output_source="none")

    def _estimate_input(self, messages: list[dict]) -> int:
        """The prompt's tokens until the server's count arrives (with the final chunk)."""
        return sum(self.estimate_tokens(m.get("content") or "") + self.message_overhead() for m in messages)

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        kwargs = self._extra(params)
        try:
            reply = await self._client.chat(model=self.model_name, messages=messages, stream=False,
                                            options=self._options(params), **kwargs)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes the one type routing handles
            raise self.failure(exc) from exc
        return reply.message.content or "", self._usage(reply)

    async def aclose(self) -> None:
        await self._client.close()

    # -- confidence (oblix_nb.confidence) ---------------------------------------------------------------------
    # ``logprobs`` / ``top_logprobs`` on /api/chat (Ollama 0.12.11 and later). Older servers (and the ones that
    # ignore the option) send none: LogprobsUnavailable, and confidence is NaN.
    logprob_method = "top_logprobs"

    async def complete_with_logprobs(self, messages: list[dict], params: GenerationParams,
                                     top_logprobs: int = 20) -> tuple[str, Usage, list]:
        from .base import LogprobsUnavailable, TokenLogprob

        try:
            reply = await self._client.chat(model=self.model_name, messages=messages, stream=False,
                                            options=self._options(params), logprobs=True,
                                            top_logprobs=max(0, min(20, top_logprobs)), **self._extra(params))
        except TypeError as exc:  # an ollama client too old to know the option
            raise LogprobsUnavailable(f"{self.model_id}: the ollama client has no logprobs option") from exc
        content = getattr(reply, "logprobs", None)
        if not content:
            raise LogprobsUnavailable(f"{self.model_id}: the Ollama server sent no logprobs (it needs 0.12.11+)",
                                      reply=(reply.message.content or "", self._usage(reply)))
        tokens = []
        for t in content:
            get: Callable[..., Any] = t.get if isinstance(t, dict) else lambda k, d=None, t=t: getattr(t, k, d)
            alts = get("top_logprobs") or []
            tokens.append(TokenLogprob(get("token") or "", float(get("logprob")), [
                ((a.get("token") if isinstance(a, dict) else a.token) or "",
                 float(cast(Any, a).get("logprob") if isinstance(a, dict) else a.logprob)) for a in alts]))
        return reply.message.content or "", self._usage(reply), tokens
