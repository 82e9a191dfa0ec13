"""``kind: knative`` — the Knative Pod Autoscaler (KPA), its decider and its scaler.

Every 2 s (``tickInterval``) the decider (``autoscaler.Scale``) reads the observed concurrency (or
RPS) averaged over the *stable* window (60 s) and the *panic* window (10 % of it, 6 s), both summed
over all pods, and computes::

    ready      = max(1, ready pods)
    max_up     = ceil(max_scale_up_rate x ready)             # 1000 x ready: effectively unlimited
    max_down   = floor(ready / max_scale_down_rate)          # halve at most per tick (rate 2)
    stable     = clamp(ceil(stable_value / target), max_down, max_up)
    panic      = clamp(ceil(panic_value / target), max_down, max_up)
    panicking  if ceil(panic_value / target) / ready >= panic threshold (200 %)

Panic starts when over the threshold, is extended every tick that is still over it, and ends only
after a full stable window without being over it. In panic the desired count is
``max(stable, panic)`` and never goes down: the highest panic count is held. With
``scale-down-delay`` the result is the max desired count over the delay window.

The scaler (``kpa/scaler.go``) then applies min/max scale (``initial-scale`` raises min until the
target first reached it) and decides scale-to-zero. Scale-to-zero is modelled as the PA's Active
condition does it (see :class:`KnativeState`):

* a desired count of 0 while the PA has been **Active** for less than a stable window keeps 1 pod;
  once Active for a full stable window the PA is marked **Inactive** (nothing is scaled that tick);
* while **Inactive**, the last pod goes only after ``max(scale-to-zero-grace-period,
  scale-to-zero-pod-retention-period)`` (30 s) since the PA became Inactive.

With steady traffic that stops at t = 0 the stable average reaches 0 at t = 60 s, the PA is marked
Inactive then, and the last pod goes at t = 90 s. Upstream can go faster when the activator has
already been in the request path for the whole grace period (the SKS "proxy" fast path); gpuscale
does not model the activator's routing and always waits the grace period — the conservative reading.
A PA that is wanted (> 0) but has fewer ready pods than needed is **Activating**. The activation
timeout is upstream's (``kpa/scaler.go`` ``handleScaleToZero``, ``CanFailActivation``): while the
decider still wants pods (requests wait at the activator, which reports their concurrency) the PA
keeps activating, however long a GPU node takes; only once it wants **0** — the activator's requests
have timed out and a stable window has passed without any — while the PA has been Activating for
``progress_deadline_s + 30 s`` (config-deployment ``progress-deadline``, 600 s, or the revision's
``serving.knative.dev/progress-deadline``; the 30 s is ``activationTimeoutBuffer``) does it give up:
the target goes to 0 at once (its Pending and starting pods are deleted) and the PA is Inactive
(``TimedOut``). The next request activates it again. Min-scale >= 1 keeps the wanted count above 0,
so such a revision never gives up. Example (tests/test_progress_deadline.py): a burst at t = 60 s is
seen at the tick t = 62 s; its requests time out at the activator after 300 s, so the stable average
is 0 from about t = 435 s; the PA gives up at 62 + 600 + 30 = 692 s. Upstream also marks a revision
that never reached its initial scale failed (``ProgressDeadlineExceeded``, "Initial scale was never
achieved"); a run here starts from a revision that served before (scaled to zero, or warm), so its
scale target is initialized and that case does not arise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.policies._config import default_max_age_s, field_error
from gpuscale.policies.base import (
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
    ScaleDownDelay,
    SignalCheck,
    TailedPolicy,
)

KPA_TICK_S = 2.0
"""The decider's ``tickInterval``."""
TARGET_MIN = 0.01
"""``autoscaling.TargetMin``: the smallest target a KPA aims for."""
ACTIVATION_TIMEOUT_BUFFER_S = 30.0
"""Added to the progress deadline before an Activating PA gives up (``activationTimeoutBuffer``)."""


