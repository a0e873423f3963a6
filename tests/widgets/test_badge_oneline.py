"""Issue 21 item 3 in the chat panel: a reply's badge is one line (model, route in a few words, TTFT, tok/s, tokens,
cost, flags), the full routing reason in a closed ``details`` element; all of it escaped; both widgets' roots
are marked so the host's MathJax leaves them alone."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from oblix_nb.widgets.html import badge_html

WIDGETS = Path(__file__).resolve().parents[2] / "oblix_nb" / "widgets"
BUDGET = "$4.4e-05 of the day budget of $4.8e-05 spent"


def summary_of(html: str) -> str:
    found = re.search(r"<summary>(.*?)</summary>", html, re.S)
    return re.sub(r"<[^>]+>", "", found.group(1)) if found else re.sub(r"<[^>]+>", "", html)


@pytest.mark.parametrize("routing", [
    {"target": "local", "reason": "local: cloud: forced by model_id=llamacpp:smollm2-135m; agents: " + BUDGET},
    {"target": "cloud", "reason": "cloud: near budget (" + BUDGET + ")", "fallback_from": "llamacpp:x"},
    {"target": "local", "reason": "<script>alert(1)</script> forced; " + BUDGET},
])
def test_badge_is_one_line_with_the_reason_on_demand(routing):
    html = badge_html("llamacpp:smollm2-135m", routing,
                      {"time_to_first_token": 0.12, "tokens_per_second": 20.1, "output_tokens": 12,
                       "cost_usd": 4.4e-05, "cost_source": "priced"}, partial=True)
    line = summary_of(html)
    for bit in ("llamacpp:smollm2-135m", routing["target"], "TTFT 120 ms", "20.1 tok/s", "12 tokens", "$",
                "stopped — partial"):
        assert bit in line, (bit, line)
    assert "budget of" not in line and len(line) < 140, line
    assert '<details class="oblix-why">' in html and "<details open" not in html
    why = re.search(r'<div class="oblix-why-text">(.*?)</div>', html, re.S).group(1)
    assert "day budget of $4.8e-05" in why
    if routing.get("fallback_from"):
        assert "fallback" in line and "fallback from llamacpp:x" in why
    assert "<script>" not in html  # escaped


def test_short_badges_stay_plain():
    html = badge_html("llamacpp:smollm2-135m", {"target": "local", "reason": "local"},
                      {"time_to_first_token": 0.1, "output_tokens": 3})
    assert "<details" not in html and "local" in html


def test_widget_roots_are_ignored_by_mathjax():
    for name in ("chat.js", "browser.js"):
        source = (WIDGETS / name).read_text()
        assert re.search(r'class: "oblix-widget oblix-\w+ tex2jax_ignore mathjax_ignore"', source), name


@pytest.mark.parametrize("reason", ["local: test fixture", "test fixture", "local: only local models hooked"])
def test_a_reason_that_fits_in_the_line_has_no_details(reason):
    html = badge_html("m", {"target": "local", "reason": reason}, {"output_tokens": 3})
    assert "<details" not in html and "local: " in html
