"""``kind: hpa`` — the Kubernetes Horizontal Pod Autoscaler (autoscaling/v2), tick for tick.

One sync (every 15 s, ``--horizontal-pod-autoscaler-sync-period``) does what
``reconcileAutoscaler`` does upstream:

1. ``spec.replicas == 0`` with ``minReplicas > 0``: scaling is disabled (hold, ``ScalingDisabled``);
   ``current > max`` goes to max, ``current < min`` to min, before any metric is read.
2. Every metric proposes a replica count (``computeReplicasForMetrics``); the tolerance (0.1) and
   the missing-metric / unready-pod rules of ``replica_calculator.go`` apply *per metric*:

   ============================  ===============================================================
   metric source / target        proposal
   ============================  ===============================================================
   Resource cpu, Utilization     ``ceil(ratio x ready)``, ratio = int(mean % of request) / target
   Resource / Pods, AverageValue ``ceil(ratio x ready)``, ratio = mean per-pod value / target
   Object / External, Value      ``ceil(value / target x ready)`` (``ceil(value/target)`` from 0)
   Object / External, AvgValue   ``ceil(value / target)``; tolerance on value / (target x pods)
   ============================  ===============================================================

   Per-pod rules (``groupPods``): a Pending pod is *unready*; a pod without a sample is *missing*;
   only for CPU is readiness checked (a pod not Ready, or Ready for less than one metric window
   inside the CPU initialization period, is unready). With missing or (on a scale-up) unready pods
   the ratio is recomputed with missing pods at the target (scale-down) or 0 (scale-up) and unready
   pods at 0; a result within tolerance or reversing direction keeps the current count.
3. Multiple metrics: the **max** proposal wins. All metrics invalid: hold (``NoData``/``StaleData``);
   some invalid and the valid ones propose a scale-down: hold (``PartialData``).
4. The shared tail: with ``behavior``, stabilization windows (min over the up window, max over the
   down window) then bounds then Pods/Percent rate limits; without ``behavior`` (the legacy path),
   the max recommendation over 5 min, bounds, and the ``max(2 x current, 4)`` scale-up cap.

Steps 1 and 4 are :class:`~gpuscale.policies.stages.TailedPolicy`'s (through
:class:`HpaTailedPolicy`, which KEDA's generated HPA shares); steps 2 and 3 are this module's.

When a signal carries no per-pod samples (``SignalValue.per_pod`` empty: the source only knows the
aggregate, or the metric is a service-level latency), the aggregate stands for the per-pod average
and ``snapshot.ready`` for the pod count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from gpuscale.config.loading import StrictModel
from gpuscale.policies._config import MISSING_KEY, ConfigTiming, field_error
from gpuscale.policies.base import (
    LATENCY_METRICS,
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    PodSample,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import (
    Bounds,
    FamilyStateT,
    LegacyScaleUpCap,
    LegacyStabilization,
    Pipeline,
    PipelineState,
    PolicyType,
    RateLimit,
    Recommendation,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    SignalCheck,
    Stabilization,
    Stage,
    TailedPolicy,
    Tolerance,
)

HPA_SYNC_PERIOD_S = 15.0
"""``--horizontal-pod-autoscaler-sync-period`` default."""

MetricSourceType = Literal["Resource", "Pods", "Object", "External"]
TargetType = Literal["Utilization", "AverageValue", "Value"]

_RESOURCE_METRICS: dict[str, Metric] = {"cpu": Metric.CPU_UTIL}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class HpaMetricTarget(StrictModel):
    """A MetricTarget: exactly the field of its ``type`` is set."""

    type: TargetType = Field(description="Utilization (Resource only), AverageValue, or Value.")
    average_utilization_percent: float | None = Field(
        None, gt=0, description="Utilization target: percent of the pods' request (HPA averageUtilization)."
    )
    average_value: float | None = Field(
        None, gt=0, description="AverageValue target: the per-pod value to aim for, in the metric's unit."
    )
    value: float | None = Field(
        None, gt=0, description="Value target: the value of the whole metric to aim for."
    )

    @model_validator(mode="after")
    def _one_field_for_the_type(self) -> HpaMetricTarget:
        wanted = {
            "Utilization": "average_utilization_percent",
            "AverageValue": "average_value",
            "Value": "value",
        }[self.type]
        if getattr(self, wanted) is None:
            field_error((wanted,), MISSING_KEY)
        for other in ("average_utilization_percent", "average_value", "value"):
            if other != wanted and getattr(self, other) is not None:
                field_error(
                    (other,), getattr(self, other), f"not allowed with a {self.type} target (set {wanted})"
                )
        return self

    @property
    def amount(self) -> float:
        got = {"Utilization": self.average_utilization_percent, "AverageValue": self.average_value}.get(
            self.type, self.value
        )
        assert got is not None
        return got


class HpaMetric(StrictModel):
    """One entry of the HPA's ``metrics``: a source type, what it measures, and a target."""

    type: MetricSourceType = Field(
        description="Resource (cpu), Pods (a per-pod metric), Object (one object's metric), External."
    )
    resource: Literal["cpu", "memory"] | None = Field(
        None, description="Resource metrics only: the resource name. gpuscale models cpu."
    )
    metric: Metric | None = Field(
        None, description="Pods/Object/External metrics: the gpuscale metric (gpu_util, queue_length, ...)."
    )
    aggregation: Aggregation | None = Field(
        None,
        description="Object/External only: how pods combine into the value. Default total "
        "(an External metric sums all returned series). Pods/Resource are always per-pod means.",
    )
    window_s: float = Field(
        60.0,
        gt=0,
        description="Window the metrics pipeline averages over (prometheus-adapter rate[1m] style). "
        "Default 60 s.",
    )
    target: HpaMetricTarget = Field(description="The target value for this metric.")

    @model_validator(mode="after")
    def _fits_the_source_type(self) -> HpaMetric:
        if self.type == "Resource":
            if self.resource is None:
                field_error(("resource",), MISSING_KEY)
            if self.resource == "memory":
                field_error(
                    ("resource",),
                    self.resource,
                    "gpuscale does not model pod memory; allowed: cpu (use a Pods metric over "
                    "gpu_memory_util for GPU memory)",
                )
            if self.metric is not None:
                field_error(
                    ("metric",), self.metric.value, "not allowed on a Resource metric (use resource: cpu)"
                )
            if self.target.type == "Value":
                field_error(
                    ("target", "type"), "Value", "a Resource metric takes Utilization or AverageValue"
                )
        else:
            if self.metric is None:
                field_error(("metric",), MISSING_KEY)
            if self.resource is not None:
                field_error(
                    ("resource",), self.resource, f"only Resource metrics name a resource, not {self.type}"
                )
            if self.target.type == "Utilization":
                field_error(
                    ("target", "type"),
                    "Utilization",
                    f"a {self.type} metric takes "
                    + ("AverageValue" if self.type == "Pods" else "Value or AverageValue")
                    + " (Utilization is for Resource metrics)",
                )
            if self.type == "Pods" and self.target.type != "AverageValue":
                field_error(
                    ("target", "type"), self.target.type, "a Pods metric takes an AverageValue target"
                )
        if self.aggregation is not None and self.type in ("Resource", "Pods"):
            field_error(
                ("aggregation",), self.aggregation.value, "only Object/External metrics take an aggregation"
            )
        return self

    @property
    def gpuscale_metric(self) -> Metric:
        if self.type == "Resource":
            return _RESOURCE_METRICS[self.resource or "cpu"]
        assert self.metric is not None
        return self.metric

    @property
    def spec(self) -> SignalSpec:
        if self.type in ("Resource", "Pods"):
            aggregation = Aggregation.POD_MEAN
        else:
            aggregation = self.aggregation or Aggregation.TOTAL
        return SignalSpec(self.gpuscale_metric, self.window_s, aggregation)

    @property
    def label(self) -> str:
        return f"{self.type} {self.resource or self.gpuscale_metric.value}"


