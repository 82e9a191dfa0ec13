"""References beside the oracle's lower bound: what knowing the future can reach, and the ceiling of planning.

The oracle (:mod:`gpuscale.experiments.oracle`) is a *lower bound*: it holds each pod exactly when it
is needed, charged the fastest cold start, with every node of the cluster already up. Where the
cluster cannot hold the load, or nodes must be provisioned before pods can start, no policy can
reach it, and a ratio to it says little. Two simulator-only references, played through the real
simulator with the scenario and seed the policies get, say what can be reached:

* **feasible** (:func:`run_feasible`, label ``clairvoyant-feasible``): the oracle's per-window pod
  schedule (the fewest pods that carry each window's load, before the bound spends its miss budget)
  asked for one real lead time ahead (:class:`~gpuscale.policies.clairvoyant.ClairvoyantPolicy`):
  the slowest start of every phase (:func:`leads`), and where a node autoscaler must add nodes, the
  slowest node provisioning on top, bridged by placeholder pods. Capped at what the cluster holds
  (the oracle's schedule already is). Its measured attainment and GPU-hours are the *feasible
  reference*; :func:`feasibility` says, from the schedule and the cluster alone, where and why the
  bound cannot be reached at all.
* **receding-horizon** (:func:`run_receding_horizon`, label ``receding-horizon``): the ceiling of
  planning with a perfect model. At every planning tick it copies the simulation
  (:meth:`~gpuscale.sim.engine.Simulation.fork`), rolls each candidate fleet size forward, held
  over one lead time plus a margin, and keeps the
  smallest fleet whose requests in that horizon meet the SLO target; it applies that size for the
  tick and plans again at the next. The copy sees the very arrivals the run will get, so this is
  what a planner with an exact model of the service, the cluster and the load would do.

Neither is a policy kind: both need what no live cluster has (the future load; the simulator), so
``gpuscale run``, ``manifests`` and the KEDA scaler cannot be given one
(:data:`~gpuscale.policies.clairvoyant.SIMULATOR_ONLY` names them in the refusal). Their rows in the
compare report are references, apart from the ranked policies: they take no rank, no Pareto flag and
no part in the verdict, and their GPU-hours × oracle is relative to the lower bound like every row's.

Both are deterministic for a scenario and seed: the clairvoyant is a pure policy, and the receding
horizon's copies continue the run's own random streams (a copy never draws from the original's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuscale.config.scenario import (
    ClusterAutoscalerConfig,
    Duration,
    KarpenterConfig,
    LogNormal,
    Scenario,
    Uniform,
)
from gpuscale.experiments.oracle import WINDOW_S, OracleResult, min_cold_start_s
from gpuscale.experiments.runner import RunKey, RunOutcome, outcome_of
from gpuscale.policies.base import Decision, MetricsSnapshot, ReadsNoSignals, Reason
from gpuscale.policies.clairvoyant import ClairvoyantPolicy
from gpuscale.sim import kernel as K
from gpuscale.sim.engine import Simulation
from gpuscale.sim.results import SimResult

if TYPE_CHECKING:  # compare aggregates the references' runs, so it imports this module
    from gpuscale.experiments.compare import PolicyRow

FEASIBLE = "feasible"
RECEDING_HORIZON = "receding-horizon"
AUTO = "auto"
"""The feasible reference only where the oracle's bound cannot be reached (:func:`feasibility`)."""
REFERENCES: tuple[str, ...] = (AUTO, FEASIBLE, RECEDING_HORIZON)
"""The references a compare can run (suite key ``references``, ``--references``)."""

LABELS = {FEASIBLE: "clairvoyant-feasible", RECEDING_HORIZON: "receding-horizon"}
"""Row labels of the references in a compare's results."""
TITLES = {
    FEASIBLE: "feasible clairvoyant",
    RECEDING_HORIZON: "receding horizon (perfect model)",
}


# -- lead times -----------------------------------------------------------------------------------------
_LOGNORMAL_Z = 2.326
"""A lognormal phase's "slowest" is its 99th percentile (z = 2.326): it has no upper end."""


def upper_s(d: Duration) -> float:
    """The slowest a phase takes: a fixed value, a uniform range's high end, a lognormal's p99."""
    if isinstance(d, Uniform):
        return float(d.uniform[1])
    if isinstance(d, LogNormal):
        return d.lognormal.median_s * math.exp(_LOGNORMAL_Z * d.lognormal.sigma)
    return float(d)


