"""Queueing theory as ground truth for the compiled data plane.

The kernel is driven through :class:`~gpuscale.sim.dataplane.DataPlane` exactly as the engine drives
it (``advance`` over 1-s chunks of arrivals) with seeded Poisson arrivals, and its queue-wait
statistics are held against closed forms:

* M/M/1 per pod: four pods behind random routing. Random splitting of a Poisson stream gives each pod
  a Poisson stream of λ/4, so each is M/M/1 with ρ = λ/(4μ):
  E[Wq] = ρ/(μ − λ₁) and P(Wq > t) = ρ·e^{−(μ − λ₁)t} (λ₁ = λ/4).
* M/M/c: least-outstanding routing, container concurrency 1 and a router queue make the pods and the
  router queue one shared FIFO queue in front of c servers (docs/simulator.md, Routing):
  E[Wq] = C/(cμ − λ) and P(Wq > t) = C·e^{−(cμ − λ)t}, C = Erlang C.
* M/D/1: deterministic service D on one pod; Pollaczek–Khinchine E[Wq] = ρD/(2(1 − ρ)).

Wait = arrival → start of service; the kernel records it when a request's batch starts (router-queue
time included), as a sum and as a histogram with log buckets of 1 % relative error.

How many requests
-----------------
Waiting times are strongly autocorrelated near saturation, so the standard error of a mean wait is
far larger than σ/√n. Write it as relvar/n: the variance of the mean of n waits relative to its
square. For M/M/1 it is exact (Blomqvist 1967: n · Var[mean Wq] → ρ(2 + 5ρ − 4ρ² + ρ³)/(μ²(1 − ρ)⁴)):

    relvar = (2 + 5ρ − 4ρ² + ρ³) / (ρ(1 − ρ)²)  ≈ 29, 124, 443 at ρ = 0.5, 0.8, 0.9

(four independent pods sharing n requests have the same relvar). Heavy-traffic approximations, which
replications of these very runs confirm to within their noise, give about 16, 62, 222 for M/D/1
(2/(ρ(1 − ρ)²): deterministic service halves it) and 120, 210, 670 for M/M/4 (the M/M/1 value over
P(wait), since only the waiting fraction carries the fluctuation; conservative at ρ = 0.5). The p95
at its 5 % tolerance needs fewer requests than the mean at 3 %.

With tolerance tol at 4σ, n ≥ 16 · relvar / tol²: 7.9 M requests for M/M/1 at ρ = 0.9. Each case
runs about 2.8× that (4σ ≈ 0.6 × tol), and every run checks the margin with its own batch means: 40
consecutive batches give a standard error, and 4 of them must fit in the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from scipy import stats

from gpuscale.sim import kernel as K
from gpuscale.sim.dataplane import DataPlane
from gpuscale.sim.serving import Jitter, Routing, ServingParams, interpolate_batch_latency
from gpuscale.sim.telemetry import hist_quantile

SERVICE_S = 0.001
"""Mean service time: the time unit of every run (1 ms keeps a 1-s chunk at a few thousand arrivals)."""
CHUNK_S = 1.0
N_BATCHES = 40
MEAN_TOL = 0.03
P95_TOL = 0.05
LITTLE_TOL = 0.01


# -- closed forms --------------------------------------------------------------------------------------


def erlang_c(c: int, a: float) -> float:
    """P(an arrival waits) in M/M/c with offered load a = λ/μ < c.

    Computed from the Erlang B recursion B(0) = 1, B(k) = a·B(k−1) / (k + a·B(k−1)), which never forms
    aᶜ or c! (the textbook sum overflows for c in the hundreds), then C = B / (1 − ρ(1 − B)), ρ = a/c.
    Worked example: c = 2, a = 1: B(1) = 1/2, B(2) = (1/2)/(2 + 1/2) = 1/5, C = (1/5)/(1 − ½·⅘) = 1/3.
    """
    if not 0.0 < a < c:
        raise ValueError(f"offered load must be in (0, c) = (0, {c}), got {a}")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def exponential_tail_quantile(p_wait: float, rate: float, q: float) -> float:
    """The q-quantile of a wait with P(W > t) = p_wait·e^{−rate·t} (0 when P(W = 0) ≥ q)."""
    tail = 1.0 - q
    return math.log(p_wait / tail) / rate if p_wait > tail else 0.0


def test_erlang_c_matches_known_values_and_scipy() -> None:
    assert erlang_c(2, 1.0) == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert erlang_c(1, 0.7) == pytest.approx(0.7, rel=1e-12)  # M/M/1: P(wait) = ρ
    # Independent route, the textbook sum with e^{−a} folded in (Poisson probabilities from scipy):
    # C = π_c·c/(c − a) / (Σ_{k<c} π_k + π_c·c/(c − a)), π_k = e^{−a}aᵏ/k!.
    for c, a in [(4, 2.0), (4, 3.6), (16, 14.0), (300, 290.0)]:
        waiting = stats.poisson.pmf(c, a) * c / (c - a)
        expected = waiting / (stats.poisson.cdf(c - 1, a) + waiting)
        assert erlang_c(c, a) == pytest.approx(expected, rel=1e-9)


def test_exponential_tail_quantile() -> None:
    # M/M/1, ρ = 0.5, μ − λ = 1: P(W > t) = 0.5·e^{−t} = 0.05 at t = ln 10.
    assert exponential_tail_quantile(0.5, 1.0, 0.95) == pytest.approx(math.log(10.0))
    assert exponential_tail_quantile(0.04, 1.0, 0.95) == 0.0


# -- running the kernel on Poisson arrivals ----------------------------------------------------------


def poisson_chunks(
    rng: np.random.Generator, rate: float, n: int, chunk_s: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """``(t0, t1, arrivals in [t0, t1))`` for consecutive chunks until ``n`` arrivals have been given.

    Arrivals are drawn in blocks so that a run of tens of millions never holds them all; the last chunk
    is the one that holds the last arrival. Chunk edges are k·chunk_s (no accumulated rounding).
    """
    block = 1 << 18
    carry = np.empty(0, dtype=np.float64)
    last = 0.0
    drawn = 0
    k = 0
    while drawn < n:
        m = min(block, n - drawn)
        times = last + np.cumsum(rng.exponential(1.0 / rate, m))
        last = float(times[-1])
        drawn += m
        pending = np.concatenate((carry, times))
        # Chunks ending at or before the newest arrival are complete; the final block closes the rest.
        stop = math.floor(last / chunk_s) + (1 if drawn == n else 0)
        if stop <= k:
            carry = pending
            continue
        edges = chunk_s * np.arange(k, stop + 1, dtype=np.float64)
        cuts = np.searchsorted(pending, edges, side="left")
        for j in range(stop - k):
            yield float(edges[j]), float(edges[j + 1]), pending[cuts[j] : cuts[j + 1]]
        carry = pending[cuts[-1] :]
        k = stop


@dataclass(frozen=True)
class WaitRun:
    """What one validation run measured."""

    mean_wait_s: float
    p95_wait_s: float
    mean_se_rel: float
    """Standard error of the mean wait relative to it, from batch means."""
    p95_se_rel: float
    little_l: float
    """Time-average number in the system."""
    little_lambda_w: float
    """Arrival rate × mean time in the system."""
    rejected: int
    timed_out: int


def run_waits(params: ServingParams, n_pods: int, rate: float, n_requests: int, seed: int) -> WaitRun:
    dp = DataPlane(params, max_slots=n_pods, slo_s=1.0, seed=seed)
    for _ in range(n_pods):
        dp.open_slot(0.0)
    rng = np.random.default_rng(seed)
    arrived = 0
    t_end = 0.0
    # Cumulative (wait sum, waits, wait histogram) at the boundaries of N_BATCHES arrival-count batches.
    snaps = [(0.0, 0.0, dp.wait_hist.copy())]
    for t0, t1, arrivals in poisson_chunks(rng, rate, n_requests, CHUNK_S):
        dp.advance(t0, t1, arrivals)
        arrived += arrivals.size
        t_end = t1
        if arrived * N_BATCHES // n_requests > len(snaps) - 1:
            snaps.append((float(dp.gf[K.F_WAIT_SUM]), float(dp.gf[K.F_N_WAIT]), dp.wait_hist.copy()))
    assert arrived == dp.counter(K.G_ARRIVED) == n_requests

    waits = float(dp.gf[K.F_N_WAIT])
    mean_wait = float(dp.gf[K.F_WAIT_SUM]) / waits
    p95 = hist_quantile(dp.wait_hist, 0.95)
    assert p95 is not None
    batch_means = np.array([(b[0] - a[0]) / (b[1] - a[1]) for a, b in pairwise(snaps)])
    batch_p95 = np.array([hist_quantile(b[2] - a[2], 0.95) for a, b in pairwise(snaps)])
    nb = batch_means.size
    assert nb >= N_BATCHES - 1

    ended = arrived - dp.in_flight
    return WaitRun(
        mean_wait_s=mean_wait,
        p95_wait_s=p95,
        mean_se_rel=float(batch_means.std(ddof=1)) / math.sqrt(nb) / mean_wait,
        p95_se_rel=float(batch_p95.std(ddof=1)) / math.sqrt(nb) / p95 if p95 > 0 else 0.0,
        little_l=dp.system_integral / t_end,
        little_lambda_w=(arrived / t_end) * (float(dp.gf[K.F_SYS_SUM]) / ended),
        rejected=dp.counter(K.G_REJECTED),
        timed_out=dp.counter(K.G_TIMED_OUT),
    )


def check(run: WaitRun, mean_expected: float, p95_expected: float | None) -> None:
    """The run against theory, with the run's own standard errors guarding the tolerances."""
    assert run.rejected == 0 and run.timed_out == 0  # an infinite-buffer, patient-customer queue
    assert run.little_l == pytest.approx(run.little_lambda_w, rel=LITTLE_TOL)
    assert 4.0 * run.mean_se_rel <= MEAN_TOL, "too few requests for the mean-wait tolerance"
    assert run.mean_wait_s == pytest.approx(mean_expected, rel=MEAN_TOL)
    if p95_expected is not None:
        assert 4.0 * run.p95_se_rel <= P95_TOL, "too few requests for the p95 tolerance"
        assert run.p95_wait_s == pytest.approx(p95_expected, rel=P95_TOL)


