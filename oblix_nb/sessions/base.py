"""The session store contract, written once: :class:`SessionStoreBase`, and what every engine shares.

Both engines (:mod:`.sqlite.store`, :mod:`.postgres.store`) subclass :class:`SessionStoreBase`; it documents
every public method once (arguments, return value, exceptions), implements what does not depend on the engine
(copy/merge/import plans, export, row <-> dict mapping, the usage log over a few dialect hooks), and leaves
the rest abstract. Code outside the engine folders uses only this interface: it never asks which engine it
has, never calls an engine's private methods and never catches a driver's exception types.

Errors, for every method:

- every failure of the storage itself (disk full, read-only file system or home, I/O error, lost or
  unreachable server, not a database) raises :class:`~oblix_nb.errors.StorageError` (an ``OSError``) naming
  the database (never its password) and the cause; a failed write changed nothing;
- input is checked first (:mod:`.validate`, ``check_session_id``), so bad input raises TypeError or ValueError
  before any SQL and changes nothing;
- an unknown session id raises :class:`~oblix_nb.errors.SessionNotFoundError` (a KeyError), except where the
  reference API returns False (``delete``, ``update_metadata``) or None (``brief``).

Default titles: ``create()`` without a title names the session after its creation time in UTC
(``"Session 2026-11-24 20:51 UTC"``); ``copy()`` uses ``"Copy of <title>"``; ``merge()`` uses
``"Merged: <title 1> + <title 2> ..."``.
"""
from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .._util import check_session_id, iso, parse_iso, utcnow
from .._util import new_id as fresh_id
from ..errors import SessionFileError, StorageError
from .io import expand_path, normalize_message, parse_session_file, write_json_atomic
from .reservations import BudgetReservations
from .validate import check_setting_key, check_title, dumps

MAX_MATCHES_PER_HIT = 3

# A message row as read and written: the order of the columns below, after ``session_seq``.
# ``author`` (who wrote the row) is last: it is not part of the message dict.
MESSAGE_COLUMNS = ("id", "role", "content", "timestamp", "model_id", "metrics", "routing", "partial",
                   "request_id", "source_session_id", "author")


def _update_stamp(dt: datetime | None = None) -> str:
    """``updated_at`` as stored: ISO 8601 UTC with microseconds (``2023-07-15T14:35:46.789123Z``), so sessions
    updated within the same millisecond still list in update order. Shown with milliseconds (:func:`_ms`)."""
    return (dt or utcnow()).isoformat(timespec="microseconds")[:26] + "Z"  # dt is UTC: drop "+00:00"


def _ms(stamp: str) -> str:
    """A stored ``updated_at`` in the canonical millisecond form."""
    return stamp[:23] + "Z"


def _default_title(created_at: str) -> str:
    """``"Session 2026-11-24 20:51 UTC"`` for a session created at that (canonical) time."""
    return f"Session {created_at[:10]} {created_at[11:16]} UTC"


def _message_row(message: dict, author: str | None) -> tuple:
    """A message dict checked by ``normalize_message``, written by ``author``, as a row (MESSAGE_COLUMNS order)."""
    metrics, routing = message.get("metrics"), message.get("routing")
    return (message["id"], message["role"], message["content"], message["timestamp"],
            message.get("model_id"),
            None if metrics is None else dumps(metrics, "message metrics", checked=True),
            None if routing is None else dumps(routing, "message routing", checked=True),
            1 if message.get("partial") else None,
            message.get("request_id"), message.get("source_session_id"), author)


def _message_dict(row: tuple) -> dict:
    """A message row (MESSAGE_COLUMNS order) as the reference's message dict; optional fields only when set."""
    message = {"id": row[0], "role": row[1], "content": row[2], "timestamp": row[3]}
    if row[4] is not None:
        message["model_id"] = row[4]
    if row[5] is not None:
        message["metrics"] = json.loads(row[5])
    if row[6] is not None:
        message["routing"] = json.loads(row[6])
    if row[7]:
        message["partial"] = True
    if row[8] is not None:
        message["request_id"] = row[8]
    if row[9] is not None:
        message["source_session_id"] = row[9]
    return message


