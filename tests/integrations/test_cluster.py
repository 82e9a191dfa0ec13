"""The gpuscale controller on a real small GPU cluster: the Deployment controller makes the pods, the
scheduler places them by ``nvidia.com/gpu``, the emulated kubelet starts and drains them.

One cluster serves the module (:class:`~tests.controlplane.GpuCluster`: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler on 127.0.0.1). Each test gets its own pool of emulated GPU
nodes, picked by a node selector, so tests do not share capacity. The only fake is at gpuscale's own
boundary: :class:`~tests.integrations.scripted.ScriptedSource`, a metrics source serving the queue
length a test sets; the policy is a real HPA (:func:`~tests.integrations.scripted.queue_hpa`:
desired = ceil(queue / 10)) on a ManualClock. Real processes take wall time, so every wait polls
with a deadline. A cold start or drain of ``math.inf`` holds pods in that state until a test releases
them, so "starting" and "draining" are states a test observes without racing the kubelet.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuscale._core.clock import ManualClock
from gpuscale.controller import Controller, SafetyConfig, TargetConfig
from gpuscale.controller.target import KubernetesTarget, api_client
from gpuscale.policies import registry
from gpuscale.policies.ports import ReplicaCounts
from tests.controlplane import GpuCluster, cluster_binaries, wait_until

from .scripted import ScriptedSource, queue_hpa

NS = "default"
POOL = "gpuscale.test/pool"
HPA = queue_hpa(min_replicas=0, max_replicas=100, window_s=60, scale_up_pods=100)
"""desired = ceil(queue / 10): a queue of 95 asks for 10 replicas, 75 for 8, 55 for 6."""
WAIT_S = 60.0
"""Deadline of every wait on the cluster: generous, as two shared cores may be busy; a pass is fast."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    bin_dir = cluster_binaries()
    workdir = Path(tmp_path_factory.mktemp("gpu-cluster"))
    with GpuCluster(
        workdir, nodes=2, gpus_per_node=4, node_labels={POOL: "base"}, cold_start_s=1.0, heartbeat_s=2.0,
        # a node without heartbeats is marked unreachable after 8 s instead of 40 s: heartbeats every
        # 2 s must keep every other node Ready all the same
        controller_manager_args=["--node-monitor-grace-period=8s", "--node-monitor-period=1s"],
        bin_dir=bin_dir,
    ) as c:  # fmt: skip
        yield c
        assert not c.plane.heartbeat_errors, c.plane.heartbeat_errors


def add_pool(cluster: GpuCluster, pool: str, nodes: int = 2, gpus: int = 4, **timing: float) -> list[str]:
    """``nodes`` new GPU nodes labelled ``POOL: pool`` (``timing``: their kubelet's cold start and
    drain); their names."""
    names = [f"{pool}-{i}" for i in range(nodes)]
    for name in names:
        cluster.add_gpu_node(name, gpus, labels={POOL: pool}, **timing)
    return names


def deploy(cluster: GpuCluster, name: str, pool: str, replicas: int) -> None:
    """A Deployment of inference pods asking for one GPU each, kept to ``pool``'s nodes."""
    cluster.create_deployment(name, NS, replicas, gpus=1, node_selector={POOL: pool})


