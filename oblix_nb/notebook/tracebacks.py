"""Tracebacks as a model needs them (``%oblix_fix``, ``{Err[N]}``): short paths, the user's own frames kept,
and what a ``KeyError``/``AttributeError`` on a DataFrame needs to be fixed (its columns).

* :func:`short_paths` replaces virtualenv, ``site-packages`` and standard-library paths by the module's own
  path (``pandas/core/frame.py``), IPython's temporary cell files by ``<cell>`` and the home directory by ``~``:
  the prompt does not tell a cloud model how the machine is laid out.
* :func:`trim` shortens a long traceback by frames, not by characters: the header, every exception line and
  the user's own frames (``Cell In[3]``, the user's modules) stay; library frames go first (those in the middle
  of a run of library frames before the ones at its ends), each run replaced by one line saying how many frames
  of which packages were left out.
* :func:`data_hint` (called while the exception is handled, with its frames) describes the DataFrames named on
  the user's failing line: ``frame`` is a DataFrame of 2 rows × 2 columns: ``price`` (int64), ``qty`` ...
"""
from __future__ import annotations

import linecache
import os
import re
import sys
import sysconfig
from typing import Any

_SITE = re.compile(r"""(?:[A-Za-z]:)?(?:[\\/][^\s\\/:"'<>|,()\[\]]+)*?[\\/](?:site|dist)-packages[\\/]""")
_STDLIB = re.compile(r"""(?:[A-Za-z]:)?(?:[\\/][^\s\\/:"'<>|,()\[\]]+)*?[\\/]lib[\\/]python3(?:\.\d+)?t?[\\/]""")
_IPYKERNEL = re.compile(r"""(?:[A-Za-z]:)?(?:[\\/][^\s\\/:"'<>|,()\[\]]+)*?[\\/]ipykernel_\d+[\\/]\d+\.py""")
_FRAME = re.compile(r'^(?:File |Cell In ?\[|Input In ?\[|<ipython-input-|\s*File ")')
_OTHER = re.compile(r"^(?:-{20,}\s*$|(?!-+>)\S)")  # a separator, an exception line, a chain message
_LIB_PACKAGE = re.compile(r"""(?:site|dist)-packages[\\/]([A-Za-z0-9_.]+)|^\s*File "?([A-Za-z0-9_]+)/_libs""")
_ARROW = re.compile(r"^\s*-+>")


def _prefixes() -> list[str]:
    found = set()
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sysconfig.get_paths().get("stdlib")):
        if p and len(p) > 1:
            found.add(os.path.normpath(p))
    return sorted(found, key=len, reverse=True)


def short_paths(text: str) -> str:
    """``text`` with machine paths shortened (see the module doc)."""
    text = _IPYKERNEL.sub("<cell>", text)
    text = _SITE.sub("", text)
    text = _STDLIB.sub("", text)
    for prefix in _prefixes():  # what is left under the interpreter's or the virtualenv's own directories
        text = text.replace(prefix + os.sep, "")
    home = os.path.expanduser("~")
    if home and home not in ("/", "~") and len(home) > 1:
        text = re.sub(re.escape(home) + r"(?=[\\/])", "~", text)
    return text


def _is_library(header: str) -> bool:
    if header.startswith(("Cell In", "Input In", "<ipython-input-")) or "<cell>" in header:
        return False
    if re.search(r"(?:site|dist)-packages[\\/]|[\\/]lib[\\/]python3", header):
        return True
    if re.match(r'^\s*File "?<frozen ', header) or re.match(r'^\s*File "?[A-Za-z0-9_]+/_libs/', header):
        return True
    m = re.match(r'^\s*File "?([^",]+)', header)
    return m is not None and any(m.group(1).startswith(p + os.sep) for p in _prefixes())


def _blocks(text: str) -> list[list]:
    """``[kind, lines]`` items: kind "user", "lib" (frames) or "other" (headers, exception lines, messages)."""
    items: list[list] = []
    for line in text.split("\n"):
        if _FRAME.match(line):
            items.append(["lib" if _is_library(line) else "user", [line]])
        elif items and items[-1][0] != "other" and (not line or not _OTHER.match(line)):
            items[-1][1].append(line)
        elif items and items[-1][0] == "other":
            items[-1][1].append(line)
        else:
            items.append(["other", [line]])
    return items


