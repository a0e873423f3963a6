"""Issue 21 item 3: the %%oblix footer is one line (model, route in a few words, TTFT, tok/s, tokens, cost), the
full routing reason on demand (a closed ``details`` element), and nothing in it is typeset as maths.
The browser test (tests/widgets/test_browser_keys.py) checks the rendering: one line, MathJax leaves it alone."""
from __future__ import annotations

import re

import pytest

from oblix_nb.notebook.display import (
    NO_MATH,
    ReplyDisplay,
    _footer_bundle,
    short_route,
    split_footer,
)
from oblix_nb.streaming import format_footer

BUDGET = "$4.4e-05 of the day budget of $4.8e-05 spent (92%, warning from 80%)"


def response(reason, target="local", **metrics):
    return {"model_id": "llamacpp:smollm2-135m", "routing_decision": {"target": target, "reason": reason},
            "metrics": {"time_to_first_token": 0.12, "tokens_per_second": 20.1, "output_tokens": 12, **metrics}}


@pytest.mark.parametrize("reason, short", [
    ("local: forced by model_id=llamacpp:smollm2-135m", "local: forced"),
    ("local: cloud: forced by model_id=x; agents: budget: " + BUDGET, "local: forced"),
    ("cloud: longest prompt wins (agents: none); more", "cloud: longest prompt wins"),
    ("local", "local"),
    ("cloud: " + "a very long explanation of why this went to the cloud " * 3, None),
    ("local: n=3 k=v", "local"),
])
def test_short_route_is_a_few_words(reason, short):
    got = short_route(reason)
    assert len(got) <= 6 + 28 + 1, got  # target, colon, space, at most ROUTE_WORDS characters
    assert got.split(":")[0] == reason.split(":")[0]
    if short is not None:
        assert got == short
    assert "$" not in got and "=" not in got and got.count(":") <= 1


@pytest.mark.parametrize("reason, cost", [
    ("local: cloud: forced by model_id=llamacpp:smollm2-135m; agents: budget: " + BUDGET, None),
    ("cloud: near budget; " + BUDGET, 0.000044),
    ("local: only local models hooked; resources: cpu 97% (busy)", None),
])
def test_footer_is_one_line_with_the_reason_on_demand(reason, cost):
    metrics = {"cost_usd": cost, "cost_source": "priced"} if cost else {}
    text = format_footer(response(reason, target=reason.split(":")[0], **metrics))
    short, details = split_footer(text)
    assert "\n" not in short
    for bit in ("llamacpp:smollm2-135m", "TTFT 120 ms", "20.1 tok/s", "12 tokens"):
        assert bit in short
    if cost:
        assert "$" in short  # the reply's cost stays in the line
    assert len(short) < 110, short
    assert details and reason in details  # the whole reason, word for word
    html = _footer_bundle(text)["text/html"]
    assert re.search(r"<details[^>]*>\s*<summary", html) and "<details open" not in html
    summary = re.search(r"<summary[^>]*>(.*?)</summary>", html).group(1)
    assert "budget of" not in summary and "forced by" not in summary and "cpu 97%" not in summary
    assert "budget of" in html or "cpu 97%" in html


@pytest.mark.parametrize("kind", ["final", "error", "pending"])
def test_nothing_in_a_footer_is_typeset_as_maths(kind):
    text = "claude-x · cloud: " + BUDGET + " · TTFT 5 ms · $0.0012"
    bundle = _footer_bundle(text, error=kind == "error", pending=kind == "pending")
    outer = re.match(r'<div class="([^"]+)"', bundle["text/html"]).group(1).split()
    assert "mathjax_ignore" in outer and "tex2jax_ignore" in outer and NO_MATH.split()[0] in outer
    assert bundle["text/plain"].startswith("[") and "$0.0012" in bundle["text/plain"]  # plain text: whole


def test_short_footers_have_no_details():
    for text in ("m · TTFT 5 ms · 3 tokens", "m", "llamacpp:x · local · TTFT 1 ms"):
        short, details = split_footer(text)
        assert short == text and details is None
        assert "<details" not in _footer_bundle(text)["text/html"]


def test_reply_display_final_footer_is_one_line():
    published = []
    view = ReplyDisplay(lambda data, display_id, update: published.append((data, display_id)))
    view.show()
    text = format_footer(response("local: forced by model_id=x; agents: budget: " + BUDGET))
    view.final("the reply", text)
    footer = [d for d, i in published if i == view.footer_id][-1]
    assert "<summary" in footer["text/html"] and "local: forced" in footer["text/html"]
    assert footer["text/plain"] == f"[{text}]"


def test_a_reason_that_fits_in_the_line_has_no_details():
    for text in ("m · local: test fixture · TTFT 1 ms", "m · cloud: longest prompt wins · 3 tokens"):
        short, details = split_footer(text)
        assert details is None and short == text


def test_the_streaming_status_line_is_one_line_too():
    from oblix_nb.notebook.display import _status_line

    line = _status_line({"model_id": "llamacpp:x", "routing": {"target": "local", "reason":
                         "local: forced by model_id=llamacpp:x; agents: budget: " + BUDGET}})
    assert line == "streaming from llamacpp:x · local: forced …"
    assert _status_line({"model_id": "m"}) == "streaming from m …"
