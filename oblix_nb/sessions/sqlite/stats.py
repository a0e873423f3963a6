"""SQLite engine: request statistics (``stats``, ``stats_totals``, ``stats_sample``) from the stats tables
(``reply_stats``, ``request_prompts``: migration 3 in :mod:`.migrations`), and their background maintainer.

The stats tables are derived from the messages, the way the FTS index is (:mod:`.search`): a write only
records nothing extra; the search/index background pass that follows writes (``INDEX_DELAY_S`` later, on a
daemon thread) also indexes the new messages into the stats tables, ``STATS_BACKGROUND_CHUNK_ROWS`` per
transaction, so a writer waits at most one small chunk and the first ``stats()`` after a bulk write finds
little or nothing left to do (the old way, all of it at the first stats call, made that call pay the whole
backlog: 134.5 s after 1M messages). A stats call still indexes whatever is pending first (all of it), so its answer
always covers every committed message.
"""
from __future__ import annotations

import json
import sqlite3
import time

from .. import stats as stats_module
from ..validate import check_limit
from .common import _metadata_sessions, _StoreState
from .migrations import STATS_CATCH_UP_CHUNK, STATS_PENDING

# stats(): (reply_stats group column, request_prompts group expression) per ``by``; the columns have
# percentile indexes (migration 3). Unanswered prompts have no model or route.
_STATS_KEYS = {"model": ("model_id", "NULL"), "route": ("route", "NULL"),
               "session": ("session_seq", "session_seq"), "day": ("day", "substr(timestamp, 1, 10)")}
STATS_CHUNK_ROWS = 20_000  # messages a stats call indexes per write transaction (what the background left)
STATS_BACKGROUND_CHUNK_ROWS = 500  # per background transaction: a writer waits at most one (~5-15 ms idle)
_STATS_SESSIONS = "temp.oblix_stats_sessions"  # the sessions a stats call's filter_metadata selects
_STATS_RANKS = "temp.oblix_stats_ranks"  # (group key, rank) pairs a windowed percentile pass keeps
_STATS_WINDOW_GROUPS = 1_000  # above this many groups, percentiles come from one window pass per metric
_STATS_MAX_PARAMS = 30_000  # below SQLite's 32,766 bound parameters per statement
_STATS_READS_PER_STATEMENT = 500  # result columns per statement (SQLite allows 2,000)
_STATS_SUM_NAMES = ("requests", "errors", "partial", "fallbacks", "input_tokens", "output_tokens", "cost_usd",
                    "cost_unknown")
_STATS_SUMS = ("count(*), sum(error), sum(partial), sum(fallback), IFNULL(sum(input_tokens), 0), "
               "IFNULL(sum(output_tokens), 0), sum(cost_usd), count(*) - count(cost_usd)")


def _stats_where(since: str | None, until: str | None,
                 filter_metadata: dict | None) -> tuple[str, list, tuple[str, list] | None]:
    """`` AND ...`` conditions (and parameters) on a stats table's ``timestamp`` and ``session_seq``, and the
    query filling :data:`_STATS_SESSIONS` with the sessions ``filter_metadata`` selects (None: no filter)."""
    conditions, params = [], []
    if since is not None:
        conditions.append("timestamp >= ?")
        params.append(since)
    if until is not None:
        conditions.append("timestamp < ?")
        params.append(until)
    sessions_select, meta_params = _metadata_sessions(filter_metadata)
    fill = None
    if sessions_select:
        conditions.append(f"session_seq IN {_STATS_SESSIONS}")
        fill = (sessions_select, meta_params)
    return "".join(f" AND {c}" for c in conditions), params, fill


