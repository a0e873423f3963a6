"""Models already on the machine (issue 18 item 2): GGUF headers, Ollama's on-disk store, the Hugging Face cache,
LM Studio's folder, a running Ollama-API server, OpenAI-compatible servers on loopback, and the default pick."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from pathlib import Path

import pytest

from oblix_nb.models import discover
from oblix_nb.models.discover import (
    default_local_model,
    discover_models,
    discover_records,
    memory_needed,
    ollama_store_gguf,
    parse_ollama_name,
    strongest_local,
)
from oblix_nb.models.gguf import FILE_TYPES, GGUFError, read_gguf_info
from oblix_nb.models.resolve import resolve_gguf

pytest.importorskip("pandas", reason="discover_models() returns a pandas DataFrame")

SMOL_PARAMS = 134_515_008
SMOL_SIZE = 98_362_432
REQUIRED = ["model_id", "source", "path", "endpoint", "parameters", "quantization", "size_bytes", "context_window"]


# ------------------------------------------------------------------------------------------ GGUF headers

def write_gguf(path: Path, kv: dict, tensors: list[tuple[str, tuple[int, ...]]], version: int = 3) -> Path:
    """A GGUF header (no tensor data: the reader never needs it). kv values: str, int (uint32), float, bool,
    or ("u64", n) / ("arr_str", [...]) / ("arr_i32", [...])."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, value in kv.items():
        out += s(key)
        if isinstance(value, bool):
            out += struct.pack("<I?", 7, value)
        elif isinstance(value, str):
            out += struct.pack("<I", 8) + s(value)
        elif isinstance(value, int):
            out += struct.pack("<II", 4, value)
        elif isinstance(value, float):
            out += struct.pack("<If", 6, value)
        elif value[0] == "u64":
            out += struct.pack("<IQ", 10, value[1])
        elif value[0] == "arr_str":
            out += struct.pack("<IIQ", 9, 8, len(value[1])) + b"".join(s(x) for x in value[1])
        elif value[0] == "arr_i32":
            out += struct.pack("<IIQ", 9, 5, len(value[1])) + struct.pack(f"<{len(value[1])}i", *value[1])
    for name, dims in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + b"\0" * 32)
    return path


def test_real_gguf_header_matches_llama_cpp(gguf_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    info = read_gguf_info(gguf_path)
    assert (info.architecture, info.quantization, info.chat_template) == ("llama", "Q4_1", True)
    assert info.size_bytes == os.path.getsize(gguf_path) and info.split_count == 1
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=64, verbose=False)
    try:
        assert info.parameters == llm._model.n_params()
        assert info.context_length == llm._model.n_ctx_train()
    finally:
        llm.close()
    # our quantisation names are llama.cpp's own LLAMA_FTYPE constants
    for value, name in FILE_TYPES.items():
        const = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
        if hasattr(llama_cpp, const):
            assert getattr(llama_cpp, const) == value, name


def test_synthetic_headers_split_and_bad_files(tmp_path):
    kv = {"general.architecture": "qwen2", "general.name": "Qwen2.5 0.5B Instruct", "general.file_type": 15,
          "qwen2.context_length": 32768, "general.size_label": "0.5B", "tokenizer.chat_template": "{{x}}",
          "tokenizer.ggml.tokens": ("arr_str", ["a", "bb", "ccc"] * 1000), "tokenizer.ggml.token_type":
          ("arr_i32", [1, 2, 3]), "general.quantization_version": ("u64", 2), "x.flag": True, "x.f": 0.5}
    parts = [write_gguf(tmp_path / f"qwen-Q4_K_M-0000{i}-of-00003.gguf", kv if i == 1 else {"split.no": i - 1},
                        [(f"t{i}.a", (10, 20)), (f"t{i}.b", (7,))]) for i in (1, 2, 3)]
    info = read_gguf_info(parts[0])
    assert info.parameters == 3 * (200 + 7) and info.split_count == 3
    assert info.size_bytes == sum(p.stat().st_size for p in parts)
    assert (info.architecture, info.context_length, info.quantization, info.chat_template) == \
        ("qwen2", 32768, "Q4_K_M", True)
    assert info.metadata["tokenizer.ggml.tokens"] == 3000 and info.metadata["x.flag"] is True
    parts[2].unlink()
    with pytest.raises(GGUFError, match="missing"):
        read_gguf_info(parts[0])
    # no general.file_type: the quantisation comes from the file name
    assert read_gguf_info(write_gguf(tmp_path / "m.IQ4_XS.gguf", {}, [("w", (4,))])).quantization == "IQ4_XS"
    full = write_gguf(tmp_path / "full.gguf", kv, [("w", (4, 4))]).read_bytes()
    for bad, match in [(full[:200], "truncated"), (b"GGML" + full[4:], "magic"), (b"GGUF" + b"\x09" * 40, "version"),
                       (b"", "too short")]:
        (tmp_path / "bad.gguf").write_bytes(bad)
        with pytest.raises(GGUFError, match=match):
            read_gguf_info(tmp_path / "bad.gguf")


