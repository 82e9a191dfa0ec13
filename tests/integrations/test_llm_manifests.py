"""The LLM presets render native manifests: KEDA on vLLM's waiting requests, the HPA on KV-cache."""

from __future__ import annotations

from typing import Any

from gpuscale.integrations import manifests as M
from gpuscale.policies import registry
from tests.integrations.conftest import validate_keda, validate_kubernetes

TARGET = M.Target("Deployment", "llama", "ml")


def test_keda_vllm_waiting_renders_production_stacks_scaled_object(keda_schema: dict[str, Any]) -> None:
    so = M.render_keda(registry.load_preset_config("keda-vllm-waiting"), TARGET).body
    validate_keda(so, keda_schema)
    spec = so["spec"]
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (15, 360)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 24)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["threshold"] == "5"
    sel = 'namespace="ml",pod=~"llama-.*"'
    assert meta["query"] == (
        f"sum((avg_over_time(vllm:num_requests_waiting{{{sel}}}[15s]) or "
        f"avg_over_time(vllm_num_requests_waiting{{{sel}}}[15s])))"
    )


def test_hpa_kv_cache_renders_a_pods_metric_and_its_adapter_rule() -> None:
    config = registry.load_preset_config("hpa-kv-cache")
    hpa = M.render_hpa(config, TARGET).body
    validate_kubernetes(hpa)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "500m"}
    name = metric["pods"]["metric"]["name"]
    adapter = M.render_adapter(config, TARGET).body
    validate_kubernetes(adapter)
    rules = adapter["data"]["config.yaml"]
    assert name in rules and "vllm:kv_cache_usage_perc" in rules and "vllm:gpu_cache_usage_perc" in rules
    # the KEDA form: a plain-decimal threshold (KEDA parses a float, not a quantity)
    keda = M.render_keda(config, TARGET).body
    assert keda["spec"]["triggers"][0]["metadata"]["threshold"] == "0.5"
