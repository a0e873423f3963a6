"""The session database's schema, as numbered migrations.

``MIGRATIONS`` is a list of ``(version, sql)`` applied in order. The schema version lives in
``PRAGMA user_version``; :func:`migrate` applies the pending ones in one ``BEGIN IMMEDIATE`` transaction and
re-reads the version once it holds the write lock, so two processes opening a new database at the same time
migrate it exactly once. Never edit a released migration: append a new one.

Schema (version 1):

- ``sessions``: one row per session. ``seq`` (the rowid) is the internal key other tables reference and the
  stable tie-break for ordering; ``id`` is the public uuid. ``context`` and ``metadata`` are JSON text.
  ``message_count`` is kept in step by every message insert, so listing never reads ``messages``.
  Timestamps are canonical ISO 8601 UTC strings (``2023-07-15T14:30:22.123Z``), which sort chronologically;
  ``updated_at`` is kept with microseconds (``...22.123456Z``, shown with milliseconds) so that sessions
  updated within one millisecond still list in update order.
- ``messages``: one row per message, in conversation order (``seq``). ``model_id``, ``partial``,
  ``request_id`` and ``source_session_id`` are plain columns (cheap to filter and to turn into DataFrame
  columns); ``metrics`` and ``routing`` are JSON text. ``partial`` is 1 or NULL (only flagged replies).
- ``session_meta``: one row per (session, metadata key) holding the value's canonical JSON, indexed on
  (key, value) so ``filter_metadata`` is an index lookup. The store keeps it in step with
  ``sessions.metadata``.
- ``messages_fts`` / ``titles_fts``: FTS5 indexes over message text and session titles (external content,
  so the text is stored once). They are brought up to date in batches rather than per write: ``fts_progress``
  records the last ``seq`` indexed in each, and the store indexes the newer rows (INSERT ... SELECT, in
  chunks) in a background pass shortly after writes, and what is left before a search, so appends and creates
  never pay for an FTS5 segment per commit and a search never pays for a large backlog. Triggers remove (and re-index) rows at or below the mark on DELETE (and
  UPDATE). Whoever deletes rows must then lower the mark to the highest remaining ``seq`` (the store's
  ``delete`` does), so a new row that reuses a deleted row's ``seq`` is still above the mark.

Version 2 adds ``settings``: store-wide key/value pairs (value: JSON text) that outlive a kernel, such as
model aliases (``alias:<name>`` -> model id), budgets (``budget:<per>``) and user prices
(``price:<model>``). Only the store's ``*_setting`` methods touch it.

Version 3 adds what :meth:`.store.SessionStore.stats` reads, so analytics scan narrow plain columns instead of
parsing every message's JSON (``json_extract`` over a million messages takes seconds):

- ``reply_stats``: one row per assistant message (``seq`` = the message's ``seq``): ``day`` (UTC date of its
  timestamp), ``model_id``, ``route`` (``routing.target``), ``partial``, ``error`` (``metrics.error`` is set:
  the reply was cut by a failure, not stopped), ``fallback`` (``routing.fallback_from`` is set), ``ttft`` /
  ``tps`` (``metrics.time_to_first_token`` / ``tokens_per_second``), ``input_tokens`` / ``output_tokens`` and
  ``cost_usd`` (``metrics.cost_usd``). A value of the wrong JSON type (or absent) is NULL.
  Percentiles are read with ``ORDER BY <metric> LIMIT 1 OFFSET k`` per group, which the partial covering
  indexes ``(<group key>, <metric>, timestamp, session_seq)`` answer without sorting.
- ``request_prompts``: one row per user message carrying a ``request_id`` (a prompt sent by ``execute``);
  ``answered`` says whether the session holds a reply with that ``request_id``. An unanswered prompt is a
  request that failed on every candidate (or was stopped before its first token).
- Like the FTS indexes, both are brought up to date in batches, not per write: ``stats_progress`` holds the
  last message ``seq`` indexed, and the store indexes the newer messages (:data:`STATS_CATCH_UP`) before
  computing stats, so an append pays nothing for them. Triggers update (and remove) the rows of messages at
  or below the mark on UPDATE of the columns they derive from (not ``content``: a reply checkpointed while
  it streams costs nothing extra) and on DELETE (session deletes cascade into them); whoever deletes
  messages lowers the mark afterwards (:data:`STATS_LOWER_MARK`), as for FTS.

Version 4 (teams): ``sessions.author`` and ``messages.author``, who wrote the row (``OBLIX_USER``, else the
OS user); NULL for rows written before. ``sessions_by_author`` serves ``list_sessions(author=...)``.

Version 5 (costs): ``usage_log``, one row per model reply (finished, or cut short: ``partial``), whether or not it
was stored in a session: when, which session and request, model and route target, token counts (cached parts
apart), ``cost_usd`` (exact, NULL when unknown) and ``cost_estimate_usd`` (when only an estimate exists). Budgets
sum it (their limits and user prices are ``budget:<per>`` / ``price:<model>`` settings); deleting a session does
not give its spend back. Append-only (budget sums are kept incrementally above the highest ``seq`` summed).
Indexed by time and by session, covering the cost columns.

Version 6 (budgets under concurrency): ``budget_reservations``, one row per cloud call in flight under a
budget: its worst case in USD (``usd``), when it was made and when it lapses (``expires_at``), its session,
request and model, and its ``holder`` (``host:pid``). A reservation is written in the same write transaction that
sums spend plus live reservations and finds the worst case fits; it is replaced by the call's usage row when the
call ends. Rows of a crashed process lapse at ``expires_at`` (or sooner, when its pid is gone on this host).
"""
from __future__ import annotations

