"""Ray Serve's request-based autoscaler as timelines against upstream's documented behaviour.

Upstream: ``ray-project/ray`` ``python/ray/serve/autoscaling_policy.py`` (factors -> bounds -> delay
counter; cold-start fast path) and ``serve/config.py`` ``AutoscalingConfig`` (defaults). The policy
ticks every second here, so upstream's ``int(delay_s / period)`` is 30 ticks for the 30-s upscale
delay: a scale-up is applied on the 31st consecutive tick, 30 s after the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalValue
from gpuscale.policies.ray_serve import (
    UPSTREAM_CONTROL_LOOP_INTERVAL_S,
    RayServeConfig,
    RayServePolicy,
    RayServeState,
    apply_scaling_factors,
    cold_start_replicas,
    delay_ticks,
)
from gpuscale.policies.registry import load_preset


def policy(**overrides: object) -> RayServePolicy:
    return validate(RayServeConfig, {"kind": "ray-serve", **overrides}, "test").build()


def snap(
    p: RayServePolicy,
    t: float,
    *,
    target: int,
    ongoing: float | None,
    running: int | None = None,
    age_s: float = 0.0,
) -> MetricsSnapshot:
    value = SignalValue(ongoing, age_s) if ongoing is not None else SignalValue.missing("no scrape yet")
    return MetricsSnapshot(
        time_s=t,
        current_replicas=target,
        ready=target if running is None else running,
        signals={p.demand: value},
    )


def run(
    p: RayServePolicy, ongoing: Callable[[float], float], *, start: int, until_s: float
) -> list[tuple[float, Decision]]:
    """Tick every sync period; a decision's count becomes the running count at once."""
    state = p.initial_state()
    target, t, out = start, 0.0, []
    while t <= until_s:
        decision, state = p.decide(snap(p, t, target=target, ongoing=ongoing(t)), state)
        out.append((t, decision))
        if decision.desired_replicas is not None:
            target = decision.desired_replicas
        t += p.sync_period_s
    return out


def changes(timeline: list[tuple[float, Decision]], start: int) -> list[tuple[float, int, Reason]]:
    """(time, new count, reason) at each tick where the count changed."""
    out, current = [], start
    for t, d in timeline:
        if d.desired_replicas is not None and d.desired_replicas != current:
            out.append((t, d.desired_replicas, d.reason))
            current = d.desired_replicas
    return out


# --- the pieces, with upstream's worked numbers -------------------------------------------------


def test_delay_ticks_is_int_of_delay_over_period() -> None:
    assert delay_ticks(30, 0.1) == 300  # upstream: 300 consecutive 0.1-s loops
    assert delay_ticks(600, 0.1) == 6000
    assert delay_ticks(0.3, 0.1) == 3  # 0.3 / 0.1 is 2.9999999999999996 in binary
    assert delay_ticks(30, 1.0) == 30
    assert delay_ticks(0, 1.0) == 0


@pytest.mark.parametrize(
    ("desired", "running", "up", "down", "expected"),
    [
        (4.5, 2, 1.0, 1.0, 5),  # ceil(4.5)
        (4.5, 2, 0.5, 1.0, 4),  # ceil(2 + 0.5 x 2.5) = ceil(3.25)
        (1.2, 4, 1.0, 0.5, 3),  # ceil(4 - 0.5 x 2.8) = ceil(2.6)
        (2.0, 10, 1.0, 0.1, 9),  # ceil(10 - 0.8) = 10 would be stuck: one replica goes anyway
        (4.0, 4, 1.0, 1.0, 4),
        (3.5, 4, 1.0, 0.01, 4),  # ceil(3.5) = 4 is not below 4: no forced step
    ],
)
def test_scaling_factors(desired: float, running: int, up: float, down: float, expected: int) -> None:
    assert apply_scaling_factors(desired, running, up, down) == expected


def test_cold_start_replicas() -> None:
    assert cold_start_replicas(0, 1.0) == 1
    assert cold_start_replicas(0, 2.5) == 3
    assert cold_start_replicas(4, 1.0) == 4


# --- timelines ----------------------------------------------------------------------------------


def test_upscale_waits_for_the_upscale_delay() -> None:
    # 2 replicas at 2 ongoing each; at t = 0 the load jumps to 8 ongoing -> 4 replicas wanted.
    p = policy(min_replicas=1, max_replicas=10)
    timeline = run(p, lambda t: 8.0, start=2, until_s=40)
    for t, d in timeline[:30]:
        assert (d.desired_replicas, d.reason) == (2, Reason.DELAY_PENDING), t
    t30 = timeline[30]
    assert t30[0] == 30.0
    assert t30[1] == Decision(
        4,
        Reason.SCALE_UP,
        "8 ongoing requests / 2 per replica = 4.00 replicas; from 2 running with factor 1 -> 4",
    )
    assert changes(timeline, 2) == [(30.0, 4, Reason.SCALE_UP)]
    # After the change the recommendation equals the target: nothing more happens.
    assert all(d.desired_replicas == 4 and d.reason is Reason.DESIRED_WITHIN_RANGE for _, d in timeline[31:])


