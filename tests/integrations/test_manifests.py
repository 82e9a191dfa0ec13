"""``gpuscale manifests``: every rendered object validates; the exact ones round-trip through import."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.integrations import manifests as M
from gpuscale.integrations.importer import import_manifest
from gpuscale.policies import registry
from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.policies.hpa import HpaConfig
from gpuscale.policies.keda import KedaConfig
from gpuscale.policies.knative import KnativeConfig
from tests.integrations.conftest import all_policy_configs, validate_keda, validate_kubernetes

TARGET = M.Target("Deployment", "triton-resnet", "ml")
CONFIGS = all_policy_configs()


@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_rendered_manifest_validates(label: str, config: Any, keda_schema: dict[str, Any]) -> None:
    for manifest in M.render(config, TARGET, "all"):
        body = manifest.body
        if not body:  # no native form: a comment that says so (or the alternatives' warning)
            assert manifest.header == M.ALTERNATIVES or (manifest.notes and "gpuscale" in manifest.notes[0])
            continue
        if body["kind"] in ("HorizontalPodAutoscaler", "ConfigMap"):
            validate_kubernetes(body)
        elif body["kind"] == "ScaledObject":
            validate_keda(body, keda_schema)
        else:
            assert body["apiVersion"] in ("serving.knative.dev/v1", "serving.kserve.io/v1beta1")


@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_hpa_also_validates_as_v2beta2_on_1_25(label: str, config: Any) -> None:
    # The control plane the controller tests start (v1.20) serves autoscaling/v2beta2 only; its schema
    # is the same for every field gpuscale writes except behavior.*.tolerance (v1.33+).
    body = M.render_hpa(config, TARGET).body
    if not body or any("tolerance" in r for r in body["spec"].get("behavior", {}).values()):
        pytest.skip("no HPA form, or needs a newer API")
    validate_kubernetes({**body, "apiVersion": "autoscaling/v2beta2"}, "1.25.0")


def test_knative_service_and_kserve_shapes() -> None:
    config = registry.load_preset_config("knative")
    ksvc = M.render_knative(config, TARGET).body
    annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert annotations["autoscaling.knative.dev/target"] == "4"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "60s"
    isvc = M.render_knative(config, M.Target("InferenceService", "llama", "ml")).body
    assert isvc["spec"]["predictor"] == {"minReplicas": 1, "maxReplicas": 10}


def test_keda_trigger_queries_per_signal() -> None:
    config = KedaConfig.model_validate(
        {
            "triggers": [
                {"metric": "gpu_util", "aggregation": "pod_mean", "window_s": 180, "threshold": 40},
                {"metric": "gpu_memory_util", "aggregation": "max", "threshold": 90},
                {"metric": "queue_length", "threshold": 5, "activation_threshold": 1},
                {"metric": "request_rate", "window_s": 120, "threshold": 50},
                {"metric": "concurrency", "threshold": 3},
            ],
            "fallback": {"failure_threshold": 3, "replicas": 4},
            "advanced": {
                "horizontal_pod_autoscaler_config": {
                    "behavior": {"scale_down": {"stabilization_window_s": 60}}
                }
            },
        }
    )
    spec = M.render_keda(config, TARGET).body["spec"]
    queries = [t["metadata"]["query"] for t in spec["triggers"]]
    sel = 'namespace="ml",pod=~"triton-resnet-.*"'
    assert queries[0] == f"avg(avg_over_time(DCGM_FI_DEV_GPU_UTIL{{{sel}}}[180s]))"
    assert (
        "DCGM_FI_DEV_FB_USED" in queries[1]
        and "DCGM_FI_DEV_FB_FREE" in queries[1]
        and queries[1].startswith("max(")
    )
    assert queries[2] == f"sum(avg_over_time(nv_inference_pending_request_count{{{sel}}}[60s]))"
    assert queries[3] == f"sum(rate(nv_inference_request_success{{{sel}}}[120s]))"
    assert "queue_average_concurrent_requests" in queries[4]
    assert spec["triggers"][2]["metadata"]["activationThreshold"] == "1"
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 4}
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        == 60
    )


def test_vllm_queries() -> None:
    from gpuscale.integrations import promql

    q = promql.query(SignalSpec(Metric.QUEUE_LENGTH, 30, Aggregation.TOTAL), "ml", "llm", "vllm")
    assert q == 'sum(avg_over_time(vllm:num_requests_waiting{namespace="ml",pod=~"llm-.*"}[30s]))'
    assert promql.parse_query(q) == SignalSpec(Metric.QUEUE_LENGTH, 30, Aggregation.TOTAL)


def test_inexact_forms_carry_a_comment() -> None:
    knative = KnativeConfig.model_validate({"target": 8, "max_scale_down_rate": 4})
    text = M.render_yaml(M.render(knative, TARGET, "all"), "my-kpa")
    assert "# NOT EXACT" in text
    assert "config-autoscaler max-scale-down-rate" in text
    assert "gpuscale keda-scaler" in text
    ray = registry.load_preset_config("ray-serve")
    keda = M.render_keda(ray, TARGET)
    assert keda.body["spec"]["triggers"][0]["type"] == "external"
    assert any("keda-scaler" in n for n in keda.notes)
    hpa_tol = HpaConfig.model_validate({"max_replicas": 4, "tolerance": 0.05})
    assert any("--horizontal-pod-autoscaler-tolerance" in n for n in M.render_hpa(hpa_tol, TARGET).notes)


EXACT = [
    ("preset:queue-depth", registry.load_preset_config("queue-depth"), "hpa"),
    ("preset:gpu-util", registry.load_preset_config("gpu-util"), "hpa"),
    ("preset:cpu-hpa", registry.load_preset_config("cpu-hpa"), "hpa"),
    ("preset:latency-slo", registry.load_preset_config("latency-slo"), "hpa"),
    ("example:hpa", HpaConfig.example(), "hpa"),
    (
        "hpa-scale-to-zero",
        HpaConfig.model_validate(
            {
                "min_replicas": 0,
                "max_replicas": 6,
                "metrics": [
                    {
                        "type": "External",
                        "metric": "queue_length",
                        "aggregation": "max",
                        "window_s": 30,
                        "target": {"type": "Value", "value": 12.5},
                    }
                ],
                "behavior": {
                    "scale_up": {
                        "select_policy": "Min",
                        "policies": [{"type": "Percent", "value": 50, "period_s": 60}],
                    },
                    "scale_down": {"tolerance": 0.05},
                },
            }
        ),
        "hpa",
    ),
    ("preset:keda-queue-depth", registry.load_preset_config("keda-queue-depth"), "keda"),
    ("example:keda", KedaConfig.example(), "keda"),
    ("preset:knative", registry.load_preset_config("knative"), "knative"),
    ("example:knative", KnativeConfig.example(), "knative"),
]


@pytest.mark.parametrize(("label", "config", "fmt"), EXACT, ids=[e[0] for e in EXACT])
def test_import_of_render_is_the_same_policy(label: str, config: Any, fmt: str) -> None:
    for target in (TARGET, M.Target("InferenceService", "llama", "ml")):
        if target.kind == "InferenceService" and fmt != "knative":
            continue
        rendered = M.render(config, target, fmt)
        text = M.render_yaml(rendered, label)
        back = import_manifest(text, label)
        assert back.model_dump(exclude={"name"}) == config.model_dump(exclude={"name"})  # type: ignore[attr-defined]
        assert back.name == target.name  # type: ignore[attr-defined]


def test_cli_manifests(tmp_path: Any) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["manifests", "--policy", "queue-depth", "--target", "Deployment/triton", "--format", "hpa"]
    )
    assert result.exit_code == 0, result.output
    (hpa,) = M.objects(result.output)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "gpuscale_queue_length_60s"
    out = tmp_path / "all.yaml"
    result = runner.invoke(
        app,
        [
            "manifests",
            "-p",
            "keda-queue-depth",
            "--target",
            "Deployment/triton",
            "--namespace",
            "ml",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    kinds = [d["kind"] for d in yaml.safe_load_all(out.read_text()) if d]
    assert kinds == ["ScaledObject"]  # the default: the policy's own autoscaler, alone
    result = runner.invoke(
        app, ["manifests", "-p", "keda-queue-depth", "--target", "Deployment/triton", "--format", "all"]
    )
    assert result.exit_code == 0, result.output
    assert [d["kind"] for d in M.objects(result.output)] == [
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "ConfigMap",
    ]
    assert result.output.index("ALTERNATIVES") < result.output.index("kind: HorizontalPodAutoscaler")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target", "triton"], "KIND/NAME"),
        (["--target", "Deployment/triton", "--format", "yaml"], "--format"),
        (["--target", "Deployment/triton", "-p", "no-such-preset"], "preset"),
    ],
)
def test_cli_manifests_bad_input(args: list[str], needle: str) -> None:
    base = ["manifests", "-p", "queue-depth"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2
    assert needle in result.output


def test_headroom_renders_a_preemptible_placeholder_deployment() -> None:
    config = registry.load_policy_config(
        {
            "kind": "warm-pool",
            "standby_replicas": 1,
            "headroom_replicas": 3,
            "target_per_replica": 80,
            "max_replicas": 8,
        },
        "test",
    )
    priority, deployment = (m.body for m in M.render(config, TARGET, "headroom"))
    for body in (priority, deployment):
        validate_kubernetes(body)
    assert priority["value"] < 0 and priority["preemptionPolicy"] == "Never"
    assert priority["globalDefault"] is False
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["priorityClassName"] == priority["metadata"]["name"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert deployment["metadata"]["namespace"] == TARGET.namespace
    # `all` carries them too; a policy with no buffer renders none, and asking for them is an error
    kinds = [m.body.get("kind") for m in M.render(config, TARGET, "all")]
    assert kinds[-2:] == ["PriorityClass", "Deployment"]
    plain = registry.load_preset_config("warm-pool")
    assert M.render_headroom(plain, TARGET) == []
    result = CliRunner().invoke(
        app, ["manifests", "--policy", "warm-pool", "--target", "Deployment/x", "--format", "headroom"]
    )
    assert result.exit_code == 2 and "headroom_replicas" in result.output


_AUTOSCALERS = {"HorizontalPodAutoscaler", "ScaledObject", "Service", "InferenceService"}


@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_the_default_renders_one_autoscaler_and_all_warns_of_alternatives(label: str, config: Any) -> None:
    """Applied together, an HPA and a ScaledObject on one Deployment fight: the default (native) form
    is one autoscaler; ``all`` says first that its forms are alternatives."""
    native = [m.body.get("kind") for m in M.render(config, TARGET) if m.body]
    assert sum(kind in _AUTOSCALERS for kind in native) == 1, native
    every = M.render(config, TARGET, "all")
    assert every[0].header == M.ALTERNATIVES and not every[0].body
    assert M.ALTERNATIVES in M.render_yaml(every, label)
