"""Exceptions raised by oblix_nb. One home for all of them."""
from __future__ import annotations


class OblixError(Exception):
    """Base class for oblix_nb errors."""


class StorageError(OblixError, OSError):
    """The session database could not be read or written: disk full, a read-only file system or home, an
    unwritable or missing folder, an I/O error. ``path`` is the database (or file) concerned and ``cause`` what
    the system said; ``errno`` is set when the cause has one. A failed write changed nothing: data already
    stored stays intact. A store on a read-only home still lists, loads and exports."""

    reason: str | None = None  # SQLite: the storage failure in a few words ("disk full", ...), when known

    def __init__(self, message: str, *, path: str | None = None, cause: BaseException | None = None):
        errno = getattr(cause, "errno", None) if isinstance(cause, OSError) else None
        super().__init__(message) if errno is None else super().__init__(errno, message)
        self.path = path
        self.cause = cause

    def __str__(self) -> str:  # OSError(errno, msg) would print "[Errno n] msg"
        return self.strerror if self.errno is not None and self.strerror else super().__str__()


class SessionNotFoundError(OblixError, KeyError):
    """No session with that id in the store."""

    def __init__(self, session_id: str):
        self.session_id = session_id
        super().__init__(session_id)

    def __str__(self) -> str:  # KeyError's str() would quote the repr
        return f"no session with id {self.session_id!r}"


class SessionExistsError(OblixError, ValueError):
    """An import would overwrite an existing session (it never does; use new_id=True)."""


class SessionFileError(OblixError, ValueError):
    """A file cannot be imported as a session: not a regular file (a directory, FIFO, device, socket), larger
    than the import size cap, not valid JSON, or not a valid session. The message names the file and the
    problem; nothing was imported."""


class InvalidSessionIdError(OblixError, ValueError):
    """A session id that is not of the accepted form (rejected before any use)."""


class ModelUnavailableError(OblixError):
    """hook_model could not reach the endpoint, or the endpoint does not list the model."""


class NoModelHookedError(OblixError):
    """execute() was called but no model is hooked (or the forced model_id is not hooked)."""


class BackendError(OblixError):
    """One model's call failed inside its backend: the provider's SDK raised (an HTTP error, a dropped connection,
    an error event inside a stream, a keyword the installed SDK does not take, a reply it could not parse).

    Every backend turns whatever its SDK raises into this type, so routing treats all providers alike. Before
    the first token, ``retryable`` decides whether the next hooked model is tried: True for connection failures,
    timeouts, HTTP 5xx/429/529, errors a server sends inside a stream and SDK failures; False when the server
    rejected the request itself (HTTP 4xx: bad key, invalid request), which another model would not fix either.
    ``status_code`` is the HTTP status if there was one (Ollama's in-stream errors have -1); ``cause`` (also
    ``__cause__``) is the SDK's exception; the message is ``"<SDK exception type>: <what the server said>"`` on
    one line, the server's reason included."""

    def __init__(self, message: str, *, model_id: str | None = None, retryable: bool = True,
                 status_code: int | None = None, cause: BaseException | None = None):
        super().__init__(message)
        self.model_id = model_id
        self.retryable = retryable
        self.status_code = status_code
        self.cause = cause


class ModelCallError(OblixError):
    """A model failed. ``partial`` holds what arrived before the failure (stored, flagged partial)."""

    def __init__(self, message: str, *, model_id: str | None = None, partial: str = "",
                 response: dict | None = None):
        super().__init__(message)
        self.model_id = model_id
        self.partial = partial
        self.response = response


class ReplyNotStoredError(OblixError):
    """A model's reply arrived in full but could not be stored in its session, even on a second try (disk
    full, database unwritable, the session deleted by another kernel meanwhile). Nothing is lost: ``response``
    is execute()'s full dict (the text is ``response["response"]``); ``session_id`` and ``path`` (the
    database) say where it could not be written; the cause is chained (``__cause__``)."""

    def __init__(self, message: str, *, response: dict, session_id: str | None, path: str | None):
        super().__init__(message)
        self.response = response
        self.session_id = session_id
        self.path = path


class SchemaError(OblixError, ValueError):
    """A ``schema=`` that is not a JSON Schema dict, a pydantic model class or a valid concise spec."""


class StructuredOutputError(OblixError, ValueError):
    """A reply that is not JSON matching the schema. ``text`` is the reply; ``response`` execute()'s dict."""

    def __init__(self, message: str, *, text: str = "", response: dict | None = None):
        super().__init__(message)
        self.text = text
        self.response = response


class RowError(OblixError):
    """``map(..., on_error="raise")``: a row failed. ``positions`` are its row positions in the input; the
    rows that finished are stored (the next identical call takes them from the store)."""

    def __init__(self, message: str, *, positions: list[int]):
        super().__init__(message)
        self.positions = positions


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
