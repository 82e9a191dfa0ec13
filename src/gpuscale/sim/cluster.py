"""The control plane's world: GPU nodes, pods and their lifecycle, GPU-hours and cost.

Pod phases: Pending (no free GPU) → Starting (scheduled; image pull, model download, load, warm-up)
→ Ready → Draining → gone. Warm-pool pods stop at Standby (loaded, outside the Service) until they
are promoted. Pods take whole GPUs, placed first-fit over the nodes in launch order. Nodes are
billed from launch to termination (``node_seconds``); the node layer (``gpuscale.sim.nodes``) adds and
removes them, and a node's GPUs are usable only from ``allocatable_t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from gpuscale.config.scenario import Duration, LogNormal, NodePool, StartupConfig, Uniform


class Phase(IntEnum):
    PENDING = 0
    STARTING = 1
    READY = 2
    STANDBY = 3
    DRAINING = 4
    GONE = 5


@dataclass
class Node:
    index: int
    pool: NodePool
    gpus_free: int
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
    initial: bool = False

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
        self, pools: list[NodePool], startup: StartupConfig, gpus_per_pod: int, rng: np.random.Generator
    ) -> None:
        self.startup = startup
        self.gpus_per_pod = gpus_per_pod
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
        node = Node(self._launched, pool, pool.gpus_per_node, pool_index=pool_index, created_t=t)
        self._launched += 1
        if pool.image_cached:
            node.image_at = -math.inf
        if pool.model_cached:
            node.model_at = -math.inf
        self.nodes.append(node)
        return node

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

    @property
    def total_gpus(self) -> int:
        return sum(n.pool.gpus_per_node for n in self.nodes)

    @property
    def free_gpus(self) -> int:
        return sum(n.gpus_free for n in self.nodes)

    def place(self, pod: Pod, t: float, *, warm: bool = False) -> bool:
        """Bind ``pod`` to the first node with enough free GPUs and plan its cold start.

        ``warm`` pods (the initial replicas) are Ready at once. A node pulls an image (or downloads
        weights) once: a second pod scheduled while the first pull is running waits for that pull.
        """
        for node in self.nodes:
            if node.gpus_free >= self.gpus_per_pod and not node.cordoned and node.allocatable_t <= t:
                node.gpus_free -= self.gpus_per_pod
                pod.node = node
                pod.scheduled_t = t
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

    def release(self, pod: Pod, t: float) -> None:
        node = pod.node
        if node is not None and pod.holds_gpu:
            node.gpus_free += self.gpus_per_pod
            if node.deleting and node.gpus_free == node.pool.gpus_per_node:
                self.remove_node(node, t)


def _labels(pools: list[NodePool]) -> list[str]:
    """Unique pool names for reports (a repeated name gets ``#2``, ``#3``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for p in pools:
        seen[p.name] = seen.get(p.name, 0) + 1
        out.append(p.name if seen[p.name] == 1 else f"{p.name}#{seen[p.name]}")
    return out
