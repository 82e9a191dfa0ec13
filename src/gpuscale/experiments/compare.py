"""``gpuscale compare``: every policy on every scenario over several seeds, next to an oracle.

Oracles come first (one per scenario and seed), then the policy grid as simulation jobs
(:mod:`gpuscale.experiments.runner`); runs are aggregated over seeds per (scenario, policy), with a
95 % confidence interval, Pareto flags over GPU-hours and SLO attainment, and a ranking. Last, the
simulator-only references beside the oracle (:mod:`gpuscale.experiments.references`), aggregated the
same way into rows of their own that take no part in the ranking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from gpuscale._core.errors import GpuscaleError
from gpuscale.experiments.catalog import ScenarioRef, resolve_scenario
from gpuscale.experiments.checkpoint import RunStore, job_digest
from gpuscale.experiments.oracle import OracleResult, compute_oracle
from gpuscale.experiments.references import References, compare_references
from gpuscale.experiments.runner import Job, ProcessPool, RunKey, RunOutcome, TaskPool, run_grid
from gpuscale.experiments.suite import SuiteConfig, policy_spec
from gpuscale.sim.engine import estimate_run
from gpuscale.sim.results import Summary

METRICS: tuple[str, ...] = (
    "slo_attainment",
    "latency_p95_ms",
    "latency_p99_ms",
    "rejected",
    "timed_out",
    "gpu_hours",
    "cost_usd",
    "cold_starts",
    "scale_events",
    "mean_gpu_memory_util_pct",
    "mean_sm_util_pct",
    "mean_replicas",
    "node_hours",
    "node_cost_usd",
    "pending_pod_s",
    "spot_savings_usd",
    "ttft_p95_ms",
    "itl_p95_ms",
    "generated_tokens_per_s",
)
"""Summary fields aggregated over seeds (mean and 95 % confidence interval); the last three for LLM
scenarios only (the token-level engine)."""

BY_POOL: tuple[str, ...] = ("node_hours_by_pool", "node_cost_by_pool_usd")
"""Summary mappings (pool name → figure) aggregated over seeds pool by pool."""


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with a 95 % confidence interval (Student t); ``half_width`` is 0 for one seed."""

    mean: float | None
    half_width: float
    n: int


@dataclass(frozen=True)
class PolicyRow:
    """One policy on one scenario, aggregated over seeds."""

    scenario: str
    policy: str
    estimates: dict[str, Estimate]
    gpu_hours_x_oracle: Estimate
    pareto: bool
    failed: int
    errors: tuple[str, ...]
    meets_slo: bool
    by_pool: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    """:data:`BY_POOL` field → pool name → estimate, pools in the cluster's order."""


@dataclass(frozen=True)
class CompareResult:
    scenarios: list[str]
    policies: list[str]
    seeds: list[int]
    slo_target: float
    runs: list[RunOutcome]
    oracles: dict[tuple[str, int], OracleResult]
    rows: list[PolicyRow]
    descriptions: dict[str, str] = field(default_factory=dict)
    slo_ms: dict[str, float] = field(default_factory=dict)
    node_layer: dict[str, bool] = field(default_factory=dict)
    """Scenarios whose nodes change during a run (a node autoscaler, or spot reclamation)."""
    spot: dict[str, bool] = field(default_factory=dict)
    """Scenarios with a spot pool."""
    references: References = field(default_factory=References)
    """The simulator-only references beside the oracle (feasible clairvoyant, receding horizon): rows
    apart from the ranked policies (:mod:`gpuscale.experiments.references`)."""

    def has_node_layer(self, scenario: str) -> bool:
        """Whether ``scenario`` has a node layer; without the flag, whether a run billed nodes or
        changed them."""
        if scenario in self.node_layer:
            return self.node_layer[scenario]
        return any(
            s.cost_basis == "node" or s.node_scale_ups > 0 or s.spot_interruptions > 0
            for s in self._summaries(scenario)
        )

    def has_spot(self, scenario: str) -> bool:
        """Whether ``scenario`` has a spot pool; without the flag, whether a run saved on spot."""
        if scenario in self.spot:
            return self.spot[scenario]
        return any(s.spot_savings_usd != 0 for s in self._summaries(scenario))

    def pools(self, scenario: str) -> list[str]:
        """Pool names of ``scenario`` in the cluster's order (as its runs report them)."""
        names: dict[str, None] = {}
        for s in self._summaries(scenario):
            names.update(dict.fromkeys(s.node_cost_by_pool_usd))
        return list(names)

    def _summaries(self, scenario: str) -> list[Summary]:
        return [r.summary for r in self.runs if r.key.scenario == scenario and r.summary is not None]

    def rows_for(self, scenario: str) -> list[PolicyRow]:
        return [r for r in self.rows if r.scenario == scenario]

    def runs_for(self, scenario: str, policy: str | None = None) -> list[RunOutcome]:
        return [
            r for r in self.runs if r.key.scenario == scenario and (policy is None or r.key.policy == policy)
        ]


