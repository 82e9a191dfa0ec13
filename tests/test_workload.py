"""The workload layer: arrival processes, user schedules and trace replay."""

from __future__ import annotations

import math
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import parse_yaml, validate
from gpuscale.config.workload import WorkloadConfig
from gpuscale.sim.workload import (
    BLOCK_S,
    ArrivalSource,
    Workload,
    build_workload,
    load_trace,
    parse_trace_csv,
)

ADAPTER: TypeAdapter[WorkloadConfig] = TypeAdapter(WorkloadConfig)
AZURE = "builtin:azure-llm-2023-conv"
AZURE_ROWS = 19_366  # data rows in the packaged file (its README rounds this to 19,365)


def config(spec: str | dict[str, Any]) -> Any:
    data = parse_yaml(spec, "test.yaml") if isinstance(spec, str) else spec
    return validate(ADAPTER, data, "test.yaml", "workload")


def build(
    spec: str | dict[str, Any], *, seed: int = 7, duration_s: float = 600.0, base_dir: Path | None = None
) -> Workload:
    return build_workload(
        config(spec), seed=seed, duration_s=duration_s, source="test.yaml", base_dir=base_dir
    )


def source(spec: str | dict[str, Any], **kw: Any) -> ArrivalSource:
    src = build(spec, **kw).open_loop
    assert src is not None
    return src


def run(spec: str | dict[str, Any], t_end: float, **kw: Any) -> np.ndarray:
    return source(spec, **kw).arrivals(0.0, t_end)


def run_chunked(spec: str | dict[str, Any], cuts: list[float], t_end: float, **kw: Any) -> np.ndarray:
    src = source(spec, **kw)
    edges = [0.0, *sorted(c for c in cuts if 0.0 < c < t_end), t_end]
    parts = [src.arrivals(a, b) for a, b in pairwise(edges)]
    for part, (a, b) in zip(parts, pairwise(edges), strict=True):
        assert np.all((part >= a) & (part < b))
    return np.concatenate(parts)


# One line of YAML per kind and shape: the documented forms, all exercised below.
OPEN_LOOP = [
    "{kind: poisson, rate_rps: 50}",
    "{kind: poisson, rate: {kind: constant, rate_rps: 50}}",
    "{kind: poisson, rate: {kind: step, levels: [[0, 20], [100, 80], [250, 10]]}}",
    "{kind: poisson, rate: {kind: ramp, from_rps: 5, to_rps: 100, start_s: 50, end_s: 400}}",
    "{kind: poisson, rate: {kind: ramp, from_rps: 5, to_rps: 100, end_s: 400, steps: 8}}",
    "{kind: poisson, rate: {kind: sinusoid, mean_rps: 50, amplitude_rps: 30, period_s: 200}}",
    "{kind: poisson, rate: {kind: sinusoid, mean_rps: 50, amplitude_rps: 50, period_s: 90, phase_s: 7}}",
    "{kind: poisson, rate: {kind: sinusoid, mean_rps: 50, amplitude_rps: 30, period_s: 200, "
    "steps_per_period: 10}}",
    "{kind: poisson, rate: {kind: diurnal, trough_rps: 5, peak_rps: 80, peak_hour: 14, period_s: 480}}",
    "{kind: poisson, rate: {kind: spike, base_rps: 10, peak_rps: 120, start_s: 100, rise_s: 20, hold_s: 60, "
    "fall_s: 40}}",
    "{kind: poisson, rate: {kind: piecewise-linear, points: [[0, 10], [100, 60], [100, 5], [300, 40]]}}",
    "{kind: poisson, rate: {kind: random-levels, min_rps: 10, max_rps: 90, interval_s: 45}}",
    "{kind: gamma, rate_rps: 50, cv: 3}",
    "{kind: gamma, rate_rps: 50, cv: 0.3}",
    "{kind: gamma, rate: {kind: sinusoid, mean_rps: 40, amplitude_rps: 40, period_s: 150}, cv: 2}",
    "{kind: mmpp, rates_rps: [10, 100], mean_sojourn_s: [20, 5]}",
    "{kind: mmpp, rates_rps: [0, 30, 90], transition_rates_per_s: [[-0.2, 0.2, 0], [0.1, -0.2, 0.1], "
    "[0, 0.5, -0.5]]}",
    f"{{kind: trace, path: '{AZURE}'}}",
    f"{{kind: trace, path: '{AZURE}', time_scale: 8, rate_multiplier: 2.5, loop: true, "
    "start_offset_s: 3000}",
    f"{{kind: trace, path: '{AZURE}', time_scale: 4, rate_multiplier: 0.5}}",
]
SEEDED = [s for s in OPEN_LOOP if "kind: trace" not in s or "rate_multiplier" in s]


