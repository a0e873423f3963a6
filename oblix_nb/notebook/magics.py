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

This module is the configuration and a thin dispatch: argument parsing (and the reference rules of magic
lines: IPython's ``{expr}``/``$var`` expansion is off for every magic) is in :mod:`.parsers`, the ``%%oblix``
pipeline in :mod:`.cell`, the "hook a model if none is hooked" policy in :mod:`oblix_nb.default_model`.

No event loop ever runs in the kernel's thread: every coroutine runs on the package's background loop
(:mod:`oblix_nb.runtime`), and the reply's display is driven from the main thread (see :mod:`.display`).
"""
from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Dict, Enum, Float, Int, Unicode, observe, validate

from .. import default_model, runtime
from ..errors import OblixError, SessionNotFoundError
from ..pricing import parse_price
from . import errhook, state, transform
from .cell import DEFAULT_MODEL_KEY, CellPipeline, fix_prompt  # noqa: F401  (fix_prompt: re-exported)
from .display import has_display_frontend, notebook_sink_factory, safe_html
from .parsers import (  # noqa: F401
    HelpShown,
    MagicArgumentParser,
    chat_parser,
    fix_parser,
    model_parser,
    oblix_parser,
    parse_kv,
    parse_line,
    session_parser,
    split_line,
    stats_parser,
)

if TYPE_CHECKING:
    from ..client import OblixClient

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

    message: str

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
# Free-text arguments of %%oblix and %oblix_fix whose {references} are filled in (by the cell's rules).
_ASK_TEXT_ARGS = ("model", "session", "title", "system")


NO_REPLY_LABELS = {"model_id": "(no reply: every model failed)", "route": "(no reply: not routed)",
                   "session_id": "(no session)"}


def label_missing(frame, by: str):
    """The %oblix_stats table with its None key (requests that got no reply) labelled instead of ``None``;
    ``client.stats()`` itself keeps None."""
    index = frame.index
    label = NO_REPLY_LABELS.get(index.name)
    if label is None or not len(frame) or not index.isna().any():
        return frame
    frame = frame.copy()
    frame.index = index.map(lambda key: label if key is None or key != key else key).rename(index.name)
    return frame


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
    def client(self) -> OblixClient:
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

    def _made(self, what: str, session_id: str, current: bool) -> _Said:
        return _Said(session_id, f"{what} {self._describe(session_id, counts=False)}"
                                 + (" — now current" if current else ""))

    # ------------------------------------------------------------------ %oblix_session
    @no_var_expand
    @line_magic
    def oblix_session(self, line: str = ""):
        parser = session_parser()
        try:
            args = parse_line(parser, line, self.shell, text_args=("title",))
        except HelpShown:
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
    @no_var_expand
    @line_magic
    def oblix_chat(self, line: str = ""):
        try:
            args = parse_line(chat_parser(), line, self.shell, text_args=("title", "model", "session"))
        except HelpShown:
            return None
        from .references import build_prompt
        from .widgets import show_chat_panel

        client = self.client
        prompt = question = " ".join(args.prompt)
        if "{" in prompt:  # references follow the %%oblix cell rules (never evaluated)
            built = build_prompt(prompt, self.shell)
            prompt, question = built.text, built.question
        if prompt.strip() and not args.session:  # a question starts its own session, titled from it
            args.new_session = True
        session_id = CellPipeline(self)._session_for(client, args, question or prompt or "Chat")
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
    @no_var_expand
    @line_magic
    def oblix_stats(self, line: str = ""):
        """Show ``client.stats()`` as a table and, unless ``--no-plot``, the dashboard's figures."""
        try:
            args = parse_line(stats_parser(), line, self.shell, text_args=("since", "until"))
        except HelpShown:
            return None
        filters = parse_kv(args.filter) or None
        try:
            frame = self.client.stats(by=args.by, since=args.since, until=args.until, filter_metadata=filters)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"%oblix_stats: {exc}") from None
        frame = label_missing(frame, args.by)
        shell = self.shell
        assert shell is not None  # a registered magic has its shell
        if args.var:
            shell.user_ns[args.var] = frame
        if args.no_plot:
            return frame
        from IPython.display import Image, display

        display(frame)
        explicit = args.theme in ("light", "dark")  # --theme given: exactly that; else follow the page's
        dashboard = self.client.plot_stats(since=args.since, until=args.until, filter_metadata=filters,
                                           theme=args.theme if explicit else "light", follow_page=not explicit)
        formatter = shell.display_formatter
        assert formatter is not None  # made with the shell
        png = formatter.formatters["image/png"]
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
            args = parse_line(fix_parser(), line, self.shell, text_args=_ASK_TEXT_ARGS)
        except HelpShown:
            return None
        return CellPipeline(self).fix(args)

    @no_var_expand
    @line_magic
    def oblix_model(self, line: str = ""):
        try:
            args = parse_line(model_parser(), line, self.shell, text_args=("model", "model_id"))
        except HelpShown:
            return None
        from .modelinfo import model_table

        client = self.client
        command = args.command or "list"
        try:
            if command == "list":
                table = model_table(client, self.default_model or CellPipeline._stored_default(client),
                                    timeout=getattr(args, "timeout", 3.0))
                if not client.models:
                    print("no model is hooked yet (%%oblix hooks the strongest local model on first use; see "
                          "%oblix_model discover)", file=sys.stderr)
                return table
            if command == "alias":
                if args.name is None:
                    return client.model_aliases()
                if args.model_id is None:
                    raise UsageError("%oblix_model alias NAME MODEL_ID: give the model id the alias stands for")
                target = client.resolve_model_id(args.model_id)  # an alias of an alias: its model
                assert target is not None  # a model_id was given
                client.set_model_alias(args.name, target)
                return _Said(args.name, f"alias {args.name} → {target} (kept in {client.sessions.url})")
            if command == "unalias":
                if not client.remove_model_alias(args.name):
                    raise UsageError(f"%oblix_model unalias: no alias {args.name!r} "
                                     f"(aliases: {', '.join(client.model_aliases()) or 'none'})")
                return _Said(args.name, f"alias {args.name} removed")
            if command == "default":
                return self._model_default(client, args.model)
            if command == "discover":
                return self._model_discover(client, args)
        except UsageError:
            raise
        except _CLIENT_ERRORS as exc:
            raise UsageError(f"%oblix_model {command}: {exc}") from None
        return None

    @staticmethod
    def _model_discover(client, args):
        """``%oblix_model discover``: the DataFrame, and (on stderr) what %%oblix would hook, and why."""
        df = client.discover_models(probe_servers=args.servers, shipped=args.shipped)
        pick, reason = default_model.choose_model()  # the policy itself, not a second opinion
        print(f"{len(df)} model{'s' if len(df) != 1 else ''} found. With nothing hooked, %%oblix hooks "
              f"{pick or 'nothing'}: {reason}", file=sys.stderr)
        return df

    def _model_default(self, client: OblixClient, model: str | None):
        if model is None:
            current = self.default_model or CellPipeline._stored_default(client)
            return _Said(current or "", f"default model: {current}" if current
                         else "no default model: routing decides (set one with %oblix_model default MODEL)")
        if model.lower() in ("none", "auto", "-"):
            client.sessions.delete_setting(DEFAULT_MODEL_KEY)
            self.default_model = ""
            return _Said("", "no default model: routing decides")
        client.resolve_model_id(model)  # a model id or a known alias
        client.sessions.set_setting(DEFAULT_MODEL_KEY, model)
        self.default_model = model
        return _Said(model, f"default model: {model} (kept in {client.sessions.url})")

    # ------------------------------------------------------------------ %%oblix
    @no_var_expand
    @cell_magic
    def oblix(self, line: str, cell: str):
        try:
            args = parse_line(oblix_parser(), line, self.shell, text_args=_ASK_TEXT_ARGS)
        except HelpShown:
            return None
        return CellPipeline(self).run(args, cell)


OblixMagics.oblix_session.__doc__ = session_parser().format_help()
OblixMagics.oblix.__doc__ = oblix_parser().format_help()
OblixMagics.oblix_chat.__doc__ = chat_parser().format_help()
OblixMagics.oblix_stats.__doc__ = stats_parser().format_help()
OblixMagics.oblix_fix.__doc__ = fix_parser().format_help()
OblixMagics.oblix_model.__doc__ = model_parser().format_help()


async def _notebook_chat_handler(client: OblixClient, prompt: str, session_id: str, **kwargs: Any) -> dict:
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
    found = _loaded.pop(id(ipython), None)
    if found is None:
        return
    magics: OblixMagics = found
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
