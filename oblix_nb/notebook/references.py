"""References in ``%%oblix`` prompts: what a ``{...}`` in a cell can point at, and the prompt they build.

A reference is one of (whitespace inside the braces is not allowed):

==================  ==========================================================================================
``{name}``          a variable; str and numbers inline as ``str(value)``, containers as a bounded repr
``{In[3]}``         cell 3's source as typed (from IPython's raw input history)
``{Out[3]}``        cell 3's result, as the display protocol's ``text/plain``
``{Err[3]}``        the traceback of the error cell 3 raised (recorded by :mod:`.errhook`)
``{_}`` ``{__}``    the last / second-to-last result (like ``Out``); ``{___}`` too
``{cfg.model}``     attribute access (names starting with ``_`` are refused)
``{d["k"]}``        item access with a literal key: str, number, bool, None, or a tuple of those
==================  ==========================================================================================

Negative cell numbers count back from the current cell: ``{In[-1]}``, ``{Err[-1]}`` are the previous cell's.
A reference is parsed with :mod:`ast` and walked over that whitelist only: no calls, operators,
comprehensions or arbitrary expressions are ever evaluated. Anything that is not a reference, or whose
name, attribute, key or cell does not exist, stays in the prompt literally (so code, JSON and ``{expr}`` text
pass through), and ``{{ref}}`` is the escape for a literal ``{ref}``.

DataFrames, Series and arrays are not inlined: their place in the text names them (```df```) and a compact
description (:mod:`.describe`) is attached as context above the question, as ``--context NAME`` does.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, cast

from .describe import clip, describe, inline_text, is_data
from .errhook import CellError, current_cell, error_log

_BRACES = re.compile(r"\{\{([^{}\n]+)\}\}|\{([^{}\n]+)\}")
_CELLS = ("In", "Out", "Err")
_OUTPUT_NAMES = ("_", "__", "___")
CONTEXT_HEADING = "Context from the notebook:"


class UnknownReference(LookupError):
    """A reference that does not resolve (unknown name, attribute, key or cell)."""


@dataclass
class Resolved:
    """A resolved reference: ``kind`` is "source", "output", "error" or "value"."""
    ref: str
    kind: str
    value: Any


# --------------------------------------------------------------------------- parsing
def _literal(node: ast.AST) -> Any:
    """The value of a literal subscript key; ValueError for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        number = cast(float, node.operand.value)  # an int or a float (checked above)
        return -number if isinstance(node.op, ast.USub) else number
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    raise ValueError("not a literal key")


def _check(node: ast.AST) -> None:
    if isinstance(node, ast.Name):
        return
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise ValueError("private attribute")
        return _check(node.value)
    if isinstance(node, ast.Subscript):
        _literal(node.slice)
        return _check(node.value)
    raise ValueError(f"{type(node).__name__} is not allowed in a reference")


def parse(ref: str) -> ast.expr | None:
    """The reference's AST if ``ref`` is a reference (see the module doc), else None."""
    if not ref or ref != ref.strip() or len(ref) > 500:
        return None
    try:
        node = ast.parse(ref, mode="eval").body
        _check(node)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return node


# --------------------------------------------------------------------------- resolving
def _cell_number(shell: Any, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise UnknownReference("cell numbers are integers")
    return current_cell(shell) + n if n < 0 else n


def _cell(shell: Any, which: str, n: int) -> Resolved:
    ref = f"{which}[{n}]"
    if which == "In":
        hist = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None) or []
        if 0 < n < len(hist):
            return Resolved(ref, "source", hist[n])
        raise UnknownReference(ref)
    if which == "Out":
        outputs = getattr(getattr(shell, "history_manager", None), "output_hist", None)
        if outputs is None:
            outputs = shell.user_ns.get("Out", {})
        if n in outputs:
            return Resolved(ref, "output", outputs[n])
        raise UnknownReference(ref)
    log = error_log(shell)
    record = log.get(n) if log is not None else None
    if record is None:
        raise UnknownReference(ref)
    return Resolved(ref, "error", record)


def _walk(node: ast.AST, shell: Any, namespace: dict) -> Resolved:
    if isinstance(node, ast.Name):
        if node.id not in namespace:
            raise UnknownReference(node.id)
        return Resolved(node.id, "output" if node.id in _OUTPUT_NAMES else "value", namespace[node.id])
    if isinstance(node, ast.Subscript):
        key = _literal(node.slice)
        if isinstance(node.value, ast.Name) and node.value.id in _CELLS and isinstance(key, int) \
                and not isinstance(key, bool) and shell is not None:
            return _cell(shell, node.value.id, _cell_number(shell, key))
        base = _walk(node.value, shell, namespace)
        try:
            value = base.value[key]
        except Exception:  # noqa: BLE001 - missing key, wrong type, ...: the reference stays literal
            raise UnknownReference(ast.unparse(node)) from None
        return Resolved(ast.unparse(node), "value", value)
    if isinstance(node, ast.Attribute):
        base = _walk(node.value, shell, namespace)
        try:
            value = getattr(base.value, node.attr)
        except Exception:  # noqa: BLE001
            raise UnknownReference(ast.unparse(node)) from None
        if callable(value) and not isinstance(value, type):
            raise UnknownReference(ast.unparse(node))  # a method: no calls, and its repr says nothing
        return Resolved(ast.unparse(node), "value", value)
    raise UnknownReference(ast.unparse(node))


