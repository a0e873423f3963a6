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
* The check is a *reservation* (:meth:`Budgets.reserve`): in one store transaction serialized with every other
  kernel's (SQLite's write lock; PostgreSQL's advisory lock per user), the worst case must fit what is left after
  spend *and* the worst cases of the calls still in flight; it is then held until the call ends and is replaced
  by the call's real cost (:meth:`~oblix_nb.sessions.base.SessionStoreBase.settle_spend`). So concurrent calls,
  in one kernel or many, never spend more than a budget. A kernel that dies mid-call holds its reservation
  until it lapses (:data:`RESERVATION_TTL_S`, or at once when its process is found gone on the same host).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ._util import iso
from .sessions import usage as usage_log

if TYPE_CHECKING:
    from .sessions.base import SessionStoreBase

PERIODS = ("day", "session", "total")
RESERVATION_TTL_S = 900.0  # a reservation whose call never settles (its kernel died) lapses after this
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

    def set(self, usd: float | None, per: str = "day") -> dict | None:
        """Set (or with ``usd=None`` remove) the budget for ``per``; returns its status (None when removed)."""
        if per not in PERIODS:
            raise ValueError(f"per must be one of {list(PERIODS)}, not {per!r}")
        if usd is None:
            self._store.delete_setting(SETTINGS_PREFIX + per)
            return None
        usage_log.require(self._store, "a budget")
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 <= usd < math.inf:
            raise ValueError(f"a budget is a finite number of US dollars >= 0, not {usd!r}")
        self._store.set_setting(SETTINGS_PREFIX + per, {"usd": float(usd)})
        return BudgetStatus(per, float(usd), self._spent(per, None)).as_dict()

    def limits(self) -> dict[str, float]:
        if not usage_log.supported(self._store):
            return {}
        return {key[len(SETTINGS_PREFIX):]: float(value["usd"])
                for key, value in self._store.settings(SETTINGS_PREFIX).items()
                if key[len(SETTINGS_PREFIX):] in PERIODS and isinstance(value, dict)}

    def _spent(self, per: str, session_id: str | None) -> float:
        if per == "day":
            return usage_log.spent(self._store, since=local_midnight_utc())
        if per == "session":
            return usage_log.spent(self._store, session_id=session_id) if session_id else 0.0
        return usage_log.spent(self._store)

    def status(self, session_id: str | None = None) -> list[BudgetStatus]:
        """Every budget that applies (a session budget only with a session), tightest (most used) first."""
        out = [BudgetStatus(per, usd, self._spent(per, session_id)) for per, usd in self.limits().items()
               if per != "session" or session_id]
        return sorted(out, key=lambda s: (-s.fraction, s.remaining_usd))

    def check_call(self, price, input_tokens: int, max_output_tokens: int,
                   session_id: str | None) -> tuple[str, BudgetStatus | None, float | None] | None:
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

    def _window(self, per: str, session_id: str | None) -> tuple[str | None, str | None]:
        """``(since, session_id)`` of the usage rows a budget counts (as :meth:`_spent` sums them)."""
        if per == "day":
            return local_midnight_utc(), None
        return None, (session_id if per == "session" else None)

    def reserve(self, price, input_tokens: int, max_output_tokens: int, session_id: str | None,
                request_id: str | None = None, model_id: str | None = None
                ) -> tuple[tuple[str, BudgetStatus | None, float | None] | None, str | None]:
        """Reserve a cloud call's worst case under every budget that applies, atomically across kernels sharing
        the store: ``(None, reservation id)`` when it fits (settle it with the store's ``settle_spend``),
        ``(None, None)`` when no budget applies, else ``(blocked, None)`` as :meth:`check_call` says it."""
        applicable = [(per, usd) for per, usd in self.limits().items() if per != "session" or session_id]
        if not applicable:
            return None, None
        if price is None:
            return self.check_call(None, input_tokens, max_output_tokens, session_id), None
        worst = price.worst_case(input_tokens, max_output_tokens)
        store = self._store
        windows = []
        for per, usd in applicable:
            since, sid = self._window(per, session_id)
            windows.append((since, sid, usd, *usage_log.cached_spend(store, since, sid)))
        reservation, sums = store.reserve_spend(worst, windows, session_id=session_id, request_id=request_id,
                                                model_id=model_id, ttl_s=RESERVATION_TTL_S)
        for (since, sid, *_), (top, spent, _) in zip(windows, sums):
            usage_log.remember_spend(store, since, sid, top, spent)
        if reservation is not None:
            return None, reservation
        blocking = [(BudgetStatus(per, usd, spent), reserved) for (per, usd), (_, spent, reserved)
                    in zip(applicable, sums) if spent + reserved + worst > usd * (1 + 1e-12)]
        blocking = blocking or [(BudgetStatus(*applicable[0], sums[0][1]), sums[0][2])]
        status, reserved = min(blocking, key=lambda b: b[0].remaining_usd - b[1])
        left = max(0.0, status.remaining_usd - reserved)
        held = f"; ${reserved:.6f} is held by calls in flight" if reserved > 0 else ""
        return (f"its worst case ${worst:.6f} ({input_tokens} input + {max_output_tokens} output tokens) exceeds "
                f"what is left of the {status.per} budget (${left:.6f} of ${status.usd:g}{held})", status, worst), None
