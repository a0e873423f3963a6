"""PostgreSQL engine: request statistics, computed from the messages in one aggregate query per call
(``percentile_cont``), no side tables (so there is nothing to maintain after writes)."""
from __future__ import annotations

from .. import stats as stats_module
from ..validate import check_limit
from .codec import _PgStoreState, _title

# stats(): as SQLite's _STATS_KEYS / _STATS_SUMS (sessions.store), over the replies subquery ``r``
_STATS_KEYS = {"model": ("model_id", "NULL"), "route": ("route", "NULL"),
               "session": ("session_seq", "m.session_seq"), "day": ("day", "substr(m.timestamp, 1, 10)")}
_STATS_SUM_NAMES = ("requests", "errors", "partial", "fallbacks", "input_tokens", "output_tokens", "cost_usd",
                    "cost_unknown")
_STATS_SUMS = ("count(*), sum(error)::bigint, sum(partial)::bigint, sum(fallback)::bigint, "
               "coalesce(sum(input_tokens), 0)::bigint, coalesce(sum(output_tokens), 0)::bigint, "
               "sum(cost_usd), count(*) - count(cost_usd)")
_STAT_NUMBER = "CASE WHEN jsonb_typeof(j.mj -> '{0}') = 'number' THEN (j.mj ->> '{0}')::float8 END"
# an integer: a JSON number written without a fraction or exponent (SQLite's json_type 'integer')
_STAT_INTEGER = ("CASE WHEN jsonb_typeof(j.mj -> '{0}') = 'number' AND (j.mj ->> '{0}') ~ '^-?[0-9]{{1,18}}$' "
                 "THEN (j.mj ->> '{0}')::bigint END")


