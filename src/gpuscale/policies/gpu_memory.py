"""``kind: gpu-memory``: scale on the average GPU memory utilization across pods (the thesis approach).

Mitra's master's thesis (University of Groningen, 2021; see ``related-work.md`` A2) built "a simple
autoscaling system that scales the GPUs based on the average GPU memory utilization" and compared it
with Knative's in-flight-request autoscaling. This policy is that system, in the form such systems
take:

* the signal is DCGM's framebuffer use (``FB_USED / (FB_USED + FB_FREE)``), averaged over the pods
  and over ``window_s``;
* above ``scale_up_threshold_pct`` it adds ``scale_up_step`` replicas (or, with ``sizing:
  proportional``, ``ceil(ready × util / threshold)``: 4 pods at 90 % with an 80 % threshold → 5);
* below ``scale_down_threshold_pct`` it removes ``scale_down_step`` replicas (always a step: see
  below why a proportional scale-down on this signal would be unsafe);
* between the two it holds, the band being the hysteresis; cooldowns after each change give new
  pods time to load their model and take traffic before the average is trusted again.

Why it behaves conservatively (the thesis's finding: GPUs are left free for other work, at the cost
of slow responses): GPU memory is a poor load signal for inference servers.

1. **It lags on the way up.** A model's weights occupy the same memory at 1 request/s and at 100;
   what grows with load is activation and KV-cache memory, and only once batches grow, i.e. once
   requests already queue. Latency has degraded before the average crosses the threshold.
2. **It does not fall on the way down.** PyTorch's caching allocator keeps freed blocks reserved for
   reuse, so the memory a pod reports is its high-water mark since start, not its current need;
   vLLM preallocates ``gpu_memory_utilization`` (0.9) of the GPU at start. Utilization stays high
   after the load is gone, so scale-down waits for pods to be replaced (new pods start low) or never
   comes. A proportional scale-down would act on a number that is mostly history.
3. **It saturates.** Memory is bounded at 100 % per GPU while queues are not, so the signal cannot
   say *how much* capacity is missing; a step per cooldown is all it supports honestly.

Use it to reproduce the thesis's comparison, or where memory really tracks load (no caching
allocator, per-request memory dominating the weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.policies._config import ConfigTiming, field_error
from gpuscale.policies.base import (
    Aggregation,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
)
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import (
    Bounds,
    Cooldown,
    Pipeline,
    PipelineState,
    Recommendation,
    SignalCheck,
    TailedPolicy,
)

Sizing = Literal["step", "proportional"]


def gpu_memory_recommendation(
    util_pct: float,
    *,
    current: int,
    ready: int,
    up_pct: float,
    down_pct: float,
    sizing: Sizing,
    up_step: int,
    down_step: int,
) -> Recommendation:
    """The raw recommendation from the mean GPU memory utilization, before cooldowns and bounds."""
    seen = f"mean GPU memory {util_pct:.1f} % across {ready} ready pod(s)"
    if util_pct > up_pct:
        if sizing == "proportional":
            wanted = math.ceil(ready * util_pct / up_pct)
            how = f"ceil({ready} x {util_pct:.1f} / {up_pct:g}) = {wanted}"
        else:
            wanted = current + up_step
            how = f"{current} + {up_step} = {wanted}"
        if wanted <= current:
            return Recommendation(
                current,
                Reason.DESIRED_WITHIN_RANGE,
                f"{seen} > {up_pct:g} %: {how}, not above the {current} already asked for -> keep {current}",
            )
        return Recommendation(wanted, Reason.SCALE_UP, f"{seen} > {up_pct:g} %: {how}")
    if util_pct < down_pct:
        wanted = max(current - down_step, 0)
        return Recommendation(
            wanted, Reason.SCALE_DOWN, f"{seen} < {down_pct:g} %: {current} - {down_step} = {wanted}"
        )
    return Recommendation(
        current,
        Reason.WITHIN_TOLERANCE,
        f"{seen} within [{down_pct:g} %, {up_pct:g} %] -> keep {current}",
    )


@dataclass(frozen=True)
class GpuMemoryState:
    """The tail's state (cooldown times; bounds keep none)."""

    tail: PipelineState


