"""The policy contract, checked for every registered kind and every preset (Gymnasium's check_env,
for autoscalers). A kind joins by being registered in ``registry.KIND_CONFIGS``; a kind whose config
has required fields provides an ``example()`` classmethod.

Every policy must:

* keep non-hold decisions within its bounds (``replica_bounds`` when it declares them);
* hold with ``NoData`` when every declared signal is ``None``, and with ``StaleData`` when every
  declared signal is older than the policy's ``max_signal_age_s`` (default 3 sync periods);
* be deterministic, read no clock and draw no randomness of its own;
* keep its state immutable (no lists, dicts, sets or mutable objects), copyable, picklable, and
  give the same answer when fed the same state twice.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import datetime
import enum
import pickle
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from pydantic import ValidationError

import gpuscale.policies
from gpuscale.policies.base import (
    LATENCY_METRICS,
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
from gpuscale.policies.registry import load_preset, load_preset_config, policy_kinds, preset_names


def _cases() -> list[Any]:
    cases: list[Any] = []
    for info in policy_kinds():
        cls: Any = info.config_class
        example = getattr(cls, "example", None)
        cases.append(pytest.param(("kind", info.kind, cls, example), id=f"kind:{info.kind}"))
    for name in preset_names():
        cases.append(pytest.param(("preset", name, None, None), id=f"preset:{name}"))
    return cases


CASES = _cases()


def build(case: tuple[str, str, Any, Any]) -> Policy[Any]:
    """The policy for a case: a preset; or a kind from its ``example()``, its defaults, or else the
    first shipped preset of that kind."""
    what, name, cls, example = case
    if what == "preset":
        return load_preset(name)
    if example is not None:
        config = example()
    else:
        try:
            config = cls()
        except ValidationError as exc:
            for preset in preset_names():
                preset_config = load_preset_config(preset)
                if preset_config.kind == name:
                    config = preset_config
                    break
            else:
                pytest.fail(
                    f"kind {name!r} has required fields and no preset: give {cls.__name__} an example() "
                    f"classmethod ({exc.error_count()} required)"
                )
    policy: Policy[Any] = config.build()
    return policy


# ----------------------------------------------------------------------------------------- harness

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
}


def bounds(policy: Policy[Any]) -> tuple[int, int | None]:
    got = getattr(policy, "replica_bounds", None)
    return (0, None) if got is None else (int(got[0]), None if got[1] is None else int(got[1]))


def start_count(policy: Policy[Any]) -> int:
    lo, hi = bounds(policy)
    n = max(lo, 2)
    return n if hi is None else min(n, hi)


def period(policy: Policy[Any]) -> float:
    return policy.sync_period_s or 15.0


def signal_value(spec: SignalSpec, rng: random.Random, ready: int, phase: float) -> SignalValue:
    low, high = _RANGES[spec.metric]
    # A load that rises and falls so policies go up and down, with noise.
    level = low + (high - low) * (0.5 + 0.45 * np.sin(phase)) * rng.uniform(0.7, 1.3)
    level = min(max(level, low), high * 1.3)
    if rng.random() < 0.05:
        return SignalValue.missing("scrape gap")
    if (
        spec.aggregation is Aggregation.POD_MEAN
        and spec.metric not in LATENCY_METRICS
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
    if spec.aggregation is Aggregation.TOTAL and spec.metric not in LATENCY_METRICS:
        level *= max(ready, 1)
    return SignalValue(level, age_s=rng.uniform(0, 5))


def snapshots_and_decisions(policy: Policy[Any], seed: int, ticks: int = 150) -> tuple[list[Decision], Any]:
    """Drive ``policy`` through ``ticks`` syncs; the target applies decisions at once."""
    rng = random.Random(seed)
    state = policy.initial_state()
    current = start_count(policy)
    decisions: list[Decision] = []
    for k in range(ticks):
        ready = current if rng.random() < 0.8 else max(0, current - 1)
        signals = {s: signal_value(s, rng, ready, k / 20.0) for s in policy.signals}
        snap = MetricsSnapshot(
            time_s=1000.0 + k * period(policy),
            current_replicas=current,
            ready=ready,
            starting=current - ready,
            signals=signals,
        )
        before = copy.deepcopy(state)
        decision, new_state = policy.decide(snap, state)
        assert state == before, "decide changed its input state"
        decisions.append(decision)
        state = new_state
        if decision.desired_replicas is not None:
            current = decision.desired_replicas
    return decisions, state


@contextlib.contextmanager
def no_clock_no_randomness() -> Iterator[None]:
    def boom(*_: Any, **__: Any) -> Any:
        raise AssertionError("a policy read the clock or drew randomness")

    class NoClockDatetime(datetime.datetime):
        now = classmethod(boom)  # type: ignore[assignment]
        utcnow = classmethod(boom)  # type: ignore[assignment]
        today = classmethod(boom)  # type: ignore[assignment]

    class NoClockDate(datetime.date):
        today = classmethod(boom)  # type: ignore[assignment]

    patches = [
        *(
            mock.patch.object(time, name, boom)
            for name in (
                "time",
                "time_ns",
                "monotonic",
                "monotonic_ns",
                "perf_counter",
                "perf_counter_ns",
                "process_time",
            )
        ),
        mock.patch.object(datetime, "datetime", NoClockDatetime),
        mock.patch.object(datetime, "date", NoClockDate),
        *(
            mock.patch.object(random, name, boom)
            for name in (
                "random",
                "uniform",
                "randint",
                "randrange",
                "choice",
                "choices",
                "shuffle",
                "gauss",
                "sample",
            )
        ),
        *(
            mock.patch.object(np.random, name, boom)
            for name in (
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
        ),
    ]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def assert_immutable(value: Any, path: str = "state") -> None:
    if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum)):
        return
    if isinstance(value, (tuple, frozenset)):
        for i, item in enumerate(value):
            assert_immutable(item, f"{path}[{i}]")
        return
    if isinstance(value, np.ndarray):
        assert not value.flags.writeable, f"{path} is a writeable numpy array"
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        assert value.__dataclass_params__.frozen, f"{path} is a dataclass that is not frozen"  # type: ignore[attr-defined]
        for f in dataclasses.fields(value):
            assert_immutable(getattr(value, f.name), f"{path}.{f.name}")
        return
    pytest.fail(f"{path} is a {type(value).__name__}: state must be built of frozen values")


# ------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize("case", CASES)
def test_declares_what_it_needs(case: Any) -> None:
    policy = build(case)
    assert isinstance(policy.name, str) and policy.name
    assert all(isinstance(s, SignalSpec) for s in policy.signals)
    assert len(set(policy.signals)) == len(policy.signals)
    assert policy.sync_period_s is None or policy.sync_period_s > 0
    lo, hi = bounds(policy)
    assert lo >= 0 and (hi is None or hi >= lo)


@pytest.mark.parametrize("case", CASES)
def test_bounds_are_respected(case: Any) -> None:
    policy = build(case)
    lo, hi = bounds(policy)
    for seed in (1, 2):
        decisions, _ = snapshots_and_decisions(policy, seed)
        for d in decisions:
            assert isinstance(d.reason, Reason)
            if d.desired_replicas is not None:
                assert d.desired_replicas >= lo, d
                assert hi is None or d.desired_replicas <= hi, d


@pytest.mark.parametrize("case", CASES)
def test_no_data_holds_with_no_data(case: Any) -> None:
    policy = build(case)
    if not policy.signals:
        pytest.skip("reads no signals")
    current = max(1, start_count(policy))
    snap = MetricsSnapshot(
        time_s=1000.0,
        current_replicas=current,
        ready=current,
        signals={s: SignalValue.missing("no samples in the window") for s in policy.signals},
    )
    decision, _ = policy.decide(snap, policy.initial_state())
    assert decision.is_hold, decision
    assert decision.reason is Reason.NO_DATA, decision
    empty = MetricsSnapshot(time_s=1000.0, current_replicas=current, ready=current)
    decision, _ = policy.decide(empty, policy.initial_state())
    assert decision.is_hold and decision.reason is Reason.NO_DATA, decision


@pytest.mark.parametrize("case", CASES)
def test_stale_data_holds_with_stale_data(case: Any) -> None:
    policy = build(case)
    if not policy.signals:
        pytest.skip("reads no signals")
    max_age = getattr(policy, "max_signal_age_s", None) or 3 * period(policy)
    current = max(1, start_count(policy))
    rng = random.Random(7)
    signals = {
        s: dataclasses.replace(signal_value(s, rng, current, 1.0), age_s=max_age * 10 + 3600)
        for s in policy.signals
    }
    signals = {
        s: v if v.value is not None else SignalValue(1.0, age_s=max_age * 10 + 3600)
        for s, v in signals.items()
    }
    snap = MetricsSnapshot(time_s=1000.0, current_replicas=current, ready=current, signals=signals)
    decision, _ = policy.decide(snap, policy.initial_state())
    assert decision.is_hold, decision
    assert decision.reason is Reason.STALE_DATA, decision


@pytest.mark.parametrize("case", CASES)
def test_deterministic_and_clock_free(case: Any) -> None:
    policy = build(case)
    first, state_a = snapshots_and_decisions(policy, seed=3)
    with no_clock_no_randomness():
        second, state_b = snapshots_and_decisions(policy, seed=3)
    assert first == second
    assert state_a == state_b


@pytest.mark.parametrize("case", CASES)
def test_state_is_immutable_and_round_trips(case: Any) -> None:
    policy = build(case)
    rng = random.Random(11)
    state = policy.initial_state()
    current = start_count(policy)
    for k in range(60):
        assert_immutable(state)
        assert copy.deepcopy(state) == state
        assert pickle.loads(pickle.dumps(state)) == state
        signals = {s: signal_value(s, rng, current, k / 10.0) for s in policy.signals}
        snap = MetricsSnapshot(
            time_s=50.0 + k * period(policy), current_replicas=current, ready=current, signals=signals
        )
        once = policy.decide(snap, state)
        twice = policy.decide(snap, pickle.loads(pickle.dumps(state)))
        assert once == twice, "the same snapshot and state gave different results"
        decision, state = once
        if decision.desired_replicas is not None:
            current = decision.desired_replicas


def test_policies_import_no_clock_and_no_randomness() -> None:
    forbidden = {"time", "datetime", "random", "secrets", "uuid"}
    root = Path(gpuscale.policies.__file__).parent
    offenders: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and node.attr == "random":
                base = node.value
                names = ["numpy.random"] if isinstance(base, ast.Name) and base.id in ("np", "numpy") else []
            else:
                continue
            for name in names:
                if name.split(".")[0] in forbidden or name.startswith("numpy.random"):
                    offenders.append(f"{path.name}:{node.lineno} uses {name}")
    assert not offenders
