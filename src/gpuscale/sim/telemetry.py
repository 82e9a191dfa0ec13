"""What a real autoscaler sees: scraped metrics, aggregated over windows, possibly late.

Every ``scrape_interval_s`` the simulator records what the exporters would report (DCGM for the
GPU, the pod's CPU, Knative's queue-proxy for concurrency, Triton for the queue and request
counters, a latency histogram at the ingress). :class:`SimMetricsSource` turns that history into the
:class:`~gpuscale.policies.base.MetricsSnapshot` a policy asked for, exactly as the live
``PrometheusSource`` does with ``avg_over_time``/``rate`` over the same windows:

* counters (GPU busy time, CPU time, the in-flight integral, requests) become rates: the difference
  between the newest sample and the sample one window earlier (or the pod's first sample, when it
  is younger than the window), divided by the time between them; a pod with one sample has no rate;
* gauges (memory used, queue length) become the mean of the samples in the window;
* latency quantiles come from the difference of two cumulative histograms.

An LLM pod (the token-level engine, ``docs/llm.md``) also reports what vLLM exports -- KV-cache
usage, requests running and waiting (gauges), prompt and generation tokens and preemptions
(counters), time-to-first-token and inter-token histograms -- and DCGM's profiling metrics SM
active, SM occupancy and DRAM active (time integrals, so a window's value is their time average).

GPU memory is reported per device, as DCGM does: a pod on whole GPUs sees its own memory against
those GPUs'; a pod on a MIG slice sees the slice (its own GPU instance: 4 GB used of a 1g.10gb
slice is 40 %, not 5 % of the 80-GB GPU); a time-sliced pod sees the whole GPU, used by every pod on
it (two pods holding 30 GB each on an 80-GB GPU both report 60 GB, 75 %), since time-slicing shares
one device and its memory with no isolation.

Memory is bounded: only the samples the longest declared window needs are kept.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar, cast

import numba as nb
import numpy as np

from gpuscale.config.profiles import ModelProfile
from gpuscale.policies.base import (
    LATENCY_METRICS,
    LLM_METRICS,
    TOKEN_LATENCY_METRICS,
    Aggregation,
    Metric,
    MetricsSnapshot,
    PodSample,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.ports import ReplicaCounts, make_snapshot
from gpuscale.sim import kernel as K
from gpuscale.sim.cluster import Phase, Pod
from gpuscale.sim.kernel import _compiled
from gpuscale.sim.llm_plane import LlmDataPlane, Plane

# per-pod sample columns (_MEM: memory used on the device the pod sees; _DEVICE_GB: that device's)
_BUSY, _CPU, _INFLIGHT, _ADMITTED, _MEM_CUM, _QUEUE_CUM, _COUNT, _MEM, _QUEUE, _DEVICE_GB = range(10)
# LLM pods only (zero elsewhere): gauges and their running sums, counters, time integrals
_KV, _KV_CUM, _RUN, _RUN_CUM, _PROMPT, _GEN, _PREEMPT, _SM_ACTIVE, _SM_OCC, _DRAM = range(10, 20)
_N_COLS = 20
_CUMS = [_MEM_CUM, _QUEUE_CUM, _COUNT, _KV_CUM, _RUN_CUM]
"""The running sums a pod's sample carries: memory, queue, samples, KV-cache usage, running requests."""
_QUANTILE = {
    Metric.LATENCY_P50_MS: 0.50,
    Metric.LATENCY_P95_MS: 0.95,
    Metric.LATENCY_P99_MS: 0.99,
    Metric.TTFT_P50_MS: 0.50,
    Metric.TTFT_P95_MS: 0.95,
    Metric.TTFT_P99_MS: 0.99,
    Metric.ITL_P50_MS: 0.50,
    Metric.ITL_P95_MS: 0.95,
    Metric.ITL_P99_MS: 0.99,
}
_TTFT = frozenset({Metric.TTFT_P50_MS, Metric.TTFT_P95_MS, Metric.TTFT_P99_MS})
_GAUGES = {
    Metric.GPU_MEMORY_UTIL: (_MEM, _MEM_CUM),
    Metric.GPU_MEMORY_USED_GB: (_MEM, _MEM_CUM),
    Metric.QUEUE_LENGTH: (_QUEUE, _QUEUE_CUM),
    Metric.REQUESTS_WAITING: (_QUEUE, _QUEUE_CUM),
    Metric.KV_CACHE_USAGE: (_KV, _KV_CUM),
    Metric.REQUESTS_RUNNING: (_RUN, _RUN_CUM),
}
_RATES = {
    Metric.CONCURRENCY: _INFLIGHT,
    Metric.REQUEST_RATE: _ADMITTED,
    Metric.PROMPT_TOKENS_RATE: _PROMPT,
    Metric.GENERATION_TOKENS_RATE: _GEN,
    Metric.PREEMPTION_RATE: _PREEMPT,
}
_FRACTIONS = {Metric.SM_ACTIVE: _SM_ACTIVE, Metric.SM_OCCUPANCY: _SM_OCC, Metric.DRAM_ACTIVE: _DRAM}
# How :func:`_pod_values` reads each per-pod metric: (kind, column, running-sum column)
_GAUGE, _MEMORY_PCT, _GPU_PCT, _CPU_PCT, _RATE, _FRACTION = range(6)
_PER_POD: dict[Metric, tuple[int, int, int]] = {
    **{
        m: (_MEMORY_PCT if m == Metric.GPU_MEMORY_UTIL else _GAUGE, col, cum)
        for m, (col, cum) in _GAUGES.items()
    },
    Metric.GPU_UTIL: (_GPU_PCT, _BUSY, 0),
    Metric.CPU_UTIL: (_CPU_PCT, _CPU, 0),
    **{m: (_RATE, col, 0) for m, col in _RATES.items()},
    **{m: (_FRACTION, col, 0) for m, col in _FRACTIONS.items()},
}
_BUCKET_VALUES_S = K.bucket_values()


