"""What a model call costs: a price table shipped as data, user overrides, and the cost of one reply.

Prices are USD per million tokens: ``input`` (uncached input), ``output``, ``cached`` (input read from the
provider's prompt cache; default: the input price) and ``cache_write`` (input written to it; Anthropic bills
1.25x input, OpenAI nothing extra; default: the input price). The shipped table, ``oblix_nb/data/prices.json``,
names its date and sources; :func:`price_table_info` returns them.

Which price applies to a hooked model (:meth:`PriceBook.lookup`), first match wins:

1. a user price set with ``client.set_price(model, input=, output=, ...)`` (or ``%config OblixMagics.prices``),
   by full model id (``"claude:claude-haiku-4-5"``) or bare model name; kept in the session store, so every kernel
   sharing the store uses it;
2. a model whose ``target`` is ``"local"`` (embedded llama.cpp, Ollama, anything hooked with target="local")
   costs 0: it runs on your own hardware;
3. the shipped table, by model name: exact, or followed by a dated snapshot suffix (``-20250929``,
   ``-2024-08-06``, ``@20250929``) or ``-latest``. Nothing looser: an unlisted model is not priced like a
   similar-looking one;
4. otherwise the price is unknown and so is the cost (``None``, never a guess).

A reply's cost (:func:`reply_cost`) is exact only from exact token counts (the provider's usage, or a local
engine's tokenizer): then ``metrics["cost_usd"]``. When a count is an estimate (e.g. a reply interrupted before
the provider reported usage) ``cost_usd`` stays ``None`` and ``metrics["cost_estimate_usd"]`` holds the estimate.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sessions.base import SessionStoreBase

EXACT_SOURCES = frozenset({"server", "engine", "tokenizer"})
_SNAPSHOT = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8}|-latest)?")
SETTINGS_PREFIX = "price:"  # settings keys holding user prices
# The dearest price accepted, USD per million tokens ($0.10 a token; the dearest listed model asks $600): a larger
# one is a typo or a unit mistake, and would make every budget check meaningless (1e308 overflows to inf).
MAX_PRICE = 100_000.0


@dataclass(frozen=True)
class Price:
    """USD per million tokens. ``source``: "table", "user" or "local"."""
    input: float
    output: float
    cached: float | None = None
    cache_write: float | None = None
    source: str = "table"

    def __post_init__(self):
        for name in ("input", "output", "cached", "cache_write"):
            value = getattr(self, name)
            if value is None and name in ("cached", "cache_write"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= MAX_PRICE:  # NaN fails the comparison; a huge int does not overflow
                raise ValueError(f"price {name} must be a number from 0 to {MAX_PRICE:g} (USD per million "
                                 f"tokens), not {value!r}")

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> float:
        """USD for one call; ``input_tokens`` counts everything read, cached parts included."""
        uncached = max(0, input_tokens - cache_read - cache_write)
        cached = self.input if self.cached is None else self.cached
        write = self.input if self.cache_write is None else self.cache_write
        return (uncached * self.input + cache_read * cached + cache_write * write
                + output_tokens * self.output) / 1_000_000

    def worst_case(self, input_tokens: int, max_output_tokens: int) -> float:
        """The most a call can cost: all input uncached (or written to the cache, if that is dearer) and a reply
        of ``max_output_tokens``."""
        dearest_input = max(self.input, self.cache_write or 0.0)
        return (input_tokens * dearest_input + max_output_tokens * self.output) / 1_000_000

    def as_dict(self) -> dict:
        return asdict(self)


LOCAL_PRICE = Price(0.0, 0.0, 0.0, 0.0, source="local")


@lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files("oblix_nb").joinpath("data/prices.json").read_text(encoding="utf-8")
    return json.loads(text)


def price_table_info() -> dict:
    """The shipped table's ``date``, ``currency``, ``unit``, ``sources`` and ``notes``."""
    return {k: v for k, v in _table().items() if k != "models"}


def table_price(model_name: str) -> Price | None:
    """The shipped table's price for a model name (exact, or with a snapshot suffix), else None."""
    models = _table()["models"]
    for name in sorted(models, key=len, reverse=True):
        if model_name.startswith(name) and _SNAPSHOT.fullmatch(model_name[len(name):]):
            entry = models[name]
            return Price(entry["input"], entry["output"], entry.get("cached"), entry.get("cache_write"), "table")
    return None


