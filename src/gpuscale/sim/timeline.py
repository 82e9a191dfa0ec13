"""The timeline's rows: what the run looked like at each control tick, as ground truth.

A row is taken right after the tick's decision was applied. Its signals come from a metrics source
with no pipeline delay (with a delay configured, the policy saw older data than the row shows);
request counts are those since the previous row -- 1,200 arrivals over a 15-s tick is 80 requests/s.
"""

from __future__ import annotations

import numpy as np

from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.sim import kernel as K
from gpuscale.sim.cluster import Cluster
from gpuscale.sim.llm_plane import Plane
from gpuscale.sim.results import TimelineRow
from gpuscale.sim.summary import node_cost_usd
from gpuscale.sim.target import SimScaleTarget
from gpuscale.sim.telemetry import SimMetricsSource


class TimelineRecorder:
    """Takes one :class:`~gpuscale.sim.results.TimelineRow` per control tick."""

    def __init__(
        self, dp: Plane, target: SimScaleTarget, cluster: Cluster, truth: SimMetricsSource, tick_s: float
    ) -> None:
        """``truth``: a source with no pipeline delay; signals are read over one tick."""
        self.dp = dp
        self.target = target
        self.cluster = cluster
        self.truth = truth
        self._gpu = SignalSpec(Metric.GPU_UTIL, tick_s)
        self._memory = SignalSpec(Metric.GPU_MEMORY_UTIL, tick_s)
        self._cpu = SignalSpec(Metric.CPU_UTIL, tick_s)
        self._concurrency = SignalSpec(Metric.CONCURRENCY, tick_s, Aggregation.TOTAL)
        self._queue = SignalSpec(Metric.QUEUE_LENGTH, tick_s, Aggregation.TOTAL)
        self._p95 = SignalSpec(Metric.LATENCY_P95_MS, tick_s)
        self._kv = SignalSpec(Metric.KV_CACHE_USAGE, tick_s)
        self._waiting = SignalSpec(Metric.REQUESTS_WAITING, tick_s, Aggregation.TOTAL)
        self._ttft = SignalSpec(Metric.TTFT_P95_MS, tick_s)
        self._itl = SignalSpec(Metric.ITL_P95_MS, tick_s)
        self._specs = (self._gpu, self._memory, self._cpu, self._concurrency, self._queue, self._p95)
        self._llm_specs = (*self._specs, self._kv, self._waiting, self._ttft, self._itl)
        self._last_counters = np.zeros(len(dp.gi), dtype=np.int64)
        self._last_t = 0.0

    def row(self, t: float, reason: str, pending_pod_s: float) -> TimelineRow:
        """The row at ``t``: ``reason`` is the tick's decision's, ``pending_pod_s`` the run's so far."""
        counters = self.dp.gi.copy()
        d = counters - self._last_counters
        self._last_counters = counters
        span = t - self._last_t
        self._last_t = t
        target = self.target
        # Draining pods still report (their in-flight requests count); standby pods are not serving.
        pods = [p for p in target.pods.values() if not p.standby]
        counts = target.counts(t)
        gpus_held, gpu_hours_s, cost = target.gpu_usage(t)

        llm = self.truth.llm
        specs = self._llm_specs if llm else self._specs
        gpu, memory, cpu, concurrency, queue, p95, *tokens = self.truth.values_at(t, specs, pods)

        return TimelineRow(
            time_s=round(t, 9),
            arrivals=int(d[K.G_ARRIVED]),
            arrival_rps=float(d[K.G_ARRIVED]) / span if span > 0 else 0.0,
            completed=int(d[K.G_COMPLETED]),
            timed_out=int(d[K.G_TIMED_OUT]),
            rejected=int(d[K.G_REJECTED]),
            dropped=int(d[K.G_DROPPED]),
            desired=counts.current_replicas,
            ready=counts.ready,
            starting=counts.starting,
            pending=counts.pending,
            draining=counts.draining,
            standby=counts.standby,
            gpus_held=gpus_held,
            gpu_util_pct=gpu,
            gpu_memory_util_pct=memory,
            cpu_util_pct=cpu,
            concurrency=concurrency,
            queue_length=queue,
            p95_ms=p95,
            gpu_hours=gpu_hours_s / 3600.0,
            cost_usd=cost,
            reason=reason,
            nodes=len(self.cluster.nodes),
            pending_nodes=counts.pending_nodes,
            pending_pod_s=pending_pod_s,
            node_cost_usd=node_cost_usd(self.cluster, t),
            **(
                dict(
                    zip(
                        ("kv_cache_usage", "requests_waiting", "ttft_p95_ms", "itl_p95_ms"),
                        tokens,
                        strict=True,
                    )
                )
                if llm
                else {}
            ),
        )