class HpaScalingPolicy(StrictModel):
    """An HPAScalingPolicy: at most ``value`` pods or percent of change per ``period_s``."""

    type: Literal["Pods", "Percent"] = Field(
        description="Pods (absolute) or Percent (of the count at period start)."
    )
    value: int = Field(gt=0, description="How many pods, or what percent, may change per period.")
    period_s: int = Field(gt=0, le=1800, description="The period the change is counted over (1..1800 s).")


class HpaScalingRules(StrictModel):
    """One direction of ``behavior``; unset fields take the autoscaling/v2 API defaults."""

    stabilization_window_s: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="Default scaleUp 0 s; scaleDown the controller's --horizontal-pod-autoscaler-"
        "downscale-stabilization, 300 s (autoscaling/v2 defaults.go).",
    )
    select_policy: Literal["Max", "Min", "Disabled"] = Field(
        "Max", description="Max picks the largest change, Min the smallest, Disabled none. Default Max."
    )
    policies: tuple[HpaScalingPolicy, ...] | None = Field(
        None,
        description="Default scaleUp: Pods 4 per 15 s and Percent 100 per 15 s; "
        "scaleDown: Percent 100 per 15 s (autoscaling/v2 defaults.go).",
    )
    tolerance: float | None = Field(
        None,
        ge=0,
        description="Per-direction tolerance (KEP-4951, HPAConfigurableTolerance); "
        "default the HPA's tolerance.",
    )

    @model_validator(mode="after")
    def _some_policy(self) -> HpaScalingRules:
        if self.policies is not None and not self.policies:
            field_error(("policies",), [], "at least one policy (or leave policies out for the defaults)")
        return self


