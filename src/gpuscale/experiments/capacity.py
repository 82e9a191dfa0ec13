"""``gpuscale capacity SCENARIO``: the capacity model a ``kind: planner`` policy stores.

The planner sizes its fleet from what one replica carries within the SLO at each fleet size. That is
measured here with the oracle's own bisection (:mod:`gpuscale.experiments.oracle`, step 1): ``k``
always-Ready pods of the scenario's service under a constant load of the scenario's arrival process,
the largest load at which ``slo_target`` of the requests meet the SLO. Fleet sizes 1..8 are measured
one by one, then powers of two, until the scenario's peak load is covered (or the cluster's size).
The table, the scenario's typical cold start and its node provisioning time become a complete planner
policy file, so the live policy needs no simulator.

The compare hands the planner the same numbers per scenario (:func:`planner_inputs`, from the
oracle's measurement of the scenario's service): what a user measures for their own service, never
the future load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gpuscale.config.scenario import Duration, LogNormal, Scenario, Uniform
from gpuscale.experiments.oracle import WINDOW_S, _CapacityTable, _slots, _window_load
from gpuscale.policies.planner import PlannerConfig
from gpuscale.policies.registry import preset_text
from gpuscale.sim.workload import build_workload


def mean_s(d: Duration) -> float:
    """The mean of a phase's duration: a fixed value, a uniform range's middle, a lognormal's mean."""
    if isinstance(d, Uniform):
        return (d.uniform[0] + d.uniform[1]) / 2.0
    if isinstance(d, LogNormal):
        return d.lognormal.median_s * math.exp(d.lognormal.sigma**2 / 2.0)
    return float(d)


def typical_cold_start_s(scenario: Scenario) -> float:
    """A new pod's mean cold start on a node of the scenario: scheduling, load and warm-up; the image
    pull and the weights download where some pool's nodes do not start with them."""
    s = scenario.startup
    total = mean_s(s.scheduling_s) + mean_s(s.model_load_s) + mean_s(s.warmup_s)
    pools = scenario.cluster.pools
    if not all(p.image_cached for p in pools):
        total += mean_s(s.image_pull_s)
    if not all(p.model_cached for p in pools):
        total += mean_s(s.model_download_s)
    return total


def typical_restart_s(scenario: Scenario) -> float:
    """A pod's mean cold start on a node that ran it before: scheduling, load and warm-up; the pull
    and the download only where nodes do not keep them (``image_cache`` / ``model_cache`` false)."""
    s = scenario.startup
    total = mean_s(s.scheduling_s) + mean_s(s.model_load_s) + mean_s(s.warmup_s)
    if not s.image_cache:
        total += mean_s(s.image_pull_s)
    if not s.model_cache:
        total += mean_s(s.model_download_s)
    return total


def node_provision_s(scenario: Scenario) -> float:
    """A new GPU node's mean time to allocatable GPUs; 0 without a node autoscaler."""
    c = scenario.cluster
    if c.node_autoscaler.kind == "none":
        return 0.0
    return mean_s(c.node_startup.provision_s) + mean_s(c.node_startup.gpu_allocatable_s)


def table_points(measured: Iterable[tuple[int, float]]) -> list[dict[str, Any]]:
    """``(replicas, total requests/s)`` measurements -> the planner's points, per replica, rounded to
    0.001 rps, with total capacity made non-decreasing (more pods never carry less: a smaller total
    at a larger fleet is the measurement's 1 % noise)."""
    points: list[dict[str, Any]] = []
    best = 0.0
    for k, total in sorted(measured):
        best = max(best, total)
        points.append({"replicas": k, "rps_per_replica": math.ceil(best / k * 1000.0) / 1000.0})
    return points