# ------------------------------------------------------------------------------------------ Ollama's store

@pytest.fixture(scope="module")
def gguf_sha(gguf_path):
    h = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _manifest(root: Path, rel: str, layers: dict[str, str]) -> None:
    path = root / "manifests" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                           "digest": "sha256:" + "c" * 64, "size": 10},
                                "layers": [{"mediaType": m, "digest": d, "size": 1} for m, d in layers.items()]}))


@pytest.fixture
def ollama_store(tmp_path, gguf_path, gguf_sha):
    root = tmp_path / "ollama-models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    os.symlink(gguf_path, blobs / f"sha256-{gguf_sha}")
    (blobs / ("sha256-" + "d" * 64)).write_text("{{ .System }} {{ .Prompt }}")
    (blobs / ("sha256-" + "e" * 64)).write_text("this is a license, not a model")
    model = {discover.OLLAMA_MODEL_LAYER: f"sha256:{gguf_sha}"}
    template = {discover.OLLAMA_TEMPLATE_LAYER: "sha256:" + "d" * 64}
    _manifest(root, "registry.ollama.ai/library/tinychat/latest", {**model, **template})
    _manifest(root, "registry.ollama.ai/library/tinychat/135m-q4_1", {**model, **template})
    _manifest(root, "registry.ollama.ai/some-user/Tiny-Base/v1", model)
    _manifest(root, "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF/Q4_K_M", model)
    _manifest(root, "registry.ollama.ai/library/broken/latest", {discover.OLLAMA_MODEL_LAYER: "sha256:" + "f" * 64})
    _manifest(root, "registry.ollama.ai/library/notgguf/latest",
              {discover.OLLAMA_MODEL_LAYER: "sha256:" + "e" * 64})
    _manifest(root, "registry.ollama.ai/library/licenseonly/latest",
              {"application/vnd.ollama.image.license": "sha256:" + "e" * 64})
    return root


def _only(**sources) -> dict:
    """discover_records() keywords that look at nothing but what a test gives."""
    base = dict(ollama=False, shipped=False, lmstudio=[], hf_cache=Path("/nonexistent-hf-cache"),
                ollama_models=Path("/nonexistent-ollama"))
    base.update(sources)
    return base


def test_ollama_store_rows_are_hookable_without_ollama(ollama_store, gguf_sha, monkeypatch):
    df = discover_models(**_only(ollama_models=ollama_store))
    assert list(df.columns[:8]) == REQUIRED
    ids = sorted(df["model_id"])
    assert ids == sorted(["llamacpp:ollama:tinychat:latest", "llamacpp:ollama:tinychat:135m-q4_1",
                          "llamacpp:ollama:some-user/Tiny-Base:v1",
                          "llamacpp:ollama:hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"])
    assert set(df["source"]) == {"ollama_store"}
    assert (df["parameters"] == SMOL_PARAMS).all() and (df["size_bytes"] == SMOL_SIZE).all()
    assert (df["quantization"] == "Q4_1").all() and (df["context_window"] == 8192).all()
    assert df["endpoint"].isna().all()
    instruct = dict(zip(df["model_id"], df["instruct"]))
    assert instruct["llamacpp:ollama:tinychat:latest"] and \
        instruct["llamacpp:ollama:hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"]
    assert not instruct["llamacpp:ollama:some-user/Tiny-Base:v1"]  # no template, a base model's name
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store))
    for row in df.itertuples():
        path = resolve_gguf(row.model_id.split(":", 1)[1])  # what hook_model(LLAMACPP, name) resolves
        assert path == Path(row.path) and path.name == f"sha256-{gguf_sha}"
    # $OLLAMA_MODELS is where discovery looks by default
    assert sorted(discover_models(**{**_only(), "ollama_models": None})["model_id"]) == ids


