"""``kind: ray-serve``: Ray Serve's request-based autoscaler, tick for tick.

Upstream (``ray-project/ray`` ``python/ray/serve/autoscaling_policy.py``, ``serve/config.py``
``AutoscalingConfig``) decides in four steps every control-loop period (0.1 s upstream):

1. **Raw recommendation.** ``desired = total_ongoing / target_ongoing_requests`` where
   ``total_ongoing`` is the time-weighted average over ``look_back_period_s`` of the requests queued
   at handles plus running at replicas. Example: 9 ongoing requests, target 2 → 4.5 replicas.
2. **Smoothing factors**, relative to the *running* replicas:
   ``scaled = ceil(running + factor × (desired − running))`` with ``upscaling_factor`` when
   ``desired > running`` and ``downscaling_factor`` otherwise. If a scale-down factor would leave the
   count unchanged, one replica is removed anyway so the deployment cannot get stuck.
   Example: running 2, desired 4.5, factor 0.5 → ceil(2 + 1.25) = 4.
3. **Bounds**: clamp to ``[min_replicas, max_replicas]``.
4. **Delays**, relative to the *current target*: a signed counter counts consecutive scale-up (+)
   or scale-down (−) decisions and is reset when the direction changes or the recommendation equals
   the target. The change is applied only once the counter passes ``int(delay_s / period)``: with a
   1 s period and ``upscale_delay_s`` 30, on the 31st consecutive scale-up tick, i.e. 30 s after the
   first. Downscale to a count > 0 is clamped to ≥ 1; 1 → 0 waits ``downscale_to_zero_delay_s``
   (``downscale_delay_s`` when unset).

Before all of this, the **cold-start fast path**: with no running replica and any ongoing request the
target becomes ``max(ceil(1 × upscaling_factor), current target)`` at once, with no delay.

The gpuscale policy keeps that order and those rules; the counter lives in :class:`RayServeState`
instead of a mutable dict, the control period is ``sync_period_s`` (1 s by default rather than
upstream's 0.1 s, so a simulation does not run ten policy ticks per second; the delays in seconds are
unchanged), and a missing or stale demand signal holds instead of reading as zero requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.policies._config import field_error
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
    SignalCheck,
    TailedPolicy,
    direction_reason,
    to_decision,
)

#: Ray Serve's ``CONTROL_LOOP_INTERVAL_S`` (``ray/serve/_private/constants.py``).
UPSTREAM_CONTROL_LOOP_INTERVAL_S = 0.1


def delay_ticks(delay_s: float, period_s: float) -> int:
    """How many consecutive decisions a delay stands for: ``int(delay_s / period_s)`` as upstream.

    A small epsilon keeps binary fractions from losing a tick (``0.3 / 0.1`` is 2.9999999999999996).
    """
    return int(delay_s / period_s + 1e-9)


def ray_raw_desired(total_ongoing: float, target_ongoing_requests: float) -> float:
    """Step 1: the replicas that would put ``target_ongoing_requests`` on each one (fractional)."""
    return total_ongoing / target_ongoing_requests


def apply_scaling_factors(
    desired: float, running: int, upscaling_factor: float, downscaling_factor: float
) -> int:
    """Step 2: move only ``factor`` of the way from ``running`` towards ``desired`` (rounded up).

    Worked example: running 10, desired 2, downscaling_factor 0.1 → ceil(10 − 0.8) = 10, which would
    never move, so upstream removes one replica: 9.
    """
    delta = desired - running
    factor = upscaling_factor if delta > 0 else downscaling_factor
    scaled = math.ceil(running + factor * delta)
    if math.ceil(desired) < running and scaled == running:
        scaled -= 1
    return scaled


def cold_start_replicas(current_target: int, upscaling_factor: float) -> int:
    """The fast path from zero running replicas with demand: ``max(ceil(1 × factor), target)``."""
    return max(math.ceil(upscaling_factor), current_target)


@dataclass(frozen=True)
class ConsecutiveDelay:
    """Ray Serve's delay stage: a change must be recommended on consecutive ticks before it happens.

    The state is a signed counter: > 0 counts consecutive scale-up recommendations, < 0 consecutive
    scale-down ones; a change of direction restarts it, and a recommendation equal to the current
    target resets it to 0. A scale-up is applied when the counter exceeds ``upscale_ticks`` (so after
    ``upscale_ticks + 1`` recommendations in a row), a scale-down when it falls below
    ``-downscale_ticks``, or ``-downscale_to_zero_ticks`` for the 1 → 0 step; applying a change resets
    the counter. A scale-down to a count > 0 never goes below one replica. While a change waits the
    current target is kept with reason ``DelayPending``.

    Unlike the HPA's stabilization window, which looks at the recommendations of the last N seconds,
    this counts uninterrupted ticks: one tick in the other direction starts the wait over.
    """

    upscale_ticks: int
    downscale_ticks: int
    downscale_to_zero_ticks: int
    period_s: float = 1.0

    @property
    def name(self) -> str:
        return "consecutive-delay"

    def initial_state(self) -> int:
        return 0

    def apply(self, rec: Recommendation, snapshot: MetricsSnapshot, state: int) -> tuple[Recommendation, int]:
        target, wanted = snapshot.current_replicas, rec.replicas
        if wanted > target:
            counter = max(state, 0) + 1
            if counter > self.upscale_ticks:
                return rec, 0
            return self._wait(rec, target, counter, self.upscale_ticks, "scale-up"), counter
        if wanted < target:
            counter = min(state, 0) - 1
            ticks = self.downscale_to_zero_ticks if target == 1 else self.downscale_ticks
            if target != 1 and wanted < 1:
                # Only the 1 -> 0 step may reach zero; every other scale-down stops at one replica.
                rec = rec.becomes(1, rec.reason, "a scale-down to zero goes through one replica first -> 1")
            if -counter > ticks:
                return rec, 0
            return self._wait(rec, target, -counter, ticks, "scale-down"), counter
        return rec, 0

    def _wait(self, rec: Recommendation, target: int, seen: int, ticks: int, what: str) -> Recommendation:
        note = (
            f"{what} to {rec.replicas} waits: recommended {seen} tick(s) in a row, needs {ticks + 1}"
            f" ({ticks * self.period_s:g} s at {self.period_s:g} s per tick) -> keep {target}"
        )
        return rec.becomes(target, Reason.DELAY_PENDING, note)

    def settle(self, final: Recommendation, snapshot: MetricsSnapshot, state: int) -> int:
        return state


@dataclass(frozen=True)
class RayServeState:
    """The Ray Serve policy's memory: the shared tail's state (bounds, then the decision counter), and
    whether the deployment has been deployed (``initial_replicas`` applies only to the first tick)."""

    tail: PipelineState
    deployed: bool = False


@dataclass(frozen=True)
class RayServePolicy(TailedPolicy[RayServeState]):
    """Ray Serve's default request-based autoscaling policy (see the module docstring).

    A count outside the bounds is not clamped before the signals are read: Ray Serve applies its
    bounds only to a decision it makes (the tail's bounds stage)."""

    clamps_out_of_bounds = False

    config: RayServeConfig

    @property
    def name(self) -> str:
        return self.config.name or "ray-serve"

    @property
    def demand(self) -> SignalSpec:
        """Ongoing requests (queued + running), summed over replicas, averaged over the look-back."""
        return SignalSpec(Metric.CONCURRENCY, self.config.look_back_period_s, Aggregation.TOTAL)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.demand,)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        """The config key each signal comes from (for error messages)."""
        return {self.demand: "look_back_period_s"}

    @property
    def sync_period_s(self) -> float:
        return self.config.sync_period_s

    @property
    def max_signal_age_s(self) -> float:
        return self.config.max_signal_age_s

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (self.config.min_replicas, self.config.max_replicas)

    @property
    def initial_replicas(self) -> int | None:
        return None

    @cached_property
    def tail(self) -> Pipeline:
        """Bounds, then the consecutive-decision delay (upstream's order after the factors)."""
        cfg = self.config
        to_zero = (
            cfg.downscale_delay_s if cfg.downscale_to_zero_delay_s is None else cfg.downscale_to_zero_delay_s
        )
        delay = ConsecutiveDelay(
            upscale_ticks=delay_ticks(cfg.upscale_delay_s, cfg.sync_period_s),
            downscale_ticks=delay_ticks(cfg.downscale_delay_s, cfg.sync_period_s),
            downscale_to_zero_ticks=delay_ticks(to_zero, cfg.sync_period_s),
            period_s=cfg.sync_period_s,
        )
        return Pipeline((self.bounds, delay))

    @cached_property
    def bounds(self) -> Bounds:
        """The tail's bounds stage, which the cold-start fast path passes through as well."""
        return Bounds(self.config.min_replicas, self.config.max_replicas)

    def initial_state(self) -> RayServeState:
        return RayServeState(self.tail.initial_state())

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: RayServeState
    ) -> tuple[Decision | None, RayServeState]:
        if state.deployed:
            return None, state
        state = replace(state, deployed=True)
        initial = self.config.initial_replicas
        if initial is not None and snapshot.current_replicas != initial:
            # Upstream sets the target to initial_replicas when the deployment is first deployed,
            # before any metric exists; autoscaling (with its delays) takes over from there.
            reason = Reason.SCALE_UP if initial > snapshot.current_replicas else Reason.SCALE_DOWN
            return Decision(initial, reason, f"deployed at initial_replicas {initial}"), state
        return None, state

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: RayServeState
    ) -> tuple[Recommendation | Decision, RayServeState]:
        cfg = self.config
        total = check.values[self.demand]
        running, target = snapshot.ready, snapshot.current_replicas
        if running == 0:
            return self._from_zero(snapshot, total), state
        raw = ray_raw_desired(total, cfg.target_ongoing_requests)
        scaled = apply_scaling_factors(raw, running, cfg.upscaling_factor, cfg.downscaling_factor)
        factor = cfg.upscaling_factor if raw > running else cfg.downscaling_factor
        message = (
            f"{total:g} ongoing requests / {cfg.target_ongoing_requests:g} per replica = {raw:.2f} replicas;"
            f" from {running} running with factor {factor:g} -> {scaled}"
        )
        return Recommendation(scaled, direction_reason(scaled, target), message), state

    def _from_zero(self, snapshot: MetricsSnapshot, total: float) -> Decision:
        cfg = self.config
        target = snapshot.current_replicas
        if total <= 0:
            return Decision.hold(
                Reason.DESIRED_WITHIN_RANGE, f"no running replica and no ongoing request; target {target}"
            )
        wanted = cold_start_replicas(target, cfg.upscaling_factor)
        message = (
            f"cold start: {total:g} ongoing requests and no running replica ->"
            f" max(ceil(1 x {cfg.upscaling_factor:g}), target {target}) = {wanted}, no delay"
        )
        reason = Reason.SCALE_FROM_ZERO if wanted > target else Reason.DESIRED_WITHIN_RANGE
        # The fast path skips the delay counter (its state is left as it was) but not the bounds.
        final, _ = self.bounds.apply(Recommendation(wanted, reason, message), snapshot, None)
        return to_decision(final)


