"""Native manifests from a gpuscale policy: an HPA, a KEDA ScaledObject, Knative/KServe annotations,
prometheus-adapter rules.

Each renderer returns :class:`Manifest` values: a Kubernetes object and the *notes* that say where
the native form does not reproduce the policy exactly (a controller flag that is cluster-wide, a
behaviour the native autoscaler does not have). :func:`render_yaml` writes the notes as YAML
comments above their object and recommends the gpuscale controller or external scaler there.

What maps exactly (and therefore round-trips through ``gpuscale import``):

* ``kind: hpa`` -> ``autoscaling/v2`` HPA: bounds, metrics, targets, ``behavior``;
* ``kind: keda`` -> ScaledObject: triggers (Prometheus queries from :mod:`.promql`), activation
  thresholds, polling, cooldowns, min/max/idle counts, fallback, HPA behavior passthrough;
* ``kind: knative`` -> the KPA's per-revision annotations (cluster-wide ``config-autoscaler`` keys
  are named in notes).

A policy's ``safety.schedules`` windows that raise the minimum become KEDA ``cron`` triggers on the
ScaledObject (:func:`cron_window`); a window's maximum, and schedules in the HPA and Knative forms,
have no native form and are named in notes.

Every other family (Ray Serve, GPU memory, multi-signal, predictive, warm pool, ...) has no native
equivalent; its ScaledObject points an ``external`` trigger at ``gpuscale keda-scaler``, which runs
the policy itself.

Custom metric names (what prometheus-adapter exposes and the HPA asks for) carry the signal:
``gpuscale_gpu_util_180s`` is the per-pod mean of gpu_util over 180 s (Pods metrics);
``gpuscale_queue_length_total_60s`` the total over pods (Object/External metrics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from gpuscale._core.errors import ConfigError
from gpuscale.config.safety import DAYS, SafetyConfig, ScheduleWindow
from gpuscale.integrations import promql
from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.policies.hpa import HpaBehavior, HpaConfig, HpaMetric, HpaScalingRules
from gpuscale.policies.keda import KedaConfig, KedaTrigger
from gpuscale.policies.knative import KnativeConfig

Format = Literal["native", "hpa", "keda", "knative", "adapter", "headroom", "all"]
FORMATS: tuple[str, ...] = ("native", "hpa", "keda", "knative", "adapter", "headroom", "all")
ALTERNATIVES = (
    "ALTERNATIVES, for review: the HPA, the KEDA ScaledObject and the Knative settings below each scale "
    "the same workload; apply ONE of them (with the HPA, its prometheus-adapter rules), never two: they "
    "would fight over the replica count. --format native gives the policy's own form alone."
)
PLACEHOLDER_PRIORITY = -10
"""The placeholders' priority: below every serving pod's (default 0), so the scheduler preempts them."""
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"

MANAGED_BY = {"app.kubernetes.io/managed-by": "gpuscale"}
PROMETHEUS_ADDRESS = "http://prometheus-operated.monitoring.svc:9090"
"""The Prometheus a rendered KEDA trigger queries (prometheus-operator's default Service); edit to suit."""
SCALER_PORT = 9090
KNATIVE_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
USE_CONTROLLER = "for the exact policy run `gpuscale keda-scaler` (render it with --format keda) or the gpuscale controller"

_WORKLOAD_API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Rollout": "argoproj.io/v1alpha1",
}