def hist_quantile(counts: np.ndarray, q: float) -> float | None:
    """The q-quantile (seconds) of a latency histogram, within its 0.78 % relative error; None if empty."""
    cum = np.cumsum(counts)
    total = int(cum[-1]) if len(cum) else 0
    if total <= 0:
        return None
    rank = q * total
    idx = int(np.searchsorted(cum, rank, side="left"))
    return float(_BUCKET_VALUES_S[min(idx, len(_BUCKET_VALUES_S) - 1)])


def _window_quantile(new: np.ndarray, old: np.ndarray, q: float) -> float | None:
    """:func:`hist_quantile` of ``new - old`` (the latency histogram over a window), in one pass."""
    idx = _diff_quantile_index(new, old, q)
    return None if idx < 0 else float(_BUCKET_VALUES_S[idx])


@_compiled()
def _diff_quantile_index(new: np.ndarray, old: np.ndarray, q: float) -> int:
    """The bucket :func:`hist_quantile` finds in ``new - old`` (-1 when it is empty): the first whose
    cumulative count reaches ``q`` x the total, else the last."""
    total = 0
    for i in range(new.shape[0]):
        total += new[i] - old[i]
    if total <= 0:
        return -1
    rank = q * total
    cum = 0
    for i in range(new.shape[0]):
        cum += new[i] - old[i]
        if cum >= rank:
            return i
    return int(new.shape[0]) - 1


@dataclass
class _Sample:
    t: float
    pod_ids: np.ndarray
    """Sorted ids of the pods that reported."""
    rows: np.ndarray
    """(n pods, columns) readings, aligned with pod_ids."""
    arrived: int
    router_int: float
    router_cum: float
    count: int
    hist: np.ndarray
    ttft_hist: np.ndarray | None = None
    itl_hist: np.ndarray | None = None


