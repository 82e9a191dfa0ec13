"""One simulation run: the control plane in Python around the compiled data plane.

The loop moves from one control-plane instant to the next — a pod becoming Ready, a drain deadline,
a scrape, a control tick, a change in the closed-loop population — and lets the kernel advance the
data plane in between. At one instant the order is: lifecycle events, scrape, control tick.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gpuscale._core.rng import generator
from gpuscale.config.scenario import Scenario
from gpuscale.policies.base import Aggregation, Metric, Policy, SignalSpec, StaticPolicy
from gpuscale.policies.registry import check_windows
from gpuscale.sim import kernel as K
from gpuscale.sim.cluster import Cluster, Phase, Pod
from gpuscale.sim.dataplane import DataPlane
from gpuscale.sim.nodes import NodeLayer
from gpuscale.sim.results import SimResult, Summary, Timeline
from gpuscale.sim.serving import Jitter, Routing, ServingParams, interpolate_batch_latency
from gpuscale.sim.target import SimScaleTarget
from gpuscale.sim.telemetry import SimMetricsSource, hist_quantile
from gpuscale.sim.workload import build_workload

Progress = Callable[[float], None]
"""Called with the fraction of simulated time done, now and then."""


def serving_params(scenario: Scenario) -> ServingParams:
    m = scenario.model
    s = scenario.serving
    return ServingParams(
        batch_latency_s=interpolate_batch_latency(m.batch_latency_ms, m.max_batch_size),
        max_batch=m.max_batch_size,
        preferred_batch_sizes=tuple(m.preferred_batch_sizes),
        max_queue_delay_s=m.max_queue_delay_ms / 1000.0,
        jitter=Jitter(m.jitter),
        jitter_cv=m.jitter_cv,
        cpu_s=m.cpu_ms_per_request / 1000.0,
        cpu_workers=m.cpu_workers,
        container_concurrency=s.container_concurrency,
        queue_capacity=s.queue_capacity,
        router_queue_capacity=s.router_queue_capacity,
        timeout_s=s.timeout_s,
        routing=Routing(s.routing),
    )


_TIMELINE_SPECS: dict[str, Metric] = {
    "gpu_util_pct": Metric.GPU_UTIL,
    "gpu_memory_util_pct": Metric.GPU_MEMORY_UTIL,
    "cpu_util_pct": Metric.CPU_UTIL,
}


def simulate(
    scenario: Scenario,
    policy: Policy[Any],
    *,
    seed: int | None = None,
    base_dir: Path | None = None,
    source: str = "scenario",
    record: bool = False,
    progress: Progress | None = None,
) -> SimResult:
    """Run ``policy`` on ``scenario``; deterministic for a given seed (default: the scenario's)."""
    seed = scenario.seed if seed is None else seed
    check_windows(policy, scenario.telemetry.scrape_interval_s, f"policy {policy.name}")
    duration = scenario.duration_s
    workload = build_workload(
        scenario.workload, seed=seed, duration_s=duration, source=source, base_dir=base_dir
    )
    closed = workload.closed_loop
    params = serving_params(scenario)
    tick_s = policy.sync_period_s or scenario.control.interval_s
    scrape_s = scenario.telemetry.scrape_interval_s
    max_slots = scenario.control.max_pods
    dp = DataPlane(
        params,
        max_slots=max_slots,
        slo_s=scenario.slo.latency_ms / 1000.0,
        seed=seed,
        think_s=(closed.think_min_s, closed.think_max_s) if closed is not None else None,
        max_users=closed.schedule.max_users if closed is not None else 0,
        record=record,
    )
    cluster = Cluster(
        scenario.cluster.pools,
        scenario.startup,
        scenario.model.gpus_per_pod,
        generator(seed, "cluster"),
        scenario.cluster.mig_profile,
    )
    target = SimScaleTarget(cluster, dp, grace_s=scenario.serving.termination_grace_s, max_pods=max_slots)
    nodes = NodeLayer(scenario.cluster, cluster, target, seed) if scenario.cluster.node_layer else None
    windows = [s.window_s for s in policy.signals] + [tick_s, 60.0]

    def held_gb(pod: Pod, t: float) -> float:
        return target.memory_need_gb(pod, scenario.model, t)

    source_ = SimMetricsSource(
        dp,
        scenario.model,
        scrape_interval_s=scrape_s,
        metrics_delay_s=scenario.telemetry.metrics_delay_s,
        max_window_s=max(windows),
        held_gb=held_gb,
    )
    # The timeline reports ground truth (no pipeline delay); with no delay that is the policy's source.
    truth = (
        source_
        if scenario.telemetry.metrics_delay_s == 0
        else SimMetricsSource(
            dp,
            scenario.model,
            scrape_interval_s=scrape_s,
            metrics_delay_s=0.0,
            max_window_s=max(windows),
            held_gb=held_gb,
        )
    )
    timeline_specs = {name: SignalSpec(metric, tick_s) for name, metric in _TIMELINE_SPECS.items()}
    conc_spec = SignalSpec(Metric.CONCURRENCY, tick_s, Aggregation.TOTAL)
    queue_spec = SignalSpec(Metric.QUEUE_LENGTH, tick_s, Aggregation.TOTAL)
    p95_spec = SignalSpec(Metric.LATENCY_P95_MS, tick_s)

    # A fixed-size deployment is already at its size when the run starts (a static policy is the
    # "always provisioned" baseline, not a scale-up from the scenario's initial replicas).
    initial = policy.replicas if isinstance(policy, StaticPolicy) else scenario.control.initial_replicas
    target.start_warm(initial, 0.0)
    state = policy.initial_state()
    reasons: Counter[str] = Counter()
    timeline = Timeline()
    empty = np.zeros(0, dtype=np.float64)

    users = closed.schedule.users_at(0.0) if closed is not None else -1
    n_scrape = 0
    n_tick = 1
    next_user_change = _next_change(closed, 0.0, duration)
    t = 0.0
    ready_s = 0.0
    gpus_s = 0.0
    pending_s = 0.0
    max_ready = target.count(Phase.READY)
    max_nodes = len(cluster.nodes)
    mem_sum = 0.0
    mem_n = 0
    last_counts = np.zeros(K.N_GI, dtype=np.int64)
    last_row_t = 0.0
    last_reason = ""
    report_every = max(duration / 200.0, tick_s)
    next_report = report_every

    while True:
        next_scrape = n_scrape * scrape_s
        next_tick = n_tick * tick_s
        t_next = min(target.next_event_t(), next_scrape, next_tick, next_user_change, duration)
        if nodes is not None:
            t_next = min(t_next, nodes.next_event_t())
        if t_next > t:
            arrivals = workload.open_loop.arrivals(t, t_next) if workload.open_loop is not None else empty
            dp.advance(t, t_next, arrivals, users)
            n_ready = target.count(Phase.READY)
            ready_s += n_ready * (t_next - t)
            gpus_s += target.gpus_held * (t_next - t)
            pending_s += target.count(Phase.PENDING) * (t_next - t)
            t = t_next
        if t >= duration:
            break
        target.reap_drained(t)
        if nodes is not None:
            nodes.step(t)
        while target.events and target.events[0][0] <= t:
            _, _, kind, pod_id = heapq.heappop(target.events)
            target.handle_event(kind, pod_id, t)
        if cluster.shared:
            target.check_memory(t, scenario.model)
        max_ready = max(max_ready, target.count(Phase.READY))
        max_nodes = max(max_nodes, len(cluster.nodes))
        if t >= next_user_change and closed is not None:
            users = closed.schedule.users_at(t)
            next_user_change = _next_change(closed, t, duration)
        if t >= next_scrape:
            pods = list(target.pods.values())
            source_.scrape(t, pods)
            if truth is not source_:
                truth.scrape(t, pods)
            n_scrape += 1
            ready_pods = [p for p in pods if p.phase == Phase.READY]
            if ready_pods:
                # As the exporter reported it: against the device each pod sees (its MIG slice).
                mem = source_.memory_util_pct(ready_pods)
                mem_sum += float(np.nansum(mem))
                mem_n += int(np.count_nonzero(~np.isnan(mem)))
        if t >= next_tick:
            n_tick += 1
            pods = list(target.pods.values())
            counts = _counts(target)
            counts["pending_nodes"] = nodes.pending_nodes(t) if nodes is not None else 0
            snapshot = source_.snapshot(t, policy.signals, pods, **counts)
            decision, state = policy.decide(snapshot, state)
            reasons[decision.reason.value] += 1
            last_reason = decision.reason.value
            target.apply(decision, t)
            # timeline row: ground truth over the last tick (no pipeline delay)
            gi = dp.gi.copy()
            d = gi - last_counts
            last_counts = gi
            span = t - last_row_t
            last_row_t = t
            target_pods = [p for p in target.pods.values() if not p.standby]
            after = _counts(target)
            gpu_secs, cost = target.gpu_seconds(t)
            row_vals = {
                name: truth.fulfil(t, spec, target_pods, with_pods=False).value
                for name, spec in timeline_specs.items()
            }
            timeline.rows.append(
                (
                    round(t, 9),
                    int(d[K.G_ARRIVED]),
                    float(d[K.G_ARRIVED]) / span if span > 0 else 0.0,
                    int(d[K.G_COMPLETED]),
                    int(d[K.G_TIMED_OUT]),
                    int(d[K.G_REJECTED]),
                    int(d[K.G_DROPPED]),
                    target.spec,
                    after["ready"],
                    after["starting"],
                    after["pending"],
                    after["draining"],
                    after["standby"],
                    target.gpus_held,
                    row_vals["gpu_util_pct"],
                    row_vals["gpu_memory_util_pct"],
                    row_vals["cpu_util_pct"],
                    truth.fulfil(t, conc_spec, target_pods, with_pods=False).value,
                    truth.fulfil(t, queue_spec, target_pods, with_pods=False).value,
                    truth.fulfil(t, p95_spec, target_pods, with_pods=False).value,
                    gpu_secs / 3600.0,
                    cost,
                    last_reason,
                    len(cluster.nodes),
                    nodes.pending_nodes(t) if nodes is not None else 0,
                    pending_s,
                    _node_cost(cluster, t),
                )
            )
        if nodes is not None:
            nodes.settle(t)
        if progress is not None and t >= next_report:
            progress(t / duration)
            next_report += report_every

    summary = _summarize(
        scenario, policy, seed, dp, target, ready_s, gpus_s, max_ready, mem_sum, mem_n, reasons
    )
    summary = _with_nodes(
        summary, scenario, cluster, nodes, pending_s, max_nodes, target.oom_kills, target.preemptions
    )
    if progress is not None:
        progress(1.0)
    phases = {k: v / target.cold_starts for k, v in target.phase_totals.items()} if target.cold_starts else {}
    return SimResult(summary, timeline, dp.records() if record else None, phases, dp.hist.copy())


def _node_cost(cluster: Cluster, t: float) -> float:
    return sum(s / 3600.0 * p.node_price for s, p in zip(cluster.node_seconds(t), cluster.pools, strict=True))


def _with_nodes(
    summary: Summary,
    scenario: Scenario,
    cluster: Cluster,
    nodes: NodeLayer | None,
    pending_s: float,
    max_nodes: int,
    target_oom: int,
    preemptions: int = 0,
) -> Summary:
    """The node-layer figures: node-hours and dollars by pool, spot savings, pending time, and the
    node layer's counters (placeholder preemptions, backoffs, failed launches, consolidations,
    replacements, expiries).

    ``cost_usd`` is the node bill when a node autoscaler is configured (clouds bill nodes); with fixed
    pools it stays the pod GPU-hours x GPU price it always was. ``pod_cost_usd`` is always the latter.
    """
    secs = cluster.node_seconds(scenario.duration_s)
    labels = cluster.pool_labels
    hours = {labels[i]: s / 3600.0 for i, s in enumerate(secs)}
    cost = {
        labels[i]: s / 3600.0 * p.node_price for i, (s, p) in enumerate(zip(secs, cluster.pools, strict=True))
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
        max_nodes=max_nodes,
        node_scale_ups=nodes.scale_ups if nodes is not None else 0,
        node_scale_downs=nodes.scale_downs if nodes is not None else 0,
        spot_interruptions=nodes.spot_interruptions if nodes is not None else 0,
        evictions=nodes.target.evictions if nodes is not None else 0,
        oom_kills=target_oom,
        pending_pod_s=pending_s,
        placeholder_preemptions=preemptions,
        node_group_backoffs=nodes.backoffs if nodes is not None else 0,
        failed_launches=nodes.failed_launches if nodes is not None else 0,
        multi_node_consolidations=nodes.multi_node_consolidations if nodes is not None else 0,
        consolidation_replacements=nodes.replacements if nodes is not None else 0,
        node_expirations=nodes.expirations if nodes is not None else 0,
    )


def _next_change(closed: Any, t: float, duration: float) -> float:
    if closed is None:
        return math.inf
    changes = [c for c in closed.schedule.change_times(t, duration) if c > t]
    return changes[0] if changes else math.inf


def _counts(target: SimScaleTarget) -> dict[str, int]:
    return {
        "current_replicas": target.spec,
        "ready": target.count(Phase.READY),
        "starting": target.count(Phase.STARTING),
        "pending": target.count(Phase.PENDING),
        "draining": target.count(Phase.DRAINING),
        "standby": target.count(Phase.STANDBY, standby=True),
        "standby_target": target.standby_target,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _summarize(
    scenario: Scenario,
    policy: Policy[Any],
    seed: int,
    dp: DataPlane,
    target: SimScaleTarget,
    ready_s: float,
    gpus_s: float,
    max_ready: int,
    mem_sum: float,
    mem_n: int,
    reasons: Counter[str],
) -> Summary:
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
    little_l = dp.system_integral / duration
    ended = arrived - dp.in_flight
    lam = arrived / duration
    mean_w = float(dp.gf[K.F_LAT_SUM]) / ended_with_latency if ended_with_latency else 0.0
    mean_sys = float(dp.gf[K.F_SYS_SUM]) / ended if ended else 0.0
    mean_sm = 100.0 * busy / ready_s if ready_s > 0 else None
    mean_cpu = None
    if ready_s > 0:
        mean_cpu = min(
            100.0, scenario.model.cpu_idle_pct + 100.0 * cpu / (ready_s * scenario.model.cpu_cores)
        )
    return Summary(
        scenario=scenario.name,
        policy=policy.name,
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
        max_replicas=max_ready,
        mean_gpus_held=gpus_s / duration,
        cold_starts=target.cold_starts,
        mean_cold_start_s=target.cold_start_total_s / target.cold_starts if target.cold_starts else None,
        scale_events=target.scale_events,
        mean_gpu_memory_util_pct=mem_sum / mem_n if mem_n else None,
        mean_sm_util_pct=mean_sm,
        mean_cpu_util_pct=mean_cpu,
        littles_law_l=little_l,
        littles_law_lambda_w=lam * mean_sys,
        decisions_by_reason=dict(sorted(reasons.items())),
    )