@dataclass(frozen=True)
class Target:
    """The workload to scale: ``KIND/NAME`` in a namespace."""

    kind: str
    name: str
    namespace: str = "default"

    @staticmethod
    def parse(text: str, namespace: str = "default") -> Target:
        kind, sep, name = text.partition("/")
        if not sep or not kind or not name or "/" in name:
            raise ConfigError("--target", None, text, "expected KIND/NAME, e.g. Deployment/resnet50")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
            raise ConfigError("--target", None, text, "NAME must be a lowercase DNS-1123 name")
        return Target(kind, name, namespace)

    @property
    def api_version(self) -> str:
        return _WORKLOAD_API_VERSIONS.get(self.kind, "apps/v1")

    def ref(self) -> dict[str, str]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}

    def metadata(self, name: str | None = None) -> dict[str, Any]:
        return {"name": name or self.name, "namespace": self.namespace, "labels": dict(MANAGED_BY)}


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and the notes on where it differs from the policy."""

    body: dict[str, Any]
    notes: tuple[str, ...] = ()
    header: str = ""

    @property
    def exact(self) -> bool:
        return not self.notes


@dataclass
class _Notes:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)

    def done(self) -> tuple[str, ...]:
        return tuple(self.items)


# --------------------------------------------------------------------------------------------------
# Numbers and names
# --------------------------------------------------------------------------------------------------


def quantity(value: float) -> str:
    """A Kubernetes quantity for ``value``: ``"40"``, ``"0.5"`` -> ``"500m"``."""
    if value == int(value):
        return str(int(value))
    milli = value * 1000
    if abs(milli - round(milli)) < 1e-9:
        return f"{round(milli)}m"
    return repr(float(value))


def keda_number(value: float) -> str:
    """A KEDA trigger threshold: a plain decimal (``"5"``, ``"0.5"``); KEDA parses it as a float,
    so a Kubernetes quantity such as ``"500m"`` would be rejected."""
    if value == int(value):
        return str(int(value))
    return repr(float(value))


def _window_token(window_s: float) -> str:
    return f"{window_s:g}".replace(".", "p") + "s"


def metric_name(spec: SignalSpec, per_pod: bool) -> str:
    """The custom/external metric name for a signal (see the module docstring)."""
    if per_pod:
        return f"gpuscale_{spec.metric.value}_{_window_token(spec.window_s)}"
    return f"gpuscale_{spec.metric.value}_{spec.aggregation.value}_{_window_token(spec.window_s)}"


_METRIC_ALT = "|".join(sorted((re.escape(m.value) for m in Metric), key=len, reverse=True))
_AGG_ALT = "|".join(re.escape(a.value) for a in Aggregation)
_NAME_RE = re.compile(rf"^gpuscale_(?P<metric>{_METRIC_ALT})(?:_(?P<agg>{_AGG_ALT}))?_(?P<w>[0-9p]+)s$")


def parse_metric_name(name: str) -> tuple[Metric, Aggregation | None, float] | None:
    """Undo :func:`metric_name`; None for a name gpuscale did not write."""
    found = _NAME_RE.match(name)
    if found is None:
        return None
    agg = Aggregation(found.group("agg")) if found.group("agg") else None
    return Metric(found.group("metric")), agg, float(found.group("w").replace("p", "."))


def _int_seconds(value: float, what: str, notes: _Notes) -> int:
    if value != int(value):
        notes.add(f"{what} = {value:g} s is rounded to {round(value)} s (the field takes whole seconds)")
    return round(value)


# --------------------------------------------------------------------------------------------------
# HPA pieces
# --------------------------------------------------------------------------------------------------


def _rules(rules: HpaScalingRules) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rules.stabilization_window_s is not None:
        out["stabilizationWindowSeconds"] = rules.stabilization_window_s
    out["selectPolicy"] = rules.select_policy
    if rules.policies is not None:
        out["policies"] = [
            {"type": p.type, "value": p.value, "periodSeconds": p.period_s} for p in rules.policies
        ]
    if rules.tolerance is not None:
        out["tolerance"] = quantity(rules.tolerance)
    return out


def behavior(b: HpaBehavior, notes: _Notes) -> dict[str, Any]:
    """``spec.behavior`` (unset fields left out: the API server defaults them as gpuscale does)."""
    if b.scale_up.tolerance is not None or b.scale_down.tolerance is not None:
        notes.add(
            "behavior.*.tolerance needs Kubernetes >= 1.33 with the HPAConfigurableTolerance feature "
            "gate; older API servers drop it and use the cluster-wide tolerance"
        )
    return {"scaleUp": _rules(b.scale_up), "scaleDown": _rules(b.scale_down)}


def _target(m: HpaMetric) -> dict[str, Any]:
    t = m.target
    if t.type == "Utilization":
        assert t.average_utilization_percent is not None
        return {"type": "Utilization", "averageUtilization": round(t.average_utilization_percent)}
    if t.type == "AverageValue":
        return {"type": "AverageValue", "averageValue": quantity(t.amount)}
    return {"type": "Value", "value": quantity(t.amount)}


def hpa_metric(m: HpaMetric, target: Target, notes: _Notes, i: int) -> dict[str, Any]:
    key = f"metrics[{i}]"
    if m.type == "Resource":
        t = m.target
        if t.type == "Utilization" and t.average_utilization_percent != round(
            t.average_utilization_percent or 0
        ):
            notes.add(f"{key}: averageUtilization is a whole percent; {t.amount:g} is rounded")
        if t.type == "AverageValue":
            notes.add(
                f"{key}: gpuscale's cpu AverageValue is percent of the request; the native form is "
                "an absolute CPU quantity per pod: set it from your pods' CPU request"
            )
        if m.window_s != 60:
            notes.add(
                f"{key}: the resource metrics pipeline (metrics-server) sets the CPU window; "
                f"the policy's {m.window_s:g} s is not expressible"
            )
        return {"type": "Resource", "resource": {"name": "cpu", "target": _target(m)}}
    if (
        m.gpuscale_metric in (Metric.LATENCY_P50_MS, Metric.LATENCY_P95_MS, Metric.LATENCY_P99_MS)
        and m.type == "Pods"
    ):
        notes.add(f"{key}: a latency quantile is service-level; per-pod values come from the whole service")
    name = metric_name(m.spec, per_pod=m.type == "Pods")
    if m.type == "Pods":
        return {"type": "Pods", "pods": {"metric": {"name": name}, "target": _target(m)}}
    if m.type == "Object":
        return {
            "type": "Object",
            "object": {
                "describedObject": {"apiVersion": "v1", "kind": "Service", "name": target.name},
                "metric": {"name": name},
                "target": _target(m),
            },
        }
    return {"type": "External", "external": {"metric": {"name": name}, "target": _target(m)}}


def _hpa_controller_notes(
    notes: _Notes, tolerance: float, sync_s: float, max_age_s: float | None, legacy_window_s: float | None
) -> None:
    if tolerance != 0.1:
        notes.add(
            f"tolerance {tolerance:g} is the cluster-wide --horizontal-pod-autoscaler-tolerance "
            "(default 0.1), or per direction behavior.*.tolerance on Kubernetes >= 1.33"
        )
    if sync_s != 15:
        notes.add(f"sync period {sync_s:g} s is the cluster-wide --horizontal-pod-autoscaler-sync-period")
    if legacy_window_s is not None and legacy_window_s != 300:
        notes.add(
            f"downscale stabilization {legacy_window_s:g} s is the cluster-wide "
            "--horizontal-pod-autoscaler-downscale-stabilization (or give the policy a behavior block)"
        )
    if max_age_s is not None:
        notes.add("max_signal_age_s is gpuscale's staleness rule; the HPA has none")


def render_hpa(config: Any, target: Target) -> Manifest:
    """``autoscaling/v2`` HorizontalPodAutoscaler."""
    notes = _Notes()
    spec: dict[str, Any] = {"scaleTargetRef": target.ref()}
    if isinstance(config, HpaConfig):
        spec["minReplicas"] = config.min_replicas
        spec["maxReplicas"] = config.max_replicas
        spec["metrics"] = [hpa_metric(m, target, notes, i) for i, m in enumerate(config.metrics)]
        if config.behavior is not None:
            spec["behavior"] = behavior(config.behavior, notes)
        if config.min_replicas == 0:
            notes.add("minReplicas 0 needs the HPAScaleToZero feature gate (alpha before 1.37)")
        if config.cpu_initialization_period_s != 300:
            notes.add(
                "cpu initialization period is the cluster-wide "
                "--horizontal-pod-autoscaler-cpu-initialization-period"
            )
        _hpa_controller_notes(
            notes,
            config.tolerance,
            config.sync_period_s,
            config.max_signal_age_s,
            config.downscale_stabilization_s if config.behavior is None else None,
        )
    elif isinstance(config, KedaConfig):
        spec["minReplicas"] = max(config.min_replica_count, 1)
        spec["maxReplicas"] = config.max_replica_count
        spec["metrics"] = [
            {
                "type": "External",
                "external": {
                    "metric": {"name": metric_name(t.spec, per_pod=False)},
                    "target": {"type": "AverageValue", "averageValue": quantity(t.threshold)}
                    if t.metric_type == "AverageValue"
                    else {"type": "Value", "value": quantity(t.threshold)},
                },
            }
            for t in config.triggers
        ]
        b = config.advanced.horizontal_pod_autoscaler_config.behavior
        if b is not None:
            spec["behavior"] = behavior(b, notes)
        notes.add(
            "this is the HPA KEDA would generate; activation (0 <-> 1), cooldownPeriod, idle replicas "
            "and fallback are the KEDA operator's and have no HPA form: use --format keda"
        )
    elif isinstance(config, KnativeConfig):
        spec["minReplicas"] = max(config.min_scale, 1)
        spec["maxReplicas"] = config.max_scale or 100
        target_value = _kpa_target(config)
        metric = Metric.CONCURRENCY if config.metric == "concurrency" else Metric.REQUEST_RATE
        per_pod = SignalSpec(metric, config.stable_window_s)
        spec["metrics"] = [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": metric_name(per_pod, per_pod=True)},
                    "target": {"type": "AverageValue", "averageValue": quantity(target_value)},
                },
            }
        ]
        notes.add(
            "an approximation of the KPA: no panic mode, no 2-s tick, no scale to zero, and the HPA's "
            "tolerance and 5-min downscale stabilization apply; use --format knative"
        )
        if not config.max_scale:
            notes.add("max_scale 0 (unlimited) has no HPA form; maxReplicas 100 is a placeholder")
    else:
        return _comment_only(config, "HorizontalPodAutoscaler")
    _safety_notes(config, notes, "an HPA's minReplicas and maxReplicas are fixed; use --format keda")
    body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": target.metadata(),
        "spec": spec,
    }
    return Manifest(body, notes.done())


def _kpa_target(config: KnativeConfig) -> float:
    # ResolveMetricTarget: the per-pod value the KPA aims at, e.g. 4 x 70 % = 2.8 in-flight requests.
    total = (
        config.target if config.target is not None else (100.0 if config.metric == "concurrency" else 200.0)
    )
    if config.metric == "concurrency" and config.container_concurrency:
        total = min(total, config.container_concurrency)
    return max(0.01, total * config.target_utilization_percentage / 100.0)


def _comment_only(config: Any, what: str) -> Manifest:
    kind = getattr(config, "kind", type(config).__name__)
    return Manifest(
        {},
        (f"a kind: {kind} policy has no {what} form; {USE_CONTROLLER}",),
    )


# --------------------------------------------------------------------------------------------------
# KEDA
# --------------------------------------------------------------------------------------------------


def prometheus_trigger(
    spec: SignalSpec,
    threshold: float,
    activation: float,
    metric_type: str,
    target: Target,
    name: str | None = None,
) -> dict[str, Any]:
    trigger: dict[str, Any] = {"type": "prometheus"}
    if name:
        trigger["name"] = name
    trigger["metricType"] = metric_type
    trigger["metadata"] = {
        "serverAddress": PROMETHEUS_ADDRESS,
        "query": promql.query(spec, target.namespace, target.name),
        "threshold": keda_number(threshold),
        "activationThreshold": keda_number(activation),
    }
    return trigger


def _keda_from_keda(config: KedaConfig, target: Target, notes: _Notes) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": target.ref(),
        "pollingInterval": config.polling_interval_s,
        "cooldownPeriod": config.cooldown_period_s,
        "minReplicaCount": config.min_replica_count,
        "maxReplicaCount": config.max_replica_count,
    }
    if config.initial_cooldown_period_s:
        spec["initialCooldownPeriod"] = config.initial_cooldown_period_s
        notes.add("initialCooldownPeriod needs KEDA >= 2.14")
    if config.idle_replica_count is not None:
        spec["idleReplicaCount"] = config.idle_replica_count
    if config.fallback is not None:
        fb: dict[str, Any] = {
            "failureThreshold": config.fallback.failure_threshold,
            "replicas": config.fallback.replicas,
        }
        if config.fallback.behavior != "static":
            fb["behavior"] = config.fallback.behavior
            notes.add("fallback.behavior needs KEDA >= 2.15")
        spec["fallback"] = fb
    b = config.advanced.horizontal_pod_autoscaler_config.behavior
    if b is not None:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior(b, notes)}}
    spec["triggers"] = [_keda_trigger(t, target) for t in config.triggers]
    _hpa_controller_notes(notes, config.tolerance, config.hpa_sync_period_s, config.max_signal_age_s, None)
    return spec


def _keda_trigger(t: KedaTrigger, target: Target) -> dict[str, Any]:
    return prometheus_trigger(t.spec, t.threshold, t.activation_threshold, t.metric_type, target, t.name)


def _keda_from_hpa(config: HpaConfig, target: Target, notes: _Notes) -> dict[str, Any]:
    triggers: list[dict[str, Any]] = []
    for i, m in enumerate(config.metrics):
        if m.type == "Resource":
            triggers.append(
                {
                    "type": "cpu",
                    "metricType": m.target.type,
                    "metadata": {"value": quantity(m.target.amount)},
                }
            )
            continue
        if m.type == "Pods":
            # ceil(sum / target) equals the HPA's ceil(mean x ready / target) while every pod reports.
            spec = SignalSpec(m.gpuscale_metric, m.window_s, Aggregation.TOTAL)
            notes.add(
                f"metrics[{i}]: the Pods metric becomes a total over pods with an AverageValue target; "
                "pods without samples count as 0 instead of the HPA's missing-pod rules"
            )
        else:
            spec = m.spec
        triggers.append(prometheus_trigger(spec, m.target.amount, 0.0, m.target.type, target))
    out: dict[str, Any] = {
        "scaleTargetRef": target.ref(),
        "minReplicaCount": config.min_replicas,
        "maxReplicaCount": config.max_replicas,
    }
    if config.behavior is not None:
        out["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior(config.behavior, notes)}}
    out["triggers"] = triggers
    _hpa_controller_notes(
        notes,
        config.tolerance,
        config.sync_period_s,
        config.max_signal_age_s,
        config.downscale_stabilization_s if config.behavior is None else None,
    )
    return out


def _keda_external(config: Any, target: Target, notes: _Notes) -> dict[str, Any]:
    name = getattr(config, "name", None) or getattr(config, "kind", "policy")
    low = int(
        getattr(config, "min_replicas", getattr(config, "min_scale", getattr(config, "replicas", 0))) or 0
    )
    high = int(getattr(config, "max_replicas", getattr(config, "max_scale", None)) or max(low, 100))
    notes.add(
        "the policy runs in `gpuscale keda-scaler` (an external scaler): deploy it as the Service "
        f"gpuscale-keda-scaler on port {SCALER_PORT}; its metric is the desired count with target 1"
    )
    notes.add(
        "the generated HPA's 10 % tolerance can hold a count within 10 % of the desired one; on "
        "Kubernetes >= 1.33 (HPAConfigurableTolerance) add tolerance: '0' to both behavior directions"
    )
    return {
        "scaleTargetRef": target.ref(),
        # The policy already waited its own scale-to-zero grace before IsActive turns false.
        "pollingInterval": 15,
        "cooldownPeriod": 0,
        "minReplicaCount": int(low),
        "maxReplicaCount": int(high),
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                # The policy applied its own stabilization and rate limits: the HPA follows at once.
                "behavior": {
                    "scaleUp": {
                        "stabilizationWindowSeconds": 0,
                        "selectPolicy": "Max",
                        "policies": [{"type": "Percent", "value": 1000, "periodSeconds": 15}],
                    },
                    "scaleDown": {
                        "stabilizationWindowSeconds": 0,
                        "selectPolicy": "Max",
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                    },
                }
            }
        },
        "triggers": [
            {
                "type": "external",
                "metadata": {
                    "scalerAddress": f"gpuscale-keda-scaler.{target.namespace}.svc:{SCALER_PORT}",
                    "policy": str(name),
                },
            }
        ],
    }


def render_keda(config: Any, target: Target) -> Manifest:
    """``keda.sh/v1alpha1`` ScaledObject."""
    notes = _Notes()
    header = ""
    if isinstance(config, (KedaConfig, HpaConfig)):
        if isinstance(config, KedaConfig):
            spec = _keda_from_keda(config, target, notes)
        else:
            spec = _keda_from_hpa(config, target, notes)
        _keda_schedules(_safety(config), spec, notes)
        _safety_notes(config, notes, None)
    else:
        spec = _keda_external(config, target, notes)
        if _safety(config) is not None:
            # The external scaler builds the policy from its file, safety: block and schedules
            # included, and reads the calendar from its own clock: exact, nothing to render here.
            header = "the policy's safety: block (schedule windows included) runs in gpuscale keda-scaler"
    body = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": target.metadata(),
        "spec": spec,
    }
    return Manifest(body, notes.done(), header)


# --------------------------------------------------------------------------------------------------
# Schedule windows (safety.schedules) and the rest of the safety: block
# --------------------------------------------------------------------------------------------------

KEDA_COOLDOWN_S = 300
"""KEDA's default ``cooldownPeriod`` (scale_executor.go), in force when the ScaledObject sets none."""


