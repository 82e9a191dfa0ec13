"""The warm pool and the warm-node buffer, live: ``KubernetesTarget`` acting on the whole decision on
a real small GPU cluster (:class:`~tests.controlplane.GpuCluster`: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler on 127.0.0.1, emulated GPU nodes and kubelet).

* Standby pods are real pods of the Deployment, labelled ``gpuscale.io/role: standby``; a real
  Service selecting ``gpuscale.io/role: active`` leaves them out of its Endpoints (the endpoints
  controller decides, not the test). A scale-up promotes them by a label flip: the same pod UIDs,
  Ready before and after with the same Ready transition time, and the kubelet started each of them
  once; replacement standby pods are made; a scale-down keeps the pool at its size.
* A warm-node buffer scales the placeholder Deployment that ``gpuscale manifests --format headroom``
  renders (applied to the API server as rendered) to each decision's count: real pause pods.
* The controller runs as the ServiceAccount ``gpuscale manifests controller`` renders for a policy
  with both; each permission the warm pool and the buffer add is needed: without it the tick fails
  and names it.
* One policy, two worlds: a warm-pool policy with a warm-node buffer, inside a ``safety:`` block
  whose GPU budget cuts the placeholders, decides the same, tick for tick, in the simulator and live
  through a real Prometheus and this cluster (the approach of ``test_end_to_end.py``): the counts it
  saw (standby included), the decision with its pool and placeholder counts, the reason
  (``WarmPoolPromote`` twice) and what the Deployments hold after each tick.

The only fake is at gpuscale's own boundary (:class:`~tests.integrations.scripted.ScriptedSource`,
or the exporter's values in the two-worlds test). Clocks are ManualClocks; real processes take wall
time, so every wait polls with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.clock import ManualClock
from gpuscale.cli import app
from gpuscale.config.scenario import scenario_from_dict
from gpuscale.controller import (
    Controller,
    SafetyConfig,
    TargetConfig,
    build_controller,
    load_controller_config,
)
from gpuscale.controller import target as target_module
from gpuscale.controller.config import WarmPoolLabels
from gpuscale.controller.target import STANDBY_ANNOTATION, KubernetesTarget, api_client
from gpuscale.integrations import manifests as M
from gpuscale.integrations.prometheus import PrometheusSource
from gpuscale.policies import registry
from gpuscale.policies.base import SignalSpec
from gpuscale.policies.ports import ReplicaCounts
from gpuscale.policies.safety import with_safety
from gpuscale.sim.engine import simulate
from tests.controlplane import GpuCluster, serving_cluster, wait_until

from .promserver import NAMESPACE, Exporter, Prometheus, scraping
from .scripted import ScriptedSource, queue_hpa
from .test_end_to_end import SCENARIO, SCRAPE_S, RecordingPolicy, WallClockQueries, set_queue, settle

POOL = "gpuscale.test/pool"
ROLE = "gpuscale.io/role"
WAIT_S = 60.0
"""Deadline of every wait on a real process: generous, as two shared cores may be busy."""
NS = "default"


def warm_pool(*, standby: int = 2, headroom: int = 0, **hpa: Any) -> dict[str, Any]:
    """A warm-pool policy around :func:`queue_hpa` (desired active = ceil(queue / 10))."""
    active = queue_hpa(**{"min_replicas": 1, "max_replicas": 6, "window_s": 60, "scale_up_pods": 100, **hpa})
    policy: dict[str, Any] = {"kind": "warm-pool", "standby_replicas": standby, "active": active}
    if headroom:
        policy["headroom_replicas"] = headroom
    return policy


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    workdir = Path(tmp_path_factory.mktemp("gpu-cluster"))
    with serving_cluster(workdir, ["rbac", NAMESPACE], nodes=0, cold_start_s=0.5, heartbeat_s=2.0) as c:
        yield c


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    with Exporter() as exp:
        yield exp


@pytest.fixture(scope="module")
def prom(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with scraping(exporter, tmp_path_factory.mktemp("prometheus"), scrape_interval_s=SCRAPE_S) as server:
        yield server


def add_pool(cluster: GpuCluster, pool: str, nodes: int, gpus: int = 4) -> list[str]:
    """``nodes`` GPU nodes labelled ``POOL: pool``, so tests never share capacity."""
    names = [f"{pool}-{i}" for i in range(nodes)]
    for name in names:
        cluster.add_gpu_node(name, gpus, labels={POOL: pool})
    return names


def deploy(cluster: GpuCluster, name: str, ns: str, pool: str, replicas: int = 1) -> None:
    """A Deployment of one-GPU pods labelled ``app: <name>`` (no role label: the controller's)."""
    cluster.create_deployment(name, ns, replicas, gpus=1, node_selector={POOL: pool})


def service(cluster: GpuCluster, name: str, ns: str) -> None:
    """The user's Service: the app's pods that carry the active label."""
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name, ROLE: "active"}, "ports": [{"port": 8000}]},
    }
    made = cluster.request("POST", f"/api/v1/namespaces/{ns}/services", body)
    assert made.status == 201, made.body


