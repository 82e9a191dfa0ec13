"""``kind: sla-planner``: NVIDIA Dynamo's SLA planner (throughput mode), for one replica type.

Sources read: ``github.com/ai-dynamo/dynamo``, ``components/planner/src/dynamo/planner/``:
``utils/planner_core.py`` (``observe_metrics``, ``make_adjustments``,
``_compute_replica_requirements``), ``utils/perf_interpolation.py`` (``PrefillInterpolator``,
``DecodeInterpolator.find_best_throughput_per_gpu``), ``utils/load_predictor.py`` and ``defaults.py``
(``adjustment_interval`` 180 s, ``itl`` 0.05 s, ``min_endpoint`` 1, ``max_gpu_budget`` 8). The
TTFT target (``ttft`` 0.5 s) is not in the rule: Dynamo's profiler meets it when it picks the
prefill configuration the profile describes, and the planner reads TTFT only through ``p`` below.

Dynamo plans **disaggregated** serving (prefill and decode workers). gpuscale deploys one replica
type, so this kind is the planner for **aggregated** serving, and says where it departs.

Every ``adjustment_interval_s`` (the sync period):

1. **Observe** the interval's request rate ``λ`` and the mean input/output lengths ``isl`` =
   prompt-token rate / ``λ`` and ``osl`` = generation-token rate / ``λ`` (Dynamo reads the frontend's
   averages; vLLM's prompt counter also counts recomputed prefill after a preemption, so ``isl``
   reads high under preemption). Each is fed to its own **load predictor**: ``constant`` (Dynamo's
   ``ConstantPredictor``: the next value is the last one) or ``holt`` (the additive Holt-Winters
   forecaster of :mod:`gpuscale.policies.predictive` with a season of one interval, i.e. Holt's
   level-and-trend, standing in for Dynamo's default ARIMA, which gpuscale does not carry).
2. **Correct**: ``p = observed TTFT / expected TTFT(isl)`` and ``d = observed ITL / expected
   ITL(concurrency, isl + osl / 2)``, the expectations read from the profile (below), the
   concurrency being the pods' mean running requests (Dynamo derives the same in-flight count from
   Little's law). gpuscale's latency signals are p50s where Dynamo reads averages.
3. **Size**, with the predicted ``λ'``, ``isl'``, ``osl'``:

   * prefill load ``λ' × isl' × min(1, p)`` tokens/s over the profile's prefill throughput per
     replica at ``isl'`` (TTFT above the profile is read as queueing, which more replicas do not
     shorten linearly, so ``p`` only ever lowers the load: Dynamo's ``min(1, p)``);
   * decode load ``λ' × osl'`` tokens/s over the best decode throughput per replica whose ITL stays
     within ``itl_ms / d`` at context ``isl' + osl' / 2`` (Dynamo's ``find_best_throughput_per_gpu``);
   * **aggregated**: one replica time-shares the two phases, so
     ``replicas = ceil(prefill load / prefill throughput + decode load / decode throughput)``
     (Dynamo computes ``ceil`` of each on its own worker pool);

   then at least ``min_replicas`` (``min_endpoint``) and at most ``max_replicas`` (the GPU budget
   over GPUs per engine).

With no traffic (no request rate, or a latency with no samples) Dynamo skips the adjustment; this
policy holds (``NoData``) -- the predictors still learn from every interval that has a rate.

**The profile** (``profile:``) is what Dynamo's pre-deployment profiling writes, as tables:
``prefill`` rows ``{isl, ttft_ms, throughput_tokens_per_s}`` (one replica, interpolated linearly in
``isl`` and clamped to the profiled range; Dynamo interpolates cubically) and ``decode`` rows
``{context_length, concurrency, itl_ms, throughput_tokens_per_s}``; a lookup uses the rows of the
nearest profiled context length (Dynamo's grid snaps to the nearest cell too) and interpolates
linearly in concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import pairwise
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.config.loading import StrictModel
from gpuscale.policies._config import ConfigTiming, field_error
from gpuscale.policies.base import Aggregation, Decision, Metric, MetricsSnapshot, Reason, SignalSpec
from gpuscale.policies.kinds import KindConfig, register_kind
from gpuscale.policies.predictive import (
    HoltWintersState,
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
)

# --------------------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------------------


class PrefillPoint(StrictModel):
    """One prefill profiling point: one replica at input length ``isl``."""

    isl: float = Field(gt=0, description="Input sequence length, tokens.")
    ttft_ms: float = Field(gt=0, description="Time to first token at this length, ms.")
    throughput_tokens_per_s: float = Field(gt=0, description="Prefill tokens/s one replica sustains.")


class DecodePoint(StrictModel):
    """One decode profiling point: one replica at ``concurrency`` requests of ``context_length``."""

    context_length: float = Field(gt=0, description="Tokens in context (isl + osl / 2 in the planner).")
    concurrency: float = Field(gt=0, description="Requests decoding at once on the replica.")
    itl_ms: float = Field(gt=0, description="Inter-token latency at this point, ms.")
    throughput_tokens_per_s: float = Field(gt=0, description="Output tokens/s of the replica.")


class PlannerProfile(StrictModel):
    """The pre-deployment profile of one replica."""

    prefill: tuple[PrefillPoint, ...] = Field(min_length=1, description="Prefill points, any order.")
    decode: tuple[DecodePoint, ...] = Field(min_length=1, description="Decode points, any order.")


def _lerp(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def prefill_lookup(points: Sequence[PrefillPoint], isl: float) -> tuple[float, float]:
    """(TTFT ms, throughput tokens/s) at ``isl``: linear between profiled lengths, clamped."""
    pts = sorted(points, key=lambda p: p.isl)
    if isl <= pts[0].isl:
        return pts[0].ttft_ms, pts[0].throughput_tokens_per_s
    for a, b in pairwise(pts):
        if isl <= b.isl:
            return (
                _lerp(isl, a.isl, b.isl, a.ttft_ms, b.ttft_ms),
                _lerp(isl, a.isl, b.isl, a.throughput_tokens_per_s, b.throughput_tokens_per_s),
            )
    return pts[-1].ttft_ms, pts[-1].throughput_tokens_per_s


def _decode_curve(points: Sequence[DecodePoint], context_length: float) -> list[DecodePoint]:
    """The rows of the profiled context length nearest ``context_length``, by concurrency."""
    nearest = min({p.context_length for p in points}, key=lambda c: (abs(c - context_length), c))
    return sorted((p for p in points if p.context_length == nearest), key=lambda p: p.concurrency)


def expected_itl_ms(points: Sequence[DecodePoint], concurrency: float, context_length: float) -> float:
    """The profile's ITL at ``concurrency`` (linear, clamped) and the nearest context length."""
    curve = _decode_curve(points, context_length)
    if concurrency <= curve[0].concurrency:
        return curve[0].itl_ms
    for a, b in pairwise(curve):
        if concurrency <= b.concurrency:
            return _lerp(concurrency, a.concurrency, b.concurrency, a.itl_ms, b.itl_ms)
    return curve[-1].itl_ms


