"""``wva-saturation``: llm-d WVA's saturation analyzer, tick by tick."""

from __future__ import annotations

import pytest

from gpuscale.config.loading import validate
from gpuscale.policies.base import MetricsSnapshot, PodSample, Reason, SignalValue
from gpuscale.policies.conformance import check_policy
from gpuscale.policies.registry import load_preset_config
from gpuscale.policies.wva import ReplicaLoad, WvaSaturationConfig, WvaSaturationPolicy, analyze


def policy(**overrides: object) -> WvaSaturationPolicy:
    return validate(
        WvaSaturationConfig, {"kind": "wva-saturation", "max_replicas": 8, **overrides}, "test"
    ).build()


def snap(
    p: WvaSaturationPolicy,
    t: float,
    pods: list[tuple[float, float]],
    *,
    current: int | None = None,
) -> MetricsSnapshot:
    """``pods``: (KV-cache usage, waiting) of each ready pod."""
    kv = tuple(PodSample(f"pod-{i}", k, ready=True) for i, (k, _) in enumerate(pods))
    wait = tuple(PodSample(f"pod-{i}", w, ready=True) for i, (_, w) in enumerate(pods))
    n = len(pods)
    mean = (lambda xs: sum(xs) / len(xs)) if n else (lambda xs: 0.0)
    return MetricsSnapshot(
        time_s=t,
        current_replicas=n if current is None else current,
        ready=n,
        signals={
            p.kv: SignalValue(mean([k for k, _ in pods]), per_pod=kv),
            p.waiting: SignalValue(mean([w for _, w in pods]), per_pod=wait),
        },
    )


def defaults() -> dict[str, float]:
    return {"kv_threshold": 0.8, "queue_threshold": 5, "kv_trigger": 0.1, "queue_trigger": 3}


def test_the_analysis_averages_spare_capacity_over_non_saturated_pods_only() -> None:
    # pod-0 saturated by KV (0.85 >= 0.80); the two others have 0.8-0.6 = 0.2 and 0.8-0.7 = 0.1 spare
    a = analyze((ReplicaLoad("a", 0.85, 0), ReplicaLoad("b", 0.6, 1), ReplicaLoad("c", 0.7, 2)), **defaults())
    assert (a.non_saturated, round(a.spare_kv, 6), a.spare_queue) == (2, 0.15, 3.5)
    assert not a.scale_up
    # a queue of exactly 5 saturates too (>=), leaving one pod with 5-2.5 = 2.5 < 3 spare -> up
    a = analyze((ReplicaLoad("a", 0.1, 5), ReplicaLoad("b", 0.1, 2.5)), **defaults())
    assert (a.non_saturated, a.spare_queue, a.scale_up) == (1, 2.5, True)


def test_every_pod_saturated_scales_up() -> None:
    a = analyze((ReplicaLoad("a", 0.9, 0), ReplicaLoad("b", 0.95, 7)), **defaults())
    assert (a.non_saturated, a.spare_kv, a.spare_queue, a.scale_up) == (0, 0.0, 0.0, True)


def test_scale_down_needs_two_non_saturated_pods_and_headroom_after_losing_one() -> None:
    # one idle pod: never safe (nothing would take its load)
    assert not analyze((ReplicaLoad("a", 0.0, 0),), **defaults()).scale_down_safe
    # two pods at KV 0.3: load 0.3 x 2/1 = 0.6 -> spare 0.2 >= 0.1, queue 0 -> safe
    two = (ReplicaLoad("a", 0.3, 0), ReplicaLoad("b", 0.3, 0))
    assert analyze(two, **defaults()).scale_down_safe
    # two pods at KV 0.4: 0.8 after -> spare 0 < 0.1 -> unsafe
    assert not analyze((ReplicaLoad("a", 0.4, 0), ReplicaLoad("b", 0.4, 0)), **defaults()).scale_down_safe
    # queue: three pods with 1 waiting each -> 1.5 after -> spare 3.5 >= 3 safe; 2 each -> 3 -> spare 2 unsafe
    assert analyze(tuple(ReplicaLoad(f"p{i}", 0.1, 1) for i in range(3)), **defaults()).scale_down_safe
    assert not analyze(tuple(ReplicaLoad(f"p{i}", 0.1, 2) for i in range(3)), **defaults()).scale_down_safe