class HpaBehavior(StrictModel):
    """``spec.behavior``: present (even empty) switches the HPA from the legacy path to behaviors."""

    scale_up: HpaScalingRules = Field(default_factory=HpaScalingRules, description="Scale-up rules.")
    scale_down: HpaScalingRules = Field(default_factory=HpaScalingRules, description="Scale-down rules.")


DEFAULT_SCALE_UP_POLICIES = (
    ScalingPolicy(PolicyType.PODS, 4, 15),
    ScalingPolicy(PolicyType.PERCENT, 100, 15),
)
DEFAULT_SCALE_DOWN_POLICIES = (ScalingPolicy(PolicyType.PERCENT, 100, 15),)


def scaling_rules(
    rules: HpaScalingRules, default_window_s: float, default_policies: tuple[ScalingPolicy, ...]
) -> ScalingRules:
    """One direction of a ``behavior`` with the API defaults filled in (``GenerateHPAScale*Rules``)."""
    policies = (
        default_policies
        if rules.policies is None
        else tuple(ScalingPolicy(PolicyType(p.type), p.value, p.period_s) for p in rules.policies)
    )
    window = default_window_s if rules.stabilization_window_s is None else float(rules.stabilization_window_s)
    return ScalingRules(window, policies, SelectPolicy(rules.select_policy), rules.tolerance)


def _default_metrics() -> tuple[HpaMetric, ...]:
    # autoscaling/v2 defaulting: no metrics means CPU at 80 % utilization.
    return (
        HpaMetric(
            type="Resource",
            resource="cpu",
            target=HpaMetricTarget(type="Utilization", average_utilization_percent=80),
        ),
    )


