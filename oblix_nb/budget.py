"""Budgets: how much the cloud may cost per day, per session or in total, held across kernels sharing a store.

``client.set_budget(usd, per="day"|"session"|"total")`` keeps ``{"usd": ...}`` under the settings key
``budget:<per>`` in the session store; several periods may be set at once and the tightest one rules. Spend is
read from the store's usage log on every check (exact costs, plus estimates for replies whose exact cost is
unknown), so every kernel sharing the store sees the same budget and the same spend.

* ``day``: since local midnight of this machine; ``session``: within the request's session (requests outside
  a session are not bound by it); ``total``: ever.
* Before each cloud call (:meth:`Budgets.check_call`) the call's worst case -- the known input (as counted for
  the context window, which over-counts) at the input price plus ``max_tokens`` at the output price -- must fit
  what is left of every budget; otherwise routing moves on to the next candidate (a local model costs 0), and
  :class:`~oblix_nb.errors.BudgetExceededError` is raised when none is left. A cloud model without a known price
  cannot be bounded, so while a budget is set it is skipped the same way (``client.set_price`` fixes that).
* Kernels check independently: two calls started at the same moment in two kernels may both pass.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Optional

from ._util import iso
from .sessions import usage as usage_log

if TYPE_CHECKING:
    from .sessions.base import SessionStoreBase

PERIODS = ("day", "session", "total")
SETTINGS_PREFIX = "budget:"


@dataclass
class BudgetStatus:
    per: str
    usd: float
    spent_usd: float

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.usd - self.spent_usd)

    @property
    def fraction(self) -> float:
        return math.inf if self.usd == 0 and self.spent_usd > 0 else (self.spent_usd / self.usd if self.usd else 0.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "remaining_usd": self.remaining_usd}


def local_midnight_utc() -> str:
    """Today's local midnight, as a store timestamp (UTC ISO)."""
    now = datetime.now().astimezone()
    return iso(now.replace(hour=0, minute=0, second=0, microsecond=0))


class Budgets:
    def __init__(self, store: SessionStoreBase):
        self._store = store

    def set(self, usd: Optional[float], per: str = "day") -> Optional[dict]:
        """Set (or with ``usd=None`` remove) the budget for ``per``; returns its status (None when removed)."""
        if per not in PERIODS:
            raise ValueError(f"per must be one of {list(PERIODS)}, not {per!r}")
        if usd is None:
            self._store.delete_setting(SETTINGS_PREFIX + per)
            return None
        usage_log.require(self._store, "a budget")
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) or usd < 0:
            raise ValueError(f"a budget is a finite number of US dollars >= 0, not {usd!r}")
        self._store.set_setting(SETTINGS_PREFIX + per, {"usd": float(usd)})
        return BudgetStatus(per, float(usd), self._spent(per, None)).as_dict()

    def limits(self) -> dict[str, float]:
        if not usage_log.supported(self._store):
            return {}
        return {key[len(SETTINGS_PREFIX):]: float(value["usd"])
                for key, value in self._store.settings(SETTINGS_PREFIX).items()
                if key[len(SETTINGS_PREFIX):] in PERIODS and isinstance(value, dict)}

    def _spent(self, per: str, session_id: Optional[str]) -> float:
        if per == "day":
            return usage_log.spent(self._store, since=local_midnight_utc())
        if per == "session":
            return usage_log.spent(self._store, session_id=session_id) if session_id else 0.0
        return usage_log.spent(self._store)

    def status(self, session_id: Optional[str] = None) -> list[BudgetStatus]:
        """Every budget that applies (a session budget only with a session), tightest (most used) first."""
        out = [BudgetStatus(per, usd, self._spent(per, session_id)) for per, usd in self.limits().items()
               if per != "session" or session_id]
        return sorted(out, key=lambda s: (-s.fraction, s.remaining_usd))

    def check_call(self, price, input_tokens: int, max_output_tokens: int,
                   session_id: Optional[str]) -> Optional[tuple[str, Optional[BudgetStatus], Optional[float]]]:
        """None if a call may go ahead, else ``(why, the budget that blocks it, worst case USD)``."""
        statuses = self.status(session_id)
        if not statuses:
            return None
        if price is None:
            return ("its price is unknown, so its cost cannot be bounded under the "
                    f"{statuses[0].per} budget (set one with client.set_price)", statuses[0], None)
        worst = price.worst_case(input_tokens, max_output_tokens)
        for s in statuses:
            if worst > s.remaining_usd:
                return (f"its worst case ${worst:.6f} ({input_tokens} input + {max_output_tokens} output tokens) "
                        f"exceeds what is left of the {s.per} budget (${s.remaining_usd:.6f} of ${s.usd:g})",
                        s, worst)
        return None
