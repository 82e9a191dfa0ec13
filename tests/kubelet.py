"""An emulated kubelet for the test cluster of ``tests/controlplane.py``.

It does the two things a kubelet does to pods that the autoscaler can see, on the nodes it serves:

* a pod bound to one of its nodes is *accepted* at once (``Initialized``, container
  ``ContainerCreating``, ``hostIP``, ``startTime``) and turns ``Running`` and ``Ready`` -- with a
  ``podIP`` and a ready container status -- ``cold_start_s`` after the kubelet first saw it;
* a pod whose ``deletionTimestamp`` is set is finalized (deleted with ``gracePeriodSeconds: 0``)
  ``drain_s`` after the kubelet first saw it terminating, so a draining pod is observable meanwhile.

It polls the API server every ``poll_s`` on one thread; every wait is bounded and :meth:`Kubelet.stop`
joins the thread. Both times can be changed while it runs (:meth:`Kubelet.set_timing`), for every node
or some: ``math.inf`` holds pods in that state until a finite time is set again, which makes "while
the cold start runs" a state a test can observe without racing it.
"""

from __future__ import annotations

import math
import ssl
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gpuscale._core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane, GpuNode

STRATEGIC = "application/strategic-merge-patch+json"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Timing:
    """How long a pod on a node takes to become Ready, and to go once it is being deleted."""

    cold_start_s: float
    drain_s: float


def _check(name: str, value: float) -> float:
    if not value >= 0 or math.isnan(value):
        raise ValueError(f"{name} {value!r}: must be >= 0 (math.inf holds)")
    return value


@dataclass
class _NodeState:
    ip: str
    index: int
    timing: Timing
    next_ip: int = 1