@register_kind
class HpaConfig(KindConfig):
    """Kubernetes HPA autoscaling/v2: per-metric proposals, the max wins, tolerance, behavior."""

    kind: Literal["hpa"] = "hpa"
    name: str | None = Field(None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(
        1,
        ge=0,
        description="Default 1 (autoscaling/v2). 0 needs an Object or External metric (HPAScaleToZero).",
    )
    max_replicas: int = Field(ge=1, description="Upper bound; required, as in the HPA spec.")
    metrics: tuple[HpaMetric, ...] = Field(
        default_factory=_default_metrics,
        description="Metric specs; default cpu Utilization 80 % (autoscaling/v2 defaulting).",
    )
    behavior: HpaBehavior | None = Field(
        None,
        description="Absent: the legacy path (5-min downscale stabilization, scale-up cap max(2x, 4)). "
        "Present: stabilization windows and rate-limit policies with the API defaults.",
    )
    tolerance: float = Field(
        0.1, ge=0, lt=1, description="Default 0.1 (--horizontal-pod-autoscaler-tolerance)."
    )
    downscale_stabilization_s: float = Field(
        300.0,
        ge=0,
        description="Default 300 s (--horizontal-pod-autoscaler-downscale-stabilization): the legacy "
        "window, and behavior.scale_down's default window.",
    )
    cpu_initialization_period_s: float = Field(
        300.0, ge=0, description="Default 300 s (--horizontal-pod-autoscaler-cpu-initialization-period)."
    )
    sync_period_s: float = Field(
        HPA_SYNC_PERIOD_S, gt=0, description="Default 15 s (--horizontal-pod-autoscaler-sync-period)."
    )
    max_signal_age_s: float | None = Field(
        None, gt=0, description="A signal older than this is stale (hold). Default 3 sync periods (45 s)."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> HpaConfig:
        # (Length checks here, not as min_length: pydantic would repeat a bad item's error as a
        # "too short" error on the whole list.)
        if not self.metrics:
            field_error(("metrics",), [], "at least one metric is required")
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        if self.min_replicas == 0 and not any(m.type in ("Object", "External") for m in self.metrics):
            field_error(
                ("min_replicas",),
                0,
                "0 is allowed only with at least one Object or External metric (HPAScaleToZero); "
                "allowed: >= 1",
            )
        return self

    @classmethod
    def example(cls) -> HpaConfig:
        """A representative config (two metrics, a behavior block) for docs and conformance tests."""
        return cls.model_validate(
            {
                "min_replicas": 1,
                "max_replicas": 12,
                "metrics": [
                    {
                        "type": "Pods",
                        "metric": "gpu_util",
                        "target": {"type": "AverageValue", "average_value": 60},
                    },
                    {
                        "type": "External",
                        "metric": "queue_length",
                        "target": {"type": "AverageValue", "average_value": 8},
                    },
                ],
                "behavior": {"scale_down": {"stabilization_window_s": 120}},
            }
        )

    def build(self) -> HpaPolicy:
        return HpaPolicy(self)


# --------------------------------------------------------------------------------------------------
# Per-metric replica calculation (replica_calculator.go)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """One metric's replica proposal, or why it has none (``replicas is None``: an invalid metric)."""

    label: str
    replicas: int | None
    message: str
    invalid_reason: Reason = Reason.NO_DATA
    within_tolerance: bool = False
    fallback: bool = False


@dataclass(frozen=True)
class PodRules:
    """The controller flags the per-pod grouping uses.

    (``--horizontal-pod-autoscaler-initial-readiness-delay`` is not modelled: it only separates
    "never became ready" from "was ready once" for not-Ready pods, which a PodSample cannot tell.)
    """

    cpu_initialization_period_s: float = 300.0


def _cpu_unready(pod: PodSample, window_s: float, rules: PodRules) -> bool:
    # groupPods' CPU branch, with the facts a PodSample carries. A Ready pod whose readiness is younger
    # than one metric window (inside the initialization period) has a sample that covers its start-up
    # burn, so it is ignored; a not-Ready pod is ignored (upstream also ignores it after the
    # initialization period only if it never became ready; a PodSample cannot tell, so we keep the
    # start-up reading, the common case).
    if not pod.ready:
        return True
    return pod.ready_for_s < min(window_s, rules.cpu_initialization_period_s)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def per_pod_proposal(
    label: str,
    got: SignalValue,
    target: float,
    *,
    utilization: bool,
    cpu: bool,
    window_s: float,
    current: int,
    ready_count: int,
    tolerance: Tolerance,
    rules: PodRules,
    unit: str = "",
) -> Proposal:
    """A Resource or Pods metric's proposal (``GetResourceReplicas`` / ``calcPlainMetricReplicas``).

    ``utilization``: the value is a percent of request and, like upstream's integer arithmetic, the
    average is truncated to a whole percent before dividing by the target (79.9 % -> 79 %).
    """

    def usage_of(values: Sequence[float]) -> float:
        mean = _mean(values)
        return float(int(mean)) if utilization else mean

    if got.value is None:
        return Proposal(label, None, f"{label}: no data ({got.reason or 'no samples'})")
    if not got.per_pod:
        # Aggregate only: the value stands for the per-pod mean over snapshot.ready pods.
        if ready_count <= 0:
            return Proposal(label, None, f"{label}: no ready pods to average over")
        usage = float(int(got.value)) if utilization else got.value
        ratio = usage / target
        if tolerance.is_within(ratio):
            msg = (
                f"{label}: {ready_count} pods x {usage:g}{unit} / {target:g}{unit} target = ratio {ratio:.3f}"
            )
            return Proposal(label, current, f"{msg}, within tolerance -> {current}", within_tolerance=True)
        replicas = math.ceil(ratio * ready_count)
        return Proposal(
            label,
            replicas,
            f"{label}: {ready_count} pods x {usage:g}{unit} / {target:g}{unit} target -> {replicas} pods",
        )

    ready_values: list[float] = []
    unready = missing = 0
    for pod in got.per_pod:
        if not pod.running:
            unready += 1
        elif pod.value is None:
            missing += 1
        elif cpu and _cpu_unready(pod, window_s, rules):
            unready += 1
        else:
            ready_values.append(pod.value)
    if not ready_values:
        return Proposal(label, None, f"{label}: no metrics for the targeted pods (pods might be unready)")
    usage = usage_of(ready_values)
    ratio = usage / target
    n = len(ready_values)
    head = f"{label}: {n} pods x {usage:g}{unit} / {target:g}{unit} target"
    scale_up_with_unready = unready > 0 and ratio > 1.0
    if not scale_up_with_unready and missing == 0:
        if tolerance.is_within(ratio):
            return Proposal(
                label,
                current,
                f"{head} = ratio {ratio:.3f}, within tolerance -> {current}",
                within_tolerance=True,
            )
        replicas = math.ceil(ratio * n)
        return Proposal(label, replicas, f"{head} -> {replicas} pods")

    # Conservative recomputation. Missing pods: at the target on a scale-down (for utilization
    # max(100 %, target), since a missing pod might be busy), at 0 on a scale-up. Upstream's
    # utilization path fills missing pods only when the ratio is strictly below or above 1.
    filled = list(ready_values)
    if missing:
        if ratio < 1.0:
            filled += [max(100.0, target) if utilization else target] * missing
        elif ratio > 1.0 or not utilization:
            filled += [0.0] * missing
    if scale_up_with_unready:
        filled += [0.0] * unready
    new_ratio = usage_of(filled) / target
    notes = f"{missing} missing, {unready} unready"
    if tolerance.is_within(new_ratio) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return Proposal(
            label,
            current,
            f"{head} = ratio {ratio:.3f}; with {notes} pods assumed conservatively ratio {new_ratio:.3f}"
            f" -> keep {current}",
            within_tolerance=True,
        )
    replicas = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return Proposal(label, current, f"{head}; {notes}: would reverse direction -> keep {current}")
    return Proposal(
        label,
        replicas,
        f"{head}; {notes} pods assumed conservatively: ratio {new_ratio:.3f} x {len(filled)}"
        f" -> {replicas} pods",
    )


def value_proposal(
    label: str, value: float, target: float, *, current: int, ready_count: int, tolerance: Tolerance
) -> Proposal:
    """An Object or External metric with a Value target (``getUsageRatioReplicaCount``).

    ``ceil(value / target x ready pods)``, or from zero replicas ``ceil(value / target)`` (no
    tolerance there: anything above 0 wakes the target).
    """
    ratio = value / target
    if current == 0:
        replicas = math.ceil(ratio)
        return Proposal(
            label, replicas, f"{label}: {value:g} / {target:g} target from 0 replicas -> {replicas}"
        )
    if tolerance.is_within(ratio):
        return Proposal(
            label,
            current,
            f"{label}: {value:g} / {target:g} target = ratio {ratio:.3f}, within tolerance -> {current}",
            within_tolerance=True,
        )
    replicas = math.ceil(ratio * ready_count)
    return Proposal(
        label,
        replicas,
        f"{label}: {value:g} / {target:g} target x {ready_count} ready pods -> {replicas} pods",
    )


def average_value_proposal(
    label: str,
    total: float,
    target: float,
    *,
    status_replicas: int,
    tolerance: Tolerance,
    fallback: bool = False,
) -> Proposal:
    """An Object or External metric with an AverageValue target (``Get*PerPodMetricReplicas``).

    ``ceil(total / target)``: 45 queued requests at 10 per pod -> 5 pods. The tolerance compares
    ``total / (target x pods)``: 45 / (10 x 5) = 0.9 is within 0.1 of 1, so 5 pods stay 5. With no
    pods the ratio is unbounded and the proposal always applies.
    """
    replicas = math.ceil(total / target)
    if status_replicas > 0:
        ratio = total / (target * status_replicas)
        if tolerance.is_within(ratio):
            return Proposal(
                label,
                status_replicas,
                f"{label}: {total:g} / ({target:g} per pod x {status_replicas} pods) = ratio {ratio:.3f},"
                f" within tolerance -> {status_replicas}",
                within_tolerance=True,
                fallback=fallback,
            )
    return Proposal(
        label, replicas, f"{label}: {total:g} / {target:g} per pod -> {replicas} pods", fallback=fallback
    )


def status_replicas(snapshot: MetricsSnapshot) -> int:
    """The scale target's ``status.replicas``: every pod that exists (ready, starting or pending)."""
    return snapshot.ready + snapshot.starting + snapshot.pending


# --------------------------------------------------------------------------------------------------
# The controller shared with KEDA's generated HPA
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HpaController:
    """One HPA's own settings and the tail they make.

    ``behavior`` None is the legacy path. Used by :class:`HpaPolicy` and by KEDA's generated HPA
    (through :class:`HpaTailedPolicy`).
    """

    min_replicas: int
    max_replicas: int
    behavior: tuple[ScalingRules, ScalingRules] | None
    downscale_stabilization_s: float = 300.0
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        bounds = Bounds(
            self.min_replicas, self.max_replicas, Reason.TOO_FEW_REPLICAS, Reason.TOO_MANY_REPLICAS
        )
        if self.behavior is None:
            stages: tuple[Stage[Any], ...] = (
                LegacyStabilization(self.downscale_stabilization_s),
                bounds,
                LegacyScaleUpCap(),
            )
        else:
            up, down = self.behavior
            stages = (
                Stabilization(up.stabilization_window_s, down.stabilization_window_s),
                bounds,
                RateLimit(up, down),
            )
        object.__setattr__(self, "pipeline", Pipeline(stages))

    def initial_state(self) -> PipelineState:
        return self.pipeline.initial_state()


class HpaTailedPolicy(TailedPolicy[FamilyStateT]):
    """What one HPA does with its metric proposals, on the shared tail.

    The family supplies :attr:`controller` and :meth:`proposals` (one per metric); the rest is the
    HPA's: scaling is disabled at 0 replicas, a count outside the bounds goes to the bound before any
    metric is read (:func:`~gpuscale.policies.stages.rescale_out_of_bounds`), each metric judges its
    own data (no shared hold), the **max** valid proposal wins, and the controller's tail
    (stabilization, bounds, rate limits) does the rest.
    """

    holds_on_missing_signals = False
    rescales_out_of_bounds = True

    if TYPE_CHECKING:

        @property
        def controller(self) -> HpaController: ...

    @property
    def tail(self) -> Pipeline:
        return self.controller.pipeline

    def proposals(self, snapshot: MetricsSnapshot, check: SignalCheck, state: FamilyStateT) -> list[Proposal]:
        """Every metric's proposal this sync (invalid ones have ``replicas`` None)."""
        raise NotImplementedError

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: FamilyStateT
    ) -> tuple[Decision | None, FamilyStateT]:
        if snapshot.current_replicas == 0 and self.controller.min_replicas > 0:
            return (
                Decision.hold(
                    Reason.SCALING_DISABLED,
                    "scaling is disabled since the replica count of the target is zero",
                ),
                state,
            )
        return None, state

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: FamilyStateT
    ) -> tuple[Recommendation | Decision, FamilyStateT]:
        return max_proposal(snapshot.current_replicas, self.proposals(snapshot, check, state)), state


