"""Where requests come from: open-loop arrival processes, closed-loop user schedules and trace replay.

The engine asks an :class:`ArrivalSource` for the arrivals in consecutive intervals ``[t0, t1)`` whose
boundaries depend on the policy being simulated (control ticks, pods becoming ready). The arrivals of a
run must not depend on those boundaries, so every source generates in fixed pieces that are a function
of the seed and the piece's index only, and slices them:

* rate-driven processes (Poisson, gamma, MMPP) work in fixed 60-s blocks; block ``i`` draws from the
  stream ``workload/block/{i}`` (gamma and MMPP carry their state from block to block, which is why the
  blocks are always generated in order, from block 0);
* trace replay works in blocks of 16,384 trace rows, each with its own stream for the rate multiplier.

Only the current piece is kept, so memory does not grow with the run, and all per-arrival work is
vectorised numpy.

Time-varying rates are exact: a rate ``λ(t)`` with cumulative ``Λ(t) = ∫₀ᵗ λ`` turns a unit-rate process
in *operational time* into the target process by ``t = Λ⁻¹(u)`` (the time-change theorem). ``Λ⁻¹`` is
closed-form for piecewise-linear rates and solved to ~1e-12 of a period (safeguarded Newton) for
sinusoids. A Poisson block ``[a, b)`` then needs only ``N ~ Poisson(Λ(b) − Λ(a))`` sorted uniforms in
operational time; a gamma renewal process draws gamma gaps of mean 1 in operational time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol, assert_never

import numpy as np
import numpy.typing as npt

from gpuscale._core.errors import MISSING, ConfigError
from gpuscale._core.rng import generator
from gpuscale.config.loading import read_text
from gpuscale.config.workload import (
    BUILTIN_TRACES,
    ClosedLoopWorkload,
    GammaWorkload,
    MmppWorkload,
    PoissonWorkload,
    PrefixConfig,
    RateConstant,
    RateDiurnal,
    RatePiecewiseLinear,
    RateRamp,
    RateRandomLevels,
    RateShape,
    RateSinusoid,
    RateSpike,
    RateStep,
    TokenDist,
    TraceWorkload,
    UsersConstant,
    UsersDiurnal,
    UsersPiecewiseLinear,
    UsersRamp,
    UsersRandomLevels,
    UsersShape,
    UsersSinusoid,
    UsersSpike,
    UsersStep,
    WorkloadConfig,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BLOCK_S = 60.0
"""Length of the fixed generation blocks of rate-driven processes (seconds)."""

TRACE_BLOCK_ROWS = 16_384
"""Trace rows per replay block (each block has its own random stream for the rate multiplier)."""

TRACE_ORDER_TOLERANCE_S = 1e-3
"""Timestamps may step back by up to this much (merged logs from several front ends); they are then
sorted. A larger step back is an error."""

RATE_WINDOW_S = 60.0
"""Width of the centred window over which a trace's expected rate is counted."""

MAX_TRACE_TOKENS = 2**31 - 1
"""Most tokens a trace row may give a request (no model's context comes near it; int64 arithmetic on
the counts stays exact)."""
_MAX_MATERIALISED = 5_000_000  # levels/steps a shape may materialise over the run (memory guard)

_EMPTY: FloatArray = np.empty(0, dtype=np.float64)
_EMPTY.flags.writeable = False


# =========================================================================================================
# Rate profiles: λ(t), Λ(t) and Λ⁻¹(u)
# =========================================================================================================


class _Profile(Protocol):
    def value(self, t: FloatArray) -> FloatArray: ...

    def cumulative(self, t: FloatArray) -> FloatArray: ...

    def inverse_cumulative(self, u: FloatArray) -> FloatArray: ...