def exponential_service(**kw: Any) -> ServingParams:
    """Batch size 1; each request's service time is exponential with mean SERVICE_S."""
    return ServingParams(batch_latency_s=np.array([0.0, SERVICE_S]), jitter=Jitter.EXPONENTIAL, **kw)


# -- the validation runs -----------------------------------------------------------------------------


def mm1_random_routing(rho: float, n_requests: int, seed: int) -> tuple[WaitRun, float, float]:
    pods = 4
    mu = 1.0 / SERVICE_S
    lam_pod = rho * mu
    params = exponential_service(routing=Routing.RANDOM, queue_capacity=1 << 14)
    run = run_waits(params, pods, pods * lam_pod, n_requests, seed)
    return run, rho / (mu - lam_pod), exponential_tail_quantile(rho, mu - lam_pod, 0.95)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rho", "n_requests"), [(0.5, 1_500_000), (0.8, 6_000_000), (0.9, 22_000_000)], ids=lambda x: f"{x:g}"
)
def test_mm1_per_pod_behind_random_routing(rho: float, n_requests: int) -> None:
    run, mean, p95 = mm1_random_routing(rho, n_requests, seed=101)
    check(run, mean, p95)


def mmc_shared_queue(rho: float, n_requests: int, seed: int) -> tuple[WaitRun, float, float]:
    c = 4
    mu = 1.0 / SERVICE_S
    lam = rho * c * mu
    p_wait = erlang_c(c, lam / mu)
    # The router queue is preallocated; at ρ = 0.9 its length exceeds k with probability about
    # C·ρᵏ, so over ~3·10⁷ arrivals it stays below ~200. 10⁴ leaves ample room (a rejection would fail).
    params = exponential_service(
        routing=Routing.LEAST_OUTSTANDING, container_concurrency=1, router_queue_capacity=10_000
    )
    run = run_waits(params, c, lam, n_requests, seed)
    return run, p_wait / (c * mu - lam), exponential_tail_quantile(p_wait, c * mu - lam, 0.95)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rho", "n_requests"), [(0.5, 6_000_000), (0.8, 10_000_000), (0.9, 32_000_000)], ids=lambda x: f"{x:g}"
)
def test_mmc_with_a_shared_router_queue_is_erlang_c(rho: float, n_requests: int) -> None:
    run, mean, p95 = mmc_shared_queue(rho, n_requests, seed=202)
    check(run, mean, p95)


