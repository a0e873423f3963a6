"""History budget: oldest dropped first, system kept, a single overlong message truncated, never emptied."""
from oblix_nb.context import MARGIN, fit_history, reply_reserve, truncate_to


def words(text: str) -> int:  # a deterministic stand-in tokenizer: one token per word
    return len(text.split())


def msg(role, n, tag):
    return {"role": role, "content": " ".join([tag] * n)}


def test_everything_fits_in_order():
    history = [msg("user", 3, "a"), msg("assistant", 3, "b")]
    fitted = fit_history(history, "q", context_window=1000, max_tokens=100, count=words, overhead=2)
    assert [m["content"] for m in fitted.messages] == ["a a a", "b b b", "q"]
    assert fitted.dropped == 0 and fitted.truncated == 0
    assert fitted.used <= fitted.budget == 1000 - 100 - MARGIN


def test_oldest_dropped_first():
    history = [msg("user", 100, f"m{i}") for i in range(10)]
    # budget = 400 - 100 - MARGIN; each message costs 102
    fitted = fit_history(history, "now", context_window=400, max_tokens=100, count=words, overhead=2)
    kept = [m["content"].split()[0] for m in fitted.messages[:-1]]
    assert kept == ["m8", "m9"]
    assert fitted.dropped == 8
    assert fitted.used <= fitted.budget


def test_system_messages_pinned():
    history = [msg("system", 5, "sys")] + [msg("user", 100, f"m{i}") for i in range(5)]
    fitted = fit_history(history, "now", context_window=400, max_tokens=100, count=words, overhead=2)
    assert fitted.messages[0]["role"] == "system"
    assert fitted.messages[-1] == {"role": "user", "content": "now"}


def test_overlong_last_message_truncated_not_emptied():
    history = [msg("user", 50, "old"), msg("assistant", 5000, "huge")]
    fitted = fit_history(history, "follow-up", context_window=1000, max_tokens=200, count=words, overhead=2)
    assert len(fitted.messages) == 2  # the truncated reply + the prompt; older one dropped
    assert fitted.truncated == 1
    assert "truncated" in fitted.messages[0]["content"]
    assert fitted.used <= fitted.budget


def test_overlong_prompt_truncated():
    prompt = " ".join(str(i) for i in range(5000))
    fitted = fit_history([], prompt, context_window=512, max_tokens=64, count=words, overhead=2)
    assert fitted.truncated == 1
    content = fitted.messages[-1]["content"]
    assert content.startswith("0 1 2") and content.rstrip().endswith("4999")  # head and tail kept
    assert words(content) + 2 <= fitted.budget


def test_reserve_defaults_to_quarter_window():
    assert reply_reserve(2048, None) == 512
    assert reply_reserve(2048, 100) == 100


def test_truncate_to_is_identity_when_it_fits():
    assert truncate_to("a b c", 3, words) == "a b c"
    assert truncate_to("a b c", 0, words) == ""
