"""``gpuscale import``: an existing HPA, KEDA ScaledObject or Knative/KServe object as a gpuscale policy.

Reads ``autoscaling/v2`` and ``autoscaling/v2beta2`` HorizontalPodAutoscalers, ``keda.sh/v1alpha1``
ScaledObjects (Prometheus and cpu triggers), and the KPA annotations of a Knative Service
(``serving.knative.dev/v1``) or KServe InferenceService (``serving.kserve.io/v1beta1``).

Nothing is guessed: an unknown field, an unsupported metric type or a metric gpuscale cannot model
is a :class:`~gpuscale._core.errors.ConfigError` naming the field (``spec.metrics[1].type``).
Metric names are understood when gpuscale wrote them (``gpuscale_gpu_util_180s``, see
:mod:`.manifests`) or when they are an exporter's own series (``DCGM_FI_DEV_GPU_UTIL``,
``nv_inference_pending_request_count``, ``vllm:num_requests_waiting``, ...; window 60 s).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from gpuscale._core.errors import MISSING, ConfigError
from gpuscale.config.loading import parse_yaml
from gpuscale.integrations import promql
from gpuscale.integrations.manifests import KNATIVE_PREFIX, KPA_CLASS, parse_metric_name
from gpuscale.policies.base import Aggregation, Metric
from gpuscale.policies.registry import PolicyConfig, load_policy_config

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


class _Doc:
    """A manifest being read: every key read is checked against what is allowed at its path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, value: object, allowed: str) -> ConfigError:
        return ConfigError(self.source, key, value, allowed)

    def mapping(
        self, node: Any, key: str, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, Any]:
        if not isinstance(node, Mapping):
            raise self.error(key, node, "expected a mapping")
        for k in node:
            if k not in allowed:
                path = f"{key}.{k}" if key else str(k)
                raise self.error(
                    path, node[k], f"unknown or unsupported field; allowed here: {', '.join(sorted(allowed))}"
                )
        for k in required:
            if k not in node:
                raise self.error(f"{key}.{k}" if key else k, MISSING, "required field is missing")
        return dict(node)

    def list(self, node: Any, key: str) -> list[Any]:
        if not isinstance(node, list):
            raise self.error(key, node, "expected a list")
        return node

    def quantity(self, node: Any, key: str) -> float:
        if isinstance(node, bool):
            raise self.error(key, node, "expected a number or a Kubernetes quantity")
        if isinstance(node, (int, float)):
            return float(node)
        found = _QUANTITY.match(str(node).strip())
        if found is None:
            raise self.error(key, node, "expected a number or a Kubernetes quantity (e.g. 10, 500m, 2k)")
        return float(found.group(1)) * _SUFFIX[found.group(2)]

    def integer(self, node: Any, key: str) -> int:
        if isinstance(node, bool) or not isinstance(node, int):
            try:
                return int(str(node))
            except ValueError:
                raise self.error(key, node, "expected a whole number") from None
        return node

    def seconds(self, node: Any, key: str) -> float:
        text = str(node).strip()
        found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text)
        if found is None:
            raise self.error(key, node, "expected a duration such as 60s, 2m or 60")
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[found.group(2)]
        return float(found.group(1)) * unit


_METADATA = {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
             "creationTimestamp", "managedFields", "ownerReferences", "finalizers", "generateName"}  # fmt: skip


def _metric_from_name(doc: _Doc, name: Any, key: str) -> tuple[Metric, Aggregation | None, float]:
    parsed = parse_metric_name(str(name))
    if parsed is not None:
        return parsed
    metric = promql.metric_for_series(str(name))
    if metric is None or str(name) not in {promql.source_of(metric, r).series for r in ("triton", "vllm")}:
        raise doc.error(
            key,
            name,
            "a metric gpuscale cannot model; allowed: gpuscale_<metric>_[<aggregation>_]<window>s names "
            "(gpuscale manifests) or DCGM_FI_DEV_GPU_UTIL, nv_inference_pending_request_count, "
            "nv_inference_request_success, vllm:num_requests_waiting, queue_average_concurrent_requests",
        )
    return metric, None, 60.0


# --------------------------------------------------------------------------------------------------
# HPA
# --------------------------------------------------------------------------------------------------


