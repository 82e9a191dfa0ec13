"""The shared tail every policy family runs its raw recommendation through.

A family (HPA, Knative, KEDA, Ray Serve, GPU memory, ...) computes only its *raw* recommendation, a
:class:`Recommendation`. The tail turns it into the decision, one small named stage at a time:

=============================  ==========================================================================
stage                          what it does (upstream it mirrors)
=============================  ==========================================================================
:class:`ToleranceStage`        no change while the usage ratio is within ``[1 - down, 1 + up]`` (HPA 0.1)
:class:`Stabilization`         HPA ``behavior`` windows: up only to the *min*, down only to the *max* of
                               recent unstabilized recommendations
:class:`LegacyStabilization`   HPA without ``behavior``: the max recommendation over 300 s
:class:`Bounds`                clamp to ``[min, max]`` (reasons ``ClampedToMin/Max`` or the HPA's
                               ``TooFewReplicas/TooManyReplicas``)
:class:`RateLimit`             HPA Pods/Percent policies over ``periodSeconds`` with ``selectPolicy``
:class:`LegacyScaleUpCap`      HPA without ``behavior``: at most ``max(2 x current, 4)`` per sync
:class:`ScaleDownDelay`        Knative ``scale-down-delay``: the max desired count over the delay window
:class:`ScaleToZeroGrace`      the last pod goes only after zero was wanted for a grace period
:class:`Cooldown`              no new change in a direction for a while after a change in it
=============================  ==========================================================================

and, before any stage, :func:`check_signals` turns missing or stale inputs into a *hold* decision
(``NoData`` / ``StaleData``) so no family ever scales on nothing.

Every stage is a frozen dataclass holding its configuration, with an explicit immutable state::

    apply(rec, snapshot, state) -> (rec, state)     # transform the recommendation
    settle(final, snapshot, state) -> state         # learn what was finally decided (scale events)

A :class:`Pipeline` runs stages in order and then lets each one *settle* on the final result: the
rate limits must count the change that was actually made, after every later stage (bounds) had its
say, exactly like the HPA records a scale event only after it rescaled. A decision made outside the
pipeline still settles it (the HPA's "current above max" path, :func:`rescale_out_of_bounds`) so the
events are counted.

A family runs all this through :class:`TailedPolicy`: it writes its raw recommendation and its own
stages, and inherits the signal check, the out-of-bounds rule, the tail and the settling.

Order matters and is the family's to choose; the HPA runs
``Stabilization -> Bounds -> RateLimit`` (with ``behavior``) or
``LegacyStabilization -> Bounds -> LegacyScaleUpCap`` (without), which reproduces its reasons: the
bound wins the reason when it is the tighter or an equal limit, the rate limit when it is tighter.

Times are ``snapshot.time_s``; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalSpec

__all__ = [
    "Bounds",
    "Cooldown",
    "CooldownState",
    "HasTail",
    "LegacyScaleUpCap",
    "LegacyStabilization",
    "Pipeline",
    "PolicyType",
    "RateLimit",
    "Recommendation",
    "ScaleDownDelay",
    "ScaleEvent",
    "ScaleEvents",
    "ScaleToZeroGrace",
    "ScaleToZeroState",
    "ScalingPolicy",
    "ScalingRules",
    "SelectPolicy",
    "SignalCheck",
    "Stabilization",
    "Stage",
    "TailedPolicy",
    "TimedValue",
    "Tolerance",
    "ToleranceStage",
    "check_signals",
    "clamp_out_of_bounds",
    "direction_reason",
    "record_scale_event",
    "rescale_out_of_bounds",
    "scale_down_limit",
    "scale_up_limit",
    "to_decision",
]


# --------------------------------------------------------------------------------------------------
# The value that flows through the tail
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """A replica count on its way to becoming a decision, with why and how it got there.

    ``ratio`` is the usage ratio behind a raw recommendation (observed / target), when the family has
    one; :class:`ToleranceStage` reads it. ``message`` accumulates one clause per stage that changed
    the count, so the final decision explains itself: ``"3 pods x 85 % / 40 % -> 7; rate limit
    (Pods 4 per 15 s from 3) -> 7 capped to 7"``.
    """

    replicas: int
    reason: Reason
    message: str = ""
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")

    def becomes(self, replicas: int, reason: Reason, note: str) -> Recommendation:
        """This recommendation changed by a stage: new count and reason, the note appended."""
        message = f"{self.message}; {note}" if self.message else note
        return replace(self, replicas=replicas, reason=reason, message=message)


def to_decision(rec: Recommendation) -> Decision:
    """The decision a finished recommendation stands for (always a count, possibly the current one)."""
    return Decision(rec.replicas, rec.reason, rec.message)


def direction_reason(
    desired: int, current: int, *, unchanged: Reason = Reason.DESIRED_WITHIN_RANGE
) -> Reason:
    """``ScaleUp`` / ``ScaleDown`` / ``unchanged`` for a raw recommendation."""
    if desired > current:
        return Reason.SCALE_UP
    if desired < current:
        return Reason.SCALE_DOWN
    return unchanged


# --------------------------------------------------------------------------------------------------
# Stages and the pipeline
# --------------------------------------------------------------------------------------------------

StateT = TypeVar("StateT")


class Stage(Protocol[StateT]):
    """One step of the tail: a frozen value holding its configuration; its memory lives in ``state``."""

    @property
    def name(self) -> str: ...

    def initial_state(self) -> StateT: ...

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: StateT
    ) -> tuple[Recommendation, StateT]: ...

    def settle(self, final: Recommendation, snapshot: MetricsSnapshot, state: StateT) -> StateT:
        """Learn the final result of this tick (after every stage). Most stages ignore it."""
        ...


PipelineState = tuple[Any, ...]
"""One state per stage, in stage order; each is immutable (None, a tuple or a frozen dataclass)."""


@dataclass(frozen=True)
class Pipeline:
    """Stages run in order; then every stage settles on the final recommendation.

    >>> tail = Pipeline((Bounds(1, 10),))
    >>> state = tail.initial_state()
    """

    stages: tuple[Stage[Any], ...]

    def initial_state(self) -> PipelineState:
        return tuple(stage.initial_state() for stage in self.stages)

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: PipelineState
    ) -> tuple[Recommendation, PipelineState]:
        """Run every stage's ``apply`` (no settling: call :meth:`settle` with what was decided)."""
        if len(state) != len(self.stages):
            raise ValueError(f"pipeline state has {len(state)} entries for {len(self.stages)} stages")
        out: list[Any] = []
        for stage, stage_state in zip(self.stages, state, strict=True):
            rec, new_state = stage.apply(rec, snapshot, stage_state)
            out.append(new_state)
        return rec, tuple(out)

    def settle(self, final: Recommendation, snapshot: MetricsSnapshot, state: PipelineState) -> PipelineState:
        """Tell every stage what was finally decided this tick."""
        return tuple(
            stage.settle(final, snapshot, stage_state)
            for stage, stage_state in zip(self.stages, state, strict=True)
        )

    def run(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: PipelineState
    ) -> tuple[Recommendation, PipelineState]:
        """``apply`` then ``settle`` on the result: the usual way to use a pipeline."""
        final, state = self.apply(rec, snapshot, state)
        return final, self.settle(final, snapshot, state)

    @property
    def bounds(self) -> Bounds | None:
        """The first :class:`Bounds` stage (None without one)."""
        return next((stage for stage in self.stages if isinstance(stage, Bounds)), None)


