"""AIBrix's autoscalers on a vLLM metric: ``kind: aibrix-apa`` (APA) and ``kind: aibrix-kpa`` (KPA).

APA
---

Sources read: ``github.com/vllm-project/aibrix``, ``pkg/controller/podautoscaler/algorithm/apa.go``
(``computeTargetReplicas``, the same formula at ``HEAD`` and at commit ``2dbf7829``),
``pkg/controller/podautoscaler/scaler/apa.go`` at ``2dbf7829`` (APA's defaults: up-fluctuation
tolerance 0.1, down-fluctuation tolerance 0.2, metric window 60 s) and
``pkg/controller/podautoscaler/common/context.go`` there (max scale-up rate 2, max scale-down rate 2).

With ``c`` the current replica count, ``m`` the per-pod mean of the metric over ``window_s`` and
``t`` the target value:

* ``m / t > 1 + up_tolerance``: ``desired = ceil(c x m / t)``, at most ``ceil(max_scale_up_rate x c)``;
* ``m / t < 1 - down_tolerance``: ``desired = ceil(c x m / t)``, at least
  ``floor(c / max_scale_down_rate)``;
* otherwise ``c``;

then clamped to ``[min_replicas, max_replicas]``. Newer AIBrix releases keep the formula and moved
the tolerances into the shared scaling context (0.1 both ways) with a 300-s scale-down cooldown
(``context/context.go`` at ``HEAD``); set ``down_tolerance: 0.1`` and ``scale_down_cooldown_s: 300``
for that behaviour. With no data it holds (``NoData``), as AIBrix skips a round whose metrics fail.

KPA
---

AIBrix's port of Knative's KPA to any pod metric (``pkg/controller/podautoscaler/algorithm/kpa.go``
and ``scaler/kpa.go`` at ``2dbf7829``; defaults in ``scaler/kpa.go``: stable window 60 s, panic
window 10 s, panic threshold 2.0; max scale-up and scale-down rates 2 from ``common/context.go``).
Per tick, with ``r`` ready pods and the metric **summed over the pods** and averaged over each
window (``S`` stable, ``P`` panic):

* ``dspc = ceil(S / target)``, ``dppc = ceil(P / target)``, each kept within
  ``[floor(r / max_scale_down_rate), max(1, ceil(max_scale_up_rate x r))]``;
* **panic** starts (or is extended) when ``dppc / max(r, 1) >= panic_threshold``; it ends once the
  threshold has not been crossed for a whole stable window, which also forgets the panic maximum;
* in panic the count is ``max(dspc, dppc)`` and never goes down (the highest count asked for
  since panic began); otherwise ``dspc``;
* an optional ``scale_down_delay_s`` keeps the highest count of that many seconds (AIBrix's
  ``ScaleDownDelay``), then ``[min_replicas, max_replicas]``.

The panic maximum starts at the ready count the first tick sees (AIBrix: at the autoscaler's
creation). Newer AIBrix (``HEAD``) averages the pods instead of summing them, so its
``ceil(mean / target)`` no longer grows with the pod count, and enters panic on ``P / S > 2``;
``aggregation: pod_mean`` gives the first of those two changes, the second is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.policies._config import ConfigTiming, field_error
from gpuscale.policies.base import Aggregation, Decision, Metric, MetricsSnapshot, Reason, SignalSpec
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import (
    Bounds,
    Cooldown,
    Pipeline,
    PipelineState,
    Recommendation,
    ScaleDownDelay,
    SignalCheck,
    TailedPolicy,
    direction_reason,
)


def apa_recommendation(
    current: int,
    per_pod: float,
    target: float,
    *,
    up_tolerance: float,
    down_tolerance: float,
    max_up_rate: float,
    max_down_rate: float,
) -> Recommendation:
    """AIBrix APA's ``computeTargetReplicas``."""
    ratio = per_pod / target
    seen = f"{per_pod:.4g} per pod / target {target:g} = {ratio:.3f}"
    if ratio > 1 + up_tolerance:
        wanted = math.ceil(current * ratio)
        cap = math.ceil(max_up_rate * current)
        got = min(wanted, cap)
        how = f"ceil({current} x {ratio:.3f}) = {wanted}" + (f", capped at {cap}" if wanted > cap else "")
        return Recommendation(got, Reason.SCALE_UP, f"{seen} > 1 + {up_tolerance:g}: {how}", ratio)
    if ratio < 1 - down_tolerance:
        wanted = math.ceil(current * ratio)
        floor = math.floor(current / max_down_rate)
        got = max(wanted, floor)
        how = f"ceil({current} x {ratio:.3f}) = {wanted}" + (
            f", floored at {floor}" if wanted < floor else ""
        )
        return Recommendation(got, Reason.SCALE_DOWN, f"{seen} < 1 - {down_tolerance:g}: {how}", ratio)
    return Recommendation(
        current,
        Reason.WITHIN_TOLERANCE,
        f"{seen} within [1 - {down_tolerance:g}, 1 + {up_tolerance:g}] -> keep {current}",
        ratio,
    )


