"""The compiled data plane: arrivals, routing, per-pod CPU stage, dynamic batching, GPU, outcomes.

The kernel advances the data plane over ``[t0, t1)`` and returns; Python runs the control plane in
between (see ``docs/simulator.md`` for the exact semantics, which the SimPy reference model in
``reference.py`` implements independently). Requests never become Python objects: each pod is a ring
buffer of request rows, and because every stage inside a pod is FIFO in arrival order (the CPU stage
takes exactly ``cpu_s`` per request, so workers finish in the order they start), five monotonically
increasing pointers describe where every request is:

    HEAD ≤ GPU_NEXT ≤ CPU_DONE ≤ CPU_NEXT ≤ TAIL
    [HEAD, GPU_NEXT)      the batch on the GPU
    [GPU_NEXT, CPU_DONE)  the GPU queue (R_STAGE = enqueue time)
    [CPU_DONE, CPU_NEXT)  on a CPU worker (R_STAGE = start time); at most cpu_workers
    [CPU_NEXT, TAIL)      waiting for a CPU worker

All state lives in numpy arrays owned by :class:`~gpuscale.sim.dataplane.DataPlane`, so a run can be
advanced chunk by chunk and inspected between chunks at no cost.

Every function is compiled with ``_nrt=False``: the kernel never allocates, and without Numba's
reference counting the ~30 arrays threaded through the inlined helpers cost nothing per event
(with it, the atomic increments and decrements were 95 % of the run time: 1.2 M vs 23 M requests/s
on one pod in the same process).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba as nb
import numpy as np

_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(inline: bool = False) -> Callable[[_F], _F]:
    """Compile with Numba, cached on disk, without reference counting (see the module docstring)."""
    options: dict[str, Any] = {"cache": True, "_nrt": False}
    if inline:
        options["inline"] = "always"
    return cast(Callable[[_F], _F], nb.njit(**options))


# ---- per-pod integer columns (PI) ---------------------------------------------------------------
HEAD = 0
GPU_NEXT = 1
CPU_DONE = 2
CPU_NEXT = 3
TAIL = 4
BUSY = 5
CUR_BATCH = 6
HW_BATCH = 7
N_ADMITTED = 8
N_COMPLETED = 9
N_TIMED_OUT = 10
N_REJECTED = 11
N_DROPPED = 12
N_BATCHES = 13
N_PI = 14

# ---- per-pod float columns (PF) -----------------------------------------------------------------
BATCH_END = 0
TIMER = 1
NEXT_T = 2
BUSY_S = 3
CPU_BUSY_S = 4
INFLIGHT_INT = 5
BATCH_INT = 6
LAST_T = 7
SPEED = 8
LAST_END_T = 9
N_PF = 10

# ---- global integer counters (GI) ---------------------------------------------------------------
G_ARRIVED = 0
G_COMPLETED = 1
G_TIMED_OUT = 2
G_REJECTED = 3
G_DROPPED = 4
G_SLO_MET = 5
G_RQ_HEAD = 6
G_RQ_TAIL = 7
G_RR_LAST = 8
G_N_REC = 9
G_USERS_ACTIVE = 10
G_HEAP_N = 11
G_RETIRE = 12
G_FREE_N = 13
G_RECORD = 14
G_EVENTS = 15
N_GI = 16

# ---- global float accumulators (GF) -------------------------------------------------------------
F_LAT_SUM = 0
F_RQ_INT = 1
F_RQ_LAST = 2
F_WAIT_SUM = 3
F_N_WAIT = 4
F_LAT_MAX = 5
F_SYS_SUM = 6
F_SPARE_NORMAL = 7
F_HAS_SPARE = 8
N_GF = 9

# ---- configuration (CF floats, CI ints) ---------------------------------------------------------
C_CPU_S = 0
C_MAX_DELAY_S = 1
C_TIMEOUT_S = 2
C_SLO_S = 3
C_JITTER_CV = 4
C_THINK_MIN_S = 5
C_THINK_MAX_S = 6
C_JITTER_SIGMA2 = 7
"""ln(1 + cv^2): the lognormal jitter's log-variance (set from C_JITTER_CV by :func:`advance`)."""
C_JITTER_SIGMA = 8
N_CF = 9

K_MAX_BATCH = 0
K_THRESHOLD = 1
K_CPU_WORKERS = 2
K_CC = 3
K_QCAP = 4
K_RQCAP = 5
K_ROUTING = 6
K_JITTER = 7
K_RING_MASK = 8
N_CI = 9

ROUTE_LEAST = 0
ROUTE_RR = 1
ROUTE_RANDOM = 2
JIT_NONE = 0
JIT_LOGNORMAL = 1
JIT_EXPONENTIAL = 2

OUT_COMPLETED = 0
OUT_TIMED_OUT = 1
OUT_REJECTED = 2
OUT_DROPPED = 3

