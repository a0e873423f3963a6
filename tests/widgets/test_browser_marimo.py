"""The chat panel and the session browser in marimo (``marimo run``, a host without JupyterLab's theme variables),
driven through Debian's chromium with Playwright: issue 21, item 5 (and the keys of item 1 where marimo has them).

With the page in light and in dark (``prefers-color-scheme``): every text of both widgets at WCAG AA, the UI
graphics (the partial reply's border, the accent of Send / Jump / the selected row, control borders, the focus
ring) at least 3:1 against what they sit on, the placeholder a different colour from typed text and AA itself,
the user's bubble a different background from the assistant's, axe-core without serious or critical
violations. "Insert cell" cannot work in marimo (no notebook model, no IPython kernel): not shown, while Copy is.
No key pressed inside a widget reaches the page (marimo's own shortcuts listen there); typing on a control of
the panel goes to its text box. Screenshots go to ``test-artifacts/`` (``marimo-*.png``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_browser import (
    ARTIFACTS,
    AXE,
    CHROMIUM,
    CHROMIUM_ARGS,
    CONTRAST_JS,
    REPO,
    _free_port,
    _guarded_context,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

APP = '''\
import marimo

app = marimo.App(width="medium")


@app.cell
def _():
    import marimo as mo
    from oblix_nb import OblixClient
    from oblix_nb.notebook.widgets import ChatPanel, SessionBrowser

    client = OblixClient()
    sid = client.sessions.create(title="From marimo", metadata={"kind": "marimo", "n": 3})
    client.append_message(sid, "user", "Show me some code, please.")
    client.append_message(sid, "assistant", "Here it is:\\n\\n```python\\nprint('hello')\\n```\\n\\nA [link](https://example.org).",
                          model_id="llamacpp:smollm2-135m",
                          routing={"target": "local", "reason": "local: forced by model_id=llamacpp:smollm2-135m; "
                                   "agents: budget: $4.4e-05 of the day budget of $4.8e-05 spent"},
                          metrics={"time_to_first_token": 0.1, "tokens_per_second": 20.0, "output_tokens": 12})
    client.append_message(sid, "user", "And a long story?")
    client.append_message(sid, "assistant", "Once upon a time", model_id="llamacpp:smollm2-135m", partial=True)
    other = client.sessions.create(title="Another one", metadata={"kind": "other"})
    client.append_message(other, "user", "hello")
    panel = mo.ui.anywidget(ChatPanel(client, sid))
    browser = mo.ui.anywidget(SessionBrowser(client))
    return browser, panel


@app.cell
def _(panel):
    panel
    return


@app.cell
def _(browser):
    browser
    return


if __name__ == "__main__":
    app.run()
'''

# all elements matching a selector, through open shadow roots (marimo renders widgets in one)
DEEP_JS = r"""() => {
    window.__deepAll = (selector) => {
        const out = [];
        const walk = (root) => {
            out.push(...root.querySelectorAll(selector));
            for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
        };
        walk(document);
        return out;
    };
}"""
DEEP_CONTRAST_JS = CONTRAST_JS.replace("document.querySelectorAll(selector)", "window.__deepAll(selector)")
assert DEEP_CONTRAST_JS != CONTRAST_JS

# UI graphics (WCAG 1.4.11): colour pairs that must reach 3:1, and the placeholder / bubble checks
GRAPHICS_JS = r"""() => {
    const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); const p = m[1].split(/[\s,\/]+/).map(Number);
                           return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
    const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                         return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
    const ratio = (a, b) => { const [x, y] = [lum(parse(a)), lum(parse(b))];
                              return Math.round((Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05) * 100) / 100; };
    const bg = (el) => { for (let n = el; n; n = n.parentElement) { const c = getComputedStyle(n).backgroundColor;
                         if (parse(c).a > 0) return c; } return 'rgb(255, 255, 255)'; };
    const one = (sel) => window.__deepAll(sel)[0];
    const chat = one('.oblix-chat'), sb = one('.oblix-browser');
    const pairs = [];
    const add = (name, el, prop, against) => { if (!el) { pairs.push({name, missing: true, ratio: 0}); return; }
        const c = getComputedStyle(el)[prop]; pairs.push({name, color: c, ratio: ratio(c, against || bg(el.parentElement || el))}); };
    const partial = chat.querySelector('.oblix-msg.partial .oblix-bubble');
    add('partial reply border', partial, 'borderTopColor', bg(partial.parentElement));
    const send = chat.querySelector('.oblix-send');
    add('Send (accent border)', send, 'borderTopColor');
    const userBubble = chat.querySelector('.oblix-msg.user .oblix-bubble');
    add('user bubble accent', userBubble, 'borderRightColor', bg(userBubble));
    add('input border', chat.querySelector('textarea'), 'borderTopColor');
    add('picker border', chat.querySelector('select'), 'borderTopColor');
    add('filter border', sb.querySelector('.oblix-text'), 'borderTopColor');
    add('delete (error border)', sb.querySelector('.oblix-danger'), 'borderTopColor');
    const input = chat.querySelector('textarea');
    input.focus();
    const ring = getComputedStyle(input).outlineColor;
    pairs.push({name: 'focus ring', color: ring, ratio: ratio(ring, bg(input.parentElement))});
    input.blur();
    const ph = getComputedStyle(input, '::placeholder').color, typed = getComputedStyle(input).color;
    const assistantBubble = chat.querySelector('.oblix-msg.assistant .oblix-bubble');
    return {pairs, placeholder: {color: ph, typed, ratio: ratio(ph, bg(input))},
            bubbles: {user: getComputedStyle(userBubble).backgroundColor,
                      assistant: getComputedStyle(assistantBubble).backgroundColor},
            widgetBg: getComputedStyle(chat).backgroundColor};
}"""


def _serve_marimo(base: Path):
    app = base / "app.py"
    app.write_text(APP)
    home = base / "oblix-home"
    home.mkdir()
    port = _free_port()
    env = dict(os.environ)
    env.update({"OBLIX_HOME": str(home), "HOME": str(base), "XDG_CONFIG_HOME": str(base / "config"),
                "XDG_CACHE_HOME": str(base / "cache"), "MARIMO_SKIP_UPDATE_CHECK": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])})
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(key, None)
    log_path = base / "marimo.log"
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "marimo", "run", str(app), "--headless", "--host", "127.0.0.1", "--port", str(port),
           "--no-token", "--no-sandbox", "--no-check"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(base))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail("marimo exited:\n" + log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("marimo did not start in 90 s:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def marimo_app(tmp_path_factory):
    pytest.importorskip("marimo")
    pytest.importorskip("playwright")
    yield from _serve_marimo(tmp_path_factory.mktemp("marimo"))


def _axe_deep(page) -> list:
    if not page.evaluate("() => !!window.axe"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate("""async () => {
        const out = [];
        for (const el of window.__deepAll('.oblix-chat, .oblix-browser')) {
            const r = await axe.run(el, {resultTypes: ['violations']});
            for (const v of r.violations) if (v.impact === 'serious' || v.impact === 'critical')
                out.push({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.html.slice(0, 200) + " " + n.failureSummary)});
        }
        return out;
    }""")


def test_widgets_in_marimo(marimo_app):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    outside: list[str] = []
    report: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = _guarded_context(browser, outside, viewport={"width": 1200, "height": 1100},
                                       color_scheme="light")
            page = context.new_page()
            page.goto(marimo_app["url"], timeout=120_000)
            panel = page.locator(".oblix-chat").first  # Playwright's CSS engine pierces open shadow roots
            sb = page.locator(".oblix-browser").first
            expect(panel).to_be_visible(timeout=150_000)
            expect(sb).to_be_visible(timeout=60_000)
            expect(panel.locator(".oblix-msg.partial")).to_have_count(1, timeout=30_000)
            expect(sb.locator("tbody tr")).to_have_count(2, timeout=30_000)
            page.evaluate(DEEP_JS)
            in_shadow = page.evaluate("() => !document.querySelector('.oblix-chat') && window.__deepAll('.oblix-chat').length")
            report["in shadow root"] = bool(in_shadow)

            # -- item 3: the reply's badge is one line, the routing reason (with its $ amounts) on demand
            badge = panel.locator(".oblix-badge").first
            info = badge.evaluate("""(b) => ({h: b.querySelector('summary').getBoundingClientRect().height,
                lh: parseFloat(getComputedStyle(b).lineHeight), text: b.querySelector('summary').textContent,
                open: b.querySelector('details').open, why: b.querySelector('.oblix-why-text').textContent})""")
            assert info["h"] < 2 * info["lh"] and not info["open"] and "day budget" in info["why"], info
            assert "day budget" not in info["text"] and "local: forced" in info["text"], info
            # -- item 8: the session browser's columns fit the width marimo gives it (Metadata included)
            grid = sb.locator(".oblix-grid-wrap").evaluate(
                "w => ({scroll: w.scrollWidth, client: w.clientWidth, last: w.querySelector('thead th:last-child').dataset.key})")
            report["grid"] = grid
            assert grid["scroll"] <= grid["client"] + 1 and grid["last"] == "metadata", grid

            # -- "Insert cell" cannot work here: not shown; Copy is
            code = panel.locator(".oblix-code").first
            expect(code.get_by_role("button", name="Copy code")).to_be_visible()
            assert code.locator(".oblix-insert").count() == 1 and not code.locator(".oblix-insert").is_visible()

            # -- colours, light and dark (prefers-color-scheme)
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                page.wait_for_timeout(500)
                checked = page.evaluate(DEEP_CONTRAST_JS, ".oblix-chat, .oblix-browser")
                failures = [c for c in checked if c["ratio"] < c["need"]]
                assert len(checked) > 40 and not failures, f"{scheme}: text below AA: {failures[:8]}"
                graphics = page.evaluate(GRAPHICS_JS)
                report[scheme] = {"texts": len(checked), "min text": min(c["ratio"] for c in checked),
                                  "graphics": {g["name"]: g["ratio"] for g in graphics["pairs"]},
                                  "placeholder": graphics["placeholder"]["ratio"], "bg": graphics["widgetBg"]}
                low = [g for g in graphics["pairs"] if g["ratio"] < 3]
                assert not low, f"{scheme}: UI graphics below 3:1: {low}"
                ph = graphics["placeholder"]
                assert ph["color"] != ph["typed"] and ph["ratio"] >= 4.5, (scheme, ph)
                assert graphics["bubbles"]["user"] != graphics["bubbles"]["assistant"], (scheme, graphics["bubbles"])
                dark_bg = graphics["widgetBg"] in ("rgb(30, 30, 30)",)
                assert dark_bg == (scheme == "dark"), (scheme, graphics["widgetBg"])  # the scheme is followed
                if AXE.is_file():
                    violations = _axe_deep(page)
                    report[scheme]["axe"] = len(violations)
                    assert not violations, f"{scheme}: axe-core: {violations}"
                panel.screenshot(path=str(ARTIFACTS / f"marimo-chat-{scheme}.png"))
                sb.screenshot(path=str(ARTIFACTS / f"marimo-session-browser-{scheme}.png"))
            # marimo's own dark theme (a .dark class on its page) switches the fallbacks too
            page.emulate_media(color_scheme="light")
            page.evaluate("() => document.documentElement.classList.add('dark')")
            page.wait_for_timeout(300)
            assert page.evaluate(GRAPHICS_JS)["widgetBg"] == "rgb(30, 30, 30)"
            checked = page.evaluate(DEEP_CONTRAST_JS, ".oblix-chat, .oblix-browser")
            assert not [c for c in checked if c["ratio"] < c["need"]]
            page.evaluate("() => document.documentElement.classList.remove('dark')")
            page.wait_for_timeout(300)
            assert page.evaluate(GRAPHICS_JS)["widgetBg"] == "rgb(255, 255, 255)"

            # -- no key pressed inside a widget reaches the page; typing on a control goes to the text box
            page.evaluate("""() => { window.__leaked = [];
                document.addEventListener('keydown', (e) => window.__leaked.push(e.key)); }""")
            for name in ("New session", "Send"):
                button = panel.get_by_role("button", name=name, exact=True)
                if button.is_enabled():
                    button.focus()
                    for key in ("a", "b", "x", "d", "ArrowDown", "PageUp", "Home", "Shift+Enter"):
                        page.keyboard.press(key)
            sb.locator(".oblix-grid-wrap").focus()
            for key in ("a", "b", "m", "ArrowDown", "End", "Control+Enter"):
                page.keyboard.press(key)
            assert page.evaluate("() => window.__leaked") == [], page.evaluate("() => window.__leaked")
            textarea = panel.locator("textarea")
            textarea.fill("")
            panel.get_by_role("button", name="New session").focus()
            page.keyboard.type("what is a dataframe")
            expect(textarea).to_have_value("what is a dataframe")
            page.keyboard.press("Escape")  # documented: leaves the widget, and reaches the page
            assert page.evaluate("() => window.__leaked") == ["Escape"]
        finally:
            print("marimo walk:", json.dumps(report, default=str))
            browser.close()
    assert not outside, f"the page tried to reach non-loopback hosts: {outside}"
