"""The control plane's world: GPU nodes, pods and their lifecycle, GPU-hours and cost.

Pod phases: Pending (no free GPU) → Starting (scheduled; image pull, model download, load, warm-up)
→ Ready → Draining → gone. Warm-pool pods stop at Standby (loaded, outside the Service) until they
are promoted. Placeholder pods of a warm-node buffer go from Pending straight to Running (a pause
container) and hold their GPUs until a serving pod preempts them. Pods are placed first-fit over the nodes in launch order. Nodes are billed from
launch to termination (``node_seconds``); the node layer (``gpuscale.sim.nodes``) adds and removes
them, and a node's GPUs are usable only from ``allocatable_t``.

A node's capacity is counted in *units*: whole GPUs on a whole-GPU pool (a pod takes
``gpus_per_pod``), or pod places on a shared pool (a pod takes one): a MIG slice of the requested
profile, or one of a time-sliced GPU's replicas. A shared node keeps one :class:`Device` per MIG slice
or per time-sliced GPU: its memory, its base slowdown and the pods on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from gpuscale.config.profiles import GPU_TYPES
from gpuscale.config.scenario import Duration, LogNormal, NodePool, StartupConfig, Uniform
from gpuscale.config.sharing import MigLayout, TimeSlicing, mig_profile


class Phase(IntEnum):
    PENDING = 0
    STARTING = 1
    READY = 2
    STANDBY = 3
    DRAINING = 4
    GONE = 5


@dataclass
class Device:
    """One MIG slice, or one time-sliced GPU, of a shared node."""

    memory_gb: float
    units: int
    """Pods it takes (1 for a MIG slice, the replicas of a time-sliced GPU)."""
    speed: float
    """Batch-time multiplier of a pod alone on it (MIG: 7 / compute slices)."""
    interference: float = 0.0
    gpus: float = 1.0
    """Share of a physical GPU (MIG: compute slices / 7)."""
    pods: list[Pod] = field(default_factory=list)


@dataclass
class Node:
    index: int
    pool: NodePool
    units_free: int
    """Free capacity: whole GPUs, or pod places on a shared pool (module docstring)."""
    units: int = 0
    """Capacity of the empty node, in the same units."""
    devices: list[Device] = field(default_factory=list)
    image_at: float = math.inf
    """When the image is (or will be) on the node's disk."""
    model_at: float = math.inf
    """When the weights are (or will be) in the node's local cache."""
    pool_index: int = 0
    created_t: float = 0.0
    """Launch time: billing starts here."""
    ready_t: float = -math.inf
    """Node Ready (kubelet up, driver installed); ``inf`` if it never registers."""
    allocatable_t: float = -math.inf
    """The device plugin advertises its GPUs: pods can be placed from here on."""
    cordoned: bool = False
    """No new pods (being removed or reclaimed)."""
    deleting: bool = False
    """Terminated as soon as its last pod is gone."""
    unneeded_since: float = math.nan
    reclaim_t: float = math.inf
    """When a spot reclamation terminates it (set by the notice)."""
    pods_changed_t: float = 0.0
    """When a pod last landed on it or left it (Karpenter's consolidateAfter counts from here)."""


@dataclass
class Pod:
    """One pod of the scale target (or of its warm pool)."""

    id: int
    created_t: float
    standby: bool = False
    phase: Phase = Phase.PENDING
    node: Node | None = None
    scheduled_t: float = math.nan
    ready_t: float = math.nan
    """When it is (or will be) Ready; set at scheduling."""
    cold_start_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)
    slot: int = -1
    drain_deadline: float = math.inf
    drain_started_t: float = math.nan
    device: Device | None = None
    """Its MIG slice or time-sliced GPU (None on whole GPUs)."""
    gpus: float = 0
    """GPUs it holds (an int on whole GPUs; a share on MIG or time-slicing)."""
    restarts: int = 0
    """Container restarts after an OOM kill (CrashLoopBackOff)."""
    leaving: bool = False
    """On a node Karpenter is consolidating: serves until a replacement is Ready, then is evicted."""
    placeholder: bool = False
    """A low-priority placeholder ("pause") pod of the warm-node buffer: holds a serving pod's GPUs,
    never serves, is Running at once when placed, and is preempted by any serving pod."""

    @property
    def name(self) -> str:
        return f"pod-{self.id}"

    @property
    def holds_gpu(self) -> bool:
        return self.phase in (Phase.STARTING, Phase.READY, Phase.STANDBY, Phase.DRAINING)


