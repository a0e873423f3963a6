"""The session JSON format: message validation, import-file parsing, atomic export.

The document is the reference's session structure::

    {"id", "title", "created_at", "updated_at", "messages": [...], "context": {...}, "metadata": {...}}

A message is ``{"id", "role", "content", "timestamp"}`` plus, only when set, ``model_id`` (str),
``metrics`` (dict), ``routing`` (dict), ``partial`` (only ever ``true``: a reply cut short), ``request_id``
(str) and ``source_session_id`` (str, set by merges). Timestamps are stored and written in the canonical
form ``2023-07-15T14:30:22.123Z``; any ISO 8601 form is accepted on the way in (the original Oblix SDK writes
``2026-11-24T20:24:14.820825+00:00``).
"""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .._util import check_session_id, iso, new_id, normalize_iso
from ..errors import InvalidSessionIdError, SessionFileError
from .validate import check_json, check_text

ROLES = ("user", "assistant", "system")

# Optional message fields, in the order they appear in a message dict, with their accepted type.
OPTIONAL_FIELDS: dict[str, type] = {
    "model_id": str, "metrics": dict, "routing": dict, "partial": bool, "request_id": str,
    "source_session_id": str,
}
MESSAGE_FIELDS = ("id", "timestamp", *OPTIONAL_FIELDS)
_FIELD_NAMES = frozenset(MESSAGE_FIELDS)
REQUIRED_SESSION_FIELDS = ("id", "title", "created_at", "updated_at", "messages")
REQUIRED_MESSAGE_FIELDS = ("id", "role", "content", "timestamp")


def normalize_message(role: Any, content: Any, fields: dict, default_timestamp: str | None = None) -> dict:
    """Validate one message and return it as stored: canonical timestamp, an id, optional fields only when set.

    ``fields`` may hold ``id`` and ``timestamp`` (generated when absent or None: ``default_timestamp``, else
    the current time) and the optional fields;
    ``None`` means "not set" and ``partial=False`` is the same as not set. Unknown field names and wrong
    types raise TypeError; an unknown role, an empty id or an unparseable timestamp raise ValueError.
    """
    if not _FIELD_NAMES.issuperset(fields):
        unknown = set(fields) - _FIELD_NAMES
        raise TypeError(f"unknown message field(s) {sorted(unknown)}; known fields: {list(MESSAGE_FIELDS)}")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {list(ROLES)}")
    if not isinstance(content, str):
        raise TypeError(f"message content must be a string, not {type(content).__name__}")
    check_text(content, "message content")
    message_id = fields.get("id")
    if message_id is None:
        message_id = new_id()
    elif not isinstance(message_id, str):
        raise TypeError(f"message id must be a string, not {type(message_id).__name__}")
    elif not message_id:
        raise ValueError("message id must not be empty")
    else:
        check_text(message_id, "message id")
    timestamp = fields.get("timestamp")
    if timestamp is None:
        timestamp = default_timestamp or iso()
    elif not isinstance(timestamp, (str, datetime)):
        raise TypeError(f"message timestamp must be an ISO 8601 string or a datetime, "
                        f"not {type(timestamp).__name__}")
    else:
        timestamp = normalize_iso(timestamp)
    message = {"id": message_id, "role": role, "content": content, "timestamp": timestamp}
    for name, kind in OPTIONAL_FIELDS.items():
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise TypeError(f"message field {name!r} must be {kind.__name__}, not {type(value).__name__}")
        if name == "partial":
            if value:
                message["partial"] = True
            continue
        if name == "source_session_id":
            check_session_id(value)
        elif kind is str and isinstance(value, str):
            check_text(value, f"message field {name!r}")
        elif kind is dict:
            check_json(value, f"message {name}")
        message[name] = value
    return message


DEFAULT_MAX_IMPORT_BYTES = 256 * 2 ** 20
MAX_IMPORT_ENV = "OBLIX_MAX_IMPORT_BYTES"


#: the largest import size cap (a file this large could not be held in memory anyway)
MAX_IMPORT_CAP = sys.maxsize - 1
READ_CHUNK = 1 << 20


