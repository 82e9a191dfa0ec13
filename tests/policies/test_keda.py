"""KEDA: activation on the polling interval, cooldown before zero, the generated HPA, fallback."""

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
from gpuscale.policies.keda import KedaConfig, KedaPolicy

QUEUE = SignalSpec(Metric.QUEUE_LENGTH, 60.0, Aggregation.TOTAL)
RATE = SignalSpec(Metric.REQUEST_RATE, 60.0, Aggregation.TOTAL)


def keda(**overrides: Any) -> KedaPolicy:
    data: dict[str, Any] = {"triggers": [{"metric": "queue_length", "threshold": 10}]}
    data.update(overrides)
    return validate(KedaConfig, data, "so.yaml").build()


def snap(t: float, current: int, value: float | None, spec: SignalSpec = QUEUE) -> MetricsSnapshot:
    sv = SignalValue(value) if value is not None else SignalValue.missing("prometheus: connection refused")
    return MetricsSnapshot(time_s=t, current_replicas=current, ready=current, signals={spec: sv})


def run(
    policy: KedaPolicy, value_at: Callable[[float], float | None], start: int, until_s: float
) -> dict[float, tuple[int, Decision]]:
    """Tick at the policy's period; returns t -> (replicas before the decision, decision)."""
    state = policy.initial_state()
    current, out, t = start, {}, 0.0
    while t <= until_s:
        decision, state = policy.decide(snap(t, current, value_at(t)), state)
        out[t] = (current, decision)
        if decision.desired_replicas is not None:
            current = decision.desired_replicas
        t += policy.sync_period_s
    return out


def replicas_at(timeline: dict[float, tuple[int, Decision]], t: float) -> int:
    before, d = timeline[t]
    return before if d.desired_replicas is None else d.desired_replicas


# ------------------------------------------------------------------------------------------ activation


def test_activation_from_zero_happens_on_a_poll_and_is_strict() -> None:
    policy = keda(triggers=[{"metric": "queue_length", "threshold": 10, "activation_threshold": 2}])
    state = policy.initial_state()
    d, state = policy.decide(snap(0, 0, 2.0), state)  # 2 is not > 2
    assert d.is_hold
    d, state = policy.decide(snap(15, 0, 5.0), state)  # active, but no poll until t=30
    assert d.is_hold
    d, state = policy.decide(snap(30, 0, 5.0), state)
    assert (d.desired_replicas, d.reason) == (1, Reason.ACTIVATION)
    assert "queue_length=5 (activation > 2)" in d.message


def test_activation_goes_to_min_replica_count() -> None:
    policy = keda(min_replica_count=3)
    d, _ = policy.decide(snap(0, 0, 1.0), policy.initial_state())
    assert d.desired_replicas == 3


def test_ticks_are_exact_for_both_clocks() -> None:
    assert keda().sync_period_s == 15  # gcd(30, 15)
    assert keda(polling_interval_s=10).sync_period_s == 5
    assert keda(polling_interval_s=7).sync_period_s == 1


# ---------------------------------------------------------------------------------- the generated HPA


def test_generated_hpa_divides_the_total_by_the_threshold() -> None:
    # 45 queued requests at a threshold of 10 per pod -> 5 pods; without a behavior the generated HPA
    # takes the legacy path, so from 1 pod it is capped at max(2 x 1, 4) = 4 first.
    timeline = run(keda(), lambda t: 45.0, start=1, until_s=30)
    assert timeline[0][1].desired_replicas == 4 and timeline[0][1].reason is Reason.SCALE_UP_LIMIT
    assert timeline[15][1].desired_replicas == 5
    assert "45 / 10 per pod -> 5 pods" in timeline[15][1].message
    assert timeline[30][1].reason is Reason.WITHIN_TOLERANCE  # 45 / (10 x 5) = 0.9


def test_behavior_passes_through_to_the_hpa() -> None:
    policy = keda(
        advanced={
            "horizontal_pod_autoscaler_config": {
                "behavior": {"scale_up": {"policies": [{"type": "Pods", "value": 1, "period_s": 60}]}}
            }
        }
    )
    d, _ = policy.decide(snap(0, 2, 100.0), policy.initial_state())
    assert (d.desired_replicas, d.reason) == (3, Reason.SCALE_UP_LIMIT)