def _summary(row: tuple) -> dict:
    """A summary dict from a row of ``_SUMMARY_COLUMNS`` (plus ``author``, if selected, under that key)."""
    summary = {"id": row[0], "title": row[1], "created_at": row[2], "updated_at": _ms(row[3]),
               "message_count": row[4], "metadata": json.loads(row[5])}
    if len(row) > 6:
        summary["author"] = row[6]
    return summary


def check_author(author: Any) -> str | None:
    """An ``author`` filter: None (anyone) or a non-empty string."""
    if author is not None and (not isinstance(author, str) or not author):
        raise TypeError(f"author must be a non-empty string or None, not {author!r}")
    return author


def copy_plan(source: dict, rows: list[tuple], new_title: str | None, session_id: str) -> tuple:
    """``(title, context, metadata, rows)`` of a copy of ``source`` (title/context/metadata) with message
    ``rows``: fresh message ids, everything else (authors too) kept; the metadata gains ``copied_from``."""
    title = new_title if new_title is not None else f"Copy of {source['title']}"
    metadata = {**source["metadata"], "copied_from": session_id}
    return title, source["context"], metadata, [(fresh_id(), *row[1:]) for row in rows]


def merge_plan(sources: list[tuple[str, dict, list[tuple]]], title: str | None) -> tuple:
    """``(title, context, metadata, rows)`` of the merge of ``sources`` (``(id, source, rows)`` in order):
    see :meth:`SessionStore.merge`."""
    rows, context, metadata = [], {}, {}
    for source_id, source, source_rows in sources:
        context.update(source["context"])
        metadata.update(source["metadata"])
        rows += [(fresh_id(), *row[1:9], row[9] or source_id, *row[10:]) for row in source_rows]
    # Canonical timestamps sort as text in time order; sort() is stable, so ties keep source order.
    rows.sort(key=lambda row: row[3])
    metadata["merged_from"] = [source_id for source_id, _, _ in sources]
    if title is None:
        title = "Merged: " + " + ".join(source["title"] for _, source, _ in sources)
    return title, context, metadata, rows


def merge_ids(session_ids: Any) -> list[str]:
    """The distinct, validated ids of a merge (TypeError for a non-list, ValueError for none)."""
    if isinstance(session_ids, str) or not hasattr(session_ids, "__iter__"):
        raise TypeError("session_ids must be a list of session ids")
    ids = list(dict.fromkeys(session_ids))
    for session_id in ids:
        check_session_id(session_id)
    if not ids:
        raise ValueError("merge needs at least one session id")
    return ids


def import_plan(path: str | os.PathLike, new_id: bool, author: str | None,
                max_bytes: int | None = None) -> dict:
    """A session file parsed and ready to insert: ``{id, title, created_at, updated_at (as stored), context,
    metadata, rows}`` (see :meth:`SessionStore.import_file`); its messages are recorded as ``author``'s."""
    doc = parse_session_file(path, max_bytes=max_bytes)
    session_id, metadata, messages = doc["id"], doc["metadata"], doc["messages"]
    if new_id:
        metadata = {**metadata, "imported_from": {
            "session_id": session_id, "file": str(expand_path(path, SessionFileError).resolve()),
            "imported_at": iso()}}
        session_id = fresh_id()
        messages = [{**message, "id": fresh_id()} for message in messages]
    title = doc["title"]
    if title is None:
        title = _default_title(doc["created_at"])
    return {"id": session_id, "title": title, "created_at": doc["created_at"],
            "updated_at": _update_stamp(parse_iso(doc["updated_at"])), "context": doc["context"],
            "metadata": metadata, "rows": [_message_row(message, author) for message in messages]}


