"""The node layer's counters in the run's summary (placeholder preemptions, node-group backoffs,
failed launches), and placeholder pods holding no GPU memory on a time-sliced GPU.

New nodes: Ready 60 s after launch, GPUs 30 s later; the Cluster Autoscaler scans every 10 s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalSpec
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import Summary, summary_csv, summary_json
from tests.conftest import make_scenario
from tests.test_engine import Scripted
from tests.test_nodes import _row
from tests.test_warm_nodes import WithBuffer
from tests.test_warm_nodes import _scenario as buffered_scenario

COUNTERS = (
    "placeholder_preemptions",
    "node_group_backoffs",
    "failed_launches",
    "multi_node_consolidations",
    "consolidation_replacements",
    "node_expirations",
)


@pytest.mark.parametrize("headroom", [0, 1])
def test_placeholder_preemptions_are_counted(headroom: int) -> None:
    # tests/test_warm_nodes.py: at t = 200 the second serving pod preempts the one placeholder.
    s = simulate(buffered_scenario(), WithBuffer(headroom=headroom)).summary
    assert s.placeholder_preemptions == headroom


SHORT_UNTIL_S = 1000.0


def _short_spot_first(autoscaler: dict[str, Any]) -> Any:
    # Spot (listed first, cheaper) has no capacity for the whole run; on demand has.
    spot = {"name": "spot", "gpu": "a100-80gb", "nodes": 0, "max_nodes": 3, "capacity_type": "spot",
            "usd_per_node_hour": 1.0, "capacity_shortages_s": [[0, SHORT_UNTIL_S]]}  # fmt: skip
    od = {"name": "od", "gpu": "a100-80gb", "nodes": 1, "max_nodes": 3, "usd_per_node_hour": 3.0}
    return make_scenario(
        duration_s=120,
        cluster={
            "pools": [spot, od],
            "node_startup": {"provision_s": 60, "gpu_allocatable_s": 30},
            "node_autoscaler": {**autoscaler, "consolidation_policy": "WhenEmpty"}
            if autoscaler["kind"] == "karpenter"
            else autoscaler,
        },
    )


@pytest.mark.parametrize(
    ("autoscaler", "backoffs"),
    [({"kind": "cluster-autoscaler", "expander": "priority"}, 1), ({"kind": "karpenter"}, 0)],
)
def test_a_rejected_launch_is_a_failed_launch_and_a_cluster_autoscaler_backoff(
    autoscaler: dict[str, Any], backoffs: int
) -> None:
    # One more pod at t = 5. The Cluster Autoscaler's scan at 10 tries spot first (priority): the
    # cloud rejects it, the group is backed off, and on demand is launched in the same scan. Karpenter
    # tries the cheaper spot offering when its batch closes, then on demand; it has no node-group
    # backoff (its unavailable-offerings cache is not counted as one). One launch fails either way.
    s = simulate(_short_spot_first(autoscaler), Scripted(plan=((5.0, 2),))).summary
    assert (s.failed_launches, s.node_group_backoffs, s.node_scale_ups) == (1, backoffs, 1)
    assert s.node_hours_by_pool["spot"] == 0.0


def test_fixed_pools_report_zero_counters_and_every_output_has_them() -> None:
    s = simulate(make_scenario(), Scripted(plan=())).summary
    assert all(getattr(s, name) == 0 for name in COUNTERS)
    assert set(COUNTERS) <= set(json.loads(summary_json(s)))
    assert set(COUNTERS) <= set(summary_csv([s]).splitlines()[0].split(","))


def test_a_summary_built_without_the_counters_still_works() -> None:
    # Older call sites construct a Summary without the node-layer fields: they default to 0.
    s = simulate(make_scenario(), Scripted(plan=())).summary
    required = {
        name: getattr(s, name)
        for name, f in Summary.__dataclass_fields__.items()
        if f.default is f.default_factory  # both MISSING: a field with no default
    }
    old = Summary(**required)
    assert all(getattr(old, name) == 0 for name in COUNTERS)


# -- placeholders on a time-sliced GPU ------------------------------------------------------------------
@dataclass
class TwoWithPlaceholders:
    """Two serving pods and two placeholder pods throughout."""

    name: str = "two-with-placeholders"
    signals: tuple[SignalSpec, ...] = ()
    sync_period_s: float | None = None
    signal_keys: Mapping[SignalSpec, str] = field(default_factory=dict)
    max_signal_age_s: float | None = None
    replica_bounds: tuple[int, int | None] = (0, None)
    initial_replicas: int | None = None

    def initial_state(self) -> tuple[()]:
        return ()

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        return Decision(2, Reason.STATIC, "scripted", placeholder_pods=2), state


def _time_sliced(**model: Any) -> Any:
    return make_scenario(
        duration_s=30,
        model={"profile": "resnet50-a100-triton", "jitter": "none", "cpu_ms_per_request": 0.0, **model},
        cluster={
            "pools": [
                {
                    "gpu": "a100-80gb",
                    "gpus_per_node": 1,
                    "nodes": 1,
                    "gpu_sharing": {"kind": "time-slicing", "replicas_per_gpu": 4},
                }
            ],
        },
        workload={"kind": "poisson", "rate_rps": 20},
        control={"interval_s": 5, "initial_replicas": 2},
    )


def test_placeholders_on_a_time_sliced_gpu_hold_no_memory() -> None:
    # Two serving pods hold 4 GB each on an 80-GB GPU advertised 4 times; from the first tick the two
    # placeholders take the other two places. The exporter reports what the runtimes hold: 8 GB, 10 %,
    # not 16 GB (a pause container allocates no GPU memory).
    sc = _time_sliced(allocator="exact", weights_gb=2.5, activation_gb_per_request=0.0)
    result = simulate(sc, TwoWithPlaceholders())
    held = sc.model.memory_at_batch_gb(0)
    assert _row(result, 20.0)["ready"] == 2
    assert _row(result, 20.0)["gpu_memory_util_pct"] == pytest.approx(100.0 * 2 * held / 80.0)
    assert result.summary.mean_gpu_memory_util_pct == pytest.approx(100.0 * 2 * held / 80.0)


def test_placeholders_do_not_make_preallocating_runtimes_run_out_of_memory() -> None:
    # Each runtime preallocates half of the GPU: the two serving pods fill it (100 %), and the two
    # placeholders beside them neither count nor cause an OOM kill.
    result = simulate(_time_sliced(allocator="preallocate", preallocate_fraction=0.5), TwoWithPlaceholders())
    assert result.summary.oom_kills == 0
    assert _row(result, 20.0)["gpu_memory_util_pct"] == pytest.approx(100.0)
