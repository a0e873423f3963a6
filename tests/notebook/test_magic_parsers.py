"""One key=value tokenizer (notebook/parsers.py) for the magics and the session browser's filter box: both read
quoted values, ``=`` inside values, brackets with spaces, escapes and bad quoting by the same rules."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from test_magics import client, ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb.notebook import parsers
from oblix_nb.notebook.magics import parse_kv, split_line
from oblix_nb.widgets.browser import parse_metadata_filter

# (text typed in a filter box or after --meta / --filter, the pairs it means)
CASES = [
    ('title="hello world"', {"title": "hello world"}),
    ("title='hello world'", {"title": "hello world"}),
    ('t="a=b c"', {"t": "a=b c"}),                                # '=' and a space inside a quoted value
    ("url=http://host/x?a=b&c=d", {"url": "http://host/x?a=b&c=d"}),  # '=' inside a bare value
    ("eq==", {"eq": "="}),
    ("tags=[1, 2]", {"tags": [1, 2]}),                            # spaces inside brackets
    ('obj={"a": 1, "b": [2, "x y"]}', {"obj": {"a": 1, "b": [2, "x y"]}}),
    ("obj='{\"a\": 1}'", {"obj": {"a": 1}}),
    ('s="3" n=3 f=2.5 ok=true no=null', {"s": "3", "n": 3, "f": 2.5, "ok": True, "no": None}),
    ("  a=1 \t  b=two  ", {"a": 1, "b": "two"}),                  # runs of spaces and tabs
    ("k=a\\ b", {"k": "a b"}),                                     # an escaped space
    ('q="say \\"hi\\""', {"q": 'say "hi"'}),                       # an escaped quote inside "..."
    ("x.y-z=1", {"x.y-z": 1}),
    ('lst=["a b", "c"] w=word', {"lst": ["a b", "c"], "w": "word"}),
    ("", {}),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_magics_and_browser_filter_read_pairs_alike(text, expected):
    assert parse_kv(split_line(text)) == expected
    assert parse_metadata_filter(text) == expected
    assert parsers.parse_pairs_text(text) == expected


@pytest.mark.parametrize("text", ['t="open', "t='open", 'a=1 b="x', "a='[1, 2]"])
def test_unterminated_quote_is_an_error_in_both(text):
    with pytest.raises(UsageError, match="unterminated"):
        split_line(text)
    with pytest.raises(ValueError, match="unterminated"):
        parse_metadata_filter(text)


@pytest.mark.parametrize("text", ["novalue", "=3", "1a=2", "a=1 b", '"k"'])
def test_not_key_value_is_an_error_in_both(text):
    with pytest.raises(UsageError, match="key=value"):
        parse_kv(split_line(text))
    with pytest.raises(ValueError, match="key=value"):
        parse_metadata_filter(text)


def test_other_tokens_lose_shell_quoting_and_unclosed_brackets_are_plain():
    assert split_line('new --title "My title" --meta n=3 x="3"') == ["new", "--title", "My title", "--meta",
                                                                     "n=3", 'x="3"']
    assert split_line("what does x[ mean") == ["what", "does", "x[", "mean"]
    assert split_line("a] b") == ["a]", "b"]
    assert split_line("look at {d['k']} now") == ["look", "at", "{d['k']}", "now"]  # a reference stays whole
    assert split_line("--system='be brief'") == ["--system=be brief"]


def test_the_browser_uses_the_magics_tokenizer(monkeypatch):
    seen = []
    real = parsers.split_line
    monkeypatch.setattr(parsers, "split_line", lambda text: seen.append(text) or real(text))
    assert parse_metadata_filter("a=1") == {"a": 1} and seen == ["a=1"]


def test_session_meta_and_list_filter_round_trip(ip):  # noqa: F811
    text = 't="a=b c" tags=[1, 2] obj={"k": "v w"} n=3'
    result, _ = run(ip, f"%oblix_session new --meta {text}")
    assert result.success, result.error_in_exec
    sid = str(result.result)
    assert client().get_session_metadata(sid) == parse_metadata_filter(text)
    run(ip, "%oblix_session new --meta n=4")
    result, _ = run(ip, '%oblix_session list --filter t="a=b c"  n=3')
    assert result.success, result.error_in_exec
    assert list(result.result["session_id"]) == [sid]