def _package(lines: list[str]) -> str:
    m = _LIB_PACKAGE.search(lines[0])
    if m:
        return (m.group(1) or m.group(2)).split(".")[0]
    m = re.search(r"""[\\/]lib[\\/]python3[^\\/]*[\\/]([A-Za-z0-9_]+)""", lines[0])
    return m.group(1) if m else "python"


def _compact(lines: list[str]) -> list[str]:
    """A frame reduced to its header and the line it stopped at."""
    keep = [lines[0]] + [line for line in lines[1:] if _ARROW.match(line)]
    return keep if len(keep) > 1 else lines[:2]


def trim(text: str, max_chars: int) -> str:
    """The traceback with short paths, at most ``max_chars`` long, the user's frames kept (see the module doc)."""
    from .describe import clip

    short = short_paths(text or "")
    if len(short) <= max_chars:
        return short
    items = _blocks(text or "")  # classified on the full paths, then shortened
    for item in items:
        item.append(_package(item[1]) if item[0] == "lib" else "")
        item[1] = short_paths("\n".join(item[1])).split("\n")
    # library frames at the ends of a run (called from user code / where it raised) are kept longest
    order: list[int] = []
    ends: list[int] = []
    for i, (kind, *_) in enumerate(items):
        if kind != "lib":
            continue
        before = items[i - 1][0] if i else "other"
        after = items[i + 1][0] if i + 1 < len(items) else "other"
        (ends if before != "lib" or after != "lib" else order).append(i)
    dropped: set[int] = set()

    def render() -> str:
        out: list[str] = []
        run: list[int] = []

        def flush():
            if run:
                packages = sorted({items[j][2] for j in run})
                out.append(f"  …[{len(run)} library frame{'s' if len(run) > 1 else ''} omitted: "
                           f"{', '.join(packages)}]…")
                run.clear()

        for i, (_, lines, _) in enumerate(items):
            if i in dropped:
                run.append(i)
                continue
            flush()
            out.append("\n".join(lines))
        flush()
        return "\n".join(out)

    for i in order + ends[::-1]:  # middles first, then the ends (the last raise kept longest)
        if len(render()) <= max_chars:
            return render()
        dropped.add(i)
    for item in items:  # still long: every kept frame to its header and arrow line
        if item[0] == "user":
            item[1] = _compact(item[1])
    result = render()
    return result if len(result) <= max_chars else clip(result, max_chars)


# --------------------------------------------------------------------------- what the model needs to know
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HINT_TYPES = (KeyError, AttributeError)
MAX_COLUMNS = 60


def _describe_frame(name: str, df: Any) -> str:
    columns = list(df.columns)
    shown = ", ".join(f"{c!r} ({dtype})" for c, dtype in list(zip(columns, df.dtypes))[:MAX_COLUMNS])
    more = f", … and {len(columns) - MAX_COLUMNS} more" if len(columns) > MAX_COLUMNS else ""
    index = f"; index {df.index.name!r}" if df.index.name is not None else ""
    return (f"`{name}` is a pandas DataFrame of {len(df):,} rows × {len(columns):,} columns{index}; "
            f"its columns: {shown}{more}")


def data_hint(value: BaseException, tb: Any, is_user_file=None) -> str:
    """For a KeyError/AttributeError: the DataFrames named on the failing line of the user's innermost frame
    (their shape and columns), else "". Only text is returned; the frames are not kept."""
    if not isinstance(value, HINT_TYPES) or tb is None:
        return ""
    pd = sys.modules.get("pandas")
    if pd is None:
        return ""
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    user = [(f, n) for f, n in frames
            if not _is_library(f"File {f.f_code.co_filename}") and not f.f_code.co_filename.startswith("<frozen")]
    if is_user_file is not None:
        user = [(f, n) for f, n in user if is_user_file(f.f_code.co_filename)] or user
    hints: list[str] = []
    for frame, lineno in reversed(user[-3:]):
        line = linecache.getline(frame.f_code.co_filename, lineno, frame.f_globals)
        for name in dict.fromkeys(_NAME.findall(line)):
            found = frame.f_locals.get(name, frame.f_globals.get(name))
            if isinstance(found, pd.DataFrame):
                hint = _describe_frame(name, found)
                if hint not in hints:
                    hints.append(hint)
        if hints:
            break
    return "\n".join(hints[:4])


__all__ = ["short_paths", "trim", "data_hint"]
