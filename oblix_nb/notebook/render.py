"""Safe rendering of untrusted text (model output, session titles, metadata) into HTML for widgets.

ipywidgets' ``HTML`` widget sets ``innerHTML`` without sanitising, so everything that reaches it must already be
inert. Model output is Markdown rendered by markdown-it-py with raw HTML **escaped** (``html: False``), so
``<script>``, ``<img onerror=…>``, ``<svg onload=…>`` or ``<iframe>`` show as text. Links are kept only for
``http``, ``https`` and ``mailto`` URLs (anything else — ``javascript:``, ``vbscript:``, ``data:``, ``file:``,
relative paths — stays literal text) and open in a new tab with ``rel="noopener noreferrer nofollow"``.
Images are never loaded (no tracking pixels, no requests to hosts the model chose): ``![alt](url)`` becomes a
link labelled ``[image: alt]``. Plain strings (titles, badges) go through :func:`escape`.

Model output that *is* HTML (``%%oblix -f html``) goes through :func:`sanitize_html`, the same policy for raw
HTML: it is parsed and rebuilt from an allowlist of structural tags (headings, paragraphs, lists, tables,
emphasis, code, ...) with only ``title``/``colspan``/``rowspan``/``align`` attributes and safe ``href`` links;
everything else — ``<script>``, ``<style>``, ``<iframe>``, ``<svg>``, forms, event handlers, ``style``,
comments — is dropped (the text of unknown tags is kept, escaped), and ``<img>`` becomes the same
``[image: alt]`` link. LaTeX for MathJax (``-f math``) goes through :func:`sanitize_latex`, which keeps only an
allowlist of typesetting commands and environments (``\\href`` keeps its text, ``\\url`` its argument; any other command,
e.g. ``\\bbox``, ``\\class``, ``\\newenvironment``, ``\\mmlToken``, ``\\texttip``, is removed).

markdown-it-py is imported on first use.
"""
from __future__ import annotations

import html
import re
from typing import Any

ALLOWED_SCHEMES = ("http", "https", "mailto")
_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.\-]*):", re.I)
# C0 controls, DEL, whitespace and invisible format characters that browsers strip or ignore inside a scheme
_IGNORED_IN_URL = re.compile(r"[\x00-\x20\x7f\u00ad\u200b-\u200f\u2028\u2029\u2060\ufeff]")

_md = None


def escape(text: Any) -> str:
    """``html.escape`` for any value (None → ""), quotes included: safe in element text and attributes."""
    return html.escape("" if text is None else str(text), quote=True)


def is_safe_url(url: str) -> bool:
    """True for absolute ``http:``, ``https:`` and ``mailto:`` URLs only."""
    if not isinstance(url, str):
        return False
    cleaned = _IGNORED_IN_URL.sub("", html.unescape(url))
    match = _SCHEME_RE.match(cleaned)
    if not match or match.group(1).lower() not in ALLOWED_SCHEMES:
        return False
    if match.group(1).lower() != "mailto" and not cleaned[match.end():].startswith("//"):
        return False
    return True


def _renderer():
    global _md
    if _md is None:
        from markdown_it import MarkdownIt

        md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False})
        md.enable(["table", "strikethrough"])
        md.validateLink = is_safe_url  # type: ignore[method-assign]

        def link_open(self, tokens, idx, options, env):
            token = tokens[idx]
            token.attrSet("target", "_blank")
            token.attrSet("rel", "noopener noreferrer nofollow")
            return self.renderToken(tokens, idx, options, env)

        def image(self, tokens, idx, options, env):
            token = tokens[idx]
            src = token.attrGet("src") or ""
            alt = self.renderInlineAsText(token.children or [], options, env) or "image"
            return (f'<a href="{escape(src)}" target="_blank" rel="noopener noreferrer nofollow" '
                    f'class="oblix-image-link" title="image (not loaded)">[image: {escape(alt)}]</a>')

        md.add_render_rule("link_open", link_open)
        md.add_render_rule("image", image)
        _md = md
    return _md


def markdown(text: str | None) -> str:
    """Untrusted Markdown → inert HTML (raw HTML escaped, only http/https/mailto links, no images loaded)."""
    if not text:
        return ""
    return _renderer().render(str(text))


def markdown_inline(text: str | None) -> str:
    """Like :func:`markdown` for one line (no wrapping ``<p>``): search snippets with ``**bold**`` matches."""
    if not text:
        return ""
    return _renderer().renderInline(str(text))