class _Stateless:
    """Mixin for stages with no memory: state ``None``, nothing to settle."""

    def initial_state(self) -> None:
        return None

    def settle(self, final: Recommendation, snapshot: MetricsSnapshot, state: None) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Hold on missing or stale data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalCheck:
    """Which declared signals can be used this tick.

    ``values`` holds the usable ones (present and no older than the allowed age); ``missing`` have no
    value; ``stale`` have a value that is too old. ``hold`` is the decision to return instead of
    deciding, or None when there is enough to decide on.
    """

    values: Mapping[SignalSpec, float]
    missing: tuple[SignalSpec, ...]
    stale: tuple[SignalSpec, ...]
    hold: Decision | None

    def usable(self, spec: SignalSpec) -> bool:
        return spec in self.values


def check_signals(
    snapshot: MetricsSnapshot,
    specs: Sequence[SignalSpec],
    max_age_s: float,
    *,
    require_all: bool = False,
) -> SignalCheck:
    """Sort ``specs`` into usable / missing / stale and say whether to hold.

    Holds when *no* signal is usable (or, with ``require_all``, when *any* is not): with ``StaleData``
    if some unusable signal has an old value, else ``NoData``. A value is stale when its ``age_s``
    exceeds ``max_age_s`` (policies default to three of their own sync periods: a source that missed
    three scrapes in a row is not telling the truth about now).
    """
    values: dict[SignalSpec, float] = {}
    missing: list[SignalSpec] = []
    stale: list[SignalSpec] = []
    notes: list[str] = []
    for spec in specs:
        got = snapshot.get(spec)
        if got.value is None:
            missing.append(spec)
            notes.append(f"{spec.key}: no data ({got.reason or 'no samples'})")
        elif got.age_s > max_age_s:
            stale.append(spec)
            notes.append(f"{spec.key}: newest sample {got.age_s:g} s old (allowed <= {max_age_s:g} s)")
        else:
            values[spec] = got.value
    blocked = bool(missing or stale) if require_all else (not values and bool(specs))
    hold: Decision | None = None
    if blocked:
        reason = Reason.STALE_DATA if stale else Reason.NO_DATA
        hold = Decision.hold(reason, "holding: " + "; ".join(notes))
    return SignalCheck(values=values, missing=tuple(missing), stale=tuple(stale), hold=hold)


