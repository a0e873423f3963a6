"""Real model servers on loopback, for notebooks and tests.

    from oblix_nb.localserver import start_openai_server

    with start_openai_server() as srv:          # llama_cpp.server (OpenAI API) over SmolLM2-135M
        openai.OpenAI(base_url=srv.base_url, api_key="unused")      # srv.base_url == srv.url + "/v1"

The test suite's own API servers (Ollama, Anthropic Messages) are test infrastructure: they live in
``tests/servers/`` and are started with this module's :class:`LocalServer`.

Every server is a subprocess bound to 127.0.0.1 on a free port. Its output goes to a temporary log file (never to
the notebook); ``log_tail()`` reads it. ``stop()`` (also on ``with`` exit, garbage collection and interpreter exit)
terminates then kills that process by its own pid. The child also exits by itself within a second if the process
that started it dies (e.g. a killed notebook kernel), so no orphan keeps a port or ~220 MB of RAM.

Attributes of a :class:`LocalServer`:

``url``       root URL, ``http://127.0.0.1:PORT``
``base_url``  what the API's official client takes as its base URL: ``url + "/v1"`` for the OpenAI server
              (``openai.OpenAI(base_url=...)``); the test servers set their own
``kind``      ``"openai"`` (``"process"`` for a bare :class:`LocalServer`; the test servers set their own)
``model``     the model name the server answers to (``"smollm2:135m"`` by default)
``port``, ``pid``, ``log_path``, ``gguf_path``, ``startup_seconds`` (start to ready, warm-up included)
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"
SECRET_ENV = frozenset({"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"})

# Started as ``python -c _BOOTSTRAP PARENT_PID (-m MODULE | PATH) ARGS...``: runs the module or script as __main__ in
# this very process (so ``pid`` is the server's pid) after starting a thread that exits when the parent dies.
_BOOTSTRAP = r"""# oblix_nb.localserver bootstrap: run the target as __main__, exit when the parent dies
import os, runpy, sys, threading, time
ppid, how, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if os.getppid() != ppid:
    sys.exit("parent process already gone")
def _watch():
    while True:
        time.sleep(1.0)
        if os.getppid() != ppid:
            os._exit(0)
threading.Thread(target=_watch, name="parent-watch", daemon=True).start()
sys.argv = [target] + sys.argv[4:]
if how == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""

_live: weakref.WeakSet[LocalServer] = weakref.WeakSet()


