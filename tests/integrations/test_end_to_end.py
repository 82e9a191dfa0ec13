"""One policy, two worlds: the simulator's decisions replayed through a real Prometheus and a real
Kubernetes control plane give the same decisions; and ``gpuscale run`` as a long-running process.

**Simulator vs live.** An HPA on the total queue length (External AverageValue 10 per pod, scale-up at
most 2 pods per 30 s, a 45-s scale-down stabilization window: its decisions depend on the signal, its
own history and the snapshot times) runs first in the simulator on a short closed-loop spike, with
every tick's snapshot and decision recorded. The same policy then runs live, built as
:func:`~gpuscale.controller.build_controller` builds it for ``gpuscale run``: a real
:class:`~gpuscale.integrations.prometheus.PrometheusSource` asking Debian's Prometheus, which scrapes
a test exporter, and a real :class:`~gpuscale.controller.target.KubernetesTarget` on a
:class:`~tests.controlplane.GpuCluster` whose Deployment asks one ``nvidia.com/gpu`` per pod. Its
clock is a ManualClock stepped through the simulator's tick times (15 s of simulated time take about
two seconds here). Before each tick the exporter's two per-pod ``vllm:num_requests_waiting`` series
are set so that their sum is the queue the simulator's policy saw, and the test waits (bounded poll)
until Prometheus answers the policy's own PromQL with exactly that value, and until the Deployment's
pods exist as the last write asked.

One adapter stands between the two clocks, :class:`WallClockQueries`: Prometheus stores samples in
real time while the controller's clock is compressed, so the adapter asks Prometheus at the real
time and stamps the snapshot with the controller's time. Everything else is real: the PromQL, the
HTTP API and its parsing, the aggregation over pods, the policy, the safety stage, the scale
subresource, the ReplicaSet controller, the scheduler, the (emulated) kubelet.

The simulator's queue is an integer on every tick (the policy's 1-s window holds one 1-s scrape), and
an average of equal integers is exact in floating point, so the values compare exactly.

**``gpuscale run``.** Two replicas of the real CLI process with leader election and their probes and
metrics on 127.0.0.1: one acts, one stands by, SIGTERM releases the Lease and exits 0, the standby
takes over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpuscale._core.clock import ManualClock, SystemClock
from gpuscale.config.scenario import scenario_from_dict
from gpuscale.controller import build_controller, load_controller_config
from gpuscale.controller.target import KubernetesTarget
from gpuscale.integrations.prometheus import PrometheusSource
from gpuscale.policies import registry
from gpuscale.policies.base import Decision, Delegating, MetricsSnapshot, Policy, SignalSpec
from gpuscale.policies.ports import MetricsSource, ReplicaCounts
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import Timeline
from tests.controlplane import GpuCluster, _free_port, serving_cluster, wait_until

from .promserver import NAMESPACE, PODS, Exporter, Prometheus, scraping
from .scripted import queue_hpa

WAIT_S = 60.0
"""Deadline of every wait on a real process: generous, as two shared cores may be busy."""
SCRAPE_S = 0.25
"""Prometheus' scrape interval here: a 1-s window holds only the current value about 1.25 s after a
change."""
NAME = "llm"
"""The Deployment, in the exporter's namespace ``ml``: its pods ``llm-...`` are the exporter's."""
VLLM = "vllm/vllm-openai:v0.6.0"
"""The Deployments' image: inference pods asking for one GPU each."""

POLICY: dict[str, Any] = queue_hpa(
    name="queue-e2e",
    min_replicas=1,
    max_replicas=6,
    window_s=1,
    scale_up_pods=2,
    scale_up_period_s=30,
    scale_down_window_s=45,
)
"""desired = ceil(queue / 10) in 1..6; at most +2 pods per 30 s; down to the highest of the last 45 s."""