@dataclass(frozen=True)
class ApaState:
    tail: PipelineState


@dataclass(frozen=True)
class AibrixApaPolicy(ConfigTiming, TailedPolicy[ApaState]):
    """AIBrix APA (see the module docstring)."""

    config: AibrixApaConfig

    @property
    def name(self) -> str:
        return self.config.name or "aibrix-apa"

    @property
    def usage(self) -> SignalSpec:
        return SignalSpec(self.config.metric, self.config.window_s, Aggregation.POD_MEAN)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.usage,)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {self.usage: "window_s"}

    @cached_property
    def tail(self) -> Pipeline:
        cfg = self.config
        return Pipeline(
            (
                Cooldown(cfg.scale_up_cooldown_s, cfg.scale_down_cooldown_s),
                Bounds(cfg.min_replicas, cfg.max_replicas),
            )
        )

    def initial_state(self) -> ApaState:
        return ApaState(self.tail.initial_state())

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: ApaState
    ) -> tuple[Recommendation, ApaState]:
        cfg = self.config
        rec = apa_recommendation(
            snapshot.current_replicas,
            check.values[self.usage],
            cfg.target_value,
            up_tolerance=cfg.up_tolerance,
            down_tolerance=cfg.down_tolerance,
            max_up_rate=cfg.max_scale_up_rate,
            max_down_rate=cfg.max_scale_down_rate,
        )
        return rec, state


@register_kind
class AibrixApaConfig(KindConfig):
    """AIBrix APA: ceil(current x metric / target) outside asymmetric fluctuation tolerances."""

    kind: Literal["aibrix-apa"] = "aibrix-apa"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    metric: Metric = Field(
        default=Metric.KV_CACHE_USAGE,
        description="The per-pod metric (targetMetric), averaged over the pods. Default kv_cache_usage.",
    )
    target_value: float = Field(gt=0, description="targetValue: the per-pod value to aim for; required.")
    up_tolerance: float = Field(
        default=0.1,
        ge=0,
        description="up-fluctuation-tolerance: scale up above target x (1 + this). Default 0.1.",
    )
    down_tolerance: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="down-fluctuation-tolerance: scale down below target x (1 - this). Default 0.2.",
    )
    max_scale_up_rate: float = Field(
        default=2.0, ge=1, description="At most ceil(rate x current) after a scale-up. Default 2."
    )
    max_scale_down_rate: float = Field(
        default=2.0, ge=1, description="At least floor(current / rate) after a scale-down. Default 2."
    )
    window_s: float = Field(
        default=60.0, gt=0, description="Metric window, seconds (apa window). Default 60."
    )
    scale_up_cooldown_s: float = Field(
        default=0.0, ge=0, description="No scale-up this long after one. Default 0."
    )
    scale_down_cooldown_s: float = Field(
        default=0.0,
        ge=0,
        description="No scale-down this long after a change. Default 0 (newer AIBrix: 300).",
    )
    min_replicas: int = Field(default=1, ge=0, description="minReplicas. Default 1.")
    max_replicas: int = Field(ge=1, description="maxReplicas; required.")
    sync_period_s: float = Field(default=15.0, gt=0, description="Control tick, seconds. Default 15.")
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale (hold). Default 3 sync periods."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> AibrixApaConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        return self

    def build(self) -> AibrixApaPolicy:
        return AibrixApaPolicy(self)


# --------------------------------------------------------------------------------------------------
# KPA
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpaState:
    """Panic bookkeeping (``panic_since_s``: the last time the threshold was crossed, None when not
    panicking; ``max_panic_pods``: None until the first tick) and the tail's state."""

    panic_since_s: float | None
    max_panic_pods: int | None
    tail: PipelineState


