"""Embedded backend: a GGUF model in the kernel's own process via llama-cpp-python (extra ``oblix-nb[local]``).

llama_cpp is imported only when a model of this type is hooked. A ``Llama`` object is not re-entrant, so one
lock serialises calls; generation runs in a worker thread and hands tokens to the event loop through a queue,
so the loop (and a notebook kernel's message handling) never blocks on it.

Stopping (closing or cancelling the stream, cancelling ``complete``) sets a stop flag that takes effect within a
fraction of a second at any point: while waiting for the model's lock, between tokens, and while the prompt is
being read -- the prompt is evaluated in steps (``Llama.eval`` is wrapped for the call) and llama.cpp's abort
callback (``llama_set_abort_callback``, checked inside each step's compute graph) is armed meanwhile, so a long
prompt is abandoned mid-step, not after it. The tokens read so far stay in the model's cache: asking again
reuses them. Progress of the prompt reading goes to ``GenerationParams.on_progress`` as
:class:`~oblix_nb.models.base.PromptProgress` events (on the event loop).

Models still open when the interpreter exits are closed by an ``atexit`` hook, while the modules llama_cpp
needs are still intact: otherwise ``Llama.__del__`` runs during interpreter teardown and prints a traceback
(e.g. on leaving terminal IPython after ``%%oblix``).
"""
from __future__ import annotations

import asyncio
import atexit
import json
import threading
import time
import weakref
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from .._util import block_interrupts
from ..errors import ModelUnavailableError
from .base import GenerationParams, ModelBackend, ModelType, PromptProgress, StreamItem, Usage, report_progress
from .gguf import recommended_sampling
from .resolve import resolve_gguf

if TYPE_CHECKING:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from .cpu import LoadMonitor

LLAMA_OPTIONS = ("top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty", "repeat_penalty")
SAMPLING_KEYS = ("temperature",) + LLAMA_OPTIONS
_END = object()
_open_backends: weakref.WeakSet[LlamaCppBackend] = weakref.WeakSet()
EXIT_CLOSE_TIMEOUT = 60.0  # at exit: longest wait for a running generation to leave llama.cpp
LOCK_POLL_S = 0.05          # a stopped call waiting for the model's lock gives up within this
# The prompt is read in steps of PROMPT_STEP_MIN..n_batch tokens, sized to take about PROMPT_STEP_S each (so
# progress is reported about that often); stopping does not wait for a step to end (the abort callback).
PROMPT_STEP_S = 1.0
PROMPT_STEP_MIN = 64
PROMPT_STEP_FIRST = 128


class _Stopped(Exception):
    """Internal: the call was stopped while it held the model (never reaches the caller)."""


def _close_all_at_exit() -> None:
    """atexit: close every embedded model still loaded (each waits for its running generation to stop)."""
    for backend in list(_open_backends):
        backend.close_now(timeout=EXIT_CLOSE_TIMEOUT)


atexit.register(_close_all_at_exit)


def _post(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """``loop.call_soon_threadsafe`` that is silent once the loop is closed (interpreter exit)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _in_daemon_thread(fn) -> asyncio.Future:
    """Run ``fn`` in a new daemon thread; its outcome as a future of the running loop.

    Not the loop's default executor: its threads are joined when the interpreter exits, so a generation still
    running would hold up the exit until its last token. A daemon thread does not; the atexit hook stops the
    generation at its next token and frees the model.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def run() -> None:
        block_interrupts()
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            _post(loop, settle, False, exc)
        else:
            _post(loop, settle, True, result)

    threading.Thread(target=run, name="oblix-llamacpp", daemon=True).start()
    return future


def _check_threads(n_threads) -> int | None:
    """None for automatic (None / "auto"), else a positive int; ValueError/TypeError otherwise."""
    if n_threads is None or n_threads == "auto":
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, int):
        raise TypeError(f"n_threads must be a positive int or 'auto', not {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, not {n_threads}")
    return n_threads