# --------------------------------------------------------------------------------------------------
# Tolerance
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """The HPA's dead band around a usage ratio of 1 (default 0.1 both ways, ``--horizontal-pod-
    autoscaler-tolerance``; per direction since KEP-4951's ``behavior.scaleUp/scaleDown.tolerance``).

    Within means ``1 - down <= ratio <= 1 + up``: with 0.1, a ratio of 1.1 (4 pods at 88 % of an 80 %
    target) is still within and nothing moves; 1.11 scales.
    """

    up: float = 0.1
    down: float = 0.1

    def __post_init__(self) -> None:
        if self.up < 0 or self.down < 0:
            raise ValueError("tolerances must be >= 0")

    def is_within(self, ratio: float) -> bool:
        return (1.0 - self.down) <= ratio <= (1.0 + self.up)


@dataclass(frozen=True)
class ToleranceStage(_Stateless):
    """Keep the current count while the recommendation's ``ratio`` is within the tolerance.

    Families that compute one usage ratio use this stage; the HPA applies :class:`Tolerance` per metric
    inside its replica calculation instead (as upstream does), before taking the max over metrics.
    """

    tolerance: Tolerance = Tolerance()

    @property
    def name(self) -> str:
        return "tolerance"

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: None
    ) -> tuple[Recommendation, None]:
        current = snapshot.current_replicas
        if rec.ratio is None or rec.replicas == current or not self.tolerance.is_within(rec.ratio):
            return rec, None
        note = (
            f"ratio {rec.ratio:.3f} within tolerance [{1 - self.tolerance.down:g}, {1 + self.tolerance.up:g}]"
            f" -> keep {current}"
        )
        return rec.becomes(current, Reason.WITHIN_TOLERANCE, note), None


# --------------------------------------------------------------------------------------------------
# Stabilization windows
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedValue:
    """A replica count remembered with the time it was recommended."""

    time_s: float
    replicas: int


def _within(history: tuple[TimedValue, ...], now_s: float, window_s: float, *, inclusive: bool) -> list[int]:
    cutoff = now_s - window_s
    if inclusive:
        return [h.replicas for h in history if h.time_s >= cutoff]
    return [h.replicas for h in history if h.time_s > cutoff]


@dataclass(frozen=True)
class Stabilization:
    """HPA ``behavior`` stabilization (``stabilizeRecommendationWithBehaviors``).

    Keeps the *unstabilized* recommendations; a scale-up may go only to the lowest recommendation of
    the last ``up_window_s``, a scale-down only to the highest of the last ``down_window_s``: the
    result is ``clamp(current, min(up window), max(down window))``, the new recommendation included
    in both. Upstream counts a past recommendation when its time is strictly after ``now - window``.

    Example (down window 300 s, HPA sync 15 s): recommendations 10, 10, 6, 4 at t = 0, 15, 30, 45 with
    10 running: at t = 45 the highest of the last 300 s is 10, so the count stays 10
    (``ScaleDownStabilized``) until t = 315, when the t = 15 sample leaves the window and 6 wins.
    """

    up_window_s: float = 0.0
    down_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.up_window_s < 0 or self.down_window_s < 0:
            raise ValueError("stabilization windows must be >= 0")

    @property
    def name(self) -> str:
        return "stabilization"

    def initial_state(self) -> tuple[TimedValue, ...]:
        return ()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: tuple[TimedValue, ...]
    ) -> tuple[Recommendation, tuple[TimedValue, ...]]:
        now, current, desired = snapshot.time_s, snapshot.current_replicas, rec.replicas
        up_rec = min([desired, *_within(state, now, self.up_window_s, inclusive=False)])
        down_rec = max([desired, *_within(state, now, self.down_window_s, inclusive=False)])
        stabilized = min(max(current, up_rec), down_rec)
        longest = max(self.up_window_s, self.down_window_s)
        history = (*(h for h in state if h.time_s > now - longest), TimedValue(now, desired))
        if stabilized == desired:
            return rec, history
        if desired >= current:
            note = f"stabilized: lowest recommendation in the last {self.up_window_s:g} s is {up_rec}"
            reason = Reason.SCALE_UP_STABILIZED
        else:
            note = f"stabilized: highest recommendation in the last {self.down_window_s:g} s is {down_rec}"
            reason = Reason.SCALE_DOWN_STABILIZED
        return rec.becomes(stabilized, reason, f"{note} -> {stabilized}"), history

    def settle(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: tuple[TimedValue, ...]
    ) -> tuple[TimedValue, ...]:
        return state


