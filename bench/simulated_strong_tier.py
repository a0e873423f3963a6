"""SIMULATED strong model for bench/cascade.py only -- not a model, never shipped in the package.

No stronger model than the local GGUFs runs on this machine, so the cascade benchmark's top tier is this
loopback OpenAI-compatible server: it **answers from the labels** with a set accuracy (each prompt's answer is
the true label with probability ``accuracy``, else another label, drawn once per prompt from a seeded hash so
re-runs agree), streams it as a JSON object ``{"<field>": "<label>"}``, and reports usage
(``prompt_tokens`` ~ characters / 4, ``completion_tokens`` = 8) so the client prices it with the price the
benchmark sets. Everything on the client side (hooking, routing, the cascade, storage, budgets) is the real
product path; only what answers at the top tier is simulated, and the benchmark's output names it so.

    server = SimulatedStrongTier(labels={prompt_text: label}, options=[...], field="topic", accuracy=0.95)
    server.start(); ... server.base_url ... ; server.stop()
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "simulated-strong-tier"


class SimulatedStrongTier:
    def __init__(self, labels: dict, options: list, field: str, accuracy: float = 0.95, seed: int = 0,
                 latency_s: float = 0.0):
        self.labels, self.options, self.field = labels, list(options), field
        self.accuracy, self.seed, self.latency_s = accuracy, seed, latency_s
        self.calls = 0
        self.unknown_prompts = 0
        self._server = None

    # ------------------------------------------------------------------ answers
    def _find_label(self, text: str):
        label = self.labels.get(text)
        if label is None:  # the prompt embedded in a longer message (e.g. a retry): longest known prompt inside
            hits = [p for p in self.labels if p in text]
            label = self.labels[max(hits, key=len)] if hits else None
        return label

    def answer(self, prompt: str) -> str:
        label = self._find_label(prompt)
        h = int(hashlib.sha256(f"{self.seed}|{prompt}".encode()).hexdigest()[:12], 16)
        u = (h % 1_000_000) / 1_000_000
        if label is None:
            self.unknown_prompts += 1
            return self.options[h % len(self.options)]
        if u < self.accuracy:
            return label
        wrong = [o for o in self.options if o != label]
        return wrong[(h // 7) % len(wrong)]

    # ------------------------------------------------------------------ server
    def start(self) -> SimulatedStrongTier:
        tier = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model",
                                                                 "owned_by": "simulation"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                tier.calls += 1
                if tier.latency_s:
                    import time

                    time.sleep(tier.latency_s)
                users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
                prompt = users[0] if users else ""
                text = json.dumps({tier.field: tier.answer(prompt)})
                chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
                usage = {"prompt_tokens": max(1, chars // 4), "completion_tokens": 8,
                         "total_tokens": max(1, chars // 4) + 8}
                if not body.get("stream"):
                    self._json(200, {"id": "sim", "object": "chat.completion", "model": MODEL,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}],
                                     "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def send(obj):
                    self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

                base = {"id": "sim", "object": "chat.completion.chunk", "model": MODEL}
                half = len(text) // 2
                for piece in (text[:half], text[half:]):
                    send({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                send({**base, "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
