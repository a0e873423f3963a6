"""The PostgreSQL store's schema, as numbered migrations (the twin of :mod:`.migrations` for SQLite).

``MIGRATIONS`` is a list of ``(version, sql)`` applied in order; the version lives in the one-row table
``oblix_schema``. :func:`migrate` runs in one transaction holding a transaction-level advisory lock, so any
number of kernels on any number of machines opening a new database migrate it exactly once (DDL is
transactional in PostgreSQL: a failed migration leaves nothing behind). Never edit a released migration.

Schema (version 1), the SQLite schema's columns with PostgreSQL types:

- ``sessions``: ``seq`` (identity) is the internal key and the ordering tie-break, ``id`` the public uuid.
  Timestamps are the canonical ISO 8601 text (as in SQLite; they sort chronologically as text, and the JSON
  shows exactly what was stored). ``metadata`` and ``context`` keep the JSON text as given (key order and
  number spelling round-trip exactly); ``meta`` is the same metadata as JSONB with a GIN index
  (``jsonb_path_ops``) for ``filter_metadata``: ``meta @> filter`` finds candidates through the index and
  ``meta -> key = value`` per key keeps whole-value equality (JSONB compares type-aware: ``1 = 1.0`` but
  ``1 <> '1'`` and ``true <> 1``; arrays in order). JSONB cannot hold U+0000, so ``meta`` stores strings
  through an injective escape (see :func:`.pg.index_json`). ``author`` is who created the session.
  ``title_tsv`` is a generated ``tsvector`` with a GIN index.
- ``messages``: ``content_tsv`` is a generated ``tsvector`` (of the first 256 Ki characters) with a GIN
  index. PostgreSQL text cannot hold U+0000: a message whose text holds one has its text columns stored
  JSON-escaped and ``escaped`` set (``title_escaped`` likewise for a title); the store reads them back exactly.
  ``author`` is who wrote the message.

Version 2: ``settings``, the twin of SQLite's (aliases, budgets, prices), but per user: keyed by
``(author, key)``, so in a shared database one user's settings never reach another.

Version 3: ``usage_log``, the twin of SQLite's (one row per model reply: tokens and cost, for budgets and
``client.usage()``), with its ``author``: spend is counted and budgeted per user.

Version 4: ``budget_reservations``, the twin of SQLite's (the worst case of each cloud call in flight under a
budget, until the call's usage row replaces it), with its ``author``; written under a transaction-level advisory
lock per author, so reservations of one user are serialized across processes and machines.

Timestamps, ids and model ids use the "C" collation: they sort byte by byte, as in SQLite, whatever the
database's locale.
"""
from __future__ import annotations

from typing import Any

from ..base import refuse_newer

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE sessions (
    seq           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT    COLLATE "C" NOT NULL UNIQUE,
    title         TEXT    NOT NULL,
    created_at    TEXT    COLLATE "C" NOT NULL,
    updated_at    TEXT    COLLATE "C" NOT NULL,
    context       TEXT    NOT NULL DEFAULT '{}',
    metadata      TEXT    NOT NULL DEFAULT '{}',
    meta          JSONB   NOT NULL DEFAULT '{}',
    message_count BIGINT  NOT NULL DEFAULT 0,
    author        TEXT,
    title_escaped BOOLEAN NOT NULL DEFAULT false,
    title_tsv     tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig,
                  CASE WHEN title_escaped THEN replace(title, '\\u0000', ' ') ELSE title END)) STORED
);
CREATE INDEX sessions_by_updated ON sessions (updated_at DESC, seq DESC);
CREATE INDEX sessions_by_author ON sessions (author, updated_at DESC, seq DESC);
CREATE INDEX sessions_meta ON sessions USING GIN (meta jsonb_path_ops);
CREATE INDEX sessions_title_tsv ON sessions USING GIN (title_tsv);