def test_pending_message_counts_the_ticks() -> None:
    p = policy(max_replicas=10)
    d, state = p.decide(snap(p, 0, target=2, ongoing=8), p.initial_state())
    assert d == Decision(
        2,
        Reason.DELAY_PENDING,
        "8 ongoing requests / 2 per replica = 4.00 replicas; from 2 running with factor 1 -> 4;"
        " scale-up to 4 waits: recommended 1 tick(s) in a row, needs 31 (30 s at 1 s per tick) -> keep 2",
    )
    assert state == RayServeState(tail=(None, 1), deployed=True)


def test_downscale_waits_for_the_downscale_delay() -> None:
    # 6 replicas, load falls to 4 ongoing -> 2 wanted; applied 600 s after the first such tick.
    p = policy(max_replicas=10)
    timeline = run(p, lambda t: 4.0, start=6, until_s=700)
    assert changes(timeline, 6) == [(600.0, 2, Reason.SCALE_DOWN)]
    assert timeline[599][1].reason is Reason.DELAY_PENDING


def test_direction_change_resets_the_counter() -> None:
    # Up-pressure for 20 s, one quiet tick at t = 20 (recommendation = target), then up again:
    # the scale-up needs a fresh 31 ticks from t = 21, i.e. lands at t = 51, not t = 30.
    p = policy(max_replicas=10)

    def load(t: float) -> float:
        return 4.0 if t == 20.0 else 8.0

    assert changes(run(p, load, start=2, until_s=80), 2) == [(51.0, 4, Reason.SCALE_UP)]


def test_a_scale_down_tick_restarts_an_upscale_wait() -> None:
    # One scale-down recommendation in the middle of the up-pressure flips the counter negative.
    p = policy(max_replicas=10)

    def load(t: float) -> float:
        return 1.0 if t == 10.0 else 8.0

    assert changes(run(p, load, start=2, until_s=60), 2) == [(41.0, 4, Reason.SCALE_UP)]


def test_zero_fast_path_scales_up_at_once() -> None:
    p = policy(min_replicas=0, max_replicas=10)
    d, state = p.decide(snap(p, 0, target=0, ongoing=0.4), p.initial_state())
    assert d == Decision(
        1,
        Reason.SCALE_FROM_ZERO,
        "cold start: 0.4 ongoing requests and no running replica -> max(ceil(1 x 1), target 0) = 1, no delay",
    )
    assert state.tail == p.initial_state().tail  # the delay counter is untouched


def test_zero_fast_path_uses_the_upscaling_factor_and_bounds() -> None:
    p = policy(min_replicas=0, max_replicas=2, upscaling_factor=3.0)
    d, _ = p.decide(snap(p, 0, target=0, ongoing=5), p.initial_state())
    assert (d.desired_replicas, d.reason) == (2, Reason.CLAMPED_TO_MAX)


def test_zero_running_while_replicas_start_does_not_cascade() -> None:
    # Target already 3, none running yet: the fast path keeps the target instead of adding more.
    p = policy(min_replicas=0, max_replicas=10)
    d, _ = p.decide(snap(p, 5, target=3, running=0, ongoing=12), p.initial_state())
    assert (d.desired_replicas, d.reason) == (3, Reason.DESIRED_WITHIN_RANGE)


def test_idle_at_zero_holds() -> None:
    p = policy(min_replicas=0, max_replicas=10)
    d, _ = p.decide(snap(p, 0, target=0, ongoing=0), p.initial_state())
    assert d == Decision.hold(
        Reason.DESIRED_WITHIN_RANGE, "no running replica and no ongoing request; target 0"
    )


def test_to_zero_uses_its_own_delay() -> None:
    # 3 replicas, then no load at all: 3 -> 1 after downscale_delay_s (the non-zero step stops at 1),
    # then 1 -> 0 after downscale_to_zero_delay_s more.
    p = policy(min_replicas=0, max_replicas=10, downscale_delay_s=60, downscale_to_zero_delay_s=120)
    timeline = run(p, lambda t: 0.0, start=3, until_s=400)
    assert changes(timeline, 3) == [(60.0, 1, Reason.SCALE_DOWN), (181.0, 0, Reason.SCALE_DOWN)]


def test_to_zero_falls_back_to_the_downscale_delay() -> None:
    p = policy(min_replicas=0, max_replicas=10, downscale_delay_s=30)
    timeline = run(p, lambda t: 0.0, start=1, until_s=100)
    assert changes(timeline, 1) == [(30.0, 0, Reason.SCALE_DOWN)]


def test_min_replicas_keeps_the_last_replica() -> None:
    p = policy(min_replicas=1, max_replicas=10, downscale_delay_s=10)
    timeline = run(p, lambda t: 0.0, start=3, until_s=100)
    assert changes(timeline, 3) == [(10.0, 1, Reason.CLAMPED_TO_MIN)]
    assert timeline[-1][1] == Decision(
        1,
        Reason.CLAMPED_TO_MIN,
        "0 ongoing requests / 2 per replica = 0.00 replicas; from 1 running with factor 1 -> 0;"
        " 0 is less than the minimum 1 -> 1",
    )


