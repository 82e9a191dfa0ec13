"""The references beside the oracle's lower bound: the feasible clairvoyant (the oracle's schedule asked
for one real lead time ahead), the receding horizon (the ceiling of planning, by copies of the
simulation), where the bound cannot be reached, and how a compare shows them without touching the
ranked rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.config.scenario import Scenario
from gpuscale.experiments.catalog import builtin_scenario
from gpuscale.experiments.compare import run_compare
from gpuscale.experiments.oracle import compute_oracle
from gpuscale.experiments.references import (
    LABELS,
    clairvoyant_policy,
    feasibility,
    leads,
    run_feasible,
    run_receding_horizon,
)
from gpuscale.experiments.report import bound_note, report_files
from gpuscale.experiments.suite import SuiteConfig, parse_references
from gpuscale.policies import registry
from gpuscale.policies.base import MetricsSnapshot, Reason, StaticPolicy
from gpuscale.policies.clairvoyant import ClairvoyantPolicy
from gpuscale.sim.engine import Simulation, simulate
from tests.conftest import make_scenario

TARGET = 0.99


def step_scenario() -> Scenario:
    """50 requests/s, then 200 from t = 150 s, on pods that serve one request in 10 ms (at most
    100/s each, about 70/s within the 50-ms SLO): one pod, then three. A pod starts in 45 s
    (scheduling 1 + load 30 + warm-up 14; the node keeps the image and the weights)."""
    model = {
        "profile": "resnet50-a100-triton",
        "jitter": "none",
        "cpu_ms_per_request": 0.0,
        "batch_latency_ms": [[1, 10.0]],
        "max_batch_size": 1,
        "max_queue_delay_ms": 0.0,
    }
    return make_scenario(
        duration_s=400,
        slo={"latency_ms": 50.0},
        model=model,
        workload={"kind": "poisson", "rate": {"kind": "step", "levels": [[0, 50], [150, 200]]}},
        startup={"scheduling_s": 1, "image_pull_s": 10, "model_download_s": 20, "model_load_s": 30, "warmup_s": 14},
        cluster={
            "pools": [
                {"gpu": "a100-80gb", "gpus_per_node": 8, "nodes": 1, "image_cached": True, "model_cached": True}
            ]
        },
        control={"interval_s": 5, "initial_replicas": 1},
    )  # fmt: skip


@pytest.fixture(scope="module")
def step() -> Scenario:
    return step_scenario()


# -- copying a simulation -------------------------------------------------------------------------------
def test_a_fork_continues_as_the_original_would_and_leaves_it_alone(step: Scenario) -> None:
    sim = Simulation(step, registry.load_preset("knative"), seed=2)
    for _ in range(40):  # to t = 200 s: the step has hit, pods are starting
        sim.step_to_next_tick()
    at, rows = sim.now, len(sim.timeline.rows)
    twin = sim.fork()
    twin_result = twin.run()
    assert sim.now == at and not sim.done and len(sim.timeline.rows) == rows  # untouched by the copy
    assert twin_result.timeline.rows == []  # a copy keeps no timeline rows
    assert sim.run().summary == twin_result.summary


# -- the clairvoyant policy -----------------------------------------------------------------------------
def _snap(t: float, current: int) -> MetricsSnapshot:
    return MetricsSnapshot(time_s=t, current_replicas=current, ready=current)


def test_the_clairvoyant_asks_for_pods_one_lead_ahead_and_keeps_one_through_a_short_dip() -> None:
    # 10-s windows: 1 pod, 6 pods from t = 600 s, a 20-s dip to 1 at t = 700 s, 1 pod from t = 900 s.
    times = np.arange(0.0, 1200.0, 10.0)
    need = np.where((times >= 600) & (times < 900) & ~((times >= 700) & (times < 720)), 6, 1)
    policy = ClairvoyantPolicy.of(times, need, window_s=10.0, lead_s=125.0, tick_s=15.0)
    state = policy.initial_state()
    # at 450 s the windows before 590 s count: one pod; at 465 s those before 605 s: six, Ready by 590 s
    held, _ = policy.decide(_snap(450.0, 1), state)
    assert (held.desired_replicas, held.reason) == (1, Reason.STATIC)
    asked, _ = policy.decide(_snap(465.0, 1), state)
    assert (asked.desired_replicas, asked.reason) == (6, Reason.PREDICTED)
    assert "6 pods before t = 605 s" in asked.message
    # the dip is shorter than the lead: every pod is kept through it
    assert policy.decide(_snap(705.0, 6), state)[0].desired_replicas == 6
    # 900 s is within the lead from 765 s on; released at the first tick after the last window
    assert policy.decide(_snap(885.0, 6), state)[0].desired_replicas == 6
    down, _ = policy.decide(_snap(900.0, 6), state)
    assert (down.desired_replicas, down.reason) == (1, Reason.SCALE_DOWN)
    assert held.placeholder_pods is None  # no node lead, no placeholders


def test_where_nodes_must_come_first_placeholders_launch_them_a_node_lead_early() -> None:
    times = np.arange(0.0, 1200.0, 10.0)
    need = np.where(times >= 900, 4, 1)
    policy = ClairvoyantPolicy.of(times, need, window_s=10.0, lead_s=100.0, tick_s=15.0, node_lead_s=300.0)
    state = policy.initial_state()
    early, _ = policy.decide(_snap(480.0, 1), state)  # 480 + 100 + 15 + 300 = 895: not yet
    assert (early.desired_replicas, early.placeholder_pods) == (1, 0)
    nodes, _ = policy.decide(_snap(495.0, 1), state)  # 910: the nodes for 3 more pods are launched
    assert (nodes.desired_replicas, nodes.placeholder_pods) == (1, 3)
    assert "3 placeholder pods" in nodes.message
    pods, _ = policy.decide(_snap(795.0, 1), state)  # 910 again, now within the pods' own lead
    assert (pods.desired_replicas, pods.placeholder_pods) == (4, 0)


# -- the feasible reference and the bound ---------------------------------------------------------------
def test_where_the_bound_is_reachable_the_feasible_reference_meets_the_slo_at_no_less_than_it(
    step: Scenario,
) -> None:
    oracle = compute_oracle(step, 1)
    assert oracle.covering is not None
    assert np.all(oracle.covering >= oracle.replicas)  # the budget only takes pods away
    check = feasibility(step, oracle)
    assert check.reachable and check.reason == ""
    assert leads(step).pod_s == 45.0  # every phase fixed, the node keeps the image and the weights
    summary = run_feasible(step, 1, oracle).summary
    assert summary.slo_attainment >= TARGET
    assert summary.gpu_hours >= oracle.gpu_hours
    assert summary.policy == LABELS["feasible"]
    assert run_feasible(step, 1, oracle).summary == summary  # deterministic


def test_where_nodes_take_minutes_the_bound_is_out_of_reach_and_the_feasible_reference_says_how_far() -> None:
    # The pool starts with no node; a node takes 9-11 minutes and a first start 3-6 more, and the first
    # burst comes at t = 60 s: the bound serves it, no policy can.
    sc = builtin_scenario("gpu-node-cold-start")
    oracle = compute_oracle(sc, 1)
    check = feasibility(sc, oracle)
    assert not check.reachable
    assert check.short_at_s == 60.0 and (check.need, check.possible) == (1, 0)
    assert "hold 0 pods" in check.reason and "9.5 min" in check.reason
    policy = clairvoyant_policy(sc, oracle)
    assert policy.node_lead_s == pytest.approx(660 + 30 + 10)  # slowest provisioning + device plugin + a scan
    summary = run_feasible(sc, 1, oracle).summary
    # the bound promises the target; the feasible reference, asked for in time for the second burst,
    # answers that one and loses the first
    assert summary.slo_attainment < TARGET
    assert summary.slo_attainment == pytest.approx(0.5, abs=0.05)


def test_a_load_beyond_the_whole_cluster_is_out_of_reach_in_every_window(step: Scenario) -> None:
    # one GPU in the cluster, one pod at most, about 70 requests/s within the SLO; 200 arrive
    small = step.model_copy(
        update={
            "cluster": step.cluster.model_copy(
                update={"pools": [step.cluster.pools[0].model_copy(update={"gpus_per_node": 1})]}
            ),
            "workload": step.workload.model_copy(update={"rate": None, "rate_rps": 200.0}),
            "duration_s": 120.0,
        }
    )
    oracle = compute_oracle(small, 1)
    assert oracle.max_replicas == 1 and oracle.over_windows == 12
    check = feasibility(small, oracle)
    assert not check.reachable and check.short_at_s is None  # the one pod is there; it is not enough
    assert check.reason == (
        "in 12 windows the load is more than the cluster's largest fleet (1 pod) carries within the SLO"
    )


# -- the receding horizon -------------------------------------------------------------------------------
def test_on_a_step_the_receding_horizon_meets_the_slo_where_a_reactive_policy_does_not(
    step: Scenario,
) -> None:
    reactive = simulate(step, registry.load_preset("knative"), seed=1).summary
    assert reactive.slo_attainment < TARGET  # it sees the step after it hit, and waits 45 s for pods
    result, stats = run_receding_horizon(step, 1, slo_target=TARGET)
    assert result.summary.slo_attainment >= TARGET
    assert result.summary.policy == LABELS["receding-horizon"]
    # one plan a tick, at least one rollout each; the horizon is one 45-s lead and two 5-s ticks
    assert stats.plans == len(result.timeline.rows) and stats.rollouts >= stats.plans
    assert stats.horizon_s == 55.0
    # the pods come before the step: at t = 150 s three pods are Ready
    ready = dict(zip(result.timeline.column("time_s"), result.timeline.column("ready"), strict=True))
    assert ready[150.0] >= 3
    again, _ = run_receding_horizon(step, 1, slo_target=TARGET)
    assert again.summary == result.summary  # deterministic: the copies draw from their own streams


# -- in a compare ---------------------------------------------------------------------------------------
def _suite(references: list[str]) -> SuiteConfig:
    return SuiteConfig(
        scenarios=["gpu-node-cold-start"],
        policies=["static-peak", "gpu-util"],
        seeds=[1],
        workers=1,
        references=references,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def with_refs() -> Any:
    return run_compare(_suite(["feasible"]), workers=1)


def test_a_compare_shows_the_references_apart_and_leaves_the_ranked_rows_as_they_were(with_refs: Any) -> None:
    without = run_compare(_suite([]), workers=1)
    assert with_refs.rows == without.rows  # ranks, Pareto flags and × oracle untouched
    assert report_files(with_refs)["summary.csv"] == report_files(without)["summary.csv"]
    [row] = with_refs.references.rows
    oracle = with_refs.oracles[("gpu-node-cold-start", 1)]
    gpu = row.estimates["gpu_hours"].mean
    assert row.policy == LABELS["feasible"] and not row.pareto
    assert row.gpu_hours_x_oracle.mean == pytest.approx(gpu / oracle.gpu_hours)  # relative to the bound
    files = report_files(with_refs)
    page = files["report.html"]
    assert page.count('<tr class="reference"><td class="rank">ref</td>') == 1
    assert "feasible clairvoyant (reference)" in page
    note = bound_note(with_refs, "gpu-node-cold-start")
    assert note.startswith("The oracle's lower bound cannot be reached here (seed 1): the bound holds 1 pod")
    assert "reaches only 50" in note and "knowing the future load is not enough to meet 99 %" in note
    doc = json.loads(files["summary.json"])["scenarios"]["gpu-node-cold-start"]
    assert doc["bound"]["note"] == note
    assert doc["bound"]["reachable"] is False
    assert doc["bound"]["seeds"]["1"]["short_at_s"] == 60.0
    ref = doc["references"][LABELS["feasible"]]
    assert ref["estimates"]["slo_attainment"]["mean"] == pytest.approx(row.estimates["slo_attainment"].mean)
    assert LABELS["feasible"] not in doc["policies"]
    assert report_files(run_compare(_suite(["feasible"]), workers=1)) == files  # the same bytes


# -- never live -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clairvoyant", "clairvoyant-feasible", "receding-horizon"])
def test_the_references_are_refused_wherever_a_policy_is_named(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="simulator-only reference"):
        registry.resolve_policy(name, key="policy", source="controller.yaml")
    result = CliRunner().invoke(app, ["manifests", "--policy", name, "--target", "web"])
    assert result.exit_code != 0
    assert "never runs live" in " ".join(result.output.split())


def test_the_suite_names_its_references() -> None:
    assert SuiteConfig().references == ["auto"]
    assert parse_references("none") == []
    assert parse_references("feasible,receding-horizon") == ["feasible", "receding-horizon"]
    assert parse_references("auto") == ["auto"]
    with pytest.raises(ConfigError, match="auto, feasible, receding-horizon"):
        parse_references("oracle")
    with pytest.raises(ConfigError, match="not both"):
        parse_references("auto,feasible")
    with pytest.raises(ValueError, match="each reference once"):
        SuiteConfig(references=["feasible", "feasible"])
    with pytest.raises(ValueError, match="not both"):
        SuiteConfig(references=["auto", "feasible"])


def test_by_default_the_feasible_reference_runs_only_where_the_bound_is_out_of_reach() -> None:
    suite = SuiteConfig(
        scenarios=["gpu-node-cold-start", "kis-s-spike"], policies=["gpu-util"], seeds=[1], workers=1
    )
    result = run_compare(suite, workers=1)
    reach = {name: f.reachable for (name, _), f in result.references.feasibility.items()}
    assert reach == {"gpu-node-cold-start": False, "kis-s-spike": True}
    assert [(r.key.scenario, r.key.policy) for r in result.references.runs] == [
        ("gpu-node-cold-start", LABELS["feasible"])
    ]
    assert "cannot be reached" in bound_note(result, "gpu-node-cold-start")
    assert bound_note(result, "kis-s-spike").startswith("Every pod the oracle's bound holds can be Ready")


def test_a_fork_of_a_static_fleet_is_cheap_to_make_and_exact() -> None:
    sc = make_scenario(duration_s=60)
    sim = Simulation(sc, StaticPolicy(2), seed=3)
    sim.step_to_next_tick()
    assert sim.fork().run().summary == simulate(sc, StaticPolicy(2), seed=3).summary