def _lower_s(d: Duration) -> float:
    if isinstance(d, Uniform):
        return float(d.uniform[0])
    if isinstance(d, LogNormal):
        return 0.0
    return float(d)


@dataclass(frozen=True)
class Leads:
    """How long a pod and a node take, slowest and fastest, on the scenario's cluster."""

    pod_s: float
    """Slowest start of a pod on a node that is up: every phase at its slowest, the image pull and
    the weights download unless every pool's nodes start with them."""
    node_s: float
    """Slowest time from a Pending pod to a new node's allocatable GPUs (0 without a node autoscaler):
    provisioning and the device plugin at their slowest, plus one scan of the node autoscaler."""
    pod_fastest_s: float
    """The oracle's cold start: every phase at its fastest, node caches warm."""
    fresh_pod_fastest_s: float
    """The fastest start of a pod on a node that has never run it (pull and download unless the pool's
    nodes start with them)."""
    node_fastest_s: float
    """The fastest a new node's GPUs become allocatable (0 without a node autoscaler)."""

    @property
    def node_layer(self) -> bool:
        return self.node_s > 0


def leads(scenario: Scenario) -> Leads:
    """The scenario's :class:`Leads`, from its startup and node-startup configs."""
    s = scenario.startup
    pools = scenario.cluster.pools
    pod = upper_s(s.scheduling_s) + upper_s(s.model_load_s) + upper_s(s.warmup_s)
    fresh = _lower_s(s.scheduling_s) + _lower_s(s.model_load_s) + _lower_s(s.warmup_s)
    if not all(p.image_cached for p in pools):
        pod += upper_s(s.image_pull_s)
        fresh += _lower_s(s.image_pull_s)
    if not all(p.model_cached for p in pools):
        pod += upper_s(s.model_download_s)
        fresh += _lower_s(s.model_download_s)
    c = scenario.cluster
    node = node_fast = 0.0
    if c.node_autoscaler.kind != "none":
        ns = c.node_startup
        node_fast = _lower_s(ns.provision_s) + _lower_s(ns.gpu_allocatable_s)
        auto = c.node_autoscaler
        # the autoscaler's own reaction: a cluster-autoscaler scans every scan_interval_s, Karpenter
        # batches pending pods for at least batch_idle_s
        scan = (
            auto.scan_interval_s
            if isinstance(auto, ClusterAutoscalerConfig)
            else auto.batch_idle_s
            if isinstance(auto, KarpenterConfig)
            else 0.0
        )
        node = upper_s(ns.provision_s) + upper_s(ns.gpu_allocatable_s) + scan
    return Leads(pod, node, min_cold_start_s(s), fresh, node_fast)


def _initial_room(scenario: Scenario) -> tuple[int, int]:
    """Pods Ready at t = 0 and pods the nodes up at t = 0 hold (both within ``control.max_pods``)."""
    c = scenario.cluster
    room = sum(c.pods_per_node(p, scenario.model.gpus_per_pod) * p.nodes for p in c.pools)
    room = min(room, scenario.control.max_pods)
    return min(scenario.control.initial_replicas, room), room


# -- where the bound cannot be reached ---------------------------------------------------------------
@dataclass(frozen=True)
class Feasibility:
    """Whether the oracle's schedule can be reached at all on the scenario's cluster, and why not.

    Counted from the schedule and the cluster alone (no run): pods Ready at t = 0 serve at once;
    more pods on the nodes that are up are Ready one fastest cold start after t = 0 at the earliest;
    pods beyond those wait for a new node (its fastest provisioning) and then start on a node that
    has never run them."""

    scenario: str
    seed: int
    reachable: bool
    short_at_s: float | None
    """Start of the first window whose pods cannot all be Ready in time (None: every window's can)."""
    need: int
    """Pods the bound holds in that window."""
    possible: int
    """Pods that can be Ready by then."""
    short_windows: int
    """Windows whose pods cannot all be Ready in time."""
    over_windows: int
    """Windows whose load exceeds what the cluster's largest fleet carries within the SLO."""
    max_replicas: int
    leads: Leads
    initial_ready: int
    initial_room: int
    reason: str
    """Why the bound cannot be reached, in a sentence fragment (empty where it can)."""


