"""``warm-pool``: a wrapped policy decides active replicas; the pool size rides on every decision."""

from __future__ import annotations

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalSpec, SignalValue
from gpuscale.policies.registry import load_policy, load_preset
from gpuscale.policies.warm_pool import WarmPoolConfig, WarmPoolPolicy, WarmPoolState, promote_decision


def build(**data: object) -> WarmPoolPolicy:
    return validate(WarmPoolConfig, {"kind": "warm-pool", **data}, "policy.yaml").build()


def snap(
    spec: SignalSpec, t: float, current: int, value: float | None, *, standby: int = 2
) -> MetricsSnapshot:
    got = SignalValue(value) if value is not None else SignalValue.missing("no samples")
    return MetricsSnapshot(
        time_s=t,
        current_replicas=current,
        ready=current,
        standby=standby,
        standby_target=2,
        signals={spec: got},
    )


def test_promote_decision() -> None:
    s = MetricsSnapshot(time_s=0, current_replicas=3, ready=3, standby=2)
    up = Decision(6, Reason.SCALE_UP, "wants 6")
    assert promote_decision(up, s, 2) == Decision(
        6,
        Reason.WARM_POOL_PROMOTE,
        "ScaleUp: wants 6; promote 2 of 2 standby pod(s) at once, start 1 cold; refill the pool to 2 in the"
        " background",
        standby_replicas=2,
    )
    one = Decision(4, Reason.SCALE_UP_PANIC, "panic")
    assert promote_decision(one, s, 2).message == (
        "ScaleUpPanic: panic; promote 1 of 2 standby pod(s) at once; refill the pool to 2 in the background"
    )
    empty = MetricsSnapshot(time_s=0, current_replicas=3, ready=3, standby=0)
    assert promote_decision(up, empty, 2) == Decision(6, Reason.SCALE_UP, "wants 6", standby_replicas=2)
    hold = Decision.hold(Reason.NO_DATA, "nothing")
    assert promote_decision(hold, s, 2) == Decision(None, Reason.NO_DATA, "nothing", standby_replicas=2)
    down = Decision(2, Reason.SCALE_DOWN, "fewer")
    assert promote_decision(down, s, 2) == Decision(2, Reason.SCALE_DOWN, "fewer", standby_replicas=2)


def test_shorthand_is_an_hpa_on_per_pod_concurrency() -> None:
    p = build(standby_replicas=2, target_per_replica=4, max_replicas=10)
    assert p.name == "warm-pool(hpa)"
    assert [s.key for s in p.signals] == ["concurrency:pod_mean:60s"]
    assert p.sync_period_s == 15.0
    assert p.replica_bounds == (1, 10)
    (spec,) = p.signals
    # 3 pods at 8 in flight each with a target of 4: the HPA wants ceil(3 x 2) = 6.
    d, state = p.decide(snap(spec, 0, 3, 8.0), p.initial_state())
    assert (d.desired_replicas, d.reason, d.standby_replicas) == (6, Reason.WARM_POOL_PROMOTE, 2)
    assert d.message.startswith("ScaleUp: ")
    assert d.message.endswith(
        "; promote 2 of 2 standby pod(s) at once, start 1 cold; refill the pool to 2 in the background"
    )
    assert isinstance(state, WarmPoolState)


def test_without_standby_pods_a_scale_up_is_a_plain_one() -> None:
    p = build(standby_replicas=2, target_per_replica=4, max_replicas=10)
    (spec,) = p.signals
    d, _ = p.decide(snap(spec, 0, 3, 8.0, standby=0), p.initial_state())
    assert (d.desired_replicas, d.reason, d.standby_replicas) == (6, Reason.SCALE_UP, 2)


def test_hold_and_no_data_keep_the_pool() -> None:
    p = build(standby_replicas=3, metric="queue_length", target_per_replica=10, max_replicas=10)
    (spec,) = p.signals
    assert spec.key == "queue_length:pod_mean:60s"
    d, _ = p.decide(snap(spec, 0, 3, None), p.initial_state())
    assert d.is_hold and d.reason is Reason.NO_DATA and d.standby_replicas == 3


