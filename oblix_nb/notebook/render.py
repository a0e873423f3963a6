"""Safe rendering of untrusted text (model output, session titles, metadata) into HTML for widgets.

ipywidgets' ``HTML`` widget sets ``innerHTML`` without sanitising, so everything that reaches it must already be
inert. Model output is Markdown rendered by markdown-it-py with raw HTML **escaped** (``html: False``), so
``<script>``, ``<img onerror=…>``, ``<svg onload=…>`` or ``<iframe>`` show as text. Links are kept only for
``http``, ``https`` and ``mailto`` URLs (anything else — ``javascript:``, ``vbscript:``, ``data:``, ``file:``,
relative paths — stays literal text) and open in a new tab with ``rel="noopener noreferrer nofollow"``.
Images are never loaded (no tracking pixels, no requests to hosts the model chose): ``![alt](url)`` becomes a
link labelled ``[image: alt]``. Plain strings (titles, badges) go through :func:`escape`.

markdown-it-py is imported on first use.
"""
from __future__ import annotations

import html
import re
from typing import Any, Optional

ALLOWED_SCHEMES = ("http", "https", "mailto")
_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.\-]*):", re.I)
# C0 controls, DEL, whitespace and invisible format characters that browsers strip or ignore inside a scheme
_IGNORED_IN_URL = re.compile(r"[\x00-\x20\x7f\u00ad\u200b-\u200f\u2028\u2029\u2060\ufeff]")

_md = None


def escape(text: Any) -> str:
    """``html.escape`` for any value (None → ""), quotes included: safe in element text and attributes."""
    return html.escape("" if text is None else str(text), quote=True)


def is_safe_url(url: str) -> bool:
    """True for absolute ``http:``, ``https:`` and ``mailto:`` URLs only."""
    if not isinstance(url, str):
        return False
    cleaned = _IGNORED_IN_URL.sub("", html.unescape(url))
    match = _SCHEME_RE.match(cleaned)
    if not match or match.group(1).lower() not in ALLOWED_SCHEMES:
        return False
    if match.group(1).lower() != "mailto" and not cleaned[match.end():].startswith("//"):
        return False
    return True


def _renderer():
    global _md
    if _md is None:
        from markdown_it import MarkdownIt

        md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False})
        md.enable(["table", "strikethrough"])
        md.validateLink = is_safe_url  # type: ignore[method-assign]

        def link_open(self, tokens, idx, options, env):
            token = tokens[idx]
            token.attrSet("target", "_blank")
            token.attrSet("rel", "noopener noreferrer nofollow")
            return self.renderToken(tokens, idx, options, env)

        def image(self, tokens, idx, options, env):
            token = tokens[idx]
            src = token.attrGet("src") or ""
            alt = self.renderInlineAsText(token.children or [], options, env) or "image"
            return (f'<a href="{escape(src)}" target="_blank" rel="noopener noreferrer nofollow" '
                    f'class="oblix-image-link" title="image (not loaded)">[image: {escape(alt)}]</a>')

        md.add_render_rule("link_open", link_open)
        md.add_render_rule("image", image)
        _md = md
    return _md


def markdown(text: Optional[str]) -> str:
    """Untrusted Markdown → inert HTML (raw HTML escaped, only http/https/mailto links, no images loaded)."""
    if not text:
        return ""
    return _renderer().render(str(text))


def markdown_inline(text: Optional[str]) -> str:
    """Like :func:`markdown` for one line (no wrapping ``<p>``): search snippets with ``**bold**`` matches."""
    if not text:
        return ""
    return _renderer().renderInline(str(text))


__all__ = ["escape", "markdown", "markdown_inline", "is_safe_url", "ALLOWED_SCHEMES"]