def test_hpa_minimum_is_one_and_maximum_is_max_replica_count() -> None:
    policy = keda(max_replica_count=6)
    d, _ = policy.decide(snap(0, 8, 500.0), policy.initial_state())
    assert (d.desired_replicas, d.reason) == (6, Reason.TOO_MANY_REPLICAS)
    timeline = run(keda(), lambda t: 0.0 if t > 0 else 30.0, start=3, until_s=330)
    # Inactive from t=15: the HPA brings 3 pods down to its minimum of 1 once its 5-min window lets
    # go of the t=0 recommendation (t=315), never to 0; the operator does that after the cooldown.
    assert replicas_at(timeline, 300) == 3
    assert (timeline[315][1].desired_replicas, timeline[315][1].reason) == (1, Reason.TOO_FEW_REPLICAS)
    assert (timeline[330][1].desired_replicas, timeline[330][1].reason) == (0, Reason.SCALE_TO_ZERO)


def test_value_metric_type() -> None:
    policy = keda(triggers=[{"metric": "request_rate", "threshold": 100, "metric_type": "Value"}])
    d, _ = policy.decide(snap(0, 2, 400.0, RATE), policy.initial_state())
    assert d.desired_replicas == 4  # 400 / 100 x 2 ready pods = 8, capped at max(2 x 2, 4)


def test_multiple_triggers_take_the_max() -> None:
    policy = keda(
        triggers=[
            {"metric": "queue_length", "threshold": 10},
            {"metric": "request_rate", "threshold": 50},
        ]
    )
    state = policy.initial_state()
    signals = {QUEUE: SignalValue(20.0), RATE: SignalValue(300.0)}
    d, _ = policy.decide(MetricsSnapshot(0, 4, 4, signals=signals), state)
    assert d.desired_replicas == 6
    assert "(max: 6, trigger request_rate)" in d.message


# ---------------------------------------------------------------------------------------- cooldown


def test_scale_to_zero_only_after_the_cooldown_period() -> None:
    # One pod busy until t=100 (last active poll at t=90); inactive from the t=120 poll on. The
    # cooldown (300 s) is over strictly after t=390, so the t=420 poll scales to zero; every poll
    # before it says how long is left.
    timeline = run(keda(), lambda t: 3.0 if t < 100 else 0.0, start=1, until_s=600)
    assert all(replicas_at(timeline, t) == 1 for t in range(0, 420, 15))
    cooling = timeline[390][1]
    assert cooling.is_hold and cooling.reason is Reason.COOLDOWN
    assert "cooling down until after t=390 s (last active at t=90 s)" in cooling.message
    zero = timeline[420][1]
    assert (zero.desired_replicas, zero.reason) == (0, Reason.SCALE_TO_ZERO)
    assert replicas_at(timeline, 600) == 0


def test_cooldown_applies_only_to_one_to_zero() -> None:
    # N -> 1 is the HPA's business (its stabilization), not the cooldown's.
    policy = keda(cooldown_period_s=3600, min_replica_count=1)
    timeline = run(policy, lambda t: 100.0 if t < 15 else 0.0, start=10, until_s=330)
    assert replicas_at(timeline, 330) == 1


def test_never_active_scales_to_zero_after_the_initial_cooldown() -> None:
    timeline = run(keda(initial_cooldown_period_s=60), lambda t: 0.0, start=2, until_s=120)
    assert replicas_at(timeline, 60) == 1  # the HPA's minimum; creation + 60 s is not yet in the past
    assert timeline[60][1].reason is Reason.COOLDOWN
    assert timeline[90][1].desired_replicas == 0


def test_idle_replica_count() -> None:
    policy = keda(idle_replica_count=0, min_replica_count=2, cooldown_period_s=30)
    timeline = run(policy, lambda t: 5.0 if t < 60 else 0.0, start=0, until_s=210)
    assert timeline[0][1].desired_replicas == 2  # active: straight to min_replica_count
    assert replicas_at(timeline, 60) == 2
    assert replicas_at(timeline, 210) == 0