@dataclass(frozen=True)
class LegacyStabilization:
    """The HPA's downscale stabilization when ``behavior`` is absent (``stabilizeRecommendation``).

    The result is the max of the new recommendation and every recommendation of the last
    ``window_s`` (``--horizontal-pod-autoscaler-downscale-stabilization``, default 5 min). Upstream
    keeps a sample whose time is *not before* ``now - window`` (so inclusive, unlike the behavior
    path). Unlike :class:`Stabilization` this is not limited by the current count: a recommendation
    of 10 that the scale-up cap held to 8 is still 10 here the next tick.
    """

    window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.window_s < 0:
            raise ValueError("window_s must be >= 0")

    @property
    def name(self) -> str:
        return "legacy-stabilization"

    def initial_state(self) -> tuple[TimedValue, ...]:
        return ()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: tuple[TimedValue, ...]
    ) -> tuple[Recommendation, tuple[TimedValue, ...]]:
        now, desired = snapshot.time_s, rec.replicas
        highest = max([desired, *_within(state, now, self.window_s, inclusive=True)])
        history = (*(h for h in state if h.time_s >= now - self.window_s), TimedValue(now, desired))
        if highest == desired:
            return rec, history
        note = f"stabilized: highest recommendation in the last {self.window_s:g} s is {highest}"
        return rec.becomes(highest, Reason.SCALE_DOWN_STABILIZED, note), history

    def settle(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: tuple[TimedValue, ...]
    ) -> tuple[TimedValue, ...]:
        return state


# --------------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds(_Stateless):
    """Clamp to ``[min_replicas, max_replicas]`` (``max_replicas`` None: no upper bound).

    The reasons are configurable because families name them differently: the HPA says
    ``TooFewReplicas`` / ``TooManyReplicas``, others ``ClampedToMin`` / ``ClampedToMax``.
    """

    min_replicas: int
    max_replicas: int | None
    below_min_reason: Reason = Reason.CLAMPED_TO_MIN
    above_max_reason: Reason = Reason.CLAMPED_TO_MAX

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or (self.max_replicas is not None and self.max_replicas < self.min_replicas):
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}"
            )

    @property
    def name(self) -> str:
        return "bounds"

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: None
    ) -> tuple[Recommendation, None]:
        if self.max_replicas is not None and rec.replicas > self.max_replicas:
            note = f"{rec.replicas} is more than the maximum {self.max_replicas} -> {self.max_replicas}"
            return rec.becomes(self.max_replicas, self.above_max_reason, note), None
        if rec.replicas < self.min_replicas:
            note = f"{rec.replicas} is less than the minimum {self.min_replicas} -> {self.min_replicas}"
            return rec.becomes(self.min_replicas, self.below_min_reason, note), None
        return rec, None


# --------------------------------------------------------------------------------------------------
# Rate limits (HPA behavior policies)
# --------------------------------------------------------------------------------------------------


