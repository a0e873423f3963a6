"""OblixClient: the Oblix session API over a session store (SQLite, or PostgreSQL), plus hook_model / hook_agent /
execute / shutdown. The execution engine is :mod:`oblix_nb.execution`, the terminal chat :mod:`oblix_nb.terminal`;
the client holds the state (store, hooked models and agents, settings) and delegates to them."""
from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import runtime
from ._util import check_session_id
from .agents import BudgetAgent, ConnectivityAgent, ResourceMonitor, run_check
from .budget import Budgets
from .errors import NoModelHookedError

# Re-exported: these lived here before the engine had its own module.
from .execution import BeforeFirstToken, Call, Checkpoint, Engine, ExecutionStream, Request, retry_prompt  # noqa: F401
from .models import make_backend
from .models.base import ModelBackend, ModelType
from .pricing import PriceBook
from .sessions import open_store
from .sessions import usage as usage_log
from .streaming import StdoutSink, StreamSink, as_sink
from .terminal import CHAT_EXIT_WORDS, CHAT_HELP, terminal_chat  # noqa: F401


def stdout_sink_factory(display_metrics: bool = True) -> StreamSink:
    return StdoutSink(display_metrics=display_metrics)


# Where a client streams when execute() gets no sink: stdout; oblix_nb.notebook swaps in cell output in a kernel.
default_sink_factory: Callable[[bool], StreamSink | None] = stdout_sink_factory


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

    def __init__(self, host: str = "localhost", port: int = 4321, config_path: str | None = None, *,
                 home: str | os.PathLike | None = None, database_url: str | None = None,
                 author: str | None = None):
        self.host = host
        self.port = port
        self.config_path = config_path
        self.home = Path(home).expanduser() if home is not None else default_home()
        url = database_url if database_url is not None else os.environ.get("OBLIX_DATABASE_URL") or None
        self.sessions = open_store(url, default_path=self.home / "sessions.db", author=author)
        self.current_session_id: str | None = None
        self._init_orchestration()

    def __repr__(self) -> str:
        return f"<OblixClient home={str(self.home)!r} models={self.list_models()!r}>"

    # ------------------------------------------------------------------ sessions (the reference API)
    async def create_session(self, title: str | None = None, initial_context: dict | None = None,
                             metadata: dict | None = None) -> str:
        """Create a session; returns its id."""
        return self.sessions.create(title=title, context=initial_context, metadata=metadata)

    async def create_and_use_session(self, title: str | None = None, initial_context: dict | None = None,
                                     metadata: dict | None = None) -> str:
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

    def list_sessions(self, limit: int = 50, filter_metadata: dict | None = None, *,
                      author: str | None = None) -> list[dict]:
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

    async def copy_session(self, session_id: str, new_title: str | None = None,
                           use_immediately: bool = False) -> str:
        """Copy a session (new ids, same contents); returns the new id."""
        copy_id = self.sessions.copy(session_id, new_title=new_title)
        if use_immediately:
            self.current_session_id = copy_id
        return copy_id

    async def merge_sessions(self, session_ids: list[str], title: str | None = None,
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

    def search_sessions(self, query: str, limit: int = 20) -> list[dict]:
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

    def resolve_model_id(self, model_id: str | None) -> str | None:
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
    def sessions_df(self, limit: int | None = None, filter_metadata: dict | None = None, *,
                    author: str | None = None):
        """One row per session (newest ``updated_at`` first), metadata keys expanded to columns.

        Columns: session_id, title, created_at, updated_at (UTC datetimes), message_count, author, cost_usd (the sum
        of its replies' known costs; NA when none is known), then one column per metadata key. ``limit=None``: all sessions; ``filter_metadata``/``author`` as in
        ``list_sessions``.
        """
        from .sessions.frames import sessions_df

        return sessions_df(self.sessions, limit=limit, filter_metadata=filter_metadata, author=author)

    def messages_df(self, session_ids: str | list[str] | None = None, *, author: str | None = None):
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

    def set_price(self, model: str, input: float, output: float, cached: float | None = None,
                  cache_write: float | None = None) -> dict:
        """Set a model's price in USD per million tokens (overrides the shipped table; see :mod:`oblix_nb.pricing`).

        ``model``: a model id (``"claude:claude-haiku-4-5"``) or a bare model name. ``cached``: input read from
        the provider's prompt cache; ``cache_write``: input written to it (both default to ``input``). Kept in
        the session store, so every kernel sharing it uses the price. Returns the price as a dict.
        """
        return self.prices.set(model, input, output, cached, cache_write).as_dict()

    def price_of(self, model_id: str) -> dict | None:
        """The price that applies to a hooked model (a dict with its ``source``), or None if unknown."""
        backend = self._models.get(model_id)
        price = self.prices.for_backend(backend) if backend is not None else self.prices.lookup(
            model_id, model_id.split(":", 1)[-1], "cloud")
        return price.as_dict() if price is not None else None

    def set_budget(self, usd: float | None, per: str = "day") -> dict | None:
        """Cap cloud spend: ``usd`` per ``"day"`` (since local midnight), ``"session"`` or ``"total"``; None removes
        that budget. Kept in the session store (it holds for every kernel sharing it). Hooks a BudgetAgent if
        none is hooked. A cloud call whose worst case exceeds what is left is routed to a local model, or refused
        with BudgetExceededError when none is hooked (see :mod:`oblix_nb.budget`). Returns the budget's status
        ``{per, usd, spent_usd, remaining_usd}`` (None when removed)."""
        status = self.budgets.set(usd, per)
        if status is not None and self._agent(BudgetAgent) is None:
            self.hook_agent(BudgetAgent())
        return status

    def budget_status(self, session_id: str | None = None) -> list[dict]:
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

    def stats(self, by: str = "model", since: Any = None, until: Any = None, filter_metadata: dict | None = None):
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

    def discover_models(self, **kwargs: Any):
        """Models already on this machine (Ollama's store, the Hugging Face cache, LM Studio, a running Ollama;
        loopback servers with ``probe_servers=True``) as a pandas DataFrame, one hookable ``model_id`` per row:
        see :func:`oblix_nb.models.discover.discover_models` for the columns and keywords."""
        from .models.discover import discover_models

        return discover_models(**kwargs)

    def plot_stats(self, since: Any = None, until: Any = None, filter_metadata: dict | None = None, **kwargs: Any):
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
        self.sink_factory: Callable[[bool], StreamSink | None] = lambda display_metrics: default_sink_factory(
            display_metrics)
        self.chat_handler: Callable[..., Awaitable[dict]] | None = None  # notebook layer may set one
        self.max_history_messages = 1000
        self.default_max_tokens: int | None = None  # used when execute() gets no max_tokens
        # A streaming reply is persisted (flagged partial) at least this often, in seconds; None: only at the end.
        self.checkpoint_interval: float | None = 1.0

    @property
    def models(self) -> dict:
        """Hooked backends by model id, in hook order (read-only view)."""
        return dict(self._models)

    @property
    def model_specs(self) -> dict:
        """How each hooked model was hooked, by model id: a :class:`oblix_nb.cluster.ModelSpec` (type, name,
        endpoint, plain options; never the API key), what a Dask worker needs to hook it again. A copy."""
        return dict(self._hook_specs)

    @property
    def engine(self) -> Engine:
        """The execution engine over this client (:class:`oblix_nb.execution.Engine`): build_request, route,
        params, run. A light view: it reads this client's store, models, agents and settings at call time."""
        return Engine(self)

    def list_models(self) -> dict:
        """``{model_type_value: [model_name, ...]}`` of hooked models."""
        out: dict[str, list[str]] = {}
        for backend in self._models.values():
            out.setdefault(backend.model_type.value, []).append(backend.model_name)
        return out

    async def hook_model(self, model_type: ModelType | str, model_name: str, endpoint: str | None = None,
                         api_key: str | None = None, **kwargs: Any) -> bool:
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
    async def execute(self, prompt: str, temperature: float | None = None, max_tokens: int | None = None,
                      request_id: str | None = None, display_metrics: bool = True,
                      session_id: str | None = None, stream: bool = True, chat: bool = False,
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
        stored in the session). The response also holds the answer's ``confidence`` (``<field>_confidence`` per
        enum field when there are several; NaN when the model gives no log-probabilities).

        ``cascade=[model_a, model_b, ...]`` with ``min_confidence=0.8``: the first model answers; below the
        threshold (or invalid) the next one does (see :mod:`oblix_nb.cascade`); the response adds ``escalated``,
        ``cascade_note`` and ``cascade`` (every attempt: model, confidence, cost, error).
        """
        if chat:
            return await self._chat(prompt, temperature=temperature, max_tokens=max_tokens,
                                    display_metrics=display_metrics, session_id=session_id, stream=stream,
                                    **kwargs)
        from .cascade import check_cascade, execute_request

        cascade, min_confidence = check_cascade(self, kwargs.pop("cascade", None), kwargs.pop("min_confidence", None),
                                                kwargs.get("model_id"))
        engine = self.engine
        request = engine.build_request(prompt, temperature=temperature, max_tokens=max_tokens,
                                       request_id=request_id, session_id=session_id, options=kwargs)
        sink = None
        if stream:
            sink = as_sink(kwargs.get("sink")) if kwargs.get("sink") is not None else \
                self.sink_factory(display_metrics)
        return await runtime.to_loop(execute_request(self, request, sink, stream, cascade, min_confidence))

    async def map(self, data: Any, prompt: Any, *, schema: Any = None, model_id: str | None = None,
                  concurrency: int | None = None, temperature: float | None = None,
                  max_tokens: int | None = None, system: str | None = None,
                  session_id: str | None = None, cache: bool = True, on_error: str = "record",
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

    async def evaluate(self, data: Any, prompt: Any, *, truth: str, **kwargs: Any):
        """Which model -- or cascade, at which threshold -- is good enough for a labelled task: see
        :func:`oblix_nb.evaluation.evaluate` (``cascade=``, ``thresholds=``, ``models=``, ``schema=`` ...)."""
        from .evaluation import evaluate

        return await evaluate(self, data, prompt, truth=truth, **kwargs)

    def evaluate_sync(self, data: Any, prompt: Any, *, truth: str, **kwargs: Any):
        """``evaluate()`` from synchronous code (a cell, a script)."""
        from .evaluation import evaluate_sync

        return evaluate_sync(self, data, prompt, truth=truth, **kwargs)

    def plot_evaluation(self, result: Any, theme: str = "light", x: str = "cost", ax: Any = None):
        """Accuracy against cost (or latency) of an ``evaluate()`` table: see
        :func:`oblix_nb.evaluation.plot_evaluation`."""
        from .evaluation import plot_evaluation

        return plot_evaluation(result, theme=theme, x=x, ax=ax)

    def stream(self, prompt: str, **kwargs: Any) -> ExecutionStream:
        """``async for text in client.stream(prompt, ...)``: the reply's deltas as they arrive.

        Takes execute()'s arguments. After the loop, ``.response`` holds execute()'s dict. Leaving the loop
        early (break, cancel) stops the upstream request and stores what arrived, flagged partial.
        """
        engine = self.engine
        request = engine.build_request(prompt, temperature=kwargs.pop("temperature", None),
                                       max_tokens=kwargs.pop("max_tokens", None),
                                       request_id=kwargs.pop("request_id", None),
                                       session_id=kwargs.pop("session_id", None), options=kwargs)
        return ExecutionStream(engine, request)

    def _over_budget(self, backend: ModelBackend, price, fitted, params, session_id: str | None):
        """``engine.over_budget`` (kept for bench/cost.py)."""
        return self.engine.over_budget(backend, price, fitted, params, session_id)

    async def _chat(self, prompt: str, *, session_id: str | None, **kwargs: Any) -> dict:
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

    def _terminal_chat(self, prompt: str | None, sid: str, kwargs: dict) -> dict:
        """The terminal chat loop (see :func:`oblix_nb.terminal.terminal_chat`); each turn is ``self.execute``."""
        return terminal_chat(self, prompt, sid, kwargs)

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

