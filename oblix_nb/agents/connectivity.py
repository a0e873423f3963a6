"""ConnectivityAgent: measures the hooked cloud models' own endpoints — never a public probe host.

Per endpoint (``set_endpoints({model_id: base_url})``, called by the client as models are hooked/unhooked):

* ``latency_ms``   — median TCP connect time over ``probes`` connects to the URL's host:port (443/80 by default;
  DNS is resolved once per sample and reported separately as ``dns_ms``). Through an HTTP(S) proxy configured
  in the environment (``HTTPS_PROXY``/``NO_PROXY``...) the proxy is what is probed, and ``via_proxy`` says so.
* ``packet_loss``  — failed connects / probes × 100.
* ``bandwidth_mbps`` — opt-in (``measure_bandwidth=True``), because some servers abort an in-flight
  generation when any other request arrives (llama_cpp.server with its default ``interrupt_requests``): a
  TCP connect never disturbs a server, an HTTP request may. When enabled: an unauthenticated ``GET {base}/models`` (the endpoint's
  own model list; never a completion, never billable, no API key sent) at most every ``bandwidth_interval``
  seconds, computed from the body's bytes and transfer time — and only when the body is at least
  ``bandwidth_min_bytes`` long (a few hundred bytes say nothing about throughput). Otherwise ``None``, with
  ``bandwidth_note`` saying why, and bandwidth plays no part in the state.

Aggregate state (per-endpoint details in ``metrics["endpoints"][model_id]``):

* ``"connected"``    — at least one endpoint reachable and within thresholds → target ``"cloud"``.
* ``"degraded"``     — reachable, but every reachable endpoint breaks a threshold (latency > latency_threshold,
  loss > packet_loss_threshold, or measured bandwidth < bandwidth_threshold) → target ``"local"``.
* ``"disconnected"`` — no endpoint reachable → target ``"local"``.
* ``"unknown"``      — no cloud endpoints hooked (``metrics["detail"] == "no_cloud_endpoints"``) or not measured
  yet (``"pending"``) → target ``None`` (no preference).

Probes run in the sampler thread with plain sockets (and httpx for the GET); ``check()`` reads the cache.
``refresh()`` measures synchronously (bandwidth included when enabled).
"""
from __future__ import annotations

import ipaddress
import math
import socket
import statistics
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from .._util import block_interrupts, describe_error, iso
from .base import SampledAgent


