"""A plain SimPy model of the data plane: the reference the compiled kernel is checked against.

It implements ``docs/simulator.md`` (Requests, Routing, Inside a pod) as directly as SimPy allows and
is written for clarity, not speed: requests are Python objects, each pod runs a GPU process and
``cpu_workers`` CPU worker processes, an arrival process feeds the router, and ``env.now`` is the only
clock. It serves two purposes: per-request cross-checks of :mod:`gpuscale.sim.kernel` on small
deterministic scenarios, and the speed yardstick of the benchmark (:func:`reference_throughput`).

Same-instant ordering
---------------------
SimPy orders the events of one instant by ``(priority, scheduling order)``. Every event of this model
that the specification orders is scheduled with an explicit *rank* used as that priority::

    rank = 2 + 4 * slot + stage     stage: 0 pod Ready, 1 CPU completion, 2 batch completion, 3 batching
    rank = 2 + 4 * n_pods           an arrival

so at one instant all of pod 0's events come first (Ready, then CPU completions, then its batch
completion, then its batching), then pod 1's, ..., then arrivals. Ranks start at 2 so that SimPy's own
bookkeeping events (process start ``URGENT`` = 0, store hand-overs ``NORMAL`` = 1) always run in
between and never reorder the model's events. An event that another event creates *for the same
instant* takes its place by rank among the events still waiting, exactly as in a priority queue: a
request admitted by an arrival gets its pod's batching evaluated before the next arrival of that
instant, and a request handed from the router queue to pod 0 by pod 1's batch completion gets pod 0's
batching evaluated before pod 1's.

Events are scheduled at absolute times (:class:`_Signal`), never as ``now + delay``: with a delay the
sum can be one ulp off the intended instant (an arrival at ``t`` would then no longer coincide with a
batch finishing at ``t``), which would break exactly the ties this model exists to check.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import simpy
from simpy.events import EventPriority

from gpuscale.sim.serving import Jitter, Outcome, Routing, ServingParams, interpolate_batch_latency

__all__ = ["ReferenceResult", "reference_throughput", "simulate_reference"]

# Stages of one pod, in the order the specification processes them at one instant.
_READY, _CPU_DONE, _BATCH_DONE, _BATCHING = 0, 1, 2, 3
_STAGES = 4
# Below this rank lie SimPy's own priorities (URGENT = 0, NORMAL = 1).
_FIRST_RANK = 2

_NOT_ENDED = -1

_ProcessGen = Generator[Any, Any, None]


def _pod_rank(slot: int, stage: int) -> int:
    return _FIRST_RANK + _STAGES * slot + stage


@dataclass(frozen=True)
class ReferenceResult:
    """What the reference model observed up to ``t_end``; requests are in ``seq`` order."""

    seq: np.ndarray
    """int64 sequence numbers (arrival order) of the requests that ended, ascending."""
    outcome: np.ndarray
    """int8 :class:`~gpuscale.sim.serving.Outcome` of each ended request."""
    latency_s: np.ndarray
    """float64: finish − arrival; drop time − arrival for a timeout drop at batching time; 0 if rejected."""
    pod: np.ndarray
    """int32 slot of the pod that admitted (or, queue full, rejected) it; −1 if rejected by the router."""
    in_flight: int
    """Requests that arrived before ``t_end`` and had not ended by then."""
    busy_s: np.ndarray
    """float64 per pod: GPU busy seconds in ``[0, t_end)`` (a batch running past ``t_end`` is clipped)."""
    outstanding_s: np.ndarray
    """float64 per pod: time integral of its outstanding requests over ``[0, t_end)``."""
    router_queue_s: float
    """Time integral of the router queue's length over ``[0, t_end)``."""


class _Signal(simpy.Event):
    """A SimPy event that fires at an absolute time with an explicit same-instant rank.

    ``Event.succeed`` always uses priority ``NORMAL`` and ``Timeout`` takes a relative delay; this does
    what both do internally (and what ``Environment.run(until=...)`` does for its stop event) with the
    time and priority this model needs.
    """

    def fire(self, when: float, rank: int) -> _Signal:
        env = self.env
        self._ok = True
        self._value = None
        heapq.heappush(env._queue, (when, EventPriority(rank), next(env._eid), self))
        return self