@dataclass(frozen=True)
class GpuMemoryPolicy(ConfigTiming, TailedPolicy[GpuMemoryState]):
    """Threshold scaling on the mean GPU memory utilization (see the module docstring)."""

    config: GpuMemoryConfig

    @property
    def name(self) -> str:
        return self.config.name or "gpu-memory"

    @property
    def memory(self) -> SignalSpec:
        return SignalSpec(Metric.GPU_MEMORY_UTIL, self.config.window_s, Aggregation.POD_MEAN)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.memory,)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {self.memory: "window_s"}

    @cached_property
    def tail(self) -> Pipeline:
        """Cooldowns, then bounds (last, so a count outside the bounds is always brought back)."""
        cfg = self.config
        return Pipeline(
            (
                Cooldown(cfg.scale_up_cooldown_s, cfg.scale_down_cooldown_s),
                Bounds(cfg.min_replicas, cfg.max_replicas),
            )
        )

    def initial_state(self) -> GpuMemoryState:
        return GpuMemoryState(self.tail.initial_state())

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: GpuMemoryState
    ) -> tuple[Recommendation, GpuMemoryState]:
        cfg = self.config
        rec = gpu_memory_recommendation(
            check.values[self.memory],
            current=snapshot.current_replicas,
            ready=snapshot.ready,
            up_pct=cfg.scale_up_threshold_pct,
            down_pct=cfg.scale_down_threshold_pct,
            sizing=cfg.sizing,
            up_step=cfg.scale_up_step,
            down_step=cfg.scale_down_step,
        )
        return rec, state


@register_kind
class GpuMemoryConfig(KindConfig):
    """Scale on mean GPU memory utilization against an upper and a lower threshold.

    The thesis's exact thresholds, window and cooldowns are not published in its abstract; the
    defaults here are this project's choices and say so.
    """

    kind: Literal["gpu-memory"] = "gpu-memory"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(
        default=1, ge=1, description="Fewest replicas (>= 1: with no pod there is no GPU memory to read)."
    )
    max_replicas: int = Field(ge=1, description="Most replicas; required (GPUs are a budget decision).")
    scale_up_threshold_pct: float = Field(
        default=80.0,
        gt=0,
        le=100,
        description="Scale up above this mean utilization, percent (gpuscale: 80).",
    )
    scale_down_threshold_pct: float = Field(
        default=40.0,
        ge=0,
        lt=100,
        description="Scale down below this mean utilization, percent; must be below the scale-up threshold"
        " (gpuscale: 40).",
    )
    window_s: float = Field(
        default=60.0, gt=0, description="Window the utilization is averaged over, seconds (gpuscale: 60)."
    )
    sizing: Sizing = Field(
        default="step",
        description="Scale-up size: 'step' adds scale_up_step replicas (the thesis's simple system);"
        " 'proportional' asks for ceil(ready x util / threshold). Scale-down is always a step.",
    )
    scale_up_step: int = Field(default=1, ge=1, description="Replicas added per scale-up step (default 1).")
    scale_down_step: int = Field(default=1, ge=1, description="Replicas removed per scale-down (default 1).")
    scale_up_cooldown_s: float = Field(
        default=60.0,
        ge=0,
        description="No scale-up this long after the last one, seconds (gpuscale: 60; new pods must load).",
    )
    scale_down_cooldown_s: float = Field(
        default=300.0,
        ge=0,
        description="No scale-down this long after any change, seconds (gpuscale: 300, the HPA's"
        " downscale stabilization).",
    )
    sync_period_s: float = Field(
        default=15.0, gt=0, description="Control tick, seconds (default 15, the HPA sync period)."
    )
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale (hold). Default 3 sync periods."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> GpuMemoryConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        if self.scale_down_threshold_pct >= self.scale_up_threshold_pct:
            field_error(
                ("scale_down_threshold_pct",),
                self.scale_down_threshold_pct,
                f"must be < scale_up_threshold_pct ({self.scale_up_threshold_pct:g})",
            )
        return self

    def build(self) -> GpuMemoryPolicy:
        return GpuMemoryPolicy(self)
