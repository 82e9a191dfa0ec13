"""One simulation run: the control plane in Python around the compiled data plane.

The loop moves from one control-plane instant to the next — a pod becoming Ready, a drain deadline,
a scrape, a control tick, a change in the closed-loop population — and lets the kernel advance the
data plane in between. At one instant the order is: lifecycle events, scrape, control tick.

:class:`Simulation` is that loop as an object that stops at each control tick (the control tick
goes through the same two ports as ``gpuscale run``: :mod:`gpuscale.policies.ports`); :func:`simulate`
runs one to the end. The run's running totals and its summary are :mod:`gpuscale.sim.summary`'s,
the timeline's rows :mod:`gpuscale.sim.timeline`'s.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuscale._core.errors import MISSING, ConfigError
from gpuscale._core.rng import generator
from gpuscale.config.scenario import Scenario
from gpuscale.policies.base import LLM_METRICS, Decision, MetricsSnapshot, Policy
from gpuscale.policies.ports import MetricsSource, ScaleTarget
from gpuscale.policies.registry import check_windows
from gpuscale.policies.safety import anchored, schedules_of, with_safety
from gpuscale.sim import kernel as K
from gpuscale.sim.cluster import Cluster, Phase, Pod
from gpuscale.sim.dataplane import DataPlane, readonly
from gpuscale.sim.llm_plane import LlmDataPlane, Plane
from gpuscale.sim.llm_serving import llm_params
from gpuscale.sim.nodes import NodeLayer
from gpuscale.sim.results import SimResult, Timeline
from gpuscale.sim.serving import Jitter, Routing, ServingParams, interpolate_batch_latency
from gpuscale.sim.summary import SummaryBuilder
from gpuscale.sim.target import SimScaleTarget
from gpuscale.sim.telemetry import SimMetricsSource
from gpuscale.sim.timeline import TimelineRecorder
from gpuscale.sim.workload import LoadEstimate, TokenSource, build_workload, estimate_load, token_source

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


def scenario_epoch_s(scenario: Scenario) -> float:
    """The epoch seconds of the scenario's ``t = 0`` (schedule windows read calendar time from it)."""
    return scenario.start_epoch_s


# -- limits: what one run may ask of the machine ------------------------------------------------------
# Sized for the 2-core, 24-GiB machine gpuscale is developed and tested on, to keep a run to minutes
# and a few GiB. The figures behind them: `gpuscale bench` simulates 3-4.5 M requests/s on one core; a
# control-plane step (a scrape, a control tick, a change of the user count) takes 65-200 us at the
# default settings (one simulated day at 1-s scrapes: 65 us static, 74 us gpu-util, 194 us knative);
# compare and tune run one simulation per core, two at once here.

MAX_REQUESTS = 1_000_000_000
"""Expected requests one run may simulate: about 4-6 minutes at 3-4.5 M requests/s."""

MAX_USERS = 1_000_000
"""Closed-loop users one run may have at once: 16 bytes of kernel state each, and a user count that
follows a curve changes at every whole user, one engine step each (load tests run thousands)."""

MAX_STEPS = 3_000_000
"""Control-plane steps (scrapes + control ticks + user-count changes) one run may take: 3-10 minutes
at 65-200 us a step. The longest run, 30 days at the default 1-s scrape and 15-s tick, takes 2.77 M."""

MAX_MEMORY_BYTES = 4 * 2**30
"""Memory one run's data may take (arrival times, pod slots and their queues, users, scraped samples,
the timeline): 4 GiB, so that two runs at once stay within 8 of the machine's 24 GiB."""

_SLOT_BYTES_PER_REQUEST = 28
"""A pod slot's queue: arrival time, stage time, sequence number (8 bytes each) and user (4)."""
_SLOT_BYTES = (K.N_PI + K.N_PF + 4) * 8
"""A pod slot's own counters and scratch."""
_LLM_BYTES_PER_REQUEST = 112
"""A request row of an LLM pod: 11 fields, a free-list and a waiting-queue entry (8 bytes each)."""
_USER_BYTES = 16
"""A closed-loop user: heap entry, next send time, free-list entry."""
_ROUTER_BYTES_PER_REQUEST = 20
_SAMPLE_BYTES_PER_POD = 80
"""A pod's row in a scraped sample (10 float columns); a sample also keeps the latency histogram."""
_TIMELINE_ROW_BYTES = 2_000
"""One timeline row with its signals (1.4-1.6 kB measured)."""
_RECORD_BYTES = 42
"""A per-request record (21 bytes), twice over while its buffer grows."""


