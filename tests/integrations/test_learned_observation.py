"""One observation code in both worlds: the vector ``kind: learned`` feeds its network, built from a
simulator snapshot (what ``gpuscale train`` trained on) and from a real Prometheus snapshot carrying
the same values, is the same vector, to the bit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from gpuscale.integrations.prometheus import PrometheusClient, PrometheusSource
from gpuscale.integrations.promql import matchers
from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.policies.learned import observe
from gpuscale.policies.ports import ReplicaCounts
from gpuscale.rl import EnvConfig, ScalingEnv

from .promserver import NAMESPACE, PODS, Exporter, Prometheus, scraping

UTIL = SignalSpec(Metric.GPU_UTIL, 2, Aggregation.POD_MEAN)
QUEUE = SignalSpec(Metric.QUEUE_LENGTH, 2, Aggregation.TOTAL)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exporter, Prometheus]]:
    with Exporter() as exporter, scraping(exporter, tmp_path_factory.mktemp("prometheus")) as server:
        yield exporter, server


def test_simulator_and_prometheus_snapshots_give_the_same_observation(
    prom: tuple[Exporter, Prometheus],
) -> None:
    exporter, server = prom
    # the simulator: the spike with one replica too few, so the queue grows
    env = ScalingEnv(
        EnvConfig(
            scenarios=("kis-s-spike",), seeds=(1,), signals=(UTIL, QUEUE), stack=1, scrape_interval_s=None
        )
    )
    env.reset(seed=0)
    for _ in range(12):  # to t = 390 s, inside the spike
        env.step(1)  # -1
    sim_snap = env._snapshot
    util, queue = sim_snap.value(UTIL), sim_snap.value(QUEUE)
    assert util is not None and queue is not None and queue > 0 and 0 < util < 100
    sim_obs, _ = observe(env.spec_obs, sim_snap, env.policy.max_signal_age_s, ())

    # live: the same values through the exporter, Prometheus, PromQL and the source
    for pod in PODS:
        exporter.gpu_util.labels(NAMESPACE, pod).set(util)  # mean of (u, u) is u
    exporter.vllm_waiting.labels(NAMESPACE, PODS[0]).set(queue)  # total of (q, 0) is q
    exporter.vllm_waiting.labels(NAMESPACE, PODS[1]).set(0)
    server.wait_settled(f'DCGM_FI_DEV_GPU_UTIL{{pod="{PODS[1]}"}}', util, 2)
    server.wait_settled(f'vllm:num_requests_waiting{{pod="{PODS[0]}"}}', queue, 2)
    now = server.wait_settled(f'vllm:num_requests_waiting{{pod="{PODS[1]}"}}', 0, 2)
    client = PrometheusClient(server.url, timeout_s=5.0)
    try:
        source = PrometheusSource(client, matchers(NAMESPACE, "llm-.*"), presets=("dcgm", "vllm"))
        counts = ReplicaCounts(
            current_replicas=sim_snap.current_replicas,
            ready=sim_snap.ready,
            starting=sim_snap.starting,
            pending=sim_snap.pending,
        )
        live_snap = source.snapshot(now, (UTIL, QUEUE), counts)
    finally:
        client.close()
    assert live_snap.value(UTIL) == util and live_snap.value(QUEUE) == queue
    live_obs, _ = observe(env.spec_obs, live_snap, env.policy.max_signal_age_s, ())
    assert live_obs.tobytes() == sim_obs.tobytes()
    assert np.count_nonzero(live_obs) >= 3