def feasibility(scenario: Scenario, oracle: OracleResult) -> Feasibility:
    """Where the oracle's per-window schedule asks for pods no policy can have Ready in time, and
    where the load is more than the whole cluster carries (the class docstring)."""
    lead = leads(scenario)
    ready0, room0 = _initial_room(scenario)
    cap = oracle.max_replicas if oracle.max_replicas is not None else scenario.control.max_pods
    times = np.asarray(oracle.times_s, dtype=np.float64)
    need = np.asarray(oracle.replicas, dtype=np.int64)
    possible = np.full(len(times), ready0, dtype=np.int64)
    possible[times >= lead.pod_fastest_s] = room0
    if lead.node_layer:  # without a node autoscaler the nodes up at the start are all there are
        possible[times >= lead.node_fastest_s + lead.fresh_pod_fastest_s] = cap
    short = need > possible
    first = int(np.argmax(short)) if short.any() else None
    over = oracle.over_windows
    parts: list[str] = []
    if first is not None:
        at, k, p = float(times[first]), int(need[first]), int(possible[first])
        text = f"the bound holds {k} pod{'s' if k != 1 else ''} at {_clock(at)}, but "
        if p < room0 or not lead.node_layer:
            text += (
                f"the run starts with {ready0} Ready and no pod starts faster than {_dur(lead.pod_fastest_s)}"
            )
        else:
            text += (
                f"the cluster's nodes at the start hold {room0} pod{'s' if room0 != 1 else ''} and a new "
                f"node's GPUs take at least {_dur(lead.node_fastest_s)} to arrive, plus a "
                f"{_dur(lead.fresh_pod_fastest_s)} first start on it"
            )
        text += f", so only {p} can be Ready then"
        out_of_reach = float(short.sum()) * WINDOW_S
        if out_of_reach > WINDOW_S:
            text += f" (out of reach for {_dur(out_of_reach)} of the run in all)"
        parts.append(text)
    if over:
        parts.append(
            f"in {over} window{'s' if over != 1 else ''} the load is more than the cluster's largest fleet "
            f"({cap} pod{'s' if cap != 1 else ''}) carries within the SLO"
        )
    return Feasibility(
        scenario=scenario.name,
        seed=oracle.seed,
        reachable=first is None and over == 0,
        short_at_s=float(times[first]) if first is not None else None,
        need=int(need[first]) if first is not None else 0,
        possible=int(possible[first]) if first is not None else 0,
        short_windows=int(short.sum()),
        over_windows=over,
        max_replicas=cap,
        leads=lead,
        initial_ready=ready0,
        initial_room=room0,
        reason="; ".join(parts),
    )


def _clock(t_s: float) -> str:
    return f"t = {t_s:g} s" if t_s < 120 else f"t = {t_s / 60:.1f} min"


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# -- the feasible reference ---------------------------------------------------------------------------
def clairvoyant_policy(scenario: Scenario, oracle: OracleResult) -> ClairvoyantPolicy:
    """The oracle's covering schedule (every window carried, no miss budget spent) as a
    :class:`ClairvoyantPolicy` with the scenario's slowest leads.

    Not the bound's own schedule: the bound spends the run's miss budget on running pods hot at
    optimistic, steady-state prices, and a real fleet run hot right after a quiet spell misses far
    more (flash-crowd, seed 1: two pods for 2,400 requests/s where they carry 2,330 leave a queue
    that grows for 2.5 minutes; played through the simulator, that schedule answers 89 % in time)."""
    lead = leads(scenario)
    schedule = oracle.covering if oracle.covering is not None else oracle.replicas
    return ClairvoyantPolicy.of(
        oracle.times_s,
        schedule,
        window_s=WINDOW_S,
        lead_s=lead.pod_s,
        tick_s=scenario.control.interval_s,
        node_lead_s=lead.node_s,
        name=LABELS[FEASIBLE],
    )


def run_feasible(
    scenario: Scenario,
    seed: int,
    oracle: OracleResult,
    *,
    base_dir: Path | None = None,
    source: str = "scenario",
) -> SimResult:
    """The feasible reference: :func:`clairvoyant_policy` played through the simulator."""
    policy = clairvoyant_policy(scenario, oracle)
    return Simulation(scenario, policy, seed=seed, base_dir=base_dir, source=source).run()