def max_proposal(current: int, proposals: Sequence[Proposal]) -> Recommendation | Decision:
    """The max of the valid proposals as the raw recommendation, or the HPA's hold.

    All metrics invalid: hold (``NoData``, or ``StaleData`` when one is stale); some invalid while the
    valid ones propose a scale-down: hold (``PartialData``).
    """
    valid = [p for p in proposals if p.replicas is not None]
    invalid = [p for p in proposals if p.replicas is None]
    if not valid:
        reason = (
            Reason.STALE_DATA
            if any(p.invalid_reason is Reason.STALE_DATA for p in invalid)
            else Reason.NO_DATA
        )
        return Decision.hold(reason, "holding: " + "; ".join(p.message for p in invalid))
    best = valid[0]
    for p in valid[1:]:
        if p.replicas is not None and best.replicas is not None and p.replicas > best.replicas:
            best = p
    assert best.replicas is not None
    if invalid and best.replicas < current:
        return Decision.hold(
            Reason.PARTIAL_DATA,
            f"holding {current}: valid metrics propose {best.replicas} but "
            + "; ".join(p.message for p in invalid),
        )
    message = "; ".join(p.message for p in valid) if len(valid) > 1 else best.message
    if len(valid) > 1:
        message += f" (max: {best.replicas}, {best.label})"
    if best.fallback:
        reason = Reason.FALLBACK
    elif best.replicas > current:
        reason = Reason.SCALE_UP
    elif best.replicas < current:
        reason = Reason.SCALE_DOWN
    elif all(p.within_tolerance for p in valid if p.replicas == best.replicas):
        reason = Reason.WITHIN_TOLERANCE
    else:
        reason = Reason.DESIRED_WITHIN_RANGE
    return Recommendation(best.replicas, reason, message)


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HpaState:
    """The HPA's memory: the tail's (recommendation history, scale events)."""

    tail: PipelineState