def _safety(config: Any) -> SafetyConfig | None:
    safety = getattr(config, "safety", None)
    return safety if isinstance(safety, SafetyConfig) else None


def _cron_days(days: Sequence[int]) -> str:
    """Cron day-of-week numbers (0 = Sunday) as one field: [1, 2, 3, 4, 5] -> ``1-5``, [0, 6] -> ``0,6``."""
    ordered = sorted(set(days))
    if len(ordered) == 7:
        return "*"
    runs: list[list[int]] = []
    for day in ordered:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def cron_window(window: ScheduleWindow) -> tuple[str, str]:
    """KEDA cron ``start`` and ``end`` (minute hour day-of-month month day-of-week) for ``window``.

    KEDA's cron scaler is active from a start until the next end after it (in its code: active while
    the next end comes no later than the next start), so each end is written on the day the window
    closes, and starts and ends alternate as they must:

    * ``mon-fri 08:00-20:00`` -> ``0 8 * * 1-5`` / ``0 20 * * 1-5``;
    * overnight ``fri 22:00-06:00`` closes on Saturday -> ``0 22 * * 5`` / ``0 6 * * 6`` (cron
      counts days from Sunday = 0, gpuscale from Monday: ``fri`` is DAYS[4], cron 5);
    * a whole day (``start == end``) runs from midnight to midnight -> ``mon`` is ``0 0 * * 1`` /
      ``0 0 * * 2``; on consecutive days the end and the next start fall on one instant and KEDA
      stays active across it (the next end is not after the next start).

    A whole day on all seven days has equal start and end, which KEDA rejects; it is always open, so
    :func:`render_keda` raises ``minReplicaCount`` instead.
    """
    days = [(DAYS.index(day) + 1) % 7 for day in window.days]
    start_h, start_m = (int(x) for x in window.start.split(":"))
    end_h, end_m = (int(x) for x in window.end.split(":"))
    if (start_h, start_m) == (end_h, end_m):
        start_h = start_m = end_h = end_m = 0
        end_days = [(d + 1) % 7 for d in days]
    elif (end_h, end_m) < (start_h, start_m):
        end_days = [(d + 1) % 7 for d in days]
    else:
        end_days = days
    return (
        f"{start_m} {start_h} * * {_cron_days(days)}",
        f"{end_m} {end_h} * * {_cron_days(end_days)}",
    )