@pytest.fixture
def cleanup(cluster: GpuCluster) -> Iterator[list[str]]:
    """Deployments named here are deleted after the test; the kubelet must have had no API errors."""
    names: list[str] = []
    yield names
    for name in names:
        cluster.request(
            "DELETE",
            f"/apis/apps/v1/namespaces/{NS}/deployments/{name}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
    assert not cluster.kubelet.errors, cluster.kubelet.errors


def controller(
    cluster: GpuCluster, tmp_path: Path, name: str, queue: ScriptedSource
) -> tuple[Controller, KubernetesTarget, list[dict[str, Any]]]:
    api = api_client(cluster.kubeconfig(tmp_path / "kubeconfig"), "test")
    target = KubernetesTarget(api, TargetConfig(name=name, namespace=NS), f"app={name}", timeout_s=5)
    records: list[dict[str, Any]] = []
    ctl = Controller(
        registry.load_policy(HPA, "test"),
        queue,
        target,
        SafetyConfig(min_replicas=0, max_replicas=50),
        ManualClock(1_000.0),
        interval_s=15.0,
        target_name=name,
        sink=lambda record: records.append(json.loads(json.dumps(record))),  # as the JSON log has it
    )
    return ctl, target, records


def tick(ctl: Controller) -> Any:
    out = ctl.tick()
    assert isinstance(ctl.clock, ManualClock)
    ctl.clock.advance(ctl.interval_s)
    return out


def reach(target: KubernetesTarget, expected: ReplicaCounts) -> ReplicaCounts:
    """Wait until ``target.counts()`` is exactly ``expected``."""
    seen: list[ReplicaCounts] = []

    def check() -> bool:
        seen.append(target.counts())
        return seen[-1] == expected

    wait_until(check, f"counts {expected}", WAIT_S, 0.1)
    return seen[-1]


def record_counts(record: dict[str, Any]) -> ReplicaCounts:
    r = record["replicas"]
    return ReplicaCounts(r["current"], r["ready"], r["starting"], r["pending"], r["draining"])


def conditions(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}


def by_state(pods: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The pods' names by state, read from the raw objects independently of KubernetesTarget."""
    out: dict[str, set[str]] = {"ready": set(), "starting": set(), "unschedulable": set(), "draining": set()}
    for pod in pods:
        name, cond = pod["metadata"]["name"], conditions(pod)
        if pod["metadata"].get("deletionTimestamp"):
            out["draining"].add(name)
        elif cond.get("Ready", {}).get("status") == "True":
            out["ready"].add(name)
        elif pod["spec"].get("nodeName"):
            out["starting"].add(name)
        elif cond.get("PodScheduled", {}).get("reason") == "Unschedulable":
            out["unschedulable"].add(name)
    return out


def test_ten_replicas_on_eight_gpus_leave_two_pending_and_count_starting_then_ready(
    cluster: GpuCluster, tmp_path: Path, cleanup: list[str]
) -> None:
    base = ["gpu-0", "gpu-1"]  # the cluster's own two nodes of 4 GPUs
    cluster.kubelet.set_timing(cold_start_s=math.inf, nodes=base)  # hold pods in their cold start
    deploy(cluster, "llm", "base", 1)
    cleanup.append("llm")
    ctl, target, records = controller(cluster, tmp_path, "llm", ScriptedSource([95.0]))
    reach(target, ReplicaCounts(1, 0, 1, 0))

    up = tick(ctl)  # a queue of 95 asks for 10 replicas
    assert (up.action, up.replicas) == ("scaled", 10)
    assert record_counts(records[0]) == ReplicaCounts(1, 0, 1, 0)
    assert records[0]["written_replicas"] == 10 and records[0]["decision"]["reason"] == "ScaleUp"

    # 8 GPUs: the scheduler binds 8 pods, 4 per node, and cannot place the other 2
    reach(target, ReplicaCounts(10, ready=0, starting=8, pending=2))

    def accepted() -> list[dict[str, Any]] | None:
        pods = cluster.pods(NS, "app=llm")
        bound = [p for p in pods if p["spec"].get("nodeName")]
        return pods if all("containerStatuses" in p["status"] for p in bound) else None

    pods = wait_until(accepted, "the kubelet accepted the 8 bound pods", WAIT_S)
    states = by_state(pods)
    assert (len(states["starting"]), len(states["unschedulable"])) == (8, 2)
    assert Counter(p["spec"].get("nodeName") for p in pods) == {"gpu-0": 4, "gpu-1": 4, None: 2}
    for pod in pods:
        cond = conditions(pod)
        if pod["metadata"]["name"] in states["unschedulable"]:
            assert pod["status"]["phase"] == "Pending"
            assert cond["PodScheduled"]["status"] == "False"
            assert "Insufficient nvidia.com/gpu" in cond["PodScheduled"]["message"]
        else:  # accepted by the kubelet, containers being created
            assert cond["PodScheduled"]["status"] == "True" and cond["Ready"]["status"] == "False"
            assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
            assert pod["status"]["hostIP"] and "podIP" not in pod["status"]

    held = tick(ctl)  # 10 asked, 10 exist: nothing to write; the record shows the cluster's state
    assert held.action == "unchanged"
    assert record_counts(records[1]) == ReplicaCounts(10, 0, 8, 2) == held.counts

    cluster.kubelet.set_timing(cold_start_s=1.0, nodes=base)  # the cold start runs its 1 s
    reach(target, ReplicaCounts(10, ready=8, starting=0, pending=2))
    pods = cluster.pods(NS, "app=llm")
    running = [p for p in pods if p["spec"].get("nodeName")]
    assert by_state(pods)["ready"] == {p["metadata"]["name"] for p in running}
    for pod in running:
        status = pod["status"]
        assert status["phase"] == "Running" and status["startTime"]
        assert all(
            conditions(pod)[k]["status"] == "True"
            for k in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        )
        assert [c["ready"] for c in status["containerStatuses"]] == [True]
        assert "running" in status["containerStatuses"][0]["state"]
    assert len({p["status"]["podIP"] for p in running}) == 8
    assert all(cluster.kubelet.started[p["metadata"]["uid"]] >= 1.0 for p in running)

    steady = tick(ctl)
    assert steady.action == "unchanged"
    assert record_counts(records[2]) == ReplicaCounts(10, 8, 0, 2) == target.counts()


def test_scale_down_removes_the_pending_pods_first_then_drains_scheduled_ones(
    cluster: GpuCluster, tmp_path: Path, cleanup: list[str]
) -> None:
    nodes = add_pool(cluster, "shrink", cold_start_s=0.2)
    deploy(cluster, "shrink", "shrink", 10)
    cleanup.append("shrink")
    queue = ScriptedSource([95.0])
    ctl, target, records = controller(cluster, tmp_path, "shrink", queue)
    reach(target, ReplicaCounts(10, ready=8, starting=0, pending=2))
    before = by_state(cluster.pods(NS, "app=shrink"))
    assert len(before["ready"]) == 8 and len(before["unschedulable"]) == 2

    queue.value = 75.0  # asks for 8: the ReplicaSet deletes the unscheduled pods, not running ones
    out = tick(ctl)
    assert (out.action, out.replicas) == ("scaled", 8)
    assert record_counts(records[0]) == ReplicaCounts(10, 8, 0, 2)
    reach(target, ReplicaCounts(8, ready=8, starting=0, pending=0))
    after = cluster.pods(NS, "app=shrink")
    assert {p["metadata"]["name"] for p in after} == before["ready"]

    cluster.kubelet.set_timing(drain_s=math.inf, nodes=nodes)  # hold deleted pods in their drain
    queue.value = 55.0  # asks for 6: two scheduled pods go, draining first
    out = tick(ctl)
    assert (out.action, out.replicas) == ("scaled", 6)
    reach(target, ReplicaCounts(6, ready=6, starting=0, pending=0, draining=2))
    draining = [p for p in cluster.pods(NS, "app=shrink") if p["metadata"].get("deletionTimestamp")]
    assert len(draining) == 2
    assert all(p["spec"]["nodeName"] in nodes for p in draining)
    assert all(p["metadata"]["deletionGracePeriodSeconds"] == 30 for p in draining)  # the pod spec default
    held = tick(ctl)
    assert held.action == "unchanged" and record_counts(records[-1]) == ReplicaCounts(6, 6, 0, 0, 2)

    cluster.kubelet.set_timing(drain_s=0.5, nodes=nodes)  # containers stop: the kubelet finalizes
    reach(target, ReplicaCounts(6, ready=6, starting=0, pending=0, draining=0))
    left = {p["metadata"]["name"] for p in cluster.pods(NS, "app=shrink")}
    assert len(left) == 6 and left < before["ready"]
    assert not left & {p["metadata"]["name"] for p in draining}
    tick(ctl)
    assert record_counts(records[-1]) == ReplicaCounts(6, 6, 0, 0, 0)


def test_a_new_gpu_node_lets_the_pending_pods_schedule(
    cluster: GpuCluster, tmp_path: Path, cleanup: list[str]
) -> None:
    add_pool(cluster, "grow", cold_start_s=0.2)
    deploy(cluster, "grow", "grow", 1)
    cleanup.append("grow")
    ctl, target, records = controller(cluster, tmp_path, "grow", ScriptedSource([95.0]))
    reach(target, ReplicaCounts(1, ready=1, starting=0, pending=0))
    assert tick(ctl).replicas == 10
    reach(target, ReplicaCounts(10, ready=8, starting=0, pending=2))
    waiting = by_state(cluster.pods(NS, "app=grow"))["unschedulable"]

    cluster.add_gpu_node("grow-2", 4, labels={POOL: "grow"}, cold_start_s=0.2)
    reach(target, ReplicaCounts(10, ready=10, starting=0, pending=0))
    pods = cluster.pods(NS, "app=grow")
    on_new = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == "grow-2"}
    assert on_new == waiting  # the two that waited for capacity run on the new node
    assert Counter(p["spec"]["nodeName"] for p in pods) == {"grow-0": 4, "grow-1": 4, "grow-2": 2}
    assert tick(ctl).action == "unchanged"
    assert record_counts(records[-1]) == ReplicaCounts(10, 10, 0, 0, 0)


def test_emulated_nodes_keep_fresh_heartbeats_and_stay_ready_and_untainted(cluster: GpuCluster) -> None:
    def beats() -> dict[str, tuple[str, str]]:
        out = {}
        for name in ("gpu-0", "gpu-1"):
            node = cluster.request("GET", f"/api/v1/nodes/{name}").body
            ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
            lease = cluster.request(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
            ).body
            out[name] = (ready["lastHeartbeatTime"], lease["spec"]["renewTime"])
        return out

    first = beats()

    def renewed() -> bool:
        now = beats()
        return all(now[n][0] > first[n][0] and now[n][1] > first[n][1] for n in now)

    # lastHeartbeatTime has whole seconds: a heartbeat every 2 s moves it within a few periods
    wait_until(renewed, "node heartbeats and leases renewed", timeout_s=15.0, interval_s=0.5)
    for name in ("gpu-0", "gpu-1"):
        node = cluster.request("GET", f"/api/v1/nodes/{name}").body
        assert not node["spec"].get("taints"), node["spec"]
        assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"


def test_a_node_without_heartbeats_is_marked_unreachable_and_tainted(cluster: GpuCluster) -> None:
    cluster.plane.add_gpu_node("silent-0", 4, labels={POOL: "silent"}, heartbeats=False)

    def unreachable() -> dict[str, Any] | None:
        node = cluster.request("GET", "/api/v1/nodes/silent-0").body
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints") or []}
        hit = ready["status"] == "Unknown" and ("node.kubernetes.io/unreachable", "NoSchedule") in taints
        return node if hit else None

    node = wait_until(unreachable, "silent-0 marked unreachable by the node-lifecycle controller", 40.0, 0.5)
    assert (
        next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["reason"] == "NodeStatusUnknown"
    )
    for name in ("gpu-0", "gpu-1"):  # heartbeats kept these fresh all along
        other = cluster.request("GET", f"/api/v1/nodes/{name}").body
        assert not other["spec"].get("taints")
        assert {c["type"]: c["status"] for c in other["status"]["conditions"]}["Ready"] == "True"
    cluster.delete_node("silent-0")


def test_the_rendered_warm_node_buffer_is_preempted_by_a_serving_pod(
    cluster: GpuCluster, cleanup: list[str]
) -> None:
    # `gpuscale manifests --format headroom` of a warm-pool policy with headroom_replicas: 2 renders
    # a negative-priority PriorityClass and two pause pods holding one GPU each; on a full node the
    # real scheduler must preempt one for a serving pod, and the evicted placeholder waits Pending
    # (the signal a node autoscaler launches the next spare node on).
    from gpuscale.integrations import manifests as M

    nodes = add_pool(cluster, "headroom", nodes=1, gpus=2, cold_start_s=0.2, drain_s=0.2)
    config = registry.load_policy_config(
        {
            "kind": "warm-pool",
            "standby_replicas": 1,
            "headroom_replicas": 2,
            "target_per_replica": 80,
            "max_replicas": 8,
        },
        "test",
    )
    rendered = M.render(config, M.Target("Deployment", "hr", NS), "headroom")
    priority, placeholders = (m.body for m in rendered)
    assert (priority["kind"], priority["value"]) == ("PriorityClass", M.PLACEHOLDER_PRIORITY)
    assert placeholders["spec"]["replicas"] == 2
    placeholders["spec"]["template"]["spec"]["nodeSelector"] = {POOL: "headroom"}  # as its header says
    made = cluster.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", priority)
    assert made.status == 201, made.body
    made = cluster.request("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", placeholders)
    assert made.status == 201, made.body
    name = placeholders["metadata"]["name"]
    cleanup.append(name)
    selector = f"app.kubernetes.io/name={name}"

    def held() -> list[dict[str, Any]] | None:
        pods = cluster.pods(NS, selector)
        return pods if len(by_state(pods)["ready"]) == 2 else None

    pods = wait_until(held, "two placeholders Running on the pool's 2 GPUs", WAIT_S)
    assert {p["spec"]["priority"] for p in pods} == {M.PLACEHOLDER_PRIORITY}

    deploy(cluster, "hr", "headroom", 1)  # a serving pod of default priority: no free GPU left
    cleanup.append("hr")

    def preempted() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        serving, pause = cluster.pods(NS, "app=hr"), cluster.pods(NS, selector)
        states = by_state(pause)
        done = len(by_state(serving)["ready"]) == 1 and len(states["ready"]) == 1
        return (serving, pause) if done and len(states["unschedulable"]) == 1 else None

    serving, pause = wait_until(preempted, "the serving pod to preempt one placeholder", WAIT_S)
    assert serving[0]["spec"]["nodeName"] == nodes[0]
    waiting = [p for p in pause if not p["spec"].get("nodeName")]
    assert len(waiting) == 1  # the ReplicaSet replaced the evicted placeholder; it cannot schedule
    assert "Insufficient nvidia.com/gpu" in conditions(waiting[0])["PodScheduled"]["message"]
    cluster.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{priority['metadata']['name']}")
