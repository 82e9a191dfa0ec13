"""Orchestrates a compare: oracles first (one per scenario and seed), then the policy grid."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from gpuscale.experiments.catalog import resolve_scenario
from gpuscale.experiments.compare import (
    CompareResult,
    Job,
    OracleResult,
    RunKey,
    RunOutcome,
    aggregate,
    run_grid,
)
from gpuscale.experiments.suite import SuiteConfig, policy_spec

Progress = Callable[[str, int, int], None]
"""Called with (phase, done, total)."""


@dataclass(frozen=True)
class _OracleJob:
    scenario_spec: str
    seed: int
    slo_target: float


def _oracle_job(job: _OracleJob) -> OracleResult:
    from gpuscale.experiments.oracle import compute_oracle

    ref = resolve_scenario(job.scenario_spec)
    return compute_oracle(
        ref.scenario, job.seed, slo_target=job.slo_target, base_dir=ref.base_dir, source=ref.source
    )


def run_compare(suite: SuiteConfig, *, workers: int, progress: Progress | None = None) -> CompareResult:
    """Run the whole suite; deterministic for the same suite whatever ``workers`` is."""
    refs = {spec: resolve_scenario(spec) for spec in suite.scenarios}  # bad scenario files fail here, early
    names = {spec: ref.scenario.name for spec, ref in refs.items()}
    oracle_jobs = [
        _OracleJob(spec, seed, suite.slo_target) for spec in suite.scenarios for seed in suite.seeds
    ]
    oracles: dict[tuple[str, int], OracleResult] = {}
    if workers > 1 and len(oracle_jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, result in enumerate(pool.map(_oracle_job, oracle_jobs)):
                oracles[(names[oracle_jobs[i].scenario_spec], oracle_jobs[i].seed)] = result
                if progress is not None:
                    progress("oracle", i + 1, len(oracle_jobs))
    else:
        for i, job in enumerate(oracle_jobs):
            oracles[(names[job.scenario_spec], job.seed)] = _oracle_job(job)
            if progress is not None:
                progress("oracle", i + 1, len(oracle_jobs))

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

    runs = run_grid(jobs, workers, tick)
    rows = aggregate(runs, oracles, suite.slo_target)
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
    )
