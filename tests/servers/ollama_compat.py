"""A loopback server speaking Ollama's REST API over one GGUF model loaded with llama-cpp-python.

Run it::

    python tests/servers/ollama_compat.py --model /path/to/model.gguf --name smollm2:135m --port 11500

Test infrastructure, not part of the package: the file imports nothing from ``oblix_nb`` (except to resolve a
shipped model's short name), so it starts fast and works even while the package is being edited. Any Ollama client, including the official
``ollama.Client`` / ``ollama.AsyncClient``, can then use ``http://127.0.0.1:11500``.

Written from Ollama's published API reference (docs/api.md) and the official Python client's pydantic models.

Endpoints: ``GET|HEAD /``, ``GET /api/version``, ``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``,
``POST /api/chat``, ``POST /api/generate``; plus two test aids that are not part of Ollama's API:
``GET|DELETE /_debug/requests`` (the last request bodies received, oldest first; ``?path=/api/chat`` filters) and
``GET|DELETE /_debug/generations`` (one record per generation: status queued/running/done/cancelled/error,
done_reason, prompt_eval_count, eval_count), and ``POST|DELETE /_control/fail``: the next chat/generate request
fails with ``{"status": 500, "message": "...", "stage": "http"|"stream"}`` -- ``http``: that HTTP status and
``{"error": message}``; ``stream``: HTTP 200 and the error as the stream's first line, as Ollama writes a failure
that happens after the reply started (the official client raises ``ResponseError`` with status -1).

Faithfulness notes (what a client sees):

* Streaming (NDJSON, ``application/x-ndjson``) is the default, ``"stream": false`` gives one JSON object. Each
  streamed chunk carries the text of one or a few tokens; the final chunk has ``done: true``, an empty
  ``message`` (chat) / ``response`` (generate) and the statistics.
* ``prompt_eval_count`` is the length in tokens of the whole prompt rendered with the model's own chat template
  (its GGUF ``tokenizer.chat_template``), even when part of it was reused from the KV cache (real Ollama then
  reports only the re-evaluated part). ``eval_count`` is the number of tokens the model sampled, counting the
  end-of-generation token like Ollama does; it never exceeds ``num_predict``.
* ``done_reason`` is ``"stop"`` (end of generation token or a stop string), ``"length"`` (``num_predict`` or the
  context window reached) or ``"load"`` (empty prompt / no messages: nothing generated, as in Ollama).
* A ``seed`` >= 0 makes sampling repeatable: the prompt is then evaluated afresh instead of reusing the KV cache
  (a reused prefix is evaluated in other batch sizes, which shifts the logits enough to change samples).
* Durations are nanoseconds measured on this server: ``load_duration`` = from request arrival to generation start
  (waiting for the model, rendering, tokenizing; the model itself is loaded once at start-up),
  ``prompt_eval_duration`` = until the first token is sampled, ``eval_duration`` = the rest of generation,
  ``total_duration`` = request arrival to the final chunk.
* ``options`` honoured: num_predict, temperature, top_p, top_k, min_p, typical_p, seed, stop, num_ctx (bounded by
  the ``--n_ctx`` the model was loaded with), repeat_penalty, presence_penalty, frequency_penalty, mirostat,
  mirostat_tau, mirostat_eta, tfs_z. Unknown or load-time options are ignored (as Ollama does); options of the
  wrong type give 400. Defaults are Ollama's (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1).
* A chat whose rendered prompt does not fit ``num_ctx`` loses its oldest non-system messages (the last message is
  always kept), as Ollama does; if it still does not fit, or a ``generate`` prompt does not fit: 400.
* ``format`` ("json" or a JSON schema) constrains decoding with a grammar. ``tools``, ``think``, ``images`` and
  ``suffix`` give 400 "... does not support ..." (``capabilities`` is just ``["completion"]``).
* Unknown model: 404 ``{"error": "model 'x' not found"}``; malformed body: 400 ``{"error": "..."}``.
* One ``llama_cpp.Llama`` serves every request, one at a time (a lock); generation runs in a worker thread so the
  event loop stays free, and stops within a token when the client disconnects.
* It only ever binds a loopback address.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as _dt
import hashlib
import ipaddress
import json
import os
import random
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

OLLAMA_API_VERSION = "0.9.0"  # the Ollama release whose API this server follows
DEFAULT_DEBUG_HISTORY = 200
NDJSON = "application/x-ndjson"

# Ollama's runtime defaults (api/types.go DefaultOptions)
DEFAULT_OPTIONS: dict[str, Any] = {
    "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.1,
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "tfs_z": 1.0, "mirostat": 0, "mirostat_tau": 5.0,
    "mirostat_eta": 0.1, "num_predict": -1, "seed": -1, "stop": [],
}
_INT_OPTIONS = {"num_predict", "top_k", "seed", "num_ctx", "mirostat", "num_keep", "repeat_last_n", "num_batch",
                "num_gpu", "main_gpu", "num_thread"}
_FLOAT_OPTIONS = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                  "frequency_penalty", "tfs_z", "mirostat_tau", "mirostat_eta"}
_BOOL_OPTIONS = {"numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
                 "embedding_only", "penalize_newline"}

# general.file_type (llama_ftype) -> Ollama's quantization_level spelling
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
               18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
               25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
               32: "BF16"}

# Used only when a GGUF carries no chat template.
_FALLBACK_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                    "{{ '<|im_start|>assistant\n' }}{% endif %}")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 134515008 -> '134.52M'."""
    for div, unit in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if n >= div:
            value = f"{n / div:.2f}".rstrip("0").rstrip(".")
            return value + unit
    return str(n)