class SimMetricsSource:
    """Scrapes the simulated service and fulfils policies' signal specs: the simulator's
    :class:`~gpuscale.policies.ports.MetricsSource`."""

    def __init__(
        self,
        dp: Plane,
        profile: ModelProfile,
        pods: Callable[[], Iterable[Pod]],
        *,
        scrape_interval_s: float,
        metrics_delay_s: float,
        max_window_s: float,
        held_gb: Callable[[Pod, float], float] | None = None,
        pod_samples: bool = True,
    ) -> None:
        """``pods()``: the target's pods now, standby pods included (what service discovery finds:
        a scrape reads every pod that serves, a snapshot the active ones).
        ``held_gb(pod, t)``: GPU memory a pod that is not serving holds at ``t`` (one loading its
        weights, or a loaded standby pod); it counts on a time-sliced GPU it shares. None: nothing.
        ``pod_samples=False``: snapshots carry no per-pod samples (``SignalValue.per_pod`` empty, the
        values the same), for a caller whose policy reads none (the RL environment)."""
        self.dp = dp
        self.pods = pods
        self.profile = profile
        self.held_gb = held_gb
        self.scrape_interval_s = scrape_interval_s
        self.metrics_delay_s = metrics_delay_s
        keep = math.ceil((max_window_s + metrics_delay_s) / scrape_interval_s) + 3
        self.pod_samples = pod_samples
        self._samples: deque[_Sample] = deque(maxlen=keep)
        self._times: deque[float] = deque(maxlen=keep)
        """The samples' times (increasing), for the binary searches of :meth:`_newest` and
        :meth:`_window_start`."""
        self._ready = np.zeros(0, dtype=bool)
        """Which pods of the newest sample were Ready when it was taken (:meth:`newest_ready`)."""
        self._serving: _Serving | None = None
        """The serving pods as of the data plane's latest slot change (:meth:`scrape`)."""
        # Per serving pod, indexed by pod id: its running sums (the _CUMS columns' values), the
        # absolute scrape number of its first sample, that sample's row and time; ``_known`` marks
        # the pods that have them (after a scrape: exactly the pods in it).
        self._cum = np.zeros((0, len(_CUMS)), dtype=np.float64)
        self._first_seen = np.zeros(0, dtype=np.int64)
        self._first_rows = np.zeros((0, _N_COLS), dtype=np.float64)
        self._first_t = np.zeros(0, dtype=np.float64)
        self._known = np.zeros(0, dtype=bool)
        self._n_known = 0
        self._window_cache: tuple[tuple[int, int, bytes], _Window] | None = None
        self._router_cum = 0.0
        self._count = 0
        self._llm_dp = dp if isinstance(dp, LlmDataPlane) else None
        self.llm = self._llm_dp is not None
        """The pods are LLM pods (the token-level engine): they report vLLM's metrics."""

    # -- scraping -------------------------------------------------------------------------------
    def device_gb(self, pods: Sequence[Pod]) -> np.ndarray:
        """Memory of the device each pod sees: its MIG slice, its time-sliced GPU, or its whole GPUs."""
        whole = self.profile.device_memory_gb
        return np.array([whole if p.device is None else p.device.memory_gb for p in pods], dtype=np.float64)

    def memory_gb(
        self, slots: np.ndarray, batch_now: np.ndarray, device_gb: np.ndarray | None = None
    ) -> np.ndarray:
        """GPU memory each pod's runtime holds, as its allocator shows it (see ModelProfile.allocator).

        A preallocating runtime takes its fraction of the memory it sees (``device_gb``; default the
        model's whole GPUs): 90 % of a 10-GB MIG slice is 9 GB.
        """
        p = self.profile
        if p.allocator == "preallocate":
            seen = np.full(len(slots), p.device_memory_gb) if device_gb is None else device_gb
            return np.asarray(p.preallocate_fraction * seen, dtype=np.float64)
        batch = self.dp.pi[slots, K.HW_BATCH] if p.allocator == "caching" else batch_now
        return p.runtime_overhead_gb + p.weights_gb + p.activation_gb_per_request * batch.astype(np.float64)

    def _device_used_gb(self, t: float, serving: Sequence[Pod], own: np.ndarray) -> np.ndarray:
        """Memory used on each serving pod's device, as DCGM reports it (module docstring): its own on
        whole GPUs and MIG slices, that of every pod on a time-sliced GPU."""
        used = own.copy()
        if all(pod.device is None or len(pod.device.pods) < 2 for pod in serving):
            return used
        by_id = {p.id: float(m) for p, m in zip(serving, own.tolist(), strict=True)}
        for k, pod in enumerate(serving):
            device = pod.device
            if device is None or len(device.pods) < 2:
                continue
            total = 0.0
            for other in device.pods:
                if other.id in by_id:
                    total += by_id[other.id]
                elif self.held_gb is not None:
                    total += self.held_gb(other, t)
            used[k] = total
        return used

    def scrape(self, t: float) -> None:
        """Record what the exporters report at ``t`` for every pod that serves."""
        if self._serving is None or self._serving.slot_changes != self.dp.slot_changes:
            # Which pods serve (have a slot) and which of them are Ready (accept traffic, not
            # draining) change only with the data plane's slots.
            self._serving = _Serving(
                self.dp.slot_changes, sorted((p for p in self.pods() if p.slot >= 0), key=_by_id)
            )
        serving, ids, slots = self._serving.pods, self._serving.ids, self._serving.slots
        self._ready = self._serving.ready
        raw = self.dp.scrape(slots, t)
        rows = np.empty((len(serving), _N_COLS), dtype=np.float64)
        if len(serving):
            if self._serving.shared:
                device_gb = self.device_gb(serving)
                mem = self._device_used_gb(t, serving, self.memory_gb(slots, raw[:, 6], device_gb))
            else:  # whole GPUs: each pod sees its own GPUs and its own memory on them
                device_gb = np.full(len(serving), self.profile.device_memory_gb, dtype=np.float64)
                mem = self.memory_gb(slots, raw[:, 6])
            self._add_to_sums(ids, raw, mem, device_gb, rows, t)
        # Pods that stopped reporting are gone for good (slots are never reused by the same pod).
        if self._n_known > len(serving):
            self._known[:] = False
            self._known[ids] = True
            self._n_known = len(serving)
        self._router_cum += self.dp.router_queue_len
        self._count += 1
        self._times.append(t)
        self._samples.append(
            _Sample(
                t=t,
                pod_ids=ids,
                rows=rows,
                arrived=self.dp.counter(K.G_ARRIVED),
                router_int=float(self.dp.gf[K.F_RQ_INT]),
                router_cum=self._router_cum,
                count=self._count,
                hist=self.dp.hist.copy(),
                ttft_hist=self._llm_dp.ttft_hist.copy() if self._llm_dp is not None else None,
                itl_hist=self._llm_dp.itl_hist.copy() if self._llm_dp is not None else None,
            )
        )

    def _add_to_sums(
        self,
        ids: np.ndarray,
        raw: np.ndarray,
        mem: np.ndarray,
        device_gb: np.ndarray,
        rows: np.ndarray,
        t: float,
    ) -> None:
        """Fill the ``rows`` of the scrape at ``t`` of the pods ``ids`` (sorted, unique) from the data
        plane's readings ``raw`` (:data:`~gpuscale.sim.dataplane.SCRAPE_COLUMNS`, then an LLM pod's
        own), the memory each uses (``mem``) and its device's (``device_gb``); add them to the pods'
        running sums and copy the sums into the rows. A pod seen for the first time starts from zero
        at this scrape."""
        top = int(ids[-1]) + 1
        if top > len(self._known):
            grow = max(top, 2 * len(self._known), 16) - len(self._known)
            self._cum = np.concatenate([self._cum, np.zeros((grow, len(_CUMS)))])
            self._first_seen = np.concatenate([self._first_seen, np.zeros(grow, dtype=np.int64)])
            self._first_rows = np.concatenate([self._first_rows, np.zeros((grow, _N_COLS))])
            self._first_t = np.concatenate([self._first_t, np.zeros(grow)])
            self._known = np.concatenate([self._known, np.zeros(grow, dtype=bool)])
        llm = self._llm_dp is not None
        self._n_known += _add_to_sums(
            ids,
            raw,
            mem,
            device_gb,
            llm,
            float(self._llm_dp.num_blocks) if self._llm_dp is not None else 1.0,
            rows,
            t,
            self._cum,
            self._known,
            self._first_seen,
            self._first_rows,
            self._first_t,
            self._count,
        )

    def memory_util_pct(self, pods: Sequence[Pod]) -> np.ndarray:
        """GPU memory utilization (%) of ``pods`` in the newest scrape, as reported there (against the
        device each pod sees); NaN for a pod that was not in it."""
        rows, found = self._newest_rows(pods)
        out = np.full(len(pods), np.nan)
        out[found] = 100.0 * rows[:, _MEM] / rows[:, _DEVICE_GB]
        return out

    def kv_cache_usage(self, pods: Sequence[Pod]) -> np.ndarray:
        """KV-cache usage (0-1) of ``pods`` in the newest scrape; NaN for a pod that was not in it,
        and for every pod of a request-level (non-LLM) service."""
        rows, found = self._newest_rows(pods)
        out = np.full(len(pods), np.nan)
        if self.llm:
            out[found] = rows[:, _KV]
        return out

    def newest_ready(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """What :meth:`memory_util_pct` and :meth:`kv_cache_usage` give for the pods that were Ready
        in the newest scrape, read straight from its rows (in pod order): GPU memory utilization (%)
        and, for LLM pods, KV-cache usage (None otherwise); None when no pod was Ready (or no scrape
        was taken yet)."""
        serving = self._serving
        if not self._samples or serving is None or not serving.n_ready:
            return None
        rows = self._samples[-1].rows
        if serving.n_ready < len(rows):
            rows = rows[self._ready]
        memory = 100.0 * rows[:, _MEM] / rows[:, _DEVICE_GB]
        return memory, np.ascontiguousarray(rows[:, _KV]) if self.llm else None

    def _newest_rows(self, pods: Sequence[Pod]) -> tuple[np.ndarray, np.ndarray]:
        """The newest scrape's rows of ``pods`` that are in it, and which of ``pods`` those are."""
        found = np.zeros(len(pods), dtype=bool)
        if not self._samples or not len(pods) or not len(self._samples[-1].pod_ids):
            return np.zeros((0, _N_COLS)), found
        sample = self._samples[-1]
        ids = np.array([p.id for p in pods], dtype=np.int64)
        k = np.minimum(np.searchsorted(sample.pod_ids, ids), len(sample.pod_ids) - 1)
        found = sample.pod_ids[k] == ids
        return sample.rows[k[found]], found

    # -- fulfilling signals --------------------------------------------------------------------
    def _newest(self, t: float) -> int | None:
        """The newest sample taken by ``t`` less the pipeline delay (its index), None if none."""
        i = bisect.bisect_right(self._times, t - self.metrics_delay_s + 1e-9) - 1
        return i if i >= 0 else None

    def _window_start(self, new: int, window_s: float) -> int:
        """The newest sample at least ``window_s`` older than sample ``new`` (its index), else the
        oldest kept."""
        i = bisect.bisect_right(self._times, self._times[new] - window_s + 1e-9, 0, new + 1) - 1
        return max(i, 0)

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        """The snapshot a policy sees at ``now``: ``counts`` plus every spec it declared, read over the
        active pods (Pending, Starting and Ready; standby pods are outside the Service)."""
        active = _PodSet(
            [
                p
                for p in self.pods()
                if not p.standby and p.phase in (Phase.PENDING, Phase.STARTING, Phase.READY)
            ]
        )
        new, with_pods = self._newest(now), self.pod_samples
        with np.errstate(invalid="ignore", divide="ignore"):
            signals = {spec: self._fulfil(now, spec, active, with_pods, new) for spec in specs}
        return make_snapshot(now, counts, signals)

    def unavailable(self) -> None:
        """Never: the simulated metrics backend always answers (a missing signal is still missing)."""
        return None

    def fulfil(
        self, t: float, spec: SignalSpec, pods: Sequence[Pod], *, with_pods: bool = True
    ) -> SignalValue:
        """The value of ``spec`` at ``t``; ``with_pods=False`` skips the per-pod samples."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._fulfil(t, spec, _PodSet(pods), with_pods, self._newest(t))

    def values_at(self, t: float, specs: Sequence[SignalSpec], pods: Sequence[Pod]) -> list[float | None]:
        """The values of ``specs`` at ``t`` (None where missing), without per-pod samples: what
        :meth:`fulfil` gives one by one, with the pods and the newest sample looked up once."""
        at, new = _PodSet(pods), self._newest(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            return [self._fulfil(t, spec, at, False, new).value for spec in specs]

    def _fulfil(
        self, t: float, spec: SignalSpec, pods: _PodSet, with_pods: bool, new: int | None
    ) -> SignalValue:
        """:meth:`fulfil` with the newest sample at ``t`` found (``new``), under the caller's
        ``np.errstate`` (a pod with no rate divides by NaN, one with no gauge sample by zero)."""
        if new is None:
            return SignalValue.missing("no scrape yet")
        s_new = self._samples[new]
        age = t - s_new.t
        old = self._window_start(new, spec.window_s)
        s_old = self._samples[old]
        if spec.metric in LATENCY_METRICS:
            if old == new:
                return SignalValue.missing("one scrape in the window", age)
            q = _window_quantile(s_new.hist, s_old.hist, _QUANTILE[spec.metric])
            if q is None:
                return SignalValue.missing(f"no request completed in the last {spec.window_s:g} s", age)
            return SignalValue(q * 1000.0, age)
        if spec.metric in TOKEN_LATENCY_METRICS:
            return self._token_latency(spec, s_new, s_old, age)
        service = self._service_part(spec.metric, s_new, s_old)
        if service is not None and spec.metric == Metric.REQUEST_RATE and not with_pods:
            return SignalValue(service, age)  # measured at the ingress: no pod's rate needed
        arr = self._values(spec.metric, self._window(new, old, pods))
        per_pod = self._per_pod(s_new.t, arr, pods) if with_pods else []
        # The Ready pods' values, in pod order (as floats: summed in that order below); NaN is the
        # one float that differs from itself.
        values: list[float] = [v for v in arr[pods.ready].tolist() if v == v]
        if spec.aggregation == Aggregation.TOTAL:
            if service is not None:
                total = service if spec.metric == Metric.REQUEST_RATE else sum(values) + service
                return SignalValue(total, age, per_pod=tuple(per_pod))
            if not values:
                return SignalValue(None, age, f"no Ready pod reports {spec.metric.value}", tuple(per_pod))
            return SignalValue(float(sum(values)), age, per_pod=tuple(per_pod))
        if not values:
            return SignalValue(None, age, f"no Ready pod reports {spec.metric.value}", tuple(per_pod))
        agg = max(values) if spec.aggregation == Aggregation.MAX else sum(values) / len(values)
        return SignalValue(float(agg), age, per_pod=tuple(per_pod))

    def _token_latency(self, spec: SignalSpec, s_new: _Sample, s_old: _Sample, age: float) -> SignalValue:
        """A TTFT or inter-token quantile over the window, from the difference of two histograms."""
        ttft = spec.metric in _TTFT
        h_new, h_old = (s_new.ttft_hist, s_old.ttft_hist) if ttft else (s_new.itl_hist, s_old.itl_hist)
        if h_new is None or h_old is None:
            return SignalValue.missing(f"{spec.metric.value} is exported by LLM pods only")
        if s_new is s_old:
            return SignalValue.missing("one scrape in the window", age)
        q = _window_quantile(h_new, h_old, _QUANTILE[spec.metric])
        if q is None:
            what = "first token" if ttft else "token after a first"
            return SignalValue.missing(f"no {what} in the last {spec.window_s:g} s", age)
        return SignalValue(q * 1000.0, age)

    def _service_part(self, metric: Metric, s_new: _Sample, s_old: _Sample) -> float | None:
        """Service-level additions: requests waiting in the router queue count as in flight/queued,
        and the request rate is measured at the ingress (rejected requests included)."""
        dt = s_new.t - s_old.t
        if metric == Metric.REQUEST_RATE:
            return (s_new.arrived - s_old.arrived) / dt if dt > 0 else None
        if metric == Metric.CONCURRENCY:
            return (s_new.router_int - s_old.router_int) / dt if dt > 0 else float(self.dp.router_queue_len)
        if metric == Metric.QUEUE_LENGTH:
            n = s_new.count - s_old.count
            return (s_new.router_cum - s_old.router_cum) / n if n > 0 else float(self.dp.router_queue_len)
        return None

    def _window(self, new: int, old: int, pods: _PodSet) -> _Window:
        """Each pod's newest sample and its oldest sample inside the window (:func:`_window_rows`;
        cached: the signals of a snapshot share their windows)."""
        base = self._count - len(self._samples)
        key = (base + new, base + old, pods.key)
        if self._window_cache is not None and self._window_cache[0] == key:
            return self._window_cache[1]
        s_new, s_old = self._samples[new], self._samples[old]
        n = len(pods)
        rows_new = np.empty((n, _N_COLS))
        rows_old = np.empty((n, _N_COLS))
        dt = np.empty(n)
        rate_dt = np.empty(n)
        young = np.empty(n, dtype=bool)
        _window_rows(
            pods.ids, new, old, base, s_new.pod_ids, s_new.rows, s_new.t, s_old.pod_ids, s_old.rows, s_old.t,
            self._known, self._first_seen, self._first_rows, self._first_t, rows_new, rows_old, dt, rate_dt,
            young,
        )  # fmt: skip
        view = _Window(young, rows_new, rows_old, dt, rate_dt)
        self._window_cache = (key, view)
        return view

    def _values(self, metric: Metric, w: _Window) -> np.ndarray:
        """Per-pod values of ``metric`` over the window (NaN where a pod has none)."""
        if not self.llm and metric in LLM_METRICS:
            return np.full(len(w.young), np.nan)
        plan = _PER_POD.get(metric)
        if plan is None:
            raise ValueError(f"metric {metric} is not a per-pod metric")
        kind, col, cum = plan
        out = np.empty(len(w.young))
        _pod_values(
            kind, col, cum, float(self.profile.cpu_idle_pct), float(self.profile.cpu_cores),
            w.rows_new, w.rows_old, w.young, w.rate_dt, out,
        )  # fmt: skip
        return out

    @staticmethod
    def _per_pod(t_new: float, values: np.ndarray, pods: _PodSet) -> list[PodSample]:
        """Each pod's sample of the values read at the newest scrape (``t_new``)."""
        return [
            PodSample(
                name,
                None if v != v else v,
                ready,
                running,
                max(0.0, t_new - ready_t) if ready else 0.0,
            )
            for name, v, ready, running, ready_t in zip(
                pods.names, values.tolist(), pods.ready_list, pods.running, pods.ready_t, strict=True
            )
        ]


