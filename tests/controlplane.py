"""A real Kubernetes control plane for tests: Debian's etcd and a kube-apiserver built from Debian's
source package (``scripts/k8s-control-plane.sh``), started on 127.0.0.1 with free ports and stopped
afterwards. Objects are stored, validated and admitted exactly as on a cluster.

:class:`ControlPlane` starts etcd and kube-apiserver, and on request kube-controller-manager and
kube-scheduler, plus emulated GPU Nodes whose heartbeats a background thread keeps fresh.
:class:`GpuCluster` puts all of that together with the emulated kubelet of ``tests/kubelet.py``: a
small GPU cluster where Deployments create pods, the scheduler places them by ``nvidia.com/gpu`` and
the pods turn Ready after a cold start::

    with GpuCluster(workdir, nodes=2, gpus_per_node=4, cold_start_s=1.0) as cluster:
        cluster.kubeconfig(workdir / "kubeconfig")     # for the official client / gpuscale run
        cluster.add_gpu_node("gpu-2", gpus=4)           # more capacity, at any time
        cluster.kubelet.set_timing(cold_start_s=2.0)    # every node; or nodes=["gpu-2"]

For tests that need only the API server, :func:`started_plane` starts a ControlPlane with the
namespaces they use and stops it afterwards. Both classes create and read Deployments
(:meth:`ControlPlane.create_deployment`, :meth:`ControlPlane.deployment_replicas`; the body is
:func:`deployment_body`'s).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest
import yaml

from gpuscale._core.clock import SystemClock
from tests.kubelet import Kubelet

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "gpuscale-test-admin-token"
VIEWER_TOKEN = "gpuscale-test-viewer-token"
"""A user ``viewer`` with no rights until a test binds a Role to it (RBAC denials)."""
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
NODE_MONITOR_GRACE_S = 40.0
"""kube-controller-manager's ``--node-monitor-grace-period`` default: a node with no heartbeat for this
long is marked Ready=Unknown and tainted, so heartbeats must come well within it."""

_CLOCK = SystemClock()
T = TypeVar("T")


_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()


def _free_port() -> int:
    """A free port on 127.0.0.1, never one this process handed out before: the socket is closed
    before the server binds it, so two calls could otherwise name the same port (etcd's client port
    and kube-apiserver's, say)."""
    with _PORTS_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError("no free port on 127.0.0.1 that was not handed out already")


def binaries() -> Path:
    """The folder with kube-apiserver and etcd (built once per machine, then cached), and, when built
    by the script, kube-controller-manager and kube-scheduler."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "k8s-control-plane.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def cluster_binaries() -> Path:
    """:func:`binaries`, skipping the test where kube-controller-manager or kube-scheduler is missing
    (a :class:`GpuCluster` needs both)."""
    bin_dir = binaries()
    if not (bin_dir / "kube-controller-manager").exists() or not (bin_dir / "kube-scheduler").exists():
        pytest.skip(f"no kube-controller-manager / kube-scheduler in {bin_dir}")
    return bin_dir


def rfc3339(t: float, *, micro: bool = False) -> str:
    """A wall-clock time as the API server writes it: ``Time`` (seconds) or ``MicroTime``."""
    stamp = datetime.fromtimestamp(t, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def wait_until(
    check: Callable[[], T | None], what: str, timeout_s: float = 30.0, interval_s: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy, which is returned; at ``timeout_s`` fail with
    ``what`` and the last value seen. Real processes take wall time: this bounds every such wait."""
    deadline = _CLOCK.monotonic() + timeout_s
    while True:
        last = check()
        if last:
            return last
        if _CLOCK.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s} s: {what} (last seen: {last!r})")
        _CLOCK.sleep(interval_s)


