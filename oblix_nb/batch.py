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
parameters normalised so that ``0`` and ``0.0`` are one key, system message, and the cascade with its threshold
when there is one). The batch session's metadata holds the batch key (``oblix_map``) with the template, schema and
model; its messages carry the row's cache key as ``request_id`` and ``metrics["map"]`` = ``{"row": position,
"index": index label, "attempt": n, "attempts": model calls of the row, "error": ..., "latency_s",
"input_tokens", "output_tokens", "extra": {confidence / cascade columns}}`` (on the row's answer: its totals over
all attempts); a cascade stage that was escalated is flagged ``"escalating": true``. The map's system message
(``system=`` and the schema's instruction) is stored once per batch session, tagged ``map-<key>``. A row is
finished when its last stored reply has no error and is not an escalated stage; re-running the same map reads
those instead of calling a model. An interrupt cancels the rows in flight (nothing half-written is kept) and keeps
every finished row, so the next identical call resumes where it stopped. A row's stages live in
:mod:`oblix_nb.maprow`.

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
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

from .cascade import CASCADE_COLUMNS, check_cascade
from .errors import NoModelHookedError, RowError, SchemaError, StructuredOutputError
from .execution import Engine
from .maprow import _BRACES, RowOutcome, _check_misspelled, _invalid_text, _norm_param, _restore_extra, run_row
from .models.base import SAMPLING_OPTIONS, GenerationParams
from .structured import Schema, compile_schema, extract_json

if TYPE_CHECKING:
    from .sessions.base import SessionStoreBase

META_COLUMNS = ("model_id", "route", "input_tokens", "output_tokens", "latency_s", "error", "cached", "attempts")
DEFAULT_CONCURRENCY = {True: 1, False: 4}  # in-process model (not re-entrant) : servers
ON_ERROR = ("record", "raise")
PROGRESS_INTERVAL = 0.25  # seconds between progress bar updates


class MapClient(Protocol):
    """What a map needs of its client (an OblixClient): the store, the hooked models and the engine."""

    sessions: SessionStoreBase

    @property
    def models(self) -> dict: ...

    @property
    def engine(self) -> Engine: ...

    def resolve_model_id(self, model_id: str | None) -> str | None: ...


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
        _check_misspelled(text, fields)
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
    def sub(m: re.Match) -> str:
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


class MapJob:
    """One ``map()`` call. Constructing it does the synchronous preparation (rendering, cache lookup) in the
    caller's thread; ``await run()`` (on the package loop) calls models; ``frame()`` builds the result."""

    def __init__(self, client: MapClient, data: Any, prompt: Any, *, schema: Any = None, model_id: str | None = None,
                 concurrency: int | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, system: str | None = None,
                 session_id: str | None = None, cache: bool = True, on_error: str = "record",
                 progress: bool = True, cascade: list | None = None, min_confidence: float | None = None,
                 confidence: bool = True, **options: Any):
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
        for name, text in (("system", system), ("the prompt template", prompt)):
            bad = _invalid_text(text) if isinstance(text, str) else None
            if bad is not None:  # every row would carry it: refuse the map before anything is written
                raise ValueError(f"{name} contains {bad}")
        model_id = client.resolve_model_id(model_id)  # an alias names a model id
        if model_id is not None and model_id not in client.models:
            raise NoModelHookedError(f"model_id {model_id!r} is not hooked; hooked: {list(client.models)}")
        if not client.models:
            raise NoModelHookedError("no model is hooked: await client.hook_model(ModelType..., ...) first")
        self.cascade, self.min_confidence = check_cascade(client, cascade, min_confidence, model_id)
        self.with_confidence = bool(confidence) or self.cascade is not None
        self.engine = client.engine
        self.params: GenerationParams = self.engine.params(temperature=temperature, max_tokens=max_tokens,
                                                           options=options)
        self.schema: Schema | None = compile_schema(schema) if schema is not None else None
        if self.schema is not None:
            clash = set(self.schema.columns()) & (set(META_COLUMNS) | set(CASCADE_COLUMNS))
            if clash:
                raise SchemaError(f"schema properties {sorted(clash)} clash with map()'s own columns "
                                  f"{list(META_COLUMNS)}; rename them")
            self.params.schema = self.schema.json_schema
            from .structured import check_for_backend  # before any call: what a backend cannot take

            for mid, backend in client.models.items():
                if model_id is None or mid == model_id:
                    check_for_backend(self.schema, backend)
        self.system = "\n\n".join(s for s in (system, self.schema.instruction() if self.schema else None) if s) \
            or None
        self.user_system = system
        from .confidence import confidence_columns

        self.conf_columns = confidence_columns(self.schema) if self.with_confidence else []
        taken = set(self.schema.columns()) if self.schema is not None else set()
        if taken & set(self.conf_columns):
            if self.cascade:
                raise SchemaError(f"schema properties {sorted(taken & set(self.conf_columns))} clash with the "
                                  f"cascade's confidence columns; rename them")
            self.conf_columns, self.with_confidence = [], False  # the schema's own field wins
        self.model_id = model_id
        self.on_error = on_error
        self.progress = progress
        # The model routing tries first: the forced one, else (routing prefers local) the first local one.
        models = list(client.models.values())
        first = model_id or (self.cascade[0] if self.cascade else None)
        backend = client.models[first] if first else next((m for m in models if m.target == "local"), models[0])
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
        self._system_stored = False
        self.session_id = self._session(session_id)

        # Render every row, key it, and split finished rows (from the store) from pending ones.
        self.columns: dict[str, list] = {name: [None] * self.n for name in self._value_columns() + self.conf_columns
                                         + list(META_COLUMNS) + (list(CASCADE_COLUMNS) if self.cascade else [])}
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
                bad = _invalid_text(text)
                if bad is not None:  # it could be neither sent nor stored: this row's error, not the map's
                    cols = [repr(f) for f, v in zip(table.fields, row) if isinstance(v, str) and _invalid_text(v)]
                    where = f" (from column {', '.join(cols)})" if cols else ""
                    raise ValueError(f"the prompt for this row contains {bad}{where}")
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
        self.decode_tokens, self.decode_s = 0, 0.0

    # ------------------------------------------------------------------------------------------ keys, session
    def _params_json(self) -> dict:
        p = self.params
        return {"max_tokens": p.max_tokens, "temperature": _norm_param(p.temperature),
                "options": {k: _norm_param(v) for k, v in sorted((p.options or {}).items()) if v is not None}}

    def _batch_key(self, system: str | None) -> str:
        key = {"template": self.template_text, "schema": self.schema.fingerprint if self.schema else None,
               "model_id": self.model_id or sorted(self.client.models), "params": self._params_json(),
               "system": system}
        if self.cascade:  # (no cascade: the key is what it was, so earlier batches stay cached)
            key["cascade"] = {"models": self.cascade, "min_confidence": self.min_confidence}
        blob = json.dumps(key, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()  # never fails on any text

    def _row_key(self, prompt: str) -> str:
        h = hashlib.sha256(self.batch_key.encode("ascii"))
        h.update(prompt.encode("utf-8"))
        return "map-" + h.hexdigest()[:40]

    def _session(self, session_id: str | None) -> str:
        store = self.client.sessions
        if session_id is not None:
            if not store.exists(session_id):
                from .errors import SessionNotFoundError

                raise SessionNotFoundError(session_id)
            if self.system:
                self._system_stored = any(m["role"] == "system" and m["content"] == self.system
                                          for m in store.history(session_id))
            return session_id
        found = store.summaries(limit=1, filter_metadata={"oblix_map": self.batch_key})
        if found:
            self._system_stored = bool(found[0].get("message_count"))  # stored with the first row
            return found[0]["id"]
        title = self._title()
        metadata = {"oblix_map": self.batch_key, "kind": "map", "template": self.template_text,
                    "cascade": self.cascade, "min_confidence": self.min_confidence,
                    "schema": self.schema.json_schema if self.schema else None, "model_id": self.model_id,
                    "models": sorted(self.client.models), "system": self.user_system,
                    "params": json.loads(json.dumps(self._params_json(), default=str)), "rows": self.n}
        return store.create(title=title, metadata=metadata)

    def _title(self) -> str:
        """Tells batches apart: the template's first line, the rows, the model (or cascade), the schema's fields
        and the batch key's start, e.g. ``map 40 rows: Classify {text} · llamacpp:x · label,score · #1a2b3c``."""
        lines = [ln.strip() for ln in self.template_text.strip().splitlines() if ln.strip()]
        first = lines[0] if lines else "rows"
        first = first if len(first) <= 48 else first[:47] + "…"
        model = " > ".join(self.cascade) if self.cascade else (self.model_id or "routed")
        parts = [f"map {self.n} row{'s' if self.n != 1 else ''}: {first}", model]
        if self.schema is not None:
            fields = ",".join(list(self.schema.properties)[:4]) or "value"
            parts.append(fields if len(fields) <= 30 else fields[:29] + "…")
        parts.append("#" + self.batch_key[:6])
        return " · ".join(parts)

    _STORED_METRICS = {"input_tokens": "$.map.input_tokens", "output_tokens": "$.map.output_tokens",
                       "latency_s": "$.map.latency_s", "attempts": "$.map.attempts", "attempt": "$.map.attempt",
                       "extra": "$.map.extra",
                       "escalating": "$.map.escalating", "error": "$.map.error"}

    def _finished(self) -> dict[str, tuple]:
        """cache key -> (content, model_id, route, input_tokens, output_tokens, latency_s, attempts, extra) of
        each row of this batch session whose last stored reply has no error (and is a row's final answer, not a
        cascade stage that was escalated)."""
        replies = self.client.sessions.last_replies(self.session_id, self._STORED_METRICS)
        return {key: reply[:-2] for key, reply in replies.items() if reply[-1] is None and not reply[-2]}

    def _from_store(self, reply: tuple) -> RowOutcome:
        text, model_id, route, input_tokens, output_tokens, latency, attempts, attempt, extra = reply
        attempts = attempts if attempts is not None else attempt  # stored before "attempts" existed
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                extra = None
        extra = _restore_extra(extra if isinstance(extra, dict) else {}, self.conf_columns, bool(self.cascade))
        if self.schema is not None:
            try:
                value = extract_json(text)
            except StructuredOutputError:  # stored valid; unreadable now means the store was edited
                value = None
        else:
            value = text
        return RowOutcome(value, model_id, route, input_tokens, output_tokens, latency, None, True, attempts, extra)

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
                outcome.error, outcome.cached, outcome.attempts)
        for name, value in (outcome.extra or {}).items():
            if name in cols:
                values[name] = value
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
                       "latency_s": "float64", "error": "string", "cached": "bool", "attempts": "Int64"})
        dtypes.update({c: "float64" for c in self.conf_columns})
        if self.cascade:
            dtypes.update({"escalated": "boolean", "cascade_note": "string", "cost_usd": "float64"})
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
            note = self._interrupted_note()
            # A fresh KeyboardInterrupt: its traceback ends here, not in the waiting machinery below.
            raise KeyboardInterrupt(note) from None
        finally:
            self._show(bar, final=True)

    def _interrupted_note(self) -> str:
        note = (f"map interrupted: {self.done - self.errors} of {self.n} rows are finished and stored; run the "
                f"same map again to resume")
        print(note, file=sys.stderr)
        return note

    async def _row(self, key: str) -> RowOutcome:
        """One row: route (or a cascade's models in turn), call, validate (one retry), store the exchange."""
        return await run_row(self, key)

    # ------------------------------------------------------------------------------------------ progress
    def progress_bar(self):
        """A tqdm.auto bar (a widget in notebooks, text in terminals), or None (progress=False, nothing to do).

        In a notebook the widget is shown through a display handle and replaced, when the batch ends, by one
        line of text (:meth:`final_line`): a saved notebook reopened without the kernel shows that line, not
        "Error displaying widget: model not found"."""
        self._bar_handle = None
        if not self.progress or not self.pending:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the batch extra
            return None
        kwargs = dict(total=self.n, initial=self.done, desc="map", unit="row", leave=True, dynamic_ncols=True,
                      file=sys.stderr)
        if any(c.__module__.startswith("tqdm.notebook") for c in getattr(tqdm, "__mro__", ())):
            bar = tqdm(display=False, **kwargs)
            from IPython.display import display

            self._bar_handle = display(bar.container, display_id=True)
            if self._bar_handle is None:  # no display publisher: show it the ordinary way
                display(bar.container)
        else:
            bar = tqdm(**kwargs)
        bar.set_postfix_str(self._postfix(), refresh=False)
        return bar

    def _postfix(self) -> str:
        """Errors, cached rows and the decoding rate: output tokens per second between each reply's first and
        last token (prompt processing and queueing are not decoding)."""
        rate = self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0
        return f"errors={self.errors}, cached={self.cached}, {rate:.1f} tok/s"

    def final_line(self) -> str:
        """The batch in one line: rows done of all, errors, cached, time (what a finished bar leaves)."""
        elapsed = time.perf_counter() - getattr(self, "started", time.perf_counter())
        rate = self.output_tokens / elapsed if elapsed > 0 else 0.0
        state = "finished" if self.done >= self.n else "stopped"
        errors = f"{self.errors:,} error{'s' if self.errors != 1 else ''}"
        return f"map {state}: {self.done:,}/{self.n:,} rows, {errors}, {self.cached:,} cached, {elapsed:.1f} s, " \
               f"{rate:.1f} tok/s"

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
            handle = getattr(self, "_bar_handle", None)
            if handle is not None:  # the widget gives way to text that needs no kernel
                handle.update({"text/plain": self.final_line()}, raw=True)
                try:
                    bar.container.close()
                except Exception:  # noqa: BLE001 - the widget may be gone already
                    pass


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
    ``cascade``      model ids (or aliases) in order; ``min_confidence`` (default 0.8): a row whose answer's
                     confidence is below it (or unknown, or invalid) goes to the next model (:mod:`.cascade`).
    ``confidence``   add the answer's confidence column(s) (default True).

    Result columns: ``response`` (or the schema's properties), ``confidence`` (or ``<field>_confidence`` per enum
    field when there are several), ``model_id``, ``route``, ``input_tokens``, ``output_tokens``, ``latency_s``,
    ``error``, ``cached``, ``attempts`` -- and with a cascade ``escalated``, ``cascade_note``, ``cost_usd``,
    ``attempt_costs`` -- on a copy of the input's index, same order.
    ``error`` is None for a finished row; else what failed: ``ModelCallError: ...`` (no model could answer),
    ``BudgetExceededError: ...`` (its worst case does not fit the budget: the other rows go on),
    ``StructuredOutputError: ...`` (invalid even after the retry), ``prompt: ...`` (the callable failed, or the
    row's prompt holds a lone surrogate), or
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