@_compiled()
def _add_to_sums(
    ids: np.ndarray,
    raw: np.ndarray,
    mem: np.ndarray,
    device_gb: np.ndarray,
    llm: bool,
    num_blocks: float,
    rows: np.ndarray,
    t: float,
    cum: np.ndarray,
    known: np.ndarray,
    first_seen: np.ndarray,
    first_rows: np.ndarray,
    first_t: np.ndarray,
    count: int,
) -> int:
    """:meth:`SimMetricsSource._add_to_sums` over arrays: this scrape's ``rows`` from the readings
    (every column written; an LLM pod's own are zero for other pods), then the pods' running sums
    (``cum``, by pod id, columns as :data:`_CUMS`) plus the rows, written back to both; returns how
    many pods were seen for the first time (their sums start at zero, their first scrape is
    ``count`` at ``t``, and their row of it is kept in ``first_rows``)."""
    fresh = 0
    for k in range(ids.shape[0]):
        for c in range(rows.shape[1]):
            rows[k, c] = 0.0
        for c in range(4):  # GPU busy, CPU busy, in-flight integral, admitted
            rows[k, _BUSY + c] = raw[k, c]
        rows[k, _MEM] = mem[k]
        rows[k, _QUEUE] = raw[k, 5]
        rows[k, _DEVICE_GB] = device_gb[k]
        if llm:
            rows[k, _KV] = raw[k, 7] / num_blocks
            rows[k, _RUN] = raw[k, 6]
            for c in range(6):  # prompt and generation tokens, preemptions, SM active/occupancy, DRAM
                rows[k, _PROMPT + c] = raw[k, 8 + c]
        pid = ids[k]
        first = not known[pid]
        if first:
            known[pid] = True
            first_seen[pid] = count
            for c in range(cum.shape[1]):
                cum[pid, c] = 0.0
            fresh += 1
        cum[pid, 0] += rows[k, _MEM]
        cum[pid, 1] += rows[k, _QUEUE]
        cum[pid, 2] += 1.0
        cum[pid, 3] += rows[k, _KV]
        cum[pid, 4] += rows[k, _RUN]
        rows[k, _MEM_CUM] = cum[pid, 0]
        rows[k, _QUEUE_CUM] = cum[pid, 1]
        rows[k, _COUNT] = cum[pid, 2]
        rows[k, _KV_CUM] = cum[pid, 3]
        rows[k, _RUN_CUM] = cum[pid, 4]
        if first:
            for c in range(rows.shape[1]):
                first_rows[pid, c] = rows[k, c]
            first_t[pid] = t
    return fresh


