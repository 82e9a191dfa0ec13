"""Every built-in scenario loads, and every policy family runs end to end on every one of them."""

from __future__ import annotations

from typing import Any

import pytest

from gpuscale.config.scenario import scenario_from_dict
from gpuscale.experiments.catalog import builtin_scenario, scenario_names
from gpuscale.policies import registry
from gpuscale.policies.base import LLM_METRICS
from gpuscale.sim.engine import simulate

KIS_S = {"kis-s-spike": 900, "kis-s-ramp": 1200, "kis-s-periodic": 1800, "kis-s-random": 1500}


def test_the_catalog_has_the_scenarios_the_project_promises() -> None:
    names = set(scenario_names())
    assert {"thesis-constant", "thesis-variable", "diurnal", "flash-crowd", "azure-trace"} <= names
    # The node and GPU layers (issue 5).
    assert {"gpu-node-cold-start", "spot-diurnal", "small-model-mig", "small-model-whole-gpu"} <= names
    assert "pending-pod-cascade" in names
    assert set(KIS_S) <= names
    for name, duration in KIS_S.items():
        sc = builtin_scenario(name)
        assert sc.duration_s == duration
        assert sc.workload.kind == "closed-loop"


def _short(name: str, duration_s: float = 240.0) -> Any:
    data = builtin_scenario(name).model_dump()
    data["duration_s"] = min(duration_s, data["duration_s"])
    return scenario_from_dict(data, name)


POLICIES: list[tuple[str, Any]] = [(name, None) for name in registry.preset_names()] + [
    ("static", {"kind": "static", "replicas": 2}),
    ("static-peak", {"kind": "static-peak", "peak_rps": 1000, "capacity_rps_per_replica": 400}),
]


@pytest.mark.parametrize(("label", "config"), POLICIES, ids=[p[0] for p in POLICIES])
def test_each_policy_runs_on_every_builtin_scenario(label: str, config: Any) -> None:
    policy = registry.load_preset(label) if config is None else registry.load_policy(config, label)
    # A policy on what only an LLM pod exports runs on the LLM scenarios; on the others it is refused
    # up front (tested in test_llm_engine.py).
    llm_only = any(s.metric in LLM_METRICS for s in policy.signals)
    names = [n for n in scenario_names() if not llm_only or builtin_scenario(n).model.llm is not None]
    # A planner's capacity table belongs to one service (compare gives each scenario its own table);
    # elsewhere it is refused up front (tested in test_capacity.py).
    measured = getattr(getattr(getattr(policy, "config", None), "capacity", None), "profile", None)
    if measured is not None:
        names = [n for n in names if builtin_scenario(n).model.name == measured]
    assert names, label
    for name in names:
        policy = registry.load_preset(label) if config is None else registry.load_policy(config, label)
        result = simulate(_short(name), policy, source=name)
        s = result.summary
        assert s.requests > 0, name
        assert s.requests == s.completed + s.timed_out + s.rejected + s.dropped + s.in_flight, name
        assert sum(s.decisions_by_reason.values()) == len(result.timeline.rows), name
        assert 0.0 <= s.slo_attainment <= 1.0