def _always_open(window: ScheduleWindow) -> bool:
    return window.start == window.end and len(window.days) == len(DAYS)


def _keda_schedules(safety: SafetyConfig | None, spec: dict[str, Any], notes: _Notes) -> None:
    """A ``cron`` trigger per window that raises the minimum (desiredReplicas = its min_replicas).

    The trigger is one more metric of KEDA's HPA (AverageValue 1: the HPA asks for desiredReplicas
    while it is active) and activates the ScaledObject from zero, so while a window is open the count
    is at least its minimum -- the tail's bounds stage. A window's maximum has no KEDA form: every
    trigger can only raise the count (the HPA takes the highest of its metrics).
    """
    if safety is None or not safety.schedules:
        return
    raised = False
    for i, window in enumerate(safety.schedules):
        key = f"safety.schedules[{i}]"
        if window.max_replicas is not None:
            notes.add(
                f"{key}: max_replicas {window.max_replicas} while open has no KEDA form (a trigger can "
                "only raise the count); gpuscale's tail applies it"
            )
        if not window.min_replicas:
            continue  # a minimum of 0 (or none) never raises anything
        if _always_open(window):
            spec["minReplicaCount"] = max(int(spec["minReplicaCount"]), window.min_replicas)
            continue
        if window.min_replicas > int(spec["maxReplicaCount"]):
            notes.add(
                f"{key}: min_replicas {window.min_replicas} is above maxReplicaCount "
                f"{spec['maxReplicaCount']}; KEDA's HPA caps it there"
            )
        start, end = cron_window(window)
        spec["triggers"].append(
            {
                "type": "cron",
                "name": f"schedule-{i}",
                "metadata": {
                    "timezone": window.timezone,
                    "start": start,
                    "end": end,
                    "desiredReplicas": str(window.min_replicas),
                },
            }
        )
        raised = True
    if raised:
        cooldown = spec.get("cooldownPeriod", KEDA_COOLDOWN_S)
        notes.add(
            "safety.schedules: a cron trigger opens within one pollingInterval and is a metric of the "
            "HPA, so after a window closes its minimum goes only after the HPA's downscale "
            f"stabilization (to zero: after cooldownPeriod {cooldown} s); gpuscale's tail drops it at "
            "the close"
        )


