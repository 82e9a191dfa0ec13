"""PromQL for gpuscale's signals, as exporters on a GPU inference cluster publish them.

One table says where each :class:`~gpuscale.policies.base.Metric` comes from:

===================  ==========================================================================
metric               series (exporter)
===================  ==========================================================================
gpu_util             ``DCGM_FI_DEV_GPU_UTIL`` (dcgm-exporter), percent, gauge
gpu_memory_util      ``100 * DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)``
gpu_memory_used_gb   ``DCGM_FI_DEV_FB_USED`` (MiB) x 1 048 576 / 1e9
cpu_util             cAdvisor CPU seconds over kube-state-metrics' CPU request, percent
concurrency          Knative queue-proxy ``queue_average_concurrent_requests`` (time-weighted)
queue_length         Triton ``nv_inference_pending_request_count`` / vLLM ``vllm:num_requests_waiting``
request_rate         ``rate()`` of Triton ``nv_inference_request_success`` / vLLM ``vllm:request_success_total``
latency_pXX_ms       vLLM ``vllm:e2e_request_latency_seconds`` histogram quantile x 1000
===================  ==========================================================================

A signal is a window and an aggregation over pods: gauges are averaged with ``avg_over_time``,
counters are ``rate``\\ d, and the pods are combined with ``avg`` (pod_mean), ``sum`` (total) or
``max``. The query selects the workload's pods by ``namespace`` and a ``pod`` name prefix (the
labels Prometheus' Kubernetes service discovery attaches; dcgm-exporter needs its pod mapping
enabled, ``--kubernetes``, to carry them).

:func:`query` writes one query; :func:`parse_query` reads it (or a hand-written one of the same
shape) back into a :class:`~gpuscale.policies.base.SignalSpec` for ``gpuscale import``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gpuscale.policies.base import Aggregation, Metric, SignalSpec

Runtime = Literal["triton", "vllm"]

_AGG_FN = {Aggregation.POD_MEAN: "avg", Aggregation.TOTAL: "sum", Aggregation.MAX: "max"}
_FN_AGG = {v: k for k, v in _AGG_FN.items()}
_QUANTILES = {
    Metric.LATENCY_P50_MS: "0.5",
    Metric.LATENCY_P95_MS: "0.95",
    Metric.LATENCY_P99_MS: "0.99",
}


@dataclass(frozen=True)
class Source:
    """Where a metric's samples come from: the series and whether it is a counter."""

    series: str
    counter: bool = False
    exporter: str = ""


SOURCES: dict[Metric, Source] = {
    Metric.GPU_UTIL: Source("DCGM_FI_DEV_GPU_UTIL", exporter="dcgm-exporter"),
    Metric.GPU_MEMORY_UTIL: Source("DCGM_FI_DEV_FB_USED", exporter="dcgm-exporter"),
    Metric.GPU_MEMORY_USED_GB: Source("DCGM_FI_DEV_FB_USED", exporter="dcgm-exporter"),
    Metric.CPU_UTIL: Source("container_cpu_usage_seconds_total", counter=True, exporter="cAdvisor"),
    Metric.CONCURRENCY: Source("queue_average_concurrent_requests", exporter="Knative queue-proxy"),
}
_RUNTIME_SOURCES: dict[Runtime, dict[Metric, Source]] = {
    "triton": {
        Metric.QUEUE_LENGTH: Source("nv_inference_pending_request_count", exporter="Triton"),
        Metric.REQUEST_RATE: Source("nv_inference_request_success", counter=True, exporter="Triton"),
    },
    "vllm": {
        Metric.QUEUE_LENGTH: Source("vllm:num_requests_waiting", exporter="vLLM"),
        Metric.REQUEST_RATE: Source("vllm:request_success_total", counter=True, exporter="vLLM"),
    },
}
_LATENCY_SERIES = "vllm:e2e_request_latency_seconds_bucket"


def source_of(metric: Metric, runtime: Runtime = "triton") -> Source:
    if metric in _QUANTILES:
        return Source(_LATENCY_SERIES, counter=True, exporter="vLLM")
    return _RUNTIME_SOURCES[runtime].get(metric) or SOURCES[metric]


def selector(namespace: str, pod_prefix: str) -> str:
    return f'namespace="{namespace}",pod=~"{re.escape(pod_prefix)}-.*"'


def window(window_s: float) -> str:
    return f"{window_s:g}s"