@_compiled()
def _window_rows(
    ids: np.ndarray,
    new: int,
    old: int,
    base: int,
    new_ids: np.ndarray,
    new_rows: np.ndarray,
    new_t: float,
    old_ids: np.ndarray,
    old_rows: np.ndarray,
    old_t: float,
    known: np.ndarray,
    first_seen: np.ndarray,
    first_rows: np.ndarray,
    first_t: np.ndarray,
    rows_new: np.ndarray,
    rows_old: np.ndarray,
    dt: np.ndarray,
    rate_dt: np.ndarray,
    young: np.ndarray,
) -> None:
    """:meth:`SimMetricsSource._window` over arrays: for each pod of ``ids`` its row in the newest
    sample (number ``new`` in the deque) and in its oldest sample inside the window, the time between
    them (``dt``; ``rate_dt`` the same where positive, else NaN) and whether it is younger than the
    window; the outputs need no initial values (``rows_new``, ``rows_old``, ``dt`` and ``rate_dt``
    are NaN for a pod not in the newest sample). ``base`` is the absolute number of the deque's
    first sample.

    A pod is scraped from its first scrape on (a pod that misses one is new again), so its oldest
    sample in the window is sample max(window start, its first): the window's first sample
    (``old_*``), the newest, or in between, its own first sample, whose row it keeps."""
    n_new = new_ids.shape[0]
    n_old = old_ids.shape[0]
    any_present = False
    for j in range(ids.shape[0]):
        pid = ids[j]
        young[j] = True
        for c in range(rows_new.shape[1]):
            rows_new[j, c] = np.nan
            rows_old[j, c] = np.nan
        dt[j] = np.nan
        rate_dt[j] = np.nan
        k = np.searchsorted(new_ids, pid)
        if k >= n_new or new_ids[k] != pid:
            continue
        any_present = True
        for c in range(new_rows.shape[1]):
            rows_new[j, c] = new_rows[k, c]
        first = new
        if pid < known.shape[0] and known[pid]:
            first = first_seen[pid] - base
        i = max(first, old)
        young[j] = i != old or i == new
        if i == old:
            ko = np.searchsorted(old_ids, pid)
            if ko < n_old:
                for c in range(old_rows.shape[1]):
                    rows_old[j, c] = old_rows[ko, c]
                dt[j] = new_t - old_t
        elif i == new:
            for c in range(new_rows.shape[1]):
                rows_old[j, c] = new_rows[k, c]
            dt[j] = new_t - new_t
        else:
            for c in range(first_rows.shape[1]):
                rows_old[j, c] = first_rows[pid, c]
            dt[j] = new_t - first_t[pid]
        if dt[j] > 0:
            rate_dt[j] = dt[j]
    if not any_present:
        for j in range(ids.shape[0]):
            young[j] = False