class LlamaCppBackend(ModelBackend):
    model_type = ModelType.LLAMACPP
    estimate_source = "tokenizer"

    def __init__(self, model_name: str, endpoint: str | None = None, *, model_path: str | None = None,
                 n_ctx: int = 2048, n_threads: int | None = None, sampling: dict | None = None, **kwargs):
        """``sampling``: the defaults used for each option a call does not give (keys: temperature, top_p,
        top_k, seed, stop, presence/frequency/repeat_penalty). None: the model's recommended ones
        (``gguf.RECOMMENDED_SAMPLING``, from its model card) for a shipped model, else llama-cpp-python's own;
        ``{}``: llama-cpp-python's own defaults.

        ``model_name`` / ``model_path``: any form :func:`~oblix_nb.models.resolve.resolve_gguf` takes (shipped short
        name, ``hf:OWNER/REPO[...]``, ``ollama:NAME[:TAG]``, a GGUF path).

        ``n_threads``: threads llama.cpp uses for generation and prompt reading. None or ``"auto"`` (default):
        chosen before every call from the physical cores and how busy they are with other work
        (:mod:`oblix_nb.models.cpu`: fewer threads when other processes use the cores, because llama.cpp's
        threads spin-wait on each other and an oversubscribed core makes every token slow). An int fixes it;
        :meth:`set_n_threads` changes it for the following calls."""
        if endpoint is not None:
            raise ValueError("ModelType.LLAMACPP runs in this process and takes no endpoint; "
                             "for a llama.cpp server use ModelType.OPENAI with base_url=")
        super().__init__(model_name, None, context_window=kwargs.pop("context_window", None) or n_ctx, **kwargs)
        self._path = model_path or model_name
        if str(self._path).startswith("hf:"):
            from .hub import parse_hf

            parse_hf(str(self._path))  # a malformed hf: name is a ValueError now, not at connect
        self._n_ctx = n_ctx
        self._threads_setting = _check_threads(n_threads)
        self._n_threads = self._threads_setting or 1  # what the context uses now (auto: set at each call)
        self.threads_reason: str | None = None  # why the last call used self._n_threads (auto mode)
        self._monitor: LoadMonitor | None = None
        self._llama: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        if sampling is None:
            sampling = recommended_sampling(self._path)
        if not isinstance(sampling, dict):
            raise TypeError(f"sampling must be a dict, not {type(sampling).__name__}")
        unknown = set(sampling) - set(SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"sampling: unknown option(s) {sorted(unknown)}; known: {list(SAMPLING_KEYS)}")
        self.sampling = dict(sampling)
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # set at exit: running generations stop at their next token
        self._grammars: dict = {}  # schema JSON -> LlamaGrammar
        self._abort_cb: Any = None  # llama.cpp's abort callback while a prompt is being read (see _arm_abort)
        self._muted_level: int | None = None  # llama-cpp-python's log level while an abort is reported

    async def connect(self) -> None:
        try:
            # hf: names may download (minutes); the rest is a file lookup
            path = await asyncio.to_thread(resolve_gguf, self._path) if str(self._path).startswith("hf:") \
                else resolve_gguf(self._path)
        except (OSError, ValueError) as exc:  # FileNotFoundError, hub.HubError (an OSError), a malformed name
            raise ModelUnavailableError(f"embedded model {self.model_name!r}: {exc}") from exc
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelUnavailableError(
                "the embedded backend needs llama-cpp-python: pip install 'oblix-nb[local]'") from exc
        if self._threads_setting is None:
            from .cpu import LoadMonitor

            self._monitor = LoadMonitor.shared()
            self._n_threads, self.threads_reason = await asyncio.to_thread(self._auto_threads)
        try:
            self._llama = await asyncio.to_thread(
                llama_cpp.Llama, model_path=str(path), n_ctx=self._n_ctx, n_threads=self._n_threads,
                n_threads_batch=self._n_threads, verbose=False)
        except Exception as exc:  # noqa: BLE001 - llama.cpp raises ValueError/RuntimeError on bad files
            raise ModelUnavailableError(f"could not load GGUF {path}: {exc}") from exc
        self.model_path = str(path)
        _open_backends.add(self)
        if self._monitor is not None:
            self._monitor.acquire()

    def _kwargs(self, params: GenerationParams) -> dict:
        kwargs = dict(self.sampling)  # the model's defaults; what the call gives overrides them one by one
        if params.max_tokens is not None:
            kwargs["max_tokens"] = params.max_tokens
        if params.temperature is not None:
            kwargs["temperature"] = params.temperature
        kwargs.update({k: v for k, v in params.options.items() if k in LLAMA_OPTIONS})
        if params.schema is not None:
            kwargs.update(self.structured_output(params.schema))
        return kwargs

    schema_enforcement = "grammar"
    in_process = True

    def structured_output(self, schema: dict) -> dict:
        """A llama.cpp grammar compiled from the JSON Schema (``LlamaGrammar.from_json_schema``), cached per
        schema: decoding can only produce JSON that matches it (up to ``max_tokens``)."""
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            self._grammars = {**dict(list(self._grammars.items())[-15:]), key: grammar}
        return {"grammar": grammar}

    def _count(self, text: str) -> int:
        assert self._llama is not None  # called once connected
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    def estimate_tokens(self, text: str) -> int:
        if self._llama is None:
            return super().estimate_tokens(text)
        return self._count(text)

    def _require(self):
        if self._llama is None:
            raise RuntimeError(f"{self.model_id} is not loaded (hook it first, or it was shut down)")
        return self._llama

    def _check_open(self, llama) -> None:
        """Under the lock: the model a call started with was not freed meanwhile (unhook, exit). Then sets the
        thread count for this call (every call passes here before it touches the model)."""
        if self._llama is not llama:
            raise RuntimeError(f"{self.model_id} was shut down while this call waited for it")
        self._apply_threads(llama)

    # ---------------------------------------------------------------------------------------------- threads
    def _auto_threads(self) -> tuple[int, str]:
        from .cpu import choose_threads

        return choose_threads(monitor=self._monitor)

    def _apply_threads(self, llama) -> None:
        """Under the lock, before a call: the fixed count, or the automatic choice for the load right now."""
        if self._threads_setting is None:
            n, self.threads_reason = self._auto_threads()
        else:
            n, self.threads_reason = self._threads_setting, "set by n_threads"
        if n != self._n_threads or getattr(llama, "n_threads", n) != n:
            llama._ctx.set_n_threads(n, n)
            llama.n_threads = llama.n_threads_batch = n
            llama.context_params.n_threads = llama.context_params.n_threads_batch = n
            self._n_threads = n

    def set_n_threads(self, n_threads) -> None:
        """Threads for the following calls: an int, or None/``"auto"`` to choose per call from the load."""
        setting = _check_threads(n_threads)
        if setting is None and self._monitor is None and self._llama is not None:
            from .cpu import LoadMonitor

            self._monitor = LoadMonitor.shared()
            self._monitor.acquire()
        self._threads_setting = setting

    @property
    def n_threads(self) -> int:
        """Threads the last call used (the next one may differ in automatic mode)."""
        return self._n_threads

    def _guarded(self, llama, stop: threading.Event, on_progress, fn):
        """Run ``fn()`` (which drives ``llama``) holding the model's lock, stoppable by ``stop`` at any point.

        Returns ``fn()``'s result, or raises ``_Stopped``. While it runs, ``llama.eval`` is wrapped (for this call
        only): the first evaluation -- the prompt, minus what the cache already holds -- goes in steps with the
        abort callback armed and ``on_progress(PromptProgress)`` after each; later ones (one token each) check
        ``stop`` first.
        """
        stopped = lambda: stop.is_set() or self._stopping.is_set()  # noqa: E731
        while not self._lock.acquire(timeout=LOCK_POLL_S):
            if stopped():
                raise _Stopped()
        try:
            self._check_open(llama)
            original = llama.eval
            first = [True]

            def eval_(tokens) -> None:
                if stopped():
                    raise _Stopped()
                if not first[0]:
                    return original(tokens)
                first[0] = False
                self._read_prompt(llama, original, list(tokens), stopped, on_progress)

            llama.eval = eval_
            try:
                return fn()
            finally:
                llama.__dict__.pop("eval", None)
        finally:
            self._lock.release()

    def _read_prompt(self, llama, original, tokens: list, stopped, on_progress) -> None:
        """Evaluate the prompt's uncached ``tokens`` in timed steps, abortable inside each step."""
        cached = llama.n_tokens
        total = cached + len(tokens)
        on_progress(PromptProgress(cached, total, cached))
        step = min(llama.n_batch, PROMPT_STEP_FIRST)
        done = 0
        self._arm_abort(llama, stopped)
        try:
            while done < len(tokens):
                if stopped():
                    raise _Stopped()
                started = time.perf_counter()
                chunk = tokens[done:done + step]
                try:
                    original(chunk)
                except RuntimeError:
                    if stopped():  # llama_decode returned 2: aborted by the callback
                        raise _Stopped() from None
                    raise
                done += len(chunk)
                on_progress(PromptProgress(cached + done, total, cached))
                rate = len(chunk) / max(time.perf_counter() - started, 1e-6)
                step = int(min(llama.n_batch, max(PROMPT_STEP_MIN, rate * PROMPT_STEP_S)))
        finally:
            self._arm_abort(llama, None)

    def _arm_abort(self, llama, stopped) -> None:
        """Install (``stopped`` given) or remove llama.cpp's abort callback on the context. It is removed again
        once the prompt is read: checked for each graph node, it would cost time on every generated token.

        From the moment it aborts until it is removed, llama-cpp-python's log is muted: llama.cpp reports the
        aborted step at error level ("decode: removing memory module entries ..."), which is no error here."""
        import logging

        from llama_cpp import llama_cpp as C

        log = logging.getLogger("llama-cpp-python")
        if stopped is None:
            C.llama_set_abort_callback(llama._ctx.ctx, C.ggml_abort_callback(), None)
            self._abort_cb = None
            if self._muted_level is not None:
                log.setLevel(self._muted_level)
                self._muted_level = None
            return

        def check(_data) -> bool:
            try:
                if not stopped():
                    return False
                if self._muted_level is None:
                    self._muted_level = log.level
                    log.setLevel(logging.CRITICAL + 1)
                return True
            except Exception:  # noqa: BLE001 - never raise into C
                return False

        self._abort_cb = C.ggml_abort_callback(check)  # referenced while armed: ctypes must not free it
        C.llama_set_abort_callback(llama._ctx.ctx, self._abort_cb, None)

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncGenerator[StreamItem, None]:
        llama = self._require()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        kwargs = self._kwargs(params)
        progress = lambda p: _post(loop, report_progress, params, p)  # noqa: E731

        def generate():
            finish = None
            gen = llama.create_chat_completion(messages=messages, stream=True, **kwargs)
            try:
                for chunk in gen:
                    if stop.is_set() or self._stopping.is_set():
                        break
                    choice = chunk["choices"][0]
                    text = choice.get("delta", {}).get("content")
                    if text:
                        _post(loop, queue.put_nowait, text)
                    finish = choice.get("finish_reason") or finish
            finally:
                gen.close()
            return finish

        def work() -> None:
            try:
                finish = self._guarded(llama, stop, progress, generate)
                _post(loop, queue.put_nowait, (_END, finish))
            except _Stopped:
                _post(loop, queue.put_nowait, (_END, "interrupted"))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                _post(loop, queue.put_nowait, exc)

        worker = _in_daemon_thread(work)
        pieces: list[str] = []
        live: Usage | None = None  # yielded after the first text and kept current (see ModelBackend)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    pieces.append(item)
                    yield item
                    if live is None:
                        live = Usage(self._prompt_tokens(messages), len(pieces), "tokenizer", "tokenizer",
                                     "interrupted")
                        yield live
                    else:
                        live.output_tokens = len(pieces)  # one piece per token; exact count at the end
                elif isinstance(item, Exception):
                    raise self.failure(item) from item
                elif isinstance(item, BaseException):
                    raise item
                else:
                    finish = item[1]
                    break
        finally:
            stop.set()
            if live is not None and self._llama is llama:
                live.output_tokens = self._count("".join(pieces))
            if not worker.done():
                # Wait for the worker to leave the model (it stops within a fraction of a second, see the module
                # doc) without letting a second cancellation abandon it while it still holds the lock.
                await asyncio.shield(worker)
        yield Usage(self._prompt_tokens(messages), self._count("".join(pieces)), "tokenizer", "tokenizer", finish)

    def _prompt_tokens(self, messages: list[dict]) -> int:
        """Tokens of the prompt exactly as the model sees it: rendered with the GGUF's own chat template."""
        assert self._llama is not None  # called once connected
        if self._formatter is None:
            from llama_cpp import llama_chat_format

            meta = self._llama.metadata
            template = meta.get("tokenizer.chat_template")
            if not template:
                return sum(self._count(m.get("content") or "") + self.message_overhead() for m in messages)
            vocab = self._llama._model  # token ids -> text, as llama_cpp itself does for its handler
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=vocab.token_get_text(vocab.token_eos()),
                bos_token=vocab.token_get_text(vocab.token_bos()))
        # llama_cpp types messages as its TypedDicts; ours are plain dicts of that shape
        prompt = self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        return len(self._llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        llama = self._require()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        progress = lambda p: _post(loop, report_progress, params, p)  # noqa: E731
        kwargs = self._kwargs(params)

        def work():
            return self._guarded(llama, stop, progress, lambda: llama.create_chat_completion(
                messages=messages, stream=False, **kwargs))

        worker = _in_daemon_thread(work)
        try:
            reply = await asyncio.shield(worker)
        except Exception as exc:  # noqa: BLE001 - llama.cpp's failures become the one type routing handles
            raise self.failure(exc) from exc
        except asyncio.CancelledError:
            stop.set()  # the worker leaves the model within a fraction of a second
            try:
                await asyncio.shield(worker)
            except (_Stopped, Exception):  # noqa: BLE001 - stopped on purpose
                pass
            raise
        choice = reply["choices"][0]
        usage = reply.get("usage") or {}
        return choice["message"].get("content") or "", Usage(
            usage.get("prompt_tokens"), usage.get("completion_tokens"), "engine", "engine",
            choice.get("finish_reason"))

    def close_now(self, timeout: float | None = None) -> bool:
        """Free the model now, from any thread, waiting up to ``timeout`` s (None: no limit) for a running
        generation to stop. False if it could not be freed in time (it is then left to the garbage collector)."""
        self._stopping.set()
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            llama, self._llama = self._llama, None
            _open_backends.discard(self)
            if llama is not None and self._monitor is not None:
                self._monitor.release()
                self._monitor = None
            closer = getattr(llama, "close", None)
            if closer is not None:
                closer()
            return True
        finally:
            self._lock.release()
            self._stopping.clear()

    async def aclose(self) -> None:
        if self._llama is not None:
            await asyncio.to_thread(self.close_now)

    def describe(self) -> dict:
        info = super().describe()
        info["model_path"] = getattr(self, "model_path", None)
        info["sampling"] = dict(self.sampling)
        info["n_threads"] = self._n_threads
        info["n_threads_setting"] = "auto" if self._threads_setting is None else self._threads_setting
        info["threads_reason"] = self.threads_reason
        return info

    # -- confidence (oblix_nb.confidence) ---------------------------------------------------------------------
    # Any continuation is scored exactly: the prompt is evaluated once (reusing the KV cache of the last call
    # where it matches), then each continuation's tokens in one batch with logits for every position.
    logprob_method = "exact"

    def _render_chat(self, messages: list[dict]) -> tuple[str, bool]:
        """The prompt exactly as ``create_chat_completion`` renders it (the GGUF's template, generation prompt
        added) and whether the template already holds the BOS token."""
        if self._formatter is None:
            self._prompt_tokens(messages[:1] or [{"role": "user", "content": ""}])
        if self._formatter is None:
            from .base import LogprobsUnavailable

            raise LogprobsUnavailable(f"{self.model_id}: the GGUF has no chat template to render the prompt with")
        result = self._formatter(messages=messages)  # type: ignore[arg-type]  # plain dicts of its TypedDicts' shape
        return result.prompt, bool(getattr(result, "added_special", False))

    def _continuation_logprobs(self, llama, messages: list[dict], prefix: str,
                               continuations: list[str]) -> list[list[float]]:
        """Under the lock: per continuation, the log-probability of each of its tokens (see score_continuations)."""
        import numpy as np

        prompt, added_special = self._render_chat(messages)

        def tokens(text: str) -> list[int]:
            return llama.tokenize(text.encode("utf-8"), add_bos=not added_special, special=True)

        def common(a, b) -> int:
            n = 0
            for x, y in zip(a, b):
                if x != y:
                    break
                n += 1
            return n

        base = tokens(prompt + prefix)
        fulls = [tokens(prompt + prefix + c) for c in continuations]
        # Where each continuation's own tokens start (a token may straddle the prefix's end: it then counts as the
        # continuation's), and the context every continuation shares.
        starts = [max(1, min(common(base, f), len(f))) for f in fulls]
        if max(len(f) for f in fulls) > self._n_ctx:
            from .base import LogprobsUnavailable

            raise LogprobsUnavailable(f"prompt and answer ({max(len(f) for f in fulls)} tokens) exceed "
                                      f"n_ctx={self._n_ctx}: not scored")
        shared = min(starts) - 1
        reuse = common(llama._input_ids.tolist(), base[:shared])
        llama.n_tokens = reuse
        if shared > reuse:
            llama.eval(base[reuse:shared])
        n_vocab = llama.n_vocab()
        out: list[list[float]] = []
        for full, start in zip(fulls, starts):
            llama.n_tokens = shared  # rewinds the KV cache to the shared context (eval drops what is past it)
            if start - 1 > shared:
                llama.eval(full[shared:start - 1])
            lps: list[float] = []
            seq = full[start - 1:]  # the context's last token, then the continuation's: row k predicts k + 1
            k = 0
            while k < len(seq) - 1:
                chunk = seq[k:k + llama.n_batch]
                at = llama.n_tokens
                llama._ctx.kv_cache_seq_rm(-1, at, -1)
                llama._batch.set_batch(batch=chunk, n_past=at, logits_all=True)
                llama._ctx.decode(llama._batch)
                llama.input_ids[at:at + len(chunk)] = chunk
                llama.n_tokens = at + len(chunk)
                for j in range(len(chunk)):
                    if k + j + 1 < len(seq):
                        row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(j), shape=(n_vocab,))
                        row = row.astype(np.float64)
                        top = row.max()
                        lps.append(float(row[seq[k + j + 1]] - top - np.log(np.exp(row - top).sum())))
                k += len(chunk)
            out.append(lps)
        return out

    async def score_continuations(self, messages: list[dict], prefix: str,
                                  continuations: list[str]) -> list[list[float]]:
        llama = self._require()
        if not continuations:
            return []

        def work():
            with self._lock:
                self._check_open(llama)
                return self._continuation_logprobs(llama, messages, prefix, list(continuations))

        return await _in_daemon_thread(work)

    async def complete_with_logprobs(self, messages: list[dict], params: GenerationParams,
                                     top_logprobs: int = 20) -> tuple[str, Usage, list]:
        """The reply (as ``complete()``), then its tokens scored under the model (no alternatives listed)."""
        from .base import TokenLogprob

        text, usage = await self.complete(messages, params)
        if not text:
            return text, usage, []
        [lps] = await self.score_continuations(messages, "", [text])
        return text, usage, [TokenLogprob("", lp) for lp in lps]