# ---- latency histograms: log-linear buckets, relative error <= 0.8 % -------------------------------
# A value x = m * 2**e (m in [0.5, 1), from frexp) falls in octave e, split into HIST_SUB equal
# sub-buckets of m. No logarithm per request: frexp only reads the float's bits. A sub-bucket spans
# 1/(2*HIST_SUB) of m and m >= 0.5, so its midpoint is within 1/(2*HIST_SUB) = 0.78 % of any value in it.
HIST_SUB = 64
HIST_MIN_EXP = -20
"""Octave of the first bucket: 2**-21 .. 2**-20 s (about 0.5-1 µs); smaller values land in bucket 0."""
HIST_OCTAVES = 42
"""Up to 2**21 s (24 days); larger values land in the last bucket."""
HIST_BUCKETS = HIST_SUB * HIST_OCTAVES
HIST_REL_ERROR = 1.0 / (2 * HIST_SUB)


@_compiled(inline=True)
def _bucket(x: float) -> int:
    if x <= 0.0:
        return 0
    m, e = math.frexp(x)
    k = (e - HIST_MIN_EXP) * HIST_SUB + int((m - 0.5) * (2 * HIST_SUB))
    if k < 0:
        return 0
    return k if k < HIST_BUCKETS else HIST_BUCKETS - 1


def bucket_values() -> np.ndarray:
    """The value (seconds) each histogram bucket stands for: its midpoint, within HIST_REL_ERROR
    (0.78 %) of any value in the bucket."""
    k = np.arange(HIST_BUCKETS, dtype=np.float64)
    e = HIST_MIN_EXP + np.floor(k / HIST_SUB)
    j = k % HIST_SUB
    lo = (0.5 + j / (2 * HIST_SUB)) * 2.0**e
    return lo + 0.5 * 2.0**e / (2 * HIST_SUB)


# ---- xoshiro256** ------------------------------------------------------------------------------
@_compiled(inline=True)
def _rotl(x: np.uint64, k: int) -> np.uint64:
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@_compiled(inline=True)
def _next_u64(s: np.ndarray) -> np.uint64:
    result = _rotl(s[1] * np.uint64(5), 7) * np.uint64(9)
    t = s[1] << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@_compiled(inline=True)
