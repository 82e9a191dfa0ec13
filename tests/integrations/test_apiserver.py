"""Rendered manifests are accepted by a real API server (v1.20: ``autoscaling/v2beta2``, KEDA's CRD).

The control plane is built from Debian's source package by ``scripts/k8s-control-plane.sh`` (once per
machine) and started on 127.0.0.1. Objects are created with ``dryRun=All``: the API server decodes,
defaults and validates them (for the ScaledObject: against KEDA's structural CRD schema) without
storing them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuscale.integrations import manifests as M
from tests.controlplane import ControlPlane, started_plane
from tests.integrations.conftest import KEDA_CRD, all_policy_configs

TARGET = M.Target("Deployment", "triton-resnet", "default")
CONFIGS = all_policy_configs()


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(Path(tmp_path_factory.mktemp("control-plane"))) as plane:
        crd = yaml.safe_load(KEDA_CRD.read_text(encoding="utf-8"))
        created = plane.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        assert created.status == 201, created.body
        for _ in range(120):  # the CRD serves once Established (bounded wait)
            got = plane.request(
                "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/scaledobjects.keda.sh"
            )
            conditions = (got.body.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            time.sleep(0.25)
        else:
            raise AssertionError("KEDA's CRD never became Established")
        yield plane


def _create(plane: ControlPlane, body: dict[str, Any]) -> Any:
    namespace = body.get("metadata", {}).get("namespace", "default")
    made = plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    assert made.status in (201, 409), made.body  # 409: it exists already
    if body["kind"] == "HorizontalPodAutoscaler":
        path = f"/apis/autoscaling/v2beta2/namespaces/{namespace}/horizontalpodautoscalers"
    elif body["kind"] == "ScaledObject":
        path = f"/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects"
    else:
        path = f"/api/v1/namespaces/{namespace}/configmaps"
    return plane.request("POST", path + "?dryRun=All", body)


@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_rendered_manifests_are_accepted_by_the_api_server(
    apiserver: ControlPlane, label: str, config: Any
) -> None:
    accepted = 0
    for manifest in M.render(config, TARGET, "all"):
        body = copy.deepcopy(manifest.body)
        if not body or body["kind"] not in ("HorizontalPodAutoscaler", "ScaledObject", "ConfigMap"):
            continue  # Knative/KServe types do not exist on a bare control plane
        if body["kind"] == "HorizontalPodAutoscaler":
            if any("tolerance" in rules for rules in body["spec"].get("behavior", {}).values()):
                continue  # behavior.*.tolerance is v1.33+; v1.20 has no such field
            body["apiVersion"] = "autoscaling/v2beta2"
        response = _create(apiserver, body)
        assert response.status in (200, 201), (label, body["kind"], response.body.get("message"))
        accepted += 1
    assert accepted > 0


def test_the_api_server_really_validates(apiserver: ControlPlane) -> None:
    # The same path refuses a broken object, so acceptance above means something.
    body = copy.deepcopy(M.render_hpa(registry_config("gpu-util"), TARGET).body)
    body["apiVersion"] = "autoscaling/v2beta2"
    body["spec"]["maxReplicas"] = "many"
    assert _create(apiserver, body).status == 400
    scaled = copy.deepcopy(M.render_keda(registry_config("keda-queue-depth"), TARGET).body)
    scaled["spec"]["pollingInterval"] = "often"
    assert _create(apiserver, scaled).status == 422


def registry_config(name: str) -> Any:
    from gpuscale.policies import registry

    return registry.load_preset_config(name)
