"""``kind: predictive``: forecast the request rate and add capacity ahead of it by the cold-start time.

GPU replicas take minutes to become Ready (image pull, model download, load, warm-up), so a reactive
policy is late by exactly that long on every rise of a daily or weekly cycle. This policy keeps a
bounded history of the request rate, forecasts the rate over the next ``lead_time_s`` and provisions
for the largest forecast value in that window (Crane EHPA serves "the largest predicted value within
the prediction window"), next to a reactive target on the live signal:

``desired = max(predictive, reactive)``

so capacity is only ever *added* on a forecast (AWS predictive scaling's ForecastAndScale mode does
the same: it raises capacity ahead of load and leaves scale-in to target tracking). The reactive
term alone can take replicas away, and only down to the forecast.

Forecasters (``forecaster:``):

``seasonal``
    Seed 001's rule: the rate at the same time ``seasons`` × ``season_s`` ago (7 and 14 days by
    default), its 90th percentile, × (1 + ``buffer_fraction``). Example: 420 and 500 rps a week and
    two weeks ago → p90 = 420 + 0.9 × 80 = 492 rps → × 1.2 = 590.4 rps → at 100 rps per replica,
    6 replicas.
``holt-winters``
    Additive Holt-Winters (level, trend, one seasonal term per bucket of the season), initialised
    from the first full season and updated once per completed history bucket.
``fft``
    A periodogram predictor in the spirit of Crane's DSP estimator: the last whole seasons of
    history are transformed, all but the strongest ``fft_components`` frequencies are zeroed, and
    the de-noised cycle is repeated forward.

History lives in the policy state: the sampled rate is averaged into ``history_resolution_s`` buckets
(60 s by default, Crane's ``historyResolution``), gaps are filled with the last value, and only as
many buckets as the forecaster needs are kept. Forecasts are recomputed when a bucket completes, not
on every tick.

``headroom_replicas`` keeps a warm-node buffer (``Decision.placeholder_pods``): placeholder pods hold
spare GPUs, so the pods a forecast adds start at once instead of after a node's provisioning time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from gpuscale.policies._config import MISSING_KEY, ConfigTiming, field_error
from gpuscale.policies.base import Aggregation, Decision, Metric, MetricsSnapshot, Reason, SignalSpec
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


class Forecaster(StrEnum):
    """Which load forecaster a predictive policy uses."""

    SEASONAL = "seasonal"
    HOLT_WINTERS = "holt-winters"
    FFT = "fft"


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile with linear interpolation between order statistics (numpy's default).

    ``quantile([420, 500], 0.9)`` = 420 + 0.9 × (500 − 420) = 492.
    """
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


@dataclass(frozen=True)
class RateHistory:
    """Completed history buckets (mean rate per bucket) and the bucket still being filled.

    Bucket ``b`` covers ``[b × resolution_s, (b + 1) × resolution_s)``; ``values[i]`` is bucket
    ``first_bucket + i``.
    """

    first_bucket: int = 0
    values: tuple[float, ...] = ()
    open_bucket: int | None = None
    open_sum: float = 0.0
    open_count: int = 0

    @property
    def last_bucket(self) -> int | None:
        """The newest completed bucket, or None while none has completed."""
        return self.first_bucket + len(self.values) - 1 if self.values else None

    def at(self, bucket: int) -> float | None:
        i = bucket - self.first_bucket
        if 0 <= i < len(self.values):
            return self.values[i]
        return None


def add_sample(history: RateHistory, bucket: int, value: float, max_buckets: int) -> tuple[RateHistory, int]:
    """Add one sample; returns the new history and how many buckets completed because of it.

    A sample for an older bucket than the open one (time never goes back in a snapshot stream, but a
    late sample must not corrupt the history) is folded into the open bucket.
    """
    if history.open_bucket is None:
        return replace(history, first_bucket=bucket, open_bucket=bucket, open_sum=value, open_count=1), 0
    if bucket <= history.open_bucket:
        return replace(history, open_sum=history.open_sum + value, open_count=history.open_count + 1), 0
    closed = history.open_sum / history.open_count
    # Buckets that saw no sample (a tick period longer than a bucket, or a data gap) repeat the last
    # value; at most the whole history is filled, however long the gap.
    completed = min(bucket - history.open_bucket, max_buckets)
    values = (history.values + (closed,) * completed)[-max_buckets:]
    # The completed buckets are contiguous and end just before the new open one.
    return RateHistory(bucket - len(values), values, bucket, value, 1), completed