def _safety_notes(config: Any, notes: _Notes, schedules_why: str | None) -> None:
    """Notes for what of the policy's ``safety:`` block the manifest leaves out.

    ``schedules_why`` (None where the schedules were rendered): why this form has none. ``--format
    keda`` has them either way: as cron triggers for a KEDA or HPA policy, or in the external scaler,
    which runs the whole wrapped policy.
    """
    safety = _safety(config)
    if safety is None:
        return
    if schedules_why is not None and safety.schedules:
        notes.add(f"safety.schedules: schedule windows have no native form here ({schedules_why})")
    limits = [f"min_replicas {safety.min_replicas}", f"max_replicas {safety.max_replicas}"]
    if safety.max_step is not None:
        limits.append(f"max_step {safety.max_step}")
    if safety.gpu_budget is not None:
        limits.append(f"gpu_budget {safety.gpu_budget}")
    notes.add(
        f"safety: {', '.join(limits)} and fail-static are gpuscale's tail after the policy; this "
        "manifest carries the policy's own bounds only"
    )


# --------------------------------------------------------------------------------------------------
# Knative / KServe
# --------------------------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:g}s"


def knative_annotations(config: KnativeConfig) -> dict[str, str]:
    """The KPA's per-revision annotations for ``config``."""
    a: dict[str, str] = {"class": KPA_CLASS, "metric": config.metric}
    if config.target is not None:
        a["target"] = f"{config.target:g}"
    a["target-utilization-percentage"] = f"{config.target_utilization_percentage:g}"
    a["window"] = _seconds(config.stable_window_s)
    a["panic-window-percentage"] = f"{config.panic_window_percentage:g}"
    a["panic-threshold-percentage"] = f"{config.panic_threshold_percentage:g}"
    a["min-scale"] = str(config.min_scale)
    a["max-scale"] = str(config.max_scale)
    a["initial-scale"] = str(config.initial_scale)
    a["activation-scale"] = str(config.activation_scale)
    a["scale-down-delay"] = _seconds(config.scale_down_delay_s)
    a["scale-to-zero-pod-retention-period"] = _seconds(config.scale_to_zero_pod_retention_period_s)
    return {KNATIVE_PREFIX + k: v for k, v in a.items()}