# -- statistics ---------------------------------------------------------------------------------------
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def estimate(values: Sequence[float | None]) -> Estimate:
    """Mean and 95 % confidence half-width of the non-missing values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Estimate(None, 0.0, 0)
    mean = float(np.mean(xs))
    if len(xs) < 2:
        return Estimate(mean, 0.0, len(xs))
    t = _T975.get(len(xs) - 1, 1.96)
    half = t * float(np.std(xs, ddof=1)) / math.sqrt(len(xs))
    return Estimate(mean, half, len(xs))


PARETO_ATTAINMENT_RESOLUTION = 1e-4
"""Attainments closer than 0.01 percentage points count as equal on the Pareto front: a policy that
answers one request in a million more in time is not a different trade-off."""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (GPU-hours, SLO attainment) points: True where no other point is at least as cheap and at
    least as good, and strictly better in one of the two (attainment at 0.01-point resolution)."""
    points = [(cost, round(good / PARETO_ATTAINMENT_RESOLUTION)) for cost, good in points]
    flags = []
    for i, (cost_i, good_i) in enumerate(points):
        dominated = any(
            (cost_j <= cost_i and good_j >= good_i) and (cost_j < cost_i or good_j > good_i)
            for j, (cost_j, good_j) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def aggregate(
    runs: Sequence[RunOutcome], oracles: dict[tuple[str, int], OracleResult], slo_target: float
) -> list[PolicyRow]:
    by_pair: dict[tuple[str, str], list[RunOutcome]] = {}
    for r in sorted(runs, key=lambda r: r.key):
        by_pair.setdefault((r.key.scenario, r.key.policy), []).append(r)
    rows: list[PolicyRow] = []
    for (scenario, policy), group in by_pair.items():
        ok = [r for r in group if r.summary is not None]
        ests = {m: estimate([getattr(r.summary, m) for r in ok]) for m in METRICS}
        by_pool: dict[str, dict[str, Estimate]] = {}
        for name in BY_POOL:
            maps: list[dict[str, float]] = [getattr(r.summary, name) for r in ok]
            pools = list(dict.fromkeys(pool for m in maps for pool in m))
            by_pool[name] = {pool: estimate([m.get(pool) for m in maps]) for pool in pools}
        ratios: list[float | None] = []
        for r in ok:
            oracle = oracles.get((scenario, r.key.seed))
            assert r.summary is not None
            ratios.append(r.summary.gpu_hours / oracle.gpu_hours if oracle and oracle.gpu_hours > 0 else None)
        att = ests["slo_attainment"].mean
        rows.append(
            PolicyRow(
                scenario=scenario,
                policy=policy,
                estimates=ests,
                gpu_hours_x_oracle=estimate(ratios),
                pareto=False,
                failed=len(group) - len(ok),
                errors=tuple(sorted({r.error for r in group if r.error})),
                meets_slo=att is not None and att >= slo_target,
                by_pool=by_pool,
            )
        )
    # Pareto flags per scenario over (GPU-hours, SLO attainment) means
    out: list[PolicyRow] = []
    for scenario in sorted({row.scenario for row in rows}):
        members = [row for row in rows if row.scenario == scenario]
        valid = [row for row in members if row.estimates["gpu_hours"].mean is not None]
        flags = pareto_front(
            [
                (row.estimates["gpu_hours"].mean or 0.0, row.estimates["slo_attainment"].mean or 0.0)
                for row in valid
            ]
        )
        marked = {id(row): flag for row, flag in zip(valid, flags, strict=True)}
        out.extend(replace(row, pareto=marked.get(id(row), False)) for row in members)
    return sorted(out, key=_rank_key)


def _rank_key(row: PolicyRow) -> tuple[str, int, float, float]:
    """Within a scenario: policies that meet the SLO first, cheapest first; then by attainment."""
    gpu = row.estimates["gpu_hours"].mean
    att = row.estimates["slo_attainment"].mean
    return (
        row.scenario,
        0 if row.meets_slo else (1 if row.failed == 0 else 2),
        gpu if row.meets_slo and gpu is not None else -(att or 0.0),
        gpu or 0.0,
    )


# -- running the suite ---------------------------------------------------------------------------------
Progress = Callable[[str, int, int], None]
"""Called with (phase, done, total)."""


@dataclass(frozen=True)
class _OracleJob:
    scenario_spec: str
    seed: int
    slo_target: float


def _oracle_job(job: _OracleJob) -> OracleResult:
    ref = resolve_scenario(job.scenario_spec)
    return compute_oracle(
        ref.scenario, job.seed, slo_target=job.slo_target, base_dir=ref.base_dir, source=ref.source
    )


def _oracle_jobs(jobs: tuple[_OracleJob, ...]) -> list[OracleResult]:
    """One scenario's oracles, seed after seed, in one process: the service's capacity at the SLO,
    nearly all of an oracle's work, is measured once and found in the process's cache for the other
    seeds (the default suite: 15.4 s of CPU for the first seeds, 0.3 s for the second)."""
    return [_oracle_job(job) for job in jobs]


def _group_by(items: Sequence[int], key: Callable[[int], str]) -> list[tuple[int, ...]]:
    """``items`` in groups of equal ``key``, each group in the order of its first item."""
    groups: dict[str, list[int]] = {}
    for i in items:
        groups.setdefault(key(i), []).append(i)
    return [tuple(g) for g in groups.values()]


def _run_oracles(
    oracle_jobs: Sequence[_OracleJob],
    names: dict[str, str],
    workers: int,
    progress: Progress | None,
    pool: TaskPool | None,
    store: RunStore | None,
    cost: dict[str, float] | None = None,
) -> dict[tuple[str, int], OracleResult]:
    """Every oracle, keyed (scenario name, seed) in the jobs' order; kept ones read from ``store``.
    With a ``cost`` per scenario spec (:func:`_scenario_costs`), the longest are handed out first."""
    files = [
        job_digest("oracle", names[j.scenario_spec], j.scenario_spec, j.seed, j.slo_target)
        for j in oracle_jobs
    ]
    finished: dict[int, OracleResult] = {}
    if store is not None:
        for i, name in enumerate(files):
            kept = store.get(name)
            if isinstance(kept, OracleResult):
                finished[i] = kept
    todo = [i for i in range(len(oracle_jobs)) if i not in finished]
    # one task per scenario (its seeds share the capacity measurement: _oracle_jobs)
    tasks = list(_group_by(todo, lambda i: oracle_jobs[i].scenario_spec))
    if cost is not None:  # longest first (the result is keyed, whatever the order they ran in)
        tasks.sort(key=lambda group: -cost[oracle_jobs[group[0]].scenario_spec])

    def done(i: int, result: OracleResult) -> None:
        finished[i] = result
        if store is not None:
            store.put(files[i], result)
        if progress is not None:
            progress("oracle", len(finished), len(oracle_jobs))

    items = [tuple(oracle_jobs[i] for i in group) for group in tasks]
    if pool is not None:
        for j, results in pool.imap_unordered(_oracle_jobs, items):
            for i, result in zip(tasks[j], results, strict=True):
                done(i, result)
    elif workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as executor:
            for group, results in zip(tasks, executor.map(_oracle_jobs, items), strict=True):
                for i, result in zip(group, results, strict=True):
                    done(i, result)
    else:
        for group, item in zip(tasks, items, strict=True):
            for i, result in zip(group, _oracle_jobs(item), strict=True):
                done(i, result)
    return {(names[job.scenario_spec], job.seed): finished[i] for i, job in enumerate(oracle_jobs)}


def run_compare(
    suite: SuiteConfig,
    *,
    workers: int,
    progress: Progress | None = None,
    pool: TaskPool | None = None,
    store: RunStore | None = None,
) -> CompareResult:
    """Run the whole suite (on ``pool``, a Ray cluster, if given); deterministic for the same suite
    whatever ``workers`` is or wherever it runs. With a ``store``, finished oracles and runs are kept
    there as they finish, and those already there are not run again.

    With no pool and ``workers`` > 1, one set of worker processes serves the oracles, the runs and
    the references in turn: each worker imports gpuscale and loads the compiled kernels once, not
    once per stage."""
    if pool is None and workers > 1:
        with ProcessPool(workers) as local:
            return _run_compare(suite, workers=workers, progress=progress, pool=local, store=store)
    return _run_compare(suite, workers=workers, progress=progress, pool=pool, store=store)


def _scenario_costs(refs: dict[str, ScenarioRef]) -> dict[str, float]:
    """How long a run of each scenario takes, roughly, reckoned from its configuration alone
    (:func:`~gpuscale.sim.engine.estimate_run`): about 60 us a control-plane step and 0.3 us a
    request (the measured costs of a scrape or tick and of a request in the compiled data plane).
    Only the order matters: jobs are handed out longest first, so that the last to finish is a short
    one and no worker is left alone with a long one at the end of a stage."""
    cost: dict[str, float] = {}
    for spec, ref in refs.items():
        try:
            est = estimate_run(ref.scenario, base_dir=ref.base_dir, source=ref.source)
        except GpuscaleError:  # the run itself reports what is wrong with it
            cost[spec] = 0.0
            continue
        cost[spec] = 60e-6 * est.steps + 0.3e-6 * est.requests
    return cost


def _run_compare(
    suite: SuiteConfig,
    *,
    workers: int,
    progress: Progress | None,
    pool: TaskPool | None,
    store: RunStore | None,
) -> CompareResult:
    refs = {spec: resolve_scenario(spec) for spec in suite.scenarios}  # bad scenario files fail here, early
    names = {spec: ref.scenario.name for spec, ref in refs.items()}
    oracle_jobs = [
        _OracleJob(spec, seed, suite.slo_target) for spec in suite.scenarios for seed in suite.seeds
    ]
    cost = _scenario_costs(refs)
    oracles = _run_oracles(oracle_jobs, names, workers, progress, pool, store, cost)

    jobs: list[Job] = []
    labels: list[str] = []
    for spec in suite.scenarios:
        for seed in suite.seeds:
            for name in suite.policies:
                label, pspec = policy_spec(name, oracles.get((names[spec], seed)))
                if label not in labels:
                    labels.append(label)
                jobs.append(Job(RunKey(names[spec], label, seed), spec, pspec))
    done = 0

    def tick(_: RunOutcome) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("runs", done, len(jobs))

    jobs.sort(key=lambda job: -cost[job.scenario_spec])  # policies keep their order (a stable sort)
    runs = run_grid(jobs, workers, tick, pool, store)
    rows = aggregate(runs, oracles, suite.slo_target)
    references = compare_references(
        suite.references, refs, names, suite.seeds, suite.slo_target, oracles, workers, progress, pool, store
    )
    references = replace(
        references,
        rows=[replace(r, pareto=False) for r in aggregate(references.runs, oracles, suite.slo_target)],
    )
    return CompareResult(
        scenarios=[names[s] for s in suite.scenarios],
        policies=labels,
        seeds=list(suite.seeds),
        slo_target=suite.slo_target,
        runs=runs,
        oracles=oracles,
        rows=rows,
        descriptions={ref.scenario.name: ref.scenario.description.strip() for ref in refs.values()},
        slo_ms={ref.scenario.name: ref.scenario.slo.latency_ms for ref in refs.values()},
        node_layer={ref.scenario.name: ref.scenario.cluster.node_layer for ref in refs.values()},
        spot={
            ref.scenario.name: any(p.capacity_type == "spot" for p in ref.scenario.cluster.pools)
            for ref in refs.values()
        },
        references=references,
    )
