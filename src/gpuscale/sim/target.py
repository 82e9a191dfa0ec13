"""The simulator's scale target: applies decisions to pods the way a Deployment and its ReplicaSet do.

It keeps the spec replica count, creates pods (Pending until a GPU is free), and removes pods in the
ReplicaSet's order (unscheduled first, then not-ready, then the most recently Ready), draining Ready
ones. Warm-pool policies also set a standby target: standby pods start like any pod but stay outside
the Service; a scale-up promotes them before creating new pods.

A decision's ``placeholder_pods`` keeps that many low-priority placeholder pods (the warm-node
buffer; kept apart from ``pods``): each takes a serving pod's GPUs where one fits, and a serving or
standby pod that finds no free GPU preempts one at once (on the first node, in launch order, that
holds one); the preempted placeholder is Pending again, and the node layer launches a node for it
like for any Pending pod. Placeholders count as used GPUs for node scale-down and consolidation.

It is the simulator's :class:`~gpuscale.policies.ports.ScaleTarget`: ``counts(now)`` reports what
``kubectl get`` would (with the nodes the node layer is provisioning), ``apply(decision, now)`` acts on
the whole decision.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gpuscale._core.errors import ConfigError
from gpuscale.config.profiles import ModelProfile
from gpuscale.policies.base import Decision
from gpuscale.policies.ports import ReplicaCounts
from gpuscale.sim import kernel as K
from gpuscale.sim.cluster import Cluster, Device, Node, Phase, Pod
from gpuscale.sim.llm_plane import Plane

if TYPE_CHECKING:  # the node layer drives this target, so it imports this module
    from gpuscale.sim.nodes import NodeLayer

READY_EVENT = 0
DRAIN_DEADLINE = 1

_ACTIVE = (Phase.PENDING, Phase.STARTING, Phase.READY)
"""Phases of the pods that make up the spec (besides standby and leaving pods)."""
_WARMING = (Phase.PENDING, Phase.STARTING, Phase.STANDBY)
"""Phases of the pods that make up the standby target."""
_HOLDS_GPU = frozenset((Phase.STARTING, Phase.READY, Phase.STANDBY, Phase.DRAINING))
"""Phases of the pods that hold their GPUs (:attr:`~gpuscale.sim.cluster.Pod.holds_gpu`)."""


class SimScaleTarget:
    def __init__(
        self, cluster: Cluster, dp: Plane, *, grace_s: float, max_pods: int, source: str = "scenario"
    ) -> None:
        """``max_pods``: the scenario's ``control.max_pods``; ``source`` names the scenario in the
        error a run that outgrows it ends with."""
        self.cluster = cluster
        self.dp = dp
        self.grace_s = grace_s
        self.max_pods = max_pods
        self.source = source
        self.spec = 0
        self.standby_target = 0
        self.pods: dict[int, Pod] = {}
        self.events: list[tuple[float, int, int, int]] = []
        self._next_id = 0
        self._seq = 0
        self.scale_events = 0
        self.cold_starts = 0
        self.cold_start_total_s = 0.0
        self.gpu_seconds_closed = 0.0
        self.cost_closed = 0.0
        self.phase_totals: dict[str, float] = {}
        self.evictions = 0
        self.oom_kills = 0
        self.placeholder_target = 0
        self.placeholders: dict[int, Pod] = {}
        self.preemptions = 0
        self.draining = 0
        """Pods Draining now (the only ones :meth:`reap_drained` looks at)."""
        self.node_layer: NodeLayer | None = None
        """The node layer provisioning nodes for this target's pods, when the scenario has one."""

    # -- bookkeeping -------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, pod: Pod) -> None:
        heapq.heappush(self.events, (t, self._seq, kind, pod.id))
        self._seq += 1

    def next_event_t(self) -> float:
        return self.events[0][0] if self.events else math.inf

    def pods_in(self, *phases: Phase, standby: bool | None = None) -> list[Pod]:
        return [
            p for p in self.pods.values() if p.phase in phases and (standby is None or p.standby == standby)
        ]

    def count(self, phase: Phase, standby: bool = False) -> int:
        return sum(1 for p in self.pods.values() if p.phase == phase and p.standby == standby)

    @property
    def gpus_held(self) -> float:
        return sum(p.gpus for p in self.pods.values() if p.holds_gpu)

    def occupancy(self) -> tuple[int, float, int]:
        """Ready pods, :attr:`gpus_held` and Pending pods (``count(READY)``, ``gpus_held``,
        ``count(PENDING)``, standby pods left out of the counts as there) in one pass over the pods."""
        ready = pending = 0
        gpus: float = 0
        for p in self.pods.values():
            phase = p.phase
            if phase in _HOLDS_GPU:
                gpus += p.gpus
                if phase == Phase.READY and not p.standby:
                    ready += 1
            elif phase == Phase.PENDING and not p.standby:
                pending += 1
        return ready, gpus, pending

    def gpu_seconds(self, t: float) -> tuple[float, float]:
        """GPU-seconds and dollars so far, open pods counted up to ``t``."""
        return self.gpu_usage(t)[1:]

    def gpu_usage(self, t: float) -> tuple[float, float, float]:
        """:attr:`gpus_held` and :meth:`gpu_seconds` at ``t`` in one pass over the pods."""
        held: float = 0
        secs, cost = self.gpu_seconds_closed, self.cost_closed
        for p in self.pods.values():
            if p.phase in _HOLDS_GPU:
                held += p.gpus
                if p.node is not None:
                    s = (t - p.scheduled_t) * p.gpus
                    secs += s
                    cost += s / 3600.0 * p.node.pool.price
        return held, secs, cost

    def counts(self, now: float) -> ReplicaCounts:
        """The replica counts a policy sees at ``now``; ``pending_nodes`` is 0 without a node layer."""
        active = [0] * len(Phase)  # active (not standby) pods by phase, in one pass
        standby = 0
        for p in self.pods.values():
            if not p.standby:
                active[p.phase] += 1
            elif p.phase == Phase.STANDBY:
                standby += 1
        return ReplicaCounts(
            current_replicas=self.spec,
            ready=active[Phase.READY],
            starting=active[Phase.STARTING],
            pending=active[Phase.PENDING],
            draining=active[Phase.DRAINING],
            standby=standby,
            standby_target=self.standby_target,
            pending_nodes=self.node_layer.pending_nodes(now) if self.node_layer is not None else 0,
        )

    def serving(self) -> Iterator[Pod]:
        return (p for p in self.pods.values() if p.slot >= 0)

    # -- lifecycle ---------------------------------------------------------------------------------
    def _make_room(self, new: int, t: float) -> None:
        """Refuse (a ConfigError naming ``control.max_pods``) ``new`` more pods where they would take
        the run past the scenario's pod limit: the data plane has exactly that many pod slots."""
        total = len(self.pods) + new
        if total <= self.max_pods:
            return
        asked = f"{self.spec:,} replicas"
        if self.standby_target:
            asked += f" and {self.standby_target:,} standby"
        others = total - self.spec - self.standby_target
        held = f" (with {others:,} more still draining or being replaced)" if others > 0 else ""
        raise ConfigError(
            self.source,
            "control.max_pods",
            self.max_pods,
            f"at t = {t:g} s the policy asked for {asked}: {total:,} pods at once{held}, more than the "
            f"simulator holds; raise control.max_pods to at least {total:,}, or lower the policy's maximum",
        )

    def _new_pod(self, t: float, standby: bool) -> Pod:
        pod = Pod(id=self._next_id, created_t=t, standby=standby)
        self._next_id += 1
        self.pods[pod.id] = pod
        return pod

    def start_warm(self, n: int, t: float) -> None:
        """``n`` Ready pods at ``t`` (a deployment already running): no cold start. Pods that do not
        fit the cluster wait Pending like any other."""
        self.spec = n
        self._make_room(n, t)
        for _ in range(n):
            pod = self._new_pod(t, standby=False)
            if self.cluster.place(pod, t, warm=True):
                self._serve(pod, t)

    def _serve(self, pod: Pod, t: float) -> None:
        pod.phase = Phase.READY
        pod.standby = False
        if pod.device is None:
            pod.slot = self.dp.open_slot(t)
        else:
            pod.slot = self.dp.open_slot(t, self._speed(pod.device, 1))
            self._respeed(pod.device)
        # Becoming Ready is the pod's own event: it takes from the router queue before the next pod
        # that turns Ready at the same instant does (docs/simulator.md).
        if self.dp.router_queue_len:
            self.dp.hand_out(t)

    def _end(self, pod: Pod, t: float) -> None:
        """The pod is gone at ``t``: GPU released, its slot handed back."""
        if pod.holds_gpu and pod.node is not None:
            s = (t - pod.scheduled_t) * pod.gpus
            self.gpu_seconds_closed += s
            self.cost_closed += s / 3600.0 * pod.node.pool.price
        self.cluster.release(pod, t)
        if pod.slot >= 0:
            self.dp.close_slot(pod.slot)
            pod.slot = -1
        if pod.device is not None:
            self._respeed(pod.device)
        if pod.phase == Phase.DRAINING:
            self.draining -= 1
        pod.phase = Phase.GONE
        del self.pods[pod.id]

    def handle_event(self, kind: int, pod_id: int, t: float) -> None:
        pod = self.pods.get(pod_id)
        if pod is None:
            return
        if kind == READY_EVENT and pod.phase == Phase.STARTING and t >= pod.ready_t:
            self.cold_starts += 1
            self.cold_start_total_s += pod.cold_start_s
            for name, secs in pod.phases_s.items():
                self.phase_totals[name] = self.phase_totals.get(name, 0.0) + secs
            if pod.standby:
                pod.phase = Phase.STANDBY
            else:
                self._serve(pod, t)
        elif kind == DRAIN_DEADLINE and pod.phase == Phase.DRAINING:
            self.dp.evict(pod.slot, t)
            self._end(pod, t)
            self.schedule_pending(t)

    # -- shared GPUs ---------------------------------------------------------------------------------
    @staticmethod
    def _speed(device: Device, extra: int = 0) -> float:
        """Batch-time multiplier on ``device``: its base (MIG: 7 / compute slices) x (1 + interference
        x (serving pods on it - 1)); ``extra`` counts a pod about to start serving."""
        serving = sum(1 for p in device.pods if p.slot >= 0) + extra
        return device.speed * (1.0 + device.interference * max(serving - 1, 0))

    def _respeed(self, device: Device) -> None:
        """Co-residents changed: every serving pod on ``device`` runs its next batch at the new speed."""
        if device.interference > 0:
            speed = self._speed(device)
            for p in device.pods:
                if p.slot >= 0:
                    self.dp.set_speed(p.slot, speed)

    def memory_need_gb(self, pod: Pod, model: ModelProfile, t: float) -> float:
        """GPU memory ``pod`` holds at ``t``: from the start of its model load, the runtime and weights;
        once serving, at its batch high-water mark (a preallocating runtime takes its fraction of the
        memory it sees: the slice, or the whole time-sliced GPU). A placeholder is a pause container:
        it holds no GPU memory."""
        assert pod.device is not None
        if pod.placeholder:
            return 0.0
        if pod.phase == Phase.STARTING:
            loading_t = pod.ready_t - pod.phases_s.get("model_load", 0.0) - pod.phases_s.get("warmup", 0.0)
            if t < loading_t:
                return 0.0
        if model.allocator == "preallocate":
            return model.preallocate_fraction * pod.device.memory_gb
        batch = int(self.dp.pi[pod.slot, K.HW_BATCH]) if pod.slot >= 0 else 0
        return model.memory_at_batch_gb(batch)

    def check_memory(self, t: float, model: ModelProfile) -> None:
        """OOM kills on shared GPUs. On each device, pods in the order they were scheduled keep what
        they hold; a pod whose need no longer fits in what is left is OOM-killed, though the device
        plugin still shows free places on the GPU (seed 004)."""
        for node in self.cluster.nodes:
            for device in node.devices:
                if not device.pods:
                    continue
                left = device.memory_gb
                for pod in sorted(device.pods, key=lambda p: (p.scheduled_t, p.id)):
                    if pod.placeholder:  # a pause container holds no GPU memory
                        continue
                    need = self.memory_need_gb(pod, model, t)
                    if need > left + 1e-9:
                        self._oom(pod, t)
                    else:
                        left -= need

    def _oom(self, pod: Pod, t: float) -> None:
        """CUDA out of memory: the container dies and restarts in place after the kubelet's
        CrashLoopBackOff (10 s, doubling to 300 s), loading its weights again."""
        self.oom_kills += 1
        if pod.phase == Phase.DRAINING:
            self.kill(pod, t)
            return
        if pod.slot >= 0:
            self.dp.evict(pod.slot, t)
            self.dp.close_slot(pod.slot)
            pod.slot = -1
        pod.restarts += 1
        pod.phase = Phase.STARTING
        self.cluster.plan_restart(pod, t, min(10.0 * 2.0 ** (pod.restarts - 1), 300.0))
        self._push(pod.ready_t, READY_EVENT, pod)
        assert pod.device is not None
        self._respeed(pod.device)

    def reap_drained(self, t: float) -> bool:
        """Draining pods that have emptied are gone (at the moment their last request ended)."""
        freed = False
        if not self.draining:
            return freed
        for pod in [p for p in self.pods.values() if p.phase == Phase.DRAINING]:
            if self.dp.outstanding(pod.slot) == 0:
                self._end(pod, max(self.dp.last_end_t(pod.slot), pod.drain_started_t))
                freed = True
        if freed:
            self.schedule_pending(t)
        return freed

    def schedule_pending(self, t: float) -> None:
        for pod in sorted(self.pods_in(Phase.PENDING), key=lambda p: p.id):
            if not self.cluster.place(pod, t) and not (self._preempt_one(t) and self.cluster.place(pod, t)):
                break
            if pod.phase == Phase.STARTING:
                self._push(pod.ready_t, READY_EVENT, pod)
            elif pod.phase == Phase.READY:
                self._serve(pod, t)
        if self.placeholders:
            for pod in sorted(self.placeholders.values(), key=lambda p: p.id):
                if pod.phase == Phase.PENDING and not self.cluster.place(pod, t):
                    break

    # -- warm-node buffer ----------------------------------------------------------------------------
    def pending_placeholders(self) -> int:
        return sum(1 for p in self.placeholders.values() if p.phase == Phase.PENDING)

    def placeholders_on(self, node: Node) -> list[Pod]:
        return [p for p in self.placeholders.values() if p.node is node]

    def _preempt_one(self, t: float) -> bool:
        """Preempt the placeholder on the first usable node (launch order) that runs one."""
        if not self.placeholders:
            return False
        for node in self.cluster.nodes:
            if node.cordoned or node.allocatable_t > t:
                continue
            on = self.placeholders_on(node)
            if on:
                self.preempt(on[:1], t)
                return True
        return False

    def preempt(self, pods: list[Pod], t: float) -> None:
        """Placeholders lose their place at once (no grace): Pending again, their Deployment's
        replacement waits for a free GPU like any pod."""
        for pod in pods:
            self.cluster.release(pod, t)
            pod.node = None
            pod.device = None
            pod.phase = Phase.PENDING
            pod.scheduled_t = math.nan
            self.preemptions += 1

    def _reconcile_placeholders(self, t: float) -> None:
        have = sorted(self.placeholders.values(), key=lambda p: p.id)
        if self.placeholder_target > len(have):
            for _ in range(self.placeholder_target - len(have)):
                pod = Pod(id=self._next_id, created_t=t, placeholder=True)
                self._next_id += 1
                self.placeholders[pod.id] = pod
        elif self.placeholder_target < len(have):
            # Unscheduled first, then the newest.
            for pod in sorted(have, key=lambda p: (p.node is not None, -p.id))[
                : len(have) - self.placeholder_target
            ]:
                self.cluster.release(pod, t)
                del self.placeholders[pod.id]

    def _remove(self, pod: Pod, t: float, grace_s: float | None = None) -> None:
        if pod.phase == Phase.READY:
            pod.phase = Phase.DRAINING
            self.draining += 1
            pod.drain_started_t = t
            self.dp.stop_accepting(pod.slot)
            pod.drain_deadline = t + (self.grace_s if grace_s is None else grace_s)
            self._push(pod.drain_deadline, DRAIN_DEADLINE, pod)
        elif pod.phase != Phase.DRAINING:
            self._end(pod, t)
        elif grace_s is not None and t + grace_s < pod.drain_deadline:
            pod.drain_deadline = t + grace_s
            self._push(pod.drain_deadline, DRAIN_DEADLINE, pod)

    def evict(self, pods: list[Pod], t: float, grace_s: float | None = None) -> None:
        """Evict ``pods`` (node scale-down or spot reclamation): Ready pods drain within ``grace_s``
        (default: the termination grace), the others go at once, and the ReplicaSet creates
        replacements, which cold-start wherever they fit."""
        self.evictions += len(pods)
        for pod in pods:
            self._remove(pod, t, grace_s)
        self.reconcile(t)

    def kill(self, pod: Pod, t: float) -> None:
        """The node under ``pod`` is gone: whatever is still inside is dropped."""
        if pod.slot >= 0:
            self.dp.evict(pod.slot, t)
        self._end(pod, t)

    @staticmethod
    def _removal_order(pods: list[Pod]) -> list[Pod]:
        # ReplicaSet order: unscheduled before scheduled, not-ready before ready, newest first.
        rank = {Phase.PENDING: 0, Phase.STARTING: 1, Phase.STANDBY: 2, Phase.READY: 3}
        return sorted(
            pods, key=lambda p: (rank[p.phase], -(p.ready_t if p.ready_t == p.ready_t else 0.0), -p.id)
        )

    def apply(self, decision: Decision, t: float) -> None:
        """Act on the whole decision: the active spec, the standby target and the placeholder count
        (``None`` keeps each as it is), then reconcile the pods."""
        if decision.standby_replicas is not None:
            self.standby_target = decision.standby_replicas
        if decision.placeholder_pods is not None:
            self.placeholder_target = decision.placeholder_pods
        if decision.desired_replicas is not None and decision.desired_replicas != self.spec:
            self.spec = decision.desired_replicas
            self.scale_events += 1
        self.reconcile(t)

    def reconcile(self, t: float) -> None:
        # Pods leaving a node being consolidated are already replaced (they go once it is Ready).
        active = [p for p in self.pods.values() if p.phase in _ACTIVE and not p.standby and not p.leaving]
        if self.spec > len(active):
            need = self.spec - len(active)
            ready_standby = sorted(self.pods_in(Phase.STANDBY, standby=True), key=lambda p: p.ready_t)
            starting_standby = sorted(self.pods_in(Phase.STARTING, standby=True), key=lambda p: p.ready_t)
            for pod in ready_standby[:need]:
                self._serve(pod, t)  # promotion: instant, no cold start
                need -= 1
            for pod in starting_standby[:need]:
                pod.standby = False
                need -= 1
            self._make_room(need, t)
            for _ in range(need):
                self._new_pod(t, standby=False)
        elif self.spec < len(active):
            for pod in self._removal_order(active)[: len(active) - self.spec]:
                self._remove(pod, t)
        standby = [p for p in self.pods.values() if p.phase in _WARMING and p.standby and not p.leaving]
        if self.standby_target > len(standby):
            self._make_room(self.standby_target - len(standby), t)
            for _ in range(self.standby_target - len(standby)):
                self._new_pod(t, standby=True)
        elif self.standby_target < len(standby):
            for pod in self._removal_order(standby)[: len(standby) - self.standby_target]:
                self._end(pod, t)
        if self.placeholder_target or self.placeholders:
            self._reconcile_placeholders(t)
        self.schedule_pending(t)
