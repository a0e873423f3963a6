"""Agents against live values: psutil on this machine, and real TCP/HTTP servers on 127.0.0.1 only."""
from __future__ import annotations

import asyncio
import gc
import http.server
import json
import shutil
import socket
import statistics
import subprocess
import threading
import time

import pytest

from oblix_nb.agents import Agent, ConnectivityAgent, ResourceMonitor, run_check
from oblix_nb.agents import resource as resource_mod
from oblix_nb.agents.base import BackgroundSampler

RELAXED_LOAD = {"load_per_core": 1000, "load_per_core_critical": 1000}  # shared CI boxes can be busy
NO_CRITICAL = {"cpu_critical": 1000, "memory_critical": 1000, "gpu_critical": 1000, **RELAXED_LOAD}


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi"):
        return True
    try:
        import pynvml  # noqa: F401
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------------- ResourceMonitor
def test_resource_thresholds_zero_report_constrained_with_live_values():
    r = ResourceMonitor(custom_thresholds={"cpu": 0, "memory": 0}).check()
    assert r["state"] in ("constrained", "critical")  # live values may even cross the default criticals
    assert r["target"] == "cloud"
    m = r["metrics"]
    assert m["memory_percent"] > 0 and 0 <= m["cpu_percent"] <= 100
    assert m["thresholds"]["cpu"] == 0 and m["thresholds"]["memory"] == 0
    assert f"memory {m['memory_percent']:.1f}% > 0%" in r["reason"]

    exact = ResourceMonitor(custom_thresholds={"cpu": 0, "memory": 0, **NO_CRITICAL}).check()
    assert exact["state"] == "constrained" and exact["target"] == "cloud"
    assert "(constrained)" in exact["reason"]


def test_resource_thresholds_100_report_available_and_local():
    r = ResourceMonitor(custom_thresholds={"cpu": 100, "memory": 100, **RELAXED_LOAD}).check()
    assert r["state"] == "available"
    assert r["target"] == "local"
    assert r["reason"].startswith("resources ok: cpu ")
    m = r["metrics"]
    for key in ("cpu_percent", "memory_percent", "load_per_core", "thresholds", "sampled_at", "age_s", "gpu"):
        assert key in m
    assert m["sampled_at"].endswith("Z") and m["age_s"] >= 0


def test_resource_defaults_and_critical_level():
    assert ResourceMonitor().thresholds == ResourceMonitor.DEFAULT_THRESHOLDS
    r = ResourceMonitor(custom_thresholds={"memory": 0, "memory_critical": 0, **RELAXED_LOAD}).check()
    assert r["state"] == "critical" and r["target"] == "cloud"
    assert "(critical)" in r["reason"]


def test_resource_unknown_threshold_key_names_valid_ones():
    with pytest.raises(ValueError) as ei:
        ResourceMonitor(custom_thresholds={"cpu_threshold": 80})
    msg = str(ei.value)
    assert "cpu_threshold" in msg
    for key in ("cpu", "memory", "gpu", "load_per_core", "cpu_critical", "load_per_core_critical"):
        assert repr(key) in msg


@pytest.mark.parametrize("bad", [-1, float("nan"), "80", True, None])
def test_resource_bad_threshold_values(bad):
    with pytest.raises(ValueError):
        ResourceMonitor(custom_thresholds={"cpu": bad})


def test_resource_threshold_consistency():
    assert ResourceMonitor(custom_thresholds={"cpu": 95}).thresholds["cpu_critical"] == 95
    assert ResourceMonitor(custom_thresholds={"memory_critical": 50}).thresholds["memory"] == 50
    with pytest.raises(ValueError, match="above"):
        ResourceMonitor(custom_thresholds={"cpu": 95, "cpu_critical": 90})
    with pytest.raises(TypeError):
        ResourceMonitor(custom_thresholds=[("cpu", 1)])


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_no_gpu_means_no_gpu_reasoning():
    r = ResourceMonitor(custom_thresholds={"cpu": 100, "memory": 100, "gpu": 0, "gpu_critical": 0,
                                           **RELAXED_LOAD}).check()
    assert r["metrics"]["gpu"] is None
    assert "gpu" not in r["reason"].lower() and "nvidia" not in r["reason"].lower()
    assert r["state"] == "available"  # a gpu threshold of 0 can't trip without a GPU