def resolve(ref: str, shell: Any, namespace: dict | None = None) -> Resolved:
    """Resolve one reference (text without braces). UnknownReference if it is not one or does not resolve."""
    node = parse(ref)
    if node is None:
        raise UnknownReference(ref)
    if namespace is None:
        namespace = getattr(shell, "user_ns", {}) or {}
    return _walk(node, shell, namespace)


# --------------------------------------------------------------------------- rendering
def output_text(shell: Any, value: Any) -> str:
    """A result's ``text/plain`` as the display protocol gives it (IPython's pretty repr)."""
    formatter = getattr(shell, "display_formatter", None)
    if formatter is not None:
        try:
            data, _ = formatter.format(value, include=("text/plain",))
            if "text/plain" in data:
                return data["text/plain"]
        except Exception:  # noqa: BLE001
            pass
    return repr(value)


def error_text(record: CellError, max_chars: int) -> str:
    """A recorded error as the model gets it: the traceback trimmed by frames with short paths
    (:func:`.tracebacks.trim`), then what the failing line works on (a DataFrame's columns), if recorded."""
    from .tracebacks import short_paths, trim

    hint = clip(short_paths(getattr(record, "hint", "") or ""), max(max_chars // 3, 0))
    text = trim(record.traceback, max(max_chars - len(hint) - 2, 0))
    return f"{text}\n\n{hint}" if hint else text


def inline(resolved: Resolved, shell: Any, max_chars: int) -> str:
    """The text a non-data reference is replaced by."""
    if resolved.kind == "source":
        return clip(resolved.value, max_chars)
    if resolved.kind == "error":
        record: CellError = resolved.value
        return error_text(record, max_chars)
    if resolved.kind == "output":
        return clip(output_text(shell, resolved.value), max_chars)
    return inline_text(resolved.value, max_chars)


def attachment(resolved: Resolved, shell: Any, max_chars: int) -> str:
    """The Markdown block attached as context for a reference (``--context NAME`` or a data ``{name}``)."""
    ref = resolved.ref
    if resolved.kind == "source":
        return clip(f"### `{ref}`: cell source\n\n```python\n{resolved.value}\n```", max_chars)
    if resolved.kind == "error":
        record: CellError = resolved.value
        from .tracebacks import short_paths, trim

        head = f"### `{ref}`: the error cell {record.execution_count} raised\n\n```\n"
        hint = clip(short_paths(getattr(record, "hint", "") or ""), max(max_chars // 3, 0))
        text = trim(record.traceback, max(max_chars - len(head) - len(hint) - 6, 0))
        return head + text + "\n```" + (f"\n\n{hint}" if hint else "")
    if resolved.kind == "output" and not is_data(resolved.value):
        return clip(f"### `{ref}`: output\n\n```\n{output_text(shell, resolved.value)}\n```", max_chars)
    return describe(resolved.value, ref, max_chars=max_chars)


@dataclass
class NotebookPrompt:
    """The prompt a cell builds: ``question`` (references expanded), the ``attachments`` (name, Markdown)
    described for the model, and ``text``, what is sent (and stored): the attachments above the question."""
    question: str
    attachments: list[tuple[str, str]] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return compose(self.question, self.attachments)


def compose(question: str, attachments: list[tuple[str, str]]) -> str:
    if not attachments:
        return question
    blocks = "\n\n".join(description for _, description in attachments)
    return f"{CONTEXT_HEADING}\n\n{blocks}\n\n---\n\n{question}"


def build_prompt(template: str, shell: Any, *, context: list[str] | None = None, budget_chars: int = 8000,
                 namespace: dict | None = None) -> NotebookPrompt:
    """Expand the references of ``template`` and describe the data it (and ``context``) names.

    ``budget_chars`` bounds the attachments together (each gets an equal share, at least 400 characters)
    and each inlined reference. A name in ``context`` that does not resolve raises UnknownReference.
    """
    if namespace is None:
        namespace = getattr(shell, "user_ns", {}) or {}
    prompt = NotebookPrompt(question="")
    data: dict[str, Resolved] = {}     # reference -> what to attach, in order of first mention
    for name in context or []:
        found = resolve(name, shell, namespace)
        data.setdefault(found.ref, found)

    def sub(match: re.Match) -> str:
        escaped, ref = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}" if parse(escaped) is not None else match.group(0)
        try:
            found = resolve(ref, shell, namespace)
        except UnknownReference:
            prompt.unresolved.append(ref)
            return match.group(0)
        prompt.resolved.append(ref)
        if is_data(found.value):
            data.setdefault(found.ref, found)
            return f"`{found.ref}`"
        return inline(found, shell, budget_chars)

    prompt.question = _BRACES.sub(sub, template)
    if data:
        share = max(budget_chars // len(data), 400)
        prompt.attachments = [(ref, attachment(found, shell, share)) for ref, found in data.items()]
    return prompt


def expand_inline(text: str, shell: Any, *, max_chars: int = 4000, namespace: dict | None = None) -> str:
    """``{ref}`` in ``text`` replaced by its value inline, as :func:`build_prompt` does, for a magic's argument
    (``--system``, ``--title``, ...): nothing is attached, so a DataFrame / array reference stays as written,
    as does anything that is not a resolvable reference. Nothing is ever evaluated."""
    if namespace is None:
        namespace = getattr(shell, "user_ns", {}) or {}

    def sub(match: re.Match) -> str:
        escaped, ref = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}" if parse(escaped) is not None else match.group(0)
        try:
            found = resolve(ref, shell, namespace)
        except UnknownReference:
            return match.group(0)
        if is_data(found.value):
            return match.group(0)
        return inline(found, shell, max_chars)

    return _BRACES.sub(sub, text)