def _typed(value: str) -> Any:
    """llama.cpp hands GGUF metadata over as strings; give numbers back their JSON type."""
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*(e[-+]?\d+)?", value, re.IGNORECASE):
        return float(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------- parsing

def _parse_options(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, "options must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise ApiError(400, f"option {key!r} must be an integer, got {value!r}")
            out[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(400, f"option {key!r} must be a number, got {value!r}")
            out[key] = float(value)
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise ApiError(400, f"option {key!r} must be a boolean, got {value!r}")
            out[key] = value
        elif key == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ApiError(400, "option 'stop' must be a list of strings")
            out[key] = [s for s in value if s]
        # anything else: ignored, like Ollama does with unknown options
    return out


def _parse_messages(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "messages must be a list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ApiError(400, f"messages[{i}].role must be a non-empty string")
        if content is not None and not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string")
        if m.get("images"):
            raise ApiError(400, "images are not supported by this model")
        messages.append({"role": role, "content": content or ""})
    return messages


class _Request:
    """A validated /api/chat or /api/generate request."""

    def __init__(self, kind: str, body: dict[str, Any]):
        self.kind = kind
        self.model: str = body["model"]
        stream = body.get("stream", True)
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be a boolean")
        self.stream: bool = stream
        self.options = _parse_options(body.get("options"))
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise ApiError(400, "format must be \"json\" or a JSON schema object")
        self.format = fmt or None
        think = body.get("think")
        if think not in (None, False):
            raise ApiError(400, f'"{self.model}" does not support thinking')
        if body.get("tools"):
            raise ApiError(400, f'"{self.model}" does not support tools')
        self.messages: list[dict[str, Any]] = []
        self.prompt: str = ""
        self.system: str | None = None
        self.raw = False
        self.context: list[int] = []
        if kind == "chat":
            self.messages = _parse_messages(body.get("messages"))
        else:
            prompt, system, raw, context = (body.get("prompt"), body.get("system"), body.get("raw"),
                                            body.get("context"))
            if prompt is not None and not isinstance(prompt, str):
                raise ApiError(400, "prompt must be a string")
            if system is not None and not isinstance(system, str):
                raise ApiError(400, "system must be a string")
            if raw is not None and not isinstance(raw, bool):
                raise ApiError(400, "raw must be a boolean")
            if context is not None and (not isinstance(context, list) or
                                        not all(isinstance(t, int) and not isinstance(t, bool) for t in context)):
                raise ApiError(400, "context must be a list of integers")
            if body.get("suffix"):
                raise ApiError(400, f'"{self.model}" does not support insert')
            if body.get("images"):
                raise ApiError(400, "images are not supported by this model")
            self.prompt, self.system, self.raw, self.context = prompt or "", system, bool(raw), context or []

    @property
    def empty(self) -> bool:
        return not self.messages if self.kind == "chat" else not self.prompt


# --------------------------------------------------------------------------------------------------- the model

class _TokenMeter:
    """A llama.cpp stopping criterion that counts sampled tokens, times the first one and honours cancellation.

    llama-cpp-python calls it right after each token is sampled with the ids evaluated so far (prompt + all but
    that token), and once more after generation ends with the same length as the last call."""

    def __init__(self, prompt_len: int, cancel: threading.Event):
        self.prompt_len = prompt_len
        self.cancel = cancel
        self.first_ns: int | None = None
        self.max_len: int | None = None

    def __call__(self, input_ids, logits) -> bool:
        n = len(input_ids)
        if self.first_ns is None:
            self.first_ns = time.perf_counter_ns()
        self.max_len = n if self.max_len is None else max(self.max_len, n)
        return self.cancel.is_set()

    @property
    def sampled(self) -> int:
        return 0 if self.max_len is None else self.max_len - self.prompt_len + 1


class _Job:
    """One generation: the worker thread reports to the event loop through an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, req: _Request, received_ns: int):
        self.loop = loop
        self.req = req
        self.received_ns = received_ns
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.ready = False  # generation started (errors now travel in-band)
        self.finished = False
        # what /_debug/generations shows; updated by the worker thread
        self.record: dict[str, Any] = {"endpoint": f"/api/{req.kind}", "model": req.model, "stream": req.stream,
                                       "received_at": _now_iso(), "status": "queued", "done_reason": None,
                                       "prompt_eval_count": None, "eval_count": None}

    def emit(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.cancel.set()


class ModelHost:
    def __init__(self, model_path: str, name: str, *, n_ctx: int = 2048, n_threads: int = 2,
                 n_batch: int = 512, warmup: bool = True):
        import llama_cpp
        from llama_cpp import llama_chat_format

        self.path = Path(model_path)
        self.name = name
        t = time.perf_counter_ns()
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                                   verbose=False)
        self.load_ns = time.perf_counter_ns() - t
        self.loaded_at = time.time()
        self.n_ctx = self.llm.n_ctx()
        self.lock = threading.Lock()
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        self.template: str = self.metadata.get("tokenizer.chat_template") or _FALLBACK_CHATML
        model = self.llm._model
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        eos = model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = model.token_get_text(bos_id) if bos_id != -1 else ""
        # exactly what llama-cpp-python builds for a GGUF's own template (Llama.__init__, chat_template.default)
        self.formatter = llama_chat_format.Jinja2ChatFormatter(template=self.template, eos_token=eos, bos_token=bos,
                                                               stop_token_ids=[eos_id])
        self.eos_text = eos
        try:
            self.n_params = int(model.n_params())
        except Exception:  # noqa: BLE001
            self.n_params = 0
        stat = self.path.stat()
        self.size = stat.st_size
        self.modified_at = _iso(stat.st_mtime)
        self._digest: str | None = None
        self._digest_ready = threading.Event()
        threading.Thread(target=self._hash_file, name="ollama-compat-digest", daemon=True).start()
        if warmup:
            with self.lock:
                tokens = self._tokenize(self._render([{"role": "user", "content": "Hi"}]))
                for _ in self.llm.create_completion(prompt=tokens, max_tokens=1, stream=True, temperature=0.0):
                    pass

    # --------------------------------------------------------------------------------------- descriptions
    def _hash_file(self) -> None:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self._digest = h.hexdigest()
        self._digest_ready.set()

    @property
    def digest(self) -> str:
        self._digest_ready.wait(120)
        return self._digest or ""

    def matches(self, requested: Any) -> bool:
        if not isinstance(requested, str):
            return False
        if requested == self.name:
            return True
        base, _, tag = self.name.partition(":")
        # Ollama's default tag: "smollm2" means "smollm2:latest"
        return (":" not in requested and tag in ("", "latest") and requested == base) or \
            (tag == "" and requested == f"{base}:latest")

    def details(self) -> dict[str, Any]:
        arch = self.metadata.get("general.architecture", "")
        ftype = self.metadata.get("general.file_type")
        quant = _FILE_TYPES.get(int(ftype)) if ftype and ftype.isdigit() else None
        if quant is None:
            m = re.search(r"(I?Q\d_[A-Z0-9_]+|Q\d_\d|F16|F32|BF16)", self.path.name, re.IGNORECASE)
            quant = m.group(1).upper() if m else "unknown"
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
                "parameter_size": _human_number(self.n_params) if self.n_params else
                self.metadata.get("general.size_label", ""), "quantization_level": quant}

    def model_info(self) -> dict[str, Any]:
        info = {k: _typed(v) for k, v in self.metadata.items() if not k.startswith("tokenizer.chat_template")}
        if self.n_params:
            info["general.parameter_count"] = self.n_params
        return dict(sorted(info.items()))

    def capabilities(self) -> list[str]:
        return ["completion"]  # no tool-call parsing, no thinking, no insert, no vision here

    def parameters(self) -> str:
        lines = [f"{'num_ctx':<30} {self.n_ctx}"]
        if self.eos_text:
            lines.append(f"{'stop':<30} {json.dumps(self.eos_text)}")
        return "\n".join(lines)

    def modelfile(self) -> str:
        license_ = self.metadata.get("general.license", "")
        out = ['# Modelfile generated by "ollama show" (tests/servers/ollama_compat.py)',
               "# To build a new Modelfile based on this, replace FROM with:", f"# FROM {self.name}", "",
               f"FROM {self.path}", f'TEMPLATE """{self.template}"""']
        out += ["PARAMETER " + " ".join(line.split(None, 1)) for line in self.parameters().splitlines()]
        if license_:
            out.append(f'LICENSE """{license_}"""')
        return "\n".join(out) + "\n"

    def tag_entry(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.name, "modified_at": self.modified_at, "size": self.size,
                "digest": self.digest, "details": self.details()}

    # --------------------------------------------------------------------------------------------- prompts
    def _render(self, messages: list[dict[str, Any]]) -> str:
        return self.formatter(messages=messages).prompt

    def _tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _prepare(self, req: _Request, ctx_limit: int) -> tuple[str, list[int]]:
        """(prompt text, prompt tokens) fitting in ctx_limit; raises ApiError(400) when impossible."""
        if req.kind == "chat":
            messages = list(req.messages)
            while True:
                text = self._render(messages)
                tokens = self._tokenize(text)
                if len(tokens) < ctx_limit:
                    return text, tokens
                # drop the oldest message that is neither a system message nor the last one (Ollama's chatPrompt)
                drop = next((i for i, m in enumerate(messages[:-1]) if m["role"] != "system"), None)
                if drop is None:
                    raise ApiError(400, f"the prompt ({len(tokens)} tokens) does not fit the context window "
                                        f"({ctx_limit} tokens)")
                del messages[drop]
        if req.raw:
            text = req.prompt
            tokens = self._tokenize(text, add_bos=True)
        else:
            msgs = ([{"role": "system", "content": req.system}] if req.system else []) + \
                   [{"role": "user", "content": req.prompt}]
            text = self._render(msgs)
            if req.context:
                text = self.llm.detokenize(req.context, special=True).decode("utf-8", "replace") + text
            tokens = self._tokenize(text)
        if len(tokens) >= ctx_limit:
            raise ApiError(400, f"the prompt ({len(tokens)} tokens) does not fit the context window "
                                f"({ctx_limit} tokens)")
        return text, tokens

    def _grammar(self, fmt: Any):
        from llama_cpp import llama_grammar

        if fmt is None:
            return None
        try:
            if fmt == "json":
                return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
            return llama_grammar.LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise ApiError(400, f"invalid format: {exc}") from exc

    # ---------------------------------------------------------------------------------------------- worker
    def run(self, job: _Job) -> None:
        """Runs in a worker thread. Events, in order: ("error", status, msg) | ("ready",), then ("text", str)*
        and finally ("done", stats) | ("fail", status, msg) | ("cancelled",) (client gone)."""
        try:
            while not self.lock.acquire(timeout=0.05):
                if job.cancel.is_set():
                    job.record["status"] = "cancelled"
                    job.emit("cancelled")
                    return
        except BaseException as exc:  # pragma: no cover - defensive
            job.record["status"] = "error"
            job.emit("error", 500, str(exc))
            return
        try:
            if job.cancel.is_set():
                job.record["status"] = "cancelled"
                job.emit("cancelled")
                return
            job.record["status"] = "running"
            self._generate(job)
        except ApiError as exc:
            job.record["status"] = "error"
            job.emit("fail" if job.ready else "error", exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - report, never kill the server
            job.record["status"] = "error"
            job.emit("fail" if job.ready else "error", 500, f"{type(exc).__name__}: {exc}")
        finally:
            self.lock.release()

    def _generate(self, job: _Job) -> None:
        req, opts = job.req, {**DEFAULT_OPTIONS, **job.req.options}
        ctx_limit = self.n_ctx
        if opts.get("num_ctx", 0) > 0:
            ctx_limit = min(opts["num_ctx"], self.n_ctx)
        prompt_text, tokens = self._prepare(req, ctx_limit)
        grammar = self._grammar(req.format)
        room = ctx_limit - len(tokens)
        max_tokens = room if opts["num_predict"] <= 0 else min(opts["num_predict"], room)
        seed = opts["seed"] if opts["seed"] >= 0 else random.getrandbits(32)
        job.ready = True
        job.emit("ready")

        from llama_cpp import StoppingCriteriaList

        meter = _TokenMeter(len(tokens), job.cancel)
        gen_start = time.perf_counter_ns()
        if opts["seed"] >= 0:
            # Reusing a cached prompt prefix evaluates the prompt in different batches, which shifts the logits
            # slightly; a fixed seed must give the same output every time, so evaluate the prompt afresh.
            self.llm.reset()
        stops = list(opts["stop"]) + ([self.eos_text] if self.eos_text else [])  # as llama-cpp's chat handler
        stream = self.llm.create_completion(
            prompt=tokens, max_tokens=max_tokens, stream=True, stop=stops,
            temperature=opts["temperature"], top_p=opts["top_p"], top_k=opts["top_k"], min_p=opts["min_p"],
            typical_p=opts["typical_p"], repeat_penalty=opts["repeat_penalty"],
            presence_penalty=opts["presence_penalty"], frequency_penalty=opts["frequency_penalty"],
            tfs_z=opts["tfs_z"], mirostat_mode=opts["mirostat"], mirostat_tau=opts["mirostat_tau"],
            mirostat_eta=opts["mirostat_eta"], seed=seed, grammar=grammar,
            stopping_criteria=StoppingCriteriaList([meter]))
        finish: str | None = None
        pieces: list[str] = []
        try:
            for chunk in stream:
                if job.cancel.is_set():
                    break
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if text:
                    pieces.append(text)
                    job.emit("text", text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            stream.close()
        end = time.perf_counter_ns()
        # The meter can over-count by one when generation stops at max_tokens (llama-cpp-python evaluates the
        # last token before its final criterion call); nothing can sample more than max_tokens.
        sampled = min(meter.sampled, max_tokens)
        job.record.update(prompt_eval_count=len(tokens), eval_count=sampled)
        if job.cancel.is_set():
            job.record["status"] = "cancelled"
            job.emit("cancelled")
            return
        first = meter.first_ns or end
        response = "".join(pieces)
        stats: dict[str, Any] = {
            "done_reason": finish or "stop",
            "total_duration": max(1, time.perf_counter_ns() - job.received_ns),
            "load_duration": max(1, gen_start - job.received_ns),
            "prompt_eval_count": len(tokens),
            "prompt_eval_duration": max(1, first - gen_start),
            "eval_count": sampled,
            "eval_duration": max(1, end - first),
        }
        if req.kind == "generate" and not req.raw:
            stats["context"] = self._tokenize(prompt_text + response)
        job.finished = True
        job.record.update(status="done", done_reason=stats["done_reason"])
        job.emit("done", stats)


# --------------------------------------------------------------------------------------------------- HTTP app

def create_app(host: ModelHost, *, debug_history: int = DEFAULT_DEBUG_HISTORY):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    debug_log: collections.deque = collections.deque(maxlen=debug_history)
    generations: collections.deque = collections.deque(maxlen=debug_history)
    failures: dict[str, Any] = {}  # the next generation's injected failure (POST /_control/fail)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        entry: dict[str, Any] = {"method": request.method, "path": request.url.path, "received_at": _now_iso()}
        try:
            entry["body"] = json.loads(raw) if raw else None
        except ValueError:
            entry["body"] = raw.decode("utf-8", "replace")
        debug_log.append(entry)
        if not raw.strip():
            raise ApiError(400, "missing request body")
        if not isinstance(entry["body"], dict):
            if isinstance(entry["body"], str):
                raise ApiError(400, "invalid JSON in request body")
            raise ApiError(400, "request body must be a JSON object")
        return entry["body"]

    def check_model(body: dict[str, Any], key: str = "model") -> str:
        model = body.get(key)
        if model is None and key == "model":
            model = body.get("name")  # older clients
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required")
        if not host.matches(model):
            raise ApiError(404, f"model '{model}' not found")
        return model

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_API_VERSION})

    async def tags(request: Request) -> Response:
        entry = await asyncio.to_thread(host.tag_entry)
        return JSONResponse({"models": [entry]})

    async def ps(request: Request) -> Response:
        entry = await asyncio.to_thread(host.tag_entry)
        entry.pop("modified_at", None)
        # the model stays loaded for the life of the server: it never expires
        entry.update({"expires_at": "2318-01-01T00:00:00Z", "size_vram": 0, "context_length": host.n_ctx})
        return JSONResponse({"models": [entry]})

    async def show(request: Request) -> Response:
        try:
            body = await read_body(request)
            check_model(body)
        except ApiError as exc:
            return error(exc.status, exc.message)
        return JSONResponse({
            "license": host.metadata.get("general.license", ""), "modelfile": host.modelfile(),
            "parameters": host.parameters(), "template": host.template, "details": host.details(),
            "model_info": host.model_info(), "capabilities": host.capabilities(), "modified_at": host.modified_at,
        })

    async def debug_requests(request: Request) -> Response:
        if request.method == "DELETE":
            debug_log.clear()
            return JSONResponse([])
        path = request.query_params.get("path")
        return JSONResponse([e for e in debug_log if path is None or e["path"] == path])

    async def debug_generations(request: Request) -> Response:
        if request.method == "DELETE":
            generations.clear()
            return JSONResponse([])
        return JSONResponse([dict(g) for g in generations])

    def render_chunk(job: _Job, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": job.req.model, "created_at": _now_iso()}
        if job.req.kind == "chat":
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = False
        return out

    def render_final(job: _Job, text: str, stats: dict[str, Any]) -> dict[str, Any]:
        out = render_chunk(job, text)
        out["done"] = True
        context = stats.pop("context", None)
        out.update(stats)
        if context is not None:
            out["context"] = context
        return out

    async def watch_disconnect(request: Request, job: _Job) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel.set()
                job.queue.put_nowait(("disconnected",))
                return

    class JobStream(StreamingResponse):
        """NDJSON response that stops the generation when the client goes away."""

        def __init__(self, job: _Job, watcher: asyncio.Task):
            super().__init__(self._lines(), media_type=NDJSON)
            self.job, self.watcher = job, watcher

        async def _lines(self):
            job = self.job
            while True:
                event = await job.queue.get()
                kind = event[0]
                if kind == "text":
                    yield json.dumps(render_chunk(job, event[1])) + "\n"
                elif kind == "done":
                    yield json.dumps(render_final(job, "", event[1])) + "\n"
                    return
                elif kind in ("fail", "error"):
                    yield json.dumps({"error": event[2]}) + "\n"
                    return
                else:  # disconnected / cancelled
                    return

        async def __call__(self, scope, receive, send) -> None:
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for line in self.body_iterator:
                    await send({"type": "http.response.body", "body": line.encode("utf-8"), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # client gone
                pass
            finally:
                if not self.job.finished:
                    self.job.cancel.set()
                self.watcher.cancel()

    async def generation(request: Request, kind: str) -> Response:
        received = time.perf_counter_ns()
        try:
            body = await read_body(request)
            check_model(body)
            req = _Request(kind, body)
        except ApiError as exc:
            return error(exc.status, exc.message)
        failure, _ = dict(failures), failures.clear()
        if failure:
            if failure.get("stage") == "stream" and req.stream:
                line = json.dumps({"error": failure["message"]}) + "\n"
                return Response(line, media_type=NDJSON)
            return error(int(failure.get("status", 500)), failure["message"])
        if req.empty:  # Ollama: load the model and answer at once
            out = render_chunk(_Job(asyncio.get_running_loop(), req, received), "")
            out.update({"done_reason": "load", "done": True})
            if req.stream:
                return Response(json.dumps(out) + "\n", media_type=NDJSON)
            return JSONResponse(out)
        job = _Job(asyncio.get_running_loop(), req, received)
        generations.append(job.record)
        watcher = asyncio.ensure_future(watch_disconnect(request, job))
        threading.Thread(target=host.run, args=(job,), name="ollama-compat-generate", daemon=True).start()
        try:
            first = await job.queue.get()
            if first[0] == "error":
                return error(first[1], first[2])
            if first[0] != "ready":  # client disconnected while waiting for the model
                job.cancel.set()
                return Response(status_code=499)
            if req.stream:
                stream = JobStream(job, watcher)
                watcher = None  # the stream owns it now
                return stream
            pieces: list[str] = []
            while True:
                event = await job.queue.get()
                if event[0] == "text":
                    pieces.append(event[1])
                elif event[0] == "done":
                    return JSONResponse(render_final(job, "".join(pieces), event[1]))
                elif event[0] in ("fail", "error"):
                    return error(event[1], event[2])
                else:
                    job.cancel.set()
                    return Response(status_code=499)
        except BaseException:
            job.cancel.set()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def control_fail(request: Request) -> Response:
        failures.clear()
        if request.method == "POST":
            body = json.loads(await request.body() or b"{}")
            failures.update({"status": int(body.get("status", 500)), "stage": body.get("stage", "http"),
                             "message": str(body.get("message") or "Connection error.")})
        return JSONResponse(dict(failures))

    async def chat(request: Request) -> Response:
        return await generation(request, "chat")

    async def generate(request: Request) -> Response:
        return await generation(request, "generate")

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/_debug/requests", debug_requests, methods=["GET", "DELETE"]),
        Route("/_debug/generations", debug_generations, methods=["GET", "DELETE"]),
        Route("/_control/fail", control_fail, methods=["POST", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.host = host
    app.state.debug_log = debug_log
    return app


# ------------------------------------------------------------------------------------------------------- main

def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != ppid:
            os._exit(0)


def _resolve_model(arg: str) -> str:
    if os.path.isfile(arg):
        return arg
    try:  # a short name such as "smollm2-135m" (needs the oblix_nb package importable)
        from oblix_nb.models.resolve import resolve_gguf
    except Exception:  # noqa: BLE001
        raise SystemExit(f"--model {arg!r}: no such file")
    try:
        return str(resolve_gguf(arg))
    except FileNotFoundError as exc:
        raise SystemExit(f"--model: {exc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tests/servers/ollama_compat.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="path to a .gguf file (or a shipped short name)")
    parser.add_argument("--name", default="smollm2:135m", help="the model name clients use (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--n_ctx", type=int, default=2048)
    parser.add_argument("--n_threads", type=int, default=2)
    parser.add_argument("--n_batch", type=int, default=512)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the 1-token warm-up")
    parser.add_argument("--debug-history", type=int, default=DEFAULT_DEBUG_HISTORY,
                        help="how many request bodies /_debug/requests keeps (default %(default)s)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this parent process goes away")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host):
        parser.error(f"--host {args.host!r}: this server only binds loopback addresses (127.0.0.0/8, ::1)")
    if args.parent_pid is not None:
        if os.getppid() != args.parent_pid:
            raise SystemExit("parent process already gone")
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()

    import uvicorn

    host = ModelHost(_resolve_model(args.model), args.name, n_ctx=args.n_ctx, n_threads=args.n_threads,
                     n_batch=args.n_batch, warmup=args.warmup)
    app = create_app(host, debug_history=args.debug_history)
    print(f"ollama_compat: {args.name} ({host.path.name}, n_ctx={host.n_ctx}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