_CLUSTER_WIDE: tuple[tuple[str, str, Any], ...] = (
    ("max_scale_up_rate", "config-autoscaler max-scale-up-rate", 1000.0),
    ("max_scale_down_rate", "config-autoscaler max-scale-down-rate", 2.0),
    ("enable_scale_to_zero", "config-autoscaler enable-scale-to-zero", True),
    ("scale_to_zero_grace_period_s", "config-autoscaler scale-to-zero-grace-period", 30.0),
    ("allow_zero_initial_scale", "config-autoscaler allow-zero-initial-scale", False),
    ("progress_deadline_s", "config-deployment progress-deadline", 600.0),
)


def render_knative(config: Any, target: Target) -> Manifest:
    """A Knative Service (or, for ``--target InferenceService/NAME``, a KServe InferenceService)
    carrying the KPA settings; merge it into your own (containers are yours)."""
    if not isinstance(config, KnativeConfig):
        return _comment_only(config, "Knative Pod Autoscaler")
    notes = _Notes()
    for attr, where, default in _CLUSTER_WIDE:
        value = getattr(config, attr)
        if value != default:
            notes.add(f"{attr} = {value} is cluster-wide: set {where} (no per-revision annotation)")
    if config.max_signal_age_s is not None:
        notes.add("max_signal_age_s is gpuscale's staleness rule; the KPA has none")
    if not config.reachable or config.restarted:
        notes.add("reachable / restarted describe a simulated situation, not a setting; left out")
    _safety_notes(config, notes, "the KPA's min-scale and max-scale are fixed; use --format keda")
    annotations = knative_annotations(config)
    header = "merge into your own manifest: the autoscaling settings only, containers omitted"
    if target.kind == "InferenceService":
        predictor: dict[str, Any] = {
            "minReplicas": config.min_scale,
            "maxReplicas": config.max_scale,
        }
        if config.container_concurrency:
            predictor["containerConcurrency"] = config.container_concurrency
        for key in ("min-scale", "max-scale"):
            annotations.pop(KNATIVE_PREFIX + key)
        body: dict[str, Any] = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {**target.metadata(), "annotations": annotations},
            "spec": {"predictor": predictor},
        }
    else:
        template_spec: dict[str, Any] = {}
        if config.container_concurrency:
            template_spec["containerConcurrency"] = config.container_concurrency
        body = {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": target.metadata(),
            "spec": {"template": {"metadata": {"annotations": annotations}, "spec": template_spec}},
        }
    return Manifest(body, notes.done(), header)


