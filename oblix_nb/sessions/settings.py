"""Settings shared by every kernel using one session store: a key/value table (values are JSON).

Keys are namespaced by a prefix per feature (``budget:``, ``price:``). Each write is one transaction; reads see
what any process committed last. Values must be JSON-serialisable (TypeError otherwise, nothing written).
"""
from __future__ import annotations

import json
from typing import Any

from .._util import iso
from .validate import dumps


class Settings:
    def __init__(self, store):
        self._store = store

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"a settings key must be a non-empty string, not {key!r}")
        return key

    def get(self, key: str, default: Any = None) -> Any:
        self._check_key(key)
        with self._store._locked("read") as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        text = dumps(value, f"setting {self._check_key(key)!r}")
        with self._store._write() as conn:
            conn.execute("INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                         (key, text, iso()))

    def delete(self, key: str) -> bool:
        self._check_key(key)
        with self._store._write() as conn:
            return conn.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount > 0

    def items(self, prefix: str = "") -> dict[str, Any]:
        """``{key: value}`` of the keys starting with ``prefix``, in key order."""
        with self._store._locked("read") as conn:
            rows = conn.execute(
                "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix)).fetchall()
        return {key: json.loads(value) for key, value in rows}