def check_import_cap(cap, what: str = "max_bytes") -> int:
    """``cap`` if it is a usable import size cap (an int, 1 .. MAX_IMPORT_CAP), else ValueError/TypeError."""
    if isinstance(cap, bool) or not isinstance(cap, int):
        raise TypeError(f"{what} must be an int (bytes), not {type(cap).__name__}")
    if cap <= 0:
        raise ValueError(f"{what} must be positive, not {cap}")
    if cap > MAX_IMPORT_CAP:
        raise ValueError(f"{what} must be at most {MAX_IMPORT_CAP:,} bytes, not {str(cap)[:30]}"
                         f"{'...' if len(str(cap)) > 30 else ''}")
    return cap


def default_max_import_bytes() -> int:
    """The import size cap: env ``OBLIX_MAX_IMPORT_BYTES`` if set (an integer, 1 .. MAX_IMPORT_CAP), else
    256 MiB. ValueError for another value."""
    value = os.environ.get(MAX_IMPORT_ENV)
    if not value:
        return DEFAULT_MAX_IMPORT_BYTES
    try:
        cap = int(value)
    except ValueError:
        raise ValueError(f"{MAX_IMPORT_ENV} must be a number of bytes, not {value[:40]!r}") from None
    return check_import_cap(cap, MAX_IMPORT_ENV)