class ConnectivityAgent(SampledAgent):
    name = "connectivity"

    def __init__(self, latency_threshold: float = 200.0, packet_loss_threshold: float = 10.0,
                 bandwidth_threshold: float = 5.0, interval: float = 5.0, probes: int = 3, timeout: float = 1.0,
                 *, measure_bandwidth: bool = False, bandwidth_interval: float = 60.0,
                 bandwidth_min_bytes: int = 65536, bandwidth_max_bytes: int = 4 * 2**20):
        for key, value in (("latency_threshold", latency_threshold),
                           ("packet_loss_threshold", packet_loss_threshold),
                           ("bandwidth_threshold", bandwidth_threshold), ("timeout", timeout),
                           ("bandwidth_interval", bandwidth_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{key} must be a finite number >= 0, not {value!r}")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes must be an integer >= 1, not {probes!r}")
        self.latency_threshold = float(latency_threshold)
        self.packet_loss_threshold = float(packet_loss_threshold)
        self.bandwidth_threshold = float(bandwidth_threshold)
        self.probes = probes
        self.timeout = float(timeout)
        self.measure_bandwidth = bool(measure_bandwidth)
        self.bandwidth_interval = float(bandwidth_interval)
        self.bandwidth_min_bytes = int(bandwidth_min_bytes)
        self.bandwidth_max_bytes = int(bandwidth_max_bytes)
        self._endpoints: dict[str, str] = {}
        self._results: dict[tuple, dict] = {}       # probe key -> latest TCP result
        self._bandwidth: dict[str, dict] = {}       # models URL -> latest GET result
        self._force_bandwidth = False
        super().__init__(interval)

    # ------------------------------------------------------------------ configuration
    @property
    def endpoints(self) -> dict:
        return dict(self._endpoints)

    def set_endpoints(self, mapping: dict | None) -> None:
        """Replace the measured endpoints: ``{model_id: base_url}``. Wakes the sampler to measure them now."""
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise TypeError(f"set_endpoints expects a dict of model_id -> base URL, not {type(mapping).__name__}")
        clean = {}
        for model_id, url in mapping.items():
            if not isinstance(model_id, str) or not isinstance(url, str) or not url.strip():
                raise ValueError(f"endpoint for {model_id!r} must be a non-empty URL string, not {url!r}")
            clean[model_id] = url.strip()
        changed = clean != self._endpoints
        self._endpoints = clean
        if changed and self._sampler.running:
            self._sampler.wake()

    def refresh(self, bandwidth: bool = True) -> dict:
        """Measure now (synchronously; bandwidth too, if enabled, unless ``bandwidth=False``); return the check."""
        self._force_bandwidth = bandwidth
        return super().refresh()

    def _needs_sample(self) -> bool:
        results = self._results
        return any(_target(url)["key"] not in results for url in self._endpoints.values())

    # ------------------------------------------------------------------ sampling (sampler thread)
    def _sample(self) -> dict:
        force_bw, self._force_bandwidth = self._force_bandwidth, False
        endpoints = dict(self._endpoints)
        targets: dict[Any, dict] = {}
        for url in endpoints.values():
            t = _target(url)
            targets.setdefault(t["key"], t)
        results = {key: self._probe(t) for key, t in targets.items()}
        bandwidth: dict[str, dict[str, Any]] = {}
        now = time.monotonic()
        for url in dict.fromkeys(endpoints.values()):
            t = _target(url)
            models_url = t.get("models_url")
            if models_url is None:
                continue
            prev = self._bandwidth.get(models_url)
            if not self.measure_bandwidth:
                bandwidth[models_url] = {"bandwidth_mbps": None,
                                         "bandwidth_note": "not measured (measure_bandwidth=False)"}
                continue
            if not results.get(t["key"], {}).get("reachable"):
                bandwidth[models_url] = prev or {}
                continue
            if force_bw or prev is None or now - prev.get("_at", 0.0) >= self.bandwidth_interval:
                bandwidth[models_url] = self._measure_bandwidth(models_url)
                bandwidth[models_url]["_at"] = now
            else:
                bandwidth[models_url] = prev
        self._results = results
        self._bandwidth = bandwidth
        return {"results": results, "bandwidth": bandwidth}

    def _probe(self, t: dict) -> dict:
        out: dict[str, Any] = {"host": t.get("host"), "port": t.get("port"), "via_proxy": t.get("via_proxy"),
                               "reachable": False, "latency_ms": None, "packet_loss": 100.0,
                               "probes": self.probes, "dns_ms": None, "error": None, "measured_at": iso()}
        if t.get("error"):
            out["error"] = t["error"]
            return out
        t0 = time.perf_counter()
        try:
            addrs = _resolve(t["host"], t["port"], self.timeout)
        except Exception as exc:
            out["error"] = f"DNS: {describe_error(exc)}"
            return out
        out["dns_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        latencies, last_error, good = [], None, None
        for _ in range(self.probes):
            candidates = [good] if good is not None else addrs
            for family, socktype, proto, sockaddr in candidates:
                sock = socket.socket(family, socktype, proto)
                sock.settimeout(self.timeout)
                try:
                    start = time.perf_counter()
                    sock.connect(sockaddr)
                    latencies.append((time.perf_counter() - start) * 1000.0)
                    good = (family, socktype, proto, sockaddr)
                    break
                except OSError as exc:
                    last_error = exc
                finally:
                    sock.close()
        ok = len(latencies)
        out["packet_loss"] = round((self.probes - ok) / self.probes * 100.0, 1)
        out["reachable"] = ok > 0
        if ok:
            out["latency_ms"] = round(statistics.median(latencies), 2)
            assert good is not None  # set by every probe that connected
            out["address"] = good[3][0]
        if last_error is not None and ok < self.probes:
            out["error"] = describe_error(last_error)
        return out

    def _measure_bandwidth(self, models_url: str) -> dict:
        import httpx

        out: dict[str, Any] = {"bandwidth_mbps": None, "bandwidth_note": None, "http_status": None,
                               "bytes": 0}
        try:
            timeout = httpx.Timeout(max(self.timeout, 5.0), connect=self.timeout)
            with httpx.Client(timeout=timeout, follow_redirects=False,
                              headers={"Accept": "application/json"}) as client:
                with client.stream("GET", models_url) as resp:
                    t_headers = time.perf_counter()
                    out["http_status"] = resp.status_code
                    n = 0
                    for chunk in resp.iter_raw():
                        n += len(chunk)
                        if n >= self.bandwidth_max_bytes:
                            break
                    elapsed = time.perf_counter() - t_headers
        except Exception as exc:
            out["bandwidth_note"] = f"GET {models_url} failed: {describe_error(exc)}"
            return out
        out["bytes"] = n
        if n < self.bandwidth_min_bytes:
            out["bandwidth_note"] = (f"not measured: GET {models_url} returned {n} bytes, fewer than the "
                                     f"{self.bandwidth_min_bytes} needed for a meaningful estimate")
        elif elapsed <= 0:
            out["bandwidth_note"] = "not measured: transfer too fast to time"
        else:
            out["bandwidth_mbps"] = round(n * 8 / elapsed / 1e6, 3)
        return out

    # ------------------------------------------------------------------ evaluation (check())
    def _evaluate(self, sample: dict) -> dict:
        thresholds = {"latency_ms": self.latency_threshold, "packet_loss": self.packet_loss_threshold,
                      "bandwidth_mbps": self.bandwidth_threshold}
        endpoints = dict(self._endpoints)
        metrics: dict[str, Any] = {"endpoints": {}, "thresholds": thresholds, "latency_ms": None,
                                   "packet_loss": None, "bandwidth_mbps": None}
        if not endpoints:
            metrics["detail"] = "no_cloud_endpoints"
            return {"state": "unknown", "target": None,
                    "reason": "no cloud endpoints hooked; nothing to measure", "metrics": metrics}
        results, bandwidth = sample.get("results", {}), sample.get("bandwidth", {})
        groups: dict[tuple, list[str]] = {}   # probe key -> model ids, for the reason
        states: dict[tuple, tuple[str, list[str]]] = {}
        for model_id, url in endpoints.items():
            t = _target(url)
            res = results.get(t["key"])
            detail: dict[str, Any] = {"url": url}
            issues: list[str]
            if res is None:
                detail.update(state="pending", reachable=None)
                state, issues = "pending", []
            else:
                detail.update({k: v for k, v in res.items()})
                bw = bandwidth.get(t.get("models_url") or "", {})
                detail["bandwidth_mbps"] = bw.get("bandwidth_mbps")
                detail["bandwidth_note"] = bw.get("bandwidth_note")
                if bw.get("http_status") is not None:
                    detail["http_status"] = bw["http_status"]
                state, issues = self._judge(detail)
                detail["state"] = state
                detail["issues"] = issues
            metrics["endpoints"][model_id] = detail
            groups.setdefault(t["key"], []).append(model_id)
            states[t["key"]] = (state, issues)

        measured = [d for d in metrics["endpoints"].values() if d["state"] != "pending"]
        reachable = [d for d in measured if d.get("reachable")]
        if reachable:
            metrics["latency_ms"] = min(d["latency_ms"] for d in reachable)
            metrics["packet_loss"] = min(d["packet_loss"] for d in reachable)
            bws = [d["bandwidth_mbps"] for d in reachable if d.get("bandwidth_mbps") is not None]
            metrics["bandwidth_mbps"] = max(bws) if bws else None

        parts = []
        for key, ids in groups.items():
            state, issues = states[key]
            res = results.get(key) or {}
            label = ", ".join(ids)
            if state == "ok":
                parts.append(f"{label} ok ({_ms(res.get('latency_ms'))}"
                             + (f", {res['packet_loss']:g}% loss" if res.get("packet_loss") else "") + ")")
            elif state == "degraded":
                parts.append(f"{label} degraded ({', '.join(issues)})")
            elif state == "unreachable":
                parts.append(f"{label} unreachable ({res.get('error') or 'no answer'})")
            else:
                parts.append(f"{label} not measured yet")
        detail_text = "; ".join(parts)

        if not measured:
            metrics["detail"] = "pending"
            return {"state": "unknown", "target": None,
                    "reason": f"cloud endpoints not measured yet: {detail_text}", "metrics": metrics}
        if any(d["state"] == "ok" for d in measured):
            state, target, lead = "connected", "cloud", "cloud reachable"
        elif reachable:
            state, target, lead = "degraded", "local", "cloud connection degraded"
        else:
            state, target, lead = "disconnected", "local", "no cloud endpoint reachable"
        metrics["detail"] = state
        return {"state": state, "target": target, "reason": f"{lead}: {detail_text}", "metrics": metrics}

    def _judge(self, d: dict) -> tuple[str, list[str]]:
        if not d.get("reachable"):
            return "unreachable", []
        issues = []
        if d.get("latency_ms") is not None and d["latency_ms"] > self.latency_threshold:
            issues.append(f"latency {_ms(d['latency_ms'])} > {self.latency_threshold:g} ms")
        if d.get("packet_loss") is not None and d["packet_loss"] > self.packet_loss_threshold:
            issues.append(f"packet loss {d['packet_loss']:g}% > {self.packet_loss_threshold:g}%")
        if d.get("bandwidth_mbps") is not None and d["bandwidth_mbps"] < self.bandwidth_threshold:
            issues.append(f"bandwidth {d['bandwidth_mbps']:.3g} Mbps < {self.bandwidth_threshold:g} Mbps")
        return ("degraded" if issues else "ok"), issues


# ---------------------------------------------------------------------------------------------- helpers
def _ms(value: float | None) -> str:
    if value is None:
        return "? ms"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2g} ms"


def _target(url: str) -> dict:
    """What to probe for a base URL: host, port, proxy (if the environment routes it through one)."""
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        scheme = (parts.scheme or "https").lower()
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        return {"key": ("invalid", url), "error": f"invalid URL {url!r}: {exc}"}
    if scheme not in ("http", "https") or not host:
        return {"key": ("invalid", url), "error": f"invalid URL {url!r}: need http(s)://host[:port]"}
    port = port or (443 if scheme == "https" else 80)
    base = url.rstrip("/") if "://" in url else f"https://{url.rstrip('/')}"
    out = {"host": host, "port": port, "via_proxy": None, "models_url": f"{base}/models"}
    proxy = _proxy_for(scheme, host)
    if proxy is not None:
        try:
            pp = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if pp.hostname:
                pport = pp.port or (443 if pp.scheme == "https" else 80)
                out.update(host=pp.hostname, port=pport,
                           via_proxy=f"{pp.scheme or 'http'}://{pp.hostname}:{pport}")  # no credentials
        except ValueError:
            pass
    out["key"] = (out["host"], out["port"])
    return out


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_for(scheme: str, host: str) -> str | None:
    if _is_loopback(host):
        return None
    try:
        proxies = urllib.request.getproxies()
        proxy = proxies.get(scheme) or proxies.get("all")
        if proxy and not urllib.request.proxy_bypass(host):
            return proxy
    except Exception:
        pass
    return None


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo with a timeout (it has none of its own): runs in a daemon thread."""
    box: dict[str, Any] = {}

    def work() -> None:
        block_interrupts()
        try:
            box["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc

    th = threading.Thread(target=work, name="oblix-dns", daemon=True)
    th.start()
    th.join(max(timeout, 2.0))
    if "error" in box:
        raise box["error"]
    if "addrs" not in box:
        raise TimeoutError(f"resolving {host} took longer than {max(timeout, 2.0):g} s")
    return [(f, t, p, a) for f, t, p, _c, a in box["addrs"]]