def _signal_at(env: simpy.Environment, when: float, rank: int) -> _Signal:
    return _Signal(env).fire(when, rank)


class _Request:
    """One request on its way through the model."""

    __slots__ = ("arrival", "enqueued", "seq")

    def __init__(self, seq: int, arrival: float) -> None:
        self.seq = seq
        self.arrival = arrival
        self.enqueued = arrival  # set again when it enters the GPU queue


class _Ledger:
    """Per-request outcomes, filled in as requests end."""

    def __init__(self, n: int) -> None:
        self.outcome = [_NOT_ENDED] * n
        self.latency = [0.0] * n
        self.pod = [-1] * n
        self.arrived = 0

    def end(self, req: _Request, outcome: Outcome, latency: float, pod: int) -> None:
        self.outcome[req.seq] = int(outcome)
        self.latency[req.seq] = latency
        self.pod[req.seq] = pod


class _JitterSource:
    """Multiplicative batch-time noise with mean one, drawn in blocks so SimPy dominates the cost."""

    _BLOCK = 4096

    def __init__(self, kind: Jitter, cv: float, rng: np.random.Generator) -> None:
        self._kind = kind
        self._cv = cv
        self._rng = rng
        self._buf: list[float] = []
        self._pos = 0

    def next(self) -> float:
        if self._kind is Jitter.NONE:
            return 1.0
        if self._pos == len(self._buf):
            self._buf = self._draw().tolist()
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return value

    def _draw(self) -> np.ndarray:
        if self._kind is Jitter.EXPONENTIAL:
            return self._rng.exponential(1.0, self._BLOCK)
        # Mean one with coefficient of variation cv: sigma² = ln(1 + cv²), mu = −sigma²/2.
        sigma2 = math.log1p(self._cv * self._cv)
        return self._rng.lognormal(-sigma2 / 2.0, math.sqrt(sigma2), self._BLOCK)


class _Router:
    """Chooses a pod for each request; holds the router queue (Knative activator / breaker)."""

    def __init__(
        self,
        env: simpy.Environment,
        params: ServingParams,
        ledger: _Ledger,
        rng: np.random.Generator,
        t_end: float,
    ) -> None:
        self.env = env
        self.pods: list[_Pod] = []
        self._params = params
        self._ledger = ledger
        self._rng = rng
        self._t_end = t_end
        self._queue: deque[_Request] = deque()
        # Round-robin: the slot chosen last; −1 so that the first request goes to slot 0.
        self._last = -1
        self.expiry_rank = _FIRST_RANK
        """Same-instant rank of router-queue expiries: after every pod event, before arrivals."""
        self._queue_area = 0.0
        self._queue_since = 0.0

    def _eligible(self, pod: _Pod) -> bool:
        cc = self._params.container_concurrency
        return pod.ready and (cc == 0 or pod.outstanding < cc)

    def _choose(self) -> _Pod | None:
        routing = self._params.routing
        if routing is Routing.LEAST_OUTSTANDING:
            best: _Pod | None = None
            for pod in self.pods:  # slot order, so a strict < keeps the lowest slot on ties
                if self._eligible(pod) and (best is None or pod.outstanding < best.outstanding):
                    best = pod
            return best
        if routing is Routing.ROUND_ROBIN:
            n = len(self.pods)
            for step in range(1, n + 1):
                pod = self.pods[(self._last + step) % n]
                if self._eligible(pod):
                    self._last = pod.slot
                    return pod
            return None
        eligible = [pod for pod in self.pods if self._eligible(pod)]
        return eligible[int(self._rng.integers(len(eligible)))] if eligible else None

    def _queue_changes(self) -> None:
        now = self.env.now
        self._queue_area += len(self._queue) * (now - self._queue_since)
        self._queue_since = now

    def route(self, req: _Request) -> None:
        """A new arrival: to a pod, else into the router queue, else rejected."""
        # FIFO: nobody overtakes the router queue. Every freeing of capacity hands the queue out at once,
        # so a non-empty queue already means no pod is eligible; the guard states the rule outright.
        pod = None if self._queue else self._choose()
        if pod is not None:
            pod.admit(req)
        elif len(self._queue) < self._params.router_queue_capacity:
            self._queue_changes()
            self._queue.append(req)
            if self._params.timeout_s < float("inf"):
                # The client gives up when its wait in the router queue reaches the timeout.
                expiry = _signal_at(self.env, req.arrival + self._params.timeout_s, self.expiry_rank)
                expiry.callbacks.append(partial(self._expire_event, req))
        else:
            self._ledger.end(req, Outcome.REJECTED, 0.0, -1)

    def _expire_event(self, req: _Request, _event: simpy.Event) -> None:
        self._expire(req)

    def _expire(self, req: _Request) -> None:
        # Expiry times follow arrival order, so a request still waiting is at the head.
        if self._queue and self._queue[0] is req:
            self._queue_changes()
            self._queue.popleft()
            self._ledger.end(req, Outcome.TIMED_OUT, self.env.now - req.arrival, -1)

    def hand_out(self) -> None:
        """Capacity was freed or a pod became Ready: serve the router queue in FIFO order."""
        while self._queue:
            pod = self._choose()
            if pod is None:
                return
            self._queue_changes()
            pod.admit(self._queue.popleft())

    def queue_area(self) -> float:
        return self._queue_area + len(self._queue) * (self._t_end - self._queue_since)