def md1(rho: float, n_requests: int, seed: int) -> tuple[WaitRun, float]:
    params = ServingParams(batch_latency_s=np.array([0.0, SERVICE_S]), queue_capacity=1 << 14)
    run = run_waits(params, 1, rho / SERVICE_S, n_requests, seed)
    return run, rho * SERVICE_S / (2.0 * (1.0 - rho))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rho", "n_requests"), [(0.5, 1_000_000), (0.8, 3_000_000), (0.9, 11_000_000)], ids=lambda x: f"{x:g}"
)
def test_md1_mean_wait_is_pollaczek_khinchine(rho: float, n_requests: int) -> None:
    run, mean = md1(rho, n_requests, seed=303)
    check(run, mean, None)


# -- chunking invariance -----------------------------------------------------------------------------


def busy_params(timeout_s: float) -> ServingParams:
    """Every mechanism that carries state across a chunk edge, including both random streams."""
    return ServingParams(
        batch_latency_s=interpolate_batch_latency([(1, 8.0), (4, 14.0), (8, 22.0)], 8),
        max_batch=8,
        preferred_batch_sizes=(2, 4),
        max_queue_delay_s=0.002,
        jitter=Jitter.LOGNORMAL,
        jitter_cv=0.4,
        cpu_s=0.003,
        cpu_workers=2,
        container_concurrency=6,
        queue_capacity=6,
        router_queue_capacity=40,
        timeout_s=timeout_s,
        routing=Routing.RANDOM,
    )


