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

Each trial's sampler is seeded from ``--seed`` and the trial's place (see :class:`_Reseeded`), and the
results are told in trial order, so the same inputs propose the same candidates. A stopped search
resumes from the finished runs kept in the output folder: the replayed study proposes the same
candidates again, and their runs are read back, not simulated.

With ``--storage`` the study lives in an SQLite or journal file under a name derived from the search
(its definition is kept in the study and checked). Each trial records its candidate's settings, the
process that asked it and, on the trial that ran it, the candidate's runs; the result is always read
back from the study. Running the same search again resumes it: finished trials are read back, a trial
whose process died is marked failed (and flagged so it no longer counts) and its parameters are
enqueued, so its candidate is asked again in the same place, before anything new. Several processes
may run the same search on one study: each asks for the next trials, one asked past the budget is
failed and flagged, a candidate an earlier trial of another worker is running is waited for rather
than run again, and a worker out of trials waits for the others' before it writes the result.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import re
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from optuna.samplers import BaseSampler

from gpuscale._core.clock import SystemClock
from gpuscale._core.errors import ConfigError, GpuscaleError
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


# -- storage --------------------------------------------------------------------------------------------------
STORAGE_FORMS = "sqlite:///PATH (an SQLite file) or journal:///PATH (an Optuna journal file)"
"""What ``--storage`` accepts; a relative PATH is relative to the working folder."""

SEARCH_ATTR = "gpuscale:search"
"""Study user attr: the search definition (JSON) the study was made for."""
BASELINE_ATTR = "gpuscale:baseline"
"""Study user attr: the baseline's runs."""
POINT_ATTR = "gpuscale:point"
"""Trial user attr: the candidate's settings (JSON), as evaluated."""
RUNS_ATTR = "gpuscale:runs"
"""Trial user attr: the runs of the candidate, on the trial that evaluated it."""
PRUNED_ATTR = "gpuscale:pruned"
"""Trial user attr: runs skipped once the candidate was pruned."""
OWNER_ATTR = "gpuscale:owner"
"""Trial user attr: the process that asked for the trial (host, pid, process start, run token)."""
ABANDONED_ATTR = "gpuscale:abandoned"
"""Trial user attr: the trial does not count (its process died, or it was asked past the budget)."""
REQUEUED_ATTR = "gpuscale:requeued"
"""Trial user attr: the number of the abandoned trial whose candidate this trial asks again."""

UNOWNED_GRACE_S = 10.0
"""A running trial with no owner recorded (its process died inside ``ask``) is abandoned after this."""
_CLOCK = SystemClock()
POLL_S = 0.2
STALL_S = 1800.0
"""How long a worker waits on trials another host's worker is running while no trial of the study
finishes: past it, the wait ends with an error (the study keeps everything finished; run the same
command again, once that worker is back or gone, to carry on). A worker of this host that died is
noticed at once; one on another host cannot be, so the wait is bounded instead."""


class StalledStudy(GpuscaleError):
    """No trial of a shared study finished for :data:`STALL_S` while this worker waited on others."""


"""How often a worker looks at the study while another worker finishes a trial it waits for."""


def storage_path(url: str) -> tuple[str, Path]:
    """``sqlite:///PATH`` or ``journal:///PATH`` as (scheme, path); ConfigError for anything else."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme not in ("sqlite", "journal") or not rest.strip():
        raise ConfigError("--storage", None, url, f"expected {STORAGE_FORMS}")
    return scheme, Path(rest)


def check_storage(url: str) -> tuple[str, Path]:
    """The storage's scheme and path, its parent folders created and the file writable (created empty
    if new: an empty file is a new SQLite database or journal); ConfigError otherwise."""
    scheme, path = storage_path(url)
    if path.is_dir():
        raise ConfigError("--storage", None, url, f"{path} is a folder; expected {STORAGE_FORMS}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(
            "--storage", None, url, f"cannot write {path} ({why}); expected {STORAGE_FORMS}"
        ) from exc
    return scheme, path


def open_storage(url: str) -> Any:
    """The Optuna storage behind ``url`` (see :func:`check_storage`). SQLite waits up to a minute for a
    lock another worker holds; a journal file is locked with an exclusively created lock file, which
    works on local disks and NFSv3 or later."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    scheme, path = check_storage(url)
    if scheme == "sqlite":
        return optuna.storages.RDBStorage(
            f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}}
        )
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def search_text(search: Mapping[str, Any]) -> str:
    return json.dumps(search, sort_keys=True, separators=(",", ":"), default=str)


