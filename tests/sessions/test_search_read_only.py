"""Search on a read-only home (issue 20, item 13): messages and titles the writer committed but had not indexed
yet are found too (they were missed: 0 hits instead of 1). A real read-only tmpfs (root mounts it; skipped, with
the reason, elsewhere)."""
from __future__ import annotations

import subprocess

import pytest

from oblix_nb.sessions.sqlite.store import SqliteSessionStore as SessionStore


def tmpfs_or_skip(path, size="4m"):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with mount permission): {done.stderr.strip()}")


def test_read_only_search_finds_what_was_not_indexed(tmp_path):
    home = tmp_path / "home"
    tmpfs_or_skip(home)
    try:
        store = SessionStore(home / "sessions.db")
        indexed = store.create(title="indexed apples")
        store.append_message(indexed, "user", "indexed pears and apples")
        assert len(store.search("pears")) == 1  # indexed while writable
        store.background_index = False  # a writer that stops before indexing (killed, or a bulk import)
        fresh = store.create(title="fresh bananas")
        store.append_message(fresh, "user", "unindexed mangoes running")
        store.append_message(indexed, "assistant", "also mangoes here")
        store.close()  # closing does not index
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True, capture_output=True)
        ro = SessionStore(home / "sessions.db")
        try:
            assert ro.read_only
            hits = ro.search("mangoes")
            assert sorted(h["id"] for h in hits) == sorted([indexed, fresh])
            assert all(h["matches"] and "**mangoes**" in h["matches"][0]["snippet"] for h in hits)
            assert [h["id"] for h in ro.search("run")] == [fresh]  # stemmed, as the index is
            assert [h["id"] for h in ro.search("bananas")] == [fresh]  # a title not indexed yet
            assert [h["id"] for h in ro.search("pears")] == [indexed]  # the index still answers
            assert [h["id"] for h in ro.search("apples", limit=1)] == [indexed]
            assert ro.search("nowhere") == []
        finally:
            ro.close()
    finally:
        subprocess.run(["umount", "-l", str(home)], capture_output=True)