import sqlite3

from ..base import refuse_newer  # noqa: F401  (re-exported: one check for both engines)


# Migration 3's SQL is spelled out once here for its backfill, its triggers and the store's catch-up
# (:data:`STATS_CATCH_UP`). Frozen like every released migration: a later change to these tables is a new
# migration, not an edit of these strings.
def _v3_number(column: str, key: str, types: str = "'integer', 'real'") -> str:
    """``new.<column>``'s JSON number at ``$.<key>``; NULL when absent or not a number."""
    return (f"CASE WHEN json_type(new.{column}, '$.{key}') IN ({types}) "
            f"THEN json_extract(new.{column}, '$.{key}') END")


def _v3_set(column: str, key: str) -> str:
    """1 if ``new.<column>`` holds a non-null value at ``$.<key>``, else 0."""
    return f"IFNULL(json_type(new.{column}, '$.{key}') != 'null', 0)"


_V3_REPLY_COLUMNS = ("seq, session_seq, request_id, timestamp, day, model_id, route, partial, error, fallback, "
                     "ttft, tps, input_tokens, output_tokens, cost_usd")
_V3_REPLY = f"""INSERT INTO reply_stats ({_V3_REPLY_COLUMNS})
    SELECT new.seq, new.session_seq, new.request_id, new.timestamp, substr(new.timestamp, 1, 10), new.model_id,
           CASE WHEN json_type(new.routing, '$.target') = 'text' THEN json_extract(new.routing, '$.target') END,
           new.partial IS NOT NULL, {_v3_set("metrics", "error")}, {_v3_set("routing", "fallback_from")},
           {_v3_number("metrics", "time_to_first_token")}, {_v3_number("metrics", "tokens_per_second")},
           {_v3_number("metrics", "input_tokens", "'integer'")},
           {_v3_number("metrics", "output_tokens", "'integer'")}, {_v3_number("metrics", "cost_usd")}"""
_V3_PROMPT = """INSERT INTO request_prompts (seq, session_seq, request_id, timestamp, answered)
    SELECT new.seq, new.session_seq, new.request_id, new.timestamp,
           EXISTS (SELECT 1 FROM reply_stats
                   WHERE session_seq = new.session_seq AND request_id = new.request_id)"""
