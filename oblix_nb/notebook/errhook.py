"""``Err[N]``: the error each cell raised, recorded by a custom IPython exception handler.

:class:`ErrorLog` installs one handler with ``shell.set_custom_exc`` for every ``Exception`` (plus whatever
exception types a user handler covers). For each exception it records the traceback text exactly as IPython
shows it (colours stripped) with the cell's source, then hands the exception on:

* to the **user's own handler** when one is set for that exception type — whether it was set before
  ``%load_ext oblix_nb`` or after (``shell.set_custom_exc`` is intercepted while the log is installed, so a
  later handler is chained behind ours instead of replacing it; ``set_custom_exc((), None)`` removes it);
* otherwise to **IPython's own** ``showtraceback``, so the output, ``%tb``, ``%debug`` and the kernel's
  ``error`` message are what they would be without the extension.

``%unload_ext oblix_nb`` removes the handler and puts back the user's handler (the one in force at that time).
Only text is kept (never the exception or its frames), at most :attr:`ErrorLog.max_errors` cells; for a
``KeyError``/``AttributeError`` that text includes the columns of the DataFrames on the failing line
(:func:`.tracebacks.data_hint`), which ``%oblix_fix`` and ``{Err[N]}`` send with the trimmed traceback.
"""
from __future__ import annotations

import re
import sys
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import IPython

# IPython 9 increments execution_count before running a cell, IPython 8 after it.
_COUNTS_BEFORE_RUN = int(IPython.version_info[0]) >= 9
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_TRACEBACK_CHARS = 20_000


