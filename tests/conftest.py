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