@register_kind
class KnativeConfig(KindConfig):
    """Knative Pod Autoscaler: concurrency or RPS target, stable/panic windows, scale to zero."""

    kind: Literal["knative"] = "knative"
    name: str | None = Field(None, description="Display name; defaults to the kind.")
    metric: Literal["concurrency", "rps"] = Field(
        "concurrency", description="autoscaling.knative.dev/metric. Default concurrency."
    )
    target: float | None = Field(
        None,
        gt=0,
        description="autoscaling.knative.dev/target per pod. Default container-concurrency-target-default "
        "100 (concurrency) or requests-per-second-target-default 200 (rps).",
    )
    container_concurrency: int = Field(
        0,
        ge=0,
        le=1000,
        description="The revision's containerConcurrency hard limit; 0 = unlimited (default). Caps the "
        "concurrency target.",
    )
    target_utilization_percentage: float = Field(
        70.0,
        gt=0,
        le=100,
        description="Default 70 (container-concurrency-target-percentage): aim at this share of the target.",
    )
    stable_window_s: float = Field(
        60.0, ge=6, le=3600, description="Default 60 s (config-autoscaler stable-window; range 6 s .. 1 h)."
    )
    panic_window_percentage: float = Field(
        10.0,
        ge=1,
        le=100,
        description="Default 10 (panic-window-percentage): the panic window is 6 s of a 60-s stable window.",
    )
    panic_threshold_percentage: float = Field(
        200.0, ge=110, le=1000, description="Default 200 (panic-threshold-percentage; range 110 .. 1000)."
    )
    max_scale_up_rate: float = Field(
        1000.0, gt=1, description="Default 1000 (max-scale-up-rate; must be > 1)."
    )
    max_scale_down_rate: float = Field(2.0, gt=1, description="Default 2 (max-scale-down-rate; must be > 1).")
    enable_scale_to_zero: bool = Field(True, description="Default true (enable-scale-to-zero).")
    scale_to_zero_grace_period_s: float = Field(
        30.0, ge=6, description="Default 30 s (scale-to-zero-grace-period; at least 6 s)."
    )
    scale_to_zero_pod_retention_period_s: float = Field(
        0.0, ge=0, description="Default 0 s (scale-to-zero-pod-retention-period)."
    )
    scale_down_delay_s: float = Field(
        0.0, ge=0, le=3600, description="Default 0 s (scale-down-delay; at most 1 h)."
    )
    min_scale: int = Field(0, ge=0, description="Default 0 (autoscaling.knative.dev/min-scale).")
    max_scale: int = Field(0, ge=0, description="Default 0 = unlimited (autoscaling.knative.dev/max-scale).")
    initial_scale: int = Field(
        1,
        ge=0,
        description="Default 1 (initial-scale); 0 needs allow_zero_initial_scale. Raises min_scale until "
        "the revision first reaches it.",
    )
    allow_zero_initial_scale: bool = Field(False, description="Default false (allow-zero-initial-scale).")
    activation_scale: int = Field(
        1,
        ge=1,
        description="Default 1 (autoscaling.knative.dev/activation-scale): the floor of a non-zero count.",
    )
    reachable: bool = Field(
        True,
        description="Whether the revision receives traffic (is routed to). An unreachable revision has no "
        "scale-down rate limit. Default true.",
    )
    restarted: bool = Field(
        False,
        description="Model an autoscaler restart: the first decision starts in panic mode when more than one "
        "pod is ready (upstream's newAutoscaler), so lost metric history cannot cause a scale-down.",
    )
    progress_deadline_s: float = Field(
        600.0,
        gt=0,
        description="Default 600 s (config-deployment progress-deadline, or the revision's "
        "serving.knative.dev/progress-deadline). A PA still Activating this long + 30 s after it began, "
        "with no pod wanted any more, gives up and scales to 0.",
    )
    max_signal_age_s: float | None = Field(
        None, gt=0, description="A signal older than this is stale (hold). Default 3 ticks (6 s)."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> KnativeConfig:
        if self.max_scale and self.min_scale > self.max_scale:
            field_error(
                ("min_scale",), self.min_scale, f"must be <= max_scale ({self.max_scale}); 0 = unlimited"
            )
        if self.initial_scale == 0 and not self.allow_zero_initial_scale:
            field_error(("initial_scale",), 0, "0 needs allow_zero_initial_scale: true; allowed: >= 1")
        if self.max_scale and self.initial_scale > self.max_scale:
            field_error(
                ("initial_scale",),
                self.initial_scale,
                f"must be <= max_scale ({self.max_scale}); 0 = unlimited",
            )
        if self.stable_window_s != round(self.stable_window_s):
            field_error(("stable_window_s",), self.stable_window_s, "whole seconds in 6 .. 3600")
        return self

    @classmethod
    def example(cls) -> KnativeConfig:
        """A representative config for docs and conformance tests."""
        return cls.model_validate({"target": 8, "max_scale": 30, "scale_down_delay_s": 10})

    def build(self) -> KnativePolicy:
        return KnativePolicy(self)


class Activity(StrEnum):
    """The PodAutoscaler's Active condition."""

    ACTIVATING = "Activating"
    ACTIVE = "Active"
    INACTIVE = "Inactive"


@dataclass(frozen=True)
class KnativeState:
    """The KPA's memory.

    ``panic_since_s`` is upstream's ``panicTime`` (None: not panicking; it moves forward every tick
    still over the threshold), ``max_panic_pods`` the count panic mode holds. ``activity`` and
    ``activity_since_s`` are the PA's Active condition and its last transition; ``initialized``
    records that the revision once reached its initial scale. ``tail`` is the tail's state (the
    scale-down-delay window). ``started`` is False before the first decision.
    """

    started: bool = False
    panic_since_s: float | None = None
    max_panic_pods: int = 0
    activity: Activity = Activity.ACTIVATING
    activity_since_s: float = 0.0
    initialized: bool = False
    tail: PipelineState = ((), None)


@dataclass(frozen=True)
class KnativePolicy(TailedPolicy[KnativeState]):
    """The KPA decider plus the scaler's bounds and scale-to-zero logic, as one pure policy.

    Knative's own parts: the decider (:meth:`recommend`: stable and panic windows, rate limits,
    panic mode), the first decision after a (re)start (:meth:`before`), the bounds that
    initial scale raises (:meth:`tail_for`), and the scaler's scale-to-zero with the PA's Active
    condition (:meth:`finish`). Both windows are required; a count outside the bounds is not
    clamped before the decider has data (the scaler does nothing on ``ErrNoData``).
    """

    require_all_signals = True
    clamps_out_of_bounds = False

    config: KnativeConfig
    target: float = field(init=False)
    stable_spec: SignalSpec = field(init=False)
    panic_spec: SignalSpec = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        metric = Metric.CONCURRENCY if cfg.metric == "concurrency" else Metric.REQUEST_RATE
        total = cfg.target if cfg.target is not None else (100.0 if cfg.metric == "concurrency" else 200.0)
        if cfg.metric == "concurrency" and cfg.container_concurrency:
            # ResolveMetricTarget: never aim above what the container accepts. CC 10, target 100,
            # 70 % -> 10 x 0.7 = 7 requests per pod.
            total = (
                min(total, float(cfg.container_concurrency))
                if cfg.target is not None
                else float(cfg.container_concurrency)
            )
        object.__setattr__(self, "target", max(TARGET_MIN, total * cfg.target_utilization_percentage / 100.0))
        object.__setattr__(self, "stable_spec", SignalSpec(metric, cfg.stable_window_s, Aggregation.TOTAL))
        object.__setattr__(self, "panic_spec", SignalSpec(metric, self.panic_window_s, Aggregation.TOTAL))

    @property
    def panic_window_s(self) -> float:
        # 10 % of 60 s = 6 s; whole seconds, at least one (the metric bucket size).
        return max(
            1.0, float(round(self.config.stable_window_s * self.config.panic_window_percentage / 100.0))
        )

    @property
    def name(self) -> str:
        return self.config.name or "knative"

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.stable_spec, self.panic_spec)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {self.stable_spec: "stable_window_s", self.panic_spec: "panic_window_percentage"}

    @property
    def sync_period_s(self) -> float:
        return KPA_TICK_S

    @property
    def max_signal_age_s(self) -> float:
        return default_max_age_s(self.config.max_signal_age_s, KPA_TICK_S)

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (self.config.min_scale, self.config.max_scale or None)

    @property
    def initial_replicas(self) -> int | None:
        return None

    def initial_state(self) -> KnativeState:
        return KnativeState(tail=self.tail.initial_state())

    @cached_property
    def tail(self) -> Pipeline:
        """``scale-down-delay``, then the scaler's bounds (``max_scale`` 0: no upper bound)."""
        cfg = self.config
        return Pipeline(
            (ScaleDownDelay(cfg.scale_down_delay_s), Bounds(cfg.min_scale, cfg.max_scale or None))
        )

    @cached_property
    def _initial_scale_tail(self) -> Pipeline:
        cfg = self.config
        bounds = Bounds(max(cfg.min_scale, cfg.initial_scale), cfg.max_scale or None)
        return Pipeline((ScaleDownDelay(cfg.scale_down_delay_s), bounds))

    def tail_for(self, state: KnativeState) -> Pipeline:
        """Initial scale raises the minimum until the revision first reached it."""
        if not state.initialized and self.config.initial_scale > 1:
            return self._initial_scale_tail
        return self.tail

    # ---------------------------------------------------------------------------------------------

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: KnativeState
    ) -> tuple[Decision | None, KnativeState]:
        if not state.started:
            state = self._first(snapshot, state)
        return None, state

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: KnativeState
    ) -> tuple[Recommendation, KnativeState]:
        """The decider (``autoscaler.Scale``); on missing data (``ErrNoData``) the shared hold
        already kept the scaler from acting."""
        cfg = self.config
        now = snapshot.time_s
        stable_value = check.values[self.stable_spec]
        panic_value = check.values[self.panic_spec]
        ready = float(max(1, snapshot.ready))
        max_up = math.ceil(cfg.max_scale_up_rate * ready)
        max_down = math.floor(ready / cfg.max_scale_down_rate) if cfg.reachable else 0
        dspc = math.ceil(stable_value / self.target)
        dppc = math.ceil(panic_value / self.target)
        stable_pods = int(min(max(dspc, max_down), max_up))
        panic_pods = int(min(max(dppc, max_down), max_up))
        if cfg.activation_scale > 1:
            if dspc > 0 and cfg.activation_scale > stable_pods:
                stable_pods = cfg.activation_scale
            if dppc > 0 and cfg.activation_scale > panic_pods:
                panic_pods = cfg.activation_scale

        unit = "in-flight" if cfg.metric == "concurrency" else "rps"
        observed = (
            f"stable {stable_value:g} {unit} over {cfg.stable_window_s:g} s / {self.target:g} target"
            f" -> {dspc}, "
            f"panic {panic_value:g} over {self.panic_window_s:g} s -> {dppc} with {snapshot.ready} ready"
        )
        over = dppc / ready >= cfg.panic_threshold_percentage / 100.0
        panic_since, max_panic = state.panic_since_s, state.max_panic_pods
        entered = False
        if over:
            entered = panic_since is None
            panic_since = now
        elif panic_since is not None and panic_since + cfg.stable_window_s < now:
            panic_since, max_panic = None, 0

        if panic_since is not None:
            desired = max(stable_pods, panic_pods)
            if desired > max_panic:
                max_panic = desired
                reason = Reason.SCALE_UP_PANIC
                mode = "entering panic mode" if entered else "panic mode"
                note = (
                    f"{mode} ({dppc} / {ready:g} ready >= {cfg.panic_threshold_percentage:g} %) -> {desired}"
                )
            else:
                reason = Reason.PANIC_MODE
                until = panic_since + cfg.stable_window_s
                note = f"panic mode: no scale-down, holding {max_panic} (wanted {desired})"
                note += f" until after t={until:g} s"
            desired = max_panic
        else:
            desired = stable_pods
            reason = self._direction(desired, snapshot.current_replicas)
            note = f"-> {desired}"
            if dspc > max_up:
                reason = Reason.SCALE_UP_LIMIT
                note = f"max scale-up rate {cfg.max_scale_up_rate:g} x {ready:g} ready -> {desired}"
            elif dspc < max_down:
                reason = Reason.SCALE_DOWN_LIMIT
                note = f"max scale-down rate {cfg.max_scale_down_rate:g}: floor({ready:g} / "
                note += f"{cfg.max_scale_down_rate:g}) -> {desired}"
        rec = Recommendation(desired, reason, f"{observed}; {note}")
        return rec, replace(state, panic_since_s=panic_since, max_panic_pods=max_panic)

    def finish(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: KnativeState
    ) -> tuple[Decision, KnativeState]:
        """The scaler's scale-to-zero, then the PA's Active condition after this tick's scale."""
        decision, want = self._scale_to_zero(final, snapshot, state)
        return decision, self._activity(snapshot, state, want)

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _direction(desired: int, current: int) -> Reason:
        if desired > current:
            return Reason.SCALE_UP if current > 0 else Reason.SCALE_FROM_ZERO
        if desired < current:
            return Reason.SCALE_DOWN
        return Reason.DESIRED_WITHIN_RANGE

    def _first(self, snapshot: MetricsSnapshot, state: KnativeState) -> KnativeState:
        # newAutoscaler: a new decider over more than one ready pod starts in panic mode, holding the
        # current count until it has a window of data of its own.
        # A run that starts with no pods at all is treated as a revision scaled to zero long ago: it
        # reached its initial scale once (ScaleTargetInitialized), so initial scale no longer applies.
        panic = self.config.restarted and snapshot.ready > 1
        idle = snapshot.current_replicas == 0 and snapshot.ready == 0
        return replace(
            state,
            started=True,
            panic_since_s=snapshot.time_s if panic else None,
            max_panic_pods=snapshot.ready if self.config.restarted else 0,
            activity=Activity.INACTIVE if idle else Activity.ACTIVATING,
            activity_since_s=snapshot.time_s,
            initialized=idle,
        )

    def _scale_to_zero(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: KnativeState
    ) -> tuple[Decision, int]:
        """``handleScaleToZero``: the decision and the ``want`` the Active condition sees (-1: unknown)."""
        cfg = self.config
        now = snapshot.time_s
        if rec.replicas != 0:
            return Decision(rec.replicas, rec.reason, rec.message), rec.replicas
        if not cfg.enable_scale_to_zero:
            return Decision(1, rec.reason, rec.message + "; scale to zero disabled -> 1"), 1
        since = now - state.activity_since_s
        if state.activity is Activity.ACTIVATING:
            timeout = cfg.progress_deadline_s + ACTIVATION_TIMEOUT_BUFFER_S
            if since >= timeout:
                msg = (
                    f"{rec.message}; activating for {since:g} s >= progress deadline "
                    f"{cfg.progress_deadline_s:g} s + {ACTIVATION_TIMEOUT_BUFFER_S:g} s: activation timed "
                    "out, giving up -> 0"
                )
                return Decision(0, Reason.SCALE_TO_ZERO, msg), 0
            return Decision.hold(Reason.SCALE_TO_ZERO_GRACE, f"{rec.message}; activating, waiting"), -1
        if state.activity is Activity.ACTIVE:
            if since >= cfg.stable_window_s:
                msg = f"{rec.message}; active for {since:g} s >= stable window: marking inactive"
                return Decision.hold(Reason.SCALE_TO_ZERO_GRACE, msg), 0
            msg = f"{rec.message}; active for only {since:g} s of the {cfg.stable_window_s:g} s stable window"
            return Decision(1, Reason.SCALE_TO_ZERO_GRACE, msg + " -> 1"), 1
        wait = max(cfg.scale_to_zero_grace_period_s, cfg.scale_to_zero_pod_retention_period_s)
        if since >= wait:
            msg = f"{rec.message}; inactive for {since:g} s >= grace {wait:g} s -> 0"
            return Decision(0, Reason.SCALE_TO_ZERO, msg), 0
        msg = f"{rec.message}; inactive for {since:g} s of the {wait:g} s grace period"
        return Decision.hold(Reason.SCALE_TO_ZERO_GRACE, msg), 0

    def _activity(self, snapshot: MetricsSnapshot, state: KnativeState, want: int) -> KnativeState:
        """``computeActiveCondition`` after this tick's scale."""
        cfg = self.config
        now = snapshot.time_s
        initialized = state.initialized
        min_ready = max(cfg.min_scale, 1) if initialized else max(cfg.min_scale, cfg.initial_scale)
        if snapshot.ready >= min_ready and min_ready > 0:
            initialized = True
        activity = state.activity
        if want == 0 or min_ready == 0:
            activity = Activity.INACTIVE
        elif snapshot.ready < min_ready:
            if want > 0 or activity is not Activity.INACTIVE:
                activity = Activity.ACTIVATING
        elif want > 0 or activity is not Activity.INACTIVE:
            activity = Activity.ACTIVE
        since = state.activity_since_s if activity is state.activity else now
        return replace(state, activity=activity, activity_since_s=since, initialized=initialized)
