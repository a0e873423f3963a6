"""The execution engine: one request from prompt to stored reply.

:class:`Engine` builds and checks requests (:meth:`Engine.build_request`, :meth:`Engine.params`), routes them
(:meth:`Engine.route`: the hooked agents' checks, then :func:`oblix_nb.routing.decide`) and runs them
(:meth:`Engine.run`, the one entry point that ``execute()``, ``stream()`` and ``map()`` use): the session's
history fitted to the model's context, budget skips, the call with fallback to the next candidate on a
failure before the first token, checkpoints of a streaming reply, the reply stored in the session (or kept
and reported when the store refuses it), and one usage-log row per reply.

The engine reads its client through :class:`ExecutionHost` (public attributes only), at call time: a swapped
store, a newly hooked model or a changed setting applies to the next call. ``client.engine`` gives one.

:class:`Call` is one attempt at one model, :class:`Checkpoint` keeps a streaming reply durable while it
arrives, :class:`ExecutionStream` is ``client.stream()``'s async iterator.
"""
from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from . import runtime
from ._util import check_session_id, describe_error, iso, new_id, utcnow
from .agents import run_check
from .budget import Budgets
from .context import fit_history
from .errors import (
    BudgetExceededError,
    ModelCallError,
    NoModelHookedError,
    ReplyNotStoredError,
    SessionNotFoundError,
    StructuredOutputError,
)
from .models.base import (
    SAMPLING_OPTIONS,
    GenerationParams,
    ModelBackend,
    PromptProgress,
    Usage,
    is_connection_failure,
    report_progress,
    usage_when_cut,
)
from .pricing import Price, PriceBook, reply_cost
from .routing import RoutingDecision, decide
from .sessions import usage as usage_log
from .sessions.validate import check_text
from .streaming import StreamSink

if TYPE_CHECKING:
    from .sessions.base import SessionStoreBase

# Records a reply: ``store(request, text, response, partial, message_id, replace)`` (Engine._store_reply).
StoreReply = Callable[["Request", str, dict, bool, str | None, bool], None]

# Keyword arguments of execute()/stream() besides the sampling options.
REQUEST_OPTIONS = ("model_id", "sink", "schema", "system")


class ExecutionHost(Protocol):
    """What the engine reads from its client (an OblixClient), each time it needs it."""

    sessions: SessionStoreBase             # the session store (SQLite or PostgreSQL)
    current_session_id: str | None
    default_max_tokens: int | None      # when a request names no max_tokens
    max_history_messages: int              # session messages read as context, at most
    checkpoint_interval: float | None   # seconds between checkpoints of a streaming reply; None: none

    @property
    def models(self) -> dict[str, ModelBackend]: ...   # hooked backends by model id, in hook order

    @property
    def agents(self) -> list: ...                      # hooked agents

    @property
    def prices(self) -> PriceBook: ...

    @property
    def budgets(self) -> Budgets: ...

    def resolve_model_id(self, model_id: str | None) -> str | None: ...


