"""The two ports every policy runs through, as types: one :class:`MetricsSource`, one :class:`ScaleTarget`.

The same policy object decides in two worlds, and these two protocols are all that differs between
them::

    simulator                                   live cluster
    ---------                                   ------------
    SimScaleTarget.counts(now)   ─┐             KubernetesTarget.counts(now)        (or kube-state-
    SimMetricsSource.snapshot ────┤             PrometheusSource.snapshot            metrics for KEDA)
                                  ▼                          ▼
                      policy.decide(snapshot, state) -> (Decision, state)
                                  ▼                          ▼
    SimScaleTarget.apply(decision, now)         KubernetesTarget.apply(decision, now)

One tick, in either world: the target reports its :class:`ReplicaCounts`; the source turns them and
the policy's declared signals into a :class:`~gpuscale.policies.base.MetricsSnapshot`; the policy
decides; the target applies the **whole** decision -- active replicas, warm-pool standby pods and
warm-node placeholder pods -- and only what changes.

Implementations: :class:`gpuscale.sim.telemetry.SimMetricsSource` and
:class:`gpuscale.sim.target.SimScaleTarget` in the simulator;
:class:`gpuscale.integrations.prometheus.PrometheusSource` (with
:class:`~gpuscale.integrations.prometheus.ScaledObjectSource` for the KEDA scaler, whose replica counts
come from kube-state-metrics) and :class:`gpuscale.controller.target.KubernetesTarget` live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

from gpuscale.policies.base import Decision, MetricsSnapshot, SignalSpec, SignalValue


@dataclass(frozen=True)
class ReplicaCounts:
    """What a scale target reports about itself at one instant.

    ``current_replicas`` is the *active* spec (what was last asked for the Service); ``ready`` serve
    traffic; ``starting`` are on a node and not Ready yet; ``pending`` wait for a GPU; ``draining``
    finish in-flight work before they go. A warm pool adds ``standby`` (loaded pods outside the
    Service, ready to be promoted) and ``standby_target`` (the pool size asked for); a node layer adds
    ``pending_nodes`` (nodes being provisioned). Standby pods never count as ready, starting or
    pending.
    """

    current_replicas: int
    ready: int
    starting: int = 0
    pending: int = 0
    draining: int = 0
    standby: int = 0
    standby_target: int = 0
    pending_nodes: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")

    @property
    def pods(self) -> int:
        """Active pods that exist and are not going: ready + starting + pending."""
        return self.ready + self.starting + self.pending


_COUNTS = tuple(f.name for f in fields(ReplicaCounts))
"""The count fields, which a MetricsSnapshot carries under the same names."""


def make_snapshot(
    now: float, counts: ReplicaCounts, signals: Mapping[SignalSpec, SignalValue] | None = None
) -> MetricsSnapshot:
    """The snapshot of ``counts`` and ``signals`` at ``now``: what every source returns."""
    return MetricsSnapshot(
        time_s=now, signals=dict(signals or {}), **{name: getattr(counts, name) for name in _COUNTS}
    )


def counts_of(snapshot: MetricsSnapshot) -> ReplicaCounts:
    """The replica counts a snapshot was taken with."""
    return ReplicaCounts(**{name: getattr(snapshot, name) for name in _COUNTS})


@runtime_checkable
class MetricsSource(Protocol):
    """Fulfils a policy's declared signals at ``now``, with the target's replica counts.

    Rules every source keeps (:mod:`gpuscale.policies.base`): a signal with no data is ``None`` with
    a reason, never NaN or 0; every value carries its age; windows end at the newest sample. A source
    may raise :class:`~gpuscale._core.errors.TemporaryError` or
    :class:`~gpuscale._core.errors.PermanentError`; it never raises for one missing signal.
    """

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        """The snapshot a policy sees at ``now``: ``counts`` plus every spec in ``specs``."""
        ...

    def unavailable(self) -> str | None:
        """Why the last snapshot could not reach the metrics backend at all (Prometheus refused,
        timed out, answered 5xx), or None. A backend that answered with no series is available."""
        ...


@runtime_checkable
class ReplicaReader(Protocol):
    """Reports a scale target's replica counts (the KEDA scaler reads them; KEDA itself scales)."""

    def counts(self, now: float) -> ReplicaCounts: ...


@runtime_checkable
class ScaleTarget(ReplicaReader, Protocol):
    """Applies decisions: the whole :class:`~gpuscale.policies.base.Decision`, changes only.

    ``desired_replicas`` sets the active spec (``None`` keeps it); ``standby_replicas`` keeps that many
    loaded pods outside the Service, a scale-up promoting them before creating new pods (``None``
    keeps the pool as it is); ``placeholder_pods`` keeps that many low-priority placeholder pods
    (``None`` keeps them). Raises the taxonomy's errors; the caller turns them into outcomes.
    """

    def apply(self, decision: Decision, now: float) -> None: ...


@dataclass(frozen=True)
class FixedReplicas:
    """Replica counts that do not change (tests, dry runs, a KEDA scaler told its counts)."""

    fixed: ReplicaCounts = field(default_factory=lambda: ReplicaCounts(0, 0))

    def counts(self, now: float) -> ReplicaCounts:
        return self.fixed


class NoSignals:
    """A metrics source with nothing behind it: every signal is missing (a controller configured
    without Prometheus, for a policy that reads no signal)."""

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        missing = {spec: SignalValue.missing("no metrics source is configured") for spec in specs}
        return make_snapshot(now, counts, missing)

    def unavailable(self) -> str | None:
        return None
