"""PostgresSessionStore: the session store on a shared PostgreSQL database (psycopg 3 + psycopg_pool).

The contract of every method is :class:`~..base.SessionStoreBase`'s (which also holds the shared rules:
validation, default titles, copy/merge/import plans, settings and the usage log); selected by
``OblixClient(database_url="postgresql://...")`` or env ``OBLIX_DATABASE_URL``. Schema: :mod:`.migrations`;
search: :mod:`.search`; stats: :mod:`.stats`; NUL in text: :mod:`.codec`.

Built for many kernels on many machines writing at once:

- Connections come from a pool (``min_size=1``, ``max_size`` 4 by default) in autocommit mode; a write of
  several statements is one explicit transaction, so a failed write changes nothing. A store used after
  ``fork()`` opens a fresh pool in the child rather than sharing sockets with its parent.
- Appending a message is ONE statement: a CTE updates the session row (``updated_at``,
  ``message_count = message_count + 1``) and inserts the message from its ``RETURNING``. The row lock taken
  by the UPDATE serialises appends to one session, so counters never lose an update and messages keep their
  commit order; appends to different sessions never wait for each other.
- ``update_metadata`` reads the row ``FOR UPDATE`` (no lost update between two writers).
- Queries whose best plan depends on their values (filters, searches) are planned for those values on every
  call (not prepared): a generic plan would scan the whole table for a rare word or key.
- ``filter_metadata`` is ``meta @> filter`` (GIN index) plus per-key JSONB equality; search is
  ``plainto_tsquery`` (the query is plain text: no operator in it means anything) against generated
  ``tsvector`` columns with GIN indexes, ranked by ``ts_rank`` among the newest ``SEARCH_CANDIDATES``
  (20,000) matching messages (so a word found in millions of messages is still answered in tens of ms); a
  query that has no searchable word (only punctuation or stop words, e.g. ``-``, ``"``, ``AND``) falls back
  to a literal case-insensitive substring match, so any character is literal.
- Settings (aliases, budgets, prices) are per user (``author``), so one user's configuration never reaches
  another's kernels; API keys are never stored at all.
- ``stats`` is computed from the messages in one aggregate query (``percentile_cont``), no side tables.

PostgreSQL text cannot hold U+0000 (NUL), which is ordinary text for the store (see :mod:`.validate`): a
title or message holding NUL is stored escaped (the body of its JSON string) and flagged, and read back exactly;
its ``tsvector`` sees NUL as a space, as FTS5 does. Metadata and context are JSON text, which escapes NUL. An
author name holding NUL raises ValueError. In a search query NUL separates words (as in FTS5).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..._util import check_session_id, current_user, iso, utcnow
from ..._util import new_id as fresh_id
from ...errors import SessionExistsError, SessionNotFoundError
from ..base import (
    MESSAGE_COLUMNS,
    SessionStoreBase,
    _default_title,
    _message_dict,
    _message_row,
    _update_stamp,
    check_author,
    exists_message,
    frame_ids,
    import_plan,
    normalize_messages,
)
from ..io import normalize_message
from ..validate import check_json, check_limit, check_title, json_object
from .codec import (
    _FRAME_SELECT,
    _FRAME_TEXT_AT,
    _NUMBER,
    _SUMMARY_COLUMNS,
    _escape,
    _escape_index,
    _no_nul,
    _pg_summary,
    _read_row,
    _title,
    _unescape,
    _write_row,
    index_json,
    redact,
    without_password,
)
from .connect import (  # noqa: F401 - importers still find them here
    CONNECT_TIMEOUT_S,
    LOOP_WAIT_S,
    POOL_TIMEOUT_S,
    WAIT_SLICE_S,
    Outage,
    PooledConnections,
    _psycopg,
    behind_proxy,
    split_options,
    storage_error,
)
from .migrations import migrate
from .search import PostgresSearch, _like_pattern
from .stats import PostgresStats

DEFAULT_POOL_MAX = 4
#: longest wait for a row lock held by another transaction (then StorageError)
LOCK_TIMEOUT_MS = 3000

_COLUMNS = ", ".join(MESSAGE_COLUMNS)
_M_COLUMNS = ", ".join(f"m.{c}" for c in MESSAGE_COLUMNS)
# Message columns are text but for partial (smallint); casts let a parameter stand in a SELECT list.
_CASTS = ["::smallint" if c == "partial" else "::text" for c in MESSAGE_COLUMNS]
_INSERT_MESSAGE = (f"INSERT INTO messages (session_seq, {_COLUMNS}, escaped) "
                   f"VALUES (%s, {', '.join(['%s'] * len(MESSAGE_COLUMNS))}, %s)")
_UPSERT_MESSAGE = (_INSERT_MESSAGE + " ON CONFLICT (session_seq, id) DO UPDATE SET "
                   + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*MESSAGE_COLUMNS[1:], "escaped"))
                   + " RETURNING (xmax = 0)")  # true: inserted, false: updated in place
# set_config(..., true) in an InitPlan runs before the UPDATE waits on the row lock: the lock timeout is part
# of the one statement (no session state, so it holds through poolers in transaction mode too).
_APPEND_ONE = (
    f"WITH s AS (UPDATE sessions SET updated_at = %s, message_count = message_count + 1 WHERE id = %s "
    f"AND (SELECT set_config('lock_timeout', '{LOCK_TIMEOUT_MS}', true)) IS NOT NULL RETURNING seq) "
    f"INSERT INTO messages (session_seq, {_COLUMNS}, escaped) "
    f"SELECT s.seq, {', '.join('%s' + cast for cast in _CASTS)}, %s::boolean FROM s RETURNING seq")
# summaries(order=...) as in SQLite (SUMMARY_ORDERS there); "C" collation: byte order, as SQLite's.
_ORDERS = {
    "updated": "updated_at",
    "created": "created_at",
    "title": 'lower(title) COLLATE "C"',
    "messages": "message_count",
    "models": "(SELECT min(m.model_id) FROM messages m WHERE m.session_seq = sessions.seq AND m.role = 'assistant')",
}


# ---------------------------------------------------------------------------------------------- store
_BUDGET_LOCK_CLASS = 0x6F626C62  # advisory lock class of budget reservations ("oblb")

class PostgresSessionStore(PooledConnections, PostgresSearch, PostgresStats, SessionStoreBase):
    """Sessions and their messages in a PostgreSQL database at ``url`` (``postgresql://user@host:port/db``;
    libpq options such as ``?options=-csearch_path%3Dmyschema`` apply). The schema is created on first use.

    The interface is :class:`~..base.SessionStoreBase`'s (see there for each method's contract). ``author``
    (default env ``OBLIX_USER``, else the OS user) is recorded on every session and message written.
    ``pool_max`` bounds this store's connections (each kernel has its own pool).
    """

    engine = "postgresql"

    def __init__(self, url: str, *, author: str | None = None, pool_max: int = DEFAULT_POOL_MAX,
                 max_import_bytes: int | None = None):
        psycopg, _ = _psycopg()
        #: import_file's size cap in bytes (None: env OBLIX_MAX_IMPORT_BYTES, else 256 MiB)
        self.max_import_bytes = max_import_bytes
        self.author = check_author(author) or current_user()
        _no_nul("author", self.author)
        self._url = url
        # oblix's own URL options (prepare_threshold) are not libpq's: removed before connecting
        self._conninfo, options = split_options(url)
        self._connect_kwargs = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                "prepare_threshold": options.get("prepare_threshold")}
        #: True when the connection goes through a pooler or proxy (then no automatic prepared statements);
        #: decided at open unless the URL sets ``prepare_threshold``
        self.behind_proxy: bool | None = None
        self._pool_max = pool_max
        self._lock = threading.Lock()
        self._pool: Any = None  # a psycopg_pool.ConnectionPool (imported lazily)
        self._outage: Outage | None = None
        self._pid = -1
        self._closed = False
        error = conn = None
        errors = psycopg.errors
        try:
            conn = psycopg.connect(self._conninfo, **self._connect_kwargs)  # any failure here: the URL or server
            with conn:
                if "prepare_threshold" not in options:
                    self.behind_proxy = behind_proxy(conn)
                    self._connect_kwargs["prepare_threshold"] = None if self.behind_proxy else 5
                migrate(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, errors.ReadOnlySqlTransaction,
                errors.InsufficientPrivilege) if conn is not None else psycopg.Error as exc:
            error, leaked = storage_error(exc, url, self._role(), "could not be opened")
            if not leaked:
                raise error from exc
        if error is not None:
            raise error  # outside the except block: the cause's text held a secret
        self._open_pool()

    def __repr__(self) -> str:
        return f"<PostgresSessionStore {self.url!r}>"

    @property
    def url(self) -> str:
        """The database URL, password redacted."""
        return redact(self._url)

    def public_url(self) -> str:
        """The database URL with its password removed (user, host, database and other options kept)."""
        return without_password(self._url)

    # ------------------------------------------------------------------ dialect hooks of the base
    _PARAM = "%s"
    _PER_AUTHOR = True  # settings and usage sums are per user (see migrations)
    _SEQ_COMMIT_ORDER = False  # a sequence value is taken before commit: usage rows appear out of seq order
    _BYTE_ORDER = ' COLLATE "C"'
    _encode_text = staticmethod(_escape)
    _decode_text = staticmethod(_unescape)

    def _starts_with_sql(self, column: str, prefix: str) -> tuple[str, list]:
        return f"starts_with({column}, ?)", [prefix]

    def _local_day_sql(self) -> str:
        # this machine's current UTC offset (the log's timestamps are UTC)
        utcoffset = datetime.now().astimezone().utcoffset()
        assert utcoffset is not None  # astimezone() gives an aware datetime
        offset = utcoffset.total_seconds()
        return (f"to_char(timestamp::timestamptz AT TIME ZONE 'UTC' + interval '{int(offset)} seconds', "
                f"'YYYY-MM-DD')")

    def _read_one(self):
        return self._conn()

    def _write_one(self):
        return self._conn()

    def _titles(self, ids: list[str] | None) -> list[tuple[str, str]]:
        with self._conn() as conn:
            if ids is None:
                rows = conn.execute("SELECT id, title, title_escaped FROM sessions").fetchall()
            else:
                rows = conn.execute("SELECT id, title, title_escaped FROM sessions WHERE id = ANY(%s)",
                                    (ids,)).fetchall()
        return [(sid, _title(title, escaped)) for sid, title, escaped in rows]

    # ------------------------------------------------------------------ plumbing (pool: see .connect)
    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One transaction on a pooled connection: committed at the end, rolled back if anything raises. A row
        lock held by another transaction is waited for at most LOCK_TIMEOUT_MS (then StorageError)."""
        with self._conn() as conn:
            # one round trip (simple query, no parameters); no session state, so poolers are fine
            conn.execute(f"BEGIN; SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            try:
                yield conn
            except BaseException:
                if not conn.closed and not conn.broken:
                    try:
                        conn.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - the pool rolls back or drops it; the first error counts
                        pass
                raise
            conn.execute("COMMIT")

    _read = _write  # one snapshot for reads of several statements (as SessionStore._read)

    def _written(self) -> None:
        """Nothing to do after a write: PostgreSQL indexes text as it is written."""

    def _lock_budget(self, conn: Any) -> None:
        """Budget reservations and settlements of one author are serialized by a transaction-level advisory
        lock (key: a constant and the author's hash), released at commit or rollback."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_BUDGET_LOCK_CLASS, self.author))

    def _unique_violation(self):
        psycopg, _ = _psycopg()
        return psycopg.errors.UniqueViolation

    def _insert_session(self, conn: Any, session_id: str, title: str, created_at: str, updated_at: str,
                        context: dict | None, metadata: dict | None, rows: list[tuple],
                        author: str | None = None) -> None:
        """Insert a whole session (see SessionStore._insert_session); an existing id: SessionExistsError."""
        _, context_json = json_object(context, "context")
        metadata, metadata_json = json_object(metadata, "metadata")
        written = [_write_row(row) for row in rows]
        title_escaped = "\x00" in title
        found = conn.execute(
            "INSERT INTO sessions (id, title, title_escaped, created_at, updated_at, context, metadata, meta, "
            "message_count, author) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s) "
            "ON CONFLICT (id) DO NOTHING RETURNING seq",
            (session_id, _escape(title) if title_escaped else title, title_escaped, created_at, updated_at,
             context_json, metadata_json, index_json(metadata), len(rows), author or self.author)).fetchone()
        if found is None:
            raise SessionExistsError(exists_message(session_id, self.url))
        if written:
            try:
                with conn.cursor() as cur:
                    cur.executemany(_INSERT_MESSAGE, [(found[0], *row) for row in written])
            except self._unique_violation() as exc:
                raise ValueError(f"message ids must be unique within session {session_id}: "
                                 f"{str(exc).splitlines()[0]}") from None

    def _source(self, conn: Any, session_id: str) -> tuple[dict, list[tuple]]:
        """A session's title, context and metadata and its message rows (copy, merge)."""
        rows = conn.execute(
            f"SELECT s.title, s.title_escaped, s.context, s.metadata, {_M_COLUMNS}, m.escaped FROM sessions s "
            f"LEFT JOIN messages m ON m.session_seq = s.seq WHERE s.id = %s ORDER BY m.seq",
            (session_id,)).fetchall()
        if not rows:
            raise SessionNotFoundError(session_id)
        title, escaped, context, metadata = rows[0][:4]
        messages = [_read_row(row[4:]) for row in rows if row[4] is not None]
        return {"title": _title(title, escaped), "context": json.loads(context), "metadata": json.loads(metadata)}, messages

    # ------------------------------------------------------------------ sessions
    def create(self, title: str | None = None, context: dict | None = None,
               metadata: dict | None = None) -> str:
        check_title(title)
        json_object(context, "context")  # validate before taking a connection
        json_object(metadata, "metadata")
        session_id = fresh_id()
        now = utcnow()
        created_at = iso(now)
        with self._conn() as conn:
            self._insert_session(conn, session_id, _default_title(created_at) if title is None else title,
                                 created_at, _update_stamp(now), context, metadata, [])
        return session_id

    def exists(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._conn() as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE id = %s", (session_id,)).fetchone() is not None

    def get(self, session_id: str) -> dict:
        check_session_id(session_id)
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT s.id, s.title, s.created_at, s.updated_at, s.context, s.metadata, s.title_escaped, "
                f"{_M_COLUMNS}, m.escaped FROM sessions s LEFT JOIN messages m ON m.session_seq = s.seq "
                f"WHERE s.id = %s ORDER BY m.seq", (session_id,)).fetchall()
        if not rows:
            raise SessionNotFoundError(session_id)
        head = rows[0]
        messages = [_message_dict(_read_row(row[7:])) for row in rows if row[7] is not None]
        return {"id": head[0], "title": _title(head[1], head[6]), "created_at": head[2], "updated_at": head[3][:23] + "Z",
                "messages": messages, "context": json.loads(head[4]), "metadata": json.loads(head[5])}

    def _where(self, filter_metadata: dict | None, author: str | None,
               title_contains: str | None = None) -> tuple[str, list]:
        """WHERE clause for a metadata filter (GIN containment + per-key equality), an author and a title
        substring (case-insensitive; ``%`` and ``_`` literal)."""
        clauses, params = [], []
        if title_contains:
            if not isinstance(title_contains, str):
                raise TypeError(f"title_contains must be a str, not {type(title_contains).__name__}")
            clauses.append("title ILIKE %s")
            params.append(_like_pattern(_escape(title_contains) if "\x00" in title_contains else title_contains))
        if filter_metadata is not None:
            if not isinstance(filter_metadata, dict):
                raise TypeError(f"filter_metadata must be a dict, not {type(filter_metadata).__name__}")
            check_json(filter_metadata, "filter_metadata")
            for key, value in filter_metadata.items():
                if not isinstance(key, str):
                    raise TypeError(f"filter_metadata keys must be strings, not {type(key).__name__}")
                clauses.append("meta -> %s = %s::jsonb")
                params += [_escape_index(key), index_json(value, f"filter_metadata[{key!r}]")]
            if filter_metadata:
                clauses.insert(0, "meta @> %s::jsonb")
                params.insert(0, index_json(filter_metadata, "filter_metadata"))
        if (author := check_author(author)) is not None:
            _no_nul("author", author)
            clauses.append("author = %s")
            params.append(author)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def summaries(self, limit: int | None = 50, filter_metadata: dict | None = None,
                  offset: int = 0, author: str | None = None, with_author: bool = False, *,
                  title_contains: str | None = None, order: str = "updated", descending: bool = True
                  ) -> list[dict]:
        sql_limit = check_limit(limit)
        sql_offset = check_limit(offset, "offset")
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)}, not {order!r}")
        where, params = self._where(filter_metadata, author, title_contains)
        direction = "DESC" if descending else "ASC"
        # Only "models" can be NULL: there, NULL sorts first as in SQLite. (Elsewhere no NULLS clause, so the
        # (updated_at DESC, seq DESC) index serves the default listing without a sort.)
        nulls = (" NULLS LAST" if descending else " NULLS FIRST") if order == "models" else ""
        columns = _SUMMARY_COLUMNS + ", title_escaped" + (", author" if with_author else "")
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {columns} FROM sessions {where} ORDER BY {_ORDERS[order]} {direction}{nulls}, "
                f"seq {direction} "
                f"LIMIT %s OFFSET %s", (*params, None if sql_limit < 0 else sql_limit, sql_offset),
                prepare=None if not where else False).fetchall()
        return [_pg_summary(row) for row in rows]

    def summary(self, session_id: str) -> dict:
        check_session_id(session_id)
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_SUMMARY_COLUMNS}, title_escaped FROM sessions WHERE id = %s",
                               (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        return _pg_summary(row)

    def change_token(self) -> tuple:
        """A value that changes whenever a session was created, deleted or written to (by anyone): the number
        of sessions and the newest ``updated_at`` (an index lookup and an index-only count)."""
        with self._conn() as conn:
            return tuple(conn.execute("SELECT count(*), max(updated_at) FROM sessions").fetchone())

    def count(self, filter_metadata: dict | None = None, author: str | None = None, *,
              title_contains: str | None = None) -> int:
        where, params = self._where(filter_metadata, author, title_contains)
        with self._conn() as conn:
            return conn.execute(f"SELECT count(*) FROM sessions {where}", params, prepare=None if not where else False).fetchone()[0]

    def brief(self, session_id: str) -> tuple[str, int] | None:
        check_session_id(session_id)
        with self._conn() as conn:
            row = conn.execute("SELECT title, message_count, title_escaped FROM sessions WHERE id = %s",
                               (session_id,)).fetchone()
        return None if row is None else (_title(row[0], row[2]), row[1])

    def ids_with_prefix(self, prefix: str, limit: int = 6) -> list[tuple[str, str]]:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        sql_limit = check_limit(limit)
        if "\x00" in prefix:
            return []  # ids never hold NUL
        with self._conn() as conn:
            rows = conn.execute("SELECT id, title, title_escaped FROM sessions WHERE starts_with(id, %s) "
                                "ORDER BY updated_at DESC LIMIT %s",
                                (prefix, None if sql_limit < 0 else sql_limit)).fetchall()
        return [(row[0], _title(row[1], row[2])) for row in rows]

    def model_counts(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        ids = [check_session_id(sid) for sid in session_ids]
        out: dict[str, dict[str, int]] = {sid: {} for sid in ids}
        if not ids:
            return out
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT s.id, m.model_id, m.escaped, count(*) FROM sessions s JOIN messages m "
                "ON m.session_seq = s.seq WHERE s.id = ANY(%s) AND m.role = 'assistant' AND m.model_id IS NOT NULL "
                "GROUP BY s.id, m.model_id, m.escaped", (ids,)).fetchall()
        for sid, model_id, escaped, n in rows:
            out[sid][_title(model_id, escaped)] = n
        return out

    def session_costs(self, session_ids: list[str]) -> dict[str, float]:
        """``{session_id: sum of its replies' known metrics.cost_usd}``; sessions with no known cost are absent."""
        ids = [check_session_id(sid) for sid in session_ids]
        if not ids:
            return {}
        cost = _NUMBER.format("cost_usd", "float8")
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT s.id, SUM({cost}) FROM sessions s JOIN messages m ON m.session_seq = s.seq "
                f"CROSS JOIN LATERAL (SELECT m.metrics::jsonb AS mj) j WHERE s.id = ANY(%s) "
                f"AND m.role = 'assistant' AND m.metrics IS NOT NULL GROUP BY s.id HAVING count({cost}) > 0",
                (ids,)).fetchall()
        return {sid: float(total) for sid, total in rows}

    def message_rows(self, session_ids: Iterable[str] | None = None,
                     author: str | None = None) -> list[tuple]:
        ids = frame_ids(session_ids)
        check_author(author)
        sql = (f"SELECT {_FRAME_SELECT} FROM messages m JOIN sessions s ON s.seq = m.session_seq "
               f"CROSS JOIN LATERAL (SELECT m.metrics::jsonb AS mj, m.routing::jsonb AS rj) j WHERE true")
        params: list = []
        with self._write() as conn:  # one snapshot for the id check and the rows
            if ids is not None:
                found = {row[0] for row in conn.execute("SELECT id FROM sessions WHERE id = ANY(%s)", (ids,))}
                missing = [i for i in ids if i not in found]
                if missing:
                    raise SessionNotFoundError(missing[0])
                sql += " AND s.id = ANY(%s)"
                params.append(ids)
            if author is not None:
                _no_nul("author", author)
                sql += " AND m.author = %s"
                params.append(author)
            rows = conn.execute(sql + " ORDER BY m.session_seq, m.seq", params).fetchall()
        return [self._frame_row(row) for row in rows]

    @staticmethod
    def _frame_row(row: tuple) -> tuple:
        """A message_rows row from _FRAME_SELECT's: escaped text restored, the helper columns dropped."""
        *fields, escaped, title_escaped, title = row
        if escaped:
            fields = [_unescape(v) if i in _FRAME_TEXT_AT and v is not None else v for i, v in enumerate(fields)]
        if title_escaped:
            fields[1] = _unescape(title)
        return tuple(fields)

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._conn() as conn:
            return conn.execute("DELETE FROM sessions WHERE id = %s", (session_id,)).rowcount > 0

    def update_metadata(self, session_id: str, metadata: dict) -> bool:
        check_session_id(session_id)
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        json_object(metadata, "metadata")  # validate before touching the database
        with self._write() as conn:
            row = conn.execute("SELECT seq, metadata FROM sessions WHERE id = %s FOR UPDATE",
                               (session_id,)).fetchone()
            if row is None:
                return False
            merged, merged_json = json_object({**json.loads(row[1]), **metadata}, "metadata")
            conn.execute("UPDATE sessions SET metadata = %s, meta = %s::jsonb, updated_at = %s WHERE seq = %s",
                         (merged_json, index_json(merged), _update_stamp(), row[0]))
        return True

    def get_metadata(self, session_id: str) -> dict:
        check_session_id(session_id)
        with self._conn() as conn:
            row = conn.execute("SELECT metadata FROM sessions WHERE id = %s", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
        return json.loads(row[0])

    # ------------------------------------------------------------------ messages
    def append_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        check_session_id(session_id)
        message = normalize_message(role, content, fields)
        row = _write_row(_message_row(message, self.author))
        try:
            with self._conn() as conn:
                found = conn.execute(_APPEND_ONE, (_update_stamp(), session_id, *row)).fetchone()
        except self._unique_violation() as exc:
            raise ValueError(f"message ids must be unique within session {session_id}: "
                             f"{str(exc).splitlines()[0]}") from None
        if found is None:
            raise SessionNotFoundError(session_id)
        return message

    def append_messages(self, session_id: str, messages: list[dict]) -> list[dict]:
        check_session_id(session_id)
        normalized = normalize_messages(messages)
        rows = [_write_row(_message_row(message, self.author)) for message in normalized]
        if not rows:
            if not self.exists(session_id):
                raise SessionNotFoundError(session_id)
            return []
        try:
            with self._write() as conn:
                found = conn.execute("UPDATE sessions SET updated_at = %s, message_count = message_count + %s "
                                     "WHERE id = %s RETURNING seq", (_update_stamp(), len(rows), session_id)
                                     ).fetchone()
                if found is None:
                    raise SessionNotFoundError(session_id)
                with conn.cursor() as cur:
                    cur.executemany(_INSERT_MESSAGE, [(found[0], *row) for row in rows])
        except self._unique_violation() as exc:
            raise ValueError(f"message ids must be unique within session {session_id}: "
                             f"{str(exc).splitlines()[0]}") from None
        return normalized

    def upsert_message(self, session_id: str, role: str, content: str, **fields: Any) -> dict:
        check_session_id(session_id)
        if fields.get("id") is None:
            raise TypeError("upsert_message needs the message's id=")
        message = normalize_message(role, content, fields)
        row = _write_row(_message_row(message, self.author))
        with self._write() as conn:
            found = conn.execute("UPDATE sessions SET updated_at = %s WHERE id = %s RETURNING seq",
                                 (_update_stamp(), session_id)).fetchone()  # also locks the session row
            if found is None:
                raise SessionNotFoundError(session_id)
            if conn.execute(_UPSERT_MESSAGE, (found[0], *row)).fetchone()[0]:
                conn.execute("UPDATE sessions SET message_count = message_count + 1 WHERE seq = %s", found)
        return message

    def history(self, session_id: str, limit: int | None = None) -> list[dict]:
        check_session_id(session_id)
        sql_limit = check_limit(limit)
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT s.seq, m.* FROM sessions s LEFT JOIN LATERAL (SELECT {_COLUMNS}, escaped, seq "
                f"FROM messages WHERE session_seq = s.seq ORDER BY seq DESC LIMIT %s) m ON true "
                f"WHERE s.id = %s ORDER BY m.seq", (None if sql_limit < 0 else sql_limit, session_id)).fetchall()
        if not rows:
            raise SessionNotFoundError(session_id)
        return [_message_dict(_read_row(row[1:-1])) for row in rows if row[1] is not None]

    # ------------------------------------------------------------------ files
    def import_file(self, path: str | os.PathLike, new_id: bool = False, max_bytes: int | None = None) -> str:
        plan = import_plan(path, new_id, self.author,
                           max_bytes=max_bytes if max_bytes is not None else self.max_import_bytes)
        with self._write() as conn:
            self._insert_session(conn, plan["id"], plan["title"], plan["created_at"], plan["updated_at"],
                                 plan["context"], plan["metadata"], plan["rows"])
        return plan["id"]

    # ------------------------------------------------------------------ replies by request id
    def last_replies(self, session_id: str, metrics: dict | None = None) -> dict[str, tuple]:
        check_session_id(session_id)
        paths = list((metrics or {}).values())
        extra = "".join(", jsonb_path_query_first(m.metrics::jsonb, %s::jsonpath)" for _ in paths)
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT s.seq, m.request_id, m.content, m.model_id, m.routing::jsonb ->> 'target'{extra}, "
                f"m.escaped FROM sessions s LEFT JOIN messages m ON m.session_seq = s.seq AND m.role = 'assistant' "
                f"AND m.partial IS NULL AND m.request_id IS NOT NULL WHERE s.id = %s ORDER BY m.seq",
                (*paths, session_id)).fetchall()
        if not rows:
            raise SessionNotFoundError(session_id)
        out = {}
        for _, *row, escaped in rows:
            if row[0] is None:
                continue
            if escaped:
                row[:3] = [None if v is None else _unescape(v) for v in row[:3]]
            out[row[0]] = tuple(row[1:])
        return out

    # ------------------------------------------------------------------ bulk transfer (python -m oblix_nb migrate)
    def session_records(self, after_seq: int = 0, limit: int = 500) -> list[dict]:
        with self._write() as conn:  # one snapshot
            heads = conn.execute("SELECT seq, id, title, created_at, updated_at, context, metadata, author, "
                                 "title_escaped FROM sessions WHERE seq > %s ORDER BY seq LIMIT %s",
                                 (after_seq, limit)).fetchall()
            rows: dict[int, list] = {head[0]: [] for head in heads}
            if heads:
                for row in conn.execute(f"SELECT session_seq, {_COLUMNS}, escaped FROM messages "
                                        f"WHERE session_seq = ANY(%s) ORDER BY seq", (list(rows),)):
                    rows[row[0]].append(_read_row(row[1:]))
        return [{"seq": h[0], "id": h[1], "title": _title(h[2], h[8]), "created_at": h[3], "updated_at": h[4],
                 "context": json.loads(h[5]), "metadata": json.loads(h[6]), "author": h[7], "rows": rows[h[0]]}
                for h in heads]

    def insert_records(self, records: list[dict]) -> list[str]:
        inserted = []
        with self._write() as conn:
            present = {row[0] for row in conn.execute("SELECT id FROM sessions WHERE id = ANY(%s)",
                                                      ([rec["id"] for rec in records],))}
            for rec in records:
                if rec["id"] in present:
                    continue
                self._insert_session(conn, rec["id"], rec["title"], rec["created_at"], rec["updated_at"],
                                     rec["context"], rec["metadata"], rec["rows"], rec["author"])
                inserted.append(rec["id"])
        return inserted

    def stored_counts(self, session_ids: list[str]) -> dict[str, int]:
        ids = [check_session_id(sid) for sid in session_ids]
        if not ids:
            return {}
        with self._conn() as conn:
            return dict(conn.execute(
                "SELECT s.id, (SELECT count(*) FROM messages m WHERE m.session_seq = s.seq) FROM sessions s "
                "WHERE s.id = ANY(%s)", (ids,)).fetchall())

    def close(self) -> None:
        """Close the pool. Idempotent; any later call on the store raises RuntimeError."""
        self._closed = True
        if self._outage is not None:
            self._outage.close()
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()