def parse_price(value: Any) -> Price:
    """A Price from a Price or a dict ``{input, output[, cached, cache_write]}`` (user input; clear errors)."""
    if isinstance(value, Price):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"a price is a dict like {{'input': 3.0, 'output': 15.0}}, not {type(value).__name__}")
    unknown = set(value) - {"input", "output", "cached", "cache_write", "source"}
    if unknown:
        raise ValueError(f"unknown price field(s) {sorted(unknown)}; expected input, output, cached, cache_write")
    if "input" not in value or "output" not in value:
        raise ValueError("a price needs both 'input' and 'output' (USD per million tokens)")
    return Price(value["input"], value["output"], value.get("cached"), value.get("cache_write"), "user")


class PriceBook:
    """Prices for hooked models: user prices (kept in the store's settings) over the local rule over the table."""

    def __init__(self, store: SessionStoreBase):
        self._store = store  # a SessionStore: its get_setting / set_setting / delete_setting / settings

    def set(self, model: str, input: float, output: float, cached: float | None = None,
            cache_write: float | None = None) -> Price:
        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a model id ('claude:claude-haiku-4-5') or a model name")
        price = Price(input, output, cached, cache_write, "user")
        self._store.set_setting(SETTINGS_PREFIX + model.strip(), price.as_dict())
        return price

    def clear(self, model: str) -> bool:
        return self._store.delete_setting(SETTINGS_PREFIX + model.strip())

    def user_prices(self) -> dict[str, Price]:
        return {key[len(SETTINGS_PREFIX):]: parse_price(value)
                for key, value in self._store.settings(SETTINGS_PREFIX).items()}

    def lookup(self, model_id: str, model_name: str, target: str) -> Price | None:
        user = self._store.get_setting(SETTINGS_PREFIX + model_id)
        if user is None:
            user = self._store.get_setting(SETTINGS_PREFIX + model_name)
        if user is not None:
            try:
                return parse_price(user)
            except (TypeError, ValueError) as exc:  # stored by an older version, or edited: say how to fix it
                raise ValueError(f"the stored price of {model_id} is invalid ({exc}); set it again with "
                                 f"client.set_price({model_id!r}, input=..., output=...)") from None
        if target == "local":
            return LOCAL_PRICE
        return table_price(model_name)

    def for_backend(self, backend) -> Price | None:
        return self.lookup(backend.model_id, backend.model_name, backend.target)


def reply_cost(price: Price | None, usage) -> dict:
    """The cost fields of a reply's metrics: ``cost_usd`` (exact or None), ``cost_source``, and
    ``cost_estimate_usd`` when only an estimate can be given (see the module docstring)."""
    if price is None:
        return {"cost_usd": None, "cost_source": "unknown"}
    if price.source == "local":
        return {"cost_usd": 0.0, "cost_source": "local"}
    if usage.input_tokens is None and usage.output_tokens is None:
        return {"cost_usd": None, "cost_source": price.source}
    cost = price.cost(usage.input_tokens or 0, usage.output_tokens or 0, usage.cache_read_tokens or 0,
                      usage.cache_write_tokens or 0)
    exact = usage.input_source in EXACT_SOURCES and usage.output_source in EXACT_SOURCES and \
        usage.input_tokens is not None and usage.output_tokens is not None
    if exact:
        return {"cost_usd": cost, "cost_source": price.source}
    return {"cost_usd": None, "cost_estimate_usd": cost, "cost_source": price.source}


def format_cost(usd: float | None) -> str:
    """``$0.0123``, ``$0.00042`` (two significant digits below a cent), ``$12.50``."""
    if usd is None:
        return "cost unknown"
    if usd == 0:
        return "$0"
    if usd >= 0.01:
        return f"${usd:,.4f}".rstrip("0").rstrip(".") if usd < 1 else f"${usd:,.2f}"
    return "$" + f"{usd:.2g}" if usd >= 1e-4 else f"${usd:.1e}"


def cost_label(metrics: dict | None) -> str | None:
    """What a reply's footer/badge says about its cost: only for priced or unpriced *cloud* replies
    (local replies cost nothing, so they say nothing). None when there is nothing to say."""
    metrics = metrics or {}
    source = metrics.get("cost_source")
    if source in (None, "local"):
        return None
    if isinstance(metrics.get("cost_usd"), (int, float)):
        return format_cost(metrics["cost_usd"])
    if isinstance(metrics.get("cost_estimate_usd"), (int, float)):
        return "≈" + format_cost(metrics["cost_estimate_usd"]) + " (estimated)"
    return "cost unknown (set_price)" if source == "unknown" else None
