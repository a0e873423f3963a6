"""SessionBrowser: the session store as a data grid, as an anywidget (``browser.js`` + ``browser.css``).

    from oblix_nb.widgets import SessionBrowser
    SessionBrowser()

A page (``page_size``, default 25) of sessions at a time, read with SQL ``LIMIT``/``OFFSET`` — a store of
100k sessions pages as fast as one of 100. Columns: title, updated, messages, models (the model mix) and
metadata, plus any column a row carries that is listed in :data:`COLUMNS` (``cost``, once summaries have
it); title, updated, messages and models sort (click the header; again to reverse; models up to
:data:`MODELS_SORT_LIMIT` matching sessions). Filters: title
substring, metadata ``k=v`` with JSON-typed values, full text (FTS5). Rows are multi-selectable (click,
Ctrl/Cmd-click, Shift-click, or the checkboxes); the selection's transcript shows below; actions on it: open
in a chat panel, export (the absolute path written is shown), copy, merge, delete (after a confirm step).
Each action's status line replaces the previous one and clears on the next action.

The grid follows the store (:mod:`.live`): sessions made, changed or deleted by anything sharing it
(``%%oblix``, code, another kernel) show within about a second; nothing is re-read while nothing changed.
"""
from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets
from ipywidgets import widget_serialization

from .. import runtime
from ..notebook import render, state
from ..notebook.parsers import parse_pairs_text
from ..notebook.render import escape
from ..pricing import format_cost
from .chat import ChatPanel
from .html import model_name, one_line, short_time, stored_message_html
from .live import watch

if TYPE_CHECKING:
    from ..client import OblixClient

HERE = Path(__file__).parent

# (key, header, sort order for SessionStore.summaries or None). A row key missing from every row of the page
# (e.g. "cost" until the store reports it) hides its column.
COLUMNS = (
    ("title", "Title", "title"),
    ("updated", "Updated (UTC)", "updated"),
    ("messages", "Messages", "messages"),
    ("models", "Models", "models"),
    ("cost", "Cost", None),
    ("metadata", "Metadata", None),
)
OPTIONAL_COLUMNS = ("cost",)
# Sorting by model reads the replies of every matching session (no index serves it): offered up to this many
# matching sessions (~0.3 s at 20,000 on a loaded 2-core machine); filter first beyond that.
MODELS_SORT_LIMIT = 20_000


def parse_metadata_filter(text: str) -> dict:
    """``"project=alpha n=3 tags='[\"a\"]'"`` → ``{"project": "alpha", "n": 3, "tags": ["a"]}``.

    The one tokenizer of the magics splits it (:func:`oblix_nb.notebook.parsers.split_line`: quotes, brackets
    and ``=`` inside values as in ``%oblix_session list --filter``) and values keep their JSON type
    (:mod:`oblix_nb.notebook.kv`). ValueError on a token that is not ``key=value`` or an unterminated quote.
    """
    return parse_pairs_text(text)


