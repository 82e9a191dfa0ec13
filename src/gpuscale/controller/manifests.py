"""``gpuscale manifests controller``: the objects that run ``gpuscale run`` inside the cluster.

From one controller config, in order: a ServiceAccount; a least-privilege Role and RoleBinding per
namespace involved; a ConfigMap holding the controller config; a Deployment running
``gpuscale run --config /etc/gpuscale/controller.yaml``.

The Role grants exactly what the controller calls:

=====================================  =================================  ===========================
resource (API group)                   verbs                              where
=====================================  =================================  ===========================
``pods`` (core)                        get, list, watch                   the target's namespace
``pods`` (core)                        patch (the warm pool's labels)     the target's namespace
                                                                          (only with a warm pool)
``<resource>/scale`` (target's group)  get, patch, update (the target's   the target's namespace
                                       name only)
``<resource>`` (target's group)        get, patch (the target's name      the target's namespace
                                       only: the pool-size annotation)    (only with a warm pool)
``deployments/scale`` (apps)           get, patch (the placeholder        the target's namespace
                                       Deployment's name only)            (only with a warm-node
                                                                          buffer)
``leases`` (coordination.k8s.io)       get, update (the lease's name      the lease's namespace
                                       only), create                      (only with leader election)
=====================================  =================================  ===========================

``create`` cannot be limited by ``resourceNames`` (the name is not known to the authorizer before the
object exists), so it is a rule of its own; nor can ``patch`` on pods be (the pool's pods come and
go). A policy keeps a warm pool when its config has ``standby_replicas`` > 0 and a warm-node buffer
when it has ``headroom_replicas`` > 0; the pod's config keeps the ``warm_pool`` / ``headroom``
blocks only then.

The ConfigMap's config needs nothing else in the pod: a policy given as a file or a preset is
inlined; ``kubeconfig`` is dropped (the pod uses its ServiceAccount), ``decision_log`` is dropped (the
records go to standard output, i.e. the pod's log), a fixed ``leader_election.identity`` is dropped
(each pod is named by ``$POD_NAME``), and the metrics endpoint is bound to ``0.0.0.0`` on a port the
probes use. Files a ``prometheus`` block names (CA, token) must be mounted by the user; a comment
says so when there are any.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from gpuscale.controller.config import ControllerConfig, keeps_warm_nodes, keeps_warm_pool
from gpuscale.integrations.manifests import dump_yaml
from gpuscale.policies import registry

CONFIG_DIR = "/etc/gpuscale"
CONFIG_FILE = "controller.yaml"
DEFAULT_PORT = 8080


IMAGE_NAME = "localhost/gpuscale"
"""The name ``scripts/build-image.sh`` gives the image it builds (docs/image.md): a local name, which a
node never pulls from a public registry; push the image to your registry and pass ``--image``."""


def default_image() -> str:
    """``localhost/gpuscale:<installed version>``, the image ``scripts/build-image.sh`` builds; pass
    ``--image`` for your registry's copy."""
    try:
        return f"{IMAGE_NAME}:{version('gpuscale')}"
    except PackageNotFoundError:
        return f"{IMAGE_NAME}:latest"


def _dump(obj: Any) -> str:
    return dump_yaml(obj, width=100)


def _inline_policy(spec: str | dict[str, Any], config_path: Path) -> tuple[dict[str, Any], Any]:
    """The policy as a mapping (a file beside the config or a preset, read here) and its config,
    validated here: the pod must not find out."""
    resolved = registry.resolve_policy(spec, key="policy", source=str(config_path), base=config_path.parent)
    validated = resolved.config()
    assert isinstance(resolved.data, dict)
    return dict(resolved.data), validated