# --- forecasters: each turns the history into forecast values for the next `horizon` buckets ---


def seasonal_forecast(
    history: RateHistory,
    start_bucket: int,
    horizon: int,
    season_buckets: int,
    seasons: Sequence[int],
    q: float,
) -> tuple[float, ...] | None:
    """Seed 001's rule for buckets ``start_bucket …``: the ``q``-quantile of the same bucket ``k``
    seasons ago for each ``k`` in ``seasons``; buckets with no past value at all are skipped by
    returning None for the whole forecast until every lag is available for the first bucket.
    """
    out: list[float] = []
    for b in range(start_bucket, start_bucket + horizon):
        past = [history.at(b - k * season_buckets) for k in seasons]
        found = [v for v in past if v is not None]
        if len(found) < len(seasons):
            return None
        out.append(quantile(found, q))
    return tuple(out)


@dataclass(frozen=True)
class HoltWintersState:
    """Additive Holt-Winters components; ``season[b % m]`` is the seasonal term of bucket ``b``."""

    level: float = 0.0
    trend: float = 0.0
    season: tuple[float, ...] = ()
    last_bucket: int | None = None

    @property
    def ready(self) -> bool:
        return self.last_bucket is not None


def holt_winters_init(first_season: Sequence[float], first_bucket: int) -> HoltWintersState:
    """Initialise from one full season: level = its mean, no trend, season = deviation from the mean."""
    m = len(first_season)
    level = math.fsum(first_season) / m
    season = [0.0] * m
    for i, x in enumerate(first_season):
        season[(first_bucket + i) % m] = x - level
    return HoltWintersState(level, 0.0, tuple(season), first_bucket + m - 1)


def holt_winters_update(
    hw: HoltWintersState, values: Sequence[float], alpha: float, beta: float, gamma: float
) -> HoltWintersState:
    """Feed the buckets after ``hw.last_bucket``, one by one (the standard additive recursions)."""
    if hw.last_bucket is None:
        raise ValueError("Holt-Winters state is not initialised")
    m = len(hw.season)
    season = list(hw.season)
    level, trend, b = hw.level, hw.trend, hw.last_bucket
    for x in values:
        b += 1
        s_old = season[b % m]
        new_level = alpha * (x - s_old) + (1 - alpha) * (level + trend)
        trend = beta * (new_level - level) + (1 - beta) * trend
        season[b % m] = gamma * (x - new_level) + (1 - gamma) * s_old
        level = new_level
    return HoltWintersState(level, trend, tuple(season), b)


def holt_winters_forecast(hw: HoltWintersState, start_bucket: int, horizon: int) -> tuple[float, ...]:
    """``level + h × trend + season`` for ``h`` buckets past the last one fed."""
    if hw.last_bucket is None:
        raise ValueError("Holt-Winters state is not initialised")
    m = len(hw.season)
    out = []
    for b in range(start_bucket, start_bucket + horizon):
        h = b - hw.last_bucket
        out.append(hw.level + h * hw.trend + hw.season[b % m])
    return tuple(out)


def fft_forecast(
    history: RateHistory, start_bucket: int, horizon: int, season_buckets: int, seasons: int, components: int
) -> tuple[float, ...] | None:
    """Periodogram de-noising over the last ``seasons`` whole seasons, repeated forward.

    The inverse transform of a length-``N`` spectrum is periodic with period ``N``; ``N`` is a whole
    number of seasons, so reading it past its end repeats the de-noised cycle. Ties between equally
    strong frequencies go to the lower frequency (a stable sort), so the result is deterministic.
    """
    n = seasons * season_buckets
    if len(history.values) < n or history.last_bucket is None:
        return None
    x = np.asarray(history.values[-n:], dtype=np.float64)
    spectrum = np.fft.rfft(x)
    amplitude = np.abs(spectrum[1:])
    keep = np.argsort(-amplitude, kind="stable")[:components] + 1
    filtered = np.zeros_like(spectrum)
    filtered[0] = spectrum[0]
    filtered[keep] = spectrum[keep]
    cycle = np.fft.irfft(filtered, n=n)
    first = history.last_bucket - n + 1
    return tuple(float(cycle[(b - first) % n]) for b in range(start_bucket, start_bucket + horizon))


