"""``gpuscale import``: existing manifests become policies; bad ones name the field and write nothing."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.experiments.catalog import builtin_scenario
from gpuscale.integrations import manifests as M
from gpuscale.integrations.importer import import_manifest
from gpuscale.policies import registry
from gpuscale.policies.hpa import HpaConfig
from gpuscale.sim.engine import simulate

V2BETA2 = """
apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata: {name: triton, namespace: ml}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: triton}
  minReplicas: 2
  maxReplicas: 12
  metrics:
  - type: Pods
    pods:
      metric: {name: nv_inference_pending_request_count}
      target: {type: AverageValue, averageValue: 500m}
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 120, policies: [{type: Pods, value: 1, periodSeconds: 60}]}
"""

SCALED_OBJECT = """
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: llm}
spec:
  scaleTargetRef: {name: llm}
  cooldownPeriod: 120
  maxReplicaCount: 8
  triggers:
  - type: prometheus
    metadata:
      serverAddress: http://prometheus:9090
      query: sum(vllm:num_requests_waiting{namespace="ml"})
      threshold: "4"
      activationThreshold: "1"
"""

KSVC = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: bert}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/window: 2m
        autoscaling.knative.dev/maxScale: "5"
        sidecar.istio.io/inject: "false"
    spec:
      containerConcurrency: 20
      containers: [{image: bert}]
"""


def test_v2beta2_hpa() -> None:
    config = import_manifest(V2BETA2, "hpa.yaml")
    assert isinstance(config, HpaConfig)
    assert config.min_replicas == 2 and config.max_replicas == 12
    assert config.metrics[0].metric is not None and config.metrics[0].metric.value == "queue_length"
    assert config.metrics[0].target.average_value == 0.5
    assert config.metrics[1].target.average_utilization_percent == 70
    assert config.behavior is not None and config.behavior.scale_down.stabilization_window_s == 120
    assert config.behavior.scale_up.policies is None


def test_scaled_object_with_a_hand_written_query() -> None:
    config = import_manifest(SCALED_OBJECT, "so.yaml")
    assert config.kind == "keda"
    trigger = config.triggers[0]  # type: ignore[attr-defined]
    assert (trigger.metric.value, trigger.aggregation.value, trigger.window_s) == (
        "queue_length",
        "total",
        60.0,
    )
    assert (trigger.threshold, trigger.activation_threshold) == (4.0, 1.0)
    assert config.cooldown_period_s == 120 and config.min_replica_count == 0  # type: ignore[attr-defined]


def test_knative_service_annotations() -> None:
    config = import_manifest(KSVC, "ksvc.yaml")
    assert config.kind == "knative"
    dumped = config.model_dump()  # type: ignore[attr-defined]
    assert (dumped["target"], dumped["stable_window_s"], dumped["max_scale"], dumped["container_concurrency"]) == (
        10.0, 120.0, 5, 20,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "old", "new", "key"),
    [
        (V2BETA2, "type: Resource", "type: ContainerResource", "spec.metrics[1].type"),
        (V2BETA2, "  minReplicas: 2", "  minReplicas: 2\n  replicas: 3", "spec.replicas"),
        (V2BETA2, "nv_inference_pending_request_count", "my_custom_metric", "spec.metrics[0].pods.metric.name"),
        (V2BETA2, "{type: AverageValue, averageValue: 500m}", "{type: AverageValue, averagevalue: 1}", "spec.metrics[0].pods.target.averagevalue"),
        (V2BETA2, "name: cpu", "name: memory", "spec.metrics[1].resource.name"),
        (V2BETA2, "autoscaling/v2beta2", "autoscaling/v1", "apiVersion"),
        (SCALED_OBJECT, "type: prometheus", "type: kafka", "spec.triggers[0].type"),
        (SCALED_OBJECT, "threshold: \"4\"", "treshold: \"4\"", "spec.triggers[0].metadata.treshold"),
        (SCALED_OBJECT, "cooldownPeriod", "coolDownPeriod", "spec.coolDownPeriod"),
        (KSVC, "autoscaling.knative.dev/window", "autoscaling.knative.dev/windw", "autoscaling.knative.dev/windw"),
    ],
)  # fmt: skip
def test_bad_input_names_the_field(text: str, old: str, new: str, key: str, tmp_path: Path) -> None:
    bad = text.replace(old, new)
    assert bad != text
    with pytest.raises(ConfigError) as info:
        import_manifest(bad, "in.yaml")
    assert key in str(info.value)
    # and through the CLI: exit 2, the field named, nothing written
    src = tmp_path / "in.yaml"
    src.write_text(bad)
    out = tmp_path / "policy.yaml"
    result = CliRunner().invoke(app, ["import", str(src), "--out", str(out)])
    assert result.exit_code == 2
    assert key in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]


def test_cli_import_writes_the_policy(tmp_path: Path) -> None:
    src = tmp_path / "hpa.yaml"
    src.write_text(textwrap.dedent(V2BETA2))
    out = tmp_path / "policy.yaml"
    result = CliRunner().invoke(app, ["import", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert registry.load_policy_file(out).name == "triton"
    stdout = CliRunner().invoke(app, ["import", str(src)])
    assert stdout.exit_code == 0 and stdout.output.startswith("# imported by gpuscale")


@pytest.mark.parametrize("preset", ["queue-depth", "hpa-three-metric", "latency-slo"])
def test_simulating_the_imported_hpa_gives_the_same_decisions(preset: str) -> None:
    config: Any = registry.load_preset_config(preset)
    text = M.render_yaml(M.render(config, M.Target("Deployment", "triton"), "hpa"), preset)
    imported: Any = import_manifest(text, preset)
    scenario = builtin_scenario("kis-s-spike")
    scenario = scenario.model_copy(update={"duration_s": min(scenario.duration_s, 600.0)})
    a = simulate(scenario, config.build())
    b = simulate(scenario, imported.build())
    assert list(a.timeline.column("reason")) == list(b.timeline.column("reason"))
    da, db = a.timeline.column("desired"), b.timeline.column("desired")
    assert [None if x != x else x for x in da] == [None if x != x else x for x in db]
    # the scenario exercises the policy: it scales, not only holds
    assert len(set(zip(a.timeline.column("reason"), da, strict=True))) > 1