class Engine:
    """Runs requests for one client (see the module docstring). Holds nothing but the client: cheap to make."""

    def __init__(self, host: ExecutionHost):
        self.host = host

    @property
    def sessions(self):
        """The client's current session store."""
        return self.host.sessions

    # ------------------------------------------------------------------ requests
    def params(self, temperature: float | None = None, max_tokens: int | None = None,
               options: dict | None = None) -> GenerationParams:
        """Checked generation parameters (sampling options taken from ``options``, other keys ignored);
        ``max_tokens`` None: the client's ``default_max_tokens``. ValueError for an invalid value."""
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens <= 0):
            raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 5):
            raise ValueError(f"temperature must be a number between 0 and 5, not {temperature!r}")
        sampling = {k: v for k, v in (options or {}).items() if k in SAMPLING_OPTIONS and v is not None}
        if max_tokens is None:
            max_tokens = self.host.default_max_tokens
        return GenerationParams(max_tokens, temperature, sampling)

    def build_request(self, prompt: str, *, temperature: float | None = None, max_tokens: int | None = None,
                      request_id: str | None = None, session_id: str | None = None,
                      options: dict | None = None) -> Request:
        """A checked :class:`Request` from execute()'s arguments. ``options``: its other keyword arguments
        (sampling options, ``model_id`` -- an alias works --, ``sink``, ``system``, ``schema``); ``session_id``
        None: the client's current session. ValueError/TypeError for bad input, SessionNotFoundError for an
        unknown session, NoModelHookedError for an unknown alias."""
        options = options or {}
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        check_text(prompt, "prompt")  # a lone surrogate could be neither stored nor sent
        unknown = set(options) - set(SAMPLING_OPTIONS) - set(REQUEST_OPTIONS)
        if unknown:
            raise TypeError(f"execute() got unexpected keyword argument(s) {sorted(unknown)}; sampling options "
                            f"are {list(SAMPLING_OPTIONS)}, plus model_id=, sink=, system= and schema=")
        params = self.params(temperature, max_tokens, options)
        system = options.get("system")
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a string, not {type(system).__name__}")
        schema = None
        if options.get("schema") is not None:
            from .structured import check_for_backend, compile_schema

            schema = compile_schema(options["schema"])
            forced = self.host.resolve_model_id(options.get("model_id"))
            for model_id, backend in self.host.models.items():  # before any call: what a backend cannot take
                if forced is None or model_id == forced:
                    check_for_backend(schema, backend)
            system = "\n\n".join(s for s in (system, schema.instruction()) if s)
            params.schema = schema.json_schema
        host = self.host
        sid = session_id if session_id is not None else host.current_session_id
        if sid is not None:
            check_session_id(sid)
            if not host.sessions.exists(sid):
                raise SessionNotFoundError(sid)
        return Request(prompt=prompt, params=params, request_id=request_id or new_id(), session_id=sid,
                       model_id=host.resolve_model_id(options.get("model_id")), system=system or None,
                       schema=schema)

    # ------------------------------------------------------------------ routing
    async def route(self, forced: str | None = None) -> tuple[RoutingDecision, list[dict]]:
        """Ask every hooked agent, then decide: ``(decision, checks)``. ``forced``: a hooked model id to use
        first (the others stay fallback candidates). NoModelHookedError when none (or not that one) is hooked."""
        models = self.host.models
        if not models:
            raise NoModelHookedError("no model is hooked: await client.hook_model(ModelType..., ...) first")
        if forced is not None and forced not in models:
            raise NoModelHookedError(f"model_id {forced!r} is not hooked; hooked: {list(models)}")
        agents = self.host.agents
        results = await asyncio.gather(*(run_check(a) for a in agents))
        checks = [{"agent": a.name, "result": r} for a, r in zip(agents, results)]
        return decide(list(models.values()), checks, forced_model_id=forced), checks

    # ------------------------------------------------------------------ running
    async def run(self, request: Request, *, sink: StreamSink | None = None, stream: bool = False,
                  store_reply: bool = True, parse: bool = False) -> dict:
        """Route, call (falling back), store; returns execute()'s response dict. Runs on the package loop
        (from another loop: ``await runtime.to_loop(engine.run(...))``).

        ``sink`` gets the streamed text (``stream=True``). ``store_reply``: with the request's session, store
        its prompt (and its system message, once per session) before the call and the reply after it
        (checkpointed while it streams); False: nothing is written to the session (the caller stores).
        ``parse``: with ``request.schema``, parse the reply into ``response["parsed"]``, retrying once with the
        validation error (StructuredOutputError if the retry is invalid too).
        """
        if parse and request.schema is not None:
            return await self._run_structured(request, sink, stream, store_reply)
        return await self._run(request, sink, stream, store_reply)

    async def _run_structured(self, request: Request, sink: StreamSink | None, stream: bool,
                              store_reply: bool) -> dict:
        """``_run`` with the schema enforced and the reply parsed: one retry on an invalid reply."""
        response = await self._run(request, sink, stream, store_reply)
        try:
            response["parsed"] = request.schema.parse(response["response"])
            return response
        except StructuredOutputError as first:
            prior = [] if request.session_id and store_reply else [
                {"role": "user", "content": request.prompt}, {"role": "assistant", "content": response["response"]}]
            retry = replace(request, prompt=retry_prompt(first), request_id=new_id(), prior=prior)
        response = await self._run(retry, sink, stream, store_reply)
        request.sent = retry.sent
        try:
            response["parsed"] = retry.schema.parse(response["response"])
        except StructuredOutputError as second:
            raise StructuredOutputError(
                f"the reply of {response['model_id']} does not match the schema, even after one retry: {second}",
                text=response["response"], response=response) from None
        return response

    async def _run(self, request: Request, sink: StreamSink | None, stream: bool, store_reply: bool) -> dict:
        decision, checks = await self.route(request.model_id)
        if not request.fallback and request.model_id is not None:
            # A cascade stage: this model or nothing (no fallback to another tier, budgets per attempt).
            decision = replace(decision, candidates=[decision.model_id])
        sessions = self.host.sessions
        history = (sessions.history(request.session_id, limit=self.host.max_history_messages)
                   if request.session_id else [])
        if request.session_id and store_reply:
            # What the model sees is stored: a request's system message (system=, a schema's or a format's
            # instruction) is kept in the session before its prompt, once per session (a session whose history
            # already has it does not get it again), tagged with the request that brought it.
            turn = [{"role": "user", "content": request.prompt, "request_id": request.request_id}]
            if request.system and not _has_system(history, request.system):
                turn.insert(0, {"role": "system", "content": request.system, "request_id": request.request_id})
            sessions.append_messages(request.session_id, turn)
        # Such an instruction applies to its own request only: a later question in the session is not held to an
        # earlier cell's schema or format. System messages written otherwise (no request id) stay in force.
        history = [m for m in history if not _request_instruction(m)]
        return await self._attempts(request, decision, checks, history, sink, stream,
                                    self._store_reply if store_reply else _no_store)

    async def _attempts(self, request: Request, decision, checks: list, history: list[dict],
                        sink: StreamSink | None, stream: bool, store) -> dict:
        """Call the decided model; on a failure before its first token, the next candidate (routing's
        fallback order). ``history`` comes before the prompt (plus ``request.prior`` and ``request.system``);
        ``store(request, text, response, partial, message_id, replace)`` records the reply (see _store_reply)."""
        history = list(history) + list(request.prior)
        if request.system and not _has_system(history, request.system):
            history.insert(0, {"role": "system", "content": request.system})
        failures: list[str] = []
        tried: set[str] = set()
        checkpoint_interval = self.host.checkpoint_interval if store is not _no_store else None
        while True:
            backend = self.host.models[decision.model_id]
            params = request.params
            if params.max_tokens is None:
                params = replace(params, max_tokens=backend.default_max_tokens())
            fitted = fit_history(history, request.prompt, context_window=backend.context_window or 2048,
                                 max_tokens=params.max_tokens, count=backend.estimate_tokens,
                                 overhead=backend.message_overhead())
            price = self.host.prices.for_backend(backend)
            blocked, reservation = self.reserve_budget(backend, price, fitted, params, request)
            if blocked is not None:
                tried.add(backend.model_id)
                decision = self._skip_over_budget(decision, backend, blocked, tried, failures)
                continue
            call = Call(backend, replace(request, params=params), decision, checks, fitted, price)
            try:
                response = await call.run(sink if stream else None, stream, store, checkpoint_interval)
                request.sent = call.fitted.messages  # what the model saw (confidence scoring reads it)
                return response
            except BeforeFirstToken as exc:
                tried.add(backend.model_id)
                failures.append(f"{backend.model_id}: {exc.summary}")
                models = self.host.models
                remaining = [m for m in decision.candidates if m not in tried and m in models]
                if not exc.retryable or not remaining:
                    raise ModelCallError(
                        "no model could answer: " + "; ".join(failures), model_id=backend.model_id
                    ) from exc.__cause__
                decision = decision.fell_back(backend.model_id, exc.summary, remaining[0])
            finally:
                if call.final is not None or reservation is not None:  # log a reply's usage once
                    final, partial = call.final if call.final is not None else (None, False)
                    self._log_usage(final, partial, reservation=reservation,
                                    session_id=request.session_id or request.usage_session_id)

    def _log_usage(self, response: dict | None, partial: bool, reservation: str | None = None,
                   session_id: str | None = None) -> None:
        """One usage-log row per reply (spend for budgets, ``usage()``); bookkeeping never costs the reply.
        ``reservation``: the call's budget reservation, replaced by the row in one transaction (released when
        there is no reply). If that fails, the reservation stays until it lapses: spend is never under-counted."""
        response = response or {}
        if not response.get("response") and (response.get("metrics") or {}).get("input_tokens") is None:
            response = {}
        elif session_id is not None and response.get("session_id") is None:
            response = {**response, "session_id": session_id}  # a map row's spend counts in its session
        try:
            target = (response.get("routing_decision") or {}).get("target")
            if reservation is not None:
                self.host.sessions.settle_spend(reservation,
                                                usage_log.row(response, target, partial) if response else None)
            elif response:
                usage_log.record(self.host.sessions, response, target, partial)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"oblix_nb: could not log the usage of request {response.get('request_id')}: "
                          f"{describe_error(exc)}", RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------------ budgets
    def over_budget(self, backend: ModelBackend, price: Price | None, fitted, params: GenerationParams,
                    session_id: str | None):
        """None if ``backend`` may be called under the budgets, else ``(why, budget status, worst case USD)``."""
        if price is not None and price.source == "local":
            return None
        max_out = params.max_tokens or backend.default_max_tokens() or \
            max(1, (backend.context_window or 4096) - fitted.used)
        return self.host.budgets.check_call(price, fitted.used, max_out, session_id)

    def reserve_budget(self, backend: ModelBackend, price: Price | None, fitted, params: GenerationParams,
                       request: Request) -> tuple[tuple | None, str | None]:
        """:meth:`over_budget`, made atomic: ``(None, reservation id or None)`` if ``backend`` may be called
        (its worst case is then reserved under every budget, across kernels sharing the store, until
        :meth:`_log_usage` settles it), else ``(why, budget status, worst case USD), None``."""
        if price is not None and price.source == "local":
            return None, None
        max_out = params.max_tokens or backend.default_max_tokens() or \
            max(1, (backend.context_window or 4096) - fitted.used)
        session_id = request.session_id or request.usage_session_id
        return self.host.budgets.reserve(price, fitted.used, max_out, session_id, request_id=request.request_id,
                                         model_id=backend.model_id)

    def _skip_over_budget(self, decision, backend: ModelBackend, blocked, tried: set, failures: list):
        """The decision for the next candidate after ``backend`` was over budget; BudgetExceededError if none."""
        why, status, worst = blocked
        models = self.host.models
        remaining = [m for m in decision.candidates if m not in tried and m in models]
        if not remaining:
            local = any(m.target == "local" for m in models.values())
            raise BudgetExceededError(
                f"{backend.model_id} not called: {why}"
                + ("; no local model is hooked to take the request" if not local else "")
                + (f"; earlier: {'; '.join(failures)}" if failures else ""),
                budget=status.as_dict() if status else None, worst_case_usd=worst, model_id=backend.model_id)
        failures.append(f"{backend.model_id}: over budget")
        return decision.skipped(backend.model_id, f"over budget: {why}", remaining[0], models[remaining[0]].target)

    # ------------------------------------------------------------------ storing
    def _store_reply(self, request: Request, text: str, response: dict, partial: bool,
                     message_id: str | None = None, replace: bool = False) -> None:
        """Store a reply (finished, partial, or a checkpoint of it) as message ``message_id``; ``replace``: an
        earlier checkpoint may hold that id, so the row is updated in place instead of appended."""
        if not request.session_id or (partial and not text):
            return
        sessions = self.host.sessions
        write = sessions.upsert_message if replace else sessions.append_message
        write(request.session_id, "assistant", text, id=message_id, model_id=response["model_id"],
              metrics=response["metrics"], routing=response["routing_decision"], partial=partial,
              request_id=request.request_id)


