"""SessionStore: every session in one SQLite database.

The database (``<home>/sessions.db``) runs in WAL mode with ``synchronous=NORMAL``, a 30 s busy timeout,
foreign keys on and a checkpoint every 10,000 WAL pages; its schema comes from the numbered migrations in
:mod:`.migrations`. Each write is one ``BEGIN IMMEDIATE`` transaction, rolled back on any error, so several
processes can share a database and a failed write changes nothing. One store may be used from several
threads (the notebook's main thread and the package's asyncio thread): its connection is guarded by a lock.

Appending a message is one INSERT plus a one-row UPDATE of its session (``updated_at``, ``message_count``);
a session is never rewritten. Listing reads only the ``sessions`` table; metadata filters are index lookups
in ``session_meta``; ``search`` uses FTS5, whose indexes are updated in batches by a background pass shortly
after writes (not on every write, which would cost each append an FTS5 segment, nor all at the first search,
which made that search pay the whole backlog).

Failures of the storage itself (disk full, read-only file system or home, unwritable folder, I/O error, not
a database) raise one :class:`~oblix_nb.errors.StorageError` naming the database and the cause; input is
checked first (:mod:`.validate`), so bad input raises before any SQL and changes nothing.

Default titles: ``create()`` without a title names the session after its creation time in UTC
(``"Session 2026-11-24 20:51 UTC"``); ``copy()`` uses ``"Copy of <title>"``; ``merge()`` uses
``"Merged: <title 1> + <title 2> ..."``.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from .. import runtime
from .._util import block_interrupts, check_session_id, current_user, iso, parse_iso, utcnow
from .._util import new_id as fresh_id
from ..errors import SessionExistsError, SessionNotFoundError, StorageError
from . import stats as stats_module
from .io import normalize_message, parse_session_file, write_json_atomic
from .migrations import LATEST_VERSION, STATS_CATCH_UP_CHUNK, STATS_LOWER_MARK, STATS_PENDING, migrate, \
    schema_version
from .validate import canonical_json, check_json, check_limit, check_query, check_setting_key, check_text, \
    check_title, dumps, json_object

BUSY_TIMEOUT_S = 30.0
WAL_AUTOCHECKPOINT_PAGES = 10_000
MAX_MATCHES_PER_HIT = 3
INDEX_DELAY_S = 0.05      # a background indexing pass starts this long after a write (writes in between share it)
INDEX_CHUNK_ROWS = 200    # rows indexed per transaction: a writer waits at most one chunk (~1-2 ms)
SEARCH_CATCHUP_S = 0.02   # the longest a search spends indexing a large backlog itself
SEARCH_CATCHUP_ROWS = 2000  # a backlog up to this size (~20 ms of indexing) is always indexed before a search
# stats(): (reply_stats group column, request_prompts group expression) per ``by``; the columns have
# percentile indexes (migration 3). Unanswered prompts have no model or route.
_STATS_KEYS = {"model": ("model_id", "NULL"), "route": ("route", "NULL"),
               "session": ("session_seq", "session_seq"), "day": ("day", "substr(timestamp, 1, 10)")}
STATS_CHUNK_ROWS = 20_000  # messages indexed into the stats tables per write transaction
_STATS_SESSIONS = "temp.oblix_stats_sessions"  # the sessions a stats call's filter_metadata selects
_STATS_RANKS = "temp.oblix_stats_ranks"  # (group key, rank) pairs a windowed percentile pass keeps
_STATS_WINDOW_GROUPS = 1_000  # above this many groups, percentiles come from one window pass per metric
_STATS_MAX_PARAMS = 30_000  # below SQLite's 32,766 bound parameters per statement
_STATS_READS_PER_STATEMENT = 500  # result columns per statement (SQLite allows 2,000)
_STATS_SUM_NAMES = ("requests", "errors", "partial", "fallbacks", "input_tokens", "output_tokens", "cost_usd",
                    "cost_unknown")
_STATS_SUMS = ("count(*), sum(error), sum(partial), sum(fallback), IFNULL(sum(input_tokens), 0), "
               "IFNULL(sum(output_tokens), 0), sum(cost_usd), count(*) - count(cost_usd)")

# A message row as read and written: the order of the columns below, after ``session_seq``.
# ``author`` (who wrote the row) is last: it is not part of the message dict.
MESSAGE_COLUMNS = ("id", "role", "content", "timestamp", "model_id", "metrics", "routing", "partial",
                   "request_id", "source_session_id", "author")
_SELECT_MESSAGES = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE session_seq = ?"
_INSERT_MESSAGE = (f"INSERT INTO messages (session_seq, {', '.join(MESSAGE_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * (len(MESSAGE_COLUMNS) + 1))})")
_UPDATE_MESSAGE = (f"UPDATE messages SET {', '.join(f'{c} = ?' for c in MESSAGE_COLUMNS[1:])} "
                   f"WHERE session_seq = ? AND id = ?")
_SUMMARY_COLUMNS = "id, title, created_at, updated_at, message_count, metadata"
# (fts_progress name, content table, FTS5 table, indexed column)
_FTS_TABLES = (("messages", "messages", "messages_fts", "content"), ("titles", "sessions", "titles_fts", "title"))
_FTS_BACKLOG = "SELECT " + " + ".join(
    f"MAX(0, IFNULL((SELECT MAX(seq) FROM {table}), 0) - (SELECT last_seq FROM fts_progress WHERE name = '{name}'))"
    for name, table, _, _ in _FTS_TABLES)
_FTS_PENDING = "SELECT " + " OR ".join(
    f"(SELECT last_seq FROM fts_progress WHERE name = '{name}') < IFNULL((SELECT MAX(seq) FROM {table}), 0)"
    for name, table, _, _ in _FTS_TABLES)


def _update_stamp(dt: Optional[datetime] = None) -> str:
    """``updated_at`` as stored: ISO 8601 UTC with microseconds (``2023-07-15T14:35:46.789123Z``), so sessions
    updated within the same millisecond still list in update order. Shown with milliseconds (:func:`_ms`)."""
    return (dt or utcnow()).isoformat(timespec="microseconds")[:26] + "Z"  # dt is UTC: drop "+00:00"


def _ms(stamp: str) -> str:
    """A stored ``updated_at`` in the canonical millisecond form."""
    return stamp[:23] + "Z"


def _where(filter_metadata: Optional[dict], author: Optional[str]) -> tuple[str, list]:
    """SQL WHERE clause (and parameters) for a metadata filter and an author filter on ``sessions``."""
    where, params = _metadata_where(filter_metadata)
    if check_author(author) is None:
        return where, params
    return (f"{where} AND author = ?" if where else "WHERE author = ?"), [*params, author]


def _metadata_sessions(filter_metadata: Optional[dict]) -> tuple[str, list]:
    """A SELECT of the ``seq`` of sessions whose metadata matches every given key (and its parameters);
    ``("", [])`` when there is no filter."""
    if filter_metadata is None:
        return "", []
    if not isinstance(filter_metadata, dict):
        raise TypeError(f"filter_metadata must be a dict, not {type(filter_metadata).__name__}")
    check_json(filter_metadata, "filter_metadata")  # depth counted as for stored metadata
    subqueries, params = [], []
    for key, value in filter_metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"filter_metadata keys must be strings, not {type(key).__name__}")
        check_text(key, "filter_metadata key")
        subqueries.append("SELECT session_seq FROM session_meta WHERE key = ? AND value = ?")
        params += [key, canonical_json(value, f"filter_metadata[{key!r}]")]
    return " INTERSECT ".join(subqueries), params


def _metadata_where(filter_metadata: Optional[dict]) -> tuple[str, list]:
    """SQL WHERE clause (and its parameters) selecting sessions whose metadata matches every given key."""
    select, params = _metadata_sessions(filter_metadata)
    return (f"WHERE seq IN ({select})", params) if select else ("", [])


def _stats_where(since: Optional[str], until: Optional[str],
                 filter_metadata: Optional[dict]) -> tuple[str, list, Optional[tuple[str, list]]]:
    """`` AND ...`` conditions (and parameters) on a stats table's ``timestamp`` and ``session_seq``, and the
    query filling :data:`_STATS_SESSIONS` with the sessions ``filter_metadata`` selects (None: no filter)."""
    conditions, params = [], []
    if since is not None:
        conditions.append("timestamp >= ?")
        params.append(since)
    if until is not None:
        conditions.append("timestamp < ?")
        params.append(until)
    sessions_select, meta_params = _metadata_sessions(filter_metadata)
    fill = None
    if sessions_select:
        conditions.append(f"session_seq IN {_STATS_SESSIONS}")
        fill = (sessions_select, meta_params)
    return "".join(f" AND {c}" for c in conditions), params, fill


def _select_sessions(conn: sqlite3.Connection, fill: Optional[tuple[str, list]]) -> None:
    """Materialise the sessions a metadata filter selects, once per stats call (an ``IN (subquery)`` would be
    evaluated again by every percentile read). A TEMP table: private to this connection, fine read-only."""
    if fill is None:
        return
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STATS_SESSIONS.split('.')[1]} (seq INTEGER PRIMARY KEY)")
    conn.execute(f"DELETE FROM {_STATS_SESSIONS}")
    conn.execute(f"INSERT INTO {_STATS_SESSIONS} {fill[0]}", fill[1])


# summaries(order=...): the SQL sort key of each order (ties: most recently created first)
SUMMARY_ORDERS = {
    "updated": "updated_at",
    "created": "created_at",
    "title": "title COLLATE NOCASE",
    "messages": "message_count",
    # the alphabetically first model that answered in the session (NULL — none — sorts first ascending)
    "models": "(SELECT min(m.model_id) FROM messages m WHERE m.session_seq = sessions.seq "
              "AND m.role = 'assistant')",
}


def _summary_where(filter_metadata: Optional[dict], title_contains: Optional[str],
                   author: Optional[str] = None) -> tuple[str, list]:
    """WHERE clause for :meth:`SessionStore.summaries`/``count``: metadata match, author and a title substring."""
    where, params = _where(filter_metadata, author)
    if title_contains:
        if not isinstance(title_contains, str):
            raise TypeError(f"title_contains must be a str, not {type(title_contains).__name__}")
        pattern = "%" + title_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = (where + " AND " if where else "WHERE ") + "title LIKE ? ESCAPE '\\'"
        params = params + [pattern]
    return where, params


def _default_title(created_at: str) -> str:
    """``"Session 2026-11-24 20:51 UTC"`` for a session created at that (canonical) time."""
    return f"Session {created_at[:10]} {created_at[11:16]} UTC"


def _message_row(message: dict, author: Optional[str]) -> tuple:
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


def check_author(author: Any) -> Optional[str]:
    """An ``author`` filter: None (anyone) or a non-empty string."""
    if author is not None and (not isinstance(author, str) or not author):
        raise TypeError(f"author must be a non-empty string or None, not {author!r}")
    return author


def copy_plan(source: dict, rows: list[tuple], new_title: Optional[str], session_id: str) -> tuple:
    """``(title, context, metadata, rows)`` of a copy of ``source`` (title/context/metadata) with message
    ``rows``: fresh message ids, everything else (authors too) kept; the metadata gains ``copied_from``."""
    title = new_title if new_title is not None else f"Copy of {source['title']}"
    metadata = {**source["metadata"], "copied_from": session_id}
    return title, source["context"], metadata, [(fresh_id(), *row[1:]) for row in rows]


def merge_plan(sources: list[tuple[str, dict, list[tuple]]], title: Optional[str]) -> tuple:
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


def import_plan(path: str | os.PathLike, new_id: bool, author: Optional[str],
                max_bytes: Optional[int] = None) -> dict:
    """A session file parsed and ready to insert: ``{id, title, created_at, updated_at (as stored), context,
    metadata, rows}`` (see :meth:`SessionStore.import_file`); its messages are recorded as ``author``'s."""
    doc = parse_session_file(path, max_bytes=max_bytes)
    session_id, metadata, messages = doc["id"], doc["metadata"], doc["messages"]
    if new_id:
        metadata = {**metadata, "imported_from": {
            "session_id": session_id, "file": str(Path(os.fspath(path)).expanduser().resolve()),
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


def frame_ids(session_ids: Optional[Iterable[str]]) -> Optional[list[str]]:
    """The distinct, validated ids of a ``message_rows`` call (None: every session)."""
    if session_ids is None:
        return None
    if isinstance(session_ids, str):
        session_ids = [session_ids]
    return [check_session_id(session_id) for session_id in dict.fromkeys(session_ids)]


# frames.MESSAGE_COLUMNS, as SQLite expressions over messages m JOIN sessions s.
_FRAME_SELECT = ", ".join([
    "s.id", "s.title", "m.id", "m.role", "m.content", "m.timestamp", "m.model_id",
    "json_extract(m.routing, '$.target')", "json_extract(m.metrics, '$.time_to_first_token')",
    "json_extract(m.metrics, '$.tokens_per_second')", "json_extract(m.metrics, '$.total_latency')",
    "json_extract(m.metrics, '$.input_tokens')", "json_extract(m.metrics, '$.output_tokens')",
    "json_extract(m.metrics, '$.cost_usd')", "m.partial", "m.request_id", "m.author"])


def exists_message(session_id: str, where: str) -> str:
    """The SessionExistsError text for an import whose id is already in the store at ``where``."""
    return (f"session {session_id} already exists in {where}; it was not overwritten "
            f"(import with new_id=True to add the file as a new session)")


def _fts_query(query: str) -> str:
    """The user's text as an FTS5 query: every whitespace-separated term quoted (so ``-``, ``:``, ``"``,
    ``AND``, ``*`` are plain text), all terms required."""
    # NUL would end the FTS5 query string early; the tokenizer treats it as a separator anyway.
    return " ".join('"' + term.replace('"', '""').replace("\x00", " ") + '"' for term in query.split())


# SQLite primary result codes that mean the storage failed (not the caller's input).
_STORAGE_CODES = {
    3: "permission denied",                                          # SQLITE_PERM
    5: "the database is locked by another process",                  # SQLITE_BUSY
    8: "the database is read-only (read-only file system or home, or no write permission)",  # SQLITE_READONLY
    10: "disk I/O error",                                            # SQLITE_IOERR
    11: "the database file is corrupt",                              # SQLITE_CORRUPT
    13: "the disk is full",                                          # SQLITE_FULL
    14: "cannot open the database file (missing folder or no permission)",  # SQLITE_CANTOPEN
    26: "the file is not a session database",                        # SQLITE_NOTADB
}


def storage_error(exc: sqlite3.Error, path: Path, action: str) -> Exception:
    """SQLite's error as the StorageError a user sees (naming the database and the cause), if it is a storage
    failure; otherwise ``exc`` itself (a bug or a constraint, not the disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    reason = _STORAGE_CODES.get(code & 0xFF) if isinstance(code, int) else None
    if reason is None:
        text = str(exc).lower()
        reason = next((r for c, r in _STORAGE_CODES.items() if _MESSAGES[c] in text), None)
    if reason is None:
        return exc
    error = StorageError(f"cannot {action} the session database {path}: {reason} ({exc})", path=str(path),
                         cause=exc)
    error.reason = reason
    return error


_MESSAGES = {3: "access permission denied", 5: "database is locked", 8: "readonly database", 10: "disk i/o error",
             11: "malformed", 13: "database or disk is full", 14: "unable to open database file",
             26: "file is not a database"}


def _not_writable(path: Path) -> Optional[str]:
    """Why the database file (if it exists) or its folder cannot be written (None if they can)."""
    if (not path.exists() or os.access(path, os.W_OK)) and os.access(path.parent, os.W_OK):
        return None
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "no write permission"



class SharedOps:
    """The store methods both engines share: built on each engine's ``_write()`` (one transaction),
    ``_source()`` (a session and its message rows), ``_insert_session()`` (a whole session) and
    ``_written()`` (after a committed write of searchable text)."""

    def messages(self, session_id: str) -> list[dict]:
        """All of the session's messages, in conversation order."""
        return self.history(session_id, limit=None)

    def export(self, session_id: str, path: str | os.PathLike) -> Path:
        """Write the session's reference JSON to ``path`` atomically (parent folders created); returns it."""
        session = self.get(session_id)
        try:
            return write_json_atomic(path, session)
        except OSError as exc:
            raise StorageError(f"cannot export session {session_id} to {path}: {exc.strerror or exc}",
                               path=os.fspath(path), cause=exc) from exc

    def copy(self, session_id: str, new_title: Optional[str] = None) -> str:
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

    def merge(self, session_ids: list[str], title: Optional[str] = None) -> str:
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


class SessionStore(SharedOps):
    """Sessions and their messages in one SQLite database at ``path`` (created, with its folders, if missing).

    Every method validates session ids first (``check_session_id``), so a malformed id never reaches SQL
    or the file system. Unknown ids raise SessionNotFoundError (a KeyError), except where the reference API
    returns False (``delete``, ``update_metadata``).

    ``author`` (default :func:`current_user`: env ``OBLIX_USER``, else the OS user) is recorded on every
    session and message this store writes. The PostgreSQL engine (:mod:`.pg`) has the same interface.
    """

    engine = "sqlite"

    def __init__(self, path: str | os.PathLike, *, author: Optional[str] = None,
                 max_import_bytes: Optional[int] = None):
        self.author = check_author(author) or current_user()
        self.path = Path(os.fspath(path)).expanduser()
        #: import_file's size cap in bytes (None: env OBLIX_MAX_IMPORT_BYTES, else 256 MiB)
        self.max_import_bytes = max_import_bytes
        #: why the store could only be opened read-only (a read-only home), else None
        self.read_only: Optional[str] = None
        #: index new text for search in the background after writes (False: only when a search runs)
        self.background_index = True
        #: the longest a search indexes pending rows itself, in seconds (None: all of them, the old behaviour)
        self.search_catchup_s: Optional[float] = SEARCH_CATCHUP_S
        self.index_error: Optional[BaseException] = None  # the last background indexing failure, if any
        self._index_wanted = False
        self._closed = False
        self._lock = threading.RLock()
        self._reader: Optional[sqlite3.Connection] = None  # searches' own connection, opened on first search
        self._reader_lock = threading.Lock()
        self._writes = 0  # visible writes committed through this connection (data_version skips them)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the folder of the session database {self.path}: "
                               f"{exc.strerror or exc}", path=str(self.path), cause=exc) from exc
        try:
            self._conn = self._open_read_write()
        except sqlite3.Error as exc:
            error = storage_error(exc, self.path, "open")
            if isinstance(error, StorageError) and not self.path.is_file():
                why = _not_writable(self.path)
                if why:
                    error = StorageError(f"cannot create the session database {self.path}: {why}",
                                         path=str(self.path), cause=exc)
            if not isinstance(error, StorageError) or not self.path.is_file():
                raise error from exc
            self._conn = self._open_read_only(error)
        else:
            self.read_only = _not_writable(self.path)  # SQLite falls back to reading silently
            with self._locked("read") as conn:
                if conn.execute(_FTS_PENDING).fetchone()[0]:  # e.g. written by an older version
                    self._written()

    def _open_read_write(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoint every ~40 MB of WAL rather than every 4 MB: each checkpoint costs two fsyncs, which
            # would otherwise dominate the wall time of many small appends.
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self, why: "StorageError") -> sqlite3.Connection:
        """A read-only home: open the existing database for reading only (``mode=ro``; ``immutable=1`` when
        the folder cannot even hold WAL's shared-memory file). Writes then raise StorageError."""
        uri = self.path.resolve().as_uri()
        last: BaseException = why
        for params in ("mode=ro", "immutable=1"):
            try:
                conn = sqlite3.connect(f"{uri}?{params}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                version = schema_version(conn)
                conn.execute("SELECT count(*) FROM sessions").fetchone()
            except sqlite3.Error as exc:
                conn.close()
                last = exc
                continue
            if version != LATEST_VERSION:
                conn.close()
                raise StorageError(f"the session database {self.path} is read-only ({why.reason}) and has schema "
                                   f"version {version}, not {LATEST_VERSION}: it cannot be upgraded in place",
                                   path=str(self.path), cause=why)
            self.read_only = _not_writable(self.path) or why.reason
            return conn
        raise StorageError(f"cannot open the session database {self.path}: {why.reason}",
                           path=str(self.path), cause=last) from last

    def __repr__(self) -> str:
        return f"<SessionStore {str(self.path)!r}>"

    @property
    def url(self) -> str:
        """``sqlite:PATH``: where this store lives, as ``python -m oblix_nb migrate`` takes it."""
        return f"sqlite:{self.path}"

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; SQLite's storage failures come out as one StorageError."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, action) from exc

    @contextmanager
    def _write(self, visible: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back if anything raises: a failed write
        (disk full, read-only, I/O error: StorageError) leaves the database as it was. ``visible=False``: a
        write that changes nothing a reader sees (search indexing): it does not move :meth:`change_token`."""
        if self.read_only is not None:
            raise StorageError(f"cannot write to the session database {self.path}: it is open read-only "
                               f"({self.read_only})", path=str(self.path))
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                    if visible:
                        self._writes += 1
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, "write to") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the statements inside see a single snapshot of the database."""
        with self._locked("read") as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @staticmethod
    def _seq(conn: sqlite3.Connection, session_id: str) -> int:
        row = conn.execute("SELECT seq FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        return row[0]

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, seq: int, metadata: dict) -> None:
        """Index ``metadata``'s keys for ``seq`` in session_meta (insert or replace those keys)."""
        if metadata:
            conn.executemany("INSERT OR REPLACE INTO session_meta (session_seq, key, value) VALUES (?, ?, ?)",
                             [(seq, key, canonical_json(value)) for key, value in metadata.items()])

    def _insert_session(self, conn: sqlite3.Connection, session_id: str, title: str, created_at: str,
                        updated_at: str, context: Optional[dict], metadata: Optional[dict],
                        rows: list[tuple], author: Optional[str] = None) -> None:
        """Insert a whole session; ``updated_at`` as :func:`_update_stamp`, ``rows`` are message rows
        (MESSAGE_COLUMNS order); ``author`` defaults to this store's. Invalid context or metadata raise
        TypeError (rolling the write back)."""
        _, context_json = json_object(context, "context")
        metadata, metadata_json = json_object(metadata, "metadata")
        seq = conn.execute(
            "INSERT INTO sessions (id, title, created_at, updated_at, context, metadata, message_count, author) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, title, created_at, updated_at, context_json, metadata_json, len(rows),
             author or self.author)).lastrowid
        self._set_meta(conn, seq, metadata)
        if rows:
            conn.executemany(_INSERT_MESSAGE, [(seq, *row) for row in rows])

    def _source(self, conn: sqlite3.Connection, session_id: str) -> tuple[dict, list[tuple]]:
        """A session's row (title, context, metadata) and its message rows, for copy and merge."""
        row = conn.execute("SELECT seq, title, context, metadata FROM sessions WHERE id = ?",
                           (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        seq, title, context, metadata = row
        rows = conn.execute(_SELECT_MESSAGES + " ORDER BY seq", (seq,)).fetchall()
        return {"title": title, "context": json.loads(context), "metadata": json.loads(metadata)}, rows

    # ------------------------------------------------------------------ sessions
    def create(self, title: Optional[str] = None, context: Optional[dict] = None,
               metadata: Optional[dict] = None) -> str:
        """Create an empty session; returns its id (a uuid4).

        Without a title the session is named after its creation time: ``"Session 2026-11-24 20:51 UTC"``.
        ``context`` and ``metadata`` must be dicts of JSON values (TypeError otherwise).
        """
        check_title(title)
        json_object(context, "context")  # validate before touching the database
        json_object(metadata, "metadata")
        session_id = fresh_id()
        with self._write() as conn:
            now = utcnow()
            created_at = iso(now)
            if title is None:
                title = _default_title(created_at)
            self._insert_session(conn, session_id, title, created_at, _update_stamp(now), context, metadata, [])
        self._written()
        return session_id

    def exists(self, session_id: str) -> bool:
        """True if there is a session with this id."""
        check_session_id(session_id)
        with self._locked("read") as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None

    def get(self, session_id: str) -> dict:
        """The whole session in the reference structure:
        ``{id, title, created_at, updated_at, messages, context, metadata}``."""
        check_session_id(session_id)
        with self._read() as conn:
            row = conn.execute("SELECT seq, id, title, created_at, updated_at, context, metadata "
                               "FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            rows = conn.execute(_SELECT_MESSAGES + " ORDER BY seq", (row[0],)).fetchall()
        return {"id": row[1], "title": row[2], "created_at": row[3], "updated_at": _ms(row[4]),
                "messages": [_message_dict(r) for r in rows], "context": json.loads(row[5]),
                "metadata": json.loads(row[6])}

    def summaries(self, limit: Optional[int] = 50, filter_metadata: Optional[dict] = None,
                  offset: int = 0, author: Optional[str] = None, with_author: bool = False, *,
                  title_contains: Optional[str] = None, order: str = "updated", descending: bool = True
                  ) -> list[dict]:
        """Session summaries ``{id, title, created_at, updated_at, message_count, metadata}``, most recently
        updated first (equal ``updated_at``: most recently created first).

        ``limit=None`` returns all. ``filter_metadata`` keeps sessions whose metadata has every given key with
        an equal JSON value: types matter (``1`` != ``"1"``, ``True`` != ``1``) but ``1 == 1.0``; nested
        values compare as whole JSON values. Served by the session_meta index; messages are not read.
        ``title_contains`` keeps titles containing that text (case-insensitive for ASCII letters).
        ``order`` sorts by ``"updated"`` (default), ``"created"``, ``"title"`` (case-insensitive),
        ``"messages"`` (count) or ``"models"`` (the alphabetically first model that replied), descending
        unless ``descending=False``; ValueError for another order. ``author`` keeps the sessions that user
        created; ``with_author=True`` adds an ``author`` key to each summary.
        """
        sql_limit = check_limit(limit)
        sql_offset = check_limit(offset, "offset")
        if order not in SUMMARY_ORDERS:
            raise ValueError(f"order must be one of {sorted(SUMMARY_ORDERS)}, not {order!r}")
        where, params = _summary_where(filter_metadata, title_contains, author)
        direction = "DESC" if descending else "ASC"
        columns = _SUMMARY_COLUMNS + (", author" if with_author else "")
        sql = (f"SELECT {columns} FROM sessions {where} "
               f"ORDER BY {SUMMARY_ORDERS[order]} {direction}, seq {direction} LIMIT ? OFFSET ?")
        with self._locked("read") as conn:
            rows = conn.execute(sql, (*params, sql_limit, sql_offset)).fetchall()
        return [_summary(row) for row in rows]

    def summary(self, session_id: str) -> dict:
        """One session's summary (the dict :meth:`summaries` lists), without reading its messages."""
        check_session_id(session_id)
        with self._locked("read") as conn:
            row = conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        return _summary(row)

    def count(self, filter_metadata: Optional[dict] = None, author: Optional[str] = None, *,
              title_contains: Optional[str] = None) -> int:
        """How many sessions match ``filter_metadata``, ``author`` and ``title_contains`` (as :meth:`summaries`)."""
        where, params = _summary_where(filter_metadata, title_contains, author)
        with self._locked("read") as conn:
            return conn.execute(f"SELECT count(*) FROM sessions {where}", params).fetchone()[0]

    def change_token(self) -> tuple[int, int]:
        """A cheap value that changes whenever the database may have changed: SQLite's ``PRAGMA data_version``
        (bumped by commits of *other* connections, e.g. another kernel) and the count of this store's own
        visible writes. Equal tokens mean nothing changed, so a view polling this can skip re-reading."""
        with self._locked("read") as conn:
            return conn.execute("PRAGMA data_version").fetchone()[0], self._writes

    def brief(self, session_id: str) -> Optional[tuple[str, int]]:
        """``(title, message_count)`` of a session, or None if there is none (for one-line descriptions)."""
        check_session_id(session_id)
        with self._locked("read") as conn:
            return conn.execute("SELECT title, message_count FROM sessions WHERE id = ?", (session_id,)).fetchone()

    def ids_with_prefix(self, prefix: str, limit: int = 6) -> list[tuple[str, str]]:
        """``(id, title)`` of up to ``limit`` sessions whose id starts with ``prefix``, newest update first."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        with self._locked("read") as conn:
            return conn.execute(
                "SELECT id, title FROM sessions WHERE substr(id, 1, ?) = ? ORDER BY updated_at DESC LIMIT ?",
                (len(prefix), prefix, check_limit(limit))).fetchall()

    def model_counts(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        """``{session_id: {model_id: assistant replies}}`` for the given sessions, in one grouped query."""
        ids = [check_session_id(sid) for sid in session_ids]
        out: dict[str, dict[str, int]] = {sid: {} for sid in ids}
        if not ids:
            return out
        marks = ",".join("?" * len(ids))
        with self._locked("read") as conn:
            rows = conn.execute(
                f"SELECT s.id, m.model_id, count(*) FROM sessions s JOIN messages m ON m.session_seq = s.seq "
                f"WHERE s.id IN ({marks}) AND m.role = 'assistant' AND m.model_id IS NOT NULL "
                f"GROUP BY s.id, m.model_id", ids).fetchall()
        for sid, model_id, n in rows:
            out[sid][model_id] = n
        return out

    def session_costs(self, session_ids: list[str]) -> dict[str, float]:
        """``{session_id: sum of its replies' known metrics.cost_usd}``; sessions with no known cost are absent."""
        ids = [check_session_id(sid) for sid in session_ids]
        out: dict[str, float] = {}
        with self._read() as conn:
            for start in range(0, len(ids), 500):  # stay under SQLite's variable limit
                chunk = ids[start:start + 500]
                out.update(conn.execute(
                    f"SELECT s.id, SUM(json_extract(m.metrics, '$.cost_usd')) FROM sessions AS s "
                    f"JOIN messages AS m ON m.session_seq = s.seq WHERE s.id IN ({', '.join('?' * len(chunk))}) "
                    f"AND m.role = 'assistant' AND m.metrics IS NOT NULL GROUP BY s.id "
                    f"HAVING count(json_extract(m.metrics, '$.cost_usd')) > 0", chunk).fetchall())
        return out

    def message_rows(self, session_ids: Optional[Iterable[str]] = None,
                     author: Optional[str] = None) -> list[tuple]:
        """Rows for ``frames.messages_df`` (its MESSAGE_COLUMNS, JSON fields extracted by SQLite): the messages
        of ``session_ids`` (None: all), only ``author``'s if given, sessions in creation order, messages in
        conversation order. An unknown id raises SessionNotFoundError."""
        ids = frame_ids(session_ids)
        check_author(author)
        sql = f"SELECT {_FRAME_SELECT} FROM messages AS m JOIN sessions AS s ON s.seq = m.session_seq WHERE 1"
        params: list = []
        with self._read() as conn:
            if ids is not None:
                marks = ", ".join("?" * len(ids))
                found = {row[0] for row in conn.execute(
                    f"SELECT id FROM sessions WHERE id IN ({marks})", ids)} if ids else set()
                missing = [i for i in ids if i not in found]
                if missing:
                    raise SessionNotFoundError(missing[0])
                sql += f" AND s.id IN ({marks})" if ids else " AND 0"
                params += ids
            if author is not None:
                sql += " AND m.author = ?"
                params.append(author)
            return conn.execute(sql + " ORDER BY m.session_seq, m.seq", params).fetchall()

    def stats(self, by: str = "model", since: Optional[str] = None, until: Optional[str] = None,
              filter_metadata: Optional[dict] = None) -> list[dict]:
        """Request statistics per group, computed in SQL from the ``reply_stats`` / ``request_prompts`` tables
        (see :mod:`.migrations`, version 3, and :mod:`.stats` for what each column counts).

        ``by``: "model", "route", "session" or "day"; ``since``/``until``: canonical ISO bounds (inclusive /
        exclusive) or None; ``filter_metadata`` as in :meth:`summaries`. Returns one dict per group:
        ``key`` (model id, route, session id or ``YYYY-MM-DD``; None for requests without a model/route),
        the :data:`.stats.STATS_COLUMNS`, and ``title`` for sessions. Groups come in no particular order.

        One aggregate scan (GROUP BY) gives the counts and sums; the percentiles are read from covering
        indexes in their order, never sorted (:meth:`_stats_percentiles`).
        """
        by = stats_module.check_by(by)
        key, prompt_key = _STATS_KEYS[by]
        where, params, fill = _stats_where(since, until, filter_metadata)
        self._update_stats_tables()
        groups: dict = {}
        with self._read() as conn:
            _select_sessions(conn, fill)
            for row in conn.execute(
                    f"SELECT {key}, {_STATS_SUMS}, count(ttft), count(tps) FROM reply_stats NOT INDEXED "
                    f"WHERE 1{where} GROUP BY 1", params):
                groups[row[0]] = {"key": row[0], **dict(zip(_STATS_SUM_NAMES, row[1:-2])),
                                  "_n": {"ttft": row[-2], "tps": row[-1]}}
            for group_key, unanswered in conn.execute(
                    f"SELECT {prompt_key}, count(*) FROM request_prompts INDEXED BY request_prompts_unanswered "
                    f"WHERE answered = 0{where} GROUP BY 1",
                    params):
                group = groups.setdefault(group_key, {
                    "key": group_key, **dict.fromkeys(_STATS_SUM_NAMES, 0), "cost_usd": None,
                    "_n": {"ttft": 0, "tps": 0}})
                group["requests"] += unanswered
                group["errors"] += unanswered
            self._stats_percentiles(conn, key, where, params, list(groups.values()))
            if by == "session":
                names = {seq: (sid, title) for seq, sid, title in conn.execute(
                    "SELECT seq, id, title FROM sessions WHERE seq IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(groups)),))}
                for group in groups.values():
                    group["key"], group["title"] = names[group["key"]]
        for group in groups.values():
            del group["_n"]
        return list(groups.values())

    def stats_totals(self, group_by: tuple[str, ...] = ("day", "model_id"), since: Optional[str] = None,
                     until: Optional[str] = None, filter_metadata: Optional[dict] = None) -> list[dict]:
        """Reply counts and sums per combination of ``group_by`` columns ("day", "model_id", "route"), in
        one GROUP BY: dicts with those columns and ``requests`` (replies here: unanswered prompts are not
        included), errors, partial, fallbacks, input_tokens, output_tokens, cost_usd, cost_unknown."""
        columns = list(group_by)
        for column in columns:
            if column not in ("day", "model_id", "route"):
                raise ValueError(f"group_by columns must be 'day', 'model_id' or 'route', not {column!r}")
        where, params, fill = _stats_where(since, until, filter_metadata)
        self._update_stats_tables()
        keys = ", ".join(columns) or "NULL"
        with self._read() as conn:
            _select_sessions(conn, fill)
            rows = conn.execute(f"SELECT {keys}, {_STATS_SUMS} FROM reply_stats NOT INDEXED WHERE 1{where} "
                                f"GROUP BY {', '.join(str(i + 1) for i in range(max(1, len(columns))))}",
                                params).fetchall()
        return [{**dict(zip(columns, row)), **dict(zip(_STATS_SUM_NAMES, row[max(1, len(columns)):]))}
                for row in rows]

    def stats_sample(self, since: Optional[str] = None, until: Optional[str] = None,
                     filter_metadata: Optional[dict] = None, limit: int = 20_000) -> list[dict]:
        """Up to about ``limit`` replies (all when fewer) as dicts ``{timestamp, model_id, route, partial,
        fallback, ttft, tps, input_tokens, output_tokens}``, for plots of distributions. Larger sets are
        thinned by a hash of the row id, so the sample spreads evenly over time and groups and is the same
        on every call."""
        sql_limit = check_limit(limit)
        where, params, fill = _stats_where(since, until, filter_metadata)
        self._update_stats_tables()
        columns = ("timestamp", "model_id", "route", "partial", "fallback", "ttft", "tps", "input_tokens",
                   "output_tokens")
        with self._read() as conn:
            _select_sessions(conn, fill)
            total = conn.execute(f"SELECT count(*) FROM reply_stats NOT INDEXED WHERE 1{where}", params).fetchone()[0]
            thin = ""
            if sql_limit >= 0 and total > sql_limit:
                thin = f" AND (seq * 2654435761) % 1000003 < {int(1000003 * sql_limit / total)}"
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM reply_stats NOT INDEXED WHERE 1{where}{thin} "
                                f"ORDER BY seq", params).fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def _update_stats_tables(self) -> None:
        """Index the messages written since the last stats call into the stats tables (see
        :mod:`.migrations`, version 3), ``STATS_CHUNK_ROWS`` messages per write transaction (so a writer in
        another kernel waits at most one chunk); nothing to do costs one read. A read-only store is not
        brought up to date: its stats show what was indexed while it was writable."""
        if self.read_only is not None:
            return
        while True:
            with self._locked("read") as conn:
                if not conn.execute(STATS_PENDING).fetchone()[0]:
                    return
            with self._write(visible=False) as conn:
                last = conn.execute("SELECT last_seq FROM stats_progress").fetchone()[0]
                upper = conn.execute("SELECT seq FROM messages WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
                                     (last, STATS_CHUNK_ROWS - 1)).fetchone()
                if upper is None:
                    upper = conn.execute("SELECT IFNULL(MAX(seq), 0) FROM messages").fetchone()
                for statement in STATS_CATCH_UP_CHUNK:
                    conn.execute(statement, (last, upper[0]) if "?" in statement else ())

    @staticmethod
    def _stats_percentiles(conn: sqlite3.Connection, key: str, where: str, params: list,
                           groups: list[dict]) -> None:
        """Fill each group's percentile columns from the values at the ranks around each quantile (0-based,
        among the group's non-null values in order), interpolated as numpy does. Both reads walk the
        ``(key, metric, timestamp, session_seq)`` index in order, so nothing is sorted:

        - a few groups: ``ORDER BY metric LIMIT 1 OFFSET rank`` per rank, many per statement;
        - many small groups (sessions): one ``row_number()`` pass over the whole index per metric, keeping
          the wanted ``(key, rank)`` pairs (a TEMP table), instead of tens of thousands of subqueries.
        """
        picks = []  # (group, column, metric, lo, hi, weight)
        for group in groups:
            for column, metric, q in stats_module.PERCENTILES:
                n = group["_n"][metric]
                group[column] = None
                if n:
                    picks.append((group, column, metric, *stats_module.positions(n, q)))
        reads = {(metric, g["key"], rank) for g, _, metric, lo, hi, _ in picks for rank in (lo, hi)}
        windowed = len(groups) > _STATS_WINDOW_GROUPS
        values: dict = {}
        if windowed:
            by_window = {r for r in reads if r[1] is not None}  # NULL keys never match IN: read those by offset
            reads -= by_window
            for metric in {m for m, _, _ in by_window}:
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STATS_RANKS.split('.')[1]} "
                             f"(k, rn INTEGER, PRIMARY KEY (k, rn)) WITHOUT ROWID")
                conn.execute(f"DELETE FROM {_STATS_RANKS}")
                conn.executemany(f"INSERT OR IGNORE INTO {_STATS_RANKS} (k, rn) VALUES (?, ?)",
                                 [(k, rank) for m, k, rank in by_window if m == metric])
                for k, rank, value in conn.execute(
                        f"SELECT w.k, w.rn, w.v FROM (SELECT {key} AS k, {metric} AS v, "
                        f"row_number() OVER (PARTITION BY {key} ORDER BY {metric}) - 1 AS rn "
                        f"FROM reply_stats INDEXED BY reply_stats_{key}_{metric} WHERE {metric} IS NOT NULL{where}"
                        f") AS w WHERE (w.k, w.rn) IN (SELECT k, rn FROM {_STATS_RANKS})", params):
                    values[(metric, k, rank)] = value
        reads = sorted(reads, key=lambda r: (r[0], str(r[1]), r[2]))
        per_read = 1 + len(params)
        batch = max(1, min(_STATS_READS_PER_STATEMENT, _STATS_MAX_PARAMS // per_read))
        for start in range(0, len(reads), batch):
            chunk = reads[start:start + batch]
            sql = ", ".join(
                f"(SELECT {metric} FROM reply_stats INDEXED BY reply_stats_{key}_{metric} WHERE {key} IS ? AND "
                f"{metric} IS NOT NULL{where} ORDER BY {metric} LIMIT 1 OFFSET {int(rank)})"
                for metric, _, rank in chunk)
            args = [a for _, k, _ in chunk for a in (k, *params)]
            row = conn.execute(f"SELECT {sql}", args).fetchone()
            values.update(zip(chunk, row))
        for group, column, metric, lo, hi, weight in picks:
            a, b = values[(metric, group["key"], lo)], values[(metric, group["key"], hi)]
            group[column] = stats_module.lerp(a, b, weight)

    def delete(self, session_id: str) -> bool:
        """Delete a session with its messages and index entries. False if there was no such session."""
        check_session_id(session_id)
        with self._write() as conn:
            if conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount == 0:
                return False
            conn.execute(STATS_LOWER_MARK)  # new rows may reuse deleted seqs: keep them above the marks
            for name, table, _, _ in _FTS_TABLES:
                conn.execute(f"UPDATE fts_progress SET last_seq = "
                             f"MIN(last_seq, IFNULL((SELECT MAX(seq) FROM {table}), 0)) WHERE name = ?", (name,))
        return True

    def update_metadata(self, session_id: str, metadata: dict) -> bool:
        """Shallow-merge ``metadata`` into the session's metadata and bump ``updated_at``.

        False if there is no such session. A non-dict, or a value that is not JSON-serialisable, raises
        TypeError and changes nothing.
        """
        check_session_id(session_id)
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        json_object(metadata, "metadata")  # validate before touching the database
        with self._write() as conn:
            row = conn.execute("SELECT seq, metadata FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                return False
            seq, current = row
            merged, merged_json = json_object({**json.loads(current), **metadata}, "metadata")
            conn.execute("UPDATE sessions SET metadata = ?, updated_at = ? WHERE seq = ?",
                         (merged_json, _update_stamp(), seq))
            self._set_meta(conn, seq, metadata)
        return True

    def get_metadata(self, session_id: str) -> dict:
        """The session's metadata, read from the sessions table alone (messages are not touched)."""
        check_session_id(session_id)
        with self._locked("read") as conn:
            row = conn.execute("SELECT metadata FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        return json.loads(row[0])

    # ------------------------------------------------------------------ messages
    def append_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        """Append one message: one INSERT into messages plus the session row's ``updated_at``/count update.

        ``role``: "user", "assistant" or "system"; ``content``: str. ``fields``: ``id``, ``timestamp`` (any
        ISO 8601; stored canonical; default now), ``model_id``, ``metrics``, ``routing``, ``partial``,
        ``request_id``, ``source_session_id``; other names raise TypeError. Returns the message dict as
        ``get()`` will show it. A message id already used in the session raises ValueError.
        """
        check_session_id(session_id)
        message = normalize_message(role, content, fields)
        self._append(session_id, [message])
        return message

    def append_messages(self, session_id: str, messages: list[dict]) -> list[dict]:
        """Append several messages (dicts with ``role``, ``content`` and ``append_message``'s fields) in one
        transaction: all are stored or none. Returns the stored message dicts (an empty list changes nothing,
        but an unknown session still raises)."""
        check_session_id(session_id)
        normalized = normalize_messages(messages)
        if not normalized:
            if not self.exists(session_id):
                raise SessionNotFoundError(session_id)
            return []
        self._append(session_id, normalized)
        return normalized

    def _append(self, session_id: str, messages: list[dict]) -> None:
        """Insert normalized messages and bump the session's ``updated_at`` (to the commit time, so it is
        never before the messages' default timestamps) and ``message_count``."""
        rows = [_message_row(message, self.author) for message in messages]
        with self._write() as conn:
            found = conn.execute(
                "UPDATE sessions SET updated_at = ?, message_count = message_count + ? WHERE id = ? "
                "RETURNING seq", (_update_stamp(), len(rows), session_id)).fetchall()
            if not found:
                raise SessionNotFoundError(session_id)
            seq = found[0][0]
            try:
                conn.executemany(_INSERT_MESSAGE, [(seq, *row) for row in rows])
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"message ids must be unique within session {session_id}: {exc}") from None
        self._written()

    def upsert_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        """Store a message under its ``id`` (required): insert it if the session has no message with that id,
        else replace that message in place (same position in the conversation, ``message_count`` unchanged).

        Streamed replies use it: checkpoints flagged ``partial`` while the reply arrives, then the finished
        reply under the same id, so a reply is one row whatever happens. Fields and errors as
        :meth:`append_message`; returns the stored message dict.
        """
        check_session_id(session_id)
        if fields.get("id") is None:
            raise TypeError("upsert_message needs the message's id=")
        message = normalize_message(role, content, fields)
        row = _message_row(message, self.author)
        with self._write() as conn:
            found = conn.execute("UPDATE sessions SET updated_at = ? WHERE id = ? RETURNING seq",
                                 (_update_stamp(), session_id)).fetchall()
            if not found:
                raise SessionNotFoundError(session_id)
            seq = found[0][0]
            if not conn.execute(_UPDATE_MESSAGE, (*row[1:], seq, row[0])).rowcount:
                conn.execute(_INSERT_MESSAGE, (seq, *row))
                conn.execute("UPDATE sessions SET message_count = message_count + 1 WHERE seq = ?", (seq,))
        self._written()
        return message

    def history(self, session_id: str, limit: Optional[int] = None) -> list[dict]:
        """The newest ``limit`` messages (all if None), in chronological order. Reads only those rows."""
        check_session_id(session_id)
        sql_limit = check_limit(limit)
        with self._read() as conn:
            seq = self._seq(conn, session_id)
            rows = conn.execute(_SELECT_MESSAGES + " ORDER BY seq DESC LIMIT ?", (seq, sql_limit)).fetchall()
        rows.reverse()
        return [_message_dict(row) for row in rows]

    # ------------------------------------------------------------------ search
    def _written(self) -> None:
        """After a committed write of searchable text: schedule a background indexing pass (at most one
        pending; it starts ``INDEX_DELAY_S`` later on the package loop, so a burst of writes shares one)."""
        if self._index_wanted or not self.background_index or self.read_only is not None:
            return
        self._index_wanted = True
        try:
            runtime.get_loop().call_soon_threadsafe(self._schedule_index_pass)
        except RuntimeError:  # no threads any more (interpreter shutdown): the next search indexes instead
            self._index_wanted = False

    def _schedule_index_pass(self) -> None:  # on the package loop
        asyncio.get_running_loop().call_later(INDEX_DELAY_S, self._start_index_pass)

    def _start_index_pass(self) -> None:  # on the package loop; the work runs on a daemon thread
        threading.Thread(target=self._index_pass, name="oblix-search-index", daemon=True).start()

    def _index_pass(self) -> None:
        block_interrupts()
        self._index_wanted = False  # writes from now on schedule another pass
        try:
            self._index_backlog()
        except Exception as exc:  # noqa: BLE001 - a failed pass is retried by the next write or search
            self.index_error = exc

    def _index_backlog(self, budget_s: Optional[float] = None) -> bool:
        """Index pending messages and titles, ``INDEX_CHUNK_ROWS`` per transaction (so writers wait at most
        one chunk); stop after ``budget_s`` seconds if given. True when nothing is left to index."""
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        while True:
            with self._lock:
                if self._closed:
                    return True
                if self._index_chunk(INDEX_CHUNK_ROWS):
                    return True
            if deadline is not None and time.perf_counter() >= deadline:
                return False

    def _index_chunk(self, rows: int) -> bool:
        """Index up to ``rows`` pending rows of each FTS table in one transaction; True if none remain."""
        with self._locked("read") as conn:
            if not conn.execute(_FTS_PENDING).fetchone()[0]:
                return True
        done = True
        with self._write(visible=False) as conn:
            for name, table, fts, column in _FTS_TABLES:
                last = conn.execute("SELECT last_seq FROM fts_progress WHERE name = ?", (name,)).fetchone()[0]
                upper = conn.execute(f"SELECT seq FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
                                     (last, rows - 1)).fetchone()
                if upper is None:
                    upper = conn.execute(f"SELECT IFNULL(MAX(seq), 0) FROM {table}").fetchone()
                else:
                    done = False
                if upper[0] <= last:
                    continue
                conn.execute(f"INSERT INTO {fts} (rowid, {column}) SELECT seq, {column} FROM {table} "
                             f"WHERE seq > ? AND seq <= ?", (last, upper[0]))
                conn.execute("UPDATE fts_progress SET last_seq = ? WHERE name = ?", (upper[0], name))
        return done

    def _catch_up_for_search(self) -> None:
        """Before a search: index what is pending, for at most ``search_catchup_s`` (normally the background
        pass has left little or nothing); a larger backlog is left to the background pass. If a writer or the
        background pass holds the connection longer than that, the search does not wait for it."""
        if self.read_only is not None:
            return
        budget = self.search_catchup_s
        if budget is not None and self._pending_rows() <= SEARCH_CATCHUP_ROWS:
            budget = None  # what writes leave between background passes: always indexed, so always found
        if not self._lock.acquire(timeout=-1 if budget is None else budget):
            self._written()
            return
        try:
            caught_up = self._index_backlog(budget_s=budget)
        except StorageError:  # a full disk must not stop searching what is indexed
            caught_up = False
        finally:
            self._lock.release()
        if not caught_up:
            self._index_wanted = False
            self._written()

    def _pending_rows(self) -> int:
        """Messages and titles not indexed yet (read on the search connection, without waiting for writers)."""
        with self._search_read() as conn:
            return conn.execute(_FTS_BACKLOG).fetchone()[0]

    @contextmanager
    def _search_read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on the store's second, read-only connection: a search reads a snapshot of the
        committed data while a writer or the background index pass holds the main one (WAL readers never
        wait for the writer). A read-only store has just the one connection."""
        if self.read_only is not None:
            with self._read() as conn:
                yield conn
            return
        with self._reader_lock:
            if self._reader is None:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                try:
                    self._reader = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                                   timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                                   check_same_thread=False)
                except sqlite3.Error as exc:
                    raise storage_error(exc, self.path, "open") from exc
            conn = self._reader
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, "read") from exc

    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Full-text search over session titles and message text, best match (bm25) first.

        The query is plain text: each word must occur (stemmed: "install" finds "installing"); punctuation
        and FTS operators in it are taken literally. Each hit is a session summary plus ``"matches"``: up to
        three ``{message_id, role, snippet}`` of its best-matching messages (empty if only the title
        matched), with the matched words in ``**bold**``. An empty query raises ValueError.

        Indexing runs in the background (a pass starts ``INDEX_DELAY_S`` after a write, on a daemon thread
        scheduled by the package loop), so a search normally finds everything committed with nothing left to
        index. A search first indexes what is still pending: all of it when it is at most
        ``SEARCH_CATCHUP_ROWS`` rows (what writes leave between background passes, ~20 ms of work), else for
        at most ``search_catchup_s`` (20 ms); only such a larger backlog (a bulk import by another process,
        a database from an older version) is finished in the background, and until then the newest of those
        rows are not found yet. A read-only store
        searches what was indexed when it was writable.
        """
        check_query(query)
        sql_limit = check_limit(limit)
        match = _fts_query(query)
        self._catch_up_for_search()
        scores: dict[int, float] = {}
        matches: dict[int, list[dict]] = {}
        with self._search_read() as conn:
            for seq, rank in conn.execute("SELECT rowid, rank FROM titles_fts WHERE titles_fts MATCH ? "
                                          "ORDER BY rank LIMIT ?", (match, sql_limit)):
                scores[seq] = rank
                matches[seq] = []
            message_sessions = 0
            cursor = conn.execute(
                "SELECT m.session_seq, m.id, m.role, f.snippet, f.rank FROM "
                "(SELECT rowid, snippet(messages_fts, 0, '**', '**', '…', 16) AS snippet, rank "
                " FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rank) AS f "
                "JOIN messages AS m ON m.seq = f.rowid", (match,))
            for seq, message_id, role, snippet, rank in cursor:
                hits = matches.setdefault(seq, [])
                if not hits:
                    message_sessions += 1
                    if sql_limit >= 0 and message_sessions > sql_limit:
                        break  # rows come best first: no later session can enter the top `limit`
                    scores[seq] = min(rank, scores.get(seq, rank))
                if len(hits) < MAX_MATCHES_PER_HIT:
                    hits.append({"message_id": message_id, "role": role, "snippet": snippet})
            cursor.close()
            ranked = sorted(scores, key=lambda s: (scores[s], -s))
            if sql_limit >= 0:
                ranked = ranked[:sql_limit]
            summaries = {row[0]: _summary(row[1:]) for row in conn.execute(
                f"SELECT seq, {_SUMMARY_COLUMNS} FROM sessions WHERE seq IN ({', '.join('?' * len(ranked))})",
                ranked)}
        return [{**summaries[seq], "matches": matches[seq]} for seq in ranked]

    # ------------------------------------------------------------------ replies by request id
    def last_replies(self, session_id: str, metrics: Optional[dict] = None) -> dict[str, tuple]:
        """Each ``request_id``'s last complete (not partial) assistant message in the session, without decoding
        JSON in Python: ``{request_id: (content, model_id, route target, *metric values)}``, where ``metrics``
        maps names to JSON paths inside the message's metrics (``{"out": "$.output_tokens"}``), in its order.
        ``map()`` reads a batch's finished rows with it (10,000 rows in well under a second)."""
        check_session_id(session_id)
        paths = list((metrics or {}).values())
        extra = "".join(", json_extract(metrics, ?)" for _ in paths)
        with self._read() as conn:
            seq = self._seq(conn, session_id)
            rows = conn.execute(
                f"SELECT request_id, content, model_id, json_extract(routing, '$.target'){extra} FROM messages "
                f"WHERE session_seq = ? AND role = 'assistant' AND partial IS NULL AND request_id IS NOT NULL "
                f"ORDER BY seq", (*paths, seq)).fetchall()
        return {row[0]: row[1:] for row in rows}

    # ------------------------------------------------------------------ files
    def import_file(self, path: str | os.PathLike, new_id: bool = False, max_bytes: Optional[int] = None) -> str:
        """Import a session file (ours, or the original Oblix SDK's as is); returns the session id.

        The file is validated first (see :func:`.io.parse_session_file`: SessionFileError, a ValueError, for a
        directory, FIFO, device, a file above ``max_bytes`` (default: the store's ``max_import_bytes``) or
        invalid content); timestamps are stored canonical.
        With ``new_id=False`` the file's id is kept and an id already in the store raises SessionExistsError
        (a ValueError; nothing is overwritten). With ``new_id=True`` the session and its messages get fresh ids
        and the metadata records ``imported_from: {session_id, file, imported_at}``. All or nothing.
        """
        plan = import_plan(path, new_id, self.author,
                           max_bytes=max_bytes if max_bytes is not None else self.max_import_bytes)
        session_id = plan["id"]
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
                raise SessionExistsError(exists_message(session_id, str(self.path)))
            self._insert_session(conn, session_id, plan["title"], plan["created_at"], plan["updated_at"],
                                 plan["context"], plan["metadata"], plan["rows"])
        self._written()
        return session_id

    # ------------------------------------------------------------------ bulk transfer (python -m oblix_nb migrate)
    def session_records(self, after_seq: int = 0, limit: int = 500) -> list[dict]:
        """Up to ``limit`` whole sessions after internal position ``after_seq``, in creation order, exactly as
        stored: ``{seq, id, title, created_at, updated_at (stored form), context, metadata, author, rows}``
        (``rows``: message rows, MESSAGE_COLUMNS order). ``seq`` is the cursor for the next call."""
        with self._read() as conn:
            heads = conn.execute("SELECT seq, id, title, created_at, updated_at, context, metadata, author "
                                 "FROM sessions WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
            rows: dict[int, list] = {head[0]: [] for head in heads}
            if heads:
                for row in conn.execute(f"SELECT session_seq, {', '.join(MESSAGE_COLUMNS)} FROM messages "
                                        f"WHERE session_seq BETWEEN ? AND ? ORDER BY seq",
                                        (heads[0][0], heads[-1][0])):
                    if row[0] in rows:
                        rows[row[0]].append(row[1:])
        return [{"seq": h[0], "id": h[1], "title": h[2], "created_at": h[3], "updated_at": h[4],
                 "context": json.loads(h[5]), "metadata": json.loads(h[6]), "author": h[7], "rows": rows[h[0]]}
                for h in heads]

    def insert_records(self, records: list[dict]) -> list[str]:
        """Insert :meth:`session_records` records (from either engine) in one transaction, keeping ids,
        timestamps and authors; sessions whose id is already here are skipped. Returns the inserted ids."""
        inserted = []
        with self._write() as conn:
            for rec in records:
                if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (rec["id"],)).fetchone():
                    continue
                self._insert_session(conn, rec["id"], rec["title"], rec["created_at"], rec["updated_at"],
                                     rec["context"], rec["metadata"], rec["rows"], rec["author"])
                inserted.append(rec["id"])
        self._written()
        return inserted

    def stored_counts(self, session_ids: list[str]) -> dict[str, int]:
        """``{id: number of message rows}`` for those of ``session_ids`` that exist (counted, not the counter)."""
        ids = [check_session_id(sid) for sid in session_ids]
        if not ids:
            return {}
        with self._read() as conn:
            return dict(conn.execute(
                f"SELECT s.id, (SELECT count(*) FROM messages m WHERE m.session_seq = s.seq) FROM sessions s "
                f"WHERE s.id IN ({', '.join('?' * len(ids))})", ids).fetchall())

    # ------------------------------------------------------------------ settings
    def get_setting(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` (``default`` if there is none)."""
        check_setting_key(key)
        with self._lock:
            row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        """Store ``value`` (any JSON value) under ``key``, replacing what was there. TypeError if not JSON."""
        check_setting_key(key)
        text = dumps(value, f"setting {key!r}")
        with self._write() as conn:
            conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, text))

    def delete_setting(self, key: str) -> bool:
        """Remove ``key``. False if it was not set."""
        check_setting_key(key)
        with self._write() as conn:
            return conn.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount > 0

    def settings(self, prefix: str = "") -> dict[str, Any]:
        """``{key: value}`` of the settings whose key starts with ``prefix``, sorted by key."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
                                      (len(prefix), prefix)).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def close(self) -> None:
        """Close the database connection. Idempotent; any later call on the store raises ProgrammingError."""
        with self._lock:
            self._closed = True
            self._conn.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
