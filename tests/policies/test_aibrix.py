"""``aibrix-apa``: AIBrix's APA on KV-cache usage, tick by tick."""

from __future__ import annotations

from gpuscale.config.loading import validate
from gpuscale.policies.aibrix import AibrixApaConfig, AibrixApaPolicy, AibrixKpaConfig, AibrixKpaPolicy
from gpuscale.policies.base import Metric, MetricsSnapshot, Reason, SignalValue
from gpuscale.policies.conformance import check_policy
from gpuscale.policies.registry import load_preset


def policy(**overrides: object) -> AibrixApaPolicy:
    data = {"kind": "aibrix-apa", "target_value": 0.5, "max_replicas": 20, **overrides}
    return validate(AibrixApaConfig, data, "test").build()


def snap(p: AibrixApaPolicy, t: float, current: int, usage: float | None) -> MetricsSnapshot:
    value = SignalValue(usage) if usage is not None else SignalValue.missing("no series")
    return MetricsSnapshot(time_s=t, current_replicas=current, ready=current, signals={p.usage: value})


def test_timeline_asymmetric_tolerances_and_rate_limits() -> None:
    """Target 0.5, tolerances +0.1 / -0.2: 0.54 (x1.08) and 0.41 (x0.82) hold; 0.6 (x1.2) on 4 pods
    -> ceil(4.8) = 5; 1.0 on 5 pods -> ceil(10) = 10 = the 2x cap; 1.0 on 10 -> 20 (cap 20); 0.05 on
    20 -> ceil(2) = 2 but halving at most -> 10; 0.39 on 10 (x0.78) -> ceil(7.8) = 8."""
    p = policy()
    state = p.initial_state()
    steps = [
        (0, 4, 0.54, 4, Reason.WITHIN_TOLERANCE),
        (15, 4, 0.41, 4, Reason.WITHIN_TOLERANCE),
        (30, 4, 0.6, 5, Reason.SCALE_UP),
        (45, 5, 1.0, 10, Reason.SCALE_UP),
        (60, 10, 1.0, 20, Reason.SCALE_UP),
        (75, 20, 0.05, 10, Reason.SCALE_DOWN),
        (90, 10, 0.39, 8, Reason.SCALE_DOWN),
    ]
    for t, current, usage, want, reason in steps:
        d, state = p.decide(snap(p, t, current, usage), state)
        assert (d.desired_replicas, d.reason) == (want, reason), (t, d)
    d, _ = p.decide(snap(p, 105, 8, None), state)
    assert d.is_hold and d.reason is Reason.NO_DATA


def test_newer_defaults_wait_300_s_before_a_scale_down() -> None:
    p = policy(down_tolerance=0.1, scale_down_cooldown_s=300)
    state = p.initial_state()
    d, state = p.decide(snap(p, 0, 2, 1.0), state)
    assert d.desired_replicas == 4
    d, state = p.decide(snap(p, 15, 4, 0.1), state)
    assert d.desired_replicas == 4  # cooldown
    d, state = p.decide(snap(p, 300, 4, 0.1), state)
    assert d.desired_replicas == 2  # ceil(0.8) = 1, halving at most -> 2


def test_preset_and_conformance() -> None:
    p = load_preset("aibrix-apa-kv-cache")
    assert p.signals[0].metric is Metric.KV_CACHE_USAGE
    check_policy(p)
    check_policy(policy())


# ------------------------------------------------------------------------------------------------ KPA


def kpa(**overrides: object) -> AibrixKpaPolicy:
    data = {"kind": "aibrix-kpa", "target_value": 0.5, "max_replicas": 20, **overrides}
    return validate(AibrixKpaConfig, data, "test").build()


def kpa_snap(p: AibrixKpaPolicy, t: float, ready: int, stable: float, panic: float) -> MetricsSnapshot:
    return MetricsSnapshot(
        time_s=t,
        current_replicas=ready,
        ready=ready,
        signals={p.stable: SignalValue(stable), p.panic: SignalValue(panic)},
    )


def test_kpa_timeline_panic_holds_the_peak_for_a_stable_window() -> None:
    """Target 0.5 per pod on the summed KV usage, panic at 200 %.

    t=0: 0.9 summed on 2 pods -> ceil(1.8) = 2, stable. t=15: a burst, 2.4 in the panic window ->
    dppc 5 >= 2 x 2 ready: panic; max(dspc 3, dppc 5 capped at 2 x 2 = 4) -> 4. t=30, 60: the
    burst is over but panic lasts a stable window past t=15 and never scales down -> 4. t=90:
    75 < 90, panic ends -> ceil(0.8 / 0.5) = 2. t=105: 0.2 -> 1 (halving at most: floor(2/2) = 1)."""
    p = kpa()
    state = p.initial_state()
    steps = [
        (0, 2, 0.9, 0.9, 2, Reason.DESIRED_WITHIN_RANGE),
        (15, 2, 1.2, 2.4, 4, Reason.SCALE_UP_PANIC),
        (30, 4, 1.0, 2.0, 4, Reason.PANIC_MODE),
        (60, 4, 0.8, 0.8, 4, Reason.PANIC_MODE),
        (90, 4, 0.8, 0.8, 2, Reason.SCALE_DOWN),
        (105, 2, 0.2, 0.2, 1, Reason.SCALE_DOWN),
    ]
    for t, ready, stable, panic, want, reason in steps:
        d, state = p.decide(kpa_snap(p, t, ready, stable, panic), state)
        assert (d.desired_replicas, d.reason) == (want, reason), (t, d)
    assert state.panic_since_s is None and state.max_panic_pods == 0


def test_kpa_scale_down_delay_and_no_data() -> None:
    p = kpa(scale_down_delay_s=60)
    state = p.initial_state()
    d, state = p.decide(kpa_snap(p, 0, 4, 2.0, 2.0), state)
    assert d.desired_replicas == 4
    d, state = p.decide(kpa_snap(p, 15, 4, 0.5, 0.5), state)
    assert (d.desired_replicas, d.reason) == (4, Reason.SCALE_DOWN_STABILIZED)
    d, state = p.decide(kpa_snap(p, 75, 4, 0.5, 0.5), state)
    assert d.desired_replicas == 2  # 1 wanted, halving at most
    missing = MetricsSnapshot(time_s=90, current_replicas=2, ready=2)
    d, _ = p.decide(missing, state)
    assert d.is_hold and d.reason is Reason.NO_DATA


def test_kpa_preset_and_conformance() -> None:
    p = load_preset("aibrix-kpa-kv-cache")
    assert {s.metric for s in p.signals} == {Metric.KV_CACHE_USAGE}
    check_policy(p)
    check_policy(kpa(aggregation="pod_mean", scale_down_delay_s=30))
