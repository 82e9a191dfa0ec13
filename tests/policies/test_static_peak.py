"""``static-peak``: the peak's replicas all the time, sized directly or from the peak rate."""

from __future__ import annotations

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, StaticPolicy
from gpuscale.policies.static_peak import StaticPeakConfig, peak_replicas


def build(**data: object) -> StaticPolicy:
    return validate(StaticPeakConfig, {"kind": "static-peak", **data}, "policy.yaml").build()


@pytest.mark.parametrize(
    ("peak", "capacity", "headroom", "expected"),
    [
        (930, 100, 10, 11),  # ceil(930 x 1.1 / 100) = ceil(10.23)
        (1000, 100, 0, 10),  # an exact fit is not rounded up
        (300, 110, 10, 3),  # 300 x 1.1 / 110 = 3.0000000000000004 in floats: still 3
        (1, 100, 0, 1),  # never fewer than one replica
        (1001, 100, 0, 11),
    ],
)
def test_peak_replicas(peak: float, capacity: float, headroom: float, expected: int) -> None:
    assert peak_replicas(peak, capacity, headroom) == expected


def test_sized_from_the_peak_holds_that_count_whatever_the_load() -> None:
    p = build(peak_rps=930, capacity_rps_per_replica=100, headroom_pct=10)
    assert p.name == "static-peak"
    assert p.signals == ()
    state = p.initial_state()
    d, state = p.decide(MetricsSnapshot(time_s=0, current_replicas=2, ready=2), state)
    assert d == Decision(11, Reason.STATIC, "fixed at 11 replicas")
    d, _ = p.decide(MetricsSnapshot(time_s=15, current_replicas=11, ready=11), state)
    assert d == Decision(None, Reason.STATIC, "holding 11 replicas")


def test_sized_directly() -> None:
    p = build(replicas=4, standby_replicas=1)
    d, _ = p.decide(MetricsSnapshot(time_s=0, current_replicas=1, ready=1), p.initial_state())
    assert d == Decision(4, Reason.STATIC, "fixed at 4 replicas", standby_replicas=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {},
            "policy.yaml: replicas = None:"
            " required: give replicas, or peak_rps with capacity_rps_per_replica",
        ),
        ({"peak_rps": 500}, "policy.yaml: capacity_rps_per_replica: required key is missing"),
        (
            {"replicas": 3, "peak_rps": 500},
            "policy.yaml: peak_rps = 500.0: give either replicas or peak_rps, not both",
        ),
        (
            {"replicas": 3, "capacity_rps_per_replica": 50},
            "policy.yaml: capacity_rps_per_replica = 50.0: only used with peak_rps; replicas is given",
        ),
        ({"replicas": 0}, "policy.yaml: replicas = 0: input should be greater than or equal to 1"),
        (
            {"peak_rps": -1, "capacity_rps_per_replica": 50},
            "policy.yaml: peak_rps = -1: input should be greater than 0",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(**data)
    assert str(err.value) == message
