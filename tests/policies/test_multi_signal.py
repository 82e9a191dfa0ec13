"""``multi-signal``: seed 004's smoothed, banded, any-up / all-down rule over correlated signals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, Metric, MetricsSnapshot, Reason, SignalSpec, SignalValue
from gpuscale.policies.multi_signal import MultiSignalConfig, MultiSignalPolicy
from gpuscale.policies.registry import load_preset

SM = {"metric": "gpu_util", "window_s": 180, "scale_up_above": 40, "scale_down_below": 15}
MEM = {"metric": "gpu_memory_util", "window_s": 180, "scale_up_above": 85, "scale_down_below": 50}
P99 = {"metric": "latency_p99_ms", "window_s": 60, "scale_up_above": 500, "scale_down_below": 200}
QUEUE = {
    "metric": "queue_length",
    "aggregation": "total",
    "window_s": 60,
    "scale_up_above": 10,
    "scale_down_below": 2,
}


def policy(*signals: Mapping[str, Any], **overrides: object) -> MultiSignalPolicy:
    data = {
        "kind": "multi-signal",
        "max_replicas": 10,
        "signals": list(signals or (SM, MEM, P99, QUEUE)),
        **overrides,
    }
    return validate(MultiSignalConfig, data, "test").build()


def spec(p: MultiSignalPolicy, metric: str) -> SignalSpec:
    return next(s for s in p.signals if s.metric == Metric(metric))


def snap(
    p: MultiSignalPolicy,
    t: float,
    current: int,
    values: Mapping[str, float | None],
    *,
    starting: int = 0,
    ages: Mapping[str, float] | None = None,
) -> MetricsSnapshot:
    signals = {}
    for metric, v in values.items():
        age = (ages or {}).get(metric, 0.0)
        signals[spec(p, metric)] = SignalValue(v, age) if v is not None else SignalValue.missing("no samples")
    return MetricsSnapshot(
        time_s=t, current_replicas=current, ready=current - starting, starting=starting, signals=signals
    )


CALM = {"gpu_util": 30.0, "gpu_memory_util": 70.0, "latency_p99_ms": 300.0, "queue_length": 5.0}
IDLE = {"gpu_util": 5.0, "gpu_memory_util": 40.0, "latency_p99_ms": 120.0, "queue_length": 0.0}


def test_low_sm_utilization_with_high_latency_still_scales_up() -> None:
    # Memory-bandwidth bound: SM at 20 % (below its band), p99 at 900 ms over the 500 ms edge.
    p = policy()
    d, _ = p.decide(snap(p, 0, 3, {**CALM, "gpu_util": 20.0, "latency_p99_ms": 900.0}), p.initial_state())
    assert d == Decision(4, Reason.SCALE_UP, "latency_p99_ms 900 ms > 500: 3 + 1 = 4")


def test_the_largest_recommendation_of_the_signals_above_wins() -> None:
    # SM at 72 % over 4 pods with a 40 % target wants ceil(7.2) = 8; latency's step wants 5.
    p = policy()
    d, _ = p.decide(snap(p, 0, 4, {**CALM, "gpu_util": 72.0, "latency_p99_ms": 800.0}), p.initial_state())
    assert d == Decision(
        8,
        Reason.SCALE_UP,
        "gpu_util 72 % > 40: ceil(4 x 72 / 40) = 8; latency_p99_ms 800 ms > 500: 4 + 1 = 5",
    )


def test_a_total_is_sized_per_replica() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 2, {**CALM, "queue_length": 45.0}), p.initial_state())
    assert d == Decision(5, Reason.SCALE_UP, "queue_length 45 > 10: ceil(45 / 10) = 5")


def test_explicit_target_inside_the_band() -> None:
    p = policy({**SM, "target": 30})
    d, _ = p.decide(snap(p, 0, 3, {"gpu_util": 50.0}), p.initial_state())
    assert d == Decision(5, Reason.SCALE_UP, "gpu_util 50 % > 40: ceil(3 x 50 / 30) = 5")


def test_inside_the_band_nothing_moves() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 3, CALM), p.initial_state())
    assert d == Decision(
        3,
        Reason.WITHIN_TOLERANCE,
        "gpu_util 30 % inside its band; gpu_memory_util 70 % inside its band;"
        " latency_p99_ms 300 ms inside its band; queue_length 5 inside its band;"
        " within the hysteresis band -> keep 3",
    )


def test_hysteresis_no_flapping_inside_the_band() -> None:
    # SM utilization swings between 16 % and 39 % every tick (batches finishing and starting): always
    # inside the 15..40 band, so the count never moves in an hour.
    p = policy(SM)
    state = p.initial_state()
    counts = []
    for i in range(240):
        util = 39.0 if i % 2 else 16.0
        d, state = p.decide(snap(p, i * 15.0, 4, {"gpu_util": util}), state)
        counts.append(d.desired_replicas)
        assert d.reason is Reason.WITHIN_TOLERANCE
    assert set(counts) == {4}


def test_hysteresis_after_a_scale_up_the_count_holds() -> None:
    # A closed loop: per-pod SM utilization = 160 % spread over the pods. At 3 pods that is 53 % (above
    # 40): scale to ceil(3 x 53.3 / 40) = 4, where it is 40 %: inside the band, and it stays there.
    p = policy(SM)
    state, current = p.initial_state(), 3
    history = []
    for i in range(100):
        d, state = p.decide(snap(p, i * 15.0, current, {"gpu_util": 160.0 / current}), state)
        assert d.desired_replicas is not None
        current = d.desired_replicas
        history.append(current)
    assert history[0] == 4
    assert set(history[1:]) == {4}


def test_scale_down_needs_every_signal_below_its_band() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 4, {**IDLE, "latency_p99_ms": 300.0}), p.initial_state())
    assert (d.desired_replicas, d.reason) == (4, Reason.WITHIN_TOLERANCE)


def test_scale_down_when_all_are_below_after_the_stabilization_window() -> None:
    p = policy()
    state, current, changes = p.initial_state(), 4, []
    for i in range(40):
        t = i * 15.0
        values = CALM if t < 60 else IDLE
        d, state = p.decide(snap(p, t, current, values), state)
        assert d.desired_replicas is not None
        if d.desired_replicas != current:
            changes.append((t, d.desired_replicas, d.reason))
            current = d.desired_replicas
    # IDLE from t = 60; the t = 45 recommendation of 4 leaves the 300-s window at t = 345.
    # SM 5 % over 4 pods -> ceil(4 x 5 / 40) = 1; the step-sized latency wants 3: the larger (3) wins.
    assert changes[0] == (345.0, 3, Reason.SCALE_DOWN)


def test_scale_down_message_and_careful_choice() -> None:
    p = policy(scale_down_stabilization_s=0)
    d, _ = p.decide(snap(p, 0, 4, IDLE), p.initial_state())
    assert d == Decision(
        3,
        Reason.SCALE_DOWN,
        "all signals below their bands: gpu_util 5 % < 15: ceil(4 x 5 / 40) = 1;"
        " gpu_memory_util 40 % < 50: ceil(4 x 40 / 85) = 2; latency_p99_ms 120 ms < 200: 4 - 1 = 3;"
        " queue_length 0 < 2: ceil(0 / 10) = 0",
    )


def test_a_missing_signal_vetoes_scale_down_but_not_scale_up() -> None:
    p = policy(scale_down_stabilization_s=0)
    d, _ = p.decide(snap(p, 0, 4, {**IDLE, "gpu_memory_util": None}), p.initial_state())
    assert d.is_hold and d.reason is Reason.PARTIAL_DATA
    assert "gpu_memory_util:pod_mean:180s unusable" in d.message
    d, _ = p.decide(snap(p, 0, 4, {**CALM, "gpu_memory_util": None, "queue_length": 30.0}), p.initial_state())
    assert (d.desired_replicas, d.reason) == (4, Reason.DESIRED_WITHIN_RANGE)  # ceil(30 / 10) = 3 <= 4
    d, _ = p.decide(snap(p, 0, 2, {**CALM, "gpu_memory_util": None, "queue_length": 30.0}), p.initial_state())
    assert (d.desired_replicas, d.reason) == (3, Reason.SCALE_UP)


def test_no_usable_signal_holds() -> None:
    p = policy()
    state = p.initial_state()
    d, new_state = p.decide(snap(p, 0, 3, dict.fromkeys(CALM)), state)
    assert d.is_hold and d.reason is Reason.NO_DATA and new_state == state
    stale_ages = dict.fromkeys(CALM, 100.0)
    d, _ = p.decide(snap(p, 0, 3, CALM, ages=stale_ages), state)
    assert d.is_hold and d.reason is Reason.STALE_DATA


def test_a_latency_step_waits_for_starting_pods() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 4, {**CALM, "latency_p99_ms": 900.0}, starting=1), p.initial_state())
    assert d == Decision(
        4,
        Reason.SCALE_UP_LIMIT,
        "latency_p99_ms 900 ms > 500: 4 + 1 = 5;"
        " 1 pod(s) still starting, next step once they are ready -> keep 4",
    )


def test_bounds() -> None:
    p = policy(max_replicas=5)
    d, _ = p.decide(snap(p, 0, 4, {**CALM, "gpu_util": 90.0}), p.initial_state())
    assert (d.desired_replicas, d.reason) == (5, Reason.CLAMPED_TO_MAX)
    d, _ = p.decide(snap(p, 0, 0, dict.fromkeys(CALM)), p.initial_state())
    assert (d.desired_replicas, d.reason) == (1, Reason.CLAMPED_TO_MIN)


def test_declared_signals() -> None:
    p = policy()
    assert [s.key for s in p.signals] == [
        "gpu_util:pod_mean:180s",
        "gpu_memory_util:pod_mean:180s",
        "latency_p99_ms:pod_mean:60s",
        "queue_length:total:60s",
    ]
    assert p.signal_keys[p.signals[3]] == "signals[3].window_s"


def test_deterministic() -> None:
    p = policy()
    load: Callable[[int], dict[str, float]] = lambda i: {  # noqa: E731
        "gpu_util": 10 + (i * 7) % 60,
        "gpu_memory_util": 60.0,
        "latency_p99_ms": 100 + (i * 37) % 700,
        "queue_length": (i * 3) % 20,
    }

    def run() -> list[Decision]:
        state, current, out = p.initial_state(), 3, []
        for i in range(200):
            d, state = p.decide(snap(p, i * 15.0, current, load(i)), state)
            current = d.desired_replicas if d.desired_replicas is not None else current
            out.append(d)
        return out

    assert run() == run()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"signals": [{**SM, "scale_down_below": 40}]},
            "policy.yaml: signals[0].scale_down_below = 40.0: must be < scale_up_above (40); the gap is the"
            " hysteresis band",
        ),
        (
            {"signals": [SM, {**P99, "scale_down_below": 600}]},
            "policy.yaml: signals[1].scale_down_below = 600.0: must be < scale_up_above (500); the gap is the"
            " hysteresis band",
        ),
        ({"signals": [{**SM, "target": 50}]}, "policy.yaml: signals[0].target = 50.0: must be in (15, 40]"),
        (
            {"signals": [{**P99, "sizing": "proportional"}]},
            "policy.yaml: signals[0].sizing = 'proportional':"
            " latency does not fall in proportion to replicas; allowed for latency: step",
        ),
        (
            {"signals": []},
            "policy.yaml: signals = []: at least one signal is required",
        ),
        (
            {"signals": [SM], "min_replicas": 11},
            "policy.yaml: min_replicas = 11: must be <= max_replicas (10)",
        ),
        (
            {"signals": [{**SM, "window_s": 0}]},
            "policy.yaml: signals[0].window_s = 0: input should be greater than 0",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(MultiSignalConfig, {"kind": "multi-signal", "max_replicas": 10, **data}, "policy.yaml")
    assert str(err.value) == message


def test_signals_are_required() -> None:
    with pytest.raises(ConfigError) as err:
        validate(MultiSignalConfig, {"kind": "multi-signal", "max_replicas": 10}, "policy.yaml")
    assert str(err.value) == "policy.yaml: signals: required key is missing"


def test_preset_loads_and_scales_up_on_latency_alone() -> None:
    p = load_preset("multi-signal-gpu")
    assert isinstance(p, MultiSignalPolicy)
    values = {"gpu_util": 20.0, "gpu_memory_util": 70.0, "latency_p99_ms": 900.0, "queue_length": 4.0}
    d, _ = p.decide(snap(p, 0, 2, values), p.initial_state())
    assert (d.desired_replicas, d.reason) == (3, Reason.SCALE_UP)