# ---------------------------------------------------------------------------------------------------------
# Chunking invariance and determinism
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", OPEN_LOOP)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.floats(min_value=0.0, max_value=600.0, allow_nan=False), max_size=40))
def test_arrivals_do_not_depend_on_how_the_run_is_cut(spec: str, cuts: list[float]) -> None:
    whole = run(spec, 600.0)
    assert np.array_equal(run_chunked(spec, cuts, 600.0), whole)
    assert np.all(np.diff(whole) >= 0)
    assert whole.dtype == np.float64


def test_thousands_of_irregular_calls_give_the_same_arrivals_as_one() -> None:
    spec = (
        "{kind: gamma, rate: {kind: spike, base_rps: 200, peak_rps: 900, start_s: 700, hold_s: 300}, cv: 1.7}"
    )
    rng = np.random.default_rng(3)
    cuts = list(np.cumsum(rng.exponential(0.9, size=4000)))
    whole = run(spec, 3600.0)
    assert len(whole) > 500_000
    assert np.array_equal(run_chunked(spec, cuts, 3600.0), whole)


@pytest.mark.parametrize("spec", OPEN_LOOP)
def test_same_seed_same_arrivals(spec: str) -> None:
    assert np.array_equal(run(spec, 300.0, seed=11), run(spec, 300.0, seed=11))


@pytest.mark.parametrize("spec", SEEDED)
def test_different_seeds_differ(spec: str) -> None:
    a, b = run(spec, 300.0, seed=1), run(spec, 300.0, seed=2)
    assert len(a) > 0
    assert len(a) != len(b) or not np.array_equal(a, b)


def test_a_plain_trace_replay_is_the_trace_whatever_the_seed() -> None:
    spec = f"{{kind: trace, path: '{AZURE}'}}"
    assert np.array_equal(run(spec, 4000.0, seed=1), run(spec, 4000.0, seed=2))


def test_intervals_must_move_forward() -> None:
    src = source("{kind: poisson, rate_rps: 10}")
    src.arrivals(0.0, 10.0)
    with pytest.raises(ValueError, match="move forward"):
        src.arrivals(5.0, 20.0)
    with pytest.raises(ValueError, match="t0 ≤ t1"):
        src.arrivals(30.0, 20.0)
    assert len(src.arrivals(10.0, 10.0)) == 0


def test_returned_arrays_are_read_only() -> None:
    out = source("{kind: poisson, rate_rps: 10}").arrivals(0.0, 100.0)
    with pytest.raises(ValueError):
        out[0] = 1.0


def test_memory_holds_one_block_not_the_run() -> None:
    src = source("{kind: poisson, rate_rps: 500}")
    t = 0.0
    while t < 3600.0:
        src.arrivals(t, t + 7.3)
        t += 7.3
    assert len(src._buf) < 2 * 500 * BLOCK_S


# ---------------------------------------------------------------------------------------------------------
# Poisson, time-varying rates
# ---------------------------------------------------------------------------------------------------------


def test_poisson_count_and_inter_arrival_cv() -> None:
    rate, t_end = 200.0, 3600.0
    a = run(f"{{kind: poisson, rate_rps: {rate}}}", t_end)
    mean = rate * t_end
    assert abs(len(a) - mean) < 4 * math.sqrt(mean)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.01)
    assert a[0] >= 0 and a[-1] < t_end


def test_zero_rate_gives_no_arrivals() -> None:
    assert len(run("{kind: poisson, rate_rps: 0}", 600.0)) == 0
    assert len(run("{kind: gamma, rate_rps: 0, cv: 2}", 600.0)) == 0


def window_counts(a: np.ndarray, width: float, t_end: float) -> np.ndarray:
    return np.histogram(a, bins=np.arange(0.0, t_end + width / 2, width))[0]


def expected_counts(w: Workload, width: float, t_end: float, step: float = 0.01) -> np.ndarray:
    grid = np.arange(0.0, t_end, step) + step / 2  # midpoint rule on the documented intensity
    lam = np.array([w.expected_rate_rps(float(t)) for t in grid])
    return np.asarray(lam.reshape(-1, round(width / step)).sum(axis=1) * step)


