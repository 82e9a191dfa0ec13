"""``KubernetesTarget``: reads and sets a workload's scale subresource through the official client,
and keeps a warm pool and a warm-node buffer when the policy has them.

**Warm pool** (seed 001). Standby pods are real pods of the target, loaded and Ready but outside the
Service: every pod carries a label (``warm_pool.label``, default ``gpuscale.io/role``) valued
``active`` or ``standby``, and the user's Service selects ``gpuscale.io/role: active`` besides the
app's own labels. The target's ``spec.replicas`` is active + standby; the pool size is kept on the
target object itself, in the annotation ``gpuscale.io/standby-replicas``, so a restarted controller or
a new leader reads the active count back as ``spec.replicas`` minus it. On every tick
:func:`plan_roles` decides which pods are active, as the simulator's target does: active pods stay
active; a shortfall promotes Ready standby pods first (the longest loaded first) -- a label flip, no
cold start, in the Service at once -- then Starting ones, then pods the ReplicaSet created since the
last tick; the pool keeps its standby pods and refills from new pods. The ReplicaSet picks the pods a
scale-down deletes by its own ranking, so it may delete a standby pod: the plan then demotes the
active pod the ReplicaSet would have taken next, and the pool stays at its size. New pods carry the
pod template's labels (best: no role label, so no pod serves before the controller says so) until
the next tick labels them; :meth:`KubernetesTarget.counts` reports by the plan, so the policy sees
what the simulator would show. Worked example, 2 active + 2 standby (spec 4), the policy asks 3: spec
5, one Ready standby pod is relabelled active, the ReplicaSet makes one pod, which the next tick
labels standby; the policy saw ``ready 2, standby 2`` and then ``ready 3, standby 1`` (the new one
still loading), as in the simulator. A target that never had a pool (no annotation) is counted and
written exactly as without one: no label is ever written. A controller whose policy keeps no pool
reads neither the labels nor the annotation: to retire a pool, remove the annotation and the
Service's role selector.

For ``apps/v1`` kinds the size and ``spec.replicas`` are written in one patch of the object; for a
custom kind the scale subresource first, then the annotation.

**Warm-node buffer.** A decision's ``placeholder_pods`` sets the replicas of the placeholder
Deployment ``gpuscale manifests --format headroom`` renders (``headroom.deployment``, default
``<target>-gpu-headroom``) through its scale subresource, when they differ.

Library errors are mapped here, at the boundary, onto gpuscale's taxonomy:

=================================  ==================================================================
API answer                         gpuscale error
=================================  ==================================================================
409 Conflict, 429, 5xx             :class:`TemporaryError` -- retried on the next tick
connection refused / timeout       :class:`TemporaryError` (:class:`ApiUnreachable`)
403 Forbidden                      :class:`Forbidden` (permanent): names the verb and the resource the
                                   ServiceAccount lacks, e.g. ``patch deployments/scale``
404 Not Found                      :class:`TargetGone` (permanent): the target vanished
any other 4xx                      :class:`PermanentError`
404 / 409 on a pod's relabel       none: the pod is gone or replaced; the next tick plans again
404 on the placeholder Deployment  :class:`PermanentError` naming it (apply the headroom manifest)
=================================  ==================================================================
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from gpuscale._core.errors import ConfigError, PermanentError, TemporaryError
from gpuscale.controller.config import TargetConfig, WarmPoolLabels
from gpuscale.policies.base import Decision
from gpuscale.policies.ports import ReplicaCounts

T = TypeVar("T")
log = logging.getLogger("gpuscale.controller")

STANDBY_ANNOTATION = "gpuscale.io/standby-replicas"
"""The warm pool's size, on the target object: what makes ``spec.replicas`` split into active + standby."""
ACTIVE = "active"
STANDBY = "standby"

_APPS_KINDS = {"Deployment": "deployment", "StatefulSet": "stateful_set", "ReplicaSet": "replica_set"}


