"""The HPA, sync by sync, against the behaviour the Kubernetes docs and controller source describe."""

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
    PodSample,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.hpa import HpaConfig, HpaPolicy, HpaState

GPU = SignalSpec(Metric.GPU_UTIL, 60.0)
QUEUE = SignalSpec(Metric.QUEUE_LENGTH, 60.0)
CPU = SignalSpec(Metric.CPU_UTIL, 60.0)


def hpa(**overrides: Any) -> HpaPolicy:
    data: dict[str, Any] = {
        "max_replicas": 100,
        "metrics": [
            {"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue", "average_value": 50}}
        ],
    }
    data.update(overrides)
    return validate(HpaConfig, data, "test.yaml").build()


def snap(
    t: float, current: int, signals: dict[SignalSpec, SignalValue], ready: int | None = None
) -> MetricsSnapshot:
    return MetricsSnapshot(
        time_s=t, current_replicas=current, ready=current if ready is None else ready, signals=signals
    )


def run(
    policy: HpaPolicy,
    value_at: Callable[[float, int], float],
    start: int,
    until_s: float,
    spec: SignalSpec = GPU,
) -> list[tuple[float, Decision]]:
    """Sync every 15 s; the target does what it is told at once (current = last desired).

    ``value_at(t, current)`` is the per-pod metric value at ``t`` with ``current`` pods.
    """
    state: HpaState = policy.initial_state()
    current = start
    out: list[tuple[float, Decision]] = []
    t = 0.0
    while t <= until_s:
        decision, state = policy.decide(snap(t, current, {spec: SignalValue(value_at(t, current))}), state)
        out.append((t, decision))
        if decision.desired_replicas is not None:
            current = decision.desired_replicas
        t += 15.0
    return out


def changes(timeline: list[tuple[float, Decision]], start: int) -> list[tuple[float, int]]:
    out, current = [], start
    for t, d in timeline:
        if d.desired_replicas is not None and d.desired_replicas != current:
            out.append((t, d.desired_replicas))
            current = d.desired_replicas
    return out


# --------------------------------------------------------------------------- upstream worked examples


def test_doc_scale_down_policies_80_72_64_and_the_pods_policy_below_40() -> None:
    # kubernetes.io HPA docs: scaleDown policies {Pods 4 per 60 s, Percent 10 per 60 s}, selectPolicy
    # Max, 80 replicas that need to go to 10. Percent allows 8 first (80 -> 72), then 7.2 rounded up
    # to 8 (72 -> 64), ...; at 40 or fewer the 4-pod policy allows as much or more, and below 31 it
    # dominates. One step per 60-s period; the 15-s syncs in between are ScaleDownLimit.
    policy = hpa(
        max_replicas=100,
        behavior={
            "scale_down": {
                "stabilization_window_s": 0,
                "policies": [
                    {"type": "Pods", "value": 4, "period_s": 60},
                    {"type": "Percent", "value": 10, "period_s": 60},
                ],
            }
        },
    )
    # A constant 500 units of work: 10 pods at the 50-per-pod target.
    timeline = run(policy, lambda t, n: 500.0 / n, start=80, until_s=900)
    steps = changes(timeline, 80)
    assert steps == [
        (0, 72),
        (60, 64),
        (120, 57),
        (180, 51),
        (240, 45),
        (300, 40),
        (360, 36),
        (420, 32),
        (480, 28),
        (540, 24),
        (600, 20),
        (660, 16),
        (720, 12),
        (780, 10),
    ]
    removed = [a - b for (_, a), (_, b) in zip([(0, 80), *steps], steps, strict=False)]
    assert removed[:6] == [8, 8, 7, 6, 6, 5]  # the Percent policy: 10 % rounded up
    assert all(r == 4 for r in removed[6:-1])  # the Pods policy from 40 down
    between = dict(timeline)[15]
    assert (between.desired_replicas, between.reason) == (72, Reason.SCALE_DOWN_LIMIT)
    assert "Pods 4 pods per 60 s, Percent 10 % per 60 s (select Max)" in between.message
    assert dict(timeline)[780].reason is Reason.SCALE_DOWN


