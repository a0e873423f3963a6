"""``-f math``: the LaTeX sanitiser is an allowlist: unknown commands never reach MathJax, whatever the spelling."""
from __future__ import annotations

import re

import pytest

from oblix_nb.notebook.formats import final_bundle
from oblix_nb.notebook.render import LATEX_ALLOWED, sanitize_latex

ATTACKS = [
    r"\href{javascript:alert(1)}{click}",
    "\\href%\n{javascript:alert(1)}{click}",
    "\\href % a comment\n  {javascript:alert(1)}%\n{click}",
    "\\href{javas%\ncript:alert(1)}{click}",
    r"\bbox[red; background-image:url(javascript:alert(1))]{x}",
    r"\bbox[5px,border:2px solid red]{x}",
    r"\newenvironment{evil}{\href{javascript:1}{}}{} \begin{evil}x\end{evil}",
    r"\mmlToken{mi}[href='javascript:alert(1)']{x}",
    r"\texttip{x}{tip} \mathtip{x}{tip} \toggle{a}{b}\endtoggle",
    r"\class{x}{y} \cssId{i}{y} \style{color:red}{y} \require{html} \unicode{x41} \data{a}{b}",
    r"\def\x{\href{javascript:1}{y}} \x \let\a\href \a{javascript:1}{y} \newcommand{\z}{1}",
    r"\renewcommand\frac{} \DeclareMathOperator{x}{y} \csname href\endcsname{javascript:1}{x}",
    r"\hr\relax ef{javascript:1}{x} \hr\foo ef{javascript:1}{x}",
    r"\url{javascript:alert(1)} \fbox{\href{javascript:1}{x}} \htmlData{a=1}{x} \htmlStyle{s}{x}",
    r"\href{\href{\href{javascript:1}{a}}{b}}{c}" + r"\href{x}{" * 300 + "y" + "}" * 300,
]
SAFE = [r"\frac{a}{b} + \sqrt{x^2} \alpha\,\beta", r"\begin{pmatrix} a & b \\ c & d \end{pmatrix}",
        r"\sum_{i=1}^{n} i = \frac{n(n+1)}{2}", r"\left( \int_0^\infty e^{-x} \, dx \right) \% \{ \}",
        r"\mathbb{R} \to \mathcal{O}(n \log n) \text{ and } \operatorname{sgn}(x) \leq 5"]
CONTROL_WORD = re.compile(r"\\([A-Za-z]+)")


def words(text: str) -> set:
    """Control words MathJax would see: ``\\`` pairs first (a line break, not a command)."""
    return set(CONTROL_WORD.findall(text.replace("\\\\", "  ")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_only_allowed_commands_survive(attack):
    out = sanitize_latex(attack)
    assert words(out) <= LATEX_ALLOWED | {"begin", "end"}, out
    for bad in ("href", "bbox", "newenvironment", "mmlToken", "texttip", "mathtip", "toggle", "class", "style",
                "require", "unicode", "def", "let", "csname", "url", "html"):
        assert f"\\{bad}" not in out.replace("\\\\", "  "), (attack, out)
    for env in re.findall(r"\\begin\{([^}]*)\}", out):
        assert env != "evil"
    # the whole bundle too (what MathJax gets)
    assert words(final_bundle("math", attack)["text/latex"]) <= LATEX_ALLOWED | {"begin", "end"}


@pytest.mark.parametrize("formula", SAFE)
def test_ordinary_formulas_are_kept_as_they_are(formula):
    assert sanitize_latex(formula) == formula


def test_links_keep_their_text_and_removal_never_forms_a_command():
    assert sanitize_latex(r"\href{javascript:x}{click} \url{u}") == "click u"
    assert sanitize_latex("\\href%\n{javascript:x}{click}") == "click"
    out = sanitize_latex(r"\h\relax ref \u\x rl \\href")
    assert words(out) == set()
    assert sanitize_latex("trailing \\") == "trailing "