def _hpa_target(doc: _Doc, node: Any, key: str) -> dict[str, Any]:
    t = doc.mapping(node, key, {"type", "averageUtilization", "averageValue", "value"}, {"type"})
    kind = t["type"]
    if kind == "Utilization":
        if "averageUtilization" not in t:
            raise doc.error(f"{key}.averageUtilization", MISSING, "required with type Utilization")
        return {
            "type": "Utilization",
            "average_utilization_percent": doc.quantity(t["averageUtilization"], f"{key}.averageUtilization"),
        }
    if kind == "AverageValue":
        if "averageValue" not in t:
            raise doc.error(f"{key}.averageValue", MISSING, "required with type AverageValue")
        return {
            "type": "AverageValue",
            "average_value": doc.quantity(t["averageValue"], f"{key}.averageValue"),
        }
    if kind == "Value":
        if "value" not in t:
            raise doc.error(f"{key}.value", MISSING, "required with type Value")
        return {"type": "Value", "value": doc.quantity(t["value"], f"{key}.value")}
    raise doc.error(f"{key}.type", kind, "allowed: Utilization, AverageValue, Value")


def _hpa_metric(doc: _Doc, node: Any, key: str) -> dict[str, Any]:
    m = doc.mapping(
        node, key, {"type", "resource", "pods", "object", "external", "containerResource"}, {"type"}
    )
    kind = m["type"]
    if kind == "Resource":
        r = doc.mapping(m.get("resource"), f"{key}.resource", {"name", "target"}, {"name", "target"})
        if r["name"] != "cpu":
            raise doc.error(
                f"{key}.resource.name", r["name"], "gpuscale models cpu only (memory is not simulated)"
            )
        return {
            "type": "Resource",
            "resource": "cpu",
            "target": _hpa_target(doc, r["target"], f"{key}.resource.target"),
        }
    if kind not in ("Pods", "Object", "External"):
        raise doc.error(
            f"{key}.type", kind, "unsupported metric type; allowed: Resource (cpu), Pods, Object, External"
        )
    field = kind.lower()
    allowed = {"metric", "target"} | ({"describedObject"} if kind == "Object" else set())
    body = doc.mapping(m.get(field), f"{key}.{field}", allowed, allowed)
    mk = doc.mapping(body["metric"], f"{key}.{field}.metric", {"name"}, {"name"})
    metric, agg, window_s = _metric_from_name(doc, mk["name"], f"{key}.{field}.metric.name")
    out: dict[str, Any] = {"type": kind, "metric": metric.value, "window_s": window_s}
    if kind != "Pods" and agg is not None and agg != Aggregation.TOTAL:  # total: the default
        out["aggregation"] = agg.value
    out["target"] = _hpa_target(doc, body["target"], f"{key}.{field}.target")
    return out


def _hpa_rules(doc: _Doc, node: Any, key: str) -> dict[str, Any]:
    r = doc.mapping(node, key, {"stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance"})
    out: dict[str, Any] = {}
    if "stabilizationWindowSeconds" in r:
        out["stabilization_window_s"] = doc.integer(
            r["stabilizationWindowSeconds"], f"{key}.stabilizationWindowSeconds"
        )
    if "selectPolicy" in r:
        out["select_policy"] = r["selectPolicy"]
    if "policies" in r:
        policies = []
        for i, p in enumerate(doc.list(r["policies"], f"{key}.policies")):
            pk = f"{key}.policies[{i}]"
            pm = doc.mapping(p, pk, {"type", "value", "periodSeconds"}, {"type", "value", "periodSeconds"})
            policies.append({"type": pm["type"], "value": doc.integer(pm["value"], f"{pk}.value"),
                             "period_s": doc.integer(pm["periodSeconds"], f"{pk}.periodSeconds")})  # fmt: skip
        out["policies"] = policies
    if "tolerance" in r:
        out["tolerance"] = doc.quantity(r["tolerance"], f"{key}.tolerance")
    return out


