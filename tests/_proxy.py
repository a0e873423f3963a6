"""A loopback TCP proxy that records what clients send, so tests can check what a real server received."""
from __future__ import annotations

import json
import socket
import threading


class RecordingProxy:
    """Forwards 127.0.0.1:<port> to an upstream loopback port, keeping every request's bytes."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            buf = bytearray()
            with self._lock:
                self.received.append(buf)
            threading.Thread(target=self._pipe, args=(client, upstream, buf), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def json_bodies(self, path_fragment: str) -> list[dict]:
        """Every JSON request body sent to a path containing ``path_fragment`` (HTTP/1.1, keep-alive aware)."""
        bodies = []
        with self._lock:
            streams = [bytes(b) for b in self.received]
        for data in streams:
            while data:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if not sep:
                    break
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body, data = rest[:length], rest[length:]
                if path_fragment in lines[0] and body:
                    bodies.append(json.loads(body))
        return bodies

    def close(self) -> None:
        self._closed = True
        self._listener.close()
