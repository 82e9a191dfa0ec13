"""The warm-node buffer (cluster over-provisioner) as a timeline: low-priority placeholder pods hold
spare GPUs on nodes the Cluster Autoscaler keeps up for them; a serving pod preempts one and starts
at once, and the preempted placeholder makes the autoscaler launch the next spare node.

Cold start on a node without the image: 1 + 10 + 20 + 5 + 4 = 40 s (tests/conftest.py). New nodes:
Ready 60 s after launch, GPUs allocatable 30 s later. CA scans every 10 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalSpec
from gpuscale.policies.predictive import PredictiveConfig
from gpuscale.policies.warm_pool import WarmPoolConfig
from gpuscale.sim.engine import simulate
from tests.conftest import make_scenario
from tests.test_nodes import _row

PROVISION_S, ALLOCATABLE_S, COLD_START_S, SCAN_S = 60.0, 30.0, 40.0, 10.0
DURATION_S = 400.0
SCALE_UP_T = 200.0


@dataclass
class WithBuffer:
    """One replica, two from ``SCALE_UP_T``; ``headroom`` placeholder pods throughout."""

    headroom: int
    name: str = "buffered"
    signals: tuple[SignalSpec, ...] = ()
    sync_period_s: float | None = None
    signal_keys: Mapping[SignalSpec, str] = field(default_factory=dict)
    max_signal_age_s: float | None = None
    replica_bounds: tuple[int, int | None] = (0, None)
    initial_replicas: int | None = None

    def initial_state(self) -> tuple[()]:
        return ()

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        desired = 2 if snapshot.time_s >= SCALE_UP_T else 1
        return Decision(desired, Reason.STATIC, "scripted", placeholder_pods=self.headroom), state


def _scenario() -> Any:
    return make_scenario(
        duration_s=DURATION_S,
        cluster={
            "pools": [{"gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 5}],
            "node_startup": {"provision_s": PROVISION_S, "gpu_allocatable_s": ALLOCATABLE_S},
            "node_autoscaler": {"kind": "cluster-autoscaler", "expander": "priority"},
        },
    )


def test_a_scale_up_starts_at_once_on_the_buffer_and_the_buffer_is_refilled() -> None:
    result = simulate(_scenario(), WithBuffer(headroom=1))
    s = result.summary
    # t = 5: the placeholder is Pending; the scan at 10 launches a spare node (GPUs at 100).
    assert _row(result, 5.0)["nodes"] == 1
    assert _row(result, 10.0)["nodes"] == 2
    # t = 200: the new pod preempts the placeholder and is scheduled at once: Ready at 240.
    assert _row(result, 200.0)["pending"] == 0
    assert _row(result, 200.0)["starting"] == 1
    assert _row(result, SCALE_UP_T + COLD_START_S)["ready"] == 2
    assert s.pending_pod_s == pytest.approx(0.0)
    # The preempted placeholder is Pending: the next scan (210) launches the next spare node.
    assert _row(result, 205.0)["nodes"] == 2
    assert _row(result, 210.0)["nodes"] == 3
    assert s.node_scale_ups == 2
    # Billing: the first node all run, the spare nodes from their launch.
    expected_s = DURATION_S + (DURATION_S - SCAN_S) + (DURATION_S - 210.0)
    assert s.node_hours == pytest.approx(expected_s / 3600.0)


def test_without_a_buffer_the_scale_up_waits_for_a_node() -> None:
    result = simulate(_scenario(), WithBuffer(headroom=0))
    s = result.summary
    # Pending at 200, the scan at 210 launches a node, its GPUs come at 210 + 60 + 30 = 300.
    launched = 210.0
    placed = launched + PROVISION_S + ALLOCATABLE_S
    assert _row(result, 205.0)["pending"] == 1
    assert s.pending_pod_s == pytest.approx(placed - SCALE_UP_T)
    assert _row(result, placed + COLD_START_S - 5.0)["ready"] == 1
    assert _row(result, placed + COLD_START_S)["ready"] == 2
    assert s.node_hours == pytest.approx((DURATION_S + DURATION_S - launched) / 3600.0)
    buffered = simulate(_scenario(), WithBuffer(headroom=1)).summary
    # The buffer's price: the spare node from t = 10 (the node the scale-up lands on then costs
    # nothing extra, and the refill from 210 stands in for the node launched at 210 here).
    assert buffered.node_hours - s.node_hours == pytest.approx((DURATION_S - SCAN_S) / 3600.0)
    assert buffered.node_cost_usd > s.node_cost_usd


def test_placeholders_keep_their_node_from_scale_down() -> None:
    # The spare node's only pod is a placeholder: utilization 1/1 >= 0.5, so the CA keeps it, even
    # with scale-down allowed after 0 s.
    sc = make_scenario(
        duration_s=300,
        cluster={
            "pools": [{"gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 5}],
            "node_startup": {"provision_s": PROVISION_S, "gpu_allocatable_s": ALLOCATABLE_S},
            "node_autoscaler": {
                "kind": "cluster-autoscaler",
                "expander": "priority",
                "scale_down_unneeded_time_s": 0,
                "scale_down_delay_after_add_s": 0,
            },
        },
    )

    @dataclass
    class Holding(WithBuffer):
        def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
            return Decision(1, Reason.STATIC, "scripted", placeholder_pods=self.headroom), state

    result = simulate(sc, Holding(headroom=1))
    assert _row(result, 295.0)["nodes"] == 2
    assert result.summary.node_scale_downs == 0


def test_warm_pool_and_predictive_policies_ask_for_their_headroom() -> None:
    snap = MetricsSnapshot(time_s=0.0, current_replicas=1, ready=1)
    wp = validate(
        WarmPoolConfig,
        {"standby_replicas": 1, "target_per_replica": 4, "max_replicas": 5, "headroom_replicas": 2},
        "wp.yaml",
    ).build()
    d, _ = wp.decide(snap, wp.initial_state())
    assert (d.standby_replicas, d.placeholder_pods) == (1, 2)
    plain = validate(
        WarmPoolConfig, {"standby_replicas": 1, "target_per_replica": 4, "max_replicas": 5}, "wp.yaml"
    ).build()
    d, _ = plain.decide(snap, plain.initial_state())
    assert d.placeholder_pods is None
    pred = validate(
        PredictiveConfig,
        {"capacity_rps_per_replica": 10, "max_replicas": 5, "headroom_replicas": 3},
        "pred.yaml",
    ).build()
    d, _ = pred.decide(snap, pred.initial_state())
    assert d.placeholder_pods == 3


def test_negative_headroom_is_a_config_error() -> None:
    from gpuscale._core.errors import ConfigError

    with pytest.raises(ConfigError, match="headroom_replicas"):
        validate(
            WarmPoolConfig,
            {"standby_replicas": 1, "target_per_replica": 4, "max_replicas": 5, "headroom_replicas": -1},
            "wp.yaml",
        )