_V3_IS_REPLY = "new.role = 'assistant'"
_V3_IS_PROMPT = "new.role = 'user' AND new.request_id IS NOT NULL"
_V3_PENDING = "new.seq > (SELECT last_seq FROM stats_progress)"
_V3_INDEXED = "(SELECT last_seq FROM stats_progress)"
# Index the messages written since the last catch-up: replies first, so prompts see their answers; then
# older unanswered prompts answered by the new replies; then move the mark.
STATS_CATCH_UP = [
    f"{_V3_REPLY} FROM messages AS new WHERE {_V3_PENDING} AND {_V3_IS_REPLY}",
    f"{_V3_PROMPT} FROM messages AS new WHERE {_V3_PENDING} AND {_V3_IS_PROMPT}",
    """UPDATE request_prompts SET answered = 1 WHERE answered = 0 AND EXISTS (
        SELECT 1 FROM reply_stats AS r
        WHERE r.session_seq = request_prompts.session_seq AND r.request_id = request_prompts.request_id)""",
    "UPDATE stats_progress SET last_seq = MAX(last_seq, IFNULL((SELECT MAX(seq) FROM messages), 0))",
]
# The store's catch-up, one chunk of messages (``?`` < seq <= ``?``) per transaction; then the mark.
STATS_CATCH_UP_CHUNK = [
    f"{_V3_REPLY} FROM messages AS new WHERE new.seq > ?1 AND new.seq <= ?2 AND {_V3_IS_REPLY}",
    f"{_V3_PROMPT} FROM messages AS new WHERE new.seq > ?1 AND new.seq <= ?2 AND {_V3_IS_PROMPT}",
    STATS_CATCH_UP[2],
    "UPDATE stats_progress SET last_seq = MAX(last_seq, ?2)",
]
STATS_PENDING = "SELECT last_seq < IFNULL((SELECT MAX(seq) FROM messages), 0) FROM stats_progress"
# After deleting messages: keep new rows that may reuse a deleted seq above the mark.
STATS_LOWER_MARK = "UPDATE stats_progress SET last_seq = MIN(last_seq, IFNULL((SELECT MAX(seq) FROM messages), 0))"
_V3_ON_INSERT = f"""
    {_V3_REPLY} WHERE {_V3_IS_REPLY};
    {_V3_PROMPT} WHERE {_V3_IS_PROMPT};
    UPDATE request_prompts SET answered = 1
    WHERE {_V3_IS_REPLY} AND new.request_id IS NOT NULL
      AND session_seq = new.session_seq AND request_id = new.request_id;"""
_V3_ON_DELETE = """
    DELETE FROM reply_stats WHERE seq = old.seq;
    DELETE FROM request_prompts WHERE seq = old.seq;
    UPDATE request_prompts SET answered = EXISTS (
        SELECT 1 FROM reply_stats AS r WHERE r.session_seq = old.session_seq AND r.request_id = old.request_id)
    WHERE old.role = 'assistant' AND old.request_id IS NOT NULL
      AND session_seq = old.session_seq AND request_id = old.request_id;"""
# (group key column, metric column) pairs with a percentile index.
STATS_PERCENTILE_INDEXES = [(key, metric) for key in ("model_id", "route", "session_seq", "day")
                            for metric in ("ttft", "tps")]