def _select_sessions(conn: sqlite3.Connection, fill: tuple[str, list] | None) -> None:
    """Materialise the sessions a metadata filter selects, once per stats call (an ``IN (subquery)`` would be
    evaluated again by every percentile read). A TEMP table: private to this connection, fine read-only."""
    if fill is None:
        return
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STATS_SESSIONS.split('.')[1]} (seq INTEGER PRIMARY KEY)")
    conn.execute(f"DELETE FROM {_STATS_SESSIONS}")
    conn.execute(f"INSERT INTO {_STATS_SESSIONS} {fill[0]}", fill[1])


class SqliteStats(_StoreState):
    """The SQLite store's statistics methods (a mixin of :class:`.store.SqliteSessionStore`)."""

    _stats_busy = False  # a background thread is indexing the stats tables

    def stats(self, by: str = "model", since: str | None = None, until: str | None = None,
              filter_metadata: dict | None = None) -> list[dict]:
        """Request statistics per group, computed in SQL from the ``reply_stats`` / ``request_prompts`` tables
        (see :mod:`.migrations`, version 3, and :mod:`.stats` for what each column counts).

        ``by``: "model", "route", "session" or "day"; ``since``/``until``: canonical ISO bounds (inclusive /
        exclusive) or None; ``filter_metadata`` as in :meth:`summaries`. Returns one dict per group:
        ``key`` (model id, route, session id or ``YYYY-MM-DD``; None for requests without a model/route),
        the :data:`.stats.STATS_COLUMNS`, and ``title`` for sessions. Groups come in no particular order.

        One aggregate scan (GROUP BY) gives the counts and sums; the percentiles are read from covering
        indexes in their order, never sorted (:meth:`_stats_percentiles`).
        """
        by = stats_module.check_by(by)
        key, prompt_key = _STATS_KEYS[by]
        where, params, fill = _stats_where(since, until, filter_metadata)
        self._update_stats_tables()
        groups: dict = {}
        with self._read() as conn:
            _select_sessions(conn, fill)
            for row in conn.execute(
                    f"SELECT {key}, {_STATS_SUMS}, count(ttft), count(tps) FROM reply_stats NOT INDEXED "
                    f"WHERE 1{where} GROUP BY 1", params):
                groups[row[0]] = {"key": row[0], **dict(zip(_STATS_SUM_NAMES, row[1:-2])),
                                  "_n": {"ttft": row[-2], "tps": row[-1]}}
            for group_key, unanswered in conn.execute(
                    f"SELECT {prompt_key}, count(*) FROM request_prompts INDEXED BY request_prompts_unanswered "
                    f"WHERE answered = 0{where} GROUP BY 1",
                    params):
                group = groups.setdefault(group_key, {
                    "key": group_key, **dict.fromkeys(_STATS_SUM_NAMES, 0), "cost_usd": None,
                    "_n": {"ttft": 0, "tps": 0}})
                group["requests"] += unanswered
                group["errors"] += unanswered
            self._stats_percentiles(conn, key, where, params, list(groups.values()))
            if by == "session":
                names = {seq: (sid, title) for seq, sid, title in conn.execute(
                    "SELECT seq, id, title FROM sessions WHERE seq IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(groups)),))}
                for group in groups.values():
                    group["key"], group["title"] = names[group["key"]]
        for group in groups.values():
            del group["_n"]
        return list(groups.values())

    def stats_totals(self, group_by: tuple[str, ...] = ("day", "model_id"), since: str | None = None,
                     until: str | None = None, filter_metadata: dict | None = None) -> list[dict]:
        """Reply counts and sums per combination of ``group_by`` columns ("day", "model_id", "route"), in
        one GROUP BY: dicts with those columns and ``requests`` (replies here: unanswered prompts are not
        included), errors, partial, fallbacks, input_tokens, output_tokens, cost_usd, cost_unknown."""
        columns = list(group_by)
        for column in columns:
            if column not in ("day", "model_id", "route"):
                raise ValueError(f"group_by columns must be 'day', 'model_id' or 'route', not {column!r}")
        where, params, fill = _stats_where(since, until, filter_metadata)
        self._update_stats_tables()
        keys = ", ".join(columns) or "NULL"
        with self._read() as conn:
            _select_sessions(conn, fill)
            rows = conn.execute(f"SELECT {keys}, {_STATS_SUMS} FROM reply_stats NOT INDEXED WHERE 1{where} "
                                f"GROUP BY {', '.join(str(i + 1) for i in range(max(1, len(columns))))}",
                                params).fetchall()
        return [{**dict(zip(columns, row)), **dict(zip(_STATS_SUM_NAMES, row[max(1, len(columns)):]))}
                for row in rows]

    def stats_sample(self, since: str | None = None, until: str | None = None,
                     filter_metadata: dict | None = None, limit: int = 20_000) -> list[dict]:
        """Up to about ``limit`` replies (all when fewer) as dicts ``{timestamp, model_id, route, partial,
        fallback, ttft, tps, input_tokens, output_tokens}``, for plots of distributions. Larger sets are
        thinned by a hash of the row id, so the sample spreads evenly over time and groups and is the same
        on every call."""
        sql_limit = check_limit(limit)
        where, params, fill = _stats_where(since, until, filter_metadata)
        self._update_stats_tables()
        columns = ("timestamp", "model_id", "route", "partial", "fallback", "ttft", "tps", "input_tokens",
                   "output_tokens")
        with self._read() as conn:
            _select_sessions(conn, fill)
            total = conn.execute(f"SELECT count(*) FROM reply_stats NOT INDEXED WHERE 1{where}", params).fetchone()[0]
            thin = ""
            if sql_limit >= 0 and total > sql_limit:
                thin = f" AND (seq * 2654435761) % 1000003 < {int(1000003 * sql_limit / total)}"
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM reply_stats NOT INDEXED WHERE 1{where}{thin} "
                                f"ORDER BY seq", params).fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def _update_stats_tables(self) -> None:
        """Index the messages not yet in the stats tables (see :mod:`.migrations`, version 3), ``STATS_CHUNK_ROWS``
        messages per write transaction (so a writer in another kernel waits at most one chunk); nothing to do
        costs one read. Normally the background maintainer (:meth:`_maintain_stats`) has left little or
        nothing. A read-only store is not brought up to date: its stats show what was indexed while it was
        writable."""
        if self.read_only is not None:
            return
        while self._stats_chunk(STATS_CHUNK_ROWS):
            pass

    def _stats_chunk(self, rows: int) -> bool:
        """Index up to ``rows`` pending messages into the stats tables in one write transaction; False if
        nothing was pending (one read)."""
        with self._locked("read") as conn:
            if not conn.execute(STATS_PENDING).fetchone()[0]:
                return False
        with self._write(visible=False) as conn:
            last = conn.execute("SELECT last_seq FROM stats_progress").fetchone()[0]
            upper = conn.execute("SELECT seq FROM messages WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
                                 (last, rows - 1)).fetchone()
            if upper is None:
                upper = conn.execute("SELECT IFNULL(MAX(seq), 0) FROM messages").fetchone()
            for statement in STATS_CATCH_UP_CHUNK:
                conn.execute(statement, (last, upper[0]) if "?" in statement else ())
        return True

    def _maintain_stats(self) -> None:
        """The background maintainer's stats step (run by the index pass after the FTS indexes, on its daemon
        thread): index pending messages ``STATS_BACKGROUND_CHUNK_ROWS`` per transaction, releasing the
        connection between chunks and, while writes keep coming, pausing as long as the chunk took (a writer
        waits at most one chunk and gets at least half of the time); with no writes about it runs at full
        speed. Until none is pending or the store closes. One thread at a time does it; a pass that finds another at work leaves it to that one."""
        if self.read_only is not None:
            return
        with self._lock:
            if self._stats_busy or self._closed:
                return
            self._stats_busy = True
        try:
            seen = self._writes
            while True:
                started = time.perf_counter()
                with self._lock:
                    if self._closed or not self._stats_chunk(STATS_BACKGROUND_CHUNK_ROWS):
                        return
                if self._writes != seen:
                    # Writes are coming: pause as long as the chunk took, so they get at least half of the
                    # connection's time (the lock is not fair: a waiting writer might not get it otherwise).
                    seen = self._writes
                    time.sleep(max(0.001, time.perf_counter() - started))
                else:
                    time.sleep(0)  # no writer about: go on at full speed (a newcomer still gets the lock)
        finally:
            self._stats_busy = False

    @staticmethod
    def _stats_percentiles(conn: sqlite3.Connection, key: str, where: str, params: list,
                           groups: list[dict]) -> None:
        """Fill each group's percentile columns from the values at the ranks around each quantile (0-based,
        among the group's non-null values in order), interpolated as numpy does. Both reads walk the
        ``(key, metric, timestamp, session_seq)`` index in order, so nothing is sorted:

        - a few groups: ``ORDER BY metric LIMIT 1 OFFSET rank`` per rank, many per statement;
        - many small groups (sessions): one ``row_number()`` pass over the whole index per metric, keeping
          the wanted ``(key, rank)`` pairs (a TEMP table), instead of tens of thousands of subqueries.
        """
        picks = []  # (group, column, metric, lo, hi, weight)
        for group in groups:
            for column, metric, q in stats_module.PERCENTILES:
                n = group["_n"][metric]
                group[column] = None
                if n:
                    picks.append((group, column, metric, *stats_module.positions(n, q)))
        reads = {(metric, g["key"], rank) for g, _, metric, lo, hi, _ in picks for rank in (lo, hi)}
        windowed = len(groups) > _STATS_WINDOW_GROUPS
        values: dict = {}
        if windowed:
            by_window = {r for r in reads if r[1] is not None}  # NULL keys never match IN: read those by offset
            reads -= by_window
            for metric in {m for m, _, _ in by_window}:
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STATS_RANKS.split('.')[1]} "
                             f"(k, rn INTEGER, PRIMARY KEY (k, rn)) WITHOUT ROWID")
                conn.execute(f"DELETE FROM {_STATS_RANKS}")
                conn.executemany(f"INSERT OR IGNORE INTO {_STATS_RANKS} (k, rn) VALUES (?, ?)",
                                 [(k, rank) for m, k, rank in by_window if m == metric])
                for k, rank, value in conn.execute(
                        f"SELECT w.k, w.rn, w.v FROM (SELECT {key} AS k, {metric} AS v, "
                        f"row_number() OVER (PARTITION BY {key} ORDER BY {metric}) - 1 AS rn "
                        f"FROM reply_stats INDEXED BY reply_stats_{key}_{metric} WHERE {metric} IS NOT NULL{where}"
                        f") AS w WHERE (w.k, w.rn) IN (SELECT k, rn FROM {_STATS_RANKS})", params):
                    values[(metric, k, rank)] = value
        ordered = sorted(reads, key=lambda r: (r[0], str(r[1]), r[2]))
        per_read = 1 + len(params)
        batch = max(1, min(_STATS_READS_PER_STATEMENT, _STATS_MAX_PARAMS // per_read))
        for start in range(0, len(ordered), batch):
            chunk = ordered[start:start + batch]
            sql = ", ".join(
                f"(SELECT {metric} FROM reply_stats INDEXED BY reply_stats_{key}_{metric} WHERE {key} IS ? AND "
                f"{metric} IS NOT NULL{where} ORDER BY {metric} LIMIT 1 OFFSET {int(rank)})"
                for metric, _, rank in chunk)
            args = [a for _, k, _ in chunk for a in (k, *params)]
            row = conn.execute(f"SELECT {sql}", args).fetchone()
            values.update(zip(chunk, row))
        for group, column, metric, lo, hi, weight in picks:
            a, b = values[(metric, group["key"], lo)], values[(metric, group["key"], hi)]
            group[column] = stats_module.lerp(a, b, weight)
