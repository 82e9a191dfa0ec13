"""The compiled kernel against the SimPy reference model, request for request.

Both implement docs/simulator.md independently; on deterministic scenarios (no jitter, no random
routing) they must agree on every request's outcome, latency and pod. The scenarios are small and
loaded in bursts beyond the pods' capacity, so that queues build, timeouts fire and queues overflow,
and each states which outcomes it must produce, so that a scenario that stopped exercising its
mechanism fails instead of agreeing vacuously.

Ties: every time in the "grid" arrival set and every duration (batch latencies, CPU time, max queue
delay, timeouts) is a multiple of 1/1024 s, so sums are exact in binary floating point and batch
completions, CPU completions, timers, router-queue expiries and arrivals really do coincide; the
same-instant ordering of the specification decides them.

The kernel runs as the engine runs it: through :class:`~gpuscale.sim.dataplane.DataPlane`, in chunks
(irregular ones here), with a pod's slot opened between two ``advance`` calls at the instant it becomes
Ready. The kernel hands out the router queue at the start of each ``advance``, so each Ready instant
starts a chunk; Ready instants are off the 1/1024 grid so that no other pod's event shares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
import pytest

from gpuscale.sim import kernel as K
from gpuscale.sim.dataplane import DataPlane, Records
from gpuscale.sim.reference import ReferenceResult, simulate_reference
from gpuscale.sim.serving import Outcome, Routing, ServingParams

TICK = 1.0 / 1024.0
N_PODS = 4
CHUNK_S = 0.37  # the kernel's chunks: irregular with respect to the arrivals and the tick

# Batch of b takes (7 + b) ticks (about 8 ms for one, 15 ms for eight): binary fractions, linear in b.
LATENCY_S = np.array([0.0, *((7.0 + b) * TICK for b in range(1, 9))])
SINGLE_S = np.array([0.0, 2.0 * TICK])  # batch size 1, about 2 ms


def bursty_arrivals(seed: int, on_grid: bool) -> np.ndarray:
    """About 6 000 arrivals over 4 s: 0.5 s at 500/s, then 0.5 s at 2 500/s (above what 4 pods serve)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(8):
        rate = 500.0 if k % 2 == 0 else 2500.0
        parts.append(np.sort(rng.uniform(0.5 * k, 0.5 * (k + 1), rng.poisson(0.5 * rate))))
    arrivals = np.concatenate(parts)
    if on_grid:
        # Floor keeps the order; many arrivals now share an instant with each other and with pod events.
        arrivals = np.floor(arrivals / TICK) * TICK
    return arrivals


ARRIVALS = {"poisson": bursty_arrivals(1, on_grid=False), "grid": bursty_arrivals(1, on_grid=True)}
T_END = 3.9  # within the last burst: some requests are in flight at the end

COMPLETED, TIMED_OUT, REJECTED = Outcome.COMPLETED, Outcome.TIMED_OUT, Outcome.REJECTED


@dataclass(frozen=True)
class Scenario:
    params: ServingParams
    must_see: frozenset[Outcome]
    """Outcomes the scenario exists to produce."""
    ready_at: tuple[float, ...] = (0.0,) * N_PODS
    """When each pod (slot) becomes Ready; nondecreasing, so that slots open in index order."""
    router_expiry: bool = False
    """Some request must time out in the router queue (pod −1)."""
    router_queue: bool = False
    """Some request must wait in the router queue."""
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


BATCHING = ServingParams(batch_latency_s=LATENCY_S, max_batch=8, max_queue_delay_s=2 * TICK)