@pytest.mark.parametrize("name, parts", [
    ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ("llama3.2:1b-instruct-q4_K_M", ("registry.ollama.ai", "library", "llama3.2", "1b-instruct-q4_K_M")),
    ("user/model:tag", ("registry.ollama.ai", "user", "model", "tag")),
    ("hf.co/owner/Repo-GGUF:Q8_0", ("hf.co", "owner", "Repo-GGUF", "Q8_0")),
    ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
])
def test_parse_ollama_name(name, parts):
    assert parse_ollama_name(name) == parts


def test_ollama_display_names():
    assert discover.ollama_display_name("registry.ollama.ai", "library", "llama3.2", "latest") == "llama3.2:latest"
    assert discover.ollama_display_name("registry.ollama.ai", "user", "m", "q4") == "user/m:q4"
    assert discover.ollama_display_name("hf.co", "o", "R-GGUF", "Q8_0") == "hf.co/o/R-GGUF:Q8_0"


def test_ollama_store_lookup_rules_and_errors(ollama_store):
    blob = ollama_store_gguf("tinychat", ollama_store)
    assert ollama_store_gguf("tinychat:latest", ollama_store) == blob
    assert ollama_store_gguf("TinyChat:135M-Q4_1", ollama_store) == blob  # Ollama's names are case-insensitive
    assert ollama_store_gguf("some-user/tiny-base:v1", ollama_store) == blob
    with pytest.raises(FileNotFoundError, match="not in the store .*tinychat:latest"):
        ollama_store_gguf("llama3.2", ollama_store)
    with pytest.raises(FileNotFoundError, match="blob .* is missing"):
        ollama_store_gguf("broken", ollama_store)
    with pytest.raises(FileNotFoundError, match="not a GGUF"):
        ollama_store_gguf("notgguf", ollama_store)
    with pytest.raises(FileNotFoundError, match="no model layer"):
        ollama_store_gguf("licenseonly", ollama_store)
    with pytest.raises(FileNotFoundError, match="no models there"):
        ollama_store_gguf("tinychat", ollama_store / "empty")
    for bad in ("", "a b", "x:", "ns//m"):
        with pytest.raises(FileNotFoundError):
            ollama_store_gguf(bad, ollama_store)


async def test_hook_ollama_store_model_with_ollama_not_running(ollama_store, monkeypatch, tmp_home):
    from oblix_nb import ModelType, OblixClient
    from oblix_nb.localserver import free_port

    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store))
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    assert discover_records(**_only(ollama=True, ollama_models=None)) != []  # store found, dead host ignored
    client = OblixClient(home=tmp_home)
    try:
        await client.hook_model(ModelType.LLAMACPP, "ollama:tinychat")
        r = await client.execute("Hi", max_tokens=4, display_metrics=False)
        assert r["metrics"]["output_tokens"] >= 1
    finally:
        await client.shutdown()


# ---------------------------------------------------------------------------------- HF cache and LM Studio

def _hf_cache(root: Path, gguf_path: Path, repo: str, commit: str, files: list[str], ref: str | None) -> None:
    storage = root / ("models--" + repo.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    blob = storage / "blobs" / ("b" * 64)
    if not blob.exists():
        os.symlink(gguf_path, blob)
    for rel in files:
        link = storage / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)


