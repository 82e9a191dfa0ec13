"""Shared helpers for the simulator tests."""

from __future__ import annotations

from typing import Any

import pytest

from gpuscale.config.scenario import Scenario, scenario_from_dict


def make_scenario(**overrides: Any) -> Scenario:
    """A small scenario with fixed cold-start phases; keyword arguments replace top-level sections."""
    base: dict[str, Any] = {
        "name": "test",
        "duration_s": 120,
        "seed": 5,
        "slo": {"latency_ms": 50},
        "workload": {"kind": "poisson", "rate_rps": 200},
        "model": {
            "profile": "resnet50-a100-triton",
            "jitter": "none",
            "cpu_ms_per_request": 0.0,
        },
        "serving": {"routing": "least-outstanding", "timeout_s": 5},
        "startup": {
            "scheduling_s": 1,
            "image_pull_s": 10,
            "model_download_s": 20,
            "model_load_s": 5,
            "warmup_s": 4,
        },
        "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 4, "nodes": 1}]},
        "control": {"interval_s": 5, "initial_replicas": 1},
    }
    base.update(overrides)
    return scenario_from_dict(base, "test")


@pytest.fixture
def scenario_factory() -> Any:
    return make_scenario


def busy_scenario(**overrides: Any) -> dict[str, Any]:
    """Three minutes of 3,000 req/s on up to four A100 pods (one node), a 5-s control loop and a
    50-ms SLO: each run takes about a second; ``overrides`` replace top-level keys. A KPA with a
    concurrency target of 1 holds all four pods, a target of 16 carries the load on two within the
    SLO, and 32 waits too long to scale out and misses it."""
    data: dict[str, Any] = {
        "name": "busy",
        "duration_s": 180,
        "seed": 5,
        "slo": {"latency_ms": 50},
        "workload": {"kind": "poisson", "rate_rps": 3000},
        "model": {"profile": "resnet50-a100-triton", "jitter": "none", "cpu_ms_per_request": 0.0},
        "serving": {"routing": "least-outstanding", "timeout_s": 5},
        "startup": {"scheduling_s": 1, "image_pull_s": 10, "model_download_s": 20, "model_load_s": 5, "warmup_s": 4},
        "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 4, "nodes": 1}]},
        "control": {"interval_s": 5, "initial_replicas": 2},
    }  # fmt: skip
    return {**data, **overrides}
