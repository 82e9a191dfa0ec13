"""The ``workload:`` section of a scenario: how requests (or users) arrive.

Five kinds, chosen by ``kind``:

========================  ==================================================================================
``poisson``               open loop, exponential inter-arrival times; a constant rate or a time-varying shape
``gamma``                 open loop, gamma renewal process: a mean rate plus the ``cv`` of inter-arrival times
``mmpp``                  open loop, Markov-modulated Poisson: the rate switches between states at random
``closed-loop``           Locust-like users: each sends, waits for the outcome, thinks, sends again
``trace``                 replay of a CSV trace (Azure LLM 2023 format or a plain ``time_s`` column)
========================  ==================================================================================

A rate is either a number (``rate_rps: 50``) or a shape (``rate: {kind: sinusoid, ...}``), exactly one
of the two. A user count is either an integer (``users: 50``) or a shape in users
(``users: {kind: ramp, from_users: 1, to_users: 100, end_s: 1200, steps: 20}``). Value fields end in
``_rps`` for rates and ``_users`` for user counts (written ``_*`` below). A shape is chosen by its own
``kind`` key, like the workload itself, so every error names the exact key path. Shapes:

* ``constant`` — one level forever.
* ``step`` — ``levels: [[time_s, value], ...]``; each level holds until the next; the first is at 0 s.
* ``ramp`` — linear from ``from_*`` to ``to_*`` between ``start_s`` and ``end_s``; ``steps: N`` makes it a
  staircase of N equal-length levels, the first ``from_*`` and the last ``to_*``.
* ``sinusoid`` — ``mean + amplitude·sin(2π(t − phase_s)/period_s)``; ``steps_per_period: N`` samples it at
  the start of each of N equal steps per period and holds the sample.
* ``diurnal`` — a 24-hour cosine between ``trough_*`` and ``peak_*`` peaking at ``peak_hour``;
  ``period_s`` compresses the day, ``start_hour`` is the clock hour at t = 0. A scenario shorter than a
  day must give ``period_s`` (its duration compresses a whole day into the run; 86400 keeps a real day).
* ``spike`` — a flash crowd: ``base_*`` until ``start_s``, a linear rise over ``rise_s`` to ``peak_*``,
  ``hold_s`` at the peak, a linear fall over ``fall_s`` back to ``base_*`` (a rise or fall of 0 is a jump).
* ``piecewise-linear`` — ``points: [[time_s, value], ...]`` joined by straight lines, flat before the first
  and after the last (two points at one time make a jump); or ``path:`` a CSV file with the header
  ``time_s,rps`` (``time_s,users`` for users), relative to the scenario file's directory.
* ``random-levels`` — a new level every ``interval_s``, uniform in [``min_*``, ``max_*``] (for users a
  uniform integer), drawn from the workload's own seeded stream.

User counts from a shape are rounded to the nearest integer (halves up).

Token lengths (LLM profiles only, those with ``model.llm``): the open-loop kinds take a ``tokens:``
block with a ``prompt:`` and an ``output:`` distribution, each one of ``{fixed: N}`` (or just ``N``),
``{lognormal: {mean: M, cv: C, max: K}}`` (rounded, at least 1, cut at ``max``), ``{uniform: [a, b]}``
(whole numbers a..b) or ``{empirical: {values: [...], weights: [...]}}``. A trace uses its own token
columns (``ContextTokens``/``GeneratedTokens``, or ``context_tokens``/``generated_tokens``) for what its
``tokens:`` block leaves out. A profile without ``llm:`` refuses a ``tokens:`` block: the request-level
engine would ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gpuscale.config.loading import StrictModel, also_accepts


class _Model(StrictModel):
    # inf and nan are never a meaningful rate, time or count here.
    model_config = ConfigDict(allow_inf_nan=False)


NonNegative = Annotated[float, Field(ge=0)]
Point = tuple[NonNegative, NonNegative]

MAX_SHAPE_USERS = 2**53
MAX_SHAPE_STEPS = 1_000_000
"""Most levels a staircase ramp or a stepped sinusoid may have (a ramp's levels are all held in
memory; a step count past float range would not even divide a period)."""
"""The most users a closed-loop shape may name (the largest whole number a float holds exactly); a
run's load is refused long before this by the up-front estimate."""
UserPoint = tuple[NonNegative, Annotated[float, Field(ge=0, le=MAX_SHAPE_USERS)]]