class SessionBrowser(anywidget.AnyWidget):
    """Browse, sort, filter, page through and act on the sessions of ``client`` (default: the kernel's client).

    Python API: :meth:`refresh`, :meth:`set_filters` (or set the ``title_filter``, ``meta_filter``,
    ``text_filter`` traits), :meth:`apply_filters`, :meth:`clear_filters`, :meth:`sort_by`,
    :meth:`go_to_page`, :meth:`select`, :meth:`open_selected`, :meth:`export_selected`,
    :meth:`copy_selected`, :meth:`merge_selected`, :meth:`delete_selected` + :meth:`confirm_delete` /
    :meth:`cancel_delete`, :meth:`model_mix`; ``page`` (0-based), ``pages``, ``total``, ``rows`` (the page's
    summaries), ``selected_ids``, ``status``, ``detail_html``, ``chat_panel`` (where "Open in chat" opens
    sessions: the given panel, else one made below the grid).
    """

    # keys.js (shared: notebook shortcuts stay out of the widget) in front of browser.js, as common.css is
    _esm = (HERE / "keys.js").read_text(encoding="utf-8") + (HERE / "browser.js").read_text(encoding="utf-8")
    _css = (HERE / "common.css").read_text(encoding="utf-8") + (HERE / "browser.css").read_text(encoding="utf-8")

    columns = traitlets.List(traitlets.Dict()).tag(sync=True)
    grid = traitlets.List(traitlets.Dict()).tag(sync=True)       # the page's rows as shown
    sort = traitlets.Unicode("updated").tag(sync=True)
    descending = traitlets.Bool(True).tag(sync=True)
    page = traitlets.Int(0).tag(sync=True)
    pages = traitlets.Int(1).tag(sync=True)
    total = traitlets.Int(0).tag(sync=True)
    filtered = traitlets.Bool(False).tag(sync=True)
    selected = traitlets.List(traitlets.Unicode()).tag(sync=True)
    title_filter = traitlets.Unicode("").tag(sync=True)
    meta_filter = traitlets.Unicode("").tag(sync=True)
    text_filter = traitlets.Unicode("").tag(sync=True)
    export_path = traitlets.Unicode("").tag(sync=True)
    detail_html = traitlets.Unicode("").tag(sync=True)
    confirm = traitlets.List(traitlets.Unicode()).tag(sync=True)  # ids a delete waits to be confirmed for
    status = traitlets.Unicode("").tag(sync=True)
    status_error = traitlets.Bool(False).tag(sync=True)
    chat_panel = traitlets.Instance(ChatPanel, allow_none=True).tag(sync=True, **widget_serialization)
    chat_inline = traitlets.Bool(False).tag(sync=True)  # the chat panel was made here: show it below the grid

    def __init__(self, client: OblixClient | None = None, *, page_size: int = 25, chat_panel: ChatPanel | None = None,
                 search_limit: int = 500, detail_messages: int = 100, follow_store: bool = True):
        super().__init__()
        self._unwatch: Callable[[], object] = lambda: None
        self.client = client if client is not None else state.get_client()
        self.page_size = page_size
        self.search_limit = search_limit
        self.detail_messages = detail_messages
        self.rows: list[dict] = []
        self._lock = threading.RLock()
        self._quiet = False  # True while traits are set from here (their observers must not act)
        self.chat_panel = chat_panel
        self.on_msg(self._on_front_end)
        self.observe(self._on_filter_trait, names=["title_filter", "meta_filter", "text_filter"])
        self.observe(self._on_selected, names="selected")
        self.refresh()
        if follow_store:
            self._unwatch = watch(self.client.sessions, self._on_store_change)

    def __repr__(self) -> str:  # the text/plain fallback of the widget's display
        return f"<SessionBrowser page {self.page + 1} of {self.pages}, {self.total} sessions>"

    @property
    def selected_ids(self) -> list[str]:
        return list(self.selected)

    # ------------------------------------------------------------------ status
    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status_error = error
        self.status = text

    def _action(self) -> None:
        """Every action starts here: the previous action's status line goes away."""
        self._set_status("")

    # ------------------------------------------------------------------ reading the page
    def model_mix(self, session_ids: Iterable[str]) -> dict[str, Counter]:
        """``{session_id: Counter(model_id -> assistant replies)}`` for the given (visible) sessions."""
        counts = self.client.sessions.model_counts(list(session_ids))
        return {sid: Counter(c) for sid, c in counts.items()}

    def _filters(self) -> tuple[str, dict, str]:
        return self.title_filter.strip(), parse_metadata_filter(self.meta_filter), self.text_filter.strip()

    def _grid_row(self, summary: dict, mix: Counter) -> dict:
        meta = summary.get("metadata") or {}
        row = {"id": summary["id"],
               "title": one_line(summary.get("title"), 200),
               "updated": short_time(summary.get("updated_at")),
               "messages": summary.get("message_count", 0),
               "models": ", ".join(f"{model_name(m)}×{n}" for m, n in mix.most_common()) or "—",
               "metadata": one_line(" ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()),
                                    200) or "—"}
        for key in OPTIONAL_COLUMNS:
            if summary.get(key) is not None:
                row[key] = summary[key]
        return row

    def refresh(self, select: Iterable[str] | None = None) -> None:
        """Re-read the current page with the current filters and sort (and select ``select`` where visible)."""
        with self._lock:
            try:
                title_q, meta, text_q = self._filters()
            except ValueError as exc:
                self._set_status(str(exc), error=True)
                return
            store = self.client.sessions
            meta_arg = meta or None
            if text_q:
                candidates = self.client.search_sessions(text_q, limit=self.search_limit)
                if meta_arg or title_q:
                    allowed = {s["id"] for s in store.summaries(limit=None, filter_metadata=meta_arg,
                                                                title_contains=title_q or None)}
                    candidates = [c for c in candidates if c["id"] in allowed]
                total = len(candidates)
            else:
                total = store.count(filter_metadata=meta_arg, title_contains=title_q or None)
            if self.sort == "models" and total > MODELS_SORT_LIMIT:
                self.sort, self.descending = "updated", True
                self._set_status(f"sorted by updated: sorting by models needs at most {MODELS_SORT_LIMIT:,} "
                                 f"matching sessions (filter first)")
            pages = max(1, -(-total // self.page_size))
            page = min(self.page, pages - 1)
            offset = page * self.page_size
            if text_q:
                rows = candidates[offset: offset + self.page_size]
            else:
                rows = store.summaries(limit=self.page_size, filter_metadata=meta_arg, offset=offset,
                                       title_contains=title_q or None, order=self.sort,
                                       descending=self.descending)
            self.rows = rows
            mix = self.model_mix(r["id"] for r in rows)
            costs = store.session_costs([r["id"] for r in rows])  # only sessions with a known cost
            rows = [{**r, "cost": format_cost(costs[r["id"]])} if r["id"] in costs else r for r in rows]
            grid = [self._grid_row(r, mix.get(r["id"], Counter())) for r in rows]
            visible = {r["id"] for r in rows}
            wanted = [sid for sid in (select if select is not None else self.selected) if sid in visible]
            shown = {key for row in grid for key in row}
            columns = [{"key": key, "label": label,
                        "sortable": order is not None and not text_q and (order != "models" or
                                                                          total <= MODELS_SORT_LIMIT)}
                       for key, label, order in COLUMNS if key not in OPTIONAL_COLUMNS or key in shown]
            self._quiet = True
            try:
                with self.hold_sync():
                    self.total, self.pages, self.page = total, pages, page
                    self.filtered = bool(text_q or title_q or meta)
                    if columns != self.columns:
                        self.columns = columns
                    if grid != self.grid:
                        self.grid = grid
                    if wanted != list(self.selected):
                        self.selected = wanted
            finally:
                self._quiet = False
            if self.confirm and set(self.confirm) != set(self.selected):
                self.confirm = []
            self._show_detail()

    def _on_store_change(self) -> None:
        self.refresh()

    # ------------------------------------------------------------------ filters, sort, pages
    def _on_filter_trait(self, _change) -> None:
        if not self._quiet:
            self.apply_filters()

    def set_filters(self, title: str | None = None, metadata: str | None = None,
                    text: str | None = None) -> None:
        """Set any of the three filters (None leaves one as it is) and show the first matching page."""
        self._quiet = True
        try:
            if title is not None:
                self.title_filter = title
            if metadata is not None:
                self.meta_filter = metadata
            if text is not None:
                self.text_filter = text
        finally:
            self._quiet = False
        self.apply_filters()

    def apply_filters(self) -> None:
        self._action()
        self.page = 0
        self.confirm = []
        self.refresh()

    def clear_filters(self) -> None:
        self.set_filters("", "", "")

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        """Sort by a sortable column (``title``, ``updated``, ``messages``, ``models``); the same column again
        without ``descending`` reverses the order. ValueError for another column."""
        orders = {key: order for key, _label, order in COLUMNS if order}
        if column not in orders:
            raise ValueError(f"cannot sort by {column!r}: one of {sorted(orders)}")
        self._action()
        if orders[column] == "models" and self.total > MODELS_SORT_LIMIT:
            self._set_status(f"sorting by models needs at most {MODELS_SORT_LIMIT:,} matching sessions: "
                             f"filter first ({self.total:,} match now)", error=True)
            return
        if descending is None:
            descending = not self.descending if orders[column] == self.sort else column in ("updated", "messages")
        self.sort, self.descending = orders[column], descending
        self.page = 0
        self.refresh()

    def go_to_page(self, page: int) -> None:
        self._action()
        self.page = min(max(0, int(page)), self.pages - 1)
        self.confirm = []
        self.refresh(select=())

    # ------------------------------------------------------------------ selection
    def _on_selected(self, _change) -> None:
        if self._quiet:
            return
        self._action()  # a new selection is a new action: the last one's status goes
        visible = {r["id"] for r in self.rows}
        kept = [sid for sid in self.selected if sid in visible]
        if kept != list(self.selected):
            self._quiet = True
            try:
                self.selected = kept
            finally:
                self._quiet = False
        if self.confirm and set(self.confirm) != set(self.selected):
            self.cancel_delete()
        self._show_detail()

    def select(self, session_ids: Iterable[str]) -> None:
        """Select these sessions (those on the current page)."""
        self.selected = list(session_ids)

    def _show_detail(self) -> None:
        ids = self.selected_ids
        if not ids:
            html = ('<p class="oblix-hint">Select a session to read its transcript (Ctrl/Cmd- or Shift-click, '
                    'or the checkboxes, select several for merge or delete).</p>')
        elif len(ids) > 1:
            titles = {r["id"]: r.get("title") for r in self.rows}
            items = "".join(f"<li>{escape(titles.get(sid, sid))} <span class='oblix-id'>{escape(sid)}</span></li>"
                            for sid in ids)
            html = f"<h4>{len(ids)} sessions selected</h4><ul>{items}</ul>"
        else:
            html = self._transcript_html(ids[0])
        if html != self.detail_html:
            self.detail_html = html

    def _transcript_html(self, sid: str) -> str:
        try:
            session = self.client.load_session(sid)
        except KeyError:
            return f"<p><i>session {escape(sid)} no longer exists</i></p>"
        messages = session["messages"]
        hidden = max(0, len(messages) - self.detail_messages)
        parts = [f"<h4>{escape(session['title'])}</h4>",
                 f"<p class='oblix-id'>{escape(sid)} · created {escape(short_time(session['created_at']))}"
                 f" · updated {escape(short_time(session['updated_at']))} · {len(messages)} messages</p>"]
        if session.get("metadata"):
            parts.append(f"<pre class='oblix-meta'>"
                         f"{escape(json.dumps(session['metadata'], indent=1, ensure_ascii=False))}</pre>")
        hit = next((r for r in self.rows if r["id"] == sid and r.get("matches")), None)
        if hit:
            parts += [f"<p class='oblix-snippet'>[{escape(m.get('role'))}] {render.markdown_inline(m.get('snippet'))}"
                      f"</p>" for m in hit["matches"]]
        if hidden:
            parts.append(f"<p class='oblix-hint'>… {hidden} earlier messages not shown</p>")
        parts += [stored_message_html(m) for m in messages[hidden:]]
        return "\n".join(parts)

    # ------------------------------------------------------------------ actions
    def _need(self, n: int, what: str) -> list[str] | None:
        self._action()
        ids = self.selected_ids
        if len(ids) < n:
            self._set_status(f"{what}: select {'a session' if n == 1 else f'at least {n} sessions'} first",
                             error=True)
            return None
        return ids

    def open_selected(self) -> ChatPanel | None:
        """Open the (first) selected session in the chat panel (made below the grid if none was given)."""
        ids = self._need(1, "open")
        if ids is None:
            return None
        if self.chat_panel is None:
            self.chat_panel = ChatPanel(self.client, ids[0])
            self.chat_inline = True
        else:
            self.chat_panel.select_session(ids[0])
        self._set_status(f"opened “{one_line(self._title(ids[0]), 60)}” in the chat panel")
        return self.chat_panel

    def _title(self, sid: str) -> str:
        return next((r.get("title") or sid for r in self.rows if r["id"] == sid), sid)

    def export_selected(self, path: str | None = None) -> list[Path]:
        """Export the selection: one session to ``path`` (a .json file); several into ``path`` as a folder.
        Returns the absolute paths written (also shown in the status line)."""
        ids = self._need(1, "export")
        if ids is None:
            return []
        target = (path if path is not None else self.export_path).strip()
        if not target:
            target = f"{ids[0]}.json" if len(ids) == 1 else "exports"
        target_path = Path(target).expanduser()
        if len(ids) == 1 and not target.endswith(("/", os.sep)) and not target_path.is_dir():
            files = [target_path]
        else:
            files = [target_path / f"{sid}.json" for sid in ids]
        files = [f.resolve() for f in files]
        try:
            for sid, file in zip(ids, files):
                runtime.run(self.client.export_session(sid, str(file)))
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._set_status(f"export failed: {type(exc).__name__}: {exc}", error=True)
            return []
        self._set_status("exported to " + ", ".join(str(f) for f in files))
        return files

    def copy_selected(self) -> list[str]:
        ids = self._need(1, "copy")
        if ids is None:
            return []
        copies = [runtime.run(self.client.copy_session(sid)) for sid in ids]
        self._show_first_page(copies)
        self._set_status(f"copied {len(copies)} session{'s' if len(copies) != 1 else ''}")
        return copies

    def merge_selected(self, title: str | None = None) -> str | None:
        ids = self._need(2, "merge")
        if ids is None:
            return None
        merged = runtime.run(self.client.merge_sessions(ids, title=title))
        self._show_first_page([merged])
        self._set_status(f"merged {len(ids)} sessions into “{one_line(self._title(merged), 60)}”")
        return merged

    def _show_first_page(self, select: list[str]) -> None:
        """Newest first, page 1: where new sessions (copies, merges) are; select them."""
        self.sort, self.descending, self.page = "updated", True, 0
        self.refresh(select=select)

    def delete_selected(self) -> None:
        """First step of delete: ask for confirmation (``confirm_delete`` deletes, ``cancel_delete`` doesn't)."""
        ids = self._need(1, "delete")
        if ids is None:
            return
        self.confirm = ids
        self._set_status("deleting cannot be undone (export first if unsure)")

    def confirm_delete(self) -> int:
        self._action()
        ids, self.confirm = list(self.confirm), []
        deleted = sum(bool(self.client.delete_session(sid)) for sid in ids)
        panel = self.chat_panel
        if panel is not None and panel.session_id in ids and not panel.busy:
            panel.new_session(quiet=True)
        self.refresh(select=())
        self._set_status(f"deleted {deleted} session{'s' if deleted != 1 else ''}")
        return deleted

    def cancel_delete(self) -> None:
        if self.confirm:
            self._set_status("delete cancelled")
        self.confirm = []

    # ------------------------------------------------------------------ the front end
    def _on_front_end(self, _widget, content: Any, _buffers) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        actions: dict[Any, Callable[[], Any]]
        actions = {"open": self.open_selected, "copy": self.copy_selected, "merge": self.merge_selected,
                   "delete": self.delete_selected, "confirm_delete": self.confirm_delete,
                   "cancel_delete": self.cancel_delete, "refresh": self._refresh_action,
                   "apply": self.apply_filters, "clear": self.clear_filters}
        try:
            if kind == "export":
                self.export_selected(content.get("path"))
            elif kind == "sort":
                self.sort_by(str(content.get("column")))
            elif kind == "page":
                self.go_to_page(int(content.get("page", 0)))
            elif kind == "filters":
                self.set_filters(content.get("title"), content.get("metadata"), content.get("text"))
            elif kind in actions:
                actions[kind]()
        except Exception as exc:  # noqa: BLE001 - shown in the status line, not lost in the kernel log
            self._set_status(f"{kind}: {type(exc).__name__}: {exc}", error=True)

    def _refresh_action(self) -> None:
        self._action()
        self.refresh()

    def close(self) -> None:
        getattr(self, "_unwatch", lambda: None)()
        super().close()


def show_session_browser(client: OblixClient | None = None, **kwargs: Any) -> SessionBrowser:
    """Display a :class:`SessionBrowser` in the current cell and return it."""
    from IPython.display import display

    browser = SessionBrowser(client, **kwargs)
    display(browser)
    return browser


__all__ = ["SessionBrowser", "show_session_browser", "parse_metadata_filter", "COLUMNS"]