@pytest.mark.parametrize("spec", [s for s in OPEN_LOOP if s.startswith("{kind: poisson, rate:")])
def test_window_counts_follow_the_rate_shape(spec: str) -> None:
    t_end, width = 600.0, 30.0
    w = build(spec, duration_s=t_end)
    assert w.open_loop is not None
    counts = window_counts(w.open_loop.arrivals(0.0, t_end), width, t_end)
    expect = expected_counts(w, width, t_end)
    # Each window count is Poisson; 5 standard deviations (plus the midpoint rule's error at jumps).
    assert np.all(np.abs(counts - expect) <= 5 * np.sqrt(expect) + 0.02 * expect + 1)


def test_sinusoid_peaks_and_troughs_where_the_formula_puts_them() -> None:
    # mean 100, amplitude 80, period 400 s, phase 50 s: peak at 150 s (+400k), trough at 350 s.
    w = build(
        "{kind: poisson, rate: {kind: sinusoid, mean_rps: 100, amplitude_rps: 80, period_s: 400, "
        "phase_s: 50}}",
        duration_s=1600.0,
    )
    assert w.expected_rate_rps(150.0) == pytest.approx(180.0)
    assert w.expected_rate_rps(350.0) == pytest.approx(20.0)
    assert w.open_loop is not None
    counts = window_counts(w.open_loop.arrivals(0.0, 1600.0), 20.0, 1600.0)
    per_cycle = counts.reshape(4, 20)
    assert np.all(np.argmax(per_cycle, axis=1) == 7)  # the window [140, 160) of each cycle
    assert np.all(np.argmin(per_cycle, axis=1) == 17)  # [340, 360)


def test_diurnal_peak_hour_and_compressed_day() -> None:
    # A day compressed into 2400 s (100 s per hour), peak at 14:00, the run starting at 06:00.
    w = build(
        "{kind: poisson, rate: {kind: diurnal, trough_rps: 10, peak_rps: 90, peak_hour: 14, "
        "start_hour: 6, period_s: 2400}}"
    )
    assert w.expected_rate_rps(800.0) == pytest.approx(90.0)
    assert w.expected_rate_rps(2000.0) == pytest.approx(10.0)
    assert w.expected_rate_rps(0.0) == pytest.approx(50.0 + 40.0 * math.cos(2 * math.pi * -8 / 24))


def test_step_ramp_spike_and_piecewise_values() -> None:
    step = build("{kind: poisson, rate: {kind: step, levels: [[0, 20], [100, 80], [250, 10]]}}")
    assert [step.expected_rate_rps(t) for t in (0, 99.9, 100, 249, 250, 9999)] == [20, 20, 80, 80, 10, 10]
    ramp = build("{kind: poisson, rate: {kind: ramp, from_rps: 10, to_rps: 110, start_s: 100, end_s: 200}}")
    assert [ramp.expected_rate_rps(t) for t in (0, 100, 150, 200, 500)] == pytest.approx(
        [10, 10, 60, 110, 110]
    )
    stairs = build("{kind: poisson, rate: {kind: ramp, from_rps: 10, to_rps: 40, end_s: 400, steps: 4}}")
    assert [stairs.expected_rate_rps(t) for t in (0, 99, 100, 250, 399, 1000)] == pytest.approx(
        [10, 10, 20, 30, 40, 40]
    )
    spike = build(
        "{kind: poisson, rate: {kind: spike, base_rps: 10, peak_rps: 110, start_s: 100, "
        "rise_s: 20, hold_s: 60, fall_s: 40}}"
    )
    assert [spike.expected_rate_rps(t) for t in (99, 110, 120, 179, 200, 220, 300)] == pytest.approx(
        [10, 60, 110, 110, 60, 10, 10]
    )
    pl = build(
        "{kind: poisson, rate: {kind: piecewise-linear, points: [[10, 10], [100, 100], [100, 5], [300, 45]]}}"
    )
    assert [pl.expected_rate_rps(t) for t in (0, 55, 99.99, 100, 200, 1000)] == pytest.approx(
        [10, 55, 99.99, 5, 25, 45]
    )


