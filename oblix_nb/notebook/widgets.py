"""The chat panel and the session browser: they live in :mod:`oblix_nb.widgets` (anywidget front ends);
this module keeps the old import path working (``from oblix_nb.notebook.widgets import ChatPanel``)."""
from __future__ import annotations

from ..widgets.browser import SessionBrowser, parse_metadata_filter, show_session_browser
from ..widgets.chat import ChatPanel, chat_handler, show_chat_panel
from ..widgets.html import badge_html, message_html, redact, stored_message_html

__all__ = ["ChatPanel", "SessionBrowser", "show_chat_panel", "show_session_browser", "chat_handler",
           "badge_html", "message_html", "stored_message_html", "parse_metadata_filter", "redact"]
