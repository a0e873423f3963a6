"""The HTML the widgets show: message bubbles, reply badges, labels. One home for both widgets.

Everything untrusted (model output, titles, metadata, model ids, error text) goes through
:mod:`oblix_nb.notebook.render`: raw HTML is escaped, links are http/https/mailto only, images are not
loaded. The front-end modules (``chat.js``, ``browser.js``) insert these strings as they are and add only
their own controls (code-block buttons), built with DOM calls.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ..notebook import render
from ..notebook.render import escape
from ..pricing import cost_label

if TYPE_CHECKING:
    from ..client import OblixClient

CURSOR = "▌"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def one_line(text: Any, width: int) -> str:
    """``text`` on one line (control characters and runs of blanks → one space), cut to ``width``."""
    text = re.sub(r"[\x00-\x1f\x7f\s]+", " ", str(text or "")).strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def short_time(stamp: str | None) -> str:
    """``2026-11-24T20:51:03.123Z`` → ``2026-11-24 20:51`` (UTC)."""
    return (stamp or "")[:16].replace("T", " ")


def model_name(model_id: str) -> str:
    """``llamacpp:smollm2-135m`` → ``smollm2-135m``."""
    return model_id.split(":", 1)[1] if ":" in model_id else model_id


def badge_html(model_id: str | None = None, routing: dict | None = None, metrics: dict | None = None,
               *, partial: bool = False, note: str | None = None, error: str | None = None,
               pending: bool = False, cost: str | None = None) -> str:
    """One muted line under a reply: model · route in a few words · TTFT · tok/s · tokens · cost (+ flags); the
    full routing reason (and the model a fallback came from) in a ``details`` element, opened on demand.

    All escaped. ``cost`` is an already formatted amount (e.g. ``"$0.0012"``), shown after the token count;
    by default the reply's own (``metrics["cost_usd"]``, for cloud replies only: see
    :func:`oblix_nb.pricing.cost_label`). Flags are words, not only colours (``■ stopped — partial``, ``⚠ error``).
    """
    from ..notebook.display import says_more, short_route

    routing, metrics = routing or {}, metrics or {}
    cost = cost or cost_label(metrics)
    bits: list[str] = []
    why: list[str] = []  # what the one line leaves out: shown on demand (a details element)
    if model_id:
        bits.append(f'<b class="oblix-model">{escape(model_id)}</b>')
    target, reason = routing.get("target"), (routing.get("reason") or "").strip()
    if target:
        if reason.startswith(f"{target}:") or reason == target:
            reason = reason[len(target) + 1:].strip()
        full = f"{target}: {reason}" if reason else target
        brief = short_route(full)
        bits.append(escape(brief))
        if says_more(full, brief):
            why.append(f"route: {full}")
    if routing.get("fallback_from"):
        bits.append("fallback")
        why.append(f"fallback from {routing['fallback_from']}")
    ttft = metrics.get("time_to_first_token")
    if isinstance(ttft, (int, float)):
        bits.append(f"TTFT {_ms(ttft)}")
    tps = metrics.get("tokens_per_second")
    if isinstance(tps, (int, float)) and tps:
        bits.append(f"{tps:.1f} tok/s")
    out_tokens = metrics.get("output_tokens")
    if isinstance(out_tokens, int):
        bits.append(f"{out_tokens} tokens")
    if cost:
        bits.append(f'<span class="oblix-cost">{escape(cost)}</span>')
    if metrics.get("finish_reason") == "length":
        bits.append("cut at max_tokens")
    if note:
        bits.append(escape(note))
    if partial:
        bits.append('<span class="oblix-flag">■ stopped — partial</span>')
    if error:
        bits.append(f'<span class="oblix-err">⚠ {escape(error)}</span>')
    if not bits:
        return ""
    classes = "oblix-badge pending" if pending else "oblix-badge"
    line = " · ".join(bits)
    if why:
        line = (f'<details class="oblix-why"><summary>{line}</summary>'
                f'<div class="oblix-why-text">{escape(chr(10).join(why))}</div></details>')
    return f'<div class="{classes}">{line}</div>'



def message_html(role: str, content: str, *, badge: str = "", streaming: bool = False,
                 partial: bool = False, error: bool = False) -> str:
    """One message as a bubble. User text is shown as typed (escaped); other roles as safe Markdown.

    ``streaming``: the live bubble of a reply being generated — its text arrives as deltas that the front
    end appends to ``.oblix-live-text`` (plain text), followed by the cursor; the final bubble is Markdown.
    """
    role = role if role in ("user", "assistant", "system") else "system"
    if streaming:
        body = (f'<span class="oblix-live-text">{escape(content)}</span>'
                f'<span class="oblix-cursor" aria-hidden="true">{CURSOR}</span>')
    elif role == "user":
        body = escape(content)
    else:
        body = render.markdown(content)
        if not body:
            body = '<span class="oblix-cursor">…</span>' if not partial and not error else "<i>(no text)</i>"
    classes = " ".join(c for c in ("oblix-msg", role, "live" if streaming else "", "partial" if partial else "",
                                    "error" if error else "") if c)
    who = {"user": "You", "assistant": "Assistant", "system": "System"}[role]
    return (f'<div class="{classes}"><div class="oblix-who">{who}</div>'
            f'<div class="oblix-bubble">{body}</div>{badge}</div>')


def stored_message_html(message: dict) -> str:
    """A stored message (a dict from the session store) as a bubble with its badge."""
    role = message.get("role", "system")
    badge = ""
    if role == "assistant":
        badge = badge_html(message.get("model_id"), message.get("routing"), message.get("metrics"),
                           partial=bool(message.get("partial")))
    return message_html(role, message.get("content", ""), badge=badge, partial=bool(message.get("partial")))


_KEY_RE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,})")


def redact(text: str, client: OblixClient | None = None) -> str:
    """``text`` without API keys: the hooked models' keys and the env's, and anything shaped like one."""
    secrets = {os.environ.get(name) for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    for backend in (getattr(client, "models", None) or {}).values():
        for holder in (backend, getattr(backend, "_client", None)):
            for attr in ("api_key", "_api_key"):
                value = getattr(holder, attr, None) if holder is not None else None
                if isinstance(value, str):
                    secrets.add(value)
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return _KEY_RE.sub(lambda m: m.group(0)[:3] + "***" if m.group(0).startswith("sk-")
                       else m.group(0).split()[0] + " ***", text)


def session_labels(summaries: list[dict], width: int = 60) -> dict[str, str]:
    """``{id: label}``: title · message count · last update (UTC), plus the short id where titles repeat."""
    seen: dict[str, int] = {}
    for s in summaries:
        key = one_line(s.get("title"), width).casefold()
        seen[key] = seen.get(key, 0) + 1
    labels = {}
    for s in summaries:
        title = one_line(s.get("title"), width)
        n = s.get("message_count", 0)
        bits = [title, f"{n} msg{'s' if n != 1 else ''}"]
        when = short_time(s.get("updated_at"))
        if when:
            bits.append(when)
        if seen[title.casefold()] > 1:
            bits.append(f"#{s['id'][:8]}")
        labels[s["id"]] = " · ".join(bits)
    return labels


__all__ = ["badge_html", "message_html", "stored_message_html", "redact", "session_labels", "one_line",
           "short_time", "model_name", "CURSOR"]