# ---------------------------------------------------------------------------------------- fallback


def test_fallback_after_failure_threshold_and_never_zero_while_erroring() -> None:
    # 2 pods serve a queue of 20; from t=30 Prometheus is unreachable. The HPA counts a failure per
    # sync; above failure_threshold (3) the metric is replaced by threshold x 6 and the HPA goes to 6.
    # The trigger is inactive (no value) for far longer than the cooldown, yet with a fallback set
    # KEDA never scales the target to zero while the trigger errors.
    policy = keda(fallback={"failure_threshold": 3, "replicas": 6}, cooldown_period_s=60)
    timeline = run(policy, lambda t: 20.0 if t < 30 else None, start=2, until_s=1200)
    assert timeline[30][1].reason is Reason.NO_DATA and "failure 1 in a row" in timeline[30][1].message
    assert timeline[60][1].is_hold  # 3 failures: not above the threshold yet
    fell_back = timeline[75][1]
    assert (fell_back.desired_replicas, fell_back.reason) == (4, Reason.SCALE_UP_LIMIT)  # cap 2 x 2
    assert "failing 4x > 3: fallback 6" in fell_back.message
    assert (timeline[90][1].desired_replicas, timeline[90][1].reason) == (6, Reason.FALLBACK)
    assert all(replicas_at(timeline, t) >= 2 for t in timeline)
    assert replicas_at(timeline, 1200) == 6


def test_without_fallback_an_erroring_trigger_holds() -> None:
    timeline = run(keda(cooldown_period_s=60), lambda t: 20.0 if t < 30 else None, start=2, until_s=900)
    assert all(replicas_at(timeline, t) == 2 for t in timeline)
    assert timeline[900][1].reason is Reason.NO_DATA


def test_recovered_trigger_resets_the_failure_count() -> None:
    policy = keda(fallback={"failure_threshold": 1, "replicas": 5})
    values = {0: 30.0, 15: None, 30: 30.0, 45: None}
    timeline = run(policy, lambda t: values.get(t, 30.0), start=3, until_s=60)
    assert timeline[45][1].is_hold  # failure 1 again, not 2


@pytest.mark.parametrize(
    ("behavior", "current", "expected"),
    [
        ("static", 2, 5),
        ("currentReplicas", 3, 3),
        ("currentReplicasIfHigher", 7, 7),
        ("currentReplicasIfLower", 7, 5),
    ],
)
def test_fallback_behaviors(behavior: str, current: int, expected: int) -> None:
    policy = keda(
        fallback={"failure_threshold": 0, "replicas": 5, "behavior": behavior},
        advanced={
            "horizontal_pod_autoscaler_config": {"behavior": {"scale_down": {"stabilization_window_s": 0}}}
        },
    )
    d, _ = policy.decide(snap(0, current, None), policy.initial_state())
    assert d.desired_replicas == expected


def test_stale_trigger_is_an_error() -> None:
    policy = keda()
    stale = MetricsSnapshot(0, 2, 2, signals={QUEUE: SignalValue(40.0, age_s=600.0)})
    d, _ = policy.decide(stale, policy.initial_state())
    assert d.is_hold and d.reason is Reason.STALE_DATA


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"min_replica_count": 5, "max_replica_count": 3}, "min_replica_count", "max_replica_count (3)"),
        ({"triggers": []}, "triggers", "at least one trigger"),
        ({"triggers": [{"metric": "queue_length"}]}, "triggers[0].threshold", "required key is missing"),
        (
            {"triggers": [{"metric": "queue_length", "threshold": 1, "window_s": 0}]},
            "triggers[0].window_s",
            "greater than 0",
        ),
        ({"idle_replica_count": 2, "min_replica_count": 1}, "idle_replica_count", "< min_replica_count (1)"),
        ({"polling_interval_s": 0}, "polling_interval_s", "greater than or equal to 1"),
        (
            {"fallback": {"failure_threshold": 3, "replicas": 500}},
            "fallback.replicas",
            "max_replica_count (100)",
        ),
    ],
)
def test_bad_config_names_the_key(overrides: dict[str, Any], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        keda(**overrides)
    assert err.value.key == key and allowed in err.value.allowed