def test_legacy_scale_up_cap_doubles_or_reaches_four_per_sync() -> None:
    # No behavior: the controller caps a scale-up at max(2 x current, 4) per sync (kubernetes#32304).
    policy = hpa()
    timeline = run(policy, lambda t, n: 100.0, start=1, until_s=60)
    first, second, third = (d for _, d in timeline[:3])
    assert (first.desired_replicas, first.reason) == (2, Reason.SCALE_UP)  # 1 x 100/50 = 2 <= 4
    assert (second.desired_replicas, second.reason) == (4, Reason.SCALE_UP)
    assert (third.desired_replicas, third.reason) == (8, Reason.SCALE_UP)
    capped = policy.decide(snap(0, 3, {GPU: SignalValue(500.0)}), policy.initial_state())[0]
    assert (capped.desired_replicas, capped.reason) == (6, Reason.SCALE_UP_LIMIT)
    assert "max(2 x 3, 4) = 6" in capped.message
    from_one = policy.decide(snap(0, 1, {GPU: SignalValue(500.0)}), policy.initial_state())[0]
    assert from_one.desired_replicas == 4


def test_legacy_stabilization_picks_the_max_recommendation_over_300_s() -> None:
    # Recommendations: 10 at t=0, 6 for t=15..105, 8 at t=120, 3 afterwards. With 10 running, the
    # count stays 10 while the t=0 recommendation is in the window (the legacy window includes its
    # edge), then follows the highest recommendation still inside it.
    per_pod = {0: 50.0, 120: 40.0}

    def value(t: float, current: int) -> float:
        if t in per_pod:
            return per_pod[t]
        return 30.0 if t < 120 else 15.0

    policy = hpa()
    timeline = run(policy, value, start=10, until_s=480)
    by_t = dict(timeline)
    assert all(by_t[t].desired_replicas == 10 for t in range(0, 301, 15))
    assert by_t[15].reason is Reason.SCALE_DOWN_STABILIZED
    assert "highest recommendation in the last 300 s is 10" in by_t[300].message
    assert by_t[315].desired_replicas == 8  # t=120's 8 pods now lead the window
    # current 8 afterwards: 8 x 15 / 50 -> 3 pods each sync; the 8 from t=120 stays until t=420.
    assert by_t[420].desired_replicas == 8
    assert (by_t[435].desired_replicas, by_t[435].reason) == (3, Reason.SCALE_DOWN)


def test_behavior_default_scale_down_window_is_300_s_exclusive() -> None:
    policy = hpa(behavior={})
    timeline = run(policy, lambda t, n: 50.0 if t == 0 else 10.0, start=10, until_s=330)
    by_t = dict(timeline)
    assert by_t[285].desired_replicas == 10 and by_t[285].reason is Reason.SCALE_DOWN_STABILIZED
    assert (by_t[300].desired_replicas, by_t[300].reason) == (2, Reason.SCALE_DOWN)  # 10 x 10/50


