"""Durable session store: one SQLite database (WAL, numbered migrations, FTS5) plus JSON import/export."""
from .store import SessionStore

__all__ = ["SessionStore"]
