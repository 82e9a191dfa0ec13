"""``kind: keda`` — a KEDA ScaledObject: activation by the operator, 1..N by the HPA it generates.

Two controllers act on the same ``spec.replicas``, each on its own clock:

* **the KEDA operator**, every ``pollingInterval`` (30 s): a trigger is *active* when its value is
  strictly above its ``activationThreshold`` (default 0). Active with 0 replicas (or, in idle mode,
  fewer than ``minReplicaCount``) -> ``max(minReplicaCount, 1)``; active otherwise -> remember
  ``lastActiveTime``. Inactive -> down to ``idleReplicaCount`` / 0 only once ``lastActiveTime +
  cooldownPeriod`` (300 s) has passed, strictly (never active: ``initialCooldownPeriod`` after
  creation). Inactive with an erroring trigger and a fallback configured: nothing (so the HPA can
  apply the fallback); the target is never scaled to zero while a trigger errors with fallback set.
* **the generated HPA** (``keda-hpa-<name>``), every 15 s: one External metric per trigger with an
  ``AverageValue`` target of the trigger's ``threshold`` (``desired = ceil(total / threshold)``;
  ``metricType: Value`` also possible), ``minReplicas = max(minReplicaCount, 1)``,
  ``maxReplicas = maxReplicaCount``, the HPA tolerance, and ``advanced.horizontalPodAutoscalerConfig.
  behavior`` passed through (the HPA's API defaults when unset). At 0 replicas it is disabled.

**Fallback**: a trigger that errors (its signal is ``None``, or stale) counts a failure at every HPA
metric read and resets on success; once the count is *above* ``failureThreshold`` (upstream
``NumberOfFailures > FailureThreshold``: with threshold 3 the 4th failure in a row), the trigger's
metric is replaced by ``threshold x fallback replicas``, which the HPA turns into the fallback count
(through its tail). Fallback applies to AverageValue triggers only, as upstream.

The policy ticks at ``gcd(pollingInterval, 15 s)`` so both clocks are exact; on a tick where the
operator changes the count, that is the decision (the HPA sees the new count next sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.config.loading import StrictModel
from gpuscale.policies._config import default_max_age_s, field_error
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
)
from gpuscale.policies.hpa import (
    DEFAULT_SCALE_DOWN_POLICIES,
    DEFAULT_SCALE_UP_POLICIES,
    HpaBehavior,
    HpaController,
    HpaTailedPolicy,
    Proposal,
    average_value_proposal,
    scaling_rules,
    status_replicas,
    value_proposal,
)
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.stages import PipelineState, ScalingRules, SignalCheck, Tolerance

_EPS = 1e-9


class KedaTrigger(StrictModel):
    """One trigger: a metric KEDA reads (like a Prometheus query that returns one number)."""

    name: str | None = Field(None, description="Trigger name used in messages; default the metric name.")
    metric: Metric = Field(description="The gpuscale metric the trigger's query returns.")
    aggregation: Aggregation = Field(
        Aggregation.TOTAL,
        description="How pods combine into the one number (a Prometheus sum(...) query). Default total.",
    )
    window_s: float = Field(
        60.0,
        gt=0,
        description="The window the query averages or rates over (e.g. rate(...[1m])). Default 60 s.",
    )
    threshold: float = Field(
        gt=0, description="The generated HPA's target: per pod (AverageValue) or total (Value)."
    )
    activation_threshold: float = Field(
        0.0, description="Active iff value > activation_threshold (strict). Default 0 (activationThreshold)."
    )
    metric_type: Literal["AverageValue", "Value"] = Field(
        "AverageValue",
        description="The HPA metric target type. Default AverageValue (Utilization is not allowed).",
    )

    @property
    def spec(self) -> SignalSpec:
        return SignalSpec(self.metric, self.window_s, self.aggregation)

    @property
    def label(self) -> str:
        return self.name or self.metric.value


class KedaFallback(StrictModel):
    """``spec.fallback``: replicas to use when a trigger keeps failing."""

    failure_threshold: int = Field(ge=0, description="Consecutive failures tolerated before falling back.")
    replicas: int = Field(ge=0, description="The fallback replica count.")
    behavior: Literal["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"] = (
        Field(
            "static",
            description="static: the fallback replicas (default); currentReplicas: keep the count; "
            "currentReplicasIfHigher/IfLower: the max/min of the two.",
        )
    )

    def replicas_for(self, current: int) -> int:
        if self.behavior == "currentReplicas":
            return current
        if self.behavior == "currentReplicasIfHigher":
            return max(current, self.replicas)
        if self.behavior == "currentReplicasIfLower":
            return min(current, self.replicas)
        return self.replicas


class KedaHpaConfig(StrictModel):
    """``advanced.horizontalPodAutoscalerConfig``."""

    behavior: HpaBehavior | None = Field(
        None, description="Passed to the generated HPA; unset: the HPA's API-default behavior."
    )


class KedaAdvanced(StrictModel):
    """``advanced``."""

    horizontal_pod_autoscaler_config: KedaHpaConfig = Field(
        default_factory=KedaHpaConfig, description="Settings for the generated HPA."
    )


@register_kind
class KedaConfig(KindConfig):
    """KEDA ScaledObject: activation 0<->1 on the polling interval, the generated HPA for 1<->N."""

    kind: Literal["keda"] = "keda"
    name: str | None = Field(None, description="Display name; defaults to the kind.")
    triggers: tuple[KedaTrigger, ...] = Field(description="At least one trigger.")
    polling_interval_s: int = Field(
        30, ge=1, description="Default 30 s (pollingInterval): activation checks."
    )
    cooldown_period_s: int = Field(
        300, ge=0, description="Default 300 s (cooldownPeriod): after the last active poll, before 1 -> 0."
    )
    initial_cooldown_period_s: int = Field(
        0,
        ge=0,
        description="Default 0 s (initialCooldownPeriod): after creation, before the first scale to 0.",
    )
    min_replica_count: int = Field(0, ge=0, description="Default 0 (minReplicaCount).")
    max_replica_count: int = Field(100, ge=1, description="Default 100 (maxReplicaCount).")
    idle_replica_count: int | None = Field(
        None, ge=0, description="Unset by default (idleReplicaCount): the count while inactive, below min."
    )
    fallback: KedaFallback | None = Field(None, description="Unset by default (fallback).")
    advanced: KedaAdvanced = Field(default_factory=KedaAdvanced, description="advanced settings.")
    tolerance: float = Field(0.1, ge=0, lt=1, description="The generated HPA's tolerance. Default 0.1.")
    hpa_sync_period_s: int = Field(
        15, ge=1, description="Default 15 s (--horizontal-pod-autoscaler-sync-period)."
    )
    max_signal_age_s: float | None = Field(
        None, gt=0, description="A trigger value older than this is an error. Default 3 HPA syncs (45 s)."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> KedaConfig:
        if not self.triggers:
            field_error(("triggers",), [], "at least one trigger is required")
        if self.min_replica_count > self.max_replica_count:
            field_error(
                ("min_replica_count",),
                self.min_replica_count,
                f"must be <= max_replica_count ({self.max_replica_count})",
            )
        if self.idle_replica_count is not None and self.idle_replica_count >= self.min_replica_count:
            field_error(
                ("idle_replica_count",),
                self.idle_replica_count,
                f"must be < min_replica_count ({self.min_replica_count})",
            )
        if self.fallback is not None and self.fallback.replicas > self.max_replica_count:
            field_error(
                ("fallback", "replicas"),
                self.fallback.replicas,
                f"must be <= max_replica_count ({self.max_replica_count})",
            )
        return self

    @classmethod
    def example(cls) -> KedaConfig:
        """A representative config (two triggers, fallback) for docs and conformance tests."""
        return cls.model_validate(
            {
                "max_replica_count": 10,
                "cooldown_period_s": 120,
                "triggers": [
                    {"metric": "queue_length", "threshold": 10, "activation_threshold": 1},
                    {"metric": "request_rate", "threshold": 50},
                ],
                "fallback": {"failure_threshold": 3, "replicas": 4},
            }
        )

    def build(self) -> KedaPolicy:
        return KedaPolicy(self)


@dataclass(frozen=True)
class _TriggerValue:
    value: float | None
    why: str = ""
    error: Reason = Reason.NO_DATA


@dataclass(frozen=True)
class KedaState:
    """KEDA's memory: the operator's clock and ``lastActiveTime``, failure counts, the HPA's tail."""

    created_s: float | None = None
    last_poll_s: float | None = None
    last_hpa_s: float | None = None
    last_active_s: float | None = None
    failures: tuple[int, ...] = ()
    tail: PipelineState = ()