def default_study_name(search: Mapping[str, Any]) -> str:
    """``tune-POLICY-DIGEST``: a digest of the whole search definition, so a different search (other
    scenarios, seeds, objectives, sampler or code version) never lands in the same study."""
    digest = hashlib.sha256(search_text(search).encode()).hexdigest()[:16]
    policy = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(search.get("policy", "policy"))).stem)[:40]
    return f"tune-{policy}-{digest}"


def _encode_runs(runs: Sequence[RunOutcome]) -> str:
    """Runs as text for a user attr: their summaries and errors (no timelines: tune does not use them)."""
    kept = [replace(r, timeline={}, latency_hist=None, wall_s=0.0) for r in runs]
    return base64.b64encode(pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def _decode_runs(text: str) -> list[RunOutcome]:
    runs: list[RunOutcome] = pickle.loads(base64.b64decode(text.encode("ascii")))
    return runs


def _start_ticks(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid), "token": token}


def _abandoned(t: Any) -> bool:
    return bool(t.user_attrs.get(ABANDONED_ATTR))


def _is_dead(t: Any, token: str) -> bool | None:
    """Whether the running trial ``t`` was left by a process that is gone: one of this host whose pid
    has ended (or now belongs to another process), or an earlier search in this process. A worker on
    another host is taken to be alive. None: not known yet (no owner recorded, the trial younger than
    :data:`UNOWNED_GRACE_S`)."""
    owner = t.user_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict):
        started = t.datetime_start
        if started is None:
            return False
        return True if _CLOCK.now() - float(started.timestamp()) > UNOWNED_GRACE_S else None
    if owner.get("token") == token or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return True  # an earlier search of this process, stopped part-way
    if pid <= 0 or not _alive(pid):
        return True
    start = owner.get("start")
    return start is not None and _start_ticks(pid) not in (None, start)


class _Reseeded(BaseSampler):
    """The study's sampler: a fresh ``make(index)`` for each trial, ``index`` being the trial's place
    among the trials that count (abandoned ones skipped). A proposal is thus a function of the seed, the
    finished trials and its place only: a resumed search asks what the uninterrupted one asked, and
    workers sharing a study never draw from the same random state."""

    def __init__(self, make: Callable[[int], Any], owner: dict[str, Any]) -> None:
        self._make = make
        self._owner = owner
        self._inner = make(0)

    def before_trial(self, study: Any, trial: Any) -> None:
        study._storage.set_trial_user_attr(trial._trial_id, OWNER_ATTR, self._owner)
        index = sum(
            1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and not _abandoned(t)
        )
        self._inner = self._make(index)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: each trial's sampler is seeded from its place."""