# --------------------------------------------------------------------------------------------------
# prometheus-adapter
# --------------------------------------------------------------------------------------------------


def _adapter_rule(m: HpaMetric) -> tuple[str, dict[str, Any]]:
    """(section, rule): a prometheus-adapter rule exposing ``m``'s metric name."""
    spec = m.spec
    labels = "<<.LabelMatchers>>"
    src = promql.source_of(spec.metric)
    latency = spec.metric in (Metric.LATENCY_P50_MS, Metric.LATENCY_P95_MS, Metric.LATENCY_P99_MS)
    if spec.metric in promql.TOKEN_QUANTILES:
        latency = True
        latency_query = promql.token_quantile_query(spec.metric, spec.window_s, labels, "<<.GroupBy>>")
    elif latency:
        quantile = {
            Metric.LATENCY_P50_MS: "0.5",
            Metric.LATENCY_P95_MS: "0.95",
            Metric.LATENCY_P99_MS: "0.99",
        }
        latency_query = (
            f"histogram_quantile({quantile[spec.metric]}, sum by (le, <<.GroupBy>>) "
            f"(rate(<<.Series>>{{{labels}}}[{promql.window(spec.window_s)}]))) * 1000"
        )
    if m.type == "Pods":
        name = metric_name(spec, per_pod=True)
        inner = promql.per_pod_expr(spec.metric, spec.window_s, labels)
        query = latency_query if latency else f"avg by (<<.GroupBy>>) ({inner})"
        resources = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
        section = "rules"
        series = f'{src.series}{{namespace!="",pod!=""}}'
    else:
        name = metric_name(spec, per_pod=False)
        if latency:
            query = latency_query
        else:
            fn = {Aggregation.POD_MEAN: "avg", Aggregation.TOTAL: "sum", Aggregation.MAX: "max"}[
                spec.aggregation
            ]
            query = f"{fn} by (<<.GroupBy>>) ({promql.per_pod_expr(spec.metric, spec.window_s, labels)})"
        if m.type == "Object":
            resources = {
                "overrides": {"namespace": {"resource": "namespace"}, "service": {"resource": "service"}}
            }
            section = "rules"
            series = f'{src.series}{{namespace!="",service!=""}}'
        else:
            resources = {"overrides": {"namespace": {"resource": "namespace"}}}
            section = "externalRules"
            series = f'{src.series}{{namespace!=""}}'
    rule = {
        "seriesQuery": series,
        "resources": resources,
        "name": {"matches": f"^{re.escape(src.series)}$", "as": name},
        "metricsQuery": query,
    }
    return section, rule


def render_adapter(config: Any, target: Target) -> Manifest:
    """A prometheus-adapter ``config.yaml`` (as its ConfigMap) exposing the HPA's custom metrics."""
    rendered = render_hpa(config, target)
    if not rendered.body:
        return _comment_only(config, "prometheus-adapter")
    metrics: Sequence[HpaMetric]
    if isinstance(config, HpaConfig):
        metrics = config.metrics
    elif isinstance(config, KedaConfig):
        metrics = [
            HpaMetric.model_validate(
                {
                    "type": "External",
                    "metric": t.metric,
                    "aggregation": t.aggregation,
                    "window_s": t.window_s,
                    "target": {"type": "AverageValue", "average_value": t.threshold},
                }
            )
            for t in config.triggers
        ]
    else:
        assert isinstance(config, KnativeConfig)
        metric = Metric.CONCURRENCY if config.metric == "concurrency" else Metric.REQUEST_RATE
        metrics = [
            HpaMetric.model_validate(
                {
                    "type": "Pods",
                    "metric": metric,
                    "window_s": config.stable_window_s,
                    "target": {"type": "AverageValue", "average_value": _kpa_target(config)},
                }
            )
        ]
    sections: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for m in metrics:
        if m.type == "Resource":
            continue  # served by metrics-server, not the adapter
        section, rule = _adapter_rule(m)
        if rule["name"]["as"] not in seen:
            seen.add(rule["name"]["as"])
            sections.setdefault(section, []).append(rule)
    text = _dump(sections) if sections else "rules: []\n"
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prometheus-adapter", "namespace": "monitoring", "labels": dict(MANAGED_BY)},
        "data": {"config.yaml": text},
    }
    notes = ("merge these rules into your prometheus-adapter's config.yaml",)
    return Manifest(body, (), notes[0])