def best_decode_throughput(points: Sequence[DecodePoint], itl_ms: float, context_length: float) -> float:
    """The highest throughput whose ITL is within ``itl_ms``: scanning from the busiest point down,
    the first within the target (interpolated up to where the curve crosses it); the lightest
    point's throughput when none is (Dynamo's fallback)."""
    curve = _decode_curve(points, context_length)
    for i in range(len(curve) - 1, -1, -1):
        p = curve[i]
        if p.itl_ms <= itl_ms:
            if i + 1 < len(curve) and curve[i + 1].itl_ms > p.itl_ms:
                q = curve[i + 1]
                return _lerp(itl_ms, p.itl_ms, q.itl_ms, p.throughput_tokens_per_s, q.throughput_tokens_per_s)
            return p.throughput_tokens_per_s
    return curve[0].throughput_tokens_per_s


# --------------------------------------------------------------------------------------------------
# Load predictors
# --------------------------------------------------------------------------------------------------

Predictor = Literal["constant", "holt"]


@dataclass(frozen=True)
class SeriesState:
    """One predicted series: the last value and (``holt``) Holt's level and trend."""

    last: float | None = None
    holt: HoltWintersState = field(default_factory=HoltWintersState)


def observe(s: SeriesState, value: float, predictor: Predictor, alpha: float, beta: float) -> SeriesState:
    if predictor == "constant":
        return SeriesState(value, s.holt)
    if not s.holt.ready:
        return SeriesState(value, holt_winters_init([value], 0))
    assert s.holt.last_bucket is not None
    return SeriesState(value, holt_winters_update(s.holt, [value], alpha, beta, 0.0))


