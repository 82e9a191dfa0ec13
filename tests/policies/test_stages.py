"""Each stage of the shared tail on its own, then the pipeline that strings them together."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuscale.policies.base import Metric, MetricsSnapshot, Reason, SignalSpec, SignalValue
from gpuscale.policies.stages import (
    Bounds,
    Cooldown,
    LegacyScaleUpCap,
    LegacyStabilization,
    Pipeline,
    PolicyType,
    RateLimit,
    Recommendation,
    ScaleDownDelay,
    ScaleEvent,
    ScaleEvents,
    ScaleToZeroGrace,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    Stabilization,
    Tolerance,
    ToleranceStage,
    check_signals,
    scale_down_limit,
    scale_up_limit,
    to_decision,
)


def snap(t: float, current: int, **signals: SignalValue) -> MetricsSnapshot:
    specs = {SignalSpec(Metric(k), 60.0): v for k, v in signals.items()}
    return MetricsSnapshot(time_s=t, current_replicas=current, ready=current, signals=specs)


def rec(n: int, reason: Reason = Reason.SCALE_UP, ratio: float | None = None) -> Recommendation:
    return Recommendation(n, reason, f"raw {n}", ratio)


# ---------------------------------------------------------------------------------------------- data


def test_no_signal_usable_holds_with_no_data() -> None:
    spec = SignalSpec(Metric.GPU_UTIL, 60.0)
    check = check_signals(snap(0, 3, gpu_util=SignalValue.missing("scrape failed")), [spec], 45.0)
    assert check.hold is not None and check.hold.is_hold
    assert check.hold.reason is Reason.NO_DATA
    assert "scrape failed" in check.hold.message


def test_old_samples_hold_with_stale_data() -> None:
    spec = SignalSpec(Metric.GPU_UTIL, 60.0)
    check = check_signals(snap(0, 3, gpu_util=SignalValue(50.0, age_s=120.0)), [spec], 45.0)
    assert check.hold is not None and check.hold.reason is Reason.STALE_DATA
    assert "120 s old" in check.hold.message and "45 s" in check.hold.message
    assert check.stale == (spec,)


def test_one_usable_signal_is_enough_unless_all_are_required() -> None:
    a, b = SignalSpec(Metric.GPU_UTIL, 60.0), SignalSpec(Metric.QUEUE_LENGTH, 60.0)
    s = snap(0, 3, gpu_util=SignalValue(50.0), queue_length=SignalValue.missing("none"))
    relaxed = check_signals(s, [a, b], 45.0)
    assert relaxed.hold is None and relaxed.values == {a: 50.0} and relaxed.missing == (b,)
    strict = check_signals(s, [a, b], 45.0, require_all=True)
    assert strict.hold is not None and strict.hold.reason is Reason.NO_DATA


def test_a_signal_the_source_did_not_collect_counts_as_missing() -> None:
    spec = SignalSpec(Metric.CONCURRENCY, 6.0)
    check = check_signals(snap(0, 1), [spec], 6.0)
    assert check.hold is not None and "was not collected" in check.hold.message


# ----------------------------------------------------------------------------------------- tolerance


@pytest.mark.parametrize(
    ("ratio", "within"), [(1.0, True), (1.1, True), (0.9, True), (1.1001, False), (0.8999, False)]
)
def test_tolerance_is_inclusive_at_the_band_edges(ratio: float, within: bool) -> None:
    assert Tolerance(0.1, 0.1).is_within(ratio) is within


def test_tolerance_per_direction() -> None:
    tol = Tolerance(up=0.0, down=0.5)  # scale up on any excess, down only when half idle
    assert not tol.is_within(1.01)
    assert tol.is_within(0.6)
    assert not tol.is_within(0.49)


def test_tolerance_stage_keeps_current_count_inside_the_band() -> None:
    stage = ToleranceStage(Tolerance())
    out, _ = stage.apply(rec(5, ratio=1.08), snap(0, 4), None)
    assert (out.replicas, out.reason) == (4, Reason.WITHIN_TOLERANCE)
    out, _ = stage.apply(rec(5, ratio=1.25), snap(0, 4), None)
    assert (out.replicas, out.reason) == (5, Reason.SCALE_UP)
    out, _ = stage.apply(rec(5), snap(0, 4), None)  # no ratio: nothing to judge
    assert out.replicas == 5


# ------------------------------------------------------------------------------------- stabilization


def test_behavior_stabilization_scales_down_only_to_the_highest_recent_recommendation() -> None:
    stage = Stabilization(up_window_s=0, down_window_s=300)
    state = stage.initial_state()
    out, state = stage.apply(rec(10, Reason.DESIRED_WITHIN_RANGE), snap(0, 10), state)
    assert out.replicas == 10
    out, state = stage.apply(rec(4, Reason.SCALE_DOWN), snap(15, 10), state)
    assert (out.replicas, out.reason) == (10, Reason.SCALE_DOWN_STABILIZED)
    assert "highest recommendation in the last 300 s is 10" in out.message
    # Upstream counts a recommendation while its time is strictly after now - window: the t=0 one
    # leaves at t=300 exactly.
    out, state = stage.apply(rec(4, Reason.SCALE_DOWN), snap(300, 10), state)
    assert out.replicas == 4


def test_behavior_stabilization_scales_up_only_to_the_lowest_recent_recommendation() -> None:
    stage = Stabilization(up_window_s=60, down_window_s=0)
    state = stage.initial_state()
    _, state = stage.apply(rec(3, Reason.DESIRED_WITHIN_RANGE), snap(0, 3), state)
    out, state = stage.apply(rec(8), snap(15, 3), state)
    assert (out.replicas, out.reason) == (3, Reason.SCALE_UP_STABILIZED)
    out, state = stage.apply(rec(9), snap(30, 3), state)
    assert out.replicas == 3
    out, state = stage.apply(rec(9), snap(60, 3), state)  # t=0 left the window; lowest is 8
    assert out.replicas == 8


def test_behavior_stabilization_never_moves_against_the_recommendation() -> None:
    # clamp(current, up, down): a recommendation above current never yields a scale-down.
    stage = Stabilization(up_window_s=300, down_window_s=300)
    state = stage.initial_state()
    _, state = stage.apply(rec(2, Reason.SCALE_DOWN), snap(0, 5), state)
    out, _ = stage.apply(rec(7), snap(15, 5), state)
    assert out.replicas == 5


def test_legacy_stabilization_is_the_max_over_the_window_inclusive() -> None:
    stage = LegacyStabilization(300)
    state = stage.initial_state()
    _, state = stage.apply(rec(10), snap(0, 5), state)
    out, state = stage.apply(rec(3, Reason.SCALE_DOWN), snap(300, 5), state)
    assert (out.replicas, out.reason) == (10, Reason.SCALE_DOWN_STABILIZED)  # t=0 still counts
    out, state = stage.apply(rec(3, Reason.SCALE_DOWN), snap(315, 5), state)
    assert out.replicas == 3
    # Unlike the behavior path it is not limited by the current count.
    _, state = stage.apply(rec(12), snap(330, 5), state)
    out, _ = stage.apply(rec(6, Reason.SCALE_DOWN), snap(345, 5), state)
    assert out.replicas == 12


def test_stabilization_history_is_pruned() -> None:
    stage = Stabilization(0, 60)
    state = stage.initial_state()
    for t in range(0, 3600, 15):
        _, state = stage.apply(rec(4), snap(t, 4), state)
    assert len(state) <= 5


# -------------------------------------------------------------------------------------------- bounds


def test_bounds_clamp_with_configurable_reasons() -> None:
    out, _ = Bounds(2, 10).apply(rec(12), snap(0, 5), None)
    assert (out.replicas, out.reason) == (10, Reason.CLAMPED_TO_MAX)
    out, _ = Bounds(2, 10, Reason.TOO_FEW_REPLICAS, Reason.TOO_MANY_REPLICAS).apply(rec(1), snap(0, 5), None)
    assert (out.replicas, out.reason) == (2, Reason.TOO_FEW_REPLICAS)
    assert "less than the minimum 2" in out.message


def test_bounds_reject_min_above_max() -> None:
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        Bounds(5, 3)


# --------------------------------------------------------------------------------------- rate limits

UP_DEFAULT = ScalingRules(
    0, (ScalingPolicy(PolicyType.PODS, 4, 15), ScalingPolicy(PolicyType.PERCENT, 100, 15)), SelectPolicy.MAX
)
DOWN_DOC = ScalingRules(
    0, (ScalingPolicy(PolicyType.PODS, 4, 60), ScalingPolicy(PolicyType.PERCENT, 10, 60)), SelectPolicy.MAX
)


def test_scale_up_limit_takes_the_largest_proposal_by_default() -> None:
    # 3 pods: Pods 4 -> 7, Percent 100 -> 6; Max -> 7. 10 pods: 14 vs 20 -> 20.
    assert scale_up_limit(3, ScaleEvents(), UP_DEFAULT, 0) == 7
    assert scale_up_limit(10, ScaleEvents(), UP_DEFAULT, 0) == 20


def test_percent_scale_up_rounds_up_so_one_pod_can_grow() -> None:
    rules = ScalingRules(0, (ScalingPolicy(PolicyType.PERCENT, 10, 60),))
    assert scale_up_limit(1, ScaleEvents(), rules, 0) == 2  # ceil(1.1)


def test_percent_scale_down_truncates() -> None:
    rules = ScalingRules(0, (ScalingPolicy(PolicyType.PERCENT, 10, 60),))
    assert scale_down_limit(80, ScaleEvents(), rules, 0) == 72
    assert scale_down_limit(7, ScaleEvents(), rules, 0) == 6  # int(6.3)


def test_select_min_and_disabled() -> None:
    low = ScalingRules(0, UP_DEFAULT.policies, SelectPolicy.MIN)
    assert scale_up_limit(10, ScaleEvents(), low, 0) == 14
    assert scale_down_limit(80, ScaleEvents(), ScalingRules(0, DOWN_DOC.policies, SelectPolicy.MIN), 0) == 76
    off = ScalingRules(0, UP_DEFAULT.policies, SelectPolicy.DISABLED)
    assert scale_up_limit(10, ScaleEvents(), off, 0) == 10
    assert scale_down_limit(10, ScaleEvents(), off, 0) == 10


def test_period_start_undoes_the_changes_made_within_the_period() -> None:
    # 10 running after +4 at t=20 and -1 at t=40: at t=50 the period (60 s) started at 10 - 4 + 1 = 7,
    # so Pods 4 allows 11.
    events = ScaleEvents(up=(ScaleEvent(20, 4),), down=(ScaleEvent(40, 1),))
    rules = ScalingRules(0, (ScalingPolicy(PolicyType.PODS, 4, 60),))
    assert scale_up_limit(10, events, rules, 50) == 11
    # An event exactly one period old no longer counts (upstream: strictly after now - period).
    assert scale_up_limit(10, events, rules, 80) == 10 - 0 + 1 + 4


def test_used_up_allowance_never_forces_a_scale_down() -> None:
    events = ScaleEvents(up=(ScaleEvent(0, 8),))
    rules = ScalingRules(0, (ScalingPolicy(PolicyType.PODS, 2, 60),))
    assert scale_up_limit(10, events, rules, 10) == 10  # period start 2 + 2 = 4, but never below current


def test_rate_limit_stage_records_the_final_change_in_settle() -> None:
    stage = RateLimit(UP_DEFAULT, DOWN_DOC)
    state = stage.initial_state()
    s0 = snap(0, 3)
    out, state = stage.apply(rec(20), s0, state)
    assert (out.replicas, out.reason) == (7, Reason.SCALE_UP_LIMIT)
    assert "Pods 4 pods per 15 s" in out.message
    state = stage.settle(out.becomes(6, Reason.CLAMPED_TO_MAX, "later stage"), s0, state)
    assert state.up == (ScaleEvent(0, 3),)  # what was finally decided, not what the stage proposed


@given(
    current=st.integers(1, 500),
    value=st.integers(1, 200),
    up=st.booleans(),
)
def test_percent_limits_always_allow_at_least_one_pod_of_change(current: int, value: int, up: bool) -> None:
    rules = ScalingRules(0, (ScalingPolicy(PolicyType.PERCENT, value, 60),))
    # Upstream rounds the scale-up proposal up and truncates the scale-down one, so even 1 % of 1 pod
    # moves by a whole pod: no policy can get stuck below one pod of change.
    if up:
        assert scale_up_limit(current, ScaleEvents(), rules, 0) >= current + 1
    else:
        assert scale_down_limit(current, ScaleEvents(), rules, 0) <= current - 1


def test_legacy_cap_is_twice_current_or_four() -> None:
    cap = LegacyScaleUpCap()
    for current, limit in [(0, 4), (1, 4), (2, 4), (3, 6), (10, 20)]:
        out, _ = cap.apply(rec(1000), snap(0, current), None)
        assert (out.replicas, out.reason) == (limit, Reason.SCALE_UP_LIMIT)
    out, _ = cap.apply(rec(5), snap(0, 3), None)
    assert out.replicas == 5


# ----------------------------------------------------------------------------- delays, zero, cooldown


def test_scale_down_delay_holds_the_highest_recent_count() -> None:
    stage = ScaleDownDelay(60)
    state = stage.initial_state()
    _, state = stage.apply(rec(5), snap(0, 5), state)
    _, state = stage.apply(rec(5), snap(2, 5), state)
    out, state = stage.apply(rec(2, Reason.SCALE_DOWN), snap(4, 5), state)
    assert (out.replicas, out.reason) == (5, Reason.SCALE_DOWN_STABILIZED)
    out, state = stage.apply(rec(2, Reason.SCALE_DOWN), snap(62, 5), state)
    assert out.replicas == 2
    out, state = stage.apply(rec(9), snap(64, 2), state)  # scale-ups pass at once
    assert out.replicas == 9


def test_scale_to_zero_waits_for_the_grace_period() -> None:
    stage = ScaleToZeroGrace(30)
    state = stage.initial_state()
    out, state = stage.apply(rec(0, Reason.SCALE_DOWN), snap(100, 3), state)
    assert (out.replicas, out.reason) == (1, Reason.SCALE_TO_ZERO_GRACE)
    out, state = stage.apply(rec(0, Reason.SCALE_DOWN), snap(128, 1), state)
    assert out.replicas == 1
    out, state = stage.apply(rec(0, Reason.SCALE_DOWN), snap(130, 1), state)
    assert (out.replicas, out.reason) == (0, Reason.SCALE_TO_ZERO)


def test_scale_to_zero_grace_restarts_after_any_demand() -> None:
    stage = ScaleToZeroGrace(30)
    state = stage.initial_state()
    _, state = stage.apply(rec(0), snap(0, 1), state)
    _, state = stage.apply(rec(1), snap(20, 1), state)
    out, state = stage.apply(rec(0), snap(40, 1), state)
    assert out.replicas == 1 and state.zero_since_s == 40


def test_cooldown_blocks_same_direction_and_down_after_up() -> None:
    stage = Cooldown(up_s=60, down_s=120)
    state = stage.initial_state()
    s0 = snap(0, 2)
    out, state = stage.apply(rec(4), s0, state)
    state = stage.settle(out, s0, state)
    out, state = stage.apply(rec(6), snap(30, 4), state)
    assert (out.replicas, out.reason) == (4, Reason.COOLDOWN)
    out, state = stage.apply(rec(6), snap(60, 4), state)
    assert out.replicas == 6
    out, state = stage.apply(rec(1, Reason.SCALE_DOWN), snap(100, 4), state)
    assert (out.replicas, out.reason) == (4, Reason.COOLDOWN)
    out, state = stage.apply(rec(1, Reason.SCALE_DOWN), snap(120, 4), state)
    assert out.replicas == 1


# ------------------------------------------------------------------------------------------ pipeline


def test_pipeline_runs_stages_in_order_and_explains_itself() -> None:
    tail = Pipeline((LegacyStabilization(300), Bounds(1, 10), LegacyScaleUpCap()))
    state = tail.initial_state()
    out, state = tail.run(
        Recommendation(30, Reason.SCALE_UP, "3 pods x 85 % / 10 % -> 30"), snap(0, 3), state
    )
    assert (out.replicas, out.reason) == (6, Reason.SCALE_UP_LIMIT)
    assert out.message.startswith("3 pods x 85 % / 10 % -> 30; 30 is more than the maximum 10 -> 10; ")
    decision = to_decision(out)
    assert (decision.desired_replicas, decision.reason) == (6, Reason.SCALE_UP_LIMIT)


def test_pipeline_settle_feeds_final_result_to_every_stage() -> None:
    tail = Pipeline((Bounds(1, 10), Cooldown(up_s=60)))
    state = tail.initial_state()
    out, state = tail.run(rec(5), snap(0, 2), state)
    assert state[1].last_up_s == 0
    out, _ = tail.run(rec(8), snap(15, 5), state)
    assert out.reason is Reason.COOLDOWN


def test_pipeline_state_must_match_its_stages() -> None:
    with pytest.raises(ValueError, match="2 stages"):
        Pipeline((Bounds(0, 1), Cooldown())).apply(rec(1), snap(0, 1), ())


def test_recommendation_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        Recommendation(-1, Reason.SCALE_DOWN)