def _trial_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"tune-trial:{seed}:{index}".encode()).digest()[:4], "big")


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
    storage: str | None = None,
    study_name: str | None = None,
    search: Mapping[str, Any] | None = None,
    fixed: Sequence[Candidate] | None = None,
) -> TpeSearch:
    """Run a search of ``budget`` trials; ``score`` gives (meets target, worst attainment, cost,
    GPU-hours) of a finished candidate from its runs.

    With two ``objectives`` (``attainment`` and ``gpu_hours`` or ``cost``) the sampler is NSGA-II over
    both (worst-scenario attainment maximized, the other minimized) and nothing is pruned: a candidate
    below target may still be on the front.

    With ``fixed`` (a grid or random search's candidates, the baseline first) the trials take those
    candidates in order and nothing is pruned. With ``storage`` (see :func:`open_storage`) the study is
    kept there under ``study_name``: a stopped search resumes from it, and several processes may share
    it (see :mod:`gpuscale.experiments.study`)."""
    import optuna
    from optuna.trial import TrialState

    check_params(baseline, params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search_def = dict(search or {})
    name = study_name or default_study_name(search_def)
    token = uuid.uuid4().hex
    owner = _owner(token)
    if fixed is not None:
        prune = False
        budget = len(fixed) - 1

    def make_sampler(index: int) -> Any:
        if objectives:
            return optuna.samplers.NSGAIISampler(seed=_trial_seed(seed, index), population_size=max(ROUND, 8))
        if fixed is not None:
            return optuna.samplers.RandomSampler(seed=0)
        return optuna.samplers.TPESampler(seed=_trial_seed(seed, index))

    directions: list[Literal["minimize", "maximize"]] = ["minimize"]
    if objectives:
        prune = False
        directions = ["maximize" if o == "attainment" else "minimize" for o in objectives]
    sampler: Any = _Reseeded(make_sampler, owner)
    try:
        study = optuna.create_study(
            storage=open_storage(storage) if storage is not None else None,
            study_name=name,
            sampler=sampler,
            directions=directions,
            load_if_exists=True,
        )
    except ConfigError:
        raise
    except Exception as exc:  # a file of something else: SQLAlchemy's, JSON's or Optuna's own errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "--storage", None, storage, f"cannot open it as a study ({first}); expected {STORAGE_FORMS}"
        ) from exc
    where = f"study {name!r} in {storage}"
    recorded = study.user_attrs.get(SEARCH_ATTR)
    if recorded is None:
        study.set_user_attr(SEARCH_ATTR, search_text(search_def))
    elif recorded != search_text(search_def):
        try:
            theirs = json.loads(recorded)
        except (TypeError, ValueError):
            theirs = {}
        differ = sorted(k for k in set(theirs) | set(search_def) if theirs.get(k) != search_def.get(k))
        raise ConfigError(
            "--study-name",
            None,
            name,
            f"{where} belongs to another search (it differs in {', '.join(differ) or 'its definition'}); "
            "use the same search to resume it, or another --study-name or --storage",
        )
    if list(study.directions) != [
        optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
        for d in directions
    ]:
        raise ConfigError("--study-name", None, name, f"{where} has other objectives than this search")

    dists = distributions(params) if fixed is None else {}
    steps = [(spec, s) for spec in scenarios for s in seeds]
    width = max(3, len(str(budget)))
    total = (budget + 1) * len(steps)
    done = 0
    saved = 0

    def tick(_: RunOutcome) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done + saved, total)

    def evaluate(
        batch: Sequence[Candidate], can_prune: bool
    ) -> tuple[dict[str, list[RunOutcome]], dict[str, int]]:
        """Run ``batch`` step by step; pruned ones leave the batch (label → runs skipped)."""
        nonlocal saved
        active = list(batch)
        runs: dict[str, list[RunOutcome]] = {c.label: [] for c in batch}
        pruned: dict[str, int] = {}
        for k, (spec, s) in enumerate(steps):
            if not active:
                break
            jobs = [Job(RunKey(names[spec], c.label, s), spec, c.config) for c in active]
            for outcome in run_grid(jobs, workers, tick, pool, store):
                runs[outcome.key.policy].append(outcome)
            if not can_prune or k + 1 == len(steps):  # nothing left to skip: it simply ran
                continue
            for c in list(active):
                atts = [
                    r.summary.slo_attainment if r.summary is not None else 0.0
                    for r in runs[c.label]
                    if r.key.scenario == names[spec]
                ]
                if hopeless(atts, len(seeds), slo_target):
                    active.remove(c)
                    pruned[c.label] = len(steps) - (k + 1)
                    saved += pruned[c.label]
                    if progress is not None:
                        progress(done + saved, total)
        return runs, pruned

    base = Candidate(0, "baseline", {}, baseline.config)
    kept = study.user_attrs.get(BASELINE_ATTR)
    if isinstance(kept, str):
        base_runs = _decode_runs(kept)
        done += len(base_runs)
    else:
        base_runs = _decode_runs(_encode_runs(evaluate([base], can_prune=False)[0]["baseline"]))
        study.set_user_attr(BASELINE_ATTR, _encode_runs(base_runs))

    def point_of(t: Any, index: int) -> dict[str, Scalar]:
        if fixed is not None:
            return dict(fixed[index + 1].overrides)
        return {p.key: _rounded(p, t.params[p.key]) for p in params}

    def ident_of(point: Mapping[str, Scalar]) -> str:
        """A candidate's identity: its settings in ``--param`` order, as JSON."""
        return json.dumps(list(point.items()), default=str)

    def candidate_of(point: Mapping[str, Scalar], index: int, label: str) -> Candidate:
        config: dict[str, Any] = baseline.config
        for key, value in point.items():
            config = set_path(config, key, value)
        if fixed is None:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            _validate(config, f"--param candidate ({shown})", None, None)
        return Candidate(index, label, dict(point), config)

    def counted(trials: Sequence[Any]) -> list[Any]:
        return [t for t in trials if not _abandoned(t)]

    def abandon(number: int, requeue: bool) -> None:
        t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        try:
            study._storage.set_trial_user_attr(t._trial_id, ABANDONED_ATTR, True)
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            return  # another worker finished or abandoned it first
        if requeue:
            study.enqueue_trial(dict(t.params), user_attrs={REQUEUED_ATTR: t.number})

    def reclaim() -> bool:
        """Trials left running by a process that died: failed, and their candidates asked again.
        True while a running trial has no owner yet (its process is inside ``ask``, or died there)."""
        unsure = False
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _abandoned(t):
                continue
            dead = _is_dead(t, token)
            if dead:
                abandon(t.number, requeue=True)
            unsure = unsure or dead is None
        return unsure

    def tell(trial: Any, runs: Sequence[RunOutcome], was_pruned: bool) -> None:
        if was_pruned:
            study.tell(trial, state=TrialState.PRUNED)
            return
        meets, worst, cost, gpu_hours = score(Candidate(0, "candidate", {}, {}), runs)
        if objectives:
            got = {"attainment": worst, "cost": cost, "gpu_hours": gpu_hours}
            values = [got[o] for o in objectives]
            if any(v is None for v in values):
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, [float(v) for v in values if v is not None])
        elif meets and cost is not None:
            study.tell(trial, cost)
        else:
            study.tell(trial, MISS_PENALTY_USD * (1.0 + slo_target - (worst or 0.0)))

    def finished_runs(ident: str) -> tuple[list[RunOutcome], int | None] | None:
        """The runs of a candidate some trial has run (and the runs its pruning skipped), if any."""
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get(POINT_ATTR) == ident and RUNS_ATTR in t.user_attrs:
                return _decode_runs(t.user_attrs[RUNS_ATTR]), t.user_attrs.get(PRUNED_ATTR)
        return None

    def points_known(upto: int, mine: set[int]) -> bool:
        """Whether every running trial of another worker numbered below ``upto`` has its candidate."""
        return all(
            t.number >= upto or t.number in mine or _abandoned(t) or POINT_ATTR in t.user_attrs
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        )

    def running_elsewhere(ident: str, number: int, mine: set[int]) -> bool:
        """Whether another worker's earlier trial has the same candidate and is still running it (the
        earliest trial of a candidate runs it, the later ones wait for its runs)."""
        return any(
            t.number < number
            and t.number not in mine
            and not _abandoned(t)
            and t.user_attrs.get(POINT_ATTR) == ident
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        )

    def run_one(trial: Any, c: Candidate) -> tuple[list[RunOutcome], int | None]:
        runs, pruned = evaluate([c], can_prune=prune)
        keep(trial, runs[c.label], pruned.get(c.label))
        return runs[c.label], pruned.get(c.label)

    def keep(trial: Any, runs: Sequence[RunOutcome], skipped: int | None) -> None:
        if skipped is not None:
            trial.set_user_attr(PRUNED_ATTR, skipped)
        trial.set_user_attr(RUNS_ATTR, _encode_runs(runs))

    round_size = ROUND if fixed is None else max(ROUND, workers)
    progress_mark = [-1, _CLOCK.now()]  # finished trials seen, and when that count last grew

    def wait() -> None:
        """Sleep one poll while other workers' trials run; give up after STALL_S without progress."""
        finished = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        now = _CLOCK.now()
        if finished != progress_mark[0]:
            progress_mark[0], progress_mark[1] = finished, now
        elif now - progress_mark[1] > STALL_S:
            running = sorted(
                t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING
            )
            raise StalledStudy(
                f"study {study.study_name}: no trial finished for {STALL_S:g} s while waiting on trials "
                f"{', '.join(map(str, running))} run by other workers; everything finished is kept in the "
                "storage: run the same command again to carry on"
            )
        _CLOCK.sleep(POLL_S)

    while True:
        if reclaim():  # decide first, so the candidates are asked again in their place
            _CLOCK.sleep(POLL_S)
            continue
        trials = counted(study.get_trials(deepcopy=False))
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        n = len(trials)
        fill = (round_size - n % round_size) % round_size if waiting else round_size - n % round_size
        new = max(0, min(fill, budget - n))
        if waiting + new == 0:
            if any(t.state == TrialState.RUNNING for t in trials):
                wait()  # another worker's trials: the result needs them
                continue
            break
        asked: list[tuple[Any, dict[str, Scalar], int]] = []
        for _ in range(waiting + new):
            trial = study.ask(dists)
            index = sum(1 for t in counted(study.get_trials(deepcopy=False)) if t.number < trial.number)
            if index >= budget:
                abandon(trial.number, requeue=False)
                continue
            point = point_of(trial, index)
            trial.set_user_attr(POINT_ATTR, ident_of(point))
            asked.append((trial, point, index))
        mine = {t.number for t, _, _ in asked}
        # The earliest trial of a candidate runs it (running_elsewhere): an earlier trial of another
        # worker must have said its candidate before that can be told. Between its ask and its
        # POINT_ATTR it has not; were it read then, both workers would run the candidate.
        while mine and not points_known(max(mine), mine):
            reclaim()  # a worker that died between the two leaves its trial to be reclaimed
            wait()
        # candidates are numbered by their first trial among those that count
        order: dict[str, int] = {}
        for t in counted(study.get_trials(deepcopy=False)):
            ident = t.user_attrs.get(POINT_ATTR)
            if ident is not None and ident not in order:
                order[ident] = len(order) + 1
        batch: dict[str, tuple[Any, Candidate]] = {}
        for trial, point, index in asked:
            ident = ident_of(point)
            if (
                ident in batch
                or finished_runs(ident) is not None
                or running_elsewhere(ident, trial.number, mine)
            ):
                continue
            if fixed is not None:
                c = fixed[index + 1]
            else:
                i = order.get(ident, len(order) + 1)
                c = candidate_of(point, i, f"c{i:0{width}d}")
            batch[ident] = (trial, c)
        runs, pruned = evaluate([c for _, c in batch.values()], can_prune=prune)
        for trial, c in batch.values():
            keep(trial, runs[c.label], pruned.get(c.label))
        for trial, point, index in asked:  # told in trial order: the same history, the same next proposals
            ident = ident_of(point)
            got = finished_runs(ident)
            while got is None:  # another worker is running this candidate: wait for it
                wait()
                reclaim()
                got = finished_runs(ident)
                if got is None and not running_elsewhere(ident, trial.number, mine):
                    c = fixed[index + 1] if fixed is not None else candidate_of(point, 0, f"t{trial.number}")
                    got = run_one(trial, c)
            tell(trial, got[0], got[1] is not None)

    return _read_back(
        study,
        base,
        base_runs,
        budget,
        width,
        make=candidate_of,
        fixed=fixed,
        steps=len(steps),
        progress=progress,
    )