@dataclass(frozen=True)
class MemoryPart:
    """One part of a run's memory estimate: the key that sizes it, and how many bytes."""

    key: str
    value: object
    bytes: float
    what: str


@dataclass(frozen=True)
class RunEstimate:
    """What a run will ask of the machine, reckoned before it starts (:func:`check_run`)."""

    load: LoadEstimate
    scrapes: float
    ticks: float
    tick_key: str
    tick_s: float
    memory: tuple[MemoryPart, ...]

    @property
    def requests(self) -> float:
        return self.load.requests

    @property
    def users(self) -> int:
        return self.load.users

    @property
    def steps(self) -> float:
        return self.scrapes + self.ticks + self.load.user_changes

    @property
    def memory_bytes(self) -> float:
        return sum(part.bytes for part in self.memory)


def _service_s(scenario: Scenario) -> float:
    """A request's time in a pod at the lightest load: a batch of one, and the CPU stage (for an LLM
    pod, one iteration)."""
    m = scenario.model
    if m.llm is not None:
        return (m.llm.beta0_ms + m.llm.beta_decode_ms_per_token) / 1000.0
    sizes = [float(b) for b, _ in m.batch_latency_ms]
    ms = [float(v) for _, v in m.batch_latency_ms]
    return float(np.interp(1.0, sizes, ms)) / 1000.0 + m.cpu_ms_per_request / 1000.0


def estimate_run(
    scenario: Scenario,
    policy: Policy[Any] | None = None,
    *,
    seed: int | None = None,
    base_dir: Path | None = None,
    source: str = "scenario",
    record: bool = False,
) -> RunEstimate:
    """The requests, users, control-plane steps and memory a run of ``policy`` on ``scenario`` will
    take, from the configs alone (a trace or points file is read). Without a policy, the scenario's
    own control interval and a 60-s signal window stand in for the policy's."""
    h = scenario.duration_s
    scrape_s = scenario.telemetry.scrape_interval_s
    policy_tick = policy.sync_period_s if policy is not None else None
    tick_s = policy_tick or scenario.control.interval_s
    tick_key = (
        "control.interval_s" if policy is None or policy_tick is None else f"policy {policy.name}'s tick"
    )
    load = estimate_load(
        scenario.workload,
        seed=scenario.seed if seed is None else seed,
        duration_s=h,
        window_s=scrape_s,
        service_s=_service_s(scenario),
        source=source,
        base_dir=base_dir,
    )
    c, s, m = scenario.control, scenario.serving, scenario.model
    queue = (
        s.queue_capacity if s.container_concurrency == 0 else min(s.queue_capacity, s.container_concurrency)
    )
    ring = 1 << max(queue - 1, 0).bit_length()  # the data plane rounds a queue up to a power of two
    slot_bytes = ring * _SLOT_BYTES_PER_REQUEST + _SLOT_BYTES
    if m.llm is not None:  # the token-level engine: a row per request a pod holds, and the running list
        ring = m.llm.max_num_seqs + s.queue_capacity
        slot_bytes = ring * _LLM_BYTES_PER_REQUEST + m.llm.max_num_seqs * 24 + _SLOT_BYTES
    slots_key, slots_value = (
        ("serving.queue_capacity", s.queue_capacity)
        if ring / 1024 > c.max_pods / 256
        else ("control.max_pods", c.max_pods)
    )
    windows = [sig.window_s for sig in policy.signals] if policy is not None else []
    samples = math.ceil((max([*windows, tick_s, 60.0]) + scenario.telemetry.metrics_delay_s) / scrape_s) + 3
    high = policy.replica_bounds[1] if policy is not None else None
    pods = c.max_pods if high is None else min(high, c.max_pods)
    sources = 1 if scenario.telemetry.metrics_delay_s == 0 else 2
    ticks = h / tick_s
    parts = [
        MemoryPart(load.key, load.value, load.arrival_bytes, load.arrivals),
        MemoryPart(
            slots_key,
            slots_value,
            c.max_pods * slot_bytes,
            f"{c.max_pods:,} pod slots (control.max_pods) with a {ring:,}-request queue each",
        ),
        MemoryPart(
            "serving.router_queue_capacity",
            s.router_queue_capacity,
            s.router_queue_capacity * _ROUTER_BYTES_PER_REQUEST,
            "the router queue",
        ),
        MemoryPart(
            "model.max_batch_size", m.max_batch_size, 16 * (m.max_batch_size + 1), "the batch latency table"
        ),
        MemoryPart("workload.users", load.users, load.users * _USER_BYTES, f"{load.users:,} users"),
        MemoryPart(
            "telemetry.scrape_interval_s",
            scrape_s,
            sources * samples * (K.HIST_BUCKETS * 8 + pods * _SAMPLE_BYTES_PER_POD),
            f"{samples:,} scraped samples kept for the signal windows",
        ),
        MemoryPart(tick_key, tick_s, ticks * _TIMELINE_ROW_BYTES, f"{ticks:,.0f} timeline rows"),
    ]
    if record:
        parts.append(MemoryPart(load.key, load.value, load.requests * _RECORD_BYTES, "per-request records"))
    return RunEstimate(load, h / scrape_s, ticks, tick_key, tick_s, tuple(parts))