CREATE TABLE messages (
    seq               BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_seq       BIGINT   NOT NULL REFERENCES sessions (seq) ON DELETE CASCADE,
    id                TEXT     NOT NULL,
    role              TEXT     NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content           TEXT     NOT NULL,
    timestamp         TEXT     COLLATE "C" NOT NULL,
    model_id          TEXT     COLLATE "C",
    metrics           TEXT,
    routing           TEXT,
    partial           SMALLINT CHECK (partial IS NULL OR partial = 1),
    request_id        TEXT,
    source_session_id TEXT,
    author            TEXT,
    escaped           BOOLEAN  NOT NULL DEFAULT false,
    content_tsv       tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, left(
                      CASE WHEN escaped THEN replace(content, '\\u0000', ' ') ELSE content END, 262144))) STORED,
    UNIQUE (session_seq, id)
);
CREATE INDEX messages_by_session ON messages (session_seq, seq);
CREATE INDEX messages_by_author ON messages (author);
CREATE INDEX messages_tsv ON messages USING GIN (content_tsv);
"""),
    (2, """
CREATE TABLE settings (
    author TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (author, key)
);
"""),
    (3, """
CREATE TABLE usage_log (
    seq                BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author             TEXT    NOT NULL,
    timestamp          TEXT    COLLATE "C" NOT NULL,
    session_id         TEXT,
    request_id         TEXT,
    model_id           TEXT    NOT NULL,
    target             TEXT,
    input_tokens       BIGINT,
    output_tokens      BIGINT,
    cache_read_tokens  BIGINT,
    cache_write_tokens BIGINT,
    cost_usd           DOUBLE PRECISION,
    cost_estimate_usd  DOUBLE PRECISION,
    partial            SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_log_by_time ON usage_log (author, timestamp, cost_usd, cost_estimate_usd);
CREATE INDEX usage_log_by_session ON usage_log (author, session_id, timestamp, cost_usd, cost_estimate_usd);
"""),
    (4, """
CREATE TABLE budget_reservations (
    id         TEXT    COLLATE "C" PRIMARY KEY,
    author     TEXT    NOT NULL,
    timestamp  TEXT    COLLATE "C" NOT NULL,
    expires_at TEXT    COLLATE "C" NOT NULL,
    session_id TEXT,
    request_id TEXT,
    model_id   TEXT,
    usd        DOUBLE PRECISION NOT NULL,
    holder     TEXT    NOT NULL
);
CREATE INDEX budget_reservations_by_author ON budget_reservations (author);
"""),
]

LATEST_VERSION = MIGRATIONS[-1][0]
# pg_advisory_xact_lock key: any constant distinct from other applications' keys ("oblix" in ASCII).
_LOCK_KEY = 0x6F626C6978


def schema_version(conn: Any) -> int:
    """The schema version of the database ``conn`` points at (0 for a database without our tables)."""
    row = conn.execute("SELECT to_regclass('oblix_schema') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT version FROM oblix_schema").fetchone()
    return row[0] if row else 0


def migrate(conn: Any) -> int:
    """Bring the database to ``LATEST_VERSION``; returns the number of migrations applied.

    ``conn`` is an autocommit psycopg connection. Up to date: one query, no lock. Otherwise one transaction
    under an advisory lock re-reads the version (another process may have migrated meanwhile) and applies
    what is missing. A database newer than this code is refused.
    """
    if schema_version(conn) == LATEST_VERSION:
        return 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS oblix_schema (version INTEGER NOT NULL)")
        current = schema_version(conn)
        if current == 0 and conn.execute("SELECT count(*) FROM oblix_schema").fetchone()[0] == 0:
            conn.execute("INSERT INTO oblix_schema (version) VALUES (0)")
        refuse_newer(current, LATEST_VERSION)
        applied = 0
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            conn.execute(sql)
            conn.execute("UPDATE oblix_schema SET version = %s", (version,))
            applied += 1
    return applied