class Kubelet:
    """Runs the pods bound to the nodes it :meth:`serve`\\ s; see the module doc."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        cold_start_s: float = 1.0,
        drain_s: float = 0.0,
        poll_s: float = 0.1,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < poll_s <= 5:
            raise ValueError(f"poll_s {poll_s!r}: must be in (0, 5]")
        self.plane = plane
        self.poll_s = poll_s
        self.clock = clock or SystemClock()
        self.default = Timing(_check("cold_start_s", cold_start_s), _check("drain_s", drain_s))
        self.errors: Counter[str] = Counter()
        """Failed API calls by kind; the loop goes on after each (the next poll retries)."""
        self.started: dict[str, float] = {}
        """Pod uid -> seconds from first sight to the Running status write (the cold start as run)."""
        self._nodes: dict[str, _NodeState] = {}
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # uid -> monotonic time first seen bound
        self._accepted: dict[str, float] = {}  # uid -> wall time the kubelet accepted it
        self._running: set[str] = set()
        self._terminating: dict[str, float] = {}  # uid -> monotonic time first seen terminating
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- configuration ----------------------------------------------------------------------------

    def serve(
        self, node: GpuNode | str, *, cold_start_s: float | None = None, drain_s: float | None = None
    ) -> None:
        """Run the pods bound to ``node`` (a :class:`GpuNode`, or a node name)."""
        name = node if isinstance(node, str) else node.name
        with self._lock:
            index = len(self._nodes)
            ip = f"10.0.{index // 250}.{index % 250 + 1}" if isinstance(node, str) else node.ip
            timing = Timing(
                self.default.cold_start_s if cold_start_s is None else _check("cold_start_s", cold_start_s),
                self.default.drain_s if drain_s is None else _check("drain_s", drain_s),
            )
            self._nodes[name] = _NodeState(ip, index, timing)

    def forget(self, node: str) -> None:
        with self._lock:
            self._nodes.pop(node, None)

    def set_timing(
        self,
        *,
        cold_start_s: float | None = None,
        drain_s: float | None = None,
        nodes: Iterable[str] | None = None,
    ) -> None:
        """Change the cold start and/or drain time of ``nodes`` (default: every node, and the default for
        nodes served later). It applies to pods already waiting: the time counts from first sight."""
        with self._lock:
            names = list(self._nodes) if nodes is None else list(nodes)
            if nodes is None:
                self.default = Timing(
                    self.default.cold_start_s
                    if cold_start_s is None
                    else _check("cold_start_s", cold_start_s),
                    self.default.drain_s if drain_s is None else _check("drain_s", drain_s),
                )
            for name in names:
                state = self._nodes[name]
                state.timing = Timing(
                    state.timing.cold_start_s
                    if cold_start_s is None
                    else _check("cold_start_s", cold_start_s),
                    state.timing.drain_s if drain_s is None else _check("drain_s", drain_s),
                )

    def timing(self, node: str) -> Timing:
        with self._lock:
            return self._nodes[node].timing

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="emulated-kubelet", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop polling and join the thread (one poll at most, each API call bounded by its timeout)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the emulated kubelet did not stop within {timeout_s} s")
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except (OSError, ssl.SSLError, ValueError) as exc:  # API server busy or going away
                self.errors[type(exc).__name__] += 1
            self._stop.wait(self.poll_s)

    def sync(self) -> None:
        """One pass over the pods bound to served nodes (the loop calls it every ``poll_s``)."""
        query = urllib.parse.urlencode({"fieldSelector": "spec.nodeName!="})
        listed = self.plane.request("GET", f"/api/v1/pods?{query}")
        if listed.status != 200:
            self.errors[f"list {listed.status}"] += 1
            return
        with self._lock:
            nodes = {name: (state.ip, state.timing) for name, state in self._nodes.items()}
        now = self.clock.monotonic()
        present: set[str] = set()
        for pod in listed.body.get("items", []):
            node = pod["spec"].get("nodeName")
            if node not in nodes:
                continue
            uid = pod["metadata"]["uid"]
            present.add(uid)
            ip, timing = nodes[node]
            if pod["metadata"].get("deletionTimestamp"):
                first = self._terminating.setdefault(uid, now)
                if now - first >= timing.drain_s:
                    self._finalize(pod)
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if uid not in self._seen:
                if self._accept(pod, ip):
                    self._seen[uid] = now
                continue
            if (
                uid not in self._running
                and now - self._seen[uid] >= timing.cold_start_s
                and self._run(pod, node, ip)
            ):
                self._running.add(uid)
                self.started[uid] = now - self._seen[uid]
        for book in (self._seen, self._accepted, self._terminating):
            for uid in [u for u in book if u not in present]:
                del book[uid]
        self._running &= present

    # -- what a kubelet writes --------------------------------------------------------------------

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        got = self.plane.request(
            "PATCH",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"metadata": {"uid": meta["uid"]}, "status": status},
            content_type=STRATEGIC,
        )
        if got.status != 200:
            self.errors[f"status {got.status}"] += 1
        return got.status == 200

    def _accept(self, pod: dict[str, Any], host_ip: str) -> bool:
        """What a kubelet reports once it admitted a pod and is pulling and starting its containers."""
        wall = self.clock.now()
        stamp = _stamp(wall)
        names = [c["name"] for c in pod["spec"]["containers"]]
        waiting = f"containers with unready status: [{' '.join(names)}]"
        status = {
            "phase": "Pending",
            "hostIP": host_ip,
            "startTime": stamp,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": waiting,
                 "lastTransitionTime": stamp},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "message": waiting, "lastTransitionTime": stamp},
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
                for c in pod["spec"]["containers"]
            ],
        }  # fmt: skip
        if self._patch_status(pod, status):
            self._accepted[pod["metadata"]["uid"]] = wall
            return True
        return False

    def _run(self, pod: dict[str, Any], node: str, host_ip: str) -> bool:
        """Containers started and ready: phase Running, every condition True, a pod IP."""
        uid = pod["metadata"]["uid"]
        wall = self.clock.now()
        stamp = _stamp(wall)
        with self._lock:
            state = self._nodes.get(node)
            if state is None:
                return False
            pod_ip = f"10.244.{state.index}.{state.next_ip}"
            state.next_ip = state.next_ip % 254 + 1
        status = {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": _stamp(self._accepted.get(uid, wall)),
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": stamp}
                for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": f"emulated://{c['image']}",
                    "containerID": f"emulated://{uid}/{c['name']}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": stamp}},
                }
                for c in pod["spec"]["containers"]
            ],
        }
        return self._patch_status(pod, status)

    def _finalize(self, pod: dict[str, Any]) -> None:
        """The containers stopped: remove the pod for good (a kubelet's final, zero-grace delete)."""
        meta = pod["metadata"]
        got = self.plane.request(
            "DELETE",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]},
            },
        )
        if got.status not in (200, 404, 409):  # 404/409: gone already, or a new pod of that name
            self.errors[f"delete {got.status}"] += 1
