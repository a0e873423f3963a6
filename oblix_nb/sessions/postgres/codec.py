"""PostgreSQL engine: the text codec (PostgreSQL text cannot hold U+0000, which is ordinary text for the store)
and URL redaction.

A title or message holding NUL is stored escaped (the body of its JSON string) and flagged, and read back
exactly; metadata keys and values are indexed in JSONB through an injective rewrite (:func:`index_json`).
"""
from __future__ import annotations

import json
from contextlib import AbstractContextManager as ContextManager
from typing import TYPE_CHECKING, Any

from ..base import MESSAGE_COLUMNS, _summary
from ..validate import canonical_json, check_json


def _key(item: str) -> str:
    from urllib.parse import unquote

    return unquote(item.split("=", 1)[0]).strip().lower()


def _secret(item: str) -> bool:
    """A query item carrying a secret: ``password=`` or ``sslpassword=``, however percent-encoded (libpq decodes
    ``%70assword``) or cased."""
    return _key(item) in ("password", "sslpassword")


class _PgStoreState:
    """For type checking: the plumbing of :class:`.store.PostgresSessionStore` that its engine mixins
    (:mod:`.search`, :mod:`.stats`) use."""

    if TYPE_CHECKING:
        def _conn(self) -> ContextManager[Any]: ...

        def _write(self) -> ContextManager[Any]: ...

        def _where(self, filter_metadata: dict | None, author: str | None,
                   title_contains: str | None = None) -> tuple[str, list]: ...


def redact(url: str) -> str:
    """``url`` without its password (for reprs, logs and errors)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://<unparseable URL>"
    if parts.password is None:
        netloc = parts.netloc
    else:
        host = parts.netloc.rsplit("@", 1)[-1]
        netloc = f"{parts.username or ''}:***@{host}"
    query = "&".join(f"{_key(q)}=***" if _secret(q) else q for q in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def without_password(url: str) -> str:
    """``url`` with its password removed (not redacted): what another process opens the same database with,
    using its own credentials (``~/.pgpass``, ``PGPASSWORD``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{parts.username}@{host}" if parts.username else host
    query = "&".join(q for q in parts.query.split("&") if q and not _secret(q))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# ---------------------------------------------------------------------------------------------- NUL handling
def _escape_index(value: Any) -> Any:
    """An injective rewrite of every string (keys too) so JSONB can hold it: ``\\`` -> ``\\\\``, NUL -> ``\\0``."""
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\x00", "\\0")
    if isinstance(value, dict):
        return {_escape_index(k): _escape_index(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_index(v) for v in value]
    return value


def index_json(value: Any, what: str = "metadata") -> str:
    """The JSON text stored in (or compared with) the JSONB ``meta`` column for a metadata value."""
    check_json(value, what)  # bounds the recursion below
    return canonical_json(_escape_index(value), what)


def _no_nul(what: str, value: str | None) -> None:
    if value is not None and "\x00" in value:
        raise ValueError(f"{what} must not contain NUL (U+0000): PostgreSQL text cannot store it")


# Message text columns that may hold NUL (metrics/routing are JSON text, which escapes it).
_TEXT_AT = tuple(i for i, c in enumerate(MESSAGE_COLUMNS)
                 if c in ("id", "content", "model_id", "request_id", "source_session_id"))


def _escape(text: str) -> str:
    """Text with NUL as PostgreSQL can store it: the body of its JSON string (``\\u0000`` for NUL)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _unescape(text: str) -> str:
    return json.loads(f'"{text}"')


def _title(title: str, escaped: bool) -> str:
    return _unescape(title) if escaped else title


def _write_row(row: tuple) -> tuple:
    """A message row (MESSAGE_COLUMNS) as written, plus its ``escaped`` flag: if any of its text holds NUL,
    all of its text columns are stored escaped (:func:`_escape`)."""
    _no_nul("author", row[-1])
    if not any(row[i] is not None and "\x00" in row[i] for i in _TEXT_AT):
        return (*row, False)
    return (*(_escape(v) if i in _TEXT_AT and v is not None else v for i, v in enumerate(row)), True)


def _read_row(row: tuple) -> tuple:
    """A row read as MESSAGE_COLUMNS + escaped, back to MESSAGE_COLUMNS as it was written."""
    if row[-1]:
        return tuple(_unescape(v) if i in _TEXT_AT and v is not None else v for i, v in enumerate(row[:-1]))
    return row[:-1]


_SUMMARY_COLUMNS = "id, title, created_at, updated_at, message_count, metadata"


def _pg_summary(row: tuple) -> dict:
    """A summary from ``_SUMMARY_COLUMNS, title_escaped[, author]``."""
    return _summary((row[0], _title(row[1], row[6]), *row[2:6], *row[7:]))


# frames.MESSAGE_COLUMNS as PostgreSQL expressions (plus escaped, fixed up in Python).
_NUMBER = "CASE WHEN jsonb_typeof(j.mj -> '{0}') = 'number' THEN (j.mj ->> '{0}')::{1} END"
# an integer count: NULL unless a whole number within BIGINT (as frames does for SQLite's values)
_COUNT = ("CASE WHEN jsonb_typeof(j.mj -> '{0}') = 'number' AND (j.mj ->> '{0}')::numeric "
          "BETWEEN -9223372036854775808 AND 9223372036854775807 AND (j.mj ->> '{0}')::numeric = "
          "trunc((j.mj ->> '{0}')::numeric) THEN (j.mj ->> '{0}')::numeric::bigint END")
_FRAME_SELECT = ", ".join([
    "s.id", "CASE WHEN s.title_escaped THEN NULL ELSE s.title END", "m.id", "m.role", "m.content", "m.timestamp", "m.model_id", "j.rj ->> 'target'",
    _NUMBER.format("time_to_first_token", "float8"), _NUMBER.format("tokens_per_second", "float8"),
    _NUMBER.format("total_latency", "float8"), _COUNT.format("input_tokens"),
    _COUNT.format("output_tokens"), _NUMBER.format("cost_usd", "float8"), "m.partial", "m.request_id", "m.author",
    "m.escaped", "s.title_escaped", "s.title"])
# positions in a frame row of the message text columns stored escaped when the row's flag is set
_FRAME_TEXT_AT = (2, 4, 6, 15)