def _uniform(s: np.ndarray) -> float:
    return float(_next_u64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@_compiled()
def _std_normal(s: np.ndarray, gf: np.ndarray) -> float:
    """Box-Muller; each pair of uniforms gives two normals, the second kept for the next call."""
    if gf[F_HAS_SPARE] != 0.0:
        gf[F_HAS_SPARE] = 0.0
        return float(gf[F_SPARE_NORMAL])
    u1 = _uniform(s)
    while u1 <= 0.0:
        u1 = _uniform(s)
    u2 = _uniform(s)
    r = math.sqrt(-2.0 * math.log(u1))
    gf[F_SPARE_NORMAL] = r * math.sin(2.0 * math.pi * u2)
    gf[F_HAS_SPARE] = 1.0
    return r * math.cos(2.0 * math.pi * u2)


@_compiled(inline=True)
def _jitter(cf: np.ndarray, ci: np.ndarray, rng: np.ndarray, gf: np.ndarray) -> float:
    kind = ci[K_JITTER]
    if kind == JIT_NONE:
        return 1.0
    if kind == JIT_EXPONENTIAL:
        u = _uniform(rng)
        return -math.log(1.0 - u)
    sigma2 = cf[C_JITTER_SIGMA2]
    return math.exp(cf[C_JITTER_SIGMA] * _std_normal(rng, gf) - 0.5 * sigma2)


# ---- closed-loop users: a binary min-heap of (wake time, user id) -------------------------------
@_compiled(inline=True)
def _heap_less(ut: np.ndarray, a: int, b: int) -> bool:
    return ut[a] < ut[b] or (ut[a] == ut[b] and a < b)


@_compiled()
def _heap_push(heap: np.ndarray, ut: np.ndarray, gi: np.ndarray, u: int) -> None:
    n = gi[G_HEAP_N]
    heap[n] = u
    gi[G_HEAP_N] = n + 1
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if _heap_less(ut, heap[i], heap[parent]):
            tmp = heap[i]
            heap[i] = heap[parent]
            heap[parent] = tmp
            i = parent
        else:
            break


@_compiled()
def _heap_pop(heap: np.ndarray, ut: np.ndarray, gi: np.ndarray) -> int:
    top = heap[0]
    n = gi[G_HEAP_N] - 1
    gi[G_HEAP_N] = n
    if n > 0:
        heap[0] = heap[n]
        i = 0
        while True:
            left = 2 * i + 1
            if left >= n:
                break
            c = left
            right = left + 1
            if right < n and _heap_less(ut, heap[right], heap[left]):
                c = right
            if _heap_less(ut, heap[c], heap[i]):
                tmp = heap[i]
                heap[i] = heap[c]
                heap[c] = tmp
                i = c
            else:
                break
    return int(top)


@_compiled(inline=True)
def _think(cf: np.ndarray, rng: np.ndarray) -> float:
    lo = cf[C_THINK_MIN_S]
    hi = cf[C_THINK_MAX_S]
    return float(lo + (hi - lo) * _uniform(rng))


# ---- outcomes -----------------------------------------------------------------------------------
@_compiled(inline=True)
def _finish(
    seq: int,
    user: int,
    arr_t: float,
    t: float,
    outcome: int,
    pod: int,
    gi: np.ndarray,
    gf: np.ndarray,
    cf: np.ndarray,
    hist: np.ndarray,
    rec_seq: np.ndarray,
    rec_out: np.ndarray,
    rec_lat: np.ndarray,
    rec_pod: np.ndarray,
    heap: np.ndarray,
    ut: np.ndarray,
    free: np.ndarray,
    rng: np.ndarray,
) -> None:
    lat = t - arr_t
    gf[F_SYS_SUM] += lat
    if outcome == OUT_COMPLETED:
        gi[G_COMPLETED] += 1
        gf[F_LAT_SUM] += lat
        hist[_bucket(lat)] += 1
        if lat > gf[F_LAT_MAX]:
            gf[F_LAT_MAX] = lat
        if lat <= cf[C_SLO_S]:
            gi[G_SLO_MET] += 1
    elif outcome == OUT_TIMED_OUT:
        gi[G_TIMED_OUT] += 1
        gf[F_LAT_SUM] += lat
        # The client gave up at the timeout: that is the latency it observed.
        seen = min(lat, cf[C_TIMEOUT_S])
        hist[_bucket(seen)] += 1
        if seen > gf[F_LAT_MAX]:
            gf[F_LAT_MAX] = seen
    elif outcome == OUT_REJECTED:
        gi[G_REJECTED] += 1
        lat = 0.0
    else:
        gi[G_DROPPED] += 1
    if gi[G_RECORD] != 0:
        n = gi[G_N_REC]
        if n < rec_seq.shape[0]:
            rec_seq[n] = seq
            rec_out[n] = outcome
            rec_lat[n] = lat
            rec_pod[n] = pod
        gi[G_N_REC] = n + 1
    if user >= 0:
        if gi[G_RETIRE] > 0:
            gi[G_RETIRE] -= 1
            free[gi[G_FREE_N]] = user
            gi[G_FREE_N] += 1
        else:
            ut[user] = t + _think(cf, rng)
            _heap_push(heap, ut, gi, user)


# ---- per-pod mechanics ----------------------------------------------------------------------------
@_compiled(inline=True)
def _touch(p: int, t: float, pi: np.ndarray, pf: np.ndarray) -> None:
    dt = t - pf[p, LAST_T]
    if dt > 0.0:
        pf[p, INFLIGHT_INT] += (pi[p, TAIL] - pi[p, HEAD]) * dt
        if pi[p, BUSY] != 0:
            pf[p, BATCH_INT] += pi[p, CUR_BATCH] * dt
        pf[p, LAST_T] = t


@_compiled(inline=True)
def _ph_less(pf: np.ndarray, a: int, b: int) -> bool:
    ka = pf[a, NEXT_T]
    kb = pf[b, NEXT_T]
    return bool(ka < kb or (ka == kb and a < b))


@_compiled(inline=True)
def _ph_fix(ph: np.ndarray, pf: np.ndarray, p: int) -> None:
    """Restore the pod-event heap after pod ``p``'s next event time changed.

    ``ph`` is an indexed binary min-heap of pod slots keyed by (NEXT_T, slot): ``ph[0]`` is its size,
    ``ph[1..n]`` the heap, ``ph[1 + P + slot]`` each slot's position (0 = absent). With 32 pods it
    replaces a 32-way scan on every event by a few swaps.
    """
    npos = (ph.shape[0] - 1) // 2
    i = ph[1 + npos + p]
    while i > 1:
        parent = i >> 1
        q = ph[parent]
        if _ph_less(pf, p, q):
            ph[i] = q
            ph[1 + npos + q] = i
            i = parent
        else:
            break
    n = ph[0]
    while True:
        left = 2 * i
        if left > n:
            break
        c = left
        if left + 1 <= n and _ph_less(pf, ph[left + 1], ph[left]):
            c = left + 1
        if _ph_less(pf, ph[c], p):
            q = ph[c]
            ph[i] = q
            ph[1 + npos + q] = i
            i = c
        else:
            break
    ph[i] = p
    ph[1 + npos + p] = i


@_compiled()
def _ph_build(ph: np.ndarray, pf: np.ndarray, act: np.ndarray, n_act: int) -> None:
    npos = (ph.shape[0] - 1) // 2
    ph[0] = 0
    ph[1 + npos :] = 0
    for k in range(n_act):
        p = act[k]
        ph[0] += 1
        ph[ph[0]] = p
        ph[1 + npos + p] = ph[0]
        _ph_fix(ph, pf, p)


@_compiled(inline=True)
def _update_next(
    p: int, pi: np.ndarray, pf: np.ndarray, cf: np.ndarray, ring_stage: np.ndarray, mask: int, ph: np.ndarray
) -> None:
    nxt = math.inf
    if pi[p, CPU_DONE] < pi[p, CPU_NEXT]:
        nxt = ring_stage[p, pi[p, CPU_DONE] & mask] + cf[C_CPU_S]
    if pi[p, BUSY] != 0:
        if pf[p, BATCH_END] < nxt:
            nxt = pf[p, BATCH_END]
    elif pf[p, TIMER] < nxt:
        nxt = pf[p, TIMER]
    if nxt != pf[p, NEXT_T]:
        pf[p, NEXT_T] = nxt
        if ph[1 + (ph.shape[0] - 1) // 2 + p] > 0:
            _ph_fix(ph, pf, p)


@_compiled(inline=True)
def _dispatch(
    p: int,
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    cf: np.ndarray,
    ci: np.ndarray,
    lat_table: np.ndarray,
    preferred: np.ndarray,
    ring_arr: np.ndarray,
    ring_stage: np.ndarray,
    ring_seq: np.ndarray,
    ring_user: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hist: np.ndarray,
    wait_hist: np.ndarray,
    rec_seq: np.ndarray,
    rec_out: np.ndarray,
    rec_lat: np.ndarray,
    rec_pod: np.ndarray,
    heap: np.ndarray,
    ut: np.ndarray,
    free: np.ndarray,
    rng: np.ndarray,
) -> None:
    """The dynamic batcher, run when the GPU is idle (HEAD == GPU_NEXT)."""
    mask = ci[K_RING_MASK]
    timeout = cf[C_TIMEOUT_S]
    # Requests whose age exceeds the timeout are dropped at the head of the queue (Triton's queue
    # policy). Arrival order is queue order, so every expired request sits at the head.
    while pi[p, GPU_NEXT] < pi[p, CPU_DONE]:
        i = pi[p, GPU_NEXT] & mask
        if t - ring_arr[p, i] > timeout:
            _touch(p, t, pi, pf)
            _finish(
                ring_seq[p, i], ring_user[p, i], ring_arr[p, i], t, OUT_TIMED_OUT, p,
                gi, gf, cf, hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng,
            )  # fmt: skip
            pi[p, N_TIMED_OUT] += 1
            pi[p, GPU_NEXT] += 1
            pi[p, HEAD] += 1
            pf[p, LAST_END_T] = t
        else:
            break
    n = pi[p, CPU_DONE] - pi[p, GPU_NEXT]
    if n == 0:
        pf[p, TIMER] = math.inf
        return
    bmax = ci[K_MAX_BATCH]
    b = 0
    if n >= bmax:
        b = bmax
    elif n >= ci[K_THRESHOLD]:
        b = ci[K_THRESHOLD]
    elif t >= ring_stage[p, pi[p, GPU_NEXT] & mask] + cf[C_MAX_DELAY_S]:
        b = n
        best = 0
        for k in range(preferred.shape[0]):
            if preferred[k] <= n and preferred[k] > best:
                best = preferred[k]
        if best > 0:
            b = best
    if b == 0:
        pf[p, TIMER] = ring_stage[p, pi[p, GPU_NEXT] & mask] + cf[C_MAX_DELAY_S]
        return
    _touch(p, t, pi, pf)
    start = pi[p, GPU_NEXT]
    for j in range(start, start + b):
        w = t - ring_arr[p, j & mask]
        wait_hist[_bucket(w)] += 1
        gf[F_WAIT_SUM] += w
    gf[F_N_WAIT] += b
    dur = lat_table[b] * pf[p, SPEED] * _jitter(cf, ci, rng, gf)
    pi[p, GPU_NEXT] = start + b
    pi[p, BUSY] = 1
    pi[p, CUR_BATCH] = b
    pi[p, N_BATCHES] += 1
    if b > pi[p, HW_BATCH]:
        pi[p, HW_BATCH] = b
    pf[p, BATCH_END] = t + dur
    pf[p, BUSY_S] += dur
    pf[p, TIMER] = math.inf


@_compiled(inline=True)
def _choose_pod(
    pi: np.ndarray,
    ci: np.ndarray,
    gi: np.ndarray,
    acc: np.ndarray,
    n_acc: int,
    rng: np.ndarray,
    scratch: np.ndarray,
) -> int:
    """The pod a request goes to, or -1 when no pod is eligible (see docs/simulator.md, Routing)."""
    cc = ci[K_CC]
    routing = ci[K_ROUTING]
    if n_acc == 0:
        return -1
    if routing == ROUTE_LEAST:
        best = -1
        best_out = 0
        for k in range(n_acc):
            p = acc[k]
            out = pi[p, TAIL] - pi[p, HEAD]
            if cc > 0 and out >= cc:
                continue
            if best < 0 or out < best_out:
                best = p
                best_out = out
        return best
    if routing == ROUTE_RR:
        last = gi[G_RR_LAST]
        # first eligible slot after `last`, wrapping around
        start = 0
        for k in range(n_acc):
            if acc[k] > last:
                start = k
                break
        else:
            start = 0
        for j in range(n_acc):
            p = acc[(start + j) % n_acc]
            if cc > 0 and pi[p, TAIL] - pi[p, HEAD] >= cc:
                continue
            gi[G_RR_LAST] = p
            return int(p)
        return -1
    # random
    if cc == 0:
        return int(acc[int(_uniform(rng) * n_acc) % n_acc])
    m = 0
    for k in range(n_acc):
        p = acc[k]
        if pi[p, TAIL] - pi[p, HEAD] < cc:
            scratch[m] = p
            m += 1
    if m == 0:
        return -1
    return int(scratch[int(_uniform(rng) * m) % m])


@_compiled(inline=True)
def _admit(
    p: int,
    t: float,
    seq: int,
    arr_t: float,
    user: int,
    dispatch_now: bool,
    pi: np.ndarray,
    pf: np.ndarray,
    cf: np.ndarray,
    ci: np.ndarray,
    lat_table: np.ndarray,
    preferred: np.ndarray,
    ring_arr: np.ndarray,
    ring_stage: np.ndarray,
    ring_seq: np.ndarray,
    ring_user: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hist: np.ndarray,
    wait_hist: np.ndarray,
    rec_seq: np.ndarray,
    rec_out: np.ndarray,
    rec_lat: np.ndarray,
    rec_pod: np.ndarray,
    heap: np.ndarray,
    ut: np.ndarray,
    free: np.ndarray,
    rng: np.ndarray,
    ph: np.ndarray,
) -> None:
    mask = ci[K_RING_MASK]
    if pi[p, TAIL] - pi[p, HEAD] >= ci[K_QCAP]:
        pi[p, N_REJECTED] += 1
        _finish(
            seq,
            user,
            arr_t,
            t,
            OUT_REJECTED,
            p,
            gi,
            gf,
            cf,
            hist,
            rec_seq,
            rec_out,
            rec_lat,
            rec_pod,
            heap,
            ut,
            free,
            rng,
        )
        return
    _touch(p, t, pi, pf)
    tail = pi[p, TAIL]
    i = tail & mask
    ring_arr[p, i] = arr_t
    ring_seq[p, i] = seq
    ring_user[p, i] = user
    ring_stage[p, i] = t
    pi[p, TAIL] = tail + 1
    pi[p, N_ADMITTED] += 1
    if cf[C_CPU_S] > 0.0:
        if pi[p, CPU_NEXT] == tail and pi[p, CPU_NEXT] - pi[p, CPU_DONE] < ci[K_CPU_WORKERS]:
            pi[p, CPU_NEXT] = tail + 1
            pf[p, CPU_BUSY_S] += cf[C_CPU_S]
    else:
        pi[p, CPU_NEXT] = tail + 1
        pi[p, CPU_DONE] = tail + 1
        if dispatch_now and pi[p, BUSY] == 0:
            _dispatch(
                p, t, pi, pf, cf, ci, lat_table, preferred, ring_arr, ring_stage, ring_seq, ring_user,
                gi, gf, hist, wait_hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng,
            )  # fmt: skip
    _update_next(p, pi, pf, cf, ring_stage, mask, ph)


@_compiled(inline=True)
def _rq_touch(t: float, gi: np.ndarray, gf: np.ndarray) -> None:
    dt = t - gf[F_RQ_LAST]
    if dt > 0.0:
        gf[F_RQ_INT] += (gi[G_RQ_TAIL] - gi[G_RQ_HEAD]) * dt
        gf[F_RQ_LAST] = t


@_compiled()
def _drain_router(
    t: float,
    acc: np.ndarray,
    n_acc: int,
    scratch: np.ndarray,
    recv: np.ndarray,
    rq_arr: np.ndarray,
    rq_seq: np.ndarray,
    rq_user: np.ndarray,
    pi: np.ndarray,
    pf: np.ndarray,
    cf: np.ndarray,
    ci: np.ndarray,
    lat_table: np.ndarray,
    preferred: np.ndarray,
    ring_arr: np.ndarray,
    ring_stage: np.ndarray,
    ring_seq: np.ndarray,
    ring_user: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hist: np.ndarray,
    wait_hist: np.ndarray,
    rec_seq: np.ndarray,
    rec_out: np.ndarray,
    rec_lat: np.ndarray,
    rec_pod: np.ndarray,
    heap: np.ndarray,
    ut: np.ndarray,
    free: np.ndarray,
    rng: np.ndarray,
    ph: np.ndarray,
) -> None:
    """Hand router-queue requests out in FIFO order while some pod is eligible.

    A hand-out is atomic: every request is routed first; then each pod that received some runs its
    batcher once, lowest slot first, so a pod handed five requests can batch all five together. A
    batcher whose timeout drops free capacity hands the router queue out again at once, and the pods
    that receive join the pods still waiting to batch (``recv`` is that worklist, sorted by slot).
    """
    cap = rq_arr.shape[0]
    mask = ci[K_RING_MASK]
    n_recv = 0
    handing_out = True
    while True:
        while handing_out and gi[G_RQ_HEAD] < gi[G_RQ_TAIL]:
            p = _choose_pod(pi, ci, gi, acc, n_acc, rng, scratch)
            if p < 0:
                break
            j = gi[G_RQ_HEAD] % cap
            _rq_touch(t, gi, gf)
            gi[G_RQ_HEAD] += 1
            _admit(
                p, t, rq_seq[j], rq_arr[j], rq_user[j], False, pi, pf, cf, ci, lat_table, preferred,
                ring_arr, ring_stage, ring_seq, ring_user, gi, gf, hist, wait_hist,
                rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng, ph,
            )  # fmt: skip
            seen = False
            for k in range(n_recv):
                if recv[k] == p:
                    seen = True
                    break
            if not seen:
                k = n_recv
                while k > 0 and recv[k - 1] > p:
                    recv[k] = recv[k - 1]
                    k -= 1
                recv[k] = p
                n_recv += 1
        if n_recv == 0:
            return
        q = recv[0]
        for k in range(1, n_recv):
            recv[k - 1] = recv[k]
        n_recv -= 1
        handing_out = False
        if pi[q, BUSY] == 0:
            dropped_before = pi[q, N_TIMED_OUT]
            _dispatch(
                q, t, pi, pf, cf, ci, lat_table, preferred, ring_arr, ring_stage, ring_seq, ring_user,
                gi, gf, hist, wait_hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng,
            )  # fmt: skip
            handing_out = pi[q, N_TIMED_OUT] > dropped_before
        _update_next(q, pi, pf, cf, ring_stage, mask, ph)


@_compiled()
def advance(
    t0: float,
    t1: float,
    arrivals: np.ndarray,
    acc: np.ndarray,
    n_acc: int,
    act: np.ndarray,
    n_act: int,
    users_target: int,
    pi: np.ndarray,
    pf: np.ndarray,
    cf: np.ndarray,
    ci: np.ndarray,
    lat_table: np.ndarray,
    preferred: np.ndarray,
    ring_arr: np.ndarray,
    ring_stage: np.ndarray,
    ring_seq: np.ndarray,
    ring_user: np.ndarray,
    rq_arr: np.ndarray,
    rq_seq: np.ndarray,
    rq_user: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hist: np.ndarray,
    wait_hist: np.ndarray,
    heap: np.ndarray,
    ut: np.ndarray,
    free: np.ndarray,
    rng: np.ndarray,
    scratch: np.ndarray,
    recv: np.ndarray,
    ph: np.ndarray,
    rec_seq: np.ndarray,
    rec_out: np.ndarray,
    rec_lat: np.ndarray,
    rec_pod: np.ndarray,
) -> None:
    """Advance the data plane over [t0, t1).

    ``acc[:n_acc]``: Ready pods accepting traffic, ascending slot order. ``act[:n_act]``: every pod
    with a data plane (Ready or draining), ascending. ``users_target``: closed-loop users wanted from
    t0 on (-1 for open-loop workloads). Per-request rows go to the ``rec_*`` buffers when recording is
    on; the caller sizes them (``gi[G_N_REC]`` counts rows, also past the end, so overflow is visible).
    """
    mask = ci[K_RING_MASK]
    # the lognormal jitter's parameters, once per call rather than once per batch
    cv = cf[C_JITTER_CV]
    cf[C_JITTER_SIGMA2] = math.log(1.0 + cv * cv)
    cf[C_JITTER_SIGMA] = math.sqrt(cf[C_JITTER_SIGMA2])
    # -- closed-loop population changes take effect at t0
    if users_target >= 0:
        active = gi[G_USERS_ACTIVE]
        if users_target > active:
            add = users_target - active
            cancel = min(add, gi[G_RETIRE])
            gi[G_RETIRE] -= cancel
            add -= cancel
            for _ in range(add):
                gi[G_FREE_N] -= 1
                u = free[gi[G_FREE_N]]
                # new users start spread over one think time, like a Locust spawn
                ut[u] = t0 + cf[C_THINK_MAX_S] * _uniform(rng)
                _heap_push(heap, ut, gi, u)
        elif users_target < active:
            gi[G_RETIRE] += active - users_target
        gi[G_USERS_ACTIVE] = users_target

    _ph_build(ph, pf, act, n_act)
    _drain_router(
        t0, acc, n_acc, scratch, recv, rq_arr, rq_seq, rq_user, pi, pf, cf, ci, lat_table, preferred,
        ring_arr, ring_stage, ring_seq, ring_user, gi, gf, hist, wait_hist,
        rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng, ph,
    )  # fmt: skip

    ai = 0
    n_arr = arrivals.shape[0]
    rq_cap = rq_arr.shape[0]
    cpu_s = cf[C_CPU_S]
    while True:
        # next arrival: open-loop array first, then the earliest waking user
        t_arr = math.inf
        from_user = False
        if ai < n_arr:
            t_arr = arrivals[ai]
        if gi[G_HEAP_N] > 0 and ut[heap[0]] < t_arr:
            t_arr = ut[heap[0]]
            from_user = True
        # next pod event: the lowest slot among the earliest (top of the pod-event heap)
        p_ev = -1
        t_pod = math.inf
        if ph[0] > 0:
            p_ev = ph[1]
            t_pod = pf[p_ev, NEXT_T]
        # the oldest router-queue request gives up when it reaches the timeout
        t_rqx = math.inf
        if gi[G_RQ_HEAD] < gi[G_RQ_TAIL]:
            t_rqx = rq_arr[gi[G_RQ_HEAD] % rq_cap] + cf[C_TIMEOUT_S]
        if t_pod <= t_arr and t_pod <= t_rqx:
            if t_pod >= t1:
                break
            gi[G_EVENTS] += 1
            p = p_ev
            t = t_pod
            # 1. CPU completions due now; each frees a worker for the next waiting request
            while pi[p, CPU_DONE] < pi[p, CPU_NEXT]:
                i = pi[p, CPU_DONE] & mask
                fin = ring_stage[p, i] + cpu_s
                if fin > t:
                    break
                ring_stage[p, i] = fin
                pi[p, CPU_DONE] += 1
                if pi[p, CPU_NEXT] < pi[p, TAIL]:
                    ring_stage[p, pi[p, CPU_NEXT] & mask] = fin
                    pi[p, CPU_NEXT] += 1
                    pf[p, CPU_BUSY_S] += cpu_s
            # 2. the batch on the GPU finishes; freed capacity takes router-queue requests at once
            if pi[p, BUSY] != 0 and pf[p, BATCH_END] <= t:
                _touch(p, t, pi, pf)
                timeout = cf[C_TIMEOUT_S]
                for j in range(pi[p, HEAD], pi[p, GPU_NEXT]):
                    i = j & mask
                    late = t - ring_arr[p, i] > timeout
                    _finish(
                        ring_seq[p, i], ring_user[p, i], ring_arr[p, i], t,
                        OUT_TIMED_OUT if late else OUT_COMPLETED, p,
                        gi, gf, cf, hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng,
                    )  # fmt: skip
                    if late:
                        pi[p, N_TIMED_OUT] += 1
                    else:
                        pi[p, N_COMPLETED] += 1
                pi[p, HEAD] = pi[p, GPU_NEXT]
                pi[p, BUSY] = 0
                pi[p, CUR_BATCH] = 0
                pf[p, LAST_END_T] = t
                if gi[G_RQ_HEAD] < gi[G_RQ_TAIL]:
                    _drain_router(
                        t, acc, n_acc, scratch, recv, rq_arr, rq_seq, rq_user, pi, pf, cf, ci, lat_table,
                        preferred, ring_arr, ring_stage, ring_seq, ring_user, gi, gf, hist, wait_hist,
                        rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng, ph,
                    )  # fmt: skip
            # 3. batching (its timeout drops may free capacity for the router queue too)
            if pi[p, BUSY] == 0:
                _dispatch(
                    p, t, pi, pf, cf, ci, lat_table, preferred, ring_arr, ring_stage, ring_seq, ring_user,
                    gi, gf, hist, wait_hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng,
                )  # fmt: skip
                if gi[G_RQ_HEAD] < gi[G_RQ_TAIL]:
                    _drain_router(
                        t, acc, n_acc, scratch, recv, rq_arr, rq_seq, rq_user, pi, pf, cf, ci, lat_table,
                        preferred, ring_arr, ring_stage, ring_seq, ring_user, gi, gf, hist, wait_hist,
                        rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng, ph,
                    )  # fmt: skip
            _update_next(p, pi, pf, cf, ring_stage, mask, ph)
            continue
        if t_rqx <= t_arr:
            if t_rqx >= t1:
                break
            j = gi[G_RQ_HEAD] % rq_cap
            _rq_touch(t_rqx, gi, gf)
            gi[G_RQ_HEAD] += 1
            _finish(
                rq_seq[j], rq_user[j], rq_arr[j], t_rqx, OUT_TIMED_OUT, -1,
                gi, gf, cf, hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng,
            )  # fmt: skip
            continue
        if t_arr >= t1:
            break
        # -- an arrival
        t = t_arr
        if from_user:
            user = _heap_pop(heap, ut, gi)
            if gi[G_RETIRE] > 0:
                gi[G_RETIRE] -= 1
                free[gi[G_FREE_N]] = user
                gi[G_FREE_N] += 1
                continue
        else:
            user = -1
            ai += 1
        seq = gi[G_ARRIVED]
        gi[G_ARRIVED] = seq + 1
        # FIFO: nobody overtakes requests already waiting in the router queue
        p = -1 if gi[G_RQ_HEAD] < gi[G_RQ_TAIL] else _choose_pod(pi, ci, gi, acc, n_acc, rng, scratch)
        if p >= 0:
            _admit(
                p, t, seq, t, user, True, pi, pf, cf, ci, lat_table, preferred, ring_arr, ring_stage, ring_seq,
                ring_user, gi, gf, hist, wait_hist, rec_seq, rec_out, rec_lat, rec_pod, heap, ut, free, rng, ph,
            )  # fmt: skip
        elif gi[G_RQ_TAIL] - gi[G_RQ_HEAD] < ci[K_RQCAP]:
            _rq_touch(t, gi, gf)
            j = gi[G_RQ_TAIL] % rq_cap
            rq_arr[j] = t
            rq_seq[j] = seq
            rq_user[j] = user
            gi[G_RQ_TAIL] += 1
        else:
            _finish(
                seq,
                user,
                t,
                t,
                OUT_REJECTED,
                -1,
                gi,
                gf,
                cf,
                hist,
                rec_seq,
                rec_out,
                rec_lat,
                rec_pod,
                heap,
                ut,
                free,
                rng,
            )

    for k in range(n_act):
        _touch(act[k], t1, pi, pf)
    _rq_touch(t1, gi, gf)


@_compiled()
def evict(
    p: int,
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    cf: np.ndarray,
    ci: np.ndarray,
    ring_arr: np.ndarray,
    ring_seq: np.ndarray,
    ring_user: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hist: np.ndarray,
    heap: np.ndarray,
    ut: np.ndarray,
    free: np.ndarray,
    rng: np.ndarray,
    rec_seq: np.ndarray,
    rec_out: np.ndarray,
    rec_lat: np.ndarray,
    rec_pod: np.ndarray,
) -> int:
    """Kill pod ``p`` at ``t`` (termination grace ran out): every request still inside is dropped."""
    mask = ci[K_RING_MASK]
    _touch(p, t, pi, pf)
    n = 0
    for j in range(pi[p, HEAD], pi[p, TAIL]):
        i = j & mask
        _finish(
            ring_seq[p, i],
            ring_user[p, i],
            ring_arr[p, i],
            t,
            OUT_DROPPED,
            p,
            gi,
            gf,
            cf,
            hist,
            rec_seq,
            rec_out,
            rec_lat,
            rec_pod,
            heap,
            ut,
            free,
            rng,
        )
        n += 1
    pi[p, N_DROPPED] += n
    pi[p, HEAD] = pi[p, TAIL]
    pi[p, GPU_NEXT] = pi[p, TAIL]
    pi[p, CPU_DONE] = pi[p, TAIL]
    pi[p, CPU_NEXT] = pi[p, TAIL]
    pi[p, BUSY] = 0
    pi[p, CUR_BATCH] = 0
    pf[p, NEXT_T] = math.inf
    pf[p, TIMER] = math.inf
    return n


@_compiled()
def scrape(
    slots: np.ndarray,
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    cf: np.ndarray,
    ci: np.ndarray,
    ring_stage: np.ndarray,
    out: np.ndarray,
) -> None:
    """Per-pod counters as an exporter would report them at ``t``, for ``slots``.

    Busy time is charged to the kernel's counters when a batch (or CPU job) starts; a scrape reports
    it exactly by taking back the part that lies after ``t``. Columns of ``out``: GPU busy s, CPU busy
    s, in-flight integral, admitted, outstanding, waiting (queued, not being processed), batch size.
    """
    mask = ci[K_RING_MASK]
    cpu_s = cf[C_CPU_S]
    for k in range(slots.shape[0]):
        p = slots[k]
        busy = pf[p, BUSY_S]
        if pi[p, BUSY] != 0 and pf[p, BATCH_END] > t:
            busy -= pf[p, BATCH_END] - t
        cpu = pf[p, CPU_BUSY_S]
        for j in range(pi[p, CPU_DONE], pi[p, CPU_NEXT]):
            end = ring_stage[p, j & mask] + cpu_s
            if end > t:
                cpu -= end - t
        outstanding = pi[p, TAIL] - pi[p, HEAD]
        in_cpu = pi[p, CPU_NEXT] - pi[p, CPU_DONE]
        in_batch = pi[p, GPU_NEXT] - pi[p, HEAD]
        out[k, 0] = busy
        out[k, 1] = cpu
        out[k, 2] = pf[p, INFLIGHT_INT] + outstanding * max(0.0, t - pf[p, LAST_T])
        out[k, 3] = pi[p, N_ADMITTED]
        out[k, 4] = outstanding
        out[k, 5] = outstanding - in_cpu - in_batch
        out[k, 6] = pi[p, CUR_BATCH] if pi[p, BUSY] != 0 else 0
