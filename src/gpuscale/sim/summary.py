"""A run's headline figures: the running totals the simulation loop feeds, and the :class:`Summary`
built from them at the end.

The loop feeds three kinds of facts, each where it happens:

* between two instants, what held over the interval (:meth:`SummaryBuilder.elapse`): Ready pods,
  GPUs held and Pending pods, integrated over time -- 3 Ready pods for 10 s then 4 for 5 s is
  50 pod-seconds, a mean of 50 / 15 = 3.33 replicas over those 15 s;
* at each instant, after its lifecycle events, the peaks (:meth:`SummaryBuilder.observe`);
* at each scrape, the GPU memory the exporter reported (:meth:`SummaryBuilder.scraped`), and at each
  control tick, the decision's reason (:meth:`SummaryBuilder.decided`).

Everything else (requests, latency, GPU-hours, cold starts, node-hours) is read from the data plane,
the target and the cluster when the summary is built.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuscale.config.scenario import Scenario
from gpuscale.sim import kernel as K
from gpuscale.sim.cluster import Cluster
from gpuscale.sim.llm_plane import LlmDataPlane, Plane
from gpuscale.sim.results import Summary
from gpuscale.sim.target import SimScaleTarget
from gpuscale.sim.telemetry import hist_quantile

if TYPE_CHECKING:
    from gpuscale.sim.nodes import NodeLayer


def _nansum_count(values: np.ndarray) -> tuple[float, int]:
    """``np.nansum(values)`` and how many values are not NaN. With no NaN (the usual case) that is
    the plain sum, at a fraction of nansum's cost; and a sum that is not NaN had no NaN in it."""
    total = float(values.sum())
    if total == total:
        return total, len(values)
    return float(np.nansum(values)), int(np.count_nonzero(~np.isnan(values)))


