"""The clairvoyant reference: a known pod schedule, asked for one real lead time ahead.

Not a policy kind, and never live: it is given the future (the oracle's per-window pod schedule,
:mod:`gpuscale.experiments.oracle`), which no cluster has. ``gpuscale compare`` plays it through the
simulator as the *feasible reference* beside the oracle's lower bound
(:mod:`gpuscale.experiments.references`): the oracle holds each pod exactly when it is needed and is
charged the fastest cold start; this policy must ask for each pod through the real target, wait the
real cold start and, on a cluster whose nodes come and go, the real node provisioning. Its measured
attainment and GPU-hours say what knowing the future buys on that cluster.

Each tick at ``t`` it asks for the most pods any window needs that starts before the next tick's own
lead would be too late: windows overlapping ``[t, t + lead_s + tick_s)``. A pod asked for at ``t`` is
Ready by ``t + lead_s`` at the latest, and the next chance to ask is ``t + tick_s``. Example: a
125-s lead (the slowest start of every phase) and 15-s ticks; the schedule needs 6 pods from 600 s.
The tick at 450 s looks at windows before 590 s and holds; the one at 465 s looks up to 605 s and asks
for the 6 pods, Ready by 590 s at the latest. The same max keeps a pod
through a dip shorter than the lead: releasing it could not bring it back in time.

Where new nodes must come up first (``node_lead_s`` > 0: a node autoscaler), it also keeps
low-priority placeholder pods (the cluster over-provisioner pattern, ``Decision.placeholder_pods``)
for the pods needed within ``lead_s + node_lead_s + tick_s``: they make the node autoscaler launch
the nodes one provisioning time early, and a serving pod asked for later preempts one at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpuscale.policies.base import Decision, MetricsSnapshot, ReadsNoSignals, Reason

_REFUSAL = (
    "is a simulator-only reference of gpuscale compare, not a policy: it {needs}, which no live cluster "
    "has, so it never runs live (run, manifests, keda-scaler); compare runs it beside the oracle with "
    "--references {reference}"
)
SIMULATOR_ONLY: dict[str, str] = {
    name: _REFUSAL.format(needs=needs, reference=reference)
    for name, needs, reference in (
        ("clairvoyant", "is given the future load", "feasible"),
        ("clairvoyant-feasible", "is given the future load", "feasible"),
        (
            "receding-horizon",
            "rolls copies of the simulator forward over the future load",
            "receding-horizon",
        ),
    )
}
"""Names of the simulator-only references, and why a policy cannot be one (the registry's refusal)."""


@dataclass(frozen=True)
class ClairvoyantState:
    """Nothing to remember: the schedule is the whole plan."""


@dataclass(frozen=True, eq=False)
class ClairvoyantPolicy(ReadsNoSignals):
    """Ask for the pods of a known schedule one lead time ahead (module docstring)."""

    times_s: tuple[float, ...]
    """Window starts, increasing."""
    replicas: tuple[int, ...]
    """Ready pods needed in each window."""
    window_s: float
    lead_s: float
    """Longest time from asking for a pod to its being Ready on a node that is up."""
    tick_s: float
    """The control tick the policy runs at (the next chance to ask)."""
    node_lead_s: float = 0.0
    """Longest time for a new node's GPUs to become allocatable; 0: no placeholders."""
    name: str = "clairvoyant"

    def __post_init__(self) -> None:
        if len(self.times_s) != len(self.replicas):
            raise ValueError("times_s and replicas must have the same length")
        if any(r < 0 for r in self.replicas):
            raise ValueError("replicas must be >= 0")
        if not (self.window_s > 0 and self.lead_s >= 0 and self.tick_s > 0 and self.node_lead_s >= 0):
            raise ValueError("window_s and tick_s must be > 0, lead_s and node_lead_s >= 0")

    @classmethod
    def of(
        cls,
        times_s: Sequence[float] | np.ndarray,
        replicas: Sequence[int] | np.ndarray,
        *,
        window_s: float,
        lead_s: float,
        tick_s: float,
        node_lead_s: float = 0.0,
        name: str = "clairvoyant",
    ) -> ClairvoyantPolicy:
        return cls(
            tuple(float(t) for t in times_s),
            tuple(int(r) for r in replicas),
            window_s,
            lead_s,
            tick_s,
            node_lead_s,
            name,
        )

    @property
    def sync_period_s(self) -> float | None:
        return self.tick_s

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (0, max(self.replicas, default=0))

    @property
    def initial_replicas(self) -> int | None:
        return None  # it starts from the scenario's initial replicas, as every adaptive policy does

    def initial_state(self) -> ClairvoyantState:
        return ClairvoyantState()

    def need(self, t0: float, t1: float) -> int:
        """The most pods any window overlapping ``[t0, t1)`` needs (0 for none)."""
        starts = self.times_s
        lo = int(np.searchsorted(starts, t0 - self.window_s, side="right"))
        hi = int(np.searchsorted(starts, t1, side="left"))
        return max(self.replicas[lo:hi], default=0)

    def decide(self, snapshot: MetricsSnapshot, state: ClairvoyantState) -> tuple[Decision, ClairvoyantState]:
        t = snapshot.time_s
        reach = t + self.lead_s + self.tick_s
        wanted = self.need(t, reach)
        placeholders: int | None = None
        message = f"the schedule needs {wanted} pods before t = {reach:g} s (lead {self.lead_s:g} s)"
        if self.node_lead_s > 0:
            node_reach = reach + self.node_lead_s
            placeholders = max(0, self.need(t, node_reach) - wanted)
            if placeholders:
                message += (
                    f"; {placeholders} placeholder pods hold nodes for the pods needed before "
                    f"t = {node_reach:g} s (node lead {self.node_lead_s:g} s)"
                )
        current = snapshot.current_replicas
        reason = (
            Reason.PREDICTED if wanted > current else Reason.SCALE_DOWN if wanted < current else Reason.STATIC
        )
        return Decision(wanted, reason, message, placeholder_pods=placeholders), state


__all__ = ["SIMULATOR_ONLY", "ClairvoyantPolicy", "ClairvoyantState"]
