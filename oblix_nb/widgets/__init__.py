"""The notebook widgets, on anywidget: :class:`ChatPanel` and :class:`SessionBrowser`.

Each widget is one Python module with its front end next to it (an ES module and CSS, shipped in the
package; no build step): ``chat.py`` + ``chat.js`` + ``chat.css``, ``browser.py`` + ``browser.js`` +
``browser.css``; ``common.css`` is shared, :mod:`.html` makes the (inert) message HTML, :mod:`.live` follows
the session store. Imported only when used: ``import oblix_nb`` stays light.
"""
from __future__ import annotations

__all__ = ["ChatPanel", "SessionBrowser", "show_chat_panel", "show_session_browser", "chat_handler"]


def __getattr__(name: str):
    if name in ("ChatPanel", "show_chat_panel", "chat_handler"):
        from . import chat
        return getattr(chat, name)
    if name in ("SessionBrowser", "show_session_browser"):
        from . import browser
        return getattr(browser, name)
    raise AttributeError(f"module 'oblix_nb.widgets' has no attribute {name!r}")