@dataclass(frozen=True)
class CellError:
    """The error cell ``execution_count`` raised: ``ename: evalue``, the traceback text, the cell's source."""
    execution_count: int
    ename: str
    evalue: str
    traceback: str
    source: str
    hint: str = ""   # what the model needs besides the traceback (a DataFrame's columns: tracebacks.data_hint)

    def __str__(self) -> str:
        return self.traceback


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class ErrorLog:
    """The errors of one shell's cells, by execution count (see the module docstring)."""

    max_errors = 200

    def __init__(self, shell: Any):
        self.shell = shell
        self.errors: OrderedDict[int, CellError] = OrderedDict()
        self.current = getattr(shell, "execution_count", 0)  # the running cell's number
        self._source = ""                              # the running cell's source, as typed
        self._pending: tuple[str, str, str, str] | None = None  # its error (ename, evalue, traceback, hint)
        self._raw_count, self._stored = self.current, False
        self._offset = 1 if _COUNTS_BEFORE_RUN else 0  # execution_count - the running cell's number
        self._user: tuple[tuple, Callable | None] = ((), None)  # the user's (exc_tuple, CustomTB)
        self._saved: tuple | None = None            # shell attributes to put back on uninstall
        self.installed = False

    # ------------------------------------------------------------------ reading
    def get(self, n: int) -> CellError | None:
        return self.errors.get(n)

    def last(self, skip: Callable[[CellError], bool] | None = None) -> CellError | None:
        """The most recent error (the most recent one ``skip`` does not reject)."""
        return next((e for e in reversed(self.errors.values()) if skip is None or not skip(e)), None)

    def counts(self) -> list[int]:
        return list(self.errors)

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> None:
        shell = self.shell
        if self.installed:
            return
        self._saved = (shell.custom_exceptions, shell.CustomTB, shell.__dict__.get("set_custom_exc"))
        if shell.custom_exceptions:
            self._user = (tuple(shell.custom_exceptions), shell.CustomTB)
        self._original_set = shell.set_custom_exc
        shell.set_custom_exc = types.MethodType(_intercepted_set_custom_exc, shell)
        shell.__dict__["_oblix_error_log"] = self
        self._register()
        shell.events.register("pre_run_cell", self._pre_run_cell)
        shell.events.register("post_run_cell", self._post_run_cell)
        self.installed = True

    def uninstall(self) -> None:
        shell = self.shell
        if not self.installed:
            return
        for event, callback in (("pre_run_cell", self._pre_run_cell), ("post_run_cell", self._post_run_cell)):
            try:
                shell.events.unregister(event, callback)
            except ValueError:
                pass
        shell.__dict__.pop("_oblix_error_log", None)
        saved_setter = self._saved[2] if self._saved else None
        if saved_setter is None:
            shell.__dict__.pop("set_custom_exc", None)
        else:
            shell.set_custom_exc = saved_setter
        exc_tuple, custom_tb = self._user
        if custom_tb is not None and exc_tuple:
            shell.CustomTB, shell.custom_exceptions = custom_tb, exc_tuple
        else:
            shell.set_custom_exc((), None)
        self.installed = False

    def _register(self) -> None:
        """(Re-)install our handler for Exception and the user's exception types."""
        types_ = (Exception,) + tuple(t for t in self._user[0] if not issubclass(t, Exception))
        self._original_set(types_, _handler)

    def _set_user(self, exc_tuple: tuple, handler: Callable | None) -> None:
        """What ``shell.set_custom_exc(exc_tuple, handler)`` does while we are installed."""
        if not isinstance(exc_tuple, tuple):
            raise TypeError("The custom exceptions must be given as a tuple.")
        if not exc_tuple:
            self._user = ((), None)
        else:
            self._original_set(exc_tuple, handler)  # let IPython wrap and validate it
            self._user = (exc_tuple, self.shell.CustomTB)
        self._register()

    def _pre_run_cell(self, info: Any = None) -> None:
        raw = getattr(info, "raw_cell", None)
        self._source = raw if isinstance(raw, str) else ""
        self._pending = None
        self._raw_count = self.shell.execution_count
        self._stored = bool(getattr(info, "store_history", False)) and not getattr(info, "silent", False)
        self.current = self._raw_count - (self._offset if self._stored else 0)

    def _post_run_cell(self, result: Any = None) -> None:
        pending, self._pending = self._pending, None
        count = getattr(result, "execution_count", None)
        if not isinstance(count, int):
            count = self.current
        elif self._stored:  # learn how this IPython numbers the running cell
            self._offset = self._raw_count - count
        if pending is None:
            return
        self.errors.pop(count, None)
        ename, evalue, text, hint = pending
        self.errors[count] = CellError(count, ename, evalue, text, self._source, hint)
        while len(self.errors) > self.max_errors:
            self.errors.popitem(last=False)

    # ------------------------------------------------------------------ recording
    def record(self, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
        """Remember the running cell's error; it is filed under the cell's number when the cell ends."""
        try:
            from .tracebacks import data_hint

            hint = data_hint(value, tb)
        except Exception:  # noqa: BLE001 - a hint is best effort
            hint = ""
        self._pending = (etype.__name__, _safe_str(value), self.format(etype, value, tb, tb_offset), hint)

    def format(self, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> str:
        """The traceback as IPython shows it, without colours (plain Python formatting if that fails)."""
        shell = self.shell
        try:
            if hasattr(value, "_render_traceback_"):
                stb = value._render_traceback_()
            elif issubclass(etype, SyntaxError):
                stb = shell.SyntaxTB.structured_traceback(etype, value, [])
            elif type(value).__name__ == "UsageError":
                stb = [f"UsageError: {value}"]
            else:
                stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
            text = shell.InteractiveTB.stb2text(stb)
        except Exception:  # noqa: BLE001 - a record must never break error display
            text = "".join(traceback.format_exception(etype, value, tb))
        text = strip_ansi(text).strip("\n")
        if len(text) > MAX_TRACEBACK_CHARS:
            half = MAX_TRACEBACK_CHARS // 2
            text = text[:half] + f"\n…[{len(text) - 2 * half} characters omitted]…\n" + text[-half:]
        return text


def _safe_str(value: BaseException) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}>"


def _handler(shell, etype, value, tb, tb_offset=None):
    """The custom exception handler: record, then chain to the user's handler or to IPython's display."""
    log: ErrorLog | None = shell.__dict__.get("_oblix_error_log")
    if log is not None:
        if issubclass(etype, Exception):
            try:
                log.record(etype, value, tb, tb_offset)
            except Exception:  # noqa: BLE001 - recording is best effort, display is not
                pass
        user_types, user_tb = log._user
        if user_tb is not None and user_types and issubclass(etype, user_types):
            return user_tb(etype, value, tb, tb_offset=tb_offset)
    try:
        if _in_run_code(tb):  # raised by the cell's code: what run_code itself would do
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
        elif issubclass(etype, IndentationError):  # raised while parsing the cell: as run_cell would show it
            shell.showindentationerror()
        elif issubclass(etype, (OverflowError, SyntaxError, ValueError, TypeError, MemoryError)):
            shell.showsyntaxerror()
        else:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    except Exception:  # noqa: BLE001
        traceback.print_exception(etype, value, tb, file=sys.stderr)
    return None


def _in_run_code(tb: Any) -> bool:
    """True if the traceback starts in IPython's ``run_code`` (the cell ran), not in parsing the cell."""
    return tb is not None and tb.tb_frame.f_code.co_name == "run_code"


def _intercepted_set_custom_exc(shell, exc_tuple, handler):
    """``shell.set_custom_exc`` while an ErrorLog is installed: the handler is chained behind ours."""
    log: ErrorLog | None = shell.__dict__.get("_oblix_error_log")
    if log is None:
        return type(shell).set_custom_exc(shell, exc_tuple, handler)
    return log._set_user(exc_tuple, handler)


# --------------------------------------------------------------------------- one log per shell
_retired: dict[int, OrderedDict[int, CellError]] = {}  # errors kept across %reload_ext, by id(shell)


def install(shell: Any) -> ErrorLog:
    """The shell's ErrorLog, installed (made on first call; the errors of an earlier one are kept)."""
    log = shell.__dict__.get("_oblix_error_log")
    if log is None:
        log = ErrorLog(shell)
        log.errors.update(_retired.pop(id(shell), {}))
        log.install()
    return log


def uninstall(shell: Any) -> None:
    """Remove the handler (the user's own handler stays in force). The errors are kept for a reload."""
    log = shell.__dict__.get("_oblix_error_log")
    if log is not None:
        log.uninstall()
        _retired[id(shell)] = log.errors


def current_cell(shell: Any) -> int:
    """The number of the cell that is running (IPython 8 and 9 differ in when they count)."""
    log = error_log(shell)
    if log is not None:
        return log.current
    return int(getattr(shell, "execution_count", 0)) - (1 if _COUNTS_BEFORE_RUN else 0)


def error_log(shell: Any) -> ErrorLog | None:
    """The installed ErrorLog of ``shell`` (None when the extension is not loaded)."""
    return getattr(shell, "__dict__", {}).get("_oblix_error_log") if shell is not None else None
