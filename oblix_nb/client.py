"""OblixClient: the Oblix session API over a session store (SQLite, or PostgreSQL), plus hook_model / hook_agent / execute / shutdown."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional

from . import runtime
from ._util import check_session_id, describe_error, iso, new_id, utcnow
from .agents import BudgetAgent, ConnectivityAgent, ResourceMonitor, run_check
from .budget import Budgets
from .context import fit_history
from .errors import (BudgetExceededError, ModelCallError, NoModelHookedError, ReplyNotStoredError,
                     SessionNotFoundError, StructuredOutputError)
from .models import make_backend
from .models.base import SAMPLING_OPTIONS, GenerationParams, ModelBackend, ModelType, Usage, \
    is_connection_failure
from .pricing import Price, PriceBook, reply_cost
from .routing import decide
from .sessions import open_store
from .sessions import usage as usage_log
from .sessions.validate import check_text
from .streaming import StdoutSink, StreamSink, as_sink


def stdout_sink_factory(display_metrics: bool = True) -> StreamSink:
    return StdoutSink(display_metrics=display_metrics)


# Where a client streams when execute() gets no sink: stdout; oblix_nb.notebook swaps in cell output in a kernel.
default_sink_factory: Callable[[bool], Optional[StreamSink]] = stdout_sink_factory


CHAT_EXIT_WORDS = ("exit", "quit", "/exit", "/quit", ":q")
CHAT_HELP = ("Chatting in session {session_id}. Type a message and press Enter. To leave: type exit or quit, "
             "press Ctrl-D, or Ctrl-C at the prompt (Ctrl-C during a reply stops that reply).")


def _read_line(prompt: str) -> str:
    """``input(prompt)`` for the terminal chat, but a Ctrl-C is acted on within 0.1 s.

    The kernel may deliver the terminal's SIGINT to any thread that does not block it (a library's worker, an
    executor thread); CPython then only flags it for the main thread, which would sit in ``input()`` until
    the next Enter. Waiting with short ``select`` timeouts lets the main thread run the handler. Non-terminal
    input (a pipe, a notebook's stdin) and platforms without ``select`` on files use ``input()`` as is.
    """
    stdin = sys.stdin
    try:
        fd = stdin.fileno()
        interactive = os.name == "posix" and stdin.isatty()
    except (AttributeError, OSError, ValueError):
        interactive = False
    if not interactive:
        return input(prompt)
    import select

    sys.stdout.write(prompt)
    sys.stdout.flush()
    while not select.select([fd], [], [], 0.1)[0]:
        pass
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


@contextlib.contextmanager
def _sigint_raises():
    """While inside: Ctrl-C raises KeyboardInterrupt in the main thread (Python's default handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


_ALIAS_PREFIX = "alias:"
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


def default_home() -> Path:
    env = os.environ.get("OBLIX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".oblix"


class OblixClient:
    """One client for a local and a cloud model, whose conversations are durable, queryable data.

    ``home`` (or env ``OBLIX_HOME``, else ``~/.oblix``) holds ``sessions.db``, the default SQLite store.
    ``database_url`` (or env ``OBLIX_DATABASE_URL``) selects another store: ``postgresql://user@host/db`` for a
    shared PostgreSQL store (extra ``postgres``), or ``sqlite:PATH``. Constructing a client makes no network
    call beyond opening that store. Every session and message it writes records ``author`` (default env
    ``OBLIX_USER``, else the OS user).
    """

    def __init__(self, host: str = "localhost", port: int = 4321, config_path: Optional[str] = None, *,
                 home: Optional[str | os.PathLike] = None, database_url: Optional[str] = None,
                 author: Optional[str] = None):
        self.host = host
        self.port = port
        self.config_path = config_path
        self.home = Path(home).expanduser() if home is not None else default_home()
        url = database_url if database_url is not None else os.environ.get("OBLIX_DATABASE_URL") or None
        self.sessions = open_store(url, default_path=self.home / "sessions.db", author=author)
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

    def list_sessions(self, limit: int = 50, filter_metadata: dict = None, *,
                      author: Optional[str] = None) -> List[dict]:
        """Session summaries, newest ``updated_at`` first; ``author``: only the sessions that user created."""
        return self.sessions.summaries(limit=limit, filter_metadata=filter_metadata, author=author)

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
        """Full-text search over titles and message text (SQLite FTS5 or PostgreSQL tsvector); best first."""
        return self.sessions.search(query, limit=limit)

    # ------------------------------------------------------------------ model aliases (kept in the store)
    def set_model_alias(self, name: str, model_id: str) -> None:
        """Let ``name`` stand for ``model_id`` wherever a model id is taken (``execute(model_id=name)``,
        ``%%oblix --model name``). Kept in the session store, so it outlives the kernel; replaces an earlier
        alias of that name. ``name``: letters, digits, ``_ . -`` (no ``:``, so it never looks like a model id);
        ``model_id``: ``type:name`` of a known model type (it need not be hooked yet)."""
        if not isinstance(name, str) or not _ALIAS_RE.match(name):
            raise ValueError(f"invalid alias {name!r}: use letters, digits, '_', '.', '-' (at most 64, no ':')")
        if not isinstance(model_id, str) or ":" not in model_id:
            raise ValueError(f"an alias names a model id 'type:name' (e.g. 'llamacpp:smollm2-135m'), "
                             f"not {model_id!r}")
        kind, _, model_name = model_id.partition(":")
        ModelType.parse(kind)
        if not model_name.strip():
            raise ValueError(f"model id {model_id!r} has no model name")
        self.sessions.set_setting(_ALIAS_PREFIX + name, model_id)

    def remove_model_alias(self, name: str) -> bool:
        """Forget an alias. False if there was none."""
        if not isinstance(name, str) or not _ALIAS_RE.match(name):
            return False
        return self.sessions.delete_setting(_ALIAS_PREFIX + name)

    def model_aliases(self) -> dict[str, str]:
        """``{alias: model_id}``, sorted by alias."""
        return {key[len(_ALIAS_PREFIX):]: value for key, value in self.sessions.settings(_ALIAS_PREFIX).items()}

    def resolve_model_id(self, model_id: Optional[str]) -> Optional[str]:
        """``model_id`` itself if it is one (``type:name``) or None; the model an alias stands for; else
        NoModelHookedError naming the hooked models and the aliases."""
        if model_id is None or (isinstance(model_id, str) and ":" in model_id):
            return model_id
        if isinstance(model_id, str) and _ALIAS_RE.match(model_id):
            target = self.sessions.get_setting(_ALIAS_PREFIX + model_id)
            if isinstance(target, str):
                return target
        raise NoModelHookedError(f"model {model_id!r} is neither a model id (type:name) nor an alias; "
                                 f"hooked: {list(self._models)}, aliases: {self.model_aliases()}")

    # ------------------------------------------------------------------ DataFrames (pandas imported on call)
    def sessions_df(self, limit: Optional[int] = None, filter_metadata: dict = None, *,
                    author: Optional[str] = None):
        """One row per session (newest ``updated_at`` first), metadata keys expanded to columns.

        Columns: session_id, title, created_at, updated_at (UTC datetimes), message_count, author, cost_usd (the sum
        of its replies' known costs; NA when none is known), then one column per metadata key. ``limit=None``: all sessions; ``filter_metadata``/``author`` as in
        ``list_sessions``.
        """
        from .sessions.frames import sessions_df

        return sessions_df(self.sessions, limit=limit, filter_metadata=filter_metadata, author=author)

    def messages_df(self, session_ids: Optional[str | List[str]] = None, *, author: Optional[str] = None):
        """One row per message of ``session_ids`` (one id or a list; None: every session).

        Columns: session_id, session_title, message_id, role, content, timestamp (UTC), model_id,
        route_target, time_to_first_token, tokens_per_second, total_latency, input_tokens, output_tokens
        (nullable Int64), cost_usd (Float64; NA when unknown), partial (bool), request_id, author (who wrote it). role/model_id/route_target/author
        are categoricals. ``author``: only that user's messages.
        """
        from .sessions.frames import messages_df

        return messages_df(self.sessions, session_ids=session_ids, author=author)

    # ------------------------------------------------------------------ cost and budgets
    # Views of the current store (``sessions`` may be swapped for another store, e.g. by %config OblixMagics.home).
    @property
    def prices(self) -> PriceBook:
        return PriceBook(self.sessions)

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.sessions)

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

    def stats(self, by: str = "model", since: Any = None, until: Any = None, filter_metadata: dict = None):
        """Request statistics per ``by`` ("model", "route", "session" or "day") as a DataFrame, computed in
        the store's SQL (messages are not loaded into pandas).

        Columns: requests, errors, partial, fallbacks, ttft_p50, ttft_p95 (seconds), tokens_per_second_p50,
        input_tokens, output_tokens, cost_usd (sum of known costs; NaN when none is known) and cost_unknown
        (replies whose cost is unknown); sessions also get their title. ``since``/``until`` (inclusive /
        exclusive): a datetime, a date, an ISO string or an age like ``"7d"``/``"12h"``; ``filter_metadata``
        as in ``list_sessions``. By day, days without requests are rows of zeros. See ``oblix_nb.sessions.stats``
        for exactly what each column counts.
        """
        from .sessions import stats

        lo, hi = stats.window(since, until)
        return stats.stats_frame(self.sessions.stats(by, lo, hi, filter_metadata), by, lo, hi)

    def plot_stats(self, since: Any = None, until: Any = None, filter_metadata: dict = None, **kwargs: Any):
        """A dashboard of matplotlib figures over the store's requests (see ``oblix_nb.plots.dashboard``):
        TTFT per model, TTFT vs input tokens, tokens and cost per day, route mix and fallback rate.
        Returns ``{name: Figure}``; matplotlib is imported only here."""
        from .plots import dashboard

        return dashboard(self, since=since, until=until, filter_metadata=filter_metadata, **kwargs)

    # ------------------------------------------------------------------ orchestration
    def _init_orchestration(self) -> None:
        self._models: dict[str, ModelBackend] = {}   # model_id -> backend, in hook order
        self._hook_specs: dict[str, Any] = {}        # model_id -> cluster.ModelSpec (how to hook it again)
        self._agents: list[Any] = []
        self._started_agents: list[Any] = []         # samplers this client started (and so stops)
        # Looked up at call time, so the notebook layer's factory (set by %load_ext in a kernel) applies here too.
        self.sink_factory: Callable[[bool], Optional[StreamSink]] = lambda display_metrics: default_sink_factory(
            display_metrics)
        self.chat_handler: Optional[Callable[..., Awaitable[dict]]] = None  # notebook layer may set one
        self.max_history_messages = 1000
        self.default_max_tokens: Optional[int] = None  # used when execute() gets no max_tokens
        # A streaming reply is persisted (flagged partial) at least this often, in seconds; None: only at the end.
        self.checkpoint_interval: Optional[float] = 1.0

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

        kwargs: ``base_url`` (OPENAI, CLAUDE), ``target`` ("local"/"cloud"), ``context_window``, ``timeout``,
        ``model_path``/``n_ctx``/``n_threads`` (LLAMACPP), ``keep_alive`` (OLLAMA), ``prompt_cache`` (CLAUDE).
        CLAUDE checks with the free Models API (``GET /v1/models/{model}``), never a billed message.
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
        from .cluster import ModelSpec

        self._hook_specs[backend.model_id] = ModelSpec.of(model_type, model_name, endpoint, kwargs)  # no api_key
        self._sync_agent_endpoints()
        return True

    async def unhook_model(self, model_id: str) -> bool:
        """Unhook a model and close what it opened. False if it was not hooked."""
        async def unhook() -> bool:
            backend = self._models.pop(model_id, None)
            self._hook_specs.pop(model_id, None)
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

        Extra keyword arguments: ``model_id`` (force a hooked model; an alias works too), ``sink`` (a StreamSink
        or callable for streamed text; default stdout, or cell output in a notebook), ``system`` (a system
        message for this call), ``schema`` (structured output, below), and sampling options
        ``top_p, top_k, seed, stop, presence_penalty, frequency_penalty, repeat_penalty``.

        ``schema``: a JSON Schema dict, a pydantic model class or a spec like ``"label, score float"`` (see
        :mod:`oblix_nb.structured`). The model is told the schema, the backend enforces it where it can
        (llama.cpp grammar, OpenAI ``response_format``, Ollama ``format``), and the reply is parsed and validated:
        ``response["parsed"]`` holds the value (a pydantic instance for a pydantic class). An invalid reply is
        retried once with the validation error; if that fails too, StructuredOutputError (both replies stay
        stored in the session).
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
        if request.schema is not None:
            return await runtime.to_loop(self._run_structured(request, sink, stream))
        return await runtime.to_loop(self._run(request, sink, stream))

    async def _run_structured(self, request: "Request", sink: Optional[StreamSink], stream: bool) -> dict:
        """``_run`` with the schema enforced and the reply parsed: one retry on an invalid reply."""
        response = await self._run(request, sink, stream)
        try:
            response["parsed"] = request.schema.parse(response["response"])
            return response
        except StructuredOutputError as first:
            prior = [] if request.session_id else [{"role": "user", "content": request.prompt},
                                                   {"role": "assistant", "content": response["response"]}]
            retry = replace(request, prompt=retry_prompt(first), request_id=new_id(), prior=prior)
        response = await self._run(retry, sink, stream)
        try:
            response["parsed"] = retry.schema.parse(response["response"])
        except StructuredOutputError as second:
            raise StructuredOutputError(
                f"the reply of {response['model_id']} does not match the schema, even after one retry: {second}",
                text=response["response"], response=response) from None
        return response

    async def map(self, data: Any, prompt: Any, *, schema: Any = None, model_id: Optional[str] = None,
                  concurrency: Optional[int] = None, temperature: Optional[float] = None,
                  max_tokens: Optional[int] = None, system: Optional[str] = None,
                  session_id: Optional[str] = None, cache: bool = True, on_error: str = "record",
                  progress: bool = True, **options: Any):
        """Run ``prompt`` over every row of ``data``; returns a DataFrame on the input's index.

        See :func:`oblix_nb.batch.map_frame` for the arguments, the result's columns, caching and resuming.
        ``map_sync`` is the same call for code without an event loop at hand (a cell, a script).
        A Dask DataFrame gives a Dask DataFrame, computed partition by partition on the workers, each with its
        own client built from this one's spec, all logging to the shared store (see :mod:`oblix_nb.cluster`).
        """
        from .batch import map_frame
        from .cluster import is_dask_frame, map_dask

        if is_dask_frame(data):
            return map_dask(
                self, data, prompt, schema=schema, model_id=self.resolve_model_id(model_id),
                concurrency=concurrency, temperature=temperature, max_tokens=max_tokens, system=system,
                session_id=session_id, cache=cache, on_error=on_error, **options)

        return await map_frame(
            self, data, prompt, schema=schema, model_id=self.resolve_model_id(model_id), concurrency=concurrency,
            temperature=temperature, max_tokens=max_tokens, system=system, session_id=session_id, cache=cache,
            on_error=on_error, progress=progress, **options)

    def map_sync(self, data: Any, prompt: Any, **kwargs: Any):
        """``map()`` from synchronous code, e.g. a notebook cell: runs on the package's loop thread (no nested
        event loop). A kernel interrupt stops the batch; finished rows are stored and the next call resumes."""
        from .batch import map_frame_sync
        from .cluster import is_dask_frame, map_dask

        if runtime.in_loop_thread():
            raise RuntimeError("map_sync() called from the package's loop thread; await map() instead")
        if is_dask_frame(data):  # a lazy Dask DataFrame: nothing runs here until .compute()
            return map_dask(self, data, prompt, **{**kwargs, "model_id": self.resolve_model_id(kwargs.get("model_id"))})
        return map_frame_sync(self, data, prompt, **kwargs)

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
        check_text(prompt, "prompt")  # a lone surrogate could be neither stored nor sent
        unknown = set(kwargs) - set(SAMPLING_OPTIONS) - {"model_id", "sink", "schema", "system"}
        if unknown:
            raise TypeError(f"execute() got unexpected keyword argument(s) {sorted(unknown)}; sampling options "
                            f"are {list(SAMPLING_OPTIONS)}, plus model_id=, sink=, system= and schema=")
        params = self._params(temperature, max_tokens, kwargs)
        system = kwargs.get("system")
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a string, not {type(system).__name__}")
        schema = None
        if kwargs.get("schema") is not None:
            from .structured import compile_schema

            schema = compile_schema(kwargs["schema"])
            system = "\n\n".join(s for s in (system, schema.instruction()) if s)
            params.schema = schema.json_schema
        sid = session_id if session_id is not None else self.current_session_id
        if sid is not None:
            check_session_id(sid)
            if not self.sessions.exists(sid):
                raise SessionNotFoundError(sid)
        return Request(prompt=prompt, params=params, request_id=request_id or new_id(), session_id=sid,
                       model_id=self.resolve_model_id(kwargs.get("model_id")), system=system or None,
                       schema=schema)

    def _params(self, temperature, max_tokens, options: dict) -> GenerationParams:
        """Checked generation parameters (sampling options taken from ``options``, other keys ignored)."""
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens <= 0):
            raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 5):
            raise ValueError(f"temperature must be a number between 0 and 5, not {temperature!r}")
        sampling = {k: v for k, v in options.items() if k in SAMPLING_OPTIONS and v is not None}
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        return GenerationParams(max_tokens, temperature, sampling)

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
            # What the model sees is stored: a request's system message (system=, a schema's or a format's
            # instruction) is kept in the session before its prompt, once per session (a session whose history
            # already has it does not get it again), tagged with the request that brought it.
            turn = [{"role": "user", "content": request.prompt, "request_id": request.request_id}]
            if request.system and not _has_system(history, request.system):
                turn.insert(0, {"role": "system", "content": request.system, "request_id": request.request_id})
            self.sessions.append_messages(request.session_id, turn)
        # Such an instruction applies to its own request only: a later question in the session is not held to an
        # earlier cell's schema or format. System messages written otherwise (no request id) stay in force.
        history = [m for m in history if not _request_instruction(m)]
        return await self._attempts(request, decision, checks, history, sink, stream, self._store_reply)

    async def _attempts(self, request: "Request", decision, checks: list, history: list[dict],
                        sink: Optional[StreamSink], stream: bool, store) -> dict:
        """Call the decided model; on a failure before its first token, the next candidate (routing's
        fallback order). ``history`` comes before the prompt (plus ``request.prior`` and ``request.system``);
        ``store(request, text, response, partial, message_id, replace)`` records the reply (see _store_reply)."""
        history = list(history) + list(request.prior)
        if request.system and not _has_system(history, request.system):
            history.insert(0, {"role": "system", "content": request.system})
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
                return await call.run(sink if stream else None, stream, store, self.checkpoint_interval)
            except BeforeFirstToken as exc:
                tried.add(backend.model_id)
                failures.append(f"{backend.model_id}: {exc.summary}")
                remaining = [m for m in decision.candidates if m not in tried and m in self._models]
                if not exc.retryable or not remaining:
                    raise ModelCallError(
                        "no model could answer: " + "; ".join(failures), model_id=backend.model_id
                    ) from exc.__cause__
                decision = decision.fell_back(backend.model_id, exc.summary, remaining[0])
            finally:
                if call.final is not None:  # a reply (finished or cut short) exists: log its usage once
                    self._log_usage(*call.final)

    def _log_usage(self, response: dict, partial: bool) -> None:
        """One usage-log row per reply (spend for budgets, ``usage()``); bookkeeping never costs the reply."""
        if not response.get("response") and (response.get("metrics") or {}).get("input_tokens") is None:
            return
        try:
            usage_log.record(self.sessions, response, (response.get("routing_decision") or {}).get("target"),
                             partial)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"oblix_nb: could not log the usage of request {response.get('request_id')}: "
                          f"{describe_error(exc)}", RuntimeWarning, stacklevel=2)

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

    def _store_reply(self, request: "Request", text: str, response: dict, partial: bool,
                     message_id: Optional[str] = None, replace: bool = False) -> None:
        """Store a reply (finished, partial, or a checkpoint of it) as message ``message_id``; ``replace``: an
        earlier checkpoint may hold that id, so the row is updated in place instead of appended."""
        if not request.session_id or (partial and not text):
            return
        write = self.sessions.upsert_message if replace else self.sessions.append_message
        write(request.session_id, "assistant", text, id=message_id, model_id=response["model_id"],
              metrics=response["metrics"], routing=response["routing_decision"], partial=partial,
              request_id=request.request_id)

    async def _chat(self, prompt: str, *, session_id: Optional[str], **kwargs: Any) -> dict:
        """Interactive chat: the notebook's chat handler if set, else a terminal prompt loop."""
        sid = session_id or self.current_session_id
        if sid is None:
            sid = await self.create_session(title=f"Chat: {prompt[:40]}" if isinstance(prompt, str) else None)
        if self.chat_handler is not None:
            return await self.chat_handler(self, prompt, sid, **kwargs)
        if runtime.in_loop_thread():
            raise RuntimeError("execute(chat=True) reads the terminal; call it from your own code, not from "
                               "the package's loop")
        return self._terminal_chat(prompt, sid, kwargs)

    def _terminal_chat(self, prompt: Optional[str], sid: str, kwargs: dict) -> dict:
        """The terminal chat loop: ``you>`` prompts until ``exit``/``quit``, Ctrl-D or Ctrl-C at the prompt.

        It owns the terminal while it runs, so it reads stdin and waits for each reply synchronously (blocking
        the caller's event loop, which has nothing else to do meanwhile; replies run on the package loop).
        Ctrl-C during a reply stops that reply (kept, flagged partial) and returns to the prompt; Ctrl-C at the
        prompt ends the chat. SIGINT raises KeyboardInterrupt here even under ``asyncio.run``, whose own
        handler would only cancel the task once ``input()`` returned.
        """
        print(CHAT_HELP.format(session_id=sid), file=sys.stderr, flush=True)
        next_prompt: Optional[str] = prompt
        with _sigint_raises():
            while True:
                if next_prompt and next_prompt.strip():
                    try:
                        runtime.run(self.execute(next_prompt, session_id=sid, **kwargs))
                    except KeyboardInterrupt:
                        print("(reply stopped; what arrived was kept, flagged partial)", file=sys.stderr,
                              flush=True)
                    except ReplyNotStoredError as exc:
                        # The reply was shown as it streamed; say it is not in the session, keep chatting.
                        print(f"[not stored] {exc}", file=sys.stderr, flush=True)
                    except (ModelCallError, BudgetExceededError) as exc:
                        print(f"[error] {exc}", file=sys.stderr, flush=True)
                try:
                    next_prompt = _read_line("you> ")
                except (EOFError, KeyboardInterrupt):
                    print(file=sys.stderr)
                    break
                if next_prompt.strip().lower() in CHAT_EXIT_WORDS:
                    break
        print(f"(chat ended; the conversation is session {sid})", file=sys.stderr, flush=True)
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
    session_id: Optional[str]
    model_id: Optional[str] = None
    system: Optional[str] = None        # an extra system message (the schema instruction goes here too)
    schema: Any = None                  # a compiled oblix_nb.structured.Schema
    prior: list = field(default_factory=list)  # messages before the prompt that are not in the session


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
                 price: Optional[Price] = None):
        self.backend, self.request, self.decision, self.checks, self.fitted = \
            backend, request, decision, checks, fitted
        self.price = price
        self.final: Optional[tuple[dict, bool]] = None  # (response, partial) once the reply is complete or cut
        self.pieces: list[str] = []
        self.first_token_at: Optional[float] = None
        self.usage = Usage(input_source="none", output_source="none")
        self.message_id = new_id()  # the reply's row: checkpoints and the final reply share it
        self.checkpoint: Optional[Checkpoint] = None

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

    async def run(self, sink: Optional[StreamSink], stream: bool, store,
                  checkpoint_interval: Optional[float] = None) -> dict:
        self.started = utcnow()
        self.t0 = time.perf_counter()
        if stream and checkpoint_interval and self.request.session_id:
            self.checkpoint = Checkpoint(self, store, checkpoint_interval)
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

    def save(self, store, response: dict, partial: bool) -> Optional[ReplyNotStoredError]:
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
            text, self.usage = await self.backend.complete(self.fitted.messages, self.request.params)
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

    def __init__(self, call: Call, store, interval: float):
        self.call, self.store, self.interval = call, store, interval
        self.due: Optional[float] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.attempted = False   # a row may exist: the final reply must replace it
        self.saved = 0           # pieces persisted so far
        self.writes = 0
        self.error: Optional[BaseException] = None

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
