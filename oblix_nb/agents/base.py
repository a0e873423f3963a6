"""The agent protocol, a thread-based background sampler, and ``run_check`` (calls any agent safely).

An agent is anything with a ``name`` string and a ``check()`` method (sync or ``async def``) returning::

    {"state": str, "target": "local" | "cloud" | None, "reason": str, "metrics": dict}

``target`` is the agent's recommendation (None = no preference); ``reason`` is one human-readable line.
The built-in agents sample in a daemon thread (not asyncio) so they work with or without a running loop, and
their ``check()`` only reads the cached sample.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .._util import block_interrupts, describe_error, iso, utcnow

TARGETS = ("local", "cloud")


@runtime_checkable
class Agent(Protocol):
    """What ``OblixClient.hook_agent`` accepts. ``start()``/``stop()`` are optional lifecycle hooks."""

    name: str

    def check(self) -> dict: ...


def error_result(reason: str) -> dict:
    return {"state": "error", "target": None, "reason": reason, "metrics": {}}


def normalize_result(result: Any, name: str = "agent") -> dict:
    """Coerce a (possibly foreign) check result into the documented shape; never raises."""
    if not isinstance(result, dict):
        return error_result(f"{name}.check() returned {type(result).__name__}, not a dict")
    out = dict(result)
    state = out.get("state")
    out["state"] = state if isinstance(state, str) and state else "unknown"
    target = out.get("target")
    if isinstance(target, str) and target.lower() in TARGETS:
        out["target"] = target.lower()
    else:
        if target is not None:
            out["invalid_target"] = repr(target)[:80]
        out["target"] = None
    reason = out.get("reason")
    out["reason"] = reason if isinstance(reason, str) else ("" if reason is None else str(reason))
    metrics = out.get("metrics")
    out["metrics"] = metrics if isinstance(metrics, dict) else {}
    return out


class BackgroundSampler:
    """Calls ``sample_fn()`` every ``interval`` seconds in a daemon thread and caches the result.

    * ``start()`` takes the first sample synchronously (unless one exists) then starts the thread; idempotent.
    * ``stop()`` ends the thread (waits up to ``join_timeout``); idempotent; ``start()`` again restarts it.
    * ``latest()`` returns the cached sample; if there is none yet it samples synchronously, so it never
      returns empty. ``sample_now()`` forces a synchronous sample (serialised with the thread's).
    * ``wake()`` makes the thread sample now instead of at the end of its current wait.
    * The thread holds only a weak reference to the sampler, so an abandoned sampler's thread ends by itself.
    * An exception in ``sample_fn`` is kept in ``last_error``; the previous good sample stays cached.
    """

    def __init__(self, sample_fn: Callable[[], Any], interval: float = 1.0, *, name: str = "oblix-sampler"):
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self._sample_fn = sample_fn
        self.interval = float(interval)
        self.name = name
        self._value: Any = None
        self._sampled_at: float | None = None     # time.monotonic() of the last good sample
        self._sampled_at_wall: datetime | None = None  # datetime (UTC) of the last good sample
        self.last_error: str | None = None
        self.samples = 0
        self._sample_lock = threading.Lock()         # one sample at a time (thread vs sample_now)
        self._state_lock = threading.Lock()          # start/stop
        self._stop_event = threading.Event()
        self._wake_event = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sampling
    def sample_now(self) -> Any:
        with self._sample_lock:
            try:
                value = self._sample_fn()
            except Exception as exc:  # keep the previous good value
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._value is None:
                    raise
                return self._value
            self._value = value
            self._sampled_at = time.monotonic()
            self._sampled_at_wall = utcnow()
            self.last_error = None
            self.samples += 1
            return value

    def latest(self) -> Any:
        if self._sampled_at is None:
            return self.sample_now()
        return self._value

    @property
    def has_sample(self) -> bool:
        return self._sampled_at is not None

    @property
    def age_s(self) -> float | None:
        return None if self._sampled_at is None else max(0.0, time.monotonic() - self._sampled_at)

    @property
    def sampled_at(self) -> str | None:
        return None if self._sampled_at_wall is None else iso(self._sampled_at_wall)

    # -- lifecycle
    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive() and not self._stop_event.is_set()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> BackgroundSampler:
        with self._state_lock:
            if self.running:
                return self
            if self._sampled_at is None:
                try:
                    self.sample_now()
                except Exception:
                    pass  # recorded in last_error; the thread retries
            self._stop_event = threading.Event()
            self._wake_event.clear()
            self._thread = threading.Thread(
                target=_sampler_loop, args=(weakref.ref(self), self._stop_event, self._wake_event),
                name=self.name, daemon=True)
            self._thread.start()
            return self

    def stop(self, join_timeout: float = 5.0) -> None:
        with self._state_lock:
            thread, self._thread = self._thread, None
            self._stop_event.set()
            self._wake_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)

    def wake(self) -> None:
        self._wake_event.set()


def _sampler_loop(ref: weakref.ReferenceType[BackgroundSampler], stop: threading.Event,
                  wake: threading.Event) -> None:
    block_interrupts()
    while not stop.is_set():
        sampler = ref()
        if sampler is None:
            return
        interval = sampler.interval
        del sampler
        wake.wait(interval)
        wake.clear()
        if stop.is_set():
            return
        sampler = ref()
        if sampler is None:
            return
        try:
            sampler.sample_now()
        except Exception:
            pass  # recorded in last_error
        del sampler


class SampledAgent:
    """Base for the built-in agents: a BackgroundSampler plus ``start``/``stop``/``running``/``refresh``.

    Without ``start()`` the agent works on demand: ``check()`` samples synchronously when there is no sample
    yet or the cached one is older than ``interval`` (and starts no thread).
    """

    name = "agent"

    def __init__(self, interval: float):
        self._sampler = BackgroundSampler(self._sample, interval, name=f"oblix-{self.name}")

    @property
    def interval(self) -> float:
        return self._sampler.interval

    @property
    def running(self) -> bool:
        return self._sampler.running

    @property
    def sampler(self) -> BackgroundSampler:
        return self._sampler

    def start(self) -> SampledAgent:
        self._sampler.start()
        return self

    def stop(self) -> None:
        self._sampler.stop()

    def refresh(self) -> dict:
        """Take a sample now (synchronously) and return the resulting check."""
        self._sampler.sample_now()
        return self.check()

    def on_demand_due(self) -> bool:
        """True when ``check()`` would sample synchronously (not started, and no usable cached sample)."""
        s = self._sampler
        if s.running:
            return False
        return not s.has_sample or (s.age_s or 0.0) > s.interval or self._needs_sample()

    def _needs_sample(self) -> bool:
        """Subclasses: the cached sample doesn't cover the current configuration."""
        return False

    def check(self) -> dict:
        try:
            s = self._sampler
            if self.on_demand_due():
                s.sample_now()
            sample = s.latest()
        except Exception as exc:
            return error_result(f"{self.name} could not sample: {type(exc).__name__}: {exc}")
        result = self._evaluate(sample)
        metrics = result.setdefault("metrics", {})
        metrics["sampled_at"] = self._sampler.sampled_at
        metrics["age_s"] = round(self._sampler.age_s or 0.0, 3)
        if self._sampler.last_error:
            metrics["last_sample_error"] = self._sampler.last_error
        return result

    def _sample(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _evaluate(self, sample: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- run_check
_inflight: weakref.WeakKeyDictionary[Any, tuple[threading.Thread, float]] = weakref.WeakKeyDictionary()
_inflight_ids: dict[int, tuple[threading.Thread, float]] = {}  # for agents that can't be weak-referenced
_inflight_lock = threading.Lock()


def _get_inflight(agent: Any):
    with _inflight_lock:
        try:
            entry = _inflight.get(agent)
        except TypeError:
            entry = _inflight_ids.get(id(agent))
        if entry is not None and not entry[0].is_alive():
            _set_inflight(agent, None)
            return None
        return entry


def _set_inflight(agent: Any, entry) -> None:
    # caller holds _inflight_lock (or it's called from _get_inflight under it)
    try:
        if entry is None:
            _inflight.pop(agent, None)
        else:
            _inflight[agent] = entry
    except TypeError:
        if entry is None:
            _inflight_ids.pop(id(agent), None)
        else:
            _inflight_ids[id(agent)] = entry


def _agent_name(agent: Any) -> str:
    name = getattr(agent, "name", None)
    return name if isinstance(name, str) and name else type(agent).__name__


async def run_check(agent: Any, timeout: float = 0.5) -> dict:
    """Call ``agent.check()`` (sync or async) without blocking the event loop for long; never raises.

    * The built-in agents (cache reads) are called directly.
    * ``async def check`` is awaited with ``timeout``.
    * Any other sync ``check`` runs in a daemon thread and is awaited with ``timeout``. (A daemon thread
      rather than ``asyncio.to_thread``: a hung check must not occupy the loop's default executor or hold up
      interpreter / ``asyncio.run`` shutdown.) While a previous call of the same agent is still hung, no new
      thread is started for it.
    * Exceptions, timeouts and malformed results become
      ``{"state": "error", "target": None, "reason": "...", "metrics": {}}``.
    """
    name = _agent_name(agent)
    check = getattr(agent, "check", None)
    if not callable(check):
        return error_result(f"{name} has no callable check()")
    try:
        if isinstance(agent, SampledAgent) and not inspect.iscoroutinefunction(check):
            if not agent.on_demand_due():
                try:
                    return normalize_result(check(), name)
                except Exception as exc:
                    raise _CheckFailed(exc) from exc
            # an on-demand sample may take a while (network probes): don't block the loop
            return normalize_result(await _in_thread(agent, check, timeout, name), name)
        if inspect.iscoroutinefunction(check):
            result = await asyncio.wait_for(_guard(check), timeout)
        else:
            result = await _in_thread(agent, check, timeout, name)
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine/future
            result = await asyncio.wait_for(_guard(lambda: result), timeout)
        return normalize_result(result, name)
    except _CheckFailed as failed:  # raised by the agent itself (even if it is a TimeoutError)
        return error_result(f"{name}.check() failed: {describe_error(failed.exc)}")
    except _Hung as exc:
        return error_result(str(exc))
    except asyncio.TimeoutError:
        return error_result(f"{name}.check() did not answer within {timeout:g} s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # pragma: no cover - defensive
        return error_result(f"{name}.check() failed: {describe_error(exc)}")


class _CheckFailed(Exception):
    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.exc = exc


async def _guard(make: Callable[[], Any]) -> Any:
    try:
        return await make()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _CheckFailed(exc) from exc


class _Hung(Exception):
    """A previous sync check of this agent is still running."""


async def _in_thread(agent: Any, check: Callable[[], Any], timeout: float, name: str) -> Any:
    entry = _get_inflight(agent)
    if entry is not None:
        raise _Hung(f"{name}.check() is still running from an earlier call "
                    f"({time.monotonic() - entry[1]:.1f} s ago); not started again")
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        block_interrupts()
        try:
            value, ok = check(), True
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            value, ok = _CheckFailed(exc), False
        finally:
            with _inflight_lock:
                _set_inflight(agent, None)
        try:
            loop.call_soon_threadsafe(deliver, ok, value)
        except RuntimeError:
            pass  # loop closed meanwhile

    thread = threading.Thread(target=work, name=f"oblix-check-{name}", daemon=True)
    with _inflight_lock:
        _set_inflight(agent, (thread, time.monotonic()))
    thread.start()
    return await asyncio.wait_for(fut, timeout)
