"""``tune --method tpe``: Optuna's TPE sampler proposes the candidates, hopeless ones are pruned;
with ``--objectives attainment,gpu_hours`` NSGA-II searches for the front of both.

Trials are asked in rounds of :data:`ROUND` (a fixed number, so the proposals do not depend on how many
workers or which cluster runs them); a round's candidates run step by step, one step being one
(scenario, seed) for every candidate still in the round, all of a step's simulations in parallel.
After each step a candidate is **pruned** when it can no longer meet the target on a scenario: its
attainments there so far, with a perfect 100 % assumed for the seeds still to run, average below
``slo_target``. Such a candidate can never be the winner while any candidate meets the target, so the
runs it skips are saved without changing the answer (the count is reported).

The study's objective, minimized: the candidate's cost (the compare's headline cost, summed over
scenarios) when it meets the target everywhere; otherwise :data:`MISS_PENALTY_USD` plus the
shortfall of its worst scenario, so every candidate that meets the target ranks before every one that
does not. The winner is then chosen by the same rule as grid and random search.

The sampler is seeded (``--seed``) and told the results in trial order, so the same inputs propose the
same candidates. A stopped search resumes from the finished runs kept in the output folder: the
replayed study proposes the same candidates again, and their runs are read back, not simulated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuscale.experiments.checkpoint import RunStore
from gpuscale.experiments.runner import Job, RunKey, RunOutcome, TaskPool, run_grid
from gpuscale.experiments.tune import (
    RANDOM_DIGITS,
    Baseline,
    Candidate,
    ParamSpec,
    Scalar,
    _validate,
    check_params,
    set_path,
)

ROUND = 4
"""Trials asked before any of them is told: the parallelism of one step of the search."""

MISS_PENALTY_USD = 1e9
"""Added to the objective of a candidate that misses the target: more than any real cost."""


@dataclass
class TpeSearch:
    """What the search ran: candidates in the order proposed (the baseline first), their runs, and the
    pruned ones with the runs each skipped."""

    candidates: list[Candidate] = field(default_factory=list)
    runs: list[RunOutcome] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)
    """Candidate label → runs skipped after it was pruned."""
    trials: int = 0

    @property
    def runs_saved(self) -> int:
        return sum(self.pruned.values())


def distributions(params: Sequence[ParamSpec]) -> dict[str, Any]:
    """Each ``--param`` as an Optuna distribution: a list (or a grid range) is categorical, an integer
    range an integer one, a float range a float one."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in params:
        if p.values is not None or p.steps is not None:
            out[p.key] = CategoricalDistribution(list(p.grid_values()))
        elif p.is_int_range:
            assert p.low is not None and p.high is not None
            out[p.key] = IntDistribution(int(p.low), int(p.high))
        else:
            assert p.low is not None and p.high is not None
            out[p.key] = FloatDistribution(float(p.low), float(p.high))
    return out


def _rounded(p: ParamSpec, value: Any) -> Scalar:
    """A float drawn from a range, to :data:`RANDOM_DIGITS` significant digits (as random search)."""
    if p.values is None and p.steps is None and not p.is_int_range and isinstance(value, float):
        assert p.low is not None and p.high is not None
        x = float(f"{value:.{RANDOM_DIGITS}g}")
        return min(max(x, float(p.low)), float(p.high))
    if p.is_int_range and p.values is None and p.steps is None:
        return int(value)
    result: Scalar = value
    return result


def hopeless(attainments: Sequence[float], n_seeds: int, slo_target: float) -> bool:
    """Whether a scenario's mean attainment over ``n_seeds`` is below target even if every seed still
    to run scored 100 %. With 3 seeds and a 99 % target, one seed at 96 % is hopeless: (0.96 + 1 + 1)
    / 3 = 98.7 %."""
    best_mean = (sum(attainments) + (n_seeds - len(attainments))) / n_seeds
    return best_mean < slo_target - 1e-12


