"""Knative's progress deadline on a GPU cluster, as a timeline: a revision scaling from zero while its
GPU node boots gives up progress-deadline + 30 s after activation (kpa/scaler.go), its pods are
deleted before they are Ready, and every request of the burst fails; with a faster node it does not.

The built-in ``gpu-node-cold-start`` scenario: 30 requests arrive from t = 60 to 75 s onto a cluster
with no GPU node; nodes take 540-660 s to be Ready, +30 s for their GPUs; a pod then needs at least
1 + 120 + 60 + 10 + 5 s. The activator holds requests for the 300-s timeout.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import pytest

from gpuscale.config.scenario import Scenario, scenario_from_dict
from gpuscale.experiments.catalog import builtin_scenario
from gpuscale.policies import registry
from gpuscale.policies.knative import ACTIVATION_TIMEOUT_BUFFER_S, KPA_TICK_S
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import SimResult

SECOND_BURST_S = 1200.0


def _knative(**extra: Any) -> Any:
    """The knative-scale-to-zero preset (KServe minReplicas: 0), with ``extra`` overrides."""
    preset = registry.load_preset("knative-scale-to-zero")
    assert preset.config.min_scale == 0
    return registry.load_policy({**preset.config.model_dump(), **extra}, "knative-scale-to-zero")


def _rows(result: SimResult) -> list[dict[str, Any]]:
    return [asdict(r) for r in result.timeline.rows]


def _activation_t(rows: list[dict[str, Any]]) -> float:
    return next(r["time_s"] for r in rows if r["reason"] == "ScaleFromZero")


def _with_provision(sc: Scenario, provision_s: float) -> Scenario:
    data = sc.model_dump()
    data["cluster"]["node_startup"]["provision_s"] = provision_s
    return scenario_from_dict(data, "gpu-node-cold-start (fast nodes)")


def _give_up_t(activation_t: float, deadline_s: float) -> float:
    """The first KPA tick at or after activation + deadline + the activation buffer."""
    due = activation_t + deadline_s + ACTIVATION_TIMEOUT_BUFFER_S
    return math.ceil(due / KPA_TICK_S - 1e-9) * KPA_TICK_S


@pytest.mark.parametrize("deadline_s", [600.0, 450.0])
def test_scale_from_zero_gives_up_after_the_progress_deadline_while_the_gpu_node_boots(
    deadline_s: float,
) -> None:
    sc = builtin_scenario("gpu-node-cold-start")
    result = simulate(sc, _knative(progress_deadline_s=deadline_s), source="gpu-node-cold-start")
    rows = _rows(result)
    activated = _activation_t(rows)
    assert activated == pytest.approx(62.0)  # the first 2-s tick after the burst begins at 60 s
    gave_up = _give_up_t(activated, deadline_s)
    at = {r["time_s"]: r for r in rows}

    # Until the deadline the PA keeps activating: it holds its pods (scale unknown), none is Ready.
    before = [r for r in rows if activated <= r["time_s"] < gave_up]
    assert all(r["ready"] == 0 and r["desired"] > 0 for r in before)
    assert {r["reason"] for r in before[-10:]} == {"ScaleToZeroGrace"}
    # At activation + deadline + 30 s it gives up: the target goes to 0 and its pods are deleted,
    # though nodes were launched for them and are still coming up or empty.
    give_up = at[gave_up]
    assert (give_up["desired"], give_up["reason"]) == (0, "ScaleToZero")
    assert give_up["starting"] + give_up["pending"] + give_up["ready"] == 0
    assert give_up["nodes"] > 0
    # Every request of the first burst failed: it timed out at the activator, none completed.
    first = [r for r in rows if r["time_s"] < SECOND_BURST_S]
    arrived = sum(r["arrivals"] for r in first)
    assert arrived > 0
    assert sum(r["timed_out"] for r in first) == arrived
    assert sum(r["completed"] for r in first) == 0
    assert result.summary.timed_out >= arrived
    # The empty nodes were billed all the same: nobody served from them before the second burst.
    assert _row_at_or_before(rows, SECOND_BURST_S)["node_cost_usd"] > 0
    # The second burst finds the nodes up: it activates again and is served.
    assert result.summary.completed > 0
    assert result.summary.decisions_by_reason["ScaleFromZero"] == 2


def test_with_a_faster_gpu_node_the_revision_activates_before_the_deadline() -> None:
    sc = _with_provision(builtin_scenario("gpu-node-cold-start"), 120.0)
    policy = _knative()
    result = simulate(sc, policy, source="gpu-node-cold-start")
    rows = _rows(result)
    activated = _activation_t(rows)
    # A pod is Ready before the deadline, so the PA turns Active and its activation never times out.
    first_ready = next(r["time_s"] for r in rows if r["ready"] > 0)
    assert first_ready < _give_up_t(activated, policy.config.progress_deadline_s)
    assert result.summary.cold_starts > 0
    # Scale to zero comes later, the normal way: not before the PA has been Active a stable window.
    to_zero = next(r["time_s"] for r in rows if r["time_s"] > activated and r["desired"] == 0)
    assert to_zero >= first_ready + policy.config.stable_window_s


def test_min_scale_one_never_gives_up() -> None:
    # The knative preset keeps one pod (min-scale 1): the wanted count never reaches 0, so the PA
    # keeps activating past the deadline and the pod is Ready once its node is up.
    sc = builtin_scenario("gpu-node-cold-start")
    result = simulate(sc, registry.load_preset("knative"), source="gpu-node-cold-start")
    rows = _rows(result)
    assert all(r["desired"] >= 1 for r in rows)
    assert any(r["ready"] >= 1 for r in rows if r["time_s"] < SECOND_BURST_S)
    assert "ScaleToZero" not in result.summary.decisions_by_reason


def _row_at_or_before(rows: list[dict[str, Any]], t: float) -> dict[str, Any]:
    return [r for r in rows if r["time_s"] <= t][-1]
