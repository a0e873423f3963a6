"""Embedded backend: a GGUF model in the kernel's own process via llama-cpp-python (extra ``oblix-nb[local]``).

llama_cpp is imported only when a model of this type is hooked. A ``Llama`` object is not re-entrant, so one
lock serialises calls; generation runs in a worker thread and hands tokens to the event loop through a queue,
so the loop (and a notebook kernel's message handling) never blocks on it. Closing the stream sets a stop flag
that the worker checks between tokens.

Models still open when the interpreter exits are closed by an ``atexit`` hook, while the modules llama_cpp
needs are still intact: otherwise ``Llama.__del__`` runs during interpreter teardown and prints a traceback
(e.g. on leaving terminal IPython after ``%%oblix``).
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import threading
import weakref
from typing import AsyncIterator, Optional

from .._util import block_interrupts
from ..errors import ModelUnavailableError
from .base import GenerationParams, ModelBackend, ModelType, StreamItem, Usage
from .gguf import recommended_sampling, resolve_gguf

LLAMA_OPTIONS = ("top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty", "repeat_penalty")
SAMPLING_KEYS = ("temperature",) + LLAMA_OPTIONS
_END = object()
_open_backends: "weakref.WeakSet[LlamaCppBackend]" = weakref.WeakSet()
EXIT_CLOSE_TIMEOUT = 60.0  # at exit: longest wait for a running generation to leave llama.cpp


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


def _in_daemon_thread(fn) -> "asyncio.Future":
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


class LlamaCppBackend(ModelBackend):
    model_type = ModelType.LLAMACPP
    estimate_source = "tokenizer"

    def __init__(self, model_name: str, endpoint: Optional[str] = None, *, model_path: Optional[str] = None,
                 n_ctx: int = 2048, n_threads: Optional[int] = None, sampling: Optional[dict] = None, **kwargs):
        """``sampling``: the defaults used for each option a call does not give (keys: temperature, top_p,
        top_k, seed, stop, presence/frequency/repeat_penalty). None: the model's recommended ones
        (``gguf.RECOMMENDED_SAMPLING``, from its model card) for a shipped model, else llama-cpp-python's own;
        ``{}``: llama-cpp-python's own defaults."""
        if endpoint is not None:
            raise ValueError("ModelType.LLAMACPP runs in this process and takes no endpoint; "
                             "for a llama.cpp server use ModelType.OPENAI with base_url=")
        super().__init__(model_name, None, context_window=kwargs.pop("context_window", None) or n_ctx, **kwargs)
        self._path = model_path or model_name
        self._n_ctx = n_ctx
        self._n_threads = n_threads or max(1, min(4, os.cpu_count() or 2))
        self._llama = None
        self._formatter = None
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

    async def connect(self) -> None:
        try:
            path = resolve_gguf(self._path)
        except FileNotFoundError as exc:
            raise ModelUnavailableError(f"embedded model {self.model_name!r}: {exc}") from exc
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelUnavailableError(
                "the embedded backend needs llama-cpp-python: pip install 'oblix-nb[local]'") from exc
        try:
            self._llama = await asyncio.to_thread(
                llama_cpp.Llama, model_path=str(path), n_ctx=self._n_ctx, n_threads=self._n_threads,
                verbose=False)
        except Exception as exc:  # noqa: BLE001 - llama.cpp raises ValueError/RuntimeError on bad files
            raise ModelUnavailableError(f"could not load GGUF {path}: {exc}") from exc
        self.model_path = str(path)
        _open_backends.add(self)

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
        """Under the lock: the model a call started with was not freed meanwhile (unhook, exit)."""
        if self._llama is not llama:
            raise RuntimeError(f"{self.model_id} was shut down while this call waited for it")

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[StreamItem]:
        llama = self._require()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        kwargs = self._kwargs(params)

        def work() -> None:
            finish = None
            try:
                with self._lock:
                    self._check_open(llama)
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
                _post(loop, queue.put_nowait, (_END, finish))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                _post(loop, queue.put_nowait, exc)

        worker = _in_daemon_thread(work)
        pieces: list[str] = []
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    pieces.append(item)
                    yield item
                elif isinstance(item, BaseException):
                    raise item
                else:
                    finish = item[1]
                    break
        finally:
            stop.set()
            if not worker.done():
                # Wait for the worker to leave the model (it checks `stop` between tokens) without letting a
                # second cancellation abandon it while it still holds the lock.
                await asyncio.shield(worker)
        yield Usage(self._prompt_tokens(messages), self._count("".join(pieces)), "tokenizer", "tokenizer", finish)

    def _prompt_tokens(self, messages: list[dict]) -> int:
        """Tokens of the prompt exactly as the model sees it: rendered with the GGUF's own chat template."""
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
        prompt = self._formatter(messages=messages).prompt
        return len(self._llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        llama = self._require()

        def work():
            with self._lock:
                self._check_open(llama)
                return llama.create_chat_completion(messages=messages, stream=False, **self._kwargs(params))

        reply = await _in_daemon_thread(work)
        choice = reply["choices"][0]
        usage = reply.get("usage") or {}
        return choice["message"].get("content") or "", Usage(
            usage.get("prompt_tokens"), usage.get("completion_tokens"), "engine", "engine",
            choice.get("finish_reason"))

    def close_now(self, timeout: Optional[float] = None) -> bool:
        """Free the model now, from any thread, waiting up to ``timeout`` s (None: no limit) for a running
        generation to stop. False if it could not be freed in time (it is then left to the garbage collector)."""
        self._stopping.set()
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            llama, self._llama = self._llama, None
            _open_backends.discard(self)
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
        result = self._formatter(messages=messages)
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