def run_in_chunks(params: ServingParams, arrivals: np.ndarray, edges: np.ndarray) -> DataPlane:
    dp = DataPlane(params, max_slots=4, slo_s=0.05, seed=7, record=True)
    for _ in range(4):
        dp.open_slot(0.0)
    cuts = np.searchsorted(arrivals, edges, side="left")
    for j in range(edges.size - 1):
        dp.advance(float(edges[j]), float(edges[j + 1]), arrivals[cuts[j] : cuts[j + 1]])
    return dp


@pytest.mark.parametrize(
    "timeout_s",
    [
        pytest.param(math.inf, id="no-timeouts"),
        pytest.param(0.06, id="timeouts"),
    ],
)
def test_a_run_in_many_irregular_chunks_equals_a_run_in_one(timeout_s: float) -> None:
    rng = np.random.default_rng(42)
    # Bursts: 0.5 s at 600/s, then 0.5 s at 3000/s (beyond the pods' capacity), repeated.
    parts = []
    for k in range(10):
        rate = 600.0 if k % 2 == 0 else 3000.0
        n = rng.poisson(0.5 * rate)
        parts.append(np.sort(rng.uniform(0.5 * k, 0.5 * (k + 1), n)))
    arrivals = np.concatenate(parts)
    t_end = 5.5  # past the last arrival: the queues drain
    params = busy_params(timeout_s)

    one = run_in_chunks(params, arrivals, np.array([0.0, t_end]))
    # Irregular chunks: random edges, edges exactly at arrivals (which then open the next chunk) and
    # empty chunks (an edge repeated).
    edges = np.concatenate(
        (
            [0.0, t_end],
            rng.uniform(0.0, t_end, 400),
            rng.choice(arrivals, 200, replace=False),
            np.repeat(rng.uniform(0.0, t_end, 20), 2),
        )
    )
    many = run_in_chunks(params, arrivals, np.sort(edges))

    # The scenario is not idle: pods rejected requests and requests waited in the router queue.
    a, b = one.records(), many.records()
    assert one.counter(K.G_REJECTED) > 0 and one.gf[K.F_RQ_INT] > 0.0
    assert (one.counter(K.G_TIMED_OUT) > 0) == (timeout_s < math.inf)

    assert np.array_equal(one.gi, many.gi)
    assert np.array_equal(one.pi, many.pi)
    assert np.array_equal(one.hist, many.hist)
    assert np.array_equal(one.wait_hist, many.wait_hist)
    assert np.array_equal(one.rng, many.rng)
    for field in ("seq", "outcome", "latency_s", "pod"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    # Sums over events are bit-identical; the time integrals are summed per piece, so a chunk edge
    # splits one product n·Δt into two and may move the last bit.
    event_sums = [K.F_LAT_SUM, K.F_WAIT_SUM, K.F_N_WAIT, K.F_LAT_MAX, K.F_SYS_SUM, K.F_RQ_LAST]
    assert np.array_equal(one.gf[event_sums], many.gf[event_sums])
    per_pod = [K.BUSY_S, K.CPU_BUSY_S, K.BATCH_END, K.TIMER, K.NEXT_T, K.LAST_T, K.LAST_END_T]
    assert np.array_equal(one.pf[:, per_pod], many.pf[:, per_pod])
    assert one.gf[K.F_RQ_INT] == pytest.approx(many.gf[K.F_RQ_INT], rel=1e-12)
    assert one.pf[:, K.INFLIGHT_INT] == pytest.approx(many.pf[:, K.INFLIGHT_INT], rel=1e-12)
    assert one.pf[:, K.BATCH_INT] == pytest.approx(many.pf[:, K.BATCH_INT], rel=1e-12)