def _behavior(doc: _Doc, node: Any, key: str) -> dict[str, Any]:
    b = doc.mapping(node, key, {"scaleUp", "scaleDown"})
    out: dict[str, Any] = {}
    if "scaleUp" in b:
        out["scale_up"] = _hpa_rules(doc, b["scaleUp"], f"{key}.scaleUp")
    if "scaleDown" in b:
        out["scale_down"] = _hpa_rules(doc, b["scaleDown"], f"{key}.scaleDown")
    return out


def import_hpa(obj: Mapping[str, Any], doc: _Doc) -> dict[str, Any]:
    spec = doc.mapping(
        obj.get("spec"),
        "spec",
        {"scaleTargetRef", "minReplicas", "maxReplicas", "metrics", "behavior"},
        {"maxReplicas"},
    )
    out: dict[str, Any] = {"kind": "hpa"}
    name = (obj.get("metadata") or {}).get("name")
    if name:
        out["name"] = str(name)
    if "minReplicas" in spec:
        out["min_replicas"] = doc.integer(spec["minReplicas"], "spec.minReplicas")
    out["max_replicas"] = doc.integer(spec["maxReplicas"], "spec.maxReplicas")
    if "metrics" in spec:
        out["metrics"] = [
            _hpa_metric(doc, m, f"spec.metrics[{i}]")
            for i, m in enumerate(doc.list(spec["metrics"], "spec.metrics"))
        ]
    if "behavior" in spec:
        out["behavior"] = _behavior(doc, spec["behavior"], "spec.behavior")
    return out


# --------------------------------------------------------------------------------------------------
# KEDA
# --------------------------------------------------------------------------------------------------

_PROMETHEUS_KEYS = {"serverAddress", "query", "threshold", "activationThreshold", "metricName", "namespace",
                    "ignoreNullValues", "unsafeSsl", "timeout", "queryParameters", "customHeaders",
                    "authModes", "cortexOrgID"}  # fmt: skip


def _keda_trigger(doc: _Doc, node: Any, key: str) -> dict[str, Any]:
    t = doc.mapping(
        node,
        key,
        {"type", "name", "metadata", "metricType", "authenticationRef", "useCachedMetrics"},
        {"type", "metadata"},
    )
    kind = t["type"]
    if kind == "external" or kind == "external-push":
        raise doc.error(
            f"{key}.type",
            kind,
            "an external scaler runs its own logic; gpuscale cannot simulate it (if it is gpuscale keda-scaler, simulate its policy file)",
        )
    if kind != "prometheus":
        raise doc.error(f"{key}.type", kind, "unsupported trigger type; allowed: prometheus")
    metric_type = t.get("metricType", "AverageValue")
    if metric_type not in ("AverageValue", "Value"):
        raise doc.error(f"{key}.metricType", metric_type, "allowed: AverageValue, Value")
    meta = doc.mapping(t["metadata"], f"{key}.metadata", _PROMETHEUS_KEYS, {"query", "threshold"})
    spec = promql.parse_query(str(meta["query"]))
    if spec is None:
        raise doc.error(
            f"{key}.metadata.query",
            meta["query"],
            "reads no series gpuscale can model (DCGM, Triton, vLLM, Knative queue-proxy)",
        )
    out: dict[str, Any] = {}
    if t.get("name"):
        out["name"] = str(t["name"])
    out |= {"metric": spec.metric.value, "aggregation": spec.aggregation.value, "window_s": spec.window_s,
            "threshold": doc.quantity(meta["threshold"], f"{key}.metadata.threshold")}  # fmt: skip
    if "activationThreshold" in meta:
        out["activation_threshold"] = doc.quantity(
            meta["activationThreshold"], f"{key}.metadata.activationThreshold"
        )
    out["metric_type"] = metric_type
    return out


