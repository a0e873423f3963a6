"""How a finished reply is shown: ``%%oblix -f markdown|text|code|json|html|math``.

While a reply streams it is shown as Markdown (``text`` and ``json``: plain text); its final display is the
bundle :func:`final_bundle` makes for the format:

========== ===================================================================================================
markdown   ``text/markdown`` plus inert ``text/html`` (see :func:`.display.safe_html`)
code       as markdown; the reply's code also goes into a new cell below
text       ``text/plain`` only
json       the parsed value as ``application/json`` (what ``IPython.display.JSON`` publishes: a collapsible
           tree) with indented JSON as ``text/plain``; the model is held to JSON by the structured-output
           machinery (``--schema``, or any JSON object/array without one)
html       the reply's HTML, sanitised (:func:`.render.sanitize_html`: the Markdown policy for raw HTML)
math       ``text/latex`` for MathJax (:func:`.render.sanitize_latex`); a bare formula without ``$``/``\\[``
           delimiters is wrapped in ``$$ … $$`` (prose is left as text)
========== ===================================================================================================

``html`` and ``math`` add a short instruction to the system message (stored with the exchange).
"""
from __future__ import annotations

import json
import re
from typing import Any

FORMATS = ("markdown", "text", "code", "json", "html", "math")

# A JSON answer when no --schema says more: an object or an array.
ANY_JSON_SCHEMA = {"type": ["object", "array"]}

HINTS = {
    "html": "Answer with an HTML fragment only: no <html>, <head> or <body>, no scripts, styles or images, "
            "no code fences.",
    "math": "Answer with LaTeX only (the formula, no prose and no code fences).",
}

_FENCED = re.compile(r"\A\s*(`{3,}|~{3,})[^\n]*\n(.*?)\n?[ \t]*\1\s*\Z", re.S)
_MATH_DELIMITED = re.compile(r"\$|\\\[|\\\(|\\begin\{")
_PROSE = re.compile(r"[A-Za-z]{2,}[ ,]+[A-Za-z]{2,}[ ,]+[A-Za-z]{2,}")


def unfence(text: str) -> str:
    """The body of a reply that is one fenced block (```html ... ```), else the text itself."""
    m = _FENCED.match(text)
    return m.group(2) if m else text


def latex(text: str) -> str:
    """The reply as ``text/latex``: as is if it has math delimiters; a bare formula wrapped in ``$$ … $$``;
    prose without any (three words in a row, no backslash command) left as text rather than set as math."""
    from .render import sanitize_latex

    body = sanitize_latex(unfence(text).strip())
    if _MATH_DELIMITED.search(body) or ("\\" not in body and _PROSE.search(body)):
        return body
    return f"$$ {body} $$"


def stream_format(fmt: str) -> str:
    """How the text is shown while it streams: "markdown" or "text"."""
    return "text" if fmt in ("text", "json") else "markdown"


def plain(value: Any) -> Any:
    """A parsed structured value as plain JSON data (pydantic models dumped)."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def final_bundle(fmt: str, text: str, parsed: Any = None, *, has_parsed: bool = False) -> dict | None:
    """The final display's MIME bundle for ``fmt``; None means the default (Markdown / text) display."""
    if fmt == "json" and has_parsed:
        value = plain(parsed)
        pretty = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        if isinstance(value, (dict, list)):
            from IPython.display import JSON

            data, _ = JSON(value)._repr_json_()  # what display(JSON(value)) publishes
            return {"application/json": data, "text/plain": pretty}
        return {"text/plain": pretty}
    if fmt == "html":
        from .render import sanitize_html

        return {"text/html": sanitize_html(unfence(text)), "text/plain": text}
    if fmt == "math":
        return {"text/latex": latex(text), "text/plain": text}
    return None