SCENARIO: dict[str, Any] = {
    "name": "end-to-end-spike",
    "description": "5 users, 80 from t=30 s for 90 s, then 5 again; fast cold starts.",
    "duration_s": 180,
    "seed": 3,
    "slo": {"latency_ms": 500},
    "workload": {
        "kind": "closed-loop",
        "users": {"kind": "spike", "base_users": 5, "peak_users": 80, "start_s": 30, "hold_s": 90},
        "think_time_s": [0.5, 1],
    },
    "model": {"profile": "mobilenetv4-rtx3080-triton"},
    "startup": {"image_pull_s": 0, "model_download_s": 0, "model_load_s": 2, "warmup_s": 1},
    "cluster": {
        "pools": [
            {
                "name": "g",
                "gpu": "rtx3080",
                "gpus_per_node": 4,
                "nodes": 3,
                "image_cached": True,
                "model_cached": True,
            }
        ]
    },
    "telemetry": {"scrape_interval_s": 1},
    "control": {"initial_replicas": 1},
}


@dataclass(frozen=True)
class Tick:
    """What one policy tick saw and did, in either world."""

    time_s: float
    queue: float | None
    current: int
    pods: int
    """The pods that exist (ready + starting + pending): the HPA's ``status.replicas``."""
    desired: int | None
    reason: str
    replicas: int
    """Spec replicas after the tick (written, or kept)."""

    def row(self) -> str:
        queue = "-" if self.queue is None else f"{self.queue:g}"
        desired = "hold" if self.desired is None else str(self.desired)
        return (
            f"t={self.time_s:>5g}  queue={queue:>4}  {self.current}->{self.replicas}  "
            f"desired={desired:>4}  {self.reason}"
        )


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    workdir = Path(tmp_path_factory.mktemp("gpu-cluster"))
    with serving_cluster(
        workdir, [NAMESPACE], nodes=3, gpus_per_node=4, cold_start_s=0.5, heartbeat_s=2.0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    with Exporter() as exp:
        yield exp


@pytest.fixture(scope="module")
def prom(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with scraping(exporter, tmp_path_factory.mktemp("prometheus"), scrape_interval_s=SCRAPE_S) as server:
        yield server


# --------------------------------------------------------------------------------------------------
# simulator vs live
# --------------------------------------------------------------------------------------------------


class RecordingPolicy(Delegating):
    """The policy, unchanged, with every snapshot it was given and every decision it made kept."""

    def __init__(self, policy: Policy[Any]) -> None:
        self.inner = policy
        self.seen: list[tuple[MetricsSnapshot, Decision]] = []

    def initial_state(self) -> Any:
        return self.inner.initial_state()

    def decide(self, snapshot: MetricsSnapshot, state: Any) -> tuple[Decision, Any]:
        decision, state = self.inner.decide(snapshot, state)
        self.seen.append((snapshot, decision))
        return decision, state


def simulated(spec: SignalSpec) -> tuple[list[Tick], Timeline]:
    """The simulator's ticks of :data:`POLICY` on :data:`SCENARIO`, and its timeline."""
    recording = RecordingPolicy(registry.load_policy(POLICY, "test"))
    result = simulate(scenario_from_dict(SCENARIO, "test"), recording)
    replicas = result.timeline.column("desired")  # the target's spec after each tick
    assert len(recording.seen) == len(replicas)
    ticks = [
        Tick(
            snap.time_s,
            snap.value(spec),
            snap.current_replicas,
            snap.ready + snap.starting + snap.pending,
            decision.desired_replicas,
            decision.reason.value,
            int(after),
        )
        for (snap, decision), after in zip(recording.seen, replicas, strict=True)
    ]
    return ticks, result.timeline


class WallClockQueries:
    """Asks ``source`` at the real time, and stamps the snapshot with the controller's time.

    Prometheus stores what it scrapes at the real time; the controller's ManualClock runs through the
    simulator's tick times instead. The values the policy reads are Prometheus' answers at the moment
    of asking; only ``time_s`` (what the policy's windows and rate limits count with) is the
    controller's.
    """

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self.wall = SystemClock()

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        snapshot = self.source.snapshot(self.wall.now(), specs, counts)
        return dataclasses.replace(snapshot, time_s=now)

    def unavailable(self) -> str | None:
        return self.source.unavailable()


def set_queue(exporter: Exporter, total: float) -> dict[str, float]:
    """Per-pod waiting requests that sum to ``total`` (an integer): split over the two pods."""
    first = float(int(total) // 2)
    per_pod = dict(zip(PODS, (first, total - first), strict=True))
    for pod, value in per_pod.items():
        exporter.vllm_waiting.labels(NAMESPACE, pod).set(value)
    return per_pod


def settle(prom: Prometheus, source: PrometheusSource, spec: SignalSpec, per_pod: dict[str, float]) -> None:
    """Wait until every sample in the window is the set value, and the policy's query answers the sum."""
    query, _ = source.queries(spec)
    assert query is not None
    series = f'vllm:num_requests_waiting{{namespace="{NAMESPACE}"}}[{spec.window_s:g}s]'
    wall = SystemClock()

    def settled() -> bool:
        for fn in ("min_over_time", "max_over_time"):
            got = {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(f"{fn}({series})")}
            if got != per_pod:
                return False
        return source.scalar(query, wall.now()) == sum(per_pod.values())

    wait_until(settled, f"Prometheus answers {query} with {sum(per_pod.values()):g}", WAIT_S, 0.05)


def converge(target: KubernetesTarget) -> ReplicaCounts:
    """Wait until the pods the last write asked for all exist on a node and none is going."""

    def done() -> ReplicaCounts | None:
        c = target.counts()
        ok = c.ready + c.starting == c.current_replicas and c.pending == 0 and c.draining == 0
        return c if ok else None

    return wait_until(done, "the Deployment's pods match its spec", WAIT_S)


def test_the_simulator_and_the_live_controller_make_the_same_decisions(
    cluster: GpuCluster, exporter: Exporter, prom: Prometheus, tmp_path: Path
) -> None:
    (spec,) = registry.load_policy(POLICY, "test").signals
    sim, timeline = simulated(spec)
    assert list(timeline.column("reason")) == [t.reason for t in sim]  # the simulator's own log agrees
    assert all(t.queue is not None and t.queue == int(t.queue) for t in sim), sim

    cluster.create_deployment(NAME, NAMESPACE, SCENARIO["control"]["initial_replicas"], gpus=1, image=VLLM)
    config = {
        "prometheus": {"url": prom.url, "presets": ["vllm"]},  # selector: namespace ml, pods llm-.*
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NAMESPACE, "name": NAME},
        "pod_selector": f"app={NAME}",
        "kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
        "policy": POLICY,
        "safety": {"min_replicas": 1, "max_replicas": 6},
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    clock = ManualClock(sim[0].time_s)
    records: list[dict[str, Any]] = []
    ctl = build_controller(
        load_controller_config(path), path, clock, sink=lambda r: records.append(json.loads(json.dumps(r)))
    )
    assert isinstance(ctl.metrics, PrometheusSource) and isinstance(ctl.target, KubernetesTarget)
    assert ctl.interval_s == 15.0  # the HPA's sync period, as in the simulator
    source, target = ctl.metrics, ctl.target
    ctl.metrics = WallClockQueries(source)

    live: list[Tick] = []
    most_bound: list[dict[str, Any]] = []
    for expected in sim:
        clock.advance(expected.time_s - clock.now())
        assert expected.queue is not None
        settle(prom, source, spec, set_queue(exporter, expected.queue))
        converge(target)
        bound = [p for p in cluster.pods(NAMESPACE, f"app={NAME}") if p["spec"].get("nodeName")]
        most_bound = max(most_bound, bound, key=len)
        out = ctl.tick()
        assert out.action in ("scaled", "unchanged"), out
        rec = records[-1]
        counts = rec["replicas"]
        live.append(
            Tick(
                rec["time"],
                rec["signals"][spec.key]["value"],
                counts["current"],
                counts["ready"] + counts["starting"] + counts["pending"],
                rec["decision"]["desired_replicas"],
                rec["decision"]["reason"],
                rec["written_replicas"] if out.action == "scaled" else rec["target_replicas"],
            )
        )
        assert cluster.deployment_replicas(NAME, NAMESPACE) == live[-1].replicas
    print("\n" + "\n".join(f"{s.row()}   | live: {t.row()}" for s, t in zip(sim, live, strict=True)))

    assert live == sim
    assert any(t.replicas > t.current for t in live) and any(t.replicas < t.current for t in live)
    assert {"ScaleUpLimit", "ScaleDownStabilized"} <= {t.reason for t in live}
    # what the writes did on the cluster: the peak's pods were made and bound to GPU nodes
    peak = max(t.replicas for t in live)
    assert len(most_bound) == peak
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" for p in most_bound)
    assert {p["spec"]["nodeName"] for p in most_bound} <= {"gpu-0", "gpu-1", "gpu-2"}
    final = live[-1].replicas
    wait_until(
        lambda: target.counts() == ReplicaCounts(final, final, 0, 0, 0),
        f"{final} Ready pod(s) and none left over",
        WAIT_S,
    )


# --------------------------------------------------------------------------------------------------
# gpuscale run, two replicas
# --------------------------------------------------------------------------------------------------


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2.0)
    except httpx.HTTPError:
        return None


def status(port: int, path: str) -> int | None:
    got = get(port, path)
    return None if got is None else got.status_code


def metric(port: int, name: str, **labels: str) -> float | None:
    """A sample of the controller's /metrics (None while it does not answer or lacks the sample)."""
    got = get(port, "/metrics")
    if got is None or got.status_code != 200:
        return None
    for family in text_string_to_metric_families(got.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def lease(cluster: GpuCluster, namespace: str, name: str) -> dict[str, Any]:
    got = cluster.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
    return got.body if got.status == 200 else {}


def decisions(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


@dataclass
class Replica:
    """One ``gpuscale run`` process, its decision log (stdout), its log (stderr) and its port."""

    identity: str
    port: int
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_replica(config: Path, identity: str, workdir: Path) -> Replica:
    port = _free_port()
    out, err = workdir / f"{identity}.jsonl", workdir / f"{identity}.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "gpuscale.cli", "run", "--config", str(config),
                "--metrics-port", str(port), "--metrics-bind", "127.0.0.1",
            ],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "POD_NAME": identity},
        )  # fmt: skip
    return Replica(identity, port, proc, out, err)


def terminate(replica: Replica) -> int:
    """SIGTERM, as the kubelet sends it; the exit status (bounded wait)."""
    replica.proc.send_signal(signal.SIGTERM)
    return replica.proc.wait(timeout=WAIT_S)


def test_gpuscale_run_serves_probes_and_metrics_and_hands_over_the_lease_on_sigterm(
    cluster: GpuCluster, tmp_path: Path
) -> None:
    ns, name, lease_name = "default", "serve", "gpuscale-serve"
    target = f"{ns}/Deployment/{name}"
    cluster.create_deployment(name, ns, 1, gpus=1, image=VLLM)
    config = {
        "kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": ns, "name": name},
        "pod_selector": f"app={name}",
        "policy": {"kind": "static", "replicas": 3},
        "interval_s": 1,
        "safety": {"min_replicas": 1, "max_replicas": 4},
        "leader_election": {
            "enabled": True,
            "lease_duration_s": 4,
            "renew_deadline_s": 3,
            "retry_period_s": 1,
        },
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    replicas: list[Replica] = []
    try:
        a = start_replica(path, "replica-a", tmp_path)
        replicas.append(a)
        wait_until(lambda: status(a.port, "/healthz") == 200, "replica-a /healthz 200", WAIT_S)
        wait_until(lambda: lease(cluster, ns, lease_name).get("spec", {}).get("holderIdentity") == "replica-a",
                   "replica-a holds the Lease", WAIT_S)  # fmt: skip
        wait_until(lambda: cluster.deployment_replicas(name, ns) == 3, "replica-a scaled to 3", WAIT_S)
        wait_until(lambda: status(a.port, "/readyz") == 200, "replica-a /readyz 200", WAIT_S)

        def bound() -> list[dict[str, Any]] | None:
            pods = [p for p in cluster.pods(ns, f"app={name}") if p["spec"].get("nodeName")]
            return pods if len(pods) == 3 else None

        wait_until(bound, "3 pods bound to GPU nodes", WAIT_S)
        assert metric(a.port, "gpuscale_controller_is_leader") == 1.0
        assert metric(a.port, "gpuscale_controller_written_replicas", target=target) == 3.0
        wait_until(
            lambda: metric(a.port, "gpuscale_controller_current_replicas", target=target) == 3.0,
            "replica-a reads 3 back",
            WAIT_S,
        )
        assert (metric(a.port, "gpuscale_controller_decisions_total", reason="Static") or 0) >= 1
        assert metric(a.port, "gpuscale_controller_consecutive_failures") == 0.0
        assert metric(a.port, "gpuscale_controller_next_wait_seconds") == 1.0
        scaled = [r for r in decisions(a.stdout) if r["action"] == "scaled"]
        assert [(r["replicas"]["current"], r["written_replicas"]) for r in scaled] == [(1, 3)]

        b = start_replica(path, "replica-b", tmp_path)
        replicas.append(b)
        wait_until(lambda: status(b.port, "/readyz") == 200, "replica-b ready (standing by)", WAIT_S)
        got = get(b.port, "/readyz")
        assert got is not None and "standing by" in got.text
        assert status(b.port, "/healthz") == 200
        assert metric(b.port, "gpuscale_controller_is_leader") == 0.0
        wait_until(
            lambda: any(r["action"] == "standby" for r in decisions(b.stdout)), "a standby tick", WAIT_S
        )
        assert lease(cluster, ns, lease_name)["spec"]["holderIdentity"] == "replica-a"
        transitions = lease(cluster, ns, lease_name)["spec"].get("leaseTransitions", 0)

        assert terminate(a) == 0
        assert "released" in a.stderr.read_text(encoding="utf-8")
        wait_until(lambda: lease(cluster, ns, lease_name)["spec"].get("holderIdentity") == "replica-b",
                   "replica-b takes the Lease", WAIT_S)  # fmt: skip
        assert lease(cluster, ns, lease_name)["spec"]["leaseTransitions"] == transitions + 1
        wait_until(lambda: metric(b.port, "gpuscale_controller_is_leader") == 1.0, "replica-b leads", WAIT_S)
        assert not any(r["action"] == "scaled" for r in decisions(b.stdout))  # nothing to do: 3 already

        # the new leader acts: someone scales the Deployment down by hand, replica-b restores 3
        patched = cluster.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            {"spec": {"replicas": 1}},
            content_type="application/merge-patch+json",
        )
        assert patched.status == 200, patched.body
        wait_until(
            lambda: any(r["action"] == "scaled" for r in decisions(b.stdout)), "replica-b writes", WAIT_S
        )
        wait_until(lambda: cluster.deployment_replicas(name, ns) == 3, "replica-b scaled back to 3", WAIT_S)
        assert [r["written_replicas"] for r in decisions(b.stdout) if r["action"] == "scaled"] == [3]
        assert status(b.port, "/readyz") == 200

        assert terminate(b) == 0
        spec = lease(cluster, ns, lease_name)["spec"]
        assert spec.get("holderIdentity", "") == "" and spec["leaseDurationSeconds"] == 1
    finally:
        for replica in replicas:
            replica.stop()