def test_timeline_one_replica_at_a_time_and_a_hold_while_pods_start() -> None:
    """A load rises on 2 pods, a third starts (transition: hold), then load falls; WVA moves by one
    replica per reconcile, and never below one pod."""
    p = policy()
    state = p.initial_state()
    ticks: list[tuple[float, list[tuple[float, float]], int | None, int | None, Reason]] = [
        # t, pods (kv, waiting), spec (None: as many as pods), expected desired, reason
        (0, [(0.5, 0), (0.55, 0)], None, 2, Reason.WITHIN_TOLERANCE),  # spare 0.275, unsafe to drop
        (60, [(0.82, 1), (0.75, 0)], None, 3, Reason.SCALE_UP),  # 1 saturated; other spare 0.05 < 0.1
        (120, [(0.7, 0), (0.72, 0)], 3, None, Reason.DELAY_PENDING),  # 3rd pod not reporting yet
        (180, [(0.5, 0), (0.5, 0), (0.5, 0)], None, 3, Reason.WITHIN_TOLERANCE),  # 0.5x1.5: spare 0.05
        (240, [(0.2, 0), (0.2, 0), (0.2, 0)], None, 2, Reason.SCALE_DOWN),  # 0.3 after: safe
        (300, [(0.1, 0), (0.1, 0)], None, 1, Reason.SCALE_DOWN),  # 0.2 after: safe
        (360, [(0.0, 0)], None, 1, Reason.WITHIN_TOLERANCE),  # one pod: never removed
        (420, [(0.0, 3)], None, 2, Reason.SCALE_UP),  # queue spare 5-3 = 2 < 3
    ]
    for t, pods, spec, want, reason in ticks:
        d, state = p.decide(snap(p, t, pods, current=spec), state)
        assert (d.desired_replicas, d.reason) == (want, reason), (t, d)


def test_no_pod_reporting_is_no_data() -> None:
    p = policy()
    empty = MetricsSnapshot(
        time_s=0,
        current_replicas=2,
        ready=2,
        signals={p.kv: SignalValue.missing("no series"), p.waiting: SignalValue.missing("no series")},
    )
    d, _ = p.decide(empty, p.initial_state())
    assert d.is_hold and d.reason is Reason.NO_DATA


def test_without_per_pod_samples_every_ready_pod_is_at_the_mean() -> None:
    p = policy()
    s = MetricsSnapshot(
        time_s=0,
        current_replicas=3,
        ready=3,
        signals={p.kv: SignalValue(0.75), p.waiting: SignalValue(0.0)},
    )
    d, _ = p.decide(s, p.initial_state())
    assert (d.desired_replicas, d.reason) == (4, Reason.SCALE_UP)  # spare 0.05 < 0.1


def test_bounds_cap_the_step() -> None:
    p = policy(max_replicas=2)
    d, _ = p.decide(snap(p, 0, [(0.9, 9), (0.9, 9)]), p.initial_state())
    assert d.desired_replicas == 2


def test_config_rejects_a_trigger_above_its_threshold() -> None:
    with pytest.raises(Exception, match="kv_spare_trigger"):
        policy(kv_spare_trigger=0.9)


def test_preset_and_conformance() -> None:
    cfg = load_preset_config("wva-saturation")
    assert isinstance(cfg, WvaSaturationConfig)
    assert (
        cfg.kv_cache_threshold,
        cfg.queue_length_threshold,
        cfg.kv_spare_trigger,
        cfg.queue_spare_trigger,
    ) == (
        0.8,
        5,
        0.1,
        3,
    )
    check_policy(policy())