class _Pod:
    """One serving pod: CPU stage, GPU queue, dynamic batcher and GPU, as SimPy processes."""

    def __init__(
        self,
        env: simpy.Environment,
        slot: int,
        params: ServingParams,
        router: _Router,
        ledger: _Ledger,
        jitter: _JitterSource,
        t_end: float,
        ready_at: float,
    ) -> None:
        self.env = env
        self.slot = slot
        self._p = params
        self._router = router
        self._ledger = ledger
        self._jitter = jitter
        self._t_end = t_end
        self.ready = ready_at <= 0.0
        self.outstanding = 0
        self.busy_s = 0.0
        self._area = 0.0
        self._area_since = 0.0

        self._gpu_queue: deque[_Request] = deque()
        self._gpu_busy = False
        self._batch_latency = [float(x) for x in params.batch_latency_s]
        preferred = sorted(params.preferred_batch_sizes) or [params.max_batch]
        self._preferred = preferred
        self._threshold = min(params.dispatch_threshold, params.max_batch)

        # The batcher is evaluated when ``_wake`` fires (at this pod's batching rank); several reasons to
        # evaluate at one instant share one evaluation.
        self._wake = _Signal(env)
        self._wake_pending = False
        # At most one max-queue-delay timer is live; a newer decision makes older timers stale.
        self._timer_at: float | None = None
        self._timer_token = 0

        env.process(self._gpu())
        if params.cpu_s > 0.0:
            self._cpu_inbox = simpy.Store(env)
            for _ in range(params.cpu_workers):
                env.process(self._cpu_worker())
        if not self.ready:
            env.process(self._become_ready(ready_at))

    # -- bookkeeping ------------------------------------------------------------------------------------

    def _outstanding_changes(self, delta: int) -> None:
        now = self.env.now
        self._area += self.outstanding * (now - self._area_since)
        self._area_since = now
        self.outstanding += delta

    def outstanding_area(self) -> float:
        return self._area + self.outstanding * (self._t_end - self._area_since)

    # -- lifecycle --------------------------------------------------------------------------------------

    def _become_ready(self, at: float) -> _ProcessGen:
        yield _signal_at(self.env, at, _pod_rank(self.slot, _READY))
        self.ready = True
        self._router.hand_out()

    # -- admission and CPU stage ------------------------------------------------------------------------

    def admit(self, req: _Request) -> None:
        if self.outstanding >= self._p.queue_capacity:
            self._ledger.end(req, Outcome.REJECTED, 0.0, self.slot)
            return
        self._outstanding_changes(+1)
        if self._p.cpu_s > 0.0:
            self._cpu_inbox.put(req)
        else:
            self._enqueue_gpu(req)

    def _cpu_worker(self) -> _ProcessGen:
        """One CPU worker: takes requests FIFO, ``cpu_s`` each, then hands them to the GPU queue."""
        env = self.env
        done_rank = _pod_rank(self.slot, _CPU_DONE)
        while True:
            req = yield self._cpu_inbox.get()
            # Workers start in admission order and all take cpu_s, so completions (same rank, then
            # scheduling order) reach the GPU queue in admission order too.
            yield _signal_at(env, env.now + self._p.cpu_s, done_rank)
            self._enqueue_gpu(req)

    # -- GPU queue, batcher and GPU ---------------------------------------------------------------------

    def _enqueue_gpu(self, req: _Request) -> None:
        req.enqueued = self.env.now
        self._gpu_queue.append(req)
        self._request_batching()

    def _request_batching(self) -> None:
        """The queue changed or a timer fired: evaluate the batcher at this instant, if the GPU is idle."""
        if self._gpu_busy or self._wake_pending:
            return
        self._wake_pending = True
        self._wake.fire(self.env.now, _pod_rank(self.slot, _BATCHING))

    def _set_timer(self, due: float) -> None:
        if self._timer_at == due:
            return
        self._timer_at = due
        self._timer_token += 1
        token = self._timer_token

        def on_timer(_: simpy.Event) -> None:
            if token == self._timer_token:
                self._timer_at = None
                self._request_batching()

        _signal_at(self.env, due, _pod_rank(self.slot, _BATCHING)).callbacks.append(on_timer)

    def _cancel_timer(self) -> None:
        if self._timer_at is not None:
            self._timer_at = None
            self._timer_token += 1

    def _largest_preferred_at_most(self, n: int) -> int:
        best = 0
        for size in self._preferred:
            if size <= n:
                best = size
        return best

    def _batch_size(self) -> tuple[int, bool]:
        """Triton's dynamic batcher at ``now``: drop expired heads, then the size to dispatch (0: wait).

        Also says whether timeout drops freed capacity.
        """
        now = self.env.now
        queue = self._gpu_queue
        p = self._p
        freed = False
        while queue and now - queue[0].arrival > p.timeout_s:
            req = queue.popleft()
            self._outstanding_changes(-1)
            self._ledger.end(req, Outcome.TIMED_OUT, now - req.arrival, self.slot)
            freed = True

        n = len(queue)
        size = 0
        if n >= p.max_batch:
            size = p.max_batch
        elif n >= self._threshold:
            size = self._largest_preferred_at_most(n)
        elif n > 0:
            due = queue[0].enqueued + p.max_queue_delay_s
            if now >= due:
                size = self._largest_preferred_at_most(n) or n
            else:
                self._set_timer(due)
        if size > 0 or n == 0:
            self._cancel_timer()
        return size, freed

    def _gpu(self) -> _ProcessGen:
        """The batcher and the GPU: wait for a reason to batch, dispatch, run the batch, repeat."""
        env = self.env
        done_rank = _pod_rank(self.slot, _BATCH_DONE)
        while True:
            yield self._wake
            self._wake = _Signal(env)
            self._wake_pending = False
            size, freed = self._batch_size()
            batch = [self._gpu_queue.popleft() for _ in range(size)]
            self._gpu_busy = size > 0
            if freed:
                # Timeout drops freed capacity. The router queue is served after this pod's decision:
                # a request it hands to this pod waits for the batch just dispatched or, if none was,
                # gets its own evaluation at this instant.
                self._router.hand_out()
            if size == 0:
                continue

            duration = self._batch_latency[size] * self._jitter.next()
            self.busy_s += min(duration, self._t_end - env.now)
            yield _signal_at(env, env.now + duration, done_rank)

            self._gpu_busy = False
            now = env.now
            self._outstanding_changes(-size)
            for req in batch:
                latency = now - req.arrival
                outcome = Outcome.COMPLETED if latency <= self._p.timeout_s else Outcome.TIMED_OUT
                self._ledger.end(req, outcome, latency, self.slot)
            # Handing the freed capacity to the router queue is part of the batch completion, so this
            # pod's batching (a later stage of the same instant) already sees what it was handed.
            self._router.hand_out()
            self._request_batching()  # the GPU is idle again: whatever waits may go now