# -- the receding horizon -----------------------------------------------------------------------------
class _Command:
    """The fleet size the planner chose for the tick being decided (None: hold)."""

    def __init__(self) -> None:
        self.replicas: int | None = None
        self.message = ""


@dataclass(frozen=True)
class _CommandedState:
    pass


@dataclass(frozen=True, eq=False)
class _CommandedPolicy(ReadsNoSignals):
    """The planner's choice as a policy: what :func:`run_receding_horizon` decided for this tick."""

    command: _Command
    high: int
    name: str = LABELS[RECEDING_HORIZON]

    @property
    def sync_period_s(self) -> float | None:
        return None

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (0, self.high)

    @property
    def initial_replicas(self) -> int | None:
        return None

    def initial_state(self) -> _CommandedState:
        return _CommandedState()

    def decide(self, snapshot: MetricsSnapshot, state: _CommandedState) -> tuple[Decision, _CommandedState]:
        wanted = self.command.replicas
        if wanted is None:
            return Decision.hold(Reason.DESIRED_WITHIN_RANGE, "no plan yet"), state
        current = snapshot.current_replicas
        reason = (
            Reason.PREDICTED if wanted > current else Reason.SCALE_DOWN if wanted < current else Reason.STATIC
        )
        return Decision(wanted, reason, self.command.message), state


@dataclass(frozen=True)
class HorizonSettings:
    """How the receding horizon plans."""

    plan_every_ticks: int = 1
    """Plan at every n-th control tick; hold the last plan in between."""
    margin_ticks: int = 2
    """Ticks added to the lead time to make the horizon (the next plans must see a pod pay off)."""
    max_rollouts: int = 12
    """Rollouts one plan may take (a cap on the search)."""


@dataclass(frozen=True)
class _Outcome:
    misses: float
    requests: float

    def meets(self, target: float) -> bool:
        return self.misses <= (1.0 - target) * self.requests + 1e-9

    @property
    def attainment(self) -> float:
        return 1.0 - self.misses / self.requests if self.requests > 0 else 1.0


def _rollout(sim: Simulation, command: _Command, replicas: int, until_s: float) -> _Outcome:
    """Hold ``replicas`` from the paused tick of ``sim`` to ``until_s`` on a copy: the requests that
    ended in it, those that missed the SLO, and the growth of the backlog (requests in flight at the
    end beyond those at the start: an overloaded fleet's queue, counted as misses; a steady fleet's
    in-flight count does not grow)."""
    memo: dict[int, Any] = {}
    twin = sim.fork(memo)
    twin_command: _Command = memo[id(command)]
    twin_command.replicas = replicas
    dp = twin.dp
    a0, m0, f0 = dp.counter(K.G_ARRIVED), dp.counter(K.G_SLO_MET), dp.in_flight
    twin.decide_observed()
    while not twin.done and twin.now < until_s:
        twin.step_to_next_tick()
    a1, m1, f1 = dp.counter(K.G_ARRIVED), dp.counter(K.G_SLO_MET), dp.in_flight
    ended = (a1 - f1) - (a0 - f0)
    backlog = max(0, f1 - f0)
    return _Outcome(float(ended - (m1 - m0) + backlog), float(ended + backlog))