def draw(d: Duration, rng: np.random.Generator) -> float:
    """One sample of a configured duration."""
    if isinstance(d, Uniform):
        lo, hi = d.uniform
        return float(lo + (hi - lo) * rng.random())
    if isinstance(d, LogNormal):
        return float(d.lognormal.median_s * math.exp(d.lognormal.sigma * rng.standard_normal()))
    return float(d)


class Cluster:
    """Fixed GPU node pools; whole-GPU, first-fit placement; per-node image and model caches."""

    def __init__(
        self,
        pools: list[NodePool],
        startup: StartupConfig,
        gpus_per_pod: int,
        rng: np.random.Generator,
        mig_profile: str | None = None,
    ) -> None:
        self.startup = startup
        self.gpus_per_pod = gpus_per_pod
        self.mig_profile = mig_profile
        self.shared = any(p.gpu_sharing.kind != "whole" for p in pools)
        self.rng = rng
        self.pools = pools
        self.pool_labels = _labels(pools)
        self.nodes: list[Node] = []
        """Nodes that exist now, in launch order (the first-fit order)."""
        self._launched = 0
        self.node_seconds_closed = [0.0] * len(pools)
        self.removed_nodes = 0
        for i, pool in enumerate(pools):
            for _ in range(pool.nodes):
                self.launch(i, 0.0)

    def launch(self, pool_index: int, t: float) -> Node:
        """A new node of pool ``pool_index``, billed from ``t``; usable at once unless the caller
        sets its ``ready_t`` / ``allocatable_t``."""
        pool = self.pools[pool_index]
        devices = self._devices(pool)
        units = sum(d.units for d in devices) if self.shared else pool.gpus_per_node
        node = Node(self._launched, pool, units, units, devices, pool_index=pool_index, created_t=t)
        self._launched += 1
        if pool.image_cached:
            node.image_at = -math.inf
        if pool.model_cached:
            node.model_at = -math.inf
        self.nodes.append(node)
        return node

    def _devices(self, pool: NodePool) -> list[Device]:
        sharing = pool.gpu_sharing
        n = pool.gpus_per_node
        if isinstance(sharing, MigLayout):
            profile = mig_profile(pool.gpu, self.mig_profile or "")
            if profile is None:
                return []
            k = sharing.layout.count(profile.name)
            speed = sharing.speed(profile)
            return [
                Device(profile.memory_gb, 1, speed, gpus=profile.compute_slices / 7) for _ in range(n * k)
            ]
        if isinstance(sharing, TimeSlicing) and self.mig_profile is None:
            mem = pool_memory_gb(pool)
            r = sharing.replicas_per_gpu
            return [Device(mem, r, 1.0, sharing.interference, 1.0 / r) for _ in range(n)]
        if self.mig_profile is None and self.shared:  # whole GPUs beside shared pools: one pod each
            return [Device(pool_memory_gb(pool), 1, 1.0) for _ in range(n)]
        return []

    @property
    def pod_units(self) -> int:
        """Units one pod takes."""
        return 1 if self.shared else self.gpus_per_pod

    def pods_fit(self, node: Node) -> int:
        """More pods ``node`` takes now (ignoring cordons and allocatability)."""
        return node.units_free // self.pod_units

    def per_node(self, pool: NodePool) -> int:
        """Pods an empty node of ``pool`` takes."""
        if not self.shared:
            return pool.gpus_per_node // self.gpus_per_pod
        return sum(d.units for d in self._devices(pool))

    def remove_node(self, node: Node, t: float) -> None:
        """Terminate ``node`` at ``t`` (its pods must be gone): billing stops."""
        if node in self.nodes:
            self.nodes.remove(node)
            self.node_seconds_closed[node.pool_index] += t - node.created_t
            self.removed_nodes += 1

    def node_seconds(self, t: float) -> list[float]:
        """Node-seconds per pool so far, running nodes counted up to ``t``."""
        out = list(self.node_seconds_closed)
        for n in self.nodes:
            out[n.pool_index] += t - n.created_t
        return out

    def pool_size(self, pool_index: int) -> int:
        return sum(1 for n in self.nodes if n.pool_index == pool_index)

    def place(self, pod: Pod, t: float, *, warm: bool = False) -> bool:
        """Bind ``pod`` to the first node with enough free GPUs and plan its cold start.

        ``warm`` pods (the initial replicas) are Ready at once. A node pulls an image (or downloads
        weights) once: a second pod scheduled while the first pull is running waits for that pull.
        """
        for node in self.nodes:
            if node.units_free >= self.pod_units and not node.cordoned and node.allocatable_t <= t:
                node.units_free -= self.pod_units
                pod.gpus = self.gpus_per_pod
                if self.shared:
                    device = next(d for d in node.devices if len(d.pods) < d.units)
                    device.pods.append(pod)
                    pod.device = device
                    pod.gpus = device.gpus
                pod.node = node
                node.pods_changed_t = t
                pod.scheduled_t = t
                if pod.placeholder:  # a pause container: running at once, pulls nothing
                    pod.ready_t = t
                    pod.phase = Phase.READY
                    return True
                if warm:
                    pod.ready_t = t
                    pod.phase = Phase.STANDBY if pod.standby else Phase.READY
                    node.image_at = min(node.image_at, t)
                    node.model_at = min(node.model_at, t)
                    return True
                pod.phase = Phase.STARTING
                self._plan_start(pod, node, t)
                return True
        return False

    def _plan_start(self, pod: Pod, node: Node, t: float) -> None:
        s = self.startup
        phases: dict[str, float] = {}
        now = t + draw(s.scheduling_s, self.rng)
        phases["scheduling"] = now - t
        if s.image_cache and node.image_at < math.inf:
            done = max(now, node.image_at)
        else:
            done = now + draw(s.image_pull_s, self.rng)
            if s.image_cache:
                node.image_at = done
        phases["image_pull"] = done - now
        now = done
        if s.model_cache and node.model_at < math.inf:
            done = max(now, node.model_at)
        else:
            done = now + draw(s.model_download_s, self.rng)
            if s.model_cache:
                node.model_at = done
        phases["model_download"] = done - now
        now = done
        phases["model_load"] = draw(s.model_load_s, self.rng)
        phases["warmup"] = draw(s.warmup_s, self.rng)
        now += phases["model_load"] + phases["warmup"]
        pod.ready_t = now
        pod.cold_start_s = now - pod.created_t
        pod.phases_s = phases

    def plan_restart(self, pod: Pod, t: float, backoff_s: float) -> None:
        """The container restarts in place after ``backoff_s``: weights load again, warm-up again."""
        phases = {"restart_backoff": backoff_s, "model_load": draw(self.startup.model_load_s, self.rng)}
        phases["warmup"] = draw(self.startup.warmup_s, self.rng)
        pod.ready_t = t + sum(phases.values())
        pod.cold_start_s = pod.ready_t - t
        pod.phases_s = phases

    def release(self, pod: Pod, t: float) -> None:
        node = pod.node
        if node is not None and pod.holds_gpu:
            node.units_free += self.pod_units
            node.pods_changed_t = t
            if pod.device is not None:
                pod.device.pods.remove(pod)
            if node.deleting and node.units_free == node.units:
                self.remove_node(node, t)


def pool_memory_gb(pool: NodePool) -> float:
    return GPU_TYPES[pool.gpu].memory_gb


def _labels(pools: list[NodePool]) -> list[str]:
    """Unique pool names for reports (a repeated name gets ``#2``, ``#3``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for p in pools:
        seen[p.name] = seen.get(p.name, 0) + 1
        out.append(p.name if seen[p.name] == 1 else f"{p.name}#{seen[p.name]}")
    return out
