"""The Knative Pod Autoscaler as timelines: windows, panic mode, rate limits, scale to zero."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.knative import Activity, KnativeConfig, KnativePolicy

STABLE = SignalSpec(Metric.CONCURRENCY, 60.0, Aggregation.TOTAL)
PANIC = SignalSpec(Metric.CONCURRENCY, 6.0, Aggregation.TOTAL)


def kpa(**overrides: Any) -> KnativePolicy:
    # target 10 in-flight requests per pod at 100 % utilization keeps the arithmetic readable.
    data: dict[str, Any] = {"target": 10, "target_utilization_percentage": 100}
    data.update(overrides)
    return validate(KnativeConfig, data, "test.yaml").build()


def snap(
    t: float, current: int, stable: float | None, panic: float | None, ready: int | None = None
) -> MetricsSnapshot:
    def val(x: float | None) -> SignalValue:
        return SignalValue(x, age_s=1.0) if x is not None else SignalValue.missing("no stats yet")

    return MetricsSnapshot(
        time_s=t,
        current_replicas=current,
        ready=current if ready is None else ready,
        signals={STABLE: val(stable), PANIC: val(panic)},
    )


def window_avg(load: Callable[[float], float], t: float, window_s: float) -> float:
    """The average of a load (total in-flight requests) over (t - window, t], at 1-s resolution."""
    n = int(window_s)
    return sum(load(t - k) for k in range(n)) / n


def run(
    policy: KnativePolicy,
    load: Callable[[float], float],
    start: int,
    until_s: float,
    startup_s: float = 0.0,
) -> dict[float, Decision]:
    """Tick every 2 s; signals are the load's windowed averages; a new pod is ready ``startup_s`` after
    it was asked for (scale-downs remove the newest pods first)."""
    state = policy.initial_state()
    ready_at: list[float] = [-1e9] * start
    out: dict[float, Decision] = {}
    t = 0.0
    while t <= until_s:
        ready = sum(1 for r in ready_at if r <= t)
        decision, state = policy.decide(
            snap(t, len(ready_at), window_avg(load, t, 60), window_avg(load, t, 6), ready=ready), state
        )
        out[t] = decision
        want = decision.desired_replicas
        if want is not None:
            ready_at = ready_at[:want] + [t + startup_s] * max(0, want - len(ready_at))
        t += 2.0
    return out


# ---------------------------------------------------------------------------------------- panic mode


def test_load_doubles_panic_holds_until_a_full_stable_window_passes() -> None:
    # 40 in-flight requests on 4 pods (target 10); new pods need 20 s to become ready. At t=60 s the
    # load doubles to 80. The 60-s stable average barely moves (-> 5 pods, still starting), but the
    # 6-s panic average reaches twice what the 4 ready pods take at t=64: the KPA enters panic mode
    # and asks for 8 at once. The surge ends at t=90, yet panic mode never scales down: it holds 8
    # until a full stable window (60 s) has passed since the load was last over the threshold (t=78,
    # the last tick before the 5th pod was ready).
    def load(t: float) -> float:
        return 80.0 if 60 <= t < 90 else 40.0

    timeline = run(kpa(), load, start=4, until_s=240, startup_s=20)
    assert all(timeline[t].desired_replicas == 4 for t in range(0, 60, 2))
    assert (timeline[60].desired_replicas, timeline[60].reason) == (5, Reason.SCALE_UP)
    entered = timeline[64]
    assert (entered.desired_replicas, entered.reason) == (8, Reason.SCALE_UP_PANIC)
    assert "entering panic mode (8 / 4 ready >= 200 %) -> 8" in entered.message
    assert timeline[66].desired_replicas == 8  # by t=66 s panic mode holds 8 replicas
    held = timeline[100]
    assert (held.desired_replicas, held.reason) == (8, Reason.PANIC_MODE)
    assert "no scale-down, holding 8 (wanted 6) until after t=138 s" in held.message
    assert all(timeline[t].reason is Reason.PANIC_MODE for t in range(66, 140, 2))
    after = timeline[140]
    assert (after.desired_replicas, after.reason) == (5, Reason.SCALE_DOWN)
    assert timeline[240].desired_replicas == 4


def test_panic_window_is_ten_percent_of_the_stable_window() -> None:
    policy = kpa(stable_window_s=120)
    assert policy.panic_window_s == 12
    assert policy.signals == (
        SignalSpec(Metric.CONCURRENCY, 120.0, Aggregation.TOTAL),
        SignalSpec(Metric.CONCURRENCY, 12.0, Aggregation.TOTAL),
    )
    assert policy.sync_period_s == 2


def test_panic_threshold_is_inclusive_at_200_percent() -> None:
    policy = kpa()
    d, state = policy.decide(snap(0, 2, 20, 40), policy.initial_state())
    assert d.reason is Reason.SCALE_UP_PANIC and state.panic_since_s == 0  # 4 / 2 = 2.0
    d, state = policy.decide(snap(0, 2, 20, 30), policy.initial_state())
    assert state.panic_since_s is None and d.desired_replicas == 2  # 3 / 2 = 1.5: stable mode


def test_restarted_autoscaler_starts_in_panic_with_more_than_one_pod() -> None:
    # After an autoscaler restart the metric history is empty; upstream starts in panic mode so the
    # empty windows cannot cause a knee-jerk scale-down.
    restarted = kpa(restarted=True)
    d, state = restarted.decide(snap(0, 5, 0.0, 0.0), restarted.initial_state())
    assert (d.desired_replicas, d.reason) == (5, Reason.PANIC_MODE)
    assert state.panic_since_s == 0 and state.max_panic_pods == 5
    fresh = kpa()
    d, _ = fresh.decide(snap(0, 5, 0.0, 0.0), fresh.initial_state())
    assert d.desired_replicas == 2  # floor(5 / 2): the scale-down rate limit
    one = kpa(restarted=True)
    _, state = one.decide(snap(0, 1, 0.0, 0.0), one.initial_state())
    assert state.panic_since_s is None


# --------------------------------------------------------------------------------------- rate limits


def test_max_scale_down_rate_halves_per_tick() -> None:
    policy = kpa(min_scale=1)
    timeline = run(policy, lambda t: 0.0, start=10, until_s=10)
    steps = [timeline[t] for t in (0, 2, 4, 6)]
    assert [d.desired_replicas for d in steps] == [5, 2, 1, 1]
    assert steps[0].reason is Reason.SCALE_DOWN_LIMIT
    assert "floor(10 / 2) -> 5" in steps[0].message


def test_max_scale_up_rate_limits_growth() -> None:
    policy = kpa(max_scale_up_rate=2)
    d, _ = policy.decide(snap(0, 2, 100.0, 100.0), policy.initial_state())
    # 100 / 10 = 10 pods wanted; ceil(2 x 2 ready) = 4 allowed (panic too: max(4, 4)).
    assert d.desired_replicas == 4
    d, _ = policy.decide(snap(0, 3, 40.0, 40.0), policy.initial_state())
    assert (d.desired_replicas, d.reason) == (4, Reason.SCALE_UP)


def test_default_max_scale_up_rate_is_effectively_unlimited() -> None:
    policy = kpa()
    d, _ = policy.decide(snap(0, 1, 5000.0, 5000.0), policy.initial_state())
    assert d.desired_replicas == 500


def test_unreachable_revision_has_no_scale_down_limit() -> None:
    policy = kpa(reachable=False, min_scale=1)
    d, _ = policy.decide(snap(0, 10, 0.0, 0.0), policy.initial_state())
    assert d.desired_replicas == 1


# ------------------------------------------------------------------------------------- scale to zero


def test_scale_to_zero_after_stable_window_and_grace_period() -> None:
    # One pod serves 5 in-flight requests until t=60; then nothing. The stable average reaches 0 at
    # t=120 (a full window later); the PA, active since t=0, is marked Inactive then, and the last
    # pod goes once it has been Inactive for the 30-s grace period: t=150.
    timeline = run(kpa(), lambda t: 5.0 if t < 60 else 0.0, start=1, until_s=200)
    assert all(timeline[t].desired_replicas == 1 for t in range(2, 120, 2))
    marked = timeline[120]
    assert marked.is_hold and marked.reason is Reason.SCALE_TO_ZERO_GRACE
    assert "marking inactive" in marked.message
    assert all(timeline[t].is_hold for t in range(122, 150, 2))
    zero = timeline[150]
    assert (zero.desired_replicas, zero.reason) == (0, Reason.SCALE_TO_ZERO)
    assert "grace 30 s" in zero.message


def test_recently_activated_revision_keeps_one_pod_for_a_stable_window() -> None:
    policy = kpa()
    state = policy.initial_state()
    _, state = policy.decide(snap(0, 1, 3.0, 3.0), state)
    assert state.activity is Activity.ACTIVE
    d, state = policy.decide(snap(30, 1, 0.0, 0.0), state)
    assert (d.desired_replicas, d.reason) == (1, Reason.SCALE_TO_ZERO_GRACE)
    assert "active for only 30 s" in d.message


def test_scale_to_zero_can_be_disabled() -> None:
    policy = kpa(enable_scale_to_zero=False)
    timeline = run(policy, lambda t: 0.0, start=1, until_s=300)
    assert all(d.desired_replicas == 1 for d in timeline.values())


def test_retention_period_extends_the_grace() -> None:
    timeline = run(kpa(scale_to_zero_pod_retention_period_s=90), lambda t: 5.0 if t < 60 else 0.0, 1, 260)
    assert timeline[150].is_hold
    assert timeline[210].desired_replicas == 0


def test_scale_from_zero_when_requests_arrive() -> None:
    policy = kpa()
    state = policy.initial_state()
    d, state = policy.decide(snap(0, 0, 0.0, 0.0), state)
    assert state.activity is Activity.INACTIVE
    d, state = policy.decide(snap(2, 0, 0.2, 2.0), state)
    assert (d.desired_replicas, d.reason) == (1, Reason.SCALE_FROM_ZERO)
    assert state.activity is Activity.ACTIVATING
    d, state = policy.decide(snap(60, 1, 3.0, 3.0), state)
    assert state.activity is Activity.ACTIVE and state.activity_since_s == 60


def test_activation_timeout_gives_up_after_progress_deadline() -> None:
    policy = kpa()
    state = policy.initial_state()
    _, state = policy.decide(snap(0, 0, 0.0, 0.0), state)
    _, state = policy.decide(snap(2, 0, 0.1, 5.0), state)  # wants a pod; it never gets ready
    d, state = policy.decide(snap(100, 1, 0.0, 0.0, ready=0), state)
    assert d.is_hold
    d, state = policy.decide(snap(632, 1, 0.0, 0.0, ready=0), state)
    assert (d.desired_replicas, d.reason) == (0, Reason.SCALE_TO_ZERO)
    assert "giving up" in d.message


# -------------------------------------------------------------------------------- delay, scale knobs


def test_scale_down_delay_keeps_the_max_over_the_delay() -> None:
    policy = kpa(scale_down_delay_s=30, min_scale=1)
    state = policy.initial_state()
    d, state = policy.decide(snap(0, 4, 40.0, 40.0), state)
    assert d.desired_replicas == 4
    d, state = policy.decide(snap(2, 4, 20.0, 20.0), state)
    assert (d.desired_replicas, d.reason) == (4, Reason.SCALE_DOWN_STABILIZED)
    d, state = policy.decide(snap(30, 4, 20.0, 20.0), state)
    assert d.desired_replicas == 2


def test_min_max_and_activation_scale() -> None:
    d, _ = kpa(max_scale=3).decide(snap(0, 2, 100.0, 30.0), kpa(max_scale=3).initial_state())
    assert (d.desired_replicas, d.reason) == (3, Reason.CLAMPED_TO_MAX)
    policy = kpa(activation_scale=3)
    d, _ = policy.decide(snap(0, 1, 1.0, 1.0), policy.initial_state())
    assert d.desired_replicas == 3


def test_initial_scale_raises_min_until_first_reached() -> None:
    policy = kpa(initial_scale=3)
    state = policy.initial_state()
    d, state = policy.decide(snap(0, 3, 0.0, 0.0, ready=1), state)
    assert (d.desired_replicas, d.reason) == (3, Reason.CLAMPED_TO_MIN)
    d, state = policy.decide(snap(2, 3, 0.0, 0.0, ready=3), state)
    assert state.initialized
    d, state = policy.decide(snap(4, 3, 0.0, 0.0), state)
    assert d.desired_replicas == 1  # floor(3 / 2): initial scale no longer applies


@pytest.mark.parametrize(
    ("overrides", "target"),
    [
        ({}, 70.0),  # container-concurrency-target-default 100 x 70 %
        ({"container_concurrency": 10}, 7.0),
        ({"container_concurrency": 10, "target": 50}, 7.0),  # min(target, CC) x 70 %
        ({"target": 5}, 3.5),
        ({"metric": "rps"}, 140.0),  # requests-per-second-target-default 200 x 70 %
        ({"target": 0.005, "target_utilization_percentage": 1}, 0.01),  # never below TargetMin
    ],
)
def test_target_resolution(overrides: dict[str, Any], target: float) -> None:
    policy = validate(KnativeConfig, overrides, "x").build()
    assert policy.target == pytest.approx(target)


def test_rps_metric_declares_request_rate_signals() -> None:
    policy = kpa(metric="rps")
    assert {s.metric for s in policy.signals} == {Metric.REQUEST_RATE}


def test_no_data_holds() -> None:
    policy = kpa()
    d, _ = policy.decide(snap(0, 3, None, None), policy.initial_state())
    assert d.is_hold and d.reason is Reason.NO_DATA
    d, _ = policy.decide(snap(0, 3, 30.0, None), policy.initial_state())
    assert d.is_hold and d.reason is Reason.NO_DATA  # the KPA needs both windows


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"min_scale": 5, "max_scale": 3}, "min_scale", "must be <= max_scale (3)"),
        ({"stable_window_s": 5}, "stable_window_s", "greater than or equal to 6"),
        ({"panic_threshold_percentage": 100}, "panic_threshold_percentage", "greater than or equal to 110"),
        ({"max_scale_down_rate": 1}, "max_scale_down_rate", "greater than 1"),
        ({"initial_scale": 0}, "initial_scale", "allow_zero_initial_scale"),
        ({"target": 0}, "target", "greater than 0"),
        ({"scale_to_zero_grace_period_s": 1}, "scale_to_zero_grace_period_s", "greater than or equal to 6"),
    ],
)
def test_bad_config_names_the_key(overrides: dict[str, Any], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(KnativeConfig, overrides, "k.yaml")
    assert err.value.key == key and allowed in err.value.allowed
