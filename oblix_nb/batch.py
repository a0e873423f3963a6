"""Prompts over DataFrames: ``client.map()`` -- structured, routed, concurrent, durable and resumable.

One call runs a prompt template over every row of a pandas DataFrame (or a Series, or a list of dicts/strings)
and returns a DataFrame on the input's index. The pieces:

* :class:`RowTable` -- the input as rows of template fields, and the index to put results on.
* :class:`PromptTemplate` -- ``{column}`` fields, brace-safe like ``%%oblix``: only ``{name}`` where ``name`` is a
  field is replaced; ``{{name}}`` gives a literal ``{name}``; other braces (JSON, code) stay as written.
* :class:`MapJob` -- finds or creates the batch session, takes finished rows from it (the cache), calls the model
  for the rest with bounded concurrency (each row routed and falling back like ``execute()``), stores every
  exchange as it finishes, and builds the result.

Caching and resuming: each row's **cache key** is a hash of its rendered prompt (the row's content through the
template) and the batch key (template, schema, model -- the forced one, else the set of hooked models --, sampling
parameters, system message). The batch
session's metadata holds the batch key (``oblix_map``) with the template, schema and model; its messages carry
the row's cache key as ``request_id`` and ``metrics["map"]`` = ``{"row": position, "index": index label,
"attempt": n, "error": ..., "latency_s", "input_tokens", "output_tokens"}`` (the row's totals over its attempts). A row is finished when its last stored reply has no error; re-running the same map
reads those instead of calling a model. An interrupt cancels the rows in flight (nothing half-written is kept) and
keeps every finished row, so the next identical call resumes where it stopped.

:func:`map_frame` is the entry point for one pandas frame (what ``client.map`` calls; a partitioned frame can be
mapped partition by partition with it).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Optional, Protocol

from ._util import describe_error
from .errors import (ModelCallError, NoModelHookedError, OblixError, RowError, SchemaError,
                     StorageError, StructuredOutputError)
from .execution import Engine, Request, retry_prompt
from .models.base import SAMPLING_OPTIONS, GenerationParams
from .structured import Schema, compile_schema, extract_json

if TYPE_CHECKING:
    from .sessions.base import SessionStoreBase

META_COLUMNS = ("model_id", "route", "input_tokens", "output_tokens", "latency_s", "error", "cached")
DEFAULT_CONCURRENCY = {True: 1, False: 4}  # in-process model (not re-entrant) : servers
ON_ERROR = ("record", "raise")
PROGRESS_INTERVAL = 0.25  # seconds between progress bar updates
_BRACES = re.compile(r"\{\{([^{}]+)\}\}|\{([^{}]+)\}")


class MapClient(Protocol):
    """What a map needs of its client (an OblixClient): the store, the hooked models and the engine."""

    sessions: SessionStoreBase

    @property
    def models(self) -> dict: ...

    @property
    def engine(self) -> Engine: ...

    def resolve_model_id(self, model_id: Optional[str]) -> Optional[str]: ...


# ---------------------------------------------------------------------------------------------------- inputs

def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover
        return False


class RowTable:
    """The input as ``rows`` (tuples of field values, in ``fields`` order) and the ``index`` for the result.

    DataFrame: fields are its columns (as strings). Series: ``value`` (and its name, if any). List of strings:
    ``value``. List of dicts: the union of their keys, in first-seen order (missing keys are empty).
    """

    def __init__(self, data: Any):
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            names = [str(c) for c in data.columns]
            self.fields = names
            self.duplicated = {n for n in names if names.count(n) > 1}
            self.rows = data.itertuples(index=False, name=None)
            self.index = data.index
            self.n = len(data)
        elif isinstance(data, pd.Series):
            self.fields = ["value"] + ([str(data.name)] if data.name is not None and str(data.name) != "value"
                                       else [])
            self.duplicated = set()
            width = len(self.fields)
            self.rows = ((v,) * width for v in data.tolist())
            self.index = data.index
            self.n = len(data)
        elif isinstance(data, (list, tuple)):
            items = list(data)
            self.duplicated = set()
            if all(isinstance(x, str) for x in items):
                self.fields = ["value"]
                self.rows = ((x,) for x in items)
            elif all(isinstance(x, dict) for x in items):
                self.fields = list(dict.fromkeys(str(k) for x in items for k in x))
                keys = [{str(k): v for k, v in x.items()} for x in items]
                self.rows = (tuple(d.get(f) for f in self.fields) for d in keys)
            else:
                kinds = sorted({type(x).__name__ for x in items})
                raise TypeError(f"map() takes a list of strings or a list of dicts, not a list of {kinds}")
            self.index = pd.RangeIndex(len(items))
            self.n = len(items)
        else:
            raise TypeError(f"map() takes a pandas DataFrame, a Series, or a list of dicts/strings, not "
                            f"{type(data).__name__}")


class PromptTemplate:
    """A template compiled once against the input's fields; ``render(row)`` is a join of parts."""

    def __init__(self, text: str, fields: list[str], duplicated: AbstractSet[str] = frozenset()):
        if not isinstance(text, str):
            raise TypeError(f"the prompt must be a template string or a callable row -> str, not "
                            f"{type(text).__name__}")
        if not text.strip():
            raise ValueError("the prompt template must be a non-empty string (or a callable row -> str)")
        self.text = text
        position = {name: i for i, name in reversed(list(enumerate(fields)))}
        parts: list = []   # str literals and int field positions
        used: list[str] = []
        last = 0
        for m in _BRACES.finditer(text):
            escaped, name = m.group(1), m.group(2)
            if escaped is not None:
                if not (escaped in position or escaped.isidentifier()):
                    continue  # e.g. {{"a": 1}}: left exactly as written
                parts += [text[last:m.start()], "{" + escaped + "}"]
            elif name in position:
                if name in duplicated:
                    raise ValueError(f"template field {{{name}}} is ambiguous: the frame has several columns "
                                     f"named {name!r}")
                parts += [text[last:m.start()], position[name]]
                used.append(name)
            else:
                continue  # not a field (JSON, code, an unknown name): left exactly as written
            last = m.end()
        parts.append(text[last:])
        if not used:
            shown = ", ".join(fields[:12]) + (" ..." if len(fields) > 12 else "")
            raise ValueError(f"the template uses no field of the input, so every row would get the same prompt; "
                             f"write {{column}} for one of: {shown}")
        self.parts = [p for p in parts if p != ""]
        self.used = used

    def render(self, row: tuple) -> str:
        out = []
        for part in self.parts:
            if part.__class__ is int:
                value = row[part]
                out.append("" if _missing(value) else str(value))
            else:
                out.append(part)
        return "".join(out)