SCENARIOS = {
    # Dynamic batching: full batches under the bursts, timer-driven partial ones in the lulls.
    "batching-max-queue-delay": Scenario(BATCHING, frozenset({COMPLETED})),
    "preferred-batch-sizes": Scenario(
        replace(BATCHING, preferred_batch_sizes=(2, 4), max_queue_delay_s=3 * TICK), frozenset({COMPLETED})
    ),
    "cpu-stage": Scenario(replace(BATCHING, cpu_s=3 * TICK, cpu_workers=2), frozenset({COMPLETED})),
    "round-robin": Scenario(replace(BATCHING, routing=Routing.ROUND_ROBIN), frozenset({COMPLETED})),
    # CC = 1, batch size 1: M/D/4 with a bounded shared queue; the bursts overflow it.
    "cc1-router-queue": Scenario(
        ServingParams(batch_latency_s=SINGLE_S, container_concurrency=1, router_queue_capacity=40),
        frozenset({COMPLETED, REJECTED}),
        router_queue=True,
    ),
    "cc3-router-queue-round-robin": Scenario(
        replace(BATCHING, container_concurrency=3, router_queue_capacity=30, routing=Routing.ROUND_ROBIN),
        frozenset({COMPLETED, REJECTED}),
        router_queue=True,
    ),
    # Small pod queues and a timeout: pod rejections, batches finishing late, drops at batching.
    "timeouts-pod-queue-full": Scenario(
        replace(BATCHING, timeout_s=40 * TICK, queue_capacity=16, max_batch=4, batch_latency_s=LATENCY_S[:5]),
        frozenset({COMPLETED, TIMED_OUT, REJECTED}),
    ),
    # A long router queue and a timeout: clients give up in the router queue.
    "router-queue-expiry": Scenario(
        replace(BATCHING, container_concurrency=2, router_queue_capacity=400, timeout_s=40 * TICK),
        frozenset({COMPLETED, TIMED_OUT}),
        router_expiry=True,
    ),
    # CC = 4 with batch size 1: requests age in the pod's GPU queue and are dropped at batching, which
    # frees capacity that the router queue must get at once.
    "timeout-drops-free-capacity": Scenario(
        ServingParams(
            batch_latency_s=np.array([0.0, 4 * TICK]),
            container_concurrency=4,
            router_queue_capacity=50,
            timeout_s=12 * TICK,
        ),
        frozenset({COMPLETED, TIMED_OUT}),
        router_queue=True,
    ),
    "everything-round-robin": Scenario(
        replace(
            BATCHING,
            routing=Routing.ROUND_ROBIN,
            cpu_s=2 * TICK,
            cpu_workers=2,
            container_concurrency=3,
            router_queue_capacity=20,
            timeout_s=50 * TICK,
            preferred_batch_sizes=(4,),
        ),
        frozenset({COMPLETED, REJECTED}),
        router_queue=True,
    ),
    # No pod at first: the router queue fills and expires; pods join one by one (two at one instant).
    "pods-ready-late": Scenario(
        replace(BATCHING, container_concurrency=2, router_queue_capacity=60, timeout_s=60 * TICK),
        frozenset({COMPLETED, TIMED_OUT, REJECTED}),
        ready_at=(0.2503, 1.10007, 1.10007, 2.60013),
        router_expiry=True,
    ),
    # No router queue: until more pods are Ready, the few there are reject what their queues cannot hold.
    "pods-ready-late-round-robin": Scenario(
        replace(BATCHING, routing=Routing.ROUND_ROBIN, queue_capacity=12),
        frozenset({COMPLETED, REJECTED}),
        ready_at=(0.0, 0.70001, 0.70001, 1.90003),
    ),
}


@dataclass(frozen=True)
class KernelResult:
    records: Records
    """Rows in seq order."""
    in_flight: int
    counts: dict[Outcome, int]
    arrived: int