def _check_levels(levels: list[Point]) -> list[Point]:
    if levels[0][0] != 0:
        raise PydanticCustomError("levels_start", "the first level must start at time 0 s")
    times = [t for t, _ in levels]
    if any(b <= a for a, b in pairwise(times)):
        raise PydanticCustomError("levels_order", "level times must be strictly increasing")
    return levels


def _check_points(points: list[Point] | None) -> list[Point] | None:
    if points is None:
        return None
    times = [t for t, _ in points]
    if any(b < a for a, b in pairwise(times)):
        raise PydanticCustomError("points_order", "point times must not decrease (equal times make a jump)")
    if any(a == b == c for a, b, c in zip(times, times[1:], times[2:], strict=False)):
        raise PydanticCustomError("points_jump", "at most two points may share a time (a jump)")
    return points


def _check_not_below(value: float, info: ValidationInfo, other: str) -> float:
    low = info.data.get(other)
    if low is not None and value < low:
        raise PydanticCustomError("below_other", "must be ≥ {other} ({low})", {"other": other, "low": low})
    return value


class _PointsSource(_Model):
    points: Annotated[list[Point] | None, AfterValidator(_check_points)] = Field(
        default=None,
        min_length=1,
        description="[[time_s, value], ...] in non-decreasing time; give this or path, not both",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="CSV file with a header row and two columns (time_s and the value); relative to the "
        "scenario file's directory",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.points is None) == (self.path is None):
            raise PydanticCustomError("points_source", "give exactly one of points or path")
        return self


# ---------------------------------------------------------------------------------------------------------
# Rate shapes (requests per second)
# ---------------------------------------------------------------------------------------------------------


class RateConstant(_Model):
    """One rate forever."""

    kind: Literal["constant"] = Field(description="shape selector (nested kind)")
    rate_rps: float = Field(ge=0, description="requests per second")


class RateStep(_Model):
    """Levels that each hold until the next level's time."""

    kind: Literal["step"] = Field(description="shape selector (nested kind)")
    levels: Annotated[list[Point], AfterValidator(_check_levels)] = Field(
        min_length=1, description="[[time_s, rps], ...]; the first at 0 s, times strictly increasing"
    )


