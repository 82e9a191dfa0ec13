"""The ``gpuscale run --config`` file: what to scale, from which signals, with which policy, how safely.

Example::

    prometheus: {url: http://prometheus.monitoring:9090}
    target: {apiVersion: apps/v1, kind: Deployment, namespace: serving, name: triton-resnet}
    pod_selector: app=triton-resnet
    policy: hpa-gpu-util            # a preset, a policy YAML beside this file, or an inline mapping
    interval_s: 15
    safety: {min_replicas: 1, max_replicas: 16, max_step: 4, gpu_budget: 32, gpus_per_pod: 2}
    leader_election: {enabled: true}      # two replicas, one acts (a Lease in the target's namespace)
    metrics: {bind_address: 0.0.0.0, port: 8080}   # /metrics, /healthz, /readyz
    warm_pool: {label: gpuscale.io/role, active: active, standby: standby}   # a policy with a warm pool
    headroom: {deployment: triton-resnet-gpu-headroom}   # a policy with a warm-node buffer

``warm_pool`` and ``headroom`` matter only to a policy that keeps a warm pool (``standby_replicas``)
or a warm-node buffer (``headroom_replicas``); their defaults fit what ``gpuscale manifests`` renders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gpuscale._core.errors import MISSING, ConfigError, shown
from gpuscale.config.loading import StrictModel, load_yaml, validate
from gpuscale.config.safety import SafetyConfig
from gpuscale.integrations.manifests import headroom_name
from gpuscale.integrations.prometheus import PrometheusSourceConfig
from gpuscale.policies.base import Policy

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

NAMESPACE_ALLOWED = (
    "a DNS-1123 label: 1 to 63 characters, lowercase letters a-z, digits 0-9 and '-', starting and "
    "ending with a letter or digit"
)


def is_namespace(value: str) -> bool:
    """Whether ``value`` can name a Kubernetes namespace (a DNS-1123 label, :data:`NAMESPACE_ALLOWED`)."""
    return _DNS_LABEL.fullmatch(value) is not None


def _namespace(value: str | None) -> str | None:
    if value is not None and not is_namespace(value):
        raise PydanticCustomError(
            "namespace", "not a Kubernetes namespace; allowed: {allowed}", {"allowed": NAMESPACE_ALLOWED}
        )
    return value


_KEY = re.compile(rf"(?:(?P<prefix>{_DNS_SUBDOMAIN})/)?{_LABEL_NAME}")
_VALUE = re.compile(rf"(?:{_LABEL_NAME})?")
_REQUIREMENT = re.compile(
    r"\s*(?:!\s*(?P<absent>[^\s,!=()]+)"
    r"|(?P<key>[^\s,!=()]+)(?:\s*(?P<op>==|!=|=)\s*(?P<value>[^\s,!=()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*"
)
SELECTOR_ALLOWED = (
    "comma-separated requirements, each key, !key, key=value, key==value, key!=value, key in (v1, v2) "
    "or key notin (v1, v2); a key is an optional DNS subdomain and '/' before a name of 1 to 63 letters, "
    "digits, '-', '_' and '.' that starts and ends with a letter or digit; a value is such a name or empty"
)


def selector_problem(text: str) -> str | None:
    """Why ``text`` is not a Kubernetes label selector (the grammar ``kubectl get -l`` and the API
    server's ``labelSelector`` accept), or None when it is one."""
    pos = 0
    while True:
        m = _REQUIREMENT.match(text, pos)
        if m is None or m.end() == pos:
            return f"expected a requirement at character {pos + 1}"
        key = m.group("absent") or m.group("key")
        k = _KEY.fullmatch(key)
        if k is None or len(k.group("prefix") or "") > 253:
            return f"{shown(key)} is not a label key"
        values = [m.group("value")] if m.group("op") else []
        if m.group("setop"):
            values = [v.strip() for v in m.group("values").split(",")]
            if values == [""]:
                return f"{m.group('setop')} needs at least one value"
        for value in values:
            if _VALUE.fullmatch(value) is None:
                return f"{shown(value)} is not a label value"
        pos = m.end()
        if pos == len(text):
            return None
        if text[pos] != ",":
            return f"expected ',' at character {pos + 1}"
        pos += 1


class TargetConfig(StrictModel):
    """The scalable object, addressed like a ``scaleTargetRef``; it must serve the scale subresource."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, populate_by_name=True)

    api_version: str = Field("apps/v1", alias="apiVersion", description="Group/version. Default apps/v1.")
    kind: str = Field("Deployment", min_length=1, description="Kind. Default Deployment.")
    namespace: str = Field("default", min_length=1, description="Namespace. Default 'default'.")
    name: str = Field(min_length=1, description="The object's name.")
    plural: str | None = Field(
        None, description="Resource name of a custom kind; default the kind lower-cased plus 's'."
    )

    _check_namespace = field_validator("namespace")(_namespace)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> str:
        return self.plural or self.kind.lower() + "s"

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} in {self.namespace}"


class LeaderElectionConfig(StrictModel):
    """Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics and defaults.

    The defaults are client-go's "core clients" values (kube-controller-manager, kube-scheduler):
    lease 15 s, renew deadline 10 s, retry period 2 s. A standby waits ``lease_duration_s`` after it
    last saw the lease change, on its own clock; a leader that has not renewed for
    ``renew_deadline_s`` stops acting first, so the two never act at once while the clocks run at
    about the same rate (client-go's doc: the ratio lease/renew is the tolerated clock-rate ratio).
    """

    enabled: bool = Field(False, description="Elect one acting replica among several. Default false.")
    lease_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The Lease's name; default 'gpuscale-' plus the target's name.",
    )
    namespace: str | None = Field(
        None, min_length=1, description="The Lease's namespace; default the target's."
    )
    identity: str | None = Field(
        None,
        min_length=1,
        description="This candidate's holderIdentity; default env POD_NAME, else hostname_pid.",
    )
    lease_duration_s: float = Field(
        15.0, ge=1, description="How long a standby waits before taking over. Default 15 (client-go)."
    )
    renew_deadline_s: float = Field(
        10.0, ge=1, description="How long a leader retries renewing before it stops. Default 10 (client-go)."
    )
    retry_period_s: float = Field(
        2.0, ge=1, description="Seconds between tries to acquire or renew. Default 2 (client-go)."
    )

    _check_namespace = field_validator("namespace")(_namespace)

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionConfig:
        # client-go's NewLeaderElector checks, with its jitter factor 1.2
        if self.lease_duration_s <= self.renew_deadline_s:
            raise ValueError(
                f"lease_duration_s {self.lease_duration_s:g} must be greater than "
                f"renew_deadline_s {self.renew_deadline_s:g}"
            )
        if self.renew_deadline_s <= 1.2 * self.retry_period_s:
            raise ValueError(
                f"renew_deadline_s {self.renew_deadline_s:g} must be greater than 1.2 x "
                f"retry_period_s {self.retry_period_s:g}"
            )
        return self

    def lease_for(self, target: TargetConfig) -> tuple[str, str]:
        """``(namespace, name)`` of the Lease for ``target``."""
        return self.namespace or target.namespace, self.lease_name or f"gpuscale-{target.name}"


class MetricsServerConfig(StrictModel):
    """The controller's own HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``."""

    bind_address: str = Field(
        "0.0.0.0", min_length=1, description="Address to listen on. Default 0.0.0.0 (a probe needs it)."
    )
    port: int | None = Field(
        None, ge=0, le=65535, description="Port; 0 picks a free one; null: no endpoint. Default null."
    )


class WarmPoolLabels(StrictModel):
    """How the controller tells a warm pool's standby pods from the active ones: one pod label.

    The user's Service selects ``<label>: <active>`` besides the app's own labels, so standby pods --
    loaded and Ready, labelled ``<standby>`` -- get no traffic; a promotion is a label flip. Which
    pods carry which value is the controller's: it writes the label on every pod of the target.
    """

    label: str = Field(
        "gpuscale.io/role",
        max_length=317,
        pattern=rf"^({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$",
        description="The pod label key. Default gpuscale.io/role.",
    )
    active: str = Field(
        "active", pattern=rf"^{_LABEL_NAME}$", description="Its value on active pods. Default active."
    )
    standby: str = Field(
        "standby", pattern=rf"^{_LABEL_NAME}$", description="Its value on standby pods. Default standby."
    )

    @model_validator(mode="after")
    def _distinct(self) -> WarmPoolLabels:
        if self.active == self.standby:
            raise ValueError(f"active and standby must differ (both are {shown(self.active)})")
        return self


class HeadroomConfig(StrictModel):
    """Where a warm-node buffer's placeholder pods live: the Deployment ``gpuscale manifests --format
    headroom`` renders, in the target's namespace, scaled through its scale subresource."""

    deployment: str | None = Field(
        None,
        max_length=253,
        pattern=rf"^{_DNS_SUBDOMAIN}$",
        description="The placeholder Deployment's name; default '<target name>-gpu-headroom'.",
    )

    def name_for(self, target: TargetConfig) -> str:
        return self.deployment or headroom_name(target.name)


class ControllerConfig(StrictModel):
    """The ``gpuscale run --config`` file."""

    prometheus: PrometheusSourceConfig | None = Field(
        None,
        description="Where the policy's signals come from ($namespace/$name: the target's); "
        "null: none (only policies that read no signal can act).",
    )
    target: TargetConfig = Field(description="The object whose scale subresource is set.")
    pod_selector: str = Field(
        min_length=1,
        description="Label selector of the target's pods (ready/starting/pending counts), as "
        "`kubectl get pods -l` takes it: app=triton,tier!=canary.",
    )
    policy: str | dict[str, Any] = Field(
        description="A preset name, a policy YAML file (relative to this file), or an inline policy."
    )
    interval_s: float | None = Field(
        None, gt=0, description="Seconds between ticks; default the policy's sync period, else 15."
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file (relative to this file); default in-cluster, else ~/.kube/config."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Per API request timeout, seconds. Default 10.")
    decision_log: Path | None = Field(
        None, description="Append JSON-lines decision records here; default standard output."
    )
    safety: SafetyConfig
    backoff_max_s: float | None = Field(
        None,
        gt=0,
        description="Longest wait after consecutive failed ticks; default 10 x interval or 300 s, "
        "whichever is smaller.",
    )
    leader_election: LeaderElectionConfig = Field(
        default_factory=LeaderElectionConfig, description="High availability: one acting replica."
    )
    metrics: MetricsServerConfig = Field(
        default_factory=MetricsServerConfig, description="The /metrics, /healthz, /readyz endpoint."
    )
    warm_pool: WarmPoolLabels = Field(
        default_factory=WarmPoolLabels,
        description="The pod label telling standby pods from active ones (a policy with a warm pool).",
    )
    headroom: HeadroomConfig = Field(
        default_factory=HeadroomConfig,
        description="The placeholder Deployment a warm-node buffer scales (a policy with headroom).",
    )

    @field_validator("pod_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        why = selector_problem(value)
        if why is not None:
            raise PydanticCustomError(
                "selector",
                "not a Kubernetes label selector ({why}); allowed: {allowed}",
                {"why": why, "allowed": SELECTOR_ALLOWED},
            )
        return value


def check_signal_source(config: ControllerConfig, policy: Policy[Any], source: str) -> None:
    """Refuse (a ConfigError naming ``prometheus``) a policy that reads signals when the config has
    no ``prometheus:`` to read them from: it could never act. ``policy`` is the built policy."""
    if config.prometheus is None and policy.signals:
        metrics = ", ".join(dict.fromkeys(str(s.metric) for s in policy.signals))
        raise ConfigError(
            source,
            "prometheus",
            MISSING,
            f"required: policy {policy.name} reads signals ({metrics}) and could never act without "
            "them; allowed: a prometheus: block (prometheus: {url: http://prometheus.monitoring:9090}), "
            "or a policy that reads no signal (static)",
        )


def keeps_warm_pool(policy_config: Any) -> bool:
    """Whether a policy config keeps a warm pool (``standby_replicas`` > 0: warm-pool, static,
    static-peak): the controller then labels pods and keeps the pool size on the target."""
    return int(getattr(policy_config, "standby_replicas", 0) or 0) > 0


def keeps_warm_nodes(policy_config: Any) -> bool:
    """Whether a policy config keeps a warm-node buffer (``headroom_replicas`` > 0: warm-pool,
    predictive): the controller then scales the placeholder Deployment."""
    return int(getattr(policy_config, "headroom_replicas", 0) or 0) > 0


def load_controller_config(path: str | Path) -> ControllerConfig:
    """Read and validate a controller config file; ConfigError naming the key otherwise."""
    return validate(ControllerConfig, load_yaml(path), str(path))