def test_hf_cache_rows_resolve_offline(tmp_path, gguf_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    main, old = "1" * 40, "2" * 40
    _hf_cache(cache, gguf_path, "TinyOrg/Tiny-Instruct-GGUF", main,
              ["Q4_K_M/tiny-instruct-Q4_K_M.gguf", "mmproj-tiny-f16.gguf", "README.md"], "main")
    _hf_cache(cache, gguf_path, "TinyOrg/Tiny-Instruct-GGUF", old, ["tiny-instruct-Q8_0.gguf"], None)
    _hf_cache(cache, gguf_path, "other/base-model", "3" * 40, ["base-F16.gguf"], "main")
    df = discover_models(**_only(hf_cache=cache))
    assert sorted(df["model_id"]) == [
        "llamacpp:hf:TinyOrg/Tiny-Instruct-GGUF/Q4_K_M/tiny-instruct-Q4_K_M.gguf",
        f"llamacpp:hf:TinyOrg/Tiny-Instruct-GGUF@{old}/tiny-instruct-Q8_0.gguf",
        "llamacpp:hf:other/base-model/base-F16.gguf"]
    assert set(df["source"]) == {"hf_cache"}
    instruct = dict(zip(df["model_id"], df["instruct"]))
    assert instruct[f"llamacpp:hf:TinyOrg/Tiny-Instruct-GGUF@{old}/tiny-instruct-Q8_0.gguf"]
    assert not instruct["llamacpp:hf:other/base-model/base-F16.gguf"]
    # the ids resolve from the cache with the Hub unreachable and offline mode on: no network
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for row in df.itertuples():
        assert resolve_gguf(row.model_id.split(":", 1)[1]).resolve() == gguf_path.resolve()
    # HF_HUB_CACHE is where discovery looks by default
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert sorted(discover_models(**{**_only(), "hf_cache": None})["model_id"]) == sorted(df["model_id"])


def test_lmstudio_folders(tmp_path, gguf_path, monkeypatch):
    home = tmp_path / "home"
    models = home / ".lmstudio" / "models"
    for rel in ("lmstudio-community/Tiny-Chat-GGUF/Tiny-Chat-Q4_K_M.gguf",
                "lmstudio-community/Tiny-Chat-GGUF/mmproj-Tiny-Chat-F16.gguf"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(gguf_path, models / rel)
    (models / "junk" / "notes.gguf").parent.mkdir(parents=True)
    (models / "junk" / "notes.gguf").write_text("not a model")
    custom = tmp_path / "elsewhere"
    (custom / "pub" / "x").mkdir(parents=True)
    os.symlink(gguf_path, custom / "pub" / "x" / "other-it-Q8_0.gguf")
    (home / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(custom)}))
    monkeypatch.setenv("HOME", str(home))
    df = discover_models(**{**_only(), "lmstudio": None})
    paths = {str(models / "lmstudio-community/Tiny-Chat-GGUF/Tiny-Chat-Q4_K_M.gguf"),
             str(custom / "pub/x/other-it-Q8_0.gguf")}
    assert set(df["path"]) == paths and set(df["source"]) == {"lmstudio"}
    assert set(df["model_id"]) == {f"llamacpp:{p}" for p in paths}
    assert df["instruct"].all()  # "Chat" / "-it-" in the names
    for row in df.itertuples():
        assert resolve_gguf(row.model_id.split(":", 1)[1]) == Path(row.path)


def test_shipped_model_is_listed(gguf_path):
    df = discover_models(**{**_only(), "shipped": True})
    row = df.set_index("model_id").loc["llamacpp:smollm2-135m"]
    assert row["source"] == "shipped" and row["path"] == str(gguf_path) and bool(row["instruct"])
    assert str(df["parameters"].dtype) == "Int64" and str(df["size_bytes"].dtype) == "Int64"


# ------------------------------------------------------------------------------------------------ servers

