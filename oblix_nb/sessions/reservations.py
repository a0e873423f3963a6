"""Budget reservations, the part of the session store contract that keeps budgets from being overspent.

A cloud call under a budget first *reserves* its worst case (:meth:`BudgetReservations.reserve_spend`): one
write transaction, serialized with every other reservation and settlement of the same author (SQLite: the
database's write lock, taken by ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level advisory lock per author),
sums the spend in each budget's window plus the live reservations and inserts a reservation only if the worst
case fits every budget. When the call ends, :meth:`BudgetReservations.settle_spend` replaces the reservation by
the call's usage row in one transaction, so at no moment is the call counted twice or not at all. However calls
interleave, in one process or many, spend + reservations never exceed a budget.

Reservations live in ``budget_reservations`` (SQLite migration 6, PostgreSQL migration 4). A reservation lapses
``ttl_s`` seconds after it was made (a process that crashed mid-call gives its reservations back then), or as
soon as a reservation's process is found gone on this host.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .._util import iso, new_id, utcnow

DEFAULT_TTL_S = 900.0  # a reservation of a process that died lapses after this


def holder() -> str:
    """Who holds a reservation: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


class BudgetReservations:
    """Mixin of :class:`~.base.SessionStoreBase`: reservations over the store's usage log and dialect hooks."""

    if TYPE_CHECKING:  # what the mixin uses of SessionStoreBase (which defines them), for the type checker only
        author: str
        _PER_AUTHOR: bool

        def _sql(self, sql: str) -> str: ...
        def _scope(self) -> tuple[str, list]: ...
        def _window(self, since: str | None, session_id: str | None) -> tuple[list[str], list[Any]]: ...
        def _starts_with_sql(self, column: str, prefix: str) -> tuple[str, list]: ...
        def _write(self) -> Any: ...
        def _read(self) -> Any: ...
        def _insert_usage(self, conn: Any, row: tuple) -> None: ...
        def _usage_spend(self, conn: Any, after_seq: int, since: str | None,
                         session_id: str | None, upto: int | None = None) -> tuple[int, float]: ...

    def _lock_budget(self, conn: Any) -> None:
        """Serialize reservations and settlements (of this author) inside a write transaction. SQLite's
        ``BEGIN IMMEDIATE`` already holds the database's one write lock; PostgreSQL takes an advisory lock."""

    def _reserved(self, conn: Any, since: str | None, session_id: str | None) -> float:
        """USD of live reservations made at or after ``since`` (None: any time) in ``session_id`` (None: any)."""
        where, params = self._window(since, session_id)
        where.insert(0, "1 = 1")
        row = conn.execute(self._sql(f"SELECT COALESCE(SUM(usd), 0) FROM budget_reservations "
                                     f"WHERE {' AND '.join(where)}"), params).fetchone()
        return float(row[0])

    def _drop_stale_reservations(self, conn: Any, now: str) -> None:
        """Forget reservations past ``expires_at``, and those of processes of this host that are gone."""
        scope, params = self._scope()
        conn.execute(self._sql(f"DELETE FROM budget_reservations WHERE {scope}expires_at < ?"), (*params, now))
        host = holder().rsplit(":", 1)[0] + ":"
        starts, starts_params = self._starts_with_sql("holder", host)
        rows = conn.execute(self._sql(f"SELECT DISTINCT holder FROM budget_reservations WHERE {scope}{starts}"),
                            (*params, *starts_params)).fetchall()
        for (who,) in rows:
            pid = who[len(host):]
            if pid.isdigit() and not pid_alive(int(pid)):
                conn.execute(self._sql(f"DELETE FROM budget_reservations WHERE {scope}holder = ?"), (*params, who))

    def reserve_spend(self, usd: float, windows: list[tuple], *, session_id: str | None = None,
                      request_id: str | None = None, model_id: str | None = None,
                      ttl_s: float = DEFAULT_TTL_S) -> tuple[str | None, list[tuple[int, float, float]]]:
        """Reserve ``usd`` (a call's worst case) under budgets, atomically across threads and processes.

        ``windows``: one ``(since, session_id, limit_usd, after_seq, spent_before)`` per budget: usage rows logged
        at or after ``since`` (None: ever) in ``session_id`` (None: any session) count, and so do live
        reservations made since then in that session; ``spent_before`` is an earlier sum of that window's usage
        rows up to seq ``after_seq`` (0 and 0.0: none), so only newer rows are read. In one write transaction:
        drop lapsed reservations, sum each window, and if ``usd`` fits what is left of every one, insert a
        reservation that lapses after ``ttl_s`` seconds. ``session_id`` is the session the call is made in.

        Returns ``(reservation id, or None when refused, [(highest usage seq, spent USD, reserved USD)] per
        window)``. ValueError for a ``usd`` that is not a finite number >= 0. Settle with :meth:`settle_spend`."""
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 <= usd < float("inf"):
            raise ValueError(f"a reservation is a finite number of US dollars >= 0, not {usd!r}")
        now = utcnow()
        sums: list[tuple[int, float, float]] = []
        fits = True
        with self._write() as conn:
            self._lock_budget(conn)
            self._drop_stale_reservations(conn, iso(now))
            for since, sid, limit, after_seq, before in windows:
                top, added = self._usage_spend(conn, after_seq, since, sid)
                if top < after_seq:  # not the log the mark was taken on (a replaced file): sum it all again
                    top, added = self._usage_spend(conn, 0, since, sid)
                    before = 0.0
                reserved = self._reserved(conn, since, sid)
                sums.append((top, before + added, reserved))
                if before + added + reserved + usd > limit * (1 + 1e-12):
                    fits = False
            if not fits:
                return None, sums
            reservation = new_id()
            columns = ["id", "timestamp", "expires_at", "session_id", "request_id", "model_id", "usd", "holder"]
            values = [reservation, iso(now), iso(now + timedelta(seconds=ttl_s)), session_id, request_id,
                      model_id, float(usd), holder()]
            if self._PER_AUTHOR:
                columns.append("author")
                values.append(self.author)
            conn.execute(self._sql(f"INSERT INTO budget_reservations ({', '.join(columns)}) "
                                   f"VALUES ({', '.join('?' * len(columns))})"), values)
        return reservation, sums

    def settle_spend(self, reservation_id: str, usage_row: tuple | None = None) -> None:
        """Replace a reservation by what its call cost, in one transaction serialized with reservations: delete
        it and append ``usage_row`` (a :meth:`log_usage` row; None: nothing to log, e.g. the call failed before
        its first token). A reservation already gone (lapsed) is no error; a row of the wrong length raises
        ValueError and changes nothing."""
        scope, params = self._scope()
        with self._write() as conn:
            self._lock_budget(conn)
            conn.execute(self._sql(f"DELETE FROM budget_reservations WHERE {scope}id = ?"),
                         (*params, reservation_id))
            if usage_row is not None:
                self._insert_usage(conn, usage_row)

    def reserved_spend(self, since: str | None = None, session_id: str | None = None) -> float:
        """USD held by live reservations (calls in flight) made at or after ``since`` in ``session_id`` (None:
        any); on a shared database, this author's. Lapsed ones are not counted."""
        with self._read() as conn:
            scope, params = self._scope()
            where = f"WHERE {scope}expires_at >= ?"
            total = conn.execute(self._sql(
                f"SELECT COALESCE(SUM(usd), 0) FROM budget_reservations {where}"
                + (" AND timestamp >= ?" if since is not None else "")
                + (" AND session_id = ?" if session_id is not None else "")),
                (*params, iso(), *([since] if since is not None else []),
                 *([session_id] if session_id is not None else []))).fetchone()[0]
        return float(total)

