"""``predictive``: forecasters on known signals, then the policy on compressed periodic days.

Scenarios are compressed: a one-hour "season" with 60-s history buckets stands for seed 001's week,
so two seasons of history (what the seasonal rule needs for "7 and 14 days ago") take two hours.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, SignalValue
from gpuscale.policies.predictive import (
    Forecaster,
    HoltWintersState,
    PredictiveConfig,
    PredictivePolicy,
    PredictiveState,
    RateHistory,
    add_sample,
    fft_forecast,
    holt_winters_forecast,
    holt_winters_init,
    holt_winters_update,
    quantile,
    seasonal_forecast,
)
from gpuscale.policies.registry import load_preset

HOUR = 3600.0


def policy(**overrides: object) -> PredictivePolicy:
    data = {
        "kind": "predictive",
        "max_replicas": 20,
        "capacity_rps_per_replica": 100,
        "season_s": HOUR,
        **overrides,
    }
    return validate(PredictiveConfig, data, "test").build()


def snap(
    p: PredictivePolicy, t: float, current: int, rate: float | None, age_s: float = 0.0
) -> MetricsSnapshot:
    value = SignalValue(rate, age_s) if rate is not None else SignalValue.missing("no scrape")
    return MetricsSnapshot(
        time_s=t, current_replicas=current, ready=current, signals=dict.fromkeys(p.signals, value)
    )


def run(
    p: PredictivePolicy, load: Callable[[float], float], *, until_s: float, start: int = 2
) -> tuple[list[tuple[float, int, Decision]], PredictiveState]:
    state = p.initial_state()
    current, out = start, []
    for i in range(int(until_s / p.sync_period_s) + 1):
        t = i * p.sync_period_s
        d, state = p.decide(snap(p, t, current, load(t)), state)
        out.append((t, current, d))
        if d.desired_replicas is not None:
            current = d.desired_replicas
    return out, state


def first_time(timeline: list[tuple[float, int, Decision]], at_least: int, after_s: float) -> float:
    return next(t for t, _, d in timeline if t >= after_s and (d.desired_replicas or 0) >= at_least)


def square_wave(t: float) -> float:
    """150 rps, and 450 rps for minutes 30-40 of every hour."""
    return 450.0 if 30 * 60 <= t % HOUR < 40 * 60 else 150.0


def sinusoid(t: float) -> float:
    return 400.0 + 300.0 * math.sin(2 * math.pi * t / HOUR)


# --- pieces -------------------------------------------------------------------------------------


def test_quantile_is_linear_between_order_statistics() -> None:
    assert quantile([420.0, 500.0], 0.9) == pytest.approx(492.0)
    assert quantile([500.0, 420.0], 0.9) == pytest.approx(492.0)
    assert quantile([7.0], 0.9) == 7.0
    values = [3.0, 1.0, 4.0, 1.5, 9.0]
    assert quantile(values, 0.9) == pytest.approx(float(np.percentile(values, 90)))


def test_seed_rule_worked_example() -> None:
    # 420 rps a season ago, 500 rps two seasons ago: p90 = 492; x 1.2 = 590.4; / 100 -> 6 replicas.
    history = RateHistory(first_bucket=0, values=(500.0, 0.0, 420.0, 0.0), open_bucket=4)
    assert seasonal_forecast(history, 4, 1, season_buckets=2, seasons=(1, 2), q=0.9) == pytest.approx(
        (492.0,)
    )
    assert math.ceil(492.0 * 1.2 / 100) == 6


def test_seasonal_forecast_waits_for_every_lag() -> None:
    history = RateHistory(first_bucket=0, values=(1.0, 2.0, 3.0), open_bucket=3)
    assert seasonal_forecast(history, 3, 1, season_buckets=2, seasons=(1, 2), q=0.9) is None


def test_history_buckets_average_fill_gaps_and_stay_bounded() -> None:
    h = RateHistory()
    h, done = add_sample(h, 0, 10.0, max_buckets=4)
    h, done2 = add_sample(h, 0, 20.0, max_buckets=4)
    assert (done, done2, h.values, h.open_bucket) == (0, 0, (), 0)
    h, done = add_sample(h, 1, 40.0, max_buckets=4)
    assert (done, h.first_bucket, h.values) == (1, 0, (15.0,))
    h, done = add_sample(h, 4, 7.0, max_buckets=4)  # buckets 2 and 3 saw nothing: the last value repeats
    assert (done, h.first_bucket, h.values) == (3, 0, (15.0, 40.0, 40.0, 40.0))
    h, done = add_sample(h, 6, 1.0, max_buckets=4)
    assert (h.first_bucket, h.values, h.last_bucket) == (2, (40.0, 40.0, 7.0, 7.0), 5)
    assert h.at(1) is None and h.at(4) == 7.0


def test_holt_winters_on_a_pure_sinusoid_forecasts_within_a_few_percent() -> None:
    m = 60
    x = [400 + 300 * math.sin(2 * math.pi * (i + 0.5) / m) for i in range(3 * m)]
    hw = holt_winters_update(holt_winters_init(x[:m], 0), x[m:], alpha=0.3, beta=0.01, gamma=0.5)
    forecast = holt_winters_forecast(hw, 3 * m, 30)
    truth = [400 + 300 * math.sin(2 * math.pi * (i + 0.5) / m) for i in range(3 * m, 3 * m + 30)]
    assert max(abs(f - t) / t for f, t in zip(forecast, truth, strict=True)) < 0.02


def test_holt_winters_follows_a_level_shift() -> None:
    # The same daily shape, 40 rps more traffic from the third season on: after three more seasons the
    # forecast has followed the new level.
    m = 48

    def shape(i: int) -> float:
        return 200 + 100 * math.sin(2 * math.pi * i / m)

    x = [shape(i) + (40.0 if i >= 2 * m else 0.0) for i in range(5 * m)]
    hw = holt_winters_update(holt_winters_init(x[:m], 0), x[m:], alpha=0.3, beta=0.01, gamma=0.5)
    forecast = holt_winters_forecast(hw, 5 * m, m)
    truth = [shape(i) + 40.0 for i in range(5 * m, 6 * m)]
    assert max(abs(f - t) / t for f, t in zip(forecast, truth, strict=True)) < 0.05


def test_holt_winters_needs_initialising() -> None:
    with pytest.raises(ValueError, match="not initialised"):
        holt_winters_forecast(HoltWintersState(), 0, 1)


def test_fft_denoises_and_repeats_the_cycle() -> None:
    m = 60
    rng = np.random.default_rng(7)  # fixed noise for the input only
    clean = [400 + 300 * math.sin(2 * math.pi * i / m) for i in range(2 * m)]
    noisy = tuple(c + float(rng.normal(0, 30)) for c in clean)
    history = RateHistory(first_bucket=0, values=noisy, open_bucket=2 * m)
    forecast = fft_forecast(history, 2 * m, m, season_buckets=m, seasons=2, components=2)
    assert forecast is not None
    truth = [400 + 300 * math.sin(2 * math.pi * i / m) for i in range(m)]
    assert max(abs(f - t) for f, t in zip(forecast, truth, strict=True)) < 25  # noise sd 30, de-noised
    assert fft_forecast(history, 2 * m, m, season_buckets=m, seasons=2, components=2) == forecast
    short = RateHistory(first_bucket=0, values=noisy[:m], open_bucket=m)
    assert fft_forecast(short, m, 5, season_buckets=m, seasons=2, components=2) is None


# --- the policy ---------------------------------------------------------------------------------


def test_no_forecast_yet_is_purely_reactive() -> None:
    p = policy()
    d, state = p.decide(snap(p, 0, 2, 450.0), p.initial_state())
    assert d == Decision(
        5,
        Reason.SCALE_UP,
        "reactive 450 rps / 100 per replica = 5; no forecast yet (seasonal: 0 buckets of history) -> max = 5",
    )
    assert state.forecast == ()


def test_seasonal_scales_up_a_lead_time_before_the_load_rises() -> None:
    p = policy(lead_time_s=300)
    timeline, _ = run(p, square_wave, until_s=3 * HOUR)
    rise = 2 * HOUR + 30 * 60  # third hour: two seasons of history exist
    ahead = first_time(timeline, 5, after_s=2 * HOUR)
    assert ahead == rise - 300
    _, current, d = next(row for row in timeline if row[0] == ahead)
    assert (current, d.desired_replicas, d.reason) == (2, 6, Reason.PREDICTED)
    assert d.message == (
        "reactive 150 rps / 100 per replica = 2; forecast peak 450.0 rps within 300 s (seasonal) x 1.2"
        " / 100 rps per replica = 6 -> max = 6"
    )
    # In the first two hours there was no forecast: the scale-up came with the load.
    assert first_time(timeline, 5, after_s=0) == 30 * 60


def test_scale_in_after_the_peak_is_reactive_and_stabilized() -> None:
    p = policy(lead_time_s=300)
    timeline, _ = run(p, square_wave, until_s=3 * HOUR)
    fall = 2 * HOUR + 40 * 60
    downs = [
        (t, d.desired_replicas, d.reason) for t, n, d in timeline if t > fall - 60 and d.desired_replicas != n
    ]
    # The last recommendation of 6 was at fall - 15 s; 300 s later it leaves the window.
    assert downs[0] == (fall - 15 + 300, 2, Reason.SCALE_DOWN)


def test_never_scales_in_on_a_forecast() -> None:
    # In the third hour the peak runs 10 minutes longer than history says: the forecast drops at
    # minute 40, the load does not. The count never falls below what the live load needs.
    def load(t: float) -> float:
        late = t >= 2 * HOUR and 30 * 60 <= t % HOUR < 50 * 60
        return 450.0 if late else square_wave(t)

    p = policy(lead_time_s=300)
    timeline, _ = run(p, load, until_s=3 * HOUR)
    for t, _, d in timeline:
        if 2 * HOUR + 30 * 60 <= t < 2 * HOUR + 50 * 60:
            assert d.desired_replicas is not None and d.desired_replicas >= 5, (t, d)


def test_forecast_up_on_a_quiet_day_is_kept_only_through_the_window() -> None:
    # History says a peak comes at minute 30; in the third hour it does not come. The policy still
    # scales up ahead (it cannot know), and scales back in reactively once the forecast passes.
    def load(t: float) -> float:
        return 150.0 if t >= 2 * HOUR else square_wave(t)

    p = policy(lead_time_s=300)
    timeline, _ = run(p, load, until_s=3 * HOUR)
    reasons = [
        (t, d.desired_replicas, d.reason) for t, n, d in timeline if t >= 2 * HOUR and d.desired_replicas != n
    ]
    assert reasons[0] == (2 * HOUR + 25 * 60, 6, Reason.PREDICTED)
    assert reasons[1][1:] == (2, Reason.SCALE_DOWN)
    assert reasons[1][0] > 2 * HOUR + 40 * 60


@pytest.mark.parametrize("forecaster", ["seasonal", "holt-winters", "fft"])
def test_every_forecaster_leads_the_load_by_about_the_lead_time(forecaster: str) -> None:
    # No buffer, so the only difference to the reactive floor is the look-ahead: on the rising side of
    # the sinusoid (minute 45 to minute 15 of the next hour) each step up comes about 300 s before the
    # load needs it, give or take one 60-s history bucket.
    p = policy(forecaster=forecaster, lead_time_s=300, buffer_fraction=0, scale_down_stabilization_s=0)
    timeline, _ = run(p, sinusoid, until_s=3.5 * HOUR, start=1)
    rising = 2 * HOUR + 45 * 60
    for replicas in (5, 6, 7):
        ahead = first_time(timeline, replicas, after_s=rising)
        needed = next(
            t for t in np.arange(rising, 3.5 * HOUR, 15.0) if math.ceil(sinusoid(t) / 100) >= replicas
        )
        assert 240 <= needed - ahead <= 360, (replicas, needed, ahead)


def test_history_stays_bounded() -> None:
    p = policy(forecaster="seasonal")
    _, state = run(p, square_wave, until_s=4 * HOUR)
    assert len(state.history.values) == p.max_history_buckets == 2 * 60 + p.horizon_buckets
    hw = policy(forecaster="holt-winters")
    _, state = run(hw, square_wave, until_s=3 * HOUR)
    assert len(state.history.values) == 60
    assert len(state.holt_winters.season) == 60


def test_reactive_floor_on_concurrency() -> None:
    p = policy(reactive_metric="concurrency", reactive_target_per_replica=8)
    assert [s.key for s in p.signals] == ["request_rate:total:60s", "concurrency:total:60s"]
    snapshot = MetricsSnapshot(
        time_s=0,
        current_replicas=2,
        ready=2,
        signals={p.rate: SignalValue(100.0), p.reactive: SignalValue(44.0)},
    )
    d, _ = p.decide(snapshot, p.initial_state())
    assert (d.desired_replicas, d.reason) == (6, Reason.SCALE_UP)
    assert d.message.startswith("reactive 44 in flight / 8 per replica = 6;")


def test_missing_and_stale_rate_hold() -> None:
    p = policy()
    state = p.initial_state()
    d, new_state = p.decide(snap(p, 0, 2, None), state)
    assert d.is_hold and d.reason is Reason.NO_DATA and new_state == state
    d, new_state = p.decide(snap(p, 0, 2, 300.0, age_s=60), state)
    assert d.is_hold and d.reason is Reason.STALE_DATA and new_state == state


def test_bounds() -> None:
    p = policy(max_replicas=4)
    d, _ = p.decide(snap(p, 0, 2, 900.0), p.initial_state())
    assert (d.desired_replicas, d.reason) == (4, Reason.CLAMPED_TO_MAX)
    p = policy(min_replicas=2)
    d, _ = p.decide(snap(p, 0, 0, None), p.initial_state())
    assert (d.desired_replicas, d.reason) == (2, Reason.CLAMPED_TO_MIN)


def test_deterministic_and_state_round_trips() -> None:
    p = policy(forecaster="fft")
    a, sa = run(p, sinusoid, until_s=2.5 * HOUR)
    b, sb = run(p, sinusoid, until_s=2.5 * HOUR)
    assert a == b and sa == sb
    assert hash(sa.history) == hash(sb.history)


def test_defaults_are_the_seed_rule() -> None:
    cfg = PredictiveConfig(max_replicas=10, capacity_rps_per_replica=500)
    assert cfg.forecaster is Forecaster.SEASONAL
    assert (cfg.season_s, cfg.seasons, cfg.quantile, cfg.buffer_fraction) == (604800.0, (1, 2), 0.9, 0.2)
    assert (cfg.lead_time_s, cfg.history_resolution_s) == (300.0, 60.0)
    assert cfg.build().max_history_buckets == 2 * 10080 + 6


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"capacity_rps_per_replica": None},
            "policy.yaml: capacity_rps_per_replica = None: input should be a valid number",
        ),
        ({"min_replicas": 30}, "policy.yaml: min_replicas = 30: must be <= max_replicas (20)"),
        (
            {"season_s": 3630},
            "policy.yaml: season_s = 3630.0: must be a whole multiple (>= 2) of history_resolution_s (60 s)",
        ),
        (
            {"lead_time_s": 3600},
            "policy.yaml: lead_time_s = 3600.0: must be <= season_s - history_resolution_s (3540 s)",
        ),
        (
            {"seasons": [1, 1]},
            "policy.yaml: seasons = [1, 1]: a non-empty list of distinct whole numbers >= 1",
        ),
        ({"seasons": []}, "policy.yaml: seasons = []: a non-empty list of distinct whole numbers >= 1"),
        (
            {"reactive_metric": "concurrency"},
            "policy.yaml: reactive_target_per_replica: required key is missing",
        ),
        (
            {"forecaster": "arima"},
            "policy.yaml: forecaster = 'arima': input should be 'seasonal', 'holt-winters' or 'fft'",
        ),
        ({"fft_seasons": 1}, "policy.yaml: fft_seasons = 1: input should be greater than or equal to 2"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "kind": "predictive",
        "max_replicas": 20,
        "capacity_rps_per_replica": 100,
        "season_s": HOUR,
    }
    with pytest.raises(ConfigError) as err:
        validate(PredictiveConfig, {**base, **data}, "policy.yaml")
    assert str(err.value) == message


def test_capacity_is_required() -> None:
    with pytest.raises(ConfigError) as err:
        validate(PredictiveConfig, {"kind": "predictive", "max_replicas": 20}, "policy.yaml")
    assert str(err.value) == "policy.yaml: capacity_rps_per_replica: required key is missing"


@pytest.mark.parametrize(
    ("preset", "forecaster"),
    [("predictive-seasonal", "seasonal"), ("predictive-holt-winters", "holt-winters")],
)
def test_presets_load(preset: str, forecaster: str) -> None:
    p = load_preset(preset)
    assert isinstance(p, PredictivePolicy)
    assert p.config.forecaster == Forecaster(forecaster)