class PolicyType(StrEnum):
    """HPAScalingPolicy type."""

    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(StrEnum):
    """HPAScalingRules selectPolicy: the largest change (Max), the smallest (Min), or none."""

    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` pods (or ``value`` percent) of change per ``period_s`` (upstream 1..1800 s)."""

    type: PolicyType
    value: int
    period_s: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError("a scaling policy's value must be > 0")
        if not 0 < self.period_s <= 1800:
            raise ValueError("a scaling policy's period must be in 1..1800 s")

    def __str__(self) -> str:
        unit = " pods" if self.type is PolicyType.PODS else " %"
        return f"{self.type.value} {self.value}{unit} per {self.period_s} s"


@dataclass(frozen=True)
class ScalingRules:
    """One direction of an HPA ``behavior``: window, policies, how to pick among them, tolerance."""

    stabilization_window_s: float
    policies: tuple[ScalingPolicy, ...]
    select: SelectPolicy = SelectPolicy.MAX
    tolerance: float | None = None

    @property
    def longest_period_s(self) -> int:
        return max((p.period_s for p in self.policies), default=0)


@dataclass(frozen=True)
class ScaleEvent:
    """A change the policy made: ``change`` pods (always > 0) at ``time_s``."""

    time_s: float
    change: int


@dataclass(frozen=True)
class ScaleEvents:
    """The scale-up and scale-down events still inside some policy's period."""

    up: tuple[ScaleEvent, ...] = ()
    down: tuple[ScaleEvent, ...] = ()


def _changed_in_period(events: tuple[ScaleEvent, ...], now_s: float, period_s: float) -> int:
    # Upstream counts an event when its time is strictly after now - period.
    return sum(e.change for e in events if e.time_s > now_s - period_s)


def _period_start(current: int, events: ScaleEvents, now_s: float, period_s: float) -> int:
    # The replica count at the start of the period, undoing what this policy did since:
    # 10 running, +4 at t=20 and -1 at t=40, period 60 s, at t=50: 10 - 4 + 1 = 7.
    added = _changed_in_period(events.up, now_s, period_s)
    removed = _changed_in_period(events.down, now_s, period_s)
    return current - added + removed


def scale_up_limit(current: int, events: ScaleEvents, rules: ScalingRules, now_s: float) -> int:
    """The most replicas the scale-up policies allow now (``calculateScaleUpLimitWithScalingRules``).

    Pods: ``start + value``; Percent: ``ceil(start x (1 + value/100))`` (rounded *up* so that a small
    count can always grow: 1 pod + 10 % is 2, not 1). ``Max`` picks the largest of the proposals,
    ``Min`` the smallest, ``Disabled`` allows no change. Never below ``current``: when recent
    scale-ups used up the allowance, the count waits until they leave the period.
    """
    if rules.select is SelectPolicy.DISABLED or not rules.policies:
        return current
    proposals: list[int] = []
    for policy in rules.policies:
        start = _period_start(current, events, now_s, policy.period_s)
        if policy.type is PolicyType.PODS:
            proposals.append(start + policy.value)
        else:
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    limit = max(proposals) if rules.select is SelectPolicy.MAX else min(proposals)
    return max(limit, current)


def scale_down_limit(current: int, events: ScaleEvents, rules: ScalingRules, now_s: float) -> int:
    """The fewest replicas the scale-down policies allow now (``calculateScaleDownLimitWithBehaviors``).

    Pods: ``start - value``; Percent: ``int(start x (1 - value/100))``, truncated toward zero (80 pods
    - 10 % = 72; 7 pods - 10 % = int(6.3) = 6). ``Max`` picks the largest change, i.e. the *lowest*
    proposal; ``Min`` the highest; ``Disabled`` allows no change. Never above ``current``.
    """
    if rules.select is SelectPolicy.DISABLED or not rules.policies:
        return current
    proposals: list[int] = []
    for policy in rules.policies:
        start = _period_start(current, events, now_s, policy.period_s)
        if policy.type is PolicyType.PODS:
            proposals.append(start - policy.value)
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    limit = min(proposals) if rules.select is SelectPolicy.MAX else max(proposals)
    return min(limit, current)


@dataclass(frozen=True)
class RateLimit:
    """HPA ``behavior`` rate limits for both directions, counting this policy's own scale events.

    The events are learnt in :meth:`settle` from the final recommendation (after bounds), like the HPA
    stores an event only after it rescaled, and forgotten once older than the longest period.
    """

    up: ScalingRules
    down: ScalingRules

    @property
    def name(self) -> str:
        return "rate-limit"

    def initial_state(self) -> ScaleEvents:
        return ScaleEvents()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: ScaleEvents
    ) -> tuple[Recommendation, ScaleEvents]:
        now, current, desired = snapshot.time_s, snapshot.current_replicas, rec.replicas
        if desired > current:
            limit = scale_up_limit(current, state, self.up, now)
            if desired > limit:
                note = self._note("scale-up", self.up, current, desired, limit)
                return rec.becomes(limit, Reason.SCALE_UP_LIMIT, note), state
        elif desired < current:
            limit = scale_down_limit(current, state, self.down, now)
            if desired < limit:
                note = self._note("scale-down", self.down, current, desired, limit)
                return rec.becomes(limit, Reason.SCALE_DOWN_LIMIT, note), state
        return rec, state

    @staticmethod
    def _note(direction: str, rules: ScalingRules, current: int, desired: int, limit: int) -> str:
        if rules.select is SelectPolicy.DISABLED:
            return f"{direction} disabled (selectPolicy Disabled) -> keep {current}"
        policies = ", ".join(str(p) for p in rules.policies)
        return f"{direction} limited by {policies} (select {rules.select.value}): {desired} -> {limit}"

    def settle(self, final: Recommendation, snapshot: MetricsSnapshot, state: ScaleEvents) -> ScaleEvents:
        return record_scale_event(state, snapshot, final.replicas, self.up, self.down)


def record_scale_event(
    events: ScaleEvents, snapshot: MetricsSnapshot, new_replicas: int, up: ScalingRules, down: ScalingRules
) -> ScaleEvents:
    """``events`` with the change ``current -> new_replicas`` made at ``snapshot.time_s`` added, and
    events older than the longest period of their direction dropped."""
    now, current = snapshot.time_s, snapshot.current_replicas
    keep_up = tuple(e for e in events.up if e.time_s > now - up.longest_period_s)
    keep_down = tuple(e for e in events.down if e.time_s > now - down.longest_period_s)
    if new_replicas > current:
        keep_up += (ScaleEvent(now, new_replicas - current),)
    elif new_replicas < current:
        keep_down += (ScaleEvent(now, current - new_replicas),)
    return ScaleEvents(up=keep_up, down=keep_down)


@dataclass(frozen=True)
class LegacyScaleUpCap(_Stateless):
    """The HPA's scale-up cap when ``behavior`` is absent: ``max(2 x current, 4)`` per sync.

    Guards against a bogus metric sample blowing a deployment up (kubernetes#32304): 3 pods may go
    to at most 6, 1 pod to at most 4, whatever the metric says.
    """

    factor: float = 2.0
    minimum: int = 4

    @property
    def name(self) -> str:
        return "legacy-scale-up-cap"

    def limit(self, current: int) -> int:
        return int(max(self.factor * current, self.minimum))

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: None
    ) -> tuple[Recommendation, None]:
        current = snapshot.current_replicas
        cap = self.limit(current)
        if rec.replicas > cap:
            note = f"scale-up capped at max({self.factor:g} x {current}, {self.minimum}) = {cap}"
            return rec.becomes(cap, Reason.SCALE_UP_LIMIT, note), None
        return rec, None


# --------------------------------------------------------------------------------------------------
# Delays, scale-to-zero grace, cooldowns
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleDownDelay:
    """Knative ``scale-down-delay``: the result is the max recommendation of the last ``delay_s``.

    A scale-down happens only once the lower count has been wanted for the whole delay; scale-ups pass
    at once. With a 60-s delay, desired 5, 5, 2 at t = 0, 2, 4 keeps 5 until t = 62.
    """

    delay_s: float

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")

    @property
    def name(self) -> str:
        return "scale-down-delay"

    def initial_state(self) -> tuple[TimedValue, ...]:
        return ()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: tuple[TimedValue, ...]
    ) -> tuple[Recommendation, tuple[TimedValue, ...]]:
        if self.delay_s <= 0:
            return rec, state
        now = snapshot.time_s
        history = (*(h for h in state if h.time_s > now - self.delay_s), TimedValue(now, rec.replicas))
        highest = max(h.replicas for h in history)
        if highest == rec.replicas:
            return rec, history
        note = f"scale-down delayed: highest desired in the last {self.delay_s:g} s is {highest}"
        return rec.becomes(highest, Reason.SCALE_DOWN_STABILIZED, note), history

    def settle(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: tuple[TimedValue, ...]
    ) -> tuple[TimedValue, ...]:
        return state


@dataclass(frozen=True)
class ScaleToZeroState:
    """Since when zero has been wanted without a break (None: it is not wanted now)."""

    zero_since_s: float | None = None


@dataclass(frozen=True)
class ScaleToZeroGrace:
    """Remove the last pod only after zero has been recommended for ``grace_s`` without a break.

    While waiting, a recommendation of 0 becomes ``keep_replicas`` (default 1: scale down to one pod
    and keep it warm) with reason ``ScaleToZeroGrace``; once the grace has passed it goes through as
    ``ScaleToZero``. Any non-zero recommendation resets the clock. With ``grace_s`` 30 and a 2-s
    tick, zero first wanted at t = 100 reaches 0 replicas at t = 130.
    """

    grace_s: float
    keep_replicas: int = 1

    def __post_init__(self) -> None:
        if self.grace_s < 0 or self.keep_replicas < 1:
            raise ValueError("grace_s must be >= 0 and keep_replicas >= 1")

    @property
    def name(self) -> str:
        return "scale-to-zero-grace"

    def initial_state(self) -> ScaleToZeroState:
        return ScaleToZeroState()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: ScaleToZeroState
    ) -> tuple[Recommendation, ScaleToZeroState]:
        if rec.replicas > 0:
            return rec, ScaleToZeroState()
        now = snapshot.time_s
        since = now if state.zero_since_s is None else state.zero_since_s
        new_state = ScaleToZeroState(since)
        if snapshot.current_replicas == 0:
            return rec, new_state
        waited = now - since
        if waited >= self.grace_s:
            note = f"zero wanted for {waited:g} s >= grace {self.grace_s:g} s -> 0"
            return rec.becomes(0, Reason.SCALE_TO_ZERO, note), new_state
        keep = min(self.keep_replicas, snapshot.current_replicas)
        note = f"zero wanted for {waited:g} s of the {self.grace_s:g} s grace -> keep {keep}"
        return rec.becomes(keep, Reason.SCALE_TO_ZERO_GRACE, note), new_state

    def settle(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: ScaleToZeroState
    ) -> ScaleToZeroState:
        return state


@dataclass(frozen=True)
class CooldownState:
    """When this policy last scaled up and down (None: never)."""

    last_up_s: float | None = None
    last_down_s: float | None = None


@dataclass(frozen=True)
class Cooldown:
    """After a change, no further change in the same direction for a while.

    ``up_s`` after a scale-up no new scale-up; ``down_s`` after any change no scale-down (a scale-down
    right after a scale-up is the oscillation cooldowns exist to stop). Blocked changes keep the
    current count with reason ``Cooldown``. Changes are learnt in :meth:`settle`.
    """

    up_s: float = 0.0
    down_s: float = 0.0

    def __post_init__(self) -> None:
        if self.up_s < 0 or self.down_s < 0:
            raise ValueError("cooldowns must be >= 0")

    @property
    def name(self) -> str:
        return "cooldown"

    def initial_state(self) -> CooldownState:
        return CooldownState()

    def apply(
        self, rec: Recommendation, snapshot: MetricsSnapshot, state: CooldownState
    ) -> tuple[Recommendation, CooldownState]:
        now, current = snapshot.time_s, snapshot.current_replicas
        if rec.replicas > current and state.last_up_s is not None and now - state.last_up_s < self.up_s:
            wait = self.up_s - (now - state.last_up_s)
            note = f"scale-up cooldown: {wait:g} s left of {self.up_s:g} s -> keep {current}"
            return rec.becomes(current, Reason.COOLDOWN, note), state
        if rec.replicas < current:
            last = max((t for t in (state.last_up_s, state.last_down_s) if t is not None), default=None)
            if last is not None and now - last < self.down_s:
                wait = self.down_s - (now - last)
                note = f"scale-down cooldown: {wait:g} s left of {self.down_s:g} s -> keep {current}"
                return rec.becomes(current, Reason.COOLDOWN, note), state
        return rec, state

    def settle(self, final: Recommendation, snapshot: MetricsSnapshot, state: CooldownState) -> CooldownState:
        if final.replicas > snapshot.current_replicas:
            return replace(state, last_up_s=snapshot.time_s)
        if final.replicas < snapshot.current_replicas:
            return replace(state, last_down_s=snapshot.time_s)
        return state


def clamp_out_of_bounds(
    tail: Pipeline, snapshot: MetricsSnapshot, state: PipelineState, min_replicas: int, max_replicas: int
) -> tuple[Decision, PipelineState] | None:
    """A replica count outside ``[min, max]`` goes to the bound at once, before any signal is read,
    as the HPA does (a fresh deployment at 0 has no pod to measure). None when within the bounds.

    The family's tail does the clamping, so the bound's reason and the tail's state stay as usual.
    """
    current = snapshot.current_replicas
    if min_replicas <= current <= max_replicas:
        return None
    rec = Recommendation(current, Reason.DESIRED_WITHIN_RANGE, f"{current} replicas")
    final, new_state = tail.run(rec, snapshot, state)
    return to_decision(final), new_state


def rescale_out_of_bounds(
    tail: Pipeline, snapshot: MetricsSnapshot, state: PipelineState
) -> tuple[Decision, PipelineState] | None:
    """The HPA's rule for a replica count outside the tail's :class:`Bounds`: straight to the bound,
    before any signal is read, with the stage's reasons. None when within the bounds.

    Nothing of the tail runs on it (the stabilization history does not see the count), but every
    stage settles on it, so the rate limits count the change: upstream rescales and records the scale
    event. Example: 12 running with ``max_replicas`` 10 -> 10, ``TooManyReplicas``, "current 12
    replicas above max_replicas -> 10 (before metrics)".
    """
    bounds = tail.bounds
    if bounds is None:
        raise ValueError("rescaling to the bounds needs a tail with a Bounds stage")
    current = snapshot.current_replicas
    if bounds.max_replicas is not None and current > bounds.max_replicas:
        replicas, reason, why = bounds.max_replicas, bounds.above_max_reason, "above max_replicas"
    elif current < bounds.min_replicas:
        replicas, reason, why = bounds.min_replicas, bounds.below_min_reason, "below min_replicas"
    else:
        return None
    rec = Recommendation(replicas, reason, f"current {current} replicas {why} -> {replicas} (before metrics)")
    return to_decision(rec), tail.settle(rec, snapshot, state)


# --------------------------------------------------------------------------------------------------
# The wrapper: a family writes its raw recommendation, the tail does the rest
# --------------------------------------------------------------------------------------------------


class HasTail(Protocol):
    """A family's state: whatever the family remembers, plus the tail's state under ``tail``."""

    @property
    def tail(self) -> PipelineState: ...


FamilyStateT = TypeVar("FamilyStateT", bound=HasTail)


class TailedPolicy(Generic[FamilyStateT]):
    """The one place a family's recommendation becomes a decision (Ray Serve's decorator, as a base).

    A family (a frozen dataclass deriving from this) writes only :meth:`recommend` -- its raw
    :class:`Recommendation` from the usable signals -- and declares its :attr:`tail`. ``decide``,
    the same for every family, runs in this order:

    1. the signals are sorted into usable / missing / stale (:func:`check_signals`, all of them
       required when :attr:`require_all_signals`);
    2. :meth:`before` may learn from the snapshot (a forecaster folds in the rate, KEDA's operator
       counts trigger failures) or decide at once (Ray Serve's first deployment at
       ``initial_replicas``, KEDA's activation, the HPA disabled at 0 replicas);
    3. a count outside ``replica_bounds`` goes to the bound through the tail, before any signal
       counts (:func:`clamp_out_of_bounds`), unless :attr:`clamps_out_of_bounds` is off; with
       :attr:`rescales_out_of_bounds` it goes straight to the bound of the tail's :class:`Bounds`
       stage and the tail only settles on it (:func:`rescale_out_of_bounds`, the HPA's rule);
    4. missing or stale signals hold (``NoData`` / ``StaleData``), unless
       :attr:`holds_on_missing_signals` is off (the HPA judges every metric itself);
    5. :meth:`recommend` gives the raw recommendation (or a decision made outside the tail: a hold
       of its own, a fast path);
    6. the tail's stages run (:meth:`tail_for`: the tail may depend on the family's state);
    7. :meth:`finish` turns the tail's result into the decision, with every stage's note in its
       message (by default as it is; Knative decides scale-to-zero here), and the tail's stages
       settle on that decision;
    8. :meth:`after` may attach what the family adds to every decision (a warm-node buffer).

    The family's state is a frozen dataclass with the tail's state in a field named ``tail``.
    """

    require_all_signals: ClassVar[bool] = False
    """Hold unless every declared signal is usable (a forecaster needs its rate; the KPA its two
    windows); otherwise hold only when none is."""
    holds_on_missing_signals: ClassVar[bool] = True
    """Step 4: hold on missing or stale signals before :meth:`recommend`. Off, the family's
    :meth:`recommend` sees every check and returns its own holds."""
    clamps_out_of_bounds: ClassVar[bool] = True
    rescales_out_of_bounds: ClassVar[bool] = False
    """Step 3 the HPA's way: to the tail's own bounds, settled on but not run through the tail."""

    @property
    def tail(self) -> Pipeline:
        raise NotImplementedError

    if TYPE_CHECKING:

        @property
        def signals(self) -> tuple[SignalSpec, ...]: ...

        @property
        def max_signal_age_s(self) -> float: ...

        @property
        def replica_bounds(self) -> tuple[int, int | None]: ...

    def tail_for(self, state: FamilyStateT) -> Pipeline:
        """The tail this tick; by default always :attr:`tail`. A family whose stages depend on what
        it remembers (Knative's initial scale raises the minimum until first reached) picks among
        tails with the same stage states."""
        return self.tail

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: FamilyStateT
    ) -> tuple[Decision | None, FamilyStateT]:
        """Learn from the snapshot, or decide at once; by default neither."""
        return None, state

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: FamilyStateT
    ) -> tuple[Recommendation | Decision, FamilyStateT]:
        """The family's raw recommendation from ``check.values`` (every usable signal)."""
        raise NotImplementedError

    def finish(
        self, final: Recommendation, snapshot: MetricsSnapshot, state: FamilyStateT
    ) -> tuple[Decision, FamilyStateT]:
        """The decision the tail's final recommendation becomes, and what the family learns from
        it; by default the recommendation as it is."""
        return to_decision(final), state

    def after(self, decision: Decision) -> Decision:
        """What the family adds to every decision it makes; by default nothing."""
        return decision

    def decide(self, snapshot: MetricsSnapshot, state: FamilyStateT) -> tuple[Decision, FamilyStateT]:
        check = check_signals(
            snapshot, self.signals, self.max_signal_age_s, require_all=self.require_all_signals
        )
        early, state = self.before(snapshot, check, state)
        if early is not None:
            return self.after(early), state
        if self.clamps_out_of_bounds:
            if self.rescales_out_of_bounds:
                clamped = rescale_out_of_bounds(self.tail_for(state), snapshot, state.tail)
            else:
                lo, hi = self.replica_bounds
                clamped = clamp_out_of_bounds(
                    self.tail_for(state),
                    snapshot,
                    state.tail,
                    lo,
                    hi if hi is not None else snapshot.current_replicas,
                )
            if clamped is not None:
                return self.after(clamped[0]), replace(state, tail=clamped[1])  # type: ignore[type-var]
        if self.holds_on_missing_signals and check.hold is not None:
            return self.after(check.hold), state
        rec, state = self.recommend(snapshot, check, state)
        if isinstance(rec, Decision):
            return self.after(rec), state
        tail = self.tail_for(state)
        final, tail_state = tail.apply(rec, snapshot, state.tail)
        decision, state = self.finish(final, snapshot, state)
        if decision.desired_replicas != final.replicas:
            # The stages learn what was decided: a hold keeps the current count.
            kept = (
                snapshot.current_replicas if decision.desired_replicas is None else decision.desired_replicas
            )
            final = Recommendation(kept, decision.reason, decision.message)
        tail_state = tail.settle(final, snapshot, tail_state)
        return self.after(decision), replace(state, tail=tail_state)  # type: ignore[type-var]
