"""Moving sessions between stores: ``python -m oblix_nb migrate --from SOURCE --to TARGET``.

- store to store (``sqlite:PATH`` <-> ``postgresql://...``, either direction, or same engine): sessions are
  streamed in creation order, ``batch`` sessions at a time (each batch read in one snapshot and written in
  one transaction), keeping ids, timestamps, titles, context, metadata and authors exactly.
- a folder of original Oblix SDK session files (``~/.oblix/sessions/*.json``) into either store: each file is
  validated and imported as is (its id kept).

Resumable: a session whose id is already in the target is skipped (never overwritten), so a run that was
interrupted (Ctrl-C, kill -9: only whole batches are ever committed) is finished by running the same command
again. Verified: after each batch the target's stored message rows are counted for every session of the
batch and compared with the source. A session already in the target is compared row by row (and its title,
context and metadata): the same: skipped; an earlier copy of the source's (the same message ids in the same
order, the only differing rows flagged partial in the target, e.g. a reply that was a checkpoint when first
copied and finished in the source since, and the source's ``updated_at`` not older than the target's, e.g. its
metadata updated since): replaced by the source's (counted in ``copied``); any other difference (a finished
message that differs, a target changed after the copy) is reported as a conflict and left as it is
(``MigrationError`` at the end, after everything else was moved). A progress bar (tqdm if installed,
else a line on stderr) shows sessions done out of the total.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import OblixError, SessionExistsError, SessionNotFoundError
from .base import MESSAGE_COLUMNS, SessionStoreBase

DEFAULT_BATCH = 500


class MigrationError(OblixError):
    """A migration finished but its verification found differences (``report`` holds them)."""

    def __init__(self, message: str, report: MigrationReport):
        super().__init__(message)
        self.report = report


@dataclass
class MigrationReport:
    source: str
    target: str
    sessions: int = 0          # sessions seen in the source
    messages: int = 0          # their message rows
    copied: int = 0            # sessions written to the target by this run
    skipped: int = 0           # already in the target with the same messages (an earlier run, or a re-import)
    conflicts: list[str] = field(default_factory=list)  # in the target already, with different messages
    invalid: list[str] = field(default_factory=list)    # folder import: files refused ("path: reason")
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "sessions": self.sessions,
                "messages": self.messages, "copied": self.copied, "skipped": self.skipped,
                "conflicts": self.conflicts, "invalid": self.invalid, "seconds": round(self.seconds, 3)}


class _Progress:
    """tqdm if installed (and ``enabled``), else one updating line on stderr at most twice a second."""

    def __init__(self, total: int, what: str, enabled: bool):
        self.total, self.what, self.done, self.enabled = total, what, 0, enabled
        self._bar = None
        self._shown = 0.0
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, unit=" sessions", desc=what, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and (time.monotonic() - self._shown > 0.5 or self.done >= self.total):
            self._shown = time.monotonic()
            print(f"\r{self.what}: {self.done}/{self.total} sessions", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def _verify(source_counts: dict[str, int], target: SessionStoreBase, report: MigrationReport, inserted: set[str]) -> None:
    stored = target.stored_counts(list(source_counts))
    for session_id, expected in source_counts.items():
        got = stored.get(session_id)
        if got != expected and session_id in inserted:
            raise MigrationError(f"session {session_id}: {expected} messages read but {got} stored", report)


_PARTIAL = MESSAGE_COLUMNS.index("partial")


def _earlier_copy(rows: list[tuple], src_rows: list[tuple]) -> bool:
    """The target's rows are an earlier state of the source's: same ids in the same order, and every row that
    differs is a partial (checkpointed) reply in the target."""
    return len(rows) == len(src_rows) and all(
        row == src or (row[0] == src[0] and row[_PARTIAL]) for row, src in zip(rows, src_rows))


def _not_older(source_updated_at: str, target: SessionStoreBase, session_id: str, strictly: bool = False) -> bool:
    """The source's session was updated no earlier than the target's copy (else the target changed since);
    ``strictly``: later. Both stamps at the precision they are stored with (microseconds): a change in the
    target within the same millisecond as the source's last one still counts as later."""
    from .._util import parse_iso

    try:
        stamp = target.updated_stamp(session_id)
        if stamp is None:
            return False
        source, target_at = parse_iso(source_updated_at), parse_iso(stamp)
    except (ValueError, TypeError, SessionNotFoundError):
        return False
    return source > target_at if strictly else source >= target_at


def _present(records: list[dict], target: SessionStoreBase, report: MigrationReport, inserted: set[str]) -> set[str]:
    """Sessions of the batch the target had already: compared row by row with the source (see the module):
    skipped, replaced (an earlier copy: returns their ids) or reported as conflicts."""
    refreshed: set[str] = set()
    for rec in records:
        if rec["id"] in inserted:
            continue
        try:
            head, rows = target.session_rows(rec["id"])
        except SessionNotFoundError:  # deleted from the target meanwhile: copy it again
            head, rows = None, []
        src_rows = [tuple(row) for row in rec["rows"]]
        same_head = head == {"title": rec["title"], "context": rec["context"], "metadata": rec["metadata"]}
        if same_head and [tuple(row) for row in rows] == src_rows:
            report.skipped += 1
            continue
        # title/context/metadata differ: the source's replace the target's only if the source changed later
        # (a tie is a conflict: nothing of the target's is overwritten on a guess)
        if head is not None and not (_earlier_copy([tuple(row) for row in rows], src_rows)
                                     and _not_older(rec["updated_at"], target, rec["id"], strictly=not same_head)):
            report.conflicts.append(f"{rec['id']}: {len(src_rows)} messages in the source, {len(rows)} in the "
                                    f"target, which differ (not an earlier copy of the source's)")
            continue
        # an earlier copy: the source's current state replaces it (if this stops half way, the session is
        # absent from the target and the next run copies it again)
        target.delete(rec["id"])
        if target.insert_records([rec]):
            refreshed.add(rec["id"])
    return refreshed