def _plan(
    sim: Simulation,
    command: _Command,
    current: int,
    high: int,
    until_s: float,
    slo_target: float,
    max_rollouts: int,
) -> tuple[int, str, int]:
    """The smallest fleet (held to ``until_s``) whose horizon meets ``slo_target``: from the current
    size down one pod at a time while it still meets it, or up (doubling the step, then bisecting)
    until it does. Where no size up to ``high`` meets it, the one with the best attainment (the
    smallest of equals). Returns the size, a message and the rollouts taken."""
    seen: dict[int, _Outcome] = {}

    def outcome(n: int) -> _Outcome:
        if n not in seen:
            seen[n] = _rollout(sim, command, n, until_s)
        return seen[n]

    def smallest(start: int) -> int | None:
        """The smallest size from ``start`` (down while it meets, else up) that meets, or None."""
        if outcome(start).meets(slo_target):
            best = start
            while best > 0 and len(seen) < max_rollouts and outcome(best - 1).meets(slo_target):
                best -= 1
            return best
        fail, step = start, 1
        found: int | None = None
        while len(seen) < max_rollouts:
            n = min(high, start + step)
            if n <= fail:
                break
            if outcome(n).meets(slo_target):
                found = n
                break
            fail, step = n, step * 2
        while found is not None and found - fail > 1 and len(seen) < max_rollouts:
            mid = (fail + found) // 2
            if outcome(mid).meets(slo_target):
                found = mid
            else:
                fail = mid
        return found

    horizon = f"over the next {until_s - sim.now:g} s"
    best = smallest(current)
    if best is None:
        best = max(seen, key=lambda n: (round(seen[n].attainment, 6), -n))
        o = seen[best]
        message = f"no fleet up to {max(seen)} meets the SLO {horizon}; {best} does best ({o.attainment:.2%})"
        return best, message, len(seen)
    o = seen[best]
    return best, f"{best} pods meet the SLO {horizon} ({o.attainment:.2%}; {len(seen)} rollouts)", len(seen)


@dataclass(frozen=True)
class HorizonStats:
    """What the receding horizon's planning cost."""

    plans: int
    rollouts: int
    horizon_s: float


def run_receding_horizon(
    scenario: Scenario,
    seed: int,
    *,
    slo_target: float = 0.99,
    high: int | None = None,
    settings: HorizonSettings | None = None,
    base_dir: Path | None = None,
    source: str = "scenario",
) -> tuple[SimResult, HorizonStats]:
    """The ceiling of planning (module docstring): the run's result and what planning it took.

    ``high`` caps the fleet (default: the pods the cluster holds at its largest, within
    ``control.max_pods``)."""
    from gpuscale.experiments.oracle import _slots  # the cluster's pod places, as the oracle counts them

    settings = settings or HorizonSettings()
    cap = high if high is not None else max(1, len(_slots(scenario)))
    command = _Command()
    policy = _CommandedPolicy(command, cap)
    sim = Simulation(scenario, policy, seed=seed, base_dir=base_dir, source=source)
    lead = leads(scenario)
    tick = sim.tick_s
    horizon = math.ceil((lead.pod_s + lead.node_s) / tick + settings.margin_ticks) * tick
    plans = rollouts = ticks = 0
    while True:
        snapshot = sim.observe_next_tick()
        if snapshot is None:
            break
        if ticks % settings.plan_every_ticks == 0:
            until = min(sim.now + horizon, scenario.duration_s)
            n, message, taken = _plan(
                sim,
                command,
                snapshot.current_replicas,
                cap,
                until,
                slo_target,
                settings.max_rollouts,
            )
            command.replicas, command.message = n, message
            plans += 1
            rollouts += taken
        ticks += 1
        sim.decide_observed()
    return sim.result(), HorizonStats(plans, rollouts, horizon)


# -- running them in a compare ------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceJob:
    """One reference on one scenario and seed (the scenario as the compare names it)."""

    reference: str
    scenario_spec: str
    scenario: str
    seed: int
    slo_target: float
    oracle: OracleResult

    @property
    def key(self) -> RunKey:
        return RunKey(self.scenario, LABELS[self.reference], self.seed)


def run_reference_job(job: ReferenceJob) -> RunOutcome:
    """Run one reference (in a worker process); an error becomes a failed outcome, as in
    :func:`gpuscale.experiments.runner.run_job`."""
    from gpuscale.experiments.catalog import resolve_scenario

    def run() -> SimResult:
        ref = resolve_scenario(job.scenario_spec)
        if job.reference == FEASIBLE:
            return run_feasible(ref.scenario, job.seed, job.oracle, base_dir=ref.base_dir, source=ref.source)
        result, _ = run_receding_horizon(
            ref.scenario,
            job.seed,
            slo_target=job.slo_target,
            high=job.oracle.max_replicas or None,
            base_dir=ref.base_dir,
            source=ref.source,
        )
        return result

    return outcome_of(job.key, run)


