"""The ``%%oblix`` pipeline (and ``%oblix_fix``, which asks the same way): choose and hook the model, build the
prompt from the cell and its notebook references, send it on the background loop, stream the reply into the
cell's output, publish ``oblix_last`` / ``--var``, and handle interrupts and failures.

``--over DF`` runs the cell as a template over DF's rows (``client.map``). :class:`CellPipeline` reads the
magics' settings (``default_model``, ``auto_hook``, ``stream_interval``, ``show_footer``, ``frontend``) from
the :class:`~oblix_nb.notebook.magics.OblixMagics` instance it serves.
"""
from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from .. import default_model, runtime
from .._util import new_id, title_from
from ..errors import (
    InvalidSessionIdError,
    ModelCallError,
    ModelUnavailableError,
    NoModelHookedError,
    SessionNotFoundError,
)
from .display import QueueSink, Reply, ReplyDisplay, drive, extract_code, format_footer, shell_publisher
from .formats import ANY_JSON_SCHEMA, HINTS, final_bundle, stream_format

if TYPE_CHECKING:
    from ..client import OblixClient

DEFAULT_MODEL_KEY = "notebook:default_model"  # the store setting %oblix_model default writes
DEFAULT_NOTE = "default model: "  # the footer part saying which model was hooked by default, and why


def _title(prompt: str) -> str:
    """A session title from what was asked: the question, never the "Context from the notebook:" block."""
    from .references import CONTEXT_HEADING

    if prompt.lstrip().startswith(CONTEXT_HEADING) and "\n\n---\n\n" in prompt:
        prompt = prompt.rsplit("\n\n---\n\n", 1)[1]
    return title_from(prompt, "Notebook session")


def _clean_interrupt(note: str) -> KeyboardInterrupt:
    """The KeyboardInterrupt %%oblix re-raises after an interrupt (so "Run All" stops there), shown by IPython
    and Jupyter as the one line ``note`` instead of a traceback."""
    exc = KeyboardInterrupt(note)
    exc._render_traceback_ = lambda: [note]  # type: ignore[attr-defined]
    return exc