def run_kernel(
    params: ServingParams, arrivals: np.ndarray, t_end: float, ready_at: tuple[float, ...]
) -> KernelResult:
    assert list(ready_at) == sorted(ready_at), "slots open in index order, so Ready times must not decrease"
    dp = DataPlane(params, max_slots=len(ready_at), slo_s=1.0, seed=0, record=True)
    edges = sorted({0.0, t_end, *ready_at, *np.arange(CHUNK_S, t_end, CHUNK_S).tolist()})
    opened = 0
    for t0, t1 in pairwise(edges):
        while opened < len(ready_at) and ready_at[opened] <= t0:
            assert dp.open_slot(t0) == opened
            opened += 1
            if opened < len(ready_at) and ready_at[opened] <= t0:
                # Another pod becomes Ready at this instant too. Each Ready is its own event with its
                # own hand-out, in slot order: an empty advance over [t0, t0) runs exactly that one.
                dp.advance(t0, t0, arrivals[:0])
        lo, hi = np.searchsorted(arrivals, [t0, t1], side="left")
        dp.advance(t0, t1, arrivals[lo:hi])
    rec = dp.records()
    order = np.argsort(rec.seq, kind="stable")
    return KernelResult(
        records=Records(rec.seq[order], rec.outcome[order], rec.latency_s[order], rec.pod[order]),
        in_flight=dp.in_flight,
        counts={
            COMPLETED: dp.counter(K.G_COMPLETED),
            TIMED_OUT: dp.counter(K.G_TIMED_OUT),
            REJECTED: dp.counter(K.G_REJECTED),
            Outcome.DROPPED: dp.counter(K.G_DROPPED),
        },
        arrived=dp.counter(K.G_ARRIVED),
    )


def first_disagreement(k: Records, r: ReferenceResult) -> str:
    bad = np.flatnonzero(
        (k.outcome != r.outcome) | (k.pod != r.pod) | (np.abs(k.latency_s - r.latency_s) > 1e-9)
    )
    if bad.size == 0:
        return "none"
    i = int(bad[0])
    return (
        f"{bad.size} requests differ; first seq {int(r.seq[i])}: kernel (outcome {int(k.outcome[i])}, "
        f"latency {k.latency_s[i]!r}, pod {int(k.pod[i])}) vs reference (outcome {int(r.outcome[i])}, "
        f"latency {r.latency_s[i]!r}, pod {int(r.pod[i])})"
    )


@pytest.mark.parametrize("arrival_set", list(ARRIVALS))
@pytest.mark.parametrize("name", [pytest.param(name, marks=s.marks) for name, s in SCENARIOS.items()])
def test_kernel_agrees_with_the_reference_request_for_request(name: str, arrival_set: str) -> None:
    scenario = SCENARIOS[name]
    arrivals = ARRIVALS[arrival_set]
    arrived = int(np.count_nonzero(arrivals < T_END))

    ref = simulate_reference(scenario.params, N_PODS, arrivals, T_END, pod_ready_at=list(scenario.ready_at))
    ker = run_kernel(scenario.params, arrivals, T_END, scenario.ready_at)

    # Conservation, in each model: every request that arrived ended exactly once or is in flight.
    for seq, in_flight in ((ref.seq, ref.in_flight), (ker.records.seq, ker.in_flight)):
        assert np.unique(seq).size == seq.size
        assert seq.size + in_flight == arrived
        assert seq.size == 0 or (seq[0] >= 0 and seq[-1] < arrived)
    assert ker.arrived == arrived
    assert ker.counts[Outcome.DROPPED] == 0  # nothing is evicted here
    assert sum(ker.counts.values()) + ker.in_flight == arrived

    # The scenario exercises what it is there for.
    ref_counts = {o: int(np.count_nonzero(ref.outcome == o)) for o in Outcome}
    assert all(ref_counts[o] > 0 for o in scenario.must_see), ref_counts
    assert ref.in_flight > 0
    if scenario.router_expiry:
        assert np.any((ref.outcome == TIMED_OUT) & (ref.pod == -1))
    if scenario.router_queue or scenario.router_expiry:
        assert ref.router_queue_s > 0.0

    # Request for request.
    assert ker.in_flight == ref.in_flight
    assert np.array_equal(ker.records.seq, ref.seq)
    assert first_disagreement(ker.records, ref) == "none"
    assert ker.counts == ref_counts


def test_grid_arrivals_share_instants() -> None:
    grid = ARRIVALS["grid"]
    assert np.unique(grid).size < 0.8 * grid.size
    assert np.all(grid / TICK == np.round(grid / TICK))
