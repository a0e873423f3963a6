"""ResourceMonitor: CPU, memory, load per core and (only where one is really found) GPU.

States and recommendations:

* ``"available"``   — every value at or under its constrained threshold → target ``"local"`` (the machine can
  run a local model; the router treats this as "no objection", see ``oblix_nb.routing``).
* ``"constrained"`` — some value above its constrained threshold → target ``"cloud"``.
* ``"critical"``    — some value above its critical threshold → target ``"cloud"``.

A value is over a threshold when it is strictly greater (so ``{"cpu": 0}`` trips on any load and a threshold of
100 on a percentage never does).

Default thresholds (``ResourceMonitor.DEFAULT_THRESHOLDS``)::

    cpu 80 / memory 85 / gpu 85 / load_per_core 1.5          (constrained, percent / per core)
    cpu_critical 90 / memory_critical 95 / gpu_critical 95 / load_per_core_critical 3.0

``load_per_core`` is the 1-minute load average divided by the logical CPU count: above 1.0 processes queue for a
CPU; 1.5 (half again as many runnable tasks as cores) is where a local model's token rate visibly drops, 3.0
is a machine that is swamped. The ``gpu`` thresholds apply to both GPU utilisation and GPU memory use (the
busiest device counts).

Memory is the larger of the host's ``virtual_memory().percent`` and, inside a cgroup-v2 container with a memory
limit below the host's RAM, ``(memory.current - inactive_file) / memory.max`` — a container near its limit is
constrained even when the host is not.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

from .base import SampledAgent

_CONSTRAINED_KEYS = ("cpu", "memory", "gpu", "load_per_core")
_LABELS = {"cpu": "cpu", "memory": "memory", "gpu": "gpu", "gpu_memory": "gpu memory",
           "load_per_core": "load"}


class ResourceMonitor(SampledAgent):
    """Samples local resources in the background (every ``interval`` s once started) and recommends a target."""

    name = "resource_monitor"

    DEFAULT_THRESHOLDS: dict = {
        "cpu": 80.0, "memory": 85.0, "gpu": 85.0, "load_per_core": 1.5,
        "cpu_critical": 90.0, "memory_critical": 95.0, "gpu_critical": 95.0, "load_per_core_critical": 3.0,
    }

    def __init__(self, custom_thresholds: dict | None = None, interval: float = 1.0):
        self.thresholds = self._merge_thresholds(custom_thresholds)
        self._prev_cpu_times = None
        self._last_cpu_percent: float | None = None
        self._gpu_lock = threading.Lock()
        self._gpu_backend: str | None = None      # "nvml" | "nvidia-smi" | None
        self._gpu_probed = False
        self._gpu_error: str | None = None
        self._nvml: Any = None  # the pynvml module once initialised
        super().__init__(interval)

    # ------------------------------------------------------------------ thresholds
    @classmethod
    def _merge_thresholds(cls, custom: dict | None) -> dict:
        merged = dict(cls.DEFAULT_THRESHOLDS)
        if custom is None:
            return merged
        if not isinstance(custom, dict):
            raise TypeError(f"custom_thresholds must be a dict, not {type(custom).__name__}")
        valid = list(cls.DEFAULT_THRESHOLDS)
        unknown = [k for k in custom if k not in cls.DEFAULT_THRESHOLDS]
        if unknown:
            raise ValueError(f"unknown threshold key(s) {sorted(map(str, unknown))}; valid keys are {valid}")
        for key, value in custom.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"threshold {key!r} must be a finite number >= 0, not {value!r}")
            merged[key] = float(value)
        for key in _CONSTRAINED_KEYS:
            crit = f"{key}_critical"
            if merged[key] <= merged[crit]:
                continue
            if key in custom and crit in custom:
                raise ValueError(f"threshold {key!r} ({merged[key]:g}) is above {crit!r} ({merged[crit]:g})")
            if key in custom:            # only the constrained level given: critical can't be below it
                merged[crit] = merged[key]
            else:                        # only the critical level given: constrained can't be above it
                merged[key] = merged[crit]
        return merged

    # ------------------------------------------------------------------ sampling (sampler thread)
    def _sample(self) -> dict:
        cpu = self._cpu_percent()
        vm = psutil.virtual_memory()
        memory, memory_source, cgroup = float(vm.percent), "host", _cgroup_memory(vm.total)
        if cgroup is not None and cgroup["percent"] > memory:
            memory, memory_source = cgroup["percent"], "cgroup"
        cores = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        load_avg = load_per_core = None
        if hasattr(os, "getloadavg"):
            try:
                load_avg = tuple(round(x, 2) for x in os.getloadavg())
                load_per_core = load_avg[0] / cores
            except OSError:
                pass
        return {
            "cpu_percent": round(cpu, 1), "cpu_count": cores,
            "memory_percent": round(memory, 1), "memory_source": memory_source,
            "memory_total_mb": round(vm.total / 2**20), "memory_available_mb": round(vm.available / 2**20),
            "cgroup_memory": cgroup,
            "load_avg": load_avg, "load_per_core": None if load_per_core is None else round(load_per_core, 3),
            "gpu": self._gpu_sample(),
        }

    def _cpu_percent(self) -> float:
        """System-wide CPU % since the previous sample, from psutil.cpu_times() deltas (what
        ``psutil.cpu_percent(interval=None)`` does, but with our own baseline so other callers of
        cpu_percent don't reset it). The very first sample measures over 0.1 s."""
        now = psutil.cpu_times()
        prev = self._prev_cpu_times
        if prev is None:
            prev = now
            time.sleep(0.1)
            now = psutil.cpu_times()
        self._prev_cpu_times = now
        busy0, total0 = _busy_total(prev)
        busy1, total1 = _busy_total(now)
        d_total = total1 - total0
        if d_total <= 0:
            return self._last_cpu_percent or 0.0
        pct = min(100.0, max(0.0, (busy1 - busy0) / d_total * 100.0))
        self._last_cpu_percent = pct
        return pct

    def _gpu_sample(self) -> dict | None:
        with self._gpu_lock:
            if not self._gpu_probed:
                self._gpu_probed = True
                self._gpu_backend = self._detect_gpu()
            if self._gpu_backend is None:
                return None
            try:
                devices = self._nvml_devices() if self._gpu_backend == "nvml" else _smi_devices()
            except Exception as exc:
                self._gpu_error = f"{type(exc).__name__}: {exc}"
                return None
            if not devices:
                return None
            utils = [d["utilization"] for d in devices if d["utilization"] is not None]
            mems = [d["memory_percent"] for d in devices if d["memory_percent"] is not None]
            return {"source": self._gpu_backend, "devices": devices,
                    "utilization": max(utils) if utils else None,
                    "memory_percent": max(mems) if mems else None}

    def _detect_gpu(self) -> str | None:
        try:
            import pynvml  # from nvidia-ml-py (optional extra "gpu")

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._nvml = pynvml
                if self._nvml_devices():
                    return "nvml"
        except Exception:  # not installed, no driver, no device
            pass
        try:
            if _smi_devices():
                return "nvidia-smi"
        except Exception:
            pass
        return None

    def _nvml_devices(self) -> list:
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            util = mem_used = mem_total = None
            try:
                util = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                pass
            try:
                info = nv.nvmlDeviceGetMemoryInfo(h)
                mem_used, mem_total = info.used / 2**20, info.total / 2**20
            except Exception:
                pass
            dev = _device(i, util, mem_used, mem_total)
            if dev is not None:
                out.append(dev)
        return out

    # ------------------------------------------------------------------ evaluation (check())
    def _evaluate(self, s: dict) -> dict:
        t = self.thresholds
        values = [("cpu", s["cpu_percent"], "cpu"), ("memory", s["memory_percent"], "memory")]
        if s.get("load_per_core") is not None:
            values.append(("load_per_core", s["load_per_core"], "load_per_core"))
        gpu = s.get("gpu")
        if gpu is not None:
            if gpu.get("utilization") is not None:
                values.append(("gpu", gpu["utilization"], "gpu"))
            if gpu.get("memory_percent") is not None:
                values.append(("gpu_memory", gpu["memory_percent"], "gpu"))
        problems, fine, worst = [], [], 0
        for label, value, key in values:
            cons, crit = t[key], t[f"{key}_critical"]
            if value > crit:
                level, thr = 2, crit
            elif value > cons:
                level, thr = 1, cons
            else:
                level, thr = 0, cons
            worst = max(worst, level)
            if level:
                problems.append(f"{_fmt(label, value)} > {_fmt_thr(key, thr)} "
                                f"({'critical' if level == 2 else 'constrained'})")
            else:
                fine.append(f"{_fmt(label, value)} ok")
        state = ("available", "constrained", "critical")[worst]
        if worst:
            reason = "; ".join(problems + fine)
        else:
            reason = "resources ok: " + ", ".join(
                f"{_fmt(label, value)} ≤ {_fmt_thr(key, t[key])}" for label, value, key in values)
        metrics = dict(s)
        metrics["thresholds"] = dict(t)
        if self._gpu_error:
            metrics["gpu_error"] = self._gpu_error
        return {"state": state, "target": "cloud" if worst else "local", "reason": reason, "metrics": metrics}


# ---------------------------------------------------------------------------------------------- helpers
def _busy_total(t) -> tuple[float, float]:
    total = sum(t)
    if sys.platform.startswith("linux"):  # guest time is already counted in user/nice
        total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _fmt(label: str, value: float) -> str:
    if label == "load_per_core":
        return f"load {value:.2f}/core"
    return f"{_LABELS.get(label, label)} {value:.1f}%"


def _fmt_thr(key: str, thr: float) -> str:
    return f"{thr:g}" if key == "load_per_core" else f"{thr:g}%"


def _device(index: int, util: float | None, used: float | None, total: float | None) -> dict | None:
    mem_pct = (used / total * 100.0) if used is not None and total else None
    if util is None and mem_pct is None:
        return None
    return {"index": index, "utilization": util,
            "memory_used_mb": None if used is None else round(used),
            "memory_total_mb": None if total is None else round(total),
            "memory_percent": None if mem_pct is None else round(mem_pct, 1)}


def _num(text: str) -> float | None:
    try:
        v = float(text.strip())
    except ValueError:   # "[N/A]", "[Not Supported]"
        return None
    return v if math.isfinite(v) else None


def _smi_devices() -> list:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    proc = subprocess.run(
        [exe, "--query-gpu=utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=3.0)
    if proc.returncode != 0:
        return []
    out = []
    for i, line in enumerate(l for l in proc.stdout.splitlines() if l.strip()):
        parts = line.split(",")
        if len(parts) != 3:
            continue
        dev = _device(i, *(_num(p) for p in parts))
        if dev is not None:
            out.append(dev)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_memory(host_total: int) -> dict | None:
    """cgroup-v2 memory use vs its limit, when a limit below the host's RAM applies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    limit, current = _read("/sys/fs/cgroup/memory.max"), _read("/sys/fs/cgroup/memory.current")
    if not limit or not current or limit == "max":
        return None
    try:
        limit_b, current_b = int(limit), int(current)
    except ValueError:
        return None
    if limit_b <= 0 or limit_b >= host_total:
        return None
    inactive = 0
    stat = _read("/sys/fs/cgroup/memory.stat") or ""
    for line in stat.splitlines():
        if line.startswith("inactive_file "):
            try:
                inactive = int(line.split()[1])
            except (IndexError, ValueError):
                pass
            break
    used = max(0, current_b - inactive)
    return {"used_mb": round(used / 2**20), "limit_mb": round(limit_b / 2**20),
            "percent": round(min(100.0, used / limit_b * 100.0), 1)}
