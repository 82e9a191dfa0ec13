"""``planner``: timelines of its behaviour (step, dip, correction), the capacity table's checks, determinism.

The timelines run the policy in a small world of its own: a tick every 10 s, the request-rate signal
the mean load of the last 10 s, and every pod asked for Ready one cold start (45 s) later. The
capacity model says one replica carries 100 requests/s within the SLO at any fleet size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, Metric, MetricsSnapshot, Reason, SignalValue
from gpuscale.policies.conformance import check_policy
from gpuscale.policies.planner import PlannerConfig, PlannerPolicy, PlannerState
from gpuscale.policies.registry import load_preset

COLD_S = 45.0
TICK_S = 10.0
TABLE = {
    "profile": "resnet50-a100-triton",
    "slo_latency_ms": 100,
    "points": [{"replicas": 1, "rps_per_replica": 100}, {"replicas": 16, "rps_per_replica": 100}],
}


def policy(**overrides: object) -> PlannerPolicy:
    data = {"kind": "planner", "max_replicas": 30, "capacity": TABLE, "cold_start_s": COLD_S, **overrides}
    return validate(PlannerConfig, data, "test").build()


def window_mean(load: Callable[[float], float], t: float) -> float:
    return sum(load(t - TICK_S + (i + 0.5) * TICK_S / 20) for i in range(20)) / 20


@dataclass(frozen=True)
class Tick:
    t: float
    decision: Decision
    spec: int
    ready: int


def run(
    p: PlannerPolicy,
    load: Callable[[float], float],
    *,
    until_s: float,
    start: int,
    p99_ms: Callable[[float], float] | None = None,
) -> tuple[list[Tick], PlannerState]:
    """Tick the policy from t = 10 s; spec changes apply at once, new pods are Ready COLD_S later."""
    state = p.initial_state()
    spec, ready_at = start, [0.0] * start  # each pod's Ready time
    ticks: list[Tick] = []
    t = TICK_S
    while t <= until_s:
        ready = sum(1 for r in ready_at if r <= t)
        signals = {p.rate: SignalValue(window_mean(load, t))}
        if p.latency is not None and p99_ms is not None:
            signals[p.latency] = SignalValue(p99_ms(t))
        snap = MetricsSnapshot(
            time_s=t, current_replicas=spec, ready=ready, starting=spec - ready, signals=signals
        )
        decision, state = p.decide(snap, state)
        if decision.desired_replicas is not None:
            new = decision.desired_replicas
            if new > spec:
                ready_at += [t + COLD_S] * (new - spec)
            else:
                # the newest pods go first (a ReplicaSet deletes not-ready pods before ready ones)
                ready_at = sorted(ready_at)[:new]
            spec = new
        ticks.append(Tick(t, decision, spec, sum(1 for r in ready_at if r <= t)))
        t += TICK_S
    return ticks, state


def at(ticks: list[Tick], t: float) -> Tick:
    return next(k for k in ticks if math.isclose(k.t, t))


def test_a_step_from_200_to_800_rps_is_asked_for_within_two_ticks_and_held() -> None:
    # 200 rps for 5 minutes, then 800 from t = 300 s; one pod carries 100 rps
    def load(t: float) -> float:
        return 200.0 if t < 300 else 800.0

    ticks, _ = run(policy(), load, until_s=900, start=3)
    before = at(ticks, 290)
    assert 2 <= before.spec <= 3, before
    # the step lands at t = 300; the 10-s window shows it whole at t = 310: two ticks (300, 310)
    second = at(ticks, 310)
    assert second.spec >= 8, second
    assert second.decision.reason is Reason.SCALE_UP_PANIC, second.decision
    assert "deciding term: burst" in second.decision.message
    # ... and held for the rest of the run: never below what 800 rps needs
    assert all(k.spec >= 8 for k in ticks if k.t >= 310)
    # the fleet does not balloon either: 800 rps, its band, and a reserve for another step like this
    # one (600 rps x 45 s / 60 s of cold start = 450 rps): at most 13 pods
    assert max(k.spec for k in ticks if k.t >= 310) <= 13
    assert "deciding term: reserve" in at(ticks, 400).decision.message  # 600 rps, fading
    # once Ready (one cold start later), the pods carry the load
    assert at(ticks, 360).ready >= 8


def test_the_burst_window_shows_a_rise_the_rate_window_has_only_begun_to_show() -> None:
    # 2-s ticks; 130 rps for 8 s of the 10-s window, 400 rps for its last 2 s (a step, 2 s old)
    fast = policy(sync_period_s=2, burst_window_s=2)
    slow = policy(sync_period_s=2)
    assert fast.fast_rate is not None and fast.fast_rate.window_s == 2
    assert fast.signal_keys[fast.fast_rate] == "burst_window_s" and slow.fast_rate is None

    def decide(p: PlannerPolicy, rate: float, last_2s: float) -> Decision:
        signals = {p.rate: SignalValue(rate)}
        if p.fast_rate is not None:
            signals[p.fast_rate] = SignalValue(last_2s)
        snap = MetricsSnapshot(time_s=100.0, current_replicas=2, ready=2, starting=0, signals=signals)
        return p.decide(snap, p.initial_state())[0]

    step = 0.8 * 130 + 0.2 * 400
    seen = decide(fast, step, 400.0)
    assert seen.desired_replicas is not None and seen.desired_replicas >= 4, seen
    assert "over the last 2 s" in seen.message and "deciding term: burst" in seen.message
    unseen = decide(slow, step, 400.0)
    assert unseen.desired_replicas is not None and unseen.desired_replicas < seen.desired_replicas
    # noise is not a rise: 2 s of 150 rps against a 10-s 130 is within 3 Poisson deviations (26 rps)
    calm = decide(fast, 130.0, 150.0)
    assert calm.desired_replicas == decide(slow, 130.0, 150.0).desired_replicas
    assert "over the last" not in calm.message


def test_a_60_s_dip_does_not_release_a_pod_needed_again_within_one_cold_start() -> None:
    # 800 rps, a dip to 200 rps from t = 600 to 660 s, 800 again
    def load(t: float) -> float:
        return 200.0 if 600 <= t < 660 else 800.0

    ticks, _ = run(policy(), load, until_s=900, start=9)
    held = [k for k in ticks if 600 <= k.t <= 720]
    assert all(k.spec >= 8 for k in held), [(k.t, k.spec) for k in held]
    assert any(
        k.decision.reason is Reason.SCALE_DOWN_STABILIZED and "scale-down guard" in k.decision.message
        for k in held
    )
    # every pod stays Ready through the dip: none had to cold-start again
    assert all(k.ready >= 8 for k in ticks if k.t >= 600)


def test_a_long_trough_releases_pods_after_the_guard_window() -> None:
    # 800 rps, then 200 rps from t = 600 s for good: pods go after keep_s = 2 x (45 s + 10 s)
    def load(t: float) -> float:
        return 200.0 if t >= 600 else 800.0

    keep_s = 2 * (COLD_S + TICK_S)
    ticks, _ = run(policy(reserve_fraction=0), load, until_s=1200, start=9)
    assert all(k.spec >= 8 for k in ticks if 600 <= k.t < 600 + keep_s)
    assert at(ticks, 1200).spec <= 3
    down = [k for k in ticks if k.decision.reason is Reason.SCALE_DOWN]
    assert down and 600 + keep_s - TICK_S <= down[0].t <= 600 + keep_s + TICK_S


def test_the_correction_factor_raises_the_fleet_when_latency_runs_above_the_model() -> None:
    # 500 rps steady; the model says 5-6 pods carry it within 100 ms, but p99 is 150 ms from t = 300 s
    def load(t: float) -> float:
        return 500.0

    def slow(t: float) -> float:
        return 150.0 if t >= 300 else 60.0

    plain, _ = run(policy(), load, until_s=900, start=6, p99_ms=lambda t: 60.0)
    corrected, state = run(policy(), load, until_s=900, start=6, p99_ms=slow)
    assert at(plain, 900).spec == at(plain, 290).spec
    assert at(corrected, 900).spec > at(plain, 900).spec
    assert state.correction > 1.0
    ups = [k for k in corrected if k.decision.reason is Reason.SCALE_UP]
    assert ups and "deciding term: correction" in ups[0].decision.message


def test_the_correction_relaxes_when_latency_is_back_under_the_slo() -> None:
    def slow(t: float) -> float:
        return 150.0 if 300 <= t < 600 else 40.0

    ticks, state = run(policy(), lambda t: 500.0, until_s=2400, start=6, p99_ms=slow)
    assert max(k.spec for k in ticks) > at(ticks, 2400).spec
    assert state.correction < 1.1


def test_a_ramp_is_provisioned_one_cold_start_ahead() -> None:
    # +1 rps per second from 200 to 1,000: a pod is asked for before the load reaches its capacity
    def load(t: float) -> float:
        return min(1000.0, 200.0 + max(0.0, t - 300))

    ticks, _ = run(policy(), load, until_s=1200, start=3)
    # once the trend is learnt (a few buckets into the ramp), every pod is Ready before it is needed
    for k in ticks:
        if k.t >= 450:
            assert k.ready * 100 >= load(k.t), (k.t, k.ready, load(k.t))
    ups = [k for k in ticks if k.decision.reason is Reason.PREDICTED]
    assert ups and all("deciding term: cold-start guard" in k.decision.message for k in ups)


def test_pending_pods_and_nodes_lengthen_the_horizon() -> None:
    p = policy(node_provision_s=300)
    snap = MetricsSnapshot(time_s=100, current_replicas=3, ready=2, pending=1)
    assert p.horizon_s(snap) == COLD_S + 10 + 300
    assert p.horizon_s(MetricsSnapshot(time_s=100, current_replicas=3, ready=3)) == COLD_S + 10


def test_no_rate_holds() -> None:
    p = policy()
    snap = MetricsSnapshot(
        time_s=10, current_replicas=3, ready=3, signals={p.rate: SignalValue.missing("no scrape")}
    )
    decision, _ = p.decide(snap, p.initial_state())
    assert decision.is_hold and decision.reason is Reason.NO_DATA


def test_the_same_snapshots_give_the_same_decisions() -> None:
    def load(t: float) -> float:
        return 300 + 200 * math.sin(t / 120)

    a, sa = run(policy(), load, until_s=1200, start=3, p99_ms=lambda t: 80 + t / 20)
    b, sb = run(policy(), load, until_s=1200, start=3, p99_ms=lambda t: 80 + t / 20)
    assert a == b and sa == sb


def test_the_preset_and_the_kind_keep_the_contract() -> None:
    check_policy(load_preset("planner"))
    check_policy(policy())
    check_policy(policy(correction_window_s=None, season_s=120))


@pytest.mark.parametrize(
    ("points", "says"),
    [
        ([], "the capacity table is empty"),
        (
            [{"replicas": 1, "rps_per_replica": 100}, {"replicas": 2, "rps_per_replica": 40}],
            "not monotone: 2 replicas carry 80 req/s in total, less than 1 replicas' 100",
        ),
        (
            [{"replicas": 2, "rps_per_replica": 100}, {"replicas": 2, "rps_per_replica": 100}],
            "fleet sizes must increase",
        ),
    ],
)
def test_a_bad_capacity_table_is_a_clear_error(points: list[dict[str, float]], says: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(PlannerConfig, {"kind": "planner", "capacity": {**TABLE, "points": points}}, "p.yaml")
    assert "capacity.points" in str(err.value) and says in str(err.value)


def test_a_demand_far_beyond_the_table_is_sized_at_the_last_points_rate() -> None:
    # Counting replica by replica to a max_replicas of 10**12 would take a live tick for ever; beyond
    # the table's last point (16 replicas at 100 rps) the count is computed, the same count
    p = policy(max_replicas=10**12)
    assert p.need(1e12, 1.0) == 10**10
    assert p.need(1e12 + 1, 1.0) == 10**10 + 1
    assert p.need(1e15, 1.0) == 10**12 + 1  # more than max_replicas: none covers it
    assert p.need(1e308, 2.0) == p.need(math.inf, 1.0) == 10**12 + 1  # no overflow on the way
    assert p.need(1_650.0, 1.0) == 17 and p.need(1_600.0, 1.0) == 16 and p.need(1_600.0, 1.25) == 20


def test_a_capacity_point_past_a_million_replicas_is_a_clear_error() -> None:
    points = [{"replicas": 1, "rps_per_replica": 100}, {"replicas": 10**400, "rps_per_replica": 110}]
    with pytest.raises(ConfigError) as err:
        policy(capacity={**TABLE, "points": points})
    assert "capacity.points[1].replicas" in str(err.value) and "1000000" in str(err.value)


def test_a_burst_window_no_shorter_than_the_rate_window_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        policy(burst_window_s=10)
    assert "burst_window_s" in str(err.value) and "shorter than rate_window_s (10 s)" in str(err.value)


def test_a_capacity_table_for_another_profile_is_a_clear_error() -> None:
    data = {"kind": "planner", "profile": "llama-2-70b-a100x4-vllm", "capacity": TABLE}
    with pytest.raises(ConfigError) as err:
        validate(PlannerConfig, data, "p.yaml")
    text = str(err.value)
    assert "capacity.profile" in text
    assert "measured for profile 'resnet50-a100-triton'" in text and "llama-2-70b-a100x4-vllm" in text


def test_latency_is_declared_only_with_the_correction_or_the_saturation_term() -> None:
    windows = [(s.metric, s.window_s) for s in policy().signals]
    assert windows == [(Metric.REQUEST_RATE, 10), (Metric.LATENCY_P99_MS, 60), (Metric.LATENCY_P99_MS, 10)]
    off = policy(correction_window_s=None, saturation_window_s=None)
    assert [s.metric for s in off.signals] == [Metric.REQUEST_RATE]
