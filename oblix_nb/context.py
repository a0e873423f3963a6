"""What the model sees: the session's history fitted into the model's context window.

Budget = context window - the reply's reserve (``max_tokens``, else a quarter of the window) - a small margin.
System messages are kept first; then the newest messages that fit, oldest dropped first. If the newest
message (the prompt, or the last history message when nothing else fits) is too long on its own, it is
truncated in the middle instead of leaving the model with nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MARGIN = 48  # covers a chat template's injected default system prompt (SmolLM2: ~20 tokens)
ELISION = "\n…[{n} characters truncated]…\n"


@dataclass
class FittedContext:
    messages: list[dict]
    dropped: int          # history messages left out
    truncated: int        # messages shortened to fit
    budget: int           # tokens available for the input
    used: int             # tokens (as counted) the input takes


def reply_reserve(context_window: int, max_tokens: int | None) -> int:
    return max_tokens if max_tokens is not None else context_window // 4


def truncate_to(text: str, tokens: int, count: Callable[[str], int]) -> str:
    """Shorten ``text`` (keeping its head and tail) until ``count`` says it fits in ``tokens``."""
    if tokens <= 0:
        return ""
    if count(text) <= tokens:
        return text
    keep = len(text)
    while keep > 0:
        keep = int(keep * min(0.9, tokens / max(count(text[:keep]), 1)))
        head, tail = keep - keep // 3, keep // 3
        candidate = text[:head] + ELISION.format(n=len(text) - keep) + (text[-tail:] if tail else "")
        if count(candidate) <= tokens:
            return candidate
    return ""


def fit_history(history: list[dict], prompt: str, *, context_window: int, max_tokens: int | None,
                count: Callable[[str], int], overhead: int) -> FittedContext:
    """Build the message list for one call: ``history`` (chronological) + the user's ``prompt``."""
    budget = max(context_window - reply_reserve(context_window, max_tokens) - MARGIN, 32)

    def cost(text: str) -> int:
        return count(text) + overhead

    truncated = 0
    prompt_cost = cost(prompt)
    if prompt_cost > budget:
        prompt = truncate_to(prompt, budget - overhead, count)
        prompt_cost = cost(prompt)
        truncated += 1
    used = prompt_cost
    systems = [m for m in history if m["role"] == "system"]
    others = [m for m in history if m["role"] != "system"]
    kept_systems = []
    for m in systems:
        c = cost(m["content"])
        if used + c <= budget:
            kept_systems.append({"role": "system", "content": m["content"]})
            used += c
    kept: list[dict] = []
    for m in reversed(others):
        c = cost(m["content"])
        if used + c <= budget:
            kept.append({"role": m["role"], "content": m["content"]})
            used += c
            continue
        if not kept and budget - used - overhead > 32:
            content = truncate_to(m["content"], budget - used - overhead, count)
            kept.append({"role": m["role"], "content": content})
            used += cost(content)
            truncated += 1
        break
    kept.reverse()
    dropped = len(others) - len(kept) + len(systems) - len(kept_systems)
    messages = kept_systems + kept + [{"role": "user", "content": prompt}]
    return FittedContext(messages, dropped, truncated, budget, used)