def fill_constants(text: str, namespace: dict, exclude) -> str:
    """Replace ``{name}`` by ``str(namespace[name])`` for names that are in ``namespace`` but not in ``exclude``
    (the row fields); escapes (``{{name}}``), fields and every other brace are left for the row template."""
    def sub(m: "re.Match") -> str:
        name = m.group(2)
        if name is not None and name.isidentifier() and name not in exclude and name in namespace:
            return str(namespace[name])
        return m.group(0)

    return _BRACES.sub(sub, text)


def input_fields(data: Any) -> list[str]:
    """The template fields ``data`` offers (as :class:`RowTable` names them), without reading its rows."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return [str(c) for c in data.columns]
    if isinstance(data, pd.Series):
        return ["value"] + ([str(data.name)] if data.name is not None else [])
    if isinstance(data, (list, tuple)):
        return list(dict.fromkeys(str(k) for x in data if isinstance(x, dict) for k in x)) or ["value"]
    return []


def _callable_name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def _json_label(label: Any) -> Any:
    """An index label as JSON data (tuples of a MultiIndex as lists, timestamps as ISO text)."""
    if isinstance(label, (str, int, float, bool)) or label is None:
        return label
    if isinstance(label, tuple):
        return [_json_label(x) for x in label]
    item = getattr(label, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _json_label(item())
        except (TypeError, ValueError):
            pass
    isoformat = getattr(label, "isoformat", None)
    return isoformat() if callable(isoformat) else str(label)


# ---------------------------------------------------------------------------------------------------- the job

@dataclass
class RowOutcome:
    value: Any               # the reply text, or the parsed (plain) value with a schema; None on error
    model_id: Optional[str]
    route: Optional[str]
    input_tokens: Optional[int]
    output_tokens: Optional[int]
    latency_s: Optional[float]
    error: Optional[str]
    cached: bool


class MapJob:
    """One ``map()`` call. Constructing it does the synchronous preparation (rendering, cache lookup) in the
    caller's thread; ``await run()`` (on the package loop) calls models; ``frame()`` builds the result."""

    def __init__(self, client: MapClient, data: Any, prompt: Any, *, schema: Any = None, model_id: Optional[str] = None,
                 concurrency: Optional[int] = None, temperature: Optional[float] = None,
                 max_tokens: Optional[int] = None, system: Optional[str] = None,
                 session_id: Optional[str] = None, cache: bool = True, on_error: str = "record",
                 progress: bool = True, **options: Any):
        self.client = client
        unknown = set(options) - set(SAMPLING_OPTIONS)
        if unknown:
            raise TypeError(f"map() got unexpected keyword argument(s) {sorted(unknown)}; sampling options are "
                            f"{list(SAMPLING_OPTIONS)}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a string, not {type(system).__name__}")
        model_id = client.resolve_model_id(model_id)  # an alias names a model id
        if model_id is not None and model_id not in client.models:
            raise NoModelHookedError(f"model_id {model_id!r} is not hooked; hooked: {list(client.models)}")
        if not client.models:
            raise NoModelHookedError("no model is hooked: await client.hook_model(ModelType..., ...) first")
        self.engine = client.engine
        self.params: GenerationParams = self.engine.params(temperature=temperature, max_tokens=max_tokens,
                                                           options=options)
        self.schema: Optional[Schema] = compile_schema(schema) if schema is not None else None
        if self.schema is not None:
            clash = set(self.schema.columns()) & set(META_COLUMNS)
            if clash:
                raise SchemaError(f"schema properties {sorted(clash)} clash with map()'s own columns "
                                  f"{list(META_COLUMNS)}; rename them")
            self.params.schema = self.schema.json_schema
        self.system = "\n\n".join(s for s in (system, self.schema.instruction() if self.schema else None) if s) \
            or None
        self.user_system = system
        self.model_id = model_id
        self.on_error = on_error
        self.progress = progress
        # The model routing tries first: the forced one, else (routing prefers local) the first local one.
        models = list(client.models.values())
        backend = client.models[model_id] if model_id else next((m for m in models if m.target == "local"),
                                                                models[0])
        self.concurrency = concurrency or DEFAULT_CONCURRENCY[bool(getattr(backend, "in_process", False))]

        table = RowTable(data)
        self.index = table.index
        self.n = table.n
        if callable(prompt):
            self.template_text = _callable_name(prompt)
            fields = table.fields
            render = lambda row: prompt(dict(zip(fields, row)))  # noqa: E731
        else:
            template = PromptTemplate(prompt, table.fields, table.duplicated)
            self.template_text = template.text
            render = template.render
        self.batch_key = self._batch_key(system)
        self.session_id = self._session(session_id)

        # Render every row, key it, and split finished rows (from the store) from pending ones.
        self.columns: dict[str, list] = {name: [None] * self.n for name in self._value_columns() + list(META_COLUMNS)}
        self.pending: dict[str, list[int]] = {}   # cache key -> row positions (identical rows run once)
        self.prompts: dict[str, str] = {}         # cache key -> prompt, dropped when the row finishes
        finished = self._finished() if cache else {}
        self._labels = self.index
        self.cached = self.errors = 0
        for pos, row in enumerate(table.rows):
            try:
                text = render(row)
                if not isinstance(text, str) or not text.strip():
                    what = "empty" if isinstance(text, str) else f"a {type(text).__name__}, not a string"
                    raise ValueError(f"the prompt for this row is {what}")
            except Exception as exc:  # noqa: BLE001 - a callable's failure is this row's error
                self._write([pos], RowOutcome(None, None, None, None, None, None,
                                              f"prompt: {type(exc).__name__}: {exc}", False))
                self.errors += 1
                continue
            key = self._row_key(text)
            hit = finished.get(key)
            if hit is not None:
                self._write([pos], self._from_store(hit))
                self.cached += 1
                continue
            positions = self.pending.get(key)
            if positions is None:
                self.pending[key] = [pos]
                self.prompts[key] = text
            else:
                positions.append(pos)
        del finished
        self.done = self.cached + self.errors
        self.output_tokens = 0

    # ------------------------------------------------------------------------------------------ keys, session
    def _params_json(self) -> dict:
        p = self.params
        return {"max_tokens": p.max_tokens, "temperature": p.temperature, "options": p.options}

    def _batch_key(self, system: Optional[str]) -> str:
        blob = json.dumps({"template": self.template_text, "schema": self.schema.fingerprint if self.schema else None,
                           "model_id": self.model_id or sorted(self.client.models), "params": self._params_json(),
                           "system": system},
                          sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _row_key(self, prompt: str) -> str:
        h = hashlib.sha256(self.batch_key.encode("ascii"))
        h.update(prompt.encode("utf-8"))
        return "map-" + h.hexdigest()[:40]

    def _session(self, session_id: Optional[str]) -> str:
        store = self.client.sessions
        if session_id is not None:
            if not store.exists(session_id):
                from .errors import SessionNotFoundError

                raise SessionNotFoundError(session_id)
            return session_id
        found = store.summaries(limit=1, filter_metadata={"oblix_map": self.batch_key})
        if found:
            return found[0]["id"]
        first = self.template_text.strip().splitlines()[0] if self.template_text.strip() else "rows"
        title = "map: " + (first if len(first) <= 50 else first[:49] + "…")
        metadata = {"oblix_map": self.batch_key, "kind": "map", "template": self.template_text,
                    "schema": self.schema.json_schema if self.schema else None, "model_id": self.model_id,
                    "models": sorted(self.client.models), "system": self.user_system,
                    "params": json.loads(json.dumps(self._params_json(), default=str)), "rows": self.n}
        return store.create(title=title, metadata=metadata)

    _STORED_METRICS = {"input_tokens": "$.map.input_tokens", "output_tokens": "$.map.output_tokens",
                       "latency_s": "$.map.latency_s", "error": "$.map.error"}

    def _finished(self) -> dict[str, tuple]:
        """cache key -> (content, model_id, route, input_tokens, output_tokens, latency_s) of each row of this
        batch session whose last stored reply has no error."""
        replies = self.client.sessions.last_replies(self.session_id, self._STORED_METRICS)
        return {key: reply[:-1] for key, reply in replies.items() if reply[-1] is None}

    def _from_store(self, reply: tuple) -> RowOutcome:
        text, model_id, route, input_tokens, output_tokens, latency = reply
        if self.schema is not None:
            try:
                value = extract_json(text)
            except StructuredOutputError:  # stored valid; unreadable now means the store was edited
                value = None
        else:
            value = text
        return RowOutcome(value, model_id, route, input_tokens, output_tokens, latency, None, True)

    # ------------------------------------------------------------------------------------------ results
    def _value_columns(self) -> list[str]:
        return list(self.schema.columns()) if self.schema is not None else ["response"]

    def _write(self, positions: list[int], outcome: RowOutcome) -> None:
        cols = self.columns
        if self.schema is None:
            values = {"response": outcome.value}
        elif isinstance(outcome.value, dict) and self.schema.properties:
            values = {name: outcome.value.get(name) for name in self.schema.properties}
        elif "parsed" in cols:
            values = {"parsed": outcome.value}
        else:
            values = {}
        meta = (outcome.model_id, outcome.route, outcome.input_tokens, outcome.output_tokens, outcome.latency_s,
                outcome.error, outcome.cached)
        for pos in positions:
            for name, value in values.items():
                cols[name][pos] = value
            for name, value in zip(META_COLUMNS, meta):
                cols[name][pos] = value

    def frame(self):
        """The result: one row per input row, on the input's index, in the input's order."""
        import numpy as np
        import pandas as pd

        dtypes = dict(self.schema.columns()) if self.schema is not None else {"response": "string"}
        dtypes.update({"model_id": "string", "route": "string", "input_tokens": "Int64", "output_tokens": "Int64",
                       "latency_s": "float64", "error": "string", "cached": "bool"})
        data = {}
        for name, values in self.columns.items():
            dtype = dtypes.get(name, "object")
            try:
                if dtype == "category":
                    data[name] = pd.Categorical([v if isinstance(v, str) else None for v in values],
                                                categories=self.schema.categories(name))
                elif dtype == "float64":
                    data[name] = np.array([np.nan if v is None or isinstance(v, bool) else v for v in values],
                                          dtype="float64")
                elif dtype == "object":
                    arr = np.empty(len(values), dtype=object)
                    arr[:] = values
                    data[name] = arr
                elif dtype == "bool":
                    data[name] = np.array([bool(v) for v in values], dtype=bool)
                else:
                    data[name] = pd.array(values, dtype=dtype)
            except (TypeError, ValueError):  # a value the dtype cannot hold (the schema allowed it): keep as is
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                data[name] = arr
        return pd.DataFrame(data, index=self.index.copy())

    # ------------------------------------------------------------------------------------------ running
    async def run(self) -> None:
        """Call models for the pending rows (on the package loop). Finished rows are stored as they finish;
        ``done``/``errors``/``output_tokens`` count as they go (the caller's progress bar reads them)."""
        if not self.pending:
            return
        keys = iter(list(self.pending))
        self.started = time.perf_counter()

        async def worker() -> None:
            for key in keys:
                outcome = await self._row(key)
                positions = self.pending.pop(key)
                self._write(positions, outcome)
                self.done += len(positions)
                self.output_tokens += outcome.output_tokens or 0
                if outcome.error is not None:
                    self.errors += len(positions)
                    if self.on_error == "raise":
                        raise RowError(outcome.error, positions=positions)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(self.pending)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def drive(self) -> None:
        """``run()`` on the package loop, awaited from any loop; the progress bar is updated from the caller's
        thread (so a notebook shows it in the calling cell). Cancelling stops the batch; finished rows stay."""
        from . import runtime

        bar = self.progress_bar()
        try:
            if runtime.in_loop_thread():
                task = asyncio.ensure_future(self.run())
                while not task.done():
                    await asyncio.wait([task], timeout=PROGRESS_INTERVAL)
                    self._show(bar)
                task.result()
                return
            job = runtime.submit(self.run())
            waiter = asyncio.wrap_future(job)
            try:
                while not waiter.done():
                    await asyncio.wait([waiter], timeout=PROGRESS_INTERVAL)
                    self._show(bar)
            except (asyncio.CancelledError, KeyboardInterrupt) as exc:
                job.cancel()  # cancels the task on the package loop; wait (bounded) for its cleanup
                if isinstance(exc, asyncio.CancelledError):
                    await asyncio.wait([waiter], timeout=10)
                raise
            waiter.result()
        except (asyncio.CancelledError, KeyboardInterrupt):
            self._interrupted_note()
            raise
        finally:
            self._show(bar, final=True)

    def drive_sync(self) -> None:
        """``drive()`` for synchronous callers (a cell, a script): blocks, updating the progress bar; a
        KeyboardInterrupt (kernel interrupt) stops the batch, keeps finished rows and is re-raised."""
        import concurrent.futures

        from . import runtime

        bar = self.progress_bar()
        job = runtime.submit(self.run())
        try:
            while True:
                try:
                    job.result(timeout=PROGRESS_INTERVAL)
                    break
                except concurrent.futures.TimeoutError:
                    self._show(bar)
        except KeyboardInterrupt:
            job.cancel()
            try:
                job.result(timeout=10)
            except BaseException:  # noqa: BLE001 - cancelled on purpose
                pass
            self._interrupted_note()
            raise
        finally:
            self._show(bar, final=True)

    def _interrupted_note(self) -> None:
        print(f"map interrupted: {self.done - self.errors} of {self.n} rows are finished and stored; run the "
              f"same map again to resume", file=sys.stderr)

    async def _row(self, key: str) -> RowOutcome:
        """One row: route, call (with fallback), validate (one retry), store the exchange."""
        prompt = self.prompts.pop(key)
        request = Request(prompt=prompt, params=self.params, request_id=key, session_id=None,
                          model_id=self.model_id, system=self.system, schema=self.schema)
        to_store: list[dict] = []
        input_tokens = output_tokens = 0
        latency = 0.0
        error: Optional[str] = None
        value: Any = None
        response: Optional[dict] = None
        for attempt in (1, 2):
            try:
                # session_id=None (no history) and store_reply=False: the row's exchange is stored below,
                # once validated, in one transaction.
                response = await self.engine.run(request, store_reply=False)
            except (ModelCallError, NoModelHookedError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            metrics = response["metrics"]
            input_tokens += metrics.get("input_tokens") or 0
            output_tokens += metrics.get("output_tokens") or 0
            latency += metrics.get("total_latency") or 0.0
            text = response["response"]
            error = None
            if self.schema is None:
                value = text
            else:
                try:
                    value = self.schema.as_plain(self.schema.parse(text))
                except StructuredOutputError as exc:
                    error, invalid = f"StructuredOutputError: {exc}", exc
            to_store.append({"role": "user", "content": request.prompt, "request_id": key})
            to_store.append(self._stored_reply(key, response, attempt, error, latency, input_tokens,
                                               output_tokens))
            if error is None or self.schema is None or attempt == 2:
                break
            request = Request(prompt=retry_prompt(invalid), params=self.params, request_id=key, session_id=None,
                              model_id=self.model_id, system=self.system, schema=self.schema,
                              prior=[{"role": "user", "content": prompt}, {"role": "assistant", "content": text}])
        if to_store:
            try:
                self.client.sessions.append_messages(self.session_id, to_store)
            except (OSError, StorageError, OblixError) as exc:
                # The reply is not dropped: it stays in the result; the error says it is not in the store
                # (so the next call will ask the model again).
                error = "; ".join(e for e in (error, f"reply not stored: {describe_error(exc)}") if e)
                assert response is not None  # to_store holds its reply
                return RowOutcome(value, response["model_id"], response["routing_decision"]["target"],
                                  input_tokens, output_tokens, latency, error, False)
        if response is None:
            return RowOutcome(None, None, None, None, None, None, error, False)
        return RowOutcome(value if error is None else None, response["model_id"],
                          response["routing_decision"]["target"], input_tokens, output_tokens, latency, error, False)

    def _stored_reply(self, key: str, response: dict, attempt: int, error: Optional[str], latency: float,
                      input_tokens: int, output_tokens: int) -> dict:
        positions = self.pending.get(key) or []
        first = positions[0] if positions else None
        metrics = dict(response["metrics"])
        metrics["map"] = {"row": first, "index": _json_label(self._labels[first]) if first is not None else None,
                          "attempt": attempt, "error": error, "latency_s": latency,
                          "input_tokens": input_tokens, "output_tokens": output_tokens}
        return {"role": "assistant", "content": response["response"], "request_id": key,
                "model_id": response["model_id"], "metrics": metrics, "routing": response["routing_decision"]}

    # ------------------------------------------------------------------------------------------ progress
    def progress_bar(self):
        """A tqdm.auto bar (a widget in notebooks, text in terminals), or None (progress=False, nothing to do)."""
        if not self.progress or not self.pending:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the batch extra
            return None
        bar = tqdm(total=self.n, initial=self.done, desc="map", unit="row", leave=True, dynamic_ncols=True,
                   file=sys.stderr)
        bar.set_postfix_str(self._postfix(), refresh=False)
        return bar

    def _postfix(self) -> str:
        elapsed = time.perf_counter() - getattr(self, "started", time.perf_counter())
        rate = self.output_tokens / elapsed if elapsed > 0 else 0.0
        return f"errors={self.errors}, cached={self.cached}, {rate:.1f} tok/s"

    def _show(self, bar, final: bool = False) -> None:
        if bar is None:
            return
        bar.set_postfix_str(self._postfix(), refresh=False)
        if self.done > bar.n:
            bar.update(self.done - bar.n)  # refreshes (rate-limited by tqdm) and keeps its ETA
        elif final:
            bar.refresh()
        if final:
            bar.close()


async def map_frame(client: MapClient, data: Any, prompt: Any, **kwargs: Any):
    """Map one pandas frame (or Series, or list of dicts/strings) with ``client``: the core of ``client.map``.

    Arguments (all keyword-only, all optional):

    ``schema``       structured output (JSON Schema dict, pydantic class, or spec ``"label, score float"``):
                     one typed column per property instead of ``response``.
    ``model_id``     force a hooked model (the others stay fallback candidates), else each row is routed.
    ``concurrency``  rows in flight; default 1 when the first model is in-process (llama.cpp is not
                     re-entrant), else 4.
    ``temperature``, ``max_tokens``, sampling options (``top_p`` ...), ``system`` -- as in ``execute()``.
    ``session_id``   store the exchanges in this session instead of the batch's own one.
    ``cache``        take finished rows of the same batch from the store (default True).
    ``on_error``     "record" (default: the row's ``error`` column says what failed) or "raise" (RowError).
    ``progress``     a tqdm.auto bar (widget in notebooks, text in terminals).

    Result columns: ``response`` (or the schema's properties), ``model_id``, ``route``, ``input_tokens``,
    ``output_tokens``, ``latency_s``, ``error``, ``cached`` -- on a copy of the input's index, same order.
    ``error`` is None for a finished row; else what failed: ``ModelCallError: ...`` (no model could answer),
    ``StructuredOutputError: ...`` (invalid even after the retry), ``prompt: ...`` (the callable failed), or
    ``reply not stored: ...`` (the store refused the write: the reply is in the result, not in the store).
    """
    job = MapJob(client, data, prompt, **kwargs)
    await job.drive()
    return job.frame()


def map_frame_sync(client: MapClient, data: Any, prompt: Any, **kwargs: Any):
    """:func:`map_frame` for synchronous code (no event loop needed; a running one in this thread is fine)."""
    job = MapJob(client, data, prompt, **kwargs)
    job.drive_sync()
    return job.frame()
