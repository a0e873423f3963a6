"""Safe rendering: model output as Markdown with raw HTML escaped, links only http/https/mailto, no images."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest

pytest.importorskip("markdown_it")

from oblix_nb.notebook.render import escape, is_safe_url, markdown, markdown_inline  # noqa: E402

# Tags markdown-it produces from CommonMark + tables + strikethrough (and our image-as-link rule).
ALLOWED_TAGS = {"p", "br", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2", "h3",
                "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td", "s"}
ALLOWED_ATTRS = {"href", "title", "target", "rel", "class", "start", "style"}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def assert_inert(html: str) -> None:
    """No tag outside what Markdown makes, no event handler, every href http(s)/mailto, no img/script/svg."""
    parser = _Collect()
    parser.feed(html)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, f"unexpected <{tag}> in {html!r}"
        for name, value in attrs:
            assert name in ALLOWED_ATTRS, f"unexpected attribute {name}= on <{tag}> in {html!r}"
            assert not name.startswith("on")
            if name == "href":
                assert is_safe_url(value) and value.lower().startswith(("http://", "https://", "mailto:")), value
            if name == "style":  # markdown-it's table alignment only
                assert value in ("text-align:left", "text-align:right", "text-align:center"), value
    lowered = html.lower()
    for needle in ("<script", "<img", "<svg", "<iframe", "<object", "<embed", "<style", "<math", "<form",
                   "javascript:\"", "href=\"javascript", "href=\"data", "href=\"vbscript", "href=\"file"):
        assert needle not in lowered, f"{needle!r} in {html!r}"


PAYLOADS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=http://x/xss.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<img src="x" onerror="window.__xss=1">',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<iframe src="javascript:alert(1)"></iframe>',
    "<iframe srcdoc='<script>alert(1)</script>'>",
    '<a href="javascript:alert(1)">click</a>',
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<object data="javascript:alert(1)">',
    "<embed src=javascript:alert(1)>",
    '<form action="javascript:alert(1)"><button>x</button></form>',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](javascript&colon;alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](&#x6A;avascript:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x](  javascript:alert(1))",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](file:///etc/passwd)",
    "[x](https:javascript:alert(1))",
    "[x](//evil.example/)",
    "<javascript:alert(1)>",
    "<JAVASCRIPT:alert(1)>",
    "<vbscript:msgbox(1)>",
    "<data:text/html,<script>alert(1)</script>>",
    "![x](javascript:alert(1))",
    "![x](https://tracker.example/pixel.png)",
    "![x](data:image/png;base64,iVBORw0KGgo=)",
    '[x](https://ok.example "a\\" onmouseover=\\"alert(1)")',
    '[x]: javascript:alert(1)\n\n[x]',
    "```\" onmouseover=\"alert(1)\n<script>alert(1)</script>\n```",
    "```html\n<img src=x onerror=alert(1)>\n```",
    "`<img src=x onerror=alert(1)>`",
    "**<img src=x onerror=alert(1)>**",
    "**[bold link](javascript:alert(1))**",
    "> - [quoted](javascript:alert(1))\n> <script>alert(1)</script>",
    "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | [x](javascript:alert(1)) |",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;img src=x onerror=alert(1)&#62;",
    "<!-- <script>alert(1)</script> -->",
    "<![CDATA[<script>alert(1)</script>]]>",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_render_inert(payload):
    assert_inert(markdown(payload))
    assert_inert(markdown_inline(payload))


def test_raw_html_is_shown_as_text():
    out = markdown('Hi <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script>')
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in out
    assert "&lt;script&gt;window.__xss=2&lt;/script&gt;" in out


def test_javascript_links_stay_literal_text():
    out = markdown("[click](javascript:alert(1)) and <javascript:alert(2)>")
    assert "<a" not in out
    assert "[click](javascript:alert(1))" in out
    assert "&lt;javascript:alert(2)&gt;" in out


def test_markdown_it_default_validator_already_rejects_script_schemes():
    """Belt and braces: markdown-it's own validateLink refuses javascript:/vbscript:/file:/data: (but data:image),
    and ours narrows that to http/https/mailto."""
    from markdown_it import MarkdownIt

    default = MarkdownIt("commonmark", {"html": False})
    for url in ("javascript:alert(1)", "JAVASCRIPT:alert(1)", "vbscript:x", "file:///etc/passwd",
                "data:text/html,x"):
        assert not default.validateLink(url), url
    assert default.validateLink("data:image/png;base64,AAAA")  # allowed by default ...
    assert not is_safe_url("data:image/png;base64,AAAA")       # ... not by us


@pytest.mark.parametrize("url, ok", [
    ("http://example.com", True), ("https://example.com/a?b=1#c", True), ("HTTPS://EXAMPLE.COM", True),
    ("mailto:someone@example.com", True), ("javascript:alert(1)", False), (" javascript:alert(1)", False),
    ("java\nscript:alert(1)", False), ("&#106;avascript:alert(1)", False), ("vbscript:x", False),
    ("data:text/html,x", False), ("file:///etc/passwd", False), ("ftp://example.com", False),
    ("/lab/tree/x", False), ("relative/path", False), ("#frag", False), ("//evil.example", False),
    ("https:alert(1)", False), ("", False), (None, False),
])
def test_is_safe_url(url, ok):
    assert is_safe_url(url) is ok


def test_safe_links_are_kept_and_open_in_a_new_tab():
    out = markdown("see [docs](https://example.com/docs), <https://example.com/auto> and [mail](mailto:a@b.example)")
    assert '<a href="https://example.com/docs" target="_blank" rel="noopener noreferrer nofollow">docs</a>' in out
    assert 'href="https://example.com/auto"' in out
    assert 'href="mailto:a@b.example"' in out
    assert_inert(out)


def test_images_are_never_loaded():
    out = markdown("![a chart](https://example.com/chart.png)")
    assert "<img" not in out
    assert 'href="https://example.com/chart.png"' in out and "[image: a chart]" in out


def test_entities_stay_escaped():
    out = markdown("5 &lt; 6 &amp;&amp; a &gt; b; &#60;b&#62;bold?&#60;/b&#62; &copy;")
    assert "<b>" not in out
    assert "&lt;b&gt;bold?&lt;/b&gt;" in out
    assert "©" in out


def test_nested_markdown_renders():
    text = "# Title\n\n**bold _and italic_** with `code <x>`\n\n> quote\n> - item [link](https://a.example)\n\n" \
           "1. one\n2. two\n\n| h1 | h2 |\n|:--|--:|\n| *a* | ~~b~~ |\n\n```python\nprint('<hi>')\n```\n"
    out = markdown(text)
    for piece in ("<h1>Title</h1>", "<strong>bold <em>and italic</em></strong>", "<code>code &lt;x&gt;</code>",
                  "<blockquote>", '<a href="https://a.example"', "<ol>", "<table>", "<s>b</s>",
                  '<pre><code class="language-python">print(\'&lt;hi&gt;\')'):
        assert piece in out, piece
    assert_inert(out)


def test_fence_info_string_cannot_break_out_of_the_class_attribute():
    out = markdown('```x" onmouseover="alert(1)\ncode\n```')
    assert_inert(out)
    assert 'onmouseover="' not in out


def test_link_title_cannot_inject_attributes():
    out = markdown('[x](https://a.example "t\\" onclick=\\"alert(1)")')
    assert_inert(out)
    assert "onclick=&quot;" in out


def test_soft_line_breaks_are_kept_for_chat_text():
    assert "<br" in markdown("line one\nline two")


def test_escape():
    assert escape('<b a="1">&\'') == "&lt;b a=&quot;1&quot;&gt;&amp;&#x27;"
    assert escape(None) == ""
    assert escape(3) == "3"


def test_empty_and_inline():
    assert markdown("") == "" and markdown(None) == ""
    assert markdown_inline("a **b** <i>c</i>") == "a <strong>b</strong> &lt;i&gt;c&lt;/i&gt;"