def test_piecewise_rate_from_a_csv_file_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "rates.csv").write_text("time_s,rps\n0,10\n100,50\n200,50\n", encoding="utf-8")
    w = build("{kind: poisson, rate: {kind: piecewise-linear, path: rates.csv}}", base_dir=tmp_path)
    assert [w.expected_rate_rps(t) for t in (0, 50, 150, 500)] == pytest.approx([10, 30, 50, 50])
    (tmp_path / "bad.csv").write_text("time_s,rps\n0,10\n100,-5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        build("{kind: poisson, rate: {kind: piecewise-linear, path: bad.csv}}", base_dir=tmp_path)
    assert (err.value.source, err.value.key, err.value.value, err.value.line) == (
        str(tmp_path / "bad.csv"),
        "rps",
        "-5",
        3,
    )


def test_random_levels_hold_for_each_interval_and_depend_on_the_seed() -> None:
    spec = "{kind: poisson, rate: {kind: random-levels, min_rps: 10, max_rps: 90, interval_s: 45}}"
    w1, w2 = build(spec, seed=1), build(spec, seed=2)
    levels = [w1.expected_rate_rps(45.0 * k + 1.0) for k in range(13)]
    assert all(10 <= v <= 90 for v in levels)
    assert len(set(levels)) == 13
    assert all(w1.expected_rate_rps(45.0 * k + 44.0) == levels[k] for k in range(13))
    assert levels != [w2.expected_rate_rps(45.0 * k + 1.0) for k in range(13)]


# ---------------------------------------------------------------------------------------------------------
# Bursty arrivals
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cv", [0.25, 1.0, 2.0, 4.0])
def test_gamma_inter_arrival_cv_and_rate(cv: float) -> None:
    rate, t_end = 500.0, 3600.0
    a = run(f"{{kind: gamma, rate_rps: {rate}, cv: {cv}}}", t_end)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    # The count of a renewal process has a standard deviation of about cv·√(rate·T).
    assert abs(len(a) - rate * t_end) < 5 * cv * math.sqrt(rate * t_end)


def test_gamma_with_a_shape_follows_the_shape() -> None:
    w = build("{kind: gamma, rate: {kind: step, levels: [[0, 100], [300, 400]]}, cv: 2}", duration_s=600)
    assert w.open_loop is not None
    a = w.open_loop.arrivals(0.0, 600.0)
    first, second = np.sum(a < 300), np.sum(a >= 300)
    assert abs(first - 30_000) < 5 * 2 * math.sqrt(30_000)
    assert abs(second - 120_000) < 5 * 2 * math.sqrt(120_000)


@pytest.mark.parametrize(
    ("spec", "mean_rate"),
    [
        # Two states, mean sojourns 20 s and 5 s: π = (0.8, 0.2), mean rate 0.8·10 + 0.2·100 = 28.
        ("{kind: mmpp, rates_rps: [10, 100], mean_sojourn_s: [20, 5]}", 28.0),
        # Birth-death chain: π ∝ (1, 2, 0.4), so mean rate = (0·1 + 30·2 + 90·0.4) / 3.4.
        (
            "{kind: mmpp, rates_rps: [0, 30, 90], transition_rates_per_s: [[-0.2, 0.2, 0], [0.1, -0.2, 0.1], "
            "[0, 0.5, -0.5]]}",
            96.0 / 3.4,
        ),
    ],
)
def test_mmpp_long_run_rate_is_the_stationary_mean(spec: str, mean_rate: float) -> None:
    t_end = 20_000.0
    w = build(spec, duration_s=t_end)
    assert w.expected_rate_rps(123.0) == pytest.approx(mean_rate)
    assert w.open_loop is not None
    a = w.open_loop.arrivals(0.0, t_end)
    assert len(a) / t_end == pytest.approx(mean_rate, rel=0.06)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() > 1.2  # modulation makes it burstier than Poisson


# ---------------------------------------------------------------------------------------------------------
# Closed-loop users: the four KIS-S patterns and friends
# ---------------------------------------------------------------------------------------------------------


def users(spec: str, duration_s: float, seed: int = 7) -> Any:
    w = build(f"{{kind: closed-loop, users: {spec}, think_time_s: [1, 2]}}", duration_s=duration_s, seed=seed)
    assert w.open_loop is None and w.closed_loop is not None
    return w


def test_kis_s_spike_10_100_10_over_15_minutes() -> None:
    w = users("{kind: spike, base_users: 10, peak_users: 100, start_s: 270, hold_s: 360}", 900)
    s = w.closed_loop.schedule
    assert [s.users_at(t) for t in (0, 269.9, 270, 629.9, 630, 899)] == [10, 10, 100, 100, 10, 10]
    assert s.change_times(0, 900) == [270.0, 630.0]
    assert s.change_times(270.0, 630.0) == [270.0]
    assert s.change_times(271.0, 630.0) == []


def test_kis_s_ramp_1_to_100_in_20_steps_over_20_minutes() -> None:
    s = users("{kind: ramp, from_users: 1, to_users: 100, end_s: 1200, steps: 20}", 1200).closed_loop.schedule
    expected = [round(1 + 99 * k / 19 + 1e-9) for k in range(20)]
    assert [s.users_at(60.0 * k + 30.0) for k in range(20)] == expected
    assert expected[0] == 1 and expected[-1] == 100
    assert s.change_times(0, 1200) == [60.0 * k for k in range(1, 20)]
    assert s.users_at(5000.0) == 100


def test_kis_s_sinusoid_10_to_100_three_cycles_in_30_minutes() -> None:
    s = users(
        "{kind: sinusoid, mean_users: 55, amplitude_users: 45, period_s: 600, steps_per_period: 20}", 1800
    ).closed_loop.schedule
    counts = [s.users_at(30.0 * k + 15.0) for k in range(60)]
    assert counts == [math.floor(55 + 45 * math.sin(2 * math.pi * k / 20) + 0.5) for k in range(60)]
    assert min(counts) == 10 and max(counts) == 100
    assert counts[:20] == counts[20:40] == counts[40:]
    assert all(t % 30.0 == 0 for t in s.change_times(0, 1800))


def test_kis_s_random_10_to_100_every_30_s_for_25_minutes() -> None:
    s1 = users("{kind: random-levels, min_users: 10, max_users: 100, interval_s: 30}", 1500, seed=1)
    sched = s1.closed_loop.schedule
    counts = [sched.users_at(30.0 * k) for k in range(50)]
    assert all(10 <= c <= 100 for c in counts)
    assert all(sched.users_at(30.0 * k + 29.99) == counts[k] for k in range(50))
    assert all(t % 30.0 == 0 for t in sched.change_times(0, 1500))
    assert len(set(counts)) > 20
    other = users("{kind: random-levels, min_users: 10, max_users: 100, interval_s: 30}", 1500, seed=2)
    assert counts != [other.closed_loop.schedule.users_at(30.0 * k) for k in range(50)]


def test_continuous_user_shapes_change_at_half_user_crossings() -> None:
    s = users("{kind: ramp, from_users: 0, to_users: 4, start_s: 10, end_s: 50}", 100).closed_loop.schedule
    assert s.change_times(0, 100) == pytest.approx([15.0, 25.0, 35.0, 45.0])
    assert [s.users_at(t) for t in (14.99, 15.0, 44.99, 45.0, 99)] == [0, 1, 3, 4, 4]
    w = users("{kind: sinusoid, mean_users: 5, amplitude_users: 3, period_s: 100}", 200)
    sine = w.closed_loop.schedule
    for t in np.linspace(0.0, 199.0, 997):
        assert sine.users_at(float(t)) == math.floor(5 + 3 * math.sin(2 * math.pi * t / 100) + 0.5) or any(
            abs(t - c) < 1e-6 for c in sine.change_times(0, 200)
        )
    changes = sine.change_times(0, 200)
    assert all(sine.users_at(c) != sine.users_at(c - 1e-6) for c in changes)


def test_closed_loop_think_times_and_rate_bound() -> None:
    w = build("{kind: closed-loop, users: 30, think_time_s: [1, 3]}")
    assert w.closed_loop is not None
    assert (w.closed_loop.think_min_s, w.closed_loop.think_max_s) == (1.0, 3.0)
    assert w.closed_loop.schedule.users_at(123.0) == 30
    assert w.closed_loop.schedule.change_times(0, 1e6) == []
    assert w.expected_rate_rps(5.0) == pytest.approx(15.0)  # 30 users / 2 s mean think time
    assert build("{kind: closed-loop, users: 3, think_time_s: [0, 0]}").expected_rate_rps(1.0) == math.inf


# ---------------------------------------------------------------------------------------------------------
# Trace replay
# ---------------------------------------------------------------------------------------------------------


def test_builtin_azure_trace_loads_with_tokens() -> None:
    trace = load_trace(AZURE)
    assert trace.n_requests == AZURE_ROWS
    assert trace.span_s == pytest.approx(3501.72, abs=0.01)
    assert trace.times_s[0] == 0.0
    # Row 2 of the file: 2023-11-16 18:15:50.9951690, 396 tokens in, 109 out; 4.3145790 s after row 1.
    assert trace.times_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert trace.context_tokens is not None and trace.generated_tokens is not None
    assert (trace.context_tokens[1], trace.generated_tokens[1]) == (396, 109)
    a = run(f"{{kind: trace, path: '{AZURE}'}}", 4000.0)
    assert np.array_equal(a, trace.times_s)
    assert build(f"{{kind: trace, path: '{AZURE}'}}").trace is trace


@pytest.mark.parametrize(
    "shape",
    [
        "{kind: ramp, from_rps: 1, to_rps: 10, end_s: 60, steps: 1000001}",
        "{kind: sinusoid, mean_rps: 5, amplitude_rps: 2, period_s: 60, steps_per_period: 1000001}",
        "{kind: sinusoid, mean_rps: 5, amplitude_rps: 2, period_s: 60, steps_per_period: "
        + "1"
        + "0" * 400
        + "}",
    ],
)
def test_a_staircase_of_more_than_a_million_steps_is_refused(shape: str) -> None:
    # a ramp holds every level in memory; a 400-digit count overflowed the period's division (fuzzer)
    with pytest.raises(ConfigError) as err:
        validate(ADAPTER, parse_yaml(f"{{kind: poisson, rate: {shape}}}", "w.yaml"), "w.yaml")
    assert "steps" in str(err.value) and "less than or equal to 1000000" in str(err.value)


def test_a_timestamp_centuries_later_is_a_late_request_not_an_overflow() -> None:
    # 2023 to 9999 is 2.5e20 ns, past int64; the fuzzer found it (an OverflowError traceback)
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 00:00:00.5,10,5\n9999-12-31 23:59:59.999999999,10,5\n"
    trace = parse_trace_csv(text, "far.csv")
    assert trace.times_s[0] == 0.0
    span = (date(9999, 12, 31) - date(2023, 11, 16)).days * 86400.0 + 86399.999999999 - 0.5
    assert trace.times_s[1] == pytest.approx(span, rel=1e-12)


def test_time_scale_compresses_the_replay() -> None:
    a = run(f"{{kind: trace, path: '{AZURE}', time_scale: 2}}", 4000.0)
    assert len(a) == AZURE_ROWS
    assert a[-1] - a[0] == pytest.approx(3501.721937 / 2)


def test_rate_multiplier_thins_and_copies() -> None:
    half = run(f"{{kind: trace, path: '{AZURE}', rate_multiplier: 0.5}}", 4000.0)
    assert abs(len(half) - AZURE_ROWS / 2) < 4 * math.sqrt(AZURE_ROWS / 4)
    assert np.all(np.isin(half, load_trace(AZURE).times_s))
    double = run(f"{{kind: trace, path: '{AZURE}', rate_multiplier: 2}}", 4000.0)
    assert len(double) == 2 * AZURE_ROWS
    # Each request keeps its time, and its copy falls in the gap before the next request.
    tau = load_trace(AZURE).times_s
    assert np.all(np.isin(tau, double))
    assert np.all(np.histogram(double, bins=np.append(tau, tau[-1] + 10.0))[0] == 2)
    more = run(f"{{kind: trace, path: '{AZURE}', rate_multiplier: 2.5}}", 4000.0)
    assert abs(len(more) - 2.5 * AZURE_ROWS) < 4 * math.sqrt(0.25 * AZURE_ROWS)
    assert np.all(np.diff(more) >= 0)


def test_loop_and_start_offset() -> None:
    tau = load_trace(AZURE).times_s
    period = tau[-1] + tau[-1] / (len(tau) - 1)
    once = run(f"{{kind: trace, path: '{AZURE}'}}", 10_000.0)
    looped = run(f"{{kind: trace, path: '{AZURE}', loop: true}}", 10_000.0)
    assert len(once) == AZURE_ROWS
    assert np.sum(looped < 2 * period) == 2 * AZURE_ROWS
    assert np.array_equal(looped[AZURE_ROWS : 2 * AZURE_ROWS], tau + period)
    late = run(f"{{kind: trace, path: '{AZURE}', start_offset_s: 1000}}", 10_000.0)
    assert len(late) == np.sum(tau >= 1000)
    assert late[0] == pytest.approx(tau[tau >= 1000][0] - 1000)
    wrapped = run(f"{{kind: trace, path: '{AZURE}', start_offset_s: 3000, loop: true}}", period)
    assert len(wrapped) == AZURE_ROWS


def test_trace_expected_rate_counts_a_sliding_minute() -> None:
    w = build(f"{{kind: trace, path: '{AZURE}', time_scale: 2, rate_multiplier: 3}}")
    tau = load_trace(AZURE).times_s / 2
    for t in (30.0, 500.0, 1200.0):
        n = np.sum((tau >= t - 30) & (tau < t + 30))
        assert w.expected_rate_rps(t) == pytest.approx(3 * n / 60.0)
    assert w.expected_rate_rps(5000.0) == 0.0


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("body", "line", "key", "value", "allowed"),
    [
        (
            "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:4x.0,1,1\n",
            3,
            "TIMESTAMP",
            "2023-11-16 18:15:4x.0",
            "a timestamp like",
        ),
        (
            "2023-11-16 18:15:46.6805900,374,44\n2023-11-31 18:15:47.0,1,1\n",
            3,
            "TIMESTAMP",
            "2023-11-31 18:15:47.0",
            "a timestamp like",
        ),
        (
            "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.0,1,1\n2023-11-16 18:15:48.0,1\n",
            4,
            None,
            "2023-11-16 18:15:48.0,1",
            "3 comma-separated fields",
        ),
        (
            "2023-11-16 18:15:46.0,374,44\n2023-11-16 18:15:47.0,1,1\n2023-11-16 18:15:46.5,1,1\n",
            4,
            "TIMESTAMP",
            "2023-11-16 18:15:46.5",
            "non-decreasing order",
        ),
        ("2023-11-16 18:15:46.0,374,many\n", 2, "GeneratedTokens", "many", "a whole number of tokens"),
        # past int64 (the fuzzer found the OverflowError), and past what int() parses
        (
            "2023-11-16 18:15:46.0,99999999999999999999999,4\n",
            2,
            "ContextTokens",
            "99999999999999999999999",
            "from 0 to 2,147,483,647",
        ),
        (
            "2023-11-16 18:15:46.0,4," + "9" * 5000 + "\n",
            2,
            "GeneratedTokens",
            "9" * 5000,
            "from 0 to 2,147,483,647",
        ),
    ],
)
def test_bad_trace_rows_name_file_line_column_and_value(
    tmp_path: Path, body: str, line: int, key: str | None, value: str, allowed: str
) -> None:
    path = write(tmp_path, HEADER + body)
    with pytest.raises(ConfigError) as err:
        load_trace(str(path))
    e = err.value
    assert (e.source, e.line, e.key, e.value) == (str(path), line, key, value)
    assert allowed in e.allowed
    assert f"line {line}" in str(e)


