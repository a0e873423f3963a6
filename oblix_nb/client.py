"""OblixClient: the Oblix session API over a SQLite store, plus hook_model / hook_agent / execute / shutdown."""
from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional

from . import runtime
from ._util import check_session_id, describe_error, iso, new_id, utcnow
from .agents import BudgetAgent, ConnectivityAgent, ResourceMonitor, run_check
from .budget import Budgets
from .context import fit_history
from .errors import BudgetExceededError, ModelCallError, NoModelHookedError, SessionNotFoundError
from .models import make_backend
from .models.base import SAMPLING_OPTIONS, GenerationParams, ModelBackend, ModelType, Usage, \
    is_connection_failure
from .pricing import Price, PriceBook, reply_cost
from .routing import decide
from .sessions import SessionStore
from .sessions import usage as usage_log
from .sessions.settings import Settings
from .streaming import StdoutSink, StreamSink, as_sink


def stdout_sink_factory(display_metrics: bool = True) -> StreamSink:
    return StdoutSink(display_metrics=display_metrics)


# Where a client streams when execute() gets no sink: stdout; oblix_nb.notebook swaps in cell output in a kernel.
default_sink_factory: Callable[[bool], Optional[StreamSink]] = stdout_sink_factory


def default_home() -> Path:
    env = os.environ.get("OBLIX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".oblix"


class OblixClient:
    """One client for a local and a cloud model, whose conversations are durable, queryable data.

    ``home`` (or env ``OBLIX_HOME``, else ``~/.oblix``) holds ``sessions.db``. Constructing a client makes no
    network call and opens nothing but the local database.
    """

    def __init__(self, host: str = "localhost", port: int = 4321, config_path: Optional[str] = None, *,
                 home: Optional[str | os.PathLike] = None):
        self.host = host
        self.port = port
        self.config_path = config_path
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.sessions = SessionStore(self.home / "sessions.db")
        self.current_session_id: Optional[str] = None
        self._init_orchestration()

    def __repr__(self) -> str:
        return f"<OblixClient home={str(self.home)!r} models={self.list_models()!r}>"

    # ------------------------------------------------------------------ sessions (the reference API)
    async def create_session(self, title: str = None, initial_context: dict = None,
                             metadata: dict = None) -> str:
        """Create a session; returns its id."""
        return self.sessions.create(title=title, context=initial_context, metadata=metadata)

    async def create_and_use_session(self, title: str = None, initial_context: dict = None,
                                     metadata: dict = None) -> str:
        """Create a session and make it the current one; returns its id."""
        session_id = await self.create_session(title, initial_context, metadata)
        self.current_session_id = session_id
        return session_id

    def use_session(self, session_id: str) -> bool:
        """Make an existing session current. False if there is no such session."""
        check_session_id(session_id)
        if not self.sessions.exists(session_id):
            return False
        self.current_session_id = session_id
        return True

    def load_session(self, session_id: str) -> dict:
        """The whole session as the reference's JSON structure. Unknown id: SessionNotFoundError (a KeyError)."""
        return self.sessions.get(session_id)

    def list_sessions(self, limit: int = 50, filter_metadata: dict = None) -> List[dict]:
        """Session summaries, newest ``updated_at`` first."""
        return self.sessions.summaries(limit=limit, filter_metadata=filter_metadata)

    def delete_session(self, session_id: str) -> bool:
        """Delete a session and its messages. False if there was no such session."""
        deleted = self.sessions.delete(session_id)
        if deleted and self.current_session_id == session_id:
            self.current_session_id = None
        return deleted

    def update_session_metadata(self, session_id: str, metadata: dict) -> bool:
        """Shallow-merge ``metadata`` into the session's metadata; bumps ``updated_at``."""
        return self.sessions.update_metadata(session_id, metadata)

    def get_session_metadata(self, session_id: str) -> dict:
        """The session's metadata only (messages are not read)."""
        return self.sessions.get_metadata(session_id)

    async def export_session(self, session_id: str, file_path: str) -> bool:
        """Write the session as reference JSON, atomically, creating parent folders."""
        self.sessions.export(session_id, file_path)
        return True

    async def import_session(self, file_path: str, new_id: bool = False,
                             use_immediately: bool = False) -> str:
        """Import a session file (ours or the original Oblix SDK's); returns the session id."""
        session_id = self.sessions.import_file(file_path, new_id=new_id)
        if use_immediately:
            self.current_session_id = session_id
        return session_id

    async def copy_session(self, session_id: str, new_title: str = None,
                           use_immediately: bool = False) -> str:
        """Copy a session (new ids, same contents); returns the new id."""
        copy_id = self.sessions.copy(session_id, new_title=new_title)
        if use_immediately:
            self.current_session_id = copy_id
        return copy_id

    async def merge_sessions(self, session_ids: List[str], title: str = None,
                             use_immediately: bool = False) -> str:
        """Merge sessions into a new one, messages ordered by timestamp; returns the new id."""
        merged_id = self.sessions.merge(session_ids, title=title)
        if use_immediately:
            self.current_session_id = merged_id
        return merged_id

    # ------------------------------------------------------------------ beyond the reference
    def append_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        """Append one message (one INSERT); returns the stored message dict.

        ``fields`` are the optional message fields: ``model_id``, ``metrics``, ``routing``, ``partial``,
        ``request_id``, ``timestamp`` (ISO string, default now).
        """
        return self.sessions.append_message(session_id, role, content, **fields)

    def search_sessions(self, query: str, limit: int = 20) -> List[dict]:
        """Full-text search (SQLite FTS5) over titles and message text; best match first."""
        return self.sessions.search(query, limit=limit)

    # ------------------------------------------------------------------ DataFrames (pandas imported on call)
    def sessions_df(self, limit: Optional[int] = None, filter_metadata: dict = None):
        """One row per session (newest ``updated_at`` first), metadata keys expanded to columns.

        Columns: session_id, title, created_at, updated_at (UTC datetimes), message_count, cost_usd (the sum of
        its replies' known costs; NA when none is known), then one column per metadata key. ``limit=None``: all sessions; ``filter_metadata`` as in ``list_sessions``.
        """
        from .sessions.frames import sessions_df

        return sessions_df(self.sessions, limit=limit, filter_metadata=filter_metadata)

    def messages_df(self, session_ids: Optional[str | List[str]] = None):
        """One row per message of ``session_ids`` (one id or a list; None: every session).

        Columns: session_id, session_title, message_id, role, content, timestamp (UTC), model_id,
        route_target, time_to_first_token, tokens_per_second, total_latency, input_tokens, output_tokens
        (nullable Int64), cost_usd (Float64; NA when unknown), partial (bool), request_id.
        role/model_id/route_target are categoricals.
        """
        from .sessions.frames import messages_df

        return messages_df(self.sessions, session_ids=session_ids)

    # ------------------------------------------------------------------ cost and budgets
    # Views of the current store (``sessions`` may be swapped for another store, e.g. by %config OblixMagics.home).
    @property
    def settings(self) -> Settings:
        """Settings shared by every kernel using this store (budgets, user prices)."""
        return Settings(self.sessions)

    @property
    def prices(self) -> PriceBook:
        return PriceBook(self.settings)

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.sessions, self.settings)

    def set_price(self, model: str, input: float, output: float, cached: Optional[float] = None,
                  cache_write: Optional[float] = None) -> dict:
        """Set a model's price in USD per million tokens (overrides the shipped table; see :mod:`oblix_nb.pricing`).

        ``model``: a model id (``"claude:claude-haiku-4-5"``) or a bare model name. ``cached``: input read from
        the provider's prompt cache; ``cache_write``: input written to it (both default to ``input``). Kept in
        the session store, so every kernel sharing it uses the price. Returns the price as a dict.
        """
        return self.prices.set(model, input, output, cached, cache_write).as_dict()

    def price_of(self, model_id: str) -> Optional[dict]:
        """The price that applies to a hooked model (a dict with its ``source``), or None if unknown."""
        backend = self._models.get(model_id)
        price = self.prices.for_backend(backend) if backend is not None else self.prices.lookup(
            model_id, model_id.split(":", 1)[-1], "cloud")
        return price.as_dict() if price is not None else None

    def set_budget(self, usd: Optional[float], per: str = "day") -> Optional[dict]:
        """Cap cloud spend: ``usd`` per ``"day"`` (since local midnight), ``"session"`` or ``"total"``; None removes
        that budget. Kept in the session store (it holds for every kernel sharing it). Hooks a BudgetAgent if
        none is hooked. A cloud call whose worst case exceeds what is left is routed to a local model, or refused
        with BudgetExceededError when none is hooked (see :mod:`oblix_nb.budget`). Returns the budget's status
        ``{per, usd, spent_usd, remaining_usd}`` (None when removed)."""
        status = self.budgets.set(usd, per)
        if status is not None and self._agent(BudgetAgent) is None:
            self.hook_agent(BudgetAgent())
        return status

    def budget_status(self, session_id: Optional[str] = None) -> List[dict]:
        """The budgets that apply (to ``session_id``, default the current session), tightest first."""
        sid = session_id if session_id is not None else self.current_session_id
        return [s.as_dict() for s in self.budgets.status(sid)]

    def usage(self, by: str = "model"):
        """Replies, tokens and cost grouped ``by`` ``"model"``, ``"session"`` or ``"day"`` (local calendar day),
        one row per group in order of first use, from the store's usage log (every reply, in a session or not;
        deleting a session keeps its usage). Columns: the key (``model_id`` / ``session_id`` + ``title`` /
        ``day``), replies, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd (known
        exact costs), cost_estimate_usd (estimates for replies cut short before the provider counted),
        unpriced_replies (replies of models with no known price), spend_usd (what budgets count: cost_usd plus
        cost_estimate_usd), first, last (UTC)."""
        return usage_log.usage_df(self.sessions, by=by)

    # ------------------------------------------------------------------ orchestration
    def _init_orchestration(self) -> None:
        self._models: dict[str, ModelBackend] = {}   # model_id -> backend, in hook order
        self._agents: list[Any] = []
        self._started_agents: list[Any] = []         # samplers this client started (and so stops)
        # Looked up at call time, so the notebook layer's factory (set by %load_ext in a kernel) applies here too.
        self.sink_factory: Callable[[bool], Optional[StreamSink]] = lambda display_metrics: default_sink_factory(
            display_metrics)
        self.chat_handler: Optional[Callable[..., Awaitable[dict]]] = None  # notebook layer may set one
        self.max_history_messages = 1000
        self.default_max_tokens: Optional[int] = None  # used when execute() gets no max_tokens

    @property
    def models(self) -> dict:
        """Hooked backends by model id, in hook order (read-only view)."""
        return dict(self._models)

    def list_models(self) -> dict:
        """``{model_type_value: [model_name, ...]}`` of hooked models."""
        out: dict[str, list[str]] = {}
        for backend in self._models.values():
            out.setdefault(backend.model_type.value, []).append(backend.model_name)
        return out

    async def hook_model(self, model_type: ModelType | str, model_name: str, endpoint: Optional[str] = None,
                         api_key: Optional[str] = None, **kwargs: Any) -> bool:
        """Hook a model: checks that its endpoint answers and lists it (never downloads, never bills).

        kwargs: ``base_url`` (OPENAI), ``target`` ("local"/"cloud"), ``context_window``, ``timeout``,
        ``model_path``/``n_ctx``/``n_threads`` (LLAMACPP), ``keep_alive`` (OLLAMA).
        Raises ModelUnavailableError naming the endpoint and the model.
        """
        return await runtime.to_loop(self._hook_model(model_type, model_name, endpoint, api_key, **kwargs))

    async def _hook_model(self, model_type, model_name, endpoint, api_key, **kwargs) -> bool:
        model_type = ModelType.parse(model_type)
        backend = make_backend(model_type, model_name, endpoint, api_key, **kwargs)
        try:
            await backend.connect()
        except BaseException:
            await backend.aclose()
            raise
        old = self._models.pop(backend.model_id, None)
        if old is not None:
            await old.aclose()
        self._models[backend.model_id] = backend
        self._sync_agent_endpoints()
        return True

    async def unhook_model(self, model_id: str) -> bool:
        """Unhook a model and close what it opened. False if it was not hooked."""
        async def unhook() -> bool:
            backend = self._models.pop(model_id, None)
            if backend is None:
                return False
            await backend.aclose()
            self._sync_agent_endpoints()
            return True
        return await runtime.to_loop(unhook())

    def hook_agent(self, agent: Any) -> bool:
        """Hook an agent (anything with ``name`` and ``check()``); starts its background sampler if it has one."""
        if not hasattr(agent, "check") or not isinstance(getattr(agent, "name", None), str):
            raise TypeError("an agent needs a `name` string and a `check()` method")
        self._agents = [a for a in self._agents if a.name != agent.name] + [agent]
        bind = getattr(agent, "bind", None)  # agents that read the client's state (BudgetAgent)
        if callable(bind):
            bind(self)
        start = getattr(agent, "start", None)
        if callable(start) and not getattr(agent, "running", False):
            start()
            self._started_agents.append(agent)
        self._sync_agent_endpoints()
        return True

    @property
    def agents(self) -> list:
        return list(self._agents)

    def _sync_agent_endpoints(self) -> None:
        endpoints = {m.model_id: m.endpoint for m in self._models.values() if m.target == "cloud" and m.endpoint}
        for agent in self._agents:
            setter = getattr(agent, "set_endpoints", None)
            if callable(setter):
                setter(endpoints)

    def _agent(self, cls):
        return next((a for a in self._agents if isinstance(a, cls)), None)

    async def get_resource_metrics(self) -> dict:
        """The hooked ResourceMonitor's latest sample (one is taken now if none is hooked)."""
        agent = self._agent(ResourceMonitor)
        if agent is None:
            return (await asyncio.to_thread(ResourceMonitor().check)).get("metrics", {})
        return (await run_check(agent)).get("metrics", {})

    async def get_connectivity_metrics(self) -> dict:
        """The hooked ConnectivityAgent's latest sample of the cloud endpoints (measured now if none is hooked)."""
        agent = self._agent(ConnectivityAgent)
        if agent is None:
            agent = ConnectivityAgent()
            agent.set_endpoints({m.model_id: m.endpoint for m in self._models.values()
                                 if m.target == "cloud" and m.endpoint})
            return (await asyncio.to_thread(agent.refresh)).get("metrics", {})
        return (await run_check(agent)).get("metrics", {})

    # ------------------------------------------------------------------ execute
    async def execute(self, prompt: str, temperature: Optional[float] = None, max_tokens: Optional[int] = None,
                      request_id: Optional[str] = None, display_metrics: bool = True,
                      session_id: Optional[str] = None, stream: bool = True, chat: bool = False,
                      **kwargs: Any) -> dict:
        """Send ``prompt`` to the routed model, with the session's history as context.

        Extra keyword arguments: ``model_id`` (force a hooked model), ``sink`` (a StreamSink or callable for
        streamed text; default stdout, or cell output in a notebook), and sampling options
        ``top_p, top_k, seed, stop, presence_penalty, frequency_penalty, repeat_penalty``.
        """
        if chat:
            return await self._chat(prompt, temperature=temperature, max_tokens=max_tokens,
                                    display_metrics=display_metrics, session_id=session_id, stream=stream,
                                    **kwargs)
        request = self._request(prompt, temperature, max_tokens, request_id, session_id, kwargs)
        sink = None
        if stream:
            sink = as_sink(kwargs.get("sink")) if kwargs.get("sink") is not None else \
                self.sink_factory(display_metrics)
        return await runtime.to_loop(self._run(request, sink, stream))

    def stream(self, prompt: str, **kwargs: Any) -> "ExecutionStream":
        """``async for text in client.stream(prompt, ...)``: the reply's deltas as they arrive.

        Takes execute()'s arguments. After the loop, ``.response`` holds execute()'s dict. Leaving the loop
        early (break, cancel) stops the upstream request and stores what arrived, flagged partial.
        """
        request = self._request(prompt, kwargs.pop("temperature", None), kwargs.pop("max_tokens", None),
                                kwargs.pop("request_id", None), kwargs.pop("session_id", None), kwargs)
        return ExecutionStream(self, request)

    def _request(self, prompt, temperature, max_tokens, request_id, session_id, kwargs) -> "Request":
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
            raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 5):
            raise ValueError(f"temperature must be a number between 0 and 5, not {temperature!r}")
        unknown = set(kwargs) - set(SAMPLING_OPTIONS) - {"model_id", "sink"}
        if unknown:
            raise TypeError(f"execute() got unexpected keyword argument(s) {sorted(unknown)}; sampling options "
                            f"are {list(SAMPLING_OPTIONS)}, plus model_id= and sink=")
        sid = session_id if session_id is not None else self.current_session_id
        if sid is not None:
            check_session_id(sid)
            if not self.sessions.exists(sid):
                raise SessionNotFoundError(sid)
        options = {k: v for k, v in kwargs.items() if k in SAMPLING_OPTIONS and v is not None}
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        return Request(prompt=prompt, params=GenerationParams(max_tokens, temperature, options),
                       request_id=request_id or new_id(), session_id=sid, model_id=kwargs.get("model_id"))

    async def _route(self, forced: Optional[str]):
        if not self._models:
            raise NoModelHookedError("no model is hooked: await client.hook_model(ModelType..., ...) first")
        if forced is not None and forced not in self._models:
            raise NoModelHookedError(f"model_id {forced!r} is not hooked; hooked: {list(self._models)}")
        results = await asyncio.gather(*(run_check(a) for a in self._agents))
        checks = [{"agent": a.name, "result": r} for a, r in zip(self._agents, results)]
        return decide(list(self._models.values()), checks, forced_model_id=forced), checks

    async def _run(self, request: "Request", sink: Optional[StreamSink], stream: bool) -> dict:
        """Route, call, fall back, store. Runs on the package loop."""
        decision, checks = await self._route(request.model_id)
        history = (self.sessions.history(request.session_id, limit=self.max_history_messages)
                   if request.session_id else [])
        if request.session_id:
            self.sessions.append_message(request.session_id, "user", request.prompt,
                                         request_id=request.request_id)
        failures: list[str] = []
        tried: set[str] = set()
        while True:
            backend = self._models[decision.model_id]
            params = request.params
            if params.max_tokens is None:
                params = replace(params, max_tokens=backend.default_max_tokens())
            fitted = fit_history(history, request.prompt, context_window=backend.context_window or 2048,
                                 max_tokens=params.max_tokens, count=backend.estimate_tokens,
                                 overhead=backend.message_overhead())
            price = self.prices.for_backend(backend)
            blocked = self._over_budget(backend, price, fitted, params, request.session_id)
            if blocked is not None:
                tried.add(backend.model_id)
                decision = self._skip_over_budget(decision, backend, blocked, tried, failures)
                continue
            call = Call(backend, replace(request, params=params), decision, checks, fitted, price)
            try:
                return await call.run(sink if stream else None, stream, self._store_reply)
            except BeforeFirstToken as exc:
                tried.add(backend.model_id)
                failures.append(f"{backend.model_id}: {exc.summary}")
                remaining = [m for m in decision.candidates if m not in tried and m in self._models]
                if not exc.retryable or not remaining:
                    raise ModelCallError(
                        "no model could answer: " + "; ".join(failures), model_id=backend.model_id
                    ) from exc.__cause__
                decision = decision.fell_back(backend.model_id, exc.summary, remaining[0])

    def _over_budget(self, backend: ModelBackend, price: Optional[Price], fitted, params: GenerationParams,
                     session_id: Optional[str]):
        """None if ``backend`` may be called under the budgets, else ``(why, budget status, worst case USD)``."""
        if price is not None and price.source == "local":
            return None
        max_out = params.max_tokens or backend.default_max_tokens() or \
            max(1, (backend.context_window or 4096) - fitted.used)
        return self.budgets.check_call(price, fitted.used, max_out, session_id)

    def _skip_over_budget(self, decision, backend: ModelBackend, blocked, tried: set, failures: list):
        """The decision for the next candidate after ``backend`` was over budget; BudgetExceededError if none."""
        why, status, worst = blocked
        remaining = [m for m in decision.candidates if m not in tried and m in self._models]
        if not remaining:
            local = any(m.target == "local" for m in self._models.values())
            raise BudgetExceededError(
                f"{backend.model_id} not called: {why}"
                + ("; no local model is hooked to take the request" if not local else "")
                + (f"; earlier: {'; '.join(failures)}" if failures else ""),
                budget=status.as_dict() if status else None, worst_case_usd=worst, model_id=backend.model_id)
        failures.append(f"{backend.model_id}: over budget")
        return decision.skipped(backend.model_id, f"over budget: {why}", remaining[0],
                                self._models[remaining[0]].target)

    def _store_reply(self, request: "Request", text: str, response: dict, partial: bool) -> None:
        if text or (response.get("metrics") or {}).get("input_tokens") is not None:
            try:  # bookkeeping must never cost the reply
                usage_log.record(self.sessions, response, (response.get("routing_decision") or {}).get("target"),
                                 partial)
            except Exception as exc:  # noqa: BLE001
                import warnings

                warnings.warn(f"oblix_nb: could not log the usage of request {request.request_id}: "
                              f"{describe_error(exc)}", RuntimeWarning, stacklevel=2)
        if not request.session_id or (partial and not text):
            return
        self.sessions.append_message(
            request.session_id, "assistant", text, model_id=response["model_id"],
            metrics=response["metrics"], routing=response["routing_decision"], partial=partial,
            request_id=request.request_id)

    async def _chat(self, prompt: str, *, session_id: Optional[str], **kwargs: Any) -> dict:
        """Interactive chat: the notebook's chat handler if set, else a terminal prompt loop."""
        sid = session_id or self.current_session_id
        if sid is None:
            sid = await self.create_session(title=f"Chat: {prompt[:40]}" if isinstance(prompt, str) else None)
        if self.chat_handler is not None:
            return await self.chat_handler(self, prompt, sid, **kwargs)
        next_prompt: Optional[str] = prompt
        while True:
            if next_prompt and next_prompt.strip():
                try:
                    await self.execute(next_prompt, session_id=sid, **kwargs)
                except ModelCallError as exc:
                    print(f"[error] {exc}", file=sys.stderr)
            try:
                next_prompt = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            if next_prompt.strip().lower() in ("exit", "quit"):
                break
        return {"session_id": sid}

    async def shutdown(self) -> None:
        """Close what this client opened: model clients, the embedded model, agent samplers. Idempotent."""
        async def close() -> None:
            models, self._models = list(self._models.values()), {}
            for backend in models:
                await backend.aclose()
        await runtime.to_loop(close())
        started, self._started_agents = self._started_agents, []
        for agent in started:
            stop = getattr(agent, "stop", None)
            if callable(stop):
                stop()


