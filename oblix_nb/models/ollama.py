"""Ollama backend over the official ``ollama.AsyncClient`` (a real Ollama, or any server speaking its API)."""
from __future__ import annotations

from typing import AsyncIterator, Optional

from ..errors import ModelUnavailableError
from .base import GenerationParams, ModelBackend, ModelType, StreamItem, Usage

DEFAULT_ENDPOINT = "http://localhost:11434"
DEFAULT_NUM_CTX = 2048  # Ollama's own default context; we always send num_ctx so the history budget is exact


class OllamaBackend(ModelBackend):
    model_type = ModelType.OLLAMA

    def __init__(self, model_name: str, endpoint: Optional[str] = None, *, api_key: Optional[str] = None,
                 timeout: float = 120.0, keep_alive: Optional[str] = None, **kwargs):
        super().__init__(model_name, (endpoint or DEFAULT_ENDPOINT).rstrip("/"), **kwargs)
        import ollama

        self._timeout = timeout
        self._keep_alive = keep_alive
        # An api_key (for an Ollama behind an authenticating proxy) travels only in the request header.
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = ollama.AsyncClient(host=self.endpoint, timeout=timeout, headers=headers)

    async def connect(self) -> None:
        import ollama

        try:
            listing = await self._client.list()
        except (ConnectionError, ollama.ResponseError, OSError) as exc:
            raise ModelUnavailableError(
                f"Ollama endpoint {self.endpoint} did not answer ({type(exc).__name__}: {exc}); "
                f"is the server running?") from exc
        names = {m.model for m in listing.models if m.model}
        wanted = {self.model_name, f"{self.model_name}:latest"} if ":" not in self.model_name else {self.model_name}
        match = next((n for n in names if n in wanted), None)
        if match is None:
            raise ModelUnavailableError(
                f"Ollama endpoint {self.endpoint} does not have model {self.model_name!r} "
                f"(it lists: {', '.join(sorted(names)) or 'nothing'}); run `ollama pull {self.model_name}` "
                f"yourself — oblix_nb never downloads models")
        if self.context_window is None:
            self.context_window = await self._discover_num_ctx()

    async def _discover_num_ctx(self) -> int:
        """num_ctx from the model's Modelfile parameters if set, else Ollama's default, capped by the trained length."""
        try:
            info = await self._client.show(self.model_name)
        except Exception:  # noqa: BLE001 - /api/show is optional for the budget
            return DEFAULT_NUM_CTX
        num_ctx = DEFAULT_NUM_CTX
        for line in (info.parameters or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "num_ctx" and parts[1].isdigit():
                num_ctx = int(parts[1])
        trained = next((int(v) for k, v in (info.modelinfo or {}).items()
                        if k.endswith(".context_length") and isinstance(v, int)), None)
        return min(num_ctx, trained) if trained else num_ctx

    def _options(self, params: GenerationParams) -> dict:
        options = {"num_ctx": self.context_window or DEFAULT_NUM_CTX}
        if params.max_tokens is not None:
            options["num_predict"] = params.max_tokens
        if params.temperature is not None:
            options["temperature"] = params.temperature
        options.update(params.options)  # every SAMPLING_OPTIONS key is an Ollama option of the same name
        return options

    schema_enforcement = "format"

    def structured_output(self, schema: dict) -> dict:
        """Ollama's ``format``: a JSON Schema that the server turns into a decoding grammar."""
        return {"format": schema}

    def _extra(self, params: GenerationParams) -> dict:
        kwargs = {"keep_alive": self._keep_alive} if self._keep_alive else {}
        if params.schema is not None:
            kwargs.update(self.structured_output(params.schema))
        return kwargs

    @staticmethod
    def _usage(final) -> Usage:
        return Usage(input_tokens=final.prompt_eval_count, output_tokens=final.eval_count,
                     input_source="server", output_source="server", finish_reason=final.done_reason)

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[StreamItem]:
        kwargs = self._extra(params)
        response = await self._client.chat(model=self.model_name, messages=messages, stream=True,
                                           options=self._options(params), **kwargs)
        final = None
        try:
            async for part in response:
                text = part.message.content if part.message else None
                if text:
                    yield text
                if part.done:
                    final = part
        finally:
            await response.aclose()
        yield self._usage(final) if final is not None else Usage(input_source="none", output_source="none")

    async def complete(self, messages: list[dict], params: GenerationParams) -> tuple[str, Usage]:
        kwargs = self._extra(params)
        reply = await self._client.chat(model=self.model_name, messages=messages, stream=False,
                                        options=self._options(params), **kwargs)
        return reply.message.content or "", self._usage(reply)

    async def aclose(self) -> None:
        await self._client.close()