def test_wraps_any_policy_kind() -> None:
    p = build(standby_replicas=1, active={"kind": "ray-serve", "max_replicas": 8, "upscale_delay_s": 0})
    assert p.name == "warm-pool(ray-serve)"
    assert p.sync_period_s == 1.0
    assert p.signal_keys == {p.signals[0]: "active.look_back_period_s"}
    d, _ = p.decide(snap(p.signals[0], 0, 2, 8.0, standby=1), p.initial_state())
    assert d == Decision(
        4,
        Reason.WARM_POOL_PROMOTE,
        "ScaleUp: 8 ongoing requests / 2 per replica = 4.00 replicas; from 2 running with factor 1 -> 4;"
        " promote 1 of 1 standby pod(s) at once, start 1 cold; refill the pool to 1 in the background",
        standby_replicas=1,
    )


def test_state_is_the_wrapped_policys() -> None:
    p = build(standby_replicas=1, active={"kind": "ray-serve", "max_replicas": 8})
    d, state = p.decide(snap(p.signals[0], 0, 2, 8.0), p.initial_state())
    assert (d.desired_replicas, d.reason) == (2, Reason.DELAY_PENDING)
    assert state.inner.tail == (None, 1)


def test_loads_through_the_registry() -> None:
    p = load_policy(
        {"kind": "warm-pool", "standby_replicas": 2, "target_per_replica": 4, "max_replicas": 6},
        "policy.yaml",
    )
    assert isinstance(p, WarmPoolPolicy)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"target_per_replica": 4, "max_replicas": 6},
            "policy.yaml: standby_replicas: required key is missing",
        ),
        (
            {"standby_replicas": 2, "max_replicas": 6},
            "policy.yaml: target_per_replica: required key is missing",
        ),
        (
            {"standby_replicas": 2, "target_per_replica": 4},
            "policy.yaml: max_replicas: required key is missing",
        ),
        (
            {"standby_replicas": 2, "target_per_replica": 4, "max_replicas": 6, "min_replicas": 7},
            "policy.yaml: min_replicas = 7: must be <= max_replicas (6)",
        ),
        (
            {"standby_replicas": 2, "active": {"kind": "ray-serve", "min_replicas": 9, "max_replicas": 3}},
            "policy.yaml: active.min_replicas = 9: must be <= max_replicas (3)",
        ),
        (
            {"standby_replicas": 2, "active": {"kind": "hpa"}},
            "policy.yaml: active.max_replicas: required key is missing",
        ),
        (
            {"standby_replicas": 2, "active": {"kind": "warm-pool", "standby_replicas": 1}},
            "policy.yaml: active.kind = 'warm-pool': a warm pool cannot wrap another warm pool",
        ),
        (
            {"standby_replicas": 2, "active": {"kind": "ray-serve"}, "target_per_replica": 3},
            "policy.yaml: target_per_replica = 3.0: a shorthand setting; not allowed with active",
        ),
        (
            {"standby_replicas": 0, "target_per_replica": 4, "max_replicas": 6},
            "policy.yaml: standby_replicas = 0: input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(**data)
    assert str(err.value) == message


def test_unknown_wrapped_kind() -> None:
    with pytest.raises(ConfigError) as err:
        build(standby_replicas=2, active={"kind": "magic"})
    assert str(err.value).startswith("policy.yaml: active = ")
    assert "unknown kind; allowed: " in str(err.value)
    assert "'warm-pool'" not in str(err.value)


def test_preset_loads() -> None:
    p = load_preset("warm-pool")
    assert isinstance(p, WarmPoolPolicy)
    assert (p.name, p.standby_replicas, p.replica_bounds) == ("warm-pool", 2, (2, 20))
