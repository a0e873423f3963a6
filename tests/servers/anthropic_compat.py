"""A loopback server speaking Anthropic's Messages API over one GGUF model loaded with llama-cpp-python.

Run it (test infrastructure, not part of the package)::

    ANTHROPIC_COMPAT_API_KEY=sk-ant-test python tests/servers/anthropic_compat.py --model model.gguf \\
        --names claude-haiku-4-5,claude-sonnet-4-5 --port 11600

then ``anthropic.AsyncAnthropic(base_url="http://127.0.0.1:11600", api_key="sk-ant-test")``. Written from
Anthropic's published API reference (Messages, streaming, count_tokens, Models, errors, prompt caching) and checked
against the official SDK's own types (``tests/test_anthropic_server.py`` parses every response with them).

Endpoints: ``POST /v1/messages`` (``stream`` true: SSE, false: one JSON message), ``POST /v1/messages/count_tokens``,
``GET /v1/models`` (paginated: ``limit``, ``after_id``, ``before_id``), ``GET /v1/models/{id}``. Test aids that are
not part of the API: ``GET /_health``; ``POST /_control/fail`` with ``{"status": 529, "type": "overloaded_error",
"message": "...", "count": 1, "stage": "http" | "stream" | "after_text", "after": 2}`` makes the next ``count``
message requests fail -- with that HTTP status before anything is sent (``http``), or as an SSE ``error`` event
right after ``message_start`` (``stream``) or after ``after`` text deltas (``after_text``); ``DELETE`` clears it.
``GET|DELETE /_debug/requests``: the requests received (path, body, which auth header was used, the
``anthropic-version`` header; never the key).

Faithfulness notes:

* Auth: ``x-api-key`` or ``Authorization: Bearer`` must equal ``ANTHROPIC_COMPAT_API_KEY`` (401
  ``authentication_error`` otherwise); ``anthropic-version`` is required (400) like the real API.
* The SSE sequence is Anthropic's: ``message_start`` (usage: input and cache tokens, ``output_tokens`` 1) →
  ``content_block_start`` → ``ping`` → ``content_block_delta`` (``text_delta``)… → ``content_block_stop`` →
  ``message_delta`` (``stop_reason``, ``stop_sequence``, cumulative usage) → ``message_stop``.
* ``stop_reason``: ``end_turn`` (end-of-generation token), ``max_tokens``, ``stop_sequence`` (the matched one in
  ``stop_sequence``; text is cut before it, as the API does).
* Usage counts are exact: the prompt rendered with the GGUF's chat template (system first) tokenized, and the
  tokens sampled. ``input_tokens`` excludes cached tokens, as in the API.
* Prompt caching: a ``cache_control`` on a ``system`` or message content block marks a cacheable prefix (up to
  and including that block) of at least ``--cache-min-tokens`` tokens. The longest prefix of it cached by an
  earlier request (5 minutes, refreshed on use) is read (``cache_read_input_tokens``), the rest written
  (``cache_creation_input_tokens``); both are excluded from ``input_tokens``.
* Validation answers 400 ``invalid_request_error`` for: missing/invalid ``model``, ``max_tokens``, ``messages``;
  a ``system`` role inside ``messages``; roles other than user/assistant; non-text content blocks;
  ``temperature`` outside [0, 1]; ``temperature``/``top_p``/``top_k`` at all under ``anthropic-version``
  2026-10-21 or later (that API version removed them; 2023-06-01 has them); ``tools``/``thinking`` (not
  supported by this model). Unknown model: 404
  ``not_found_error``. A trailing assistant message is kept as history (no true prefill).
* Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with a ``request-id`` header.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ollama_compat import ModelHost, _Job, _Request, _resolve_model, is_loopback_host  # noqa: E402

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}
CACHE_TTL_S = 300.0
CREATED_AT = "2025-01-01T00:00:00Z"


class AnthropicError(Exception):
    def __init__(self, status: int, message: str, error_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type or ERROR_TYPES.get(status, "api_error")


def _msg_id() -> str:
    return "msg_" + secrets.token_hex(12)


def _req_id() -> str:
    return "req_" + secrets.token_hex(12)


# ----------------------------------------------------------------------------------------------------- parsing

def _text_blocks(content: Any, where: str) -> list[dict]:
    """Content (a string or a list of text blocks) as a list of ``{"text", "cache"}``."""
    if isinstance(content, str):
        return [{"text": content, "cache": False}]
    if not isinstance(content, list):
        raise AnthropicError(400, f"{where}: Input should be a valid string or list of content blocks")
    out = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise AnthropicError(400, f"{where}.{i}: content blocks of type {kind!r} are not supported by this model")
        if not isinstance(block.get("text"), str):
            raise AnthropicError(400, f"{where}.{i}.text: Field required")
        out.append({"text": block["text"], "cache": isinstance(block.get("cache_control"), dict)})
    return out


SAMPLING_REMOVED_IN = "2026-10-21"  # the anthropic-version without temperature/top_p/top_k


class MessagesRequest:
    """A validated /v1/messages (or count_tokens) body."""

    def __init__(self, body: dict, models: list[str], *, count_only: bool = False,
                 api_version: str | None = None):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise AnthropicError(400, "model: Field required")
        if model not in models:
            raise AnthropicError(404, f"model: {model}")
        self.model = model
        max_tokens = body.get("max_tokens")
        if not count_only:
            if max_tokens is None:
                raise AnthropicError(400, "max_tokens: Field required")
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise AnthropicError(400, "max_tokens: Input should be a valid integer greater than or equal to 1")
        self.max_tokens = max_tokens
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise AnthropicError(400, "stream: Input should be a valid boolean")
        self.stream = stream
        for unsupported in ("tools", "thinking"):
            if body.get(unsupported):
                raise AnthropicError(400, f"{unsupported}: not supported by model {model} on this server")
        self.system = [] if body.get("system") is None else _text_blocks(body["system"], "system")
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise AnthropicError(400, "messages: at least one message is required")
        self.messages: list[dict] = []  # {"role", "blocks"}
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise AnthropicError(400, f"messages.{i}: Input should be a valid dictionary")
            role = m.get("role")
            if role == "system":
                raise AnthropicError(400, f'messages.{i}.role: Unexpected role "system". The Messages API accepts '
                                          f'a top-level `system` parameter, not "system" as an input message role.')
            if role not in ("user", "assistant"):
                raise AnthropicError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            self.messages.append({"role": role, "blocks": _text_blocks(m.get("content"), f"messages.{i}.content")})
        self.options: dict[str, Any] = {}
        if api_version and api_version >= SAMPLING_REMOVED_IN:
            for key in ("temperature", "top_p", "top_k"):
                if key in body:
                    raise AnthropicError(400, f"{key}: Extra inputs are not permitted (removed in anthropic-version "
                                              f"{SAMPLING_REMOVED_IN})")
        temperature = body.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                    not 0 <= temperature <= 1:
                raise AnthropicError(400, "temperature: Input should be less than or equal to 1")
            self.options["temperature"] = float(temperature)
        for key in ("top_p", "top_k"):
            value = body.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise AnthropicError(400, f"{key}: Input should be a valid number")
                self.options[key] = value
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise AnthropicError(400, "stop_sequences: Input should be a valid list of strings")
        self.stop_sequences = [s for s in stops if s]

    def chat(self) -> list[dict]:
        """The conversation as chat messages for the model's template (``system`` first)."""
        messages = []
        if self.system:
            messages.append({"role": "system", "content": "\n".join(b["text"] for b in self.system)})
        for m in self.messages:
            messages.append({"role": m["role"], "content": "".join(b["text"] for b in m["blocks"])})
        return messages

    def cache_prefix(self) -> list[dict] | None:
        """The cacheable prefix: the chat messages up to the last content block carrying cache_control."""
        last = None
        for i, block in enumerate(self.system):
            if block["cache"]:
                last = ("system", i)
        for j, m in enumerate(self.messages):
            for i, block in enumerate(m["blocks"]):
                if block["cache"]:
                    last = (j, i)
        if last is None:
            return None
        prefix: list[dict] = []
        if last[0] == "system":
            prefix.append({"role": "system", "content": "\n".join(b["text"] for b in self.system[:last[1] + 1])})
        else:
            if self.system:
                prefix.append({"role": "system", "content": "\n".join(b["text"] for b in self.system)})
            j, i = last
            for m in self.messages[:j]:
                prefix.append({"role": m["role"], "content": "".join(b["text"] for b in m["blocks"])})
            prefix.append({"role": self.messages[j]["role"],
                           "content": "".join(b["text"] for b in self.messages[j]["blocks"][:i + 1])})
        return prefix


