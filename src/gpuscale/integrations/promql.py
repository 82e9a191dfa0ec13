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
kv_cache_usage       vLLM ``vllm:kv_cache_usage_perc`` (0-1; ``vllm:gpu_cache_usage_perc`` before
                     v0.10), gauge
requests_running     vLLM ``vllm:num_requests_running``, gauge
requests_waiting     vLLM ``vllm:num_requests_waiting``, gauge
prompt_tokens_rate   ``rate()`` of vLLM ``vllm:prompt_tokens_total``
generation_tokens_   ``rate()`` of vLLM ``vllm:generation_tokens_total``
rate
preemption_rate      ``rate()`` of vLLM ``vllm:num_preemptions_total``
ttft_pXX_ms          vLLM ``vllm:time_to_first_token_seconds`` histogram quantile x 1000
itl_pXX_ms           vLLM ``vllm:inter_token_latency_seconds`` (``vllm:time_per_output_token_seconds``
                     before it) histogram quantile x 1000
sm_active            ``DCGM_FI_PROF_SM_ACTIVE`` (dcgm-exporter profiling), 0-1, gauge
sm_occupancy         ``DCGM_FI_PROF_SM_OCCUPANCY``, 0-1, gauge
dram_active          ``DCGM_FI_PROF_DRAM_ACTIVE``, 0-1, gauge
===================  ==========================================================================

**Several names for one metric.** vLLM renamed series across versions, and a scrape through an
OpenMetrics/OTel pipeline may write the colon as an underscore (``vllm_kv_cache_usage_perc``). A
source with alternative names reads each one and joins them with ``or``, the preferred name first:
``(avg_over_time(vllm:kv_cache_usage_perc{...}[60s]) or avg_over_time(vllm:gpu_cache_usage_perc{...}[60s])
or ...)``. ``avg_over_time``/``rate`` drop the metric name, so a pod exporting two of the names
yields the first one only (``or`` keeps a right-hand series only for label sets the left lacks);
a ``{__name__=~"a|b"}`` selector would instead give two series with one label set, which
Prometheus rejects, and would count such a pod twice in a sum.

A signal is a window and an aggregation over pods: gauges are averaged with ``avg_over_time``,
counters are ``rate``\\ d, and the pods are combined with ``avg`` (pod_mean), ``sum`` (total) or
``max``. The query selects the workload's pods by ``namespace`` and a ``pod`` name prefix (the
labels Prometheus' Kubernetes service discovery attaches; dcgm-exporter needs its pod mapping
enabled, ``--kubernetes``, to carry them).