def _read_back(
    study: Any,
    base: Candidate,
    base_runs: Sequence[RunOutcome],
    budget: int,
    width: int,
    *,
    make: Callable[[Mapping[str, Scalar], int, str], Candidate],
    fixed: Sequence[Candidate] | None,
    steps: int,
    progress: Callable[[int, int], None] | None,
) -> TpeSearch:
    """The search as the study holds it: its first ``budget`` trials that count, in trial order; a
    candidate is numbered by its first trial, its runs read back from the trial that ran them."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = [t for t in study.get_trials(deepcopy=False) if not _abandoned(t)][:budget]
    search = TpeSearch(candidates=[base], runs=[replace(r) for r in base_runs])
    runs_of: dict[str, tuple[list[RunOutcome], int | None]] = {}
    for t in study.get_trials(deepcopy=False):
        ident = t.user_attrs.get(POINT_ATTR)
        if ident is not None and RUNS_ATTR in t.user_attrs and ident not in runs_of:
            runs_of[ident] = (_decode_runs(t.user_attrs[RUNS_ATTR]), t.user_attrs.get(PRUNED_ATTR))
    seen: dict[str, Candidate] = {}
    for index, t in enumerate(trials):
        ident = t.user_attrs.get(POINT_ATTR)
        if t.state not in finished or ident is None or ident not in runs_of:
            continue
        search.trials += 1
        if ident in seen:
            continue
        point: dict[str, Scalar] = {str(k): v for k, v in json.loads(ident)}
        if fixed is not None:
            c = fixed[index + 1]
        else:
            i = len(search.candidates)
            c = make(point, i, f"c{i:0{width}d}")
        seen[ident] = c
        search.candidates.append(c)
        runs, skipped = runs_of[ident]
        search.runs.extend(replace(r, key=RunKey(r.key.scenario, c.label, r.key.seed)) for r in runs)
        if skipped is not None:
            search.pruned[c.label] = int(skipped)
    if progress is not None:
        total = (budget + 1) * steps
        progress(total, total)
    return search