class ServerStartError(RuntimeError):
    """The server process died or never became ready; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _http() -> httpx.Client:
    # trust_env=False: never route loopback traffic through an HTTP(S)_PROXY from the environment
    return httpx.Client(trust_env=False, timeout=httpx.Timeout(5.0))


class LocalServer:
    """A server subprocess on 127.0.0.1. Starts at construction; call :meth:`wait_ready` before use."""

    def __init__(self, argv: Sequence[str], *, port: int, ready_path: str = "/", api_path: str = "",
                 name: str = "server", kind: str = "process", model: str | None = None,
                 gguf_path: Path | None = None,
                 env: dict | None = None, keep_log: bool = False, watch_parent: bool = True):
        """``argv``: the command. With ``watch_parent`` and an argv of the form ``[python, "-m", module, ...]`` or
        ``[python, script.py, ...]`` the child is started through a tiny bootstrap that makes it exit when this
        process dies."""
        self.port = int(port)
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.base_url = self.url + api_path
        self.name = name
        self.kind = kind
        self.model = model
        self.gguf_path = gguf_path
        self.ready_path = ready_path
        self.keep_log = keep_log
        self.startup_seconds: float | None = None
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        argv = list(argv)
        if watch_parent and len(argv) >= 2 and argv[0] == sys.executable:
            if argv[1] == "-m" and len(argv) >= 3:
                argv = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), "-m", argv[2], *argv[3:]]
            elif argv[1].endswith(".py"):
                argv = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), "path", argv[1], *argv[2:]]
        self.argv = argv
        fd, log_path = tempfile.mkstemp(prefix=f"oblix-{name}-{self.port}-", suffix=".log")
        self.log_path = Path(log_path)
        self._log = os.fdopen(fd, "wb")
        # A model server never needs the user's provider keys: they are not handed to it.
        child_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in SECRET_ENV}
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                          env=child_env, close_fds=True)
        except BaseException:
            self._log.close()
            raise
        _live.add(self)

    # ------------------------------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-16384:]
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return f"<{type(self).__name__} {self.kind} {self.model or self.name} {self.base_url} pid={self.pid} {state}>"

    # ------------------------------------------------------------------------------------------ lifecycle
    def wait_ready(self, timeout: float = 60.0, path: str | None = None) -> LocalServer:
        """Poll ``GET url+path`` until it answers 200. Raises :class:`ServerStartError` with the log tail if the
        process exits, ``TimeoutError`` (after stopping the process) if it is not ready in ``timeout`` s."""
        target = self.url + (path or self.ready_path)
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        with _http() as http:
            while True:
                if not self.is_running():
                    code, tail = self.returncode, self.log_tail()
                    self.stop()
                    raise ServerStartError(f"{self.name} (pid {self.pid}) exited with code {code} before it was "
                                           f"ready; its log:\n{tail}")
                try:
                    r = http.get(target, timeout=2.0)
                    if r.status_code == 200:
                        self.startup_seconds = time.monotonic() - self._started
                        return self
                    last_error = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise TimeoutError(f"{self.name} not ready at {target} after {timeout:.0f}s ({last_error}); "
                                       f"log:\n{tail}")
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM), then kill (SIGKILL) after ``timeout`` s -- only this server's own pid. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            try:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout)
            except (OSError, subprocess.SubprocessError):
                pass
            finally:
                try:
                    self._log.close()
                except Exception:  # noqa: BLE001
                    pass
                if not self.keep_log:
                    try:
                        self.log_path.unlink()
                    except OSError:
                        pass
                _live.discard(self)

    close = stop

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop(timeout=2.0)
        except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter shutdown included)
            pass


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        try:
            server.stop(timeout=2.0)
        except Exception:  # noqa: BLE001
            pass


def _gguf(model) -> Path:
    from .models.resolve import resolve_gguf

    return Path(resolve_gguf(model))


def start_openai_server(model: str = "smollm2-135m", *, port: int | None = None, alias: str = "smollm2:135m",
                        n_ctx: int = 2048, n_threads: int = 2, warmup: bool = True, timeout: float = 120.0,
                        extra_args: Sequence[str] = ()) -> LocalServer:
    """Start llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) on 127.0.0.1.

    ``model``: a shipped short name (see :mod:`oblix_nb.models.gguf`) or a ``.gguf`` path. Returns once
    ``GET /v1/models`` answers and, with ``warmup``, one 1-token chat completion went through (the first request
    of a fresh server is slow). ``.base_url`` is ``http://127.0.0.1:PORT/v1`` -- pass it to ``openai.OpenAI``
    (any api_key); ``.url`` is the root (``/extras/tokenize`` etc. live there). The server answers to any model
    name; ``/v1/models`` lists ``alias``. Streaming responses carry no ``usage`` (llama-cpp-python 0.3.36).
    Started with ``--interrupt_requests False``: by default that server aborts a running generation whenever
    another request arrives (a second cell, a panel, a health check), which a notebook user never wants."""
    gguf = _gguf(model)
    port = port or free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
            "--host", LOOPBACK, "--port", str(port), "--n_threads", str(n_threads), "--n_ctx", str(n_ctx),
            "--verbose", "False", "--interrupt_requests", "False", *extra_args]
    server = LocalServer(argv, port=port, ready_path="/v1/models", api_path="/v1", name="llama-cpp-openai",
                         kind="openai", model=alias, gguf_path=gguf)
    try:
        server.wait_ready(timeout)
        if warmup:
            with _http() as http:
                r = http.post(server.base_url + "/chat/completions", timeout=timeout,
                              json={"model": alias, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "Hi"}]})
                r.raise_for_status()
            server.startup_seconds = time.monotonic() - server._started
    except BaseException:
        server.stop()
        raise
    return server