def expand_path(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "path") -> Path:
    """``path`` with ``~`` / ``~user`` expanded; an unknown user or no home raises ``error`` (a ValueError
    subclass) naming the path, instead of pathlib's RuntimeError."""
    raw = Path(os.fspath(path))
    try:
        return raw.expanduser()
    except RuntimeError as exc:
        raise error(f"{raw}: cannot expand {str(raw).split(os.sep)[0]!r} in the {what} ({exc})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_capped(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, refusing (SessionFileError) a directory, FIFO, device or
    socket and a file above ``max_bytes``, without reading more than ``max_bytes + 1`` bytes or blocking."""
    def refuse(reason: str) -> SessionFileError:
        return SessionFileError(f"{path}: {reason}; nothing was imported")

    def check(st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"is a {_kind(st.st_mode)}, not a session file")
        if st.st_size > max_bytes:
            raise refuse(f"the file is {st.st_size:,} bytes, above the import size cap of {max_bytes:,} bytes "
                         f"(raise it with max_bytes=, SessionStore(max_import_bytes=) or {MAX_IMPORT_ENV})")

    try:
        check(os.stat(path))  # before opening: opening a FIFO could block, a device could be read forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:  # a symlink loop, a name too long, a file used as a folder, ...
        reasons: dict[int | None, str] = {errno.ELOOP: "is a symlink loop (too many levels of symbolic links)",
                                             errno.ENAMETOOLONG: "the name is too long"}
        reason = reasons.get(exc.errno, exc.strerror or str(exc))
        raise refuse(f"cannot be read: {reason}") from None
    with os.fdopen(fd, "rb") as f:
        check(os.fstat(f.fileno()))  # the file actually opened (the path may have been swapped meanwhile)
        chunks, size = [], 0
        while size <= max_bytes:  # in chunks: a huge cap never asks for a huge buffer
            chunk = f.read(min(READ_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    if len(data) > max_bytes:
        raise refuse(f"the file grew above the import size cap of {max_bytes:,} bytes while being read")
    return data


def parse_session_file(path: str | os.PathLike, max_bytes: int | None = None) -> dict:
    """Read and validate a session file (ours or the original Oblix SDK's); returns the normalized document.

    Raises FileNotFoundError for a missing file and SessionFileError (a ValueError naming the file and what
    is wrong) for: a directory, FIFO, device or socket; a file above ``max_bytes`` (default
    :func:`default_max_import_bytes`, 256 MiB); invalid JSON (with line and column) or JSON nested too deeply;
    a missing required field, a wrong type, an unknown role, a bad timestamp, duplicate message ids, text with
    a lone surrogate (naming the field), JSON values refused by :func:`.validate.check_json`. An invalid
    session id raises InvalidSessionIdError. Message fields we do not know are ignored. The returned messages
    are :func:`normalize_message` dicts; ``title`` may be None (file had null).
    """
    path = expand_path(path, SessionFileError, "session file path")
    max_bytes = default_max_import_bytes() if max_bytes is None else check_import_cap(max_bytes)
    raw = read_capped(path, max_bytes)

    def no_constants(name: str):
        raise SessionFileError(f"{path}: invalid JSON: {name} is not a JSON value")

    try:
        doc = json.loads(raw.decode("utf-8-sig"), parse_constant=no_constants)
    except UnicodeDecodeError as exc:
        raise SessionFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise SessionFileError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError:
        raise SessionFileError(f"{path}: JSON nested too deeply to import") from None
    except SessionFileError:
        raise
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise SessionFileError(f"{path}: invalid JSON: {exc}") from None

    def fail(message: str, error: type[ValueError] = SessionFileError) -> ValueError:
        return error(f"{path}: {message}")

    if not isinstance(doc, dict):
        raise fail(f"expected a JSON object (a session), found {type(doc).__name__}")
    missing = [name for name in REQUIRED_SESSION_FIELDS if name not in doc]
    if missing:
        raise fail(f"missing required field(s) {missing}")
    session_id = doc["id"]
    try:
        check_session_id(session_id)
    except InvalidSessionIdError as exc:
        raise fail(f"field 'id': {exc}", InvalidSessionIdError) from None
    title = doc["title"]
    if title is not None and not isinstance(title, str):
        raise fail(f"field 'title' must be a string or null, not {type(title).__name__}")
    try:
        if title is not None:
            check_text(title, "field 'title'")
        for name in ("context", "metadata"):
            if isinstance(doc.get(name), dict):
                check_json(doc[name], f"field {name!r}")
    except (TypeError, ValueError) as exc:
        raise fail(str(exc)) from None
    stamps = {}
    for name in ("created_at", "updated_at"):
        value = doc[name]
        if not isinstance(value, str):
            raise fail(f"field {name!r} must be an ISO 8601 string, not {type(value).__name__}")
        try:
            stamps[name] = normalize_iso(value)
        except ValueError:
            raise fail(f"field {name!r} is not an ISO 8601 timestamp: {value!r}") from None
    objects = {}
    for name in ("context", "metadata"):
        value = doc.get(name)
        if value is not None and not isinstance(value, dict):
            raise fail(f"field {name!r} must be an object, not {type(value).__name__}")
        objects[name] = value or {}
    if not isinstance(doc["messages"], list):
        raise fail(f"field 'messages' must be a list, not {type(doc['messages']).__name__}")

    messages = []
    seen: set[str] = set()
    for i, item in enumerate(doc["messages"]):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise fail(f"{where} must be an object, not {type(item).__name__}")
        missing = [name for name in REQUIRED_MESSAGE_FIELDS if name not in item]
        if missing:
            raise fail(f"{where} is missing required field(s) {missing}")
        fields = {name: item[name] for name in MESSAGE_FIELDS if name in item}
        if not isinstance(fields["timestamp"], str):  # None would mean "now" to normalize_message
            raise fail(f"{where}.timestamp must be an ISO 8601 string, not {type(fields['timestamp']).__name__}")
        try:
            message = normalize_message(item["role"], item["content"], fields)
        except (TypeError, ValueError) as exc:
            raise fail(f"{where}: {exc}") from None
        if message["id"] in seen:
            raise fail(f"{where}: duplicate message id {message['id']!r}")
        seen.add(message["id"])
        messages.append(message)
    return {"id": session_id, "title": title, "created_at": stamps["created_at"],
            "updated_at": stamps["updated_at"], "messages": messages, "context": objects["context"],
            "metadata": objects["metadata"]}


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON (indent=2, UTF-8, not ASCII-escaped) to ``path`` atomically; returns the path.

    Serializes first, then writes a temporary file in the destination folder (created if missing), fsyncs it
    and renames it over ``path``: readers see the old file or the new one, never a partial one, and a failed
    write leaves an existing file untouched. An existing file's permission bits are kept.
    """
    path = expand_path(path, ValueError, "export path")
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
