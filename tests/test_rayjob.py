"""`gpuscale manifests rayjob`: a KubeRay RayJob that runs a compare suite on a Ray cluster.

No KubeRay CRD schema is available offline: the RayJob is shape-checked against the fields KubeRay's
ray.io/v1 RayJob documents, and the ConfigMap and pod templates are validated as Kubernetes objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.suite import load_suite

runner = CliRunner()
KUBERNETES_VERSION = "1.37.0"


def _render(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "scenarios: [thesis-constant, flash-crowd]\npolicies: [knative, gpu-util]\nseeds: [1, 2]\n"
    )
    out = tmp_path / "rayjob.yaml"
    result = runner.invoke(app, ["manifests", "rayjob", "--config", str(suite), *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(out.read_text()) if d]


def test_the_rayjob_runs_the_suite_with_the_projects_image_on_a_ray_cluster(tmp_path: Path) -> None:
    config_map, job = _render(
        tmp_path, "--namespace", "sims", "--image", "registry.example/gpuscale:1", "--ray-workers", "3"
    )
    assert (config_map["kind"], job["apiVersion"], job["kind"]) == ("ConfigMap", "ray.io/v1", "RayJob")
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    # the suite travels as it was written, and loads back
    (tmp_path / "back.yaml").write_text(config_map["data"]["suite.yaml"])
    assert load_suite(tmp_path / "back.yaml").policies == ["knative", "gpu-util"]

    spec = job["spec"]
    assert set(spec) == {
        "entrypoint",
        "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished",
        "rayClusterSpec",
    }
    assert spec["entrypoint"].startswith("gpuscale compare --suite /etc/gpuscale/suite.yaml --ray auto ")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    for template in (head["template"], group["template"]):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x", **template["metadata"]},
            "spec": template["spec"],
        }
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        assert template["spec"]["containers"][0]["image"] == "registry.example/gpuscale:1"
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    assert volumes["suite"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert {o["metadata"]["namespace"] for o in (config_map, job)} == {"sims"}


def test_a_rayjob_needs_a_valid_suite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["manifests", "rayjob"])
    assert result.exit_code == 2 and "--config" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [1, 1]\n")
    result = runner.invoke(app, ["manifests", "rayjob", "--config", str(bad)])
    assert result.exit_code == 2 and "seeds" in result.output


def test_a_rayjob_needs_an_image_with_ray(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("scenarios: [kis-s-ramp]\npolicies: [gpu-util]\nseeds: [1]\n")
    result = runner.invoke(
        app, ["manifests", "rayjob", "--config", str(suite), "--out", str(tmp_path / "r.yaml")]
    )
    assert result.exit_code == 2 and "--image" in result.output and "ray[default]" in result.output
    assert not (tmp_path / "r.yaml").exists()
