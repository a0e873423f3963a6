"""Durable session stores with one interface and two engines, plus JSON import/export.

- :class:`SessionStoreBase` (``base.py``): the contract every engine implements, documented once, and what
  does not depend on the engine. Code outside the engine folders uses only it.
- :class:`SessionStore` (``sqlite/``, class ``SqliteSessionStore``): one SQLite database (WAL, numbered
  migrations, FTS5); the embedded default, ``<home>/sessions.db``.
- :class:`~.postgres.store.PostgresSessionStore` (``postgres/``): a shared PostgreSQL database (psycopg 3 with
  a connection pool, numbered migrations, JSONB metadata with a GIN index, ``tsvector`` full-text search), for
  a team or many kernels on many machines. Needs the ``postgres`` extra; imported only when used.

Both engine folders have the same modules (``store``, ``migrations``, ``search``, ``stats``); both have the
same methods, semantics and JSON; :func:`open_store` picks one from a URL.
"""
from __future__ import annotations

import os

from .base import SessionStoreBase
from .sqlite.store import SessionStore, SqliteSessionStore

__all__ = ["SessionStore", "SessionStoreBase", "SqliteSessionStore", "open_store", "is_postgres_url"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def open_store(url: str | None, *, default_path: str | os.PathLike | None = None,
               author: str | None = None) -> SessionStoreBase:
    """The store a URL names: ``postgresql://...`` (or ``postgres://``) a PostgreSQL store, ``sqlite:PATH``
    (or a plain path) a SQLite store; None means the SQLite database at ``default_path``.

    Any other ``scheme://`` raises ValueError (naming the accepted forms, never echoing a password).
    """
    if url is None:
        if default_path is None:
            raise ValueError("open_store needs a URL or a default_path")
        return SessionStore(default_path, author=author)
    if not isinstance(url, str) or not url.strip():
        raise ValueError("database URL must be a non-empty string")
    if is_postgres_url(url):
        from .postgres.store import PostgresSessionStore

        return PostgresSessionStore(url, author=author)
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("///"):  # SQLAlchemy's sqlite:////abs/path form
            path = path[2:]
        if not path:
            raise ValueError("sqlite: URL needs a path: sqlite:/path/to/sessions.db")
        return SessionStore(path, author=author)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(f"unsupported database URL scheme {scheme!r}: use postgresql://user@host:port/dbname "
                         f"or sqlite:/path/to/sessions.db")
    return SessionStore(url, author=author)
