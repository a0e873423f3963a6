"""Routing policy: pure logic over small fake models and agent results."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from oblix_nb.errors import NoModelHookedError
from oblix_nb.routing import RoutingDecision, UnknownModelError, decide


@dataclass
class M:
    model_id: str
    target: str


OLLAMA = M("ollama:llama3.2", "local")
LLAMACPP = M("llamacpp:smollm2-135m", "local")
GPT = M("openai:gpt-4o-mini", "cloud")
GPT2 = M("openai:gpt-4o", "cloud")
BOTH = [OLLAMA, GPT]


def res(state, reason=None):
    target = {"available": "local", "constrained": "cloud", "critical": "cloud"}[state]
    reason = reason or {"available": "resources ok: cpu 12.0% ≤ 80%, memory 40.0% ≤ 85%",
                        "constrained": "memory 91.2% > 85% (constrained); cpu 12.0% ok",
                        "critical": "memory 96.0% > 95% (critical); cpu 12.0% ok"}[state]
    return {"agent": "resource_monitor", "result": {"state": state, "target": target, "reason": reason,
                                                    "metrics": {}}}


def conn(state, endpoints=None):
    target = {"connected": "cloud", "degraded": "local", "disconnected": "local", "unknown": None}[state]
    reason = {"connected": "cloud reachable: openai:gpt-4o-mini ok (12 ms)",
              "degraded": "cloud connection degraded: openai:gpt-4o-mini degraded (latency 450 ms > 200 ms)",
              "disconnected": "no cloud endpoint reachable: openai:gpt-4o-mini unreachable (ConnectionRefusedError)",
              "unknown": "no cloud endpoints hooked; nothing to measure"}[state]
    return {"agent": "connectivity", "result": {"state": state, "target": target, "reason": reason,
                                                "metrics": {"endpoints": endpoints or {}}}}


def vote(name, target, state="ok"):
    return {"agent": name, "result": {"state": state, "target": target, "reason": f"{name} wants {target}",
                                      "metrics": {}}}


# ---------------------------------------------------------------------------------------------- defaults
def test_no_agents_prefers_local():
    d = decide(BOTH, [])
    assert (d.target, d.model_id) == ("local", "ollama:llama3.2")
    assert "no agent expressed a preference" in d.reason and d.reason.startswith("local:")
    assert d.candidates == ["ollama:llama3.2", "openai:gpt-4o-mini"]
    assert d.fallback_from is None and d.forced is False


def test_everything_fine_prefers_local():
    d = decide(BOTH, [res("available"), conn("connected")])
    assert d.target == "local" and d.model_id == "ollama:llama3.2"
    assert "no agent expressed a preference" in d.reason
    assert "resource_monitor: resources ok" in d.reason and "connectivity: cloud reachable" in d.reason


# ---------------------------------------------------------------------------------------------- resources
@pytest.mark.parametrize("state", ["constrained", "critical"])
def test_resources_constrained_or_critical_prefer_cloud(state):
    d = decide(BOTH, [res(state), conn("connected")])
    assert (d.target, d.model_id) == ("cloud", "openai:gpt-4o-mini")
    assert d.candidates == ["openai:gpt-4o-mini", "ollama:llama3.2"]
    assert d.reason.startswith("cloud: resource_monitor says memory")
    assert f"({state})" in d.reason


def test_reason_reads_well():
    d = decide(BOTH, [res("constrained"), conn("connected")])
    assert d.reason == ("cloud: resource_monitor says memory 91.2% > 85% (constrained); cpu 12.0% ok; "
                        "connectivity: cloud reachable: openai:gpt-4o-mini ok (12 ms)")


# ---------------------------------------------------------------------------------------------- connectivity
@pytest.mark.parametrize("resources", ["available", "constrained", "critical"])
def test_disconnected_overrides_resources(resources):
    d = decide(BOTH, [res(resources), conn("disconnected")])
    assert d.target == "local" and d.model_id == "ollama:llama3.2"
    assert d.reason.startswith("local: connectivity says no cloud endpoint reachable")
    if resources != "available":
        assert d.reason.endswith(f"; this overrides resource_monitor (memory "
                                 f"{'91.2% > 85%' if resources == 'constrained' else '96.0% > 95%'} "
                                 f"({resources}); cpu 12.0% ok → cloud)")


def test_degraded_means_local_unless_resources_say_cloud():
    d = decide(BOTH, [res("available"), conn("degraded")])
    assert d.target == "local" and "connectivity says cloud connection degraded" in d.reason
    d = decide(BOTH, [res("constrained"), conn("degraded")])
    assert d.target == "cloud" and "overrides connectivity (cloud connection degraded" in d.reason
    assert d.reason.endswith("openai:gpt-4o-mini degraded (latency 450 ms > 200 ms) → local)")


def test_unknown_connectivity_is_no_preference():
    d = decide(BOTH, [res("constrained"), conn("unknown")])
    assert d.target == "cloud"
    d = decide(BOTH, [res("available"), conn("unknown")])
    assert d.target == "local"


# ---------------------------------------------------------------------------------------------- foreign agents
def test_foreign_vote_counts():
    d = decide(BOTH, [res("available"), conn("connected"), vote("budget", "cloud")])
    assert d.target == "cloud" and "budget says budget wants cloud" in d.reason


def test_foreign_votes_majority_and_tie():
    d = decide(BOTH, [vote("a", "cloud"), vote("b", "cloud"), vote("c", "local")])
    assert d.target == "cloud" and "outvoted: c says local" in d.reason
    d = decide(BOTH, [vote("a", "cloud"), vote("b", "local")])
    assert d.target == "local" and "tie, which goes to local" in d.reason


def test_foreign_votes_rank_below_builtin_states_unless_they_use_them():
    d = decide(BOTH, [conn("degraded"), vote("a", "cloud"), vote("b", "cloud")])
    assert d.target == "local"
    d = decide(BOTH, [conn("degraded"), vote("gpu_watch", "cloud", state="critical")])
    assert d.target == "cloud"
    d = decide(BOTH, [conn("disconnected"), vote("gpu_watch", "cloud", state="critical")])
    assert d.target == "local"


def test_error_and_malformed_results_are_ignored():
    checks = [{"agent": "broken", "result": {"state": "error", "target": None, "reason": "x.check() failed",
                                              "metrics": {}}},
              {"agent": "weird", "result": "cloud"},
              {"agent": "moon", "result": {"state": "ok", "target": "moon"}},
              "not a dict",
              res("constrained")]
    d = decide(BOTH, checks)
    assert d.target == "cloud"
    assert "broken ignored (x.check() failed)" in d.reason


# ---------------------------------------------------------------------------------------------- models
def test_preferred_target_without_models_uses_the_other():
    d = decide([GPT], [res("available")])
    assert d.target == "cloud" and d.model_id == "openai:gpt-4o-mini"
    assert "local preferred" in d.reason and "no local model is hooked" in d.reason
    d = decide([OLLAMA], [res("critical")])
    assert d.target == "local" and "no cloud model is hooked" in d.reason


@pytest.mark.parametrize("checks", [[], [res("critical"), conn("disconnected")], [res("available"),
                                                                                  conn("connected")]])
@pytest.mark.parametrize("model", [OLLAMA, GPT])
def test_one_model_always_works(model, checks):
    d = decide([model], checks)
    assert d.model_id == model.model_id and d.target == model.target and d.candidates == [model.model_id]


def test_candidates_order():
    models = [OLLAMA, GPT, LLAMACPP, GPT2]
    assert decide(models, [res("constrained")]).candidates == [
        "openai:gpt-4o-mini", "openai:gpt-4o", "ollama:llama3.2", "llamacpp:smollm2-135m"]
    assert decide(models, []).candidates == [
        "ollama:llama3.2", "llamacpp:smollm2-135m", "openai:gpt-4o-mini", "openai:gpt-4o"]


def test_unreachable_cloud_model_goes_last_in_its_group():
    models = [OLLAMA, GPT, GPT2]
    endpoints = {"openai:gpt-4o-mini": {"reachable": False}, "openai:gpt-4o": {"reachable": True}}
    d = decide(models, [res("constrained"), conn("connected", endpoints)])
    assert d.model_id == "openai:gpt-4o"
    assert d.candidates == ["openai:gpt-4o", "openai:gpt-4o-mini", "ollama:llama3.2"]


def test_duplicate_models_are_listed_once():
    d = decide([OLLAMA, OLLAMA, GPT], [])
    assert d.candidates == ["ollama:llama3.2", "openai:gpt-4o-mini"]


def test_no_models_raises():
    with pytest.raises(NoModelHookedError):
        decide([], [res("available")])


def test_bad_model_target_raises():
    with pytest.raises(ValueError):
        decide([M("x:y", "edge")], [])


# ---------------------------------------------------------------------------------------------- forced
def test_forced_model_first_then_fallbacks():
    models = [OLLAMA, GPT, LLAMACPP]
    d = decide(models, [res("available")], forced_model_id="openai:gpt-4o-mini")
    assert d.model_id == "openai:gpt-4o-mini" and d.target == "cloud" and d.forced is True
    assert d.candidates == ["openai:gpt-4o-mini", "ollama:llama3.2", "llamacpp:smollm2-135m"]
    assert "forced by model_id=openai:gpt-4o-mini" in d.reason


def test_unknown_forced_model_lists_hooked_ids():
    with pytest.raises(ValueError) as ei:
        decide(BOTH, [], forced_model_id="openai:nope")
    assert isinstance(ei.value, NoModelHookedError) and isinstance(ei.value, UnknownModelError)
    assert "openai:nope" in str(ei.value) and "ollama:llama3.2" in str(ei.value)
    assert "openai:gpt-4o-mini" in str(ei.value)


# ---------------------------------------------------------------------------------------------- fallback
def test_fell_back_records_why():
    d = decide(BOTH, [res("constrained")])
    f = d.fell_back("openai:gpt-4o-mini", "ConnectionError: connection refused", "ollama:llama3.2")
    assert isinstance(f, RoutingDecision) and f is not d
    assert (f.target, f.model_id) == ("local", "ollama:llama3.2")
    assert f.fallback_from == "openai:gpt-4o-mini (ConnectionError: connection refused)"
    assert f.reason.startswith(d.reason)
    assert f.reason.endswith("openai:gpt-4o-mini failed before its first token (ConnectionError: connection "
                             "refused), so fell back to ollama:llama3.2 (local)")
    assert f.candidates == d.candidates
    assert d.model_id == "openai:gpt-4o-mini" and d.fallback_from is None  # original untouched


def test_fell_back_defaults_chains_and_accepts_objects():
    models = [GPT, GPT2, OLLAMA]
    d = decide(models, [res("critical")])
    f1 = d.fell_back("openai:gpt-4o-mini", TimeoutError("read timed out"))  # next candidate by default
    assert f1.model_id == "openai:gpt-4o" and f1.fallback_from == "openai:gpt-4o-mini (TimeoutError: read timed out)"
    f2 = f1.fell_back("openai:gpt-4o", "HTTP 503", OLLAMA)
    assert f2.model_id == "ollama:llama3.2" and f2.target == "local"
    assert f2.fallback_from == "openai:gpt-4o-mini (TimeoutError: read timed out); openai:gpt-4o (HTTP 503)"
    with pytest.raises(ValueError, match="no candidate left"):
        f2.fell_back("ollama:llama3.2", "boom")
    with pytest.raises(ValueError):
        d.fell_back("openai:gpt-4o-mini", "boom", "unknown:model")


def test_as_dict_shape():
    d = decide(BOTH, [res("constrained")], forced_model_id="ollama:llama3.2")
    assert d.as_dict() == {"target": "local", "model_id": "ollama:llama3.2", "reason": d.reason,
                           "fallback_from": None, "candidates": ["ollama:llama3.2", "openai:gpt-4o-mini"],
                           "forced": True}
    import json
    json.dumps(d.as_dict())


def test_decide_with_live_agents():
    from oblix_nb.agents import ConnectivityAgent, ResourceMonitor

    checks = [{"agent": "resource_monitor", "result": ResourceMonitor(custom_thresholds={"cpu": 0, "memory": 0}).check()},
              {"agent": "connectivity", "result": ConnectivityAgent().check()}]
    d = decide(BOTH, checks)
    assert d.target == "cloud" and d.reason.startswith("cloud: resource_monitor says ")
