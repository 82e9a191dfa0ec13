"""Karpenter as timelines: batching of Pending pods, the cheapest launch across pools, consolidation of
empty and under-used nodes within the disruption budget, do-not-disrupt, the PDB, and replacements
Ready before the old pod goes.

Cold start on a node without the image: 1 + 10 + 20 + 5 + 4 = 40 s; on a node with it (and the
weights): 1 + 5 + 4 = 10 s (tests/conftest.py). New nodes: Ready 60 s after launch, GPUs 30 s later.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.sim.engine import simulate
from tests.conftest import make_scenario
from tests.test_engine import Scripted
from tests.test_nodes import _row


def _karpenter(**extra: Any) -> dict[str, Any]:
    return {"kind": "karpenter", **extra}


def _cluster(pools: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "pools": pools,
        "node_startup": {"provision_s": 60, "gpu_allocatable_s": 30},
        "node_autoscaler": _karpenter(**extra.pop("karpenter", {})),
        **extra,
    }


SMALL = {"name": "small", "gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 40,
         "usd_per_node_hour": 2.5}  # fmt: skip
WHEN_EMPTY = {"consolidation_policy": "WhenEmpty"}
BIG = {
    "name": "big",
    "gpu": "a100-80gb",
    "gpus_per_node": 4,
    "nodes": 0,
    "max_nodes": 3,
    "usd_per_node_hour": 8.0,
}


@pytest.mark.parametrize(("replicas", "launched"), [(3, {"small": 2}), (5, {"big": 1})])
def test_a_batch_launches_the_cheapest_nodes_per_pod_across_pools(
    replicas: int, launched: dict[str, int]
) -> None:
    # At t = 5 the deployment grows; the batch opens with the new Pending pods and closes 1 s later
    # (no new pod in between). 2 pods: two small nodes ($2.5 per pod) beat a big one ($4 per pod);
    # 4 pods: one big node ($2 per pod) beats four small ones ($2.5). Launched at 6, GPUs allocatable
    # at 96, pods Ready at 136.
    sc = make_scenario(duration_s=150, cluster=_cluster([BIG, SMALL]))
    result = simulate(sc, Scripted(plan=((5.0, replicas),)))
    s = result.summary
    assert s.node_scale_ups == sum(launched.values())
    assert _row(result, 5.0)["nodes"] == 1
    assert _row(result, 10.0)["nodes"] == 1 + sum(launched.values())
    assert _row(result, 95.0)["pending_nodes"] == sum(launched.values())
    assert _row(result, 135.0)["ready"] == 1
    assert _row(result, 140.0)["ready"] == replicas
    for pool, n in launched.items():
        assert s.node_hours_by_pool[pool] == pytest.approx(
            n * (150 - 6) / 3600 + (pool == "small") * 150 / 3600
        )


def test_the_batch_closes_after_its_maximum_while_pods_keep_coming() -> None:
    # A pod more every 0.5 s from t = 5 to t = 20. Each new Pending pod stretches the 1 s idle
    # window, so the first batch closes at its 10 s maximum, t = 15, and launches a node for each of
    # the 20 pods Pending then (spec 21). The pod created at 15 opens the next batch, which closes
    # 1 s after the last pod (t = 20): at 21, 11 more nodes.
    sc = make_scenario(
        duration_s=30,
        control={"interval_s": 0.5, "initial_replicas": 1},
        cluster=_cluster([SMALL]),
    )
    plan = tuple((5.0 + 0.5 * k, 2 + k) for k in range(31))
    result = simulate(sc, Scripted(plan=plan))
    assert _row(result, 14.5)["nodes"] == 1
    assert _row(result, 15.0)["nodes"] == 21
    assert _row(result, 20.5)["nodes"] == 21
    assert _row(result, 21.0)["nodes"] == 32
    assert result.summary.node_scale_ups == 31


def test_spot_is_launched_first_and_on_demand_when_spot_is_at_its_limit() -> None:
    spot = {"name": "spot", "gpu": "a100-80gb", "nodes": 0, "max_nodes": 1, "capacity_type": "spot",
            "usd_per_node_hour": 1.0}  # fmt: skip
    od = {"name": "od", "gpu": "a100-80gb", "nodes": 1, "max_nodes": 5, "usd_per_node_hour": 3.0}
    # WhenEmpty: consolidation would otherwise replace the on-demand node by spot at t = 0.
    sc = make_scenario(duration_s=20, cluster=_cluster([od, spot], karpenter=WHEN_EMPTY))
    result = simulate(sc, Scripted(plan=((5.0, 3),)))
    assert result.summary.node_hours_by_pool == pytest.approx({"od": (20 + 14) / 3600, "spot": 14 / 3600})


@pytest.mark.parametrize(("budget_pct", "nodes"), [(10, {25: 10, 30: 9, 40: 8, 105: 2, 110: 1}),
                                                    (30, {25: 10, 30: 7, 40: 4, 50: 2, 60: 1})])  # fmt: skip
def test_empty_nodes_go_after_consolidate_after_within_the_disruption_budget(
    budget_pct: float, nodes: dict[int, int]
) -> None:
    # Ten 1-GPU nodes, one pod. The nine empty nodes are consolidatable from t = 30
    # (consolidateAfter 30 s); every 10 s the budget lets ⌈nodes x pct⌉ of them go.
    sc = make_scenario(
        duration_s=120,
        cluster=_cluster(
            [{**SMALL, "nodes": 10}],
            karpenter={"consolidate_after_s": 30, "disruption_budget_pct": budget_pct},
        ),
    )
    result = simulate(sc, Scripted(plan=()))
    for t, n in nodes.items():
        assert _row(result, float(t))["nodes"] == n, t
    assert result.summary.node_scale_downs == 9
    assert result.summary.evictions == 0


def _underused(**extra: Any) -> Any:
    # Pool a: one 1-GPU node with pod 0; pool b: one 2-GPU node with pod 1 and a free GPU. Node a's
    # pod fits on node b: node a is the consolidation candidate (fewest pods, then launch order).
    return make_scenario(
        duration_s=80,
        control={"interval_s": 5, "initial_replicas": 2},
        cluster=_cluster(
            [
                {"name": "a", "gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 1},
                {"name": "b", "gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1, "max_nodes": 1},
            ],
            karpenter={"consolidate_after_s": 30, **extra.pop("karpenter", {})},
            **extra,
        ),
    )


def test_an_under_used_node_goes_only_once_its_pods_replacement_is_ready_elsewhere() -> None:
    # At t = 30 node a is tainted and a replacement pod starts on node b (image there: 10 s). The old
    # pod serves until the replacement is Ready at 40, then drains; node a goes with it.
    result = simulate(_underused(), Scripted(plan=()))
    s = result.summary
    assert _row(result, 25.0)["nodes"] == 2
    assert (_row(result, 35.0)["ready"], _row(result, 35.0)["starting"]) == (2, 1)
    assert _row(result, 45.0)["nodes"] == 1
    assert _row(result, 45.0)["ready"] == 2
    assert min(result.timeline.column("ready")) == 2  # never below the spec
    assert s.node_hours_by_pool["a"] == pytest.approx(40 / 3600, abs=1e-5)
    assert (s.node_scale_downs, s.evictions, s.cold_starts, s.dropped) == (1, 1, 1, 0)


@pytest.mark.parametrize("extra", [{"pdb_min_available": 2}, {"karpenter": {"do_not_disrupt": True}}])
def test_the_pdb_and_do_not_disrupt_block_consolidation(extra: dict[str, Any]) -> None:
    result = simulate(_underused(**extra), Scripted(plan=()))
    s = result.summary
    assert (s.node_scale_downs, s.evictions, s.cold_starts) == (0, 0, 0)
    assert _row(result, 75.0)["nodes"] == 2


def test_when_empty_keeps_under_used_nodes() -> None:
    result = simulate(_underused(karpenter={"consolidation_policy": "WhenEmpty"}), Scripted(plan=()))
    assert result.summary.node_scale_downs == 0


def test_karpenter_replaces_a_reclaimed_spot_node() -> None:
    # The spot node gets its notice at 50; the replacement pod opens a batch, closed at 51: the
    # cheapest place left is on demand (the spot pool is at its max while the reclaimed node lives).
    # Allocatable at 51 + 90 = 141, Ready at 181.
    sc = make_scenario(
        duration_s=200,
        cluster=_cluster(
            [
                {"name": "spot", "gpu": "a100-80gb", "nodes": 1, "max_nodes": 1, "capacity_type": "spot",
                 "usd_per_node_hour": 1.0, "spot_interruptions_at_s": [50.0]},
                {"name": "od", "gpu": "a100-80gb", "nodes": 0, "max_nodes": 2, "usd_per_node_hour": 3.0},
            ],
            karpenter=WHEN_EMPTY,  # else the on-demand node goes back to spot once the spot pool has room
        ),
    )  # fmt: skip
    result = simulate(sc, Scripted(plan=()))
    s = result.summary
    assert (s.spot_interruptions, s.node_scale_ups) == (1, 1)
    assert s.node_hours_by_pool["od"] == pytest.approx(149 / 3600)
    assert _row(result, 180.0)["ready"] == 0
    assert _row(result, 185.0)["ready"] == 1


@pytest.mark.parametrize(
    ("karpenter", "key"),
    [
        ({"batch_idle_s": 0}, "batch_idle_s"),
        ({"batch_idle_s": 5, "batch_max_s": 2}, "batch_max_s"),
        ({"disruption_budget_pct": 150}, "disruption_budget_pct"),
        ({"consolidation_policy": "Always"}, "consolidation_policy"),
    ],
)
def test_bad_karpenter_settings_name_the_key(karpenter: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_scenario(cluster=_cluster([SMALL], karpenter=karpenter))
    assert key in str(err.value)


def test_an_offering_without_capacity_is_skipped_for_three_minutes() -> None:
    # Spot ($1/h) is cheapest but has no capacity until t = 100. The batch closing at 6 tries it,
    # gets InsufficientCapacity and launches on-demand instead; at 300 the spot offering is back.
    spot = {**SMALL, "name": "spot", "nodes": 0, "capacity_type": "spot", "usd_per_node_hour": 1.0,
            "capacity_shortages_s": [[0, 100]]}  # fmt: skip
    # WhenEmpty: consolidation would otherwise replace the on-demand nodes by spot once it is back.
    sc = make_scenario(duration_s=400, cluster=_cluster([spot, SMALL], karpenter=WHEN_EMPTY))
    result = simulate(sc, Scripted(plan=((5.0, 2), (300.0, 3))))
    s = result.summary
    assert _row(result, 10.0)["nodes"] == 2
    assert s.node_hours_by_pool["small"] == pytest.approx((400 + 400 - 6) / 3600)
    assert s.node_hours_by_pool["spot"] == pytest.approx((400 - 301) / 3600)