def deployment_body(
    name: str,
    namespace: str = "default",
    replicas: int = 1,
    *,
    gpus: int | None = None,
    node_selector: dict[str, str] | None = None,
    image: str = "triton:x",
) -> dict[str, Any]:
    """A Deployment of ``replicas`` pods labelled ``app: <name>`` (the pod selector gpuscale is given),
    one container of ``image``; with ``gpus``, a limit of that many ``nvidia.com/gpu`` per pod, and
    with ``node_selector``, kept to the nodes it matches."""
    labels = {"app": name}
    container: dict[str, Any] = {"name": "server", "image": image}
    if gpus is not None:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    pod: dict[str, Any] = {"containers": [container]}
    if node_selector is not None:
        pod["nodeSelector"] = dict(node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


class ComponentExited(RuntimeError):
    """A control-plane process exited while starting (a port taken since it was picked, say)."""


@dataclass
class Response:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class GpuNode:
    """An emulated node: what the kubelet would register, with ``nvidia.com/gpu`` from the device plugin."""

    name: str
    gpus: int = 4
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.1"

    def body(self, now: float) -> dict[str, Any]:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "500Gi",
            "nvidia.com/gpu": str(self.gpus),
        }
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.count": str(self.gpus),
            **self.labels,
        }
        stamp = rfc3339(now)
        pressure = [
            {
                "type": kind,
                "status": "False",
                "reason": f"KubeletHasNo{kind}" if kind != "PIDPressure" else "KubeletHasSufficientPID",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [*pressure, {**_ready_condition(stamp), "lastTransitionTime": stamp}],
                "addresses": [
                    {"type": "InternalIP", "address": self.ip},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": self.name,
                    "systemUUID": self.name,
                    "bootID": self.name,
                    "kernelVersion": "emulated",
                    "osImage": "gpuscale emulated GPU node",
                    "containerRuntimeVersion": "emulated://1.0",
                    "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }


def _ready_condition(stamp: str) -> dict[str, str]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "emulated kubelet is posting ready status",
        "lastHeartbeatTime": stamp,
    }


class ControlPlane:
    """etcd + kube-apiserver on loopback; ``request`` talks to the API server as an admin.

    :meth:`start_controller_manager` and :meth:`start_scheduler` add the two other control-plane
    processes; :meth:`add_gpu_node` registers emulated nodes, kept Ready by a heartbeat thread
    (:meth:`start_heartbeats`). :meth:`stop` ends all of it.
    """

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._ctx: ssl.SSLContext | None = None
        self._nodes: dict[str, GpuNode] = {}
        self._nodes_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self.heartbeat_s: float | None = None
        self.heartbeat_errors: Counter[str] = Counter()
        self._logs: list[Any] = []

    def _etcd(self) -> str:
        local = self.bin_dir / "etcd"
        return str(local) if local.exists() else (shutil.which("etcd") or "etcd")

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / log_name).open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0, attempts: int = 3) -> None:
        """Start etcd and kube-apiserver; on failure stop what was started, then raise.

        A port picked free can be taken by another process (another test worker) before our
        server binds it; the server then exits at once. That case is retried on fresh ports, up
        to ``attempts`` times; any other failure is raised at once.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._start(timeout_s)
                return
            except ComponentExited:
                self.stop()
                if attempt == attempts:
                    raise
                shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)
                self.port = _free_port()
                self.url = f"https://127.0.0.1:{self.port}"
            except BaseException:
                self.stop()
                raise

    def _start(self, timeout_s: float) -> None:
        w = self.workdir
        client, peer = _free_port(), _free_port()
        self._spawn(
            [
                self._etcd(), "--name", "default", "--data-dir", str(w / "etcd-data"),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            ],
            "etcd.log",
        )  # fmt: skip
        subprocess.run(
            ["openssl", "genrsa", "-out", str(w / "sa.key"), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(w / "sa.key"), "-pubout", "-out", str(w / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (w / "tokens.csv").write_text(
            f"{TOKEN},admin,admin,system:masters\n{VIEWER_TOKEN},viewer,viewer\n", encoding="utf-8"
        )
        self._spawn(
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{client}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}", "--insecure-port=0",
                f"--cert-dir={w / 'certs'}", f"--token-auth-file={w / 'tokens.csv'}",
                "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={w / 'sa.pub'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                "--allow-privileged=true",
            ],
            "apiserver.log",
        )  # fmt: skip
        self._wait_healthy(
            lambda: self.request("GET", "/readyz").status == 200, "kube-apiserver", "apiserver.log", timeout_s
        )
        # /readyz passes once the bootstrap controller has started, not once it has made the
        # ``default`` namespace: a test creating objects there at once could race it
        self._wait_healthy(
            lambda: self.request("GET", "/api/v1/namespaces/default").status == 200,
            "the default namespace",
            "apiserver.log",
            timeout_s,
        )

    def _wait_healthy(self, check: Callable[[], bool], name: str, log_name: str, timeout_s: float) -> None:
        deadline = _CLOCK.monotonic() + timeout_s
        while _CLOCK.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise ComponentExited(f"a control-plane process exited; see the logs in {self.workdir}")
            try:
                if check():
                    return
            except (OSError, ssl.SSLError):
                pass
            _CLOCK.sleep(0.25)
        raise RuntimeError(f"{name} not ready within {timeout_s} s; see {self.workdir / log_name}")

    def _context(self) -> ssl.SSLContext:
        if self._ctx is None:
            ctx = ssl.create_default_context(cadata=self.ca_pem())
            ctx.check_hostname = False
            self._ctx = ctx
        return self._ctx

    def ca_pem(self) -> str:
        """The API server's self-signed CA: the second certificate of its serving bundle."""
        bundle = (self.workdir / "certs" / "apiserver.crt").read_text(encoding="utf-8")
        certs = ["-----BEGIN CERTIFICATE-----" + c for c in bundle.split("-----BEGIN CERTIFICATE-----")[1:]]
        return "".join(certs[1:] or certs)

    def ca_file(self) -> Path:
        path = self.workdir / "ca.crt"
        if not path.exists():
            path.write_text(self.ca_pem(), encoding="utf-8")
        return path

    def kubeconfig(self, path: Path, token: str = TOKEN, server: str | None = None) -> Path:
        """Write a kubeconfig for this API server (TLS verified against its CA) and return its path."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "t",
                    "cluster": {"server": server or self.url, "certificate-authority": str(self.ca_file())},
                }
            ],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
            "current-context": "t",
        }
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=10) as resp:
                raw = resp.read()
                return Response(resp.status, json.loads(raw) if raw.strip().startswith(b"{") else {})
        except urllib.error.HTTPError as err:
            raw = err.read()
            return Response(err.code, json.loads(raw) if raw.strip().startswith(b"{") else {})

    def create_namespace(self, name: str) -> None:
        made = self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        assert made.status == 201, made.body

    def create_deployment(self, name: str, namespace: str = "default", replicas: int = 1, **pod: Any) -> None:
        """Create :func:`deployment_body`'s Deployment (``pod``: its keyword arguments)."""
        body = deployment_body(name, namespace, replicas, **pod)
        made = self.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body)
        assert made.status == 201, made.body

    def deployment(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """The Deployment as the API server returns it."""
        got = self.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        assert got.status == 200, got.body
        return got.body

    def deployment_replicas(self, name: str, namespace: str = "default") -> int:
        """The Deployment's spec replicas."""
        return int(self.deployment(name, namespace)["spec"]["replicas"])

    # -- kube-controller-manager and kube-scheduler -----------------------------------------------

    def _component(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise RuntimeError(f"{name} is not in {self.bin_dir}; scripts/k8s-control-plane.sh builds it")
        return str(path)

    def _healthz(self, port: int) -> bool:
        # the component serves a self-signed certificate made at start; this is loopback only
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    def start_controller_manager(self, timeout_s: float = 60.0, *, extra_args: Iterable[str] = ()) -> int:
        """kube-controller-manager with every default controller (ReplicaSet, Deployment, node
        lifecycle, garbage collector, service accounts and their tokens, ...); returns its secure port."""
        w = self.workdir
        config = self.kubeconfig(w / "controller-manager.kubeconfig")
        port = _free_port()
        self._spawn(
            [
                self._component("kube-controller-manager"),
                f"--kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1", f"--secure-port={port}", "--port=0",
                f"--cert-dir={w / 'controller-manager-certs'}",
                f"--service-account-private-key-file={w / 'sa.key'}",
                f"--root-ca-file={self.ca_file()}",
                "--controllers=*", "--leader-elect=false",
                *extra_args,
            ],
            "controller-manager.log",
        )  # fmt: skip
        self._wait_healthy(
            lambda: self._healthz(port), "kube-controller-manager", "controller-manager.log", timeout_s
        )
        return port

    def start_scheduler(self, timeout_s: float = 60.0, *, extra_args: Iterable[str] = ()) -> int:
        """kube-scheduler with its default plugins (NodeResourcesFit counts ``nvidia.com/gpu``);
        returns its secure port."""
        w = self.workdir
        config = self.kubeconfig(w / "scheduler.kubeconfig")
        port = _free_port()
        self._spawn(
            [
                self._component("kube-scheduler"),
                f"--kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1", f"--secure-port={port}", "--port=0",
                f"--cert-dir={w / 'scheduler-certs'}",
                "--leader-elect=false",
                *extra_args,
            ],
            "scheduler.log",
        )  # fmt: skip
        self._wait_healthy(lambda: self._healthz(port), "kube-scheduler", "scheduler.log", timeout_s)
        return port

    def wait_for_service_account(self, namespace: str = "default", timeout_s: float = 60.0) -> None:
        """Wait until the controller-manager made ``namespace``'s default ServiceAccount and its token:
        v1.20's admission rejects pods that would mount a token that does not exist yet."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
        wait_until(
            lambda: bool(self.request("GET", path).body.get("secrets")),
            f"the default ServiceAccount of {namespace} has a token",
            timeout_s,
            0.2,
        )

    # -- emulated GPU nodes -----------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, GpuNode]:
        with self._nodes_lock:
            return dict(self._nodes)

    def add_gpu_node(
        self,
        name: str,
        gpus: int = 4,
        *,
        labels: dict[str, str] | None = None,
        cpu: str = "32",
        memory: str = "256Gi",
        pods: int = 110,
        heartbeats: bool = True,
    ) -> GpuNode:
        """Register a Ready node with ``nvidia.com/gpu: gpus`` and its Lease; heartbeats keep it Ready
        (``heartbeats=False``: none, so the node-lifecycle controller marks it unreachable after its
        grace period, as it would a node whose kubelet died)."""
        with self._nodes_lock:
            ip = f"10.0.{len(self._nodes) // 250}.{len(self._nodes) % 250 + 1}"
        node = GpuNode(name, gpus, cpu, memory, pods, dict(labels or {}), ip)
        now = _CLOCK.now()
        body = node.body(now)
        made = self.request("POST", "/api/v1/nodes", body)
        if made.status != 201:
            raise RuntimeError(f"could not create node {name}: {made.status} {made.body.get('message')}")
        # status sent on create is kept for Nodes, but a status write makes that independent of version
        put = self.request(
            "PATCH", f"/api/v1/nodes/{name}/status", {"status": body["status"]}, content_type=STRATEGIC
        )
        if put.status != 200:
            raise RuntimeError(f"could not set node {name}'s status: {put.status} {put.body.get('message')}")
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": made.body["metadata"]["uid"]}
                ],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": int(NODE_MONITOR_GRACE_S),
                "renewTime": rfc3339(now, micro=True),
            },
        }
        leased = self.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)
        if leased.status != 201:
            raise RuntimeError(f"could not create node {name}'s lease: {leased.status} {leased.body}")
        if heartbeats:
            with self._nodes_lock:
                self._nodes[name] = node
        return node

    def delete_node(self, name: str) -> None:
        """Stop the node's heartbeats and delete it (its Lease goes with it, by owner reference)."""
        with self._nodes_lock:
            self._nodes.pop(name, None)
        gone = self.request("DELETE", f"/api/v1/nodes/{name}")
        if gone.status not in (200, 404):
            raise RuntimeError(f"could not delete node {name}: {gone.status} {gone.body.get('message')}")

    def heartbeat(self) -> None:
        """One round of heartbeats: every emulated node's Ready condition and Lease, stamped now."""
        now = _CLOCK.now()
        for name in self.nodes:
            status = {"status": {"conditions": [_ready_condition(rfc3339(now))]}}
            got = self.request("PATCH", f"/api/v1/nodes/{name}/status", status, content_type=STRATEGIC)
            if got.status != 200:
                self.heartbeat_errors[f"node {got.status}"] += 1
            renew = {"spec": {"holderIdentity": name, "renewTime": rfc3339(now, micro=True)}}
            lease = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
            got = self.request("PATCH", lease, renew, content_type=MERGE)
            if got.status != 200:
                self.heartbeat_errors[f"lease {got.status}"] += 1

    def start_heartbeats(self, period_s: float = 5.0) -> None:
        """Refresh every emulated node on a background thread every ``period_s`` (bounded well inside
        the node-monitor grace period, so the node-lifecycle controller never sees a stale node)."""
        if not 0 < period_s <= NODE_MONITOR_GRACE_S / 4:
            raise ValueError(f"heartbeat period {period_s} s: must be in (0, {NODE_MONITOR_GRACE_S / 4}]")
        if self._heartbeat is not None:
            return
        self.heartbeat_s = period_s
        self._heartbeat_stop.clear()

        def loop() -> None:
            while not self._heartbeat_stop.wait(period_s):
                try:
                    self.heartbeat()
                except (OSError, ssl.SSLError) as exc:  # the API server is going away, or busy
                    self.heartbeat_errors[type(exc).__name__] += 1

        self._heartbeat = threading.Thread(target=loop, name="node-heartbeats", daemon=True)
        self._heartbeat.start()

    def stop_heartbeats(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat_stop.set()
            self._heartbeat.join(timeout=15)
            if self._heartbeat.is_alive():
                raise RuntimeError("the node heartbeat thread did not stop")
            self._heartbeat = None

    def stop(self) -> None:
        self.stop_heartbeats()
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


@contextmanager
def started_plane(
    workdir: Path, namespaces: Iterable[str] = (), *, bin_dir: Path | None = None
) -> Iterator[ControlPlane]:
    """A started :class:`ControlPlane` in ``workdir`` with ``namespaces`` created; stopped on exit."""
    plane = ControlPlane(bin_dir or binaries(), workdir)
    plane.start()
    try:
        for namespace in namespaces:
            plane.create_namespace(namespace)
        yield plane
    finally:
        plane.stop()


class GpuCluster:
    """A small real GPU cluster for tests: etcd, kube-apiserver, kube-controller-manager and
    kube-scheduler on 127.0.0.1, ``nodes`` emulated nodes of ``gpus_per_node`` GPUs each (named
    ``gpu-0``, ``gpu-1``, ...; kept Ready by heartbeats) and an emulated kubelet that runs their pods.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``startup_s`` holds the
    measured start-up time of each phase. The kubelet's cold start and drain times can be changed at
    any time through ``cluster.kubelet.set_timing``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 2,
        gpus_per_node: int = 4,
        node_labels: dict[str, str] | None = None,
        cold_start_s: float = 1.0,
        drain_s: float = 0.0,
        heartbeat_s: float = 5.0,
        kubelet_poll_s: float = 0.1,
        controller_manager_args: Iterable[str] = (),
        scheduler_args: Iterable[str] = (),
        bin_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.plane = ControlPlane(bin_dir or binaries(), workdir)
        self.kubelet = Kubelet(self.plane, cold_start_s=cold_start_s, drain_s=drain_s, poll_s=kubelet_poll_s)
        self._initial = (nodes, gpus_per_node, dict(node_labels or {}))
        self._heartbeat_s = heartbeat_s
        self._args = (tuple(controller_manager_args), tuple(scheduler_args))
        self.startup_s: dict[str, float] = {}

    @property
    def url(self) -> str:
        return self.plane.url

    def start(self, timeout_s: float = 90.0) -> GpuCluster:
        t0 = _CLOCK.monotonic()
        try:
            self.plane.start(timeout_s)
            t1 = _CLOCK.monotonic()
            self.plane.start_controller_manager(timeout_s, extra_args=self._args[0])
            self.plane.start_scheduler(timeout_s, extra_args=self._args[1])
            t2 = _CLOCK.monotonic()
            self.plane.wait_for_service_account("default", timeout_s)
            t3 = _CLOCK.monotonic()
            nodes, gpus, labels = self._initial
            for i in range(nodes):
                self.add_gpu_node(f"gpu-{i}", gpus, labels=labels)
            self.plane.start_heartbeats(self._heartbeat_s)
            self.kubelet.start()
        except BaseException:
            self.stop()
            raise
        t4 = _CLOCK.monotonic()
        self.startup_s = {
            "apiserver": t1 - t0,
            "controller_manager_and_scheduler": t2 - t1,
            "service_account_token": t3 - t2,
            "nodes_and_kubelet": t4 - t3,
            "total": t4 - t0,
        }
        return self

    def stop(self) -> None:
        try:
            self.kubelet.stop()
        finally:
            self.plane.stop()

    def __enter__(self) -> GpuCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def add_gpu_node(
        self,
        name: str,
        gpus: int = 4,
        *,
        labels: dict[str, str] | None = None,
        cold_start_s: float | None = None,
        drain_s: float | None = None,
        **resources: Any,
    ) -> GpuNode:
        """A new Ready GPU node served by the kubelet (optionally with its own cold start and drain)."""
        node = self.plane.add_gpu_node(name, gpus, labels=labels, **resources)
        self.kubelet.serve(node, cold_start_s=cold_start_s, drain_s=drain_s)
        return node

    def delete_node(self, name: str) -> None:
        self.kubelet.forget(name)
        self.plane.delete_node(name)

    def kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        return self.plane.kubeconfig(path, token)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> Response:
        return self.plane.request(method, path, body, content_type=content_type)

    def create_deployment(self, name: str, namespace: str = "default", replicas: int = 1, **pod: Any) -> None:
        self.plane.create_deployment(name, namespace, replicas, **pod)

    def deployment_replicas(self, name: str, namespace: str = "default") -> int:
        return self.plane.deployment_replicas(name, namespace)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods matching a label selector, as the API server returns them."""
        query = urllib.parse.urlencode({"labelSelector": selector})
        got = self.request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}")
        if got.status != 200:
            raise RuntimeError(f"listing pods: {got.status} {got.body.get('message')}")
        items: list[dict[str, Any]] = got.body.get("items", [])
        return items


@contextmanager
def serving_cluster(workdir: Path, namespaces: Iterable[str], **kwargs: Any) -> Iterator[GpuCluster]:
    """A started :class:`GpuCluster` (``kwargs`` as its constructor's) with ``namespaces`` created and
    their ServiceAccounts in place; on the way out, the kubelet and the node heartbeats must not have
    erred."""
    with GpuCluster(workdir, bin_dir=cluster_binaries(), **kwargs) as cluster:
        for namespace in namespaces:
            cluster.plane.create_namespace(namespace)
            cluster.plane.wait_for_service_account(namespace)
        yield cluster
        assert not cluster.kubelet.errors, cluster.kubelet.errors
        assert not cluster.plane.heartbeat_errors, cluster.plane.heartbeat_errors