def endpoint_ips(cluster: GpuCluster, name: str, ns: str) -> set[str]:
    """The Ready addresses the endpoints controller put behind the Service."""
    got = cluster.request("GET", f"/api/v1/namespaces/{ns}/endpoints/{name}")
    subsets = got.body.get("subsets") or [] if got.status == 200 else []
    return {a["ip"] for s in subsets for a in s.get("addresses") or []}


def ready(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's Ready condition when it is True."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready" and c["status"] == "True":
            return dict(c)
    return None


def by_role(cluster: GpuCluster, name: str, ns: str) -> dict[str, list[dict[str, Any]]]:
    """The app's pods that are not going, by their role label (``-`` for none)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for pod in cluster.pods(ns, f"app={name}"):
        if not pod["metadata"].get("deletionTimestamp"):
            out.setdefault((pod["metadata"].get("labels") or {}).get(ROLE, "-"), []).append(pod)
    return out


def uids(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["uid"] for p in pods}


def reach(target: KubernetesTarget, expected: ReplicaCounts) -> ReplicaCounts:
    """Wait until ``target.counts()`` is exactly ``expected``."""
    seen: list[ReplicaCounts] = []

    def check() -> bool:
        seen.append(target.counts())
        return seen[-1] == expected

    try:
        wait_until(check, f"counts {expected}", WAIT_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counts last seen: {seen[-1]}") from None
    return seen[-1]


def labelled(
    cluster: GpuCluster, name: str, ns: str, active: int, standby: int
) -> dict[str, list[dict[str, Any]]]:
    """Wait until exactly ``active`` + ``standby`` pods live, all Ready and labelled so."""

    def check() -> dict[str, list[dict[str, Any]]] | None:
        roles = by_role(cluster, name, ns)
        counts = {k: len(v) for k, v in roles.items()}
        ok = counts == {k: v for k, v in (("active", active), ("standby", standby)) if v}
        return roles if ok and all(ready(p) for v in roles.values() for p in v) else None

    return wait_until(check, f"{active} active + {standby} standby Ready pods of {name}", WAIT_S)


def pods_made(cluster: GpuCluster, name: str, ns: str, count: int) -> None:
    """Wait until the ReplicaSet has made ``count`` live pods of ``name``: a tick labels only the
    pods it lists, so one that relabels new pods must come after they exist."""

    def check() -> bool:
        return sum(len(v) for v in by_role(cluster, name, ns).values()) == count

    wait_until(check, f"{count} live pods of {name}", WAIT_S)


def annotation(cluster: GpuCluster, name: str, ns: str) -> str | None:
    annotations = cluster.plane.deployment(name, ns)["metadata"].get("annotations") or {}
    value = annotations.get(STANDBY_ANNOTATION)
    return None if value is None else str(value)


def controller(
    cluster: GpuCluster,
    tmp_path: Path,
    name: str,
    ns: str,
    policy: Mapping[str, Any],
    queue: ScriptedSource,
) -> tuple[Controller, KubernetesTarget, list[dict[str, Any]]]:
    """A controller of ``policy`` on ``ns/name`` whose target knows the warm pool's labels."""
    api = api_client(cluster.kubeconfig(tmp_path / "kubeconfig"), "test")
    target = KubernetesTarget(
        api, TargetConfig(name=name, namespace=ns), f"app={name}", timeout_s=5, warm_pool=WarmPoolLabels()
    )
    records: list[dict[str, Any]] = []
    ctl = Controller(
        registry.load_policy(dict(policy), "test"),
        queue,
        target,
        SafetyConfig(min_replicas=0, max_replicas=20),
        ManualClock(1_000.0),
        interval_s=15.0,
        target_name=name,
        sink=lambda record: records.append(json.loads(json.dumps(record))),
    )
    return ctl, target, records


def tick(ctl: Controller) -> Any:
    out = ctl.tick()
    assert out.action in ("scaled", "unchanged"), out
    assert isinstance(ctl.clock, ManualClock)
    ctl.clock.advance(ctl.interval_s)
    return out


def counted(record: dict[str, Any]) -> ReplicaCounts:
    r = record["replicas"]
    return ReplicaCounts(
        r["current"], r["ready"], r["starting"], r["pending"], r["draining"],
        r.get("standby", 0), r.get("standby_target", 0),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the warm pool
# --------------------------------------------------------------------------------------------------


def test_standby_pods_are_real_pods_outside_the_service_promoted_by_a_label_flip(
    cluster: GpuCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_pool(cluster, "flip", nodes=2)
    deploy(cluster, "flip", NS, "flip", 1)
    service(cluster, "flip", NS)
    queue = ScriptedSource([5.0])  # asks for 1 active replica
    ctl, target, records = controller(cluster, tmp_path, "flip", NS, warm_pool(standby=2), queue)
    reach(target, ReplicaCounts(1, 1))  # no pool yet: read as without one

    first = tick(ctl)  # the pool starts: 1 active + 2 standby, kept on the Deployment itself
    assert records[0]["decision"]["standby_replicas"] == 2 and first.counts == ReplicaCounts(1, 1)
    assert cluster.deployment_replicas("flip", NS) == 3 and annotation(cluster, "flip", NS) == "2"
    # the two new pods load; by the plan they are the pool's before any label says so
    reach(target, ReplicaCounts(1, 1, standby=2, standby_target=2))
    tick(ctl)
    roles = labelled(cluster, "flip", NS, active=1, standby=2)
    assert counted(records[1]) == ReplicaCounts(1, 1, standby=2, standby_target=2)
    # real pods, Ready, outside the Service: only the active pod is behind it
    active_ip = {roles["active"][0]["status"]["podIP"]}
    wait_until(
        lambda: endpoint_ips(cluster, "flip", NS) == active_ip, "the Service has the active pod only", WAIT_S
    )
    standby = {p["metadata"]["uid"]: p for p in roles["standby"]}
    started = {uid: cluster.kubelet.started[uid] for uid in standby}  # each started once, before

    queue.value = 35.0  # asks for 4: promote both standby pods at once, start one cold
    up = tick(ctl)
    rec = records[2]
    assert (up.action, up.replicas, rec["decision"]["reason"]) == ("scaled", 4, "WarmPoolPromote")
    assert "promote 2 of 2 standby pod(s) at once, start 1 cold" in rec["decision"]["message"]
    assert cluster.deployment_replicas("flip", NS) == 6  # 4 active + 2 standby
    # the promotion is the label flip, done by the tick itself: the same pods, Ready all along
    after = {p["metadata"]["uid"]: p for p in cluster.pods(NS, "app=flip")}
    for uid, before in standby.items():
        pod = after[uid]
        assert pod["metadata"]["labels"][ROLE] == "active"
        assert ready(pod) == ready(before)  # same Ready transition: no restart, no cold start
    ips = {p["status"]["podIP"] for p in standby.values()}
    wait_until(
        lambda: ips <= endpoint_ips(cluster, "flip", NS), "the promoted pods behind the Service", WAIT_S
    )

    # the cold one and the two refills load; the next tick labels them
    reach(target, ReplicaCounts(4, 4, standby=2, standby_target=2))
    tick(ctl)
    roles = labelled(cluster, "flip", NS, active=4, standby=2)
    assert uids(roles["active"]) >= set(standby)
    assert not uids(roles["standby"]) & set(standby)  # the pool refilled with new pods
    assert {uid: cluster.kubelet.started[uid] for uid in standby} == started  # never started again
    active_ips = {p["status"]["podIP"] for p in roles["active"]}
    wait_until(
        lambda: endpoint_ips(cluster, "flip", NS) == active_ips, "4 active pods behind the Service", WAIT_S
    )

    # a restarted controller, or a new leader, reads the split back from the Deployment
    api = api_client(cluster.kubeconfig(tmp_path / "kubeconfig-2"), "test")
    fresh = KubernetesTarget(
        api, TargetConfig(name="flip", namespace=NS), "app=flip", warm_pool=WarmPoolLabels()
    )
    assert fresh.counts() == target.counts() == ReplicaCounts(4, 4, standby=2, standby_target=2)

    # a steady tick only reads: the pool, the labels and the spec are as the decision asks
    calls: list[tuple[str, str]] = []
    real = target_module.call_api

    def recording(verb: str, resource: str, *args: Any, **kwargs: Any) -> Any:
        calls.append((verb, resource))
        return real(verb, resource, *args, **kwargs)

    monkeypatch.setattr(target_module, "call_api", recording)
    steady = tick(ctl)
    assert steady.action == "unchanged" and records[-1]["decision"]["standby_replicas"] == 2
    assert calls and all(verb in ("get", "list") for verb, _ in calls), calls
    monkeypatch.undo()

    queue.value = 15.0  # asks for 2: the ReplicaSet deletes 2 pods of its choosing; the pool stays 2
    down = tick(ctl)
    assert (down.action, down.replicas) == ("scaled", 2)
    assert cluster.deployment_replicas("flip", NS) == 4
    reach(target, ReplicaCounts(2, 2, standby=2, standby_target=2))
    tick(ctl)  # demotes an active pod if the ReplicaSet took a standby one
    roles = labelled(cluster, "flip", NS, active=2, standby=2)
    active_ips = {p["status"]["podIP"] for p in roles["active"]}
    wait_until(
        lambda: endpoint_ips(cluster, "flip", NS) == active_ips, "2 active pods behind the Service", WAIT_S
    )


def test_a_target_that_never_had_a_pool_gets_no_label(cluster: GpuCluster, tmp_path: Path) -> None:
    add_pool(cluster, "plain", nodes=1)
    deploy(cluster, "plain", NS, "plain", 1)
    hpa = queue_hpa(min_replicas=1, max_replicas=6, window_s=60, scale_up_pods=100)
    ctl, target, _ = controller(cluster, tmp_path, "plain", NS, hpa, ScriptedSource([25.0]))
    assert target.warm_pool is not None  # labels configured, but the policy decides no pool
    assert tick(ctl).replicas == 3
    reach(target, ReplicaCounts(3, 3))
    tick(ctl)
    assert annotation(cluster, "plain", NS) is None
    assert by_role(cluster, "plain", NS).keys() == {"-"} and len(by_role(cluster, "plain", NS)["-"]) == 3


# --------------------------------------------------------------------------------------------------
# the warm-node buffer
# --------------------------------------------------------------------------------------------------


def apply_headroom(
    cluster: GpuCluster, policy: dict[str, Any], target: str, ns: str, pool: str, tmp_path: Path
) -> str:
    """``gpuscale manifests --format headroom`` for ``policy``, applied as rendered (plus the node
    selector its header asks for); the placeholder Deployment's name."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    args = ["manifests", "--policy", str(path), "--target", f"Deployment/{target}", "--namespace", ns]
    result = CliRunner().invoke(app, [*args, "--format", "headroom"])
    assert result.exit_code == 0, result.output
    priority, placeholders = M.objects(result.stdout)
    placeholders["spec"]["template"]["spec"]["nodeSelector"] = {POOL: pool}
    made = cluster.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", priority)
    assert made.status == 201, made.body
    made = cluster.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", placeholders)
    assert made.status == 201, made.body
    return str(placeholders["metadata"]["name"])


def pause_pods(cluster: GpuCluster, name: str, ns: str, count: int) -> list[dict[str, Any]]:
    """Wait until exactly ``count`` placeholder pods live, all Running and Ready."""

    def check() -> list[dict[str, Any]] | None:
        pods = cluster.pods(ns, f"app.kubernetes.io/name={name}")
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == count and all(ready(p) for p in pods) else None

    return wait_until(check, f"{count} Ready placeholder pod(s)", WAIT_S)


def test_the_warm_node_buffer_scales_the_rendered_placeholder_deployment(
    cluster: GpuCluster, tmp_path: Path
) -> None:
    add_pool(cluster, "spare", nodes=3)
    policy = warm_pool(standby=1, headroom=3)
    name = apply_headroom(cluster, policy, "spare", NS, "spare", tmp_path)
    assert name == "spare-gpu-headroom" and cluster.deployment_replicas(name, NS) == 3
    pods = pause_pods(cluster, name, NS, 3)
    assert {p["spec"]["priority"] for p in pods} == {M.PLACEHOLDER_PRIORITY}
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {M.PAUSE_IMAGE}
    deploy(cluster, "spare", NS, "spare", 1)

    # `gpuscale run`'s own wiring, from a config file; the budget shares 7 GPUs: active first, then
    # the pool (1), then the placeholders (at most 3)
    cfg = {
        "kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
        "target": {"namespace": NS, "name": "spare"},
        "pod_selector": "app=spare",
        "policy": policy,
        "safety": {"min_replicas": 1, "max_replicas": 6, "gpu_budget": 7},
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    records: list[dict[str, Any]] = []
    ctl = build_controller(load_controller_config(path), path, ManualClock(1_000.0), sink=records.append)
    assert isinstance(ctl.target, KubernetesTarget) and ctl.target.headroom == name
    queue = ScriptedSource([5.0])
    ctl.metrics = queue

    for value, active, placeholders in [(5.0, 1, 3), (45.0, 5, 1), (35.0, 4, 2), (5.0, 1, 3)]:
        queue.value = value
        out = tick(ctl)
        decision = records[-1]["decision"]
        assert (out.replicas, decision["placeholder_pods"]) == (active, placeholders), decision
        assert cluster.deployment_replicas(name, NS) == placeholders
        pause_pods(cluster, name, NS, placeholders)  # real pause pods, on the spare GPUs
    assert "GpuBudget" in {r for rec in records for r in rec.get("safety", [])}


# --------------------------------------------------------------------------------------------------
# RBAC: the rendered Role, and each permission it adds
# --------------------------------------------------------------------------------------------------


def may(
    cluster: GpuCluster, user: str, ns: str, verb: str, group: str, resource: str, name: str | None
) -> bool:
    """What the API server's authorizer answers for ``user`` now (a SubjectAccessReview)."""
    resource, _, sub = resource.partition("/")
    attrs = {"namespace": ns, "verb": verb, "group": group, "resource": resource, "subresource": sub}
    if name is not None:
        attrs["name"] = name
    ns_group = f"system:serviceaccounts:{ns}"
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", ns_group, "system:authenticated"],
            "resourceAttributes": attrs,
        },
    }
    got = cluster.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert got.status == 201, got.body
    return bool(got.body["status"].get("allowed"))


def test_the_rendered_role_is_what_a_warm_pool_with_a_buffer_needs_and_each_grant_is_needed(
    cluster: GpuCluster, tmp_path: Path
) -> None:
    ns, name = "rbac", "served"
    add_pool(cluster, "rbac", nodes=2)
    policy = warm_pool(standby=2, headroom=2, max_replicas=4)
    placeholders = apply_headroom(cluster, policy, name, ns, "rbac", tmp_path)
    deploy(cluster, name, ns, "rbac", 1)
    cfg = {
        "kubeconfig": "kubeconfig-on-my-laptop",
        "target": {"namespace": ns, "name": name},
        "pod_selector": f"app={name}",
        "policy": policy,
        "safety": {"min_replicas": 1, "max_replicas": 4, "gpu_budget": 7},
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = CliRunner().invoke(app, ["manifests", "controller", "--config", str(path)])
    assert result.exit_code == 0, result.output
    objects = {o["kind"]: o for o in yaml.safe_load_all(result.stdout) if o}
    role = objects["Role"]
    added = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [name], "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": [placeholders],
         "verbs": ["get", "patch"]},
    ]  # fmt: skip
    assert role["rules"][2:] == added
    pod_cfg = yaml.safe_load(objects["ConfigMap"]["data"]["controller.yaml"])
    assert pod_cfg["warm_pool"] == {"label": ROLE, "active": "active", "standby": "standby"}
    assert pod_cfg["headroom"] == {}  # the default name: <target>-gpu-headroom
    urls = {
        "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
        "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    }
    for kind, url in urls.items():
        made = cluster.request("POST", url, objects[kind])
        assert made.status == 201, (kind, made.body)
    sa = objects["ServiceAccount"]["metadata"]["name"]
    token = cluster.request(
        "POST",
        f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert token.status == 201, token.body
    pod_cfg["kubeconfig"] = str(cluster.kubeconfig(tmp_path / "sa-kubeconfig", token.body["status"]["token"]))
    pod_path = tmp_path / "pod" / "controller.yaml"
    pod_path.parent.mkdir()
    pod_path.write_text(yaml.safe_dump(pod_cfg), encoding="utf-8")
    ctl = build_controller(load_controller_config(pod_path), pod_path, ManualClock(1_000.0))
    assert isinstance(ctl.target, KubernetesTarget)
    assert ctl.target.warm_pool == WarmPoolLabels() and ctl.target.headroom == placeholders
    queue = ScriptedSource([5.0])
    ctl.metrics = queue
    user = f"system:serviceaccount:{ns}:{sa}"
    role_url = f"{urls['Role']}/{role['metadata']['name']}"
    grants = [  # (verb, group, resource, name) for every rule of the Role
        ("list", "", "pods", None),
        ("get", "apps", "deployments/scale", name),
        ("patch", "", "pods", None),
        ("get", "apps", "deployments", name),
        ("patch", "apps", "deployments", name),
        ("get", "apps", "deployments/scale", placeholders),
        ("patch", "apps", "deployments/scale", placeholders),
    ]

    def in_force(rules: list[dict[str, Any]], denied: tuple[str, str, str, str | None] | None) -> None:
        """Put ``rules`` in the Role and wait until the authorizer denies ``denied`` and allows the rest."""
        put = cluster.request("PUT", role_url, {**role, "rules": rules})
        assert put.status == 200, put.body

        def agrees() -> bool:
            return all(may(cluster, user, ns, *g) == (g != denied) for g in grants)

        wait_until(agrees, f"the authorizer to deny only {denied}", 20.0, 0.2)

    def without(verb: str, resource: str, rule_name: str | None) -> list[dict[str, Any]]:
        out = []
        for rule in role["rules"]:
            if resource in rule["resources"] and rule.get("resourceNames", [None])[0] == rule_name:
                rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
            if rule["verbs"]:
                out.append(rule)
        return out

    def fails(expected: str) -> str:
        out = ctl.tick()
        assert isinstance(ctl.clock, ManualClock)
        ctl.clock.advance(15)
        assert (out.action, out.error_kind) == ("error", "permanent"), out
        assert out.error is not None and expected in out.error, out.error
        return out.error

    in_force(role["rules"], None)
    tick(ctl)  # reads, starts the pool, labels the pod and reads the buffer: the Role suffices
    assert cluster.deployment_replicas(name, ns) == 3 and annotation(cluster, name, ns) == "2"
    reach(ctl.target, ReplicaCounts(1, 1, standby=2, standby_target=2))
    tick(ctl)
    labelled(cluster, name, ns, active=1, standby=2)

    in_force(without("get", "deployments", name), ("get", "apps", "deployments", name))
    fails(f"may not get deployments in namespace {ns}")  # the pool's size is on the Deployment

    in_force(without("patch", "pods", None), ("patch", "", "pods", None))
    queue.value = 25.0  # asks for 3: a promotion, which is a pod's label
    fails(f"may not patch pods in namespace {ns}")
    pods_made(cluster, name, ns, 5)  # the pool's size was written before the labels were refused
    in_force(role["rules"], None)
    tick(ctl)
    labelled(cluster, name, ns, active=3, standby=2)

    in_force(without("patch", "deployments", name), ("patch", "apps", "deployments", name))
    queue.value = 35.0  # asks for 4: spec.replicas and the pool's size are one patch
    fails(f"may not patch deployments in namespace {ns}")

    in_force(
        without("get", "deployments/scale", placeholders), ("get", "apps", "deployments/scale", placeholders)
    )
    error = fails(f"may not get deployments/scale in namespace {ns}")
    assert placeholders in error  # not the target's own scale subresource
    assert cluster.deployment_replicas(name, ns) == 6  # the pool's writes came first

    # 4 active + 2 standby leave 1 GPU of 7 for placeholders: 2 -> 1
    in_force(
        without("patch", "deployments/scale", placeholders),
        ("patch", "apps", "deployments/scale", placeholders),
    )
    assert placeholders in fails(f"may not patch deployments/scale in namespace {ns}")
    pods_made(cluster, name, ns, 6)
    in_force(role["rules"], None)
    tick(ctl)
    assert cluster.deployment_replicas(placeholders, ns) == 1
    pause_pods(cluster, placeholders, ns, 1)
    assert isinstance(ctl.target, KubernetesTarget)
    reach(ctl.target, ReplicaCounts(4, 4, standby=2, standby_target=2))


# --------------------------------------------------------------------------------------------------
# one policy, two worlds
# --------------------------------------------------------------------------------------------------

TWO_WORLDS = {"name": "warm-pool-e2e", **warm_pool(standby=2, headroom=2, window_s=1, scale_up_pods=2,
              scale_up_period_s=30, scale_down_window_s=45)}  # fmt: skip
"""The end-to-end test's queue HPA (1..6, at most +2 pods per 30 s, a 45-s scale-down window) with
2 loaded standby pods and 2 placeholder pods."""
SAFETY = {"min_replicas": 1, "max_replicas": 6, "gpu_budget": 8}
"""8 GPUs: at 5 active, the pool (2) leaves 1 for the placeholders."""


@dataclasses.dataclass(frozen=True)
class Tick:
    """What one policy tick saw and did, in either world."""

    time_s: float
    queue: float | None
    counts: ReplicaCounts
    desired: int | None
    reason: str
    standby_replicas: int | None
    placeholder_pods: int | None
    replicas: int
    """Active spec after the tick."""

    def row(self) -> str:
        c = self.counts
        return (
            f"t={self.time_s:>5g} queue={self.queue!s:>5} {c.current_replicas}->{self.replicas} "
            f"ready={c.ready} standby={c.standby}/{c.standby_target} placeholders={self.placeholder_pods} "
            f"{self.reason}"
        )


def simulated(spec: SignalSpec) -> list[Tick]:
    # The policy inside the safety tail, as `gpuscale run` wraps it; recorded outside, so the
    # decisions are what is written (the GPU budget cuts the placeholders).
    safe = with_safety(registry.load_policy(TWO_WORLDS, "test"), SafetyConfig(**SAFETY))
    recording = RecordingPolicy(safe)
    result = simulate(scenario_from_dict(SCENARIO, "test"), recording)
    replicas = result.timeline.column("desired")
    assert len(recording.seen) == len(replicas)
    return [
        Tick(
            snap.time_s,
            snap.value(spec),
            ReplicaCounts(
                snap.current_replicas,
                snap.ready,
                snap.starting,
                snap.pending,
                0,
                snap.standby,
                snap.standby_target,
            ),
            d.desired_replicas,
            d.reason.value,
            d.standby_replicas,
            d.placeholder_pods,
            int(after),
        )
        for (snap, d), after in zip(recording.seen, replicas, strict=True)
    ]


def settled(target: KubernetesTarget) -> ReplicaCounts:
    """Wait until the last write's pods all exist and are Ready on both sides, and none is going."""

    def done() -> ReplicaCounts | None:
        c = target.counts()
        ok = c.ready == c.current_replicas and c.starting == c.pending == c.draining == 0
        return c if ok and c.standby == c.standby_target else None

    return wait_until(done, "the pods match the active spec and the pool", WAIT_S)


def test_the_simulator_and_the_live_controller_make_the_same_warm_pool_decisions(
    cluster: GpuCluster, exporter: Exporter, prom: Prometheus, tmp_path: Path
) -> None:
    (spec,) = registry.load_policy(TWO_WORLDS, "test").signals
    sim = simulated(spec)
    assert all(t.queue is not None and t.queue == int(t.queue) for t in sim), sim
    assert all(t.counts.starting == t.counts.pending == 0 for t in sim)  # cold starts end within a tick

    name = "llm"  # in the exporter's namespace: its pods llm-... are the exporter's series
    add_pool(cluster, "e2e", nodes=3)
    placeholders = apply_headroom(cluster, TWO_WORLDS, name, NAMESPACE, "e2e", tmp_path)
    pause_pods(cluster, placeholders, NAMESPACE, 2)
    deploy(cluster, name, NAMESPACE, "e2e", SCENARIO["control"]["initial_replicas"])
    config = {
        "prometheus": {"url": prom.url, "presets": ["vllm"]},
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NAMESPACE, "name": name},
        "pod_selector": f"app={name}",
        "kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
        "policy": TWO_WORLDS,
        "safety": SAFETY,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    clock = ManualClock(sim[0].time_s)
    records: list[dict[str, Any]] = []
    ctl = build_controller(
        load_controller_config(path), path, clock, sink=lambda r: records.append(json.loads(json.dumps(r)))
    )
    assert isinstance(ctl.metrics, PrometheusSource) and isinstance(ctl.target, KubernetesTarget)
    assert ctl.target.warm_pool == WarmPoolLabels() and ctl.target.headroom == placeholders
    source, target = ctl.metrics, ctl.target
    ctl.metrics = WallClockQueries(source)

    live: list[Tick] = []
    promoted: list[set[str]] = []
    for expected in sim:
        clock.advance(expected.time_s - clock.now())
        assert expected.queue is not None
        settle(prom, source, spec, set_queue(exporter, expected.queue))
        settled(target)
        pool = {
            p["metadata"]["uid"]: p for p in by_role(cluster, name, NAMESPACE).get("standby", []) if ready(p)
        }
        out = ctl.tick()
        assert out.action in ("scaled", "unchanged"), out
        rec = records[-1]
        live.append(
            Tick(
                rec["time"],
                rec["signals"][spec.key]["value"],
                dataclasses.replace(counted(rec), draining=0),
                rec["decision"]["desired_replicas"],
                rec["decision"]["reason"],
                rec["decision"].get("standby_replicas"),
                rec["decision"].get("placeholder_pods"),
                rec["written_replicas"] if out.action == "scaled" else rec["target_replicas"],
            )
        )
        pool_size = live[-1].standby_replicas or 0
        assert cluster.deployment_replicas(name, NAMESPACE) == live[-1].replicas + pool_size
        assert cluster.deployment_replicas(placeholders, NAMESPACE) == live[-1].placeholder_pods
        if live[-1].reason == "WarmPoolPromote":  # the promotion is a label flip on Ready pods
            now = {p["metadata"]["uid"]: p for p in cluster.pods(NAMESPACE, f"app={name}")}
            flipped = {u for u, p in pool.items() if now[u]["metadata"]["labels"][ROLE] == "active"}
            assert all(ready(now[u]) == ready(pool[u]) for u in flipped)
            promoted.append(flipped)
    print("\n" + "\n".join(f"{s.row()}   | live: {t.row()}" for s, t in zip(sim, live, strict=True)))

    assert live == sim
    reasons = [t.reason for t in live]
    assert reasons.count("WarmPoolPromote") >= 1 and "ScaleDown" in reasons
    assert all(len(p) == 2 for p in promoted)  # both standby pods each time, as the simulator did
    assert {t.standby_replicas for t in live} == {2}
    assert 1 in [t.placeholder_pods for t in live]  # the budget cut them, and gave them back
    assert live[-1].placeholder_pods == 2
    pause_pods(cluster, placeholders, NAMESPACE, 2)
    # the last scale-down's pods: by the plan at once, on the labels from the next tick on
    final = live[-1].replicas
    assert settled(target) == ReplicaCounts(final, final, standby=2, standby_target=2)
    clock.advance(15)
    assert ctl.tick().action in ("scaled", "unchanged")
    labelled(cluster, name, NAMESPACE, active=final, standby=2)
