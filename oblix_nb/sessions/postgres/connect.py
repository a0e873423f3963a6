"""PostgreSQL engine: the database URL (oblix's own options, secrets), errors as StorageError, the outage
guard that keeps the package's event loop from waiting on a database that is down, and the store's connection
pool (:class:`PooledConnections`).

URL options read (and removed) here, never passed to libpq:

- ``prepare_threshold=N`` (or ``none``): psycopg's automatic server-side prepared statements. By default
  (option absent) :func:`behind_proxy` decides at open: a connection that reaches the server through a pooler
  or proxy (pgbouncer, pgcat, a cloud proxy) gets none, since pgbouncer < 1.21 in transaction mode cannot carry
  them across server connections (``prepared statement "_pg3_0" already exists``, or the wrong statement
  runs); a direct connection keeps psycopg's default (5), which halves an append's latency.

Secrets are the URL's password (``user:PW@``) and the ``password``/``sslpassword`` query options, however
their names are percent-encoded (libpq decodes ``%70assword``). :func:`scrub` removes them from any text.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import unquote

from ... import runtime
from ..._util import block_interrupts
from ...errors import StorageError

#: query options that carry a secret (compared after percent-decoding, case-insensitively)
SECRET_OPTIONS = ("password", "sslpassword")
#: query options of oblix (removed before libpq sees the URL)
OBLIX_OPTIONS = ("prepare_threshold",)


def _query_key(item: str) -> str:
    return unquote(item.split("=", 1)[0]).strip().lower()


def split_options(url: str) -> tuple[str, dict]:
    """``(url for libpq, {oblix option: value})``; ValueError for a bad option value (no secret in it)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    keep, options = [], {}
    for item in query.split("&"):
        key = _query_key(item)
        if key in OBLIX_OPTIONS:
            options[key] = unquote(item.split("=", 1)[1] if "=" in item else "")
        else:
            keep.append(item)
    out: dict[str, Any] = {}
    if "prepare_threshold" in options:  # absent: decided at open (behind_proxy)
        value = options["prepare_threshold"].strip().lower()
        if value in ("", "none", "off", "null"):
            out["prepare_threshold"] = None
        else:
            try:
                out["prepare_threshold"] = int(value)
                if out["prepare_threshold"] < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"database URL option prepare_threshold must be a whole number >= 0 or "
                                 f"'none', not {options['prepare_threshold'][:20]!r}") from None
    return (base + "?" + "&".join(keep)) if keep else base, out


def behind_proxy(conn: Any) -> bool:
    """Whether ``conn`` reaches PostgreSQL through something in between (a pooler, a proxy, a port mapping):
    the address and port the server sees itself answering on differ from those this client connected to.
    When unsure it says True (the safe side: no prepared statements)."""
    try:
        addr, port = conn.execute("SELECT host(inet_server_addr()), inet_server_port()").fetchone()
        info = conn.info
        if addr is None:  # the server sees a unix socket: only direct if we used one too
            return bool(info.hostaddr)
        return not (info.hostaddr and info.hostaddr == addr and int(info.port) == int(port))
    except Exception:  # noqa: BLE001 - e.g. a proxy that refuses the functions: assume one
        return True


