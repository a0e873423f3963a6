"""The test suite's own API servers (test infrastructure, not part of the package), and how to start them.

    from servers import start_ollama_server, start_anthropic_server

    with start_ollama_server() as srv:       # ollama_compat.py (Ollama API) over SmolLM2-135M
        ollama.Client(host=srv.base_url)     # srv.base_url == srv.url

    with start_anthropic_server() as srv:    # anthropic_compat.py (Anthropic Messages API) over SmolLM2-135M
        anthropic.Anthropic(base_url=srv.base_url, api_key=srv.api_key)   # srv.base_url == srv.url (no /v1)

Each runs as a subprocess on a free 127.0.0.1 port through :class:`oblix_nb.localserver.LocalServer` (log file,
stop by own pid, exits when the parent dies). The server files are run by path: they import nothing from
``oblix_nb`` (the Anthropic one imports its sibling ``ollama_compat`` for the model host).
"""
from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from oblix_nb.localserver import LOOPBACK, LocalServer, free_port
from oblix_nb.models.resolve import resolve_gguf

HERE = Path(__file__).resolve().parent
DEFAULT_CLAUDE_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-5")


def _start(server: LocalServer, timeout: float) -> LocalServer:
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_ollama_server(model: str = "smollm2-135m", *, port: int | None = None, name: str = "smollm2:135m",
                        n_ctx: int = 2048, n_threads: int = 1, warmup: bool = True, timeout: float = 120.0,
                        extra_args: Sequence[str] = ()) -> LocalServer:
    """Start ``ollama_compat.py`` (an Ollama-API server over llama-cpp-python) on 127.0.0.1.

    ``model``: a shipped short name or a ``.gguf`` path; ``name``: the Ollama model name it serves. Returns once
    ``GET /api/version`` answers (the model is loaded, and warmed up in-process unless ``warmup=False``, before the
    server starts listening). ``.base_url`` == ``.url`` == ``http://127.0.0.1:PORT`` -- pass it to
    ``ollama.Client(host=...)``. ``GET .url + "/_debug/requests"`` lists the request bodies it received."""
    gguf = Path(resolve_gguf(model))
    port = port or free_port()
    argv = [sys.executable, str(HERE / "ollama_compat.py"), "--model", str(gguf), "--name", name, "--host", LOOPBACK,
            "--port", str(port), "--n_threads", str(n_threads), "--n_ctx", str(n_ctx),
            *(() if warmup else ("--no-warmup",)), *extra_args]
    return _start(LocalServer(argv, port=port, ready_path="/api/version", api_path="", name="ollama-compat",
                              kind="ollama", model=name, gguf_path=gguf), timeout)


def start_anthropic_server(model: str = "smollm2-135m", *, port: int | None = None,
                           models: Sequence[str] = DEFAULT_CLAUDE_MODELS, api_key: str | None = None,
                           n_ctx: int = 2048, n_threads: int = 1, warmup: bool = True, timeout: float = 120.0,
                           extra_args: Sequence[str] = ()) -> LocalServer:
    """Start ``anthropic_compat.py`` (Anthropic's Messages API over llama-cpp-python) on 127.0.0.1.

    It answers to every name in ``models`` (all backed by the one GGUF) and accepts ``api_key`` (a fresh random
    test key by default; set as ``.api_key``) in ``x-api-key`` or ``Authorization: Bearer``. ``.base_url`` ==
    ``.url`` (the SDK adds ``/v1``); ``.model`` is ``models[0]``, ``.models`` all of them. Test aids:
    ``POST /_control/fail`` (inject errors), ``GET|DELETE /_debug/requests``. The key reaches the child through
    its environment (never its argv, which ``ps`` shows)."""
    import os

    gguf = Path(resolve_gguf(model))
    port = port or free_port()
    key = api_key or "sk-ant-test-" + secrets.token_hex(12)
    argv = [sys.executable, str(HERE / "anthropic_compat.py"), "--model", str(gguf), "--names", ",".join(models),
            "--host", LOOPBACK, "--port", str(port), "--n_threads", str(n_threads), "--n_ctx", str(n_ctx),
            *(() if warmup else ("--no-warmup",)), *extra_args]
    env = {**os.environ, "ANTHROPIC_COMPAT_API_KEY": key}
    server = LocalServer(argv, port=port, ready_path="/_health", api_path="", name="anthropic-compat",
                         kind="anthropic", model=models[0], gguf_path=gguf, env=env)
    server.api_key = key
    server.models = list(models)
    return _start(server, timeout)