class SummaryBuilder:
    """The running totals of one run; :meth:`build` turns them into its :class:`Summary`."""

    def __init__(self, ready: int, nodes: int) -> None:
        """``ready`` pods and ``nodes`` nodes at the start (the first peaks)."""
        self.ready_s = 0.0
        """Ready pod-seconds."""
        self.gpus_s = 0.0
        """GPU-seconds held by pods."""
        self.pending_s = 0.0
        """Pending pod-seconds (waiting for a GPU)."""
        self.max_ready = ready
        self.max_nodes = nodes
        self._mem_sum = 0.0
        self._mem_n = 0
        self._kv_sum = 0.0
        self._kv_n = 0
        self.reasons: Counter[str] = Counter()

    def elapse(self, dt: float, ready: int, gpus_held: float, pending: int) -> None:
        """``dt`` seconds passed with ``ready`` Ready pods, ``gpus_held`` GPUs and ``pending`` Pending pods."""
        self.ready_s += ready * dt
        self.gpus_s += gpus_held * dt
        self.pending_s += pending * dt

    def observe(self, ready: int, nodes: int) -> None:
        """The counts after an instant's lifecycle events: the peaks include them."""
        self.max_ready = max(self.max_ready, ready)
        self.max_nodes = max(self.max_nodes, nodes)

    def scraped(self, memory_util_pct: np.ndarray, kv_cache_usage: np.ndarray | None = None) -> None:
        """One scrape's GPU memory utilization (%) and, for LLM pods, KV-cache usage (0-1) of the Ready
        pods; NaN where a pod reported none."""
        total, n = _nansum_count(memory_util_pct)
        self._mem_sum += total
        self._mem_n += n
        if kv_cache_usage is not None:
            total, n = _nansum_count(kv_cache_usage)
            self._kv_sum += total
            self._kv_n += n

    def decided(self, reason: str) -> None:
        self.reasons[reason] += 1

    def build(
        self,
        scenario: Scenario,
        policy_name: str,
        seed: int,
        dp: Plane,
        target: SimScaleTarget,
        cluster: Cluster,
        nodes: NodeLayer | None,
    ) -> Summary:
        """The summary at the end of the run (``scenario.duration_s``)."""
        return self._with_nodes(
            self._serving(scenario, policy_name, seed, dp, target), scenario, cluster, nodes, target
        )

    def _serving(
        self, scenario: Scenario, policy_name: str, seed: int, dp: Plane, target: SimScaleTarget
    ) -> Summary:
        """Requests, latency, pod GPU-hours and utilization; Little's law as a self-check."""
        duration = scenario.duration_s
        gi = dp.gi
        arrived = int(gi[K.G_ARRIVED])
        completed = int(gi[K.G_COMPLETED])
        timed_out = int(gi[K.G_TIMED_OUT])
        ended_with_latency = completed + timed_out
        hist = dp.hist
        busy = dp.retired_busy_s
        cpu = dp.retired_cpu_s
        live = dp.active_slots
        if len(live):
            raw = dp.scrape(live, duration)
            busy += float(raw[:, 0].sum())
            cpu += float(raw[:, 1].sum())
        gpu_secs, cost = target.gpu_seconds(duration)
        ready_s = self.ready_s
        ended = arrived - dp.in_flight
        mean_w = float(dp.gf[K.F_LAT_SUM]) / ended_with_latency if ended_with_latency else 0.0
        mean_sys = float(dp.gf[K.F_SYS_SUM]) / ended if ended else 0.0
        mean_cpu = None
        if ready_s > 0:
            mean_cpu = min(
                100.0, scenario.model.cpu_idle_pct + 100.0 * cpu / (ready_s * scenario.model.cpu_cores)
            )
        llm = self._llm_part(scenario, dp) if scenario.model.llm is not None else {}
        return Summary(
            scenario=scenario.name,
            policy=policy_name,
            seed=seed,
            duration_s=duration,
            slo_ms=scenario.slo.latency_ms,
            requests=arrived,
            completed=completed,
            rejected=int(gi[K.G_REJECTED]),
            timed_out=timed_out,
            dropped=int(gi[K.G_DROPPED]),
            in_flight=dp.in_flight,
            slo_attainment=int(gi[K.G_SLO_MET]) / arrived if arrived else 1.0,
            latency_p50_ms=_ms(hist_quantile(hist, 0.50)),
            latency_p95_ms=_ms(hist_quantile(hist, 0.95)),
            latency_p99_ms=_ms(hist_quantile(hist, 0.99)),
            latency_max_ms=float(dp.gf[K.F_LAT_MAX]) * 1000.0 if ended_with_latency else None,
            latency_mean_ms=mean_w * 1000.0 if ended_with_latency else None,
            queue_wait_p95_ms=_ms(hist_quantile(dp.wait_hist, 0.95)),
            gpu_hours=gpu_secs / 3600.0,
            cost_usd=cost,
            mean_replicas=ready_s / duration,
            max_replicas=self.max_ready,
            mean_gpus_held=self.gpus_s / duration,
            cold_starts=target.cold_starts,
            mean_cold_start_s=target.cold_start_total_s / target.cold_starts if target.cold_starts else None,
            scale_events=target.scale_events,
            mean_gpu_memory_util_pct=self._mem_sum / self._mem_n if self._mem_n else None,
            # busy time includes draining pods' last requests (not Ready): capped at 100 %
            mean_sm_util_pct=min(100.0, 100.0 * busy / ready_s) if ready_s > 0 else None,
            mean_cpu_util_pct=mean_cpu,
            littles_law_l=dp.system_integral / duration,
            littles_law_lambda_w=arrived / duration * mean_sys,
            decisions_by_reason=dict(sorted(self.reasons.items())),
            **llm,
        )

    def _llm_part(self, scenario: Scenario, dp: Plane) -> dict[str, Any]:
        """The token-level engine's figures: TTFT and inter-token quantiles, tokens, preemptions."""
        assert isinstance(dp, LlmDataPlane)
        slo = scenario.slo
        return {
            "ttft_slo_ms": slo.ttft_ms,
            "itl_slo_ms": slo.itl_ms,
            "ttft_p50_ms": _ms(hist_quantile(dp.ttft_hist, 0.50)),
            "ttft_p95_ms": _ms(hist_quantile(dp.ttft_hist, 0.95)),
            "ttft_p99_ms": _ms(hist_quantile(dp.ttft_hist, 0.99)),
            "itl_p50_ms": _ms(hist_quantile(dp.itl_hist, 0.50)),
            "itl_p95_ms": _ms(hist_quantile(dp.itl_hist, 0.95)),
            "itl_p99_ms": _ms(hist_quantile(dp.itl_hist, 0.99)),
            "prompt_tokens": dp.prompt_tokens,
            "generated_tokens": dp.generated_tokens,
            "generated_tokens_per_s": dp.generated_tokens / scenario.duration_s,
            "preemptions": dp.preemptions,
            "mean_kv_cache_usage": self._kv_sum / self._kv_n if self._kv_n else None,
        }

    def _with_nodes(
        self,
        summary: Summary,
        scenario: Scenario,
        cluster: Cluster,
        nodes: NodeLayer | None,
        target: SimScaleTarget,
    ) -> Summary:
        """The node-layer figures: node-hours and dollars by pool, spot savings, pending time, and the
        node layer's counters (placeholder preemptions, backoffs, failed launches, consolidations,
        replacements, expiries).

        ``cost_usd`` is the node bill when a node autoscaler is configured (clouds bill nodes); with
        fixed pools it stays the pod GPU-hours x GPU price it always was. ``pod_cost_usd`` is always
        the latter.
        """
        secs = cluster.node_seconds(scenario.duration_s)
        labels = cluster.pool_labels
        hours = {labels[i]: s / 3600.0 for i, s in enumerate(secs)}
        cost = {
            labels[i]: s / 3600.0 * p.node_price
            for i, (s, p) in enumerate(zip(secs, cluster.pools, strict=True))
        }
        on_demand = sum(
            s / 3600.0 * p.on_demand_usd_per_node_hour for s, p in zip(secs, cluster.pools, strict=True)
        )
        node_cost = sum(cost.values())
        node_basis = scenario.cluster.node_autoscaler.kind != "none"
        return replace(
            summary,
            cost_usd=node_cost if node_basis else summary.cost_usd,
            cost_basis="node" if node_basis else "pod",
            pod_cost_usd=summary.cost_usd,
            node_hours=sum(hours.values()),
            node_cost_usd=node_cost,
            node_hours_by_pool=hours,
            node_cost_by_pool_usd=cost,
            on_demand_node_cost_usd=on_demand,
            spot_savings_usd=on_demand - node_cost,
            max_nodes=self.max_nodes,
            node_scale_ups=nodes.scale_ups if nodes is not None else 0,
            node_scale_downs=nodes.scale_downs if nodes is not None else 0,
            spot_interruptions=nodes.spot_interruptions if nodes is not None else 0,
            evictions=target.evictions if nodes is not None else 0,
            oom_kills=target.oom_kills,
            pending_pod_s=self.pending_s,
            placeholder_preemptions=target.preemptions,
            node_group_backoffs=nodes.backoffs if nodes is not None else 0,
            failed_launches=nodes.failed_launches if nodes is not None else 0,
            multi_node_consolidations=nodes.multi_node_consolidations if nodes is not None else 0,
            consolidation_replacements=nodes.replacements if nodes is not None else 0,
            node_expirations=nodes.expirations if nodes is not None else 0,
        )


def node_cost_usd(cluster: Cluster, t: float) -> float:
    """Node-hours of every pool up to ``t`` x the pool's node price."""
    return sum(s / 3600.0 * p.node_price for s, p in zip(cluster.node_seconds(t), cluster.pools, strict=True))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