def predict(s: SeriesState, predictor: Predictor) -> float | None:
    if s.last is None:
        return None
    if predictor == "constant" or not s.holt.ready:
        return s.last
    assert s.holt.last_bucket is not None
    return max(0.0, holt_winters_forecast(s.holt, s.holt.last_bucket + 1, 1)[0])


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaPlannerState:
    rate: SeriesState
    isl: SeriesState
    osl: SeriesState
    tail: PipelineState


@dataclass(frozen=True)
class SlaPlannerPolicy(ConfigTiming, TailedPolicy[SlaPlannerState]):
    """Dynamo's SLA planner for aggregated serving (see the module docstring)."""

    config: SlaPlannerConfig
    require_all_signals = True

    @property
    def name(self) -> str:
        return self.config.name or "sla-planner"

    def _spec(self, metric: Metric, aggregation: Aggregation = Aggregation.TOTAL) -> SignalSpec:
        return SignalSpec(metric, self.config.adjustment_interval_s, aggregation)

    @property
    def rate(self) -> SignalSpec:
        return self._spec(Metric.REQUEST_RATE)

    @property
    def prompt(self) -> SignalSpec:
        return self._spec(Metric.PROMPT_TOKENS_RATE)

    @property
    def generation(self) -> SignalSpec:
        return self._spec(Metric.GENERATION_TOKENS_RATE)

    @property
    def ttft(self) -> SignalSpec:
        return self._spec(Metric.TTFT_P50_MS)

    @property
    def itl(self) -> SignalSpec:
        return self._spec(Metric.ITL_P50_MS)

    @property
    def running(self) -> SignalSpec:
        return self._spec(Metric.REQUESTS_RUNNING, Aggregation.POD_MEAN)

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return (self.rate, self.prompt, self.generation, self.ttft, self.itl, self.running)

    @property
    def signal_keys(self) -> dict[SignalSpec, str]:
        return dict.fromkeys(self.signals, "adjustment_interval_s")

    @property
    def sync_period_s(self) -> float:
        return self.config.adjustment_interval_s

    @cached_property
    def tail(self) -> Pipeline:
        return Pipeline((Bounds(self.config.min_replicas, self.config.max_replicas),))

    def initial_state(self) -> SlaPlannerState:
        return SlaPlannerState(SeriesState(), SeriesState(), SeriesState(), self.tail.initial_state())

    def before(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: SlaPlannerState
    ) -> tuple[Decision | None, SlaPlannerState]:
        """Feed the predictors with every interval that has a request rate (and token rates)."""
        got = check.values
        rate, prompt, gen = got.get(self.rate), got.get(self.prompt), got.get(self.generation)
        if rate is None or prompt is None or gen is None or rate <= 0:
            return None, state
        cfg = self.config
        a, b, p = cfg.alpha, cfg.beta, cfg.load_predictor
        return None, replace(
            state,
            rate=observe(state.rate, rate, p, a, b),
            isl=observe(state.isl, prompt / rate, p, a, b),
            osl=observe(state.osl, gen / rate, p, a, b),
        )

    def recommend(
        self, snapshot: MetricsSnapshot, check: SignalCheck, state: SlaPlannerState
    ) -> tuple[Recommendation | Decision, SlaPlannerState]:
        cfg = self.config
        got = check.values
        rate = got[self.rate]
        if rate <= 0:
            return Decision.hold(Reason.NO_DATA, "no requests in the interval: adjustment skipped"), state
        isl, osl = got[self.prompt] / rate, got[self.generation] / rate
        prof = cfg.profile
        # 2. correction factors
        expect_ttft, _ = prefill_lookup(prof.prefill, isl)
        p_corr = got[self.ttft] / expect_ttft
        expect_itl = expected_itl_ms(prof.decode, got[self.running], isl + osl / 2)
        d_corr = got[self.itl] / expect_itl
        # 3. size from the predictions
        rate_n, isl_n, osl_n = (predict(s, cfg.load_predictor) for s in (state.rate, state.isl, state.osl))
        assert rate_n is not None and isl_n is not None and osl_n is not None  # fed in before()
        prefill_load = rate_n * isl_n * min(1.0, p_corr)
        _, prefill_cap = prefill_lookup(prof.prefill, isl_n)
        itl_target = cfg.itl_ms / d_corr if d_corr > 0 else cfg.itl_ms
        decode_cap = best_decode_throughput(prof.decode, itl_target, isl_n + osl_n / 2)
        decode_load = rate_n * osl_n
        need = prefill_load / prefill_cap + decode_load / decode_cap
        wanted = max(1, math.ceil(need - 1e-9))
        current = snapshot.current_replicas
        reason = (
            Reason.SCALE_UP
            if wanted > current
            else Reason.SCALE_DOWN
            if wanted < current
            else Reason.PREDICTED
        )
        message = (
            f"predicted {rate_n:.3g} req/s, isl {isl_n:.0f}, osl {osl_n:.0f}; correction TTFT {p_corr:.2f}, "
            f"ITL {d_corr:.2f}; prefill {prefill_load:.0f} / {prefill_cap:.0f} tok/s + decode "
            f"{decode_load:.0f} / {decode_cap:.0f} tok/s at ITL {itl_target:.1f} ms = {need:.2f} -> {wanted}"
        )
        return Recommendation(wanted, reason, message), state