def secrets(url: str) -> list[str]:
    """Every form of every secret in ``url`` (raw and percent-decoded), longest first."""
    found: set[str] = set()
    rest = url.split("://", 1)[1] if "://" in url else url
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    if "?" in url:
        for item in url.split("?", 1)[1].split("#", 1)[0].split("&"):
            if _query_key(item) in SECRET_OPTIONS and "=" in item:
                found.add(item.split("=", 1)[1])
    if "://" not in url:  # key=value conninfo
        for word in url.split():
            if "=" in word and word.split("=", 1)[0].strip().lower() in SECRET_OPTIONS:
                found.add(word.split("=", 1)[1].strip("'"))
    out = set()
    for value in found:
        if value:
            out.add(value)
            out.add(unquote(value))
    return sorted((v for v in out if v), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with ``url`` and every secret in it replaced by ``***`` (the URL by its redacted form)."""
    from .codec import redact

    if url and url in text:
        text = text.replace(url, redact(url))
    for secret in secrets(url):
        text = text.replace(secret, "***")
    return text


def check_idle(conn: Any) -> None:
    """The pool's check of a connection it hands out, without a round trip: an idle connection has nothing to
    read unless the server closed it (a restart, ``pg_terminate_backend``, an idle timeout: EOF or a FATAL
    message is waiting); only then is it tested with an empty query, which raises if it is dead (the pool then
    drops it and hands out another)."""
    import select

    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        conn.execute("")


def role_of(url: str) -> str:
    """The role ``url`` logs in as (its user, else ``PGUSER``, else the OS user), for hints."""
    from urllib.parse import unquote, urlsplit

    from ..._util import current_user

    try:
        return unquote(urlsplit(url).username or "") or os.environ.get("PGUSER", "") or current_user()
    except ValueError:
        return "<role>"


# ---------------------------------------------------------------------------------------------- errors
def _hint(exc: BaseException, user: str) -> str:
    """What to grant or set for a PostgreSQL failure (empty when nothing specific applies)."""
    import psycopg

    errors = psycopg.errors
    text = str(exc)
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return ("the database is read-only (a standby, or default_transaction_read_only is on): point the URL "
                "at the primary, or ALTER ROLE/DATABASE ... SET default_transaction_read_only = off")
    if isinstance(exc, errors.InsufficientPrivilege):
        if "schema" in text and ("create" in text.lower() or "permission denied for schema" in text):
            return (f"the store creates its tables on first use: GRANT CREATE, USAGE ON SCHEMA <schema> TO {user} "
                    f"(PostgreSQL 15+ no longer lets every role create in schema public), or have an owner open "
                    f"the store once")
        return (f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA <schema> TO {user}; "
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO {user}")
    if isinstance(exc, errors.LockNotAvailable):
        return "another transaction holds a lock on the same rows: retry, or end that transaction"
    low = text.lower()
    if "no password supplied" in low or "password authentication failed" in low:
        return "set PGPASSWORD or a ~/.pgpass entry for this user (the URL's password is never shared)"
    if "does not exist" in low and "database" in low:
        return "check the database name, or create it (createdb)"
    if "role" in low and "does not exist" in low:
        return "check the user name in the URL (CREATE ROLE)"
    if "connection refused" in low or "could not connect" in low or "connection is bad" in low \
            or "timeout" in low or "could not translate host name" in low:
        return "check the host and port, and that the server is running"
    if isinstance(exc, psycopg.ProgrammingError) and ("uri" in low or "percent" in low or "connection option" in low
                                                      or "spaces" in low or "invalid" in low):
        return "the URL is malformed: percent-encode special characters in the user and password (%25 for %)"
    return ""


def storage_error(exc: BaseException, url: str, user: str = "", what: str = "could not be used"):
    """A StorageError for a psycopg/pool failure: names the database (password redacted), says what to grant
    or set, and never carries a secret (the cause is dropped when its text held one)."""
    from ...errors import StorageError
    from .codec import redact

    raw = str(exc).strip()
    text = scrub(raw, url)
    hint = _hint(exc, user or "<role>")
    message = f"session database {redact(url)} {what}: {text}" + (f" ({hint})" if hint else "")
    leaked = text != raw
    error = StorageError(message, path=redact(url), cause=None if leaked else exc)
    return error, leaked


class Outage:
    """Tracks whether the database is reachable. While it is down, calls fail at once (no waiting on the
    package's event loop) and one background thread probes the server every ``probe_s`` seconds; when it
    answers, ``on_recover`` runs (the store drops its stale pooled connections) and calls go through again."""

    def __init__(self, url: str, connect_kwargs: dict, on_recover, probe_s: float = 0.5):
        self._url, self._kwargs, self._on_recover, self.probe_s = url, connect_kwargs, on_recover, probe_s
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.reason = ""
        self._prober: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def mark_down(self, reason: str) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.reason = reason
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe, name="oblix-pg-probe", daemon=True)
                self._prober.start()

    def mark_up(self) -> None:
        self.down_since = None

    def _probe(self) -> None:
        import psycopg

        block_interrupts()  # SIGINT goes to the main thread (Ctrl-C, kernel interrupt), never to this one
        pid = os.getpid()
        while True:  # at once first: a lone broken connection (a terminated backend) is no outage
            if self.down_since is None or os.getpid() != pid or self._stop.is_set():
                return
            try:
                with psycopg.connect(self._url, **self._kwargs) as conn:
                    conn.execute("SELECT 1")
            except Exception:  # noqa: BLE001 - still down: probe again
                if self._stop.wait(self.probe_s):
                    return
                continue
            try:
                self._on_recover()
            except Exception:  # noqa: BLE001 - the pool re-checks its connections on checkout anyway
                pass
            self.mark_up()
            return

    def close(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------------------------- the pool
CONNECT_TIMEOUT_S = 10
POOL_TIMEOUT_S = 30.0
#: longest wait for a pooled connection on the package's event loop (elsewhere: POOL_TIMEOUT_S)
LOOP_WAIT_S = 0.3
WAIT_SLICE_S = 0.05  # between looks at whether the pool's connection attempts fail


def _psycopg():
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the PostgreSQL store needs psycopg 3 and psycopg_pool: "
                          "pip install 'oblix-nb[postgres]'") from exc
    return psycopg, psycopg_pool


class PooledConnections:
    """Mixin of :class:`~.store.PostgresSessionStore`: its connection pool (opened again after ``fork()``) and
    the :class:`Outage` guard. The store's ``__init__`` sets the attributes below, then calls
    :meth:`_open_pool`."""

    _url: str
    _conninfo: str
    _connect_kwargs: dict
    _pool_max: int
    _lock: threading.Lock
    _pool: Any  # a psycopg_pool.ConnectionPool (imported lazily)
    _outage: Outage | None
    _pid: int
    _closed: bool
    _errors_seen: int

    def _role(self) -> str:
        return role_of(self._url)

    def _open_pool(self) -> None:
        _, psycopg_pool = _psycopg()
        # check: a pooled connection the server closed (restart) is noticed when taken and replaced, instead of
        # failing the next calls (no round trip for a healthy one)
        self._pool = psycopg_pool.ConnectionPool(
            self._conninfo, min_size=1, max_size=self._pool_max, open=True, timeout=POOL_TIMEOUT_S,
            kwargs=dict(self._connect_kwargs), name="oblix_nb", check=check_idle)
        if self._outage is not None:
            self._outage.close()
        self._outage = Outage(self._conninfo, self._connect_kwargs, self._recovered)
        self._pid = os.getpid()
        self._errors_seen = 0
        with suppress(psycopg_pool.PoolTimeout):  # a connection ready for the first call (maybe on the loop)
            self._pool.wait(timeout=CONNECT_TIMEOUT_S)

    def _recovered(self) -> None:
        """The server answers again (the outage probe): drop the pool's connections the outage broke."""
        if self._pool is not None:
            self._pool.check()

    def _unreachable(self, outage: Outage) -> StorageError:
        from .codec import redact

        url = redact(self._url)  # the store's .url
        down = time.monotonic() - (outage.down_since or time.monotonic())
        return StorageError(f"session database {url} is unreachable (for {down:.1f} s: {outage.reason}); "
                            f"calls fail at once until it answers again (checked every {outage.probe_s} s in "
                            f"the background)", path=url)

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled autocommit connection (a fresh pool after ``fork()``). A lost or unreachable server
        raises StorageError (an OSError) naming the database (password redacted) and the cause."""
        if self._closed:
            raise RuntimeError("this session store is closed")
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._open_pool()  # the parent's sockets stay the parent's
        outage = self._outage
        assert outage is not None, "_open_pool (in __init__, and after fork) sets it"
        if outage.down:
            raise self._unreachable(outage)  # no waiting on a server that is down (the event loop must not stall)
        psycopg, _ = _psycopg()
        errors = psycopg.errors
        conn = self._getconn(outage)
        try:
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, errors.ReadOnlySqlTransaction,
                errors.InsufficientPrivilege) as exc:
            if conn.closed or conn.broken:
                outage.mark_down(str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__)
            error, leaked = storage_error(exc, self._url, self._role())
            if leaked:
                raise error from None
            raise error from exc
        finally:
            self._pool.putconn(conn)  # a broken one is dropped by the pool

    def _getconn(self, outage: Outage) -> Any:
        """A connection from the pool. On the package's event loop it is waited for at most LOOP_WAIT_S (a
        healthy pool has one at once), elsewhere POOL_TIMEOUT_S; either way in slices of WAIT_SLICE_S, and as
        soon as the pool's connection attempts fail the server is taken as down (StorageError at once)."""
        _, psycopg_pool = _psycopg()
        wait = LOOP_WAIT_S if runtime.in_loop_thread() else POOL_TIMEOUT_S
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._pool.getconn(timeout=max(min(WAIT_SLICE_S, deadline - time.monotonic()), 0.001))
            except psycopg_pool.PoolTimeout as exc:
                errors_now = self._pool.get_stats().get("connections_errors", 0)
                failing = errors_now > self._errors_seen
                self._errors_seen = errors_now
                if failing:  # the pool's connection attempts fail: the server is down
                    outage.mark_down("connection attempts failing")
                if failing or time.monotonic() >= deadline:
                    error, _ = storage_error(exc, self._url, self._role(),
                                             "is unreachable" if failing else f"had no free connection within {wait:g} s")
                    raise error from None
