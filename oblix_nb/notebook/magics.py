"""IPython magics: ``%oblix_session`` (sessions as data), ``%%oblix`` (a cell is a prompt), ``%oblix_chat`` (a panel),
``%oblix_fix`` (ask about an error), ``%oblix_model`` (models, aliases, the default) and ``%oblix_stats``
(request statistics and their dashboard).

A ``%%oblix`` cell may refer to the notebook — ``{In[3]}``, ``{Out[3]}``, ``{Err[3]}``, ``{_}``, ``{cfg.model}``,
``{d["k"]}`` — and attach data (``--context df`` or ``{df}``): see :mod:`.references` and :mod:`.describe`. Errors
are recorded for ``{Err[N]}`` and ``%oblix_fix`` by the exception handler in :mod:`.errhook`.

``%load_ext oblix_nb`` registers them; ``%unload_ext`` / ``%reload_ext`` work (the kernel's client, its hooked
models and the current session survive a reload). Settings are traitlets, so both
``%config OblixMagics.stream_interval = 0.2`` and ``c.OblixMagics.stream_interval = 0.2`` in an IPython profile
work: ``default_model``, ``home``, ``stream_interval``, ``max_history``, ``show_footer``, ``frontend``.

No event loop ever runs in the kernel's thread: every coroutine runs on the package's background loop
(:mod:`oblix_nb.runtime`), and the reply's display is driven from the main thread (see :mod:`.display`).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import textwrap
from typing import Any, Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Dict, Enum, Float, Int, Unicode, observe, validate

from .. import runtime
from .._util import new_id, title_from
from ..errors import (InvalidSessionIdError, ModelCallError, ModelUnavailableError, NoModelHookedError,
                      OblixError, SessionNotFoundError)
from ..pricing import parse_price
from . import errhook, state, transform
from .display import (QueueSink, Reply, ReplyDisplay, drive, extract_code, format_footer, has_display_frontend,
                      notebook_sink_factory, safe_html, shell_publisher)
from .formats import ANY_JSON_SCHEMA, FORMATS, HINTS, final_bundle, stream_format
from .kv import parse_pairs

# --------------------------------------------------------------------------- argument parsing


class _HelpShown(Exception):
    """argparse printed help (``-h``): the magic just returns."""


class MagicArgumentParser(argparse.ArgumentParser):
    """argparse that never exits the kernel: errors are UsageError (a clean message, no traceback)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().rstrip()}\n"
                         f"(see {self.prog.split()[0]} -h)")

    def exit(self, status: int = 0, message: Optional[str] = None):  # type: ignore[override]
        if status:
            raise UsageError((message or f"{self.prog}: error").strip())
        if message:
            print(message, end="")
        raise _HelpShown()

    def print_help(self, file=None) -> None:
        print(self.format_help(), file=file or sys.stdout)


