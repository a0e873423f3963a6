"""An IPython input transformer so that a question mark ending a prompt stays part of the prompt.

IPython reads any line ending in ``?`` as a help request (its ``HelpEnd`` token transformer), so
``%oblix_chat What is X?`` would open the help pager on ``What is X`` instead of the chat panel. This cleanup
transformer, registered by ``%load_ext oblix_nb``, runs before IPython's token transformers and turns such a
line into the very call IPython itself makes for a line magic
(``get_ipython().run_line_magic(name, args)``), so references (``{ref}``, ``$name``; never evaluated, see
:mod:`.parsers`) and everything else behave as for any other line. ``%oblix_chat?`` and ``%oblix_chat??``
(no words after the name) still show the help.
"""
from __future__ import annotations

import re

# Line magics whose arguments are free text that may end in "?".
TEXT_MAGICS = ("oblix_chat", "oblix_session")

_LINE_RE = re.compile(r"^(?P<indent>[ \t]*)%(?P<name>" + "|".join(TEXT_MAGICS) +
                      r")[ \t]+(?P<args>.*[^?\s].*\?)[ \t]*(?P<end>\r?\n?)$")


def keep_question_marks(lines: list[str]) -> list[str]:
    """IPython cleanup transformer: ``%oblix_chat ... ?`` -> an explicit ``run_line_magic`` call."""
    if lines and lines[0].lstrip().startswith("%%"):
        return lines  # a cell magic's body is its text (e.g. a %%oblix prompt), never Python
    out = []
    for line in lines:
        m = _LINE_RE.match(line)
        if m is None:
            out.append(line)
            continue
        call = f"get_ipython().run_line_magic({m['name']!r}, {m['args']!r})"
        out.append(f"{m['indent']}{call}{m['end'] or chr(10)}")
    return out


def register(shell) -> None:
    transforms = getattr(shell, "input_transformers_cleanup", None)
    if transforms is not None and keep_question_marks not in transforms:
        transforms.append(keep_question_marks)


def unregister(shell) -> None:
    transforms = getattr(shell, "input_transformers_cleanup", None)
    while transforms is not None and keep_question_marks in transforms:
        transforms.remove(keep_question_marks)
