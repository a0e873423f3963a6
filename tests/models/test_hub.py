"""hf: models (issue 18 item 1): real huggingface_hub downloads from a loopback Hub (tests/servers/hub_compat.py)
serving SmolLM2-135M's GGUF under made-up repo names, into a temporary Hugging Face cache."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from oblix_nb.models import hub
from oblix_nb.models.hub import (
    ChecksumMismatchError,
    HubNotFoundError,
    HubOfflineError,
    HubSpec,
    parse_hf,
    pick_gguf,
    split_parts,
)

pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install 'oblix-nb[local]')")

CHAT = "acme-labs/Tiny-Chat-GGUF"
NESTED = "someone/nested.quants"
CORRUPT = "corp/corrupt-GGUF"
SLOW = "slow/Resume-GGUF"
PRIVATE = "gated-org/Private-GGUF"
HF_VARS = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE",
           "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "XDG_CACHE_HOME")


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def gguf_sha(gguf_path):
    return _sha256(gguf_path)


@pytest.fixture(scope="module")
def repos(tmp_path_factory, gguf_path):
    root = tmp_path_factory.mktemp("hub-repos")

    def repo(name: str, files: list[str]) -> Path:
        d = root / name.replace("/", "__")
        for rel in files:
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".gguf"):
                os.symlink(gguf_path, d / rel)
            else:
                (d / rel).write_text("# model card\n")
        return d

    return {
        CHAT: repo(CHAT, ["README.md", "tiny-chat-Q8_0.gguf", "tiny-chat-Q4_K_M.gguf", "tiny-chat-F16.gguf",
                          "mmproj-tiny-chat-f16.gguf"]),
        NESTED: repo(NESTED, ["Q2_K/nested-Q2_K.gguf", "Q8_0/nested-Q8_0.gguf", "deep/er/Q5_K_M/model.gguf"]),
        CORRUPT: repo(CORRUPT, ["corrupt-Q4_K_M.gguf"]),
        SLOW: repo(SLOW, ["resume-IQ4_XS.gguf"]),
    }


@pytest.fixture(scope="module")
def hub_server(repos):
    from servers.hub_compat import start_hub_server

    server = start_hub_server(repos)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_server(repos, tmp_path_factory, gguf_path):
    from servers.hub_compat import start_hub_server

    d = tmp_path_factory.mktemp("private-repo")
    os.symlink(gguf_path, d / "private-Q4_K_M.gguf")
    server = start_hub_server({PRIVATE: d}, token="hf_test_" + "x1y2z3" * 4)
    server.token = "hf_test_" + "x1y2z3" * 4
    yield server
    server.stop()


def _control(server, **body):
    httpx.post(server.url + "/_control", json=body).raise_for_status()


def _requests(server) -> list[dict]:
    return [r for r in httpx.get(server.url + "/_debug/requests").json() if not r["path"].startswith("/_")]


@pytest.fixture
def hf_env(monkeypatch, tmp_path, hub_server):
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    httpx.delete(hub_server.url + "/_debug/requests")
    _control(hub_server, throttle_bps=None, corrupt=[], short=[], fail_after=None)
    return tmp_path / "hf-home" / "hub"


def _storage(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


# ------------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name, spec", [
    ("hf:acme/Repo-GGUF", HubSpec("acme/Repo-GGUF")),
    ("hf:acme/Repo-GGUF:q8_0", HubSpec("acme/Repo-GGUF", quant="Q8_0")),
    ("hf:acme/Repo.v2-GGUF/model-Q4_K_M.gguf", HubSpec("acme/Repo.v2-GGUF", filename="model-Q4_K_M.gguf")),
    ("hf:o/r/a/b/c/x.GGUF", HubSpec("o/r", filename="a/b/c/x.GGUF")),
    ("hf:o/r@v1.0/x.gguf", HubSpec("o/r", revision="v1.0", filename="x.gguf")),
    ("hf:o/r@" + "a" * 40 + ":UD-Q4_K_XL", HubSpec("o/r", revision="a" * 40, quant="UD-Q4_K_XL")),
])
def test_parse_hf_forms(name, spec):
    assert parse_hf(name) == spec
    assert parse_hf(str(spec)) == spec  # the canonical form parses back


@pytest.mark.parametrize("name", ["hf:", "hf:onlyowner", "hf:o/r/model.bin", "hf:o/r/../x.gguf", "hf:o/r//x.gguf",
                                  "hf:o/r:Q4 K", "hf:../r/x.gguf", "hf:o/r@/x.gguf", "acme/r", "hf:o/.r"])
def test_parse_hf_rejects_malformed_names(name):
    with pytest.raises(ValueError):
        parse_hf(name)


def test_pick_prefers_q4_k_m_and_skips_non_models():
    files = ["README.md", "m-F16.gguf", "m-Q8_0.gguf", "m-Q4_K_M.gguf", "mmproj-m-f16.gguf", "m-Q2_K.gguf",
             "m-imatrix.gguf", "m-Q6_K.gguf"]
    path, quant, choices = pick_gguf(files)
    assert (path, quant) == ("m-Q4_K_M.gguf", "Q4_K_M")
    assert "mmproj-m-f16.gguf" not in choices and "m-imatrix.gguf" not in choices and "README.md" not in choices
    assert pick_gguf(["m-F16.gguf", "m-Q8_0.gguf", "m-BF16.gguf"])[1] == "Q8_0"  # quantised before unquantised
    assert pick_gguf(["m-F32.gguf", "m-BF16.gguf"])[1] == "BF16"
    assert pick_gguf(["m-Q3_K_M.gguf", "m-Q5_K_M.gguf", "m-IQ4_XS.gguf"])[1] == "Q5_K_M"
    assert pick_gguf(["x/m-Q4_0.gguf", "m-UD-Q4_K_XL.gguf"])[1] == "UD-Q4_K_XL"
    assert pick_gguf(["plain.gguf"]) == ("plain.gguf", None, {"plain.gguf": None})


def test_pick_subfolders_splits_and_explicit_quant():
    files = ["Q8_0/m-Q8_0.gguf", "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
             "BF16/model.gguf"]
    path, quant, choices = pick_gguf(files)
    assert (path, quant) == ("Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M")
    assert "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf" not in choices  # later split parts are not models
    assert choices["BF16/model.gguf"] == "BF16"  # quantisation read from the folder name
    assert pick_gguf(files, "q8_0")[0] == "Q8_0/m-Q8_0.gguf"
    assert pick_gguf(files, "BF16")[0] == "BF16/model.gguf"
    with pytest.raises(HubNotFoundError, match="Q4_K_M, Q8_0|BF16, Q4_K_M, Q8_0"):
        pick_gguf(files, "Q3_K_S")
    with pytest.raises(HubNotFoundError, match="no GGUF"):
        pick_gguf(["README.md", "mmproj-x.gguf", "model.safetensors"])
    assert split_parts("a/m-00001-of-00003.gguf") == [f"a/m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_parts("m.gguf") == ["m.gguf"]


# ------------------------------------------------------------------------------------------- downloading

async def test_hook_hf_repo_downloads_the_preferred_quantisation(hf_env, hub_server, tmp_home, capfd, gguf_sha,
                                                                 no_external_network):
    from oblix_nb import ModelType, OblixClient

    client = OblixClient(home=tmp_home)
    try:
        await client.hook_model(ModelType.LLAMACPP, f"hf:{CHAT}")
        err = capfd.readouterr().err
        assert "picked Q4_K_M (tiny-chat-Q4_K_M.gguf)" in err and "Q8_0" in err and "F16" in err
        assert f"downloading {CHAT}/tiny-chat-Q4_K_M.gguf (Q4_K_M), 98.4 MB" in err
        gets = [r for r in _requests(hub_server) if r["method"] == "GET" and "/resolve/" in r["path"]]
        assert [r["path"] for r in gets] == [f"/{CHAT}/resolve/main/tiny-chat-Q4_K_M.gguf"]
        assert gets[0]["bytes"] == 98_362_432
        r = await client.execute("Say hello.", max_tokens=8, display_metrics=False)
        assert isinstance(r["response"], str) and r["metrics"]["output_tokens"] >= 1
    finally:
        await client.shutdown()
    # in huggingface_hub's standard cache, where its own lookup finds it
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(CHAT, "tiny-chat-Q4_K_M.gguf", cache_dir=hf_env)
    assert isinstance(found, str) and _sha256(found) == gguf_sha
    assert not list(hf_env.rglob("*.incomplete"))
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert no_external_network.blocked == []


def test_announces_before_the_first_byte(hf_env, hub_server):
    seen = []

    def notify(message):
        gets = [r for r in _requests(hub_server) if r["method"] == "GET" and "/resolve/" in r["path"]]
        seen.append((message, len(gets)))

    path = hub.resolve_hf(f"hf:{NESTED}/deep/er/Q5_K_M/model.gguf", notify=notify)
    assert path.is_file() and path.name == "model.gguf"
    downloading = [n for m, n in seen if m.startswith("downloading")]
    assert downloading == [0]  # said once, before any GET of the file
    assert f"{NESTED}/deep/er/Q5_K_M/model.gguf (Q5_K_M), 98.4 MB" in [m for m, _ in seen][-1]


def test_cached_file_needs_no_network_online_or_offline(hf_env, hub_server, monkeypatch):
    first = hub.resolve_hf(f"hf:{NESTED}:Q8_0", notify=lambda m: None)
    assert first.relative_to(hf_env).parts[-2:] == ("Q8_0", "nested-Q8_0.gguf")
    httpx.delete(hub_server.url + "/_debug/requests")
    messages = []
    # named file, whole repo, quantisation: all from the cache, no request (even with the Hub reachable)
    assert hub.resolve_hf(f"hf:{NESTED}/Q8_0/nested-Q8_0.gguf", notify=messages.append) == first
    assert hub.resolve_hf(f"hf:{NESTED}", notify=messages.append) == first
    assert hub.resolve_hf(f"hf:{NESTED}:q8_0", notify=messages.append) == first
    assert _requests(hub_server) == []
    assert any("cached Q8_0" in m for m in messages)
    # offline, and with the Hub unreachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_hf(f"hf:{NESTED}/Q8_0/nested-Q8_0.gguf") == first
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from oblix_nb.localserver import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert hub.resolve_hf(f"hf:{NESTED}:Q8_0") == first
    assert _requests(hub_server) == []


async def test_offline_rehook_through_the_client(hf_env, hub_server, tmp_home, monkeypatch):
    from oblix_nb import ModelType, OblixClient
    from oblix_nb.errors import ModelUnavailableError

    hub.resolve_hf(f"hf:{CHAT}/tiny-chat-Q8_0.gguf", notify=lambda m: None)
    httpx.delete(hub_server.url + "/_debug/requests")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = OblixClient(home=tmp_home)
    try:
        await client.hook_model(ModelType.LLAMACPP, f"hf:{CHAT}/tiny-chat-Q8_0.gguf")
        r = await client.execute("Hi", max_tokens=4, display_metrics=False)
        assert r["metrics"]["output_tokens"] >= 1
        # not cached + offline: a clear error, nothing asked, nothing written
        with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE") as info:
            await client.hook_model(ModelType.LLAMACPP, f"hf:{CHAT}/tiny-chat-F16.gguf")
        assert isinstance(info.value.__cause__, HubOfflineError)
    finally:
        await client.shutdown()
    assert _requests(hub_server) == []
    assert not list(_storage(hf_env, CHAT).rglob("tiny-chat-F16.gguf"))


RESUME_SCRIPT = """
import sys
from oblix_nb.models.hub import resolve_hf
print(resolve_hf(sys.argv[1]), flush=True)
"""


def test_resume_after_a_killed_download(hf_env, hub_server, gguf_sha):
    _control(hub_server, throttle_bps=6_000_000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2])] +
                                                       [p for p in [os.environ.get("PYTHONPATH")] if p])}
    child = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, f"hf:{SLOW}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blobs = _storage(hf_env, SLOW) / "blobs"
    partial = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            found = list(blobs.glob("*.incomplete")) if blobs.is_dir() else []
            if found and found[0].stat().st_size >= 8_000_000:
                partial = found[0]
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
        assert partial is not None, "the download never got going"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    child.stdout.close()
    child.stderr.close()
    have = partial.stat().st_size
    assert 0 < have < 98_362_432
    assert not [p for p in blobs.iterdir() if not p.name.endswith(".incomplete")]  # nothing half-made is cached
    _control(hub_server, throttle_bps=None)
    httpx.delete(hub_server.url + "/_debug/requests")
    messages = []
    path = hub.resolve_hf(f"hf:{SLOW}", notify=messages.append)
    gets = [r for r in _requests(hub_server) if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert len(gets) == 1 and gets[0]["status"] == 206
    assert gets[0]["range"] == f"bytes={have}-" and gets[0]["bytes"] == 98_362_432 - have
    assert _sha256(path) == gguf_sha
    assert not list(blobs.glob("*.incomplete"))


def test_interrupted_transfer_raises_and_resumes(hf_env, hub_server, gguf_sha):
    """The server sends 25 MB, then drops every connection (huggingface_hub retries with Range 5 times, then gives
    up): a HubError saying how to resume; the next hook continues from the bytes already on disk (huggingface_hub
    writes 10 MB chunks: 20 MB of them)."""
    _control(hub_server, fail_after=25_000_000)
    with pytest.raises(hub.HubError, match="interrupted .* hook the model again to resume"):
        hub.resolve_hf(f"hf:{CHAT}:F16", notify=lambda m: None)
    partial = list((_storage(hf_env, CHAT) / "blobs").glob("*.incomplete"))
    assert len(partial) == 1 and partial[0].stat().st_size >= 20_000_000
    have = partial[0].stat().st_size
    _control(hub_server, fail_after=None)
    httpx.delete(hub_server.url + "/_debug/requests")
    path = hub.resolve_hf(f"hf:{CHAT}:F16", notify=lambda m: None)
    gets = [r for r in _requests(hub_server) if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert [g["range"] for g in gets] == [f"bytes={have}-"]
    assert path.name == "tiny-chat-F16.gguf" and _sha256(path) == gguf_sha


async def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(hf_env, hub_server, tmp_home, gguf_sha):
    from oblix_nb import ModelType, OblixClient
    from oblix_nb.errors import ModelUnavailableError

    _control(hub_server, corrupt=[CORRUPT])
    client = OblixClient(home=tmp_home)
    try:
        with pytest.raises(ModelUnavailableError, match="does not match the Hub's metadata") as info:
            await client.hook_model(ModelType.LLAMACPP, f"hf:{CORRUPT}/corrupt-Q4_K_M.gguf")
        assert isinstance(info.value.__cause__, ChecksumMismatchError)
        assert "it was deleted" in str(info.value)
    finally:
        await client.shutdown()
    storage = _storage(hf_env, CORRUPT)
    leftovers = [p for p in storage.rglob("*") if p.is_file() or p.is_symlink()]
    assert leftovers == [], leftovers  # no blob, no partial file, no snapshot link, no ref
    # the Hub serves good bytes again: the next hook downloads and verifies
    _control(hub_server, corrupt=[])
    path = hub.resolve_hf(f"hf:{CORRUPT}/corrupt-Q4_K_M.gguf", notify=lambda m: None)
    assert _sha256(path) == gguf_sha


def test_short_file_is_refused_and_deleted(hf_env, hub_server):
    """A complete response with fewer bytes than the Hub's metadata announces is not an interruption to resume."""
    _control(hub_server, short=[CORRUPT])
    with pytest.raises(ChecksumMismatchError, match="the download was deleted"):
        hub.resolve_hf(f"hf:{CORRUPT}/corrupt-Q4_K_M.gguf", notify=lambda m: None)
    assert [p for p in _storage(hf_env, CORRUPT).rglob("*") if p.is_file() or p.is_symlink()] == []