def split_line(line: str) -> list[str]:
    """Split a magic's line like a shell, except that ``key=value`` tokens keep their quotes (so a quoted
    value stays a string: ``x="3"`` is the string "3", ``x=3`` the number 3)."""
    raw: list[str] = []
    buf: list[str] = []
    quote: Optional[str] = None
    in_token = False
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(line):
                buf.append(line[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            buf.append(ch)
            in_token = True
        elif ch.isspace():
            if in_token:
                raw.append("".join(buf))
                buf, in_token = [], False
        else:
            if ch == "\\" and i + 1 < len(line):
                buf.append(ch)
                i += 1
                ch = line[i]
            buf.append(ch)
            in_token = True
        i += 1
    if quote:
        raise UsageError(f"unterminated {quote} quote in: {line}")
    if in_token:
        raw.append("".join(buf))
    out = []
    for token in raw:
        if _KV_RE.match(token):
            out.append(token)
        else:
            try:
                parts = shlex.split(token)
            except ValueError as exc:
                raise UsageError(f"cannot parse {token!r}: {exc}") from None
            out.append(" ".join(parts) if parts else "")
    return out


_KV_RE = re.compile(r"^[A-Za-z_][\w.\-]*=")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def parse_kv(tokens: Optional[list[str]]) -> dict:
    """JSON-typed ``key=value`` tokens (see :func:`oblix_nb.notebook.kv.parse_value`); bad ones: UsageError."""
    try:
        return parse_pairs(tokens or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _title(prompt: str) -> str:
    return title_from(prompt, "Notebook session")


def _expand_dollars(tokens: list[str], namespace: dict) -> list[str]:
    """``%oblix_session`` skips IPython's whole-line ``{}``/``$`` expansion (it would mangle JSON values);
    instead a token that is exactly ``$name`` becomes ``str(name's value)``."""
    out = []
    for token in tokens:
        m = re.fullmatch(r"\$(" + _IDENT + r")", token)
        out.append(str(namespace[m.group(1)]) if m and m.group(1) in namespace else token)
    return out


def _float_arg(name: str, lo: float, hi: float):
    def convert(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {value!r}") from None
        if not lo <= x <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo:g} and {hi:g}, not {value}")
        return x
    return convert


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return n


def _non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {value}")
    return n


def session_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%oblix_session", description=textwrap.dedent("""\
            Manage the kernel's Oblix sessions (durable conversations in <home>/sessions.db).

            Session ids may be abbreviated to any unique prefix. key=value pairs keep their JSON type:
            n=3 is a number, ok=true a bool, x="3" a string, tags='["a","b"]' a list, bare words strings.
            A token that is exactly $name is replaced by the value of the variable name.
            `list`, `search` and `df` return DataFrames (assign them: `sessions = %oblix_session list`)."""))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)

    new = sub.add_parser("new", help="create a session (print its id)")
    new.add_argument("--title", help="the session's title")
    new.add_argument("--meta", nargs="+", action="extend", default=[], metavar="K=V", help="metadata")
    new.add_argument("--use", action="store_true", help="make it the current session")

    use = sub.add_parser("use", help="make a session the current one (%%%%oblix continues it)")
    use.add_argument("id")

    sub.add_parser("current", help="show the current session")

    lst = sub.add_parser("list", help="sessions as a DataFrame, most recently updated first")
    lst.add_argument("--limit", type=_non_negative_int, default=None, help="at most N sessions (default all)")
    lst.add_argument("--filter", nargs="+", action="extend", default=[], metavar="K=V",
                     help="only sessions whose metadata has these values")

    show = sub.add_parser("show", help="the transcript as Markdown (default: the current session)")
    show.add_argument("id", nargs="?")

    meta = sub.add_parser("meta", help="merge key=value pairs into a session's metadata (none: show it)")
    meta.add_argument("id")
    meta.add_argument("pairs", nargs="*", metavar="K=V")

    search = sub.add_parser("search", help="full-text search over titles and messages")
    search.add_argument("text", nargs="+")
    search.add_argument("--limit", type=_positive_int, default=20)

    delete = sub.add_parser("delete", help="delete a session and its messages")
    delete.add_argument("id")

    export = sub.add_parser("export", help="write a session as JSON")
    export.add_argument("id")
    export.add_argument("path")

    imp = sub.add_parser("import", help="import a session JSON file (ours or the Oblix SDK's)")
    imp.add_argument("path")
    imp.add_argument("--new-id", action="store_true", help="give it a fresh id (keep the original too)")
    imp.add_argument("--use", action="store_true", help="make it the current session")

    copy = sub.add_parser("copy", help="copy a session")
    copy.add_argument("id")
    copy.add_argument("--title")
    copy.add_argument("--use", action="store_true")

    merge = sub.add_parser("merge", help="merge sessions into a new one (messages by time)")
    merge.add_argument("ids", nargs="+", metavar="ID")
    merge.add_argument("--title")
    merge.add_argument("--use", action="store_true")

    df = sub.add_parser("df", help="messages as a DataFrame (default: every session)")
    df.add_argument("id", nargs="?")
    return p


def oblix_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%%oblix", description=textwrap.dedent("""\
            Send the cell to a model; the reply streams into the output and ends as Markdown with a footer
            (model, route and reason, time to first token, tokens/s).

            The conversation continues in the current session (one is created on first use), so follow-up
            cells have the earlier turns as context. {name} in the cell is replaced by the value of the
            variable `name` when it exists; so are {In[3]} (cell 3's source), {Out[3]} (its result), {Err[3]}
            (its traceback; negative N counts back from this cell), {_}, {cfg.attr} and {d["key"]}. Other
            braces are left alone; {{name}} gives a literal {name}. A DataFrame / array named this way, or with
            --context, is attached as a compact description (shape, dtypes, missing values, describe(), rows).
            What the model saw (the expanded prompt, attachments, system message) is stored in the session.
            The reply is `oblix_last` (a str carrying `.response`, execute()'s dict) and, with --var, NAME.
            Interrupting the kernel stops the request; the partial reply is kept, flagged partial."""))
    p.add_argument("--model", metavar="ID", help="force a hooked model, e.g. llamacpp:smollm2-135m")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--session", metavar="ID", help="continue this session (it becomes the current one)")
    g.add_argument("--new-session", action="store_true", help="start a new session (becomes current)")
    p.add_argument("--title", help="title for a session this cell creates")
    p.add_argument("--temperature", type=_float_arg("temperature", 0.0, 5.0))
    p.add_argument("--max-tokens", type=_positive_int, metavar="N")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole reply")
    _add_context_options(p)
    p.add_argument("-f", "--format", choices=FORMATS, default=None,
                   help="markdown (default); text: plain; code: also put the reply's code in a new cell; "
                        "json: parsed, shown as a JSON tree (default with --schema); html: sanitised HTML; "
                        "math: LaTeX")
    p.add_argument("--schema", metavar="SPEC",
                   help="structured output: a spec like \"label, score float, tags list[str]\", a JSON Schema as "
                        "JSON, or the name of a variable holding one (or a pydantic class); the value is "
                        "oblix_last.parsed (with --over: one typed column per field)")
    p.add_argument("--var", metavar="NAME", help="also store the reply in this variable")
    over = p.add_argument_group("prompts over a DataFrame (--over)", textwrap.dedent("""\
        With --over DF the cell is a template run once per row of DF (client.map): {column} is the row's
        value ({name} of a notebook variable that is not a column: that value). The result is a DataFrame on
        DF's index, shown and stored in NAME (--into, default oblix_result); finished rows are stored, so
        re-running the cell only calls the model for rows that have not finished."""))
    over.add_argument("--over", metavar="DF", help="a DataFrame / Series / list variable to run the cell over")
    over.add_argument("--into", metavar="NAME", help="store the result DataFrame in this variable")
    over.add_argument("--concurrency", type=_positive_int, metavar="N", help="rows in flight (default 1 "
                      "for the embedded model, 4 for servers)")
    return p


def _add_context_options(p: MagicArgumentParser) -> None:
    p.add_argument("--system", metavar="TEXT", help="a system message for this request (stored in the session)")
    p.add_argument("--context", nargs="+", action="extend", default=[], metavar="NAME",
                   help="attach a compact description of these variables or references (a DataFrame: shape, "
                        "dtypes, missing values, describe(), first rows; an array: shape, dtype, stats)")


def fix_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%oblix_fix", description=textwrap.dedent("""\
            Ask the model to fix an error: sends the cell's source and its traceback (default: the last error;
            N: the error of cell N). Errors are recorded from the moment the extension is loaded.
            -f code puts the corrected code into a new cell below (JupyterLab, Notebook, terminal IPython)."""))
    p.add_argument("cell", nargs="?", type=int, metavar="N", help="the cell whose error to fix (default: the last)")
    p.add_argument("-f", "--format", choices=("markdown", "text", "code"), default="markdown",
                   help="markdown (default): cause and fix; text: plain; code: only the corrected code, "
                        "put into a new cell")
    p.add_argument("--model", metavar="ID", help="force a hooked model (or an alias)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--session", metavar="ID", help="continue this session (it becomes the current one)")
    g.add_argument("--new-session", action="store_true", help="start a new session (becomes current)")
    p.add_argument("--title", help="title for a session this creates")
    p.add_argument("--temperature", type=_float_arg("temperature", 0.0, 5.0))
    p.add_argument("--max-tokens", type=_positive_int, metavar="N")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole reply")
    _add_context_options(p)
    p.add_argument("--var", metavar="NAME", help="also store the reply in this variable")
    return p


def model_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%oblix_model", description=textwrap.dedent("""\
            Hooked models, aliases and the default model. Aliases and the default are kept in the session store
            (<home>/sessions.db), so they survive kernel restarts; --model and execute(model_id=...) take an
            alias wherever they take a model id."""))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)
    lst = sub.add_parser("list", help="hooked models (and alias targets): endpoint, context window, reachable")
    lst.add_argument("--timeout", type=_float_arg("timeout", 0.1, 60.0), default=3.0,
                     help="seconds to wait for each endpoint (default 3)")
    alias = sub.add_parser("alias", help="NAME MODEL_ID: let NAME stand for MODEL_ID (none: list aliases)")
    alias.add_argument("name", nargs="?")
    alias.add_argument("model_id", nargs="?")
    unalias = sub.add_parser("unalias", help="forget an alias")
    unalias.add_argument("name")
    default = sub.add_parser("default", help="MODEL: the model %%%%oblix uses without --model ('none': routing "
                                             "decides); no argument: show it")
    default.add_argument("model", nargs="?")
    return p


def chat_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%oblix_chat", description=textwrap.dedent("""\
            Open a chat panel (a widget) on a session: type, send, watch the reply stream, stop it.
            Default: the current session (one is created if there is none). Any PROMPT words are sent at once.
            For a handle on the panel use oblix_nb.notebook.widgets.show_chat_panel()."""))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--session", metavar="ID", help="chat in this session (it becomes the current one)")
    g.add_argument("--new-session", action="store_true", help="start a new session (becomes current)")
    p.add_argument("--title", help="title for a session this creates")
    p.add_argument("--model", metavar="ID", help="force a hooked model")
    p.add_argument("--temperature", type=_float_arg("temperature", 0.0, 5.0))
    p.add_argument("--max-tokens", type=_positive_int, metavar="N")
    p.add_argument("prompt", nargs="*", help="sent as the first message")
    return p


def stats_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%oblix_stats", description=textwrap.dedent("""\
            Request statistics from the session store (client.stats(): requests, errors, partial replies,
            fallbacks, TTFT p50/p95, tokens/s p50, tokens, cost), then the dashboard of figures
            (client.plot_stats()). Times are UTC; --since/--until take an ISO time or an age like 7d, 12h, 30min.
            Examples: %oblix_stats --since 7d    %oblix_stats --by day --filter project=alpha --no-plot"""))
    p.add_argument("--by", choices=("model", "route", "session", "day"), default="model",
                   help="group the table by (default: model)")
    p.add_argument("--since", metavar="WHEN", help="from this time or age (inclusive)")
    p.add_argument("--until", metavar="WHEN", help="up to this time or age (exclusive)")
    p.add_argument("--filter", nargs="+", action="extend", default=[], metavar="K=V",
                   help="only sessions whose metadata has these values")
    p.add_argument("--no-plot", action="store_true", help="the table only, no figures")
    p.add_argument("--theme", choices=("light", "dark"), default="light", help="figure colours (default light)")
    p.add_argument("--var", metavar="NAME", help="also store the table in this variable")
    return p


def _parse(parser: MagicArgumentParser, tokens: list[str]):
    try:
        return parser.parse_args(tokens)
    except argparse.ArgumentError as exc:  # exit_on_error=False paths
        raise UsageError(f"{parser.prog}: {exc}\n{parser.format_usage().rstrip()}") from None


# --------------------------------------------------------------------------- transcript


class Transcript:
    """A session rendered as Markdown (``_repr_markdown_``), with a plain-text repr."""

    def __init__(self, session: dict):
        self.session = session

    def _head(self) -> tuple[str, str]:
        s = self.session
        n = len(s.get("messages") or [])
        return s.get("title") or "(untitled)", f"{s['id']} · {n} message{'s' if n != 1 else ''} · " \
                                               f"updated {s.get('updated_at', '')}"

    def _repr_markdown_(self) -> str:
        title, sub = self._head()
        parts = [f"### {title}", f"*{sub}*"]
        for m in self.session.get("messages") or []:
            who = {"user": "🧑 user", "assistant": "🤖 assistant", "system": "⚙️ system"}.get(m["role"], m["role"])
            bits = [f"**{who}**"]
            if m.get("model_id"):
                bits.append(f"`{m['model_id']}`")
            bits.append(m.get("timestamp", "")[:19].replace("T", " "))
            if m.get("partial"):
                bits.append("⚠️ *partial*")
            parts.append("---")
            parts.append(" · ".join(bits))
            parts.append(m.get("content") or "")
        if not self.session.get("messages"):
            parts.append("*(no messages yet)*")
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:  # what frontends show: inert HTML (raw HTML in messages is escaped)
        return safe_html(self._repr_markdown_())

    def __repr__(self) -> str:
        title, sub = self._head()
        lines = [title, sub]
        for m in self.session.get("messages") or []:
            flag = " (partial)" if m.get("partial") else ""
            lines.append(f"\n[{m['role']}{flag}] {m.get('content') or ''}")
        return "\n".join(lines)


class _Said(str):
    """A str (e.g. a session id) that displays as a friendly sentence when it is a cell's value."""

    def __new__(cls, value: str, message: str):
        obj = super().__new__(cls, value)
        obj.message = message
        return obj

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.message)

    def __reduce__(self):
        return (str, (str(self),))


# --------------------------------------------------------------------------- the magics

_CLIENT_ERRORS = (OblixError, ValueError, OSError, KeyError)
_DEFAULT_MODEL_KEY = "notebook:default_model"  # the store setting %oblix_model default writes


def _clean_interrupt(note: str) -> KeyboardInterrupt:
    """The KeyboardInterrupt %%oblix re-raises after an interrupt (so "Run All" stops there), shown by IPython
    and Jupyter as the one line ``note`` instead of a traceback."""
    exc = KeyboardInterrupt(note)
    exc._render_traceback_ = lambda: [note]  # type: ignore[attr-defined]
    return exc


@magics_class
class OblixMagics(Magics):
    """``%oblix_session``, ``%%oblix``, ``%oblix_chat``, ``%oblix_fix``, ``%oblix_model``,
    ``%oblix_stats``.
    Configurable: ``%config OblixMagics`` lists the settings."""

    default_model = Unicode(
        "", help="Model id %%oblix forces when --model is not given (e.g. 'llamacpp:smollm2-135m'); "
                 "'' lets routing decide.").tag(config=True)
    home = Unicode(
        "", help="Folder holding sessions.db for the kernel's client; '' means $OBLIX_HOME or ~/.oblix. "
                 "Changing it points the client at another store (hooked models stay).").tag(config=True)
    stream_interval = Float(
        0.1, help="Seconds between two display updates of a streaming reply (the final update is always "
                  "sent).").tag(config=True)
    max_history = Int(
        1000, help="At most this many earlier messages of the session are sent as context "
                   "(then fitted to the model's context window).").tag(config=True)
    show_footer = Bool(True, help="Show the footer (model, route, TTFT, tokens/s, cost) under replies.").tag(
        config=True)
    prices = Dict(
        {}, help="Model prices in USD per million tokens, overriding the shipped table: {model id or name: "
                 "{'input': ..., 'output': ..., 'cached': ..., 'cache_write': ...}} (cached/cache_write optional). "
                 "Applied to the kernel's client with set_price, so they are kept in its store.").tag(config=True)
    frontend = Enum(
        ["auto", "display", "terminal"], "auto",
        help="'display': rich, updating cell output; 'terminal': plain tokens on stdout; 'auto': display in "
             "a Jupyter kernel, terminal otherwise.").tag(config=True)
    auto_hook = Bool(
        True, help="Hook the embedded model (llamacpp:smollm2-135m) when a prompt is sent and no model is "
                   "hooked.").tag(config=True)

    def __init__(self, shell=None, **kwargs: Any):
        self._sink_factory = None  # observers may fire while the config is loaded in __init__
        super().__init__(shell=shell, **kwargs)
        state.set_home(self.home)
        state.set_max_history(self.max_history)
        self._install_sink_factory()

    # ------------------------------------------------------------------ traits
    @validate("stream_interval")
    def _check_interval(self, proposal):
        value = proposal["value"]
        if value < 0:
            raise ValueError("stream_interval must be >= 0 seconds")
        return value

    @validate("max_history")
    def _check_history(self, proposal):
        if proposal["value"] < 0:
            raise ValueError("max_history must be >= 0")
        return proposal["value"]

    @validate("prices")
    def _check_prices(self, proposal):
        for model, price in proposal["value"].items():
            parse_price(price)  # ValueError/TypeError name what is wrong; nothing is applied
            if not isinstance(model, str) or not model.strip():
                raise ValueError(f"price keys are model ids or names, not {model!r}")
        return proposal["value"]

    @observe("prices")
    def _prices_changed(self, change) -> None:
        for model, price in change["new"].items():
            p = parse_price(price)
            self.client.set_price(model, p.input, p.output, p.cached, p.cache_write)

    @observe("home")
    def _home_changed(self, change) -> None:
        state.set_home(change["new"])

    @observe("max_history")
    def _history_changed(self, change) -> None:
        state.set_max_history(change["new"])

    @observe("frontend")
    def _frontend_changed(self, change) -> None:
        self._install_sink_factory()

    def rich(self) -> bool:
        if self.frontend == "auto":
            return has_display_frontend(self.shell)
        return self.frontend == "display"

    def _install_sink_factory(self) -> None:
        if self.rich():
            if self._sink_factory is None:
                self._sink_factory = notebook_sink_factory(self.shell, lambda: self.stream_interval)
            state.set_sink_factory(self._sink_factory)
            state.set_chat_handler(_notebook_chat_handler)
        elif self._sink_factory is not None:
            self._uninstall()

    def _uninstall(self) -> None:
        if self._sink_factory is not None:
            state.set_sink_factory(None)
            state.set_chat_handler(None)
            self._sink_factory = None

    @property
    def client(self):
        return state.get_client()

    # ------------------------------------------------------------------ helpers
    def resolve(self, text: str) -> str:
        """A full session id from an id or a unique prefix; UsageError if unknown or ambiguous."""
        client = self.client
        if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", text):
            raise UsageError(f"invalid session id {text!r}: ids are letters, digits, '-' and '_'")
        if client.sessions.exists(text):
            return text
        rows = client.sessions.ids_with_prefix(text, limit=6)
        if not rows:
            raise UsageError(f"no session with id or prefix {text!r} (see %oblix_session list)")
        if len(rows) > 1:
            shown = ", ".join(f"{r[0]} ({r[1]})" for r in rows[:5])
            raise UsageError(f"session prefix {text!r} is ambiguous: it matches {shown}"
                             f"{' and more' if len(rows) > 5 else ''}; give more characters")
        return rows[0][0]

    def _describe(self, session_id: str, counts: bool = True) -> str:
        try:
            row = self.client.sessions.brief(session_id)
        except Exception:  # noqa: BLE001 - only a description
            row = None
        if row is None:
            return session_id
        if not counts:
            return f"{session_id} ({row[0]!r})"
        return f"{session_id} ({row[0]!r}, {row[1]} message{'s' if row[1] != 1 else ''})"

    def _made(self, what: str, session_id: str, current: bool) -> "_Said":
        return _Said(session_id, f"{what} {self._describe(session_id, counts=False)}"
                                 + (" — now current" if current else ""))

    # ------------------------------------------------------------------ %oblix_session
    @no_var_expand
    @line_magic
    def oblix_session(self, line: str = ""):
        tokens = _expand_dollars(split_line(line), self.shell.user_ns if self.shell else {})
        parser = session_parser()
        try:
            args = _parse(parser, tokens)
        except _HelpShown:
            return None
        if args.command is None:
            current = self.client.current_session_id
            print(parser.format_usage().rstrip())
            print("current session:", self._describe(current) if current else "none")
            return None
        try:
            return getattr(self, f"_session_{args.command}")(args)
        except UsageError:
            raise
        except SessionNotFoundError as exc:
            raise UsageError(f"%oblix_session {args.command}: {exc}") from None
        except _CLIENT_ERRORS as exc:
            raise UsageError(f"%oblix_session {args.command}: {exc}") from None

    def _session_new(self, args):
        metadata = parse_kv(args.meta)
        client = self.client
        if args.use:
            sid = runtime.run(client.create_and_use_session(title=args.title, metadata=metadata or None))
        else:
            sid = runtime.run(client.create_session(title=args.title, metadata=metadata or None))
        return self._made("created session", sid, args.use)

    def _session_use(self, args):
        sid = self.resolve(args.id)
        self.client.use_session(sid)
        print(f"using session {self._describe(sid)}")

    def _session_current(self, args):
        sid = self.client.current_session_id
        if sid is None:
            print("no current session (%%oblix creates one; or %oblix_session new --use / use ID)")
            return None
        return _Said(sid, f"current session: {self._describe(sid)}")

    def _session_list(self, args):
        return self.client.sessions_df(limit=args.limit, filter_metadata=parse_kv(args.filter) or None)

    def _session_show(self, args):
        sid = self.resolve(args.id) if args.id else self.client.current_session_id
        if sid is None:
            raise UsageError("%oblix_session show: no current session; give an id")
        from IPython.display import display

        display(Transcript(self.client.load_session(sid)))

    def _session_meta(self, args):
        sid = self.resolve(args.id)
        pairs = parse_kv(args.pairs)
        if pairs:
            self.client.update_session_metadata(sid, pairs)
        return self.client.get_session_metadata(sid)

    def _session_search(self, args):
        import pandas as pd

        hits = self.client.search_sessions(" ".join(args.text), limit=args.limit)
        rows = [{"session_id": h["id"], "title": h["title"], "updated_at": h["updated_at"],
                 "message_count": h["message_count"],
                 "matches": " … ".join(f"[{m['role']}] {m['snippet']}" for m in h.get("matches") or [])}
                for h in hits]
        frame = pd.DataFrame(rows, columns=["session_id", "title", "updated_at", "message_count", "matches"])
        frame["updated_at"] = pd.to_datetime(frame["updated_at"], format="ISO8601", utc=True)
        return frame

    def _session_delete(self, args):
        sid = self.resolve(args.id)
        described = self._describe(sid)
        self.client.delete_session(sid)
        print(f"deleted session {described}")

    def _session_export(self, args):
        sid = self.resolve(args.id)
        runtime.run(self.client.export_session(sid, args.path))
        print(f"exported session {sid} to {args.path}")

    def _session_import(self, args):
        sid = runtime.run(self.client.import_session(args.path, new_id=args.new_id, use_immediately=args.use))
        return self._made("imported session", sid, args.use)

    def _session_copy(self, args):
        sid = self.resolve(args.id)
        new = runtime.run(self.client.copy_session(sid, new_title=args.title, use_immediately=args.use))
        return self._made("copied to session", new, args.use)

    def _session_merge(self, args):
        ids = [self.resolve(i) for i in args.ids]
        new = runtime.run(self.client.merge_sessions(ids, title=args.title, use_immediately=args.use))
        return self._made("merged into session", new, args.use)

    def _session_df(self, args):
        return self.client.messages_df(self.resolve(args.id) if args.id else None)

    # ------------------------------------------------------------------ %oblix_chat
    @line_magic
    def oblix_chat(self, line: str = ""):
        try:
            args = _parse(chat_parser(), split_line(line))
        except _HelpShown:
            return None
        from .widgets import show_chat_panel

        client = self.client
        prompt = " ".join(args.prompt)
        session_id = self._session_for(client, args, prompt or "Chat")
        options: dict[str, Any] = {k: v for k, v in (("max_tokens", args.max_tokens),
                                                     ("temperature", args.temperature),
                                                     ("model_id", args.model or self.default_model or None))
                                   if v is not None}
        panel = show_chat_panel(client, session_id, stream_interval=self.stream_interval,
                                auto_hook=self.auto_hook, **options)
        if prompt.strip():
            panel.send(prompt)
        return None

    # ------------------------------------------------------------------ %oblix_stats
    @line_magic
    def oblix_stats(self, line: str = ""):
        """Show ``client.stats()`` as a table and, unless ``--no-plot``, the dashboard's figures."""
        try:
            args = _parse(stats_parser(), split_line(line))
        except _HelpShown:
            return None
        filters = parse_kv(args.filter) or None
        try:
            frame = self.client.stats(by=args.by, since=args.since, until=args.until, filter_metadata=filters)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"%oblix_stats: {exc}") from None
        if args.var:
            self.shell.user_ns[args.var] = frame
        if args.no_plot:
            return frame
        from IPython.display import Image, display

        display(frame)
        dashboard = self.client.plot_stats(since=args.since, until=args.until, filter_metadata=filters,
                                           theme=args.theme)
        png = self.shell.display_formatter.formatters["image/png"]
        for fig in dashboard:
            try:
                png.lookup(fig)
                display(fig)  # the frontend's own figure display (inline backend)
            except KeyError:  # no PNG printer for figures registered (e.g. plain IPython): render one
                import io

                buffer = io.BytesIO()
                fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
                display(Image(data=buffer.getvalue(), format="png"))
        dashboard.close()  # shown once: the inline backend must not show them again
        return None

    # ------------------------------------------------------------------ %oblix_fix
    @no_var_expand
    @line_magic
    def oblix_fix(self, line: str = ""):
        try:
            args = _parse(fix_parser(), split_line(line))
        except _HelpShown:
            return None
        if args.var is not None and not args.var.isidentifier():
            raise UsageError(f"%oblix_fix --var: {args.var!r} is not a valid variable name")
        from .errhook import error_log

        log = error_log(self.shell)
        if log is None:
            raise UsageError("%oblix_fix: errors are recorded only while the extension is loaded (%load_ext oblix_nb)")
        if args.cell is None:  # the last error, not one of %oblix_fix itself
            record = log.last(skip=lambda e: e.source.lstrip().startswith("%oblix_fix"))
            if record is None:
                raise UsageError("%oblix_fix: no error recorded yet (errors are recorded from the moment "
                                 "%load_ext oblix_nb ran)")
        else:
            cell = args.cell if args.cell >= 0 else log.current + args.cell
            record = log.get(cell)
            if record is None:
                cells = ", ".join(str(n) for n in log.counts()[-10:]) or "none"
                raise UsageError(f"%oblix_fix: cell {cell} raised no recorded error (cells with errors: {cells})")
        client = self.client
        model_id = self._model_arg(client, args.model, "%oblix_fix")
        if not self._ensure_model(client, model_id):
            return None
        budget = self._context_budget(client, model_id, args.max_tokens)
        question = fix_prompt(record, code_only=args.format == "code", max_chars=budget)
        prompt = self._build_prompt("%oblix_fix", "", args, client, model_id)  # --context attachments
        prompt.question = question
        return self._ask(client, prompt.text, args, model_id, fmt=args.format)

    # ------------------------------------------------------------------ %oblix_model
    @no_var_expand
    @line_magic
    def oblix_model(self, line: str = ""):
        try:
            args = _parse(model_parser(), split_line(line))
        except _HelpShown:
            return None
        from .modelinfo import model_table

        client = self.client
        command = args.command or "list"
        try:
            if command == "list":
                table = model_table(client, self.default_model or self._stored_default(client),
                                    timeout=getattr(args, "timeout", 3.0))
                if not client.models:
                    print("no model is hooked yet (%%oblix hooks the embedded one on first use)", file=sys.stderr)
                return table
            if command == "alias":
                if args.name is None:
                    return client.model_aliases()
                if args.model_id is None:
                    raise UsageError("%oblix_model alias NAME MODEL_ID: give the model id the alias stands for")
                target = client.resolve_model_id(args.model_id)  # an alias of an alias: its model
                client.set_model_alias(args.name, target)
                return _Said(args.name, f"alias {args.name} → {target} (kept in {client.sessions.path})")
            if command == "unalias":
                if not client.remove_model_alias(args.name):
                    raise UsageError(f"%oblix_model unalias: no alias {args.name!r} "
                                     f"(aliases: {', '.join(client.model_aliases()) or 'none'})")
                return _Said(args.name, f"alias {args.name} removed")
            if command == "default":
                return self._model_default(client, args.model)
        except UsageError:
            raise
        except _CLIENT_ERRORS as exc:
            raise UsageError(f"%oblix_model {command}: {exc}") from None
        return None

    def _model_default(self, client, model: Optional[str]):
        if model is None:
            current = self.default_model or self._stored_default(client)
            return _Said(current or "", f"default model: {current}" if current
                         else "no default model: routing decides (set one with %oblix_model default MODEL)")
        if model.lower() in ("none", "auto", "-"):
            client.sessions.delete_setting(_DEFAULT_MODEL_KEY)
            self.default_model = ""
            return _Said("", "no default model: routing decides")
        client.resolve_model_id(model)  # a model id or a known alias
        client.sessions.set_setting(_DEFAULT_MODEL_KEY, model)
        self.default_model = model
        return _Said(model, f"default model: {model} (kept in {client.sessions.path})")

    # ------------------------------------------------------------------ %%oblix
    @cell_magic
    def oblix(self, line: str, cell: str):
        try:
            args = _parse(oblix_parser(), split_line(line))
        except _HelpShown:
            return None
        if args.var is not None and not args.var.isidentifier():
            raise UsageError(f"%%oblix --var: {args.var!r} is not a valid variable name")
        if args.over is not None:
            return self._over(args, cell or "")
        if args.into is not None or args.concurrency is not None:
            raise UsageError("%%oblix: --into and --concurrency go with --over DF")
        template = re.sub(r"\A(?:[ \t]*\n)+", "", (cell or "").rstrip())  # drop blank lines around the prompt
        if not template.strip():
            raise UsageError("%%oblix: the cell is the prompt; write something below the %%oblix line")
        client = self.client
        model_id = self._model_arg(client, args.model, "%%oblix")
        if not self._ensure_model(client, model_id):
            return None
        fmt = args.format or ("json" if args.schema else "markdown")
        schema = self._schema_arg(args.schema) if args.schema else (ANY_JSON_SCHEMA if fmt == "json" else None)
        prompt = self._build_prompt("%%oblix", template, args, client, model_id)
        if not prompt.text.strip():
            raise UsageError("%%oblix: the prompt is empty once its references are filled in")
        return self._ask(client, prompt.text, args, model_id, fmt=fmt, schema=schema)

    def _model_arg(self, client, model: Optional[str], prog: str) -> Optional[str]:
        """The model to force: --model, else the configured or stored default; aliases resolved."""
        chosen = model or self.default_model or self._stored_default(client) or None
        try:
            return client.resolve_model_id(chosen)
        except NoModelHookedError as exc:
            raise UsageError(f"{prog}: {exc}") from None

    @staticmethod
    def _stored_default(client) -> Optional[str]:
        try:
            value = client.sessions.get_setting(_DEFAULT_MODEL_KEY)
        except Exception:  # noqa: BLE001 - a store without settings: no stored default
            return None
        return value if isinstance(value, str) else None

    def _schema_arg(self, spec: str):
        """--schema: a variable holding any ``schema=`` form, JSON Schema text, or a concise spec."""
        from ..structured import SchemaError, schema_from_text

        try:
            return schema_from_text(spec, self.shell.user_ns)
        except SchemaError as exc:
            raise UsageError(f"%%oblix --schema: {exc}") from None

    def _context_budget(self, client, model_id: Optional[str], max_tokens: Optional[int]) -> int:
        """Characters for the notebook context (attachments, inlined cells): about 60% of what the model's
        context window leaves after the reply (the smallest window of the hooked models when routing decides)."""
        models = client.models
        chosen = [models[model_id]] if model_id in models else list(models.values())
        windows = [m.context_window for m in chosen if m.context_window]
        window = min(windows) if windows else 2048
        reserve = max_tokens or window // 4
        return int(min(max((window - reserve) * 0.6 * 3, 1200), 200_000))

    def _build_prompt(self, prog: str, template: str, args, client, model_id: Optional[str]):
        from .references import UnknownReference, build_prompt

        try:
            prompt = build_prompt(template, self.shell, context=args.context,
                                  budget_chars=self._context_budget(client, model_id, args.max_tokens))
        except UnknownReference as exc:
            raise UsageError(f"{prog} --context: {exc.args[0]!r} is not a variable or a reference "
                             f"(In[N], Out[N], Err[N], name.attr, name[key])") from None
        missing = [ref for ref in prompt.unresolved if re.match(r"(In|Out|Err)\[-?\d+\]", ref)]
        if missing:  # other unknown braces are code or JSON; a cell reference that finds nothing is a slip
            print(f"{prog}: left as written (no such cell, result or error): "
                  + ", ".join("{" + ref + "}" for ref in missing), file=sys.stderr)
        return prompt

    def _ask(self, client, prompt: str, args, model_id: Optional[str], *, fmt: str = "markdown",
             schema: Any = None):
        """Send ``prompt`` (what the model sees and the session stores) and show the reply in ``fmt``."""
        session_id = self._session_for(client, args, prompt)
        system = "\n\n".join(part for part in (args.system, HINTS.get(fmt)) if part) or None
        rich = self.rich()
        sink = QueueSink()
        request_id = new_id()
        kwargs: dict[str, Any] = dict(temperature=args.temperature, max_tokens=args.max_tokens,
                                      request_id=request_id, session_id=session_id,
                                      stream=not args.no_stream, display_metrics=self.show_footer, sink=sink)
        if model_id:
            kwargs["model_id"] = model_id
        if system:
            kwargs["system"] = system
        if schema is not None:
            kwargs["schema"] = schema

        async def job():
            try:
                result = await client.execute(prompt, **kwargs)
            except BaseException as exc:
                sink.done(None, exc)
                raise
            sink.done(result)
            return result

        view = None
        if rich:
            view = ReplyDisplay(shell_publisher(self.shell), fmt=stream_format(fmt), show_footer=self.show_footer)
            view.show("waiting for the whole reply…" if args.no_stream else "routing…")
        future = runtime.submit(job())
        outcome = drive(sink, future, view, interval=self.stream_interval)

        if outcome.interrupted:
            reply = self._partial_reply(client, session_id, request_id, outcome)
            if reply.text:
                note = "interrupted: the request was stopped; the partial reply was kept" + (
                    ", flagged partial in the session" if session_id else "")
            else:
                note = "interrupted before the first token: the request was stopped, no reply was stored"
            # The note is said once, as the cell's error line (no traceback); the footer is the partial reply's.
            self._finish(view, reply.text, format_footer(reply.response) if reply.text else "no reply",
                         error=True)
            if reply.text:
                self._publish_value(reply, args)
            raise _clean_interrupt(note)
        if outcome.error is not None:
            return self._failed(view, outcome, args, client)
        response = outcome.response or {}
        text = response.get("response", outcome.text)
        reply = Reply(text, response)
        bundle = final_bundle(fmt, text, response.get("parsed"), has_parsed="parsed" in response)
        self._finish(view, text, format_footer(response) if self.show_footer else None,
                     streamed=not args.no_stream, bundle=bundle)
        self._publish_value(reply, args)
        if fmt == "code":
            self.shell.set_next_input(extract_code(text), replace=False)
        return None

    def _over(self, args, cell: str):
        """``%%oblix --over DF``: the cell as a template over DF's rows (client.map)."""
        from ..batch import fill_constants, input_fields

        ns = self.shell.user_ns
        if not args.over.isidentifier() or args.over not in ns:
            raise UsageError(f"%%oblix --over: no variable named {args.over!r}")
        if args.var or args.new_session or args.no_stream or args.format == "code" or args.context:
            raise UsageError("%%oblix --over: --var, --new-session, --no-stream, --context and -f code do not "
                             "apply; the result DataFrame goes to --into NAME")
        into = args.into or "oblix_result"
        if not into.isidentifier():
            raise UsageError(f"%%oblix --into: {into!r} is not a valid variable name")
        data = ns[args.over]
        schema = self._schema_arg(args.schema) if args.schema is not None else None
        template = fill_constants(cell.strip(), ns, set(input_fields(data)))
        if not template.strip():
            raise UsageError("%%oblix --over: the cell is the template; write it below the %%oblix line, "
                             "with {column} fields")
        client = self.client
        model_id = self._model_arg(client, args.model, "%%oblix --over")
        if not self._ensure_model(client, model_id):
            return None
        kwargs: dict[str, Any] = dict(schema=schema, model_id=model_id, temperature=args.temperature,
                                      max_tokens=args.max_tokens, concurrency=args.concurrency, system=args.system)
        if args.session:
            kwargs["session_id"] = self.resolve(args.session)
        try:
            result = client.map_sync(data, template, **kwargs)
        except (TypeError, ValueError, NoModelHookedError, SessionNotFoundError) as exc:
            raise UsageError(f"%%oblix --over: {exc}") from None
        ns[into] = result
        errors = int(result["error"].notna().sum()) if "error" in result else 0
        cached = int(result["cached"].sum()) if "cached" in result else 0
        print(f"{len(result)} rows -> {into} ({cached} from the store, {errors} with errors)")
        return result

    def _finish(self, view: Optional[ReplyDisplay], text: str, footer: Optional[str], *, error: bool = False,
                streamed: bool = True, bundle: Optional[dict] = None) -> None:
        if view is not None:
            view.final(text, footer, error=error, bundle=bundle)
            return
        # terminal: the tokens are already on stdout (unless not streamed)
        if not streamed:
            sys.stdout.write(text)
        sys.stdout.write("\n")
        if footer:
            sys.stdout.write(f"[{footer}]\n")
        sys.stdout.flush()

    def _publish_value(self, reply: Reply, args) -> None:
        self.shell.user_ns["oblix_last"] = reply
        if args.var:
            self.shell.user_ns[args.var] = reply

    def _partial_reply(self, client, session_id: Optional[str], request_id: str, outcome) -> Reply:
        """After an interrupt: the reply as stored (flagged partial), else what arrived."""
        response: dict = {"request_id": request_id, "response": outcome.text, "partial": True,
                          "session_id": session_id}
        if outcome.info:
            response["model_id"] = outcome.info.get("model_id")
            response["routing_decision"] = outcome.info.get("routing")
        if session_id:
            try:
                last = client.sessions.history(session_id, limit=1)
            except Exception:  # noqa: BLE001
                last = []
            if last and last[-1].get("request_id") == request_id and last[-1]["role"] == "assistant":
                m = last[-1]
                response.update(response=m["content"], model_id=m.get("model_id"),
                                metrics=m.get("metrics") or {}, routing_decision=m.get("routing") or {},
                                partial=bool(m.get("partial")), message_id=m["id"])
        return Reply(response["response"], response)

    def _failed(self, view, outcome, args, client):
        exc = outcome.error
        if isinstance(exc, ModelCallError):
            text = exc.partial or outcome.text
            response = dict(exc.response or {})
            if text:
                response.setdefault("response", text)
                response["partial"] = True
                self._publish_value(Reply(text, response), args)
            self._finish(view, text, f"error: {exc}", error=True)
            exc._render_traceback_ = lambda: [f"ModelCallError: {exc}"]  # type: ignore[attr-defined]
            raise exc
        if type(exc).__name__ == "StructuredOutputError":  # the reply is kept (stored, and as oblix_last)
            text = getattr(exc, "text", "") or outcome.text
            if text:
                self._publish_value(Reply(text, dict(getattr(exc, "response", None) or {}, response=text)), args)
            self._finish(view, text, f"error: {exc}", error=True, streamed=not args.no_stream)
            exc._render_traceback_ = lambda: [f"StructuredOutputError: {exc}"]  # type: ignore[attr-defined]
            raise exc
        if view is not None:
            self._finish(view, outcome.text, f"error: {type(exc).__name__}: {exc}", error=True)
        if isinstance(exc, (NoModelHookedError, SessionNotFoundError, InvalidSessionIdError, ValueError)):
            raise UsageError(f"%%oblix: {exc}") from None
        raise exc

    def _ensure_model(self, client, model_id: Optional[str]) -> bool:
        """Hook what the cell needs if possible. False (after a short message) if nothing can answer."""
        from ..models.base import ModelType

        if model_id and model_id not in client.models:
            kind, _, name = model_id.partition(":")
            if kind == ModelType.LLAMACPP.value and name:
                self._hook(client, ModelType.LLAMACPP, name)
                return True
            raise UsageError(f"%%oblix: model {model_id!r} is not hooked (hooked: {list(client.models) or 'none'})"
                             f"; hook it first, e.g. await get_client().hook_model(ModelType.OPENAI, ...)")
        if client.models:
            return True
        if self.auto_hook and state.embedded_model_available():
            self._hook(client, ModelType.LLAMACPP, state.EMBEDDED_MODEL[1])
            print(f"(no model was hooked: hooked the embedded model {state.EMBEDDED_MODEL_ID})")
            return True
        print(state.HOW_TO_HOOK, file=sys.stderr)
        return False

    def _hook(self, client, model_type, name: str) -> None:
        try:
            runtime.run(client.hook_model(model_type, name))
        except ModelUnavailableError as exc:
            raise UsageError(f"%%oblix: {exc}") from None

    def _session_for(self, client, args, prompt: str) -> str:
        if args.new_session:
            return runtime.run(client.create_and_use_session(title=args.title or _title(prompt)))
        if args.session:
            sid = self.resolve(args.session)
            client.use_session(sid)
            return sid
        sid = client.current_session_id
        if sid is not None and client.sessions.exists(sid):
            return sid
        return runtime.run(client.create_and_use_session(title=args.title or _title(prompt)))


OblixMagics.oblix_session.__doc__ = session_parser().format_help()
OblixMagics.oblix.__doc__ = oblix_parser().format_help()
OblixMagics.oblix_chat.__doc__ = chat_parser().format_help()
OblixMagics.oblix_stats.__doc__ = stats_parser().format_help()
OblixMagics.oblix_fix.__doc__ = fix_parser().format_help()
OblixMagics.oblix_model.__doc__ = model_parser().format_help()


def fix_prompt(record, *, code_only: bool, max_chars: int) -> str:
    """What %oblix_fix asks: the cell's source and its traceback, and what kind of answer to give."""
    from .describe import clip

    source = clip(record.source.rstrip() or "(source not recorded)", max_chars // 2)
    tb = clip(record.traceback, max_chars // 2)
    ask = ("Reply with the corrected code of the whole cell only, in one ```python code block, "
           "without explanation." if code_only else
           "Explain the cause in one or two sentences, then give the corrected code of the whole cell in one "
           "```python code block.")
    return (f"This notebook cell (In [{record.execution_count}]) raised {record.ename}.\n\n"
            f"The cell:\n```python\n{source}\n```\n\nThe error:\n```\n{tb}\n```\n\n{ask}")


async def _notebook_chat_handler(client, prompt: str, session_id: str, **kwargs: Any) -> dict:
    """``execute(..., chat=True)`` in a kernel: the chat panel (imported on first use)."""
    from .widgets import chat_handler

    return await chat_handler(client, prompt, session_id, **kwargs)

# --------------------------------------------------------------------------- extension entry points
_loaded: dict[int, OblixMagics] = {}


def load_ipython_extension(ipython) -> None:
    """``%load_ext oblix_nb``: register the magics as a configurable of the shell."""
    if id(ipython) in _loaded:
        unload_ipython_extension(ipython)
    magics = OblixMagics(shell=ipython, config=ipython.config, parent=ipython)
    ipython.register_magics(magics)
    errhook.install(ipython)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    transform.register(ipython)  # `%oblix_chat What is X?` is a prompt, not a help lookup
    _loaded[id(ipython)] = magics


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext oblix_nb``: remove the magics and the notebook sink (the client and its state stay)."""
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    errhook.uninstall(ipython)
    transform.unregister(ipython)
    manager = ipython.magics_manager
    for kind, names in magics.magics.items():
        table = manager.magics.get(kind, {})
        for name in names:
            bound = table.get(name)
            if bound is not None and getattr(bound, "__self__", None) is magics:
                del table[name]
    manager.registry.pop(type(magics).__name__, None)
    try:
        ipython.configurables.remove(magics)
    except ValueError:
        pass
    magics._uninstall()
