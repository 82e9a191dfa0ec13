"""``kind: multi-signal``: several correlated GPU signals, smoothed, each with a hysteresis band.

Seed 004's production practice, as a policy:

* **Smoothing.** Each signal is averaged over a multi-minute window (3 minutes by default, the
  seed's "3 minute windows"), so one batch finishing does not read as the load going away.
* **Hysteresis.** Each signal has a band: ``scale_up_above`` and a lower ``scale_down_below``.
  Inside the band nothing moves, so a count that just changed does not flip back.
* **Several signals, asymmetric rule.** Scale **up if ANY** usable signal is above its band;
  scale **down only if ALL** signals are below theirs. "A GPU can show 20 % SM utilization while
  latency is terrible" (memory-bandwidth or PCIe bound): with SM utilization at 20 % (below its band)
  and p99 latency at 900 ms over a 500 ms SLO, latency alone scales up. Scale-down needs every
  signal's agreement, and a signal without data vetoes it (``PartialData``).
* **Sizing.** A per-pod load signal (utilization, concurrency, queue, request rate) sizes the step
  proportionally, like the HPA: ``ceil(ready × value / target)`` for a per-pod mean (4 pods at 72 %
  SM with a 40 % target → ceil(7.2) = 8), ``ceil(value / target)`` for a total over pods. A latency
  does not shrink in proportion to replicas, so it moves one ``scale_up_step`` at a time, and waits
  for pods still starting before the next step (they are the answer to the last one). The largest
  recommendation over the signals that want to scale up wins; for a scale-down the largest (most
  careful) over all signals.
* **Scale-down stabilization.** A scale-down goes only as low as the highest recommendation of the
  last ``scale_down_stabilization_s`` (the HPA's 300 s window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.config.loading import StrictModel
from gpuscale.policies._config import ConfigTiming, field_error
from gpuscale.policies.base import (
    LATENCY_METRICS,
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
)
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import (
    Bounds,
    Pipeline,
    PipelineState,
    Recommendation,
    SignalCheck,
    Stabilization,
    TailedPolicy,
)

Sizing = Literal["proportional", "step"]

_UNITS = {
    Metric.GPU_UTIL: " %",
    Metric.GPU_MEMORY_UTIL: " %",
    Metric.CPU_UTIL: " %",
    Metric.GPU_MEMORY_USED_GB: " GB",
    Metric.REQUEST_RATE: " rps",
    Metric.LATENCY_P50_MS: " ms",
    Metric.LATENCY_P95_MS: " ms",
    Metric.LATENCY_P99_MS: " ms",
}


class SignalBand(StrictModel):
    """One signal and its hysteresis band."""

    metric: Metric = Field(
        description="What to read (gpu_util, gpu_memory_util, latency_p99_ms, queue_length, ...)."
    )
    window_s: float = Field(
        default=180.0, gt=0, description="Averaging window, seconds (seed 004: 3-minute smoothing)."
    )
    aggregation: Aggregation = Field(
        default=Aggregation.POD_MEAN,
        description="pod_mean, total or max over pods (ignored for latency, a service-level quantile).",
    )
    scale_up_above: float = Field(description="Upper band edge: any signal above it scales up.")
    scale_down_below: float = Field(
        ge=0, description="Lower band edge: scale down only when every signal is below its own."
    )
    target: float | None = Field(
        default=None,
        gt=0,
        description="Value per replica that proportional sizing aims at (per pod, or per replica for a"
        " total); default scale_up_above. Must lie in (scale_down_below, scale_up_above].",
    )
    sizing: Sizing | None = Field(
        default=None,
        description="proportional (ceil(ready x value / target)) or step (scale_up_step / scale_down_step);"
        " default proportional, step for latency.",
    )

    @model_validator(mode="after")
    def _band(self) -> SignalBand:
        if self.scale_down_below >= self.scale_up_above:
            field_error(
                ("scale_down_below",),
                self.scale_down_below,
                f"must be < scale_up_above ({self.scale_up_above:g}); the gap is the hysteresis band",
            )
        if self.target is not None and not self.scale_down_below < self.target <= self.scale_up_above:
            field_error(
                ("target",),
                self.target,
                f"must be in ({self.scale_down_below:g}, {self.scale_up_above:g}]",
            )
        if self.sizing == "proportional" and self.metric in LATENCY_METRICS:
            field_error(
                ("sizing",),
                self.sizing,
                "latency does not fall in proportion to replicas; allowed for latency: step",
            )
        return self

    @property
    def spec(self) -> SignalSpec:
        return SignalSpec(self.metric, self.window_s, self.aggregation)

    @property
    def resolved_sizing(self) -> Sizing:
        if self.sizing is not None:
            return self.sizing
        return "step" if self.metric in LATENCY_METRICS else "proportional"

    @property
    def resolved_target(self) -> float:
        return self.scale_up_above if self.target is None else self.target

    def show(self, value: float) -> str:
        return f"{self.metric.value} {value:g}{_UNITS.get(self.metric, '')}"


def proportional_replicas(value: float, target: float, *, ready: int, aggregation: Aggregation) -> int:
    """HPA-style sizing: a per-pod mean (or max) scales the ready count; a total divides by the target.

    4 ready pods at 72 % with a 40 % target → ceil(4 × 72 / 40) = 8; a total queue of 45 with 10
    per replica → ceil(4.5) = 5. The tolerance keeps float noise from adding a replica
    (3 × 0.7 / 0.7 must be 3).
    """
    if aggregation is Aggregation.TOTAL:
        return math.ceil(value / target - 1e-9)
    return math.ceil(ready * value / target - 1e-9)


@dataclass(frozen=True)
class _Vote:
    band: SignalBand
    value: float
    side: Literal["above", "below", "inside"]
    replicas: int
    how: str


@dataclass(frozen=True)
class MultiSignalState:
    """The tail's state (scale-down stabilization history; bounds keep none)."""

    tail: PipelineState