async def test_malformed_hf_name_is_refused_at_hook(tmp_home):
    from oblix_nb import ModelType, OblixClient

    client = OblixClient(home=tmp_home)
    try:
        with pytest.raises(ValueError, match="must be a .gguf"):
            await client.hook_model(ModelType.LLAMACPP, "hf:acme/repo/weights.safetensors")
    finally:
        await client.shutdown()


@pytest.mark.parametrize("name, match", [
    ("hf:nobody/missing-GGUF", "not found .* or not accessible"),
    (f"hf:{CHAT}/no-such-file.gguf", "file not found"),
    (f"hf:{CHAT}:Q3_K_S", "no Q3_K_S file; quantisations there: F16, Q4_K_M, Q8_0"),
    (f"hf:{CHAT}@v9/tiny-chat-Q8_0.gguf", "revision 'v9' not found"),
])
def test_not_found_errors_name_the_problem(hf_env, hub_server, name, match):
    with pytest.raises(HubNotFoundError, match=match):
        hub.resolve_hf(name, notify=lambda m: None)
    assert not list(hf_env.rglob("*.gguf"))


def test_unreachable_hub_and_not_cached(hf_env, monkeypatch):
    from oblix_nb.localserver import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HubOfflineError, match="could not reach the Hugging Face Hub"):
        hub.resolve_hf(f"hf:{CHAT}/tiny-chat-Q8_0.gguf", notify=lambda m: None)


