"""OLLAMA_HOST: honoured when hook_model gets no endpoint, parsed as the official ``ollama`` client parses it."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from oblix_nb import ModelType, OblixClient
from oblix_nb.models.ollama import OllamaBackend, parse_ollama_host

# Every host form the official client documents (its _parse_host doctests), plus a few more of each class.
OFFICIAL_FORMS = [
    None, "", "1.2.3.4", ":56789", "1.2.3.4:56789", "http://1.2.3.4", "https://1.2.3.4", "https://1.2.3.4:56789",
    "example.com", "example.com:56789", "http://example.com", "https://example.com", "https://example.com:56789",
    "example.com/", "example.com:56789/", "example.com/path", "example.com:56789/path",
    "https://example.com:56789/path", "example.com:56789/path/", "[0001:002:003:0004::1]",
    "[0001:002:003:0004::1]:56789", "http://[0001:002:003:0004::1]", "https://[0001:002:003:0004::1]",
    "https://[0001:002:003:0004::1]:56789", "[0001:002:003:0004::1]/", "[0001:002:003:0004::1]:56789/",
    "[0001:002:003:0004::1]/path", "[0001:002:003:0004::1]:56789/path",
    "https://[0001:002:003:0004::1]:56789/path", "[0001:002:003:0004::1]:56789/path/",
    "localhost", "localhost:8080", "127.0.0.1:11434", "http://127.0.0.1:11434/", "ollama.internal/a/b/",
    "http://[::1]:9", "[::1]",
]


@pytest.mark.parametrize("form", OFFICIAL_FORMS)
def test_parse_matches_the_official_client(form):
    from ollama._client import _parse_host  # the official client's own parser: the reference behaviour

    assert parse_ollama_host(form) == _parse_host(form)


@pytest.mark.parametrize("form, expected", [
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:8123", "http://127.0.0.1:8123"),
    ("http://0.0.0.0:8123/", "http://127.0.0.1:8123"),
    ("[::]", "http://[::1]:11434"),
    ("https://[::]:8443/x", "https://[::1]:8443/x"),
    ("  127.0.0.1:9  ", "http://127.0.0.1:9"),
    ("HTTP://Example.com", "http://example.com:80"),
])
def test_bind_all_addresses_connect_over_loopback(form, expected):
    assert parse_ollama_host(form) == expected


@pytest.mark.parametrize("form", ["ftp://example.com", "example.com:port", "example.com:99999", "a b:1"])
def test_bad_hosts_raise_value_error(form):
    with pytest.raises(ValueError, match="Ollama host"):
        parse_ollama_host(form)


def test_non_string_host_is_a_type_error():
    with pytest.raises(TypeError):
        parse_ollama_host(11434)


def test_env_is_used_only_without_an_endpoint(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "example.com:1234")
    assert OllamaBackend("m").endpoint == "http://example.com:1234"
    assert OllamaBackend("m", "other.example:99").endpoint == "http://other.example:99"  # explicit wins
    assert OllamaBackend("m", "http://127.0.0.1:5/").endpoint == "http://127.0.0.1:5"
    monkeypatch.setenv("OLLAMA_HOST", "")
    assert OllamaBackend("m").endpoint == "http://127.0.0.1:11434"
    monkeypatch.delenv("OLLAMA_HOST")
    assert OllamaBackend("m").endpoint == "http://127.0.0.1:11434"


def test_bad_env_names_the_variable_value(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gopher://x")
    with pytest.raises(ValueError, match="gopher://x"):
        OllamaBackend("m")


@pytest.mark.parametrize("form", ["{host}:{port}", "0.0.0.0:{port}", "http://{host}:{port}/", ":{port}"])
async def test_hook_and_execute_through_ollama_host(ollama_server, tmp_home, monkeypatch, form):
    """A real Ollama-API server on loopback, reached only through $OLLAMA_HOST in each host form."""
    parts = urlsplit(ollama_server.url)
    monkeypatch.setenv("OLLAMA_HOST", form.format(host=parts.hostname, port=parts.port))
    client = OblixClient(home=tmp_home)
    try:
        assert await client.hook_model(ModelType.OLLAMA, ollama_server.model)
        backend = client.models[f"ollama:{ollama_server.model}"]
        assert urlsplit(backend.endpoint).port == parts.port
        response = await client.execute("Say hi.", max_tokens=8, display_metrics=False, sink=lambda _t: None)
        assert response["model_id"] == f"ollama:{ollama_server.model}"
        assert response["metrics"]["output_tokens"] >= 1
    finally:
        await client.shutdown()
