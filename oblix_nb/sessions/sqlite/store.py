"""SQLite engine: every session in one SQLite database (:class:`SqliteSessionStore`, public alias
``oblix_nb.sessions.SessionStore``). The contract of every method is :class:`~..base.SessionStoreBase`'s.

The database (``<home>/sessions.db``) runs in WAL mode with ``synchronous=NORMAL``, a 30 s busy timeout,
foreign keys on and a checkpoint every 10,000 WAL pages; its schema comes from the numbered migrations in
:mod:`.migrations`. Each write is one ``BEGIN IMMEDIATE`` transaction, rolled back on any error, so several
processes can share a database and a failed write changes nothing. One store may be used from several
threads (the notebook's main thread and the package's asyncio thread): its connection is guarded by a lock.

Appending a message is one INSERT plus a one-row UPDATE of its session (``updated_at``, ``message_count``);
a session is never rewritten. Listing reads only the ``sessions`` table; metadata filters are index lookups
in ``session_meta``; ``search`` (:mod:`.search`) uses FTS5 and ``stats`` (:mod:`.stats`) the stats tables,
both derived tables kept up to date by one background pass shortly after writes.

Failures of the storage itself (disk full, read-only file system or home, unwritable folder, I/O error, not
a database) raise one :class:`~oblix_nb.errors.StorageError` naming the database and the cause
(:func:`.common.storage_error`); input is checked first (:mod:`..validate`), so bad input raises before any
SQL and changes nothing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..._util import check_session_id, current_user, iso, utcnow
from ..._util import new_id as fresh_id
from ...errors import SessionExistsError, SessionNotFoundError, StorageError
from ..base import (
    MESSAGE_COLUMNS,
    SessionStoreBase,
    _default_title,
    _message_dict,
    _message_row,
    _ms,
    _summary,
    _update_stamp,
    check_author,
    exists_message,
    frame_ids,
    import_plan,
    normalize_messages,
)
from ..io import expand_path, normalize_message
from ..validate import canonical_json, check_limit, check_title, json_object
from .common import _SUMMARY_COLUMNS, BUSY_TIMEOUT_S, SUMMARY_ORDERS, _not_writable, _summary_where, storage_error
from .migrations import LATEST_VERSION, STATS_LOWER_MARK, STATS_PENDING, migrate, schema_version
from .search import _FTS_PENDING, _FTS_TABLES, SEARCH_CATCHUP_S, SqliteSearch
from .stats import SqliteStats

WAL_AUTOCHECKPOINT_PAGES = 10_000

_SELECT_MESSAGES = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE session_seq = ?"
_INSERT_MESSAGE = (f"INSERT INTO messages (session_seq, {', '.join(MESSAGE_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * (len(MESSAGE_COLUMNS) + 1))})")
_UPDATE_MESSAGE = (f"UPDATE messages SET {', '.join(f'{c} = ?' for c in MESSAGE_COLUMNS[1:])} "
                   f"WHERE session_seq = ? AND id = ?")

# frames.MESSAGE_COLUMNS, as SQLite expressions over messages m JOIN sessions s.
_FRAME_SELECT = ", ".join([
    "s.id", "s.title", "m.id", "m.role", "m.content", "m.timestamp", "m.model_id",
    "json_extract(m.routing, '$.target')", "json_extract(m.metrics, '$.time_to_first_token')",
    "json_extract(m.metrics, '$.tokens_per_second')", "json_extract(m.metrics, '$.total_latency')",
    "json_extract(m.metrics, '$.input_tokens')", "json_extract(m.metrics, '$.output_tokens')",
    "json_extract(m.metrics, '$.cost_usd')", "m.partial", "m.request_id", "m.author"])



class SqliteSessionStore(SqliteSearch, SqliteStats, SessionStoreBase):
    """Sessions and their messages in one SQLite database at ``path`` (created, with its folders, if missing).

    Every method validates session ids first (``check_session_id``), so a malformed id never reaches SQL
    or the file system. Unknown ids raise SessionNotFoundError (a KeyError), except where the reference API
    returns False (``delete``, ``update_metadata``).

    ``author`` (default :func:`current_user`: env ``OBLIX_USER``, else the OS user) is recorded on every
    session and message this store writes. The PostgreSQL engine (:mod:`..postgres.store`) has the same
    interface.
    """

    engine = "sqlite"

    def __init__(self, path: str | os.PathLike, *, author: str | None = None,
                 max_import_bytes: int | None = None):
        self.author = check_author(author) or current_user()
        self.path = expand_path(path, ValueError, "session database path")
        #: import_file's size cap in bytes (None: env OBLIX_MAX_IMPORT_BYTES, else 256 MiB)
        self.max_import_bytes = max_import_bytes
        #: why the store could only be opened read-only (a read-only home), else None
        self.read_only: str | None = None
        #: index new text for search in the background after writes (False: only when a search runs)
        self.background_index = True
        #: the longest a search indexes pending rows itself, in seconds (None: all of them, the old behaviour)
        self.search_catchup_s: float | None = SEARCH_CATCHUP_S
        self.index_error: BaseException | None = None  # the last background indexing failure, if any
        self._index_wanted = False
        self._closed = False
        self._lock = threading.RLock()
        self._reader: sqlite3.Connection | None = None  # searches' own connection, opened on first search
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
                # derived tables behind (e.g. written by an older version): bring them up to date
                if conn.execute(_FTS_PENDING).fetchone()[0] or conn.execute(STATS_PENDING).fetchone()[0]:
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

    def _open_read_only(self, why: StorageError) -> sqlite3.Connection:
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

    def public_url(self) -> str:
        """:attr:`url` (a file path holds no password)."""
        return self.url

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
                        updated_at: str, context: dict | None, metadata: dict | None,
                        rows: list[tuple], author: str | None = None) -> None:
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
        assert seq is not None  # an INSERT sets lastrowid
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
    def create(self, title: str | None = None, context: dict | None = None,
               metadata: dict | None = None) -> str:
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

    def summaries(self, limit: int | None = 50, filter_metadata: dict | None = None,
                  offset: int = 0, author: str | None = None, with_author: bool = False, *,
                  title_contains: str | None = None, order: str = "updated", descending: bool = True
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

    def count(self, filter_metadata: dict | None = None, author: str | None = None, *,
              title_contains: str | None = None) -> int:
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

    def brief(self, session_id: str) -> tuple[str, int] | None:
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

    def message_rows(self, session_ids: Iterable[str] | None = None,
                     author: str | None = None) -> list[tuple]:
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

    def history(self, session_id: str, limit: int | None = None) -> list[dict]:
        """The newest ``limit`` messages (all if None), in chronological order. Reads only those rows."""
        check_session_id(session_id)
        sql_limit = check_limit(limit)
        with self._read() as conn:
            seq = self._seq(conn, session_id)
            rows = conn.execute(_SELECT_MESSAGES + " ORDER BY seq DESC LIMIT ?", (seq, sql_limit)).fetchall()
        rows.reverse()
        return [_message_dict(row) for row in rows]

    # ------------------------------------------------------------------ replies by request id
    def last_replies(self, session_id: str, metrics: dict | None = None) -> dict[str, tuple]:
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
    def import_file(self, path: str | os.PathLike, new_id: bool = False, max_bytes: int | None = None) -> str:
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

    # ------------------------------------------------------------------ dialect hooks of the base
    def _read_one(self):
        return self._locked("read")

    def _titles(self, ids: list[str] | None) -> list[tuple[str, str]]:
        with self._read() as conn:
            if ids is None:
                return conn.execute("SELECT id, title FROM sessions").fetchall()
            out = []
            for start in range(0, len(ids), 500):  # stay under SQLite's variable limit
                chunk = ids[start:start + 500]
                out += conn.execute(f"SELECT id, title FROM sessions WHERE id IN ({', '.join('?' * len(chunk))})",
                                    chunk).fetchall()
            return out

    def close(self) -> None:
        """Close the database connection. Idempotent; any later call on the store raises ProgrammingError."""
        with self._lock:
            self._closed = True
            self._conn.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()


SessionStore = SqliteSessionStore  # the public name (``oblix_nb.sessions.SessionStore``)