class RateRamp(_Model):
    """Linear (or, with ``steps``, staircase) change from one rate to another."""

    kind: Literal["ramp"] = Field(description="shape selector (nested kind)")
    from_rps: float = Field(ge=0, description="rate before and at start_s")
    to_rps: float = Field(ge=0, description="rate at and after end_s")
    start_s: float = Field(default=0.0, ge=0, description="when the ramp begins")
    end_s: float = Field(gt=0, description="when the ramp reaches to_rps; must be > start_s")
    steps: int | None = Field(
        default=None,
        ge=2,
        le=MAX_SHAPE_STEPS,
        description="staircase of this many equal-length levels (first from_rps, last to_rps); "
        "omit for a continuous line",
    )

    @field_validator("end_s")
    @classmethod
    def _after_start(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("start_s")
        if start is not None and v <= start:
            raise PydanticCustomError("ramp_order", "must be > start_s ({start})", {"start": start})
        return v


class RateSinusoid(_Model):
    """``mean + amplitude·sin(2π(t − phase_s)/period_s)``, optionally held in steps."""

    kind: Literal["sinusoid"] = Field(description="shape selector (nested kind)")
    mean_rps: float = Field(ge=0, description="mean rate")
    amplitude_rps: float = Field(ge=0, description="peak deviation from the mean; at most mean_rps")
    period_s: float = Field(gt=0, description="length of one cycle")
    phase_s: float = Field(default=0.0, description="time at which the rate crosses the mean going up")
    steps_per_period: int | None = Field(
        default=None,
        ge=2,
        le=MAX_SHAPE_STEPS,
        description="hold the value sampled at the start of each of this many equal steps per period; "
        "omit for a continuous curve",
    )

    @field_validator("amplitude_rps")
    @classmethod
    def _non_negative(cls, v: float, info: ValidationInfo) -> float:
        mean = info.data.get("mean_rps")
        if mean is not None and v > mean:
            raise PydanticCustomError(
                "amplitude", "must be ≤ mean_rps ({mean}) so the rate never goes below 0", {"mean": mean}
            )
        return v


class RateDiurnal(_Model):
    """A daily cosine between a trough and a peak."""

    kind: Literal["diurnal"] = Field(description="shape selector (nested kind)")
    trough_rps: float = Field(ge=0, description="lowest rate of the day")
    peak_rps: float = Field(ge=0, description="highest rate of the day; at least trough_rps")
    peak_hour: float = Field(ge=0, lt=24, description="clock hour of the peak (the trough is 12 h later)")
    start_hour: float = Field(default=0.0, ge=0, lt=24, description="clock hour at simulated time 0")
    period_s: float = Field(
        default=86_400.0,
        gt=0,
        description="length of one day; less than 86400 compresses the day; required in a scenario "
        "shorter than a day",
    )

    @field_validator("peak_rps")
    @classmethod
    def _above_trough(cls, v: float, info: ValidationInfo) -> float:
        return _check_not_below(v, info, "trough_rps")


class RateSpike(_Model):
    """A flash crowd: base, linear rise, hold at peak, linear fall, base again."""

    kind: Literal["spike"] = Field(description="shape selector (nested kind)")
    base_rps: float = Field(ge=0, description="rate outside the spike")
    peak_rps: float = Field(ge=0, description="rate while the spike holds")
    start_s: float = Field(ge=0, description="when the rise begins")
    rise_s: float = Field(default=0.0, ge=0, description="duration of the linear rise (0 = a jump)")
    hold_s: float = Field(ge=0, description="how long the peak holds")
    fall_s: float = Field(default=0.0, ge=0, description="duration of the linear fall (0 = a jump)")


class RatePiecewiseLinear(_PointsSource):
    """Straight lines between points, given inline or as a ``time_s,rps`` CSV file."""

    kind: Literal["piecewise-linear"] = Field(description="shape selector (nested kind)")


class RateRandomLevels(_Model):
    """A fresh uniform level every ``interval_s`` seconds, from the workload's seeded stream."""

    kind: Literal["random-levels"] = Field(description="shape selector (nested kind)")
    min_rps: float = Field(ge=0, description="lowest level")
    max_rps: float = Field(ge=0, description="highest level; at least min_rps")
    interval_s: float = Field(gt=0, description="how long each level holds")

    @field_validator("max_rps")
    @classmethod
    def _above_min(cls, v: float, info: ValidationInfo) -> float:
        return _check_not_below(v, info, "min_rps")


RateShape = Annotated[
    RateConstant
    | RateStep
    | RateRamp
    | RateSinusoid
    | RateDiurnal
    | RateSpike
    | RatePiecewiseLinear
    | RateRandomLevels,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------------------------------------
# User-count shapes (closed loop)
# ---------------------------------------------------------------------------------------------------------


class UsersConstant(_Model):
    """One user count forever."""

    kind: Literal["constant"] = Field(description="shape selector (nested kind)")
    users: int = Field(ge=0, le=MAX_SHAPE_USERS, description="number of users")


class UsersStep(_Model):
    """User levels that each hold until the next level's time."""

    kind: Literal["step"] = Field(description="shape selector (nested kind)")
    levels: Annotated[list[UserPoint], AfterValidator(_check_levels)] = Field(
        min_length=1, description="[[time_s, users], ...]; the first at 0 s, times strictly increasing"
    )


class UsersRamp(_Model):
    """Linear (or, with ``steps``, staircase) change of the user count; KIS-S ramp: 1→100 in 20 steps."""

    kind: Literal["ramp"] = Field(description="shape selector (nested kind)")
    from_users: float = Field(ge=0, le=MAX_SHAPE_USERS, description="users before and at start_s")
    to_users: float = Field(ge=0, le=MAX_SHAPE_USERS, description="users at and after end_s")
    start_s: float = Field(default=0.0, ge=0, description="when the ramp begins")
    end_s: float = Field(gt=0, description="when the ramp reaches to_users; must be > start_s")
    steps: int | None = Field(
        default=None,
        ge=2,
        le=MAX_SHAPE_STEPS,
        description="staircase of this many equal-length levels (first from_users, last to_users); "
        "omit for a continuous line (the count then changes at every half-user crossing)",
    )

    @field_validator("end_s")
    @classmethod
    def _after_start(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("start_s")
        if start is not None and v <= start:
            raise PydanticCustomError("ramp_order", "must be > start_s ({start})", {"start": start})
        return v


class UsersSinusoid(_Model):
    """``mean + amplitude·sin(2π(t − phase_s)/period_s)`` users, optionally held in steps."""

    kind: Literal["sinusoid"] = Field(description="shape selector (nested kind)")
    mean_users: float = Field(ge=0, le=MAX_SHAPE_USERS, description="mean user count")
    amplitude_users: float = Field(
        ge=0, le=MAX_SHAPE_USERS, description="peak deviation from the mean; at most mean_users"
    )
    period_s: float = Field(gt=0, description="length of one cycle")
    phase_s: float = Field(default=0.0, description="time at which the count crosses the mean going up")
    steps_per_period: int | None = Field(
        default=None,
        ge=2,
        le=MAX_SHAPE_STEPS,
        description="hold the value sampled at the start of each of this many equal steps per period; "
        "omit for a continuous curve",
    )

    @field_validator("amplitude_users")
    @classmethod
    def _non_negative(cls, v: float, info: ValidationInfo) -> float:
        mean = info.data.get("mean_users")
        if mean is not None and v > mean:
            raise PydanticCustomError(
                "amplitude", "must be ≤ mean_users ({mean}) so the count never goes below 0", {"mean": mean}
            )
        return v


class UsersDiurnal(_Model):
    """A daily cosine of the user count between a trough and a peak."""

    kind: Literal["diurnal"] = Field(description="shape selector (nested kind)")
    trough_users: float = Field(ge=0, le=MAX_SHAPE_USERS, description="fewest users of the day")
    peak_users: float = Field(
        ge=0, le=MAX_SHAPE_USERS, description="most users of the day; at least trough_users"
    )
    peak_hour: float = Field(ge=0, lt=24, description="clock hour of the peak (the trough is 12 h later)")
    start_hour: float = Field(default=0.0, ge=0, lt=24, description="clock hour at simulated time 0")
    period_s: float = Field(
        default=86_400.0,
        gt=0,
        description="length of one day; less than 86400 compresses the day; required in a scenario "
        "shorter than a day",
    )

    @field_validator("peak_users")
    @classmethod
    def _above_trough(cls, v: float, info: ValidationInfo) -> float:
        return _check_not_below(v, info, "trough_users")


class UsersSpike(_Model):
    """A flash crowd of users; KIS-S spike: 10 → 100 → 10 with start_s 270, hold_s 360 over 15 min."""

    kind: Literal["spike"] = Field(description="shape selector (nested kind)")
    base_users: float = Field(ge=0, le=MAX_SHAPE_USERS, description="users outside the spike")
    peak_users: float = Field(ge=0, le=MAX_SHAPE_USERS, description="users while the spike holds")
    start_s: float = Field(ge=0, description="when the rise begins")
    rise_s: float = Field(default=0.0, ge=0, description="duration of the linear rise (0 = a jump)")
    hold_s: float = Field(ge=0, description="how long the peak holds")
    fall_s: float = Field(default=0.0, ge=0, description="duration of the linear fall (0 = a jump)")


class UsersPiecewiseLinear(_PointsSource):
    """Straight lines between user counts, given inline or as a ``time_s,users`` CSV file."""

    kind: Literal["piecewise-linear"] = Field(description="shape selector (nested kind)")


class UsersRandomLevels(_Model):
    """A fresh uniform integer user count every ``interval_s`` seconds, from the workload's seeded stream."""

    kind: Literal["random-levels"] = Field(description="shape selector (nested kind)")
    min_users: int = Field(ge=0, le=MAX_SHAPE_USERS, description="fewest users (inclusive)")
    max_users: int = Field(ge=0, le=MAX_SHAPE_USERS, description="most users (inclusive); at least min_users")
    interval_s: float = Field(gt=0, description="how long each level holds")

    @field_validator("max_users")
    @classmethod
    def _above_min(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("min_users")
        if low is not None and v < low:
            raise PydanticCustomError("below_other", "must be ≥ min_users ({low})", {"low": low})
        return v


UsersShape = Annotated[
    UsersConstant
    | UsersStep
    | UsersRamp
    | UsersSinusoid
    | UsersDiurnal
    | UsersSpike
    | UsersPiecewiseLinear
    | UsersRandomLevels,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------------------------------------
# Token lengths (for LLM profiles)
# ---------------------------------------------------------------------------------------------------------


class LogNormalTokens(_Model):
    """A lognormal length with the given mean and coefficient of variation, rounded to whole tokens."""

    mean: float = Field(ge=1, description="mean length, tokens (before rounding)")
    cv: float = Field(gt=0, description="coefficient of variation (standard deviation / mean)")
    max: int | None = Field(default=None, ge=1, description="longest length: longer draws are cut to this")


class EmpiricalTokens(_Model):
    """Lengths drawn from a list of values with weights."""

    values: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="lengths, tokens (each ≥ 1)")
    weights: list[NonNegative] | None = Field(
        default=None, description="one weight ≥ 0 per value, summing to more than 0; default: equal"
    )

    @model_validator(mode="after")
    def _weights(self) -> Self:
        w = self.weights
        if w is None:
            return self
        if len(w) != len(self.values):
            raise PydanticCustomError(
                "weights_length",
                "weights has {nw} entries; allowed: one per value ({n})",
                {"nw": len(w), "n": len(self.values)},
            )
        if not sum(w) > 0:
            raise PydanticCustomError("weights_sum", "weights must sum to more than 0")
        return self


TOKEN_DIST_KEYS = ("fixed", "lognormal", "uniform", "empirical")


class TokenDist(_Model):
    """A distribution of token lengths: exactly one of ``{fixed: N}``, ``{lognormal: {mean, cv, max}}``,
    ``{uniform: [a, b]}`` (whole numbers a..b, both included) or ``{empirical: {values, weights}}``.
    A plain number N is ``{fixed: N}``. Every length is a whole number ≥ 1."""

    model_config = ConfigDict(json_schema_extra=also_accepts({"type": "integer", "minimum": 1}))
    fixed: int | None = Field(default=None, ge=1, description="every request has this many tokens")
    lognormal: LogNormalTokens | None = Field(
        default=None, description="lognormal with this mean and cv, rounded, at least 1, cut at max"
    )
    uniform: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="[a, b]: a whole number uniform in a..b (1 ≤ a ≤ b)"
    )
    empirical: EmpiricalTokens | None = Field(default=None, description="values with weights")

    @model_validator(mode="before")
    @classmethod
    def _number_to_fixed(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"fixed": v}
        return v

    @field_validator("uniform")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and v[0] > v[1]:
            raise PydanticCustomError("uniform_order", "expected [a, b] with a ≤ b")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [k for k in TOKEN_DIST_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "token_dist",
                "give exactly one of {keys} (given: {given})",
                {"keys": ", ".join(TOKEN_DIST_KEYS), "given": ", ".join(given) or "none"},
            )
        return self

    @property
    def mean(self) -> float:
        """The mean length before rounding and cutting (the configured one)."""
        if self.fixed is not None:
            return float(self.fixed)
        if self.lognormal is not None:
            return self.lognormal.mean
        if self.uniform is not None:
            return 0.5 * (self.uniform[0] + self.uniform[1])
        assert self.empirical is not None
        e = self.empirical
        w = e.weights if e.weights is not None else [1.0] * len(e.values)
        return sum(v * x for v, x in zip(e.values, w, strict=True)) / sum(w)


class PrefixConfig(_Model):
    """Shared prompt prefixes (system prompts, few-shot templates): what vLLM's prefix caching reuses.

    There are ``groups`` distinct prefixes; group ``g``'s length ``L_g`` is drawn once per run from
    ``length``. A share ``share`` of the requests belong to a group (chosen uniformly, or by Zipf's law
    with exponent ``zipf_exponent``: group ``k`` has weight ``1 / (k + 1)^s``); such a request's prompt is
    its group's ``L_g`` tokens, identical for every request of the group, followed by its own prompt of the
    ``prompt:`` length, unique to it. Prefix caching itself is switched on by the profile's
    ``model.llm.enable_prefix_caching``; without it the prefix only lengthens the prompts (docs/llm.md,
    Prefix caching).
    """

    groups: int = Field(ge=1, le=1_000_000, description="number of distinct shared prefixes (≥ 1)")
    length: TokenDist = Field(
        description="length of each group's prefix, tokens, drawn once per group: {fixed: N} (or N), "
        "{lognormal: {mean, cv, max}}, {uniform: [a, b]} or {empirical: {values, weights}}"
    )
    share: float = Field(
        default=1.0, ge=0, le=1, description="fraction of the requests that start with a shared prefix (0-1)"
    )
    popularity: Literal["uniform", "zipf"] = Field(
        default="uniform", description="how a request picks its group: uniform, or zipf (weights 1/(k+1)^s)"
    )
    zipf_exponent: float = Field(default=1.0, gt=0, le=10, description="Zipf exponent s (popularity: zipf)")


class ConversationConfig(_Model):
    """Multi-turn chat (closed-loop users only): each turn's prompt is the conversation so far.

    A user's first turn is an ordinary prompt (with its shared prefix, if ``prefix:`` is set); each later
    turn's prompt is the previous turn's prompt and output followed by a new message of the ``prompt:``
    length. A conversation has ``turns`` turns, drawn when it starts; it ends early when a turn is not
    answered (rejected, timed out or dropped) or when the next turn would not fit ``max_model_len``, and
    the user's next send starts a new one (docs/llm.md, Conversations).
    """

    turns: TokenDist = Field(
        description="turns per conversation (≥ 1), drawn when a conversation starts: {fixed: N} (or N), "
        "{lognormal: {mean, cv, max}}, {uniform: [a, b]} or {empirical: {values, weights}}"
    )


class TokensConfig(_Model):
    """Prompt and output lengths of the requests (LLM profiles only).

    For a trace, either may be left out: the trace's own column is used (``ContextTokens`` /
    ``GeneratedTokens``, or ``context_tokens`` / ``generated_tokens``); given, it replaces the column.
    ``prefix:`` puts a shared prefix in front of the prompts (:class:`PrefixConfig`); ``conversation:``
    makes closed-loop users' prompts multi-turn chats (:class:`ConversationConfig`).
    """

    prompt: TokenDist | None = Field(default=None, description="prompt (input) length, tokens")
    output: TokenDist | None = Field(default=None, description="output (generated) length, tokens")
    prefix: PrefixConfig | None = Field(
        default=None,
        description="shared prompt prefixes in front of the prompt (for prefix caching): {groups, length, "
        "share, popularity, zipf_exponent}",
    )
    conversation: ConversationConfig | None = Field(
        default=None,
        description="closed-loop users only: multi-turn conversations, each turn's prompt the conversation "
        "so far followed by a new message of the prompt: length: {turns: DIST}",
    )


class _TokensChoice(_Model):
    tokens: TokensConfig | None = Field(
        default=None,
        description="prompt and output lengths (LLM profiles only): {prompt: DIST, output: DIST}",
    )

    @field_validator("tokens")
    @classmethod
    def _both_lengths(cls, t: TokensConfig | None) -> TokensConfig | None:
        if t is not None and (t.prompt is None or t.output is None):
            missing = "prompt" if t.prompt is None else "output"
            raise PydanticCustomError(
                "tokens_both",
                "tokens.{m} is missing; allowed: both tokens.prompt and tokens.output (only a trace may "
                "leave one out, taking it from its own column)",
                {"m": missing},
            )
        return t


# ---------------------------------------------------------------------------------------------------------
# Workload kinds
# ---------------------------------------------------------------------------------------------------------


class _RateChoice(_TokensChoice):
    rate_rps: float | None = Field(
        default=None, ge=0, description="constant mean rate in requests per second; or give rate"
    )
    rate: RateShape | None = Field(
        default=None, description="time-varying mean rate (a shape mapping); or give rate_rps"
    )

    @model_validator(mode="after")
    def _one_rate(self) -> Self:
        if (self.rate_rps is None) == (self.rate is None):
            raise PydanticCustomError(
                "rate_choice", "give exactly one of rate_rps (a number) or rate (a shape mapping)"
            )
        return self


class PoissonWorkload(_RateChoice):
    """Open-loop Poisson arrivals; with a shape, an exact non-homogeneous Poisson process."""

    kind: Literal["poisson"] = Field(description="workload kind selector")


class GammaWorkload(_RateChoice):
    """Open-loop gamma renewal arrivals: bursty (cv > 1) or regular (cv < 1); cv = 1 is Poisson.

    With a rate shape the renewal process runs in operational time (the integral of the rate), so the
    mean rate follows the shape and the cv holds wherever the rate is locally constant.
    """

    kind: Literal["gamma"] = Field(description="workload kind selector")
    cv: float = Field(gt=0, description="coefficient of variation of inter-arrival times (1 = Poisson)")


class MmppWorkload(_TokensChoice):
    """Markov-modulated Poisson arrivals: Poisson at the current state's rate; states switch at random.

    Give either ``mean_sojourn_s`` (on leaving a state the next is uniform among the others; with two
    states it simply alternates) or a full generator matrix ``transition_rates_per_s``.
    """

    kind: Literal["mmpp"] = Field(description="workload kind selector")
    rates_rps: list[NonNegative] = Field(min_length=2, description="arrival rate in each state")
    mean_sojourn_s: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="mean time spent in each state per visit (exponential); or give transition_rates_per_s",
    )
    transition_rates_per_s: list[list[float]] | None = Field(
        default=None,
        description="generator matrix Q: Q[i][j] ≥ 0 is the rate of jumping from i to j; "
        "each row sums to 0 (the diagonal is minus the exit rate); the chain must be irreducible",
    )

    @field_validator("mean_sojourn_s")
    @classmethod
    def _sojourn_length(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        rates = info.data.get("rates_rps")
        if v is not None and rates is not None and len(v) != len(rates):
            raise PydanticCustomError("length", "needs one entry per state ({n})", {"n": len(rates)})
        return v

    @field_validator("transition_rates_per_s")
    @classmethod
    def _generator(cls, q: list[list[float]] | None, info: ValidationInfo) -> list[list[float]] | None:
        rates = info.data.get("rates_rps")
        if q is None or rates is None:
            return q
        n = len(rates)
        if len(q) != n or any(len(row) != n for row in q):
            raise PydanticCustomError(
                "shape", "must be a {n}×{n} matrix (one row and column per state)", {"n": n}
            )
        for i, row in enumerate(q):
            if any(x < 0 for j, x in enumerate(row) if j != i):
                raise PydanticCustomError("offdiag", "off-diagonal entries must be ≥ 0 (row {i})", {"i": i})
            exit_rate = sum(x for j, x in enumerate(row) if j != i)
            if exit_rate <= 0:
                raise PydanticCustomError(
                    "absorbing", "state {i} has no way out (row {i} is all zero)", {"i": i}
                )
            if abs(row[i] + exit_rate) > 1e-9 * max(1.0, exit_rate):
                raise PydanticCustomError(
                    "rowsum", "row {i} must sum to 0 (diagonal = -{e})", {"i": i, "e": exit_rate}
                )
        reach = {0}
        frontier = [0]
        while frontier:
            i = frontier.pop()
            for j, x in enumerate(q[i]):
                if j != i and x > 0 and j not in reach:
                    reach.add(j)
                    frontier.append(j)
        back = {0}
        frontier = [0]
        while frontier:
            j = frontier.pop()
            for i in range(n):
                if i != j and q[i][j] > 0 and i not in back:
                    back.add(i)
                    frontier.append(i)
        if len(reach) < n or len(back) < n:
            raise PydanticCustomError(
                "reducible", "every state must be reachable from every other (irreducible chain)"
            )
        return q

    @model_validator(mode="after")
    def _one_dynamics(self) -> Self:
        if (self.mean_sojourn_s is None) == (self.transition_rates_per_s is None):
            raise PydanticCustomError(
                "mmpp_choice", "give exactly one of mean_sojourn_s or transition_rates_per_s"
            )
        return self


class ClosedLoopWorkload(_TokensChoice):
    """Locust-like closed-loop users: send, wait for the outcome, think, repeat.

    ``think_time_s: [1, 2]`` is Locust's ``wait_time = between(1, 2)``. With an LLM profile, ``tokens:``
    gives the prompt and output lengths of the requests, in send order (docs/llm.md, Closed-loop users).
    """

    kind: Literal["closed-loop"] = Field(description="workload kind selector")
    users: UsersShape = Field(
        description="number of users: a whole number (stored as a constant shape), or a shape in users "
        "(rounded to whole users)",
        json_schema_extra=also_accepts({"type": "integer", "minimum": 0, "maximum": MAX_SHAPE_USERS}),
    )
    think_time_s: tuple[NonNegative, NonNegative] = Field(
        description="[min, max]: each think time is uniform in this range (min ≤ max; equal = constant)"
    )

    @field_validator("users", mode="before")
    @classmethod
    def _number_to_constant(cls, v: object) -> object:
        # A plain number is the constant shape; checking it here (not through a union with int) gives one
        # clear error instead of one per union member.
        if isinstance(v, Mapping):
            return v
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:  # math.isfinite(10**400) overflows
            return {"kind": "constant", "users": v}
        if isinstance(v, float) and math.isfinite(v) and v >= 0 and v == int(v):
            return {"kind": "constant", "users": int(v)}
        raise PydanticCustomError("users", "must be a whole number ≥ 0 or a shape mapping")

    @field_validator("think_time_s")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise PydanticCustomError("think_order", "min must be ≤ max")
        return v


class TraceWorkload(_Model):
    """Replay of a request trace from a CSV file.

    Two formats, told apart by the header: the Azure LLM inference trace 2023
    (``TIMESTAMP,ContextTokens,GeneratedTokens``, times relative to the first request) and a plain
    ``time_s`` column (seconds as written, optional ``context_tokens``/``generated_tokens``).
    """

    kind: Literal["trace"] = Field(description="workload kind selector")
    path: str = Field(
        min_length=1,
        description="CSV file, relative to the scenario file's directory, or "
        "'builtin:azure-llm-2023-conv' for the packaged Azure LLM 2023 conversation trace (CC-BY 4.0)",
    )
    time_scale: float = Field(
        default=1.0, gt=0, description="compression factor: 2 replays the trace twice as fast"
    )
    rate_multiplier: float = Field(
        default=1.0,
        gt=0,
        description="mean copies per request: 0.5 keeps each with probability 0.5; 2.5 sends each 2 or 3 "
        "times (the extra copies spread within the gap to the next request)",
    )
    start_offset_s: float = Field(
        default=0.0, ge=0, description="trace time (before time_scale) at which the replay starts"
    )
    loop: bool = Field(
        default=False,
        description="repeat the trace back to back (period: its span plus one mean gap) to fill the run",
    )
    tokens: TokensConfig | None = Field(
        default=None,
        description="prompt and/or output lengths replacing the trace's own token columns (LLM "
        "profiles only); default: the trace's columns",
    )


WorkloadConfig = Annotated[
    PoissonWorkload | GammaWorkload | MmppWorkload | ClosedLoopWorkload | TraceWorkload,
    Field(discriminator="kind"),
]
"""The ``workload:`` section: one of the five kinds, discriminated on ``kind``."""

BUILTIN_TRACES: dict[str, str] = {"azure-llm-2023-conv": "azure_llm_2023_conv.csv"}
"""``builtin:<name>`` trace names and their files in ``gpuscale/data``."""
