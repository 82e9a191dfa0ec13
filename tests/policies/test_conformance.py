"""The policy contract (:func:`gpuscale.policies.conformance.check_policy`, Gymnasium's check_env for
autoscalers), run on every registered kind and every preset, alone and inside the safety tail; and
broken policies rejected with the rule they break. A kind joins by registering its config
(:func:`gpuscale.policies.kinds.register_kind`); a kind whose config has required fields provides an
``example()`` classmethod.

The rules are listed in :mod:`gpuscale.policies.conformance`.
"""

from __future__ import annotations

import ast
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import gpuscale.policies
from gpuscale.config.safety import SafetyConfig, ScheduleWindow
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Policy,
    Reason,
    SignalSpec,
)
from gpuscale.policies.conformance import PolicyContractError, check_policy
from gpuscale.policies.registry import load_preset, load_preset_config, policy_kinds, preset_names
from gpuscale.policies.safety import SafePolicy
from gpuscale.policies.stages import check_signals


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


# ------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize("case", CASES)
def test_keeps_the_contract(case: Any) -> None:
    check_policy(build(case))


@pytest.mark.parametrize("case", CASES)
def test_keeps_the_contract_inside_the_safety_tail(case: Any) -> None:
    """The safety tail keeps every rule too: wrapped with bounds, a max step, a GPU budget and a
    schedule window, the policy is still a policy."""
    window = ScheduleWindow(days=("mon", "tue", "wed"), start="08:00", end="20:00", min_replicas=1)
    safety = SafetyConfig(min_replicas=0, max_replicas=5, max_step=2, gpu_budget=8, schedules=(window,))
    check_policy(SafePolicy(build(case), safety), seeds=(1,))


@dataclasses.dataclass(frozen=True)
class _Base:
    """A well-behaved policy on the queue; the broken ones below each break one rule."""

    name: str = "broken"
    signals: tuple[SignalSpec, ...] = (SignalSpec(Metric.QUEUE_LENGTH, 60.0, Aggregation.TOTAL),)
    signal_keys: Any = dataclasses.field(default_factory=dict)
    sync_period_s: float | None = 15.0
    max_signal_age_s: float | None = 45.0
    replica_bounds: tuple[int, int | None] = (1, 10)
    initial_replicas: int | None = None

    def initial_state(self) -> Any:
        return ()

    def want(self, snapshot: MetricsSnapshot) -> int:
        return min(10, max(1, int((snapshot.value(self.signals[0]) or 0) // 10)))

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        check = check_signals(snapshot, self.signals, 45.0)
        if check.hold is not None:
            return check.hold, state
        return Decision(self.want(snapshot), Reason.SCALE_UP, "queue / 10"), state


class _ReadsClock(_Base):
    def want(self, snapshot: MetricsSnapshot) -> int:
        return 1 + int(time.time()) % 2  # noqa: TID251 -- the rule this policy is built to break


class _DrawsRandomness(_Base):
    def want(self, snapshot: MetricsSnapshot) -> int:
        return random.randint(1, 10)


@dataclasses.dataclass(frozen=True)
class _Seen:
    times: tuple[float, ...] = ()


class _MutatesState(_Base):
    """Frozen values, written to anyway: the state it was given is not the state it left."""

    def initial_state(self) -> Any:
        return _Seen()

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        object.__setattr__(state, "times", (*state.times, snapshot.time_s))
        return super().decide(snapshot, state)


class _ExceedsBounds(_Base):
    def want(self, snapshot: MetricsSnapshot) -> int:
        return 11 + super().want(snapshot)


class _ScalesOnNothing(_Base):
    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        return Decision(1, Reason.SCALE_DOWN, "no load seen"), state


def test_a_well_behaved_policy_passes() -> None:
    check_policy(_Base())


@pytest.mark.parametrize(
    ("policy", "rule"),
    [
        (_ReadsClock(), "reads-clock"),
        (_DrawsRandomness(), "draws-randomness"),
        (_MutatesState(), "mutates-state"),
        (_ExceedsBounds(), "bounds"),
        (_ScalesOnNothing(), "no-data"),
        (_Base(name=""), "declares"),
        (_Base(replica_bounds=(3, 2)), "declares"),
        (_Base(initial_replicas=20), "declares"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_a_broken_policy_is_rejected_naming_the_rule(policy: Any, rule: str) -> None:
    with pytest.raises(PolicyContractError) as caught:
        check_policy(policy)
    assert caught.value.rule == rule
    assert str(caught.value).startswith(f"{rule}: policy ")


_EXEMPT = {
    "schedule.py": {"datetime"},  # epoch seconds -> local calendar time of a given instant; no clock
    "conformance.py": {"time", "datetime", "random", "numpy.random"},  # the checker patches them
}
"""Modules allowed to import a name on the list, and which; the runtime check still forbids reading
a clock in every ``decide``."""


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
                if name in _EXEMPT.get(path.name, set()) or name.split(".")[0] in _EXEMPT.get(
                    path.name, set()
                ):
                    continue
                if name.split(".")[0] in forbidden or name.startswith("numpy.random"):
                    offenders.append(f"{path.name}:{node.lineno} uses {name}")
    assert not offenders
