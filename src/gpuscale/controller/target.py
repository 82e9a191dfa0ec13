"""``KubernetesTarget``: reads and sets a workload's scale subresource through the official client.

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
=================================  ==================================================================
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from gpuscale._core.errors import ConfigError, PermanentError, TemporaryError
from gpuscale.controller.config import TargetConfig
from gpuscale.policies.base import Decision
from gpuscale.policies.ports import ReplicaCounts

T = TypeVar("T")

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


class KubernetesTarget:
    """One scale target and the pods ``pod_selector`` picks, in ``target.namespace``."""

    def __init__(
        self, api: k8s.ApiClient, target: TargetConfig, pod_selector: str, *, timeout_s: float = 10.0
    ):
        self.api = api
        self.target = target
        self.pod_selector = pod_selector
        self.timeout_s = timeout_s
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

    def _get_scale(self) -> Any:
        t, kw = self.target, {"_request_timeout": self.timeout_s}
        suffix = _APPS_KINDS.get(t.kind) if t.api_version == "apps/v1" else None
        if suffix is not None:
            return getattr(self._apps, f"read_namespaced_{suffix}_scale")(t.name, t.namespace, **kw)
        return self._custom.get_namespaced_custom_object_scale(
            t.group, t.version, t.namespace, t.resource, t.name, _request_timeout=self.timeout_s
        )

    def _patch_scale(self, replicas: int) -> None:
        t, kw = self.target, {"_request_timeout": self.timeout_s}
        body = {"spec": {"replicas": replicas}}
        suffix = _APPS_KINDS.get(t.kind) if t.api_version == "apps/v1" else None
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

    def counts(self, now: float = 0.0) -> ReplicaCounts:
        """Spec replicas and the selected pods by :func:`pod_state`: ready, starting, pending, draining
        (the :class:`~gpuscale.policies.ports.ScaleTarget` port; ``now`` is not needed live)."""
        current = self.replicas()
        pods = self._call(
            "list",
            "pods",
            lambda: self._core.list_namespaced_pod(
                self.target.namespace, label_selector=self.pod_selector, _request_timeout=self.timeout_s
            ),
        )
        states = Counter(pod_state(pod) for pod in pods.items)
        return ReplicaCounts(
            current, states["ready"], states["starting"], states["pending"], states["draining"]
        )

    def scale(self, replicas: int) -> None:
        """Set ``spec.replicas`` through the scale subresource."""
        self._call("patch", self.scale_resource, lambda: self._patch_scale(replicas))

    def apply(self, decision: Decision, now: float) -> None:
        """Apply ``decision`` (the :class:`~gpuscale.policies.ports.ScaleTarget` port): the active
        count through the scale subresource; a hold writes nothing."""
        if decision.desired_replicas is not None:
            self.scale(decision.desired_replicas)


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
