"""``gpu-memory``: the thesis's threshold autoscaler on mean GPU memory utilization, as timelines."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalValue
from gpuscale.policies.gpu_memory import GpuMemoryConfig, GpuMemoryPolicy
from gpuscale.policies.registry import load_preset


def policy(**overrides: object) -> GpuMemoryPolicy:
    return validate(GpuMemoryConfig, {"kind": "gpu-memory", "max_replicas": 8, **overrides}, "test").build()


def snap(
    p: GpuMemoryPolicy,
    t: float,
    current: int,
    util: float | None,
    *,
    ready: int | None = None,
    age_s: float = 0,
) -> MetricsSnapshot:
    value = SignalValue(util, age_s) if util is not None else SignalValue.missing("no pods report")
    return MetricsSnapshot(
        time_s=t,
        current_replicas=current,
        ready=current if ready is None else ready,
        signals={p.memory: value},
    )


def run(
    p: GpuMemoryPolicy, util: Callable[[float, int], float], *, start: int, until_s: float
) -> list[tuple[float, int, Decision]]:
    """Tick every sync period; decisions apply at once; ``util(t, replicas)`` is the observed mean."""
    state = p.initial_state()
    current, t, out = start, 0.0, []
    while t <= until_s:
        d, state = p.decide(snap(p, t, current, util(t, current)), state)
        out.append((t, current, d))
        if d.desired_replicas is not None:
            current = d.desired_replicas
        t += p.sync_period_s
    return out


def test_above_the_threshold_adds_one_step() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 3, 86.0), p.initial_state())
    assert d == Decision(4, Reason.SCALE_UP, "mean GPU memory 86.0 % across 3 ready pod(s) > 80 %: 3 + 1 = 4")


def test_proportional_sizing() -> None:
    p = policy(sizing="proportional")
    d, _ = p.decide(snap(p, 0, 4, 90.0), p.initial_state())
    assert d == Decision(
        5, Reason.SCALE_UP, "mean GPU memory 90.0 % across 4 ready pod(s) > 80 %: ceil(4 x 90.0 / 80) = 5"
    )


def test_proportional_does_not_add_to_pods_already_starting() -> None:
    # 3 of 5 pods ready at 90 %: ceil(3 x 90 / 80) = 4 < the 5 already asked for.
    p = policy(sizing="proportional")
    d, _ = p.decide(snap(p, 0, 5, 90.0, ready=3), p.initial_state())
    assert (d.desired_replicas, d.reason) == (5, Reason.DESIRED_WITHIN_RANGE)


def test_inside_the_band_holds() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 3, 60.0), p.initial_state())
    assert d == Decision(
        3,
        Reason.WITHIN_TOLERANCE,
        "mean GPU memory 60.0 % across 3 ready pod(s) within [40 %, 80 %] -> keep 3",
    )


def test_below_the_lower_threshold_removes_one_step() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 3, 25.0), p.initial_state())
    assert d == Decision(
        2, Reason.SCALE_DOWN, "mean GPU memory 25.0 % across 3 ready pod(s) < 40 %: 3 - 1 = 2"
    )


def test_scale_up_cooldown_paces_the_steps() -> None:
    # Memory stays above the threshold: one step per 60-s cooldown (ticks every 15 s).
    p = policy()
    timeline = run(p, lambda t, n: 95.0, start=1, until_s=200)
    ups = [(t, d.desired_replicas) for t, n, d in timeline if d.desired_replicas != n]
    assert ups == [(0.0, 2), (60.0, 3), (120.0, 4), (180.0, 5)]
    t15 = timeline[1][2]
    assert t15 == Decision(
        2,
        Reason.COOLDOWN,
        "mean GPU memory 95.0 % across 2 ready pod(s) > 80 %: 2 + 1 = 3;"
        " scale-up cooldown: 45 s left of 60 s -> keep 2",
    )


def test_scale_down_waits_for_the_cooldown_after_a_scale_up() -> None:
    p = policy()

    def util(t: float, n: int) -> float:
        return 90.0 if t < 15 else 10.0

    timeline = run(p, util, start=2, until_s=700)
    changes = [(t, d.desired_replicas) for t, n, d in timeline if d.desired_replicas != n]
    # Up at t=0; the first scale-down only 300 s after that change, then one per 300 s, down to min 1.
    assert changes == [(0.0, 3), (300.0, 2), (600.0, 1)]


def test_a_caching_allocator_keeps_the_policy_from_scaling_down() -> None:
    # The allocator's high-water mark: once the pods reached 85 % they keep reporting 85 % after the
    # load is gone at t = 400. The policy keeps stepping up on the stale 85 % to the maximum and never
    # comes back down: the conservative behaviour is a property of the signal.
    p = policy()
    high_water = {"util": 0.0}

    def util(t: float, n: int) -> float:
        live = 85.0 if 100 <= t < 400 else 20.0
        high_water["util"] = max(high_water["util"], live)
        return high_water["util"]

    timeline = run(p, util, start=1, until_s=2000)
    after_load = [(n, d.desired_replicas) for t, n, d in timeline if t >= 400]
    assert all(desired is not None and desired >= n for n, desired in after_load)
    assert timeline[-1][2] == Decision(
        8,
        Reason.CLAMPED_TO_MAX,
        "mean GPU memory 85.0 % across 8 ready pod(s) > 80 %: 8 + 1 = 9; 9 is more than the maximum 8 -> 8",
    )


def test_max_bound_caps_the_steps() -> None:
    p = policy(max_replicas=2, scale_up_cooldown_s=0)
    d, _ = p.decide(snap(p, 0, 2, 95.0), p.initial_state())
    assert d == Decision(
        2,
        Reason.CLAMPED_TO_MAX,
        "mean GPU memory 95.0 % across 2 ready pod(s) > 80 %: 2 + 1 = 3; 3 is more than the maximum 2 -> 2",
    )


def test_outside_the_bounds_goes_to_the_bound_without_data() -> None:
    p = policy(min_replicas=2)
    d, _ = p.decide(snap(p, 0, 0, None), p.initial_state())
    assert d == Decision(2, Reason.CLAMPED_TO_MIN, "0 replicas; 0 is less than the minimum 2 -> 2")


def test_missing_memory_holds_with_no_data() -> None:
    p = policy()
    state = p.initial_state()
    d, new_state = p.decide(snap(p, 0, 3, None), state)
    assert d.is_hold and d.reason is Reason.NO_DATA
    assert new_state == state


def test_stale_memory_holds_with_stale_data() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, 3, 95.0, age_s=46), p.initial_state())
    assert d.is_hold and d.reason is Reason.STALE_DATA  # default: 3 sync periods = 45 s


def test_declares_its_signal() -> None:
    p = policy(window_s=120)
    assert [(s.metric.value, s.window_s, s.aggregation.value) for s in p.signals] == [
        ("gpu_memory_util", 120.0, "pod_mean")
    ]
    assert p.sync_period_s == 15.0
    assert p.replica_bounds == (1, 8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"scale_up_threshold_pct": 60, "scale_down_threshold_pct": 60},
            "policy.yaml: scale_down_threshold_pct = 60.0: must be < scale_up_threshold_pct (60)",
        ),
        (
            {"scale_up_threshold_pct": 50, "scale_down_threshold_pct": 70},
            "policy.yaml: scale_down_threshold_pct = 70.0: must be < scale_up_threshold_pct (50)",
        ),
        ({"min_replicas": 9}, "policy.yaml: min_replicas = 9: must be <= max_replicas (8)"),
        ({"min_replicas": 0}, "policy.yaml: min_replicas = 0: input should be greater than or equal to 1"),
        (
            {"scale_up_threshold_pct": 120},
            "policy.yaml: scale_up_threshold_pct = 120: input should be less than or equal to 100",
        ),
        (
            {"sizing": "exponential"},
            "policy.yaml: sizing = 'exponential': input should be 'step' or 'proportional'",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(GpuMemoryConfig, {"kind": "gpu-memory", "max_replicas": 8, **data}, "policy.yaml")
    assert str(err.value) == message


def test_max_replicas_is_required() -> None:
    with pytest.raises(ConfigError) as err:
        validate(GpuMemoryConfig, {"kind": "gpu-memory"}, "policy.yaml")
    assert str(err.value) == "policy.yaml: max_replicas: required key is missing"


def test_preset_loads() -> None:
    p = load_preset("gpu-memory-thesis")
    assert isinstance(p, GpuMemoryPolicy)
    assert (p.config.scale_up_threshold_pct, p.config.scale_down_threshold_pct) == (80.0, 40.0)