@dataclass(frozen=True)
class AibrixKpaPolicy(ConfigTiming, TailedPolicy[KpaState]):
    """AIBrix KPA (see the module docstring)."""

    config: AibrixKpaConfig
    require_all_signals = True

    @property
    def name(self) -> str:
        return self.config.name or "aibrix-kpa"

    @property
    def stable(self) -> SignalSpec:
        return SignalSpec(self.config.metric, self.config.stable_window_s, self.config.aggregation)

    @property
    def panic(self) -> SignalSpec:
        return SignalSpec(self.config.metric, self.config.panic_window_s, self.config.aggregation)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.stable, self.panic)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {self.stable: "stable_window_s", self.panic: "panic_window_s"}

    @cached_property
    def tail(self) -> Pipeline:
        cfg = self.config
        return Pipeline((ScaleDownDelay(cfg.scale_down_delay_s), Bounds(cfg.min_replicas, cfg.max_replicas)))

    def initial_state(self) -> KpaState:
        return KpaState(None, None, self.tail.initial_state())

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: KpaState
    ) -> tuple[Recommendation | Decision, KpaState]:
        cfg = self.config
        now, ready = snapshot.time_s, snapshot.ready
        stable, panic = check.values[self.stable], check.values[self.panic]
        max_panic = ready if state.max_panic_pods is None else state.max_panic_pods
        since = state.panic_since_s
        dspc = math.ceil(stable / cfg.target_value)
        dppc = math.ceil(panic / cfg.target_value)
        over = dppc / max(1, ready) >= cfg.panic_threshold
        if over:
            since = now
        elif since is not None and since + cfg.stable_window_s < now:
            since, max_panic = None, 0
        lo = math.floor(ready / cfg.max_scale_down_rate)
        hi = max(1, math.ceil(cfg.max_scale_up_rate * ready))
        stable_pods = min(max(dspc, lo), hi)
        panic_pods = min(max(dppc, lo), hi)
        seen = f"stable {stable:.4g} / {cfg.target_value:g} -> {dspc}, panic {panic:.4g} -> {dppc} on {ready} ready"
        if since is None:
            wanted = stable_pods
            how = f"{seen}: stable mode -> {wanted}"
            reason = direction_reason(wanted, snapshot.current_replicas)
        else:
            wanted = max(stable_pods, panic_pods, max_panic)
            max_panic = wanted
            how = f"{seen}: panic mode (no scale-down) -> {wanted}"
            reason = Reason.SCALE_UP_PANIC if wanted > snapshot.current_replicas else Reason.PANIC_MODE
        return Recommendation(wanted, reason, how), replace(
            state, panic_since_s=since, max_panic_pods=max_panic
        )


@register_kind
class AibrixKpaConfig(KindConfig):
    """AIBrix KPA: Knative's stable/panic windows on a summed pod metric such as KV-cache usage."""

    kind: Literal["aibrix-kpa"] = "aibrix-kpa"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    metric: Metric = Field(default=Metric.KV_CACHE_USAGE, description="targetMetric. Default kv_cache_usage.")
    aggregation: Literal[Aggregation.TOTAL, Aggregation.POD_MEAN] = Field(
        default=Aggregation.TOTAL,
        description="How pods combine: total (AIBrix <= v0.4, Knative) or pod_mean (newer AIBrix). Default total.",
    )
    target_value: float = Field(gt=0, description="targetValue per pod; required.")
    stable_window_s: float = Field(default=60.0, gt=0, description="Stable window, s. Default 60.")
    panic_window_s: float = Field(default=10.0, gt=0, description="Panic window, s. Default 10.")
    panic_threshold: float = Field(
        default=2.0, gt=1, description="Panic when ceil(panic / target) / ready >= this. Default 2.0 (200 %)."
    )
    max_scale_up_rate: float = Field(default=2.0, ge=1, description="At most ceil(rate x ready). Default 2.")
    max_scale_down_rate: float = Field(
        default=2.0, ge=1, description="At least floor(ready / rate). Default 2."
    )
    scale_down_delay_s: float = Field(default=0.0, ge=0, description="Scale-down delay, s. Default 0.")
    min_replicas: int = Field(default=1, ge=0, description="minReplicas. Default 1.")
    max_replicas: int = Field(ge=1, description="maxReplicas; required.")
    sync_period_s: float = Field(default=15.0, gt=0, description="Control tick, seconds. Default 15.")
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale (hold). Default 3 sync periods."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> AibrixKpaConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        if self.panic_window_s > self.stable_window_s:
            field_error(
                ("panic_window_s",),
                self.panic_window_s,
                f"must be <= stable_window_s ({self.stable_window_s:g})",
            )
        return self

    def build(self) -> AibrixKpaPolicy:
        return AibrixKpaPolicy(self)