def fix_prompt(record, *, code_only: bool, max_chars: int) -> str:
    """What %oblix_fix asks: the cell's source and its traceback, and what kind of answer to give."""
    from .describe import clip
    from .tracebacks import short_paths, trim

    source = clip(record.source.rstrip() or "(source not recorded)", max_chars // 2)
    hint = clip(short_paths(getattr(record, "hint", "") or ""), max_chars // 6)
    tb = trim(record.traceback, max_chars // 2 - len(hint))
    ask = ("Reply with the corrected code of the whole cell only, in one ```python code block, "
           "without explanation." if code_only else
           "Explain the cause in one or two sentences, then give the corrected code of the whole cell in one "
           "```python code block.")
    return (f"This notebook cell (In [{record.execution_count}]) raised {record.ename}.\n\n"
            f"The cell:\n```python\n{source}\n```\n\nThe error:\n```\n{tb}\n```\n\n"
            + (f"What the failing line works on:\n{hint}\n\n" if hint else "") + ask)


class CellPipeline:
    """One ``%%oblix`` / ``%oblix_fix`` request for ``magics`` (an OblixMagics: its shell and settings)."""

    def __init__(self, magics):
        self.m = magics
        self.shell = magics.shell

    @property
    def client(self):
        return self.m.client

    # ------------------------------------------------------------------ %%oblix
    def run(self, args, cell: str):
        """The ``%%oblix`` cell, ``args`` parsed from its line."""
        if args.var is not None and not args.var.isidentifier():
            raise UsageError(f"%%oblix --var: {args.var!r} is not a valid variable name")
        if args.over is not None:
            return self._over(args, cell or "")
        if args.into is not None or args.concurrency is not None or args.cascade is not None \
                or args.min_confidence is not None:
            raise UsageError("%%oblix: --into, --concurrency, --cascade and --min-confidence go with --over DF")
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
        return self._ask(client, prompt.text, args, model_id, fmt=fmt, schema=schema, title=prompt.question)

    # ------------------------------------------------------------------ %oblix_fix
    def fix(self, args):
        """``%oblix_fix``: ask about the last (or cell N's) recorded error."""
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
        return self._ask(client, prompt.text, args, model_id, fmt=args.format, title=question)

    # ------------------------------------------------------------------ helpers
    def _model_arg(self, client: OblixClient, model: str | None, prog: str) -> str | None:
        """The model to force: --model, else the configured or stored default; aliases resolved."""
        chosen = model or self.m.default_model or self._stored_default(client) or None
        try:
            return client.resolve_model_id(chosen)
        except NoModelHookedError as exc:
            raise UsageError(f"{prog}: {exc}") from None

    @staticmethod
    def _stored_default(client: OblixClient) -> str | None:
        try:
            value = client.sessions.get_setting(DEFAULT_MODEL_KEY)
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

    def _context_budget(self, client: OblixClient, model_id: str | None, max_tokens: int | None) -> int:
        """Characters for the notebook context (attachments, inlined cells): about 60% of what the model's
        context window leaves after the reply (the smallest window of the hooked models when routing decides)."""
        models = client.models
        chosen = [models[model_id]] if model_id in models else list(models.values())
        windows = [m.context_window for m in chosen if m.context_window]
        window = min(windows) if windows else 2048
        reserve = max_tokens or window // 4
        return int(min(max((window - reserve) * 0.6 * 3, 1200), 200_000))

    def _build_prompt(self, prog: str, template: str, args, client: OblixClient, model_id: str | None):
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

    def _ask(self, client: OblixClient, prompt: str, args, model_id: str | None, *, fmt: str = "markdown",
             schema: Any = None, title: str | None = None):
        """Send ``prompt`` (what the model sees and the session stores) and show the reply in ``fmt``;
        a session this creates is titled from ``title`` (the question without its context), else ``prompt``."""
        session_id = self._session_for(client, args, title if title and title.strip() else prompt)
        system = "\n\n".join(part for part in (args.system, HINTS.get(fmt)) if part) or None
        rich = self.m.rich()
        sink = QueueSink()
        request_id = new_id()
        kwargs: dict[str, Any] = dict(temperature=args.temperature, max_tokens=args.max_tokens,
                                      request_id=request_id, session_id=session_id,
                                      stream=not args.no_stream, display_metrics=self.m.show_footer, sink=sink)
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
            view = ReplyDisplay(shell_publisher(self.shell), fmt=stream_format(fmt), show_footer=self.m.show_footer)
            view.show("waiting for the whole reply…" if args.no_stream else "routing…")
        future = runtime.submit(job())
        outcome = drive(sink, future, view, interval=self.m.stream_interval)

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
        footer = format_footer(response) if self.m.show_footer else None
        why = default_model.take_reason(client, response.get("model_id"))  # the first reply of a default model
        if footer and why:
            footer += f" · {DEFAULT_NOTE}{why}"
        self._finish(view, text, footer, streamed=not args.no_stream, bundle=bundle)
        self._publish_value(reply, args)
        if fmt == "code":
            self._insert_code(reply, response)
        return None

    def _insert_code(self, reply: Reply, response: dict) -> None:
        """``-f code``: the reply's code into a new cell below -- unless the reply was cut at ``max_tokens``
        or is partial (half a program is not a fix): then say so; the text stays in ``oblix_last``."""
        metrics = response.get("metrics") or {}
        if metrics.get("finish_reason") == "length" or response.get("partial"):
            tokens = metrics.get("output_tokens")
            print(f"-f code: no cell inserted: the reply was cut at max_tokens"
                  f"{f' ({tokens} tokens)' if tokens is not None else ''}, so its code is incomplete. The text is "
                  f"above and in oblix_last (oblix_last.code: its code so far); ask again with a larger "
                  f"--max-tokens.", file=sys.stderr)
            return
        code = extract_code(str(reply))
        if not code.strip():
            print("-f code: no cell inserted: the reply holds no code.", file=sys.stderr)
            return
        self.shell.set_next_input(code, replace=False)

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
        if args.cascade is None and not self._ensure_model(client, model_id):
            return None
        kwargs: dict[str, Any] = dict(schema=schema, model_id=model_id, temperature=args.temperature,
                                      max_tokens=args.max_tokens, concurrency=args.concurrency, system=args.system)
        if args.cascade is not None:
            if model_id is not None:
                raise UsageError("%%oblix --over: give either --model or --cascade (the cascade names the models)")
            kwargs["cascade"] = [m.strip() for m in args.cascade.split(",") if m.strip()]
            kwargs["min_confidence"] = args.min_confidence
        elif args.min_confidence is not None:
            raise UsageError("%%oblix --over: --min-confidence goes with --cascade A,B")
        if args.session:
            kwargs["session_id"] = self.m.resolve(args.session)
        try:
            result = client.map_sync(data, template, **kwargs)
        except (TypeError, ValueError, NoModelHookedError, SessionNotFoundError) as exc:
            raise UsageError(f"%%oblix --over: {exc}") from None
        except KeyboardInterrupt:
            return None  # map printed its one-line note (finished rows are stored); no traceback on top
        ns[into] = result
        errors = int(result["error"].notna().sum()) if "error" in result else 0
        cached = int(result["cached"].sum()) if "cached" in result else 0
        print(f"{len(result)} rows -> {into} ({cached} from the store, {errors} with errors)")
        return result

    def _finish(self, view: ReplyDisplay | None, text: str, footer: str | None, *, error: bool = False,
                streamed: bool = True, bundle: dict | None = None) -> None:
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

    def _partial_reply(self, client: OblixClient, session_id: str | None, request_id: str, outcome) -> Reply:
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

    def _failed(self, view, outcome, args, client: OblixClient):
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

    def _ensure_model(self, client: OblixClient, model_id: str | None) -> bool:
        """Hook what the cell needs if possible. False (after a short message) if nothing can answer."""
        from ..models.base import ModelType

        if model_id and model_id not in client.models:
            kind, _, name = model_id.partition(":")
            if kind == ModelType.LLAMACPP.value and name:
                self._hook(lambda: runtime.run(client.hook_model(ModelType.LLAMACPP, name)))
                return True
            raise UsageError(f"%%oblix: model {model_id!r} is not hooked (hooked: {list(client.models) or 'none'})"
                             f"; hook it first, e.g. await get_client().hook_model(ModelType.OPENAI, ...)")
        if client.models:
            return True
        if self.m.auto_hook:  # the one default-model policy (oblix_nb.default_model)
            hooked = self._hook(lambda: default_model.ensure_model_sync(client))
            if hooked:
                what = "the embedded model " if hooked == default_model.EMBEDDED_MODEL_ID else ""
                print(f"(no model was hooked: hooked {what}{hooked})")
                return True
        print(default_model.HOW_TO_HOOK, file=sys.stderr)
        return False

    @staticmethod
    def _hook(call):
        try:
            return call()
        except ModelUnavailableError as exc:
            raise UsageError(f"%%oblix: {exc}") from None

    def _session_for(self, client: OblixClient, args, prompt: str) -> str:
        if args.new_session:
            return runtime.run(client.create_and_use_session(title=args.title or _title(prompt)))
        if args.session:
            sid = self.m.resolve(args.session)
            client.use_session(sid)
            return sid
        sid = client.current_session_id
        if sid is not None and client.sessions.exists(sid):
            return sid
        return runtime.run(client.create_and_use_session(title=args.title or _title(prompt)))

