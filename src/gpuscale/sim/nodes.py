"""The node layer: GPU nodes that come and go — Cluster Autoscaler, Karpenter, spot reclamation.

Three timescales meet here (seed 004): pods start in seconds to minutes, GPU nodes in minutes, GPUs
are allocated at scheduling time. A new node is launched (billed from then), becomes Ready after the
provisioning time, and its GPUs become allocatable after the device plugin registers; only then do
Pending pods land on it.

Cluster Autoscaler (``kubernetes/autoscaler`` ``cluster-autoscaler/FAQ.md``), every scan interval:

* **scale-up**: Pending pods that do not fit on nodes still starting get new nodes of one node group
  (the expander picks which), as many as needed, up to the group's max. A GPU node that is Ready but
  has no allocatable GPU yet counts as still starting (PR #461), so it does not cause a second
  scale-up.
* **backoff** (``clusterstate`` ``exponentialBackoff``): a launch the cloud rejects (a pool's
  capacity shortage window: the rejection is seen in the same scan, and nothing is billed) or a node
  removed for not registering within max-node-provision-time backs its group off; the expander skips
  a backed-off group. 5 min at first; a failure after the backoff ended doubles it (up to 30 min), one
  during it keeps its length; 3 h without a failure resets it.
* **scale-down**: a node whose GPU requests / allocatable is under the threshold and whose pods fit
  on the other nodes (nodes are checked in launch order; pods moved in the simulation fill their new
  node, which is then no longer removable) is *unneeded*; once unneeded for the unneeded time, and
  at least delay-after-add after the last scale-up, it is removed: empty nodes in bulk, else one
  node per scan. A node whose pods the PodDisruptionBudget (``minAvailable``) does not let go is
  not removable (the simulation skips it, so its pods' would-be destination may go instead).

Karpenter (``kubernetes-sigs/karpenter``, ``concepts/disruption.md``; pools are the candidate
instance types and capacity types of one NodePool):

* **provisioning**: Pending pods not covered by nodes still starting open a batch; it closes 1 s after
  the last new Pending pod or 10 s after it opened. Then, until every pod has a place, the pool with the
  lowest price per pod placed (⌈pods / pods-per-node⌉ nodes, up to the pool's max) is launched, ties to
  the first listed: spot before on-demand when spot is cheaper, on-demand when spot is at its max.
* **consolidation**, every 10 s, within the disruption budget (⌈nodes x 10 %⌉ - deleting - not ready),
  on nodes whose pods have not changed for ``consolidate_after_s``; one command per pass, in upstream's
  order: every empty node (in one go); else (WhenEmptyOrUnderutilized; never while pods are Pending,
  kubernetes-sigs/karpenter#4533 behaviour; never a node whose pods the PDB does not let go or that
  runs do-not-disrupt pods) **multi-node**: the candidates sorted by disruption cost (pods x the share
  of their lifetime left), the budget's first ones (100 at most), a binary search for the longest
  prefix (two nodes at least) whose pods fit in the other nodes' free places plus at most one new node
  cheaper than the prefix together (``multinodeconsolidation.go``); else **single-node**: the first
  candidate, in the same order, whose pods fit in the others' free places, or there plus one cheaper
  node (``singlenodeconsolidation.go``). A replacement is never of one of the removed nodes' pools at
  that pool's price or more (``filterOutSameType``); with a spot option, only spot is launched; spot
  nodes are replaced by spot only with the SpotToSpotConsolidation gate, a single one only with 15
  cheaper spot options. The nodes are tainted, the replacement launched, replacement pods created at
  once, and each old pod is evicted only once the pods Ready exceed the spec (its replacement is Ready,
  on another node or on the new one); a node goes with its last pod. A replacement that never
  registers un-taints its nodes; one the cloud rejects drops the command.
* **expiry** (``expire_after_s``, ``expireAfter``, Karpenter v1 semantics): a forceful disruption. At
  launch + expireAfter the node is tainted and drained at once, past the disruption budget (it still
  counts as deleting against it) and with no replacement started first: its pods are evicted through
  the eviction API (the PDB holds some back, retried each instant; do-not-disrupt pods are never
  evicted, no terminationGracePeriod), go Pending and Karpenter provisions for them.

A launch into a pool with no capacity (InsufficientCapacity) makes Karpenter skip that offering for
3 minutes (its unavailable-offerings cache) and launch the next cheapest.

Warm-node buffer: placeholder pods (``SimScaleTarget.placeholders``) are Pending pods like any for
scale-up and batching, and used GPUs for scale-down and consolidation; a node being drained,
consolidated, expired or reclaimed loses them at once (preempted, not drained), and they go Pending again.

Spot: a reclaimed node gets the notice, is cordoned and its pods evicted (no PDB: reclamation is not
voluntary); at the end of the notice the node is terminated and anything still on it is dropped.
Replacement pods are Pending like any other, and a node autoscaler may launch a node for them.

Simplifications (stated, not hidden): a rejected Cluster Autoscaler launch is seen at once (on AWS
the ASG accepts the increase and the failed instance shows up a loop or more later); no
scale-down-delay-after-delete / -failure, no per-pod "safe-to-evict"; placeholders have no priority
of their own beyond "below every serving pod" and the Cluster Autoscaler treats them as ordinary pods
(they are above its expendable-pods cutoff, as over-provisioner pods are). Karpenter: one NodePool,
one budget (no schedules or reasons), no drift, no terminationGracePeriod; a pod costs 1 to disrupt
whatever its priority; candidates are sorted by cost, then launch order (not NodePool-interleaved);
the price-capacity-optimized spot choice is the cheapest option.
"""

