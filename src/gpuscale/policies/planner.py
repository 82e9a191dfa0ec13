"""``kind: planner``: size the fleet from a measured capacity model, one cold start ahead.

Reactive policies aim at a utilisation target far below what a replica can carry and learn of a rise
only after it has hit; predictive ones forecast but ignore what a replica actually carries within the
SLO. The planner joins both, the way NVIDIA Dynamo's SLA planner does for LLMs (a load predictor, a
throughput model from pre-deployment profiling, a correction factor = observed / expected latency),
and adds what a GPU cluster needs: the cold start, the pods already on their way, and pending nodes.

Each tick:

1. **Forecast.** The request rate is folded into history buckets (``history_resolution_s``) and a
   Holt forecast (level and trend; Holt-Winters with ``season_s``; the predictive family's
   forecasters) covers the horizon ``H = cold_start_s + sync_period_s`` -- a pod asked for now is
   Ready one cold start later, and the next chance to ask is one tick later -- plus
   ``node_provision_s`` while pods or nodes are pending (a new node must come up first). The
   forecast peak over ``[t, t + H]`` plus an **uncertainty band** of ``band_z`` standard deviations
   of the one-bucket-ahead forecast error (at least ``band_floor_fraction`` of the level) is the
   planned demand.
2. **Burst.** A rate above the forecast and its band is a step or a flash crowd that the smoothed
   forecast has not seen yet; the live rate itself is planned for at once (a step is recognised as
   soon as the rate window shows it: within one or two ticks; with ``burst_window_s``, a second and
   shorter window of the rate shows it sooner, :meth:`PlannerPolicy.plan`). A history bucket far off its forecast
   is a level shift: the forecaster restarts there instead of reading the step as trend and noise.
   **Saturation:** a saturated service answers less than is asked of it (a closed loop's users
   wait); while every pod asked for is Ready, loaded to its modelled capacity, and the short-window
   p99 is over the SLO, the plan is the rate times p99 / SLO, at most doubled
   (:meth:`PlannerPolicy.saturated`). **Reserve:** the largest upward shift seen is kept as spare
   capacity where a cold start is long enough to make a step costly (:meth:`PlannerPolicy.reserve`).
3. **Size** from the **capacity model**: ``capacity.points`` give the requests/s one replica carries
   within the SLO at a fleet size (``gpuscale capacity SCENARIO`` measures them with the oracle's
   bisection), interpolated linearly in the fleet size and flat beyond the last point. The fleet is
   the fewest replicas ``k`` with ``k x rps_per_replica(k) / correction >= demand``. Pods that are
   starting or pending count: the spec already holds them, so they are never asked for twice.
4. **Correction.** When the observed p99 latency is above the SLO while the model says the Ready
   pods carry the load within it -- and has said so, with every pod asked for Ready, for the whole
   latency window -- the model overstates capacity: ``correction`` rises by a factor
   ``1 + correction_gain x (p99 / SLO - 1)``, at most ``correction_max_step`` a tick and
   ``max_correction`` in all (p99 150 ms against 100: x 1.1 a tick); when p99 is back under
   ``correction_relax_below`` of the SLO it decays toward 1 by ``correction_decay`` per tick.
5. **Scale down** only when a pod is not expected to be needed again before a restart could bring it
   back: the fleet never falls below the largest need of the last ``keep_s`` (default
   ``2 x (restart_s + sync_period_s)``). A released pod that is needed again comes back one
   restart later: up to a tick until the plan sees the need, then a cold start (``restart_s``: on
   a node that keeps the image and weights, shorter than a first start's ``cold_start_s``). Releasing a pod that
   is needed again after ``tau`` s of idling saves ``tau`` pod-seconds; bringing it back costs the
   cold start's pod-seconds (a starting pod holds its GPU) plus the restart time during which the
   load it serves misses the SLO -- at least as costly as another pod's time. Releasing pays only
   for ``tau > 2 x restart``; a rent-or-buy rule that waits out the break-even is within 2x of the
   clairvoyant choice. Numbers: a 45-s cold start and 10-s ticks keep a pod through a 60-s dip
   (``keep_s`` = 2 x 55 = 110 s) and release it 110 s into a long trough, idling at most 110
   pod-seconds per release against the 110 a needless restart would cost.

The reason and the message name the term that decided: ``burst`` and ``saturation``
(``ScaleUpPanic``), ``forecast``
/ ``band`` / ``cold-start guard`` (the horizon's look-ahead; ``Predicted``), ``correction``
(``ScaleUp``), ``scale-down guard`` (``ScaleDownStabilized``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gpuscale.config.loading import StrictModel
from gpuscale.policies._config import ConfigTiming, field_error
from gpuscale.policies.base import Aggregation, Decision, Metric, MetricsSnapshot, Reason, SignalSpec
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.predictive import (
    HoltWintersState,
    RateHistory,
    add_sample,
    holt_winters_forecast,
    holt_winters_init,
    holt_winters_update,
)
from gpuscale.policies.stages import (
    Bounds,
    Pipeline,
    PipelineState,
    Recommendation,
    SignalCheck,
    TailedPolicy,
    TimedValue,
)

# --- the capacity model ------------------------------------------------------------------------------


class CapacityPoint(StrictModel):
    """What ``replicas`` always-Ready pods carry within the SLO, per replica."""

    replicas: int = Field(ge=1, le=1_000_000, description="Fleet size the point was measured at.")
    rps_per_replica: float = Field(gt=0, description="Requests/s one replica carries within the SLO.")


class CapacityTable(StrictModel):
    """Capacity at the SLO by fleet size, as ``gpuscale capacity SCENARIO`` measures it."""

    profile: str = Field(min_length=1, description="The model profile (service) it was measured for.")
    slo_latency_ms: float = Field(gt=0, description="The SLO latency it was measured against, ms.")
    slo_target: float = Field(default=0.99, gt=0, le=1, description="Share of requests within the SLO.")
    points: list[CapacityPoint] = Field(description="Measured points, in increasing fleet size.")

    @field_validator("points")
    @classmethod
    def _points(cls, points: list[CapacityPoint]) -> list[CapacityPoint]:
        if not points:
            raise ValueError(
                "the capacity table is empty: it needs at least one measured point "
                "(gpuscale capacity SCENARIO measures them)"
            )
        for a, b in itertools.pairwise(points):
            if b.replicas <= a.replicas:
                raise ValueError(f"fleet sizes must increase: {b.replicas} replicas come after {a.replicas}")
            total_a, total_b = a.replicas * a.rps_per_replica, b.replicas * b.rps_per_replica
            if total_b < total_a * (1 - 1e-9):
                raise ValueError(
                    f"the capacity table is not monotone: {b.replicas} replicas carry {total_b:g} req/s in "
                    f"total, less than {a.replicas} replicas' {total_a:g} (more pods never carry less; "
                    "measure it again with gpuscale capacity)"
                )
        return points

    def per_replica(self, k: int) -> float:
        """Requests/s per replica at a fleet of ``k``: linear between points, flat outside them."""
        pts = self.points
        if k <= pts[0].replicas:
            return pts[0].rps_per_replica
        for a, b in itertools.pairwise(pts):
            if k <= b.replicas:
                f = (k - a.replicas) / (b.replicas - a.replicas)
                return a.rps_per_replica + f * (b.rps_per_replica - a.rps_per_replica)
        return pts[-1].rps_per_replica

    def total(self, k: int) -> float:
        """Requests/s ``k`` replicas carry within the SLO (0 for none)."""
        return k * self.per_replica(k) if k > 0 else 0.0


# --- the policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannerState:
    """History, forecaster, error statistics, correction factor, recent needs and the tail's state.

    ``forecast[i]`` is the forecast rate of bucket ``forecast_start + i``; ``error_var`` the smoothed
    squared one-bucket-ahead error (None until one forecast has been checked); ``needs`` the raw
    needs within the scale-down guard's window.
    """

    history: RateHistory = field(default_factory=RateHistory)
    holt: HoltWintersState = field(default_factory=HoltWintersState)
    forecast_start: int = 0
    forecast: tuple[float, ...] = ()
    error_var: float | None = None
    correction: float = 1.0
    last_unfit_s: float | None = None
    """The last tick at which the Ready fleet was not the whole plan or not within the model (pods on
    their way, a scale-up, a load above the Ready pods' capacity): latency measured since then says
    nothing about the model."""
    needs: tuple[TimedValue, ...] = ()
    rise_rps: float = 0.0
    """The largest upward level shift seen, fading with ``reserve_half_life_s``."""
    tail: PipelineState = ()


@dataclass(frozen=True)
class Plan:
    """The terms of one tick's plan (for the message and for tests)."""

    rate: float
    point: float
    """Forecast peak over the horizon, without the band."""
    now_point: float
    """Forecast for the current bucket."""
    band: float
    horizon_s: float
    burst: bool
    demand: float
    saturation: float
    """Factor on the live rate while the service is saturated (1: not saturated)."""
    reserve: float
    """Spare requests/s kept for a step like the largest seen."""
    window_rate: float | None = None
    """The rate window's own rate where the burst window's rate was taken instead (None: it was not)."""


@dataclass(frozen=True)
class PlannerPolicy(ConfigTiming, TailedPolicy[PlannerState]):
    """Capacity-model sizing one cold start ahead (module docstring)."""

    config: PlannerConfig

    @property
    def name(self) -> str:
        return self.config.name or "planner"

    @property
    def rate(self) -> SignalSpec:
        return SignalSpec(Metric.REQUEST_RATE, self.config.rate_window_s, Aggregation.TOTAL)

    @property
    def fast_rate(self) -> SignalSpec | None:
        w = self.config.burst_window_s
        return SignalSpec(Metric.REQUEST_RATE, w, Aggregation.TOTAL) if w is not None else None

    @property
    def latency(self) -> SignalSpec | None:
        w = self.config.correction_window_s
        return SignalSpec(Metric.LATENCY_P99_MS, w, Aggregation.POD_MEAN) if w is not None else None

    @property
    def saturation(self) -> SignalSpec | None:
        w = self.config.saturation_window_s
        return SignalSpec(Metric.LATENCY_P99_MS, w, Aggregation.POD_MEAN) if w is not None else None

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        found = [s for s in (self.rate, self.fast_rate, self.latency, self.saturation) if s is not None]
        return tuple(dict.fromkeys(found))

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        keys = {self.rate: "rate_window_s"}
        if self.fast_rate is not None and self.fast_rate != self.rate:
            keys[self.fast_rate] = "burst_window_s"
        if self.saturation is not None:
            keys[self.saturation] = "saturation_window_s"
        if self.latency is not None:
            keys[self.latency] = "correction_window_s"
        return keys

    @property
    def season_buckets(self) -> int:
        s = self.config.season_s
        return 1 if s is None else round(s / self.config.history_resolution_s)

    @property
    def max_horizon_s(self) -> float:
        cfg = self.config
        return cfg.cold_start_s + cfg.node_provision_s + cfg.sync_period_s

    @property
    def horizon_buckets(self) -> int:
        return math.ceil(self.max_horizon_s / self.config.history_resolution_s) + 1

    @property
    def keep_s(self) -> float:
        cfg = self.config
        if cfg.keep_s is not None:
            return cfg.keep_s
        restart = cfg.restart_s if cfg.restart_s is not None else cfg.cold_start_s
        return 2.0 * (restart + cfg.sync_period_s)

    @cached_property
    def tail(self) -> Pipeline:
        cfg = self.config
        return Pipeline((Bounds(cfg.min_replicas, cfg.max_replicas),))

    def initial_state(self) -> PlannerState:
        return PlannerState(tail=self.tail.initial_state())

    # -- learning ----------------------------------------------------------------------------------

    def observe(self, state: PlannerState, time_s: float, rate_rps: float) -> PlannerState:
        """Fold one rate sample in; when a bucket completes, score the old forecast and refresh it."""
        cfg = self.config
        bucket = math.floor(time_s / cfg.history_resolution_s)
        m = self.season_buckets
        history, completed = add_sample(state.history, bucket, rate_rps, max(2 * m, 8))
        if not completed:
            return replace(state, history=history)
        error_var = state.error_var
        shifted = False
        rise = state.rise_rps * 0.5 ** (completed * cfg.history_resolution_s / cfg.reserve_half_life_s)
        assert history.last_bucket is not None
        for b in range(
            history.last_bucket - min(completed, len(history.values)) + 1, history.last_bucket + 1
        ):
            i = b - state.forecast_start
            actual = history.at(b)
            if not (0 <= i < len(state.forecast) and actual is not None):
                continue
            err = actual - state.forecast[i]
            if self.is_shift(err, state.forecast[i], error_var):
                # a step: the level moved, the forecaster did not err by chance; start it again there
                # rather than read the step as a trend and as noise
                shifted = True
                rise = max(rise, err)
                continue
            w = cfg.error_smoothing
            error_var = err * err if error_var is None else (1 - w) * error_var + w * err * err
        hw = HoltWintersState() if shifted and self.season_buckets == 1 else state.holt
        if shifted and self.season_buckets == 1:
            history = RateHistory(
                history.last_bucket,
                history.values[-1:],
                history.open_bucket,
                history.open_sum,
                history.open_count,
            )
        hw = self._update(hw, history)
        start = history.open_bucket if history.open_bucket is not None else bucket
        forecast = holt_winters_forecast(hw, start, self.horizon_buckets) if hw.ready else ()
        return replace(
            state,
            history=history,
            holt=hw,
            forecast_start=start,
            forecast=forecast,
            error_var=error_var,
            rise_rps=rise,
        )

    def is_shift(self, err: float, forecast: float, error_var: float | None) -> bool:
        """A bucket off its forecast by more than ``shift_fraction`` of it and 3 standard deviations."""
        sd = math.sqrt(error_var) if error_var is not None else 0.0
        return abs(err) > max(self.config.shift_fraction * abs(forecast), 3.0 * sd)

    def _update(self, hw: HoltWintersState, history: RateHistory) -> HoltWintersState:
        cfg, m = self.config, self.season_buckets
        gamma = cfg.gamma if m > 1 else 0.0
        if hw.ready:
            assert hw.last_bucket is not None and history.last_bucket is not None
            new = history.last_bucket - hw.last_bucket
            if new <= len(history.values):
                fresh = history.values[len(history.values) - new :]
                return holt_winters_update(hw, fresh, cfg.alpha, cfg.beta, gamma)
            hw = HoltWintersState()  # a gap longer than the kept history: start over
        if len(history.values) < m:
            return hw
        hw = holt_winters_init(history.values[:m], history.first_bucket)
        rest = history.values[m:]
        return holt_winters_update(hw, rest, cfg.alpha, cfg.beta, gamma) if rest else hw

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: PlannerState
    ) -> tuple[Decision | None, PlannerState]:
        if check.usable(self.rate):
            state = self.observe(state, snapshot.time_s, check.values[self.rate])
        return None, state

    # -- planning ----------------------------------------------------------------------------------

    def horizon_s(self, snapshot: MetricsSnapshot) -> float:
        """One cold start and one tick; plus node provisioning while pods or nodes are pending."""
        cfg = self.config
        h = cfg.cold_start_s + cfg.sync_period_s
        if snapshot.pending > 0 or snapshot.pending_nodes > 0:
            h += cfg.node_provision_s
        return h

    def plan(
        self, snapshot: MetricsSnapshot, state: PlannerState, rate: float, fast: float | None = None
    ) -> Plan:
        """Forecast peak over the horizon, its band, and whether the live rate is a burst.

        ``fast`` is the rate of the last ``burst_window_s``: where it is above the window rate by more
        than 3 Poisson standard deviations of its own count (``3 x sqrt(fast / burst_window_s)``), a
        rise is under way that the longer window has only begun to show, and the plan takes the fast
        rate as the live one. 100 users joining 10 (6.5 -> 66 rps) show as 40 rps over a 2-s window
        two seconds later, against 13 rps over a 10-s one: 40 > 13 + 3 x sqrt(40 / 2) = 26.4.
        """
        cfg = self.config
        horizon = self.horizon_s(snapshot)
        res = cfg.history_resolution_s
        first = math.floor(snapshot.time_s / res)
        last = math.floor((snapshot.time_s + horizon) / res)
        found = [
            state.forecast[b - state.forecast_start]
            for b in range(first, last + 1)
            if 0 <= b - state.forecast_start < len(state.forecast)
        ]
        if found:
            now_point = max(found[0], 0.0)
            point = max(max(found), 0.0)
        else:
            now_point = point = rate  # no forecast yet: plan for the live rate
        window_rate = None
        w = cfg.burst_window_s
        if fast is not None and w is not None and fast > rate + 3.0 * math.sqrt(fast / w):
            window_rate, rate = rate, fast
        sd = math.sqrt(state.error_var) if state.error_var is not None else 0.0
        band = max(cfg.band_z * sd, cfg.band_floor_fraction * max(point, rate))
        burst = rate > now_point + band and rate > point
        reserve = self.reserve(state)
        demand = max(point + band, rate + (band if burst else 0.0)) + reserve
        return Plan(rate, point, now_point, band, horizon, burst, demand, 1.0, reserve, window_rate)

    def reserve(self, state: PlannerState) -> float:
        """Spare capacity for a step like the largest seen, weighted by how long a cold start is.

        A step no forecast sees costs the requests above capacity for one cold start: a +800 rps
        step with a 93.5-s cold start misses ~75,000 requests, 2 % of an hour at 1,000 rps, while with
        a 6.5-s cold start it misses 5,200, a tenth of the 1 % budget. So the reserve is the largest
        upward level shift seen (fading by half every ``reserve_half_life_s``) times
        ``min(1, cold_start_s / reserve_full_at_s)``: the whole shift at 93.5 s, 11 % of it at 6.5 s.
        """
        cfg = self.config
        return state.rise_rps * cfg.reserve_fraction * min(1.0, cfg.cold_start_s / cfg.reserve_full_at_s)

    def saturated(
        self, snapshot: MetricsSnapshot, check: SignalCheck, rate: float, correction: float
    ) -> float:
        """How much more than the live rate to plan for when the service is saturated: 1 normally.

        The request rate a saturated service answers understates what is asked of it: users of a
        closed loop wait for their answers before they ask again, so under overload the rate stays
        near what the Ready pods carry however many users wait. Saturation is: every pod asked for
        is Ready, they carry at least ``saturation_load_fraction`` of their modelled capacity, and
        the p99 of the last ``saturation_window_s`` is over the SLO. The plan is then the rate times
        p99 / SLO, at most ``saturation_max_factor`` (Knative's panic doubles at most as well):
        1 Ready pod of 16 rps answering 24 rps at a 4.5-s p99 against a 500-ms SLO plans for
        2 x 24 = 48 rps.
        """
        cfg, sat = self.config, self.saturation
        if sat is None or not check.usable(sat) or snapshot.ready <= 0:
            return 1.0
        if snapshot.starting or snapshot.pending or snapshot.ready < snapshot.current_replicas:
            return 1.0
        q = check.values[sat] / cfg.capacity.slo_latency_ms
        loaded = rate * correction >= cfg.saturation_load_fraction * cfg.capacity.total(snapshot.ready)
        return min(cfg.saturation_max_factor, q) if q > 1.0 and loaded else 1.0

    def need(self, demand: float, correction: float) -> int:
        """The fewest replicas whose capacity, divided by ``correction``, covers ``demand`` (more than
        ``max_replicas`` if none does).

        Counted up to the table's last point; beyond it a replica carries the last point's rate, so
        the count is computed, not counted: a live demand far above the table with a large
        ``max_replicas`` must not take a tick of its own.
        """
        if demand <= 0:
            return 0
        cap = self.config.capacity
        hi = self.config.max_replicas
        last = cap.points[-1]
        for k in range(1, min(hi, last.replicas) + 1):
            if cap.total(k) / correction >= demand:
                return k
        if hi <= last.replicas or cap.total(hi) / correction < demand:
            return hi + 1  # (also a demand so large that the division below would not be finite)
        k = max(last.replicas + 1, min(hi, math.ceil(demand * correction / last.rps_per_replica)))
        # the division may round either way: settle on the first count that covers, as counting would
        while k > last.replicas + 1 and cap.total(k - 1) / correction >= demand:
            k -= 1
        while k <= hi and cap.total(k) / correction < demand:
            k += 1
        return k

    def corrected(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: PlannerState, rate: float
    ) -> float:
        """The correction factor after this tick's latency (module docstring, step 4)."""
        cfg, lat = self.config, self.latency
        if lat is None or not check.usable(lat):
            return state.correction
        p99 = check.values[lat]
        q = p99 / cfg.capacity.slo_latency_ms
        settled = not self.unfit(snapshot, rate, state.correction) and (
            state.last_unfit_s is None or snapshot.time_s - state.last_unfit_s > lat.window_s
        )
        if q > 1.0 and settled:
            step = min(1.0 + cfg.correction_gain * (q - 1.0), cfg.correction_max_step)
            return min(cfg.max_correction, state.correction * step)
        if q < cfg.correction_relax_below:
            return 1.0 + (state.correction - 1.0) * (1.0 - cfg.correction_decay)
        return state.correction

    def unfit(self, snapshot: MetricsSnapshot, rate: float, correction: float) -> bool:
        """Whether the Ready pods are not the whole plan or carry more than the model allows."""
        return (
            snapshot.starting > 0
            or snapshot.pending > 0
            or snapshot.ready != snapshot.current_replicas
            or snapshot.ready <= 0
            or rate * correction > self.config.capacity.total(snapshot.ready)
        )

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: PlannerState
    ) -> tuple[Recommendation | Decision, PlannerState]:
        if not check.usable(self.rate):
            hold = Reason.STALE_DATA if self.rate in check.stale else Reason.NO_DATA
            return Decision.hold(hold, f"no usable request rate ({self.rate.key})"), state
        cfg = self.config
        now, current = snapshot.time_s, snapshot.current_replicas
        rate = check.values[self.rate]
        correction = self.corrected(snapshot, check, state, rate)
        fast = self.fast_rate
        p = self.plan(snapshot, state, rate, check.values[fast] if fast and check.usable(fast) else None)
        rate = p.rate
        factor = self.saturated(snapshot, check, rate, correction)
        if factor > 1.0:
            p = replace(p, saturation=factor, demand=max(p.demand, rate * factor))
        need = self.need(p.demand, correction)
        # which term decided: the count without each term, in order of application
        without_corr = self.need(p.demand, 1.0)
        now_only = self.need(max(p.now_point + p.band, rate), 1.0)
        if p.saturation > 1.0 and self.need(max(p.point + p.band, rate), 1.0) < without_corr:
            term = "saturation"
        elif p.burst and self.need(max(p.point + p.band, 0.0), 1.0) < without_corr:
            term = "burst"
        elif correction > 1.0 and need > without_corr:
            term = "correction"
        elif p.reserve > 0 and self.need(p.demand - p.reserve, 1.0) < without_corr:
            term = "reserve"
        elif without_corr > now_only:
            term = "cold-start guard"
        elif without_corr > self.need(max(p.point, rate), 1.0):
            term = "band"
        else:
            term = "forecast"
        keep_from = now - self.keep_s
        needs = (*(n for n in state.needs if n.time_s > keep_from), TimedValue(now, need))
        guarded = max(n.replicas for n in needs)
        desired = need
        if need < current:
            desired = min(current, guarded)
            if desired > need:
                term = "scale-down guard"
        if desired > current:
            reason = {
                "burst": Reason.SCALE_UP_PANIC,
                "saturation": Reason.SCALE_UP_PANIC,
                "correction": Reason.SCALE_UP,
            }.get(term, Reason.PREDICTED)
        elif desired < current:
            reason = Reason.SCALE_DOWN
        elif term == "scale-down guard":
            reason = Reason.SCALE_DOWN_STABILIZED
        else:
            reason = Reason.DESIRED_WITHIN_RANGE
        per = cfg.capacity.per_replica(max(need, 1))
        message = (
            f"rate {p.rate:.1f} rps"
            + (
                f" over the last {cfg.burst_window_s:g} s ({p.window_rate:.1f} over {cfg.rate_window_s:g} s)"
                if p.window_rate is not None and cfg.burst_window_s is not None
                else ""
            )
            + f"; forecast peak {p.point:.1f} rps within {p.horizon_s:g} s"
            f" + band {p.band:.1f}{'; burst' if p.burst else ''}"
            f"{f' + reserve {p.reserve:.1f}' if p.reserve > 0 else ''}"
            f"{f'; saturated x {p.saturation:.2f}' if p.saturation > 1.0 else ''}"
            f" -> demand {p.demand:.1f} rps"
            f" x correction {correction:.2f} at {per:.1f} rps per replica = {need}"
        )
        if term == "scale-down guard":
            message += f"; scale-down guard: {guarded} needed within the last {self.keep_s:g} s"
        message += f" -> {desired} (deciding term: {term})"
        unfit = desired > current or self.unfit(snapshot, rate, correction)
        last_unfit = now if unfit else state.last_unfit_s
        state = replace(state, correction=correction, needs=needs, last_unfit_s=last_unfit)
        return Recommendation(desired, reason, message), state


