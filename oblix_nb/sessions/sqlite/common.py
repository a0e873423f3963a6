"""SQLite engine: SQL pieces shared by its modules (metadata filters, summary order and filters) and the
translation of SQLite's errors into :class:`~oblix_nb.errors.StorageError`."""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import StorageError
from ..base import check_author
from ..validate import canonical_json, check_json, check_text

BUSY_TIMEOUT_S = 30.0
_SUMMARY_COLUMNS = "id, title, created_at, updated_at, message_count, metadata"


class _StoreState:
    """For type checking: the state and plumbing of :class:`.store.SqliteSessionStore` that its engine mixins
    (:mod:`.search`, :mod:`.stats`) use. Annotations only: the store's ``__init__`` sets them."""

    path: Path
    read_only: str | None
    background_index: bool
    search_catchup_s: float | None
    index_error: BaseException | None
    _index_wanted: bool
    _closed: bool
    _lock: threading.RLock
    _conn: sqlite3.Connection
    _reader: sqlite3.Connection | None
    _reader_lock: threading.Lock
    _writes: int

    if TYPE_CHECKING:
        def _locked(self, action: str) -> ContextManager[sqlite3.Connection]: ...

        def _write(self, visible: bool = True) -> ContextManager[sqlite3.Connection]: ...

        def _read(self) -> ContextManager[sqlite3.Connection]: ...

        def _written(self) -> None: ...

        def _maintain_stats(self) -> None: ...


def _where(filter_metadata: dict | None, author: str | None) -> tuple[str, list]:
    """SQL WHERE clause (and parameters) for a metadata filter and an author filter on ``sessions``."""
    where, params = _metadata_where(filter_metadata)
    if check_author(author) is None:
        return where, params
    return (f"{where} AND author = ?" if where else "WHERE author = ?"), [*params, author]


def _metadata_sessions(filter_metadata: dict | None) -> tuple[str, list]:
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


def _metadata_where(filter_metadata: dict | None) -> tuple[str, list]:
    """SQL WHERE clause (and its parameters) selecting sessions whose metadata matches every given key."""
    select, params = _metadata_sessions(filter_metadata)
    return (f"WHERE seq IN ({select})", params) if select else ("", [])


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


def _summary_where(filter_metadata: dict | None, title_contains: str | None,
                   author: str | None = None) -> tuple[str, list]:
    """WHERE clause for :meth:`SessionStore.summaries`/``count``: metadata match, author and a title substring."""
    where, params = _where(filter_metadata, author)
    if title_contains:
        if not isinstance(title_contains, str):
            raise TypeError(f"title_contains must be a str, not {type(title_contains).__name__}")
        pattern = "%" + title_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = (where + " AND " if where else "WHERE ") + "title LIKE ? ESCAPE '\\'"
        params = params + [pattern]
    return where, params


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


def _not_writable(path: Path) -> str | None:
    """Why the database file (if it exists) or its folder cannot be written (None if they can)."""
    if (not path.exists() or os.access(path, os.W_OK)) and os.access(path.parent, os.W_OK):
        return None
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "no write permission"
