"""PostgreSQL engine: full-text search (``tsvector`` columns with GIN indexes, ``plainto_tsquery``), with a
literal substring fallback for queries without a searchable word. PostgreSQL indexes text as it is written,
so there is no background pass."""
from __future__ import annotations

from typing import Any

from ..base import MAX_MATCHES_PER_HIT
from ..validate import check_limit, check_query
from .codec import _SUMMARY_COLUMNS, _pg_summary, _PgStoreState, _unescape

# Messages ranked per search: the newest this many that match (a word in every message costs no more than this).
SEARCH_CANDIDATES = 20_000
_TS_CONFIG = "english"
_SNIPPET_OPTIONS = "StartSel=**, StopSel=**, MaxWords=16, MinWords=6, ShortWord=2"


def _like_pattern(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _ellipsize(snippet: str, content: str) -> str:
    """``…`` where the snippet starts after the text's start or ends before its end (as FTS5's snippet)."""
    plain = snippet.replace("**", "").strip()
    text = content.strip()
    if plain and not text.startswith(plain[:24]):
        snippet = "…" + snippet
    if plain and not text.endswith(plain[-24:]):
        snippet = snippet + "…"
    return snippet


def _like_snippet(content: str, terms: list[str], width: int = 60) -> str:
    """A window of ``content`` around the first term found, each found term in ``**bold**``."""
    lower = content.lower()
    at = min((i for i in (lower.find(t.lower()) for t in terms) if i >= 0), default=0)
    start, end = max(0, at - width), min(len(content), at + width)
    window = content[start:end]
    for term in sorted(set(terms), key=len, reverse=True):
        i = window.lower().find(term.lower())
        if i >= 0:
            window = f"{window[:i]}**{window[i:i + len(term)]}**{window[i + len(term):]}"
            break
    return ("…" if start else "") + window + ("…" if end < len(content) else "")


class PostgresSearch(_PgStoreState):
    """The PostgreSQL store's search methods (a mixin of :class:`.store.PostgresSessionStore`)."""

    def search(self, query: str, limit: int = 20) -> list[dict]:
        check_query(query)
        query = query.replace("\x00", " ")  # NUL separates words (as in FTS5)
        sql_limit = check_limit(limit)
        top = None if sql_limit < 0 else sql_limit
        with self._write() as conn:  # one snapshot
            if conn.execute(
                    "SELECT numnode(plainto_tsquery(%s::regconfig, %s))", (_TS_CONFIG, query)).fetchone()[0]:
                scores, matches = self._search_words(conn, query, top)
            else:
                scores, matches = self._search_literal(conn, query, top)
            ranked = sorted(scores, key=lambda s: (scores[s], -s))
            if top is not None:
                ranked = ranked[:top]
            summaries = {row[0]: _pg_summary(row[1:]) for row in conn.execute(
                f"SELECT seq, {_SUMMARY_COLUMNS}, title_escaped FROM sessions WHERE seq = ANY(%s)", (ranked,))}
        return [{**summaries[seq], "matches": matches[seq]} for seq in ranked if seq in summaries]

    def _search_words(self, conn: Any, query: str, top: int | None) -> tuple[dict, dict]:
        """tsvector search: ``{session seq: score (lower is better)}`` and each session's best matches."""
        q = "plainto_tsquery(%s::regconfig, %s)"
        scores: dict[int, float] = {}
        matches: dict[int, list[dict]] = {}
        for seq, rank in conn.execute(
                f"SELECT seq, r FROM (SELECT seq, ts_rank(title_tsv, q, 1) AS r FROM sessions, {q} AS q "
                f"WHERE title_tsv @@ q ORDER BY seq DESC LIMIT %s) AS h ORDER BY r DESC, seq DESC LIMIT %s",
                (_TS_CONFIG, query, SEARCH_CANDIDATES, top), prepare=False):
            scores[seq] = -rank
            matches[seq] = []
        best = conn.execute(
            f"SELECT session_seq, max(r) AS best FROM (SELECT session_seq, ts_rank(content_tsv, q, 1) AS r "
            f"FROM messages, {q} AS q WHERE content_tsv @@ q ORDER BY seq DESC LIMIT %s) AS h "
            f"GROUP BY session_seq ORDER BY best DESC, session_seq DESC LIMIT %s",
            (_TS_CONFIG, query, SEARCH_CANDIDATES, top), prepare=False).fetchall()
        for seq, rank in best:
            scores[seq] = min(-rank, scores.get(seq, -rank))
        if best:
            hits = conn.execute(
                f"SELECT session_seq, id, role, ts_headline(%s::regconfig, content, q, %s), content, "
                f"escaped FROM (SELECT session_seq, seq, id, role, content, escaped, q, "
                f"row_number() OVER (PARTITION BY session_seq ORDER BY ts_rank(content_tsv, q, 1) DESC, seq) AS n "
                f"FROM messages, {q} AS q WHERE content_tsv @@ q AND session_seq = ANY(%s)) AS h "
                f"WHERE n <= %s ORDER BY session_seq, n",
                (_TS_CONFIG, _SNIPPET_OPTIONS, _TS_CONFIG, query, [seq for seq, _ in best], MAX_MATCHES_PER_HIT),
                prepare=False)
            for seq, message_id, role, snippet, content, escaped in hits:
                if escaped:
                    content = _unescape(content)
                    snippet = snippet.replace("\\u0000", " ")
                matches.setdefault(seq, []).append(
                    {"message_id": message_id, "role": role, "snippet": _ellipsize(snippet, content)})
        return scores, matches

    def _search_literal(self, conn: Any, query: str, top: int | None) -> tuple[dict, dict]:
        """Case-insensitive substring search (every term must occur), for queries without a searchable word.
        Sessions with the newest matching message (or title) first."""
        terms = query.split()
        patterns = [_like_pattern(t) for t in terms]
        scores: dict[int, float] = {}
        matches: dict[int, list[dict]] = {}
        if not terms:
            return scores, matches
        for (seq,) in conn.execute("SELECT seq FROM sessions WHERE title ILIKE ALL(%s) ORDER BY seq DESC "
                                   "LIMIT %s", (patterns, top), prepare=False):
            scores[seq] = -seq
            matches[seq] = []
        rows = conn.execute("SELECT session_seq, seq, id, role, content, escaped FROM messages "
                            "WHERE content ILIKE ALL(%s) ORDER BY seq DESC", (patterns,), prepare=False)
        sessions = 0
        for session_seq, seq, message_id, role, content, escaped in rows:
            hits = matches.setdefault(session_seq, [])
            if not hits:
                sessions += 1
                if top is not None and sessions > top:
                    break
                scores[session_seq] = min(-seq, scores.get(session_seq, -seq))
            if len(hits) < MAX_MATCHES_PER_HIT:
                text = _unescape(content) if escaped else content
                hits.append({"message_id": message_id, "role": role, "snippet": _like_snippet(text, terms)})
        return scores, matches