# --- the policy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictiveState:
    """History, the Holt-Winters components, the current forecast and the tail's state.

    ``forecast[i]`` is the forecast rate of bucket ``forecast_start + i``; it is recomputed when a
    history bucket completes.
    """

    history: RateHistory = RateHistory()
    holt_winters: HoltWintersState = HoltWintersState()
    forecast_start: int = 0
    forecast: tuple[float, ...] = ()
    tail: PipelineState = ()


@dataclass(frozen=True)
class PredictivePolicy(ConfigTiming, TailedPolicy[PredictiveState]):
    """Forecast-ahead scale-up with a reactive floor; scale-in only reactively (module docstring)."""

    require_all_signals = True

    config: PredictiveConfig

    @property
    def name(self) -> str:
        return self.config.name or "predictive"

    @property
    def rate(self) -> SignalSpec:
        """The service's request rate: what is forecast (and the reactive signal by default)."""
        return SignalSpec(Metric.REQUEST_RATE, self.config.rate_window_s, Aggregation.TOTAL)

    @property
    def reactive(self) -> SignalSpec:
        cfg = self.config
        if cfg.reactive_metric == "concurrency":
            return SignalSpec(Metric.CONCURRENCY, cfg.reactive_window_s, Aggregation.TOTAL)
        return SignalSpec(Metric.REQUEST_RATE, cfg.reactive_window_s, Aggregation.TOTAL)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return tuple(dict.fromkeys((self.rate, self.reactive)))

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return {self.reactive: "reactive_window_s", self.rate: "rate_window_s"}

    @property
    def season_buckets(self) -> int:
        return round(self.config.season_s / self.config.history_resolution_s)

    @property
    def horizon_buckets(self) -> int:
        """Buckets a forecast covers: every bucket that ``[t, t + lead]`` can touch."""
        return math.ceil(self.config.lead_time_s / self.config.history_resolution_s) + 1

    @property
    def max_history_buckets(self) -> int:
        """The history each forecaster needs, and no more (the state stays bounded)."""
        cfg, m = self.config, self.season_buckets
        if cfg.forecaster is Forecaster.SEASONAL:
            return max(cfg.seasons) * m + self.horizon_buckets
        if cfg.forecaster is Forecaster.FFT:
            return cfg.fft_seasons * m
        return m

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

    def initial_state(self) -> PredictiveState:
        return PredictiveState(tail=self.tail.initial_state())

    # -- learning ----------------------------------------------------------------------------------

    def observe(self, state: PredictiveState, time_s: float, rate_rps: float) -> PredictiveState:
        """Fold one rate sample into the history; refresh the forecast when a bucket completed."""
        cfg = self.config
        bucket = math.floor(time_s / cfg.history_resolution_s)
        history, completed = add_sample(state.history, bucket, rate_rps, self.max_history_buckets)
        if not completed:
            return replace(state, history=history)
        hw = state.holt_winters
        if cfg.forecaster is Forecaster.HOLT_WINTERS:
            hw = self._update_holt_winters(hw, history)
        start = history.open_bucket if history.open_bucket is not None else bucket
        forecast = self._forecast(history, hw, start)
        return replace(state, history=history, holt_winters=hw, forecast_start=start, forecast=forecast or ())

    def _update_holt_winters(self, hw: HoltWintersState, history: RateHistory) -> HoltWintersState:
        cfg, m = self.config, self.season_buckets
        if hw.ready:
            assert hw.last_bucket is not None and history.last_bucket is not None
            new = history.last_bucket - hw.last_bucket
            if new <= len(history.values):
                fresh = history.values[len(history.values) - new :]
                return holt_winters_update(hw, fresh, cfg.alpha, cfg.beta, cfg.gamma)
            # A gap longer than the kept history: the components no longer line up with it; start over.
            hw = HoltWintersState()
        if len(history.values) < m:
            return hw
        # The first full season initialises; any buckets after it are fed through the recursions.
        first = history.values[:m]
        hw = holt_winters_init(first, history.first_bucket)
        rest = history.values[m:]
        return holt_winters_update(hw, rest, cfg.alpha, cfg.beta, cfg.gamma) if rest else hw

    def _forecast(self, history: RateHistory, hw: HoltWintersState, start: int) -> tuple[float, ...] | None:
        cfg, h = self.config, self.horizon_buckets
        if cfg.forecaster is Forecaster.SEASONAL:
            return seasonal_forecast(history, start, h, self.season_buckets, cfg.seasons, cfg.quantile)
        if cfg.forecaster is Forecaster.HOLT_WINTERS:
            return holt_winters_forecast(hw, start, h) if hw.ready else None
        return fft_forecast(history, start, h, self.season_buckets, cfg.fft_seasons, cfg.fft_components)

    def forecast_peak(self, state: PredictiveState, time_s: float) -> float | None:
        """The largest forecast rate over ``[t, t + lead_time_s]``, or None without a forecast."""
        res = self.config.history_resolution_s
        first = math.floor(time_s / res)
        last = math.floor((time_s + self.config.lead_time_s) / res)
        found = [
            state.forecast[b - state.forecast_start]
            for b in range(first, last + 1)
            if 0 <= b - state.forecast_start < len(state.forecast)
        ]
        return max(max(found), 0.0) if found else None

    # -- deciding ----------------------------------------------------------------------------------

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: PredictiveState
    ) -> tuple[Decision | None, PredictiveState]:
        """Every usable rate sample is learnt, even on a tick whose count is then clamped."""
        if check.hold is None:
            state = self.observe(state, snapshot.time_s, check.values[self.rate])
        return None, state

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: PredictiveState
    ) -> tuple[Recommendation, PredictiveState]:
        cfg = self.config
        current = snapshot.current_replicas
        live = check.values[self.reactive]
        target = cfg.resolved_reactive_target
        reactive = math.ceil(live / target - 1e-9)
        unit = "rps" if cfg.reactive_metric == "request_rate" else "in flight"
        parts = [f"reactive {live:g} {unit} / {target:g} per replica = {reactive}"]
        predicted = 0
        peak = self.forecast_peak(state, snapshot.time_s)
        if peak is None:
            parts.append(
                f"no forecast yet ({cfg.forecaster.value}: {len(state.history.values)} buckets of history)"
            )
        else:
            predicted = math.ceil(peak * (1 + cfg.buffer_fraction) / cfg.capacity_rps_per_replica - 1e-9)
            parts.append(
                f"forecast peak {peak:.1f} rps within {cfg.lead_time_s:g} s ({cfg.forecaster.value})"
                f" x {1 + cfg.buffer_fraction:g} / {cfg.capacity_rps_per_replica:g} rps per replica"
                f" = {predicted}"
            )
        desired = max(reactive, predicted)
        if desired > current:
            reason = Reason.PREDICTED if predicted > reactive else Reason.SCALE_UP
        elif desired < current:
            reason = Reason.SCALE_DOWN
        else:
            reason = Reason.DESIRED_WITHIN_RANGE
        return Recommendation(desired, reason, "; ".join(parts) + f" -> max = {desired}"), state

    def after(self, decision: Decision) -> Decision:
        """Every decision carries the warm-node buffer, holds included."""
        if not self.config.headroom_replicas:
            return decision
        return replace(decision, placeholder_pods=self.config.headroom_replicas)