def reference_jobs(
    references: Sequence[str],
    specs: Sequence[str],
    names: dict[str, str],
    seeds: Sequence[int],
    slo_target: float,
    oracles: dict[tuple[str, int], OracleResult],
    unreachable: set[tuple[str, int]] | None = None,
) -> list[ReferenceJob]:
    """Every reference on every scenario and seed that has an oracle, in a fixed order; ``auto`` is
    the feasible reference on the (scenario name, seed) pairs in ``unreachable`` only."""
    out = []
    for spec in specs:
        for seed in seeds:
            key = (names[spec], seed)
            if key not in oracles:
                continue
            for reference in references:
                if reference == AUTO:
                    if unreachable is None or key not in unreachable:
                        continue
                    reference = FEASIBLE
                out.append(ReferenceJob(reference, spec, names[spec], seed, slo_target, oracles[key]))
    return out


def run_references(
    jobs: Sequence[ReferenceJob],
    workers: int,
    pool: Any = None,
    on_done: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run the jobs (on ``pool``, a :class:`~gpuscale.experiments.runner.TaskPool`, if given; else in
    ``workers`` processes); outcomes sorted by run key, so the same wherever they ran."""
    outcomes: list[RunOutcome] = []
    if pool is not None:
        for _, outcome in pool.imap_unordered(run_reference_job, list(jobs)):
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    elif workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as executor:
            for outcome in executor.map(run_reference_job, jobs):
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
    else:
        for job in jobs:
            outcome = run_reference_job(job)
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    return sorted(outcomes, key=lambda o: o.key)


def compare_references(
    references: Sequence[str],
    refs: dict[str, Any],
    names: dict[str, str],
    seeds: Sequence[int],
    slo_target: float,
    oracles: dict[tuple[str, int], OracleResult],
    workers: int,
    progress: Callable[[str, int, int], None] | None = None,
    pool: Any = None,
    store: Any = None,
) -> References:
    """A compare's references (``refs``: scenario spec → its resolved
    :class:`~gpuscale.experiments.catalog.ScenarioRef`): every scenario and seed's :class:`Feasibility`
    (no run needed) and the runs of ``references``; finished ones are kept in and read back from
    ``store`` (a :class:`~gpuscale.experiments.checkpoint.RunStore`) like the policies' runs. The rows
    are the compare's to aggregate."""
    from gpuscale.experiments.checkpoint import job_digest

    feasible = {
        (names[spec], seed): feasibility(refs[spec].scenario, oracles[(names[spec], seed)])
        for spec in refs
        for seed in seeds
        if (names[spec], seed) in oracles
    }
    short = {key for key, f in feasible.items() if not f.reachable}
    jobs = reference_jobs(references, list(refs), names, seeds, slo_target, oracles, short)
    files = {
        job.key: job_digest("reference", job.scenario, job.scenario_spec, job.reference, job.seed, slo_target)
        for job in jobs
    }
    kept: list[RunOutcome] = []
    todo: list[ReferenceJob] = []
    for job in jobs:
        found = store.get(files[job.key]) if store is not None else None
        if isinstance(found, RunOutcome) and found.key == job.key:
            kept.append(found)
        else:
            todo.append(job)
    done = len(kept)

    def finished(outcome: RunOutcome) -> None:
        nonlocal done
        done += 1
        if store is not None:
            store.put(files[outcome.key], outcome)
        if progress is not None:
            progress("reference", done, len(jobs))

    runs = sorted([*kept, *run_references(todo, workers, pool, finished)], key=lambda o: o.key)
    return References(tuple(references), runs, [], feasible)


@dataclass(frozen=True)
class References:
    """A compare's references: their runs, rows aggregated over seeds, and the bound's feasibility."""

    names: tuple[str, ...] = ()
    runs: list[RunOutcome] = field(default_factory=list)
    rows: list[PolicyRow] = field(default_factory=list)
    """:class:`~gpuscale.experiments.compare.PolicyRow` per scenario and reference (no rank, no
    Pareto flag: references are not ranked with the policies)."""
    feasibility: dict[tuple[str, int], Feasibility] = field(default_factory=dict)


__all__ = [
    "AUTO",
    "FEASIBLE",
    "LABELS",
    "RECEDING_HORIZON",
    "REFERENCES",
    "Feasibility",
    "HorizonSettings",
    "Leads",
    "References",
    "clairvoyant_policy",
    "compare_references",
    "feasibility",
    "leads",
    "run_feasible",
    "run_receding_horizon",
]