@pytest.mark.parametrize(
    ("text", "line", "key", "allowed"),
    [
        ("", 1, None, "is empty"),
        (HEADER, 2, None, "no requests"),
        ("when,ContextTokens\n2023-11-16 18:15:46.0,3\n", 1, "TIMESTAMP", "a header with a TIMESTAMP column"),
    ],
)
def test_empty_trace_or_missing_column(
    tmp_path: Path, text: str, line: int, key: str | None, allowed: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_trace(str(path))
    assert (err.value.line, err.value.key) == (line, key)
    assert allowed in err.value.allowed


def test_slightly_out_of_order_timestamps_are_sorted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER + "2023-11-16 23:59:59.9995,1,2\n2023-11-16 23:59:59.9990,3,4\n2023-11-17 00:00:01,5,6\n",
    )
    trace = load_trace(str(path))
    assert trace.times_s.tolist() == pytest.approx([0.0, 0.0005, 1.001])
    assert trace.context_tokens is not None
    assert trace.context_tokens.tolist() == [3, 1, 5]


def test_plain_time_s_trace_relative_to_the_scenario(tmp_path: Path) -> None:
    write(tmp_path, "time_s,context_tokens\r\n0.5,10\r\n1.25,20\r\n4,30\r\n\r\n", "plain.csv")
    w = build("{kind: trace, path: plain.csv, loop: true}", base_dir=tmp_path)
    assert w.trace is not None and w.trace.generated_tokens is None
    assert w.open_loop is not None
    # Period = last time + mean gap = 4 + 1.75 = 5.75 s.
    assert w.open_loop.arrivals(0.0, 12.0).tolist() == pytest.approx([0.5, 1.25, 4, 6.25, 7.0, 9.75])
    write(tmp_path, "time_s\n1\nsoon\n", "bad.csv")
    with pytest.raises(ConfigError) as err:
        build("{kind: trace, path: bad.csv}", base_dir=tmp_path)
    assert (err.value.key, err.value.value, err.value.line) == ("time_s", "soon", 3)