@dataclass(frozen=True)
class MultiSignalPolicy(ConfigTiming, TailedPolicy[MultiSignalState]):
    """Any-up / all-down over smoothed signals with hysteresis bands (see the module docstring)."""

    config: MultiSignalConfig

    @property
    def name(self) -> str:
        return self.config.name or "multi-signal"

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return tuple(dict.fromkeys(b.spec for b in self.config.signals))

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        out: dict[SignalSpec, str] = {}
        for i, band in enumerate(self.config.signals):
            out.setdefault(band.spec, f"signals[{i}].window_s")
        return out

    @cached_property
    def tail(self) -> Pipeline:
        """Scale-down stabilization, then bounds."""
        cfg = self.config
        return Pipeline(
            (
                Stabilization(up_window_s=0.0, down_window_s=cfg.scale_down_stabilization_s),
                Bounds(cfg.min_replicas, cfg.max_replicas),
            )
        )

    def initial_state(self) -> MultiSignalState:
        return MultiSignalState(self.tail.initial_state())

    def _vote(self, band: SignalBand, value: float, snapshot: MetricsSnapshot) -> _Vote:
        current, ready = snapshot.current_replicas, snapshot.ready
        if value > band.scale_up_above:
            side: Literal["above", "below", "inside"] = "above"
            edge = f"> {band.scale_up_above:g}"
        elif value < band.scale_down_below:
            side = "below"
            edge = f"< {band.scale_down_below:g}"
        else:
            return _Vote(band, value, "inside", current, f"{band.show(value)} inside its band")
        if band.resolved_sizing == "proportional":
            n = proportional_replicas(value, band.resolved_target, ready=ready, aggregation=band.aggregation)
            if band.aggregation is Aggregation.TOTAL:
                how = f"ceil({value:g} / {band.resolved_target:g}) = {n}"
            else:
                how = f"ceil({ready} x {value:g} / {band.resolved_target:g}) = {n}"
        elif side == "above":
            n = current + self.config.scale_up_step
            how = f"{current} + {self.config.scale_up_step} = {n}"
        else:
            n = max(current - self.config.scale_down_step, 0)
            how = f"{current} - {self.config.scale_down_step} = {n}"
        return _Vote(band, value, side, n, f"{band.show(value)} {edge}: {how}")

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: MultiSignalState
    ) -> tuple[Recommendation | Decision, MultiSignalState]:
        votes = [
            self._vote(b, check.values[b.spec], snapshot) for b in self.config.signals if check.usable(b.spec)
        ]
        unusable = [s.key for s in (*check.missing, *check.stale)]
        rec = self._combine(votes, unusable, snapshot)
        if rec is None:
            return Decision.hold(
                Reason.PARTIAL_DATA,
                "; ".join(v.how for v in votes)
                + f"; no scale-down without every signal ({', '.join(unusable)} unusable)",
            ), state
        return rec, state

    def _combine(
        self, votes: list[_Vote], unusable: list[str], snapshot: MetricsSnapshot
    ) -> Recommendation | None:
        current = snapshot.current_replicas
        above = [v for v in votes if v.side == "above"]
        if above:
            best = max(above, key=lambda v: v.replicas)
            message = "; ".join(v.how for v in above)
            if best.replicas <= current:
                return Recommendation(
                    current,
                    Reason.DESIRED_WITHIN_RANGE,
                    f"{message}; {current} already asked for -> keep {current}",
                )
            stepping = all(v.band.resolved_sizing == "step" for v in above if v.replicas == best.replicas)
            waiting = snapshot.starting + snapshot.pending
            if stepping and waiting > 0:
                # A latency step cannot tell how much the pods still starting will help; stepping again
                # every tick while they load would pile up replicas for one slow minute.
                return Recommendation(
                    current,
                    Reason.SCALE_UP_LIMIT,
                    f"{message}; {waiting} pod(s) still starting, next step once they are ready"
                    f" -> keep {current}",
                )
            return Recommendation(best.replicas, Reason.SCALE_UP, message)
        if unusable:
            return None
        if votes and all(v.side == "below" for v in votes):
            best = max(votes, key=lambda v: v.replicas)
            message = "; ".join(v.how for v in votes)
            if best.replicas >= current:
                return Recommendation(current, Reason.DESIRED_WITHIN_RANGE, f"{message} -> keep {current}")
            return Recommendation(
                best.replicas, Reason.SCALE_DOWN, f"all signals below their bands: {message}"
            )
        message = "; ".join(v.how for v in votes)
        return Recommendation(
            current, Reason.WITHIN_TOLERANCE, f"{message}; within the hysteresis band -> keep {current}"
        )