MAX_SEASON_BUCKETS = 1_000_000
"""History buckets one season may have (the history keeps a few seasons of them: a few MB)."""


@register_kind
class PredictiveConfig(KindConfig):
    """Forecast the request rate and add capacity ahead of it; a reactive floor; scale-in reactive only."""

    kind: Literal["predictive"] = "predictive"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (default 1).")
    max_replicas: int = Field(ge=1, description="Most replicas; required (AWS HonorMaxCapacity).")
    capacity_rps_per_replica: float = Field(
        gt=0, description="Requests/s one replica serves within the SLO; required (seed 001: ~500 QPS)."
    )
    lead_time_s: float = Field(
        default=300.0,
        gt=0,
        description="How far ahead to provision, the cold-start time, seconds (AWS SchedulingBufferTime"
        " default 300).",
    )
    forecaster: Forecaster = Field(
        default=Forecaster.SEASONAL,
        description="seasonal (seed 001: same time 1 and 2 seasons ago, p90), holt-winters, or fft"
        " (Crane DSP-like).",
    )
    season_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Season length, seconds (seed 001: 7 days); shorter for compressed scenarios.",
    )
    seasons: tuple[int, ...] = Field(
        default=(1, 2), description="seasonal: which past seasons to look at (seed 001: 7 and 14 days ago)."
    )
    quantile: float = Field(
        default=0.9, gt=0, le=1, description="seasonal: quantile of the past values (seed 001: p90)."
    )
    buffer_fraction: float = Field(
        default=0.2, ge=0, description="Safety margin on every forecast (seed 001: +20 %)."
    )
    history_resolution_s: float = Field(
        default=60.0, gt=0, description="History bucket length, seconds (Crane DSP historyResolution 1 min)."
    )
    rate_window_s: float = Field(
        default=60.0,
        gt=0,
        description="Window of the request-rate signal the history is built from, seconds.",
    )
    alpha: float = Field(
        default=0.3, gt=0, le=1, description="holt-winters: level smoothing (gpuscale: 0.3)."
    )
    beta: float = Field(
        default=0.01, ge=0, le=1, description="holt-winters: trend smoothing (gpuscale: 0.01)."
    )
    gamma: float = Field(
        default=0.5, ge=0, le=1, description="holt-winters: seasonal smoothing (gpuscale: 0.5)."
    )
    fft_components: int = Field(
        default=8, ge=1, description="fft: strongest frequencies kept (Crane's estimators keep 3 to 50)."
    )
    fft_seasons: int = Field(
        default=2, ge=2, description="fft: whole seasons of history transformed (Crane needs >= 2 periods)."
    )
    reactive_metric: Literal["request_rate", "concurrency"] = Field(
        default="request_rate", description="The live signal of the reactive floor (default request_rate)."
    )
    reactive_target_per_replica: float | None = Field(
        default=None,
        gt=0,
        description="Reactive target per replica (rps or in-flight); default capacity_rps_per_replica for"
        " request_rate, required for concurrency.",
    )
    reactive_window_s: float = Field(
        default=60.0, gt=0, description="Window of the reactive signal, seconds."
    )
    scale_down_stabilization_s: float = Field(
        default=300.0,
        ge=0,
        description="Scale in only to the highest recommendation of this window, seconds (HPA default 300).",
    )
    sync_period_s: float = Field(
        default=15.0, gt=0, description="Control tick, seconds (HPA sync period 15)."
    )
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale. Default 3 sync periods."
    )
    headroom_replicas: int = Field(
        default=0,
        ge=0,
        description="Warm-node buffer: low-priority placeholder pods, each requesting what a serving pod "
        "requests (the cluster over-provisioner pattern), so the node autoscaler keeps spare GPU nodes "
        "up for the forecast's scale-ups; a serving pod preempts one at once. Default 0 (none).",
    )

    @property
    def resolved_reactive_target(self) -> float:
        if self.reactive_target_per_replica is not None:
            return self.reactive_target_per_replica
        return self.capacity_rps_per_replica

    @model_validator(mode="after")
    def _cross_checks(self) -> PredictiveConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        buckets = self.season_s / self.history_resolution_s
        if not math.isfinite(buckets) or buckets > MAX_SEASON_BUCKETS:
            field_error(
                ("season_s",),
                self.season_s,
                f"at most {MAX_SEASON_BUCKETS:,} history buckets of history_resolution_s "
                f"({self.history_resolution_s:g} s) per season: a finite season, a coarser resolution",
            )
        if abs(buckets - round(buckets)) > 1e-9 or round(buckets) < 2:
            field_error(
                ("season_s",),
                self.season_s,
                f"must be a whole multiple (>= 2) of history_resolution_s ({self.history_resolution_s:g} s)",
            )
        if self.lead_time_s + self.history_resolution_s > self.season_s:
            field_error(
                ("lead_time_s",),
                self.lead_time_s,
                f"must be <= season_s - history_resolution_s"
                f" ({self.season_s - self.history_resolution_s:g} s)",
            )
        if (
            not self.seasons
            or any(k < 1 for k in self.seasons)
            or len(set(self.seasons)) != len(self.seasons)
        ):
            field_error(("seasons",), list(self.seasons), "a non-empty list of distinct whole numbers >= 1")
        if self.reactive_metric == "concurrency" and self.reactive_target_per_replica is None:
            field_error(("reactive_target_per_replica",), MISSING_KEY)
        return self

    def build(self) -> PredictivePolicy:
        return PredictivePolicy(self)