@register_kind
class PlannerConfig(KindConfig):
    """Size the fleet from a measured capacity model, one cold start ahead (SLO-aware planner)."""

    kind: Literal["planner"] = "planner"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (default 1).")
    max_replicas: int = Field(default=20, ge=1, description="Most replicas (default 20).")
    profile: str | None = Field(
        default=None,
        description="The model profile this policy scales; must be the capacity table's. Default: the "
        "table's.",
    )
    capacity: CapacityTable = Field(
        description="Requests/s per replica within the SLO by fleet size; `gpuscale capacity SCENARIO` "
        "writes it."
    )
    cold_start_s: float = Field(
        default=60.0, gt=0, description="A pod's cold start, seconds: the forecast's horizon (default 60)."
    )
    node_provision_s: float = Field(
        default=0.0,
        ge=0,
        description="A new GPU node's provisioning time, seconds; added to the horizon while pods or nodes "
        "are pending (default 0: the cluster has room).",
    )
    restart_s: float | None = Field(
        default=None,
        gt=0,
        description="A released pod's cold start when it comes back on a node that keeps its image and "
        "weights, seconds; the scale-down guard's unit (default cold_start_s).",
    )
    keep_s: float | None = Field(
        default=None,
        gt=0,
        description="Scale-down guard: never below the largest need of this window, seconds (default "
        "2 x (restart_s + sync_period_s), the rent-or-buy break-even; module docstring).",
    )
    sync_period_s: float = Field(default=10.0, gt=0, description="Control tick, seconds (default 10).")
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale. Default 3 sync periods."
    )
    rate_window_s: float = Field(
        default=10.0, gt=0, description="Window of the request-rate signal, seconds (default 10)."
    )
    burst_window_s: float | None = Field(
        default=None,
        gt=0,
        description="Window of a second, shorter request-rate signal that tells a rise within a tick or "
        "two (PlannerPolicy.plan), seconds; null: the rate window alone (default).",
    )
    history_resolution_s: float = Field(
        default=10.0, gt=0, description="History bucket length, seconds (default 10)."
    )
    season_s: float | None = Field(
        default=None,
        gt=0,
        description="Holt-Winters season, seconds; default none (Holt: level and trend only).",
    )
    alpha: float = Field(default=0.5, gt=0, le=1, description="Level smoothing (gpuscale: 0.5).")
    beta: float = Field(default=0.1, ge=0, le=1, description="Trend smoothing (gpuscale: 0.1).")
    gamma: float = Field(default=0.3, ge=0, le=1, description="Seasonal smoothing (with season_s).")
    band_z: float = Field(
        default=1.5, ge=0, description="Uncertainty band: standard deviations of the forecast error."
    )
    band_floor_fraction: float = Field(
        default=0.03, ge=0, description="Smallest band, as a fraction of the forecast (default 3 %)."
    )
    shift_fraction: float = Field(
        default=0.25,
        gt=0,
        description="A history bucket this far off its forecast (and 3 standard deviations) is a level "
        "shift: the forecaster restarts at it (default 25 %).",
    )
    error_smoothing: float = Field(
        default=0.2, gt=0, le=1, description="Weight of the newest squared forecast error (default 0.2)."
    )
    correction_window_s: float | None = Field(
        default=60.0,
        gt=0,
        description="Window of the p99 latency the correction factor reads, seconds; null turns the "
        "correction off (default 60).",
    )
    reserve_fraction: float = Field(
        default=1.0,
        ge=0,
        description="Reserve for steps: share of the largest upward level shift seen (default 1; 0 off).",
    )
    reserve_full_at_s: float = Field(
        default=60.0,
        gt=0,
        description="Cold start at which the whole reserve is kept; shorter ones keep a share (default 60).",
    )
    reserve_half_life_s: float = Field(
        default=3600.0, gt=0, description="The remembered step halves every this many seconds (default 1 h)."
    )
    saturation_window_s: float | None = Field(
        default=10.0,
        gt=0,
        description="Window of the p99 latency that tells saturation (module docstring, step 2), seconds; "
        "null turns the saturation term off (default 10).",
    )
    saturation_load_fraction: float = Field(
        default=0.9, gt=0, description="Saturated only at this share of the Ready pods' capacity or more."
    )
    saturation_max_factor: float = Field(
        default=2.0, ge=1, description="Most the saturation term multiplies the live rate by (default 2)."
    )
    correction_gain: float = Field(
        default=0.5, gt=0, description="Correction rise per tick per unit of p99 / SLO above 1."
    )
    correction_relax_below: float = Field(
        default=0.8, gt=0, le=1, description="p99 / SLO under which the correction decays toward 1."
    )
    correction_decay: float = Field(
        default=0.05, ge=0, le=1, description="Share of the correction above 1 lost per relaxed tick."
    )
    correction_max_step: float = Field(
        default=1.1, ge=1, description="Most the correction rises in one tick (default x 1.1)."
    )
    max_correction: float = Field(default=2.0, ge=1, description="Largest correction factor.")

    @model_validator(mode="after")
    def _cross_checks(self) -> PlannerConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        if self.profile is not None and self.profile != self.capacity.profile:
            field_error(
                ("capacity", "profile"),
                self.capacity.profile,
                f"the capacity table was measured for profile {self.capacity.profile!r}, but this policy "
                f"scales {self.profile!r}; measure {self.profile!r} with gpuscale capacity",
            )
        if self.burst_window_s is not None and self.burst_window_s >= self.rate_window_s:
            field_error(
                ("burst_window_s",),
                self.burst_window_s,
                f"must be shorter than rate_window_s ({self.rate_window_s:g} s): it is the short window "
                "that shows a rise sooner",
            )
        if self.season_s is not None:
            buckets = self.season_s / self.history_resolution_s
            if abs(buckets - round(buckets)) > 1e-9 or round(buckets) < 2:
                field_error(
                    ("season_s",),
                    self.season_s,
                    f"must be a whole multiple (>= 2) of history_resolution_s ({self.history_resolution_s:g} s)",
                )
        return self

    @classmethod
    def example(cls) -> PlannerConfig:
        return cls.model_validate(example_data())

    def build(self) -> PlannerPolicy:
        return PlannerPolicy(self)


def example_data() -> dict[str, Any]:
    """A representative planner config (the conformance suite builds the kind from it)."""
    return {
        "kind": "planner",
        "max_replicas": 10,
        "capacity": {
            "profile": "resnet50-a100-triton",
            "slo_latency_ms": 100,
            "points": [{"replicas": 1, "rps_per_replica": 100}, {"replicas": 4, "rps_per_replica": 110}],
        },
        "cold_start_s": 45,
    }