The table is split by exporter into **presets** (:data:`PRESET_SOURCES`): ``dcgm``, ``knative``,
``triton`` and ``vllm``; a list of presets, first one wins, says where each metric is read
(``cpu_util`` comes from cAdvisor whatever the presets). :func:`signal_query` writes the query of a
signal for any presets and label matchers; :func:`freshness_query` the query that finds the newest
sample behind it (for the signal's age). :func:`query` is the fixed choice the manifests use
(``dcgm``, ``knative``, then the runtime).

:func:`query` writes one query; :func:`parse_query` reads it (or a hand-written one of the same
shape) back into a :class:`~gpuscale.policies.base.SignalSpec` for ``gpuscale import``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gpuscale.policies.base import Aggregation, Metric, SignalSpec

Runtime = Literal["triton", "vllm"]
Preset = Literal["dcgm", "knative", "triton", "vllm"]
ALL_PRESETS: tuple[Preset, ...] = ("dcgm", "knative", "triton", "vllm")

_AGG_FN = {Aggregation.POD_MEAN: "avg", Aggregation.TOTAL: "sum", Aggregation.MAX: "max"}
_FN_AGG = {v: k for k, v in _AGG_FN.items()}
_QUANTILES = {
    Metric.LATENCY_P50_MS: "0.5",
    Metric.LATENCY_P95_MS: "0.95",
    Metric.LATENCY_P99_MS: "0.99",
}


@dataclass(frozen=True)
class Source:
    """Where a metric's samples come from: the series and whether it is a counter.

    ``alternatives`` are other names of the same series (older releases, underscore spellings),
    read after ``series`` with ``or``.
    """

    series: str
    counter: bool = False
    exporter: str = ""
    alternatives: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name of the series, the preferred one first."""
        return (self.series, *self.alternatives)


def _vllm(*names: str, counter: bool = False) -> Source:
    """A vLLM series under ``names`` (newest first), then their underscore spellings."""
    unique = tuple(dict.fromkeys([*names, *(name.replace(":", "_") for name in names)]))
    return Source(unique[0], counter=counter, exporter="vLLM", alternatives=unique[1:])


def either(exprs: list[str]) -> str:
    """One expression, or several joined with ``or`` in parentheses (the first name wins per pod)."""
    return exprs[0] if len(exprs) == 1 else "(" + " or ".join(exprs) + ")"


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

LLM_SOURCES: dict[Metric, Source] = {
    Metric.KV_CACHE_USAGE: _vllm("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    Metric.REQUESTS_RUNNING: _vllm("vllm:num_requests_running"),
    Metric.REQUESTS_WAITING: _vllm("vllm:num_requests_waiting"),
    Metric.PROMPT_TOKENS_RATE: _vllm("vllm:prompt_tokens_total", counter=True),
    Metric.GENERATION_TOKENS_RATE: _vllm("vllm:generation_tokens_total", counter=True),
    Metric.PREEMPTION_RATE: _vllm("vllm:num_preemptions_total", counter=True),
}
"""vLLM's LLM-serving series (the ``vllm`` preset)."""
_TTFT_SOURCE = _vllm("vllm:time_to_first_token_seconds_bucket", counter=True)
_ITL_SOURCE = _vllm(
    "vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket", counter=True
)
TOKEN_QUANTILES: dict[Metric, tuple[str, Source]] = {
    Metric.TTFT_P50_MS: ("0.5", _TTFT_SOURCE),
    Metric.TTFT_P95_MS: ("0.95", _TTFT_SOURCE),
    Metric.TTFT_P99_MS: ("0.99", _TTFT_SOURCE),
    Metric.ITL_P50_MS: ("0.5", _ITL_SOURCE),
    Metric.ITL_P95_MS: ("0.95", _ITL_SOURCE),
    Metric.ITL_P99_MS: ("0.99", _ITL_SOURCE),
}
"""Token-latency quantiles: the quantile and the histogram's bucket series."""
DCGM_PROF_SOURCES: dict[Metric, Source] = {
    Metric.SM_ACTIVE: Source("DCGM_FI_PROF_SM_ACTIVE", exporter="dcgm-exporter"),
    Metric.SM_OCCUPANCY: Source("DCGM_FI_PROF_SM_OCCUPANCY", exporter="dcgm-exporter"),
    Metric.DRAM_ACTIVE: Source("DCGM_FI_PROF_DRAM_ACTIVE", exporter="dcgm-exporter"),
}
"""dcgm-exporter's profiling gauges (ratios 0-1; the ``dcgm`` preset)."""


_LATENCY_SOURCE = Source(_LATENCY_SERIES, counter=True, exporter="vLLM")
_CPU_SOURCE = SOURCES[Metric.CPU_UTIL]

PRESET_SOURCES: dict[Preset, dict[Metric, Source]] = {
    "dcgm": {
        **{m: SOURCES[m] for m in (Metric.GPU_UTIL, Metric.GPU_MEMORY_UTIL, Metric.GPU_MEMORY_USED_GB)},
        **DCGM_PROF_SOURCES,
    },
    "knative": {Metric.CONCURRENCY: SOURCES[Metric.CONCURRENCY]},
    "triton": dict(_RUNTIME_SOURCES["triton"]),
    "vllm": {
        **_RUNTIME_SOURCES["vllm"],
        **dict.fromkeys(_QUANTILES, _LATENCY_SOURCE),
        **LLM_SOURCES,
        **{m: src for m, (_, src) in TOKEN_QUANTILES.items()},
    },
}
"""Which metrics each exporter serves, and from which series."""


def runtime_presets(runtime: Runtime) -> tuple[Preset, ...]:
    """The preset order :func:`query` uses: DCGM, Knative, the runtime, then the other runtime."""
    other: Runtime = "vllm" if runtime == "triton" else "triton"
    return ("dcgm", "knative", runtime, other)


def preset_source(metric: Metric, presets: tuple[Preset, ...]) -> Source | None:
    """The source of ``metric`` under ``presets`` (first wins); cAdvisor for cpu_util; else None."""
    if metric == Metric.CPU_UTIL:
        return _CPU_SOURCE
    for preset in presets:
        found = PRESET_SOURCES[preset].get(metric)
        if found is not None:
            return found
    return None


def source_of(metric: Metric, runtime: Runtime = "triton") -> Source:
    found = preset_source(metric, runtime_presets(runtime))
    assert found is not None, metric  # every metric has a source under the four presets
    return found


_RE2_META = frozenset("\\.+*?()|[]{}^$")


def regex_escape(text: str) -> str:
    """``text`` as a literal in a Prometheus (RE2) regex: only metacharacters get a backslash.

    Python's :func:`re.escape` also escapes ``-``, which PromQL's string syntax then rejects
    ("unknown escape sequence"): ``llm-7b`` must stay ``llm-7b``, while ``v1.5`` becomes ``v1\\.5``.
    """
    return "".join(f"\\{c}" if c in _RE2_META else c for c in text)


def string_literal(text: str) -> str:
    """``text`` as a double-quoted PromQL string (backslashes and quotes escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def matchers(namespace: str | None = None, pod_regex: str | None = None, **labels: str) -> str:
    """Label matchers (without braces): ``namespace``, ``pod`` by regex, and exact ``labels``.

    >>> matchers("ml", "llm-.*", app="llm")
    'namespace="ml",pod=~"llm-.*",app="llm"'
    """
    parts = []
    if namespace is not None:
        parts.append(f"namespace={string_literal(namespace)}")
    if pod_regex is not None:
        parts.append(f"pod=~{string_literal(pod_regex)}")
    parts += [f"{k}={string_literal(v)}" for k, v in labels.items()]
    return ",".join(parts)


def selector(namespace: str, pod_prefix: str) -> str:
    return matchers(namespace, f"{regex_escape(pod_prefix)}-.*")


def window(window_s: float) -> str:
    """A PromQL range: ``60s``; a fraction of a second in milliseconds (``2.5`` -> ``2500ms``).

    Prometheus' durations are whole numbers of a unit: ``[2.5s]`` is a parse error.
    """
    if float(window_s).is_integer():
        return f"{int(window_s)}s"
    return f"{max(1, round(window_s * 1000))}ms"


def per_pod_expr(metric: Metric, window_s: float, labels: str, runtime: Runtime = "triton") -> str:
    """The metric per pod (one series per pod), averaged or rated over ``window_s``."""
    expr = preset_per_pod_expr(metric, window_s, labels, runtime_presets(runtime))
    assert expr is not None, metric
    return expr


def preset_per_pod_expr(
    metric: Metric, window_s: float, labels: str, presets: tuple[Preset, ...]
) -> str | None:
    """:func:`per_pod_expr` under ``presets``; None when none of them serves ``metric``."""
    src = preset_source(metric, presets)
    if src is None:  # a latency metric gives its buckets' rate: signal_query takes the quantile
        return None
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
    fn = "rate" if src.counter else "avg_over_time"
    return either([f"{fn}({name}{{{labels}}}[{w}])" for name in src.names])


def aggregation_fn(aggregation: Aggregation) -> str:
    """The PromQL aggregation operator of a pod aggregation: avg, sum or max."""
    return _AGG_FN[aggregation]


def signal_query(spec: SignalSpec, labels: str, presets: tuple[Preset, ...] = ALL_PRESETS) -> str | None:
    """One instant query returning one number for ``spec`` over the series ``labels`` select.

    None when none of ``presets`` serves the metric (e.g. latency without ``vllm``: Triton publishes
    no latency histogram by default).
    """
    if spec.metric in _QUANTILES:
        if preset_source(spec.metric, presets) is None:
            return None
        rate = f"sum by (le) (rate({_LATENCY_SERIES}{{{labels}}}[{window(spec.window_s)}]))"
        return f"histogram_quantile({_QUANTILES[spec.metric]}, {rate}) * 1000"
    if spec.metric in TOKEN_QUANTILES:
        if preset_source(spec.metric, presets) is None:
            return None
        return token_quantile_query(spec.metric, spec.window_s, labels)
    expr = preset_per_pod_expr(spec.metric, spec.window_s, labels, presets)
    return None if expr is None else f"{_AGG_FN[spec.aggregation]}({expr})"


def token_quantile_query(metric: Metric, window_s: float, labels: str, group_by: str = "") -> str:
    """A TTFT/ITL quantile in ms over the pods ``labels`` select (``group_by``: extra labels kept).

    >>> token_quantile_query(Metric.TTFT_P95_MS, 60, 'namespace="ml"')  # doctest: +NORMALIZE_WHITESPACE
    'histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{namespace="ml"}[60s])
    or rate(vllm_time_to_first_token_seconds_bucket{namespace="ml"}[60s]))) * 1000'
    """
    quantile, src = TOKEN_QUANTILES[metric]
    w = window(window_s)
    rates = " or ".join(f"rate({name}{{{labels}}}[{w}])" for name in src.names)
    by = f"le, {group_by}" if group_by else "le"
    return f"histogram_quantile({quantile}, sum by ({by}) ({rates})) * 1000"


PER_POD_SAMPLE_METRICS = frozenset({Metric.KV_CACHE_USAGE, Metric.REQUESTS_RUNNING, Metric.REQUESTS_WAITING})
"""Per-pod means whose pods' own values a policy may read (WVA's saturation analysis):
:func:`per_pod_query` gives one series per pod."""


def per_pod_query(spec: SignalSpec, labels: str, presets: tuple[Preset, ...] = ALL_PRESETS) -> str | None:
    """One series per pod (label ``pod``) for a per-pod mean of :data:`PER_POD_SAMPLE_METRICS`;
    None for any other signal or when no preset serves it."""
    if spec.metric not in PER_POD_SAMPLE_METRICS or spec.aggregation is not Aggregation.POD_MEAN:
        return None
    expr = preset_per_pod_expr(spec.metric, spec.window_s, labels, presets)
    return None if expr is None else f"max by (pod) ({expr})"


def freshness_query(metric: Metric, labels: str, presets: tuple[Preset, ...] = ALL_PRESETS) -> str | None:
    """The time of the newest sample behind ``metric``: ``max(timestamp(series{labels}))``.

    ``timestamp()`` of a plain selector is the sample's own scrape time (within Prometheus' 5 min
    lookback), not the evaluation time, so ``now - result`` is the signal's age.
    """
    src = preset_source(metric, presets)
    if src is None:
        return None
    extra = ',container!=""' if metric == Metric.CPU_UTIL else ""
    stamps = " or ".join(f"timestamp({name}{{{labels}{extra}}})" for name in src.names)
    return f"max({stamps})"


def query(spec: SignalSpec, namespace: str, pod_prefix: str, runtime: Runtime = "triton") -> str:
    """One instant query returning one number: the signal as the policy declares it.

    >>> query(SignalSpec(Metric.QUEUE_LENGTH, 60, Aggregation.TOTAL), "ml", "resnet")
    'sum(avg_over_time(nv_inference_pending_request_count{namespace="ml",pod=~"resnet-.*"}[60s]))'
    """
    found = signal_query(spec, selector(namespace, pod_prefix), runtime_presets(runtime))
    assert found is not None, spec  # the four presets serve every metric
    return found


_WINDOW = re.compile(r"\[(\d+(?:\.\d+)?)(ms|s|m|h)\]")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_window_s(text: str) -> float | None:
    """The first range selector's length in seconds (``[2m]`` -> 120), or None."""
    found = _WINDOW.search(text)
    return None if found is None else float(found.group(1)) * _UNIT_S[found.group(2)]


def metric_for_series(text: str) -> Metric | None:
    """The gpuscale metric a query or metric name reads, judged by the series it names."""
    if "histogram_quantile(" in text:
        q = re.search(r"histogram_quantile\(\s*([0-9.]+)", text)
        for metric, (quantile, src) in TOKEN_QUANTILES.items():
            named = any(name.removesuffix("_bucket") in text for name in src.names)
            if named and q is not None and float(q.group(1)) == float(quantile):
                return metric
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
    for m, src in {**LLM_SOURCES, **DCGM_PROF_SOURCES}.items():
        table += [(name, m) for name in src.names]
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