def import_keda(obj: Mapping[str, Any], doc: _Doc) -> dict[str, Any]:
    allowed = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "minReplicaCount",
               "maxReplicaCount", "idleReplicaCount", "fallback", "advanced", "triggers"}  # fmt: skip
    spec = doc.mapping(obj.get("spec"), "spec", allowed, {"triggers"})
    out: dict[str, Any] = {"kind": "keda"}
    name = (obj.get("metadata") or {}).get("name")
    if name:
        out["name"] = str(name)
    for src, dst in (("pollingInterval", "polling_interval_s"), ("cooldownPeriod", "cooldown_period_s"),
                     ("initialCooldownPeriod", "initial_cooldown_period_s"), ("minReplicaCount", "min_replica_count"),
                     ("maxReplicaCount", "max_replica_count"), ("idleReplicaCount", "idle_replica_count")):  # fmt: skip
        if src in spec:
            out[dst] = doc.integer(spec[src], f"spec.{src}")
    if "fallback" in spec:
        fb = doc.mapping(
            spec["fallback"],
            "spec.fallback",
            {"failureThreshold", "replicas", "behavior"},
            {"failureThreshold", "replicas"},
        )
        out["fallback"] = {"failure_threshold": doc.integer(fb["failureThreshold"], "spec.fallback.failureThreshold"),
                           "replicas": doc.integer(fb["replicas"], "spec.fallback.replicas")}  # fmt: skip
        if "behavior" in fb:
            out["fallback"]["behavior"] = fb["behavior"]
    if "advanced" in spec:
        adv = doc.mapping(
            spec["advanced"],
            "spec.advanced",
            {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"},
        )
        if "scalingModifiers" in adv:
            raise doc.error(
                "spec.advanced.scalingModifiers",
                adv["scalingModifiers"],
                "scaling modifiers (formulas over triggers) are not modelled",
            )
        if "horizontalPodAutoscalerConfig" in adv:
            hc = doc.mapping(
                adv["horizontalPodAutoscalerConfig"],
                "spec.advanced.horizontalPodAutoscalerConfig",
                {"behavior", "name"},
            )
            if "behavior" in hc:
                b = _behavior(doc, hc["behavior"], "spec.advanced.horizontalPodAutoscalerConfig.behavior")
                out["advanced"] = {"horizontal_pod_autoscaler_config": {"behavior": b}}
    out["triggers"] = [
        _keda_trigger(doc, t, f"spec.triggers[{i}]")
        for i, t in enumerate(doc.list(spec["triggers"], "spec.triggers"))
    ]
    return out


# --------------------------------------------------------------------------------------------------
# Knative / KServe
# --------------------------------------------------------------------------------------------------

_KPA_ANNOTATIONS: dict[str, tuple[str, str]] = {
    "metric": ("metric", "str"),
    "target": ("target", "float"),
    "target-utilization-percentage": ("target_utilization_percentage", "float"),
    "window": ("stable_window_s", "seconds"),
    "panic-window-percentage": ("panic_window_percentage", "float"),
    "panic-threshold-percentage": ("panic_threshold_percentage", "float"),
    "min-scale": ("min_scale", "int"),
    "minScale": ("min_scale", "int"),
    "max-scale": ("max_scale", "int"),
    "maxScale": ("max_scale", "int"),
    "initial-scale": ("initial_scale", "int"),
    "activation-scale": ("activation_scale", "int"),
    "scale-down-delay": ("scale_down_delay_s", "seconds"),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period_s", "seconds"),
}


def _knative_annotations(doc: _Doc, annotations: Mapping[str, Any], key: str, out: dict[str, Any]) -> None:
    for full, value in annotations.items():
        if not str(full).startswith(KNATIVE_PREFIX):
            continue
        short = str(full)[len(KNATIVE_PREFIX) :]
        k = f"{key}[{full!r}]"
        if short == "class":
            if value != KPA_CLASS:
                raise doc.error(
                    k, value, f"only the KPA ({KPA_CLASS}) is imported; an HPA-class revision: import its HPA"
                )
            continue
        if short not in _KPA_ANNOTATIONS:
            raise doc.error(
                k, value, f"unknown or unsupported annotation; allowed: {', '.join(sorted(_KPA_ANNOTATIONS))}"
            )
        dst, kind = _KPA_ANNOTATIONS[short]
        if kind == "int":
            out[dst] = doc.integer(value, k)
        elif kind == "float":
            out[dst] = doc.quantity(value, k)
        elif kind == "seconds":
            out[dst] = doc.seconds(value, k)
        else:
            out[dst] = str(value)


def import_knative(obj: Mapping[str, Any], doc: _Doc) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "knative"}
    name = (obj.get("metadata") or {}).get("name")
    if name:
        out["name"] = str(name)
    spec = doc.mapping(obj.get("spec"), "spec", {"template", "traffic"}, {"template"})
    template = doc.mapping(spec["template"], "spec.template", {"metadata", "spec"})
    tmeta = template.get("metadata") or {}
    _knative_annotations(doc, tmeta.get("annotations") or {}, "spec.template.metadata.annotations", out)
    tspec = template.get("spec") or {}
    if isinstance(tspec, Mapping) and tspec.get("containerConcurrency"):
        out["container_concurrency"] = doc.integer(
            tspec["containerConcurrency"], "spec.template.spec.containerConcurrency"
        )
    return out


