"""The LLM presets of existing kinds, tick by tick: KEDA on vLLM's waiting requests (production-stack)
and the HPA on KV-cache usage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.registry import load_preset, load_preset_config


def run(
    policy: Any, spec: SignalSpec, value_at: Callable[[float, int], float], start: int, until_s: float
) -> dict[float, tuple[int, Decision]]:
    """Tick at the policy's period (decisions apply at once); t -> (replicas before, decision)."""
    state = policy.initial_state()
    current, out, t = start, {}, 0.0
    while t <= until_s:
        s = MetricsSnapshot(
            time_s=t,
            current_replicas=current,
            ready=current,
            signals={spec: SignalValue(value_at(t, current))},
        )
        decision, state = policy.decide(s, state)
        out[t] = (current, decision)
        if decision.desired_replicas is not None:
            current = decision.desired_replicas
        t += policy.sync_period_s
    return out


def after(timeline: dict[float, tuple[int, Decision]], t: float) -> int:
    before, d = timeline[t]
    return before if d.desired_replicas is None else d.desired_replicas


def test_keda_vllm_waiting_preset_has_production_stack_values() -> None:
    cfg: Any = load_preset_config("keda-vllm-waiting")
    assert (cfg.polling_interval_s, cfg.cooldown_period_s) == (15, 360)
    assert (cfg.min_replica_count, cfg.max_replica_count) == (1, 24)  # the LLM scenarios' cluster
    (trigger,) = cfg.triggers
    assert (trigger.metric, trigger.aggregation, trigger.threshold, trigger.metric_type) == (
        Metric.REQUESTS_WAITING,
        Aggregation.TOTAL,
        5,
        "AverageValue",
    )


def test_keda_vllm_waiting_timeline() -> None:
    """12 waiting requests on one pod -> ceil(12 / 5) = 3 replicas at the first HPA sync; the queue drains at t = 60 s, and the generated HPA's 300-s scale-down stabilization (not
    the 360-s cooldown, which only guards the way to zero) holds 3 until t = 360 s; one pod stays."""
    p = load_preset("keda-vllm-waiting")
    spec = SignalSpec(Metric.REQUESTS_WAITING, 15, Aggregation.TOTAL)
    assert p.signals == (spec,)
    tl = run(p, spec, lambda t, n: 12.0 if t < 60 else 0.0, start=1, until_s=420)
    assert after(tl, 0) == 3
    assert all(after(tl, t) == 3 for t in range(0, 360, 15))
    assert after(tl, 360) == 1
    assert after(tl, 420) == 1


def test_hpa_kv_cache_preset_timeline() -> None:
    """Pods metric kv_cache_usage, AverageValue 0.5: 2 pods at 0.9 -> ceil(2 x 0.9 / 0.5) = 4 at once;
    at 4 pods the same cache holds 0.45 each, within the 0.1 tolerance -> stay; when the load halves
    (0.225 each) the HPA waits its 300-s window, then ceil(4 x 0.225 / 0.5) = 2."""
    p = load_preset("hpa-kv-cache")
    (spec,) = p.signals
    assert (spec.metric, spec.aggregation) == (Metric.KV_CACHE_USAGE, Aggregation.POD_MEAN)

    def kv(t: float, n: int) -> float:
        demand = 1.8 if t < 120 else 0.9  # pods' worth of cache in use
        return min(1.0, demand / n)

    tl = run(p, spec, kv, start=2, until_s=600)
    assert after(tl, 0) == 4 and tl[0][1].reason is Reason.SCALE_UP
    assert all(after(tl, t) == 4 for t in range(15, 120 + 300, 15))
    assert after(tl, 420) == 2
    assert after(tl, 600) == 2
