"""``gpuscale run`` against a real kube-apiserver: a Deployment's scale subresource, real RBAC, real 404s.

The only fake is at our own boundary: :class:`~tests.integrations.scripted.ScriptedSource`, a metrics
source that serves given values. The policy is a real HPA
(:func:`~tests.integrations.scripted.queue_hpa`); the clock is a ManualClock, so a loop of N ticks
takes no time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from gpuscale._core.clock import ManualClock
from gpuscale._core.errors import PermanentError, TemporaryError
from gpuscale.cli import app
from gpuscale.controller import Controller, SafetyConfig, TargetConfig
from gpuscale.controller.target import Forbidden, KubernetesTarget, TargetGone, api_client
from gpuscale.policies import registry
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Policy,
    Reason,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.ports import ReplicaCounts
from gpuscale.policies.safety import guard
from tests.controlplane import TOKEN, VIEWER_TOKEN, ControlPlane, _free_port, started_plane, wait_until

from .scripted import ScriptedSource, queue_hpa

NS = "default"
HPA = queue_hpa(min_replicas=0, max_replicas=100, window_s=60, scale_up_pods=100)
"""desired = ceil(queue / 10): a queue of 95 asks for 10 replicas, a queue of 0 for 0."""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(Path(tmp_path_factory.mktemp("control-plane"))) as cp:
        # Pods need their namespace's ServiceAccount; there is no controller-manager to create it.
        made = cp.request(
            "POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "default"}}
        )
        assert made.status in (201, 409), made.body
        yield cp


def controller(
    plane: ControlPlane,
    tmp_path: Path,
    name: str,
    values: list[float | None],
    *,
    token: str = TOKEN,
    server: str | None = None,
    dry_run: bool = False,
    policy: Policy[Any] | None = None,
    **safety: Any,
) -> tuple[Controller, list[dict[str, Any]]]:
    api = api_client(plane.kubeconfig(tmp_path / f"kubeconfig-{token}", token, server), "test")
    target = KubernetesTarget(api, TargetConfig(name=name, namespace=NS), f"app={name}", timeout_s=5)
    records: list[dict[str, Any]] = []
    ctl = Controller(
        policy or registry.load_policy(HPA, "test"),
        ScriptedSource(values),
        target,
        SafetyConfig(**{"min_replicas": 0, "max_replicas": 50, **safety}),
        ManualClock(1_000.0),
        interval_s=15.0,
        dry_run=dry_run,
        target_name=name,
        sink=records.append,
    )
    return ctl, records


def test_scales_a_real_deployment_and_writes_only_on_change(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("scale-up", NS, 2, gpus=1)
    # two pods of the selector: one Ready, one not yet scheduled
    for i in range(2):
        pod = {
            "metadata": {"name": f"scale-up-{i}", "labels": {"app": "scale-up"}},
            "spec": {"automountServiceAccountToken": False, "containers": [{"name": "s", "image": "x"}]},
        }
        assert plane.request("POST", f"/api/v1/namespaces/{NS}/pods", pod).status == 201
    ready = plane.request("GET", f"/api/v1/namespaces/{NS}/pods/scale-up-0").body
    ready["status"] = {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
    }
    put = plane.request("PUT", f"/api/v1/namespaces/{NS}/pods/scale-up-0/status", ready)
    assert put.status == 200, put.body

    ctl, records = controller(plane, tmp_path, "scale-up", [95.0, 95.0])
    first = ctl.tick()
    assert first.action == "scaled" and first.replicas == 10
    assert first.counts is not None and (first.counts.ready, first.counts.pending) == (1, 1)
    after_write = plane.deployment("scale-up", NS)
    assert after_write["spec"]["replicas"] == 10

    second = ctl.tick()  # 95 queued at 10 replicas: still 10, nothing to write
    assert second.action == "unchanged"
    assert (
        plane.deployment("scale-up", NS)["metadata"]["resourceVersion"]
        == after_write["metadata"]["resourceVersion"]
    )

    assert [r["action"] for r in records] == ["scaled", "unchanged"]
    rec = json.loads(json.dumps(records[0]))  # JSON-serialisable as written to the decision log
    assert rec["decision"]["reason"] == "ScaleUp" and rec["decision"]["desired_replicas"] == 10
    assert rec["signals"]["queue_length:total:60s"] == {"value": 95.0, "age_s": 5.0}
    assert rec["replicas"]["current"] == 2 and rec["written_replicas"] == 10 and rec["time"] == 1_000.0


def test_min_max_step_and_gpu_budget_bound_what_is_written(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("bounded", NS, 2, gpus=1)
    # budget 8 GPUs at 2 per pod pays for 4 replicas; 2 -> 10 is cut to 2 + 3 = 5 by max_step, then 4
    ctl, _ = controller(
        plane, tmp_path, "bounded", [95.0, 0.0], min_replicas=3, max_step=3, gpu_budget=8, gpus_per_pod=2
    )
    up = ctl.tick()
    assert (up.action, up.replicas, up.safety) == ("scaled", 4, ("ScaleUpLimit", "GpuBudget"))
    assert plane.deployment_replicas("bounded", NS) == 4
    down = ctl.tick()  # the queue drains: the HPA wants 0, min_replicas keeps 3
    assert (down.action, down.replicas, down.safety) == ("scaled", 3, ("TooFewReplicas",))
    assert plane.deployment_replicas("bounded", NS) == 3


def test_dry_run_writes_nothing(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("dry", NS, 2, gpus=1)
    before = plane.deployment("dry", NS)["metadata"]["resourceVersion"]
    ctl, records = controller(plane, tmp_path, "dry", [95.0], dry_run=True)
    out = ctl.tick()
    assert (out.action, out.replicas) == ("dry_run", 10)
    assert records[0]["target_replicas"] == 10 and "written_replicas" not in records[0]
    assert plane.deployment("dry", NS)["metadata"]["resourceVersion"] == before


def test_rbac_denial_names_the_missing_verb_and_resource(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("denied", NS, 2, gpus=1)
    role = {
        "metadata": {"name": "read-only-scaler", "namespace": NS},
        "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        ],
    }
    binding = {
        "metadata": {"name": "read-only-scaler", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-only-scaler"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "viewer"}],
    }
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}"
    assert plane.request("POST", f"{rbac}/roles", role).status == 201
    assert plane.request("POST", f"{rbac}/rolebindings", binding).status == 201

    ctl, records = controller(plane, tmp_path, "denied", [95.0], token=VIEWER_TOKEN)

    def can_read() -> bool:  # RBAC changes reach the authorizer through a watch: wait for the grant
        try:
            ctl.target.counts()
        except Forbidden:
            return False
        return True

    wait_until(can_read, "the read-only Role to be in force", 20.0)
    out = ctl.tick()  # reads succeed, the write is denied
    assert out.action == "error" and out.error_kind == "permanent"
    assert out.error is not None and "may not patch deployments/scale" in out.error
    assert records[0]["error"]["kind"] == "permanent"
    assert ctl.errors == {"permanent": 1}
    assert plane.deployment_replicas("denied", NS) == 2


def test_a_deleted_target_is_a_permanent_error_and_the_loop_goes_on(
    plane: ControlPlane, tmp_path: Path
) -> None:
    plane.create_deployment("vanishing", NS, 2, gpus=1)
    ctl, _ = controller(plane, tmp_path, "vanishing", [95.0])
    assert ctl.tick().action == "scaled"
    assert plane.request("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/vanishing").status == 200
    outcomes = ctl.run(max_ticks=3)
    assert [(o.action, o.error_kind) for o in outcomes] == [("error", "permanent")] * 3
    assert all("is gone" in (o.error or "") for o in outcomes)
    assert ctl.errors == {"permanent": 3}


def test_api_server_down_holds_and_counts_temporary_errors(plane: ControlPlane, tmp_path: Path) -> None:
    dead = f"https://127.0.0.1:{_free_port()}"  # nothing listens there
    ctl, records = controller(plane, tmp_path, "anything", [95.0], server=dead)
    clock = ctl.clock
    outcomes = ctl.run(max_ticks=2)
    assert [(o.action, o.error_kind) for o in outcomes] == [("error", "temporary")] * 2
    assert ctl.errors == {"temporary": 2}
    assert [r["time"] for r in records] == [1_000.0, 1_015.0]  # one tick per interval on the clock
    assert clock.now() == 1_015.0  # no sleep after the last bounded tick


def test_fail_static_never_scales_down_without_data() -> None:
    safety = SafetyConfig(min_replicas=1, max_replicas=10)
    spec = SignalSpec(Metric.QUEUE_LENGTH, 60.0, Aggregation.TOTAL)
    missing = MetricsSnapshot(1_000.0, 6, 6, signals={spec: SignalValue.missing("scrape gap")})
    present = MetricsSnapshot(1_000.0, 6, 6, signals={spec: SignalValue(3.0)})

    def written(desired: int, snapshot: MetricsSnapshot) -> Decision:
        return guard(Decision(desired, Reason.SCALE_DOWN, "raw"), snapshot, safety, (spec,))

    held = written(2, missing)
    assert (held.desired_replicas, held.reason, held.limits) == (6, Reason.NO_DATA, ("NoData",))
    assert written(8, missing).desired_replicas == 8  # scaling up stays allowed
    assert written(2, present) == Decision(2, Reason.SCALE_DOWN, "raw")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (409, TemporaryError),
        (500, TemporaryError),
        (403, Forbidden),
        (404, TargetGone),
        (422, PermanentError),
    ],
)
def test_api_errors_map_onto_the_taxonomy(status: int, error: type[Exception]) -> None:
    target = KubernetesTarget(k8s.ApiClient(), TargetConfig(name="x"), "app=x")

    def fail() -> None:
        raise ApiException(status=status, reason="scripted")

    with pytest.raises(error):
        target._call("patch", "deployments/scale", fail)


def _config(tmp_path: Path, plane: ControlPlane, **extra: Any) -> Path:
    cfg = {
        "kubeconfig": str(plane.kubeconfig(tmp_path / "kubeconfig")),
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NS, "name": "cli"},
        "pod_selector": "app=cli",
        "policy": {"kind": "static", "replicas": 3},
        "safety": {"min_replicas": 1, "max_replicas": 8},
        **extra,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_cli_once_dry_run_prints_the_decision_record(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("cli", NS, 1, gpus=1)
    result = CliRunner().invoke(
        app, ["run", "--config", str(_config(tmp_path, plane)), "--once", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["action"], record["target_replicas"]) == ("dry_run", 3)
    assert plane.deployment_replicas("cli", NS) == 1


def test_cli_once_exits_1_when_prometheus_does_not_answer(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("cli-prom", NS, 2, gpus=1)
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    path = _config(
        tmp_path,
        plane,
        prometheus={"url": down, "presets": ["vllm"], "timeout_s": 2},
        policy="queue-depth",
        target={"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NS, "name": "cli-prom"},
        pod_selector="app=cli-prom",
    )
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--once"])
    assert result.exit_code == 1, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["error"]["kind"] == "metrics_unavailable" and down in record["error"]["message"]
    assert record["action"] == "unchanged"  # fail-static: no data never scales down
    assert plane.deployment_replicas("cli-prom", NS) == 2


def test_cli_bad_config_exits_2(plane: ControlPlane, tmp_path: Path) -> None:
    path = _config(tmp_path, plane, safety={"min_replicas": 5, "max_replicas": 2})
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--once"])
    assert result.exit_code == 2
    assert "safety" in result.output and "min_replicas 5 > max_replicas 2" in result.output


def test_a_statefulset_and_a_custom_resource_scale_through_their_scale_subresource(
    plane: ControlPlane, tmp_path: Path
) -> None:
    api = api_client(plane.kubeconfig(tmp_path / "kubeconfig-kinds"), "test")
    labels = {"app": "llm-sts"}
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "llm-sts", "namespace": NS},
        "spec": {
            "replicas": 1,
            "serviceName": "llm-sts",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "s", "image": "vllm:x"}]},
            },
        },
    }
    assert plane.request("POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets", sts).status == 201
    stateful = KubernetesTarget(
        api, TargetConfig(kind="StatefulSet", name="llm-sts", namespace=NS), "app=llm-sts", timeout_s=5
    )
    assert stateful.counts().current_replicas == 1
    stateful.scale(3)
    got = plane.request("GET", f"/apis/apps/v1/namespaces/{NS}/statefulsets/llm-sts").body
    assert got["spec"]["replicas"] == 3 and stateful.replicas() == 3

    # A custom kind (an inference-server operator's CRD) with the scale subresource.
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "inferenceservers.serving.gpuscale.test"},
        "spec": {
            "group": "serving.gpuscale.test",
            "scope": "Namespaced",
            "names": {"plural": "inferenceservers", "singular": "inferenceserver", "kind": "InferenceServer"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {"type": "integer"},
                                        "model": {"type": "string"},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {"type": "integer"},
                                        "selector": {"type": "string"},
                                    },
                                },
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                }
            ],
        },
    }
    made = plane.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert made.status == 201, made.body
    path = f"/apis/serving.gpuscale.test/v1/namespaces/{NS}/inferenceservers"
    body = {
        "apiVersion": "serving.gpuscale.test/v1",
        "kind": "InferenceServer",
        "metadata": {"name": "llama"},
        "spec": {"replicas": 2, "model": "llama3-8b"},
    }
    wait_until(lambda: plane.request("POST", path, body).status == 201, "the CRD to serve", timeout_s=30.0)

    def inference_server(name: str) -> KubernetesTarget:
        kind = TargetConfig(
            api_version="serving.gpuscale.test/v1", kind="InferenceServer", name=name, namespace=NS
        )
        return KubernetesTarget(api, kind, f"app={name}", timeout_s=5)

    custom = inference_server("llama")
    assert custom.scale_resource == "inferenceservers/scale"
    assert custom.counts() == ReplicaCounts(2, 0, 0, 0)
    custom.scale(5)
    assert plane.request("GET", f"{path}/llama").body["spec"]["replicas"] == 5
    assert custom.replicas() == 5
    gone = inference_server("nope")
    with pytest.raises(TargetGone):
        gone.counts()


def test_in_cluster_credentials_are_used_when_no_kubeconfig_is_given(
    plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a pod sees: the API server's address in the environment, the ServiceAccount's token and
    # the cluster CA as files. The client library reads them from fixed paths; point those here.
    from kubernetes.config import incluster_config

    token = tmp_path / "token"
    token.write_text(TOKEN, encoding="utf-8")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(plane.ca_file()))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(plane.port))
    plane.create_deployment("in-cluster", NS, 2)
    api = api_client(None, "test")
    target = KubernetesTarget(api, TargetConfig(name="in-cluster", namespace=NS), "app=in-cluster")
    assert target.replicas() == 2
    target.scale(3)
    assert plane.deployment_replicas("in-cluster", NS) == 3