def _no_store(*_args) -> None:
    """The reply is not stored by the engine (``run(store_reply=False)``: the caller stores it)."""


def _has_system(history: list[dict], text: str) -> bool:
    return any(m["role"] == "system" and m["content"] == text for m in history)


def _request_instruction(message: dict) -> bool:
    """A system message that execute() stored for one request (tagged with its request id)."""
    return message["role"] == "system" and bool(message.get("request_id"))


@dataclass
class Request:
    prompt: str
    params: GenerationParams
    request_id: str
    session_id: str | None
    model_id: str | None = None
    system: str | None = None        # an extra system message (the schema instruction goes here too)
    schema: Any = None                  # a compiled oblix_nb.structured.Schema
    prior: list = field(default_factory=list)  # messages before the prompt that are not in the session
    usage_session_id: str | None = None  # without session_id: the session whose budget and usage the call
    #                                         counts in (map() rows: the session they are stored in)
    fallback: bool = True               # False: only ``model_id`` may answer (a cascade stage)
    sent: list | None = None         # set by the engine: the messages the answering model was sent


def retry_prompt(error: BaseException) -> str:
    """The follow-up that asks for a corrected structured reply."""
    return (f"Your reply was not valid: {error}. Reply again with only the JSON value, matching the schema "
            f"exactly.")