@register_kind
class MultiSignalConfig(KindConfig):
    """Several smoothed signals with hysteresis bands: up on any, down on all (seed 004)."""

    kind: Literal["multi-signal"] = "multi-signal"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(
        default=1, ge=1, description="Fewest replicas (>= 1: GPU and latency signals need a pod to read)."
    )
    max_replicas: int = Field(ge=1, description="Most replicas; required.")
    signals: tuple[SignalBand, ...] = Field(
        description="The signals and their bands; required, at least one."
    )
    scale_up_step: int = Field(default=1, ge=1, description="Replicas a step-sized signal adds (default 1).")
    scale_down_step: int = Field(
        default=1, ge=1, description="Replicas a step-sized signal removes (default 1)."
    )
    scale_down_stabilization_s: float = Field(
        default=300.0,
        ge=0,
        description="Scale down only to the highest recommendation of this window, seconds"
        " (HPA default 300).",
    )
    sync_period_s: float = Field(
        default=15.0, gt=0, description="Control tick, seconds (HPA sync period 15)."
    )
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale. Default 3 sync periods."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> MultiSignalConfig:
        # Checked here rather than with min_length, which would also fire when one listed signal is
        # invalid and so bury the real error under "at least 1 item".
        if not self.signals:
            field_error(("signals",), [], "at least one signal is required")
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        return self

    def build(self) -> MultiSignalPolicy:
        return MultiSignalPolicy(self)