class _Piecewise:
    """A piecewise-linear function of time with jumps allowed, flat after its last segment start.

    Segment ``i`` covers ``[starts[i], starts[i+1])`` with value ``values[i] + slopes[i]·(t − starts[i])``;
    the last segment has slope 0 and lasts forever. Every shape except the continuous sinusoid is one.
    """

    def __init__(self, starts: FloatArray, values: FloatArray, slopes: FloatArray) -> None:
        self.starts = starts
        self.values = values
        self.slopes = slopes
        lengths = np.diff(starts)
        areas = values[:-1] * lengths + 0.5 * slopes[:-1] * lengths * lengths
        self.cum = np.concatenate(([0.0], np.cumsum(areas)))
        self.ends = np.append(starts[1:], np.inf)
        self._constant = len(starts) == 1 and starts[0] == 0.0

    @classmethod
    def constant(cls, value: float) -> _Piecewise:
        return cls(np.zeros(1), np.array([float(value)]), np.zeros(1))

    @classmethod
    def from_levels(cls, times: FloatArray, values: FloatArray) -> _Piecewise:
        """Levels that each hold from their time (strictly increasing, first 0) to the next."""
        return cls(times.astype(np.float64), values.astype(np.float64), np.zeros(len(times)))

    @classmethod
    def from_points(cls, times: FloatArray, values: FloatArray) -> _Piecewise:
        """Straight lines between points (non-decreasing times; equal times make a jump), flat outside."""
        t = np.asarray(times, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        if t[0] > 0:
            t = np.concatenate(([0.0], t))
            v = np.concatenate(([v[0]], v))
        dt = np.diff(t)
        real = dt > 0  # zero-length pairs are jumps: the later point starts the next segment
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(real, np.diff(v) / np.where(real, dt, 1.0), 0.0)
        starts = np.append(t[:-1][real], t[-1])
        vals = np.append(v[:-1][real], v[-1])
        slopes = np.append(slope[real], 0.0)
        return cls(starts, vals, slopes)

    def _segment(self, t: FloatArray) -> IntArray:
        idx = np.searchsorted(self.starts, t, side="right") - 1
        return np.maximum(idx, 0).astype(np.int64)

    def value(self, t: FloatArray) -> FloatArray:
        i = self._segment(t)
        dt = np.maximum(t - self.starts[i], 0.0)
        return np.asarray(self.values[i] + self.slopes[i] * dt, dtype=np.float64)

    def cumulative(self, t: FloatArray) -> FloatArray:
        i = self._segment(t)
        dt = np.maximum(t - self.starts[i], 0.0)
        area = self.cum[i] + self.values[i] * dt + 0.5 * self.slopes[i] * dt * dt
        return np.asarray(area, dtype=np.float64)

    def inverse_cumulative(self, u: FloatArray) -> FloatArray:
        if self._constant:
            rate = float(self.values[0])
            return u / rate if rate > 0 else np.full(u.shape, np.inf)
        # side="right" skips segments of zero area (rate 0), so the root found is the first time Λ = u.
        i = np.maximum(np.searchsorted(self.cum, u, side="right") - 1, 0)
        r = u - self.cum[i]
        v = self.values[i]
        k = self.slopes[i]
        # Solve v·x + k·x²/2 = r for the smallest x ≥ 0 in the form 2r / (v + √(v² + 2kr)), which has no
        # cancellation for either sign of k and gives r/v when k = 0.
        denom = v + np.sqrt(np.maximum(v * v + 2.0 * k * r, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(denom > 0, 2.0 * r / np.where(denom > 0, denom, 1.0), np.where(r > 0, np.inf, 0.0))
        return np.asarray(np.minimum(self.starts[i] + x, self.ends[i]), dtype=np.float64)


class _Sinusoid:
    """``λ(t) = m + A·sin(ω(t − φ))`` with ``0 < A ≤ m``; Λ is closed-form, Λ⁻¹ is solved numerically.

    Λ gains exactly ``m·P`` per period, so ``u`` reduces to one period; a table of Λ over that period
    brackets each root to 1/16384 of a period and a safeguarded Newton iteration (falling back to
    bisection where λ ≈ 0 at the trough) finishes it.
    """

    _GRID = 16_385

    def __init__(self, mean: float, amplitude: float, period_s: float, phase_s: float) -> None:
        self.mean = mean
        self.amplitude = amplitude
        self.period = period_s
        self.phase = phase_s
        self.omega = 2.0 * math.pi / period_s
        self._c0 = math.cos(-self.omega * phase_s)
        self._grid = np.linspace(0.0, period_s, self._GRID)
        self._table = self.cumulative(self._grid)
        self._tol = 1e-12 * period_s

    def value(self, t: FloatArray) -> FloatArray:
        wave = self.amplitude * np.sin(self.omega * (t - self.phase))
        return np.asarray(self.mean + wave, dtype=np.float64)

    def cumulative(self, t: FloatArray) -> FloatArray:
        wave = (self.amplitude / self.omega) * (self._c0 - np.cos(self.omega * (t - self.phase)))
        return np.asarray(self.mean * t + wave, dtype=np.float64)

    def inverse_cumulative(self, u: FloatArray) -> FloatArray:
        per_cycle = self.mean * self.period
        cycles = np.floor(u / per_cycle)
        r = u - cycles * per_cycle
        # One Newton step from the table's linear interpolation. The start is within ~2e-9 of a period;
        # where the rate is at least a tenth of its mean the error after the step is below
        # (|λ'|/2λ)·step² ≤ 5ω·(1e-8·P)² ≈ 3e-15·P, i.e. at rounding level. The rest (near a deep trough,
        # where Λ is flat) goes through the bracketed solver.
        x = np.interp(r, self._table, self._grid)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = self.value(x)
            step = (self.cumulative(x) - r) / d
        x1 = x - step
        ok = (d > 0.1 * self.mean) & (np.abs(step) <= 1e-8 * self.period)
        if not ok.all():
            x1[~ok] = self._bracketed(r[~ok])
        return np.asarray(cycles * self.period + x1, dtype=np.float64)

    def _bracketed(self, r: FloatArray) -> FloatArray:
        """Newton kept inside a shrinking bracket, bisecting where it would leave it (near λ = 0)."""
        k = np.clip(np.searchsorted(self._table, r, side="right") - 1, 0, self._GRID - 2)
        lo = self._grid[k]
        hi = self._grid[k + 1]
        x = np.interp(r, self._table, self._grid)
        out = np.empty_like(x)
        active = np.arange(len(x))
        for _ in range(200):
            if len(active) == 0:
                break
            f = self.cumulative(x) - r
            exact = f == 0.0
            lo = np.where(f < 0, x, lo)
            hi = np.where(f > 0, x, hi)
            with np.errstate(divide="ignore", invalid="ignore"):
                xn = x - f / self.value(x)
            bad = ~((xn > lo) & (xn < hi))  # also catches nan/inf from a zero rate
            xn = np.where(bad, 0.5 * (lo + hi), xn)
            done = exact | (np.abs(xn - x) <= self._tol) | (hi - lo <= self._tol)
            out[active[done]] = np.where(exact[done], x[done], xn[done])
            keep = ~done
            active, x, lo, hi, r = active[keep], xn[keep], lo[keep], hi[keep], r[keep]
        if len(active):  # pragma: no cover - bisection alone converges well within 200 halvings
            out[active] = x
        return out


def _scalar(profile: _Profile, t: float) -> float:
    return float(profile.value(np.array([t], dtype=np.float64))[0])


# =========================================================================================================
# Shapes → profiles (shared by rates and user counts)
# =========================================================================================================


@dataclass(frozen=True)
class _Context:
    seed: int
    horizon_s: float
    source: str
    base_dir: Path | None


def _materialised_count(step_s: float, ctx: _Context, key: str, value: float) -> int:
    """Levels of length ``step_s`` covering the run (plus one), refused beyond a memory guard."""
    n = math.floor(ctx.horizon_s / step_s) + 2
    if n > _MAX_MATERIALISED:
        raise ConfigError(
            ctx.source,
            f"workload.{key}",
            value,
            f"at most {_MAX_MATERIALISED:,} levels over the run ({ctx.horizon_s:g} s); use longer steps",
        )
    return n


def _ramp(a: float, b: float, start: float, end: float, steps: int | None) -> _Piecewise:
    if steps is None:
        return _Piecewise.from_points(np.array([start, end]), np.array([a, b]))
    # N equal levels over [start, end): the first is `a`, the last `b` (KIS-S: 1 → 100 in 20 steps).
    k = np.arange(steps, dtype=np.float64)
    times = start + k * (end - start) / steps
    values = a + (b - a) * k / (steps - 1)
    if start > 0:
        times = np.concatenate(([0.0], times))
        values = np.concatenate(([a], values))
    return _Piecewise.from_levels(times, values)


def _sinusoid(
    mean: float, amp: float, period: float, phase: float, steps: int | None, ctx: _Context, key: str
) -> _Profile:
    if amp == 0 or mean == 0:
        return _Piecewise.constant(mean)
    if steps is None:
        return _Sinusoid(mean, amp, period, phase)
    d = period / steps
    n = _materialised_count(d, ctx, key, steps)
    times = np.arange(n, dtype=np.float64) * d
    values = mean + amp * np.sin(2.0 * math.pi * (times - phase) / period)
    return _Piecewise.from_levels(times, np.maximum(values, 0.0))


def _diurnal(trough: float, peak: float, peak_hour: float, start_hour: float, period: float) -> _Profile:
    mean = 0.5 * (peak + trough)
    amp = 0.5 * (peak - trough)
    if amp == 0 or mean == 0:
        return _Piecewise.constant(mean)
    t_peak = ((peak_hour - start_hour) % 24.0) / 24.0 * period
    # sin(ω(t − φ)) peaks where t − φ = P/4.
    return _Sinusoid(mean, amp, period, t_peak - period / 4.0)


def _spike(base: float, peak: float, start: float, rise: float, hold: float, fall: float) -> _Piecewise:
    t = np.array([0.0, start, start + rise, start + rise + hold, start + rise + hold + fall])
    v = np.array([base, base, peak, peak, base])
    return _Piecewise.from_points(t, v)


def _points(
    points: Sequence[tuple[float, float]] | None, path: str | None, column: str, ctx: _Context
) -> _Piecewise:
    if points is not None:
        arr = np.array(points, dtype=np.float64)
        return _Piecewise.from_points(arr[:, 0], arr[:, 1])
    assert path is not None  # the config guarantees exactly one of points and path
    file = _resolve(path, ctx.base_dir)
    times, values = _read_points_csv(file, column)
    return _Piecewise.from_points(times, values)


def _random_levels(
    low: float, high: float, interval: float, integer: bool, ctx: _Context, key: str
) -> _Piecewise:
    n = _materialised_count(interval, ctx, key, interval)
    rng = generator(ctx.seed, "workload/random-levels")
    values = (
        rng.integers(int(low), int(high) + 1, size=n).astype(np.float64)
        if integer
        else rng.uniform(low, high, size=n)
    )
    return _Piecewise.from_levels(np.arange(n, dtype=np.float64) * interval, values)


def _rate_profile(shape: RateShape, ctx: _Context) -> _Profile:
    match shape:
        case RateConstant(rate_rps=v):
            return _Piecewise.constant(v)
        case RateStep(levels=levels):
            arr = np.array(levels, dtype=np.float64)
            return _Piecewise.from_levels(arr[:, 0], arr[:, 1])
        case RateRamp(from_rps=a, to_rps=b, start_s=s, end_s=e, steps=n):
            return _ramp(a, b, s, e, n)
        case RateSinusoid(mean_rps=m, amplitude_rps=amp, period_s=p, phase_s=ph, steps_per_period=n):
            return _sinusoid(m, amp, p, ph, n, ctx, "rate.steps_per_period")
        case RateDiurnal(trough_rps=lo, peak_rps=hi, peak_hour=ph, start_hour=sh, period_s=p):
            return _diurnal(lo, hi, ph, sh, p)
        case RateSpike(base_rps=b, peak_rps=pk, start_s=s, rise_s=r, hold_s=h, fall_s=f):
            return _spike(b, pk, s, r, h, f)
        case RatePiecewiseLinear(points=pts, path=path):
            return _points(pts, path, "rps", ctx)
        case RateRandomLevels(min_rps=lo, max_rps=hi, interval_s=dt):
            return _random_levels(lo, hi, dt, False, ctx, "rate.interval_s")
        case _:
            assert_never(shape)


def _users_profile(shape: UsersShape, ctx: _Context) -> _Profile:
    match shape:
        case UsersConstant(users=v):
            return _Piecewise.constant(v)
        case UsersStep(levels=levels):
            arr = np.array(levels, dtype=np.float64)
            return _Piecewise.from_levels(arr[:, 0], arr[:, 1])
        case UsersRamp(from_users=a, to_users=b, start_s=s, end_s=e, steps=n):
            return _ramp(a, b, s, e, n)
        case UsersSinusoid(mean_users=m, amplitude_users=amp, period_s=p, phase_s=ph, steps_per_period=n):
            return _sinusoid(m, amp, p, ph, n, ctx, "users.steps_per_period")
        case UsersDiurnal(trough_users=lo, peak_users=hi, peak_hour=ph, start_hour=sh, period_s=p):
            return _diurnal(lo, hi, ph, sh, p)
        case UsersSpike(base_users=b, peak_users=pk, start_s=s, rise_s=r, hold_s=h, fall_s=f):
            return _spike(b, pk, s, r, h, f)
        case UsersPiecewiseLinear(points=pts, path=path):
            return _points(pts, path, "users", ctx)
        case UsersRandomLevels(min_users=lo, max_users=hi, interval_s=dt):
            return _random_levels(lo, hi, dt, True, ctx, "users.interval_s")
        case _:
            assert_never(shape)


# =========================================================================================================
# Closed loop: user schedules
# =========================================================================================================


def _half_crossings(lo: float, hi: float) -> FloatArray:
    """The levels k + ½ strictly between ``lo`` and ``hi``: where a rounded count changes."""
    halves = np.arange(math.ceil(lo - 0.5), math.floor(hi - 0.5) + 1, dtype=np.float64) + 0.5
    return halves[(halves > lo) & (halves < hi)]


def _round_users(v: FloatArray) -> IntArray:
    # Halves round up (2.5 users → 3), so a count changes exactly where the curve crosses k + ½; the tiny
    # epsilon keeps float noise (55 + 45·sin(π/6) = 77.49999999999999) from turning a half down.
    # Clipped first: a count from a CSV file past 2**63 would otherwise wrap to a negative one.
    return np.floor(np.minimum(np.asarray(v), 2.0**62) + 0.5 + 1e-9).astype(np.int64)


@dataclass(frozen=True, eq=False)
class UserSchedule:
    """How many closed-loop users are active over time: a step function of whole users.

    The count is ``counts[i]`` on ``[times_s[i], times_s[i+1])`` (``times_s[0] == 0``; the last count
    holds forever). Consecutive counts always differ, so every ``times_s[i > 0]`` is a real change.
    Shapes with a continuous curve change at each half-user crossing (the rounding is "halves up").
    Periodic and random shapes are laid out over the run's duration and hold their last count after it.
    """

    times_s: FloatArray
    counts: IntArray

    def users_at(self, t: float) -> int:
        """Users active at time ``t`` (the count at a change instant is the new one)."""
        i = int(np.searchsorted(self.times_s, t, side="right")) - 1
        return int(self.counts[max(i, 0)])

    def change_times(self, t0: float, t1: float) -> list[float]:
        """The instants in ``[t0, t1)`` at which the count changes."""
        lo = int(np.searchsorted(self.times_s, t0, side="left"))
        hi = int(np.searchsorted(self.times_s, t1, side="left"))
        lo = max(lo, 1)  # time 0 is where the schedule starts, not a change
        return [float(x) for x in self.times_s[lo:hi]]

    @property
    def max_users(self) -> int:
        return int(self.counts.max())

    @classmethod
    def _from_candidates(
        cls, candidates: FloatArray, value: Callable[[FloatArray], FloatArray], tail: FloatArray
    ) -> UserSchedule:
        """Count on each interval between candidate change times, then keep only real changes."""
        t = np.unique(np.concatenate(([0.0], candidates[candidates >= 0])))
        mids = np.append(0.5 * (t[:-1] + t[1:]), tail)
        counts = _round_users(value(mids))
        keep = np.concatenate(([True], counts[1:] != counts[:-1]))
        return cls(times_s=t[keep], counts=counts[keep])

    @classmethod
    def _from_profile(cls, profile: _Profile, ctx: _Context) -> UserSchedule:
        if isinstance(profile, _Sinusoid):
            return cls._from_sinusoid(profile, ctx.horizon_s, ctx)
        assert isinstance(profile, _Piecewise)
        cands = [profile.starts]
        for i in np.flatnonzero(profile.slopes):  # the last segment is flat, so each has an end
            s, e = float(profile.starts[i]), float(profile.ends[i])
            v, k = float(profile.values[i]), float(profile.slopes[i])
            w = v + k * (e - s)
            cands.append(s + (_half_crossings(min(v, w), max(v, w)) - v) / k)
        last = float(profile.starts[-1])
        return cls._from_candidates(np.concatenate(cands), profile.value, np.array([last + 1.0]))

    @classmethod
    def _from_sinusoid(cls, p: _Sinusoid, horizon_s: float, ctx: _Context) -> UserSchedule:
        halves = _half_crossings(p.mean - p.amplitude, p.mean + p.amplitude)
        theta = np.arcsin((halves - p.mean) / p.amplitude)
        # Each half-user level is crossed twice per period: at phase θ and at π − θ.
        base = np.concatenate((theta, math.pi - theta)) / p.omega + p.phase
        first, last = math.floor(-p.phase / p.period) - 1, math.ceil((horizon_s - p.phase) / p.period) + 1
        cycles = np.arange(first, last + 1)
        if len(cycles) * len(base) > _MAX_MATERIALISED:
            raise ConfigError(
                ctx.source,
                "workload.users.period_s",
                p.period,
                f"at most {_MAX_MATERIALISED:,} user-count changes over the run; use a longer "
                "period or fewer users",
            )
        cands = (base[None, :] + p.period * cycles[:, None]).ravel()
        cands = cands[(cands >= 0) & (cands < horizon_s)]
        # After the run's horizon the schedule holds the count it had just before it.
        tail = 0.5 * (max(float(cands.max()) if len(cands) else 0.0, 0.0) + horizon_s)
        return cls._from_candidates(np.append(cands, horizon_s), p.value, np.array([tail]))


@dataclass(frozen=True, eq=False)
class ClosedLoop:
    """Closed-loop users for the kernel to run (see ``docs/simulator.md``, "Closed-loop users")."""

    schedule: UserSchedule
    think_min_s: float
    think_max_s: float

    @property
    def mean_think_s(self) -> float:
        return 0.5 * (self.think_min_s + self.think_max_s)


# =========================================================================================================
# Open loop: arrival sources and the processes behind them
# =========================================================================================================


class _Process(Protocol):
    def next_piece(self) -> tuple[FloatArray, float]:
        """The next sorted arrivals, and the time before which every arrival has now been produced."""
        ...


class ArrivalSource:
    """Sorted open-loop arrival times, handed out interval by interval.

    ``arrivals(t0, t1)`` returns the arrivals in ``[t0, t1)`` as a read-only float64 array. Intervals
    must move forward (``t0`` ≥ the previous ``t1``; a skipped gap's arrivals are discarded). Because
    arrivals are generated in fixed pieces that depend only on the seed and the piece index, the
    arrivals over a run are the same for any way of cutting it into intervals. A source is single-use:
    build a new workload for each run.
    """

    def __init__(self, process: _Process) -> None:
        self._process = process
        self._buf: FloatArray = _EMPTY
        self._complete_until = -math.inf
        self._last_t1 = -math.inf

    def arrivals(self, t0: float, t1: float) -> FloatArray:
        if not (math.isfinite(t0) and math.isfinite(t1)) or t1 < t0:
            raise ValueError(f"arrivals({t0}, {t1}): need finite t0 ≤ t1")
        if t0 < self._last_t1:
            raise ValueError(
                f"arrivals({t0}, {t1}): intervals must move forward "
                f"(the previous one ended at {self._last_t1})"
            )
        self._last_t1 = t1
        if self._complete_until < t1:
            pieces = [self._buf] if len(self._buf) else []
            while self._complete_until < t1:
                piece, self._complete_until = self._process.next_piece()
                if len(piece):
                    pieces.append(piece)
            if len(pieces) > 1:  # one concatenation per call, however many blocks it spans
                joined = np.concatenate(pieces)
                joined.flags.writeable = False
                self._buf = joined
            elif pieces:
                self._buf = pieces[0]
        buf = self._buf
        lo = int(np.searchsorted(buf, t0, side="left")) if len(buf) and buf[0] < t0 else 0
        hi = int(np.searchsorted(buf, t1, side="left"))
        self._buf = buf[hi:]
        return buf[lo:hi]


def _order_statistics(rng: np.random.Generator, n: int) -> FloatArray:
    """``n`` sorted uniforms on (0, 1) in O(n): normalised partial sums of n + 1 exponentials."""
    c = np.cumsum(rng.standard_exponential(n + 1))
    return np.asarray(c[:n] / c[n], dtype=np.float64)


def _clip_block(t: FloatArray, a: float, b: float) -> FloatArray:
    # Λ⁻¹ of an operational time inside the block lands inside it up to rounding; keep it there so the
    # block's arrivals never spill into a neighbour.
    return np.clip(t, a, math.nextafter(b, -math.inf))


class _PoissonBlocks:
    """Non-homogeneous Poisson process by time change; blocks are independent of each other."""

    def __init__(self, profile: _Profile, seed: int) -> None:
        self._profile = profile
        self._seed = seed
        self._i = 0

    def next_piece(self) -> tuple[FloatArray, float]:
        i = self._i
        self._i += 1
        a, b = i * BLOCK_S, (i + 1) * BLOCK_S
        la, lb = self._profile.cumulative(np.array([a, b]))
        if not lb > la:
            return _EMPTY, b
        rng = generator(self._seed, f"workload/block/{i}")
        n = int(rng.poisson(lb - la))
        if n == 0:
            return _EMPTY, b
        u = la + (lb - la) * _order_statistics(rng, n)
        return _clip_block(self._profile.inverse_cumulative(u), a, b), b


class _GammaBlocks:
    """Stationary gamma renewal process with mean-1 gaps in operational time, mapped by Λ⁻¹.

    Shape ``k = 1/cv²`` and scale ``cv²`` give gaps of mean 1 and the requested cv. The first arrival is
    drawn from the equilibrium (forward-recurrence) law ``U·Gamma(k + 1, cv²)``, so the process looks
    the same at t = 0 as later on. The pending next arrival is carried from block to block.
    """

    def __init__(self, profile: _Profile, cv: float, seed: int) -> None:
        self._profile = profile
        self._cv = cv
        self._k = 1.0 / (cv * cv)
        self._scale = cv * cv
        self._seed = seed
        self._i = 0
        start = generator(seed, "workload/gamma/start")
        self._next_u = float(start.random() * start.gamma(self._k + 1.0, self._scale))

    def next_piece(self) -> tuple[FloatArray, float]:
        i = self._i
        self._i += 1
        a, b = i * BLOCK_S, (i + 1) * BLOCK_S
        lb = float(self._profile.cumulative(np.array([b]))[0])
        if self._next_u >= lb:
            return _EMPTY, b
        rng = generator(self._seed, f"workload/block/{i}")
        parts = [np.array([self._next_u])]
        last = self._next_u
        while last < lb:
            # Enough gaps for the block with high probability (the count's sd is about cv·√expected);
            # the loop tops up in the rare case it is not.
            expected = lb - last
            m = int(expected + 6.0 * max(self._cv, 1.0) * math.sqrt(expected) + 16)
            sums = last + np.cumsum(rng.gamma(self._k, self._scale, size=m))
            parts.append(sums)
            last = float(sums[-1])
        u = np.concatenate(parts)
        cut = int(np.searchsorted(u, lb, side="left"))
        self._next_u = float(u[cut])
        return _clip_block(self._profile.inverse_cumulative(u[:cut]), a, b), b


class _MmppBlocks:
    """Markov-modulated Poisson process; the chain's state and next switch time carry across blocks."""

    def __init__(
        self,
        rates: FloatArray,
        exit_rates: FloatArray,
        jump_cdf: FloatArray,
        stationary: FloatArray,
        seed: int,
    ) -> None:
        self._rates = rates
        self._mean_sojourn = 1.0 / exit_rates
        self._jump_cdf = jump_cdf
        self._seed = seed
        self._i = 0
        start = generator(seed, "workload/mmpp/start")
        self._state = int(np.searchsorted(np.cumsum(stationary), start.random(), side="right"))
        self._state = min(self._state, len(rates) - 1)
        self._switch_at = float(start.exponential(self._mean_sojourn[self._state]))

    def next_piece(self) -> tuple[FloatArray, float]:
        i = self._i
        self._i += 1
        a, b = i * BLOCK_S, (i + 1) * BLOCK_S
        rng = generator(self._seed, f"workload/block/{i}")
        starts = [a]
        rates = [float(self._rates[self._state])]
        # One Python step per state switch (not per arrival); draws come in batches.
        uni = rng.random(64)
        exps = rng.standard_exponential(64)
        j = 0
        while self._switch_at < b:
            if j == len(uni):
                uni = rng.random(64)
                exps = rng.standard_exponential(64)
                j = 0
            row = self._jump_cdf[self._state]
            self._state = min(int(np.searchsorted(row, uni[j], side="right")), len(row) - 1)
            starts.append(self._switch_at)
            rates.append(float(self._rates[self._state]))
            self._switch_at += float(exps[j] * self._mean_sojourn[self._state])
            j += 1
        seg = _Piecewise(np.array(starts), np.array(rates), np.zeros(len(starts)))
        total = float(seg.cumulative(np.array([b]))[0])  # measured from the block start a
        if not total > 0:
            return _EMPTY, b
        n = int(rng.poisson(total))
        if n == 0:
            return _EMPTY, b
        u = total * _order_statistics(rng, n)
        return _clip_block(seg.inverse_cumulative(u), a, b), b


def _mmpp_process(cfg: MmppWorkload) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(rates, exit rates, cumulative jump probabilities per row, stationary distribution)."""
    rates = np.array(cfg.rates_rps, dtype=np.float64)
    n = len(rates)
    if cfg.mean_sojourn_s is not None:
        exit_rates = 1.0 / np.array(cfg.mean_sojourn_s, dtype=np.float64)
        jumps = (np.ones((n, n)) - np.eye(n)) / (n - 1)
    else:
        assert cfg.transition_rates_per_s is not None
        q = np.array(cfg.transition_rates_per_s, dtype=np.float64)
        off = q * (1.0 - np.eye(n))
        exit_rates = off.sum(axis=1)
        jumps = off / exit_rates[:, None]
    gen = jumps * exit_rates[:, None] - np.diag(exit_rates)
    # πQ = 0 with Σπ = 1, solved as an over-determined system (unique for an irreducible chain).
    a = np.vstack((gen.T, np.ones(n)))
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(a, rhs, rcond=None)[0]
    pi = np.maximum(pi, 0.0)
    pi /= pi.sum()
    return rates, exit_rates, np.cumsum(jumps, axis=1), pi


# =========================================================================================================
# Traces
# =========================================================================================================


@dataclass(frozen=True, eq=False)
class Trace:
    """A request trace loaded once: request times on the trace's own axis, plus token columns if present.

    Azure LLM traces are measured from their first request; ``time_s`` traces keep the times as written.
    Arrays are read-only and sorted by time.
    """

    source: str
    times_s: FloatArray
    context_tokens: IntArray | None
    generated_tokens: IntArray | None

    @property
    def n_requests(self) -> int:
        return len(self.times_s)

    @property
    def span_s(self) -> float:
        return float(self.times_s[-1] - self.times_s[0])


_TS = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_TS_EXAMPLE = "a timestamp like 2023-11-16 18:15:46.6805900 (fractional digits optional, at most 9)"


def _timestamp_ns(text: str, days: dict[str, int]) -> int | None:
    """Nanoseconds since 0001-01-01 for ``YYYY-MM-DD HH:MM:SS[.fffffffff]``; None if it is not one."""
    m = _TS.fullmatch(text)
    if m is None:
        return None
    day = m.group(1) + m.group(2) + m.group(3)
    ordinal = days.get(day)
    if ordinal is None:
        try:
            ordinal = date(int(m.group(1)), int(m.group(2)), int(m.group(3))).toordinal()
        except ValueError:
            return None
        days[day] = ordinal
    hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if hh > 23 or mm > 59 or ss > 59:
        return None
    frac = m.group(7) or ""
    ns = int(frac.ljust(9, "0")) if frac else 0
    return ((ordinal * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000) + ns


def _header(lines: list[str], source: str) -> list[str]:
    if not lines or not lines[0].strip():
        raise ConfigError(source, None, MISSING, "is empty; expected a CSV header line", line=1)
    return [h.strip() for h in lines[0].lstrip("\ufeff").split(",")]


def _split_row(line: str, ncol: int, header: list[str], source: str, lineno: int) -> list[str]:
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != ncol:
        raise ConfigError(
            source,
            None,
            line,
            f"{ncol} comma-separated fields, like the header ({','.join(header)})",
            line=lineno,
        )
    return fields


def parse_trace_csv(text: str, source: str) -> Trace:
    """Parse a trace in the Azure LLM 2023 format or the plain ``time_s`` format (told by the header)."""
    lines = text.splitlines()
    header = _header(lines, source)
    if "TIMESTAMP" in header:
        time_col, tok_cols, azure = "TIMESTAMP", ("ContextTokens", "GeneratedTokens"), True
    elif "time_s" in header:
        time_col, tok_cols, azure = "time_s", ("context_tokens", "generated_tokens"), False
    else:
        raise ConfigError(
            source,
            "TIMESTAMP",
            lines[0],
            "a header with a TIMESTAMP column (Azure LLM trace format) or a time_s column",
            line=1,
        )
    ncol = len(header)
    ti = header.index(time_col)
    toks = [header.index(c) if c in header else None for c in tok_cols]
    stamps_ns: list[int] = []  # Azure: whole nanoseconds (a float loses the 7th decimal at this size)
    seconds: list[float] = []  # time_s format
    cells: list[str] = []
    linenos: list[int] = []
    tokens: list[list[int]] = [[], []]
    days: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (a trailing newline, or CRLF leftovers) carry no request
        fields = _split_row(line, ncol, header, source, lineno)
        cell = fields[ti]
        if azure:
            ns = _timestamp_ns(cell, days)
            if ns is None:
                raise ConfigError(source, time_col, cell, _TS_EXAMPLE, line=lineno)
            stamps_ns.append(ns)
        else:
            try:
                x = float(cell)
            except ValueError:
                x = math.nan
            if not (math.isfinite(x) and x >= 0):
                raise ConfigError(source, time_col, cell, "a finite number of seconds ≥ 0", line=lineno)
            seconds.append(x)
        cells.append(cell)
        linenos.append(lineno)
        for k, col in enumerate(toks):
            if col is None:
                continue
            cell = fields[col]
            digits = cell.lstrip("0")  # (a 5,000-digit cell is refused before int() would refuse it)
            if (
                not (cell.isascii() and cell.isdigit())
                or len(digits) > 10
                or int(digits or 0) > MAX_TRACE_TOKENS
            ):
                raise ConfigError(
                    source,
                    tok_cols[k],
                    cell,
                    f"a whole number of tokens from 0 to {MAX_TRACE_TOKENS:,}",
                    line=lineno,
                )
            tokens[k].append(int(cell))
    if not linenos:
        raise ConfigError(source, None, MISSING, "has a header but no requests", line=2)
    if azure:
        first = min(stamps_ns)
        # Seconds as Python floats: a span of centuries (years up to 9999) overflows int64 nanoseconds;
        # within 2**53 ns (104 days) both ways are exact, and the same float beyond it.
        t = np.array([(x - first) / 1e9 for x in stamps_ns], dtype=np.float64)
    else:
        t = np.array(seconds, dtype=np.float64)
    steps = np.diff(t)
    back = np.flatnonzero(steps < -TRACE_ORDER_TOLERANCE_S)
    if len(back):
        j = int(back[0]) + 1
        raise ConfigError(
            source,
            time_col,
            cells[j],
            f"times in non-decreasing order; this one is {-steps[j - 1]:.6f} s earlier than "
            f"line {linenos[j - 1]} (at most {TRACE_ORDER_TOLERANCE_S * 1e3:g} ms is "
            "tolerated)",
            line=linenos[j],
        )
    order = np.argsort(t, kind="stable")
    t = t[order]
    if azure:
        t -= t[0]
    t.flags.writeable = False
    cols: list[IntArray | None] = []
    for k, col in enumerate(toks):
        if col is None:
            cols.append(None)
            continue
        arr = np.array(tokens[k], dtype=np.int64)[order]
        arr.flags.writeable = False
        cols.append(arr)
    return Trace(source=source, times_s=t, context_tokens=cols[0], generated_tokens=cols[1])


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


MAX_TRACE_BYTES = 256 * 2**20
"""The largest trace or points CSV file read (about 7 million rows of the Azure format; parsing one
takes about eight times its size in memory)."""


def _read_text(path: Path) -> str:
    # a CSV from a spreadsheet may start with a BOM
    return read_text(path, encoding="utf-8-sig", limit=MAX_TRACE_BYTES)


@lru_cache(maxsize=8)
def _load_file_cached(path: str, _mtime_ns: int, _size: int) -> Trace:
    return parse_trace_csv(_read_text(Path(path)), path)


@lru_cache(maxsize=4)
def _load_builtin(name: str) -> Trace:
    text = resources.files("gpuscale").joinpath("data", BUILTIN_TRACES[name]).read_text(encoding="utf-8-sig")
    return parse_trace_csv(text, f"builtin:{name}")


def load_trace(path: str, *, base_dir: Path | None = None, source: str = "workload") -> Trace:
    """Load a trace file (cached while the file is unchanged) or ``builtin:<name>``.

    ``source`` names the scenario file for errors about the path itself; errors about the contents
    name the trace file.
    """
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTIN_TRACES:
            allowed = ", ".join(f"builtin:{n}" for n in BUILTIN_TRACES)
            raise ConfigError(source, "workload.path", path, f"a known built-in trace ({allowed}) or a file")
        return _load_builtin(name)
    p = _resolve(path, base_dir)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(str(p), None, MISSING, "file not found") from None
    except OSError as exc:
        raise ConfigError(str(p), None, MISSING, f"cannot be read ({exc.__class__.__name__})") from None
    return _load_file_cached(str(p), st.st_mtime_ns, st.st_size)


def _read_points_csv(path: Path, column: str) -> tuple[FloatArray, FloatArray]:
    """A ``time_s,<column>`` table of non-negative numbers in non-decreasing time."""
    source = str(path)
    lines = _read_text(path).splitlines()
    header = _header(lines, source)
    if header != ["time_s", column]:
        raise ConfigError(source, None, lines[0], f"the header time_s,{column}", line=1)
    ts: list[float] = []
    vs: list[float] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = _split_row(line, 2, header, source, lineno)
        parsed = []
        for name, cell in zip(header, fields, strict=True):
            try:
                x = float(cell)
            except ValueError:
                x = math.nan
            if not (math.isfinite(x) and x >= 0):
                raise ConfigError(source, name, cell, "a finite number ≥ 0", line=lineno)
            parsed.append(x)
        if ts and parsed[0] < ts[-1]:
            raise ConfigError(
                source,
                "time_s",
                fields[0],
                f"times in non-decreasing order (the previous row has {ts[-1]:g})",
                line=lineno,
            )
        ts.append(parsed[0])
        vs.append(parsed[1])
    if not ts:
        raise ConfigError(source, None, MISSING, "has a header but no rows", line=2)
    return np.array(ts), np.array(vs)


def _mean_gap(trace: Trace) -> float:
    n = trace.n_requests
    return trace.span_s / (n - 1) if n > 1 else 0.0


def _loop_period(trace: Trace) -> float:
    """Trace time after which a looped trace repeats: its last request time plus one mean gap."""
    return float(trace.times_s[-1]) + _mean_gap(trace)


class _TraceBlocks:
    """Replays a trace in blocks of trace rows, with time scaling, looping and a rate multiplier.

    Looped, row ``j`` of pass ``c`` happens at trace time ``τ_j + c·L`` with ``L = τ_last + ḡ`` (ḡ the mean
    gap), so the wrap-around gap is a typical one. The replay starts at trace time ``start_offset_s``
    and maps trace time ``T`` to ``(T − start_offset_s) / time_scale``.

    The multiplier ``m = w + f`` (whole ``w``, fraction ``f``) sends each request ``w`` times and once more
    with probability ``f``, so the expected count is exactly ``m`` times the trace's. The first copy
    keeps the request's time; the others fall uniformly in the gap to the next request, so the copies
    of one block lie before the next block's first request and the output stays sorted block to block.
    """

    def __init__(self, trace: Trace, cfg: TraceWorkload, seed: int) -> None:
        tau = trace.times_s
        n = len(tau)
        self._tau = tau
        self._n = n
        mean_gap = _mean_gap(trace)
        self._mean_gap = mean_gap
        self._period = _loop_period(trace)
        self._gap = np.append(np.diff(tau), mean_gap)
        self._whole, self._frac = divmod(cfg.rate_multiplier, 1.0)
        self._scale = cfg.time_scale
        self._offset = cfg.start_offset_s
        self._loop = cfg.loop
        self._seed = seed
        if self._loop:
            c = math.floor(self._offset / self._period)
            j = int(np.searchsorted(tau, self._offset - c * self._period, side="left"))
            if j == n:
                c, j = c + 1, 0
        else:
            c, j = 0, int(np.searchsorted(tau, self._offset, side="left"))
        self._cycle = c
        self._block = j // TRACE_BLOCK_ROWS
        self._first_row = j
        self._done = j >= n
        self.last_rows: IntArray = np.empty(0, dtype=np.int64)

    def _sim_time(self, trace_t: FloatArray | float) -> FloatArray:
        return np.asarray((np.asarray(trace_t) - self._offset) / self._scale, dtype=np.float64)

    def next_piece(self) -> tuple[FloatArray, float]:
        if self._done:
            self.last_rows = np.empty(0, dtype=np.int64)
            return _EMPTY, math.inf
        c, blk = self._cycle, self._block
        lo = max(blk * TRACE_BLOCK_ROWS, self._first_row)
        hi = min((blk + 1) * TRACE_BLOCK_ROWS, self._n)
        self._first_row = 0
        shift = c * self._period
        base = self._tau[lo:hi] + shift
        rng = generator(self._seed, f"workload/trace/{c}/{blk}")
        counts = np.full(len(base), int(self._whole), dtype=np.int64)
        if self._frac > 0:
            counts += rng.random(len(base)) < self._frac
        times = np.repeat(base, counts)
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)
        if len(times) and counts.max() > 1:
            if hi < self._n:
                nxt = self._tau[lo + 1 : hi + 1] + shift
            else:
                wrap = self._tau[0] + self._period if self._loop else self._tau[-1] + self._mean_gap
                nxt = np.append(self._tau[lo + 1 : hi], wrap) + shift
            extra = np.ones(len(times), dtype=bool)
            extra[(np.cumsum(counts) - counts)[counts > 0]] = False  # each request's first copy stays put
            gaps = np.repeat(self._gap[lo:hi], counts)[extra]
            limit = np.repeat(nxt, counts)[extra]  # rounding must not push a copy past the next request
            times[extra] = np.minimum(times[extra] + rng.random(len(gaps)) * gaps, limit)
            order = np.argsort(times, kind="stable")
            times = times[order]
            rows = rows[order]
        self.last_rows = rows  # the trace row of each arrival of this piece, in arrival order
        # Advance to the next block (and pass, when looping).
        if hi >= self._n:
            if self._loop:
                self._cycle, self._block = c + 1, 0
            else:
                self._done = True
        else:
            self._block = blk + 1
        if self._done:
            until = math.inf
        else:
            next_row = self._block * TRACE_BLOCK_ROWS
            until = float(self._sim_time(self._tau[next_row] + self._cycle * self._period))
        out = self._sim_time(times)
        out.flags.writeable = False
        return out, until


class _TraceRate:
    """Expected rate of a trace replay: requests in a centred 60-s window of simulated time, × multiplier."""

    def __init__(self, trace: Trace, cfg: TraceWorkload, period_s: float) -> None:
        self._tau = trace.times_s
        self._period = period_s
        self._loop = cfg.loop
        self._cfg = cfg

    def _count_before(self, x: float) -> int:
        if not self._loop:
            return int(np.searchsorted(self._tau, x, side="left"))
        c = math.floor(x / self._period)
        return c * len(self._tau) + int(np.searchsorted(self._tau, x - c * self._period, side="left"))

    def __call__(self, t: float) -> float:
        lo = max(t - RATE_WINDOW_S / 2, 0.0)
        hi = max(t + RATE_WINDOW_S / 2, lo)
        if hi <= lo:
            return 0.0
        a = self._cfg.start_offset_s + lo * self._cfg.time_scale
        b = self._cfg.start_offset_s + hi * self._cfg.time_scale
        n = self._count_before(b) - self._count_before(a)
        return self._cfg.rate_multiplier * n / (hi - lo)


# =========================================================================================================
# Token lengths of LLM requests
# =========================================================================================================

TOKEN_BLOCK = 4096
"""Requests per block of drawn token lengths; block ``i`` of the prompt (output) lengths draws from the
stream ``tokens/prompt/{i}`` (``tokens/output/{i}``), so the lengths of a run do not depend on how the
engine cuts it into intervals, and a prompt distribution never shifts the output draws."""

Int32Array = npt.NDArray[np.int32]

_TRACE_TOKEN_COLUMNS = {
    "prompt": "ContextTokens (context_tokens in the time_s format)",
    "output": "GeneratedTokens (generated_tokens in the time_s format)",
}


def sample_token_lengths(dist: TokenDist, rng: np.random.Generator, n: int) -> IntArray:
    """``n`` whole token lengths ≥ 1 drawn from ``dist``."""
    if dist.fixed is not None:
        return np.full(n, dist.fixed, dtype=np.int64)
    if dist.lognormal is not None:
        ln = dist.lognormal
        sigma2 = math.log1p(ln.cv * ln.cv)
        mu = math.log(ln.mean) - 0.5 * sigma2
        x = np.rint(rng.lognormal(mu, math.sqrt(sigma2), size=n))
        hi = float(ln.max) if ln.max is not None else float(np.iinfo(np.int32).max)
        return np.clip(x, 1.0, hi).astype(np.int64)
    if dist.uniform is not None:
        a, b = dist.uniform
        return rng.integers(a, b + 1, size=n, dtype=np.int64)
    assert dist.empirical is not None
    e = dist.empirical
    values = np.asarray(e.values, dtype=np.int64)
    if e.weights is None:
        return values[rng.integers(0, len(values), size=n)]
    w = np.asarray(e.weights, dtype=np.float64)
    return values[rng.choice(len(values), size=n, p=w / w.sum())]


class _Buffered:
    """Hands out a sequence made in blocks, ``n`` values at a time, in order."""

    def __init__(self) -> None:
        self._buf: IntArray = np.empty(0, dtype=np.int64)

    def _next_block(self) -> IntArray | None:
        raise NotImplementedError

    def take(self, n: int) -> IntArray:
        parts = [self._buf]
        have = len(self._buf)
        while have < n:
            block = self._next_block()
            if block is None:
                raise ValueError(f"asked for {n} token lengths; the source has only {have} more")
            parts.append(block)
            have += len(block)
        buf = np.concatenate(parts) if len(parts) > 1 else self._buf
        self._buf = buf[n:]
        return buf[:n]


class _DistLengths(_Buffered):
    def __init__(self, dist: TokenDist, seed: int, name: str) -> None:
        super().__init__()
        self._dist = dist
        self._seed = seed
        self._name = name
        self._i = 0

    def _next_block(self) -> IntArray:
        rng = generator(self._seed, f"tokens/{self._name}/{self._i}")
        self._i += 1
        return sample_token_lengths(self._dist, rng, TOKEN_BLOCK)


class _TraceRows(_Buffered):
    """The trace row of each replayed arrival, in arrival order: the same pieces the arrival source
    replays (same seed, same rate multiplier draws), so arrival k gets the row it was copied from."""

    def __init__(self, trace: Trace, cfg: TraceWorkload, seed: int) -> None:
        super().__init__()
        self._blocks = _TraceBlocks(trace, cfg, seed)

    def _next_block(self) -> IntArray | None:
        _, until = self._blocks.next_piece()
        rows = self._blocks.last_rows
        if not len(rows) and until == math.inf:
            return None
        return rows


class _PrefixGroups(_Buffered):
    """The shared-prefix group of each request in order (-1: none), drawn in blocks of
    :data:`TOKEN_BLOCK` from the streams ``tokens/prefix/{i}``: per request one uniform for the share,
    then the group (uniform or Zipf), so the groups do not depend on how the run is cut."""

    def __init__(self, cfg: PrefixConfig, seed: int) -> None:
        super().__init__()
        self._cfg = cfg
        self._seed = seed
        self._i = 0
        k = np.arange(1, cfg.groups + 1, dtype=np.float64)
        w = k ** (-cfg.zipf_exponent) if cfg.popularity == "zipf" else np.ones(cfg.groups)
        self._cum = np.cumsum(w / w.sum())
        self._cum[-1] = 1.0
        self.lengths: IntArray = sample_token_lengths(
            cfg.length, generator(seed, "tokens/prefix-length"), cfg.groups
        )
        """``L_g``: the prefix length of each group, tokens (drawn once per run)."""

    def _next_block(self) -> IntArray:
        rng = generator(self._seed, f"tokens/prefix/{self._i}")
        self._i += 1
        member = rng.random(TOKEN_BLOCK) < self._cfg.share
        group = np.searchsorted(self._cum, rng.random(TOKEN_BLOCK), side="right").astype(np.int64)
        return np.where(member, np.minimum(group, self._cfg.groups - 1), -1)


class TokenSource:
    """Prompt and output lengths of open-loop arrivals, handed out in arrival order.

    ``take(n)`` returns the lengths of the next ``n`` arrivals as two int32 arrays ``(prompt, output)``,
    each value ≥ 1. Call it once after every ``ArrivalSource.arrivals(t0, t1)`` of the run with
    ``n = len(times)`` (also for an empty interval, or skip it then): the k-th arrival of the run gets
    the k-th lengths. Lengths from distributions are drawn in blocks of :data:`TOKEN_BLOCK` from the
    seeded streams ``tokens/prompt/{i}`` and ``tokens/output/{i}``; lengths from a trace are the
    token columns of the row each arrival replays (rate multiplier copies and loop passes included).
    Equal for any way of cutting the run into intervals. Single-use, like the arrival source.

    With a ``prefix:`` block a request of group ``g`` (:class:`_PrefixGroups`) has its group's
    ``L_g`` tokens in front of its own prompt (the prompt length handed out includes them), and
    :meth:`take_prefix` gives the (group, ``L_g``) of the requests taken, in the same order.

    With a ``conversation:`` block (closed-loop users), :meth:`take_turns` gives one turn count per send,
    in send order, from the streams ``tokens/conversation-turns/{i}``; the plane uses the count of a
    send that starts a conversation (docs/llm.md, Conversations).
    """

    def __init__(
        self,
        prompt: _DistLengths | IntArray,
        output: _DistLengths | IntArray,
        rows: _TraceRows | None = None,
        prefix: _PrefixGroups | None = None,
        turns: _DistLengths | None = None,
    ) -> None:
        self._prompt = prompt
        self._output = output
        self._rows = rows
        self._prefix = prefix
        self._turns = turns
        self._groups: IntArray = np.empty(0, dtype=np.int64)
        """Groups of the requests taken but not yet asked for by :meth:`take_prefix`."""
        self.taken = 0
        """Lengths handed out so far (arrivals served)."""

    @property
    def has_prefix(self) -> bool:
        """Whether requests carry shared prefixes (a ``prefix:`` block)."""
        return self._prefix is not None

    @property
    def has_conversation(self) -> bool:
        """Whether closed-loop users hold multi-turn conversations (a ``conversation:`` block)."""
        return self._turns is not None

    def take_turns(self, n: int) -> IntArray:
        """The turn counts of the next ``n`` sends, in send order (all 1 without a ``conversation:``
        block)."""
        if self._turns is None:
            return np.ones(n, dtype=np.int64)
        return self._turns.take(n).astype(np.int64)

    def take_prefix(self, n: int) -> tuple[IntArray, IntArray]:
        """The (group, prefix length) of the next ``n`` requests :meth:`take` handed out (-1 and 0 for one
        without a shared prefix), in order; each request's are given once."""
        if self._prefix is None:
            return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        if n > len(self._groups):
            raise ValueError(f"take_prefix({n}): only {len(self._groups)} requests taken and not asked for")
        group = self._groups[:n]
        self._groups = self._groups[n:]
        return group, np.where(group >= 0, self._prefix.lengths[np.maximum(group, 0)], 0)

    def take(self, n: int) -> tuple[Int32Array, Int32Array]:
        if n < 0:
            raise ValueError(f"take({n}): n must be ≥ 0")
        rows = self._rows.take(n) if self._rows is not None else None
        out: list[Int32Array] = []
        for part in (self._prompt, self._output):
            if isinstance(part, _DistLengths):
                values = part.take(n)
            else:
                assert rows is not None
                values = part[rows]
            out.append(values.astype(np.int32))
        self.taken += n
        if self._prefix is not None:
            group = self._prefix.take(n)
            out[0] = out[0] + np.where(group >= 0, self._prefix.lengths[np.maximum(group, 0)], 0).astype(
                np.int32
            )
            self._groups = np.concatenate([self._groups, group])
        return out[0], out[1]


def _trace_column(trace: Trace, which: str) -> IntArray | None:
    return trace.context_tokens if which == "prompt" else trace.generated_tokens


def token_source(cfg: WorkloadConfig, *, seed: int, source: str, base_dir: Path | None = None) -> TokenSource:
    """The :class:`TokenSource` of a workload served by an LLM profile.

    Its ``tokens:`` block gives the distributions; a trace uses its own token columns for what the
    block leaves out. Closed-loop users take the lengths in send order (the k-th request sent gets the
    k-th lengths). ``source`` (the scenario file) and ``base_dir`` are as for :func:`build_workload`.
    Raises :class:`ConfigError` where the lengths are missing or not whole numbers ≥ 1.
    """
    tokens = cfg.tokens
    dists = {
        "prompt": tokens.prompt if tokens is not None else None,
        "output": tokens.output if tokens is not None else None,
    }
    prefix = _PrefixGroups(tokens.prefix, seed) if tokens is not None and tokens.prefix is not None else None
    conversation = tokens.conversation if tokens is not None else None
    turns = _DistLengths(conversation.turns, seed, "conversation-turns") if conversation is not None else None
    if not isinstance(cfg, TraceWorkload):
        if tokens is None:
            raise ConfigError(
                source,
                "workload.tokens",
                MISSING,
                "required with an LLM profile: the prompt and output lengths, e.g. tokens: {prompt: "
                "{lognormal: {mean: 1000, cv: 1}}, output: {lognormal: {mean: 200, cv: 1}}}; each one "
                "of {fixed: N}, {lognormal: {mean, cv, max}}, {uniform: [a, b]}, {empirical: {values, "
                "weights}}",
            )
        assert dists["prompt"] is not None and dists["output"] is not None  # checked by the config
        return TokenSource(
            _DistLengths(dists["prompt"], seed, "prompt"),
            _DistLengths(dists["output"], seed, "output"),
            prefix=prefix,
            turns=turns,
        )
    trace = load_trace(cfg.path, base_dir=base_dir, source=source)
    parts: dict[str, _DistLengths | IntArray] = {}
    for which in ("prompt", "output"):
        dist = dists[which]
        if dist is not None:
            parts[which] = _DistLengths(dist, seed, which)
            continue
        column = _trace_column(trace, which)
        if column is None:
            raise ConfigError(
                source,
                f"workload.tokens.{which}",
                MISSING,
                f"required: the trace {cfg.path} has no {_TRACE_TOKEN_COLUMNS[which]} column, and an LLM "
                "profile needs the length of every request; allowed: a column in the trace, or "
                f"tokens: {{{which}: DIST}} with DIST one of {{fixed: N}}, {{lognormal: {{mean, cv}}}}, "
                "{uniform: [a, b]}, {empirical: {values, weights}}",
            )
        bad = np.flatnonzero(column < 1)
        if len(bad):
            i = int(bad[0])
            raise ConfigError(
                trace.source,
                _TRACE_TOKEN_COLUMNS[which].split(" ")[0],
                int(column[i]),
                f"a whole number of tokens ≥ 1 (request {i + 1} in time order; {len(bad):,} such "
                f"requests); an LLM request has at least one {which} token. Allowed: fix the trace, or "
                f"replace the column with workload.tokens.{which}",
            )
        parts[which] = column
    uses_rows = any(not isinstance(p, _DistLengths) for p in parts.values())
    rows = _TraceRows(trace, cfg, seed) if uses_rows else None
    return TokenSource(parts["prompt"], parts["output"], rows, prefix)


# =========================================================================================================
# The workload and its builder
# =========================================================================================================


@dataclass(frozen=True, eq=False)
class Workload:
    """What the engine drives a run with: an open-loop arrival source or closed-loop users (not both).

    ``expected_rate_rps(t)`` is the intensity at ``t`` for plots and the oracle: the rate shape for Poisson
    and gamma; the stationary mean rate for MMPP (its realised rate depends on the hidden state); for a
    trace, the replayed requests in a centred 60-s window; for closed-loop users, ``users_at(t)`` divided
    by the mean think time, an upper bound because it ignores the time each request spends in the
    system (``inf`` when the think time is 0). ``trace`` holds the loaded trace, token columns included,
    for trace workloads. A workload is single-use: its arrival source only moves forward.
    """

    open_loop: ArrivalSource | None
    closed_loop: ClosedLoop | None
    rate_fn: Callable[[float], float] = field(repr=False)
    trace: Trace | None = None

    def expected_rate_rps(self, t: float) -> float:
        return self.rate_fn(t)


def _rate(cfg: PoissonWorkload | GammaWorkload, ctx: _Context) -> _Profile:
    if cfg.rate is not None:
        return _rate_profile(cfg.rate, ctx)
    assert cfg.rate_rps is not None  # the config guarantees exactly one of the two
    return _Piecewise.constant(cfg.rate_rps)


def build_workload(
    cfg: WorkloadConfig, *, seed: int, duration_s: float, source: str, base_dir: Path | None = None
) -> Workload:
    """Turn a validated workload config into a single-use :class:`Workload` for one run.

    ``duration_s`` bounds what periodic and random shapes lay out in advance (they hold their last
    value after it); ``source`` (the scenario file) and ``base_dir`` (its directory, against which
    relative paths resolve) are used for files the config points at and for errors about them.
    """
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be finite and ≥ 0, got {duration_s}")
    ctx = _Context(seed=seed, horizon_s=float(duration_s), source=source, base_dir=base_dir)
    if isinstance(cfg, PoissonWorkload):
        profile = _rate(cfg, ctx)
        return Workload(ArrivalSource(_PoissonBlocks(profile, seed)), None, lambda t: _scalar(profile, t))
    if isinstance(cfg, GammaWorkload):
        profile = _rate(cfg, ctx)
        return Workload(
            ArrivalSource(_GammaBlocks(profile, cfg.cv, seed)), None, lambda t: _scalar(profile, t)
        )
    if isinstance(cfg, MmppWorkload):
        rates, exits, jump_cdf, pi = _mmpp_process(cfg)
        mean_rate = float(pi @ rates)
        return Workload(
            ArrivalSource(_MmppBlocks(rates, exits, jump_cdf, pi, seed)), None, lambda t: mean_rate
        )
    if isinstance(cfg, ClosedLoopWorkload):
        schedule = UserSchedule._from_profile(_users_profile(cfg.users, ctx), ctx)
        loop = ClosedLoop(schedule, cfg.think_time_s[0], cfg.think_time_s[1])
        mean_think = loop.mean_think_s

        def closed_rate(t: float) -> float:
            users = schedule.users_at(t)
            if users == 0:
                return 0.0
            return users / mean_think if mean_think > 0 else math.inf

        return Workload(None, loop, closed_rate)
    if isinstance(cfg, TraceWorkload):
        trace = load_trace(cfg.path, base_dir=base_dir, source=source)
        period = _loop_period(trace)
        if cfg.loop and not period > 0:
            raise ConfigError(
                source,
                "workload.loop",
                True,
                "false: a trace whose requests all happen at time 0 cannot be looped",
            )
        return Workload(
            ArrivalSource(_TraceBlocks(trace, cfg, seed)), None, _TraceRate(trace, cfg, period), trace
        )
    assert_never(cfg)


# =========================================================================================================
# What a run will ask, reckoned before it starts
# =========================================================================================================

ARRIVAL_DRAW_BYTES = {"constant": 32, "shaped": 80, "trace": 40}
"""Peak bytes per arrival while one piece of arrivals is drawn (a 60-s block, or a block of trace rows
with its copies), numpy's temporaries included, measured with tracemalloc: a constant rate 24 (Poisson)
to 32 (gamma), a rate shape or MMPP 66 to 80, trace replay 35."""

ARRIVAL_HELD_BYTES = 16
"""Bytes per arrival held between pieces: the pieces not yet handed out and their concatenation."""


@dataclass(frozen=True)
class LoadEstimate:
    """What a workload will ask of a run, reckoned from its config alone (nothing is generated)."""

    requests: float
    """Expected requests over the run."""
    how: str
    """How ``requests`` was reckoned, for messages (``1,000 req/s on average over 3,600 s``)."""
    key: str
    """The workload key that sets the load, for messages (``workload.rate_rps``)."""
    value: object
    """Its value, for messages."""
    users: int = 0
    """The most closed-loop users at once (0 for open-loop workloads)."""
    user_changes: float = 0.0
    """About how many times the user count changes over the run (each one is a step of the engine)."""
    arrival_bytes: float = 0.0
    """The most memory arrival times take at once: a piece being drawn plus what is held."""
    arrivals: str = "arrival times"
    """What ``arrival_bytes`` holds, for messages."""


def _n(x: float) -> str:
    """A count or rate for messages: 60,000,000 or 12.5."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _peak(profile: _Profile, horizon_s: float) -> float:
    """The highest value of ``profile`` on ``[0, horizon_s]``."""
    if isinstance(profile, _Sinusoid):
        return profile.mean + profile.amplitude
    assert isinstance(profile, _Piecewise)
    inside = profile.starts <= horizon_s
    starts, values, slopes = profile.starts[inside], profile.values[inside], profile.slopes[inside]
    ends = np.minimum(profile.ends[inside], horizon_s)
    return float(max(values.max(), (values + slopes * (ends - starts)).max()))


def _variation(profile: _Profile, horizon_s: float) -> float:
    """How far ``profile`` moves up and down on ``[0, horizon_s]``, plus one per segment: an upper
    bound of the changes of a count that follows it rounded to whole units."""
    if isinstance(profile, _Sinusoid):
        return 4.0 * profile.amplitude * (horizon_s / profile.period + 1.0)
    assert isinstance(profile, _Piecewise)
    inside = profile.starts <= horizon_s
    starts, values, slopes = profile.starts[inside], profile.values[inside], profile.slopes[inside]
    ends = np.minimum(profile.ends[inside], horizon_s)
    ramps = np.abs(slopes * (ends - starts)).sum()
    jumps = np.abs(values[1:] - (values[:-1] + slopes[:-1] * (starts[1:] - starts[:-1]))).sum()
    return float(ramps + jumps + len(starts))


def _open_loop_bytes(peak_rps: float, window_s: float, draw_bytes: int) -> float:
    """Arrival memory of a rate-driven process: one 60-s block drawn, and the blocks an interval of
    up to ``window_s`` spans held."""
    return peak_rps * (BLOCK_S * draw_bytes + (window_s + BLOCK_S) * ARRIVAL_HELD_BYTES)


def _open_loop_arrivals(peak_rps: float) -> str:
    return f"arrival times at up to {_n(peak_rps)} req/s, drawn {BLOCK_S:g} s at a time"


def _trace_estimate(cfg: TraceWorkload, trace: Trace, horizon_s: float, window_s: float) -> LoadEstimate:
    period = _loop_period(trace)
    counter = _TraceRate(trace, cfg, period)
    start = cfg.start_offset_s
    rows = (
        counter._count_before(start + horizon_s * cfg.time_scale) - counter._count_before(start)
        if cfg.loop and period > 0
        else int(
            np.count_nonzero((trace.times_s >= start) & (trace.times_s < start + horizon_s * cfg.time_scale))
        )
    )
    whole, frac = divmod(cfg.rate_multiplier, 1.0)
    copies = whole + (1.0 if frac > 0 else 0.0)
    # The most rows in any interval the engine asks for (plus a block of rows drawn ahead).
    tau = trace.times_s if not cfg.loop else np.concatenate((trace.times_s, trace.times_s + period))
    span = (window_s + BLOCK_S) * cfg.time_scale
    densest = int((np.searchsorted(tau, tau + span, side="right") - np.arange(len(tau))).max())
    block = min(TRACE_BLOCK_ROWS, trace.n_requests)
    held = (densest + block) * copies * ARRIVAL_HELD_BYTES
    return LoadEstimate(
        requests=rows * cfg.rate_multiplier,
        how=f"{rows:,} trace rows replayed over {_n(horizon_s)} s × rate_multiplier {_n(cfg.rate_multiplier)}",
        key="workload.rate_multiplier",
        value=cfg.rate_multiplier,
        arrival_bytes=block * copies * ARRIVAL_DRAW_BYTES["trace"] + held,
        arrivals=f"arrival times, {block:,} trace rows × {copies:g} copies drawn at a time",
    )


def estimate_load(
    cfg: WorkloadConfig,
    *,
    seed: int,
    duration_s: float,
    window_s: float,
    service_s: float,
    source: str,
    base_dir: Path | None = None,
) -> LoadEstimate:
    """What ``cfg`` will ask of a run of ``duration_s``, before anything is generated.

    Requests are the expected count: the mean rate × the duration (Poisson, gamma: the rate shape's
    integral; MMPP: the stationary mean rate), the trace rows replayed × ``rate_multiplier``, or for
    closed-loop users their user-seconds / (mean think time + ``service_s``, the lightest-load
    response) -- an upper bound, as responses only get slower under load. ``window_s`` is the longest
    interval the engine asks arrivals for (the scrape interval). Files the config names are read
    (a trace, a points CSV), as :func:`build_workload` would.
    """
    ctx = _Context(seed=seed, horizon_s=float(duration_s), source=source, base_dir=base_dir)
    h = float(duration_s)
    if isinstance(cfg, (PoissonWorkload, GammaWorkload)):
        profile = _rate(cfg, ctx)
        peak = _peak(profile, h + BLOCK_S)
        requests = float(profile.cumulative(np.array([h]))[0])
        key, value = (
            ("workload.rate_rps", cfg.rate_rps) if cfg.rate is None else ("workload.rate", cfg.rate.kind)
        )
        return LoadEstimate(
            requests=requests,
            how=f"{_n(requests / h)} req/s on average over {_n(h)} s",
            key=key,
            value=value,
            arrival_bytes=_open_loop_bytes(
                peak, window_s, ARRIVAL_DRAW_BYTES["constant" if cfg.rate is None else "shaped"]
            ),
            arrivals=_open_loop_arrivals(peak),
        )
    if isinstance(cfg, MmppWorkload):
        rates, _, _, pi = _mmpp_process(cfg)
        mean = float(pi @ rates)
        return LoadEstimate(
            requests=mean * h,
            how=f"{_n(mean)} req/s on average (the states' stationary mix) over {_n(h)} s",
            key="workload.rates_rps",
            value=list(cfg.rates_rps),
            arrival_bytes=_open_loop_bytes(float(rates.max()), window_s, ARRIVAL_DRAW_BYTES["shaped"]),
            arrivals=_open_loop_arrivals(float(rates.max())),
        )
    if isinstance(cfg, ClosedLoopWorkload):
        profile = _users_profile(cfg.users, ctx)
        peak = int(_round_users(np.array([_peak(profile, h)]))[0])
        user_s = float(profile.cumulative(np.array([h]))[0])
        cycle = 0.5 * (cfg.think_time_s[0] + cfg.think_time_s[1]) + service_s
        requests = user_s / cycle if cycle > 0 else (math.inf if user_s > 0 else 0.0)
        return LoadEstimate(
            requests=requests,
            how=f"{_n(user_s / h)} users on average over {_n(h)} s, each sending a request every "
            f"{cycle:.4g} s at most (mean think time + {1000 * service_s:.4g} ms of service)",
            key="workload.users",
            value=peak,
            users=peak,
            user_changes=_variation(profile, h),
        )
    if isinstance(cfg, TraceWorkload):
        trace = load_trace(cfg.path, base_dir=base_dir, source=source)
        return _trace_estimate(cfg, trace, h, window_s)
    assert_never(cfg)