STORE_RETRY_DELAY_S = 0.2  # before the second try at storing a reply


class BeforeFirstToken(Exception):
    """A model failed before its first token; ``retryable`` if the next candidate should be tried."""

    def __init__(self, summary: str, retryable: bool):
        super().__init__(summary)
        self.summary = summary
        self.retryable = retryable


class Call:
    """One attempt at one model: streams, measures, stores the reply (or the partial one)."""

    def __init__(self, backend: ModelBackend, request: Request, decision, checks: list, fitted,
                 price: Price | None = None):
        self.backend, self.request, self.decision, self.checks, self.fitted = \
            backend, request, decision, checks, fitted
        self.price = price
        self.final: tuple[dict, bool] | None = None  # (response, partial) once the reply is complete or cut
        self.pieces: list[str] = []
        self.first_token_at: float | None = None
        self.usage = Usage(input_source="none", output_source="none")
        self.message_id = new_id()  # the reply's row: checkpoints and the final reply share it
        self.checkpoint: Checkpoint | None = None
        self.prompt_progress: PromptProgress | None = None  # the engine's last report on reading the prompt
        # The backend gets the request's parameters with a progress callback that remembers the last report (so a
        # reply stopped while the prompt is read still knows its input count) and passes it on.
        self.params = replace(request.params, on_progress=self._progress)

    def _progress(self, progress: PromptProgress) -> None:
        self.prompt_progress = progress
        report_progress(self.request.params, progress)

    def response(self, end: float, partial: bool) -> dict:
        b, u = self.backend, self.usage
        total = end - self.t0
        ttft = (self.first_token_at - self.t0) if self.first_token_at is not None else None
        output_tokens = u.output_tokens
        gen_time = total - (ttft or 0.0)
        tps = (output_tokens / gen_time) if output_tokens and gen_time > 0 else (
            output_tokens / total if output_tokens and total > 0 else 0.0)
        metrics: dict[str, Any] = {
            "total_latency": total, "time_to_first_token": ttft, "tokens_per_second": tps,
            "input_tokens": u.input_tokens, "output_tokens": output_tokens,
            "start_time": iso(self.started), "end_time": iso(self.started + timedelta(seconds=total)),
            "model_name": b.model_name, "model_type": b.model_type.value,
            "usage_source": {"input": u.input_source, "output": u.output_source},
            "finish_reason": u.finish_reason,
            "context": {"messages": len(self.fitted.messages), "dropped": self.fitted.dropped,
                        "truncated": self.fitted.truncated},
        }
        if u.cache_read_tokens is not None or u.cache_write_tokens is not None:
            metrics["cache_read_tokens"], metrics["cache_write_tokens"] = u.cache_read_tokens, u.cache_write_tokens
        if u.options_not_applied:  # sampling options the backend could not send (the reply was made without them)
            metrics["options_not_applied"] = list(u.options_not_applied)
        metrics.update(reply_cost(self.price, u))
        out = {
            "request_id": self.request.request_id, "model_id": b.model_id, "response": "".join(self.pieces),
            "metrics": metrics, "routing_decision": self.decision.as_dict(), "agent_checks": self.checks,
            "session_id": self.request.session_id,
        }
        if partial:
            out["partial"] = True
        return out

    async def run(self, sink: StreamSink | None, stream: bool, store: StoreReply,
                  checkpoint_interval: float | None = None) -> dict:
        self.started = utcnow()
        self.t0 = time.perf_counter()
        if stream and checkpoint_interval and self.request.session_id:
            self.checkpoint = Checkpoint(self, store, checkpoint_interval)
        if sink is not None:
            sink.start({"model_id": self.backend.model_id, "request_id": self.request.request_id,
                        "session_id": self.request.session_id, "routing": self.decision.as_dict(),
                        "input_tokens": self.fitted.used})
            progress = getattr(sink, "progress", None)  # the sink shows how far the model has read the prompt
            if callable(progress) and self.request.params.on_progress is None:
                self.request = replace(self.request, params=replace(self.request.params, on_progress=progress))
        try:
            if stream:
                await self._stream(sink)
            else:
                await self._complete()
        except BeforeFirstToken:
            raise
        except BaseException as exc:
            end = time.perf_counter()
            if self.usage.input_tokens is None or self.usage.output_tokens is None:  # cut before the backend counted
                self.usage = usage_when_cut(self.usage, self.backend, self.fitted.messages, self.pieces,
                                            self.prompt_progress)
            partial = self.response(end, partial=True)
            if not isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                partial["metrics"]["error"] = describe_error(exc)  # cut by a failure, not stopped
            self.final = (partial, True)
            not_stored = self.save(store, partial, True)
            if sink is not None:
                sink.end(None, exc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                if not_stored is not None:
                    warnings.warn(str(not_stored), RuntimeWarning, stacklevel=2)
                raise
            kept = ""
            if self.pieces and self.request.session_id:
                kept = ("; the partial reply was kept, flagged partial" if not_stored is None else
                        f"; {not_stored}")
            raise ModelCallError(
                f"{self.backend.model_id} failed after {len(self.pieces)} chunk(s): {describe_error(exc)}" + kept,
                model_id=self.backend.model_id, partial=partial["response"], response=partial) from exc
        response = self.response(self.end, partial=False)
        self.final = (response, False)
        not_stored = self.save(store, response, False)
        if sink is not None:
            sink.end(response)
        if not_stored is not None:
            raise not_stored
        return response

    def save(self, store: StoreReply, response: dict, partial: bool) -> ReplyNotStoredError | None:
        """Store the reply, replacing its checkpoint; if that fails, wait a moment and try once more.

        Returns None when stored, else the ReplyNotStoredError to raise: it carries the full response and says
        where the reply could not be written (the session and the database path).
        """
        replace = self.checkpoint is not None and self.checkpoint.attempted
        for attempt in (1, 2):
            try:
                store(self.request, response["response"], response, partial, self.message_id, replace)
                return None
            except Exception as exc:  # noqa: BLE001 - reported with the reply attached, never dropped
                cause = exc
                replace = True  # the first try may have committed before failing: never add a second row
                if attempt == 1:
                    time.sleep(STORE_RETRY_DELAY_S)
        sessions = getattr(getattr(store, "__self__", None), "sessions", None)
        path = str(getattr(sessions, "path", "")) or None
        what = "the partial reply" if partial else "the reply"
        error = ReplyNotStoredError(
            f"{what} ({len(response['response'])} characters from {response['model_id']}) could not be stored "
            f"in session {self.request.session_id} of {path or 'the session store'} (tried twice): "
            f"{describe_error(cause)}; the full response is in exc.response",
            response=response, session_id=self.request.session_id, path=path)
        error.__cause__ = cause
        return error

    def _fail_early(self, exc: BaseException) -> BeforeFirstToken:
        return BeforeFirstToken(describe_error(exc), is_connection_failure(exc))

    async def _stream(self, sink: StreamSink | None) -> None:
        agen = self.backend.stream(self.fitted.messages, self.params)
        last_token_at = None
        try:
            try:
                item = await anext(agen)
            except StopAsyncIteration:
                return
            except Exception as exc:  # noqa: BLE001 - classified: fall back or fail clearly
                raise self._fail_early(exc) from exc
            self.first_token_at = time.perf_counter()
            while True:
                if isinstance(item, Usage):
                    self.usage = item
                else:
                    last_token_at = time.perf_counter()
                    self.pieces.append(item)
                    if sink is not None:
                        sink.write(item)
                    if self.checkpoint is not None:
                        self.checkpoint.arrived()
                try:
                    item = await anext(agen)
                except StopAsyncIteration:
                    break
        finally:
            if self.checkpoint is not None:
                self.checkpoint.cancel()
            await agen.aclose()
            # The reply ends at its last token, not after any token counting the backend did afterwards.
            self.end = last_token_at or self.first_token_at or time.perf_counter()

    async def _complete(self) -> None:
        try:
            text, self.usage = await self.backend.complete(self.fitted.messages, self.params)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail_early(exc) from exc
        self.end = self.first_token_at = time.perf_counter()
        self.pieces.append(text)


class Checkpoint:
    """Keeps a streaming reply durable while it arrives: text is in the session at most ``interval`` seconds
    after it arrived (one row, updated in place, flagged partial, ``finish_reason`` "interrupted"), so a killed
    process loses at most the last ``interval`` seconds. The first write comes ``interval`` after the first
    token, so short replies cost nothing extra. Runs on the package loop (a timer covers pauses in the
    stream); a failed checkpoint is remembered, not raised: the final store retries and reports.
    """

    def __init__(self, call: Call, store: StoreReply, interval: float):
        self.call, self.store, self.interval = call, store, interval
        self.due: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.attempted = False   # a row may exist: the final reply must replace it
        self.saved = 0           # pieces persisted so far
        self.writes = 0
        self.error: BaseException | None = None

    def arrived(self) -> None:
        """After each text delta (cheap: a clock read, at most one timer per interval)."""
        now = time.monotonic()
        if self.due is None:
            self.due = now + self.interval
        if now >= self.due:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.due - now, self.flush)

    def flush(self) -> None:
        self.cancel()
        call = self.call
        if len(call.pieces) > self.saved:
            self.saved = len(call.pieces)
            response = call.response(time.perf_counter(), partial=True)
            response["metrics"]["finish_reason"] = "interrupted"  # what it is if this process dies now
            self.attempted = True
            try:
                self.store(call.request, response["response"], response, True, call.message_id, True)
                self.writes += 1
            except Exception as exc:  # noqa: BLE001 - the final store retries and reports
                self.error = exc
        self.due = time.monotonic() + self.interval

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ExecutionStream:
    """Async iterator over one execution's text deltas; ``.response`` is set when it finishes."""

    def __init__(self, engine: Engine, request: Request):
        self._engine = engine
        self._request = request
        self.response: dict | None = None
        self._queue: asyncio.Queue | None = None
        self._future: runtime.Job | None = None

    def __aiter__(self) -> ExecutionStream:
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._queue = queue
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731

        class _Sink:
            def start(self, info): pass
            def write(self, text): put(("text", text))
            def end(self, response, error=None): pass

        async def run():
            try:
                put(("done", await self._engine.run(self._request, sink=_Sink(), stream=True)))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the iterating task
                put(("error", exc))
                raise

        self._future = runtime.submit(run())

    async def __anext__(self) -> str:
        if self._queue is None:
            await self._start()
        assert self._queue is not None  # set by _start
        try:
            kind, value = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if kind == "text":
            return value
        if kind == "done":
            self.response = value
            raise StopAsyncIteration
        if isinstance(value, asyncio.CancelledError):
            raise StopAsyncIteration
        raise value

    async def aclose(self) -> None:
        """Stop the execution (the partial reply is stored, flagged) and wait for its cleanup."""
        if self._future is not None and not self._future.done():
            self._future.cancel()
            try:
                await asyncio.wrap_future(self._future)
            except BaseException:  # noqa: BLE001 - cancelled on purpose
                pass

    async def __aenter__(self) -> ExecutionStream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
