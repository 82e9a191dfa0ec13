"""The HPA, KEDA and the Knative KPA decide through :class:`TailedPolicy`'s one ``decide``.

Each writes its raw recommendation and its own stages; the signal check, the out-of-bounds rule, the
tail's run and its settling are the shared ones. These tests fail when a family grows its own
``decide`` again, or when the shared steps it relies on change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gpuscale.config.loading import validate
from gpuscale.policies import stages
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.hpa import HpaConfig, HpaPolicy, HpaTailedPolicy
from gpuscale.policies.keda import KedaConfig, KedaPolicy
from gpuscale.policies.knative import KnativeConfig, KnativePolicy
from gpuscale.policies.stages import (
    Bounds,
    Pipeline,
    PipelineState,
    RateLimit,
    Recommendation,
    SignalCheck,
    TailedPolicy,
)

GPU = SignalSpec(Metric.GPU_UTIL, 60.0)
QUEUE = SignalSpec(Metric.QUEUE_LENGTH, 60.0, Aggregation.TOTAL)


def hpa(**overrides: Any) -> HpaPolicy:
    data: dict[str, Any] = {
        "max_replicas": 10,
        "metrics": [
            {"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue", "average_value": 50}}
        ],
    }
    data.update(overrides)
    return validate(HpaConfig, data, "test.yaml").build()


def keda(**overrides: Any) -> KedaPolicy:
    data: dict[str, Any] = {
        "max_replica_count": 10,
        "triggers": [{"metric": "queue_length", "threshold": 10}],
    }
    data.update(overrides)
    return validate(KedaConfig, data, "test.yaml").build()


def kpa(**overrides: Any) -> KnativePolicy:
    data: dict[str, Any] = {"target": 10, "target_utilization_percentage": 100}
    data.update(overrides)
    return validate(KnativeConfig, data, "test.yaml").build()


FAMILIES: dict[str, Callable[[], Any]] = {"hpa": hpa, "keda": keda, "knative": kpa}


def snap(
    policy: Any, t: float, current: int, value: float | None, ready: int | None = None
) -> MetricsSnapshot:
    sv = SignalValue(value) if value is not None else SignalValue.missing("no samples")
    return MetricsSnapshot(
        time_s=t,
        current_replicas=current,
        ready=current if ready is None else ready,
        signals=dict.fromkeys(policy.signals, sv),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_inherits_decide_from_tailed_policy(family: str) -> None:
    policy = FAMILIES[family]()
    assert isinstance(policy, TailedPolicy)
    # No class between the family and TailedPolicy defines its own decide (the prelude is not copied).
    for cls in type(policy).__mro__:
        if cls is TailedPolicy:
            break
        assert "decide" not in vars(cls), f"{cls.__name__} defines its own decide"
    assert type(policy).decide is TailedPolicy.decide


@pytest.mark.parametrize("family", FAMILIES)
def test_decide_goes_through_the_shared_signal_check_and_tail(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = FAMILIES[family]()
    checks: list[tuple[SignalSpec, ...]] = []
    applied: list[Recommendation] = []
    settled: list[Recommendation] = []
    real_check, real_apply, real_settle = stages.check_signals, Pipeline.apply, Pipeline.settle

    def check_signals(snapshot: MetricsSnapshot, specs: Any, max_age_s: float, **kw: Any) -> SignalCheck:
        checks.append(tuple(specs))
        return real_check(snapshot, specs, max_age_s, **kw)

    def apply(self: Pipeline, rec: Recommendation, *args: Any) -> tuple[Recommendation, PipelineState]:
        applied.append(rec)
        return real_apply(self, rec, *args)

    def settle(self: Pipeline, final: Recommendation, *args: Any) -> PipelineState:
        settled.append(final)
        return real_settle(self, final, *args)

    monkeypatch.setattr(stages, "check_signals", check_signals)
    monkeypatch.setattr(Pipeline, "apply", apply)
    monkeypatch.setattr(Pipeline, "settle", settle)

    state = policy.initial_state()
    decision, state = policy.decide(snap(policy, 0.0, 2, 70.0), state)

    assert checks == [policy.signals]  # once per tick, the shared check
    assert len(applied) == 1 and len(settled) == 1  # the raw recommendation ran through the tail
    assert decision.desired_replicas is not None and decision.desired_replicas > 2
    assert state.tail != () and state.tail is not None


def test_the_hpa_rescales_to_its_bounds_before_any_metric_and_the_rate_limit_counts_it() -> None:
    policy = hpa(behavior={"scale_up": {"policies": [{"type": "Pods", "value": 1, "period_s": 60}]}})
    assert isinstance(policy, HpaTailedPolicy)
    state = policy.initial_state()
    d, state = policy.decide(snap(policy, 0.0, 12, None), state)  # no data: the bound comes first
    assert d == Decision(
        10, Reason.TOO_MANY_REPLICAS, "current 12 replicas above max_replicas -> 10 (before metrics)"
    )
    rate_limit = next(i for i, s in enumerate(policy.tail.stages) if isinstance(s, RateLimit))
    assert [e.change for e in state.tail[rate_limit].down] == [2]
    stabilization_history = state.tail[0]
    assert stabilization_history == ()  # settled on, not run through


def test_keda_clamps_to_its_generated_hpa_bounds_not_its_replica_bounds() -> None:
    policy = keda(min_replica_count=3, idle_replica_count=0)
    assert policy.replica_bounds == (0, 10)
    assert policy.tail.bounds == Bounds(3, 10, Reason.TOO_FEW_REPLICAS, Reason.TOO_MANY_REPLICAS)
    state = policy.initial_state()
    # Inactive at t = 0: the operator holds 2 (cooling down). The HPA's sync at t = 15 s, between
    # polls, brings 2 up to its own minimum 3, though 2 is within the policy's replica_bounds.
    d, state = policy.decide(snap(policy, 0.0, 2, 0.0), state)
    assert d.is_hold and d.reason is Reason.COOLDOWN
    d, _ = policy.decide(snap(policy, 15.0, 2, 0.0), state)
    assert d == Decision(
        3, Reason.TOO_FEW_REPLICAS, "current 2 replicas below min_replicas -> 3 (before metrics)"
    )


def test_knative_initial_scale_raises_the_tails_minimum_until_reached() -> None:
    policy = kpa(initial_scale=3)
    fresh = policy.initial_state()
    assert policy.tail_for(fresh).bounds == Bounds(3, None)
    d, state = policy.decide(snap(policy, 0.0, 1, 5.0), fresh)
    assert (d.desired_replicas, d.reason) == (3, Reason.CLAMPED_TO_MIN)
    d, state = policy.decide(snap(policy, 2.0, 3, 5.0), state)
    assert state.initialized and policy.tail_for(state).bounds == Bounds(0, None)


def test_knative_holds_on_missing_data_through_the_shared_check() -> None:
    policy = kpa()
    d, state = policy.decide(snap(policy, 0.0, 2, None), policy.initial_state())
    assert d.is_hold and d.reason is Reason.NO_DATA and state.started


# --------------------------------------------------------------------------------------------------
# The contract's new hooks, on a minimal family
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    """A stage that remembers what it settled on."""

    @property
    def name(self) -> str:
        return "seen"

    def initial_state(self) -> tuple[int, ...]:
        return ()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: tuple[int, ...]
    ) -> tuple[Recommendation, tuple[int, ...]]:
        return rec, state

    def settle(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: tuple[int, ...]
    ) -> tuple[int, ...]:
        return (*state, final.replicas)


@dataclass(frozen=True)
class _State:
    tail: PipelineState
    finished: int = 0


@dataclass(frozen=True)
class _Family(TailedPolicy[_State]):
    hold_at_zero: bool = False

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (GPU,)

    @property
    def max_signal_age_s(self) -> float:
        return 45.0

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (0, 10)

    @property
    def tail(self) -> Pipeline:
        return Pipeline((_Seen(), Bounds(0, 10)))

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: _State
    ) -> tuple[Recommendation, _State]:
        return Recommendation(int(check.values[GPU]), Reason.SCALE_UP, "raw"), state

    def finish(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: _State
    ) -> tuple[Decision, _State]:
        state = _State(state.tail, state.finished + 1)
        if self.hold_at_zero and final.replicas == 0:
            return Decision.hold(Reason.SCALE_TO_ZERO_GRACE, final.message), state
        return stages.to_decision(final), state


def _snap(t: float, current: int, value: float) -> MetricsSnapshot:
    return MetricsSnapshot(
        time_s=t, current_replicas=current, ready=current, signals={GPU: SignalValue(value)}
    )


def test_finish_makes_the_decision_and_the_tail_settles_on_it() -> None:
    family = _Family(hold_at_zero=True)
    state = _State(family.tail.initial_state())
    d, state = family.decide(_snap(0.0, 3, 5.0), state)
    assert d == Decision(5, Reason.SCALE_UP, "raw") and state.finished == 1
    d, state = family.decide(_snap(15.0, 5, 0.0), state)
    assert d.is_hold and state.finished == 2
    assert state.tail[0] == (5, 5)  # the hold kept the current 5: that is what the stages learn


def test_bounds_without_a_maximum() -> None:
    rec = Recommendation(50, Reason.SCALE_UP, "raw")
    out, _ = Bounds(2, None).apply(rec, _snap(0.0, 3, 0.0), None)
    assert out == rec
    out, _ = Bounds(2, None).apply(Recommendation(1, Reason.SCALE_DOWN, "raw"), _snap(0.0, 3, 0.0), None)
    assert (out.replicas, out.reason) == (2, Reason.CLAMPED_TO_MIN)
    with pytest.raises(ValueError):
        Bounds(5, 3)


def test_knative_initial_scale_above_max_scale_is_refused() -> None:
    from gpuscale._core.errors import ConfigError
    from gpuscale.policies.registry import load_policy

    with pytest.raises(ConfigError) as info:
        load_policy({"kind": "knative", "initial_scale": 5, "max_scale": 3}, "p.yaml")
    assert "initial_scale" in str(info.value) and "max_scale (3)" in str(info.value)