def check_run(
    scenario: Scenario,
    policy: Policy[Any] | None = None,
    *,
    seed: int | None = None,
    base_dir: Path | None = None,
    source: str = "scenario",
    record: bool = False,
) -> RunEstimate:
    """Refuse, before anything is generated, a run of ``policy`` on ``scenario`` that would exceed
    the pod limit (a policy whose maximum is above ``control.max_pods``) or what one run may ask of
    the machine (:data:`MAX_REQUESTS`, :data:`MAX_USERS`, :data:`MAX_STEPS`,
    :data:`MAX_MEMORY_BYTES`): a ConfigError naming the key, with the estimate and the limit.
    Otherwise the estimate."""
    if policy is not None:
        high = policy.replica_bounds[1]
        if high is not None and high > scenario.control.max_pods:
            raise ConfigError(
                source,
                "control.max_pods",
                scenario.control.max_pods,
                f"policy {policy.name} may ask for up to {high:,} replicas, more pods than the simulator "
                f"holds at once; raise control.max_pods to at least {high:,}, or lower the policy's "
                f"maximum to {scenario.control.max_pods:,} or less",
            )
    est = estimate_run(scenario, policy, seed=seed, base_dir=base_dir, source=source, record=record)
    load, h = est.load, scenario.duration_s
    if load.users > MAX_USERS:
        raise ConfigError(
            source,
            "workload.users",
            load.users,
            f"up to {load.users:,} closed-loop users at once; a run may have at most {MAX_USERS:,}",
        )
    if not load.requests <= MAX_REQUESTS:
        raise ConfigError(
            source,
            load.key,
            load.value,
            f"about {load.requests:,.0f} requests expected ({load.how}); a run may simulate at most "
            f"{MAX_REQUESTS:,} (about 4-6 minutes): a lighter load or a shorter duration_s",
        )
    if est.steps > MAX_STEPS:
        scrape_s = scenario.telemetry.scrape_interval_s
        parts = [
            (
                "telemetry.scrape_interval_s",
                scrape_s,
                est.scrapes,
                f"{est.scrapes:,.0f} scrapes every {scrape_s:g} s",
            ),
            (est.tick_key, est.tick_s, est.ticks, f"{est.ticks:,.0f} control ticks every {est.tick_s:g} s"),
            (
                "workload.users",
                load.users,
                load.user_changes,
                f"{load.user_changes:,.0f} changes of the user count",
            ),
        ]
        key, value, _, _ = max(parts, key=lambda part: part[2])
        how = ", ".join(text for _, _, n, text in parts if n >= 1)
        raise ConfigError(
            source,
            key,
            value,
            f"about {est.steps:,.0f} control-plane steps over duration_s = {h:,.0f} s ({how}); a run may "
            f"take at most {MAX_STEPS:,} (about 3-10 minutes): a longer interval or a shorter duration_s",
        )
    if est.memory_bytes > MAX_MEMORY_BYTES:
        part = max(est.memory, key=lambda p: p.bytes)
        raise ConfigError(
            source,
            part.key,
            part.value,
            f"the run would need about {est.memory_bytes / 2**30:,.1f} GiB of memory, "
            f"{part.bytes / 2**30:,.1f} GiB of it for {part.what}; a run may use at most "
            f"{MAX_MEMORY_BYTES / 2**30:g} GiB",
        )
    return est