def run_tpe(
    baseline: Baseline,
    params: Sequence[ParamSpec],
    scenarios: Sequence[str],
    names: dict[str, str],
    seeds: Sequence[int],
    *,
    budget: int,
    seed: int,
    slo_target: float,
    prune: bool,
    workers: int,
    pool: TaskPool | None,
    store: RunStore | None,
    progress: Callable[[int, int], None] | None,
    score: Callable[[Candidate, Sequence[RunOutcome]], tuple[bool, float | None, float | None, float | None]],
    objectives: Sequence[str] = (),
) -> TpeSearch:
    """Run a search of ``budget`` trials; ``score`` gives (meets target, worst attainment, cost,
    GPU-hours) of a finished candidate from its runs.

    With two ``objectives`` (``attainment`` and ``gpu_hours`` or ``cost``) the sampler is NSGA-II over
    both (worst-scenario attainment maximized, the other minimized) and nothing is pruned: a candidate
    below target may still be on the front."""
    import optuna

    check_params(baseline, params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if objectives:
        prune = False
        study = optuna.create_study(
            directions=["maximize" if o == "attainment" else "minimize" for o in objectives],
            sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=max(ROUND, 8)),
        )
    else:
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    dists = distributions(params)
    steps = [(spec, s) for spec in scenarios for s in seeds]
    width = max(3, len(str(budget)))
    search = TpeSearch(candidates=[Candidate(0, "baseline", {}, baseline.config)])
    by_point: dict[str, Candidate] = {}
    total = (budget + 1) * len(steps)
    done = 0

    def tick(_: RunOutcome) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done + search.runs_saved, total)

    def evaluate(batch: Sequence[Candidate], can_prune: bool) -> dict[str, list[RunOutcome]]:
        """Run ``batch`` step by step; pruned ones leave the batch."""
        active = list(batch)
        runs: dict[str, list[RunOutcome]] = {c.label: [] for c in batch}
        for k, (spec, s) in enumerate(steps):
            if not active:
                break
            jobs = [Job(RunKey(names[spec], c.label, s), spec, c.config) for c in active]
            for outcome in run_grid(jobs, workers, tick, pool, store):
                runs[outcome.key.policy].append(outcome)
            if not can_prune:
                continue
            for c in list(active):
                atts = [
                    r.summary.slo_attainment if r.summary is not None else 0.0
                    for r in runs[c.label]
                    if r.key.scenario == names[spec]
                ]
                if hopeless(atts, len(seeds), slo_target):
                    active.remove(c)
                    search.pruned[c.label] = len(steps) - (k + 1)
                    if progress is not None:
                        progress(done + search.runs_saved, total)
        return runs

    base_runs = evaluate(search.candidates, can_prune=False)
    search.runs.extend(base_runs["baseline"])

    while search.trials < budget:
        trials = []
        batch: list[Candidate] = []
        for _ in range(min(ROUND, budget - search.trials)):
            trial = study.ask(dists)
            search.trials += 1
            point = {p.key: _rounded(p, trial.params[p.key]) for p in params}
            ident = repr(sorted(point.items(), key=lambda kv: kv[0]))
            known = by_point.get(ident)
            if known is None:
                config: dict[str, Any] = baseline.config
                for key, value in point.items():
                    config = set_path(config, key, value)
                shown = ", ".join(f"{k}={v}" for k, v in point.items())
                _validate(config, f"--param candidate ({shown})", None, None)
                index = len(search.candidates)
                known = Candidate(index, f"c{index:0{width}d}", point, config)
                by_point[ident] = known
                search.candidates.append(known)
                batch.append(known)
            trials.append((trial, known))
        runs = evaluate(batch, can_prune=prune)
        for c in batch:
            search.runs.extend(runs[c.label])
        for trial, c in trials:  # told in trial order: the same history, the same next proposals
            if c.label in search.pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            meets, worst, cost, gpu_hours = score(c, [r for r in search.runs if r.key.policy == c.label])
            if objectives:
                got = {"attainment": worst, "cost": cost, "gpu_hours": gpu_hours}
                values = [got[o] for o in objectives]
                if any(v is None for v in values):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, [float(v) for v in values if v is not None])
            elif meets and cost is not None:
                study.tell(trial, cost)
            else:
                study.tell(trial, MISS_PENALTY_USD * (1.0 + slo_target - (worst or 0.0)))
    return search
