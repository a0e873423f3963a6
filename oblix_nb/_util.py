"""Small shared helpers: timestamps, ids and the current user."""
from __future__ import annotations

import getpass
import os
import re
import signal
import uuid
from datetime import datetime, timezone

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(dt: datetime) -> datetime:
    """``dt`` in UTC (naive means UTC). ValueError (never OverflowError) if its offset moves it outside years
    1-9999."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=timezone.utc)
    try:
        return dt.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"timestamp {dt.isoformat()} is outside years 1-9999 in UTC") from None


def iso(dt: datetime | None = None) -> str:
    """ISO 8601 UTC with millisecond precision and a ``Z`` suffix: ``2023-07-15T14:30:22.123Z``.

    Years below 1000 keep their leading zeros (``0999-...``), so every stamp parses back to itself.
    """
    dt = to_utc(dt) if dt is not None else utcnow()
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}."
            f"{dt.microsecond // 1000:03d}Z")


def parse_iso(value: str | datetime) -> datetime:
    """Parse ISO 8601 (``Z`` or ``+00:00`` or naive = UTC) into an aware UTC datetime; a datetime is taken as
    is. ValueError for anything else, including offsets that move it outside years 1-9999."""
    if isinstance(value, datetime):
        return to_utc(value)
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string, got {type(value).__name__}")
    s = value.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value[:80]!r}") from None
    return to_utc(dt)


def normalize_iso(value: str | datetime) -> str:
    """Any accepted ISO timestamp (or datetime), rewritten in the store's canonical form."""
    return iso(parse_iso(value))


def new_id() -> str:
    return str(uuid.uuid4())


def check_session_id(session_id: object) -> str:
    """Validate a session id before any use. Ids are 1-128 chars of [A-Za-z0-9_-], not starting with - or _."""
    from .errors import InvalidSessionIdError

    if not isinstance(session_id, str) or not _ID_RE.match(session_id):
        raise InvalidSessionIdError(
            f"invalid session id {session_id!r}: expected a uuid-like string of letters, digits, '-' or '_'"
        )
    return session_id


ERROR_TEXT_LIMIT = 500  # characters of an exception's message kept by describe_error


def describe_error(exc: BaseException) -> str:
    """``"ConnectionError: the message"`` on one line, for reasons and logs.

    Every line of the message is kept (joined with single spaces: a server's reason often follows on the next
    line, e.g. ``1 validation error:`` then the field), at most ``ERROR_TEXT_LIMIT`` characters of it, cut with
    an ellipsis. A :class:`~oblix_nb.errors.BackendError`'s message already names the SDK's exception type and is
    returned as it is (same limit)."""
    from .errors import BackendError

    text = " ".join(str(exc).split())
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1].rstrip() + "…"
    if isinstance(exc, BackendError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def title_from(text: str, default: str, width: int = 60) -> str:
    """A session title from a prompt: its first non-blank line, shortened to ``width`` with an ellipsis."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), default)
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def current_user() -> str:
    """Who is writing: env ``OBLIX_USER`` if set, else the OS user (``getpass.getuser()``), else ``"unknown"``.

    Recorded as the author of every session and message a store writes (a shared store tells users apart).
    """
    name = os.environ.get("OBLIX_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name and no passwd entry (some containers)
        return "unknown"


def block_interrupts() -> None:
    """Keep SIGINT away from the calling (package-owned, non-main) thread, and the threads it starts.

    The kernel delivers a process-directed signal to any thread that does not block it. CPython then only sets
    a flag for the main thread, which stays blocked in whatever it was waiting on (``input()``, a lock) when the
    signal landed on another thread: Ctrl-C in a terminal, or a kernel interrupt, would be lost until that wait
    ended by itself. Every thread the package starts calls this first, so SIGINT goes to the main thread.
    """
    if hasattr(signal, "pthread_sigmask"):
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        except (OSError, ValueError):  # pragma: no cover - platforms without per-thread masks
            pass
