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
  records the last ``seq`` indexed in each, and the store indexes the newer rows (one INSERT ... SELECT)
  before every search, so a search always sees every committed message while appends and creates never pay
  for an FTS5 segment per commit. Triggers remove (and re-index) rows at or below the mark on DELETE (and
  UPDATE). Whoever deletes rows must then lower the mark to the highest remaining ``seq`` (the store's
  ``delete`` does), so a new row that reuses a deleted row's ``seq`` is still above the mark.

Version 2 adds ``settings``: store-wide key/value pairs (value: JSON text) that outlive a kernel, such as
model aliases (``alias:<name>`` -> model id), budgets (``budget:<per>``) and user prices (``price:<model>``).
Only the store's ``*_setting`` methods touch it.

Version 3 (costs): ``usage_log``, one row per model reply (finished, or cut short: ``partial``), whether or not it
was stored in a session: when, which session and request, model and route target, token counts (cached parts
apart), ``cost_usd`` (exact, NULL when unknown) and ``cost_estimate_usd`` (when only an estimate exists). Budgets
sum it (their limits and user prices are ``budget:<per>`` / ``price:<model>`` settings); deleting a session does
not give its spend back. Append-only (budget sums are kept incrementally above the highest ``seq`` summed).
Indexed by time and by session, covering the cost columns.
"""
from __future__ import annotations

import sqlite3

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
    (3, """
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
        if current > LATEST_VERSION:
            raise RuntimeError(f"session database schema version {current} is newer than this oblix_nb "
                               f"(knows up to {LATEST_VERSION}); upgrade oblix_nb")
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