def _arrival_process(
    env: simpy.Environment, arrivals: list[float], rank: int, router: _Router, ledger: _Ledger
) -> _ProcessGen:
    for seq, t in enumerate(arrivals):
        yield _signal_at(env, t, rank)
        ledger.arrived += 1
        router.route(_Request(seq, t))


def simulate_reference(
    params: ServingParams,
    n_pods: int,
    arrivals: np.ndarray,
    t_end: float,
    pod_ready_at: Sequence[float] | None = None,
    seed: int = 0,
) -> ReferenceResult:
    """Run the SimPy reference model of the data plane over ``[0, t_end)``.

    ``n_pods`` pods occupy slots ``0..n_pods-1`` and are Ready from t = 0 unless ``pod_ready_at[i]``
    says later. ``arrivals`` are sorted arrival times; request ``i`` has sequence number ``i``. Arrivals
    at or after ``t_end`` never happen, and nothing scheduled at exactly ``t_end`` is processed. Jitter
    and random routing draw from ``numpy.random.default_rng(seed)``.
    """
    if n_pods < 0:
        raise ValueError(f"n_pods must be >= 0, got {n_pods}")
    if not t_end > 0.0:
        raise ValueError(f"t_end must be > 0, got {t_end}")
    times = np.asarray(arrivals, dtype=np.float64)
    if times.ndim != 1 or (times.size > 1 and bool(np.any(np.diff(times) < 0))):
        raise ValueError("arrivals must be a sorted one-dimensional array")
    if times.size and times[0] < 0.0:
        raise ValueError("arrival times must be >= 0")
    ready_at = [0.0] * n_pods if pod_ready_at is None else [float(t) for t in pod_ready_at]
    if len(ready_at) != n_pods:
        raise ValueError(f"pod_ready_at has {len(ready_at)} entries for {n_pods} pods")
    if params.cpu_s > 0.0 and params.cpu_workers < 1:
        raise ValueError("a CPU stage needs cpu_workers >= 1")

    env = simpy.Environment()
    rng = np.random.default_rng(seed)
    ledger = _Ledger(times.size)
    router = _Router(env, params, ledger, rng, t_end)
    jitter = _JitterSource(params.jitter, params.jitter_cv, rng)
    router.pods = [
        _Pod(env, slot, params, router, ledger, jitter, t_end, ready_at[slot]) for slot in range(n_pods)
    ]
    router.expiry_rank = _FIRST_RANK + _STAGES * n_pods
    env.process(_arrival_process(env, times.tolist(), _FIRST_RANK + _STAGES * n_pods + 1, router, ledger))
    env.run(until=t_end)

    outcome = np.asarray(ledger.outcome, dtype=np.int8)
    ended = np.flatnonzero(outcome != _NOT_ENDED)
    return ReferenceResult(
        seq=ended.astype(np.int64),
        outcome=outcome[ended],
        latency_s=np.asarray(ledger.latency, dtype=np.float64)[ended],
        pod=np.asarray(ledger.pod, dtype=np.int32)[ended],
        in_flight=ledger.arrived - int(ended.size),
        busy_s=np.array([pod.busy_s for pod in router.pods], dtype=np.float64),
        outstanding_s=np.array([pod.outstanding_area() for pod in router.pods], dtype=np.float64),
        router_queue_s=router.queue_area(),
    )