def planner_tick_s(cold_start_s: float) -> float:
    """The planner's control tick for a service whose pods start in ``cold_start_s``: a third of the
    cold start in whole seconds, from 2 (Knative's tick) to 10 (the HPA's 15 s, rounded to the
    planner's history buckets).

    A rise is answered one tick (to see it) plus one cold start (to start a pod) after it begins. With
    a 93.5-s cold start a 10-s tick adds a tenth to that; with a 6.5-s cold start it would more than
    double it: 100 users joining 10 on the KIS-S spike (6.5 -> 66 rps, 6.5-s pods) left a 10-s planner
    at 98.1 % of requests within the SLO and a 2-s one at 99.2 % (3 seeds), on a little fewer GPU-hours.
    """
    return float(min(10, max(2, math.floor(cold_start_s / 3.0))))


def planner_inputs(
    scenario: Scenario, measured: Iterable[tuple[int, float]], slo_target: float
) -> dict[str, Any]:
    """What a planner config takes from a measurement of ``scenario``'s service: the capacity table,
    the profile, the cold start (first and on a node that ran the pod before), node provisioning,
    the cluster's largest fleet, and a tick to match the cold start (:func:`planner_tick_s`; where it is
    under the planner's 10-s rate window, a burst window of one tick as well)."""
    cold = typical_cold_start_s(scenario)
    tick = planner_tick_s(cold)
    timing: dict[str, Any] = {"sync_period_s": tick}
    if tick < PlannerConfig.model_fields["rate_window_s"].default:
        timing["burst_window_s"] = tick
    return {
        "profile": scenario.model.name,
        "max_replicas": max(1, len(_slots(scenario))),
        **timing,
        "cold_start_s": round(cold, 3),
        "restart_s": round(typical_restart_s(scenario), 3),
        "node_provision_s": round(node_provision_s(scenario), 3),
        "capacity": {
            "profile": scenario.model.name,
            "slo_latency_ms": scenario.slo.latency_ms,
            "slo_target": slo_target,
            "points": table_points(measured),
        },
    }


def measure(
    scenario: Scenario,
    *,
    seed: int | None = None,
    slo_target: float = 0.99,
    base_dir: Path | None = None,
    source: str = "scenario",
) -> dict[str, Any]:
    """Measure ``scenario``'s service up to its peak load (of ``seed``, default the scenario's) and
    return the planner inputs (:func:`planner_inputs`)."""
    seed = scenario.seed if seed is None else seed
    duration = scenario.duration_s
    workload = build_workload(
        scenario.workload, seed=seed, duration_s=duration, source=source, base_dir=base_dir
    )
    starts = np.arange(0.0, duration, WINDOW_S, dtype=np.float64)
    lengths = np.minimum(starts + WINDOW_S, duration) - starts
    load, _ = _window_load(scenario, workload, starts, lengths)
    table = _CapacityTable(scenario, slo_target, max(len(_slots(scenario)), 1))
    table.measure(1)
    table.cover(float(load.max(initial=0.0)))
    return planner_inputs(scenario, ((k, c.rps) for k, c in table.measured.items()), slo_target)


def planner_policy(inputs: dict[str, Any]) -> dict[str, Any]:
    """The ``planner`` preset with ``inputs`` in place of its example table and timing."""
    data = yaml.safe_load(preset_text("planner"))
    return {"kind": "planner", **{k: v for k, v in data.items() if k != "kind"}, **inputs}


def policy_yaml(scenario: Scenario, inputs: dict[str, Any]) -> str:
    """A planner policy file for ``scenario``'s service, with a header saying where it came from."""
    cap = inputs["capacity"]
    head = (
        f"# gpuscale capacity {scenario.name}: a planner for profile {cap['profile']}.\n"
        f"# Measured with the oracle's bisection: {cap['slo_target']:.0%} of requests within "
        f"{cap['slo_latency_ms']:g} ms, always-Ready\n"
        "# fleets under constant load. rps_per_replica: requests/s one replica carries within the SLO\n"
        "# at that fleet size. cold_start_s: the scenario's mean cold start (restart_s: on a node that\n"
        "# ran the pod before); node_provision_s: its mean node provisioning time (0: no node autoscaler).\n"
    )
    return head + yaml.safe_dump(planner_policy(inputs), sort_keys=False)