def check_capacity_profile(scenario: Scenario, policy: Policy[Any], source: str) -> None:
    """Refuse a planner whose capacity table was measured for another service than the scenario's: it
    would size the fleet with another model's numbers."""
    from gpuscale.policies.base import Delegating
    from gpuscale.policies.planner import PlannerPolicy

    inner: Any = policy
    while isinstance(inner, Delegating):
        inner = inner.inner
    if not isinstance(inner, PlannerPolicy):
        return
    measured = inner.config.capacity.profile
    if measured != scenario.model.name:
        raise ConfigError(
            source,
            "model.profile",
            scenario.model.name,
            f"policy {policy.name}'s capacity table was measured for profile {measured!r}; measure this "
            f"scenario's service with `gpuscale capacity` and use that table (allowed: profile {measured!r})",
        )


def check_llm_signals(scenario: Scenario, policy: Policy[Any], source: str) -> None:
    """Refuse a policy that reads what only an LLM pod exports (KV-cache usage, TTFT, ...) on a
    scenario whose model is served at request level: it would never see data."""
    if scenario.model.llm is not None:
        return
    llm = sorted({s.metric.value for s in policy.signals if s.metric in LLM_METRICS})
    if llm:
        raise ConfigError(
            source,
            "model.llm",
            MISSING,
            f"policy {policy.name} reads {', '.join(llm)}, which only an LLM pod served token by token "
            f"exports; model profile {scenario.model.name} has no llm: block. Allowed: an LLM profile "
            "(gpuscale profiles list), or a policy on the request-level metrics",
        )