def test_bounds_before_delay() -> None:
    # 40 ongoing wants 20 replicas; the maximum 5 is what waits out the delay and is applied.
    p = policy(max_replicas=5, upscale_delay_s=3)
    timeline = run(p, lambda t: 40.0, start=1, until_s=10)
    assert changes(timeline, 1) == [(3.0, 5, Reason.CLAMPED_TO_MAX)]


def test_zero_delay_applies_at_once() -> None:
    p = policy(max_replicas=10, upscale_delay_s=0)
    d, _ = p.decide(snap(p, 0, target=2, ongoing=8), p.initial_state())
    assert (d.desired_replicas, d.reason) == (4, Reason.SCALE_UP)


def test_factor_computed_from_running_not_target() -> None:
    # Target 6 with 2 running (4 still starting), 8 ongoing -> 4 wanted from running: below the target,
    # so this is a scale-down recommendation and it waits.
    p = policy(max_replicas=10)
    d, state = p.decide(snap(p, 0, target=6, running=2, ongoing=8), p.initial_state())
    assert (d.desired_replicas, d.reason) == (6, Reason.DELAY_PENDING)
    assert state.tail[1] == -1


def test_missing_demand_holds_with_no_data() -> None:
    p = policy()
    state = p.initial_state()
    d, new_state = p.decide(snap(p, 0, target=2, ongoing=None), state)
    assert d.is_hold and d.reason is Reason.NO_DATA
    assert new_state.tail == state.tail


def test_stale_demand_holds_with_stale_data() -> None:
    p = policy()
    d, _ = p.decide(snap(p, 0, target=2, ongoing=8, age_s=25), p.initial_state())
    assert d.is_hold and d.reason is Reason.STALE_DATA
    assert "25 s old" in d.message


def test_initial_replicas_on_the_first_tick_only() -> None:
    p = policy(min_replicas=0, max_replicas=10, initial_replicas=3)
    state = p.initial_state()
    d, state = p.decide(snap(p, 0, target=0, ongoing=None), state)
    assert d == Decision(3, Reason.SCALE_UP, "deployed at initial_replicas 3")
    d, state = p.decide(snap(p, 1, target=3, ongoing=0), state)
    assert (d.desired_replicas, d.reason) == (3, Reason.DELAY_PENDING)  # the 600-s downscale delay runs
    assert state.tail[1] == -1


def test_defaults_are_upstreams() -> None:
    cfg = RayServeConfig()
    assert (cfg.target_ongoing_requests, cfg.look_back_period_s) == (2.0, 30.0)
    assert (cfg.upscale_delay_s, cfg.downscale_delay_s, cfg.downscale_to_zero_delay_s) == (30.0, 600.0, None)
    assert (cfg.upscaling_factor, cfg.downscaling_factor, cfg.min_replicas) == (1.0, 1.0, 1)
    p = cfg.build()
    assert p.signals == (p.demand,)
    assert p.demand.window_s == 30.0
    assert p.sync_period_s == 1.0
    assert p.max_signal_age_s == 20.0
    assert p.replica_bounds == (1, 100)
    assert p.name == "ray-serve"


def test_upstream_control_period_counts_the_same_seconds() -> None:
    p = policy(max_replicas=10, sync_period_s=UPSTREAM_CONTROL_LOOP_INTERVAL_S)
    state = p.initial_state()
    t, target = 0.0, 2
    applied_at = None
    for i in range(400):
        t = round(i * 0.1, 1)
        d, state = p.decide(snap(p, t, target=target, ongoing=8), state)
        if d.desired_replicas != target:
            applied_at = t
            break
    assert applied_at == 30.0  # 301st loop at 0.1 s


def test_deterministic() -> None:
    p = policy(max_replicas=10)

    def load(t: float) -> float:
        return 6 + 5 * math.sin(t / 40)

    assert run(p, load, start=2, until_s=600) == run(p, load, start=2, until_s=600)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"upscale_delay_s": -1}, "upscale_delay_s"),
        ({"upscaling_factor": 0}, "upscaling_factor"),
        ({"sync_period_s": 0}, "sync_period_s"),
        ({"look_back_period_s": -5}, "look_back_period_s"),
        ({"smoothing_factor": 1}, "smoothing_factor"),
        ({"initial_replicas": 200}, "initial_replicas"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(RayServeConfig, {"kind": "ray-serve", **data}, "policy.yaml")
    assert err.value.key == key
    assert f"policy.yaml: {key}" in str(err.value)


def test_min_above_max_message() -> None:
    with pytest.raises(ConfigError) as err:
        validate(RayServeConfig, {"kind": "ray-serve", "min_replicas": 5, "max_replicas": 2}, "policy.yaml")
    assert str(err.value) == "policy.yaml: min_replicas = 5: must be <= max_replicas (2)"


@pytest.mark.parametrize(("preset", "target"), [("ray-serve", 2.0), ("ray-serve-llm", 16.0)])
def test_presets_load(preset: str, target: float) -> None:
    p = load_preset(preset)
    assert isinstance(p, RayServePolicy)
    assert p.name == preset
    assert p.config.target_ongoing_requests == target