from __future__ import annotations

import heapq
import math

from gpuscale._core.rng import generator
from gpuscale.config.scenario import ClusterAutoscalerConfig, ClusterConfig, KarpenterConfig
from gpuscale.sim.cluster import Cluster, Node, Phase, Pod, draw
from gpuscale.sim.target import SimScaleTarget

_ALLOCATABLE = 0
_PROVISION_TIMEOUT = 1
_SPOT_NOTICE = 2
_SPOT_TERMINATE = 3
_SCRIPTED_RECLAIM = 4
_EXPIRE = 5
UNAVAILABLE_OFFERING_TTL_S = 180.0
"""Karpenter keeps an offering that failed with InsufficientCapacity out of its choices this long."""
MULTI_NODE_MAX_CANDIDATES = 100
"""Multi-node consolidation looks at no more than this many candidates (``multinodeconsolidation.go``)."""
SPOT_TO_SPOT_MIN_OPTIONS = 15
"""Single-node spot-to-spot consolidation needs this many cheaper spot options
(``MinInstanceTypesForSpotToSpotConsolidation``), so that it does not race to the cheapest spot type."""


class NodeLayer:
    """Node provisioning, the Cluster Autoscaler's loop, Karpenter's provisioning and disruption, and
    spot reclamation, driven by the engine."""

    def __init__(self, cfg: ClusterConfig, cluster: Cluster, target: SimScaleTarget, seed: int) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.target = target
        self.ca = cfg.node_autoscaler if isinstance(cfg.node_autoscaler, ClusterAutoscalerConfig) else None
        self.karpenter = cfg.node_autoscaler if isinstance(cfg.node_autoscaler, KarpenterConfig) else None
        self._batch_open = math.inf
        """When the open provisioning batch began (inf: none open)."""
        self._batch_last = math.inf
        self._batch_need = 0
        self._n_poll = 0
        self._rng_provision = generator(seed, "nodes/provision")
        self._rng_spot = generator(seed, "nodes/spot")
        self._rng_expander = generator(seed, "nodes/expander")
        self.events: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self._n_scan = 0
        self.last_scale_up_t = -math.inf
        self.scale_ups = 0
        self.scale_downs = 0
        self.spot_interruptions = 0
        self.failed_launches = 0
        self.backoffs = 0
        self.multi_node_consolidations = 0
        """Karpenter consolidation commands that took two nodes or more at once."""
        self.replacements = 0
        """Replacement nodes Karpenter's consolidation launched."""
        self.expirations = 0
        """Nodes Karpenter disrupted for reaching ``expire_after_s``."""
        self._per_node = [cluster.per_node(p) for p in cluster.pools]
        self._replacing: dict[int, list[Node]] = {}
        """Replacement node index -> the nodes it replaces (un-tainted if it never registers)."""
        self._expiring: list[Node] = []
        """Expired nodes still draining."""
        self._room = [False] * len(cluster.pools)
        """Per pool, during a consolidation pass: room for one more node."""
        n_pools = len(cluster.pools)
        self._backoff_until = [-math.inf] * n_pools
        """Per node group: no scale-up before this (Cluster Autoscaler backoff)."""
        self._backoff_s = [0.0] * n_pools
        self._last_failure_t = [-math.inf] * n_pools
        self._unavailable_until = [-math.inf] * n_pools
        """Per pool: Karpenter's unavailable-offerings cache after a failed launch (3 min)."""
        self._by_index: dict[int, Node] = {}
        for node in cluster.nodes:
            self._track(node, 0.0)
        for i, pool in enumerate(cluster.pools):
            for at in pool.spot_interruptions_at_s:
                self._push(at, _SCRIPTED_RECLAIM, i)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, arg: int) -> None:
        heapq.heappush(self.events, (t, self._seq, kind, arg))
        self._seq += 1

    def _track(self, node: Node, t: float) -> None:
        self._by_index[node.index] = node
        rate = node.pool.spot_interruptions_per_node_hour
        if node.pool.capacity_type == "spot" and rate > 0:
            self._push(t + float(self._rng_spot.exponential(3600.0 / rate)), _SPOT_NOTICE, node.index)
        k = self.karpenter
        if k is not None and k.expire_after_s is not None:
            self._push(node.created_t + k.expire_after_s, _EXPIRE, node.index)

    def next_event_t(self) -> float:
        nxt = self.events[0][0] if self.events else math.inf
        if self.ca is not None:
            nxt = min(nxt, self._n_scan * self.ca.scan_interval_s)
        k = self.karpenter
        if k is not None:
            nxt = min(
                nxt,
                self._batch_last + k.batch_idle_s,
                self._batch_open + k.batch_max_s,
                self._n_poll * k.consolidation_interval_s,
            )
        return nxt

    def pending_nodes(self, t: float) -> int:
        """Nodes launched whose GPUs are not allocatable yet."""
        return sum(1 for n in self.cluster.nodes if n.allocatable_t > t)

    def _pods_on(self, node: Node) -> list[Pod]:
        return [p for p in self.target.pods.values() if p.node is node and p.holds_gpu]

    def _pending(self) -> int:
        """Pending pods that want a GPU: serving, standby and placeholder pods alike."""
        t = self.target
        return t.count(Phase.PENDING) + t.count(Phase.PENDING, standby=True) + t.pending_placeholders()

    # -- the loop ----------------------------------------------------------------------------------
    def step(self, t: float) -> None:
        """Everything due at ``t``: node events first, then a Cluster Autoscaler scan."""
        while self.events and self.events[0][0] <= t:
            _, _, kind, arg = heapq.heappop(self.events)
            self._handle(kind, arg, t)
        if self.ca is not None and t >= self._n_scan * self.ca.scan_interval_s:
            self._n_scan += 1
            self._scale_up(self.ca, t)
            self._scale_down(self.ca, t)
        k = self.karpenter
        if k is not None:
            if t >= min(self._batch_last + k.batch_idle_s, self._batch_open + k.batch_max_s):
                self._batch_open = self._batch_last = math.inf
                self._batch_need = 0
                self._provision(k, t)
            if t >= self._n_poll * k.consolidation_interval_s:
                self._n_poll += 1
                self._consolidate(k, t)

    def settle(self, t: float) -> None:
        """End of an instant: pods leaving a consolidated node go once replaced; Karpenter sees the
        Pending pods the instant created (its batch opens or stretches)."""
        leaving = sorted((p for p in self.target.pods.values() if p.leaving), key=lambda p: p.id)
        for pod in leaving:
            if pod.phase != Phase.READY:
                if pod.phase != Phase.DRAINING:
                    self.target.evict([pod], t)
            elif self.target.count(Phase.READY) > self.target.spec and self._pdb_allows([pod]):
                self.target.evict([pod], t)
        if self._expiring:
            self._expiring = [n for n in self._expiring if n in self.cluster.nodes]
            for node in self._expiring:
                self._drain(node, t)
        if self.karpenter is None:
            return
        need = self._uncovered(t)
        if need <= 0:
            return
        if self._batch_open == math.inf:
            self._batch_open = self._batch_last = t
        elif need > self._batch_need:
            self._batch_last = t
        self._batch_need = need

    def _handle(self, kind: int, arg: int, t: float) -> None:
        if kind == _SCRIPTED_RECLAIM:
            running = [n for n in self.cluster.nodes if n.pool_index == arg and n.reclaim_t == math.inf]
            if running:
                self._notice(running[0], t)
            return
        node = self._by_index.get(arg)
        if node is None or node not in self.cluster.nodes:
            return
        if kind == _ALLOCATABLE:
            self._replacing.pop(node.index, None)
            self.target.schedule_pending(t)
        elif kind == _PROVISION_TIMEOUT:
            self.failed_launches += 1
            self.cluster.remove_node(node, t)
            if self.ca is not None:
                self._back_off(self.ca, node.pool_index, t)
            if node.index in self._replacing:
                self._abandon(self._replacing.pop(node.index), t)
        elif kind == _EXPIRE:
            self._expire(node, t)
        elif kind == _SPOT_NOTICE and node.reclaim_t == math.inf:
            self._notice(node, t)
        elif kind == _SPOT_TERMINATE:
            for pod in self._pods_on(node):
                self.target.kill(pod, t)
            self.target.preempt(self.target.placeholders_on(node), t)
            self.cluster.remove_node(node, t)
            self.target.schedule_pending(t)

    def _notice(self, node: Node, t: float) -> None:
        """A spot reclamation notice: cordon, evict everything (no PDB), terminate after the notice."""
        self.spot_interruptions += 1
        node.cordoned = True
        node.reclaim_t = t + self.cfg.spot_notice_s
        node.unneeded_since = math.nan
        self._push(node.reclaim_t, _SPOT_TERMINATE, node.index)
        grace = min(self.target.grace_s, self.cfg.spot_notice_s)
        self.target.preempt(self.target.placeholders_on(node), t)
        self.target.evict(self._pods_on(node), t, grace)

    def _short(self, pool_index: int, t: float) -> bool:
        return any(a <= t < b for a, b in self.cluster.pools[pool_index].capacity_shortages_s)

    def launch(self, pool_index: int, t: float, provision_timeout_s: float = math.inf) -> Node | None:
        """Launch a node: Ready after the provisioning time, GPUs allocatable after the device plugin.
        ``None`` when the pool has no capacity now (the cloud rejects the launch; nothing is billed)."""
        if self._short(pool_index, t):
            self.failed_launches += 1
            return None
        node = self.cluster.launch(pool_index, t)
        startup = self.cfg.node_startup
        provision = draw(startup.provision_s, self._rng_provision)
        allocatable = draw(startup.gpu_allocatable_s, self._rng_provision)
        if provision > provision_timeout_s:
            node.ready_t = node.allocatable_t = math.inf
            self._push(t + provision_timeout_s, _PROVISION_TIMEOUT, node.index)
        else:
            node.ready_t = t + provision
            node.allocatable_t = node.ready_t + allocatable
            self._push(node.allocatable_t, _ALLOCATABLE, node.index)
        self._track(node, t)
        return node

    # -- Karpenter ---------------------------------------------------------------------------------
    def _uncovered(self, t: float) -> int:
        """Pending pods that no node still starting has a place for."""
        pending = self._pending()
        if pending == 0:
            return 0
        upcoming = [n for n in self.cluster.nodes if not n.cordoned and n.allocatable_t > t]
        return pending - sum(self.cluster.pods_fit(n) for n in upcoming)

    def _provision(self, k: KarpenterConfig, t: float) -> None:
        """The cheapest launch per pod placed, pool by pool, until every Pending pod has a place.

        E.g. 2 pods, a 1-GPU pool at $2.5/h and a 4-GPU pool at $8/h: 2 x 2.5 / 2 = $2.5 per pod
        against 8 / 2 = $4, so two small nodes; with 4 pods the big node wins ($2 against $2.5).
        """
        remaining = self._uncovered(t)
        while remaining > 0:
            best: tuple[float, int, int, int] | None = None
            for i, pool in enumerate(self.cluster.pools):
                per = self.cluster.per_node(pool)
                room = pool.max_size - self.cluster.pool_size(i)
                if per < 1 or room < 1 or t < self._unavailable_until[i]:
                    continue
                nodes = min(-(-remaining // per), room)
                placed = min(remaining, nodes * per)
                option = (nodes * pool.node_price / placed, i, nodes, placed)
                if best is None or option[0] < best[0]:
                    best = option
            if best is None:
                return
            _, i, nodes, placed = best
            if self.launch(i, t, k.registration_ttl_s) is None:
                # InsufficientCapacityError: the offering is unavailable for 3 minutes; try the next.
                self._unavailable_until[i] = t + UNAVAILABLE_OFFERING_TTL_S
                continue
            for _ in range(nodes - 1):
                self.launch(i, t, k.registration_ttl_s)
            self.scale_ups += nodes
            self.last_scale_up_t = t
            remaining -= placed

    def _consolidate(self, k: KarpenterConfig, t: float) -> None:
        """One pass of the disruption controller: empty nodes, else multi-node, else single-node
        consolidation (``concepts/disruption.md``); at most one command per pass."""
        nodes = self.cluster.nodes
        not_ready = sum(1 for n in nodes if n.allocatable_t > t)
        deleting = sum(1 for n in nodes if n.cordoned)
        allowed = math.ceil(len(nodes) * k.disruption_budget_pct / 100.0 - 1e-9) - deleting - not_ready
        if allowed <= 0:
            return
        sizes = {i: self.cluster.pool_size(i) for i in range(len(self.cluster.pools))}
        candidates = []
        for n in nodes:
            if n.cordoned or n.allocatable_t > t or t < n.pods_changed_t + k.consolidate_after_s:
                continue
            if sizes[n.pool_index] <= n.pool.min_nodes:
                continue
            candidates.append(n)
        empty = [n for n in candidates if n.units_free == n.units]
        for node in empty[:allowed]:
            if sizes[node.pool_index] <= node.pool.min_nodes:
                continue
            sizes[node.pool_index] -= 1
            self.cluster.remove_node(node, t)
            self.scale_downs += 1
        if empty or k.consolidation_policy == "WhenEmpty" or k.do_not_disrupt:
            return
        if self._pending():
            return
        on = self._pods_by_node(t)
        self._room = [self.cluster.pool_size(i) < p.max_size for i, p in enumerate(self.cluster.pools)]
        candidates = [n for n in candidates if self._pdb_allows(on[n.index][0])]
        candidates.sort(key=lambda n: (self._disruption_cost(n, on, k, t), n.index))
        live = [n for n in nodes if not n.cordoned and n.allocatable_t <= t]
        free = sum(self.cluster.pods_fit(n) for n in live)
        # Multi-node: the budget pre-filters the sorted candidates (and no pool below its minimum).
        multi: list[Node] = []
        for n in candidates:
            if len(multi) == min(allowed, MULTI_NODE_MAX_CANDIDATES):
                break
            if sizes[n.pool_index] > n.pool.min_nodes:
                sizes[n.pool_index] -= 1
                multi.append(n)
        if self._multi_node(k, t, multi, on, free):
            return
        for node in candidates:
            if not on[node.index][0] and not on[node.index][1]:
                continue  # an empty node the budget kept is not this method's
            command = self._command(k, t, [node], on, free)
            if command is not None:
                self._execute(k, t, [node], command, on)
                return

    def _pods_by_node(self, t: float) -> dict[int, tuple[list[Pod], list[Pod]]]:
        """Per live node: its serving / standby pods holding GPUs, and its placeholders."""
        out: dict[int, tuple[list[Pod], list[Pod]]] = {n.index: ([], []) for n in self.cluster.nodes}
        for pod in self.target.pods.values():
            if pod.node is not None and pod.holds_gpu and pod.node.index in out:
                out[pod.node.index][0].append(pod)
        for pod in self.target.placeholders.values():
            if pod.node is not None and pod.node.index in out:
                out[pod.node.index][1].append(pod)
        return out

    @staticmethod
    def _disruption_cost(
        node: Node, on: dict[int, tuple[list[Pod], list[Pod]]], k: KarpenterConfig, t: float
    ) -> float:
        """Upstream's ``disruptionCost``: pods to reschedule (each costs 1) x the share of the node's
        lifetime still ahead (1 without ``expireAfter``), so a node near expiry goes first.

        E.g. expireAfter 100 s: a node of age 75 with 2 pods costs 2 x 0.25 = 0.5, less than a new
        node with 1 pod (1.0).
        """
        pods = len(on[node.index][0]) + len(on[node.index][1])
        if k.expire_after_s is None:
            return float(pods)
        remaining = (k.expire_after_s - (t - node.created_t)) / k.expire_after_s
        return pods * min(max(remaining, 0.0), 1.0)

    def _command(
        self,
        k: KarpenterConfig,
        t: float,
        group: list[Node],
        on: dict[int, tuple[list[Pod], list[Pod]]],
        free: int,
    ) -> int | None:
        """``computeConsolidation`` for ``group``: -1 to delete it (its pods fit in the free places of
        the other live nodes), the pool of the one cheaper node that takes the rest, or None.

        The replacement must cost less than the nodes it replaces together. Spot nodes are replaced
        by spot only, and only with the spot-to-spot gate on (a single node also needs 15 cheaper
        spot options). With spot among the options, only spot is launched (a spot shortage must not
        end in a dearer on-demand node). A group is not replaced by one of its own pools at that
        pool's price or more (``filterOutSameType``): deleting the others would do.

        E.g. three 1-GPU nodes at $2.5/h, one pod each, all full: a 4-GPU node at $6/h takes the
        three pods for less than $7.5/h, so it replaces them.
        """
        pools = self.cluster.pools
        pods = sum(len(on[n.index][0]) + len(on[n.index][1]) for n in group)
        rest = pods - (free - sum(self.cluster.pods_fit(n) for n in group))
        if rest <= 0:
            return -1
        price = sum(n.pool.node_price for n in group)
        spot = all(n.pool.capacity_type == "spot" for n in group)
        if spot and not k.spot_to_spot_consolidation:
            return None
        options = [
            i
            for i, p in enumerate(pools)
            if self._per_node[i] >= rest
            and self._room[i]
            and t >= self._unavailable_until[i]
            and p.node_price < price
            and (not spot or p.capacity_type == "spot")
        ]
        if len(group) > 1:
            same = [n.pool.node_price for n in group if n.pool_index in options]
            if same:
                options = [i for i in options if pools[i].node_price < min(same)]
        if any(pools[i].capacity_type == "spot" for i in options):
            options = [i for i in options if pools[i].capacity_type == "spot"]
        if not options or (spot and len(group) == 1 and len(options) < SPOT_TO_SPOT_MIN_OPTIONS):
            return None
        return min(options, key=lambda i: (pools[i].node_price, i))

    def _multi_node(
        self,
        k: KarpenterConfig,
        t: float,
        candidates: list[Node],
        on: dict[int, tuple[list[Pod], list[Pod]]],
        free: int,
    ) -> bool:
        """``firstNConsolidationOption``: binary search for the longest prefix of the candidates (two
        nodes at least) that can go at once, with at most one replacement."""
        if len(candidates) < 2:
            return False
        lo, hi = 1, len(candidates) - 1
        best: tuple[int, int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            command = self._command(k, t, candidates[: mid + 1], on, free)
            if command is not None:
                best = (mid + 1, command)
                lo = mid + 1
            else:
                hi = mid - 1
        if best is None:
            return False
        n, command = best
        self._execute(k, t, candidates[:n], command, on)
        return True

    def _execute(
        self,
        k: KarpenterConfig,
        t: float,
        group: list[Node],
        command: int,
        on: dict[int, tuple[list[Pod], list[Pod]]],
    ) -> None:
        """Launch the replacement (if any), taint the nodes and create their pods' replacements at once;
        each old pod is evicted once the pods Ready exceed the spec (``settle``), so the replacement
        node is Ready before any old pod goes. A replacement the cloud rejects drops the command."""
        if command >= 0:
            replacement = self.launch(command, t, k.registration_ttl_s)
            if replacement is None:
                self._unavailable_until[command] = t + UNAVAILABLE_OFFERING_TTL_S
                return
            self.replacements += 1
            self._replacing[replacement.index] = list(group)
        if len(group) > 1:
            self.multi_node_consolidations += 1
        for node in group:
            node.cordoned = node.deleting = True
            node.unneeded_since = math.nan
            for pod in on[node.index][0]:
                pod.leaving = True
            self.target.preempt(self.target.placeholders_on(node), t)
            self.scale_downs += 1
        self.target.reconcile(t)  # replacements: on the other nodes, or Pending for the new one

    def _abandon(self, group: list[Node], t: float) -> None:
        """The replacement never registered: un-taint the nodes, and their pods stay."""
        for node in group:
            if node not in self.cluster.nodes:
                continue
            node.cordoned = node.deleting = False
            self.scale_downs -= 1  # counted when the command started; the node stays
            for pod in self._pods_on(node):
                pod.leaving = False
        self.target.reconcile(t)  # the surplus replacement pods go (Pending ones first)

    def _expire(self, node: Node, t: float) -> None:
        """``expireAfter`` reached: a forceful disruption (Karpenter v1). The node is tainted and
        drained at once, past the NodePool's disruption budget and without a replacement started
        first; its evicted pods are Pending like any and Karpenter provisions for them. The eviction
        API still applies: the PDB holds pods back (retried each instant), and do-not-disrupt pods
        stay until they are gone (no terminationGracePeriod)."""
        if node.reclaim_t < math.inf:
            return
        self.expirations += 1
        node.cordoned = node.deleting = True
        node.unneeded_since = math.nan
        self._replacing.pop(node.index, None)
        self.target.preempt(self.target.placeholders_on(node), t)
        if node not in self.cluster.nodes:
            return
        if node.units_free == node.units:
            self.cluster.remove_node(node, t)
            return
        self._expiring.append(node)
        self._drain(node, t)

    def _drain(self, node: Node, t: float) -> None:
        """Evict what the PDB lets go from an expired node, one pod at a time."""
        k = self.karpenter
        if k is not None and k.do_not_disrupt:
            return
        for pod in sorted(self._pods_on(node), key=lambda p: p.id):
            if pod.phase != Phase.DRAINING and self._pdb_allows([pod]):
                self.target.evict([pod], t)

    # -- Cluster Autoscaler ------------------------------------------------------------------------
    def _scale_up(self, ca: ClusterAutoscalerConfig, t: float) -> None:
        pending = self._pending()
        if pending == 0:
            return
        upcoming = [
            n
            for n in self.cluster.nodes
            if not n.cordoned
            and (n.ready_t > t or (ca.gpu_unready_until_allocatable and n.allocatable_t > t))
        ]
        # Pods already promised a place on a node that is still starting do not ask for another.
        remaining = pending - sum(self.cluster.pods_fit(n) for n in upcoming)
        while remaining > 0:
            groups = [
                i
                for i, p in enumerate(self.cluster.pools)
                if self.cluster.per_node(p) >= 1
                and self.cluster.pool_size(i) < p.max_size
                and t >= self._backoff_until[i]
            ]
            if not groups:
                return
            i = self._expand(ca, groups)
            pool = self.cluster.pools[i]
            per_node = self.cluster.per_node(pool)
            k = min(-(-remaining // per_node), pool.max_size - self.cluster.pool_size(i))
            if self.launch(i, t, ca.max_node_provision_time_s) is None:
                # The cloud rejected the increase: back the group off, let the expander pick another.
                self._back_off(ca, i, t)
                continue
            for _ in range(k - 1):
                self.launch(i, t, ca.max_node_provision_time_s)
            self.scale_ups += k
            self.last_scale_up_t = t
            remaining -= k * per_node

    def _back_off(self, ca: ClusterAutoscalerConfig, i: int, t: float) -> None:
        """``exponentialBackoff.Backoff``: the initial length, doubled (up to the max) by a failure after
        the last backoff ended; one during a backoff keeps its length. Reset after 3 h without a failure.

        E.g. failures at 0, 100 and 400 s: backed off until 300 (5 min), 400 (still 5 min: it came
        during the backoff), then 1000 (10 min: the backoff had ended).
        """
        if t - self._last_failure_t[i] > ca.node_group_backoff_reset_s:
            duration = ca.initial_node_group_backoff_s
        elif t >= self._backoff_until[i]:
            duration = min(2.0 * self._backoff_s[i], ca.max_node_group_backoff_s)
        else:
            duration = self._backoff_s[i]
        self._backoff_s[i] = duration
        self._backoff_until[i] = t + duration
        self._last_failure_t[i] = t
        self.backoffs += 1

    def _expand(self, ca: ClusterAutoscalerConfig, groups: list[int]) -> int:
        pools = self.cluster.pools
        if ca.expander == "priority":
            return groups[0]
        if ca.expander == "price":
            return min(groups, key=lambda i: pools[i].node_price / self.cluster.per_node(pools[i]))
        return groups[int(self._rng_expander.integers(len(groups)))]

    def _scale_down(self, ca: ClusterAutoscalerConfig, t: float) -> None:
        g = self.cluster.pod_units
        live = [n for n in self.cluster.nodes if not n.cordoned and n.allocatable_t <= t]
        sim_free = {n.index: n.units_free for n in live}
        removed: set[int] = set()
        sizes = {i: self.cluster.pool_size(i) for i in range(len(self.cluster.pools))}
        for node in live:
            total = node.units
            used = total - sim_free[node.index]
            if used / total >= ca.scale_down_utilization_threshold or sizes[node.pool_index] <= (
                node.pool.min_nodes
            ):
                node.unneeded_since = math.nan
                continue
            if used and not self._pdb_allows(self._pods_on(node)):
                node.unneeded_since = math.nan  # its pods cannot be evicted now
                continue
            moves: dict[int, int] = {}
            to_move = used // g
            for dest in live:
                if to_move == 0:
                    break
                if dest is node or dest.index in removed:
                    continue
                fit = min(to_move, (sim_free[dest.index] - moves.get(dest.index, 0) * g) // g)
                if fit > 0:
                    moves[dest.index] = moves.get(dest.index, 0) + fit
                    to_move -= fit
            if to_move > 0:
                node.unneeded_since = math.nan
                continue
            for idx, n in moves.items():
                sim_free[idx] -= n * g
            removed.add(node.index)
            sizes[node.pool_index] -= 1
            if math.isnan(node.unneeded_since):
                node.unneeded_since = t
        if t < self.last_scale_up_t + ca.scale_down_delay_after_add_s:
            return
        due = [
            n for n in live if n.index in removed and t >= n.unneeded_since + ca.scale_down_unneeded_time_s
        ]
        empty = [n for n in due if n.units_free == n.units][: ca.max_empty_bulk_delete]
        for node in empty:
            self.cluster.remove_node(node, t)
            self.scale_downs += 1
        if empty:
            return
        for node in due:
            pods = self._pods_on(node)
            if not self._pdb_allows(pods):
                continue
            node.cordoned = node.deleting = True
            self.scale_downs += 1
            self.target.preempt(self.target.placeholders_on(node), t)
            self.target.evict(pods, t)
            return

    def _pdb_allows(self, pods: list[Pod]) -> bool:
        """Evicting ``pods`` keeps at least ``minAvailable`` serving pods Ready."""
        floor = self.cfg.pdb_min_available
        if floor is None:
            return True
        healthy = self.target.count(Phase.READY)
        leaving = sum(1 for p in pods if p.phase == Phase.READY and not p.standby)
        return leaving == 0 or healthy - leaving >= floor
