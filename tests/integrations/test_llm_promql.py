"""PromQL for the LLM metrics (vLLM's and DCGM's profiling names), rendered and against a real
Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Gauge

from gpuscale.integrations.prometheus import PrometheusClient, PrometheusSource
from gpuscale.integrations.promql import (
    freshness_query,
    matchers,
    parse_query,
    per_pod_query,
    query,
    signal_query,
)
from gpuscale.policies.base import LLM_METRICS, Aggregation, Metric, SignalSpec

from .promserver import NAMESPACE, Exporter, Prometheus, scraping

SEL = 'namespace="ml",pod=~"llm-.*"'


def test_kv_cache_usage_reads_the_new_old_and_underscore_names_first_wins() -> None:
    q = query(SignalSpec(Metric.KV_CACHE_USAGE, 60, Aggregation.POD_MEAN), "ml", "llm", runtime="vllm")
    names = [
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm_kv_cache_usage_perc",
        "vllm_gpu_cache_usage_perc",
    ]
    assert q == "avg((" + " or ".join(f"avg_over_time({n}{{{SEL}}}[60s])" for n in names) + "))"
    assert freshness_query(Metric.KV_CACHE_USAGE, SEL) == (
        "max(" + " or ".join(f"timestamp({n}{{{SEL}}})" for n in names) + ")"
    )


@pytest.mark.parametrize(
    ("metric", "series", "fn"),
    [
        (Metric.REQUESTS_RUNNING, "num_requests_running", "avg_over_time"),
        (Metric.REQUESTS_WAITING, "num_requests_waiting", "avg_over_time"),
        (Metric.PROMPT_TOKENS_RATE, "prompt_tokens_total", "rate"),
        (Metric.GENERATION_TOKENS_RATE, "generation_tokens_total", "rate"),
        (Metric.PREEMPTION_RATE, "num_preemptions_total", "rate"),
    ],
)
def test_vllm_gauges_and_counters(metric: Metric, series: str, fn: str) -> None:
    q = query(SignalSpec(metric, 30, Aggregation.TOTAL), "ml", "llm", runtime="vllm")
    assert q == f"sum(({fn}(vllm:{series}{{{SEL}}}[30s]) or {fn}(vllm_{series}{{{SEL}}}[30s])))"


@pytest.mark.parametrize(
    ("metric", "series"),
    [
        (Metric.SM_ACTIVE, "DCGM_FI_PROF_SM_ACTIVE"),
        (Metric.SM_OCCUPANCY, "DCGM_FI_PROF_SM_OCCUPANCY"),
        (Metric.DRAM_ACTIVE, "DCGM_FI_PROF_DRAM_ACTIVE"),
    ],
)
def test_dcgm_profiling_gauges(metric: Metric, series: str) -> None:
    q = query(SignalSpec(metric, 60, Aggregation.MAX), "ml", "llm")
    assert q == f"max(avg_over_time({series}{{{SEL}}}[60s]))"
    assert signal_query(SignalSpec(metric, 60), SEL, ("vllm",)) is None  # only the dcgm preset serves it


def test_token_latency_quantiles() -> None:
    ttft = query(SignalSpec(Metric.TTFT_P95_MS, 60), "ml", "llm", runtime="vllm")
    assert ttft == (
        "histogram_quantile(0.95, sum by (le) ("
        f"rate(vllm:time_to_first_token_seconds_bucket{{{SEL}}}[60s]) or "
        f"rate(vllm_time_to_first_token_seconds_bucket{{{SEL}}}[60s]))) * 1000"
    )
    itl = query(SignalSpec(Metric.ITL_P50_MS, 60), "ml", "llm", runtime="vllm")
    assert itl == (
        "histogram_quantile(0.5, sum by (le) ("
        f"rate(vllm:inter_token_latency_seconds_bucket{{{SEL}}}[60s]) or "
        f"rate(vllm:time_per_output_token_seconds_bucket{{{SEL}}}[60s]) or "
        f"rate(vllm_inter_token_latency_seconds_bucket{{{SEL}}}[60s]) or "
        f"rate(vllm_time_per_output_token_seconds_bucket{{{SEL}}}[60s]))) * 1000"
    )


def test_per_pod_query_only_for_per_pod_means_of_the_saturation_gauges() -> None:
    spec = SignalSpec(Metric.REQUESTS_WAITING, 60, Aggregation.POD_MEAN)
    assert per_pod_query(spec, SEL) == (
        f"max by (pod) ((avg_over_time(vllm:num_requests_waiting{{{SEL}}}[60s]) or "
        f"avg_over_time(vllm_num_requests_waiting{{{SEL}}}[60s])))"
    )
    assert per_pod_query(SignalSpec(Metric.REQUESTS_WAITING, 60, Aggregation.TOTAL), SEL) is None
    assert per_pod_query(SignalSpec(Metric.GPU_UTIL, 60), SEL) is None


def test_every_llm_metric_has_a_query_that_parses_back() -> None:
    for metric in sorted(LLM_METRICS):
        spec = SignalSpec(metric, 60, Aggregation.TOTAL)
        q = query(spec, "ml", "llm", runtime="vllm")
        back = parse_query(q)
        assert back is not None, q
        # vllm:num_requests_waiting was already Triton-or-vLLM queue_length: the older name wins
        want = Metric.QUEUE_LENGTH if metric is Metric.REQUESTS_WAITING else metric
        assert back.metric is want and back.window_s == 60


# ------------------------------------------------------------------------------- a real Prometheus


class KvExporter(Exporter):
    """The test exporter plus vLLM's KV-cache gauge under today's and the pre-v0.10 name."""

    def __init__(self) -> None:
        super().__init__()
        labels = ["namespace", "pod"]
        self.kv_new = Gauge("vllm:kv_cache_usage_perc", "KV usage", labels, registry=self.registry)
        self.kv_old = Gauge("vllm:gpu_cache_usage_perc", "KV usage (old)", labels, registry=self.registry)


@pytest.fixture(scope="module")
def kv_prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KvExporter, Prometheus]]:
    exp = KvExporter()
    # llm-0 runs a vLLM exporting both names (0.6 now, a different 0.9 under the old name so the
    # test sees which one is read); llm-1 an older vLLM with the old name only.
    exp.kv_new.labels(NAMESPACE, "llm-0").set(0.6)
    exp.kv_old.labels(NAMESPACE, "llm-0").set(0.9)
    exp.kv_old.labels(NAMESPACE, "llm-1").set(0.2)
    with exp, scraping(exp, Path(tmp_path_factory.mktemp("prometheus-kv"))) as server:
        yield exp, server


def test_kv_cache_usage_against_a_real_prometheus(kv_prom: tuple[KvExporter, Prometheus]) -> None:
    _, prom = kv_prom
    client = PrometheusClient(prom.url, timeout_s=5.0)
    try:
        now = prom.wait_settled('vllm:gpu_cache_usage_perc{pod="llm-1"}', 0.2, 3)
        source = PrometheusSource(client, matchers(NAMESPACE, "llm-.*"), presets=("vllm",))
        specs = [SignalSpec(Metric.KV_CACHE_USAGE, 3, agg) for agg in Aggregation]
        got = source.signals(specs, now)
        values = [got[s].value for s in specs]
        # per pod: llm-0 0.6 (the new name wins over its old one), llm-1 0.2 (old name only)
        assert values == [pytest.approx(0.4), pytest.approx(0.8), pytest.approx(0.6)]
        assert all(0.0 <= got[s].age_s <= 3.0 for s in specs)
        # the pod mean carries each pod's own value (WVA's saturation analysis reads them)
        per_pod = got[specs[0]].per_pod
        assert [(p.name, p.value, p.ready) for p in per_pod] == [
            ("llm-0", pytest.approx(0.6), True),
            ("llm-1", pytest.approx(0.2), True),
        ]
        assert got[specs[1]].per_pod == ()  # a total has no per-pod samples
    finally:
        client.close()