def test_behavior_default_scale_up_is_4_pods_or_100_percent_per_15_s() -> None:
    policy = hpa(behavior={})
    d = policy.decide(snap(0, 3, {GPU: SignalValue(500.0)}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (7, Reason.SCALE_UP_LIMIT)  # max(3 + 4, 2 x 3)
    d = policy.decide(snap(0, 10, {GPU: SignalValue(500.0)}), policy.initial_state())[0]
    assert d.desired_replicas == 20


def test_seed_001_behavior_four_pods_per_two_minutes_after_one_minute_window() -> None:
    # Seed 001: scaleUp window 60 s, Pods 4 per 120 s. Load jumps at t=0 so every recommendation asks
    # for 12; the up window (min over the last 60 s, strictly) keeps the pre-jump 2 from t=-15 until
    # t=45, when the first step adds 4; the next 4 come once that event is 120 s old, at t=165.
    policy = hpa(
        min_replicas=2,
        max_replicas=20,
        behavior={
            "scale_up": {
                "stabilization_window_s": 60,
                "policies": [{"type": "Pods", "value": 4, "period_s": 120}],
            },
            "scale_down": {
                "stabilization_window_s": 300,
                "policies": [{"type": "Pods", "value": 1, "period_s": 300}],
            },
        },
    )
    state = policy.initial_state()
    d, state = policy.decide(snap(-15, 2, {GPU: SignalValue(50.0)}), state)
    assert d.desired_replicas == 2
    current, steps = 2, []
    for t in range(0, 400, 15):
        d, state = policy.decide(snap(t, current, {GPU: SignalValue(300.0 * 2 / current)}), state)
        if d.desired_replicas != current:
            steps.append((t, d.desired_replicas, d.reason))
            current = d.desired_replicas or current
    assert steps[0] == (45, 6, Reason.SCALE_UP_LIMIT)
    assert steps[1] == (165, 10, Reason.SCALE_UP_LIMIT)
    assert steps[2][:2] == (285, 12)


# ----------------------------------------------------------------------------------------- tolerance


def test_within_tolerance_keeps_the_count() -> None:
    policy = hpa()
    d = policy.decide(snap(0, 4, {GPU: SignalValue(54.0)}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (4, Reason.WITHIN_TOLERANCE)
    assert "ratio 1.080, within tolerance" in d.message
    d = policy.decide(snap(0, 4, {GPU: SignalValue(56.0)}), policy.initial_state())[0]
    assert d.desired_replicas == 5  # ceil(4 x 1.12)


def test_per_direction_tolerance_from_behavior() -> None:
    policy = hpa(behavior={"scale_up": {"tolerance": 0.0}, "scale_down": {"tolerance": 0.5}})
    d = policy.decide(snap(0, 4, {GPU: SignalValue(51.0)}), policy.initial_state())[0]
    assert d.desired_replicas == 5
    d = policy.decide(snap(0, 4, {GPU: SignalValue(30.0)}), policy.initial_state())[0]
    assert d.reason is Reason.WITHIN_TOLERANCE


def test_message_carries_the_numbers() -> None:
    policy = hpa(
        metrics=[
            {"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue", "average_value": 40}}
        ]
    )
    d = policy.decide(snap(0, 3, {GPU: SignalValue(85.0)}), policy.initial_state())[0]
    assert d.message.startswith("Pods gpu_util: 3 pods x 85 % / 40 % target -> 7 pods")


# --------------------------------------------------------------------------- missing and unready pods


def pods(
    *values: float | None, ready: bool = True, running: bool = True, ready_for_s: float = 600.0
) -> list[PodSample]:
    return [PodSample(f"p{i}", v, ready, running, ready_for_s) for i, v in enumerate(values)]


def per_pod(samples: list[PodSample]) -> SignalValue:
    vals = [p.value for p in samples if p.value is not None]
    return SignalValue(sum(vals) / len(vals) if vals else None, per_pod=tuple(samples))


def test_missing_pod_assumed_idle_on_scale_up_can_cancel_it() -> None:
    # 3 pods at 60 (target 50) ask for more, but the 4th pod reports nothing: assumed at 0 the
    # average is 45, a scale-down, so the direction reverses and the count stays.
    policy = hpa()
    d = policy.decide(snap(0, 4, {GPU: per_pod(pods(60, 60, 60, None))}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (4, Reason.WITHIN_TOLERANCE)
    assert "1 missing" in d.message


def test_missing_pod_assumed_at_target_on_scale_down() -> None:
    # 3 pods at 20 of 50 -> ratio 0.4 would give 2; the missing pod at the target makes it
    # (60 + 50) / 4 = 27.5 -> ratio 0.55 x 4 pods -> 3.
    policy = hpa(behavior={"scale_down": {"stabilization_window_s": 0}})
    d = policy.decide(snap(0, 4, {GPU: per_pod(pods(20, 20, 20, None))}), policy.initial_state())[0]
    assert d.desired_replicas == 3


def test_non_cpu_metrics_use_not_ready_pods_and_cpu_ignores_them() -> None:
    samples = pods(100, 100) + pods(100, 100, ready=False)
    gpu = hpa()
    d = gpu.decide(snap(0, 4, {GPU: per_pod(samples)}), gpu.initial_state())[0]
    assert d.desired_replicas == 8  # 4 pods x 100/50: readiness is not checked for GPU util

    cpu = hpa(
        metrics=[
            {
                "type": "Resource",
                "resource": "cpu",
                "target": {"type": "Utilization", "average_utilization_percent": 50},
            }
        ]
    )
    d = cpu.decide(snap(0, 4, {CPU: per_pod(samples)}, ready=2), cpu.initial_state())[0]
    # CPU: the 2 unready pods are ignored, then on a scale-up assumed at 0 % -> 50 % average, ratio 1.
    assert (d.desired_replicas, d.reason) == (4, Reason.WITHIN_TOLERANCE)


def test_cpu_sample_covering_start_up_is_ignored() -> None:
    samples = pods(90, 90) + pods(300, ready_for_s=10.0)  # ready 10 s ago: its 60-s sample is start-up burn
    cpu = hpa(
        metrics=[
            {
                "type": "Resource",
                "resource": "cpu",
                "target": {"type": "Utilization", "average_utilization_percent": 50},
            }
        ]
    )
    d = cpu.decide(snap(0, 3, {CPU: per_pod(samples)}), cpu.initial_state())[0]
    # Without the young pod: 90 / 50 = 1.8; with it at 0: 60 / 50 = 1.2 x 3 pods -> 4.
    assert d.desired_replicas == 4


def test_pending_pods_count_as_unready_for_every_metric() -> None:
    samples = pods(100, 100) + pods(None, None, ready=False, running=False)
    policy = hpa()
    d = policy.decide(snap(0, 4, {GPU: per_pod(samples)}, ready=2), policy.initial_state())[0]
    # 2 pods at 100 / 50 -> ratio 2 on a scale-up; the 2 pending pods at 0 -> ratio 1 -> keep 4.
    assert (d.desired_replicas, d.reason) == (4, Reason.WITHIN_TOLERANCE)


def test_cpu_utilization_is_truncated_to_whole_percent() -> None:
    cpu = hpa(
        metrics=[
            {
                "type": "Resource",
                "resource": "cpu",
                "target": {"type": "Utilization", "average_utilization_percent": 80},
            }
        ]
    )
    # 88.9 % -> 88 %; 88 / 80 = 1.1 is still within the tolerance.
    d = cpu.decide(snap(0, 10, {CPU: SignalValue(88.9)}), cpu.initial_state())[0]
    assert d.reason is Reason.WITHIN_TOLERANCE


# ------------------------------------------------------------------------------------------- metrics


def test_multiple_metrics_take_the_max_proposal() -> None:
    policy = hpa(
        metrics=[
            {"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue", "average_value": 75}},
            {
                "type": "Pods",
                "metric": "queue_length",
                "target": {"type": "AverageValue", "average_value": 10},
            },
        ]
    )
    d = policy.decide(snap(0, 2, {GPU: SignalValue(30.0), QUEUE: SignalValue(25.0)}), policy.initial_state())[
        0
    ]
    assert d.desired_replicas == 4  # queue 2 x 25/10 = 5, capped at max(2x2, 4) = 4
    assert "(max: 5, Pods queue_length)" in d.message


def test_some_metrics_missing_block_a_scale_down_but_not_a_scale_up() -> None:
    policy = hpa(
        metrics=[
            {"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue", "average_value": 50}},
            {
                "type": "Pods",
                "metric": "queue_length",
                "target": {"type": "AverageValue", "average_value": 10},
            },
        ]
    )
    missing = SignalValue.missing("prometheus-adapter returned nothing")
    down = policy.decide(snap(0, 6, {GPU: SignalValue(10.0), QUEUE: missing}), policy.initial_state())[0]
    assert down.is_hold and down.reason is Reason.PARTIAL_DATA
    assert "prometheus-adapter returned nothing" in down.message
    up = policy.decide(snap(0, 2, {GPU: SignalValue(100.0), QUEUE: missing}), policy.initial_state())[0]
    assert up.desired_replicas == 4


def test_all_metrics_missing_or_stale_hold() -> None:
    policy = hpa()
    d = policy.decide(snap(0, 3, {GPU: SignalValue.missing("no samples")}), policy.initial_state())[0]
    assert d.is_hold and d.reason is Reason.NO_DATA
    d = policy.decide(snap(0, 3, {GPU: SignalValue(80.0, age_s=46.0)}), policy.initial_state())[0]
    assert d.is_hold and d.reason is Reason.STALE_DATA
    assert "46 s old (allowed <= 45 s)" in d.message


def test_external_average_value_is_total_over_target() -> None:
    policy = hpa(
        min_replicas=1,
        metrics=[
            {
                "type": "External",
                "metric": "queue_length",
                "target": {"type": "AverageValue", "average_value": 10},
            }
        ],
    )
    spec = SignalSpec(Metric.QUEUE_LENGTH, 60.0, Aggregation.TOTAL)
    d = policy.decide(snap(0, 4, {spec: SignalValue(65.0)}), policy.initial_state())[0]
    assert d.desired_replicas == 7
    # 45 / (10 x 5 pods) = 0.9: within tolerance.
    d = policy.decide(snap(0, 5, {spec: SignalValue(45.0)}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (5, Reason.WITHIN_TOLERANCE)


def test_object_value_scales_from_zero_with_min_replicas_zero() -> None:
    policy = hpa(
        min_replicas=0,
        metrics=[{"type": "Object", "metric": "request_rate", "target": {"type": "Value", "value": 100}}],
    )
    spec = SignalSpec(Metric.REQUEST_RATE, 60.0, Aggregation.TOTAL)
    d = policy.decide(snap(0, 0, {spec: SignalValue(250.0)}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (3, Reason.SCALE_UP)  # ceil(250/100) from zero
    d = policy.decide(snap(0, 2, {spec: SignalValue(300.0)}), policy.initial_state())[0]
    assert d.desired_replicas == 4  # 300/100 x 2 ready... capped by max(2x2, 4)


def test_latency_pods_metric_without_per_pod_samples_uses_ready_count() -> None:
    policy = hpa(
        metrics=[
            {
                "type": "Pods",
                "metric": "latency_p99_ms",
                "target": {"type": "AverageValue", "average_value": 50},
            }
        ]
    )
    spec = SignalSpec(Metric.LATENCY_P99_MS, 60.0)
    d = policy.decide(snap(0, 2, {spec: SignalValue(80.0)}), policy.initial_state())[0]
    assert d.desired_replicas == 4
    assert "2 pods x 80 ms / 50 ms target" in d.message


# ------------------------------------------------------------------------------------ bounds, zero


def test_out_of_range_counts_are_fixed_before_metrics_are_read() -> None:
    policy = hpa(min_replicas=2, max_replicas=20)
    no_data = {GPU: SignalValue.missing("down")}
    d = policy.decide(snap(0, 25, no_data), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (20, Reason.TOO_MANY_REPLICAS)
    d = policy.decide(snap(0, 1, no_data), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (2, Reason.TOO_FEW_REPLICAS)


def test_bounds_take_the_reason_when_they_bind_first() -> None:
    policy = hpa(min_replicas=2, max_replicas=5)
    d = policy.decide(snap(0, 4, {GPU: SignalValue(100.0)}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (5, Reason.TOO_MANY_REPLICAS)
    d = policy.decide(snap(0, 4, {GPU: SignalValue(1.0)}), policy.initial_state())[0]
    assert (d.desired_replicas, d.reason) == (2, Reason.TOO_FEW_REPLICAS)


def test_zero_replicas_with_min_above_zero_disables_scaling() -> None:
    policy = hpa(min_replicas=1)
    d = policy.decide(snap(0, 0, {GPU: SignalValue(99.0)}), policy.initial_state())[0]
    assert d.is_hold and d.reason is Reason.SCALING_DISABLED


def test_sync_period_and_signals() -> None:
    policy = hpa()
    assert policy.sync_period_s == 15
    assert policy.signals == (GPU,)
    assert policy.signal_keys[GPU] == "metrics[0].window_s"


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"min_replicas": 5, "max_replicas": 3}, "min_replicas", "must be <= max_replicas (3)"),
        ({"min_replicas": 0}, "min_replicas", "Object or External"),
        (
            {"metrics": [{"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue"}}]},
            "metrics[0].target.average_value",
            "required key is missing",
        ),
        (
            {"metrics": [{"type": "Pods", "metric": "gpu_util"}]},
            "metrics[0].target",
            "required key is missing",
        ),
        (
            {"metrics": [{"type": "Pods", "metric": "gpu_util", "target": {"type": "Value", "value": 3}}]},
            "metrics[0].target.type",
            "AverageValue",
        ),
        (
            {
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": "memory",
                        "target": {"type": "Utilization", "average_utilization_percent": 80},
                    }
                ]
            },
            "metrics[0].resource",
            "allowed: cpu",
        ),
        (
            {
                "metrics": [
                    {
                        "type": "Pods",
                        "metric": "gpu_util",
                        "window_s": 0,
                        "target": {"type": "AverageValue", "average_value": 1},
                    }
                ]
            },
            "metrics[0].window_s",
            "greater than 0",
        ),
        (
            {"behavior": {"scale_up": {"policies": [{"type": "Pods", "value": 4, "period_s": 3600}]}}},
            "behavior.scale_up.policies[0].period_s",
            "1800",
        ),
        ({"tolerance": -0.1}, "tolerance", "greater than or equal to 0"),
    ],
)
def test_bad_config_names_the_key(overrides: dict[str, Any], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        hpa(**overrides)
    assert err.value.key == key
    assert allowed in err.value.allowed


def test_default_metric_is_cpu_at_80_percent() -> None:
    policy = validate(HpaConfig, {"max_replicas": 5}, "x").build()
    assert policy.signals == (CPU,)
    assert policy.config.metrics[0].target.average_utilization_percent == 80


def test_rate_limit_reasons_are_the_hpas_condition_reasons() -> None:
    """The HPA's ScalingLimited condition says ScaleUpLimit / ScaleDownLimit (pkg/controller/podautoscaler)."""
    from gpuscale.policies.base import Reason

    assert Reason.SCALE_UP_LIMIT.value == "ScaleUpLimit"
    assert Reason.SCALE_DOWN_LIMIT.value == "ScaleDownLimit"
