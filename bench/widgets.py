"""Widgets' data path at scale: the session browser's pages and the live-refresh poll.

    python bench/widgets.py [--sessions 100000] [--dir DIR]

Prints one JSON document: ``rows`` of ``{"metric", "ours_ms", "baseline_ms", "ratio", "target_ms", "ok"}``
(medians of repeated calls, in one process). The data: ``--sessions`` sessions of 10 messages (replies from
one of three models) loaded through the store's insert path. Rows:

- ``poll (nothing changed)``: what the live refresh costs each tick while nothing changes —
  :meth:`SessionStore.change_token` — against the baseline of re-reading the browser's page every tick
  (``SessionBrowser.refresh()``, what a poller without a change token would do). ``ratio`` = baseline / ours.
- the browser's page reads (``refresh()``: count, page of summaries, model mix, grid rows) for page 1, the
  last page, each sort order and a title filter; and the chat panel's picker (50 labelled sessions).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sessions import EPOCH, MESSAGES_PER_SESSION, content, median_ms, metadata_for, role, row  # noqa: E402

from oblix_nb import OblixClient  # noqa: E402
from oblix_nb._util import iso  # noqa: E402
from oblix_nb.sessions.store import _update_stamp  # noqa: E402

MODELS = ("llamacpp:smollm2-135m", "openai:gpt-4o-mini", "ollama:llama3.2")


def load(store, n: int, chunk: int = 1000) -> None:
    for start in range(0, n, chunk):
        with store._write() as conn:
            for i in range(start, min(n, start + chunk)):
                t = EPOCH + timedelta(seconds=i)
                rows = [(str(uuid.uuid4()), role(j), content(i, j), iso(t + timedelta(milliseconds=j)),
                         MODELS[i % 3] if role(j) == "assistant" else None, None, None, None, None, None)
                        for j in range(MESSAGES_PER_SESSION)]
                store._insert_session(conn, str(uuid.uuid4()), f"Session {i % 5000}", iso(t),
                                      _update_stamp(t + timedelta(milliseconds=MESSAGES_PER_SESSION)),
                                      {}, metadata_for(i), rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--dir", help="keep the database here (default: a temporary folder, removed)")
    args = ap.parse_args()
    from oblix_nb.widgets.browser import MODELS_SORT_LIMIT, SessionBrowser
    from oblix_nb.widgets.chat import ChatPanel

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="oblix-bench-widgets-"))
    try:
        client = OblixClient(home=base)
        if client.sessions.count() < args.sessions:
            load(client.sessions, args.sessions - client.sessions.count())
        b = SessionBrowser(client, follow_store=False)
        rows = []
        refresh = median_ms(lambda k: b.refresh(), 15)
        rows.append(row("poll (nothing changed) vs re-reading the page", median_ms(
            lambda k: client.sessions.change_token(), 2000), refresh, 1.0))
        rows.append(row("browser page 1 (newest first)", refresh, None, 100))
        b.go_to_page(b.pages - 1)
        rows.append(row("browser last page", median_ms(lambda k: b.refresh(), 10), None, 100))
        b.go_to_page(0)
        for column in ("title", "messages", "models"):
            if column == "models" and b.total > MODELS_SORT_LIMIT:
                continue  # refused above the limit (see MODELS_SORT_LIMIT); run with --sessions 20000
            b.sort_by(column)
            rows.append(row(f"browser page 1 sorted by {column}", median_ms(lambda k: b.refresh(), 5), None, 500))
        b.sort_by("updated")
        b.set_filters(title="Session 42")
        rows.append(row("browser title filter (substring)", median_ms(lambda k: b.refresh(), 10), None, 500))
        b.set_filters(title="", metadata="project=p7")
        rows.append(row("browser metadata filter (1% match)", median_ms(lambda k: b.refresh(), 10), None, 100))
        panel = ChatPanel(client, follow_store=False)
        rows.append(row("chat picker (50 labelled sessions)", median_ms(lambda k: panel._refresh_picker(), 50),
                        None, 20))
        print(json.dumps({"benchmark": "widgets", "sessions": client.sessions.count(),
                          "python": platform.python_version(), "rows": rows}, indent=1))
        client.sessions.close()
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
