"""The Python face of the compiled kernel: owns its arrays, hands out pod slots, advances time.

A *slot* is a row of the kernel's per-pod arrays. A pod gets a slot when it starts serving (Ready)
and gives it back when it is gone; the slot's counters restart from zero for the next pod.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuscale._core.rng import kernel_state
from gpuscale.sim import kernel as K
from gpuscale.sim.serving import Jitter, Routing, ServingParams

_ROUTING = {
    Routing.LEAST_OUTSTANDING: K.ROUTE_LEAST,
    Routing.ROUND_ROBIN: K.ROUTE_RR,
    Routing.RANDOM: K.ROUTE_RANDOM,
}
_JITTER = {Jitter.NONE: K.JIT_NONE, Jitter.LOGNORMAL: K.JIT_LOGNORMAL, Jitter.EXPONENTIAL: K.JIT_EXPONENTIAL}

SCRAPE_COLUMNS = ("gpu_busy_s", "cpu_busy_s", "inflight_int", "admitted", "outstanding", "waiting", "batch")


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` as a read-only array (a view where it is writable). Numba compiles a kernel once per
    argument type, and read-only is part of the type: workloads hand out both kinds (a trace's cached
    times are read-only, generated ones are not), which cost a second 20-s compile of the kernel."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _pow2_at_least(n: int) -> int:
    size = 1
    while size < n:
        size <<= 1
    return size


@dataclass(frozen=True)
class Records:
    """Per-request rows, in the order requests ended (only when recording was asked for)."""

    seq: np.ndarray
    outcome: np.ndarray
    latency_s: np.ndarray
    pod: np.ndarray


class SlotBook:
    """Which pod slots are free, which serve (active) and which of those take new requests
    (accepting, not draining), with both as sorted arrays for the kernels; shared by both data planes."""

    def _init_slots(self, max_slots: int) -> None:
        self._free_slots = list(range(max_slots - 1, -1, -1))
        self._accepting: set[int] = set()
        self._active: set[int] = set()
        self._acc = np.zeros(0, dtype=np.int64)
        self._act = np.zeros(0, dtype=np.int64)
        self.slot_changes = 0
        """How many times a slot was taken, handed back or stopped accepting: while it stays the same,
        the same pods serve, the same of them accept, and each keeps its slot."""

    def _take_slot(self) -> int:
        """A free slot, now active and accepting (its arrays are the caller's to reset)."""
        if not self._free_slots:
            raise RuntimeError("no free pod slot: max_slots is too small for this scenario")
        p = self._free_slots.pop()
        self._active.add(p)
        self._accepting.add(p)
        self._reindex()
        return p

    def stop_accepting(self, p: int) -> None:
        """Pod ``p`` takes no more requests; it keeps serving what it holds (draining)."""
        self._accepting.discard(p)
        self._reindex()

    def _release_slot(self, p: int) -> None:
        self._active.discard(p)
        self._accepting.discard(p)
        self._free_slots.append(p)
        self._reindex()

    def _reindex(self) -> None:
        self.slot_changes += 1
        self._acc = np.array(sorted(self._accepting), dtype=np.int64)
        self._act = np.array(sorted(self._active), dtype=np.int64)

    @property
    def active_slots(self) -> np.ndarray:
        return self._act


class DataPlane(SlotBook):
    """Arrays and calls of the compiled kernel for one simulation run."""

    def __init__(
        self,
        params: ServingParams,
        *,
        max_slots: int,
        slo_s: float,
        seed: int,
        think_s: tuple[float, float] | None = None,
        max_users: int = 0,
        record: bool = False,
    ) -> None:
        self.params = params
        self.max_slots = max_slots
        cap = params.queue_capacity
        if params.container_concurrency > 0:
            cap = min(cap, params.container_concurrency)
        ring = _pow2_at_least(max(cap, 1))
        self.pi = np.zeros((max_slots, K.N_PI), dtype=np.int64)
        self.pf = np.zeros((max_slots, K.N_PF), dtype=np.float64)
        self.pf[:, K.NEXT_T] = np.inf
        self.pf[:, K.TIMER] = np.inf
        self.pf[:, K.SPEED] = 1.0
        self.cf = np.zeros(K.N_CF, dtype=np.float64)
        self.cf[K.C_CPU_S] = params.cpu_s
        self.cf[K.C_MAX_DELAY_S] = params.max_queue_delay_s
        self.cf[K.C_TIMEOUT_S] = params.timeout_s
        self.cf[K.C_SLO_S] = slo_s
        self.cf[K.C_JITTER_CV] = params.jitter_cv
        if think_s is not None:
            self.cf[K.C_THINK_MIN_S], self.cf[K.C_THINK_MAX_S] = think_s
        self.ci = np.zeros(K.N_CI, dtype=np.int64)
        self.ci[K.K_MAX_BATCH] = params.max_batch
        self.ci[K.K_THRESHOLD] = params.dispatch_threshold
        self.ci[K.K_CPU_WORKERS] = params.cpu_workers
        self.ci[K.K_CC] = params.container_concurrency
        self.ci[K.K_QCAP] = cap
        self.ci[K.K_RQCAP] = params.router_queue_capacity
        self.ci[K.K_ROUTING] = _ROUTING[params.routing]
        self.ci[K.K_JITTER] = _JITTER[params.jitter]
        self.ci[K.K_RING_MASK] = ring - 1
        self.lat_table = np.ascontiguousarray(params.batch_latency_s, dtype=np.float64)
        self.preferred = np.array(sorted(params.preferred_batch_sizes), dtype=np.int64)
        # Uninitialised: the kernel reads a pod's ring only in [HEAD, TAIL), rows it wrote when each
        # request was admitted, so zeroing 28 bytes x queue x max_slots (7 MB at 256 x 1,024) per run
        # would buy nothing.
        self.ring_arr = np.empty((max_slots, ring), dtype=np.float64)
        self.ring_stage = np.empty((max_slots, ring), dtype=np.float64)
        self.ring_seq = np.empty((max_slots, ring), dtype=np.int64)
        self.ring_user = np.empty((max_slots, ring), dtype=np.int32)
        rq = max(params.router_queue_capacity, 1)
        self.rq_arr = np.zeros(rq, dtype=np.float64)
        self.rq_seq = np.zeros(rq, dtype=np.int64)
        self.rq_user = np.zeros(rq, dtype=np.int32)
        self.gi = np.zeros(K.N_GI, dtype=np.int64)
        self.gi[K.G_RR_LAST] = -1
        self.gi[K.G_RECORD] = 1 if record else 0
        self.record = record
        """Per-request records are kept (what ``gi[G_RECORD]`` tells the kernel)."""
        self.gf = np.zeros(K.N_GF, dtype=np.float64)
        self.hist = np.zeros(K.HIST_BUCKETS, dtype=np.int64)
        self.wait_hist = np.zeros(K.HIST_BUCKETS, dtype=np.int64)
        n_users = max(max_users, 1)
        self.heap = np.zeros(n_users, dtype=np.int32)
        self.user_t = np.zeros(n_users, dtype=np.float64)
        self.free_users = np.arange(n_users - 1, -1, -1, dtype=np.int32)
        self.gi[K.G_FREE_N] = max_users
        self.closed_loop = think_s is not None
        self.rng = kernel_state(seed, "dataplane")
        self.scratch = np.zeros(max_slots, dtype=np.int64)
        self.recv = np.zeros(max_slots, dtype=np.int64)
        self.pod_heap = np.zeros(2 * max_slots + 1, dtype=np.int64)
        self._rec_cap = 1024 if record else 1
        self.rec_seq = np.zeros(self._rec_cap, dtype=np.int64)
        self.rec_out = np.zeros(self._rec_cap, dtype=np.int8)
        self.rec_lat = np.zeros(self._rec_cap, dtype=np.float64)
        self.rec_pod = np.zeros(self._rec_cap, dtype=np.int32)
        self._init_slots(max_slots)
        self.retired_inflight_int = 0.0
        """In-flight integral of pods whose slots were handed back (for Little's law)."""
        self.retired_busy_s = 0.0
        self.retired_cpu_s = 0.0

    # -- slots ------------------------------------------------------------------------------------
    def open_slot(self, t: float, speed: float = 1.0) -> int:
        """A fresh slot for a pod that starts serving at ``t`` (accepting traffic)."""
        p = self._take_slot()
        self.pi[p, :] = 0
        self.pf[p, :] = 0.0
        self.pf[p, K.NEXT_T] = np.inf
        self.pf[p, K.TIMER] = np.inf
        self.pf[p, K.BATCH_END] = np.inf
        self.pf[p, K.SPEED] = speed
        self.pf[p, K.LAST_T] = t
        self.pf[p, K.LAST_END_T] = t
        return p

    def set_speed(self, p: int, speed: float) -> None:
        """Batch-time multiplier of pod ``p`` from its next batch on (a batch running keeps its end)."""
        self.pf[p, K.SPEED] = speed

    def close_slot(self, p: int) -> None:
        """Hand back an empty slot (after draining or eviction)."""
        if self.outstanding(p):
            raise RuntimeError("closing a slot that still holds requests")
        self.retired_inflight_int += float(self.pf[p, K.INFLIGHT_INT])
        self.retired_busy_s += float(self.pf[p, K.BUSY_S])
        self.retired_cpu_s += float(self.pf[p, K.CPU_BUSY_S])
        self._release_slot(p)

    def outstanding(self, p: int) -> int:
        return int(self.pi[p, K.TAIL] - self.pi[p, K.HEAD])

    def last_end_t(self, p: int) -> float:
        return float(self.pf[p, K.LAST_END_T])

    @property
    def router_queue_len(self) -> int:
        return int(self.gi[K.G_RQ_TAIL] - self.gi[K.G_RQ_HEAD])

    # -- time ---------------------------------------------------------------------------------------
    def _ensure_records(self, extra: int) -> None:
        if not self.gi[K.G_RECORD]:
            return
        need = int(self.gi[K.G_N_REC]) + extra
        if need > self._rec_cap:
            cap = max(need, 2 * self._rec_cap)
            n = int(self.gi[K.G_N_REC])
            for name, dtype in (
                ("rec_seq", np.int64),
                ("rec_out", np.int8),
                ("rec_lat", np.float64),
                ("rec_pod", np.int32),
            ):
                new = np.zeros(cap, dtype=dtype)
                new[:n] = getattr(self, name)[:n]
                setattr(self, name, new)
            self._rec_cap = cap

    def advance(self, t0: float, t1: float, arrivals: np.ndarray, users_target: int = -1) -> None:
        arrivals = readonly(arrivals)
        if self.record:
            inside = int((self.pi[:, K.TAIL] - self.pi[:, K.HEAD]).sum()) + self.router_queue_len
            users = 0
            if self.closed_loop:
                think_min = max(float(self.cf[K.C_THINK_MIN_S]), 1e-3)
                users = max(users_target, int(self.gi[K.G_USERS_ACTIVE])) * (int((t1 - t0) / think_min) + 2)
            self._ensure_records(len(arrivals) + inside + users + 16)
        K.advance(
            t0, t1, arrivals, self._acc, len(self._acc), self._act, len(self._act), users_target,
            self.pi, self.pf, self.cf, self.ci, self.lat_table, self.preferred,
            self.ring_arr, self.ring_stage, self.ring_seq, self.ring_user,
            self.rq_arr, self.rq_seq, self.rq_user, self.gi, self.gf, self.hist, self.wait_hist,
            self.heap, self.user_t, self.free_users, self.rng, self.scratch, self.recv, self.pod_heap,
            self.rec_seq, self.rec_out, self.rec_lat, self.rec_pod,
        )  # fmt: skip
        if self.record and self.gi[K.G_N_REC] > self._rec_cap:
            raise RuntimeError("per-request record buffer overflowed")

    def hand_out(self, t: float) -> None:
        """Serve the router queue at ``t`` (a pod just became Ready), advancing no time."""
        self.advance(t, t, np.zeros(0, dtype=np.float64), -1)

    def evict(self, p: int, t: float) -> int:
        """Drop every request still in pod ``p`` at ``t``; returns how many."""
        self._ensure_records(self.outstanding(p) + 1)
        return int(
            K.evict(
                p,
                t,
                self.pi,
                self.pf,
                self.cf,
                self.ci,
                self.ring_arr,
                self.ring_seq,
                self.ring_user,
                self.gi,
                self.gf,
                self.hist,
                self.heap,
                self.user_t,
                self.free_users,
                self.rng,
                self.rec_seq,
                self.rec_out,
                self.rec_lat,
                self.rec_pod,
            )
        )

    def scrape(self, slots: np.ndarray, t: float) -> np.ndarray:
        """Exporter readings for ``slots`` at ``t``; columns are :data:`SCRAPE_COLUMNS`."""
        out = np.zeros((len(slots), len(SCRAPE_COLUMNS)), dtype=np.float64)
        if len(slots):
            K.scrape(slots, t, self.pi, self.pf, self.cf, self.ci, self.ring_stage, out)
        return out

    def records(self) -> Records:
        n = int(self.gi[K.G_N_REC])
        return Records(
            self.rec_seq[:n].copy(), self.rec_out[:n].copy(), self.rec_lat[:n].copy(), self.rec_pod[:n].copy()
        )

    # -- totals ----------------------------------------------------------------------------------
    def counter(self, index: int) -> int:
        return int(self.gi[index])

    @property
    def in_flight(self) -> int:
        return int((self.pi[:, K.TAIL] - self.pi[:, K.HEAD]).sum()) + self.router_queue_len

    @property
    def system_integral(self) -> float:
        """∫ (requests in the system) dt so far: pods (live and retired) plus the router queue."""
        live = float(self.pf[self._act, K.INFLIGHT_INT].sum()) if len(self._act) else 0.0
        return self.retired_inflight_int + live + float(self.gf[K.F_RQ_INT])