# --------------------------------------------------------------------------------------------------
# Warm-node buffer (headroom_replicas): the cluster over-provisioner pattern
# --------------------------------------------------------------------------------------------------


def headroom_name(target_name: str) -> str:
    """The placeholder Deployment's name for a target: ``<target>-gpu-headroom`` (the controller's
    ``headroom.deployment`` defaults to it)."""
    return f"{target_name}-gpu-headroom"


def render_headroom(config: BaseModel | Any, target: Target) -> list[Manifest]:
    """A negative-priority PriorityClass and a Deployment of ``headroom_replicas`` pause pods.

    Each pause pod requests one GPU, so the node autoscaler keeps that many spare GPUs up; a serving
    pod that finds no free GPU preempts one at once (its priority is higher) and the evicted
    placeholder goes Pending, which makes the node autoscaler launch the next spare node -- what the
    simulator models for ``Decision.placeholder_pods``. Empty when the policy keeps no headroom.
    ``gpuscale run`` then scales this Deployment to each decision's ``placeholder_pods`` through its
    scale subresource (the controller config's ``headroom.deployment``, defaulting to this name).
    """
    replicas = int(getattr(config, "headroom_replicas", 0) or 0)
    if replicas <= 0:
        return []
    name = headroom_name(target.name)
    priority = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name, "labels": dict(MANAGED_BY)},
        "value": PLACEHOLDER_PRIORITY,
        "globalDefault": False,
        "preemptionPolicy": "Never",
        "description": f"Placeholder pods holding spare GPUs for {target.namespace}/{target.name}; "
        "any pod of default priority preempts them.",
    }
    labels = {"app.kubernetes.io/name": name, **MANAGED_BY}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**target.metadata(name), "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": name,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "pause",
                            "image": PAUSE_IMAGE,
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi", "nvidia.com/gpu": "1"},
                                "limits": {"nvidia.com/gpu": "1"},
                            },
                        }
                    ],
                },
            },
        },
    }
    header = (
        f"warm-node buffer of the policy: {replicas} placeholder pod(s); give each the GPU request "
        "and node selector / tolerations of one serving pod"
    )
    return [Manifest(priority, (), header), Manifest(deployment, (), "")]


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------

_RENDERERS = {"hpa": render_hpa, "keda": render_keda, "knative": render_knative, "adapter": render_adapter}


def native_formats(config: BaseModel | Any) -> list[str]:
    """The one autoscaler a policy is, natively: an HPA (with the prometheus-adapter rules its custom
    metrics need), a KEDA ScaledObject, Knative's KPA settings; any other kind runs behind a KEDA
    ScaledObject on gpuscale's external scaler."""
    if isinstance(config, HpaConfig):
        return ["hpa", "adapter"]
    if isinstance(config, KnativeConfig):
        return ["knative"]
    return ["keda"]


def render(config: BaseModel | Any, target: Target, fmt: str = "native") -> list[Manifest]:
    """The manifests of ``fmt`` for a policy config: ``native`` the policy's own autoscaler (and its
    warm-node buffer); ``all`` every format in order, for review (alternatives: apply one)."""
    if fmt not in FORMATS:
        raise ConfigError("--format", None, fmt, f"allowed: {', '.join(FORMATS)}")
    if fmt == "all":
        names = ["hpa", "keda", "knative", "adapter"]
    elif fmt == "native":
        names = native_formats(config)
    else:
        names = [fmt]
    out = [_RENDERERS[n](config, target) for n in names if n != "headroom"]
    if fmt == "all":
        out.insert(0, Manifest({}, (), ALTERNATIVES))
    if fmt in ("all", "native", "headroom"):
        headroom = render_headroom(config, target)
        if fmt == "headroom" and not headroom:
            raise ConfigError(
                "--format", None, fmt, "the policy keeps no warm-node buffer (set headroom_replicas > 0)"
            )
        out += headroom
    return out


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors, multi-line strings (a ConfigMap's file) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any, width: int = 1000) -> str:
    """``data`` as YAML in the order given, with no anchors and multi-line strings as blocks."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=width)


def _dump(data: Any) -> str:
    return dump_yaml(data)


def _comment(lines: Sequence[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)


def render_yaml(manifests: Sequence[Manifest], policy_label: str) -> str:
    """Multi-document YAML: each object with its notes as comments above it."""
    docs: list[str] = []
    for m in manifests:
        head: list[str] = []
        if m.header:
            head.append(m.header)
        if m.notes:
            head.append(f"NOT EXACT: this manifest differs from the gpuscale policy {policy_label}:")
            head += [f"  - {n}" for n in m.notes]
            if not any(USE_CONTROLLER in n or "keda-scaler" in n for n in m.notes):
                head.append(f"  {USE_CONTROLLER}")
        text = _comment(head)
        if m.body:
            text += _dump(m.body)
        docs.append(text)
    return "---\n" + "---\n".join(docs)


def objects(text: str) -> list[dict[str, Any]]:
    """The objects of a rendered multi-document YAML (comment-only documents left out)."""
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
