"""Check a policy against the contract every gpuscale policy keeps (Gymnasium's ``check_env``, for
autoscalers)::

    from gpuscale.policies.conformance import check_policy
    check_policy(my_policy)          # raises PolicyContractError naming the rule it broke

The rules, by name (the name starts the error message):

=====================  ==========================================================================
rule                   what it asks
=====================  ==========================================================================
``declares``           a non-empty ``name``; ``signals`` a tuple of distinct SignalSpecs;
                       ``signal_keys`` only for declared signals; ``sync_period_s`` and
                       ``max_signal_age_s`` None or > 0; ``replica_bounds`` ``(min >= 0, max >= min
                       or None)``; ``initial_replicas`` None or within the bounds
``returns``            ``decide`` returns ``(Decision, state)`` with a :class:`Reason`
``bounds``             every non-hold decision within ``replica_bounds``
``no-data``            with every declared signal missing (or none collected), a hold ``NoData``
``stale-data``         with every declared signal older than ``max_signal_age_s``, a hold
                       ``StaleData``
``reads-clock``        ``decide`` reads no clock (time, datetime); time comes in the snapshot
``draws-randomness``   ``decide`` draws no randomness (random, numpy.random)
``deterministic``      the same snapshots and state give the same decisions and state
``mutates-state``      ``decide`` leaves its input state as it was
``immutable-state``    the state is built of frozen values (no list, dict, set, writeable array, or
                       non-frozen object), and survives ``deepcopy`` and ``pickle`` unchanged
=====================  ==========================================================================

The snapshots are generated from a seed: a load that rises and falls with noise, scrape gaps, per-pod
samples, some pods not ready; the target applies each decision at once.

This module is a test harness: it patches the clock and the random generators while ``decide`` runs,
and draws its snapshots from a seeded generator of its own; the policies it checks may do neither.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import enum
import math
import pickle
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import numpy as np

from gpuscale.policies.base import (
    LATENCY_METRICS,
    TOKEN_LATENCY_METRICS,
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    PodSample,
    Policy,
    Reason,
    SignalSpec,
    SignalValue,
)

RULES = (
    "declares",
    "returns",
    "bounds",
    "no-data",
    "stale-data",
    "reads-clock",
    "draws-randomness",
    "deterministic",
    "mutates-state",
    "immutable-state",
)


class PolicyContractError(AssertionError):
    """A policy broke rule ``rule`` of the contract (see the module doc)."""

    def __init__(self, rule: str, policy: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"{rule}: policy {policy!r}: {detail}")


_RANGES: dict[Metric, tuple[float, float]] = {
    Metric.GPU_UTIL: (0, 100),
    Metric.GPU_MEMORY_UTIL: (0, 100),
    Metric.GPU_MEMORY_USED_GB: (0, 80),
    Metric.CPU_UTIL: (0, 150),
    Metric.CONCURRENCY: (0, 300),
    Metric.QUEUE_LENGTH: (0, 80),
    Metric.REQUEST_RATE: (0, 600),
    Metric.LATENCY_P50_MS: (5, 800),
    Metric.LATENCY_P95_MS: (10, 1500),
    Metric.LATENCY_P99_MS: (10, 3000),
    Metric.KV_CACHE_USAGE: (0, 1),
    Metric.REQUESTS_RUNNING: (0, 256),
    Metric.REQUESTS_WAITING: (0, 40),
    Metric.PROMPT_TOKENS_RATE: (0, 20000),
    Metric.GENERATION_TOKENS_RATE: (0, 5000),
    Metric.PREEMPTION_RATE: (0, 5),
    Metric.SM_ACTIVE: (0, 1),
    Metric.SM_OCCUPANCY: (0, 1),
    Metric.DRAM_ACTIVE: (0, 1),
    Metric.TTFT_P50_MS: (20, 2000),
    Metric.TTFT_P95_MS: (40, 4000),
    Metric.TTFT_P99_MS: (50, 6000),
    Metric.ITL_P50_MS: (5, 100),
    Metric.ITL_P95_MS: (8, 200),
    Metric.ITL_P99_MS: (10, 300),
}


def _start_count(policy: Policy[Any]) -> int:
    lo, hi = policy.replica_bounds
    n = max(lo, 2)
    return n if hi is None else min(n, hi)


def _period(policy: Policy[Any]) -> float:
    return policy.sync_period_s or 15.0


def signal_value(spec: SignalSpec, rng: random.Random, ready: int, phase: float) -> SignalValue:
    """A plausible value of ``spec``: a load that rises and falls with ``phase``, noise, 5 % gaps,
    per-pod samples for half the per-pod means."""
    low, high = _RANGES[spec.metric]
    level = low + (high - low) * (0.5 + 0.45 * math.sin(phase)) * rng.uniform(0.7, 1.3)
    level = min(max(level, low), high * 1.3)
    if rng.random() < 0.05:
        return SignalValue.missing("scrape gap")
    if (
        spec.aggregation is Aggregation.POD_MEAN
        and spec.metric not in LATENCY_METRICS | TOKEN_LATENCY_METRICS
        and ready > 0
        and rng.random() < 0.5
    ):
        samples = tuple(
            PodSample(
                f"pod-{i}",
                None if rng.random() < 0.1 else max(0.0, level * rng.uniform(0.5, 1.5)),
                ready=rng.random() < 0.9,
                running=True,
                ready_for_s=rng.uniform(0, 900),
            )
            for i in range(ready)
        )
        values = [s.value for s in samples if s.value is not None]
        mean = sum(values) / len(values) if values else None
        return SignalValue(mean, age_s=rng.uniform(0, 5), per_pod=samples)
    if spec.aggregation is Aggregation.TOTAL and spec.metric not in LATENCY_METRICS | TOKEN_LATENCY_METRICS:
        level *= max(ready, 1)
    return SignalValue(level, age_s=rng.uniform(0, 5))


def drive(
    policy: Policy[Any], seed: int, ticks: int = 150, *, check: Callable[[Any], None] | None = None
) -> tuple[list[Decision], Any]:
    """Run ``policy`` through ``ticks`` generated snapshots (the target applies each decision at
    once); ``check`` sees every state before it is used. Raises on a mutated input state."""
    rng = random.Random(seed)
    state = policy.initial_state()
    current = _start_count(policy)
    decisions: list[Decision] = []
    for k in range(ticks):
        if check is not None:
            check(state)
        ready = current if rng.random() < 0.8 else max(0, current - 1)
        signals = {s: signal_value(s, rng, ready, k / 20.0) for s in policy.signals}
        snap = MetricsSnapshot(
            time_s=1000.0 + k * _period(policy),
            current_replicas=current,
            ready=ready,
            starting=current - ready,
            signals=signals,
        )
        before = copy.deepcopy(state)
        out = policy.decide(snap, state)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Decision)):
            raise PolicyContractError("returns", policy.name, f"decide returned {out!r:.200}")
        decision, new_state = out
        if not isinstance(decision.reason, Reason):
            raise PolicyContractError("returns", policy.name, f"reason {decision.reason!r} is not a Reason")
        if state != before:
            raise PolicyContractError(
                "mutates-state", policy.name, f"decide changed its input state at t={snap.time_s:g}"
            )
        decisions.append(decision)
        state = new_state
        if decision.desired_replicas is not None:
            current = decision.desired_replicas
    return decisions, state


class _Forbidden(Exception):
    def __init__(self, rule: str, what: str) -> None:
        self.rule = rule
        super().__init__(what)


@contextlib.contextmanager
def no_clock_no_randomness() -> Iterator[None]:
    """While inside, reading a clock or drawing randomness raises (an error naming which)."""

    def clock(name: str) -> Callable[..., Any]:
        def boom(*_: Any, **__: Any) -> Any:
            raise _Forbidden("reads-clock", name)

        return boom

    def rand(name: str) -> Callable[..., Any]:
        def boom(*_: Any, **__: Any) -> Any:
            raise _Forbidden("draws-randomness", name)

        return boom

    class NoClockDatetime(datetime.datetime):
        now = classmethod(clock("datetime.now"))
        utcnow = classmethod(clock("datetime.utcnow"))
        today = classmethod(clock("datetime.today"))

    class NoClockDate(datetime.date):
        today = classmethod(clock("date.today"))

    clocks = (
        "time",
        "time_ns",
        "monotonic",
        "monotonic_ns",
        "perf_counter",
        "perf_counter_ns",
        "process_time",
    )
    randoms = ("random", "uniform", "randint", "randrange", "choice", "choices", "shuffle", "gauss", "sample")
    np_randoms = (
        "default_rng",
        "random",
        "rand",
        "randn",
        "randint",
        "normal",
        "uniform",
        "poisson",
        "choice",
    )
    patches: list[Any] = [
        *(mock.patch.object(time, n, clock(f"time.{n}")) for n in clocks),
        mock.patch.object(datetime, "datetime", NoClockDatetime),
        mock.patch.object(datetime, "date", NoClockDate),
        *(mock.patch.object(random, n, rand(f"random.{n}")) for n in randoms),
        *(mock.patch.object(np.random, n, rand(f"numpy.random.{n}")) for n in np_randoms),
    ]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def immutable_problem(value: Any, path: str = "state") -> str | None:
    """Why ``value`` is not built of frozen values, or None when it is."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum)):
        return None
    if isinstance(value, (tuple, frozenset)):
        for i, item in enumerate(value):
            problem = immutable_problem(item, f"{path}[{i}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, np.ndarray):
        return None if not value.flags.writeable else f"{path} is a writeable numpy array"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not value.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return f"{path} is a dataclass that is not frozen"
        for f in dataclasses.fields(value):
            problem = immutable_problem(getattr(value, f.name), f"{path}.{f.name}")
            if problem is not None:
                return problem
        return None
    return f"{path} is a {type(value).__name__}: state must be built of frozen values"


def _declares(policy: Policy[Any]) -> None:
    def fail(detail: str) -> None:
        raise PolicyContractError("declares", str(getattr(policy, "name", "?")), detail)

    for member in (
        "name",
        "signals",
        "signal_keys",
        "sync_period_s",
        "max_signal_age_s",
        "replica_bounds",
        "initial_replicas",
        "initial_state",
        "decide",
    ):
        if not hasattr(policy, member):
            fail(f"has no {member} (the Policy protocol asks for it)")
    if not isinstance(policy.name, str) or not policy.name:
        fail(f"name {policy.name!r} is not a non-empty string")
    signals = policy.signals
    if not isinstance(signals, tuple) or not all(isinstance(s, SignalSpec) for s in signals):
        fail(f"signals {signals!r:.200} is not a tuple of SignalSpec")
    if len(set(signals)) != len(signals):
        fail("signals declares a signal twice")
    for spec, key in policy.signal_keys.items():
        if spec not in signals or not isinstance(key, str):
            fail(f"signal_keys names {spec!r} -> {key!r}, not a declared signal with a config key")
    for attr in ("sync_period_s", "max_signal_age_s"):
        value = getattr(policy, attr)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            fail(f"{attr} {value!r} is neither None nor > 0")
    bounds = policy.replica_bounds
    if not (isinstance(bounds, tuple) and len(bounds) == 2):
        fail(f"replica_bounds {bounds!r} is not (min, max)")
    lo, hi = bounds
    if not (isinstance(lo, int) and lo >= 0 and (hi is None or (isinstance(hi, int) and hi >= lo))):
        fail(f"replica_bounds {bounds!r}: allowed (min >= 0, max >= min or None)")
    n = policy.initial_replicas
    if n is not None and not (lo <= n and (hi is None or n <= hi)):
        fail(f"initial_replicas {n} is outside replica_bounds {bounds}")


def _holds(policy: Policy[Any]) -> None:
    if not policy.signals:
        return
    current = max(1, _start_count(policy))
    missing = MetricsSnapshot(
        time_s=1000.0,
        current_replicas=current,
        ready=current,
        signals={s: SignalValue.missing("no samples in the window") for s in policy.signals},
    )
    empty = MetricsSnapshot(time_s=1000.0, current_replicas=current, ready=current)
    for snap in (missing, empty):
        decision, _ = policy.decide(snap, policy.initial_state())
        if not (decision.is_hold and decision.reason is Reason.NO_DATA):
            raise PolicyContractError(
                "no-data", policy.name, f"every signal missing gave {decision}, not a hold with NoData"
            )
    max_age = policy.max_signal_age_s or 3 * _period(policy)
    rng = random.Random(7)
    old = max_age * 10 + 3600
    signals = {}
    for s in policy.signals:
        v = signal_value(s, rng, current, 1.0)
        signals[s] = dataclasses.replace(v, age_s=old) if v.value is not None else SignalValue(1.0, age_s=old)
    stale = MetricsSnapshot(time_s=1000.0, current_replicas=current, ready=current, signals=signals)
    decision, _ = policy.decide(stale, policy.initial_state())
    if not (decision.is_hold and decision.reason is Reason.STALE_DATA):
        raise PolicyContractError(
            "stale-data",
            policy.name,
            f"every signal {old:g} s old gave {decision}, not a hold with StaleData",
        )


def _state_ok(policy: Policy[Any], state: Any) -> None:
    problem = immutable_problem(state)
    if problem is None and copy.deepcopy(state) != state:
        problem = "a deep copy of the state is not equal to it"
    if problem is None:
        try:
            if pickle.loads(pickle.dumps(state)) != state:
                problem = "the state is not equal to itself after a pickle round trip"
        except Exception as exc:
            problem = f"the state does not pickle ({exc})"
    if problem is not None:
        raise PolicyContractError("immutable-state", policy.name, problem)


def check_policy(policy: Policy[Any], *, seeds: tuple[int, ...] = (1, 2), ticks: int = 150) -> None:
    """Raise :class:`PolicyContractError` (its ``rule`` and message name the rule) unless ``policy``
    keeps every rule of the module doc on ``ticks`` generated snapshots per seed."""
    _declares(policy)
    lo, hi = policy.replica_bounds
    for seed in seeds:
        first, state_a = drive(policy, seed, ticks, check=lambda s: _state_ok(policy, s))
        for d in first:
            n = d.desired_replicas
            if n is not None and (n < lo or (hi is not None and n > hi)):
                raise PolicyContractError("bounds", policy.name, f"{d} is outside replica_bounds {(lo, hi)}")
        try:
            with no_clock_no_randomness():
                second, state_b = drive(policy, seed, ticks)
        except _Forbidden as exc:
            raise PolicyContractError(exc.rule, policy.name, f"decide called {exc}") from None
        if first != second or state_a != state_b:
            at = next((i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b), None)
            detail = (
                f"tick {at}: {first[at]} then {second[at]}" if at is not None else "the final states differ"
            )
            raise PolicyContractError(
                "deterministic", policy.name, f"two runs on the same snapshots: {detail}"
            )
    _holds(policy)
