"""Cluster Autoscaler node-group backoff as timelines: a failed launch (the cloud has no capacity, or the
node never becomes Ready within max-node-provision-time) keeps its group out of the expander's
choice for 5 minutes, doubling up to 30 minutes for failures after a backoff has ended.

New nodes: Ready 60 s after launch, GPUs allocatable 30 s later; CA scans every 10 s.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.scenario import scenario_from_dict
from gpuscale.sim.engine import simulate
from tests.conftest import make_scenario
from tests.test_engine import Scripted
from tests.test_nodes import _row

INITIAL_S, DURATION_S = 300.0, 1300.0
SHORT_UNTIL = 1000.0
SPOT = {"name": "spot", "gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 0, "max_nodes": 5,
        "capacity_type": "spot", "usd_per_node_hour": 1.5,
        "capacity_shortages_s": [[0, SHORT_UNTIL]]}  # fmt: skip
ON_DEMAND = {"name": "od", "gpu": "a100-80gb", "gpus_per_node": 1, "nodes": 1, "max_nodes": 5}


def _scenario(pools: list[dict[str, Any]], **ca: Any) -> Any:
    return make_scenario(
        duration_s=DURATION_S,
        cluster={
            "pools": pools,
            "node_startup": {"provision_s": 60, "gpu_allocatable_s": 30},
            "node_autoscaler": {"kind": "cluster-autoscaler", "expander": "priority", **ca},
        },
    )


def test_a_spot_capacity_shortage_backs_the_group_off_and_the_expander_picks_on_demand() -> None:
    # Spot first (priority expander), short of capacity until t = 1000.
    #  t = 10: spot fails -> backed off until 310; on-demand launched at once.
    #  t = 210: spot still backed off -> on-demand.
    #  t = 410: the backoff has ended; spot fails again -> 600 s (doubled), until 1010; on-demand.
    #  t = 1110: spot has capacity and is not backed off -> spot.
    plan = ((5.0, 2), (200.0, 3), (400.0, 4), (1100.0, 5))
    result = simulate(_scenario([SPOT, ON_DEMAND]), Scripted(plan=plan))
    s = result.summary
    assert [_row(result, t)["nodes"] for t in (10.0, 210.0, 410.0, 1110.0)] == [2, 3, 4, 5]
    assert s.node_scale_ups == 4
    od_launches = (10.0, 210.0, 410.0)
    assert s.node_hours_by_pool["od"] == pytest.approx(
        (DURATION_S + sum(DURATION_S - t for t in od_launches)) / 3600.0
    )
    assert s.node_hours_by_pool["spot"] == pytest.approx((DURATION_S - 1110.0) / 3600.0)
    # The scale-ups were not delayed by the failures: each pod Ready 10 + 90 + 40 s after its ask.
    assert _row(result, 145.0)["ready"] == 2
    assert _row(result, 1250.0)["ready"] == 5


def test_nodes_that_never_become_ready_back_their_group_off_doubling() -> None:
    # Nodes take 120 s to be Ready, the CA waits 100 s: the node launched at 10 is removed at 110
    # and the group backed off until 410 though the pod is still Pending; the next node (410) fails
    # at 510 after the backoff ended: 600 s, until 1110. Three launches in all.
    data = _scenario([ON_DEMAND], max_node_provision_time_s=100).model_dump()
    data["cluster"]["node_startup"]["provision_s"] = 120
    sc = scenario_from_dict(data, "test")
    result = simulate(sc, Scripted(plan=((5.0, 2),)))
    assert _row(result, 105.0)["nodes"] == 2
    assert _row(result, 115.0)["nodes"] == 1
    assert _row(result, 405.0)["nodes"] == 1
    assert _row(result, 410.0)["nodes"] == 2
    assert _row(result, 515.0)["nodes"] == 1
    assert _row(result, 1105.0)["nodes"] == 1
    assert _row(result, 1110.0)["nodes"] == 2
    assert result.summary.node_scale_ups == 3
    assert _row(result, DURATION_S - 5.0)["pending"] == 1


def test_the_backoff_resets_after_the_reset_timeout() -> None:
    # With a 200-s reset, the failure at 510 comes 400 s after the last one (110): the backoff
    # starts over at 300 s (until 810) instead of doubling.
    data = _scenario([ON_DEMAND], max_node_provision_time_s=100, node_group_backoff_reset_s=200).model_dump()
    data["cluster"]["node_startup"]["provision_s"] = 120
    result = simulate(scenario_from_dict(data, "test"), Scripted(plan=((5.0, 2),)))
    assert _row(result, 805.0)["nodes"] == 1
    assert _row(result, 810.0)["nodes"] == 2


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"pools": [{**SPOT, "capacity_shortages_s": [[100, 50]]}]}, "capacity_shortages_s"),
        (
            {
                "node_autoscaler": {
                    "kind": "cluster-autoscaler",
                    "initial_node_group_backoff_s": 600,
                    "max_node_group_backoff_s": 300,
                }
            },
            "max_node_group_backoff_s",
        ),
    ],
)
def test_bad_backoff_config_names_the_key(patch: dict[str, Any], key: str) -> None:
    cluster = {"pools": [ON_DEMAND], **patch}
    with pytest.raises(ConfigError, match=key):
        make_scenario(cluster=cluster)
