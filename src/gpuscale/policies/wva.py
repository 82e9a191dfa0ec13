"""``kind: wva-saturation``: llm-d's workload-variant-autoscaler (WVA), its saturation analyzer.

Source read: ``github.com/llm-d/llm-d-workload-variant-autoscaler`` at commit ``b08b1c77``,
``internal/saturation/analyzer.go`` (``AnalyzeModelSaturation``, ``isScaleDownSafe``,
``CalculateSaturationTargets``), ``internal/saturation/constants.go``
(``MinNonSaturatedReplicasForScaleDown = 2``), ``internal/collector/registration/saturation.go``
(the per-pod queries) and ``docs/saturation-scaling-config.md`` (the defaults). One model with one
variant (one accelerator type), which is what a gpuscale deployment is.

Every ``sync_period_s`` (WVA's ``GLOBAL_OPT_INTERVAL``, 60 s) the analyzer looks at each pod that
reports both vLLM gauges, ``vllm:kv_cache_usage_perc`` and ``vllm:num_requests_waiting``:

1. a pod is **saturated** when ``kv >= kv_cache_threshold`` (0.80) **or**
   ``waiting >= queue_length_threshold`` (5);
2. over the **non-saturated** pods only, the spare capacity is averaged:
   ``spare_kv = mean(kv_cache_threshold - kv)`` and ``spare_queue = mean(queue_length_threshold -
   waiting)``; with no non-saturated pod both averages are 0;
3. **scale up** (one replica) when ``spare_kv < kv_spare_trigger`` (0.1) **or** ``spare_queue <
   queue_spare_trigger`` (3) -- so a model whose every pod is saturated always scales up;
4. otherwise **scale down** (one replica) only when it is safe: at least two non-saturated pods
   (with one, removing it leaves nothing to take its load), and after spreading their load over one
   pod fewer (each average load × N / (N - 1)) both spare capacities still reach their triggers;
5. otherwise keep the count.

The count it changes is the number of pods reporting metrics, not the spec: ``target = reporting +
1`` (or ``- 1``). WVA blocks every decision while the model is **in transition**: when the pods
reporting metrics are not as many as the spec asks for (pods starting, pending or gone) it keeps
the spec (here: a hold, ``DelayPending``). It never removes the last replica (scale-down needs a
base above 1). With no pod reporting, the analysis is empty and nothing changes (here: a hold,
``NoData``).

Per-pod values come from ``SignalValue.per_pod`` (the simulator's samples). A source that only has
the pod mean (no per-pod samples) is read as every ready pod at the mean, which equals WVA's rule
when the pods are loaded alike and can miss one saturated pod among idle ones. WVA's collector
takes ``max_over_time(...[1m])`` per pod; gpuscale's per-pod values are averages over the window,
so a burst shorter than the window weighs less here.

The decision goes straight to the tail's bounds; WVA hands its target to an HPA or KEDA, whose own
stabilization the deployment adds (wrap it with a ``safety`` block for a step limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.policies._config import ConfigTiming, field_error
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import (
    Bounds,
    Pipeline,
    PipelineState,
    Recommendation,
    SignalCheck,
    TailedPolicy,
)

MIN_NON_SATURATED_FOR_SCALE_DOWN = 2
"""WVA's ``MinNonSaturatedReplicasForScaleDown``."""


@dataclass(frozen=True)
class ReplicaLoad:
    """One pod's two saturation gauges."""

    name: str
    kv_cache_usage: float
    waiting: float


@dataclass(frozen=True)
class SaturationAnalysis:
    """The analyzer's result over the pods that report metrics."""

    replicas: int
    non_saturated: int
    spare_kv: float
    spare_queue: float
    scale_up: bool
    scale_down_safe: bool
    why: str


def analyze(
    loads: tuple[ReplicaLoad, ...],
    *,
    kv_threshold: float,
    queue_threshold: float,
    kv_trigger: float,
    queue_trigger: float,
) -> SaturationAnalysis:
    """WVA's saturation analysis of one variant's pods (see the module docstring, steps 1-4)."""
    free = [r for r in loads if r.kv_cache_usage < kv_threshold and r.waiting < queue_threshold]
    n = len(free)
    spare_kv = sum(kv_threshold - r.kv_cache_usage for r in free) / n if n else 0.0
    spare_queue = sum(queue_threshold - r.waiting for r in free) / n if n else 0.0
    kv_low = spare_kv < kv_trigger
    queue_low = spare_queue < queue_trigger
    seen = (
        f"{len(loads) - n}/{len(loads)} pod(s) saturated; spare over {n} non-saturated: "
        f"KV {spare_kv:.3f}, queue {spare_queue:.2f}"
    )
    if kv_low or queue_low:
        which = " and ".join(
            part
            for part, low in (
                (f"KV spare {spare_kv:.3f} < {kv_trigger:g}", kv_low),
                (f"queue spare {spare_queue:.2f} < {queue_trigger:g}", queue_low),
            )
            if low
        )
        return SaturationAnalysis(len(loads), n, spare_kv, spare_queue, True, False, f"{seen}: {which}")
    if n < MIN_NON_SATURATED_FOR_SCALE_DOWN:
        return SaturationAnalysis(
            len(loads),
            n,
            spare_kv,
            spare_queue,
            False,
            False,
            f"{seen}: scale-down unsafe with {n} non-saturated pod(s) (needs {MIN_NON_SATURATED_FOR_SCALE_DOWN})",
        )
    factor = n / (n - 1)
    kv_after = kv_threshold - (kv_threshold - spare_kv) * factor
    queue_after = queue_threshold - (queue_threshold - spare_queue) * factor
    safe = kv_after >= kv_trigger and queue_after >= queue_trigger
    verdict = "safe" if safe else "unsafe"
    return SaturationAnalysis(
        len(loads),
        n,
        spare_kv,
        spare_queue,
        False,
        safe,
        f"{seen}; without one pod: KV spare {kv_after:.3f}, queue spare {queue_after:.2f} -> scale-down {verdict}",
    )


