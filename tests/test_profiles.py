"""Every built-in profile serves at the rate its own batch table implies.

One always-Ready pod, overloaded (Poisson at twice its saturated rate), so the batcher always finds a
full batch: completions per second must equal ``max_batch_size / latency(max_batch_size)``. Jitter
and the CPU stage are turned off, since both are tested elsewhere; what this checks is that each
profile's table, batch limit and memory fit drive the kernel the way the table says.
"""

from __future__ import annotations

import itertools

import pytest

from gpuscale.config.profiles import BUILTIN_PROFILES, ModelProfile
from gpuscale.policies.base import StaticPolicy
from gpuscale.sim.engine import simulate
from tests.conftest import make_scenario


def _latency_ms(profile: ModelProfile, batch: int) -> float:
    points = profile.batch_latency_ms
    for (b0, ms0), (b1, ms1) in itertools.pairwise(points):
        if b0 <= batch <= b1:
            return ms0 + (ms1 - ms0) * (batch - b0) / (b1 - b0)
    return points[-1][1] if batch >= points[-1][0] else points[0][1]


@pytest.mark.parametrize("name", sorted(n for n, p in BUILTIN_PROFILES.items() if p.llm is None))
def test_a_saturated_pod_serves_at_the_tables_rate(name: str) -> None:
    profile = BUILTIN_PROFILES[name]
    batch = profile.max_batch_size
    rate = batch / (_latency_ms(profile, batch) / 1000.0)  # requests/s at full batches
    duration = max(120.0, 400 * batch / rate)  # at least 400 full batches
    scenario = make_scenario(
        duration_s=duration,
        workload={"kind": "poisson", "rate_rps": 2 * rate},
        model={"profile": name, "jitter": "none", "cpu_ms_per_request": 0.0},
        serving={"routing": "least-outstanding", "timeout_s": 10 * duration},
        cluster={"pools": [{"gpu": profile.gpu, "gpus_per_node": max(8, profile.gpus_per_pod), "nodes": 1}]},
        control={"interval_s": 15, "initial_replicas": 1},
    )
    summary = simulate(scenario, StaticPolicy(1)).summary
    served = summary.completed / duration
    assert served == pytest.approx(rate, rel=0.03), (name, served, rate)
    assert summary.completed > 0.9 * 400 * batch
