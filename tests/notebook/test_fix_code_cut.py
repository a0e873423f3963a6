"""18.6: ``-f code`` (%%oblix and %oblix_fix) inserts no cell from a reply cut at max_tokens (or partial): it
says so and leaves the text in oblix_last; a complete reply's code still goes into a new cell."""
from __future__ import annotations

import pytest
from test_magics import client, ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb.models.base import ModelBackend, ModelType, Usage

CUT_REPLIES = ["Fix:\n```python\ndef add(a, b):\n    return a +", "```python\nimport pandas as pd\ndf = pd.read_csv(",
               "The cause is", "```python\nx = 1\n```\nand then ```python\ny ="]


class Scripted(ModelBackend):
    model_type = ModelType.OPENAI

    def __init__(self, text: str, finish: str):
        super().__init__("scripted", target="local", context_window=4096)
        self.text, self.finish = text, finish

    async def connect(self):
        pass

    async def stream(self, messages, params):
        yield self.text
        yield Usage(10, 12, "server", "server", self.finish)


def hook(text, finish):
    c = client()
    c._models.clear()
    backend = Scripted(text, finish)
    c._models[backend.model_id] = backend


@pytest.mark.parametrize("text", CUT_REPLIES)
@pytest.mark.parametrize("magic", ["%%oblix -f code --max-tokens 12\nWrite add()", "%oblix_fix -f code"])
def test_cut_reply_inserts_no_cell(ip, monkeypatch, text, magic):  # noqa: F811
    nexts = []
    monkeypatch.setattr(ip, "set_next_input", lambda t, replace=False: nexts.append(t))
    run(ip, "1/0")
    hook(text, "length")
    result, cap = run(ip, magic)
    assert result.success, result.error_in_exec
    assert nexts == []
    assert "no cell inserted" in cap.stderr and "max_tokens" in cap.stderr
    last = ip.user_ns["oblix_last"]
    assert str(last) == text and last.cut  # the text is offered
    assert isinstance(last.code, str)


@pytest.mark.parametrize("text, code", [("Fix:\n```python\nresult = 1 / 1\n```", "result = 1 / 1"),
                                        ("```py\nimport math\nmath.pi\n```", "import math\nmath.pi")])
def test_complete_reply_still_inserts_its_code(ip, monkeypatch, text, code):  # noqa: F811
    nexts = []
    monkeypatch.setattr(ip, "set_next_input", lambda t, replace=False: nexts.append(t))
    run(ip, "1/0")
    hook(text, "stop")
    result, cap = run(ip, "%oblix_fix -f code")
    assert result.success, result.error_in_exec
    assert nexts == [code] and "no cell inserted" not in cap.stderr
    assert not ip.user_ns["oblix_last"].cut