class PostgresStats(_PgStoreState):
    """The PostgreSQL store's statistics methods (a mixin of :class:`.store.PostgresSessionStore`)."""

    def _stats_filter(self, since: str | None, until: str | None,
                      filter_metadata: dict | None) -> tuple[str, list]:
        """`` AND ...`` conditions on messages ``m``: the time window and the sessions' metadata filter."""
        conditions, params = [], []
        if since is not None:
            conditions.append("m.timestamp >= %s")
            params.append(since)
        if until is not None:
            conditions.append("m.timestamp < %s")
            params.append(until)
        where, meta_params = self._where(filter_metadata, None)
        if where:
            conditions.append(f"m.session_seq IN (SELECT seq FROM sessions {where})")
            params += meta_params
        return "".join(f" AND {c}" for c in conditions), params

    def _replies(self, filter_sql: str) -> str:
        """A subquery of the assistant replies with the columns SQLite's ``reply_stats`` holds (migration 3
        there), derived from the JSON on the fly: the same rules (a value of the wrong JSON type is NULL)."""
        return (f"(SELECT m.seq, m.session_seq, m.timestamp, substr(m.timestamp, 1, 10) AS day, m.model_id, "
                f"CASE WHEN jsonb_typeof(j.rj -> 'target') = 'string' THEN j.rj ->> 'target' END AS route, "
                f"(m.partial IS NOT NULL)::int AS partial, "
                f"coalesce(jsonb_typeof(j.mj -> 'error') <> 'null', false)::int AS error, "
                f"coalesce(jsonb_typeof(j.rj -> 'fallback_from') <> 'null', false)::int AS fallback, "
                f"{_STAT_NUMBER.format('time_to_first_token')} AS ttft, "
                f"{_STAT_NUMBER.format('tokens_per_second')} AS tps, "
                f"{_STAT_INTEGER.format('input_tokens')} AS input_tokens, "
                f"{_STAT_INTEGER.format('output_tokens')} AS output_tokens, "
                f"{_STAT_NUMBER.format('cost_usd')} AS cost_usd "
                f"FROM messages m CROSS JOIN LATERAL (SELECT m.metrics::jsonb AS mj, m.routing::jsonb AS rj) j "
                f"WHERE m.role = 'assistant'{filter_sql}) AS r")

    def stats(self, by: str = "model", since: str | None = None, until: str | None = None,
              filter_metadata: dict | None = None) -> list[dict]:
        """As :meth:`SessionStore.stats`, computed in one aggregate query over the messages (percentiles with
        ``percentile_cont``: linear interpolation, as numpy's default) plus one for unanswered prompts."""

        by = stats_module.check_by(by)
        key, prompt_key = _STATS_KEYS[by]
        filter_sql, params = self._stats_filter(since, until, filter_metadata)
        groups: dict = {}
        with self._write() as conn:  # one snapshot
            for row in conn.execute(
                    f"SELECT {key}, {_STATS_SUMS}, percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft), "
                    f"percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft), "
                    f"percentile_cont(0.5) WITHIN GROUP (ORDER BY tps) FROM {self._replies(filter_sql)} GROUP BY 1",
                    params, prepare=False):
                groups[row[0]] = {"key": row[0], **dict(zip(_STATS_SUM_NAMES, row[1:9])),
                                  "ttft_p50": row[9], "ttft_p95": row[10], "tokens_per_second_p50": row[11]}
            for group_key, unanswered in conn.execute(
                    f"SELECT {prompt_key}, count(*) FROM messages m WHERE m.role = 'user' AND m.request_id IS NOT "
                    f"NULL{filter_sql} AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.session_seq = m.session_seq "
                    f"AND a.role = 'assistant' AND a.request_id = m.request_id) GROUP BY 1", params, prepare=False):
                group = groups.setdefault(group_key, {
                    "key": group_key, **dict.fromkeys(_STATS_SUM_NAMES, 0), "cost_usd": None,
                    "ttft_p50": None, "ttft_p95": None, "tokens_per_second_p50": None})
                group["requests"] += unanswered
                group["errors"] += unanswered
            if by == "session" and groups:
                names = {seq: (sid, _title(title, escaped)) for seq, sid, title, escaped in conn.execute(
                    "SELECT seq, id, title, title_escaped FROM sessions WHERE seq = ANY(%s)", (list(groups),))}
                for group in groups.values():
                    group["key"], group["title"] = names[group["key"]]
        return list(groups.values())

    def stats_totals(self, group_by: tuple[str, ...] = ("day", "model_id"), since: str | None = None,
                     until: str | None = None, filter_metadata: dict | None = None) -> list[dict]:
        columns = list(group_by)
        for column in columns:
            if column not in ("day", "model_id", "route"):
                raise ValueError(f"group_by columns must be 'day', 'model_id' or 'route', not {column!r}")
        filter_sql, params = self._stats_filter(since, until, filter_metadata)
        keys = ", ".join(columns) or "NULL"
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {keys}, {_STATS_SUMS} FROM {self._replies(filter_sql)} "
                                f"GROUP BY {', '.join(str(i + 1) for i in range(max(1, len(columns))))}",
                                params, prepare=False).fetchall()
        return [{**dict(zip(columns, row)), **dict(zip(_STATS_SUM_NAMES, row[max(1, len(columns)):]))}
                for row in rows]

    def stats_sample(self, since: str | None = None, until: str | None = None,
                     filter_metadata: dict | None = None, limit: int = 20_000) -> list[dict]:
        sql_limit = check_limit(limit)
        filter_sql, params = self._stats_filter(since, until, filter_metadata)
        columns = ("timestamp", "model_id", "route", "partial", "fallback", "ttft", "tps", "input_tokens",
                   "output_tokens")
        with self._write() as conn:
            total = conn.execute(f"SELECT count(*) FROM {self._replies(filter_sql)}", params,
                                 prepare=False).fetchone()[0]
            thin = ""
            if sql_limit >= 0 and total > sql_limit:  # the same thinning as SQLite's: by a hash of seq
                thin = f" WHERE (seq * 2654435761) % 1000003 < {int(1000003 * sql_limit / total)}"
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {self._replies(filter_sql)}{thin} ORDER BY seq",
                                params, prepare=False).fetchall()
        return [dict(zip(columns, row)) for row in rows]