def pod_config(config: ControllerConfig, config_path: str | Path) -> dict[str, Any]:
    """The controller config as the pod reads it (see the module doc)."""
    path = Path(config_path)
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["policy"], policy = _inline_policy(config.policy, path)
    if not keeps_warm_pool(policy):
        data.pop("warm_pool", None)
    if not keeps_warm_nodes(policy):
        data.pop("headroom", None)
    data.pop("kubeconfig", None)
    data.pop("decision_log", None)
    le = data.get("leader_election", {})
    le.pop("identity", None)
    metrics = data.setdefault("metrics", {})
    metrics["bind_address"] = "0.0.0.0"
    if not metrics.get("port"):
        metrics["port"] = DEFAULT_PORT
    return data


def _mounted_files(config: ControllerConfig) -> list[str]:
    prom = config.prometheus
    if prom is None:
        return []
    found: list[str] = []
    for key in ("bearer_token_file", "ca_file"):
        value = getattr(prom, key, None)
        if value is not None:
            found.append(f"prometheus.{key}: {value}")
    return found


def render_controller(
    config: ControllerConfig,
    config_path: str | Path,
    *,
    namespace: str | None = None,
    image: str | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """ServiceAccount, Role(s) + RoleBinding(s), ConfigMap and Deployment for ``gpuscale run``.

    ``namespace`` is where the controller runs (default: the target's namespace).
    """
    t = config.target
    ns = namespace or t.namespace
    app = name or f"gpuscale-{t.name}"
    labels = {"app.kubernetes.io/name": "gpuscale-controller", "app.kubernetes.io/instance": app}
    le = config.leader_election
    _, policy = _inline_policy(config.policy, Path(config_path))

    target_rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": [t.group],
            "resources": [f"{t.resource}/scale"],
            "resourceNames": [t.name],
            "verbs": ["get", "patch", "update"],
        },
    ]
    if keeps_warm_pool(policy):
        target_rules += [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
            {
                "apiGroups": [t.group],
                "resources": [t.resource],
                "resourceNames": [t.name],
                "verbs": ["get", "patch"],
            },
        ]
    if keeps_warm_nodes(policy):
        target_rules.append(
            {
                "apiGroups": ["apps"],
                "resources": ["deployments/scale"],
                "resourceNames": [config.headroom.name_for(t)],
                "verbs": ["get", "patch"],
            }
        )
    rules: dict[str, list[dict[str, Any]]] = {t.namespace: target_rules}
    if le.enabled:
        lease_ns, lease_name = le.lease_for(t)
        rules.setdefault(lease_ns, []).extend(
            [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [lease_name],
                    "verbs": ["get", "update"],
                },
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            ]
        )

    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": app, "namespace": ns, "labels": labels},
        }
    ]
    for rule_ns, rule_list in rules.items():
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": app, "namespace": rule_ns, "labels": labels},
                "rules": rule_list,
            }
        )
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": app, "namespace": rule_ns, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": app},
                "subjects": [{"kind": "ServiceAccount", "name": app, "namespace": ns}],
            }
        )

    text = yaml.safe_dump(pod_config(config, config_path), sort_keys=False, width=100)
    port = int(config.metrics.port or DEFAULT_PORT)
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": app, "namespace": ns, "labels": labels},
            "data": {CONFIG_FILE: text},
        }
    )
    probe = {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    container = {
        "name": "controller",
        "image": image or default_image(),
        "command": ["gpuscale"],
        "args": ["run", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    objects.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app, "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 2 if le.enabled else 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {
                        "labels": labels,
                        # a changed config rolls the pods
                        "annotations": {
                            "gpuscale.io/config-sha256": hashlib.sha256(text.encode()).hexdigest()
                        },
                    },
                    "spec": {
                        "serviceAccountName": app,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [{"name": "config", "configMap": {"name": app}}],
                    },
                },
            },
        }
    )
    return objects


def render_controller_yaml(objects: list[dict[str, Any]], config: ControllerConfig, source: str) -> str:
    """The objects as one multi-document YAML, with a header naming the source."""
    header = [f"# gpuscale manifests controller, from {source}"]
    files = _mounted_files(config)
    if files:
        header.append("# NOTE: the config names files the pod must mount itself:")
        header.extend(f"#   {f}" for f in files)
    docs = "---\n".join(_dump(o) for o in objects)
    return "\n".join(header) + "\n---\n" + docs