class Simulation:
    """One run of a policy on a scenario, steppable one control tick at a time.

    The run owns the simulated world -- workload, data plane, cluster, scale target, node layer,
    metrics sources -- and drives the policy through the two ports only: at each control tick the
    target reports its :class:`~gpuscale.policies.ports.ReplicaCounts`, the source turns them into a
    snapshot, the policy decides, the target applies the whole decision. The policy runs inside the
    scenario's ``safety:`` tail when it has one, as ``gpuscale run`` would.

    ``step_to_next_tick()`` advances through the instants before the next control tick and takes
    it; ``run()`` steps to the end; ``result()`` is the run's, once it is done (the summary's means
    and totals are over the scenario's whole duration).
    """

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy[Any],
        *,
        seed: int | None = None,
        base_dir: Path | None = None,
        source: str = "scenario",
        record: bool = False,
        timeline: bool = True,
        summary: bool = True,
        pod_samples: bool = True,
        checked: bool = False,
    ) -> None:
        """Set the world up at ``t = 0``; ``seed`` defaults to the scenario's, the rest is
        :func:`simulate`'s. A caller that steps the run for its own purposes (the RL environment)
        can leave out what only reports need; the run itself stays the same:
        ``timeline=False`` skips the per-tick rows (the result's timeline is then empty),
        ``summary=False`` also the running totals (there is then no :meth:`result`), and
        ``pod_samples=False`` the per-pod samples in the policy's snapshots (``SignalValue.per_pod``
        empty, the values the same: for a policy that reads none, such as the RL agent).
        ``checked=True`` skips the refusals of :func:`check_run` for a caller that already ran an
        identical simulation (same scenario, policy, seed and ``record``) past them: the RL
        environment, which starts a run per episode from a few scenarios and seeds."""
        if timeline and not summary:
            raise ValueError("a timeline needs the running totals: timeline=False with summary=False")
        self.scenario = scenario
        self.seed = seed = scenario.seed if seed is None else seed
        if schedules_of(policy) and scenario.start is None:
            raise ConfigError(
                source,
                "start",
                MISSING,
                f"required: policy {policy.name}'s safety block has schedule windows, which read the "
                "calendar from the scenario's start; allowed: an ISO-8601 date-time with an offset, "
                "e.g. 2026-03-02T00:00:00+01:00",
            )
        epoch = scenario_epoch_s(scenario)
        self.policy = policy = with_safety(anchored(policy, epoch), scenario.safety, epoch)
        check_windows(policy, scenario.telemetry.scrape_interval_s, f"policy {policy.name}")
        if not checked:
            check_run(scenario, policy, seed=seed, base_dir=base_dir, source=source, record=record)
        check_llm_signals(scenario, policy, source)
        check_capacity_profile(scenario, policy, source)
        self.duration_s = duration = scenario.duration_s
        self.workload = build_workload(
            scenario.workload, seed=seed, duration_s=duration, source=source, base_dir=base_dir
        )
        closed = self.workload.closed_loop
        self.tick_s = tick_s = policy.sync_period_s or scenario.control.interval_s
        self.scrape_s = scenario.telemetry.scrape_interval_s
        self.record = record
        self.tokens: TokenSource | None = None
        dp: Plane
        if scenario.model.llm is not None:
            # The token-level engine (docs/llm.md): every pod runs vLLM's scheduler, iteration by iteration.
            self.tokens = token_source(scenario.workload, seed=seed, source=source, base_dir=base_dir)
            slo = scenario.slo
            dp = LlmDataPlane(
                llm_params(scenario),
                max_slots=scenario.control.max_pods,
                ttft_slo_s=math.inf if slo.ttft_ms is None else slo.ttft_ms / 1000.0,
                itl_slo_s=math.inf if slo.itl_ms is None else slo.itl_ms / 1000.0,
                e2e_slo_s=slo.latency_ms / 1000.0,
                seed=seed,
                record=record,
                # closed-loop chat users: the plane draws their lengths from the token source itself
                think_s=(closed.think_min_s, closed.think_max_s) if closed is not None else None,
                max_users=closed.schedule.max_users if closed is not None else 0,
                # closed-loop lengths, and the shared-prefix groups of every request (a prefix: block)
                tokens=self.tokens,
            )
        else:
            dp = DataPlane(
                serving_params(scenario),
                max_slots=scenario.control.max_pods,
                slo_s=scenario.slo.latency_ms / 1000.0,
                seed=seed,
                think_s=(closed.think_min_s, closed.think_max_s) if closed is not None else None,
                max_users=closed.schedule.max_users if closed is not None else 0,
                record=record,
            )
        self.dp = dp
        self.cluster = cluster = Cluster(
            scenario.cluster.pools,
            scenario.startup,
            scenario.model.gpus_per_pod,
            generator(seed, "cluster"),
            scenario.cluster.mig_profile,
        )
        self.target = target = SimScaleTarget(
            cluster,
            dp,
            grace_s=scenario.serving.termination_grace_s,
            max_pods=scenario.control.max_pods,
            source=source,
        )
        self.nodes = (
            NodeLayer(scenario.cluster, cluster, target, seed) if scenario.cluster.node_layer else None
        )
        target.node_layer = self.nodes
        self._pod_samples = pod_samples
        self.source = self._metrics_source(scenario.telemetry.metrics_delay_s)
        # The timeline reports ground truth (no pipeline delay); with no delay that is the policy's
        # source, and with no timeline nothing reads it.
        delayed = scenario.telemetry.metrics_delay_s != 0 and timeline
        self.truth = self._metrics_source(0.0) if delayed else self.source
        self.timeline = Timeline()
        self._keep_timeline = timeline
        self._recorder = TimelineRecorder(dp, target, cluster, self.truth, tick_s) if timeline else None

        # A fixed-size deployment is already at its size when the run starts (a static policy is the
        # "always provisioned" baseline, not a scale-up from the scenario's initial replicas).
        initial = policy.initial_replicas
        target.start_warm(scenario.control.initial_replicas if initial is None else initial, 0.0)
        self.state = policy.initial_state()
        self._totals = SummaryBuilder(target.count(Phase.READY), len(cluster.nodes))
        self._keep_totals = summary
        self.now = 0.0
        self.done = False
        self._users = closed.schedule.users_at(0.0) if closed is not None else -1
        self._next_user_change = _next_change(closed, 0.0, duration)
        self._n_scrape = 0
        self._n_tick = 1
        self._no_arrivals = readonly(np.zeros(0, dtype=np.float64))
        self._pause = False
        self._observed: MetricsSnapshot | None = None

    def _metrics_source(self, delay_s: float) -> SimMetricsSource:
        scenario, target = self.scenario, self.target
        windows = [s.window_s for s in self.policy.signals] + [self.tick_s, 60.0]

        def held_gb(pod: Pod, t: float) -> float:
            return target.memory_need_gb(pod, scenario.model, t)

        return SimMetricsSource(
            self.dp,
            scenario.model,
            lambda: target.pods.values(),
            scrape_interval_s=self.scrape_s,
            metrics_delay_s=delay_s,
            max_window_s=max(windows),
            held_gb=held_gb,
            pod_samples=self._pod_samples,
        )

    def fork(self, memo: dict[int, Any] | None = None) -> Simulation:
        """An independent copy of the run at its present instant, that keeps no timeline rows.

        A deep copy: the data plane's arrays, the pods, the nodes, the scraped samples and every random
        stream (numpy generators and the kernel's state) are copied, so the copy continues exactly as
        this run would under the same decisions, and stepping it never changes this one. The scenario
        (a frozen config) is shared; the timeline rows are not copied. The metrics sources hold two
        closures over the target (its pods, the memory a pod holds), which a deep copy would leave
        pointing at this run's target: they are bound to the copy's. ``memo`` (a deepcopy memo) lets
        the caller find the copies of objects it holds (``memo[id(obj)]``). The receding-horizon
        reference rolls candidate plans forward in such copies."""
        memo = {} if memo is None else memo
        memo[id(self.scenario)] = self.scenario
        memo[id(self.timeline)] = Timeline()
        twin = copy.deepcopy(self, memo)
        twin._keep_timeline = False
        target, model = twin.target, twin.scenario.model

        def pods() -> Any:
            return target.pods.values()

        def held_gb(pod: Pod, t: float) -> float:
            return target.memory_need_gb(pod, model, t)

        for source in (twin.source, twin.truth):
            source.pods = pods
            if source.held_gb is not None:
                source.held_gb = held_gb
        return twin

    # -- stepping ----------------------------------------------------------------------------------
    def step_to_next_tick(self) -> Decision | None:
        """Advance through the instants up to the next control tick and take it: its decision, or
        None when the run reached its end first."""
        if self._observed is not None:
            return self.decide_observed()
        while not self.done:
            decision = self._step()
            if decision is not None:
                return decision
        return None

    def observe_next_tick(self) -> MetricsSnapshot | None:
        """Advance to the next control tick and take its snapshot, without deciding (None when the
        run reached its end first); :meth:`decide_observed` finishes the tick. The two halves of
        :meth:`step_to_next_tick`, for a caller that must see the snapshot before the policy decides
        on it (the RL environment: its agent acts between them)."""
        if self._observed is not None:
            return self._observed
        self._pause = True
        try:
            while not self.done:
                self._step()
                if self._observed is not None:
                    return self._observed
        finally:
            self._pause = False
        return None

    def decide_observed(self) -> Decision:
        """The policy decides on the snapshot :meth:`observe_next_tick` took; the rest of the instant
        runs as :meth:`step_to_next_tick` would have run it."""
        snapshot = self._observed
        if snapshot is None:
            raise RuntimeError("no control tick is waiting: call observe_next_tick() first")
        self._observed = None
        decision = self._decide(self.now, snapshot)
        if self.nodes is not None:
            self.nodes.settle(self.now)
        return decision

    def run(self, progress: Progress | None = None) -> SimResult:
        """Step to the end; the result."""
        report_every = max(self.duration_s / 200.0, self.tick_s)
        next_report = report_every
        while self.step_to_next_tick() is not None:
            if progress is not None and self.now >= next_report:
                progress(self.now / self.duration_s)
                next_report += report_every
        if progress is not None:
            progress(1.0)
        return self.result()

    def _step(self) -> Decision | None:
        """The next control-plane instant: the data plane up to it, then, in order, lifecycle events,
        a change in the closed-loop population, the scrape, the control tick and the node layer's
        end of instant. The tick's decision, if the instant had one."""
        next_scrape = self._n_scrape * self.scrape_s
        next_tick = self._n_tick * self.tick_s
        t_next = min(
            self.target.next_event_t(), next_scrape, next_tick, self._next_user_change, self.duration_s
        )
        if self.nodes is not None:
            t_next = min(t_next, self.nodes.next_event_t())
        if t_next > self.now:
            self._advance(t_next)
        t = self.now
        if t >= self.duration_s:
            self.done = True
            return None
        self._lifecycle(t)
        closed = self.workload.closed_loop
        if t >= self._next_user_change and closed is not None:
            self._users = closed.schedule.users_at(t)
            self._next_user_change = _next_change(closed, t, self.duration_s)
        if t >= next_scrape:
            self._scrape(t)
        if t >= next_tick and self._pause:
            self._n_tick += 1
            self._observed = self._snapshot(t)
            return None
        decision = self._control_tick(t) if t >= next_tick else None
        if self.nodes is not None:
            self.nodes.settle(t)
        return decision

    def _advance(self, t_next: float) -> None:
        """The data plane from now to ``t_next``, and what held over the interval."""
        t, target, open_loop = self.now, self.target, self.workload.open_loop
        arrivals = open_loop.arrivals(t, t_next) if open_loop is not None else self._no_arrivals
        if self.tokens is not None and open_loop is not None:
            assert isinstance(self.dp, LlmDataPlane)
            prompt, output = self.tokens.take(len(arrivals))
            self.dp.advance(t, t_next, arrivals, self._users, prompt, output)
        else:
            self.dp.advance(t, t_next, arrivals, self._users)
        if self._keep_totals:
            self._totals.elapse(t_next - t, *target.occupancy())
        self.now = t_next

    def _lifecycle(self, t: float) -> None:
        """Pods and nodes at ``t``: drained pods go, the node layer acts, pods become Ready or reach
        their drain deadline, over-packed shared GPUs OOM-kill."""
        target = self.target
        target.reap_drained(t)
        if self.nodes is not None:
            self.nodes.step(t)
        while target.events and target.events[0][0] <= t:
            _, _, kind, pod_id = heapq.heappop(target.events)
            target.handle_event(kind, pod_id, t)
        if self.cluster.shared:
            target.check_memory(t, self.scenario.model)
        if self._keep_totals:
            self._totals.observe(target.count(Phase.READY), len(self.cluster.nodes))

    def _scrape(self, t: float) -> None:
        self._n_scrape += 1
        self.source.scrape(t)
        if self.truth is not self.source:
            self.truth.scrape(t)
        if not self._keep_totals:
            return
        # The Ready pods' readings as the exporter reported them: against the device each pod sees
        # (its MIG slice).
        ready = self.source.newest_ready()
        if ready is not None:
            self._totals.scraped(*ready)

    def _control_tick(self, t: float) -> Decision:
        """One decision through the ports, as ``gpuscale run`` takes it; then the timeline's row."""
        self._n_tick += 1
        return self._decide(t, self._snapshot(t))

    def _snapshot(self, t: float) -> MetricsSnapshot:
        target: ScaleTarget = self.target
        source: MetricsSource = self.source
        return source.snapshot(t, self.policy.signals, target.counts(t))

    def _decide(self, t: float, snapshot: MetricsSnapshot) -> Decision:
        decision, self.state = self.policy.decide(snapshot, self.state)
        target: ScaleTarget = self.target
        target.apply(decision, t)
        reason = decision.reason.value
        if self._keep_totals:
            self._totals.decided(reason)
        if self._recorder is not None and self._keep_timeline:
            self.timeline.rows.append(self._recorder.row(t, reason, self._totals.pending_s))
        return decision

    # -- the result --------------------------------------------------------------------------------
    def result(self) -> SimResult:
        """The summary over the scenario's duration, the timeline, and what was recorded."""
        if not self.done:
            raise RuntimeError(
                f"the run is at t = {self.now:g} s of {self.duration_s:g} s; step it to the end first"
            )
        if not self._keep_totals:
            raise RuntimeError("the run keeps no running totals (summary=False): it has no result")
        target = self.target
        summary = self._totals.build(
            self.scenario, self.policy.name, self.seed, self.dp, target, self.cluster, self.nodes
        )
        phases = (
            {k: v / target.cold_starts for k, v in target.phase_totals.items()} if target.cold_starts else {}
        )
        records = self.dp.records() if self.record else None
        return SimResult(summary, self.timeline, records, phases, self.dp.hist.copy())


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
    """Run ``policy`` on ``scenario`` (within its ``safety:`` block, if any) to the end; deterministic
    for a given seed (default: the scenario's). ``record`` keeps every request's record;
    ``progress`` is called with the fraction of simulated time done."""
    return Simulation(scenario, policy, seed=seed, base_dir=base_dir, source=source, record=record).run(
        progress
    )


def _next_change(closed: Any, t: float, duration: float) -> float:
    if closed is None:
        return math.inf
    changes = [c for c in closed.schedule.change_times(t, duration) if c > t]
    return changes[0] if changes else math.inf
