"""``migrate`` run again after the source changed in place (issue 20, item 12): a reply that was a checkpoint
(partial) when first copied and finished in the source since is brought up to date in the target; any other
difference in a session already in the target is reported as a conflict, never silently skipped."""
from __future__ import annotations

import pytest

from oblix_nb.sessions import open_store
from oblix_nb.sessions.transfer import MigrationError, copy_store


@pytest.fixture(params=["sqlite_to_target", "target_to_sqlite"])
def pair(request, tmp_path, store_url):
    a = open_store(f"sqlite:{tmp_path / 'src.db'}")
    b = open_store(store_url)
    source, target = (a, b) if request.param == "sqlite_to_target" else (b, a)
    yield source, target
    a.close()
    b.close()


def test_a_finished_checkpoint_is_updated_on_rerun(pair):
    source, target = pair
    sid = source.create(title="streaming")
    source.append_message(sid, "user", "question")
    source.upsert_message(sid, "assistant", "partial ans", id="reply", partial=True,
                          metrics={"finish_reason": "interrupted"})
    other = source.create(title="untouched")
    source.append_message(other, "user", "hi")
    first = copy_store(source, target, progress=False)
    assert first.copied == 2
    # the reply finishes in the source: same id, same message count
    source.upsert_message(sid, "assistant", "partial answer, now complete", id="reply",
                          metrics={"finish_reason": "stop", "output_tokens": 5})
    again = copy_store(source, target, progress=False)
    assert again.conflicts == [] and (again.copied, again.skipped) == (1, 1)
    assert target.get(sid)["messages"] == source.get(sid)["messages"]
    assert "partial" not in target.messages(sid)[-1]
    third = copy_store(source, target, progress=False)
    assert (third.copied, third.skipped) == (0, 2)


def test_metadata_updated_in_the_source_is_carried_over(pair):
    source, target = pair
    sid = source.create(title="done", metadata={"k": 1})
    source.append_message(sid, "user", "question")
    copy_store(source, target, progress=False)
    source.update_metadata(sid, {"k": 2, "tag": "x"})
    again = copy_store(source, target, progress=False)
    assert again.conflicts == [] and again.copied == 1
    assert target.get_metadata(sid) == {"k": 2, "tag": "x"}


@pytest.mark.parametrize("change", ["finished_row_in_source", "metadata_in_target", "message_in_target"])
def test_other_differences_are_conflicts(pair, change):
    source, target = pair
    sid = source.create(title="done", metadata={"k": 1})
    source.append_message(sid, "user", "question")
    source.upsert_message(sid, "assistant", "final answer", id="reply")
    copy_store(source, target, progress=False)
    if change == "finished_row_in_source":  # a finished (not partial) row differs: not an earlier copy
        source.upsert_message(sid, "assistant", "edited answer", id="reply")
    elif change == "metadata_in_target":  # the target changed after the copy
        target.update_metadata(sid, {"k": 3})
    else:
        target.append_message(sid, "user", "only in the target")
    before = target.get(sid)
    with pytest.raises(MigrationError) as info:
        copy_store(source, target, progress=False)
    assert len(info.value.report.conflicts) == 1 and sid in info.value.report.conflicts[0]
    assert target.get(sid) == before  # left as it was


def test_the_stamps_compared_keep_their_microseconds(store):
    """What migrate compares is the stored stamp, not summary()'s millisecond one: a target changed within the
    same millisecond as the source's last change still counts as changed later (a conflict, not overwritten)."""
    sid = store.create(title="t")
    stamp = store.updated_stamp(sid)
    assert stamp is not None and len(stamp.split(".")[1].rstrip("Z")) == 6
    assert store.summary(sid)["updated_at"].startswith(stamp[:23])
    assert store.updated_stamp("no-such-session") is None
