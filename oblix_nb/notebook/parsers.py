"""Argument parsing of the magics: one tokenizer (shared with the session browser's filter box), argparse
parsers that never exit the kernel, ``key=value`` pairs with JSON-typed values, and the reference rules for
line arguments.

**Tokens** (:func:`split_line`): whitespace separates tokens, except inside quotes (``'…'``, ``"…"``) and
inside a bracket group (``[…]``, ``{…}``) that closes on the line; a backslash outside quotes escapes the next
character. A ``key=value`` token keeps its quotes and brackets as typed, so its value keeps its JSON type
(``x="3"`` is the string "3", ``x=3`` the number 3, ``tags=[1, 2]`` a list, ``t="a=b c"`` the string
"a=b c"); other tokens lose their quotes like in a shell. Bad quoting is :class:`LineSyntaxError` (both a
``UsageError`` and a ``ValueError``).

**References** (:func:`expand_args`): the magics opt out of IPython's own ``{expr}`` / ``$name`` expansion of
the line (which evaluates any Python expression). Instead a line follows the documented rules of a ``%%oblix``
cell (:mod:`.references`): a token that is exactly ``$name`` is the value of the variable ``name``; ``{ref}``
in a free-text argument (a prompt, ``--system``, ``--title``, ``--model``, ``--since``…) is a reference parsed
with :mod:`ast` and walked over the whitelist; no call, operator or expression is ever evaluated and anything
unknown stays literal.
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterable
from typing import Any

from IPython.core.error import UsageError

from .formats import FORMATS
from .kv import parse_pairs


class HelpShown(Exception):
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

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        if status:
            raise UsageError((message or f"{self.prog}: error").strip())
        if message:
            print(message, end="")
        raise HelpShown()

    def print_help(self, file=None) -> None:
        print(self.format_help(), file=file or sys.stdout)


class LineSyntaxError(UsageError, ValueError):
    """A line (or a filter) that cannot be split into tokens: an unterminated quote."""


_KV_RE = re.compile(r"^[A-Za-z_][\w.\-]*=")
_IDENT_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_OPEN = {"[": "]", "{": "}"}
_CLOSE = set(_OPEN.values())


def _quote_end(text: str, i: int) -> int:
    """Index of the quote closing the one at ``text[i]`` (in "…", a backslash escapes); -1 if none."""
    quote, j = text[i], i + 1
    while j < len(text):
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j
        j += 1
    return -1


def _group_end(text: str, i: int) -> int:
    """Index just after the bracket group opening at ``text[i]`` (nested brackets and quotes inside it
    respected); -1 if it does not close on the line (the bracket is then an ordinary character)."""
    stack = [_OPEN[text[i]]]
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch in "\"'":
            j = _quote_end(text, j)
            if j < 0:
                return -1
        elif ch in _OPEN:
            stack.append(_OPEN[ch])
        elif ch in _CLOSE:
            if ch != stack.pop():
                return -1
            if not stack:
                return j + 1
        j += 1
    return -1


def _unescape_double(inner: str) -> str:
    return re.sub(r'\\(["\\])', r"\1", inner)


def split_line(line: str) -> list[str]:
    """Split a magic's line (or the browser's metadata filter) into tokens; see the module doc for the rules.

    ``'new --title "My title" --meta n=3 x="3" tags=[1, 2]'`` ->
    ``["new", "--title", "My title", "--meta", "n=3", 'x="3"', "tags=[1, 2]"]``.
    """
    tokens: list[str] = []
    raw: list[str] = []     # the token as typed
    plain: list[str] = []   # the token with shell quoting removed
    text = line or ""
    i, n = 0, len(text)

    def flush() -> None:
        typed = "".join(raw)
        tokens.append(typed if _KV_RE.match(typed) else "".join(plain))
        raw.clear()
        plain.clear()

    while i < n:
        ch = text[i]
        if ch.isspace():
            if raw:
                flush()
            i += 1
        elif ch in "\"'":
            end = _quote_end(text, i)
            if end < 0:
                raise LineSyntaxError(f"unterminated {ch} quote in: {text}")
            inner = text[i + 1:end]
            raw.append(text[i:end + 1])
            plain.append(_unescape_double(inner) if ch == '"' else inner)
            i = end + 1
        elif ch in _OPEN and (end := _group_end(text, i)) > 0:
            raw.append(text[i:end])
            plain.append(text[i:end])
            i = end
        elif ch == "\\" and i + 1 < n:
            raw.append(text[i:i + 2])
            plain.append(text[i + 1])
            i += 2
        else:
            raw.append(ch)
            plain.append(ch)
            i += 1
    if raw:
        flush()
    return tokens


def parse_pairs_text(text: str) -> dict:
    """``"project=alpha n=3 tags=[1, 2]"`` -> ``{"project": "alpha", "n": 3, "tags": [1, 2]}``: the line split
    by :func:`split_line`, values typed by :func:`oblix_nb.notebook.kv.parse_value`. ValueError when bad."""
    return parse_pairs(split_line(text or ""))


# --------------------------------------------------------------------------- references in line arguments
def expand_dollars(tokens: Iterable[str], namespace: dict) -> list[str]:
    """A token that is exactly ``$name`` becomes ``str(value of name)`` (when ``name`` exists); nothing else
    about ``$`` is special (``$(cmd)``, ``$x.y``, ``$5`` stay as typed)."""
    out = []
    for token in tokens:
        m = _IDENT_RE.fullmatch(token)
        out.append(str(namespace[m.group(1)]) if m and m.group(1) in namespace else token)
    return out


def expand_text(text: str | None, shell: Any, max_chars: int = 4000) -> str | None:
    """``{ref}`` in one argument's text replaced by the reference's value, by the rules of a ``%%oblix`` cell
    (:mod:`.references`: never evaluated; unknown text stays literal; ``{{ref}}`` is a literal ``{ref}``).
    DataFrames and arrays are not inlined in an argument: their reference stays as written."""
    if not text or "{" not in text or shell is None:
        return text
    from .references import expand_inline

    return expand_inline(text, shell, max_chars=max_chars)


def expand_args(args: argparse.Namespace, shell: Any, names: Iterable[str]) -> argparse.Namespace:
    """Apply :func:`expand_text` to the free-text arguments ``names`` of parsed ``args`` (str or list of str)."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, expand_text(value, shell))
        elif isinstance(value, list):
            setattr(args, name, [expand_text(v, shell) if isinstance(v, str) else v for v in value])
    return args


