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

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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
from gpuscale.sim.llm_plane import LlmDataPlane, Plane

# per-pod sample columns (_MEM: memory used on the device the pod sees; _DEVICE_GB: that device's)
_BUSY, _CPU, _INFLIGHT, _ADMITTED, _MEM_CUM, _QUEUE_CUM, _COUNT, _MEM, _QUEUE, _DEVICE_GB = range(10)
# LLM pods only (zero elsewhere): gauges and their running sums, counters, time integrals
_KV, _KV_CUM, _RUN, _RUN_CUM, _PROMPT, _GEN, _PREEMPT, _SM_ACTIVE, _SM_OCC, _DRAM = range(10, 20)
_N_COLS = 20
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
_BUCKET_VALUES_S = K.bucket_values()


def hist_quantile(counts: np.ndarray, q: float) -> float | None:
    """The q-quantile (seconds) of a latency histogram, within its 0.78 % relative error; None if empty."""
    total = int(counts.sum())
    if total <= 0:
        return None
    rank = q * total
    idx = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    return float(_BUCKET_VALUES_S[min(idx, len(_BUCKET_VALUES_S) - 1)])


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
    ) -> None:
        """``pods()``: the target's pods now, standby pods included (what service discovery finds:
        a scrape reads every pod that serves, a snapshot the active ones).
        ``held_gb(pod, t)``: GPU memory a pod that is not serving holds at ``t`` (one loading its
        weights, or a loaded standby pod); it counts on a time-sliced GPU it shares. None: nothing."""
        self.dp = dp
        self.pods = pods
        self.profile = profile
        self.held_gb = held_gb
        self.scrape_interval_s = scrape_interval_s
        self.metrics_delay_s = metrics_delay_s
        keep = math.ceil((max_window_s + metrics_delay_s) / scrape_interval_s) + 3
        self._samples: deque[_Sample] = deque(maxlen=keep)
        self._cum: dict[int, tuple[float, float, int, float, float]] = {}
        self._first_seen: dict[int, int] = {}
        """Absolute scrape number of each serving pod's first sample."""
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
        serving = sorted((p for p in self.pods() if p.slot >= 0), key=lambda p: p.id)
        ids = np.array([p.id for p in serving], dtype=np.int64)
        slots = np.array([p.slot for p in serving], dtype=np.int64)
        raw = self.dp.scrape(slots, t)
        rows = np.zeros((len(serving), _N_COLS), dtype=np.float64)
        if len(serving):
            device_gb = self.device_gb(serving)
            mem = self._device_used_gb(t, serving, self.memory_gb(slots, raw[:, 6], device_gb))
            rows[:, _DEVICE_GB] = device_gb
            rows[:, _BUSY] = raw[:, 0]
            rows[:, _CPU] = raw[:, 1]
            rows[:, _INFLIGHT] = raw[:, 2]
            rows[:, _ADMITTED] = raw[:, 3]
            rows[:, _MEM] = mem
            rows[:, _QUEUE] = raw[:, 5]
            if self._llm_dp is not None:
                rows[:, _KV] = raw[:, 7] / float(self._llm_dp.num_blocks)
                rows[:, _RUN] = raw[:, 6]
                rows[:, _PROMPT : _DRAM + 1] = raw[:, 8:14]
            for k, pid in enumerate(ids.tolist()):
                m, q, n, kv, run = self._cum.get(pid, (0.0, 0.0, 0, 0.0, 0.0))
                m += float(mem[k])
                q += float(raw[k, 5])
                n += 1
                kv += float(rows[k, _KV])
                run += float(rows[k, _RUN])
                self._cum[pid] = (m, q, n, kv, run)
                self._first_seen.setdefault(pid, self._count)
                rows[k, _MEM_CUM] = m
                rows[k, _QUEUE_CUM] = q
                rows[k, _COUNT] = n
                rows[k, _KV_CUM] = kv
                rows[k, _RUN_CUM] = run
        # Pods that stopped reporting are gone for good (slots are never reused by the same pod).
        if len(self._cum) > len(serving):
            keep = set(ids.tolist())
            self._cum = {k: v for k, v in self._cum.items() if k in keep}
            self._first_seen = {k: v for k, v in self._first_seen.items() if k in keep}
        self._router_cum += self.dp.router_queue_len
        self._count += 1
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
        cutoff = t - self.metrics_delay_s + 1e-9
        for i in range(len(self._samples) - 1, -1, -1):
            if self._samples[i].t <= cutoff:
                return i
        return None

    def _window_start(self, new: int, window_s: float) -> int:
        target = self._samples[new].t - window_s + 1e-9
        old = 0
        for i in range(new, -1, -1):
            if self._samples[i].t <= target:
                old = i
                break
        return old

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        """The snapshot a policy sees at ``now``: ``counts`` plus every spec it declared, read over the
        active pods (Pending, Starting and Ready; standby pods are outside the Service)."""
        active = [
            p
            for p in self.pods()
            if not p.standby and p.phase in (Phase.PENDING, Phase.STARTING, Phase.READY)
        ]
        return make_snapshot(now, counts, {spec: self.fulfil(now, spec, active) for spec in specs})

    def unavailable(self) -> None:
        """Never: the simulated metrics backend always answers (a missing signal is still missing)."""
        return None

    def fulfil(
        self, t: float, spec: SignalSpec, pods: Sequence[Pod], *, with_pods: bool = True
    ) -> SignalValue:
        """The value of ``spec`` at ``t``; ``with_pods=False`` skips the per-pod samples."""
        new = self._newest(t)
        if new is None:
            return SignalValue.missing("no scrape yet")
        s_new = self._samples[new]
        age = t - s_new.t
        old = self._window_start(new, spec.window_s)
        s_old = self._samples[old]
        if spec.metric in LATENCY_METRICS:
            if old == new:
                return SignalValue.missing("one scrape in the window", age)
            q = hist_quantile(s_new.hist - s_old.hist, _QUANTILE[spec.metric])
            if q is None:
                return SignalValue.missing(f"no request completed in the last {spec.window_s:g} s", age)
            return SignalValue(q * 1000.0, age)
        if spec.metric in TOKEN_LATENCY_METRICS:
            return self._token_latency(spec, s_new, s_old, age)
        if with_pods:
            per_pod = self._per_pod(spec.metric, new, old, pods)
            values = [s.value for s in per_pod if s.value is not None and s.ready]
        else:
            per_pod = []
            arr = self._values(spec.metric, self._window(new, old, pods))
            ready = np.array([p.phase == Phase.READY for p in pods], dtype=bool)
            values = [float(v) for v in arr[ready & ~np.isnan(arr)]] if len(pods) else []
        service = self._service_part(spec.metric, s_new, s_old)
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
        q = hist_quantile(h_new - h_old, _QUANTILE[spec.metric])
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

    def _window(self, new: int, old: int, pods: Sequence[Pod]) -> _Window:
        """Each pod's newest sample and its oldest sample inside the window (vectorised, cached)."""
        base = self._count - len(self._samples)
        ids = np.array([p.id for p in pods], dtype=np.int64)
        key = (base + new, base + old, ids.tobytes())
        if self._window_cache is not None and self._window_cache[0] == key:
            return self._window_cache[1]
        s_new = self._samples[new]
        n = len(ids)
        k_new = np.searchsorted(s_new.pod_ids, ids) if len(s_new.pod_ids) else np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=bool)
        if len(s_new.pod_ids):
            inside = k_new < len(s_new.pod_ids)
            present[inside] = s_new.pod_ids[k_new[inside]] == ids[inside]
        rows_new = np.full((n, _N_COLS), np.nan)
        rows_old = np.full((n, _N_COLS), np.nan)
        t_old = np.full(n, np.nan)
        young = np.zeros(n, dtype=bool)
        if present.any():
            rows_new[present] = s_new.rows[k_new[present]]
            # A pod is scraped from its first scrape on, so its oldest sample in the window is at
            # max(window start, first scrape).
            first = np.array([self._first_seen.get(int(i), base + new) for i in ids], dtype=np.int64) - base
            i_old = np.maximum(first, old)
            young[:] = (i_old != old) | (i_old == new)
            for i in np.unique(i_old[present]):
                sel = present & (i_old == i)
                sample = self._samples[int(i)]
                rows_old[sel] = sample.rows[np.searchsorted(sample.pod_ids, ids[sel])]
                t_old[sel] = sample.t
        view = _Window(present, rows_new, rows_old, s_new.t - t_old, young)
        self._window_cache = (key, view)
        return view

    def _values(self, metric: Metric, w: _Window) -> np.ndarray:
        """Per-pod values of ``metric`` over the window (NaN where a pod has none)."""
        new, old = w.rows_new, w.rows_old
        if not self.llm and metric in LLM_METRICS:
            return np.full(len(new), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            if metric in _GAUGES:
                col, cum = _GAUGES[metric]
                # mean of the samples in (old, new]; a pod younger than the window counts its first sample
                n = new[:, _COUNT] - old[:, _COUNT]
                total = new[:, cum] - old[:, cum]
                mean = np.where(w.young, (total + old[:, col]) / (n + 1), total / n)
                if metric == Metric.GPU_MEMORY_UTIL:
                    return np.asarray(100.0 * mean / new[:, _DEVICE_GB])
                return np.asarray(mean)
            dt = np.where(w.dt > 0, w.dt, np.nan)
            if metric == Metric.GPU_UTIL:
                return np.asarray(np.minimum(100.0, 100.0 * (new[:, _BUSY] - old[:, _BUSY]) / dt))
            if metric == Metric.CPU_UTIL:
                busy = (new[:, _CPU] - old[:, _CPU]) / dt
                return np.asarray(
                    np.minimum(100.0, self.profile.cpu_idle_pct + 100.0 * busy / self.profile.cpu_cores)
                )
            if metric in _RATES:
                col = _RATES[metric]
                return np.asarray((new[:, col] - old[:, col]) / dt)
            if metric in _FRACTIONS:
                col = _FRACTIONS[metric]
                return np.asarray(np.minimum(1.0, (new[:, col] - old[:, col]) / dt))
        raise ValueError(f"metric {metric} is not a per-pod metric")

    def _per_pod(self, metric: Metric, new: int, old: int, pods: Sequence[Pod]) -> list[PodSample]:
        t_new = self._samples[new].t
        values = self._values(metric, self._window(new, old, pods))
        out: list[PodSample] = []
        for pod, v in zip(pods, values.tolist(), strict=True):
            ready = pod.phase == Phase.READY
            out.append(
                PodSample(
                    pod.name,
                    None if v != v else float(v),
                    ready,
                    pod.phase != Phase.PENDING,
                    max(0.0, t_new - pod.ready_t) if ready else 0.0,
                )
            )
        return out


@dataclass(frozen=True)
class _Window:
    present: np.ndarray
    rows_new: np.ndarray
    rows_old: np.ndarray
    dt: np.ndarray
    young: np.ndarray