@register_kind
class SlaPlannerConfig(KindConfig):
    """NVIDIA Dynamo's SLA planner (throughput mode), aggregated: size from predicted tokens/s."""

    kind: Literal["sla-planner"] = "sla-planner"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    itl_ms: float = Field(default=50.0, gt=0, description="ITL target, ms (Dynamo --itl 0.05 s).")
    profile: PlannerProfile = Field(description="The replica's profiling tables; required.")
    load_predictor: Predictor = Field(
        default="constant",
        description="'constant' (Dynamo's ConstantPredictor) or 'holt' (level and trend). Default constant.",
    )
    alpha: float = Field(default=0.5, gt=0, le=1, description="Holt level smoothing. Default 0.5.")
    beta: float = Field(default=0.3, ge=0, le=1, description="Holt trend smoothing. Default 0.3.")
    adjustment_interval_s: float = Field(
        default=180.0, gt=0, description="Adjustment interval and metric window, s (Dynamo: 180)."
    )
    min_replicas: int = Field(default=1, ge=1, description="min_endpoint. Default 1.")
    max_replicas: int = Field(
        default=8, ge=1, description="GPU budget / GPUs per replica (Dynamo max_gpu_budget 8). Default 8."
    )
    max_signal_age_s: float | None = Field(
        default=None, gt=0, description="A signal older than this is stale (hold). Default 3 intervals."
    )

    @property
    def sync_period_s(self) -> float:
        return self.adjustment_interval_s

    @model_validator(mode="after")
    def _cross_checks(self) -> SlaPlannerConfig:
        if self.min_replicas > self.max_replicas:
            field_error(
                ("min_replicas",), self.min_replicas, f"must be <= max_replicas ({self.max_replicas})"
            )
        return self

    def build(self) -> SlaPlannerPolicy:
        return SlaPlannerPolicy(self)
