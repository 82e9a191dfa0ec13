"""The simulation engine end to end: pod lifecycle, scale target, telemetry, results, determinism."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
    StaticPolicy,
)
from gpuscale.policies.ports import MetricsSource, ReplicaCounts, ScaleTarget
from gpuscale.sim.engine import Simulation, simulate
from gpuscale.sim.results import result_files
from tests.conftest import make_scenario


@dataclass(frozen=True)
class Scripted:
    """A test policy: replicas (and standby pods) by time; its state records every snapshot it saw."""

    plan: tuple[tuple[float, int], ...]
    standby: tuple[tuple[float, int], ...] = ()
    signals: tuple[SignalSpec, ...] = ()
    sync_period_s: float | None = None
    name: str = "scripted"
    seen: list[MetricsSnapshot] = field(default_factory=list, compare=False)
    signal_keys: Mapping[SignalSpec, str] = field(default_factory=dict, compare=False)
    max_signal_age_s: float | None = None
    replica_bounds: tuple[int, int | None] = (0, None)
    initial_replicas: int | None = None

    def initial_state(self) -> tuple[()]:
        return ()

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        self.seen.append(snapshot)
        want = [n for t, n in self.plan if t <= snapshot.time_s]
        spare = [n for t, n in self.standby if t <= snapshot.time_s]
        desired = want[-1] if want else None
        return Decision(desired, Reason.STATIC, "scripted", spare[-1] if spare else None), state


def _row(result: Any, t: float) -> dict[str, Any]:
    for r in result.timeline.rows:
        if abs(r.time_s - t) < 1e-9:
            return asdict(r)
    raise AssertionError(f"no timeline row at {t}")


def test_new_pods_become_ready_after_their_cold_start_phases() -> None:
    # The initial pod's node already holds the image and the weights, so a pod scheduled there at
    # t = 5 takes scheduling 1 s + load 5 s + warm-up 4 s and is Ready at t = 15.
    sc = make_scenario(duration_s=40)
    result = simulate(sc, Scripted(plan=((5.0, 3),)))
    assert _row(result, 10.0)["starting"] == 2
    assert _row(result, 10.0)["ready"] == 1
    assert _row(result, 15.0)["ready"] == 3
    assert result.summary.cold_starts == 2
    assert result.summary.mean_cold_start_s == pytest.approx(10.0)
    assert result.cold_start_phases_s["image_pull"] == 0.0
    assert result.cold_start_phases_s["model_download"] == 0.0


def test_a_fresh_node_pulls_the_image_and_weights_once_for_all_its_pods() -> None:
    # No pod at t = 0: the two pods created at t = 5 land on the empty node; the first pays image pull
    # (10 s) and download (20 s), the second waits for the same pull and download, so both are Ready
    # at 5 + 1 + 10 + 20 + 5 + 4 = 45.
    sc = make_scenario(duration_s=60, control={"interval_s": 5, "initial_replicas": 0})
    result = simulate(sc, Scripted(plan=((5.0, 2),)))
    assert _row(result, 40.0)["ready"] == 0
    assert _row(result, 45.0)["ready"] == 2
    assert result.cold_start_phases_s["image_pull"] == pytest.approx(10.0)
    assert result.cold_start_phases_s["model_download"] == pytest.approx(20.0)


def test_pods_stay_pending_while_no_gpu_is_free_and_the_snapshot_says_so() -> None:
    sc = make_scenario(
        duration_s=30, cluster={"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]}
    )
    policy = Scripted(plan=((5.0, 4),))
    result = simulate(sc, policy)
    assert _row(result, 25.0)["pending"] == 2
    assert _row(result, 25.0)["ready"] == 2
    assert _row(result, 25.0)["gpus_held"] == 2
    last = policy.seen[-1]
    assert (last.current_replicas, last.ready, last.pending) == (4, 2, 2)


def test_scale_down_drains_the_newest_ready_pods_and_stops_charging_them() -> None:
    sc = make_scenario(duration_s=100, control={"interval_s": 5, "initial_replicas": 3})
    result = simulate(sc, Scripted(plan=((50.0, 1),)))
    assert _row(result, 45.0)["ready"] == 3
    assert _row(result, 55.0)["ready"] == 1
    # 3 GPUs for 50 s, then 1 GPU (the drained pods leave as soon as their last request ends)
    assert result.summary.gpu_hours == pytest.approx((3 * 50 + 1 * 50) / 3600.0, rel=0.01)
    assert result.summary.dropped == 0


def test_a_pod_killed_at_the_end_of_its_grace_period_drops_what_it_still_holds() -> None:
    # Llama-2-70B batches take seconds; with a 1-s grace period the removed pod is killed mid-batch.
    sc = make_scenario(
        duration_s=60,
        model={"profile": "llama2-70b-h100x8-vllm", "jitter": "none"},
        workload={"kind": "poisson", "rate_rps": 6},
        slo={"latency_ms": 30000},
        serving={"routing": "least-outstanding", "timeout_s": 60, "termination_grace_s": 1},
        cluster={"pools": [{"gpu": "h100-80gb", "gpus_per_node": 8, "nodes": 2}]},
        control={"interval_s": 5, "initial_replicas": 2},
    )
    result = simulate(sc, Scripted(plan=((30.0, 1),)))
    s = result.summary
    assert s.dropped > 0
    assert s.requests == s.completed + s.timed_out + s.rejected + s.dropped + s.in_flight


def test_standby_pods_are_paid_for_and_promoted_without_a_cold_start() -> None:
    sc = make_scenario(
        duration_s=60, cluster={"pools": [{"gpu": "a100-80gb", "gpus_per_node": 8, "nodes": 1}]}
    )
    policy = Scripted(plan=((30.0, 3),), standby=((5.0, 2),))
    result = simulate(sc, policy)
    before = _row(result, 25.0)
    assert (before["ready"], before["standby"], before["gpus_held"]) == (1, 2, 3)
    after = _row(result, 30.0)
    assert after["ready"] == 3  # promoted at the tick itself
    assert after["starting"] == 0
    # the pool refills in the background (standby target still 2): Ready again 10 s later
    assert policy.seen[-1].standby == 2
    assert _row(result, 55.0)["gpus_held"] == 5


def test_requests_are_conserved_and_littles_law_holds() -> None:
    sc = make_scenario(duration_s=300, workload={"kind": "poisson", "rate_rps": 800})
    s = simulate(sc, StaticPolicy(2)).summary
    assert s.requests == s.completed + s.timed_out + s.rejected + s.dropped + s.in_flight
    assert s.requests > 0.9 * 800 * 300
    assert s.littles_law_l == pytest.approx(s.littles_law_lambda_w, rel=0.01)


def test_gpu_utilization_is_sm_busy_time() -> None:
    # 50 requests/s of batch-1 work at 2.132 ms each keep one GPU busy about 10.7 % of the time.
    sc = make_scenario(
        duration_s=180,
        workload={"kind": "poisson", "rate_rps": 50},
        model={
            "profile": "resnet50-a100-triton",
            "jitter": "none",
            "cpu_ms_per_request": 0,
            "max_queue_delay_ms": 0,
        },
    )
    spec = SignalSpec(Metric.GPU_UTIL, 60.0)
    policy = Scripted(plan=(), signals=(spec,))
    simulate(sc, policy)
    busy = 50 * 1000.0 / 469.1 / 1000.0 * 100.0
    values = [s.value(spec) for s in policy.seen if s.time_s >= 60]
    assert all(v is not None for v in values)
    mean = sum(v for v in values if v is not None) / len(values)
    assert mean == pytest.approx(busy, rel=0.05)


def test_caching_allocator_memory_keeps_its_high_water_mark() -> None:
    # A burst forms large batches; afterwards the load is light, but a caching allocator keeps the
    # memory it reserved, so GPU memory utilization does not fall back.
    sc = make_scenario(
        duration_s=240,
        workload={"kind": "poisson", "rate": {"kind": "step", "levels": [[0, 100], [60, 6000], [90, 100]]}},
    )
    spec = SignalSpec(Metric.GPU_MEMORY_UTIL, 5.0)
    policy = Scripted(plan=(), signals=(spec,))
    simulate(sc, policy)
    by_t = {s.time_s: s.value(spec) for s in policy.seen}
    assert by_t[55.0] is not None and by_t[85.0] is not None and by_t[200.0] is not None
    assert by_t[85.0] > by_t[55.0]
    assert by_t[200.0] == pytest.approx(by_t[85.0], rel=1e-6)


def test_in_flight_concurrency_is_time_weighted_and_follows_littles_law() -> None:
    sc = make_scenario(duration_s=200, workload={"kind": "poisson", "rate_rps": 400})
    spec = SignalSpec(Metric.CONCURRENCY, 60.0, Aggregation.TOTAL)
    policy = Scripted(plan=(), signals=(spec,))
    result = simulate(sc, policy)
    mean_latency_s = (result.summary.latency_mean_ms or 0.0) / 1000.0
    seen = [s.value(spec) for s in policy.seen if s.time_s >= 120]
    assert all(v is not None for v in seen)
    avg = sum(v for v in seen if v is not None) / len(seen)
    assert avg == pytest.approx(400 * mean_latency_s, rel=0.1)


def test_metrics_arrive_late_when_the_pipeline_is_delayed() -> None:
    sc = make_scenario(duration_s=60, telemetry={"scrape_interval_s": 1, "metrics_delay_s": 7})
    spec = SignalSpec(Metric.REQUEST_RATE, 10.0, Aggregation.TOTAL)
    policy = Scripted(plan=(), signals=(spec,))
    simulate(sc, policy)
    ages = [s.get(spec).age_s for s in policy.seen if s.time_s >= 20]
    assert ages and all(a >= 7.0 for a in ages)
    # the first tick (t = 5 s) comes before any scrape is 7 s old: nothing to see yet
    first = policy.seen[0]
    assert first.time_s == 5.0
    assert first.get(spec).value is None and first.get(spec).reason


def test_no_data_is_none_with_a_reason_never_zero() -> None:
    sc = make_scenario(duration_s=20, control={"interval_s": 5, "initial_replicas": 0})
    spec = SignalSpec(Metric.GPU_UTIL, 5.0)
    policy = Scripted(plan=(), signals=(spec,))
    simulate(sc, policy)
    value = policy.seen[0].get(spec)
    assert value.value is None and value.reason


def test_same_seed_same_bytes_and_different_seed_different_bytes(tmp_path: Any) -> None:
    sc = make_scenario(duration_s=120, workload={"kind": "gamma", "rate_rps": 300, "cv": 2})
    a = result_files(simulate(sc, Scripted(plan=((30.0, 3), (90.0, 1)))))
    b = result_files(simulate(sc, Scripted(plan=((30.0, 3), (90.0, 1)))))
    c = result_files(simulate(sc, Scripted(plan=((30.0, 3), (90.0, 1))), seed=99))
    assert a == b
    assert a["summary.json"] != c["summary.json"]
    assert a["timeline.csv"] != c["timeline.csv"]


def test_closed_loop_users_drive_the_load() -> None:
    # 40 users thinking 1-2 s (1.5 s on average) against a fast service send about 40 / 1.5 req/s.
    sc = make_scenario(duration_s=300, workload={"kind": "closed-loop", "users": 40, "think_time_s": [1, 2]})
    s = simulate(sc, StaticPolicy(1)).summary
    assert s.requests / 300 == pytest.approx(40 / 1.5, rel=0.05)
    assert s.requests == s.completed + s.timed_out + s.rejected + s.dropped + s.in_flight


def test_a_signal_window_shorter_than_the_scrape_interval_is_refused() -> None:
    sc = make_scenario(telemetry={"scrape_interval_s": 15})
    policy = Scripted(plan=(), signals=(SignalSpec(Metric.GPU_UTIL, 5.0),))
    with pytest.raises(ConfigError, match="scrape interval"):
        simulate(sc, policy)


def test_rejects_when_the_queue_is_full_and_times_out_when_too_slow() -> None:
    sc = make_scenario(
        duration_s=60,
        workload={"kind": "poisson", "rate_rps": 8000},
        serving={"routing": "random", "queue_capacity": 64, "timeout_s": 0.02},
    )
    s = simulate(sc, StaticPolicy(1)).summary
    assert s.rejected > 0
    assert s.timed_out > 0
    assert s.slo_attainment < 0.9
    assert not math.isnan(s.latency_p99_ms or math.nan)


# -- the steppable simulation, the ports and the safety tail ------------------------------------------


def test_a_simulation_steps_tick_by_tick_through_the_ports_and_ends_as_simulate_does() -> None:
    sc = make_scenario(duration_s=30)
    sim = Simulation(sc, Scripted(plan=((5.0, 2),)))
    assert isinstance(sim.target, ScaleTarget) and isinstance(sim.source, MetricsSource)
    assert sim.source.unavailable() is None
    first = sim.step_to_next_tick()
    assert first is not None and first.desired_replicas == 2 and sim.now == 5.0
    assert sim.target.counts(sim.now) == ReplicaCounts(current_replicas=2, ready=1, starting=1)
    assert sim.step_to_next_tick() is not None and sim.now == 10.0
    while sim.step_to_next_tick() is not None:
        pass
    assert sim.done and sim.step_to_next_tick() is None
    assert [r.time_s for r in sim.timeline.rows] == [5.0, 10.0, 15.0, 20.0, 25.0]
    assert result_files(sim.result()) == result_files(simulate(sc, Scripted(plan=((5.0, 2),))))


def test_a_fixed_size_policy_starts_at_its_own_count_without_a_cold_start() -> None:
    # initial_replicas on the policy (not its type) says the deployment is already at that size.
    sc = make_scenario(duration_s=20, control={"interval_s": 5, "initial_replicas": 1})
    result = simulate(sc, Scripted(plan=(), initial_replicas=3))
    assert _row(result, 5.0)["ready"] == 3
    assert result.summary.cold_starts == 0


def test_the_scenarios_safety_block_caps_what_the_simulator_applies() -> None:
    # The policy asks for 4 from t = 5; the block's maximum is 3: every tick writes 3, with the
    # bound's reason, as `gpuscale run` would write it.
    sc = make_scenario(duration_s=30, safety={"min_replicas": 1, "max_replicas": 3})
    result = simulate(sc, Scripted(plan=((5.0, 4),)))
    desired = result.timeline.column("desired")
    assert max(desired) == 3 and desired[0] == 3
    assert set(result.timeline.column("reason")) == {Reason.TOO_MANY_REPLICAS.value}
    assert result.summary.decisions_by_reason == {Reason.TOO_MANY_REPLICAS.value: len(desired)}
    assert result.summary.max_replicas == 3


def test_the_scenarios_max_step_limits_each_ticks_change() -> None:
    # 1 -> 4 at most 1 per tick: 2, 3, 4 at t = 5, 10, 15; then 4 -> 1 from t = 30: 3, 2, 1.
    sc = make_scenario(duration_s=50, safety={"min_replicas": 1, "max_replicas": 10, "max_step": 1})
    result = simulate(sc, Scripted(plan=((5.0, 4), (30.0, 1))))
    desired = [int(d) for d in result.timeline.column("desired")]
    assert desired == [2, 3, 4, 4, 4, 3, 2, 1, 1]
    reasons = list(result.timeline.column("reason"))
    assert reasons[:2] == [Reason.SCALE_UP_LIMIT.value] * 2
    assert reasons[5:7] == [Reason.SCALE_DOWN_LIMIT.value] * 2
    assert reasons[2] == reasons[7] == Reason.STATIC.value  # the last step of each fits the limit


def test_a_scenario_without_a_safety_block_runs_the_policy_as_it_is() -> None:
    sc = make_scenario(duration_s=20)
    assert sc.safety is None
    assert list(simulate(sc, Scripted(plan=((5.0, 4),))).timeline.column("desired")) == [4, 4, 4]
