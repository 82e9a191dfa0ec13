"""The SimPy reference model of the data plane against docs/simulator.md and queueing theory.

Hand-computed cases derive their expected numbers from the parameters; times that must tie exactly
are binary fractions (0.125, 0.25, ...) so that float sums land on the same instant.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gpuscale.sim.reference import ReferenceResult, simulate_reference
from gpuscale.sim.serving import Jitter, Outcome, Routing, ServingParams, interpolate_batch_latency

COMPLETED, TIMED_OUT, REJECTED = int(Outcome.COMPLETED), int(Outcome.TIMED_OUT), int(Outcome.REJECTED)


def flat(service_s: float, **kw: Any) -> ServingParams:
    """Batch size 1, every request takes ``service_s`` on the GPU."""
    return ServingParams(batch_latency_s=np.array([0.0, service_s]), **kw)


def by_seq(result: ReferenceResult) -> dict[int, tuple[object, ...]]:
    """seq → (outcome, latency, pod)."""
    return {
        int(s): (int(o), float(lat), int(p))
        for s, o, lat, p in zip(result.seq, result.outcome, result.latency_s, result.pod, strict=True)
    }


def run(
    params: ServingParams, n_pods: int, arrivals: list[float], t_end: float, **kw: Any
) -> ReferenceResult:
    return simulate_reference(params, n_pods, np.array(arrivals), t_end, **kw)


# -- the dynamic batcher -----------------------------------------------------------------------------


def test_batch_of_four_goes_when_the_head_has_waited_max_queue_delay() -> None:
    latency = interpolate_batch_latency([(1, 10.0), (8, 24.0)], 8)
    delay = 0.005
    params = ServingParams(batch_latency_s=latency, max_batch=8, max_queue_delay_s=delay)
    arrivals = [0.0, 0.001, 0.002, 0.003]
    result = run(params, 1, arrivals, t_end=1.0)

    # Fewer than 8 waiting: the batch goes when the head (enqueued at 0) has waited `delay`.
    finish = 0.0 + delay + latency[4]
    assert result.seq.tolist() == [0, 1, 2, 3]
    assert result.outcome.tolist() == [COMPLETED] * 4
    assert result.latency_s == pytest.approx([finish - a for a in arrivals], abs=1e-12)
    assert result.busy_s == pytest.approx([latency[4]], abs=1e-12)
    assert result.in_flight == 0


def test_preferred_size_goes_at_once_and_a_late_single_waits_for_its_own_delay() -> None:
    latency = interpolate_batch_latency([(1, 10.0), (8, 24.0)], 8)
    delay = 0.1
    params = ServingParams(
        batch_latency_s=latency, max_batch=8, preferred_batch_sizes=(4,), max_queue_delay_s=delay
    )
    arrivals = [0.0, 0.001, 0.002, 0.003, 0.004]
    got = by_seq(run(params, 1, arrivals, t_end=1.0))

    # The 4th arrival makes n = max(P) = 4: dispatched at its arrival.
    first_finish = arrivals[3] + latency[4]
    for seq in range(4):
        assert got[seq][1] == pytest.approx(first_finish - arrivals[seq], abs=1e-12)
    # The 5th is alone once the GPU frees; it goes when it has waited `delay` since its own enqueue.
    assert first_finish < arrivals[4] + delay
    assert got[4][1] == pytest.approx(delay + latency[1], abs=1e-12)


def test_on_timer_the_largest_preferred_size_that_fits_goes_and_a_remainder_goes_whole() -> None:
    latency = interpolate_batch_latency([(1, 10.0), (8, 24.0)], 8)
    delay = 0.005
    params = ServingParams(
        batch_latency_s=latency, max_batch=8, preferred_batch_sizes=(2, 4), max_queue_delay_s=delay
    )
    arrivals = [0.0, 0.001, 0.002]
    got = by_seq(run(params, 1, arrivals, t_end=1.0))

    # At the timer (t = delay) n = 3: the largest preferred size <= 3 is 2.
    first_finish = delay + latency[2]
    assert got[0][1] == pytest.approx(first_finish, abs=1e-12)
    assert got[1][1] == pytest.approx(first_finish - arrivals[1], abs=1e-12)
    # The third has waited past `delay` when the GPU frees; no preferred size <= 1, so all n = 1 go.
    assert first_finish >= arrivals[2] + delay
    assert got[2][1] == pytest.approx(first_finish + latency[1] - arrivals[2], abs=1e-12)


def test_timeouts_after_the_batch_and_at_batching_time() -> None:
    service, timeout = 0.25, 0.375
    params = flat(service, timeout_s=timeout)
    arrivals = [0.0, 0.0625, 0.125]
    got = by_seq(run(params, 1, arrivals, t_end=2.0))

    # r0 runs [0, 0.25]: latency 0.25 <= timeout.
    assert got[0] == (COMPLETED, service, 0)
    # r1 runs [0.25, 0.5]: latency 0.4375 > timeout, so its batch finishing makes it timed out.
    assert got[1] == (TIMED_OUT, 2 * service - arrivals[1], 0)
    # r2 is exactly `timeout` old at 0.5, not past it, so it still runs (and times out at 0.75).
    assert got[2] == (TIMED_OUT, 3 * service - arrivals[2], 0)

    # With a tighter timeout r2 is past it when the pod comes to batch it: dropped without the GPU.
    tight = flat(service, timeout_s=0.3)
    result = run(tight, 1, arrivals, t_end=2.0)
    got = by_seq(result)
    assert got[1] == (TIMED_OUT, 2 * service - arrivals[1], 0)
    assert got[2] == (TIMED_OUT, 2 * service - arrivals[2], 0)  # dropped at 0.5, when r1 finished
    assert result.busy_s == pytest.approx([2 * service])


def test_a_timeout_drop_frees_capacity_for_the_router_queue() -> None:
    # CC = 1, so r1 waits in the router queue while r0 is in the CPU stage. r0 is past its timeout when
    # it reaches the GPU queue and is dropped at 0.5; that frees the pod and hands r1 out at once.
    params = flat(0.125, cpu_s=0.5, timeout_s=0.4, container_concurrency=1, router_queue_capacity=4)
    got = by_seq(run(params, 1, [0.0, 0.125], t_end=5.0))
    assert got[0] == (TIMED_OUT, 0.5, 0)
    assert got[1] == (TIMED_OUT, 0.5 + 0.5 - 0.125, 0)


# -- admission and routing ---------------------------------------------------------------------------


def test_a_full_pod_queue_rejects() -> None:
    service = 0.25
    params = flat(service, queue_capacity=2)
    arrivals = [0.0, 0.01, 0.02, 0.03, 0.3]
    got = by_seq(run(params, 1, arrivals, t_end=2.0))

    assert got[0] == (COMPLETED, service, 0)
    assert got[1] == (COMPLETED, 2 * service - arrivals[1], 0)
    # r0 running and r1 queued: 2 outstanding = queue_capacity; the pod (slot 0) rejects.
    assert got[2] == (REJECTED, 0.0, 0)
    assert got[3] == (REJECTED, 0.0, 0)
    # By 0.3 r0 has finished, so there is room again.
    assert got[4] == (COMPLETED, 3 * service - arrivals[4], 0)


def test_cc1_with_a_router_queue_is_fifo_and_rejects_when_it_is_full() -> None:
    service = 0.010
    params = flat(service, container_concurrency=1, router_queue_capacity=3)
    arrivals = [0.0, 0.001, 0.002, 0.003, 0.004, 0.005]
    got = by_seq(run(params, 2, arrivals, t_end=1.0))

    assert got[0] == (COMPLETED, pytest.approx(service), 0)
    assert got[1] == (COMPLETED, pytest.approx(service), 1)
    # r2..r4 wait in the router queue (capacity 3); r5 finds it full and never reaches a pod.
    assert got[5] == (REJECTED, 0.0, -1)
    # Pod 0 frees at 0.010 and takes r2; pod 1 frees at 0.011 and takes r3; pod 0 again at 0.020: r4.
    assert got[2] == (COMPLETED, pytest.approx(2 * service - arrivals[2]), 0)
    assert got[3] == (COMPLETED, pytest.approx(arrivals[1] + 2 * service - arrivals[3]), 1)
    assert got[4] == (COMPLETED, pytest.approx(3 * service - arrivals[4]), 0)


def test_least_outstanding_ties_go_to_the_lowest_slot() -> None:
    result = run(flat(10.0), 3, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], t_end=50.0)
    # Nothing finishes: 0, 1, 2 each get one; then all hold 1 (tie → 0), then 1 and 2 hold fewer, ...
    assert result.pod.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_walks_the_slots_and_skips_pods_that_are_not_ready() -> None:
    params = flat(0.001, routing=Routing.ROUND_ROBIN)
    arrivals = [0.0, 0.01, 0.02, 0.03, 0.2, 0.21, 0.22]
    result = run(params, 3, arrivals, t_end=1.0, pod_ready_at=[0.0, 0.1, 0.0])
    # Slot 1 is not Ready until 0.1: 0, 2, 0, 2; then the pointer (at 2) goes on 0, 1, 2.
    assert result.pod.tolist() == [0, 2, 0, 2, 0, 1, 2]


def test_a_pod_that_becomes_ready_takes_the_router_queue_in_fifo_order() -> None:
    service, ready = 0.010, 0.05
    params = flat(service, router_queue_capacity=10)
    got = by_seq(run(params, 1, [0.0, 0.01], t_end=1.0, pod_ready_at=[ready]))
    assert got[0] == (COMPLETED, pytest.approx(ready + service), 0)
    assert got[1] == (COMPLETED, pytest.approx(ready + 2 * service - 0.01), 0)

    # Without a router queue nothing can wait for the pod: rejected by the router.
    got = by_seq(run(flat(service), 1, [0.0, 0.01, 0.06], t_end=1.0, pod_ready_at=[ready]))
    assert got[0] == (REJECTED, 0.0, -1)
    assert got[1] == (REJECTED, 0.0, -1)
    assert got[2] == (COMPLETED, pytest.approx(service), 0)


# -- the CPU stage -----------------------------------------------------------------------------------


def test_cpu_stage_with_two_workers() -> None:
    cpu, gpu = 0.004, 0.001
    params = flat(gpu, cpu_s=cpu, cpu_workers=2)
    arrivals = [0.0, 0.001, 0.002]
    got = by_seq(run(params, 1, arrivals, t_end=1.0))
    # r0 and r1 take both workers; r2 starts its CPU work when r0's worker frees at 0.004.
    assert got[0][1] == pytest.approx(cpu + gpu)
    assert got[1][1] == pytest.approx(cpu + gpu)
    assert got[2][1] == pytest.approx(arrivals[0] + 2 * cpu + gpu - arrivals[2])


# -- same-instant ordering ---------------------------------------------------------------------------


def test_a_batch_finishing_at_an_arrival_frees_the_pod_first() -> None:
    # Pod events come before arrivals: at 0.125 the pod first finishes r0, so r1 (CC = 1, no router
    # queue) is admitted instead of rejected.
    got = by_seq(run(flat(0.125, container_concurrency=1), 1, [0.0, 0.125], t_end=1.0))
    assert got[1] == (COMPLETED, 0.125, 0)


def test_cpu_completions_of_one_instant_all_reach_the_batcher_before_it_decides() -> None:
    latency = interpolate_batch_latency([(1, 10.0), (4, 16.0)], 4)
    params = ServingParams(batch_latency_s=latency, max_batch=4, cpu_s=0.125, cpu_workers=2)
    result = run(params, 1, [0.0, 0.0], t_end=1.0)
    # Both finish the CPU stage at 0.125; batching comes after both completions, so one batch of 2.
    assert result.latency_s == pytest.approx([0.125 + latency[2]] * 2)
    assert result.busy_s == pytest.approx([latency[2]])


def test_the_lower_slot_frees_first_at_a_shared_instant() -> None:
    # Both pods finish at 0.25; pod 0's completion is processed first and takes the router queue's head.
    params = flat(0.25, container_concurrency=1, router_queue_capacity=2)
    result = run(params, 2, [0.0, 0.0, 0.0625, 0.125], t_end=2.0)
    assert result.pod.tolist() == [0, 1, 0, 1]
    assert result.latency_s.tolist() == [0.25, 0.25, 0.5 - 0.0625, 0.5 - 0.125]


# -- invariants and queueing theory ------------------------------------------------------------------


def busy_scenario(jitter: Jitter, routing: Routing) -> ServingParams:
    return ServingParams(
        batch_latency_s=interpolate_batch_latency([(1, 8.0), (4, 14.0)], 4),
        max_batch=4,
        max_queue_delay_s=0.001,
        jitter=jitter,
        jitter_cv=0.3,
        cpu_s=0.002,
        cpu_workers=2,
        container_concurrency=3,
        queue_capacity=3,
        router_queue_capacity=20,
        timeout_s=0.06,
        routing=routing,
    )


@pytest.mark.parametrize(
    ("jitter", "routing"),
    [
        (Jitter.NONE, Routing.ROUND_ROBIN),
        (Jitter.EXPONENTIAL, Routing.RANDOM),
        (Jitter.LOGNORMAL, Routing.LEAST_OUTSTANDING),
    ],
)
def test_every_request_ends_once_or_is_still_in_flight(jitter: Jitter, routing: Routing) -> None:
    rng = np.random.default_rng(7)
    arrivals = np.cumsum(rng.exponential(1 / 900.0, 20_000))
    t_end = float(arrivals[15_000])  # cut mid-run: some are in flight, some never arrive
    params = busy_scenario(jitter, routing)
    result = simulate_reference(params, 4, arrivals, t_end, pod_ready_at=[0.0, 0.0, 1.0, 3.0], seed=3)

    arrived = int(np.count_nonzero(arrivals < t_end))
    assert len(np.unique(result.seq)) == result.seq.size
    assert result.seq.size + result.in_flight == arrived
    assert result.in_flight > 0
    assert np.all(np.diff(result.seq) > 0)
    counts = np.bincount(result.outcome, minlength=4)
    assert counts[COMPLETED] > 0 and counts[TIMED_OUT] > 0 and counts[REJECTED] > 0
    assert counts[int(Outcome.DROPPED)] == 0  # nothing drains in the reference
    rejected = result.outcome == REJECTED
    assert np.all(result.latency_s[rejected] == 0.0)
    assert np.all(result.pod[result.outcome == COMPLETED] >= 0)  # router-queue timeouts have no pod
    assert np.all(result.busy_s <= t_end)

    again = simulate_reference(params, 4, arrivals, t_end, pod_ready_at=[0.0, 0.0, 1.0, 3.0], seed=3)
    assert np.array_equal(again.latency_s, result.latency_s) and np.array_equal(again.pod, result.pod)


def test_littles_law_holds_on_a_poisson_run() -> None:
    rng = np.random.default_rng(11)
    arrivals = np.cumsum(rng.exponential(1 / 700.0, 60_000))
    params = busy_scenario(Jitter.EXPONENTIAL, Routing.LEAST_OUTSTANDING)
    params = replace(params, timeout_s=float("inf"), queue_capacity=64)
    t_end = float(arrivals[-1])
    result = simulate_reference(params, 4, arrivals, t_end, seed=5)

    # L: time-average number inside (pods' outstanding + router queue), from the model's own integrals.
    mean_inside = (result.outstanding_s.sum() + result.router_queue_s) / t_end
    # λW: arrival rate times mean time inside, from per-request latencies.
    arrival_rate = (result.seq.size + result.in_flight) / t_end
    mean_time_inside = float(result.latency_s.mean())
    assert mean_inside == pytest.approx(arrival_rate * mean_time_inside, rel=0.02)
    assert mean_inside > 1.0  # a run that actually queues


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    service, rho = 0.010, 0.8
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(service / rho, 200_000))
    result = simulate_reference(flat(service), 1, arrivals, float(arrivals[-1]) + 10.0)

    assert result.in_flight == 0
    mean_wait = float((result.latency_s - service).mean())
    expected = rho * service / (2 * (1 - rho))
    assert mean_wait == pytest.approx(expected, rel=0.03)
    # Utilization law on the way: the GPU is busy λD of the time.
    assert result.busy_s[0] == pytest.approx(service * arrivals.size)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        run(flat(0.01), 1, [0.2, 0.1], t_end=1.0)
    with pytest.raises(ValueError, match="pod_ready_at"):
        run(flat(0.01), 2, [0.1], t_end=1.0, pod_ready_at=[0.0])
    with pytest.raises(ValueError, match="t_end"):
        run(flat(0.01), 1, [0.1], t_end=0.0)