@dataclass(frozen=True)
class KedaPolicy(HpaTailedPolicy[KedaState]):
    """The KEDA operator and its generated HPA as one pure policy.

    KEDA's own part runs before the generated HPA (:meth:`before`): the operator's activation and
    scale to zero on the polling interval, the failure counts, and the hold at 0 replicas. The HPA
    part (disabled at 0, rescale to its bounds, the max over the triggers' proposals, its tail) is
    :class:`~gpuscale.policies.hpa.HpaTailedPolicy`'s.
    """

    config: KedaConfig
    controller: HpaController = field(init=False)
    tolerance: Tolerance = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        # KEDA copies advanced.horizontalPodAutoscalerConfig.behavior into its HPA; the API server
        # fills the unset parts with the autoscaling/v2 defaults. Without one the HPA has no behavior
        # at all and the controller takes its legacy path (5-min downscale stabilization, 2x cap).
        given = cfg.advanced.horizontal_pod_autoscaler_config.behavior
        has_behavior = given is not None
        behavior_cfg = given or HpaBehavior()
        up: ScalingRules = scaling_rules(behavior_cfg.scale_up, 0.0, DEFAULT_SCALE_UP_POLICIES)
        down: ScalingRules = scaling_rules(behavior_cfg.scale_down, 300.0, DEFAULT_SCALE_DOWN_POLICIES)
        object.__setattr__(
            self,
            "controller",
            HpaController(
                max(cfg.min_replica_count, 1), cfg.max_replica_count, (up, down) if has_behavior else None
            ),
        )
        tol = Tolerance(
            cfg.tolerance if up.tolerance is None or not has_behavior else up.tolerance,
            cfg.tolerance if down.tolerance is None or not has_behavior else down.tolerance,
        )
        object.__setattr__(self, "tolerance", tol)

    @property
    def name(self) -> str:
        return self.config.name or "keda"

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return tuple(dict.fromkeys(t.spec for t in self.config.triggers))

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        out: dict[SignalSpec, str] = {}
        for i, t in enumerate(self.config.triggers):
            out.setdefault(t.spec, f"triggers[{i}].window_s")
        return out

    @property
    def sync_period_s(self) -> float:
        return float(math.gcd(self.config.polling_interval_s, self.config.hpa_sync_period_s))

    @property
    def max_signal_age_s(self) -> float:
        return default_max_age_s(self.config.max_signal_age_s, float(self.config.hpa_sync_period_s))

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        # Below min_replica_count only in idle mode (down to idle_replica_count).
        idle = self.config.idle_replica_count
        return (self.config.min_replica_count if idle is None else idle, self.config.max_replica_count)

    @property
    def initial_replicas(self) -> int | None:
        return None

    def initial_state(self) -> KedaState:
        return KedaState(failures=(0,) * len(self.config.triggers), tail=self.controller.initial_state())

    # ---------------------------------------------------------------------------------------------

    def _values(self, snapshot: MetricsSnapshot, check: SignalCheck) -> list[_TriggerValue]:
        """Each trigger's value, or None with why (an erroring trigger): missing and stale as
        :func:`~gpuscale.policies.stages.check_signals` sorted them, reported per trigger as KEDA's
        scaler errors are."""
        out: list[_TriggerValue] = []
        for t in self.config.triggers:
            if check.usable(t.spec):
                out.append(_TriggerValue(check.values[t.spec]))
                continue
            got = snapshot.get(t.spec)
            if t.spec in check.stale:
                why = f"trigger {t.label}: error, value {got.age_s:g} s old (> {self.max_signal_age_s:g} s)"
                out.append(_TriggerValue(None, why, Reason.STALE_DATA))
            else:
                why = f"trigger {t.label}: error, no data ({got.reason or 'no samples'})"
                out.append(_TriggerValue(None, why, Reason.NO_DATA))
        return out

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: KedaState
    ) -> tuple[Decision | None, KedaState]:
        """The operator on its polling interval; then, on an HPA sync, the failure counts, the hold
        at 0 replicas without data, and the generated HPA's own checks."""
        cfg = self.config
        now = snapshot.time_s
        created = now if state.created_s is None else state.created_s
        values = self._values(snapshot, check)
        poll_due = state.last_poll_s is None or now - state.last_poll_s >= cfg.polling_interval_s - _EPS
        hpa_due = state.last_hpa_s is None or now - state.last_hpa_s >= cfg.hpa_sync_period_s - _EPS
        last_active = state.last_active_s
        last_poll = now if poll_due else state.last_poll_s

        if poll_due:
            decision, last_active = self._operator(snapshot, values, created, last_active)
            if decision is not None:
                new = KedaState(created, last_poll, state.last_hpa_s, last_active, state.failures, state.tail)
                return decision, new

        if not hpa_due:
            new = KedaState(created, last_poll, state.last_hpa_s, last_active, state.failures, state.tail)
            return Decision.hold(Reason.DESIRED_WITHIN_RANGE, "waiting for the next poll or HPA sync"), new

        failures = tuple(
            0 if v.value is not None else n + 1 for v, n in zip(values, state.failures, strict=True)
        )
        state = KedaState(created, last_poll, now, last_active, failures, state.tail)
        if snapshot.current_replicas == 0:
            proposals = self._proposals(snapshot, values, failures)
            if all(p.replicas is None for p in proposals):
                # The HPA is disabled at 0 replicas anyway; say that there is no data to wake it either.
                stale = any(p.invalid_reason is Reason.STALE_DATA for p in proposals)
                reason = Reason.STALE_DATA if stale else Reason.NO_DATA
                return Decision.hold(
                    reason, "holding at 0: " + "; ".join(p.message for p in proposals)
                ), state
        return super().before(snapshot, check, state)

    def proposals(self, snapshot: MetricsSnapshot, check: SignalCheck, state: KedaState) -> list[Proposal]:
        """The generated HPA's External metrics, one per trigger (fallback in place of a failing one)."""
        return self._proposals(snapshot, self._values(snapshot, check), state.failures)

    # ---------------------------------------------------------------------------------------------
    def _operator(
        self,
        snapshot: MetricsSnapshot,
        values: list[_TriggerValue],
        created_s: float,
        last_active_s: float | None,
    ) -> tuple[Decision | None, float | None]:
        """``RequestScale``: a decision when the operator scales, and the new ``lastActiveTime``."""
        cfg = self.config
        now = snapshot.time_s
        current = snapshot.current_replicas
        active = [
            t.label
            for t, v in zip(cfg.triggers, values, strict=True)
            if v.value is not None and v.value > t.activation_threshold
        ]
        errors = [v.why for v in values if v.value is None]
        shown = ", ".join(
            f"{t.label}={v.value:g} (activation > {t.activation_threshold:g})"
            for t, v in zip(cfg.triggers, values, strict=True)
            if v.value is not None
        )
        if active:
            if (cfg.idle_replica_count is not None and current < cfg.min_replica_count) or current == 0:
                to = max(cfg.min_replica_count, 1)
                msg = f"active ({', '.join(active)}): {shown}; {current} -> {to}"
                return Decision(to, Reason.ACTIVATION, msg), now
            if errors:
                return None, last_active_s  # PartialTriggerError: lastActiveTime is not refreshed
            return None, now
        if errors and cfg.fallback is not None and cfg.fallback.replicas != 0:
            return None, last_active_s  # fallback pending: never scale to zero here
        if errors and cfg.fallback is None:
            return None, last_active_s  # TriggerError: nothing to do
        idle = cfg.idle_replica_count
        if (idle is not None and current > idle) or (current > 0 and cfg.min_replica_count == 0):
            to = idle if idle is not None else cfg.min_replica_count
            if last_active_s is None:
                ready_at = created_s + cfg.initial_cooldown_period_s
                since = "creation"
            else:
                ready_at = last_active_s + cfg.cooldown_period_s
                since = f"last active at t={last_active_s:g} s"
            if ready_at < now:
                msg = f"inactive ({shown or 'no values'}); cooldown over ({since}) -> {to}"
                return Decision(to, Reason.SCALE_TO_ZERO, msg), last_active_s
            msg = f"inactive ({shown or 'no values'}); cooling down until after t={ready_at:g} s ({since})"
            return Decision.hold(Reason.COOLDOWN, msg), last_active_s
        if current < cfg.min_replica_count and idle is None:
            msg = f"inactive and below min_replica_count -> {cfg.min_replica_count}"
            return Decision(cfg.min_replica_count, Reason.TOO_FEW_REPLICAS, msg), last_active_s
        return None, last_active_s

    def _proposals(
        self, snapshot: MetricsSnapshot, values: list[_TriggerValue], failures: tuple[int, ...]
    ) -> list[Proposal]:
        cfg = self.config
        pods = status_replicas(snapshot)
        proposals: list[Proposal] = []
        for t, tv, n in zip(cfg.triggers, values, failures, strict=True):
            label = f"trigger {t.label}"
            v = tv.value
            if v is None:
                fb = cfg.fallback
                if fb is not None and t.metric_type == "AverageValue" and n > fb.failure_threshold:
                    # doFallback: the metric becomes threshold x fallback replicas, so the HPA's
                    # ceil(total / threshold) lands on the fallback count.
                    replicas = fb.replicas_for(snapshot.current_replicas)
                    total = t.threshold * replicas
                    p = average_value_proposal(
                        f"{label} (failing {n}x > {fb.failure_threshold}: fallback {replicas})",
                        total,
                        t.threshold,
                        status_replicas=pods,
                        tolerance=self.tolerance,
                        fallback=True,
                    )
                    proposals.append(p)
                else:
                    proposals.append(Proposal(label, None, f"{tv.why} (failure {n} in a row)", tv.error))
            elif t.metric_type == "AverageValue":
                proposals.append(
                    average_value_proposal(
                        label, v, t.threshold, status_replicas=pods, tolerance=self.tolerance
                    )
                )
            else:
                proposals.append(
                    value_proposal(
                        label,
                        v,
                        t.threshold,
                        current=snapshot.current_replicas,
                        ready_count=snapshot.ready,
                        tolerance=self.tolerance,
                    )
                )
        return proposals
