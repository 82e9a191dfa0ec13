"""``sla-planner``: Dynamo's SLA planner (throughput mode, aggregated), tick by tick."""

from __future__ import annotations

import pytest

from gpuscale.config.loading import validate
from gpuscale.policies.base import MetricsSnapshot, Reason, SignalValue
from gpuscale.policies.conformance import check_policy
from gpuscale.policies.registry import load_preset
from gpuscale.policies.sla_planner import (
    DecodePoint,
    SlaPlannerConfig,
    SlaPlannerPolicy,
    best_decode_throughput,
    expected_itl_ms,
    predict,
    prefill_lookup,
)

PROFILE = {
    "prefill": [
        {"isl": 1000, "ttft_ms": 100, "throughput_tokens_per_s": 10000},
        {"isl": 3000, "ttft_ms": 300, "throughput_tokens_per_s": 6000},
    ],
    "decode": [
        {"context_length": 3000, "concurrency": 1, "itl_ms": 10, "throughput_tokens_per_s": 100},
        {"context_length": 3000, "concurrency": 10, "itl_ms": 20, "throughput_tokens_per_s": 800},
        {"context_length": 3000, "concurrency": 40, "itl_ms": 50, "throughput_tokens_per_s": 2000},
        {"context_length": 3000, "concurrency": 80, "itl_ms": 100, "throughput_tokens_per_s": 2400},
        {"context_length": 500, "concurrency": 1, "itl_ms": 5, "throughput_tokens_per_s": 200},
    ],
}


def policy(**overrides: object) -> SlaPlannerPolicy:
    return validate(
        SlaPlannerConfig, {"kind": "sla-planner", "profile": PROFILE, **overrides}, "test"
    ).build()


def snap(
    p: SlaPlannerPolicy,
    t: float,
    current: int,
    *,
    rate: float,
    isl: float,
    osl: float,
    ttft: float | None,
    itl: float | None,
    running: float,
) -> MetricsSnapshot:
    def v(x: float | None) -> SignalValue:
        return SignalValue(x) if x is not None else SignalValue.missing("no samples in the window")

    return MetricsSnapshot(
        time_s=t,
        current_replicas=current,
        ready=current,
        signals={
            p.rate: v(rate),
            p.prompt: v(rate * isl),
            p.generation: v(rate * osl),
            p.ttft: v(ttft),
            p.itl: v(itl),
            p.running: v(running),
        },
    )


def test_profile_lookups() -> None:
    cfg = policy().config
    assert prefill_lookup(cfg.profile.prefill, 2000) == (200, 8000)
    assert prefill_lookup(cfg.profile.prefill, 9000) == (300, 6000)  # clamped
    assert expected_itl_ms(cfg.profile.decode, 25, 3050) == 35  # nearest context 3000, 20..50
    assert best_decode_throughput(cfg.profile.decode, 50, 3050) == 2000
    assert best_decode_throughput(cfg.profile.decode, 25, 3050) == 1000  # 800 + 1200 x 5/30
    assert best_decode_throughput(cfg.profile.decode, 4, 3050) == 100  # none meets it: lightest point
    one = (DecodePoint(context_length=10, concurrency=1, itl_ms=5, throughput_tokens_per_s=7),)
    assert best_decode_throughput(one, 50, 99999) == 7


def test_timeline_throughput_sizing_with_correction_factors() -> None:
    """isl 3000, osl 100 (context 3050 -> the 3000 rows), ITL target 50 ms.

    t=0: 2 req/s, latencies as profiled (p = d = 1): 6000/6000 + 200/2000 = 1.1 -> 2.
    t=180: 4 req/s, TTFT 600 ms (p = 2, capped at 1: queueing), ITL 40 ms at 10 running (d = 2: the
    target becomes 25 ms -> 1000 tok/s): 12000/6000 + 400/1000 = 2.4 -> 3.
    t=360: 4 req/s, TTFT 150 ms (p = 0.5 halves the prefill load), ITL as profiled:
    6000/6000 + 400/2000 = 1.2 -> 2.
    t=540: no requests: TTFT/ITL have no samples -> the adjustment is skipped (NoData)."""
    p = policy()
    state = p.initial_state()
    ticks = [
        (0, 1, {"rate": 2, "ttft": 300, "itl": 20}, 2, Reason.SCALE_UP),
        (180, 2, {"rate": 4, "ttft": 600, "itl": 40}, 3, Reason.SCALE_UP),
        (360, 3, {"rate": 4, "ttft": 150, "itl": 20}, 2, Reason.SCALE_DOWN),
        (540, 2, {"rate": 0, "ttft": None, "itl": None}, None, Reason.NO_DATA),
        (720, 2, {"rate": 2, "ttft": 300, "itl": 20}, 2, Reason.PREDICTED),
    ]
    for t, current, load, want, reason in ticks:
        s = snap(p, t, current, isl=3000, osl=100, running=10, **load)  # type: ignore[arg-type]
        d, state = p.decide(s, state)
        assert (d.desired_replicas, d.reason) == (want, reason), (t, d)


def test_bounds_are_min_endpoint_and_the_gpu_budget() -> None:
    p = policy(max_replicas=3)
    d, _ = p.decide(
        snap(p, 0, 1, rate=20, isl=3000, osl=100, ttft=300, itl=20, running=10), p.initial_state()
    )
    assert d.desired_replicas == 3  # 10 + 1 = 11 wanted


def test_holt_predictor_extrapolates_the_trend() -> None:
    p = policy(load_predictor="holt", alpha=0.5, beta=0.3)
    state = p.initial_state()
    for i, rate in enumerate((2.0, 4.0, 6.0)):
        _, state = p.decide(
            snap(p, 180 * i, 2, rate=rate, isl=3000, osl=100, ttft=300, itl=20, running=10), state
        )
    # level 2 -> 3 (trend 0.3) -> 4.65 (trend 0.705): next 5.355
    assert predict(state.rate, "holt") == pytest.approx(5.355)
    assert predict(state.isl, "holt") == pytest.approx(3000)


def test_preset_and_conformance() -> None:
    check_policy(load_preset("sla-planner"))
    check_policy(policy(load_predictor="holt"))
