"""How many threads the embedded engine should use, from the machine and how busy it is right now.

llama.cpp's threads wait for each other by spinning at every step of a token. When the process gets fewer free
cores than it has threads, one thread is always descheduled and the others spin until it runs again: on a 2-core
machine that other work keeps busy, 2 threads measured 3-4x *slower* than 1 (``bench/threads.py``). So the count is
chosen per call:

``threads = max(1, min(cores, floor(cores_free + THREAD_MARGIN)))``

- ``cores``: physical cores this process may use (``psutil.cpu_count(logical=False)``, limited by the CPU affinity
  mask and a cgroup CPU quota). Hyper-threads are not counted: llama.cpp gains nothing from them.
- ``cores_free``: ``cores`` minus the CPU time *other* processes used over the last second (all CPU time of the
  machine minus this process's own), sampled every 0.25 s by one daemon thread that runs while an embedded model
  with automatic threads is loaded.
- ``THREAD_MARGIN`` (0.25): a core counts as free only when at most a quarter of it is used by others.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque

from .._util import block_interrupts

THREAD_MARGIN = 0.25
SAMPLE_EVERY = 0.25   # seconds between load samples
WINDOW = 1.0          # the load is averaged over this many seconds


def usable_cores() -> int:
    """Physical cores this process may run on: physical cores, affinity mask and cgroup quota, whichever is least."""
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    limits = [physical]
    try:
        limits.append(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    quota = _cgroup_quota()
    if quota is not None:
        limits.append(max(1, math.ceil(quota)))
    return max(1, min(limits))


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (or v1 ``cfs_quota_us``) limit; None when unlimited."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period_us = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def threads_for(cores: int, other_busy: float) -> int:
    """The rule (see the module docstring): threads for ``cores`` usable cores when others use ``other_busy``."""
    free = max(0.0, cores - max(0.0, other_busy))
    return max(1, min(cores, math.floor(free + THREAD_MARGIN)))


class LoadMonitor:
    """CPU time used by other processes, in cores, averaged over the last :data:`WINDOW` seconds."""

    _instance: LoadMonitor | None = None
    _instance_lock = threading.Lock()

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._samples: deque = deque(maxlen=int(WINDOW / SAMPLE_EVERY) + 2)
        self._lock = threading.Lock()
        self._users = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sample()

    @classmethod
    def shared(cls) -> LoadMonitor:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _sample(self) -> None:
        per_cpu = self._psutil.cpu_times(percpu=True)
        try:  # only the CPUs this process may run on (a container's cpuset, taskset)
            allowed = os.sched_getaffinity(0)
            per_cpu = [t for i, t in enumerate(per_cpu) if i in allowed] or per_cpu
        except (AttributeError, OSError):
            pass
        busy = sum(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                   - getattr(t, "guest_nice", 0.0) for t in per_cpu)
        mine = self._me.cpu_times()
        with self._lock:
            self._samples.append((time.monotonic(), busy, mine.user + mine.system))

    def acquire(self) -> None:
        """Start sampling (one daemon thread shared by every user) until the matching :meth:`release`."""
        with self._lock:
            self._users += 1
            if self._thread is None or not self._thread.is_alive():
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="oblix-cpu-load", daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                self._wake.set()

    def _run(self) -> None:
        block_interrupts()  # SIGINT goes to the main thread (Ctrl-C, kernel interrupt), never to this one
        while not self._wake.wait(SAMPLE_EVERY):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a failed sample just leaves the older ones
                pass
        with self._lock:
            self._thread = None

    def other_busy(self) -> float:
        """Cores' worth of CPU time other processes used over the last second (0 when unknown)."""
        with self._lock:
            samples = list(self._samples)
        if not samples or time.monotonic() - samples[-1][0] > 2 * SAMPLE_EVERY:
            # no recent sample (monitor not running, or the machine is too busy to run it): take one now
            self._sample()
        for _ in range(2):
            with self._lock:
                samples = list(self._samples)
            last = samples[-1]
            first = next((s for s in samples if last[0] - s[0] <= WINDOW + SAMPLE_EVERY / 2), samples[0])
            span = last[0] - first[0]
            if span >= SAMPLE_EVERY:
                break
            # too short a span to say anything (just started, or the only recent sample was taken above)
            time.sleep(SAMPLE_EVERY - span)
            self._sample()
        if span <= 0:
            return 0.0
        return max(0.0, ((last[1] - first[1]) - (last[2] - first[2])) / span)


def choose_threads(cores: int | None = None, monitor: LoadMonitor | None = None) -> tuple[int, str]:
    """``(threads, reason)`` for a call starting now."""
    cores = cores or usable_cores()
    busy = (monitor or LoadMonitor.shared()).other_busy()
    n = threads_for(cores, busy)
    return n, f"{n} thread(s): {cores} usable core(s), {busy:.2f} busy with other work"