def test_running_ollama_is_listed(ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    df = discover_models(**_only(ollama=True))
    row = df.set_index("model_id").loc[f"ollama:{ollama_server.model}"]
    assert row["source"] == "ollama" and row["endpoint"] == ollama_server.url and row["path"] is None
    assert row["parameters"] == SMOL_PARAMS and row["quantization"] == "Q4_1"
    assert row["context_window"] == 8192 and bool(row["instruct"])
    # an explicit host wins over OLLAMA_HOST
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    assert list(discover_models(**_only(ollama=True, ollama_host=ollama_server.url))["model_id"]) == \
        [f"ollama:{ollama_server.model}"]
    assert discover_records(**_only(ollama=True)) == []  # nothing answers at 127.0.0.1:9


async def test_openai_servers_only_when_asked(openai_server, no_external_network):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    try:
        port = listener.getsockname()[1]
        assert discover_records(**_only(ports=[port, openai_server.port])) == []
        with pytest.raises(socket.timeout):
            listener.accept()  # not even a connection attempt when probe_servers is False
    finally:
        listener.close()
    rows = discover_records(**_only(probe_servers=True, ports=[openai_server.port]))
    assert [(r["model_id"], r["source"], r["endpoint"]) for r in rows] == \
        [(f"openai:{openai_server.model}", "openai_server", openai_server.base_url)]
    from oblix_nb.models.openai import OpenAIBackend

    backend = OpenAIBackend(rows[0]["model_id"].split(":", 1)[1], base_url=rows[0]["endpoint"])
    try:
        await backend.connect()  # hookable as listed
    finally:
        await backend.aclose()
    assert no_external_network.blocked == []


# ---------------------------------------------------------------------------------------- the default pick

def _rows():
    def row(model_id, params, size, instruct=True, source="hf_cache", quant="Q4_K_M"):
        return {"model_id": model_id, "source": source, "path": "/x", "endpoint": None, "parameters": params,
                "quantization": quant, "size_bytes": size, "context_window": 4096, "name": model_id,
                "architecture": "llama", "instruct": instruct}
    gb = 1_000_000_000
    return [row("llamacpp:smollm2-135m", 135_000_000, 98_000_000, source="shipped"),
            row("llamacpp:hf:a/qwen-1.5b-Q4_K_M", 1_500_000_000, int(1.1 * gb)),
            row("llamacpp:hf:a/qwen-1.5b-Q8_0", 1_500_000_000, int(1.9 * gb), quant="Q8_0"),
            row("llamacpp:ollama:llama3.1:8b", 8_000_000_000, int(4.9 * gb), source="ollama_store"),
            row("llamacpp:hf:b/big-base-14b", 14_000_000_000, 9 * gb, instruct=False),
            row("ollama:llama3.3:70b", 70_000_000_000, 40 * gb, source="ollama"),
            row("llamacpp:/x/unknown-size", 30_000_000_000, None, source="lmstudio")]


def test_strongest_local_rule():
    rows = _rows()
    gb = 1_000_000_000
    best, why = strongest_local(rows, free_memory=16 * gb)
    assert best["model_id"] == "llamacpp:ollama:llama3.1:8b" and "largest instruct model" in why
    best, _ = strongest_local(rows, free_memory=4 * gb)  # the 8B does not fit; of the two 1.5B, the lighter file
    assert best["model_id"] == "llamacpp:hf:a/qwen-1.5b-Q4_K_M"
    best, _ = strongest_local(rows, free_memory=memory_needed(98_000_000))
    assert best["model_id"] == "llamacpp:smollm2-135m"
    best, why = strongest_local(rows, free_memory=100_000_000)
    assert best is None and "none fits" in why
    assert strongest_local([r for r in rows if not r["instruct"]], 64 * gb)[0] is None
    # running servers only when asked for
    assert strongest_local(rows, 64 * gb, sources=("ollama",))[0]["model_id"] == "ollama:llama3.3:70b"
    # a DataFrame works as well as records
    import pandas as pd

    assert strongest_local(pd.DataFrame(rows), 16 * gb)[0]["model_id"] == "llamacpp:ollama:llama3.1:8b"
    model_id, why = default_local_model(rows, free_memory=100_000_000)
    assert model_id == "llamacpp:smollm2-135m" and "SmolLM2" in why
    model_id, why = default_local_model(rows, free_memory=16 * gb)
    assert model_id == "llamacpp:ollama:llama3.1:8b" and "8.0B parameters" in why
