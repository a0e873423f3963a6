"""``%oblix_model alias`` / ``default`` say where the setting is kept, on every store engine.

They used to name ``client.sessions.path``, which only the SQLite store has: on a PostgreSQL store the alias or
default was saved and then the magic failed with an AttributeError (found by mypy once ``client`` was typed).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from IPython.core.interactiveshell import InteractiveShell

from oblix_nb import runtime
from oblix_nb.notebook import state

EMBEDDED = "llamacpp:smollm2-135m"


@pytest.fixture
def ip(tmp_path, monkeypatch, store_url):
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OBLIX_DATABASE_URL", store_url)
    shell = InteractiveShell.instance()
    state.reset()
    shell.run_line_magic("load_ext", "oblix_nb")
    yield shell
    client = state.peek_client()
    if client is not None:
        runtime.run(client.shutdown())
        client.sessions.close()
    shell.run_line_magic("unload_ext", "oblix_nb")
    state.reset()


@pytest.mark.parametrize("line, value", [("alias emb " + EMBEDDED, "emb"), ("default " + EMBEDDED, EMBEDDED)])
def test_alias_and_default_name_the_store_on_each_engine(ip, store_url, line, value):
    said = ip.run_line_magic("oblix_model", line)
    sessions = state.get_client().sessions
    assert str(said) == value
    assert f"(kept in {sessions.url})" in said.message
    password = urlsplit(store_url).password
    assert password is None or password not in said.message  # the URL's password never shows
    # and the setting really is stored
    if line.startswith("alias"):
        assert ip.run_line_magic("oblix_model", "alias") == {"emb": EMBEDDED}
    else:
        assert str(ip.run_line_magic("oblix_model", "default")) == EMBEDDED
