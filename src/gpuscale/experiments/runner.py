"""Simulation jobs: one (scenario, policy, seed) per job, run in worker processes.

A job names its policy the way users do (an inline mapping, a policy file or a preset) and resolves
it with :func:`~gpuscale.policies.registry.resolve_policy`, the one resolution every other path uses.
Outcomes are sorted by run key, so they do not depend on how the work was scheduled. A job that fails
(on bad configuration, or on an error of gpuscale's own) becomes a failed outcome with its error; the
others complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from gpuscale._core.errors import GpuscaleError
from gpuscale.experiments.checkpoint import RunStore, job_digest
from gpuscale.sim.results import SimResult, Summary

TIMELINE_KEEP = (
    "time_s",
    "arrival_rps",
    "desired",
    "ready",
    "starting",
    "pending",
    "gpus_held",
    "p95_ms",
    "nodes",
    "pending_nodes",
)
"""Timeline columns a job keeps for the report."""


@dataclass(frozen=True, order=True)
class RunKey:
    scenario: str
    policy: str
    seed: int


@dataclass(frozen=True)
class RunOutcome:
    """One simulation: its summary, or the error that stopped it."""

    key: RunKey
    summary: Summary | None
    error: str | None = None
    timeline: dict[str, np.ndarray] = field(default_factory=dict)
    latency_hist: np.ndarray | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.summary is not None


@dataclass(frozen=True)
class Job:
    key: RunKey
    scenario_spec: str
    policy_spec: str | Mapping[str, Any]
    """An inline policy mapping, a policy file path, or a preset name (see ``resolve_policy``)."""


def run_job(job: Job) -> RunOutcome:
    """Run one simulation (in a worker process). Bad configuration -- a run that outgrows the
    scenario's pod limit included -- becomes a failed outcome with its message; so does an error of
    gpuscale's own, so that one run never takes the others' results with it."""
    from gpuscale.experiments.catalog import resolve_scenario
    from gpuscale.policies import registry
    from gpuscale.sim.engine import simulate

    def run() -> SimResult:
        ref = resolve_scenario(job.scenario_spec)
        policy = registry.resolve_policy(job.policy_spec, key=None, source=f"policy {job.key.policy}").build()
        return simulate(ref.scenario, policy, seed=job.key.seed, base_dir=ref.base_dir, source=ref.source)

    return outcome_of(job.key, run)


def outcome_of(key: RunKey, run: Callable[[], SimResult]) -> RunOutcome:
    """What ``run`` gave as the outcome of ``key``, timed: its summary and the timeline columns a
    report keeps, or, where it raised, a failed outcome with the error (one run never takes the
    others' results with it)."""
    start = time.perf_counter()
    try:
        result = run()
    except GpuscaleError as exc:
        return RunOutcome(key, None, str(exc), wall_s=time.perf_counter() - start)
    except Exception as exc:  # a fault of gpuscale's own: this run fails, the others still complete
        error = f"internal error in gpuscale ({type(exc).__name__}: {exc}); please report it"
        return RunOutcome(key, None, error, wall_s=time.perf_counter() - start)
    tl = result.timeline
    timeline = {name: tl.column(name) for name in TIMELINE_KEEP}
    return RunOutcome(key, result.summary, None, timeline, result.latency_hist, time.perf_counter() - start)


T = TypeVar("T")
R = TypeVar("R")


class TaskPool(Protocol):
    """Somewhere else to run jobs (a Ray cluster: :class:`~gpuscale.experiments.ray_runner.RayPool`)."""

    def imap_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """``(index, fn(item))`` for every item, in the order they finish."""
        ...


def run_grid(
    jobs: Sequence[Job],
    workers: int,
    on_done: Callable[[RunOutcome], None] | None = None,
    pool: TaskPool | None = None,
    store: RunStore | None = None,
) -> list[RunOutcome]:
    """Run every job: on ``pool`` if given, else with ``workers`` > 1 in that many processes.
    Output sorted by run key, so the same whatever ran it.

    With a ``store``, each finished job is written to it as it finishes, and a job already there is
    read back instead of run (``--resume``)."""
    outcomes: list[RunOutcome] = []
    if store is not None:
        names = {job.key: job_digest("run", job.key.scenario, job.scenario_spec, job.key.policy,
                                     job.policy_spec, job.key.seed) for job in jobs}  # fmt: skip
        todo: list[Job] = []
        for job in jobs:
            kept = store.get(names[job.key])
            if isinstance(kept, RunOutcome) and kept.key == job.key:
                outcomes.append(kept)
                if on_done is not None:
                    on_done(kept)
            else:
                todo.append(job)
        user_done = on_done

        def keep(outcome: RunOutcome) -> None:
            store.put(names[outcome.key], outcome)
            if user_done is not None:
                user_done(outcome)

        rest = run_grid(todo, workers, keep, pool)
        return sorted([*outcomes, *rest], key=lambda o: o.key)
    if pool is not None:
        for _, outcome in pool.imap_unordered(run_job, jobs):
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    elif workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcome = run_job(job)
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    else:
        with ProcessPoolExecutor(max_workers=workers) as executor:
            futures = [executor.submit(run_job, job) for job in jobs]
            for fut in as_completed(futures):
                outcome = fut.result()
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
    return sorted(outcomes, key=lambda o: o.key)


class ProcessPool:
    """Local worker processes kept for a whole search (a :class:`TaskPool`); a context manager."""

    def __init__(self, workers: int) -> None:
        self.executor = ProcessPoolExecutor(max_workers=workers)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown(cancel_futures=True)

    def imap_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        futures = {self.executor.submit(fn, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
