"""The safety tail (:mod:`gpuscale.policies.safety`): each stage's worked example, holds, the warm pool
and placeholders under the GPU budget, schedule windows, and a policy file carrying its own block."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.safety import SafetyConfig, ScheduleWindow
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
    SignalValue,
    StaticPolicy,
)
from gpuscale.policies.registry import load_policy
from gpuscale.policies.safety import SafePolicy, guard

QUEUE = SignalSpec(Metric.QUEUE_LENGTH, 60.0, Aggregation.TOTAL)


def snap(
    current: int, *, t: float = 1_000.0, queue: float | None = 5.0, standby_target: int = 0
) -> MetricsSnapshot:
    value = SignalValue(queue) if queue is not None else SignalValue.missing("scrape gap")
    return MetricsSnapshot(t, current, current, standby_target=standby_target, signals={QUEUE: value})


def written(decision: Decision, snapshot: MetricsSnapshot, **safety: object) -> Decision:
    config = SafetyConfig.model_validate({"min_replicas": 0, "max_replicas": 100, **safety})
    return guard(decision, snapshot, config, (QUEUE,))


def test_max_step_per_tick() -> None:
    out = written(Decision(10, Reason.SCALE_UP, "raw"), snap(2), max_step=3)
    assert (out.desired_replicas, out.reason, out.limits) == (5, Reason.SCALE_UP_LIMIT, ("ScaleUpLimit",))
    assert out.message == "raw; safety: at most 3 per tick from 2 -> 5"
    down = written(Decision(1, Reason.SCALE_DOWN, "raw"), snap(9), max_step=3)
    assert (down.desired_replicas, down.reason) == (6, Reason.SCALE_DOWN_LIMIT)


def test_gpu_budget_caps_the_active_count() -> None:
    out = written(Decision(5, Reason.SCALE_UP), snap(1), gpu_budget=10, gpus_per_pod=4)
    assert (out.desired_replicas, out.reason, out.limits) == (2, Reason.GPU_BUDGET, ("GpuBudget",))


def test_gpu_budget_shares_what_is_left_with_the_pool_then_the_placeholders() -> None:
    decision = Decision(10, Reason.SCALE_UP, standby_replicas=3, placeholder_pods=2)
    out = written(decision, snap(8), gpu_budget=12, gpus_per_pod=1)
    assert (out.desired_replicas, out.standby_replicas, out.placeholder_pods) == (10, 2, 0)
    assert out.reason is Reason.SCALE_UP  # the active count was not limited
    assert out.limits == ("GpuBudget", "GpuBudget")
    # A pool kept as it is (None) still counts: the snapshot's pool target.
    kept = written(Decision(10, Reason.SCALE_UP), snap(8, standby_target=4), gpu_budget=12)
    assert kept.standby_replicas == 2


def test_bounds_and_a_hold() -> None:
    hold = Decision.hold(Reason.WITHIN_TOLERANCE, "ratio 1.02")
    assert written(hold, snap(4), max_replicas=8) is hold  # nothing to do: the same decision
    over = written(hold, snap(12), max_replicas=8)  # a count above the maximum comes down on a hold
    assert (over.desired_replicas, over.reason) == (8, Reason.TOO_MANY_REPLICAS)
    under = written(Decision(0, Reason.SCALE_TO_ZERO), snap(2), min_replicas=1)
    assert (under.desired_replicas, under.reason) == (1, Reason.TOO_FEW_REPLICAS)


def test_fail_static_keeps_the_count_while_a_signal_is_missing() -> None:
    out = written(Decision(2, Reason.SCALE_DOWN, "raw"), snap(6, queue=None))
    assert (out.desired_replicas, out.reason, out.limits) == (6, Reason.NO_DATA, ("NoData",))
    assert "queue_length:total:60s missing" in out.message
    up = Decision(8, Reason.SCALE_UP)
    assert written(up, snap(6, queue=None)) is up


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def test_a_schedule_window_raises_the_minimum_while_open() -> None:
    window = ScheduleWindow(
        days=("mon", "tue", "wed", "thu", "fri"),
        start="08:00",
        end="20:00",
        timezone="Europe/Amsterdam",
        min_replicas=1,
    )
    zero = Decision(0, Reason.SCALE_TO_ZERO)
    monday_0830 = _epoch("2026-03-02T07:30:00+00:00")  # 08:30 in Amsterdam (UTC+1 in March)
    out = written(zero, snap(2, t=monday_0830), schedules=[window.model_dump()])
    assert (out.desired_replicas, out.reason, out.limits) == (1, Reason.SCHEDULED, ("Scheduled",))
    sunday = _epoch("2026-03-01T10:00:00+00:00")
    assert written(zero, snap(2, t=sunday), schedules=[window.model_dump()]) is zero


def test_a_schedule_maximum_wins_over_the_minimum() -> None:
    night = ScheduleWindow(start="22:00", end="06:00", max_replicas=0)
    out = written(Decision(3, Reason.SCALE_UP), snap(0, t=_epoch("2026-03-02T23:00:00+00:00")),
                  min_replicas=1, schedules=[night.model_dump()])  # fmt: skip
    assert (out.desired_replicas, out.reason) == (0, Reason.SCHEDULED)


def test_the_wrapper_keeps_the_inner_state_and_widens_bounds_for_schedules() -> None:
    window = ScheduleWindow(start="00:00", end="00:00", max_replicas=0)
    safe = SafePolicy(StaticPolicy(4), SafetyConfig(min_replicas=1, max_replicas=3, schedules=(window,)))
    assert safe.initial_state() == StaticPolicy(4).initial_state()
    assert safe.replica_bounds == (0, 3)
    assert safe.initial_replicas == 3


def test_a_policy_file_carries_its_own_safety_block() -> None:
    policy = load_policy({"kind": "static", "replicas": 20, "safety": {"max_replicas": 8}}, "policy.yaml")
    assert isinstance(policy, SafePolicy)
    decision, _ = policy.decide(snap(5), policy.initial_state())
    assert (decision.desired_replicas, decision.reason) == (8, Reason.TOO_MANY_REPLICAS)
    with pytest.raises(ConfigError) as err:
        load_policy({"kind": "static", "replicas": 2, "safety": {"max_replicas": 0}}, "policy.yaml")
    assert err.value.key == "safety.max_replicas"