def test_gpu_via_nvidia_smi_is_parsed(monkeypatch):
    """The nvidia-smi path, with the binary faked (no GPU here): numbers → GPU metrics and reasoning."""
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="45, 1000, 8000\n90, 7800, 8000\n", stderr="")

    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # NVML import fails
    monkeypatch.setattr(resource_mod.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(resource_mod.subprocess, "run", fake_run)
    r = ResourceMonitor(custom_thresholds={"cpu": 100, "memory": 100, "gpu": 85, **RELAXED_LOAD}).check()
    gpu = r["metrics"]["gpu"]
    assert gpu["source"] == "nvidia-smi" and len(gpu["devices"]) == 2
    assert gpu["utilization"] == 90.0 and gpu["memory_percent"] == 97.5
    assert r["state"] == "critical" and "gpu memory 97.5% > 95% (critical)" in r["reason"]
    assert "gpu 90.0% > 85% (constrained)" in r["reason"]
    assert calls[0][1:] == ["--query-gpu=utilization.gpu,memory.used,memory.total",
                            "--format=csv,noheader,nounits"]


def test_nvidia_smi_without_numbers_is_no_gpu(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    monkeypatch.setattr(resource_mod.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(resource_mod.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 0, stdout="[N/A], [N/A], [N/A]\n", stderr=""))
    r = ResourceMonitor().check()
    assert r["metrics"]["gpu"] is None and "gpu" not in r["reason"]


def test_background_sampling_caches_and_stops():
    mon = ResourceMonitor(interval=0.05)
    assert mon.sampler.thread is None and not mon.running
    mon.start()
    mon.start()  # idempotent
    try:
        thread = mon.sampler.thread
        assert thread is not None and thread.is_alive() and thread.daemon
        assert thread in threading.enumerate()
        assert mon.sampler.has_sample  # first sample taken synchronously on start
        mon.check()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            r = mon.check()
            times.append(time.perf_counter() - t0)
        assert statistics.median(times) < 0.005, times
        assert r["state"] in ("available", "constrained", "critical")
        n = mon.sampler.samples
        deadline = time.monotonic() + 3
        while mon.sampler.samples < n + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mon.sampler.samples >= n + 2  # the thread keeps sampling
        assert mon.check()["metrics"]["age_s"] < 2
    finally:
        mon.stop()
        mon.stop()  # idempotent
    assert not thread.is_alive() and not mon.running
    mon.start()  # restartable
    assert mon.running
    mon.stop()
    assert not mon.running


def test_check_without_start_samples_on_demand_and_starts_no_thread():
    mon = ResourceMonitor()
    r = mon.check()
    assert r["metrics"]["cpu_percent"] is not None
    assert mon.sampler.thread is None and not mon.running


def test_abandoned_sampler_thread_ends_by_itself():
    s = BackgroundSampler(lambda: 1, interval=0.02)
    s.start()
    thread = s.thread
    assert thread.is_alive()
    del s
    gc.collect()
    thread.join(2)
    assert not thread.is_alive()


def test_sampler_keeps_last_good_value_on_error():
    box = {"n": 0}

    def fn():
        box["n"] += 1
        if box["n"] > 1:
            raise RuntimeError("boom")
        return "good"

    s = BackgroundSampler(fn, interval=10)
    assert s.latest() == "good"
    assert s.sample_now() == "good"
    assert "RuntimeError: boom" in s.last_error
    with pytest.raises(ValueError):
        BackgroundSampler(fn, interval=0)


# ---------------------------------------------------------------------------------------------- loopback server
class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    log: list = []

    def do_GET(self):  # noqa: N802
        type(self).log.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path.endswith("/models"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


def _serve(body: bytes):
    handler = type("H", (_Handler,), {"body": body, "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, handler


@pytest.fixture
def models_server():
    body = json.dumps({"object": "list", "data": [{"id": "tiny-model", "object": "model"}]}).encode()
    server, handler = _serve(body)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def big_models_server():
    data = [{"id": f"model-{i:05d}", "object": "model", "owned_by": "x" * 40} for i in range(4000)]
    server, handler = _serve(json.dumps({"object": "list", "data": data}).encode())
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------------------------- ConnectivityAgent
def test_connectivity_connected_to_loopback_endpoint(models_server):
    url, handler = models_server
    agent = ConnectivityAgent(measure_bandwidth=True)
    agent.set_endpoints({"openai:tiny-model": url})
    r = agent.refresh()
    assert r["state"] == "connected" and r["target"] == "cloud"
    ep = r["metrics"]["endpoints"]["openai:tiny-model"]
    assert ep["reachable"] is True and ep["latency_ms"] > 0 and ep["packet_loss"] == 0
    assert ep["host"] == "127.0.0.1" and ep["state"] == "ok"
    assert r["metrics"]["latency_ms"] == ep["latency_ms"]
    # small body: bandwidth is not guessed, and plays no part
    assert ep["bandwidth_mbps"] is None and "not measured" in ep["bandwidth_note"]
    assert ep["http_status"] == 200
    assert "openai:tiny-model ok" in r["reason"]
    # only the endpoint's own model list was requested, without credentials — nothing billable
    assert handler.log and all(entry == ("GET", "/v1/models", None) for entry in handler.log)


def test_connectivity_measures_bandwidth_on_big_model_list(big_models_server):
    url, _ = big_models_server
    agent = ConnectivityAgent(measure_bandwidth=True)
    agent.set_endpoints({"openai:m": url})
    r = agent.refresh()
    ep = r["metrics"]["endpoints"]["openai:m"]
    assert ep["bandwidth_mbps"] is not None and ep["bandwidth_mbps"] > 0
    assert r["state"] == "connected"
    slow = ConnectivityAgent(bandwidth_threshold=1e12, measure_bandwidth=True)
    slow.set_endpoints({"openai:m": url})
    r = slow.refresh()
    assert r["state"] == "degraded" and r["target"] == "local" and "bandwidth" in r["reason"]


def test_connectivity_sends_no_http_request_by_default(models_server):
    """TCP connects only: an HTTP request could abort a generation in flight (llama_cpp.server does)."""
    url, handler = models_server
    agent = ConnectivityAgent()
    agent.set_endpoints({"openai:tiny-model": url})
    r = agent.refresh()
    assert r["state"] == "connected"
    ep = r["metrics"]["endpoints"]["openai:tiny-model"]
    assert ep["bandwidth_mbps"] is None and "measure_bandwidth=False" in ep["bandwidth_note"]
    assert handler.log == []


def test_connectivity_closed_port_is_disconnected(closed_url):
    agent = ConnectivityAgent(timeout=0.5)
    agent.set_endpoints({"openai:x": closed_url})
    r = agent.refresh()
    assert r["state"] == "disconnected" and r["target"] == "local"
    ep = r["metrics"]["endpoints"]["openai:x"]
    assert ep["reachable"] is False and ep["packet_loss"] == 100
    assert "unreachable" in r["reason"] and "openai:x" in r["reason"]


def test_connectivity_latency_threshold_degrades(models_server):
    url, _ = models_server
    agent = ConnectivityAgent(latency_threshold=0.0001)
    agent.set_endpoints({"openai:tiny-model": url})
    r = agent.refresh()
    assert r["state"] == "degraded" and r["target"] == "local"
    assert "latency" in r["reason"] and "> 0.0001 ms" in r["reason"]


def test_connectivity_no_endpoints_no_preference():
    r = ConnectivityAgent().check()
    assert r["state"] == "unknown" and r["target"] is None
    assert r["metrics"]["detail"] == "no_cloud_endpoints" and r["metrics"]["endpoints"] == {}


def test_connectivity_mixed_endpoints(models_server, closed_url):
    url, _ = models_server
    agent = ConnectivityAgent(timeout=0.5)
    agent.set_endpoints({"openai:up": url, "openai:down": closed_url})
    r = agent.refresh()
    assert r["state"] == "connected"
    eps = r["metrics"]["endpoints"]
    assert eps["openai:up"]["reachable"] is True and eps["openai:down"]["reachable"] is False
    assert "openai:down unreachable" in r["reason"]


def test_connectivity_invalid_url_is_unreachable():
    agent = ConnectivityAgent()
    agent.set_endpoints({"x:y": "ftp://example.invalid"})
    r = agent.refresh()
    assert r["state"] == "disconnected"
    assert "invalid URL" in r["metrics"]["endpoints"]["x:y"]["error"]
    with pytest.raises(ValueError):
        agent.set_endpoints({"x:y": ""})


def test_connectivity_background_picks_up_new_endpoints(models_server):
    url, _ = models_server
    agent = ConnectivityAgent(interval=30)  # long interval: only set_endpoints' wake-up can measure in time
    agent.start()
    try:
        assert agent.check()["state"] == "unknown"
        agent.set_endpoints({"openai:tiny-model": url})
        deadline = time.monotonic() + 5
        r = agent.check()
        while r["state"] != "connected" and time.monotonic() < deadline:
            time.sleep(0.02)
            r = agent.check()
        assert r["state"] == "connected"
        t0 = time.perf_counter()
        agent.check()
        assert time.perf_counter() - t0 < 0.005  # served from the cache
    finally:
        agent.stop()
    assert not agent.running


def test_connectivity_validates_arguments():
    with pytest.raises(ValueError):
        ConnectivityAgent(latency_threshold=-1)
    with pytest.raises(ValueError):
        ConnectivityAgent(probes=0)
    with pytest.raises(ValueError):
        ConnectivityAgent(timeout=0)


# ---------------------------------------------------------------------------------------------- run_check
class SyncAgent:
    name = "sync_agent"

    def check(self):
        return {"state": "ok", "target": "cloud", "reason": "sync says cloud", "metrics": {"x": 1}}


class AsyncAgent:
    name = "async_agent"

    async def check(self):
        await asyncio.sleep(0)
        return {"state": "ok", "target": "LOCAL", "reason": "async says local", "metrics": {}}


class RaisingAgent:
    name = "raising"

    def check(self):
        raise RuntimeError("sensor broke")


class AsyncRaisingAgent:
    name = "async_raising"

    async def check(self):
        raise KeyError("nope")


class HangingAgent:
    name = "hanging"

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def check(self):
        self.calls += 1
        self.release.wait(10)
        return {"state": "ok", "target": "cloud", "reason": "late", "metrics": {}}


class AsyncHangingAgent:
    name = "async_hanging"

    async def check(self):
        await asyncio.sleep(10)


async def test_run_check_sync_and_async():
    assert isinstance(SyncAgent(), Agent)
    r = await run_check(SyncAgent())
    assert r == {"state": "ok", "target": "cloud", "reason": "sync says cloud", "metrics": {"x": 1}}
    r = await run_check(AsyncAgent())
    assert r["target"] == "local" and r["reason"] == "async says local"


class TimeoutRaisingAgent:
    name = "timeout_raising"

    def check(self):
        raise TimeoutError("socket timed out")


class AsyncTimeoutRaisingAgent:
    name = "async_timeout_raising"

    async def check(self):
        raise asyncio.TimeoutError()


async def test_run_check_exceptions_become_error_results():
    for agent, text in ((RaisingAgent(), "RuntimeError: sensor broke"), (AsyncRaisingAgent(), "KeyError"),
                        (TimeoutRaisingAgent(), "failed: TimeoutError: socket timed out"),
                        (AsyncTimeoutRaisingAgent(), "failed: TimeoutError")):
        r = await run_check(agent)
        assert r["state"] == "error" and r["target"] is None and r["metrics"] == {}
        assert text in r["reason"] and agent.name in r["reason"]


async def test_run_check_hanging_sync_agent_times_out_without_blocking_loop():
    agent = HangingAgent()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        t0 = time.perf_counter()
        r = await run_check(agent, timeout=0.3)
        elapsed = time.perf_counter() - t0
        assert r["state"] == "error" and "did not answer within 0.3 s" in r["reason"]
        assert 0.25 < elapsed < 1.5
        assert ticks >= 5  # the loop kept running meanwhile
        # still hung: no second thread is started for it
        r = await run_check(agent, timeout=0.3)
        assert r["state"] == "error" and "still running" in r["reason"] and agent.calls == 1
    finally:
        t.cancel()
        agent.release.set()
    await asyncio.sleep(0.1)
    r = await run_check(agent, timeout=1)  # released: answers again
    assert r["state"] == "ok" and agent.calls == 2


async def test_run_check_hanging_async_agent_times_out():
    t0 = time.perf_counter()
    r = await run_check(AsyncHangingAgent(), timeout=0.2)
    assert r["state"] == "error" and "did not answer" in r["reason"]
    assert time.perf_counter() - t0 < 1.5


async def test_run_check_malformed_results():
    class NotDict:
        name = "notdict"

        def check(self):
            return ["cloud"]

    class BadTarget:
        name = "badtarget"

        def check(self):
            return {"state": "ok", "target": "moon", "reason": 3}

    class NoCheck:
        name = "nocheck"

    assert (await run_check(NotDict()))["state"] == "error"
    r = await run_check(BadTarget())
    assert r["target"] is None and r["reason"] == "3" and r["metrics"] == {}
    assert (await run_check(NoCheck()))["state"] == "error"


async def test_run_check_builtin_agents():
    mon = ResourceMonitor(custom_thresholds={"cpu": 0, "memory": 0})
    mon.start()
    try:
        r = await run_check(mon)
        assert r["target"] == "cloud"
    finally:
        mon.stop()
    r = await run_check(ConnectivityAgent())  # not started, nothing hooked: instant
    assert r["state"] == "unknown"