# --------------------------------------------------------------------------- raw HTML (``-f html``)
ALLOWED_TAGS = frozenset("""
    a abbr b blockquote br caption cite code dd del details div dl dt em figcaption figure h1 h2 h3 h4 h5 h6 hr
    i ins kbd li mark ol p pre q s samp small span strong sub summary sup table tbody td tfoot th thead tr u ul
""".split())
VOID_TAGS = frozenset({"br", "hr"})
SELF_CLOSING_SIBLINGS = frozenset({"li", "p", "td", "th", "tr", "dt", "dd"})
DROP_CONTENT = frozenset({"script", "style", "iframe", "object", "embed", "template", "noscript", "svg", "math",
                          "head", "title", "textarea", "select", "frame", "frameset", "applet", "xmp",
                          "noembed", "noframes", "plaintext"})
_CELL_ATTRS = {"colspan", "rowspan", "align"}


def _attrs(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    out = []
    for name, value in attrs:
        name = name.lower()
        if value is None:
            continue
        if name == "title" or (tag in ("td", "th") and name in _CELL_ATTRS) or (tag == "ol" and name == "start"):
            if name in ("colspan", "rowspan", "start") and not value.strip().isdigit():
                continue
            out.append(f' {name}="{escape(value)}"')
        elif tag == "a" and name == "href" and is_safe_url(value):
            out.append(f' href="{escape(value)}"')
    if tag == "a":
        out.append(' target="_blank" rel="noopener noreferrer nofollow"')
    return "".join(out)


def sanitize_html(text: str | None) -> str:
    """Untrusted HTML → inert HTML: rebuilt from allowed tags and attributes only (see the module doc)."""
    from html.parser import HTMLParser

    out: list[str] = []
    open_tags: list[str] = []
    skipping: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tag = tag.lower()
            if skipping:
                if tag == skipping[-1]:
                    skipping.append(tag)
                return
            if tag in DROP_CONTENT:
                skipping.append(tag)
            elif tag == "img":
                found = dict(attrs)
                src, alt = found.get("src") or "", found.get("alt") or "image"
                link = f' href="{escape(src)}"' if is_safe_url(src) else ""
                out.append(f'<a{link} target="_blank" rel="noopener noreferrer nofollow" class="oblix-image-link" '
                           f'title="image (not loaded)">[image: {escape(alt)}]</a>')
            elif tag in ALLOWED_TAGS:
                if tag in SELF_CLOSING_SIBLINGS and open_tags and open_tags[-1] == tag:  # <li>a<li>b
                    out.append(f"</{open_tags.pop()}>")
                out.append(f"<{tag}{_attrs(tag, attrs)}>")
                if tag not in VOID_TAGS:
                    open_tags.append(tag)

        def handle_startendtag(self, tag, attrs):
            self.handle_starttag(tag, attrs)
            if tag.lower() in ALLOWED_TAGS and tag.lower() not in VOID_TAGS and open_tags \
                    and open_tags[-1] == tag.lower():
                self.handle_endtag(tag)

        def handle_endtag(self, tag):
            tag = tag.lower()
            if skipping:
                if tag == skipping[-1]:
                    skipping.pop()
                return
            if tag in open_tags:
                while open_tags:
                    last = open_tags.pop()
                    out.append(f"</{last}>")
                    if last == tag:
                        break

        def handle_data(self, data):
            if not skipping:
                out.append(escape(data))

    parser = Parser(convert_charrefs=True)
    parser.feed(text or "")
    parser.close()
    out.extend(f"</{tag}>" for tag in reversed(open_tags))
    return "".join(out)


# --------------------------------------------------------------------------- LaTeX (``-f math``)
# Only these control words survive; any other ``\name`` is removed (its braces stay as plain groups). An
# allowlist, because MathJax has many commands that link, style, load or define (\href, \bbox, \class, \require,
# \newenvironment, \mmlToken, \texttip, \toggle, \mathtip, \unicode, ...) and new ones appear with extensions.
LATEX_ALLOWED = frozenset("""
    alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa varkappa lambda mu nu xi pi varpi
    rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon
    Phi Psi Omega digamma
    frac dfrac tfrac cfrac binom dbinom tbinom sqrt root of over choose atop
    sum prod coprod int iint iiint oint bigcup bigcap bigoplus bigotimes bigvee bigwedge lim limsup liminf sup
    inf max min arg det exp log ln lg sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh coth gcd deg
    dim ker hom Pr mod bmod pmod pod operatorname limits nolimits displaystyle textstyle scriptstyle
    scriptscriptstyle
    left right middle big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr Biggl Biggr langle rangle lfloor rfloor
    lceil rceil lvert rvert lVert rVert vert Vert backslash
    cdot cdots ldots dots dotsc dotsb dotsm vdots ddots times div pm mp ast star circ bullet oplus ominus otimes
    oslash odot wedge vee cap cup setminus sqcup sqcap amalg dagger ddagger wr
    le leq ge geq neq ne lt gt approx equiv sim simeq cong propto ll gg prec succ preceq succeq subset supset
    subseteq supseteq subsetneq supsetneq in notin ni mid nmid parallel perp models vdash dashv asymp doteq
    leqslant geqslant lesssim gtrsim
    to gets rightarrow leftarrow leftrightarrow Rightarrow Leftarrow Leftrightarrow longrightarrow longleftarrow
    longleftrightarrow Longrightarrow Longleftarrow Longleftrightarrow mapsto longmapsto implies impliedby iff
    uparrow downarrow updownarrow Uparrow Downarrow nearrow searrow swarrow nwarrow hookrightarrow
    hookleftarrow rightharpoonup rightleftharpoons xrightarrow xleftarrow
    infty partial nabla forall exists nexists neg lnot emptyset varnothing aleph hbar ell Re Im wp angle
    triangle square prime top bot flat natural sharp surd therefore because
    hat widehat tilde widetilde bar overline underline vec dot ddot acute grave breve check mathring
    overbrace underbrace overrightarrow overleftarrow overset underset stackrel boxed not cancel
    mathrm mathbf mathit mathsf mathtt mathcal mathbb mathfrak mathscr boldsymbol bm pmb text textrm textbf
    textit texttt textsf mbox rm bf it cal
    quad qquad enspace thinspace negthinspace hspace space
    begin end hline cline substack tag notag nonumber label
""".split())
LATEX_ENVIRONMENTS = frozenset("""
    matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix cases dcases array aligned align align* alignat
    alignat* alignedat gathered gather gather* equation equation* split multline multline* eqnarray eqnarray*
    subarray
""".split())
# control symbols (backslash + one non-letter) that only typeset a character or a space
_LATEX_SYMBOLS = frozenset("\\,;:!{}$%&#_ |<>()[]")
_LATEX_CS = re.compile(r"\\([A-Za-z]+|.?)", re.S)
_LATEX_ARG_GAP = re.compile(r"(?:\s|%[^\n]*(?:\n|$))*")


def _latex_group(text: str, pos: int) -> tuple[str | None, int]:
    """The braced group starting at ``pos`` (after spaces and %-comments): (inner text, end) or (None, pos)."""
    gap = _LATEX_ARG_GAP.match(text, pos)
    assert gap is not None, "the pattern matches the empty string"
    pos = gap.end()
    if pos >= len(text) or text[pos] != "{":
        return None, pos
    depth, i = 0, pos
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1:i], i + 1
        i += 1
    return None, pos