def test_hf_token_is_sent_and_never_shown(hf_env, private_server, monkeypatch, capfd):
    monkeypatch.setenv("HF_ENDPOINT", private_server.url)
    with pytest.raises(HubNotFoundError, match="HF_TOKEN"):
        hub.resolve_hf(f"hf:{PRIVATE}")
    monkeypatch.setenv("HF_TOKEN", private_server.token)
    path = hub.resolve_hf(f"hf:{PRIVATE}")
    assert path.name == "private-Q4_K_M.gguf"
    reqs = _requests(private_server)
    assert reqs and all(r["auth"] for r in reqs if r["status"] < 400)
    out = capfd.readouterr()
    assert private_server.token not in out.out + out.err
    for f in hf_env.rglob("*"):
        if f.is_file() and f.stat().st_size < 1_000_000:
            assert private_server.token not in f.read_text(errors="replace")


def test_import_stays_light():
    code = ("import sys, oblix_nb, oblix_nb.models.gguf, oblix_nb.models.hub, oblix_nb.models.discover; "
            "print(sorted(m for m in ('huggingface_hub', 'pandas', 'llama_cpp', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cache_and_offline_settings_are_read_now(monkeypatch, tmp_path):
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", "~/hf")
    assert hub.hub_cache_dir() == tmp_path / "home" / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub.hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hub.hub_cache_dir() == tmp_path / "new"
    assert not hub.hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub.hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub.hub_offline()
    assert hub.hub_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:5000/")
    assert hub.hub_endpoint() == "http://127.0.0.1:5000"