class ApiUnreachable(TemporaryError):
    """The API server did not answer (refused, reset, timed out)."""


class Forbidden(PermanentError):
    """RBAC denied a request; ``verb`` and ``resource`` say which permission is missing."""

    def __init__(self, verb: str, resource: str, namespace: str, detail: str) -> None:
        self.verb = verb
        self.resource = resource
        super().__init__(
            f"forbidden: the ServiceAccount may not {verb} {resource} in namespace {namespace}; "
            f"grant it verb {verb!r} on resource {resource!r} ({detail})"
        )


class TargetGone(PermanentError):
    """The scale target (or its scale subresource) does not exist."""


def call_api(
    verb: str,
    resource: str,
    namespace: str,
    fn: Callable[[], T],
    special: Mapping[int, Callable[[str], Exception]] | None = None,
) -> T:
    """``fn()`` (one request of the official client), its failure mapped onto gpuscale's errors as the
    module doc's table says; ``special`` maps an HTTP status to the error a caller wants instead
    (the detail message in, the exception out)."""
    try:
        return fn()
    except ApiException as exc:
        status = exc.status or 0
        detail = _detail(exc)
        make = (special or {}).get(status)
        if make is not None:
            raise make(detail) from None
        if status == 403:
            raise Forbidden(verb, resource, namespace, detail) from None
        if status in (409, 429) or status >= 500:
            raise TemporaryError(f"{verb} {resource}: HTTP {status}: {detail}") from None
        if status == 0:  # the client wraps transport failures with no status
            raise ApiUnreachable(f"{verb} {resource}: {detail}") from None
        raise PermanentError(f"{verb} {resource}: HTTP {status}: {detail}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApiUnreachable(f"{verb} {resource}: the API server did not answer ({exc})") from None


def pod_state(pod: Any) -> str | None:
    """``ready``, ``starting`` (on a node, not Ready yet), ``pending`` (on no node yet), ``draining``
    (being deleted), or None for a pod that has finished (Succeeded, Failed).

    A pod is on a node once ``spec.nodeName`` is set, whether the scheduler bound it (and wrote
    ``PodScheduled=True``) or something else did: a pod created with ``nodeName`` -- a DaemonSet's, a
    static pod, one bound by a custom scheduler -- never passes the scheduler and may have no
    ``PodScheduled`` condition at all, yet it waits for its containers, not for a GPU.
    """
    status = pod.status
    if status is not None and status.phase in ("Succeeded", "Failed"):
        return None
    if pod.metadata is not None and pod.metadata.deletion_timestamp is not None:
        return "draining"
    conditions = {c.type: c.status for c in (status.conditions or [])} if status is not None else {}
    if conditions.get("Ready") == "True":
        return "ready"
    if conditions.get("PodScheduled") == "True" or (pod.spec is not None and pod.spec.node_name):
        return "starting"
    return "pending"


def _detail(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


@dataclass(frozen=True)
class PodView:
    """What the warm pool's plan needs of one pod of the target."""

    name: str
    uid: str
    state: str | None
    """:func:`pod_state`."""
    side: str | None
    """``active`` or ``standby`` by its label; None when it carries neither value (a new pod)."""
    created_s: float
    """Creation time, epoch seconds."""
    ready_since_s: float | None = None
    """When its Ready condition last turned True (epoch seconds); None while not Ready."""


@dataclass(frozen=True)
class RolePlan:
    """Which pods are active and which standby (see :func:`plan_roles`)."""

    active: tuple[PodView, ...]
    standby: tuple[PodView, ...]
    surplus: tuple[PodView, ...]
    """Active pods beyond the active count that the pool does not need: a scale-down the ReplicaSet
    has not carried out yet. They keep their label (they still serve) and count as active."""
    relabel: tuple[tuple[PodView, str], ...]
    """The pods whose label must change, with the side each goes to."""


_RANK = {"pending": 0, "starting": 1, "ready": 2}


def _removal_order(pods: Iterable[PodView]) -> list[PodView]:
    # The ReplicaSet's order, as the simulator's target keeps it: unscheduled before scheduled, not
    # Ready before Ready, the most recently Ready first, then the newest.
    return sorted(
        pods, key=lambda p: (_RANK[p.state or "pending"], -(p.ready_since_s or 0.0), -p.created_s, p.name)
    )


def plan_roles(pods: Iterable[PodView], active: int, standby: int) -> RolePlan:
    """The side of every live pod for ``active`` active and ``standby`` standby pods.

    The simulator's reconcile, on pods that already exist (the ReplicaSet makes and deletes them):

    1. active pods stay active; beyond ``active``, the ones the ReplicaSet would delete first are
       surplus;
    2. a shortfall promotes Ready standby pods (the longest loaded first), then Starting ones (the
       oldest first) -- never a Pending one: the simulator creates a new pod instead, and so does
       the ReplicaSet here;
    3. new pods (neither label) fill what is still short, the active side first, the most advanced
       pods first;
    4. standby pods stay standby up to ``standby`` (the most advanced kept); the surplus active pods
       the ReplicaSet would delete first fill a pool it emptied by deleting standby pods.

    Deterministic: ties fall to creation time and name.
    """
    live = [p for p in pods if p.state in _RANK]
    on_active = _removal_order(p for p in live if p.side == ACTIVE)
    on_standby = [p for p in live if p.side == STANDBY]
    new = _removal_order(p for p in live if p.side is None)[::-1]  # the most advanced first

    cut = max(len(on_active) - active, 0)
    surplus, planned = on_active[:cut], on_active[cut:]
    ready = sorted(
        (p for p in on_standby if p.state == "ready"),
        key=lambda p: (p.ready_since_s or p.created_s, p.created_s, p.name),
    )
    starting = sorted((p for p in on_standby if p.state == "starting"), key=lambda p: (p.created_s, p.name))
    promoted = [*ready, *starting][: max(active - len(planned), 0)]
    joined = new[: max(active - len(planned) - len(promoted), 0)]
    planned = [*planned, *promoted, *joined]
    new = new[len(joined) :]

    staying = _removal_order(p for p in on_standby if p not in promoted)
    pool = staying[max(len(staying) - standby, 0) :]
    filled = new[: max(standby - len(pool), 0)]
    demoted = surplus[: max(standby - len(pool) - len(filled), 0)]
    pool = [*pool, *filled, *demoted]
    surplus = surplus[len(demoted) :]

    relabel = [(p, ACTIVE) for p in planned if p.side != ACTIVE]
    relabel += [(p, STANDBY) for p in pool if p.side != STANDBY]
    return RolePlan(tuple(planned), tuple(pool), tuple(surplus), tuple(relabel))


def _epoch(stamp: Any) -> float:
    return float(stamp.timestamp()) if stamp is not None else 0.0


class _PodGone(Exception):
    """A pod to relabel went away, or was replaced by one of the same name, since it was listed."""


@dataclass(frozen=True)
class _Observed:
    """One read of the target: its spec, its pool size (None: it never had a pool) and its pods."""

    spec: int
    standby_target: int | None
    pods: tuple[PodView, ...]
    draining: int


class KubernetesTarget:
    """One scale target and the pods ``pod_selector`` picks, in ``target.namespace``.

    ``warm_pool`` (the label telling standby pods from active ones) is given when the policy keeps a
    warm pool, ``headroom`` (the placeholder Deployment's name) when it keeps a warm-node buffer;
    without them a decision asking for either is a :class:`PermanentError`.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        target: TargetConfig,
        pod_selector: str,
        *,
        timeout_s: float = 10.0,
        warm_pool: WarmPoolLabels | None = None,
        headroom: str | None = None,
    ):
        self.api = api
        self.target = target
        self.pod_selector = pod_selector
        self.timeout_s = timeout_s
        self.warm_pool = warm_pool
        self.headroom = headroom
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._custom = k8s.CustomObjectsApi(api)

    @property
    def scale_resource(self) -> str:
        return f"{self.target.resource}/scale"

    def _call(self, verb: str, resource: str, fn: Callable[[], T]) -> T:
        def gone(detail: str) -> Exception:
            return TargetGone(f"{self.target} is gone ({verb} {resource}: {detail})")

        return call_api(verb, resource, self.target.namespace, fn, {404: gone})

    @property
    def _apps_suffix(self) -> str | None:
        t = self.target
        return _APPS_KINDS.get(t.kind) if t.api_version == "apps/v1" else None

    def _get_scale(self) -> Any:
        t, kw = self.target, {"_request_timeout": self.timeout_s}
        suffix = self._apps_suffix
        if suffix is not None:
            return getattr(self._apps, f"read_namespaced_{suffix}_scale")(t.name, t.namespace, **kw)
        return self._custom.get_namespaced_custom_object_scale(
            t.group, t.version, t.namespace, t.resource, t.name, _request_timeout=self.timeout_s
        )

    def _patch_scale(self, replicas: int) -> None:
        t, kw = self.target, {"_request_timeout": self.timeout_s}
        body = {"spec": {"replicas": replicas}}
        suffix = self._apps_suffix
        if suffix is not None:
            getattr(self._apps, f"patch_namespaced_{suffix}_scale")(t.name, t.namespace, body, **kw)
        else:
            self._custom.patch_namespaced_custom_object_scale(
                t.group, t.version, t.namespace, t.resource, t.name, body, _request_timeout=self.timeout_s
            )

    def replicas(self) -> int:
        """The scale subresource's ``spec.replicas``."""
        scale = self._call("get", self.scale_resource, self._get_scale)
        spec = scale.get("spec", {}) if isinstance(scale, dict) else scale.spec
        value = spec.get("replicas") if isinstance(spec, dict) else spec.replicas
        return int(value or 0)

    def _pods(self) -> list[Any]:
        pods = self._call(
            "list",
            "pods",
            lambda: self._core.list_namespaced_pod(
                self.target.namespace, label_selector=self.pod_selector, _request_timeout=self.timeout_s
            ),
        )
        return list(pods.items)

    def counts(self, now: float = 0.0) -> ReplicaCounts:
        """Spec replicas and the selected pods by :func:`pod_state`: ready, starting, pending, draining
        (the :class:`~gpuscale.policies.ports.ScaleTarget` port; ``now`` is not needed live). With a
        warm pool, the active spec and the active pods by :func:`plan_roles`, and the Ready standby
        pods."""
        if self.warm_pool is None:
            current = self.replicas()
            states = Counter(pod_state(pod) for pod in self._pods())
            return ReplicaCounts(
                current, states["ready"], states["starting"], states["pending"], states["draining"]
            )
        seen = self._observe()
        if seen.standby_target is None:  # never had a pool: every pod is active
            states = Counter(p.state for p in seen.pods)
            return ReplicaCounts(
                seen.spec, states["ready"], states["starting"], states["pending"], seen.draining
            )
        pool = seen.standby_target
        plan = plan_roles(seen.pods, max(seen.spec - pool, 0), pool)
        states = Counter(p.state for p in (*plan.active, *plan.surplus))
        return ReplicaCounts(
            current_replicas=max(seen.spec - pool, 0),
            ready=states["ready"],
            starting=states["starting"],
            pending=states["pending"],
            draining=seen.draining,
            standby=sum(1 for p in plan.standby if p.state == "ready"),
            standby_target=pool,
        )

    def scale(self, replicas: int) -> None:
        """Set ``spec.replicas`` through the scale subresource."""
        self._call("patch", self.scale_resource, lambda: self._patch_scale(replicas))

    def apply(self, decision: Decision, now: float) -> None:
        """Apply the whole ``decision`` (the :class:`~gpuscale.policies.ports.ScaleTarget` port),
        writing only what differs from what the cluster has: the active count (with a warm pool, the
        pool size and the pods' labels too), then the placeholder Deployment's replicas."""
        if decision.standby_replicas is not None and self.warm_pool is None:
            raise PermanentError(
                f"the policy keeps a warm pool of {decision.standby_replicas} but the controller for "
                f"{self.target} was set up without one (a policy config with standby_replicas > 0 sets it)"
            )
        if decision.placeholder_pods is not None and self.headroom is None:
            raise PermanentError(
                f"the policy keeps {decision.placeholder_pods} placeholder pod(s) but the controller for "
                f"{self.target} was set up without a placeholder Deployment (a policy config with "
                "headroom_replicas > 0 sets it)"
            )
        seen = self._observe() if self.warm_pool is not None else None
        if seen is None or (seen.standby_target is None and decision.standby_replicas is None):
            desired = decision.desired_replicas
            if desired is not None and desired != (seen.spec if seen is not None else self.replicas()):
                self.scale(desired)
        else:
            self._apply_pool(decision, seen)
        if decision.placeholder_pods is not None:
            self._apply_placeholders(decision.placeholder_pods)

    # -- the warm pool -------------------------------------------------------------------------------

    def _read_object(self) -> Any:
        t, kw = self.target, {"_request_timeout": self.timeout_s}
        suffix = self._apps_suffix
        if suffix is not None:
            return getattr(self._apps, f"read_namespaced_{suffix}")(t.name, t.namespace, **kw)
        return self._custom.get_namespaced_custom_object(
            t.group, t.version, t.namespace, t.resource, t.name, _request_timeout=self.timeout_s
        )

    def _standby_target(self) -> int | None:
        obj = self._call("get", self.target.resource, self._read_object)
        meta = obj.get("metadata", {}) if isinstance(obj, dict) else obj.metadata
        annotations = (meta.get("annotations") if isinstance(meta, dict) else meta.annotations) or {}
        raw = annotations.get(STANDBY_ANNOTATION)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise PermanentError(
                f"{self.target}: annotation {STANDBY_ANNOTATION}={raw!r} is not a count of pods; "
                "set it to the warm pool's size or remove it"
            )
        return value

    def _view(self, pod: Any, labels: WarmPoolLabels) -> PodView:
        meta = pod.metadata
        value = (meta.labels or {}).get(labels.label)
        side = ACTIVE if value == labels.active else STANDBY if value == labels.standby else None
        state = pod_state(pod)
        ready_since: float | None = None
        if state == "ready":
            cond = next(c for c in pod.status.conditions if c.type == "Ready")
            ready_since = _epoch(cond.last_transition_time or meta.creation_timestamp)
        return PodView(meta.name, meta.uid, state, side, _epoch(meta.creation_timestamp), ready_since)

    def _observe(self) -> _Observed:
        assert self.warm_pool is not None
        spec = self.replicas()
        pool = self._standby_target()
        views = [self._view(pod, self.warm_pool) for pod in self._pods()]
        draining = sum(1 for v in views if v.state == "draining")
        return _Observed(spec, pool, tuple(views), draining)

    def _write_pool(self, spec: int, pool: int) -> None:
        t, kw = self.target, {"_request_timeout": self.timeout_s}
        annotate = {"metadata": {"annotations": {STANDBY_ANNOTATION: str(pool)}}}
        suffix = self._apps_suffix
        if suffix is not None:  # one write: the split of spec.replicas can never be half-written
            body = {**annotate, "spec": {"replicas": spec}}
            patch = getattr(self._apps, f"patch_namespaced_{suffix}")
            self._call("patch", t.resource, lambda: patch(t.name, t.namespace, body, **kw))
            return
        self.scale(spec)
        self._call(
            "patch",
            t.resource,
            lambda: self._custom.patch_namespaced_custom_object(
                t.group, t.version, t.namespace, t.resource, t.name, annotate,
                _request_timeout=self.timeout_s, _content_type="application/merge-patch+json",
            ),
        )  # fmt: skip

    def _apply_pool(self, decision: Decision, seen: _Observed) -> None:
        assert self.warm_pool is not None
        before = seen.standby_target
        pool = decision.standby_replicas if decision.standby_replicas is not None else before or 0
        active = decision.desired_replicas
        if active is None:
            active = max(seen.spec - (before or 0), 0)
        if active + pool != seen.spec or pool != before:
            self._write_pool(active + pool, pool)
        plan = plan_roles(seen.pods, active, pool)
        for pod, side in plan.relabel:
            self._relabel(pod, side)

    def _relabel(self, pod: PodView, side: str) -> None:
        assert self.warm_pool is not None
        labels = self.warm_pool
        value = labels.active if side == ACTIVE else labels.standby
        # The uid makes the patch a precondition: a pod of the same name made since (a StatefulSet's)
        # is not relabelled by mistake (409).
        body = {"metadata": {"uid": pod.uid, "labels": {labels.label: value}}}
        ns = self.target.namespace

        def gone(detail: str) -> Exception:
            return _PodGone(detail)

        try:
            call_api(
                "patch",
                "pods",
                ns,
                lambda: self._core.patch_namespaced_pod(pod.name, ns, body, _request_timeout=self.timeout_s),
                {404: gone, 409: gone},
            )
        except _PodGone as exc:
            log.info("pod %s was not relabelled %s: %s", pod.name, value, exc)
            return
        log.info("pod %s: %s -> %s (%s=%s)", pod.name, pod.side or "new", side, labels.label, value)

    # -- the warm-node buffer ------------------------------------------------------------------------

    def _headroom_call(self, verb: str, fn: Callable[[], T]) -> T:
        ns, name = self.target.namespace, self.headroom

        def missing(detail: str) -> Exception:
            return PermanentError(
                f"the placeholder Deployment {ns}/{name} does not exist ({detail}); apply what "
                "`gpuscale manifests --format headroom` renders, or set headroom.deployment"
            )

        return call_api(verb, "deployments/scale", ns, fn, {404: missing})

    def placeholder_replicas(self) -> int:
        """The placeholder Deployment's ``spec.replicas``."""
        assert self.headroom is not None
        name, ns = self.headroom, self.target.namespace
        scale = self._headroom_call(
            "get",
            lambda: self._apps.read_namespaced_deployment_scale(name, ns, _request_timeout=self.timeout_s),
        )
        return int((scale.spec.replicas if scale.spec is not None else 0) or 0)

    def _apply_placeholders(self, count: int) -> None:
        assert self.headroom is not None
        name, ns = self.headroom, self.target.namespace
        if self.placeholder_replicas() == count:
            return
        body = {"spec": {"replicas": count}}
        self._headroom_call(
            "patch",
            lambda: self._apps.patch_namespaced_deployment_scale(
                name, ns, body, _request_timeout=self.timeout_s
            ),
        )
        log.info("placeholder Deployment %s scaled to %d", name, count)


def api_client(kubeconfig: Path | None, source: str) -> k8s.ApiClient:
    """An API client from ``kubeconfig``, or in-cluster, else the default kubeconfig.

    urllib3's own retries are off: a down API server fails the tick at once and the loop retries on
    the next one, instead of three silent retries with backoff inside one tick.
    """
    conf = k8s.Configuration()
    try:
        if kubeconfig is not None:
            k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=conf)  # type: ignore[no-untyped-call]
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
            except ConfigException:
                k8s_config.load_kube_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        raise ConfigError(
            source, "kubeconfig", str(kubeconfig or "~/.kube/config"), f"unusable ({exc})"
        ) from None
    conf.retries = False
    return k8s.ApiClient(conf)