def replica_loads(kv: SignalValue, waiting: SignalValue, ready: int) -> tuple[ReplicaLoad, ...]:
    """The pods reporting both gauges: from the per-pod samples (ready pods with both values), else
    ``ready`` pods each at the pod mean."""
    if kv.per_pod and waiting.per_pod:
        queue = {p.name: p.value for p in waiting.per_pod if p.ready and p.value is not None}
        return tuple(
            ReplicaLoad(p.name, p.value, queue[p.name])
            for p in kv.per_pod
            if p.ready and p.value is not None and p.name in queue
        )
    if kv.value is None or waiting.value is None:
        return ()
    return tuple(ReplicaLoad(f"pod-{i}", kv.value, waiting.value) for i in range(ready))


@dataclass(frozen=True)
class WvaState:
    """The tail's state (bounds keep none)."""

    tail: PipelineState


@dataclass(frozen=True)
class WvaSaturationPolicy(ConfigTiming, TailedPolicy[WvaState]):
    """llm-d WVA's saturation analyzer (see the module docstring)."""

    config: WvaSaturationConfig
    require_all_signals = True

    @property
    def name(self) -> str:
        return self.config.name or "wva-saturation"

    @property
    def kv(self) -> SignalSpec:
        return SignalSpec(Metric.KV_CACHE_USAGE, self.config.window_s, Aggregation.POD_MEAN)

    @property
    def waiting(self) -> SignalSpec:
        return SignalSpec(Metric.REQUESTS_WAITING, self.config.window_s, Aggregation.POD_MEAN)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.kv, self.waiting)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {self.kv: "window_s", self.waiting: "window_s"}

    @cached_property
    def tail(self) -> Pipeline:
        return Pipeline((Bounds(self.config.min_replicas, self.config.max_replicas),))

    def initial_state(self) -> WvaState:
        return WvaState(self.tail.initial_state())

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: WvaState
    ) -> tuple[Recommendation | Decision, WvaState]:
        cfg = self.config
        loads = replica_loads(snapshot.get(self.kv), snapshot.get(self.waiting), snapshot.ready)
        if not loads:
            return Decision.hold(
                Reason.NO_DATA, "no pod reports both KV-cache usage and waiting requests"
            ), state
        current = snapshot.current_replicas
        if len(loads) != current:
            return (
                Decision.hold(
                    Reason.DELAY_PENDING,
                    f"in transition: {len(loads)} pod(s) report metrics, the spec asks for {current}",
                ),
                state,
            )
        a = analyze(
            loads,
            kv_threshold=cfg.kv_cache_threshold,
            queue_threshold=cfg.queue_length_threshold,
            kv_trigger=cfg.kv_spare_trigger,
            queue_trigger=cfg.queue_spare_trigger,
        )
        if a.scale_up:
            return Recommendation(a.replicas + 1, Reason.SCALE_UP, f"{a.why} -> {a.replicas} + 1"), state
        if a.scale_down_safe and a.replicas > 1:
            return Recommendation(a.replicas - 1, Reason.SCALE_DOWN, f"{a.why} -> {a.replicas} - 1"), state
        return Recommendation(a.replicas, Reason.WITHIN_TOLERANCE, f"{a.why} -> keep {a.replicas}"), state


@register_kind
class WvaSaturationConfig(KindConfig):
    """llm-d workload-variant-autoscaler: +1 on low spare KV-cache/queue capacity, -1 when safe."""

    kind: Literal["wva-saturation"] = "wva-saturation"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(
        default=1, ge=1, description="Fewest replicas (>= 1: WVA never removes the last replica)."
    )
    max_replicas: int = Field(ge=1, description="Most replicas; required (the HPA/KEDA maxReplicas).")
    kv_cache_threshold: float = Field(
        default=0.80,
        gt=0,
        le=1,
        description="kvCacheThreshold: a pod at or above this KV-cache usage (0-1) is saturated. Default 0.80.",
    )
    queue_length_threshold: float = Field(
        default=5.0,
        gt=0,
        description="queueLengthThreshold: a pod with this many waiting requests or more is saturated."
        " Default 5.",
    )
    kv_spare_trigger: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="kvSpareTrigger: scale up when the mean spare KV capacity of the non-saturated pods"
        " is below this. Default 0.1.",
    )
    queue_spare_trigger: float = Field(
        default=3.0,
        ge=0,
        description="queueSpareTrigger: scale up when their mean spare queue capacity is below this."
        " Default 3.",
    )
    window_s: float = Field(
        default=60.0,
        gt=0,
        description="Window of the per-pod gauges, seconds (WVA's queries use [1m]). Default 60.",
    )
    sync_period_s: float = Field(
        default=60.0, gt=0, description="Control tick, seconds (GLOBAL_OPT_INTERVAL, default 60)."
    )
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale (hold). Default 3 sync periods."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> WvaSaturationConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        if self.kv_spare_trigger > self.kv_cache_threshold:
            field_error(
                ("kv_spare_trigger",),
                self.kv_spare_trigger,
                f"must be <= kv_cache_threshold ({self.kv_cache_threshold:g}): the spare is measured below it",
            )
        if self.queue_spare_trigger > self.queue_length_threshold:
            field_error(
                ("queue_spare_trigger",),
                self.queue_spare_trigger,
                f"must be <= queue_length_threshold ({self.queue_length_threshold:g})",
            )
        return self

    def build(self) -> WvaSaturationPolicy:
        return WvaSaturationPolicy(self)
