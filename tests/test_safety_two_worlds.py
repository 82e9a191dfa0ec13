"""With a ``safety:`` block, the simulator writes exactly what the live controller writes.

Property: for random safety blocks (bounds, max step, GPU budget) and random traffic, a simulator
run of a scenario carrying the block records every snapshot its policy saw and the replica count it
then wrote (the timeline's ``desired``); the live :class:`~gpuscale.controller.loop.Controller`,
given the same raw policy and the same block as its config's ``safety:``, replays those snapshots
through the two ports -- a source serving each tick's signals, a target reporting each tick's
counts and recording what is applied -- on a manual clock at the same instants, and writes the same
count on every tick. Both worlds build their tail from the block themselves: the simulator from the
scenario, the controller from its config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuscale._core.clock import ManualClock
from gpuscale.config.safety import SafetyConfig
from gpuscale.config.scenario import scenario_from_dict
from gpuscale.controller.loop import Controller
from gpuscale.policies import registry
from gpuscale.policies.base import Decision, Delegating, MetricsSnapshot, Policy, SignalSpec
from gpuscale.policies.ports import ReplicaCounts, counts_of, make_snapshot
from gpuscale.sim.engine import simulate

POLICY: dict[str, Any] = {
    "kind": "hpa",
    "min_replicas": 1,
    "max_replicas": 12,
    "downscale_stabilization_s": 30,
    "behavior": {"scale_down": {"stabilization_window_s": 30}},
    "metrics": [
        {
            "type": "External",
            "metric": "queue_length",
            "aggregation": "total",
            "window_s": 15,
            "target": {"type": "AverageValue", "average_value": 4},
        }
    ],
}
"""desired = ceil(total queue / 4) in 1..12; the HPA's default scale-up policies, a 30-s scale-down
stabilization (so the runs scale down as well as up)."""


def scenario(peak_users: int, seed: int, safety: SafetyConfig) -> dict[str, Any]:
    return {
        "name": "safety-two-worlds",
        "duration_s": 240,
        "seed": seed,
        "slo": {"latency_ms": 500},
        "workload": {
            "kind": "closed-loop",
            "users": {
                "kind": "spike",
                "base_users": 4,
                "peak_users": peak_users,
                "start_s": 30,
                "hold_s": 90,
            },
            "think_time_s": [0.2, 0.5],
        },
        "model": {"profile": "mobilenetv4-rtx3080-triton"},
        "startup": {"image_pull_s": 0, "model_download_s": 0, "model_load_s": 8, "warmup_s": 2},
        "cluster": {"pools": [{"name": "g", "gpu": "rtx3080", "gpus_per_node": 4, "nodes": 4}]},
        "telemetry": {"scrape_interval_s": 5},
        "control": {"initial_replicas": 2},
        "safety": safety.model_dump(mode="json", exclude_none=True),
    }


class Recording(Delegating):
    """The raw policy, unchanged, with every snapshot it saw kept (inside the simulator's tail)."""

    def __init__(self, policy: Policy[Any]) -> None:
        self.inner = policy
        self.seen: list[MetricsSnapshot] = []

    def initial_state(self) -> Any:
        return self.inner.initial_state()

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        self.seen.append(snapshot)
        return self.inner.decide(snapshot, state)


@dataclass
class Replay:
    """Both live ports over the recorded ticks: the counts and signals of tick k at its instant."""

    ticks: Sequence[MetricsSnapshot]
    written: list[int] = field(default_factory=list)

    def _at(self, now: float) -> MetricsSnapshot:
        (tick,) = [s for s in self.ticks if s.time_s == now]
        return tick

    def counts(self, now: float) -> ReplicaCounts:
        return counts_of(self._at(now))

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        return make_snapshot(now, counts, {spec: self._at(now).get(spec) for spec in specs})

    def unavailable(self) -> str | None:
        return None

    def apply(self, decision: Decision, now: float) -> None:
        assert decision.desired_replicas is not None
        self.written.append(decision.desired_replicas)


safety_blocks = st.builds(
    lambda lo, span, step, budget: SafetyConfig(
        min_replicas=lo, max_replicas=lo + span, max_step=step, gpu_budget=budget, gpus_per_pod=1
    ),
    st.integers(0, 2),
    st.integers(1, 8),
    st.one_of(st.none(), st.integers(1, 3)),
    st.one_of(st.none(), st.integers(3, 12)),
).filter(lambda s: s.min_replicas <= s.ceiling)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(safety=safety_blocks, peak_users=st.integers(10, 120), seed=st.integers(1, 1000))
def test_the_simulator_writes_what_the_controller_writes(
    safety: SafetyConfig, peak_users: int, seed: int
) -> None:
    recording = Recording(registry.load_policy(POLICY, "test"))
    result = simulate(scenario_from_dict(scenario(peak_users, seed, safety), "test"), recording)
    sim_written = [int(x) for x in result.timeline.column("desired")]
    assert len(recording.seen) == len(sim_written)

    replay = Replay(recording.seen)
    clock = ManualClock(recording.seen[0].time_s)
    ctl = Controller(registry.load_policy(POLICY, "test"), replay, replay, safety, clock, interval_s=15.0)
    live_written: list[int] = []
    for tick in recording.seen:
        clock.advance(tick.time_s - clock.now())
        outcome = ctl.tick()
        assert outcome.action in ("scaled", "unchanged"), outcome
        assert outcome.replicas is not None
        live_written.append(outcome.replicas)
    assert live_written == sim_written
    assert all(safety.min_replicas <= n <= safety.ceiling for n in live_written[1:])


def test_a_policy_files_own_block_and_the_outer_block_both_apply_in_both_worlds() -> None:
    """A policy file's ``safety:`` inside, the scenario's (simulator) or the controller config's
    (live) outside: the tighter of the two writes, the same in both worlds."""
    inner = {**POLICY, "safety": {"min_replicas": 1, "max_replicas": 8, "max_step": 1}}
    outer = SafetyConfig(min_replicas=0, max_replicas=3)
    recording = Recording(registry.load_policy(inner, "test"))
    result = simulate(scenario_from_dict(scenario(120, 11, outer), "test"), recording)
    sim_written = [int(x) for x in result.timeline.column("desired")]
    assert max(sim_written) == 3  # the outer maximum
    assert all(abs(b - a) <= 1 for a, b in pairwise(sim_written))  # inner max_step

    replay = Replay(recording.seen)
    clock = ManualClock(recording.seen[0].time_s)
    ctl = Controller(registry.load_policy(inner, "test"), replay, replay, outer, clock, interval_s=15.0)
    live_written: list[int] = []
    for tick in recording.seen:
        clock.advance(tick.time_s - clock.now())
        outcome = ctl.tick()
        assert outcome.replicas is not None
        live_written.append(outcome.replicas)
    assert live_written == sim_written