class StopScanner:
    """Cuts streamed text at the first stop sequence; holds back text that may be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        buf = self.held + text
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            pos, self.matched = min(hits)
            self.held = ""
            return buf[:pos]
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep] if keep else buf

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


# ----------------------------------------------------------------------------------------------------- the app

class Server:
    def __init__(self, host: ModelHost, models: list[str], api_key: str, *, cache_min_tokens: int = 1024):
        self.host = host
        self.models = models
        self.api_key = api_key
        self.cache_min_tokens = cache_min_tokens
        self.cache: dict[str, tuple[float, str, list[dict]]] = {}  # key -> (expiry, model, prefix messages)
        self.failures: dict[str, Any] = {}
        self.requests: collections.deque = collections.deque(maxlen=200)
        self.lock = threading.Lock()
        from llama_cpp import llama_chat_format

        f = host.formatter
        self.prefix_formatter = llama_chat_format.Jinja2ChatFormatter(
            template=host.template, eos_token=f.eos_token, bos_token=f.bos_token, add_generation_prompt=False)

    # ------------------------------------------------------------------------------------------- helpers
    def tokens(self, messages: list[dict], generation_prompt: bool = True) -> int:
        """Tokens of ``messages`` rendered with the model's chat template (as a prompt, or as a cached prefix)."""
        formatter = self.host.formatter if generation_prompt else self.prefix_formatter
        return len(self.host._tokenize(formatter(messages=messages).prompt))

    def cache_usage(self, req: MessagesRequest) -> tuple[int, int]:
        """(cache_creation_input_tokens, cache_read_input_tokens) for this request; updates the cache.

        As in the API, the longest live cached prefix of the marked prefix is read (and its TTL refreshed)
        and the rest of the marked prefix is written."""
        prefix = req.cache_prefix()
        if prefix is None:
            return 0, 0
        n = self.tokens(prefix, generation_prompt=False)
        if n < self.cache_min_tokens:
            return 0, 0
        now = time.monotonic()
        with self.lock:
            live = [(key, entry) for key, entry in self.cache.items()
                    if entry[0] > now and entry[1] == req.model and prefix[:len(entry[2])] == entry[2]]
            best_key, best = max(live, key=lambda kv: len(kv[1][2]), default=(None, None))
            if best_key is not None:
                self.cache[best_key] = (now + CACHE_TTL_S, *best[1:])
            self.cache[req.model + "\x00" + json.dumps(prefix)] = (now + CACHE_TTL_S, req.model, prefix)
        read = self.tokens(best[2], generation_prompt=False) if best is not None else 0
        read = min(read, n)
        return n - read, read

    def take_failure(self) -> dict | None:
        with self.lock:
            f = self.failures
            if not f or f.get("count", 0) <= 0:
                return None
            f["count"] -= 1
            return dict(f)

    def check_auth(self, request) -> str:
        key = request.headers.get("x-api-key")
        how = "x-api-key"
        if key is None:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key, how = auth[7:].strip(), "bearer"
        if not key:
            raise AnthropicError(401, "x-api-key header is required")
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            raise AnthropicError(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise AnthropicError(400, "anthropic-version: header is required")
        return how

    def model_info(self, name: str) -> dict:
        return {"type": "model", "id": name, "display_name": name.replace("-", " ").title(),
                "created_at": CREATED_AT, "max_input_tokens": self.host.n_ctx, "max_tokens": self.host.n_ctx}


def create_app(server: Server):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error(exc: AnthropicError) -> JSONResponse:
        rid = _req_id()
        return JSONResponse({"type": "error", "error": {"type": exc.type, "message": exc.message},
                             "request_id": rid}, status_code=exc.status, headers={"request-id": rid})

    async def prologue(request: Request, with_body: bool = True) -> dict | None:
        entry: dict[str, Any] = {"method": request.method, "path": request.url.path,
                                 "anthropic_version": request.headers.get("anthropic-version"), "auth": None}
        server.requests.append(entry)
        request.state.debug_entry = entry
        entry["auth"] = server.check_auth(request)
        if not with_body:
            return None
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            raise AnthropicError(400, "invalid JSON in request body") from None
        entry["body"] = body
        if not isinstance(body, dict):
            raise AnthropicError(400, "request body must be a JSON object")
        return body

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "models": server.models})

    async def list_models(request: Request) -> Response:
        try:
            await prologue(request, with_body=False)
            q = request.query_params
            limit = int(q.get("limit", 20))
            if not 1 <= limit <= 1000:
                raise AnthropicError(400, "limit: Input should be between 1 and 1000")
        except ValueError:
            return error(AnthropicError(400, "limit: Input should be a valid integer"))
        except AnthropicError as exc:
            return error(exc)
        names = list(server.models)
        if q.get("after_id") in names:
            names = names[names.index(q["after_id"]) + 1:]
        elif q.get("before_id") in names:
            names = names[:names.index(q["before_id"])][-limit:]
        page = names[:limit]
        return JSONResponse({"data": [server.model_info(n) for n in page], "has_more": len(names) > len(page),
                             "first_id": page[0] if page else None, "last_id": page[-1] if page else None})

    async def get_model(request: Request) -> Response:
        try:
            await prologue(request, with_body=False)
            name = request.path_params["model_id"]
            if name not in server.models:
                raise AnthropicError(404, f"model: {name}")
        except AnthropicError as exc:
            return error(exc)
        return JSONResponse(server.model_info(name))

    async def count_tokens(request: Request) -> Response:
        try:
            req = MessagesRequest(await prologue(request), server.models, count_only=True)
        except AnthropicError as exc:
            return error(exc)
        return JSONResponse({"input_tokens": await asyncio.to_thread(server.tokens, req.chat())})

    def usage_dict(input_tokens: int, output_tokens: int, cache: tuple[int, int]) -> dict:
        return {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "cache_creation_input_tokens": cache[0], "cache_read_input_tokens": cache[1],
                "service_tier": "standard"}

    async def messages(request: Request) -> Response:
        try:
            req = MessagesRequest(await prologue(request), server.models,
                                  api_version=request.headers.get("anthropic-version"))
        except AnthropicError as exc:
            return error(exc)
        record = request.state.debug_entry  # its debug entry: a stream also records how many text deltas it sent
        record["text_deltas"] = 0
        failure = server.take_failure()
        if failure and failure.get("stage", "http") == "http":
            return error(AnthropicError(failure["status"], failure.get("message") or "Overloaded", failure.get("type")))
        chat = req.chat()
        cache = await asyncio.to_thread(server.cache_usage, req)
        # The model host speaks Ollama's request shape: a chat with options (num_predict = max_tokens).
        options = {"num_predict": req.max_tokens, **req.options}
        job_req = _Request("chat", {"model": req.model, "messages": chat, "options": options, "stream": True})
        job = _Job(asyncio.get_running_loop(), job_req, time.perf_counter_ns())
        threading.Thread(target=server.host.run, args=(job,), name="anthropic-compat-generate", daemon=True).start()
        first = await job.queue.get()
        if first[0] == "error":
            return error(AnthropicError(first[1], first[2]))
        message_id = _msg_id()
        scanner = StopScanner(req.stop_sequences)

        async def events():
            """Yields ("text", str) ... then ("end", stop_reason, stop_sequence, input_tokens, output_tokens)."""
            sent = 0
            try:
                while True:
                    event = await job.queue.get()
                    if event[0] == "text":
                        text = scanner.feed(event[1])
                        if text:
                            sent += 1
                            yield ("text", text)
                        if scanner.matched is not None:
                            job.cancel.set()
                    elif event[0] in ("done", "cancelled"):
                        rest = scanner.flush() if scanner.matched is None else ""
                        if rest:
                            yield ("text", rest)
                        rec = job.record
                        if scanner.matched is not None:
                            reason = "stop_sequence"
                        elif event[0] == "done" and event[1]["done_reason"] == "length":
                            reason = "max_tokens"
                        else:
                            reason = "end_turn"
                        yield ("end", reason, scanner.matched, rec["prompt_eval_count"] or 0, rec["eval_count"] or 0)
                        return
                    else:  # fail / error
                        raise AnthropicError(event[1], event[2])
            finally:
                job.cancel.set()

        if not req.stream:
            pieces, end = [], None
            try:
                async for item in events():
                    if item[0] == "text":
                        pieces.append(item[1])
                    else:
                        end = item
            except AnthropicError as exc:
                return error(exc)
            input_tokens = end[3] - cache[0] - cache[1]
            rid = _req_id()
            return JSONResponse({
                "id": message_id, "type": "message", "role": "assistant", "model": req.model,
                "content": [{"type": "text", "text": "".join(pieces)}], "stop_reason": end[1],
                "stop_sequence": end[2], "usage": usage_dict(input_tokens, end[4], cache)},
                headers={"request-id": rid})

        def sse(name: str, data: dict) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        async def body():
            input_estimate = await asyncio.to_thread(server.tokens, chat)
            input_tokens = input_estimate - cache[0] - cache[1]
            yield sse("message_start", {"type": "message_start", "message": {
                "id": message_id, "type": "message", "role": "assistant", "model": req.model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": usage_dict(input_tokens, 1, cache)}})
            stage = failure.get("stage") if failure else None
            if stage == "stream":
                yield sse("error", {"type": "error", "error": {"type": failure.get("type") or "overloaded_error",
                                                                "message": failure.get("message") or "Overloaded"}})
                return
            yield sse("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}})
            yield sse("ping", {"type": "ping"})
            deltas = 0
            try:
                async for item in events():
                    if item[0] == "text":
                        if stage == "after_text" and deltas >= int(failure.get("after", 1)):
                            yield sse("error", {"type": "error", "error": {
                                "type": failure.get("type") or "overloaded_error",
                                "message": failure.get("message") or "Overloaded"}})
                            return
                        deltas += 1
                        record["text_deltas"] = deltas
                        yield sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                          "delta": {"type": "text_delta", "text": item[1]}})
                    else:
                        _, reason, stop_sequence, prompt_tokens, output_tokens = item
                        yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                        yield sse("message_delta", {
                            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                            "usage": {"input_tokens": prompt_tokens - cache[0] - cache[1],
                                      "output_tokens": output_tokens, "cache_creation_input_tokens": cache[0],
                                      "cache_read_input_tokens": cache[1]}})
                        yield sse("message_stop", {"type": "message_stop"})
            except AnthropicError as exc:
                yield sse("error", {"type": "error", "error": {"type": exc.type, "message": exc.message}})

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"request-id": _req_id(), "cache-control": "no-cache"})

    async def control_fail(request: Request) -> Response:
        if request.method == "DELETE":
            server.failures = {}
            return JSONResponse({})
        body = await request.json()
        status = int(body.get("status", 529))
        server.failures = {"status": status, "type": body.get("type") or ERROR_TYPES.get(status, "api_error"),
                           "message": body.get("message"), "count": int(body.get("count", 1)),
                           "stage": body.get("stage", "http"), "after": int(body.get("after", 1))}
        return JSONResponse(server.failures)

    async def debug_requests(request: Request) -> Response:
        if request.method == "DELETE":
            server.requests.clear()
            return JSONResponse([])
        path = request.query_params.get("path")
        return JSONResponse([e for e in server.requests if path is None or e["path"] == path])

    routes = [
        Route("/_health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/_control/fail", control_fail, methods=["POST", "DELETE"]),
        Route("/_debug/requests", debug_requests, methods=["GET", "DELETE"]),
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tests/servers/anthropic_compat.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="path to a .gguf file (or a shipped short name)")
    parser.add_argument("--names", default="claude-haiku-4-5", help="comma-separated model ids it answers to")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=11600)
    parser.add_argument("--n_ctx", type=int, default=2048)
    parser.add_argument("--n_threads", type=int, default=2)
    parser.add_argument("--cache-min-tokens", type=int, default=1024,
                        help="shortest cacheable prefix in tokens (default %(default)s, as for Sonnet)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the 1-token warm-up")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host):
        parser.error(f"--host {args.host!r}: this server only binds loopback addresses (127.0.0.0/8, ::1)")
    key = os.environ.get("ANTHROPIC_COMPAT_API_KEY")
    if not key:
        parser.error("set ANTHROPIC_COMPAT_API_KEY to the API key clients must present")
    models = [n.strip() for n in args.names.split(",") if n.strip()]

    import uvicorn

    host = ModelHost(_resolve_model(args.model), models[0], n_ctx=args.n_ctx, n_threads=args.n_threads,
                     warmup=args.warmup)
    app = create_app(Server(host, models, key, cache_min_tokens=args.cache_min_tokens))
    print(f"anthropic_compat: {', '.join(models)} ({host.path.name}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