_V3 = f"""
CREATE TABLE reply_stats (
    seq           INTEGER PRIMARY KEY,
    session_seq   INTEGER NOT NULL,
    request_id    TEXT,
    timestamp     TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    model_id      TEXT,
    route         TEXT,
    partial       INTEGER NOT NULL,
    error         INTEGER NOT NULL,
    fallback      INTEGER NOT NULL,
    ttft          REAL,
    tps           REAL,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    cost_usd      REAL
);
CREATE TABLE request_prompts (
    seq         INTEGER PRIMARY KEY,
    session_seq INTEGER NOT NULL,
    request_id  TEXT    NOT NULL,
    timestamp   TEXT    NOT NULL,
    answered    INTEGER NOT NULL
);
CREATE TABLE stats_progress (last_seq INTEGER NOT NULL);
INSERT INTO stats_progress (last_seq) VALUES (0);
{STATS_CATCH_UP[0]};
CREATE INDEX reply_stats_by_request ON reply_stats (session_seq, request_id) WHERE request_id IS NOT NULL;
{STATS_CATCH_UP[1]};
{STATS_CATCH_UP[3]};
CREATE INDEX request_prompts_by_request ON request_prompts (session_seq, request_id);
CREATE INDEX request_prompts_unanswered ON request_prompts (timestamp) WHERE answered = 0;
""" + "".join(f"CREATE INDEX reply_stats_{key}_{metric} ON reply_stats ({key}, {metric}, timestamp, session_seq) "
              f"WHERE {metric} IS NOT NULL;\n" for key, metric in STATS_PERCENTILE_INDEXES) + f"""
CREATE TRIGGER stats_on_delete AFTER DELETE ON messages WHEN old.seq <= {_V3_INDEXED} BEGIN{_V3_ON_DELETE}
END;
CREATE TRIGGER stats_on_update
AFTER UPDATE OF seq, session_seq, role, timestamp, model_id, metrics, routing, partial, request_id ON messages
WHEN old.seq <= {_V3_INDEXED} BEGIN{_V3_ON_DELETE}{_V3_ON_INSERT}
END;
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE sessions (
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    title         TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    context       TEXT    NOT NULL DEFAULT '{}',
    metadata      TEXT    NOT NULL DEFAULT '{}',
    message_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_updated ON sessions (updated_at, seq);

CREATE TABLE messages (
    seq               INTEGER PRIMARY KEY,
    session_seq       INTEGER NOT NULL REFERENCES sessions (seq) ON DELETE CASCADE,
    id                TEXT    NOT NULL,
    role              TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content           TEXT    NOT NULL,
    timestamp         TEXT    NOT NULL,
    model_id          TEXT,
    metrics           TEXT,
    routing           TEXT,
    partial           INTEGER CHECK (partial IS NULL OR partial = 1),
    request_id        TEXT,
    source_session_id TEXT
);
CREATE INDEX messages_by_session ON messages (session_seq, seq);
CREATE UNIQUE INDEX messages_unique_id ON messages (session_seq, id);

CREATE TABLE session_meta (
    session_seq INTEGER NOT NULL REFERENCES sessions (seq) ON DELETE CASCADE,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (session_seq, key)
) WITHOUT ROWID;
CREATE INDEX session_meta_by_value ON session_meta (key, value, session_seq);

CREATE TABLE fts_progress (
    name     TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO fts_progress (name, last_seq) VALUES ('messages', 0), ('titles', 0);

CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.seq <= (SELECT last_seq FROM fts_progress WHERE name = 'messages') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
WHEN old.seq <= (SELECT last_seq FROM fts_progress WHERE name = 'messages') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
END;

CREATE VIRTUAL TABLE titles_fts USING fts5(
    title, content='sessions', content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER titles_fts_delete AFTER DELETE ON sessions
WHEN old.seq <= (SELECT last_seq FROM fts_progress WHERE name = 'titles') BEGIN
    INSERT INTO titles_fts (titles_fts, rowid, title) VALUES ('delete', old.seq, old.title);
END;
CREATE TRIGGER titles_fts_update AFTER UPDATE OF title ON sessions
WHEN old.seq <= (SELECT last_seq FROM fts_progress WHERE name = 'titles') BEGIN
    INSERT INTO titles_fts (titles_fts, rowid, title) VALUES ('delete', old.seq, old.title);
    INSERT INTO titles_fts (rowid, title) VALUES (new.seq, new.title);
END;
"""),
    (2, """
CREATE TABLE settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""),
    (3, _V3),
    (4, """
ALTER TABLE sessions ADD COLUMN author TEXT;
ALTER TABLE messages ADD COLUMN author TEXT;
CREATE INDEX sessions_by_author ON sessions (author, updated_at, seq);
"""),
    (5, """
CREATE TABLE usage_log (
    seq                INTEGER PRIMARY KEY,
    timestamp          TEXT    NOT NULL,
    session_id         TEXT,
    request_id         TEXT,
    model_id           TEXT    NOT NULL,
    target             TEXT,
    input_tokens       INTEGER,
    output_tokens      INTEGER,
    cache_read_tokens  INTEGER,
    cache_write_tokens INTEGER,
    cost_usd           REAL,
    cost_estimate_usd  REAL,
    partial            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX usage_log_by_time ON usage_log (timestamp, cost_usd, cost_estimate_usd);
CREATE INDEX usage_log_by_session ON usage_log (session_id, timestamp, cost_usd, cost_estimate_usd);
"""),
    (6, """
CREATE TABLE budget_reservations (
    id         TEXT    PRIMARY KEY,
    timestamp  TEXT    NOT NULL,
    expires_at TEXT    NOT NULL,
    session_id TEXT,
    request_id TEXT,
    model_id   TEXT,
    usd        REAL    NOT NULL,
    holder     TEXT    NOT NULL
);
"""),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def statements(sql: str) -> list[str]:
    """Split a migration script into complete SQL statements (trigger bodies stay whole)."""
    out: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return out


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to ``LATEST_VERSION``; returns the number of migrations applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``). A database already at the latest version
    is left untouched (no write transaction is even started). A database newer than this code is refused.
    """
    if schema_version(conn) == LATEST_VERSION:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)  # another process may have migrated while we waited for the lock
        refuse_newer(current, LATEST_VERSION)
        applied = 0
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")
            applied += 1
        conn.execute("COMMIT")
        return applied
    except BaseException:
        conn.execute("ROLLBACK")
        raise