def copy_store(source: SessionStoreBase, target: SessionStoreBase, batch: int = DEFAULT_BATCH, progress: bool = True,
               on_batch: Callable[[int], None] | None = None) -> MigrationReport:
    """Copy every session of ``source`` into ``target`` (two open stores, either engine); see the module."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, not {batch!r}")
    report = MigrationReport(source.url, target.url)
    started = time.perf_counter()
    bar = _Progress(source.count(), "migrate", progress)
    try:
        after = 0
        while True:
            records = source.session_records(after, batch)
            if not records:
                break
            after = records[-1]["seq"]
            inserted = set(target.insert_records(records))
            inserted |= _present(records, target, report, inserted)
            report.copied += len(inserted)
            report.sessions += len(records)
            report.messages += sum(len(rec["rows"]) for rec in records)
            _verify({rec["id"]: len(rec["rows"]) for rec in records}, target, report, inserted)
            bar.update(len(records))
            if on_batch is not None:
                on_batch(report.sessions)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    if report.conflicts:
        raise MigrationError(f"{len(report.conflicts)} session(s) already in {target.url} differ from the "
                             f"source and were left as they are: {report.conflicts[:3]}", report)
    return report


def import_folder(folder: str | os.PathLike, target: SessionStoreBase, progress: bool = True) -> MigrationReport:
    """Import every ``*.json`` session file in ``folder`` (the original Oblix SDK's, or ours) into ``target``.

    Ids are kept; a file whose id is already in the target is skipped if its messages match, else reported
    as a conflict. Invalid files are listed in ``report.invalid`` (the others are still imported); a
    MigrationError is raised at the end if there were conflicts or invalid files.
    """
    from .io import expand_path, parse_session_file

    root = expand_path(folder, ValueError, "folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of session files")
    files = sorted(root.glob("*.json"))
    report = MigrationReport(str(root), target.url)
    started = time.perf_counter()
    bar = _Progress(len(files), "import", progress)
    try:
        for path in files:
            report.sessions += 1
            try:
                doc = parse_session_file(path, max_bytes=getattr(target, "max_import_bytes", None))
                report.messages += len(doc["messages"])
                target.import_file(path)
                report.copied += 1
            except SessionExistsError:
                if target.stored_counts([doc["id"]]).get(doc["id"]) == len(doc["messages"]):
                    report.skipped += 1
                else:
                    report.conflicts.append(f"{path}: session {doc['id']} is already in the target with "
                                            f"other messages")
            except (ValueError, TypeError, OSError) as exc:
                report.invalid.append(f"{path}: {exc}")
            bar.update(1)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    if report.conflicts or report.invalid:
        raise MigrationError(f"{len(report.invalid)} invalid file(s), {len(report.conflicts)} conflict(s): "
                             f"{(report.invalid + report.conflicts)[:3]}", report)
    return report


def migrate(source: str, target: str, batch: int = DEFAULT_BATCH, progress: bool = True) -> MigrationReport:
    """``python -m oblix_nb migrate``: ``source`` is a store URL (``sqlite:PATH``, ``postgresql://...``) or a
    folder of session files; ``target`` a store URL. Opens both, moves everything, closes them."""
    from . import open_store
    from .io import expand_path

    target_store = open_store(target)
    try:
        as_path = expand_path(source[len("folder:"):] if source.startswith("folder:") else source, ValueError, "--from")
        if source.startswith("folder:") or ("://" not in source and not source.startswith("sqlite:")
                                            and as_path.is_dir()):
            return import_folder(as_path, target_store, progress=progress)
        if "://" not in source:
            path = expand_path(source[len("sqlite:"):] if source.startswith("sqlite:") else source, ValueError,
                               "--from")
            if not path.is_file():  # never create an empty source
                raise FileNotFoundError(f"no session database at {path}")
        source_store = open_store(source)
        try:
            if getattr(source_store, "url", None) == target_store.url:
                raise ValueError("--from and --to name the same store")
            return copy_store(source_store, target_store, batch=batch, progress=progress)
        finally:
            source_store.close()
    finally:
        target_store.close()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m oblix_nb migrate",
        description="Copy every session from one store to another (SQLite <-> PostgreSQL), or import a folder "
                    "of Oblix session files (~/.oblix/sessions/*.json). Resumable: run it again to finish.")
    parser.add_argument("--from", dest="source", required=True,
                        help="sqlite:PATH, postgresql://user@host:port/db, or a folder of *.json session files")
    parser.add_argument("--to", dest="target", required=True, help="sqlite:PATH or postgresql://...")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="sessions per transaction (500)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        report = migrate(args.source, args.target, batch=args.batch, progress=not args.quiet)
    except MigrationError as exc:
        print(json.dumps(exc.report.as_dict(), indent=2))
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("migrate: interrupted; whole batches already copied stay copied: run the same command again "
              "to finish", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a command line: one clear line, no traceback
        print(f"migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2))
    return 0