_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled_as_numpy(fn: _F) -> _F:
    """Compile as :func:`~gpuscale.sim.kernel._compiled` does, with numpy's division: x / 0 is inf
    or NaN, not an error."""
    options: dict[str, Any] = {"cache": True, "_nrt": False, "error_model": "numpy"}
    return cast(_F, nb.njit(**options)(fn))


@_compiled_as_numpy
def _pod_values(
    kind: int,
    col: int,
    cum: int,
    cpu_idle_pct: float,
    cpu_cores: float,
    rows_new: np.ndarray,
    rows_old: np.ndarray,
    young: np.ndarray,
    rate_dt: np.ndarray,
    out: np.ndarray,
) -> None:
    """:meth:`SimMetricsSource._values` over arrays: each pod's value over the window into ``out``
    (NaN where it has none), by ``kind``:

    * a gauge (``_GAUGE``; ``_MEMORY_PCT`` against the device's memory, in %): the mean of the
      samples in the window, ``col`` read through its running sum ``cum``; a pod younger than the
      window counts its first sample too;
    * a time integral as a share of the window: GPU busy time (``_GPU_PCT``, %, at most 100), CPU
      time (``_CPU_PCT``: idle % + busy % of the pod's cores, at most 100), or a fraction at most 1
      (``_FRACTION``);
    * a counter as a rate per second (``_RATE``).

    Rates divide by ``rate_dt`` (NaN where the pod has no time between its two samples), so a pod
    with no rate gets NaN; a gauge's mean divides by at least one sample. The arithmetic is numpy's,
    operation for operation, so the values are the same to the bit (a division by zero, too, gives
    numpy's inf or NaN rather than an error)."""
    for k in range(out.shape[0]):
        if kind in (_GAUGE, _MEMORY_PCT):
            n = rows_new[k, _COUNT] - rows_old[k, _COUNT]
            total = rows_new[k, cum] - rows_old[k, cum]
            value = (total + rows_old[k, col]) / (n + 1.0) if young[k] else total / n
            if kind == _MEMORY_PCT:
                value = 100.0 * value / rows_new[k, _DEVICE_GB]
        elif kind == _GPU_PCT:
            value = 100.0 * (rows_new[k, col] - rows_old[k, col]) / rate_dt[k]
            value = 100.0 if value > 100.0 else value
        elif kind == _CPU_PCT:
            busy = (rows_new[k, col] - rows_old[k, col]) / rate_dt[k]
            value = cpu_idle_pct + 100.0 * busy / cpu_cores
            value = 100.0 if value > 100.0 else value
        elif kind == _RATE:
            value = (rows_new[k, col] - rows_old[k, col]) / rate_dt[k]
        else:
            value = (rows_new[k, col] - rows_old[k, col]) / rate_dt[k]
            value = 1.0 if value > 1.0 else value
        out[k] = value


