"""No magic evaluates its line (issue 20, item 14): IPython's ``{expr}``/``$var`` expansion is off for every
magic; line arguments follow the documented reference rules of a ``%%oblix`` cell (ast whitelist: names,
non-underscore attributes, literal keys; anything else stays literal). Every payload below would run code
under IPython's own expansion; here none may: no file is created, no spy method is called."""
from __future__ import annotations

import pytest
from batch.test_batch import FakeBackend
from test_magics import client, ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb.notebook import state


class Spy:
    """Every way of running code through it leaves a trace in ``calls`` (str() is what references inline)."""

    def __init__(self):
        self.calls: list[str] = []
        self.name = "spy-name"

    def __str__(self):
        return "spy"

    def __repr__(self):
        self.calls.append("repr")
        return "Spy()"

    def __format__(self, spec):
        self.calls.append("format")
        return "spy"

    def __add__(self, other):
        self.calls.append("add")
        return 0

    def __getitem__(self, key):
        return "item"

    def boom(self):
        self.calls.append("boom")
        return "boom"


def payloads(mark: str) -> list[str]:
    """Text that runs code under IPython's expansion; ``mark`` is a file path some of them would create."""
    return [
        f"{{__import__('os').system('touch {mark}')}}",
        f'{{__import__("pathlib").Path("{mark}").touch()}}',
        f"{{open('{mark}', 'w').close()}}",
        f"{{[__import__('os').system('touch {mark}') for _ in 'a']}}",
        f"{{(lambda: __import__('os').system('touch {mark}'))()}}",
        f"$(touch {mark})",
        "{spy!r}",
        "{spy:>9}",
        "{spy.boom()}",
        "{spy + 1}",
        "{spy.__class__}",
        "{{spy.boom()}}",
    ]


@pytest.fixture
def spy(ip):  # noqa: F811
    ip.user_ns["spy"] = s = Spy()
    yield s
    ip.user_ns.pop("spy", None)


@pytest.fixture
def fake():
    backend = FakeBackend(reply=lambda messages: "ok")
    state.get_client()._models[backend.model_id] = backend
    return backend


def check_nothing_ran(mark, spy):
    assert not mark.exists(), f"{mark} was created: a magic evaluated its line"
    assert spy.calls == [], f"a magic ran code: {spy.calls}"


def lines(mark: str) -> list[str]:
    """Every magic, with a payload where IPython would have expanded it (help, options, free text)."""
    out = []
    for p in payloads(mark):
        q = p.replace('"', '\\"')
        out += [
            f"%oblix_chat -h {p}",
            f'%oblix_chat --session "{q}" tell me more',
            f"%oblix_chat --session {p} why?",          # the trailing-'?' transform path (run_line_magic)
            f"%oblix_stats --since {p} --no-plot",
            f'%oblix_stats --no-plot --until "{q}"',
            f"%oblix_session use {p}",
            f"%oblix_fix --model {p}",
            f"%oblix_model default {p}",
            f"%oblix_model alias x {p}",
            f"%%oblix --model {p}\nHello",
            f'%%oblix -h --system "{q}"\nHello',
            f"%%oblix --session {p}\nHello",
        ]
    return out


def test_no_magic_line_is_evaluated(ip, spy, fake, tmp_path):  # noqa: F811
    mark = tmp_path / "pwned"
    for line in lines(str(mark)):
        run(ip, line)  # most are usage errors (no such session / model / time): that is fine
        check_nothing_ran(mark, spy)


def test_payload_in_system_and_title_arrives_literally(ip, spy, fake, tmp_path):  # noqa: F811
    mark = tmp_path / "pwned"
    for p in payloads(str(mark)):
        q = p.replace('"', '\\"')
        result, _ = run(ip, f'%%oblix --new-session --title "{q}" --system "{q}" --max-tokens 16\nHello')
        assert result.success, result.error_in_exec
        check_nothing_ran(mark, spy)
        system = [m["content"] for m in fake.seen[-1] if m["role"] == "system"]
        assert system and p in system[0]
        assert client().load_session(client().current_session_id)["title"] == p


def test_session_title_payload_stays_literal(ip, spy, tmp_path):  # noqa: F811
    mark = tmp_path / "pwned"
    for p in payloads(str(mark)):
        q = p.replace('"', '\\"')
        result, _ = run(ip, f'%oblix_session new --title "{q}" --meta note="{q}"')
        assert result.success, result.error_in_exec
        check_nothing_ran(mark, spy)
        sid = str(result.result)
        assert client().load_session(sid)["title"] == p
        assert client().get_session_metadata(sid) == {"note": p}   # key=value values are never expanded


def test_references_in_line_arguments_follow_the_cell_rules(ip, spy, fake):  # noqa: F811
    ip.user_ns.update(role="pirate", cfg=spy, d={"k": "keyed"}, topic="SQLite", t="dollar title")
    try:
        result, _ = run(ip, '%%oblix --new-session --title "{topic} notes" --system "Answer as a {role}, '
                            'with {d[\\"k\\"]} and {cfg.name}; {{role}} {missing}."\nHello')
        assert result.success, result.error_in_exec
        system = [m["content"] for m in fake.seen[-1] if m["role"] == "system"][0]
        assert "Answer as a pirate, with keyed and spy-name; {role} {missing}." in system
        assert client().load_session(client().current_session_id)["title"] == "SQLite notes"
        result, _ = run(ip, "%oblix_session new --title $t")
        assert client().load_session(str(result.result))["title"] == "dollar title"
        result, _ = run(ip, "%oblix_session new --title {topic}")
        assert client().load_session(str(result.result))["title"] == "SQLite"
        assert spy.calls == []
    finally:
        for name in ("role", "cfg", "d", "topic", "t"):
            ip.user_ns.pop(name, None)


def test_every_magic_opts_out_of_ipython_expansion(ip):  # noqa: F811
    from IPython.core.magic import MAGIC_NO_VAR_EXPAND_ATTR

    magics = ip.magics_manager.magics
    ours = {**{f"%{k}": v for k, v in magics["line"].items() if k.startswith("oblix")},
            **{f"%%{k}": v for k, v in magics["cell"].items() if k.startswith("oblix")}}
    assert {"%oblix_session", "%oblix_chat", "%oblix_fix", "%oblix_model", "%oblix_stats", "%%oblix"} <= set(ours)
    assert [name for name, fn in ours.items() if not getattr(fn, MAGIC_NO_VAR_EXPAND_ATTR, False)] == []