def test_missing_trace_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build("{kind: trace, path: nowhere.csv}", base_dir=tmp_path)
    assert err.value.source == str(tmp_path / "nowhere.csv")
    assert "not found" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        build("{kind: trace, path: 'builtin:nope'}")
    assert (err.value.source, err.value.key, err.value.value) == (
        "test.yaml",
        "workload.path",
        "builtin:nope",
    )


# ---------------------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "key", "allowed"),
    [
        ("{kind: poisson, rate_rps: -3}", "workload.rate_rps", "greater than or equal to 0"),
        (
            "{kind: poisson, rate: {kind: sinusoid, mean_rps: 10, amplitude_rps: 20, period_s: 60}}",
            "workload.rate.amplitude_rps",
            "≤ mean_rps",
        ),
        (
            "{kind: poisson, rate: {kind: step, levels: [[0, 5], [10, -1]]}}",
            "workload.rate.levels[1][1]",
            "greater than or equal to 0",
        ),
        (
            "{kind: poisson, rate: {kind: ramp, from_rps: 1, to_rps: 2, start_s: 10, end_s: 5}}",
            "workload.rate.end_s",
            "> start_s",
        ),
        ("{kind: poisson}", "workload", "exactly one of rate_rps"),
        (
            "{kind: poisson, rate_rps: 5, rate: {kind: constant, rate_rps: 5}}",
            "workload",
            "exactly one of rate_rps",
        ),
        ("{kind: poisson, rate: {kind: wobble}}", "workload.rate", "unknown kind"),
        ("{kind: gamma, rate_rps: 5, cv: 0}", "workload.cv", "greater than 0"),
        ("{kind: gamma, rate_rps: 5, cv: -1}", "workload.cv", "greater than 0"),
        (
            "{kind: closed-loop, users: 10, think_time_s: [3, 1]}",
            "workload.think_time_s",
            "min must be ≤ max",
        ),
        ("{kind: closed-loop, users: -1, think_time_s: [1, 2]}", "workload.users", "whole number ≥ 0"),
        (
            "{kind: closed-loop, users: {kind: random-levels, min_users: 50, max_users: 10, interval_s: 30}, "
            "think_time_s: [1, 2]}",
            "workload.users.max_users",
            "≥ min_users",
        ),
        (
            "{kind: mmpp, rates_rps: [1, 2], mean_sojourn_s: [1]}",
            "workload.mean_sojourn_s",
            "one entry per state",
        ),
        (
            "{kind: mmpp, rates_rps: [1, 2, 3], transition_rates_per_s: [[-1, 1, 0], [1, -1, 0], [0, 1, -1]]}",
            "workload.transition_rates_per_s",
            "irreducible",
        ),
        ("{kind: trace, path: x.csv, time_scale: 0}", "workload.time_scale", "greater than 0"),
        ("{kind: poisson, rate_rps: .inf}", "workload.rate_rps", "finite"),
    ],
)
def test_bad_configs_are_rejected_with_the_key(spec: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(spec)
    assert err.value.key == key
    assert allowed in err.value.allowed


def test_a_plain_user_count_is_the_constant_shape() -> None:
    cfg = config("{kind: closed-loop, users: 12, think_time_s: [1, 2]}")
    assert cfg.users.kind == "constant" and cfg.users.users == 12


def test_too_fine_a_random_level_grid_is_refused() -> None:
    with pytest.raises(ConfigError, match="at most"):
        build(
            "{kind: poisson, rate: {kind: random-levels, min_rps: 1, max_rps: 2, interval_s: 0.0001}}",
            duration_s=86_400.0,
        )


def test_a_trace_at_a_single_instant_cannot_loop(tmp_path: Path) -> None:
    write(tmp_path, "time_s\n0\n0\n", "burst.csv")
    assert len(source("{kind: trace, path: burst.csv}", base_dir=tmp_path).arrivals(0, 10)) == 2
    with pytest.raises(ConfigError) as err:
        build("{kind: trace, path: burst.csv, loop: true}", base_dir=tmp_path)
    assert (err.value.key, err.value.value) == ("workload.loop", True)