_by_id = operator.attrgetter("id")


class _PodSet:
    """The pods a snapshot reads (or one signal, through :meth:`SimMetricsSource.fulfil`), with what
    every signal needs of them, made once per snapshot."""

    def __init__(self, pods: Sequence[Pod]) -> None:
        self.pods = pods
        self.ids = np.array([p.id for p in pods], dtype=np.int64)
        self.key = self.ids.tobytes()
        self.ready_list = [p.phase == Phase.READY for p in pods]
        self.ready = np.array(self.ready_list, dtype=bool)

    def __len__(self) -> int:
        return len(self.pods)

    @cached_property
    def names(self) -> list[str]:
        return [p.name for p in self.pods]

    @cached_property
    def running(self) -> list[bool]:
        return [p.phase != Phase.PENDING for p in self.pods]

    @cached_property
    def ready_t(self) -> list[float]:
        return [p.ready_t for p in self.pods]


class _Serving:
    """The pods that serve (have a data-plane slot), in id order, as of the plane's
    ``slot_changes``-th slot change, with what a scrape needs of them."""

    def __init__(self, slot_changes: int, pods: list[Pod]) -> None:
        self.slot_changes = slot_changes
        self.pods = pods
        self.ids = np.array([p.id for p in pods], dtype=np.int64)
        self.slots = np.array([p.slot for p in pods], dtype=np.int64)
        self.ready = np.array([p.phase == Phase.READY for p in pods], dtype=bool)
        self.n_ready = int(self.ready.sum())
        self.shared = any(p.device is not None for p in pods)
        """Some pod is on a MIG slice or a time-sliced GPU."""


@dataclass(frozen=True)
class _Window:
    young: np.ndarray
    """Pods younger than the window (their oldest sample in it is their first)."""
    rows_new: np.ndarray
    rows_old: np.ndarray
    dt: np.ndarray
    rate_dt: np.ndarray
    """``dt`` where positive, else NaN: what a rate divides by."""