def normalize_messages(messages: Any) -> list[dict]:
    """``append_messages``' list of message dicts (``role``, ``content`` and the optional fields), each checked
    by ``normalize_message``; messages without a timestamp share one. TypeError for a non-list or a bad item."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of dicts, not {type(messages).__name__}")
    default_timestamp = iso()
    normalized = []
    for i, item in enumerate(messages):
        if not isinstance(item, dict):
            raise TypeError(f"messages[{i}] must be a dict, not {type(item).__name__}")
        fields = dict(item)
        try:
            role, content = fields.pop("role"), fields.pop("content")
        except KeyError as exc:
            raise TypeError(f"messages[{i}] is missing {exc.args[0]!r}") from None
        normalized.append(normalize_message(role, content, fields, default_timestamp))
    return normalized


def frame_ids(session_ids: Iterable[str] | None) -> list[str] | None:
    """The distinct, validated ids of a ``message_rows`` call (None: every session)."""
    if session_ids is None:
        return None
    if isinstance(session_ids, str):
        session_ids = [session_ids]
    return [check_session_id(session_id) for session_id in dict.fromkeys(session_ids)]


def exists_message(session_id: str, where: str) -> str:
    """The SessionExistsError text for an import whose id is already in the store at ``where``."""
    return (f"session {session_id} already exists in {where}; it was not overwritten "
            f"(import with new_id=True to add the file as a new session)")

def refuse_newer(current: int, latest: int) -> None:
    """A database migrated by a newer oblix_nb than this one (either engine) is refused, never downgraded."""
    if current > latest:
        raise RuntimeError(f"session database schema version {current} is newer than this oblix_nb "
                           f"(knows up to {latest}); upgrade oblix_nb")


# The usage log's columns (SQLite migration 5, PostgreSQL migration 3), after ``seq`` (and ``author``).
USAGE_COLUMNS = ("timestamp", "session_id", "request_id", "model_id", "target", "input_tokens", "output_tokens",
                 "cache_read_tokens", "cache_write_tokens", "cost_usd", "cost_estimate_usd", "partial")
# Spend: exact costs, and estimates where no exact cost exists.
SPEND_SQL = "COALESCE(SUM(COALESCE(cost_usd, cost_estimate_usd)), 0)"
USAGE_GROUPS = ("model", "session", "day")


class SessionStoreBase(BudgetReservations, abc.ABC):
    """A durable session store: sessions (title, context, metadata) and their messages, full-text search,
    request statistics, settings and the usage log. Subclasses: :class:`~.sqlite.store.SqliteSessionStore`
    (public alias ``SessionStore``) and :class:`~.postgres.store.PostgresSessionStore`.

    Every method validates session ids first (``check_session_id``), so a malformed id never reaches SQL or
    the file system. ``author`` is recorded on every session and message the store writes. Errors: see the
    module docstring (storage failures are always :class:`~oblix_nb.errors.StorageError`).

    Budget reservations (``reserve_spend``, ``settle_spend``, ``reserved_spend``; engine hook ``_lock_budget``) come
    from :class:`~.reservations.BudgetReservations`.

    Engine hooks (private; only the engine folders implement or call them): ``_write()`` (one transaction,
    rolled back on error), ``_read()`` (one snapshot), ``_source()`` (a session and its message rows, for
    copy/merge), ``_insert_session()`` (a whole session), ``_written()`` (after a committed write of
    searchable text), and the dialect attributes below.
    """

    #: the engine's name ("sqlite" or "postgresql"), for display only: nothing outside the engines branches on it
    engine: str = ""
    #: who writes (recorded on sessions, messages and usage rows)
    author: str
    #: import_file's size cap in bytes (None: env OBLIX_MAX_IMPORT_BYTES, else 256 MiB)
    max_import_bytes: int | None = None

    # ---- dialect hooks
    _PARAM = "?"  # the driver's placeholder; the base writes "?" and :meth:`_sql` rewrites it
    _PER_AUTHOR = False  # settings and usage sums are per author (a shared database)
    #: usage rows become visible in seq order (one writer at a time), so a sum up to the highest seq seen stays
    #: right; False where concurrent writers commit out of seq order (PostgreSQL sequences): see usage.spent
    _SEQ_COMMIT_ORDER = True

    def _sql(self, sql: str) -> str:
        return sql if self._PARAM == "?" else sql.replace("?", self._PARAM)

    def _encode_text(self, text: str) -> str:
        """Text as stored in a plain text column (PostgreSQL escapes NUL; SQLite stores it as is)."""
        return text

    def _decode_text(self, text: str) -> str:
        return text

    def _local_day_sql(self) -> str:
        """SQL of a usage row's calendar day on this machine (``YYYY-MM-DD``) from its ``timestamp``."""
        return "date(timestamp, 'localtime')"

    def _starts_with_sql(self, column: str, prefix: str) -> tuple[str, list]:
        return f"substr({column}, 1, ?) = ?", [len(prefix), prefix]

    _BYTE_ORDER = ""  # the collation clause that sorts text by bytes

    # ---- plumbing every engine provides
    @abc.abstractmethod
    def _write(self): ...

    @abc.abstractmethod
    def _read(self): ...

    @abc.abstractmethod
    def _source(self, conn: Any, session_id: str) -> tuple[dict, list[tuple]]: ...

    @abc.abstractmethod
    def _insert_session(self, conn: Any, session_id: str, title: str, created_at: str, updated_at: str,
                        context: dict | None, metadata: dict | None, rows: list[tuple],
                        author: str | None = None) -> None: ...

    def _read_one(self):
        """A connection for one reading statement (default: :meth:`_read`)."""
        return self._read()

    def _write_one(self):
        """A connection for one writing statement, atomic by itself (default: :meth:`_write`)."""
        return self._write()

    def _written(self) -> None:
        """After a committed write of searchable text (an engine that indexes later schedules it here)."""

    # ------------------------------------------------------------------ where it lives
    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where the store lives, as ``open_store`` and ``python -m oblix_nb migrate`` take it, with any
        password redacted (``***``): for display."""

    @abc.abstractmethod
    def public_url(self) -> str:
        """The store's URL without any password (removed, not redacted): what another process on a machine
        with its own credentials (``~/.pgpass``, ``PGPASSWORD``) opens the same store with, e.g. a worker."""

    def worker_spec(self) -> dict:
        """What a worker process needs to open this store: ``{"database_url": public_url(), "author": ...}``
        (no password, no API key)."""
        return {"database_url": self.public_url(), "author": self.author}

    # ------------------------------------------------------------------ sessions
    @abc.abstractmethod
    def create(self, title: str | None = None, context: dict | None = None,
               metadata: dict | None = None) -> str:
        """Create an empty session; returns its id (a uuid4). Without a title the session is named after its
        creation time (``"Session 2026-11-24 20:51 UTC"``). ``context`` and ``metadata`` must be dicts of JSON
        values (TypeError otherwise); a title must be a str (TypeError)."""

    @abc.abstractmethod
    def exists(self, session_id: str) -> bool:
        """True if there is a session with this id."""

    @abc.abstractmethod
    def get(self, session_id: str) -> dict:
        """The whole session in the reference structure ``{id, title, created_at, updated_at, messages,
        context, metadata}``. SessionNotFoundError for an unknown id."""

    @abc.abstractmethod
    def summaries(self, limit: int | None = 50, filter_metadata: dict | None = None,
                  offset: int = 0, author: str | None = None, with_author: bool = False, *,
                  title_contains: str | None = None, order: str = "updated", descending: bool = True
                  ) -> list[dict]:
        """Session summaries ``{id, title, created_at, updated_at, message_count, metadata}``, most recently
        updated first (equal ``updated_at``: most recently created first); messages are not read.

        ``limit=None`` returns all; a negative limit or offset raises ValueError. ``filter_metadata`` keeps
        sessions whose metadata has every given key with an equal JSON value (types matter: ``1 != "1"``,
        ``True != 1``, but ``1 == 1.0``; nested values compare whole). ``title_contains`` keeps titles
        containing that text (case-insensitive for ASCII letters). ``order``: "updated" (default), "created",
        "title" (case-insensitive), "messages" or "models" (the alphabetically first model that replied),
        descending unless ``descending=False``; ValueError for another. ``author`` keeps that user's sessions;
        ``with_author=True`` adds an ``author`` key."""

    @abc.abstractmethod
    def summary(self, session_id: str) -> dict:
        """One session's summary (as :meth:`summaries` lists it). SessionNotFoundError for an unknown id."""

    @abc.abstractmethod
    def count(self, filter_metadata: dict | None = None, author: str | None = None, *,
              title_contains: str | None = None) -> int:
        """How many sessions match the filters (as :meth:`summaries`)."""

    @abc.abstractmethod
    def change_token(self) -> tuple:
        """A cheap value that changes whenever the stored sessions may have changed (any process's writes):
        equal tokens mean nothing changed, so a view polling it can skip re-reading."""

    @abc.abstractmethod
    def brief(self, session_id: str) -> tuple[str, int] | None:
        """``(title, message_count)`` of a session, or None if there is none."""

    @abc.abstractmethod
    def ids_with_prefix(self, prefix: str, limit: int = 6) -> list[tuple[str, str]]:
        """``(id, title)`` of up to ``limit`` sessions whose id starts with ``prefix``, newest update first.
        TypeError for a non-str prefix."""

    @abc.abstractmethod
    def model_counts(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        """``{session_id: {model_id: assistant replies}}`` for the given sessions (unknown ids: empty)."""

    @abc.abstractmethod
    def session_costs(self, session_ids: list[str]) -> dict[str, float]:
        """``{session_id: sum of its replies' known metrics.cost_usd}``; sessions with no known cost are
        absent."""

    @abc.abstractmethod
    def message_rows(self, session_ids: Iterable[str] | None = None,
                     author: str | None = None) -> list[tuple]:
        """Rows for ``frames.messages_df`` (its MESSAGE_COLUMNS, JSON fields extracted): the messages of
        ``session_ids`` (None: all), only ``author``'s if given, sessions in creation order, messages in
        conversation order. SessionNotFoundError for an unknown id."""

    @abc.abstractmethod
    def delete(self, session_id: str) -> bool:
        """Delete a session with its messages and index entries. False if there was no such session."""

    @abc.abstractmethod
    def update_metadata(self, session_id: str, metadata: dict) -> bool:
        """Shallow-merge ``metadata`` into the session's metadata and bump ``updated_at``. False if there is no
        such session; a non-dict or a non-JSON value raises TypeError and changes nothing."""

    @abc.abstractmethod
    def get_metadata(self, session_id: str) -> dict:
        """The session's metadata (messages are not read). SessionNotFoundError for an unknown id."""

    # ------------------------------------------------------------------ messages
    @abc.abstractmethod
    def append_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        """Append one message. ``role``: "user", "assistant" or "system"; ``content``: str. ``fields``: ``id``,
        ``timestamp`` (any ISO 8601; stored canonical; default now), ``model_id``, ``metrics``, ``routing``,
        ``partial``, ``request_id``, ``source_session_id``; other names raise TypeError. Returns the message
        dict as ``get()`` shows it. A message id already used in the session raises ValueError."""

    @abc.abstractmethod
    def append_messages(self, session_id: str, messages: list[dict]) -> list[dict]:
        """Append several messages (dicts with ``role``, ``content`` and :meth:`append_message`'s fields) in
        one transaction: all or none. Returns the stored dicts (an empty list changes nothing, but an unknown
        session still raises)."""

    @abc.abstractmethod
    def upsert_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        """Store a message under its ``id`` (required: TypeError without): insert it, or replace the session's
        message with that id in place (same position, ``message_count`` unchanged). Fields and errors as
        :meth:`append_message`."""

    @abc.abstractmethod
    def history(self, session_id: str, limit: int | None = None) -> list[dict]:
        """The newest ``limit`` messages (all if None), in chronological order."""

    @abc.abstractmethod
    def last_replies(self, session_id: str, metrics: dict | None = None) -> dict[str, tuple]:
        """Each ``request_id``'s last complete (not partial) assistant message in the session:
        ``{request_id: (content, model_id, route target, *metric values)}``, ``metrics`` mapping names to JSON
        paths inside the message's metrics (``{"out": "$.output_tokens"}``), in its order."""

    # ------------------------------------------------------------------ search and statistics
    @abc.abstractmethod
    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Full-text search over titles and message text, best match first. The query is plain text (every
        word must occur, stemmed; punctuation and operators are literal). Each hit is a session summary plus
        ``"matches"``: up to three ``{message_id, role, snippet}`` (matched words in ``**bold**``). An empty
        query raises ValueError."""

    @abc.abstractmethod
    def stats(self, by: str = "model", since: str | None = None, until: str | None = None,
              filter_metadata: dict | None = None) -> list[dict]:
        """Request statistics per group (``by``: "model", "route", "session" or "day"; ValueError otherwise)
        over ``since <= timestamp < until`` (canonical ISO strings or None) and the sessions
        ``filter_metadata`` selects: one dict per group with ``key`` and :data:`.stats.STATS_COLUMNS`
        (``title`` too for sessions), in no particular order. See :mod:`.stats` for what is counted."""

    @abc.abstractmethod
    def stats_totals(self, group_by: tuple[str, ...] = ("day", "model_id"), since: str | None = None,
                     until: str | None = None, filter_metadata: dict | None = None) -> list[dict]:
        """Reply counts and sums per combination of ``group_by`` columns ("day", "model_id", "route";
        ValueError otherwise)."""

    @abc.abstractmethod
    def stats_sample(self, since: str | None = None, until: str | None = None,
                     filter_metadata: dict | None = None, limit: int = 20_000) -> list[dict]:
        """Up to about ``limit`` replies as dicts ``{timestamp, model_id, route, partial, fallback, ttft, tps,
        input_tokens, output_tokens}``, the same sample on every call."""

    # ------------------------------------------------------------------ bulk transfer (python -m oblix_nb migrate)
    @abc.abstractmethod
    def session_records(self, after_seq: int = 0, limit: int = 500) -> list[dict]:
        """Up to ``limit`` whole sessions after internal position ``after_seq``, in creation order, as stored:
        ``{seq, id, title, created_at, updated_at, context, metadata, author, rows}``."""

    def session_rows(self, session_id: str) -> tuple[dict, list[tuple]]:
        """``({title, context, metadata}, message rows)`` of one session, as stored (the rows in
        :data:`MESSAGE_COLUMNS` order): what a migration compares, row by row, with another store's copy.
        SessionNotFoundError if there is no such session."""
        with self._read() as conn:
            return self._source(conn, session_id)

    def updated_stamp(self, session_id: str) -> str | None:
        """The session's ``updated_at`` as stored, at full (microsecond) precision -- what :meth:`summary` shows
        to the millisecond -- or None if there is no such session; stamps of both engines compare as text."""
        with self._read() as conn:
            row = conn.execute(self._sql("SELECT updated_at FROM sessions WHERE id = ?"), (session_id,)).fetchone()
        return row[0] if row else None

    @abc.abstractmethod
    def insert_records(self, records: list[dict]) -> list[str]:
        """Insert :meth:`session_records` records (from either engine) in one transaction, keeping ids,
        timestamps and authors; ids already present are skipped. Returns the inserted ids."""

    @abc.abstractmethod
    def stored_counts(self, session_ids: list[str]) -> dict[str, int]:
        """``{id: number of message rows}`` for those of ``session_ids`` that exist."""

    @abc.abstractmethod
    def import_file(self, path: str | os.PathLike, new_id: bool = False, max_bytes: int | None = None) -> str:
        """Import a session file (ours, or the original Oblix SDK's); returns the session id. The file is
        validated first (SessionFileError, a ValueError). ``new_id=False`` keeps the file's id (an id already
        stored raises SessionExistsError, nothing overwritten); ``new_id=True`` gives fresh ids and records
        ``imported_from`` in the metadata. All or nothing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections. Idempotent; later calls on the store raise."""

    # ------------------------------------------------------------------ engine-neutral operations
    def messages(self, session_id: str) -> list[dict]:
        """All of the session's messages, in conversation order."""
        return self.history(session_id, limit=None)

    def export(self, session_id: str, path: str | os.PathLike) -> Path:
        """Write the session's reference JSON to ``path`` atomically (parent folders created); returns it.
        StorageError if the file cannot be written."""
        session = self.get(session_id)
        try:
            return write_json_atomic(path, session)
        except OSError as exc:
            raise StorageError(f"cannot export session {session_id} to {path}: {exc.strerror or exc}",
                               path=os.fspath(path), cause=exc) from exc

    def copy(self, session_id: str, new_title: str | None = None) -> str:
        """Copy a session: new session id and message ids, same messages (timestamps too), context and
        metadata; the metadata gains ``copied_from``. Default title ``"Copy of <title>"``. Returns the new id."""
        check_session_id(session_id)
        check_title(new_title)
        copy_id = fresh_id()
        with self._write() as conn:
            now = utcnow()
            title, context, metadata, rows = copy_plan(*self._source(conn, session_id), new_title, session_id)
            self._insert_session(conn, copy_id, title, iso(now), _update_stamp(now), context, metadata, rows)
        self._written()
        return copy_id

    def merge(self, session_ids: list[str], title: str | None = None) -> str:
        """Merge sessions into a new one; returns its id.

        Messages from all sources, ordered by timestamp (ties keep the order of ``session_ids``, then each
        session's order), get fresh ids; each keeps ``source_session_id`` (the session it came from, or the
        one it originally came from if it was already merged). A repeated id counts once. Context and
        metadata are merged in order (later sources win); the metadata records ``merged_from`` (the ids).
        Default title ``"Merged: <title 1> + <title 2> ..."``. An unknown id raises SessionNotFoundError and
        creates nothing; an empty list raises ValueError.
        """
        ids = merge_ids(session_ids)
        check_title(title)
        merged_id = fresh_id()
        with self._write() as conn:
            now = utcnow()
            sources = [(session_id, *self._source(conn, session_id)) for session_id in ids]
            title, context, metadata, rows = merge_plan(sources, title)
            self._insert_session(conn, merged_id, title, iso(now), _update_stamp(now), context, metadata, rows)
        self._written()
        return merged_id

    def session_titles(self, session_ids: Iterable[str] | None = None) -> dict[str, str]:
        """``{session_id: title}`` of the given sessions that exist (None: every session), titles exactly as
        :meth:`get` shows them."""
        ids = None if session_ids is None else [check_session_id(sid) for sid in session_ids]
        return {row[0]: row[1] for row in self._titles(ids)}

    @abc.abstractmethod
    def _titles(self, ids: list[str] | None) -> list[tuple[str, str]]: ...

    # ------------------------------------------------------------------ settings
    def _scope(self) -> tuple[str, list]:
        return ("author = ? AND ", [self.author]) if self._PER_AUTHOR else ("", [])

    def get_setting(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` (``default`` if there is none); on a shared database, this
        store's author's. ValueError/TypeError for a bad key."""
        check_setting_key(key)
        scope, params = self._scope()
        with self._read_one() as conn:
            row = conn.execute(self._sql(f"SELECT value FROM settings WHERE {scope}key = ?"),
                               (*params, self._encode_text(key))).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        """Store ``value`` (any JSON value; TypeError if not JSON) under ``key``, replacing what was there."""
        check_setting_key(key)
        text = dumps(value, f"setting {key!r}")
        scope_columns = "author, " if self._PER_AUTHOR else ""
        _, params = self._scope()
        marks = ", ".join("?" * (len(params) + 2))
        with self._write_one() as conn:
            conn.execute(self._sql(f"INSERT INTO settings ({scope_columns}key, value) VALUES ({marks}) "
                                   f"ON CONFLICT ({scope_columns}key) DO UPDATE SET value = excluded.value"),
                         (*params, self._encode_text(key), text))

    def delete_setting(self, key: str) -> bool:
        """Remove ``key``. False if it was not set."""
        check_setting_key(key)
        scope, params = self._scope()
        with self._write_one() as conn:
            return conn.execute(self._sql(f"DELETE FROM settings WHERE {scope}key = ?"),
                                (*params, self._encode_text(key))).rowcount > 0

    def settings(self, prefix: str = "") -> dict[str, Any]:
        """``{key: value}`` of the settings whose key starts with ``prefix``, sorted by key (bytes).
        TypeError for a non-str prefix."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        scope, params = self._scope()
        starts, starts_params = self._starts_with_sql("key", self._encode_text(prefix))
        with self._read_one() as conn:
            rows = conn.execute(self._sql(f"SELECT key, value FROM settings WHERE {scope}{starts} "
                                          f"ORDER BY key{self._BYTE_ORDER}"), (*params, *starts_params)).fetchall()
        return {self._decode_text(key): json.loads(value) for key, value in rows}

    # ------------------------------------------------------------------ the usage log
    def log_usage(self, row: tuple) -> None:
        """Append one row (:data:`USAGE_COLUMNS` order) to the usage log, as this store's author."""
        if len(row) != len(USAGE_COLUMNS):
            raise ValueError(f"a usage row has {len(USAGE_COLUMNS)} values, not {len(row)}")
        with self._write_one() as conn:
            self._insert_usage(conn, row)

    def _insert_usage(self, conn: Any, row: tuple) -> None:
        if len(row) != len(USAGE_COLUMNS):
            raise ValueError(f"a usage row has {len(USAGE_COLUMNS)} values, not {len(row)}")
        columns = ("author", *USAGE_COLUMNS) if self._PER_AUTHOR else USAGE_COLUMNS
        values = (self.author, *row) if self._PER_AUTHOR else tuple(row)
        conn.execute(self._sql(f"INSERT INTO usage_log ({', '.join(columns)}) "
                               f"VALUES ({', '.join('?' * len(columns))})"), values)

    def usage_spend(self, after_seq: int = 0, since: str | None = None,
                    session_id: str | None = None, upto: int | None = None) -> tuple[int, float]:
        """``(highest usage row seq, USD spent in the rows after after_seq)`` (and at or below ``upto`` if
        given): exact costs, estimates where there is none, logged at or after ``since`` (None: ever), in
        ``session_id`` if given; on a shared database, this store's author's rows only. The log is
        append-only, so sums can be kept incrementally."""
        with self._read() as conn:
            return self._usage_spend(conn, after_seq, since, session_id, upto)

    def _window(self, since: str | None, session_id: str | None) -> tuple[list[str], list[Any]]:
        """``WHERE`` conditions and parameters of a budget window over the usage log or the reservations: at or
        after ``since`` (None: ever), in ``session_id`` (None: any), this store's author's rows on a shared
        database."""
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("timestamp >= ?")
            params.append(since)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if self._PER_AUTHOR:
            where.append("author = ?")
            params.append(self.author)
        return where, params

    def _usage_spend(self, conn: Any, after_seq: int, since: str | None,
                     session_id: str | None, upto: int | None = None) -> tuple[int, float]:
        where, params = self._window(since, session_id)
        where.append("seq > ?")
        params.append(after_seq)
        if upto is not None:
            where.append("seq <= ?")
            params.append(upto)
        sql = (f"SELECT (SELECT COALESCE(MAX(seq), 0) FROM usage_log), {SPEND_SQL} FROM usage_log "
               f"WHERE {' AND '.join(where)}")
        top, added = conn.execute(self._sql(sql), params).fetchone()
        return int(top), float(added)

    def usage_groups(self, by: str = "model") -> list[tuple]:
        """The usage log grouped ``by`` "model", "session" or "day" (this machine's calendar day), oldest first:
        ``(key, replies, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
        cost_estimate_usd, unpriced_replies, spend_usd, first, last)``. ValueError for another ``by``."""
        if by not in USAGE_GROUPS:
            raise ValueError(f"by must be one of {list(USAGE_GROUPS)}, not {by!r}")
        key = {"model": "model_id", "session": "session_id", "day": self._local_day_sql()}[by]
        where, params = ("WHERE author = ?", [self.author]) if self._PER_AUTHOR else ("", [])
        sql = (f"SELECT {key} AS k, count(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
               f"SUM(cache_write_tokens), SUM(cost_usd), SUM(cost_estimate_usd), "
               f"SUM(CASE WHEN cost_usd IS NULL AND cost_estimate_usd IS NULL THEN 1 ELSE 0 END), {SPEND_SQL}, "
               f"MIN(timestamp), MAX(timestamp) FROM usage_log {where} GROUP BY k ORDER BY MIN(timestamp)")
        with self._read() as conn:
            return [tuple(int(v) if isinstance(v, Decimal) else v for v in row)
                    for row in conn.execute(self._sql(sql), params).fetchall()]

