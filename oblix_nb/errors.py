"""Exceptions raised by oblix_nb. One home for all of them."""
from __future__ import annotations


class OblixError(Exception):
    """Base class for oblix_nb errors."""


class SessionNotFoundError(OblixError, KeyError):
    """No session with that id in the store."""

    def __init__(self, session_id: str):
        self.session_id = session_id
        super().__init__(session_id)

    def __str__(self) -> str:  # KeyError's str() would quote the repr
        return f"no session with id {self.session_id!r}"


class SessionExistsError(OblixError, ValueError):
    """An import would overwrite an existing session (it never does; use new_id=True)."""


class InvalidSessionIdError(OblixError, ValueError):
    """A session id that is not of the accepted form (rejected before any use)."""


class ModelUnavailableError(OblixError):
    """hook_model could not reach the endpoint, or the endpoint does not list the model."""


class NoModelHookedError(OblixError):
    """execute() was called but no model is hooked (or the forced model_id is not hooked)."""


class ModelCallError(OblixError):
    """A model failed. ``partial`` holds what arrived before the failure (stored, flagged partial)."""

    def __init__(self, message: str, *, model_id: str | None = None, partial: str = "",
                 response: dict | None = None):
        super().__init__(message)
        self.model_id = model_id
        self.partial = partial
        self.response = response


class BudgetExceededError(OblixError):
    """A cloud call could exceed a budget set with ``client.set_budget`` and no local model is hooked to take it.

    Nothing was sent. ``budget`` is the budget that blocked it (``{"per", "usd", "spent_usd", "remaining_usd"}``),
    ``worst_case_usd`` what the call could have cost, ``model_id`` the model it was routed to.
    """

    def __init__(self, message: str, *, budget: dict | None = None, worst_case_usd: float | None = None,
                 model_id: str | None = None):
        super().__init__(message)
        self.budget = budget
        self.worst_case_usd = worst_case_usd
        self.model_id = model_id