def import_kserve(obj: Mapping[str, Any], doc: _Doc) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "knative"}
    meta = obj.get("metadata") or {}
    if meta.get("name"):
        out["name"] = str(meta["name"])
    annotations = meta.get("annotations") or {}
    mode = annotations.get("serving.kserve.io/deploymentMode")
    if mode not in (None, "Serverless"):
        raise doc.error(
            "metadata.annotations['serving.kserve.io/deploymentMode']",
            mode,
            "only Serverless (Knative) mode is imported; RawDeployment uses an HPA: import that",
        )
    _knative_annotations(doc, annotations, "metadata.annotations", out)
    spec = doc.mapping(obj.get("spec"), "spec", {"predictor", "transformer", "explainer"}, {"predictor"})
    predictor = spec["predictor"]
    if not isinstance(predictor, Mapping):
        raise doc.error("spec.predictor", predictor, "expected a mapping")
    for src, dst in (
        ("minReplicas", "min_scale"),
        ("maxReplicas", "max_scale"),
        ("containerConcurrency", "container_concurrency"),
    ):
        if src in predictor:
            out[dst] = doc.integer(predictor[src], f"spec.predictor.{src}")
    if "scaleMetric" in predictor:
        metric = predictor["scaleMetric"]
        if metric not in ("concurrency", "rps"):
            raise doc.error("spec.predictor.scaleMetric", metric, "the KPA takes concurrency or rps")
        out["metric"] = metric
    if "scaleTarget" in predictor:
        out["target"] = doc.quantity(predictor["scaleTarget"], "spec.predictor.scaleTarget")
    return out


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------

_READERS = {
    ("autoscaling/v2", "HorizontalPodAutoscaler"): import_hpa,
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"): import_hpa,
    ("keda.sh/v1alpha1", "ScaledObject"): import_keda,
    ("serving.knative.dev/v1", "Service"): import_knative,
    ("serving.kserve.io/v1beta1", "InferenceService"): import_kserve,
}


def policy_dict(obj: Any, source: str) -> dict[str, Any]:
    """The gpuscale policy mapping for one manifest; ConfigError naming the field otherwise."""
    doc = _Doc(source)
    top = doc.mapping(
        obj, "", {"apiVersion", "kind", "metadata", "spec", "status"}, {"apiVersion", "kind", "spec"}
    )
    key = (top["apiVersion"], top["kind"])
    if key not in _READERS:
        allowed = ", ".join(f"{k} {v}" for v, k in _READERS)
        raise doc.error(
            "apiVersion", f"{top['apiVersion']} {top['kind']}", f"unsupported object; allowed: {allowed}"
        )
    doc.mapping(top.get("metadata") or {}, "metadata", _METADATA)
    return _READERS[key](top, doc)


def import_manifest(text: str, source: str) -> PolicyConfig:
    """Read the one manifest in ``text`` and return the validated gpuscale policy config."""
    docs = [d for d in _load_all(text, source) if d is not None]
    if len(docs) != 1:
        raise ConfigError(source, None, f"{len(docs)} documents", "expected exactly one manifest")
    data = policy_dict(docs[0], source)
    return load_policy_config(data, f"{source} (as a gpuscale policy)")


def _load_all(text: str, source: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        parse_yaml(text, source)  # raises the located ConfigError
        raise


def policy_yaml(config: PolicyConfig, header: str = "") -> str:
    """The policy as gpuscale YAML: the kind, then only the settings that differ from the defaults."""
    assert hasattr(config, "model_dump")
    data = config.model_dump(mode="json", exclude_defaults=True)
    data.pop("kind", None)
    body = yaml.safe_dump({"kind": config.kind, **data}, sort_keys=False, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return comment + body
