"""A loopback server speaking the Hugging Face Hub's file API, for real ``huggingface_hub`` download tests.

    python hub_compat.py --port P --repo OWNER/REPO=DIR [--repo ...] [--token T]

Each ``--repo`` serves the files under DIR (subfolders included; symlinks followed) as one model repo whose
commit is a hash of its file list. What huggingface_hub uses (checked against huggingface_hub 2.4):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: ``id``, ``sha``, ``siblings``
  (``rfilename``; with ``?blobs=true`` also ``size``, ``blobId`` and ``lfs`` {``sha256``, ``size``, ``pointerSize``})
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``): files and directories
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` and ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size``, ``Accept-Ranges: bytes``; ``Range: bytes=N-`` / ``N-M`` answered 206 with ``Content-Range``
- errors as the Hub sends them: 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``, 401 for a repo behind ``--token`` without the right ``Authorization: Bearer``.

Test controls (not Hub API): ``POST /_control`` JSON ``{"throttle_bps": N|null, "corrupt": [repo...],
"short": [repo...], "fail_after": N|null}`` (slow downloads; serve one flipped byte for those repos with metadata
unchanged; serve those repos' files 1000 bytes short, as a complete response, while the metadata announces the
full size; send N more file bytes in all, then drop every file GET's connection after its headers), ``GET /_debug/requests`` (method, path, range, status, bytes sent,
auth present), ``DELETE /_debug/requests``, ``GET /_health``. Imports nothing from ``oblix_nb``; the helper
:func:`start_hub_server` (for tests) does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024
_SHA_CACHE: dict = {}  # (real path, size, mtime) -> sha256: repos sharing a file hash it once


class Repo:
    def __init__(self, repo_id: str, root: Path):
        self.repo_id = repo_id
        self.root = root
        self.files: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.files[path.relative_to(root).as_posix()] = path
        self.sha256 = {rel: self._sha256(p) for rel, p in self.files.items()}
        listing = "\n".join(f"{rel} {self.sha256[rel]}" for rel in self.files)
        self.commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    @staticmethod
    def _sha256(path: Path) -> str:
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
        return _SHA_CACHE[key]

    def sibling(self, rel: str, blobs: bool) -> dict:
        out = {"rfilename": rel}
        if blobs:
            size = self.files[rel].stat().st_size
            out.update(size=size, blobId=hashlib.sha1(self.sha256[rel].encode()).hexdigest(),
                       lfs={"sha256": self.sha256[rel], "size": size, "pointerSize": 134})
        return out


class State:
    def __init__(self, repos: dict[str, Repo], token: str | None):
        self.repos = repos
        self.token = token
        self.throttle_bps: int | None = None
        self.corrupt: set[str] = set()
        self.short: set[str] = set()
        self.fail_after: int | None = None
        self.requests: list[dict] = []
        self.lock = threading.Lock()


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hub-compat/1"

        def log_message(self, fmt, *args):  # quiet
            pass

        # ----------------------------------------------------------------------------------------- helpers
        def _record(self, status: int, sent: int = 0) -> None:
            with state.lock:
                state.requests.append({
                    "method": self.command, "path": urlsplit(self.path).path, "query": urlsplit(self.path).query,
                    "range": self.headers.get("Range"), "status": status, "bytes": sent,
                    "auth": bool(self.headers.get("Authorization")), "time": time.time()})

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self._record(status, len(body) if self.command != "HEAD" else 0)

        def _json(self, obj, status: int = 200, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, code: str, message: str, headers: dict | None = None):
            self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message,
                                                    **(headers or {})})

        def _repo(self, repo_id: str):
            repo = state.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
                self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
                return None
            return repo

        def _revision_ok(self, repo: Repo, rev: str) -> bool:
            if unquote(rev) in ("main", repo.commit):
                return True
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}",
                        {"X-Repo-Commit": repo.commit})
            return False

        # ----------------------------------------------------------------------------------------- routes
        def do_HEAD(self):
            self._route()

        def do_GET(self):
            self._route()

        def do_DELETE(self):
            if urlsplit(self.path).path == "/_debug/requests":
                with state.lock:
                    state.requests.clear()
                return self._json({"ok": True})  # outside the lock: _json records the request under it
            self._error(404, "NotFound", "not found")

        def do_POST(self):
            if urlsplit(self.path).path != "/_control":
                return self._error(404, "NotFound", "not found")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if "throttle_bps" in body:
                state.throttle_bps = body["throttle_bps"]
            if "corrupt" in body:
                state.corrupt = set(body["corrupt"] or ())
            if "short" in body:
                state.short = set(body["short"] or ())
            if "fail_after" in body:
                state.fail_after = body["fail_after"]
            self._json({"ok": True})

        def _route(self):
            url = urlsplit(self.path)
            path = url.path
            query = parse_qs(url.query)
            if path == "/_health":
                return self._json({"ok": True})
            if path == "/_debug/requests":
                with state.lock:
                    requests = list(state.requests)
                return self._json(requests)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                repo = self._repo(m.group(1))
                if repo is None or not self._revision_ok(repo, m.group(2) or "main"):
                    return
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                return self._json({
                    "_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit,
                    "private": state.token is not None, "gated": False, "disabled": False, "downloads": 0,
                    "likes": 0, "tags": ["gguf"], "library_name": "gguf", "lastModified": "2026-01-01T00:00:00.000Z",
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "siblings": [repo.sibling(rel, blobs) for rel in repo.files]})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m:
                repo = self._repo(m.group(1))
                if repo is None or not self._revision_ok(repo, m.group(2)):
                    return
                return self._json(self._tree(repo, unquote(m.group(3) or "").strip("/"),
                                             query.get("recursive", ["false"])[0].lower() == "true"))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                repo = self._repo(m.group(1))
                if repo is None or not self._revision_ok(repo, m.group(2)):
                    return
                rel = unquote(m.group(3))
                if rel not in repo.files:
                    return self._error(404, "EntryNotFound", f"{rel} does not exist on \"{m.group(2)}\"",
                                       {"X-Repo-Commit": repo.commit})
                return self._file(repo, rel)
            self._error(404, "NotFound", "not found")

        def _tree(self, repo: Repo, prefix: str, recursive: bool) -> list[dict]:
            out, dirs = [], set()
            for rel, p in repo.files.items():
                if prefix and not rel.startswith(prefix + "/"):
                    continue
                rest = rel[len(prefix) + 1:] if prefix else rel
                if "/" in rest:
                    top = (prefix + "/" if prefix else "") + rest.split("/", 1)[0]
                    if top not in dirs:
                        dirs.add(top)
                        out.append({"type": "directory", "oid": hashlib.sha1(top.encode()).hexdigest(), "size": 0,
                                    "path": top})
                    if not recursive:
                        continue
                size = p.stat().st_size
                out.append({"type": "file", "oid": hashlib.sha1(repo.sha256[rel].encode()).hexdigest(),
                            "size": size, "path": rel,
                            "lfs": {"oid": repo.sha256[rel], "size": size, "pointerSize": 134}})
            return out

        def _file(self, repo: Repo, rel: str):
            path = repo.files[rel]
            size = path.stat().st_size
            sha = repo.sha256[rel]
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not m or int(m.group(1)) >= size:
                    return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                status = 206
            if self.command == "GET" and repo.repo_id in state.short:
                end = min(end, size - 1001)
            length = end - start + 1
            self.send_response(status)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                       "Accept-Ranges": "bytes", "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                       "X-Linked-Size": str(size), "X-Repo-Commit": repo.commit,
                       "Content-Disposition": f'inline; filename="{rel.rsplit("/", 1)[-1]}"'}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                return self._record(status)
            corrupt_at = size // 2 if repo.repo_id in state.corrupt else -1
            sent = 0
            began = time.monotonic()
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    pos = start
                    while pos <= end:
                        chunk = bytearray(f.read(min(CHUNK, end - pos + 1)))
                        if not chunk:
                            break
                        if pos <= corrupt_at < pos + len(chunk):
                            chunk[corrupt_at - pos] ^= 0xFF
                        with state.lock:
                            budget = state.fail_after
                            if budget is not None:
                                chunk = chunk[:max(0, budget)]
                                state.fail_after = budget - len(chunk)
                        if budget is not None and len(chunk) < min(CHUNK, end - pos + 1):
                            self.wfile.write(chunk)
                            sent += len(chunk)
                            self.wfile.flush()
                            self.close_connection = True
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        pos += len(chunk)
                        if state.throttle_bps:
                            ahead = sent / state.throttle_bps - (time.monotonic() - began)
                            if ahead > 0:
                                time.sleep(ahead)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            self._record(status, sent)

    return Handler


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--repo", action="append", default=[], metavar="OWNER/REPO=DIR")
    ap.add_argument("--token-env", default=None,
                    help="name of an environment variable holding the token every request must carry")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("hub_compat serves loopback only")
    repos = {}
    for item in args.repo:
        repo_id, _, root = item.partition("=")
        repos[repo_id] = Repo(repo_id, Path(root))
    token = os.environ.get(args.token_env) if args.token_env else None
    server = ThreadingHTTPServer((args.host, args.port), make_handler(State(repos, token)))
    server.daemon_threads = True
    print(f"hub-compat on http://{args.host}:{args.port} serving {', '.join(repos)}", flush=True)
    server.serve_forever()


def start_hub_server(repos: dict, *, token: str | None = None, port: int | None = None, timeout: float = 60.0):
    """Start this server as a subprocess on 127.0.0.1 (``oblix_nb.localserver.LocalServer``): ``repos`` maps
    ``"OWNER/REPO"`` to a folder. ``token``: required as ``Authorization: Bearer`` (passed through the child's
    environment, never argv). Returns the server once ``/_health`` answers; ``.url`` is what ``HF_ENDPOINT``
    takes."""
    from oblix_nb.localserver import LOOPBACK, LocalServer, free_port

    port = port or free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--host", LOOPBACK, "--port", str(port)]
    for repo_id, root in repos.items():
        argv += ["--repo", f"{repo_id}={root}"]
    env = dict(os.environ)
    if token is not None:
        env["HUB_COMPAT_TOKEN"] = token
        argv += ["--token-env", "HUB_COMPAT_TOKEN"]
    server = LocalServer(argv, port=port, ready_path="/_health", name="hub-compat", kind="hub", env=env)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    main()