def _unit(metric: Metric) -> str:
    if metric in (Metric.GPU_UTIL, Metric.GPU_MEMORY_UTIL, Metric.CPU_UTIL):
        return " %"
    if metric in LATENCY_METRICS:
        return " ms"
    return ""


@dataclass(frozen=True)
class HpaPolicy(ConfigTiming, HpaTailedPolicy[HpaState]):
    """The HPA as a pure policy: ``decide`` is one sync of ``reconcileAutoscaler``."""

    config: HpaConfig
    controller: HpaController = field(init=False)
    tolerance: Tolerance = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        behavior: tuple[ScalingRules, ScalingRules] | None = None
        tol = Tolerance(cfg.tolerance, cfg.tolerance)
        if cfg.behavior is not None:
            up = scaling_rules(cfg.behavior.scale_up, 0.0, DEFAULT_SCALE_UP_POLICIES)
            down = scaling_rules(
                cfg.behavior.scale_down, cfg.downscale_stabilization_s, DEFAULT_SCALE_DOWN_POLICIES
            )
            behavior = (up, down)
            tol = Tolerance(
                cfg.tolerance if up.tolerance is None else up.tolerance,
                cfg.tolerance if down.tolerance is None else down.tolerance,
            )
        object.__setattr__(
            self,
            "controller",
            HpaController(cfg.min_replicas, cfg.max_replicas, behavior, cfg.downscale_stabilization_s),
        )
        object.__setattr__(self, "tolerance", tol)

    @property
    def name(self) -> str:
        return self.config.name or "hpa"

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return tuple(dict.fromkeys(m.spec for m in self.config.metrics))

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        """The config key each signal comes from (for error messages)."""
        out: dict[SignalSpec, str] = {}
        for i, m in enumerate(self.config.metrics):
            out.setdefault(m.spec, f"metrics[{i}].window_s")
        return out

    def initial_state(self) -> HpaState:
        return HpaState(self.controller.initial_state())

    def proposals(self, snapshot: MetricsSnapshot, check: SignalCheck, state: HpaState) -> list[Proposal]:
        """Every metric's proposal this sync (invalid ones have ``replicas`` None)."""
        out: list[Proposal] = []
        current = snapshot.current_replicas
        rules = PodRules(self.config.cpu_initialization_period_s)
        for m in self.config.metrics:
            spec = m.spec
            got = snapshot.get(spec)
            label = m.label
            target = m.target.amount
            if got.value is not None and got.age_s > self.max_signal_age_s:
                out.append(
                    Proposal(
                        label,
                        None,
                        f"{label}: newest sample {got.age_s:g} s old"
                        f" (allowed <= {self.max_signal_age_s:g} s)",
                        Reason.STALE_DATA,
                    )
                )
                continue
            if m.type in ("Resource", "Pods"):
                out.append(
                    per_pod_proposal(
                        label,
                        got,
                        target,
                        utilization=m.target.type == "Utilization",
                        cpu=m.type == "Resource" and m.resource == "cpu",
                        window_s=m.window_s,
                        current=current,
                        ready_count=snapshot.ready,
                        tolerance=self.tolerance,
                        rules=rules,
                        unit=_unit(spec.metric),
                    )
                )
            elif got.value is None:
                out.append(Proposal(label, None, f"{label}: no data ({got.reason or 'no samples'})"))
            elif m.target.type == "Value":
                out.append(
                    value_proposal(
                        label,
                        got.value,
                        target,
                        current=current,
                        ready_count=snapshot.ready,
                        tolerance=self.tolerance,
                    )
                )
            else:
                out.append(
                    average_value_proposal(
                        label,
                        got.value,
                        target,
                        status_replicas=status_replicas(snapshot),
                        tolerance=self.tolerance,
                    )
                )
        return out
