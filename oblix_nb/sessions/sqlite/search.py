"""SQLite engine: full-text search (FTS5) and the background pass that keeps derived tables up to date.

The FTS5 indexes are updated in batches by a background pass shortly after writes (not on every write, which
would cost each append an FTS5 segment, nor all at the first search, which made that search pay the whole
backlog). The same pass then brings the stats tables up to date (:mod:`.stats`), so one maintainer keeps every
derived table.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ... import runtime
from ..._util import block_interrupts
from ...errors import StorageError
from ..base import MAX_MATCHES_PER_HIT, _summary
from ..validate import check_limit, check_query
from .common import _SUMMARY_COLUMNS, BUSY_TIMEOUT_S, _StoreState, storage_error

INDEX_DELAY_S = 0.05      # a background indexing pass starts this long after a write (writes in between share it)
INDEX_CHUNK_ROWS = 200    # rows indexed per transaction: a writer waits at most one chunk (~1-2 ms)
SEARCH_CATCHUP_S = 0.02   # the longest a search spends indexing a large backlog itself
SEARCH_CATCHUP_ROWS = 2000  # a backlog up to this size (~20 ms of indexing) is always indexed before a search
# (fts_progress name, content table, FTS5 table, indexed column)
_FTS_TABLES = (("messages", "messages", "messages_fts", "content"), ("titles", "sessions", "titles_fts", "title"))
_FTS_BACKLOG = "SELECT " + " + ".join(
    f"MAX(0, IFNULL((SELECT MAX(seq) FROM {table}), 0) - (SELECT last_seq FROM fts_progress WHERE name = '{name}'))"
    for name, table, _, _ in _FTS_TABLES)
_FTS_PENDING = "SELECT " + " OR ".join(
    f"(SELECT last_seq FROM fts_progress WHERE name = '{name}') < IFNULL((SELECT MAX(seq) FROM {table}), 0)"
    for name, table, _, _ in _FTS_TABLES)


_FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"  # as migrations' messages_fts and titles_fts


def _fts_query(query: str) -> str:
    """The user's text as an FTS5 query: every whitespace-separated term quoted (so ``-``, ``:``, ``"``,
    ``AND``, ``*`` are plain text), all terms required."""
    # NUL would end the FTS5 query string early; the tokenizer treats it as a separator anyway.
    return " ".join('"' + term.replace('"', '""').replace("\x00", " ") + '"' for term in query.split())


class SqliteSearch(_StoreState):
    """The SQLite store's search methods and its background maintainer (a mixin of :class:`.store.SqliteSessionStore`)."""

    def _written(self) -> None:
        """After a committed write of searchable text: schedule a background indexing pass (at most one
        pending; it starts ``INDEX_DELAY_S`` later on the package loop, so a burst of writes shares one)."""
        if self._index_wanted or not self.background_index or self.read_only is not None:
            return
        self._index_wanted = True
        try:
            runtime.get_loop().call_soon_threadsafe(self._schedule_index_pass)
        except RuntimeError:  # no threads any more (interpreter shutdown): the next search indexes instead
            self._index_wanted = False

    def _schedule_index_pass(self) -> None:  # on the package loop
        asyncio.get_running_loop().call_later(INDEX_DELAY_S, self._start_index_pass)

    def _start_index_pass(self) -> None:  # on the package loop; the work runs on a daemon thread
        threading.Thread(target=self._index_pass, name="oblix-search-index", daemon=True).start()

    def _index_pass(self) -> None:
        block_interrupts()
        self._index_wanted = False  # writes from now on schedule another pass
        try:
            self._index_backlog()
            self._maintain_stats()  # then the other derived tables (.stats), in small chunks
        except Exception as exc:  # noqa: BLE001 - a failed pass is retried by the next write or search
            self.index_error = exc

    def _index_backlog(self, budget_s: float | None = None) -> bool:
        """Index pending messages and titles, ``INDEX_CHUNK_ROWS`` per transaction (so writers wait at most
        one chunk); stop after ``budget_s`` seconds if given. True when nothing is left to index."""
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        while True:
            with self._lock:
                if self._closed:
                    return True
                if self._index_chunk(INDEX_CHUNK_ROWS):
                    return True
            if deadline is not None and time.perf_counter() >= deadline:
                return False

    def _index_chunk(self, rows: int) -> bool:
        """Index up to ``rows`` pending rows of each FTS table in one transaction; True if none remain."""
        with self._locked("read") as conn:
            if not conn.execute(_FTS_PENDING).fetchone()[0]:
                return True
        done = True
        with self._write(visible=False) as conn:
            for name, table, fts, column in _FTS_TABLES:
                last = conn.execute("SELECT last_seq FROM fts_progress WHERE name = ?", (name,)).fetchone()[0]
                upper = conn.execute(f"SELECT seq FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
                                     (last, rows - 1)).fetchone()
                if upper is None:
                    upper = conn.execute(f"SELECT IFNULL(MAX(seq), 0) FROM {table}").fetchone()
                else:
                    done = False
                if upper[0] <= last:
                    continue
                conn.execute(f"INSERT INTO {fts} (rowid, {column}) SELECT seq, {column} FROM {table} "
                             f"WHERE seq > ? AND seq <= ?", (last, upper[0]))
                conn.execute("UPDATE fts_progress SET last_seq = ? WHERE name = ?", (upper[0], name))
        return done

    def _catch_up_for_search(self) -> None:
        """Before a search: index what is pending, for at most ``search_catchup_s`` (normally the background
        pass has left little or nothing); a larger backlog is left to the background pass. If a writer or the
        background pass holds the connection longer than that, the search does not wait for it."""
        if self.read_only is not None:
            return
        budget = self.search_catchup_s
        if budget is not None and self._pending_rows() <= SEARCH_CATCHUP_ROWS:
            budget = None  # what writes leave between background passes: always indexed, so always found
        if not self._lock.acquire(timeout=-1 if budget is None else budget):
            self._written()
            return
        try:
            caught_up = self._index_backlog(budget_s=budget)
        except StorageError:  # a full disk must not stop searching what is indexed
            caught_up = False
        finally:
            self._lock.release()
        if not caught_up:
            self._index_wanted = False
            self._written()

    def _pending_rows(self) -> int:
        """Messages and titles not indexed yet (read on the search connection, without waiting for writers)."""
        with self._search_read() as conn:
            return conn.execute(_FTS_BACKLOG).fetchone()[0]

    @contextmanager
    def _search_read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on the store's second, read-only connection: a search reads a snapshot of the
        committed data while a writer or the background index pass holds the main one (WAL readers never
        wait for the writer). A read-only store has just the one connection."""
        if self.read_only is not None:
            with self._read() as conn:
                yield conn
            return
        with self._reader_lock:
            if self._reader is None:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                try:
                    self._reader = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                                   timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                                   check_same_thread=False)
                except sqlite3.Error as exc:
                    raise storage_error(exc, self.path, "open") from exc
            conn = self._reader
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, "read") from exc

    def _pending_fts(self, conn: sqlite3.Connection) -> bool:
        """A read-only store cannot index what a writer appended and had not indexed yet: those rows go into
        temporary FTS5 tables (same tokenizer; the temp schema is this connection's, in memory) that the
        search reads as well, so it finds them. True if there were any."""
        if self.read_only is None or not conn.execute(_FTS_PENDING).fetchone()[0]:
            return False
        conn.execute("PRAGMA temp_store = MEMORY")
        for name, table, fts, column in _FTS_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS temp.pending_{fts}")
            conn.execute(f"CREATE VIRTUAL TABLE temp.pending_{fts} USING fts5({column}, tokenize='{_FTS_TOKENIZE}')")
            conn.execute(f"INSERT INTO temp.pending_{fts} (rowid, {column}) SELECT seq, {column} FROM main.{table} "
                         f"WHERE seq > (SELECT last_seq FROM main.fts_progress WHERE name = ?)", (name,))
        return True

    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Full-text search over session titles and message text, best match (bm25) first.

        The query is plain text: each word must occur (stemmed: "install" finds "installing"); punctuation
        and FTS operators in it are taken literally. Each hit is a session summary plus ``"matches"``: up to
        three ``{message_id, role, snippet}`` of its best-matching messages (empty if only the title
        matched), with the matched words in ``**bold**``. An empty query raises ValueError.

        Indexing runs in the background (a pass starts ``INDEX_DELAY_S`` after a write, on a daemon thread
        scheduled by the package loop), so a search normally finds everything committed with nothing left to
        index. A search first indexes what is still pending: all of it when it is at most
        ``SEARCH_CATCHUP_ROWS`` rows (what writes leave between background passes, ~20 ms of work), else for
        at most ``search_catchup_s`` (20 ms); only such a larger backlog (a bulk import by another process,
        a database from an older version) is finished in the background, and until then the newest of those
        rows are not found yet. A read-only store (which cannot index) also searches the rows the writer had
        not indexed, through temporary in-memory FTS5 tables.
        """
        check_query(query)
        sql_limit = check_limit(limit)
        match = _fts_query(query)
        self._catch_up_for_search()
        scores: dict[int, float] = {}
        matches: dict[int, list[dict]] = {}
        with self._search_read() as conn:
            pending = self._pending_fts(conn)  # read-only store: what the writer had not indexed yet
            titles = "SELECT rowid, rank FROM titles_fts WHERE titles_fts MATCH ?"
            texts = ("SELECT rowid, snippet(messages_fts, 0, '**', '**', '…', 16) AS snippet, rank "
                     "FROM messages_fts WHERE messages_fts MATCH ?")
            if pending:
                titles += " UNION ALL " + titles.replace("titles_fts", "pending_titles_fts")
                texts += " UNION ALL " + texts.replace("messages_fts", "pending_messages_fts")
            for seq, rank in conn.execute(f"SELECT rowid, rank FROM ({titles}) ORDER BY rank LIMIT ?",
                                          (match, *([match] if pending else []), sql_limit)):
                scores[seq] = rank
                matches[seq] = []
            message_sessions = 0
            cursor = conn.execute(
                f"SELECT m.session_seq, m.id, m.role, f.snippet, f.rank FROM ({texts} ORDER BY rank) AS f "
                f"JOIN messages AS m ON m.seq = f.rowid", (match, *([match] if pending else [])))
            for seq, message_id, role, snippet, rank in cursor:
                hits = matches.setdefault(seq, [])
                if not hits:
                    message_sessions += 1
                    if sql_limit >= 0 and message_sessions > sql_limit:
                        break  # rows come best first: no later session can enter the top `limit`
                    scores[seq] = min(rank, scores.get(seq, rank))
                if len(hits) < MAX_MATCHES_PER_HIT:
                    hits.append({"message_id": message_id, "role": role, "snippet": snippet})
            cursor.close()
            ranked = sorted(scores, key=lambda s: (scores[s], -s))
            if sql_limit >= 0:
                ranked = ranked[:sql_limit]
            summaries = {row[0]: _summary(row[1:]) for row in conn.execute(
                f"SELECT seq, {_SUMMARY_COLUMNS} FROM sessions WHERE seq IN ({', '.join('?' * len(ranked))})",
                ranked)}
        return [{**summaries[seq], "matches": matches[seq]} for seq in ranked]