@dataclass
class Request:
    prompt: str
    params: GenerationParams
    request_id: str
    session_id: Optional[str]
    model_id: Optional[str] = None


class BeforeFirstToken(Exception):
    """A model failed before its first token; ``retryable`` if the next candidate should be tried."""

    def __init__(self, summary: str, retryable: bool):
        super().__init__(summary)
        self.summary = summary
        self.retryable = retryable


class Call:
    """One attempt at one model: streams, measures, stores the reply (or the partial one)."""

    def __init__(self, backend: ModelBackend, request: Request, decision, checks: list, fitted,
                 price: Optional[Price] = None):
        self.backend, self.request, self.decision, self.checks, self.fitted = \
            backend, request, decision, checks, fitted
        self.price = price
        self.pieces: list[str] = []
        self.first_token_at: Optional[float] = None
        self.usage = Usage(input_source="none", output_source="none")

    def response(self, end: float, partial: bool) -> dict:
        b, u = self.backend, self.usage
        total = end - self.t0
        ttft = (self.first_token_at - self.t0) if self.first_token_at is not None else None
        output_tokens = u.output_tokens
        gen_time = total - (ttft or 0.0)
        tps = (output_tokens / gen_time) if output_tokens and gen_time > 0 else (
            output_tokens / total if output_tokens and total > 0 else 0.0)
        metrics = {
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
        metrics.update(reply_cost(self.price, u))
        out = {
            "request_id": self.request.request_id, "model_id": b.model_id, "response": "".join(self.pieces),
            "metrics": metrics, "routing_decision": self.decision.as_dict(), "agent_checks": self.checks,
            "session_id": self.request.session_id,
        }
        if partial:
            out["partial"] = True
        return out

    async def run(self, sink: Optional[StreamSink], stream: bool, store) -> dict:
        self.started = utcnow()
        self.t0 = time.perf_counter()
        if sink is not None:
            sink.start({"model_id": self.backend.model_id, "request_id": self.request.request_id,
                        "session_id": self.request.session_id, "routing": self.decision.as_dict()})
        try:
            if stream:
                await self._stream(sink)
            else:
                await self._complete()
        except BeforeFirstToken:
            raise
        except BaseException as exc:
            end = time.perf_counter()
            if self.pieces and self.usage.output_tokens is None:  # cut before the backend could count
                self.usage = Usage(None, self.backend.estimate_tokens("".join(self.pieces)), "none",
                                   self.backend.estimate_source, "interrupted")
            partial = self.response(end, partial=True)
            store(self.request, partial["response"], partial, True)
            if sink is not None:
                sink.end(None, exc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                raise
            raise ModelCallError(
                f"{self.backend.model_id} failed after {len(self.pieces)} chunk(s): {describe_error(exc)}"
                + ("; the partial reply was kept, flagged partial" if self.pieces and self.request.session_id
                   else ""),
                model_id=self.backend.model_id, partial=partial["response"], response=partial) from exc
        response = self.response(self.end, partial=False)
        store(self.request, response["response"], response, False)
        if sink is not None:
            sink.end(response)
        return response

    def _fail_early(self, exc: BaseException) -> BeforeFirstToken:
        return BeforeFirstToken(describe_error(exc), is_connection_failure(exc))

    async def _stream(self, sink: Optional[StreamSink]) -> None:
        agen = self.backend.stream(self.fitted.messages, self.request.params)
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
                try:
                    item = await anext(agen)
                except StopAsyncIteration:
                    break
        finally:
            await agen.aclose()
            # The reply ends at its last token, not after any token counting the backend did afterwards.
            self.end = last_token_at or self.first_token_at or time.perf_counter()

    async def _complete(self) -> None:
        try:
            text, self.usage = await self.backend.complete(self.fitted.messages, self.request.params)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail_early(exc) from exc
        self.end = self.first_token_at = time.perf_counter()
        self.pieces.append(text)


class ExecutionStream:
    """Async iterator over one execution's text deltas; ``.response`` is set when it finishes."""

    def __init__(self, client: OblixClient, request: Request):
        self._client = client
        self._request = request
        self.response: Optional[dict] = None
        self._queue: Optional[asyncio.Queue] = None
        self._future = None

    def __aiter__(self) -> "ExecutionStream":
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue = queue = asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731

        class _Sink:
            def start(self, info): pass
            def write(self, text): put(("text", text))
            def end(self, response, error=None): pass

        async def run():
            try:
                put(("done", await self._client._run(self._request, _Sink(), True)))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the iterating task
                put(("error", exc))
                raise

        self._future = runtime.submit(run())

    async def __anext__(self) -> str:
        if self._queue is None:
            await self._start()
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

    async def __aenter__(self) -> "ExecutionStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
