"""Routing: pick a target from the agents' recommendations, then the first hooked model of that target.

Policy (``decide``), strongest rule first — each agent result counts with the rank of its ``state``:

1. ``"disconnected"`` (rank 4): you can't use a cloud you can't reach → normally local. Beats everything.
   ``"over_budget"`` (rank 4, BudgetAgent): you can't use a cloud you can't pay for → local.
2. ``"critical"`` (rank 3): resources critical → normally cloud.
3. ``"constrained"`` (rank 2): resources constrained → normally cloud (so it beats a degraded connection).
   ``"near_budget"`` (rank 2, BudgetAgent): spend nears a budget → local (a tie with "constrained" goes local).
4. ``"degraded"`` (rank 1): connection degraded → normally local (unless resources said cloud, above).
5. Any other state with an explicit ``target`` (rank 0) — foreign agents' votes.
   The built-in "all fine" states ``"available"`` (resource_monitor), ``"connected"`` (connectivity) and
   ``"within_budget"`` (budget) say a target is *usable*, not *preferred*, so they are not votes.
6. No vote at all → **local** (privacy; no per-token cost).

The highest rank that has votes decides; within that rank the majority target wins, and a tie goes to local.
Foreign agents use the same vocabulary: to outrank the built-ins, return a stronger state (e.g. "critical").

If the preferred target has no hooked model, the other target is used and the reason says so. ``candidates``
is the preferred target's models in hook order, then the other target's (cloud models whose endpoint an agent
measured as unreachable go last within their group), so fallback always has somewhere to go. With
``forced_model_id`` that model comes first and the rest follow as fallback candidates.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._util import describe_error
from .agents.base import normalize_result
from .errors import NoModelHookedError

TARGETS = ("local", "cloud")
STATE_RANK = {"disconnected": 4, "over_budget": 4, "critical": 3, "constrained": 2, "near_budget": 2,
              "degraded": 1}
NEUTRAL_STATES = frozenset({"available", "connected", "within_budget"})
DEFAULT_TARGET = "local"


class UnknownModelError(NoModelHookedError, ValueError):
    """``forced_model_id`` names a model that is not hooked (a ValueError and a NoModelHookedError)."""


@dataclass
class RoutingDecision:
    target: str                          # "local" | "cloud": the side of the model actually chosen
    model_id: str
    reason: str                          # human-readable
    fallback_from: str | None = None  # "openai:x (ConnectionError: ...)" after a fallback
    candidates: list = field(default_factory=list)  # model ids in try order (model_id first)
    forced: bool = False
    _targets: dict = field(default_factory=dict, repr=False, compare=False)  # model_id -> target

    def as_dict(self) -> dict:
        return {"target": self.target, "model_id": self.model_id, "reason": self.reason,
                "fallback_from": self.fallback_from, "candidates": list(self.candidates), "forced": self.forced}

    def next_candidate(self, after: str | None = None) -> str | None:
        """The candidate after ``after`` (default: the current model), or None when there is none."""
        after = self.model_id if after is None else after
        try:
            i = self.candidates.index(after)
        except ValueError:
            return None
        return self.candidates[i + 1] if i + 1 < len(self.candidates) else None

    def fell_back(self, failed_model_id: str, error_summary: Any, next_model: Any = None) -> RoutingDecision:
        """A new decision for ``next_model`` (a model object, a model id, or None = the next candidate) after
        ``failed_model_id`` failed with ``error_summary`` (text or the exception)."""
        summary = describe_error(error_summary) if isinstance(error_summary, BaseException) else \
            (str(error_summary).strip() or "failed")
        if next_model is None:
            next_id = self.next_candidate(failed_model_id)
            if next_id is None:
                raise ValueError(f"no candidate left after {failed_model_id!r}; candidates: {self.candidates}")
            next_target = self._targets.get(next_id)
        elif isinstance(next_model, str):
            next_id, next_target = next_model, self._targets.get(next_model)
        else:
            next_id, next_target = next_model.model_id, getattr(next_model, "target", None)
        if next_target not in TARGETS:
            raise ValueError(f"unknown fallback model {next_id!r}; candidates: {self.candidates}")
        failure = f"{failed_model_id} ({summary})"
        fallback_from = failure if not self.fallback_from else f"{self.fallback_from}; {failure}"
        candidates = list(self.candidates)
        if next_id not in candidates:
            candidates.append(next_id)
        targets = dict(self._targets)
        targets[next_id] = next_target
        reason = (f"{self.reason}; {failed_model_id} failed before its first token ({summary}), "
                  f"so fell back to {next_id} ({next_target})")
        return replace(self, target=next_target, model_id=next_id, reason=reason, fallback_from=fallback_from,
                       candidates=candidates, _targets=targets)

    def skipped(self, model_id: str, why: str, next_model: str, next_target: str) -> RoutingDecision:
        """A new decision for ``next_model`` after ``model_id`` was passed over before any call (e.g. over
        budget). Unlike :meth:`fell_back` nothing failed, so ``fallback_from`` is unchanged."""
        candidates = list(self.candidates)
        if next_model not in candidates:
            candidates.append(next_model)
        targets = {**self._targets, next_model: next_target}
        reason = f"{self.reason}; {model_id} skipped: {why}; so routed to {next_model} ({next_target})"
        return replace(self, target=next_target, model_id=next_model, reason=reason, candidates=candidates,
                       _targets=targets)


# ---------------------------------------------------------------------------------------------- decide
@dataclass
class _Vote:
    agent: str
    state: str
    target: str
    reason: str
    rank: int


def decide(models: Sequence[Any], checks: Iterable[dict] = (),
           forced_model_id: str | None = None) -> RoutingDecision:
    """Route one request. ``models``: objects with ``.model_id`` and ``.target`` in hook order; ``checks``:
    ``[{"agent": name, "result": {...}}]``. Raises NoModelHookedError (no models) or UnknownModelError
    (``forced_model_id`` not hooked)."""
    hooked: dict[str, str] = {}
    for m in models or ():
        mid, target = getattr(m, "model_id", None), getattr(m, "target", None)
        if not isinstance(mid, str) or target not in TARGETS:
            raise ValueError(f"model {m!r} needs a model_id string and a target of 'local' or 'cloud'")
        hooked.setdefault(mid, target)
    if not hooked:
        raise NoModelHookedError("no model is hooked: await client.hook_model(ModelType..., ...) first")
    if forced_model_id is not None and forced_model_id not in hooked:
        raise UnknownModelError(f"model_id {forced_model_id!r} is not hooked; hooked models: {list(hooked)}")

    results = []
    for item in checks or ():
        if not isinstance(item, dict):
            continue
        agent = item.get("agent")
        name = agent if isinstance(agent, str) else "agent"
        results.append((name, normalize_result(item.get("result"), name)))

    preferred, decisive, used = _preference(results)
    context = [_summary(name, r) for name, r in results if name not in used]

    unreachable = _unreachable_models(results)
    groups = {t: [mid for mid, tt in hooked.items() if tt == t] for t in TARGETS}
    for t in TARGETS:  # models measured unreachable last within their group
        groups[t] = [m for m in groups[t] if m not in unreachable] + [m for m in groups[t] if m in unreachable]
    other = "cloud" if preferred == "local" else "local"
    order = groups[preferred] + groups[other]

    if forced_model_id is not None:
        candidates = [forced_model_id] + [m for m in order if m != forced_model_id]
        target = hooked[forced_model_id]
        agents_text = "; ".join([f"agents would prefer {preferred} ({decisive})"] + context)
        reason = f"{target}: forced by model_id={forced_model_id}; {agents_text}"
        return RoutingDecision(target, forced_model_id, reason, None, candidates, True, dict(hooked))

    chosen = order[0]
    target = hooked[chosen]
    if target == preferred:
        head = f"{target}: {decisive}"
    else:
        head = f"{target}: {preferred} preferred ({decisive}), but no {preferred} model is hooked"
    if chosen in unreachable:
        head += f"; {chosen}'s endpoint was measured unreachable, but it is the only {target} model"
    reason = "; ".join([head] + context)
    return RoutingDecision(target, chosen, reason, None, order, False, dict(hooked))


def _preference(results: list) -> tuple[str, str, set]:
    """(preferred target, the decisive explanation, names of the agents mentioned in it)."""
    votes = []
    for name, r in results:
        target, state = r.get("target"), r.get("state", "")
        if target not in TARGETS or state in NEUTRAL_STATES or state == "error":
            continue
        votes.append(_Vote(name, state, target, r.get("reason", ""), STATE_RANK.get(state, 0)))
    if not votes:
        return DEFAULT_TARGET, (f"no agent expressed a preference, so {DEFAULT_TARGET} is preferred "
                                f"(privacy, no per-token cost)"), set()
    top = max(v.rank for v in votes)
    tier = [v for v in votes if v.rank == top]
    n_local = sum(v.target == "local" for v in tier)
    n_cloud = len(tier) - n_local
    if n_local == n_cloud:
        winner = DEFAULT_TARGET
    else:
        winner = "local" if n_local > n_cloud else "cloud"
    for_ = [v for v in tier if v.target == winner]
    against = [v for v in tier if v.target != winner]
    parts = [f"{v.agent} says {_clause(v)}" for v in for_]
    text = "; ".join(parts)
    if against:
        opp = "; ".join(f"{v.agent} says {v.target} ({_clause(v)})" for v in against)
        text += (f"; {opp} — a tie, which goes to {DEFAULT_TARGET}" if n_local == n_cloud
                 else f"; outvoted: {opp}")
    overruled = [v for v in votes if v.rank < top and v.target != winner]
    if overruled:
        text += "; this overrides " + "; ".join(f"{v.agent} ({_clause(v)} → {v.target})" for v in overruled)
    return winner, text, {v.agent for v in tier} | {v.agent for v in overruled}


def _clause(v: _Vote) -> str:
    reason = v.reason.strip() or f"{v.target}"
    return reason if v.state in reason else f"{reason} ({v.state})"


def _summary(name: str, r: dict) -> str:
    reason = r.get("reason") or r.get("state") or "no reason given"
    if r.get("state") == "error":
        return f"{name} ignored ({reason})"
    return f"{name}: {reason}"


def _unreachable_models(results: list) -> set:
    out = set()
    for _name, r in results:
        endpoints = r.get("metrics", {}).get("endpoints")
        if isinstance(endpoints, dict):
            for mid, detail in endpoints.items():
                if isinstance(detail, dict) and detail.get("reachable") is False:
                    out.add(mid)
    return out