@register_kind
class RayServeConfig(KindConfig):
    """Ray Serve ``AutoscalingConfig`` for one deployment (defaults are upstream's unless noted)."""

    kind: Literal["ray-serve"] = "ray-serve"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(
        default=1, ge=0, description="Fewest replicas; 0 allows scale to zero (upstream 1)."
    )
    max_replicas: int = Field(
        default=100,
        ge=1,
        description="Most replicas (upstream field default 1; AutoscalingConfig.default() uses 100).",
    )
    initial_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Replicas set on the first tick, before any metric; unset leaves the starting count to"
        " the scenario (upstream: the deployment starts at min_replicas).",
    )
    target_ongoing_requests: float = Field(
        default=2.0,
        gt=0,
        description="Ongoing (queued + running) requests per replica (upstream 2; Ray Serve LLM uses 16).",
    )
    look_back_period_s: float = Field(
        default=30.0,
        gt=0,
        description="Window the ongoing requests are averaged over, seconds (upstream 30).",
    )
    upscale_delay_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a scale-up must be recommended without a break, seconds (upstream 30).",
    )
    downscale_delay_s: float = Field(
        default=600.0,
        ge=0,
        description="How long a scale-down to >= 1 replica must persist, seconds (upstream 600).",
    )
    downscale_to_zero_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Delay for the 1 -> 0 step, seconds; unset uses downscale_delay_s (upstream unset).",
    )
    upscaling_factor: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Gain on scale-up steps: move this fraction of the way to the recommendation (upstream unset,"
            " falling back to upscale_smoothing_factor, then smoothing_factor 1.0)."
        ),
    )
    downscaling_factor: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Gain on scale-down steps (upstream unset, falling back to downscale_smoothing_factor, then"
            " smoothing_factor 1.0)."
        ),
    )
    sync_period_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Control-loop period the delays are counted in, seconds (upstream CONTROL_LOOP_INTERVAL_S 0.1;"
            " 1 s here keeps simulations fast with the same delays in seconds)."
        ),
    )
    max_signal_age_s: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Hold when the newest demand sample is older than this, seconds (upstream drops handle metrics"
            " after max(2 x the 10 s push interval, RAY_SERVE_MIN_HANDLE_METRICS_TIMEOUT_S 10) = 20 s)."
        ),
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> RayServeConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            field_error(
                ("initial_replicas",),
                initial,
                f"must be within min_replicas..max_replicas ({self.min_replicas}..{self.max_replicas})",
            )
        return self

    def build(self) -> RayServePolicy:
        return RayServePolicy(self)