def parse_line(parser: MagicArgumentParser, line: str, shell: Any = None,
               text_args: Iterable[str] = ()) -> argparse.Namespace:
    """Tokenize ``line``, expand ``$name`` tokens, parse with ``parser`` and expand references in the free-text
    arguments ``text_args``. Raises :class:`HelpShown` after ``-h`` printed the help."""
    namespace = getattr(shell, "user_ns", None) or {}
    args = parse(parser, expand_dollars(split_line(line), namespace))
    return expand_args(args, shell, text_args)


def parse_kv(tokens: list[str] | None) -> dict:
    """JSON-typed ``key=value`` tokens (see :func:`oblix_nb.notebook.kv.parse_value`); bad ones: UsageError."""
    try:
        return parse_pairs(tokens or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
            braces are left alone (nothing is ever evaluated); {{name}} gives a literal {name}; the same
            rules fill in --system, --title, --model and --session on the %%oblix line. A DataFrame / array
            named this way, or with --context, is attached as a compact description (shape, dtypes, missing
            values, describe(), rows).
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
    over.add_argument("--cascade", metavar="A,B", help="models in cascade order (ids or aliases, comma-separated): "
                      "each row goes to the first; rows under --min-confidence (or invalid) go to the next")
    over.add_argument("--min-confidence", type=_float_arg("min-confidence", 0.0, 1.0), metavar="X",
                      help="the cascade's confidence threshold, 0-1 (default 0.8)")
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
    disc = sub.add_parser("discover", help="models on this machine (client.discover_models()) and the one "
                                           "%%%%oblix hooks when none is")
    disc.add_argument("--servers", action="store_true",
                      help="also ask OpenAI-compatible servers on 127.0.0.1 (ports 1234, 8080, 8000)")
    disc.add_argument("--shipped", action="store_true", help="also list models shipped in wheels (SmolLM2-135M)")
    return p


def chat_parser() -> MagicArgumentParser:
    p = MagicArgumentParser(
        prog="%oblix_chat", description=textwrap.dedent("""\
            Open a chat panel (a widget) on a session: type, send, watch the reply stream, stop it.
            Default: the current session (one is created if there is none); with PROMPT words, a new session
            titled from them (unless --session ID). Any PROMPT words are sent at once;
            {name}, {In[3]}, {d["k"]} ... in them are filled in as in a %%oblix cell (never evaluated).
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
    p.add_argument("--theme", choices=("auto", "light", "dark"), default="auto",
                   help="figure colours: light or dark exactly as given; default auto: the figures follow the "
                        "notebook's theme (light where the page does not say)")
    p.add_argument("--var", metavar="NAME", help="also store the table in this variable")
    return p


def parse(parser: MagicArgumentParser, tokens: list[str]) -> argparse.Namespace:
    """``parser.parse_args(tokens)`` with every error a UsageError."""
    try:
        return parser.parse_args(tokens)
    except argparse.ArgumentError as exc:  # exit_on_error=False paths
        raise UsageError(f"{parser.prog}: {exc}\n{parser.format_usage().rstrip()}") from None

