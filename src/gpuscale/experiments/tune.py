"""``gpuscale tune``: search a policy's parameters for the cheapest configuration that meets the SLO.

A search is a policy (a preset or a policy file, the *baseline*), one or more scenarios, seeds, and
``--param KEY=SPEC`` options. ``KEY`` is a dotted path into the policy's config mapping
(``target``, ``metrics.0.target.average_value``, ``behavior.scale_down.stabilization_window_s``);
``SPEC`` is a comma list of values (``0,60,300``) or a range ``LO:HI`` (``LO:HI:STEPS`` for a grid).

Candidates are the baseline (always candidate 0, the policy as given) plus the grid's full product
or ``budget`` seeded random samples. Every candidate is validated through the policy registry before
anything runs; each candidate × scenario × seed is one simulation of the compare machinery
(:func:`~gpuscale.experiments.runner.run_grid`), aggregated over seeds by
:func:`~gpuscale.experiments.compare.aggregate`.

The winner is the cheapest candidate whose mean attainment over seeds meets the target on every
scenario; cost is the compare's headline cost (the node bill where the scenario has a node layer,
else GPU-hours × price), summed over scenarios; ties go to fewer GPU-hours, then to the earlier
candidate. When none meets the target, the winner is the candidate with the highest worst-scenario
attainment, and the result says so. There is no oracle here: savings are stated against the baseline.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import yaml

from gpuscale._core.errors import MISSING, ConfigError, ConfigErrors
from gpuscale._core.rng import generator
from gpuscale.experiments.checkpoint import RunStore
from gpuscale.experiments.compare import PolicyRow, aggregate, pareto_front
from gpuscale.experiments.runner import Job, RunKey, RunOutcome, TaskPool, run_grid

Method = Literal["grid", "random", "tpe"]
METHODS: tuple[str, ...] = ("tpe", "grid", "random")
Scalar = bool | int | float | str | None
Progress = Callable[[int, int], None]
"""Called with (simulations done, total)."""

RANDOM_DIGITS = 4
"""Significant digits kept of a value drawn from a float range: tuning finer than 0.1 % of a setting
is below the noise of a few seeds, and short numbers keep the tables and the tuned YAML readable."""

MAX_DRAWS_PER_SAMPLE = 20
"""Random search stops after ``budget × 20`` draws when the space has fewer distinct points than the
budget (e.g. two parameters of three values each and a budget of 50)."""


# -- parameters ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One ``--param KEY=SPEC``: a list of values, or a numeric range (with grid steps or not)."""

    text: str
    key: str
    values: tuple[Scalar, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    steps: int | None = None

    @property
    def source(self) -> str:
        return f"--param {self.text}"

    @property
    def is_int_range(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def grid_values(self) -> tuple[Scalar, ...]:
        """The values a grid takes: the list, or ``steps`` evenly spaced points of the range."""
        if self.values is not None:
            return self.values
        if self.steps is None or self.low is None or self.high is None:
            raise ConfigError(
                self.source, self.key, f"{self.low}:{self.high}", "a grid needs a list (A,B,C) or LO:HI:STEPS"
            )
        points = np.linspace(float(self.low), float(self.high), self.steps)
        if self.is_int_range:
            # 1:10:4 -> 1, 4, 7, 10; 1:4:3 would give 2.5, rounded to the nearest integer setting
            return tuple(dict.fromkeys(round(float(p)) for p in points))
        return tuple(dict.fromkeys(float(f"{float(p):.10g}") for p in points))

    def draw(self, rng: np.random.Generator) -> Scalar:
        """One random value: a list item, an integer of the range (both ends included), or a float."""
        if self.values is not None:
            return self.values[int(rng.integers(len(self.values)))]
        assert self.low is not None and self.high is not None
        if self.is_int_range:
            return int(rng.integers(int(self.low), int(self.high) + 1))
        x = float(f"{float(rng.uniform(float(self.low), float(self.high))):.{RANDOM_DIGITS}g}")
        return min(max(x, float(self.low)), float(self.high))


def parse_scalar(text: str) -> Scalar:
    """``60`` -> 60, ``0.5`` -> 0.5, ``true`` -> True, ``null`` -> None, anything else as text."""
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        x = float(t)
    except ValueError:
        pass
    else:
        if math.isfinite(x):
            return x
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    return t


_FORMS = "expected KEY=A,B,C (a list), KEY=LO:HI (a range) or KEY=LO:HI:STEPS (a grid range)"


def parse_param(text: str) -> ParamSpec:
    """Parse ``KEY=SPEC``; ConfigError naming the option and the accepted forms otherwise."""
    source = f"--param {text}"
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise ConfigError(source, None, text, _FORMS)
    if any(not part for part in key.split(".")) or any(c.isspace() for c in key):
        raise ConfigError(source, key, text, "KEY is a dotted path such as metrics.0.target.average_value")
    if ":" in spec:
        if "," in spec:
            raise ConfigError(source, key, spec, f"a list or a range, not both; {_FORMS}")
        ends = [parse_scalar(p) for p in spec.split(":")]
        if len(ends) not in (2, 3) or not all(
            isinstance(e, int | float) and not isinstance(e, bool) for e in ends[:2]
        ):
            raise ConfigError(source, key, spec, f"a range is two numbers LO:HI; {_FORMS}")
        low, high = ends[0], ends[1]
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if not low < high:
            raise ConfigError(source, key, spec, "a range needs LO < HI")
        steps: int | None = None
        if len(ends) == 3:
            if not isinstance(ends[2], int) or isinstance(ends[2], bool) or ends[2] < 2:
                raise ConfigError(source, key, spec, "STEPS in LO:HI:STEPS is an integer >= 2")
            steps = ends[2]
        return ParamSpec(text, key, None, low, high, steps)
    items = [p.strip() for p in spec.split(",")]
    if any(not p for p in items):
        raise ConfigError(source, key, spec, f"an empty item in the list; {_FORMS}")
    values = tuple(dict.fromkeys(parse_scalar(p) for p in items))
    return ParamSpec(text, key, values)


# -- dotted paths ---------------------------------------------------------------------------------------
def schema_path(key: str) -> str:
    """``metrics.0.target.type`` -> ``metrics[].target.type`` (the form ``describe_kind`` lists)."""
    return re.sub(r"\.\[\]", "[]", ".".join("[]" if part.isdigit() else part for part in key.split(".")))


def check_key(kind: str, key: str, source: str, value: object) -> None:
    """ConfigError when ``key`` names no parameter of ``kind``, listing those allowed at that level."""
    from gpuscale.policies import registry

    names = [p.name for p in registry.describe_kind(kind)]
    path = schema_path(key)
    if path in names:
        return
    # a setting whose own type is a free mapping (no nested parameters listed) takes any sub-key
    for i in range(len(path)):
        prefix = path[:i]
        if (
            path[i] in ".["
            and prefix in names
            and not any(n.startswith((prefix + ".", prefix + "[]")) for n in names)
        ):
            return
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    level = [n for n in names if (n.rsplit(".", 1)[0] if "." in n else "") == parent and n != "kind"]
    allowed = ", ".join(level) if level else ", ".join(n for n in names if "." not in n and n != "kind")
    raise ConfigError(source, key, value, f"not a parameter of kind {kind}; allowed: {allowed}")


def get_path(data: Any, key: str) -> Any:
    """The value at dotted ``key`` in nested mappings and lists; :data:`MISSING` where there is none."""
    node = data
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def set_path(data: Mapping[str, Any], key: str, value: Any, source: str = "--param") -> dict[str, Any]:
    """A deep copy of ``data`` with ``value`` at dotted ``key``.

    Missing (or null) mappings on the way are created, so ``behavior.scale_down.stabilization_window_s``
    works on a policy that leaves ``behavior`` to its defaults; list items must exist
    (``metrics.1`` on a one-metric policy is an error: there is no second metric to tune).
    """
    root: dict[str, Any] = copy.deepcopy(dict(data))
    parts = key.split(".")
    node: Any = root
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(walked) or "the policy"
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(
                    source, key, value, f"{here} is a list; expected an index 0..{len(node) - 1}"
                )
            index = int(part)
            if index >= len(node):
                allowed = f"0..{len(node) - 1}" if node else "none (the list is empty)"
                raise ConfigError(
                    source,
                    key,
                    value,
                    f"{here} has {len(node)} item(s); index {index} out of range, allowed: {allowed}",
                )
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = {}
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    if parts[i + 1].isdigit():
                        raise ConfigError(
                            source,
                            key,
                            value,
                            f"{'.'.join([*walked, part])} is not set in the policy; set the list there first",
                        )
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(source, key, value, f"{here} is a value ({node!r}), not a mapping or a list")
        walked.append(part)
    return root


# -- the baseline and the candidates ----------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """The policy as given: its label, its config mapping as written, and its kind."""

    label: str
    config: dict[str, Any]
    kind: str


def load_baseline(spec: str) -> Baseline:
    """A preset name or a policy file, as its raw mapping (validated once here)."""
    from gpuscale.policies import registry

    resolved = registry.resolve_policy(spec, key=None, source="--policy")
    data, source, label = resolved.data, resolved.source, resolved.label
    config = resolved.config()
    mapping = dict(data)
    if "name" in registry.config_class(config.kind).model_fields and mapping.get("name") is None:
        mapping["name"] = label
    registry.load_policy(mapping, source)
    return Baseline(label, mapping, config.kind)


@dataclass(frozen=True)
class Candidate:
    index: int
    label: str
    overrides: dict[str, Scalar]
    """Parameter key → value; empty for the baseline."""
    config: dict[str, Any]


def _validate(config: Mapping[str, Any], source: str, key: str | None, value: object) -> None:
    """Build the policy from ``config``; its ConfigError re-raised naming ``source`` and ``key``."""
    from gpuscale.policies import registry

    try:
        registry.load_policy(dict(config), source)
    except ConfigError as exc:
        problems = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        allowed = "; ".join(
            p.allowed
            + (f" (at {p.key})" if p.key and key and schema_path(key) != schema_path(_dotted(p.key)) else "")
            for p in problems
        )
        raise ConfigError(source, key, value, f"rejected by the policy: {allowed}") from None


def _dotted(key: str) -> str:
    """``metrics[0].target`` (how validation errors name keys) -> ``metrics.0.target``."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


def check_params(baseline: Baseline, params: Sequence[ParamSpec]) -> None:
    """Every key is a parameter of the kind, appears once, and every value (or range end) is accepted."""
    seen: set[str] = set()
    for p in params:
        if p.key in seen:
            raise ConfigError(p.source, p.key, p.text, "this key is given by another --param already")
        seen.add(p.key)
        check_key(baseline.kind, p.key, p.source, p.text.partition("=")[2].strip())
        probes: tuple[Scalar, ...] = p.values if p.values is not None else (p.low, p.high)
        for v in probes:
            _validate(set_path(baseline.config, p.key, v, p.source), p.source, p.key, v)


def grid_points(params: Sequence[ParamSpec], budget: int) -> list[dict[str, Scalar]]:
    """The full product of every parameter's grid values, first parameter varying slowest."""
    axes = [p.grid_values() for p in params]
    size = math.prod(len(a) for a in axes)
    if size > budget:
        shape = " × ".join(str(len(a)) for a in axes)
        raise ConfigError(
            "--budget",
            None,
            budget,
            f"the grid has {shape} = {size} candidates; allowed: at most the budget "
            "(raise --budget, use fewer values, or --method random)",
        )
    return [dict(zip((p.key for p in params), combo, strict=True)) for combo in itertools.product(*axes)]


def random_points(params: Sequence[ParamSpec], budget: int, seed: int) -> list[dict[str, Scalar]]:
    """``budget`` distinct random points from the stream ``tune`` of ``seed`` (fewer if the space is smaller)."""
    rng = generator(seed, "tune")
    points: list[dict[str, Scalar]] = []
    seen: set[str] = set()
    for _ in range(budget * MAX_DRAWS_PER_SAMPLE):
        if len(points) >= budget:
            break
        point = {p.key: p.draw(rng) for p in params}
        ident = json.dumps(point)
        if ident not in seen:
            seen.add(ident)
            points.append(point)
    return points


def make_candidates(
    baseline: Baseline, params: Sequence[ParamSpec], method: Method, budget: int, seed: int
) -> list[Candidate]:
    """The baseline, then every point of the search, each validated through the policy registry."""
    check_params(baseline, params)
    points = grid_points(params, budget) if method == "grid" else random_points(params, budget, seed)
    width = max(3, len(str(len(points))))
    out = [Candidate(0, "baseline", {}, baseline.config)]
    for i, point in enumerate(points, start=1):
        config: dict[str, Any] = baseline.config
        for key, value in point.items():
            config = set_path(config, key, value)
        shown = ", ".join(f"{k}={v}" for k, v in point.items())
        _validate(config, f"--param candidate ({shown})", None, MISSING)
        out.append(Candidate(i, f"c{i:0{width}d}", point, config))
    return out


# -- running and choosing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScenarioScore:
    """One candidate on one scenario: means over seeds."""

    slo_attainment: float | None
    latency_p95_ms: float | None
    gpu_hours: float | None
    cost_usd: float | None
    meets_slo: bool
    failed: int
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    scenarios: dict[str, ScenarioScore]
    meets_slo: bool
    """Meets the target on every scenario (and no run failed)."""
    worst_attainment: float | None
    cost_usd: float | None
    """Summed over scenarios; None if a run failed."""
    gpu_hours: float | None
    rank: int = 0


@dataclass(frozen=True)
class TuneResult:
    policy: str
    kind: str
    scenarios: list[str]
    seeds: list[int]
    slo_target: float
    method: Method
    budget: int
    seed: int
    params: list[ParamSpec]
    candidates: list[Scored]
    """In candidate order, the baseline first."""
    winner: Scored
    runs: list[RunOutcome] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)
    """tpe: candidate label → runs it skipped once it could no longer meet the target."""
    trials: int = 0
    """tpe: trials asked of the sampler (a repeated proposal is one candidate)."""
    objectives: tuple[str, ...] = ()
    """Multi-objective search: ``attainment`` and ``gpu_hours`` or ``cost``; empty for one objective."""
    front: list[str] = field(default_factory=list)
    """Multi-objective: labels of the candidates on the Pareto front, in candidate order."""

    @property
    def runs_saved(self) -> int:
        return sum(self.pruned.values())

    @property
    def baseline(self) -> Scored:
        return self.candidates[0]

    @property
    def ranked(self) -> list[Scored]:
        return sorted(self.candidates, key=lambda s: s.rank)

    @property
    def found(self) -> bool:
        """Whether the winner meets the target (else it is the best worst-case fallback)."""
        return self.winner.meets_slo


def _score(candidate: Candidate, rows: Sequence[PolicyRow], scenarios: Sequence[str]) -> Scored:
    by_scenario = {row.scenario: row for row in rows}
    scores: dict[str, ScenarioScore] = {}
    for name in scenarios:
        row = by_scenario.get(name)
        if row is None:  # not reached: every candidate runs on every scenario
            scores[name] = ScenarioScore(None, None, None, None, False, 0, ())
            continue
        e = row.estimates
        scores[name] = ScenarioScore(
            e["slo_attainment"].mean,
            e["latency_p95_ms"].mean,
            e["gpu_hours"].mean,
            e["cost_usd"].mean,
            row.meets_slo and row.failed == 0,
            row.failed,
            row.errors,
        )
    values = list(scores.values())
    ok = all(s.failed == 0 and s.slo_attainment is not None for s in values)
    atts = [s.slo_attainment for s in values if s.slo_attainment is not None]
    return Scored(
        candidate,
        scores,
        meets_slo=ok and all(s.meets_slo for s in values),
        worst_attainment=min(atts) if ok and atts else None,
        cost_usd=sum(s.cost_usd or 0.0 for s in values) if ok else None,
        gpu_hours=sum(s.gpu_hours or 0.0 for s in values) if ok else None,
    )


def rank_key(s: Scored) -> tuple[int, float, float, int]:
    """Meeting the target first, cheapest first (then fewer GPU-hours, then candidate order); then the
    others by worst-scenario attainment, highest first (then cheapest); failed candidates last."""
    if s.meets_slo:
        return (0, s.cost_usd or 0.0, s.gpu_hours or 0.0, s.candidate.index)
    if s.worst_attainment is not None:
        return (1, -s.worst_attainment, s.cost_usd or 0.0, s.candidate.index)
    return (2, 0.0, 0.0, s.candidate.index)


def choose(scored: Sequence[Scored]) -> list[Scored]:
    """``scored`` in candidate order with ``rank`` set (1 = the winner)."""
    order = sorted(scored, key=rank_key)
    ranks = {s.candidate.index: i + 1 for i, s in enumerate(order)}
    return [
        Scored(
            s.candidate,
            s.scenarios,
            s.meets_slo,
            s.worst_attainment,
            s.cost_usd,
            s.gpu_hours,
            ranks[s.candidate.index],
        )
        for s in scored
    ]


def _check_search(params: Sequence[ParamSpec], budget: int, slo_target: float) -> None:
    """The search's own settings (the CLI names them --param, --budget, --slo-target)."""
    if not params:
        raise ConfigError("--param", None, MISSING, "required: at least one KEY=SPEC to tune")
    if budget < 1:
        raise ConfigError("--budget", None, budget, "an integer >= 1")
    if not 0 < slo_target <= 1:
        raise ConfigError("--slo-target", None, slo_target, "a share in (0, 1], e.g. 0.99")


def check_tune_input(
    policy: str,
    scenarios: Sequence[str],
    params: Sequence[ParamSpec],
    method: Method | str,
    budget: int,
    slo_target: float,
    seed: int,
) -> list[Candidate]:
    """What :func:`run_tune` checks before any simulation runs; ConfigError on bad input."""
    from gpuscale.experiments.catalog import resolve_scenario

    _check_search(params, budget, slo_target)
    for spec in scenarios:
        resolve_scenario(spec)
    baseline = load_baseline(policy)
    if method == "tpe":
        check_params(baseline, params)
        return [Candidate(0, "baseline", {}, baseline.config)]
    return make_candidates(baseline, params, "grid" if method == "grid" else "random", budget, seed)


OBJECTIVES = ("attainment", "gpu_hours", "cost")


def parse_objectives(text: str) -> tuple[str, ...]:
    """``attainment,gpu_hours`` or ``attainment,cost`` (either order); ConfigError otherwise."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if len(names) != 2 or "attainment" not in names or not set(names) <= set(OBJECTIVES):
        raise ConfigError(
            "--objectives",
            None,
            text,
            "two objectives: attainment (worst-scenario SLO attainment, maximized) and gpu_hours or cost "
            "(summed over scenarios, minimized), e.g. attainment,gpu_hours",
        )
    return names


def pareto_labels(scored: Sequence[Scored], objectives: Sequence[str]) -> list[str]:
    """Candidates no other beats on both objectives (attainment at the compare's 0.01-point
    resolution), in candidate order; failed ones are not on it."""
    other = next(o for o in objectives if o != "attainment")
    valid = [
        s
        for s in scored
        if s.worst_attainment is not None
        and (s.gpu_hours if other == "gpu_hours" else s.cost_usd) is not None
    ]
    points = [
        ((s.gpu_hours if other == "gpu_hours" else s.cost_usd) or 0.0, s.worst_attainment or 0.0)
        for s in valid
    ]
    return [s.candidate.label for s, on in zip(valid, pareto_front(points), strict=True) if on]


def search_definition(
    policy: str,
    scenarios: Sequence[str],
    params: Sequence[ParamSpec],
    seeds: Sequence[int],
    method: str,
    budget: int,
    slo_target: float,
    seed: int,
    prune: bool,
    objectives: Sequence[str],
) -> dict[str, Any]:
    """What decides a search's trials, as kept in its study (user attr ``gpuscale:search``): the
    policy and scenarios (with digests of their files' contents), seeds, params, method and sampler,
    seed, target, pruning, objectives and the code version. A tpe search leaves its budget out, so the
    same search with a larger ``--budget`` goes on from the trials it has."""
    import hashlib

    from gpuscale.experiments.checkpoint import _spec_text, code_version

    def digest(spec: str) -> str:
        return hashlib.sha256(_spec_text(spec).encode()).hexdigest()[:16]

    sampler = ("nsga2" if objectives else "tpe") if method == "tpe" else method
    out: dict[str, Any] = {
        "policy": policy,
        "policy_digest": digest(policy),
        "scenarios": list(scenarios),
        "scenario_digests": [digest(s) for s in scenarios],
        "seeds": list(seeds),
        "params": [p.text for p in params],
        "method": method,
        "sampler": sampler,
        "seed": seed,
        "slo_target": slo_target,
        "prune": prune and method == "tpe" and not objectives,
        "objectives": list(objectives),
        "code_version": code_version(),
    }
    if method != "tpe":
        out["budget"] = budget
    return out


def run_tune(
    policy: str,
    scenarios: Sequence[str],
    params: Sequence[ParamSpec],
    *,
    seeds: Sequence[int],
    method: Method = "grid",
    budget: int = 50,
    slo_target: float = 0.99,
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
    pool: TaskPool | None = None,
    store: RunStore | None = None,
    prune: bool = True,
    objectives: Sequence[str] = (),
    storage: str | None = None,
    study_name: str | None = None,
) -> TuneResult:
    """Validate every candidate, run candidate × scenario × seed (on ``pool``, a Ray cluster, if given),
    score and rank; deterministic for the same inputs whatever ``workers`` is or wherever it runs. Bad
    input raises ConfigError before any simulation runs. With a ``store``, finished runs are kept there
    and those already there are not run again (a candidate is its settings, so a resumed search
    re-runs nothing it finished).

    With a ``storage`` (``sqlite:///PATH`` or ``journal:///PATH``) the search is an Optuna study kept
    there under ``study_name`` (default: named by a digest of :func:`search_definition`): running the
    same search again resumes it, and several processes running it share its trials (see
    :mod:`gpuscale.experiments.study`)."""
    from gpuscale.experiments.catalog import resolve_scenario

    _check_search(params, budget, slo_target)
    if objectives and method != "tpe":
        raise ConfigError(
            "--objectives", None, ",".join(objectives), "a multi-objective search is --method tpe"
        )
    names = {spec: resolve_scenario(spec).scenario.name for spec in scenarios}
    baseline = load_baseline(policy)
    scenario_names = list(dict.fromkeys(names.values()))
    pruned: dict[str, int] = {}
    trials = 0
    if method == "tpe" or storage is not None:
        from gpuscale.experiments.runner import ProcessPool
        from gpuscale.experiments.study import run_tpe

        def score(
            c: Candidate, runs: Sequence[RunOutcome]
        ) -> tuple[bool, float | None, float | None, float | None]:
            s = _score(c, aggregate(runs, {}, slo_target), scenario_names)
            return s.meets_slo, s.worst_attainment, s.cost_usd, s.gpu_hours

        fixed = None if method == "tpe" else make_candidates(baseline, params, method, budget, seed)
        definition = search_definition(
            policy, scenarios, params, seeds, method, budget, slo_target, seed, prune, objectives
        )
        local = ProcessPool(workers) if pool is None and workers > 1 else None
        try:
            search = run_tpe(
                baseline,
                params,
                list(scenarios),
                names,
                list(seeds),
                budget=budget,
                seed=seed,
                slo_target=slo_target,
                prune=prune,
                workers=workers,
                pool=pool if pool is not None else local,
                store=store,
                progress=progress,
                score=score,
                objectives=objectives,
                storage=storage,
                study_name=study_name,
                search=definition,
                fixed=fixed,
            )
        finally:
            if local is not None:
                local.__exit__()
        candidates, runs, pruned = search.candidates, search.runs, search.pruned
        trials = search.trials if method == "tpe" else 0
        runs = sorted(runs, key=lambda o: o.key)
    else:
        candidates = make_candidates(baseline, params, method, budget, seed)
        jobs = [
            Job(RunKey(names[spec], c.label, s), spec, c.config)
            for c in candidates
            for spec in scenarios
            for s in seeds
        ]
        done = 0

        def tick(_: RunOutcome) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, len(jobs))

        runs = run_grid(jobs, workers, tick, pool, store)
    rows = aggregate(runs, {}, slo_target)
    first = [_score(c, [r for r in rows if r.policy == c.label], scenario_names) for c in candidates]
    # a pruned candidate ran part of its scenarios and seeds only: it ranks with the failed ones
    first = [
        Scored(s.candidate, s.scenarios, False, None, None, None) if s.candidate.label in pruned else s
        for s in first
    ]
    scored = choose(first)
    winner = min(scored, key=lambda s: s.rank)
    front = pareto_labels(scored, objectives) if objectives else []
    return TuneResult(
        policy=baseline.label,
        kind=baseline.kind,
        scenarios=scenario_names,
        seeds=list(seeds),
        slo_target=slo_target,
        method=method,
        budget=budget,
        seed=seed,
        params=list(params),
        candidates=scored,
        winner=winner,
        runs=runs,
        pruned=pruned,
        trials=trials,
        objectives=tuple(objectives),
        front=front,
    )


# -- output ------------------------------------------------------------------------------------------------
def baseline_value(result: TuneResult, key: str) -> Scalar | None:
    """What the baseline sets at ``key`` (None: the kind's default applies)."""
    value = get_path(result.baseline.candidate.config, key)
    return None if value is MISSING or isinstance(value, dict | list) else value


def param_values(result: TuneResult, scored: Scored) -> dict[str, Scalar | None]:
    """The tuned keys' values of one candidate (the baseline's own where it is the baseline)."""
    return {
        p.key: scored.candidate.overrides[p.key]
        if p.key in scored.candidate.overrides
        else baseline_value(result, p.key)
        for p in result.params
    }


def saving_usd(result: TuneResult, scored: Scored) -> float | None:
    """The baseline's cost minus this candidate's (positive: cheaper than the baseline)."""
    if scored.cost_usd is None or result.baseline.cost_usd is None:
        return None
    return result.baseline.cost_usd - scored.cost_usd


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def tuned_policy_yaml(result: TuneResult) -> str:
    """The winner's full policy config, loadable by ``gpuscale simulate -p``; a comment says how it won."""
    from gpuscale.policies import registry

    w = result.winner
    config = dict(w.candidate.config)
    if "name" in registry.config_class(result.kind).model_fields and w.candidate.index != 0:
        config["name"] = f"{config.get('name') or result.policy}-tuned"
    chosen = ", ".join(f"{k}={v}" for k, v in param_values(result, w).items())
    verdict = (
        f"meets {100 * result.slo_target:g} % on every scenario"
        if w.meets_slo
        else f"NO candidate meets {100 * result.slo_target:g} %; best worst-scenario attainment"
        f" {100 * (w.worst_attainment or 0.0):.2f} %"
    )
    header = [
        f"# gpuscale tune: {result.policy} ({result.kind}) on {', '.join(result.scenarios)}, "
        f"seeds {','.join(map(str, result.seeds))}, {result.method} search",
        f"# {w.candidate.label}: {chosen}",
        f"# {verdict}; cost ${w.cost_usd or 0.0:.4f} vs baseline ${result.baseline.cost_usd or 0.0:.4f}"
        if w.cost_usd is not None
        else f"# {verdict}",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


_METRIC_COLUMNS = ("slo_attainment", "latency_p95_ms", "gpu_hours", "cost_usd", "meets_slo")


def candidates_csv(result: TuneResult) -> str:
    """One row per candidate, in candidate order; per-scenario columns are ``METRIC[scenario]``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = [p.key for p in result.params]
    header = [
        "candidate",
        "rank",
        "meets_slo",
        *keys,
        "cost_usd",
        "gpu_hours",
        "worst_slo_attainment",
        "saving_usd",
    ]
    for name in result.scenarios:
        header += [f"{m}[{name}]" for m in _METRIC_COLUMNS]
    header.append("errors")
    if result.objectives:
        header.append("pareto")
    w.writerow(header)

    def cell(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else ""
        return str(v)

    for s in result.candidates:
        values = param_values(result, s)
        row: list[object] = [s.candidate.label, s.rank, s.meets_slo, *(values[k] for k in keys)]
        row += [s.cost_usd, s.gpu_hours, s.worst_attainment, saving_usd(result, s)]
        errors: list[str] = []
        for name in result.scenarios:
            sc = s.scenarios[name]
            row += [sc.slo_attainment, sc.latency_p95_ms, sc.gpu_hours, sc.cost_usd, sc.meets_slo]
            errors += sc.errors
        if s.candidate.label in result.pruned:
            errors.insert(0, f"pruned: {result.pruned[s.candidate.label]} runs skipped")
        row.append(" | ".join(dict.fromkeys(errors)))
        if result.objectives:
            row.append(s.candidate.label in result.front)
        w.writerow([cell(v) for v in row])
    return buf.getvalue()


def candidates_json(result: TuneResult) -> str:
    def scored_dict(s: Scored) -> dict[str, Any]:
        return {
            "candidate": s.candidate.label,
            "index": s.candidate.index,
            "rank": s.rank,
            "params": param_values(result, s),
            "meets_slo": s.meets_slo,
            "cost_usd": _num(s.cost_usd),
            "gpu_hours": _num(s.gpu_hours),
            "worst_slo_attainment": _num(s.worst_attainment),
            "saving_usd": _num(saving_usd(result, s)),
            "scenarios": {
                name: {
                    "slo_attainment": _num(sc.slo_attainment),
                    "latency_p95_ms": _num(sc.latency_p95_ms),
                    "gpu_hours": _num(sc.gpu_hours),
                    "cost_usd": _num(sc.cost_usd),
                    "meets_slo": sc.meets_slo,
                    "failed_runs": sc.failed,
                    "errors": list(sc.errors),
                }
                for name, sc in s.scenarios.items()
            },
        }

    doc: dict[str, Any] = {
        "policy": result.policy,
        "kind": result.kind,
        "scenarios": result.scenarios,
        "seeds": result.seeds,
        "slo_target": result.slo_target,
        "method": result.method,
        "budget": result.budget,
        "seed": result.seed,
        "params": [{"key": p.key, "spec": p.text.partition("=")[2].strip()} for p in result.params],
        "winner": result.winner.candidate.label,
        "winner_meets_slo": result.found,
        "candidates": [scored_dict(s) for s in result.candidates],
    }
    if result.objectives:
        doc["objectives"] = list(result.objectives)
        doc["pareto_front"] = result.front
        for entry in doc["candidates"]:
            entry["pareto"] = entry["candidate"] in result.front
    if result.method == "tpe":
        doc["trials"] = result.trials
        doc["runs_saved_by_pruning"] = result.runs_saved
        for entry in doc["candidates"]:
            entry["pruned_runs_skipped"] = result.pruned.get(entry["candidate"])
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def tune_files(result: TuneResult) -> dict[str, str]:
    """The output folder's files: the same inputs give the same bytes. A multi-objective search adds
    report.html with its Pareto front."""
    files = {
        "tuned-policy.yaml": tuned_policy_yaml(result),
        "candidates.csv": candidates_csv(result),
        "candidates.json": candidates_json(result),
    }
    if result.objectives:
        from gpuscale.experiments.report import tune_report_html

        files["report.html"] = tune_report_html(result)
    return files
