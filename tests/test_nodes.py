"""The node layer as timelines: Cluster Autoscaler scale-up and scale-down, spot reclamation, the
PodDisruptionBudget, and the node bill (node-hours x price by pool, spot savings).

Cold start on a node without the image: scheduling 1 + pull 10 + download 20 + load 5 + warm-up 4
= 40 s (tests/conftest.py). New nodes: Ready 60 s after launch, GPUs allocatable 30 s later.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.instances import INSTANCE_TYPES
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import summary_csv
from tests.conftest import make_scenario
from tests.test_engine import Scripted


def _ca(**extra: Any) -> dict[str, Any]:
    return {"kind": "cluster-autoscaler", "expander": "priority", **extra}


def _cluster(pools: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "pools": pools,
        "node_startup": {"provision_s": 60, "gpu_allocatable_s": 30},
        **extra,
    }


def _row(result: Any, t: float) -> dict[str, Any]:
    for r in result.timeline.rows:
        if abs(r.time_s - t) < 1e-9:
            return asdict(r)
    raise AssertionError(f"no timeline row at {t}")


ONE_GPU_POOL = {"gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 5}


def test_pending_pods_get_one_node_each_even_while_the_new_gpus_are_not_allocatable() -> None:
    # At t = 5 the deployment asks for 3 pods; 2 cannot be placed. The scan at t = 10 launches 2
    # nodes: Ready at 70, GPUs allocatable at 100. Scans from 20 to 90 see the two pods Pending but
    # count them against the nodes still starting (a Ready node without allocatable GPUs included),
    # so no third node is launched. The pods land at 100 and are Ready at 100 + 40 = 140.
    sc = make_scenario(
        duration_s=160,
        cluster=_cluster([ONE_GPU_POOL], node_autoscaler=_ca()),
    )
    policy = Scripted(plan=((5.0, 3),))
    result = simulate(sc, policy)
    s = result.summary
    assert s.node_scale_ups == 2
    assert _row(result, 5.0)["nodes"] == 1
    assert _row(result, 10.0)["nodes"] == 3
    assert _row(result, 95.0)["pending_nodes"] == 2
    assert _row(result, 95.0)["pending"] == 2
    assert _row(result, 100.0)["pending_nodes"] == 0
    assert _row(result, 135.0)["ready"] == 1
    assert _row(result, 140.0)["ready"] == 3
    # The policy saw the nodes coming (MetricsSnapshot.pending_nodes).
    seen = {snap.time_s: snap for snap in policy.seen}
    assert (seen[50.0].pending, seen[50.0].pending_nodes) == (2, 2)
    assert seen[100.0].pending_nodes == 0
    # Two pods Pending from 5 to 100.
    assert s.pending_pod_s == pytest.approx(190.0)
    assert _row(result, 100.0)["pending_pod_s"] == pytest.approx(190.0)
    assert s.max_nodes == 3


def test_without_the_gpu_unready_rule_a_ready_node_without_gpus_triggers_a_second_scale_up() -> None:
    # kubernetes/autoscaler PR #461 fixed this: at t = 70 the two new nodes are Ready with no
    # allocatable GPU, the pods are still unschedulable, so CA launches two more nodes.
    sc = make_scenario(
        duration_s=160,
        cluster=_cluster([ONE_GPU_POOL], node_autoscaler=_ca(gpu_unready_until_allocatable=False)),
    )
    result = simulate(sc, Scripted(plan=((5.0, 3),)))
    assert result.summary.node_scale_ups == 4
    assert _row(result, 65.0)["nodes"] == 3
    assert _row(result, 70.0)["nodes"] == 5


def test_an_empty_node_is_removed_only_after_the_unneeded_time() -> None:
    # Two 1-GPU nodes; a second pod runs on node 1 from t = 5 to t = 100. The scan at t = 110 is
    # the first to find node 1 empty; it goes at the first scan 600 s later, t = 710.
    sc = make_scenario(
        duration_s=720,
        cluster=_cluster(
            [{"gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 2, "max_nodes": 2}], node_autoscaler=_ca()
        ),
    )
    result = simulate(sc, Scripted(plan=((5.0, 2), (100.0, 1))))
    assert _row(result, 50.0)["ready"] == 2
    assert _row(result, 705.0)["nodes"] == 2
    assert _row(result, 710.0)["nodes"] == 1
    s = result.summary
    assert s.node_scale_downs == 1
    assert s.node_hours == pytest.approx((720.0 + 710.0) / 3600.0)


def test_scale_down_waits_for_the_delay_after_a_scale_up() -> None:
    # Pool of 1-GPU nodes, 1 node, max 3. At t = 5 ask for 2 pods: a node is launched at t = 10. At
    # t = 200 go back to 1 pod: the new node is empty (the scan at 210 marks it); an unneeded time of
    # 60 s would remove it at 270, but delay-after-add (10 min from t = 10) holds it until t = 610.
    sc = make_scenario(
        duration_s=630,
        cluster=_cluster(
            [{"gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 3}],
            node_autoscaler=_ca(scale_down_unneeded_time_s=60),
        ),
    )
    result = simulate(sc, Scripted(plan=((5.0, 2), (200.0, 1))))
    assert result.summary.node_scale_ups == 1
    assert _row(result, 605.0)["nodes"] == 2
    assert _row(result, 610.0)["nodes"] == 1


def _pdb_scenario(pdb: int | None) -> Any:
    # Two 4-GPU nodes, both pods on node 0 (util 0.5 < threshold 0.6). Checked in launch order, node
    # 0's pods fit on node 1, so node 0 is the one CA would remove (node 1 is then their destination).
    return make_scenario(
        duration_s=700,
        control={"interval_s": 5, "initial_replicas": 2},
        cluster=_cluster(
            [{"gpu": "a100-80gb", "gpus_per_node": 4, "nodes": 2, "max_nodes": 2}],
            node_autoscaler=_ca(scale_down_utilization_threshold=0.6),
            pdb_min_available=pdb,
        ),
    )


def test_without_a_pdb_scale_down_evicts_and_the_pods_cold_start_elsewhere() -> None:
    result = simulate(_pdb_scenario(None), Scripted(plan=()))
    s = result.summary
    assert s.node_scale_downs == 1
    assert s.evictions == 2
    # At t = 600 node 0 is cordoned and its pods drain (their last requests end within
    # milliseconds); the node is terminated when the last one is gone.
    assert _row(result, 595.0)["nodes"] == 2
    assert _row(result, 600.0)["draining"] == 2
    assert _row(result, 605.0)["nodes"] == 1
    assert s.node_hours_by_pool["gpu"] == pytest.approx((700.0 + 600.0) / 3600.0, abs=1e-4)
    # Replacements cold-start on node 1 (no image there): Ready at 600 + 40.
    assert _row(result, 635.0)["ready"] == 0
    assert _row(result, 640.0)["ready"] == 2
    assert s.cold_starts == 2


@pytest.mark.parametrize("min_available", [1, 2])
def test_a_pdb_blocks_consolidation_below_min_available(min_available: int) -> None:
    # Evicting node 0's two pods would leave 0 Ready < minAvailable: node 0 is not removable, so the
    # empty node 1 is the one that goes at t = 600; no pod is ever disrupted.
    result = simulate(_pdb_scenario(min_available), Scripted(plan=()))
    s = result.summary
    assert s.evictions == 0
    assert s.cold_starts == 0
    assert _row(result, 600.0)["nodes"] == 1
    assert _row(result, 600.0)["ready"] == 2
    assert s.dropped == 0


def test_a_spot_reclamation_drains_and_reschedules_with_a_second_cold_start() -> None:
    # The pod runs on the spot node. At t = 50 the node gets its 2-minute notice: cordoned, the pod
    # drains, its replacement is Pending. The scan at t = 50 launches an on-demand node (the spot
    # pool is at its max while the reclaimed node lives): allocatable at 50 + 60 + 30 = 140, the pod
    # Ready at 180. The spot node is terminated at 170. The PDB does not protect against reclamation.
    sc = make_scenario(
        duration_s=200,
        cluster=_cluster(
            [
                {
                    "name": "spot",
                    "gpu": "a100-80gb",
                    "nodes": 1,
                    "max_nodes": 1,
                    "capacity_type": "spot",
                    "usd_per_node_hour": 1.0,
                    "spot_interruptions_at_s": [50.0],
                },
                {"name": "od", "gpu": "a100-80gb", "nodes": 0, "max_nodes": 2},
            ],
            node_autoscaler=_ca(),
            pdb_min_available=1,
        ),
    )
    result = simulate(sc, Scripted(plan=()))
    s = result.summary
    assert s.spot_interruptions == 1
    assert s.evictions == 1
    assert _row(result, 45.0)["ready"] == 1
    assert _row(result, 50.0)["ready"] == 0
    assert _row(result, 50.0)["pending"] == 1
    assert _row(result, 165.0)["nodes"] == 2
    assert _row(result, 170.0)["nodes"] == 1
    assert _row(result, 175.0)["ready"] == 0
    assert _row(result, 180.0)["ready"] == 1
    assert s.cold_starts == 1
    assert s.mean_cold_start_s == pytest.approx(130.0)  # 50 → 180: waiting for the node, then 40 s
    assert s.node_hours_by_pool == pytest.approx({"spot": 170 / 3600, "od": 150 / 3600})


def test_node_cost_is_node_hours_times_price_summed_over_pools() -> None:
    sc = make_scenario(
        duration_s=900,
        cluster=_cluster(
            [
                {"name": "g5-spot", "instance_type": "g5.xlarge", "capacity_type": "spot", "nodes": 1,
                 "max_nodes": 2},
                {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 0, "max_nodes": 3,
                 "usd_per_node_hour": 7.5},
            ],
            node_autoscaler=_ca(),
        ),
    )  # fmt: skip
    result = simulate(sc, Scripted(plan=((5.0, 5), (300.0, 1))))
    s = result.summary
    prices = {"g5-spot": 0.30, "a100": 7.5}
    assert s.cost_basis == "node"
    assert s.node_scale_ups >= 2
    assert sum(s.node_hours_by_pool[p] * prices[p] for p in prices) == pytest.approx(s.node_cost_usd)
    assert s.node_cost_by_pool_usd == pytest.approx({p: s.node_hours_by_pool[p] * prices[p] for p in prices})
    assert s.cost_usd == s.node_cost_usd
    assert s.node_hours == pytest.approx(sum(s.node_hours_by_pool.values()))
    # The timeline's running bill ends where the summary's starts from.
    assert result.timeline.rows[-1].node_cost_usd <= s.node_cost_usd
    # The pod-based figure is still there; the CSV keeps scalar columns only.
    assert s.pod_cost_usd > 0
    header = summary_csv([s]).splitlines()[0].split(",")
    assert "node_cost_usd" in header
    assert "node_hours_by_pool" not in header


def test_spot_savings_are_reported_against_the_same_fleet_on_demand() -> None:
    def run(capacity: str) -> Any:
        sc = make_scenario(
            duration_s=3600,
            control={"interval_s": 5, "initial_replicas": 2},
            cluster=_cluster(
                [{"instance_type": "g5.xlarge", "capacity_type": capacity, "nodes": 2, "max_nodes": 2,
                  "min_nodes": 2}],
                node_autoscaler=_ca(),
            ),
        )  # fmt: skip
        return simulate(sc, Scripted(plan=())).summary

    spot, on_demand = run("spot"), run("on-demand")
    g5 = INSTANCE_TYPES["g5.xlarge"]
    assert spot.node_hours == pytest.approx(2.0)
    assert spot.node_cost_usd == pytest.approx(2 * g5.spot_usd_per_hour)  # type: ignore[operator]
    assert spot.on_demand_node_cost_usd == pytest.approx(on_demand.node_cost_usd)
    assert on_demand.node_cost_usd == pytest.approx(2 * 1.01)
    assert spot.spot_savings_usd == pytest.approx(2 * (1.01 - 0.30))
    assert on_demand.spot_savings_usd == pytest.approx(0.0)


def test_fixed_pools_keep_the_pod_cost_as_the_headline_and_report_the_node_bill() -> None:
    result = simulate(make_scenario(duration_s=60), Scripted(plan=()))
    s = result.summary
    assert s.cost_basis == "pod"
    assert s.cost_usd == s.pod_cost_usd
    # One 4-GPU a100-80gb node at 4 x $2.21 for a minute.
    assert s.node_cost_usd == pytest.approx(4 * 2.21 / 60)
    assert s.node_scale_ups == 0


@pytest.mark.parametrize(
    ("cluster", "key"),
    [
        (_cluster([ONE_GPU_POOL], node_autoscaler=_ca(scan_interval_s=0)), "scan_interval_s"),
        (_cluster([ONE_GPU_POOL], node_autoscaler={"kind": "autopilot"}), "node_autoscaler"),
        (_cluster([{**ONE_GPU_POOL, "capacity_type": "spot"}]), "usd_per_node_hour"),
        (_cluster([{**ONE_GPU_POOL, "instance_type": "p9.huge"}]), "instance_type"),
        (_cluster([{"instance_type": "g5.xlarge", "gpus_per_node": 2, "nodes": 1}]), "instance_type"),
        (_cluster([{**ONE_GPU_POOL, "spot_interruptions_per_node_hour": 0.1}]), "capacity_type"),
    ],
)
def test_bad_node_settings_name_the_key(cluster: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_scenario(cluster=cluster)
    assert key in str(err.value)
