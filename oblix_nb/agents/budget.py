"""BudgetAgent: votes for the local model as cloud spend nears a budget set with ``client.set_budget``.

Hooked like the other agents (``client.hook_agent(BudgetAgent())``; ``set_budget`` hooks one itself when none
is). The client binds itself to the agent when hooking it; ``check()`` reads the budgets and the spend from
the session store (so it sees what every kernel sharing the store spent) and returns:

* ``"within_budget"`` (no vote) while every budget is below ``warn_at`` (default 80 %) used, or none is set;
* ``"near_budget"`` (target local, ranked like resource pressure, so a tie with it goes local) from ``warn_at``;
* ``"over_budget"`` (target local, ranked like a lost connection: it beats every other vote) once spent.

The hard limit is not the agent's job: the client refuses any single cloud call whose worst case exceeds what
is left (see :mod:`oblix_nb.budget`), whether or not this agent is hooked.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

from ..pricing import format_cost

if TYPE_CHECKING:
    from ..budget import Budgets


class BudgetHost(Protocol):
    """What the agent reads of the client it is hooked to (an OblixClient)."""

    current_session_id: str | None

    @property
    def budgets(self) -> Budgets: ...


class BudgetAgent:
    name = "budget"

    def __init__(self, warn_at: float = 0.8):
        if isinstance(warn_at, bool) or not isinstance(warn_at, (int, float)) or not 0 < warn_at <= 1:
            raise ValueError(f"warn_at must be a fraction in (0, 1], not {warn_at!r}")
        self.warn_at = float(warn_at)
        self._client_ref: weakref.ReferenceType[BudgetHost] | None = None

    def bind(self, client: BudgetHost) -> None:
        """Called by ``hook_agent``: the client whose budgets and store this agent reads."""
        self._client_ref = weakref.ref(client)

    def check(self) -> dict:
        client = self._client_ref() if self._client_ref is not None else None
        if client is None:
            return {"state": "unbound", "target": None, "reason": "not hooked to a client", "metrics": {}}
        statuses = client.budgets.status(client.current_session_id)
        metrics = {"budgets": [s.as_dict() for s in statuses], "warn_at": self.warn_at}
        if not statuses:
            return {"state": "within_budget", "target": None, "reason": "no budget set", "metrics": metrics}
        tight = statuses[0]
        used = f"{format_cost(tight.spent_usd)} of the {tight.per} budget of {format_cost(tight.usd)} spent"
        if tight.fraction >= 1:
            return {"state": "over_budget", "target": "local", "reason": f"{used}: cloud is off until it resets",
                    "metrics": metrics}
        if tight.fraction >= self.warn_at:
            return {"state": "near_budget", "target": "local",
                    "reason": f"{used} ({tight.fraction:.0%}, warning from {self.warn_at:.0%})", "metrics": metrics}
        return {"state": "within_budget", "target": None, "reason": f"{used} ({tight.fraction:.0%})",
                "metrics": metrics}