def reference_throughput(n_requests: int = 200_000) -> float:
    """Requests simulated per wall-clock second on a representative scenario (a benchmark helper).

    Eight pods, least-outstanding routing, dynamic batching up to 8 with a 2 ms max queue delay,
    lognormal jitter (cv 0.1), Poisson arrivals at 70 % of the pods' full-batch capacity.
    """
    max_batch = 8
    latency = interpolate_batch_latency([(1, 10.0), (8, 24.0)], max_batch)
    params = ServingParams(
        batch_latency_s=latency,
        max_batch=max_batch,
        max_queue_delay_s=0.002,
        jitter=Jitter.LOGNORMAL,
        jitter_cv=0.1,
        routing=Routing.LEAST_OUTSTANDING,
    )
    n_pods = 8
    # Full batches of 8 in 24 ms: 333 requests/s per pod; 70 % of 8 pods is about 1867 requests/s.
    rate = 0.7 * n_pods * max_batch / float(latency[max_batch])
    rng = np.random.default_rng(12345)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n_requests))
    t_end = float(arrivals[-1]) + 1.0  # long enough for the last request to finish
    start = time.perf_counter()
    result = simulate_reference(params, n_pods, arrivals, t_end, seed=1)
    elapsed = time.perf_counter() - start
    return (result.seq.size + result.in_flight) / elapsed