def sanitize_latex(text: str | None) -> str:
    r"""LaTeX for MathJax with an allowlist of commands (:data:`LATEX_ALLOWED`, environments
    :data:`LATEX_ENVIRONMENTS`): any other control word is removed, its arguments stay as plain groups;
    ``\href{url}{text}`` keeps its text and ``\url{x}`` its argument (sanitised too). Removing a word never
    joins two pieces into a new command, since no backslash is ever created."""
    text = text or ""
    out: list[str] = []
    pos = 0
    while True:
        match = _LATEX_CS.search(text, pos)
        if match is None:
            break
        out.append(text[pos:match.start()])
        name, pos = match.group(1), match.end()
        if len(name) > 1 or name.isalpha():
            if name in ("href", "url"):
                first, after = _latex_group(text, pos)
                if first is not None:  # the kept text is scanned like the rest (no recursion: any depth)
                    keep = first
                    if name == "href":
                        second, after2 = _latex_group(text, after)
                        keep, after = (second, after2) if second is not None else ("", after)
                    text, pos = keep + text[after:], 0
                    continue
            elif name in ("begin", "end"):
                env, after = _latex_group(text, pos)
                if env is not None and env.strip() in LATEX_ENVIRONMENTS:
                    out.append(f"\\{name}{{{env.strip()}}}")
                    pos = after
            elif name in LATEX_ALLOWED:
                out.append(match.group(0))
        elif name and name in _LATEX_SYMBOLS:
            out.append(match.group(0))
    out.append(text[pos:])
    return "".join(out)


__all__ = ["escape", "markdown", "markdown_inline", "is_safe_url", "sanitize_html", "sanitize_latex",
           "ALLOWED_SCHEMES", "LATEX_ALLOWED", "LATEX_ENVIRONMENTS"]