def per_pod_expr(metric: Metric, window_s: float, labels: str, runtime: Runtime = "triton") -> str:
    """The metric per pod (one series per pod), averaged or rated over ``window_s``."""
    w = window(window_s)
    if metric == Metric.GPU_MEMORY_UTIL:
        used = f"avg_over_time(DCGM_FI_DEV_FB_USED{{{labels}}}[{w}])"
        free = f"avg_over_time(DCGM_FI_DEV_FB_FREE{{{labels}}}[{w}])"
        return f"100 * {used} / ({used} + {free})"
    if metric == Metric.GPU_MEMORY_USED_GB:
        return f"avg_over_time(DCGM_FI_DEV_FB_USED{{{labels}}}[{w}]) * 1048576 / 1e9"
    if metric == Metric.CPU_UTIL:
        usage = f'sum by (pod) (rate(container_cpu_usage_seconds_total{{{labels},container!=""}}[{w}]))'
        request = f'sum by (pod) (kube_pod_container_resource_requests{{{labels},resource="cpu"}})'
        return f"100 * {usage} / {request}"
    src = source_of(metric, runtime)
    if src.counter:
        return f"rate({src.series}{{{labels}}}[{w}])"
    return f"avg_over_time({src.series}{{{labels}}}[{w}])"


def query(spec: SignalSpec, namespace: str, pod_prefix: str, runtime: Runtime = "triton") -> str:
    """One instant query returning one number: the signal as the policy declares it.

    >>> query(SignalSpec(Metric.QUEUE_LENGTH, 60, Aggregation.TOTAL), "ml", "resnet")
    'sum(avg_over_time(nv_inference_pending_request_count{namespace="ml",pod=~"resnet-.*"}[60s]))'
    """
    labels = selector(namespace, pod_prefix)
    if spec.metric in _QUANTILES:
        rate = f"sum by (le) (rate({_LATENCY_SERIES}{{{labels}}}[{window(spec.window_s)}]))"
        return f"histogram_quantile({_QUANTILES[spec.metric]}, {rate}) * 1000"
    return f"{_AGG_FN[spec.aggregation]}({per_pod_expr(spec.metric, spec.window_s, labels, runtime)})"


_WINDOW = re.compile(r"\[(\d+(?:\.\d+)?)(ms|s|m|h)\]")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_window_s(text: str) -> float | None:
    """The first range selector's length in seconds (``[2m]`` -> 120), or None."""
    found = _WINDOW.search(text)
    return None if found is None else float(found.group(1)) * _UNIT_S[found.group(2)]


def metric_for_series(text: str) -> Metric | None:
    """The gpuscale metric a query or metric name reads, judged by the series it names."""
    if "histogram_quantile(" in text and _LATENCY_SERIES.removesuffix("_bucket") in text:
        q = re.search(r"histogram_quantile\(\s*([0-9.]+)", text)
        for metric, quantile in _QUANTILES.items():
            if q is not None and float(q.group(1)) == float(quantile):
                return metric
        return None
    if "DCGM_FI_DEV_FB_FREE" in text:
        return Metric.GPU_MEMORY_UTIL
    if "DCGM_FI_DEV_FB_USED" in text:
        return Metric.GPU_MEMORY_USED_GB
    if "container_cpu_usage_seconds_total" in text:
        return Metric.CPU_UTIL
    table: list[tuple[str, Metric]] = [(s.series, m) for m, s in SOURCES.items() if m not in _CPU_MEM]
    for sources in _RUNTIME_SOURCES.values():
        table += [(s.series, m) for m, s in sources.items()]
    for series, metric in table:
        if re.search(rf"(?<![A-Za-z0-9_:]){re.escape(series)}(?![A-Za-z0-9_:])", text):
            return metric
    return None


_CPU_MEM = frozenset({Metric.GPU_MEMORY_UTIL, Metric.GPU_MEMORY_USED_GB, Metric.CPU_UTIL})


def parse_query(text: str) -> SignalSpec | None:
    """Read a query of :func:`query`'s shape back into a signal; None when it is not one.

    The aggregation is the outermost ``avg``/``sum``/``max`` (default total: KEDA needs one number
    and a bare series is usually one); the window is the first range selector (default 60 s).
    """
    metric = metric_for_series(text)
    if metric is None:
        return None
    outer = re.match(r"\s*(avg|sum|max)\s*\(", text)
    aggregation = _FN_AGG[outer.group(1)] if outer else Aggregation.TOTAL
    return SignalSpec(metric, parse_window_s(text) or 60.0, aggregation)
