"""The Prometheus source against a real Prometheus (Debian's package) scraping a test exporter.

Every value goes through the real path: the exporter's series, Prometheus' scrapes (every 1 s) and
TSDB, the PromQL gpuscale writes, the HTTP API and the source's strict parsing. Queries are made at
a stated ``time=``, so each assertion is about one fixed moment of stored data.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from gpuscale._core.clock import ManualClock, SystemClock
from gpuscale._core.errors import ConfigError
from gpuscale.integrations._externalscaler import externalscaler_pb2 as pb
from gpuscale.integrations._externalscaler import externalscaler_pb2_grpc as pb_grpc
from gpuscale.integrations.keda_scaler import METRIC_NAME, build_server, load_keda_scaler_config
from gpuscale.integrations.prometheus import (
    Override,
    PrometheusClient,
    PrometheusSource,
    PrometheusSourceConfig,
    build_client,
    source_for,
)
from gpuscale.integrations.promql import matchers, window
from gpuscale.policies import registry
from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.policies.ports import ReplicaCounts

from .promserver import (
    NAMESPACE,
    PODS,
    Exporter,
    Prometheus,
    WebSecurity,
    free_port,
    scraping,
)

LABELS = matchers(NAMESPACE, "llm-.*")
CLOCK = SystemClock()
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    exp = Exporter()
    # What the KEDA test reads over a 15 s window: set from the start, so it has settled by then.
    exp.vllm_waiting.labels(NAMESPACE, "llm-0").set(30)
    exp.vllm_waiting.labels(NAMESPACE, "llm-1").set(20)
    for gauge in (exp.spec_replicas, exp.ready_replicas, exp.status_replicas):
        gauge.labels(NAMESPACE, "llm").set(2)
    with exp:
        yield exp


@pytest.fixture(scope="module")
def prom(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with scraping(exporter, tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.fixture
def client(prom: Prometheus) -> Iterator[PrometheusClient]:
    c = PrometheusClient(prom.url, timeout_s=5.0)
    yield c
    c.close()


def _raw_mean(prom: Prometheus, selector: str, window_s: float, at_s: float) -> dict[str, float]:
    """Per pod, the plain mean of the raw samples Prometheus holds in the window (computed here)."""
    out = {}
    body = httpx.get(
        f"{prom.url}/api/v1/query", params={"query": f"{selector}[{window(window_s)}]", "time": f"{at_s:.3f}"}
    ).json()
    for series in body["data"]["result"]:
        values = [float(v) for _t, v in series["values"]]
        out[series["metric"]["pod"]] = sum(values) / len(values)
    return out


def test_a_gauge_window_average_follows_the_exporter(
    exporter: Exporter, prom: Prometheus, client: PrometheusClient
) -> None:
    source = PrometheusSource(client, LABELS, presets=("dcgm",))
    exporter.gpu_util.labels(NAMESPACE, "llm-0").set(40)
    exporter.gpu_util.labels(NAMESPACE, "llm-1").set(80)
    prom.wait_settled('DCGM_FI_DEV_GPU_UTIL{pod="llm-0"}', 40, 3)
    now = prom.wait_settled('DCGM_FI_DEV_GPU_UTIL{pod="llm-1"}', 80, 3)
    specs = [SignalSpec(Metric.GPU_UTIL, 3, agg) for agg in Aggregation]
    got = source.signals(specs, now)
    assert [got[s].value for s in specs] == [60.0, 120.0, 80.0]  # pod_mean, total, max
    assert all(0.0 <= got[s].age_s <= 3.0 and got[s].reason == "" for s in specs)

    # The load halves: the short window follows; a window over the change is the samples' mean.
    exporter.gpu_util.labels(NAMESPACE, "llm-0").set(10)
    exporter.gpu_util.labels(NAMESPACE, "llm-1").set(30)
    prom.wait_settled('DCGM_FI_DEV_GPU_UTIL{pod="llm-0"}', 10, 3)
    later = prom.wait_settled('DCGM_FI_DEV_GPU_UTIL{pod="llm-1"}', 30, 3)
    assert source.fulfil(SignalSpec(Metric.GPU_UTIL, 3), later).value == 20.0
    wide = SignalSpec(Metric.GPU_UTIL, later - now + 3)
    raw = _raw_mean(prom, f"DCGM_FI_DEV_GPU_UTIL{{{LABELS}}}", wide.window_s, later)
    mixed = source.fulfil(wide, later).value
    assert mixed is not None and 20.0 < mixed < 60.0
    assert mixed == pytest.approx(sum(raw.values()) / len(raw), rel=1e-9)
    # An earlier moment still reads what was stored then: a query at time= is reproducible.
    assert source.fulfil(SignalSpec(Metric.GPU_UTIL, 3), now).value == 60.0


def test_gpu_memory_utilization_from_dcgm_used_and_free(
    exporter: Exporter, prom: Prometheus, client: PrometheusClient
) -> None:
    for pod, used in zip(PODS, (20_000, 60_000), strict=True):
        exporter.fb_used.labels(NAMESPACE, pod).set(used)
        exporter.fb_free.labels(NAMESPACE, pod).set(80_000 - used)
    prom.wait_settled('DCGM_FI_DEV_FB_USED{pod="llm-0"}', 20_000, 2)
    prom.wait_settled('DCGM_FI_DEV_FB_FREE{pod="llm-1"}', 20_000, 2)
    now = prom.wait_settled('DCGM_FI_DEV_FB_USED{pod="llm-1"}', 60_000, 2)
    source = PrometheusSource(client, LABELS)
    util = source.fulfil(SignalSpec(Metric.GPU_MEMORY_UTIL, 2, Aggregation.MAX), now)
    assert util.value == pytest.approx(75.0)  # 60 000 MiB of 80 000
    gb = source.fulfil(SignalSpec(Metric.GPU_MEMORY_USED_GB, 2, Aggregation.TOTAL), now)
    assert gb.value == pytest.approx(80_000 * 1048576 / 1e9)


def test_a_counter_rate_follows_the_exporter(
    exporter: Exporter, prom: Prometheus, client: PrometheusClient
) -> None:
    # Two pods complete requests at about 50/s each; rate() over 4 s sums to about 100/s.
    stop = threading.Event()

    def serve() -> None:
        while not stop.wait(0.02):
            for pod in PODS:
                exporter.vllm_success.labels(NAMESPACE, pod).inc()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        time.sleep(5.5)
        now = CLOCK.now()
    finally:
        stop.set()
        worker.join(timeout=5)
    source = PrometheusSource(client, LABELS, presets=("vllm",))
    rate = source.fulfil(SignalSpec(Metric.REQUEST_RATE, 4, Aggregation.TOTAL), now)
    assert rate.value is not None
    # Prometheus' own answer for the same moment, and the raw samples' slope, agree with ours.
    expected = prom.value(f"sum(rate(vllm:request_success_total{{{LABELS}}}[4s]))", now)
    assert rate.value == pytest.approx(expected, rel=1e-9)
    body = httpx.get(
        f"{prom.url}/api/v1/query",
        params={"query": f"vllm:request_success_total{{{LABELS}}}[4s]", "time": f"{now:.3f}"},
    ).json()
    slope = 0.0
    for series in body["data"]["result"]:
        (t0, v0), (t1, v1) = series["values"][0], series["values"][-1]
        slope += (float(v1) - float(v0)) / (float(t1) - float(t0))
    assert rate.value == pytest.approx(slope, rel=0.15)
    assert 30.0 < rate.value < 130.0  # the thread's nominal 100/s, on two shared cores


def test_a_latency_quantile_lands_in_the_right_bucket(
    exporter: Exporter, prom: Prometheus, client: PrometheusClient
) -> None:
    # 90 requests of 40 ms and 10 of 800 ms: p50 lies in the (25, 50] ms bucket, p95 in (500, 1000].
    for _ in range(45):
        for pod in PODS:
            exporter.vllm_latency.labels(NAMESPACE, pod).observe(0.040)
    for _ in range(5):
        for pod in PODS:
            exporter.vllm_latency.labels(NAMESPACE, pod).observe(0.800)
    now = prom.wait_scraped(f"sum(vllm:e2e_request_latency_seconds_count{{{LABELS}}})", 100)
    source = PrometheusSource(client, LABELS, presets=("vllm",))
    p50 = source.fulfil(SignalSpec(Metric.LATENCY_P50_MS, 10), now)
    p95 = source.fulfil(SignalSpec(Metric.LATENCY_P95_MS, 10), now)
    assert p50.value is not None and 25.0 < p50.value <= 50.0
    assert p95.value is not None and 500.0 < p95.value <= 1000.0
    assert 0.0 <= p50.age_s <= 3.0
    # Long after the requests (a window with no increase) there is no quantile: None, not NaN.
    quiet = source.fulfil(SignalSpec(Metric.LATENCY_P50_MS, 1), now - 30)
    assert quiet.value is None and ("NaN" in quiet.reason or "empty result" in quiet.reason)


def test_a_missing_metric_is_none_with_a_reason_while_the_others_come_back(
    prom: Prometheus, client: PrometheusClient
) -> None:
    source = PrometheusSource(client, LABELS, presets=("dcgm", "triton"))
    gpu = SignalSpec(Metric.GPU_UTIL, 3)
    queue = SignalSpec(Metric.QUEUE_LENGTH, 3, Aggregation.TOTAL)  # Triton's series: not exported
    latency = SignalSpec(Metric.LATENCY_P99_MS, 3)  # no preset here serves it
    snap = source.snapshot(CLOCK.now(), [gpu, queue, latency], ReplicaCounts(2, 2))
    assert snap.value(gpu) is not None
    assert snap.get(queue).value is None
    assert (
        "empty result" in snap.get(queue).reason
        and "nv_inference_pending_request_count" in snap.get(queue).reason
    )
    assert snap.get(latency).value is None and "none of the presets" in snap.get(latency).reason
    assert (snap.current_replicas, snap.ready) == (2, 2)
    assert source.unavailable() is None  # Prometheus answered: no series is not an outage


def test_several_series_where_one_is_expected_and_nan_are_none(
    prom: Prometheus, client: PrometheusClient
) -> None:
    overrides = {
        # Per pod, without the aggregation: two series.
        "queue_length": Override("avg_over_time(vllm:num_requests_waiting{$labels}[$window])"),
        "concurrency": Override("0/0"),
        "gpu_util:max:3s": Override("$agg(avg_over_time(DCGM_FI_DEV_GPU_UTIL{$labels}[$window])) * 0 + 7"),
    }
    source = PrometheusSource(client, LABELS, overrides=overrides)
    queue = SignalSpec(Metric.QUEUE_LENGTH, 3, Aggregation.TOTAL)
    conc = SignalSpec(Metric.CONCURRENCY, 3)
    gpu_max = SignalSpec(Metric.GPU_UTIL, 3, Aggregation.MAX)
    got = source.signals([queue, conc, gpu_max, SignalSpec(Metric.GPU_UTIL, 3)], CLOCK.now())
    assert got[queue].value is None and "2 series where one is expected" in got[queue].reason
    assert 'pod="llm-0"' in got[queue].reason and 'pod="llm-1"' in got[queue].reason
    assert got[conc].value is None and "nan" in got[conc].reason.lower()
    assert got[gpu_max].value == 7.0  # the signal's own override wins and still carries an age
    assert got[gpu_max].age_s < 5.0
    assert got[SignalSpec(Metric.GPU_UTIL, 3)].value is not None  # the built-in query for the others


def test_a_prometheus_that_is_down_or_hangs_gives_none_for_every_signal() -> None:
    specs = [SignalSpec(Metric.GPU_UTIL, 60), SignalSpec(Metric.QUEUE_LENGTH, 60, Aggregation.TOTAL)]
    down = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    source = PrometheusSource(down, LABELS)
    snap = source.snapshot(CLOCK.now(), specs, ReplicaCounts(3, 3))
    assert all(snap.get(s).value is None and "cannot reach" in snap.get(s).reason for s in specs)
    assert source.unavailable() is not None and "cannot reach" in (source.unavailable() or "")
    down.close()
    # A server that accepts connections and never answers: each query times out on its own.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        slow = PrometheusClient(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout_s=0.3)
        start = CLOCK.monotonic()
        hung_source = PrometheusSource(slow, LABELS)
        got = hung_source.signals(specs, CLOCK.now())
        slow.close()
    assert all(v.value is None and "timed out after 0.3 s" in v.reason for v in got.values())
    assert "timed out" in (hung_source.unavailable() or "")
    assert CLOCK.monotonic() - start < 5.0


def test_the_keda_scaler_answers_from_real_prometheus_data(
    exporter: Exporter, prom: Prometheus, tmp_path: Path
) -> None:
    prom.wait_settled('vllm:num_requests_waiting{pod="llm-0"}', 30, 15, timeout_s=25)
    prom.wait_settled('vllm:num_requests_waiting{pod="llm-1"}', 20, 15, timeout_s=5)
    now = prom.wait_scraped('kube_deployment_spec_replicas{deployment="llm"}', 2)
    config_path = tmp_path / "scaler.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "policy": "keda-queue-depth",
                "source": {"kind": "prometheus", "url": prom.url, "presets": ["vllm"], "timeout_s": 5},
            }
        ),
        encoding="utf-8",
    )
    config = load_keda_scaler_config(config_path)
    clock = ManualClock(now)
    server = build_server(config, config_path, clock, host="127.0.0.1", port=0, metrics_port=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            ref = pb.ScaledObjectRef(name="llm", namespace=NAMESPACE)
            answer = stub.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref, metricName=METRIC_NAME), timeout=DEADLINE_S
            )
            reported = answer.metricValues[0].metricValueFloat
            with pytest.raises(grpc.RpcError) as failed:  # no kube-state-metrics series for it
                stub.GetMetrics(
                    pb.GetMetricsRequest(
                        scaledObjectRef=pb.ScaledObjectRef(name="ghost", namespace=NAMESPACE),
                        metricName=METRIC_NAME,
                    ),
                    timeout=DEADLINE_S,
                )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "kube-state-metrics" in (failed.value.details() or "")
        metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5.0).text
    finally:
        server.stop()

    # The same snapshot, built here from the same Prometheus at the same moment, through the policy.
    policy = registry.load_preset("keda-queue-depth")
    assert isinstance(config.source, PrometheusSourceConfig)
    own_client = build_client(config.source, config_path)
    source, replicas = source_for(config.source, own_client, namespace=NAMESPACE, name="llm")
    snapshot = source.snapshot(now, policy.signals, replicas.counts(now))
    own_client.close()
    queue = snapshot.get(policy.signals[0])
    assert queue.value == pytest.approx(50.0)  # 30 + 20 waiting, total over the pods
    assert (snapshot.current_replicas, snapshot.ready, snapshot.starting, snapshot.pending) == (2, 2, 0, 0)
    decision, _ = policy.decide(snapshot, policy.initial_state())
    desired = snapshot.current_replicas if decision.desired_replicas is None else decision.desired_replicas
    assert reported == desired
    assert desired > 2, decision  # 50 waiting requests need more than 2 replicas

    assert f'gpuscale_scaler_desired_replicas{{scaledobject="ml/llm"}} {float(desired)}' in metrics
    assert f'gpuscale_scaler_decisions_total{{reason="{decision.reason.value}"}} 1.0' in metrics
    assert 'gpuscale_scaler_errors_total{kind="temporary"} 1.0' in metrics


def test_config_errors_name_the_key(tmp_path: Path) -> None:

    bad: list[tuple[dict[str, Any], str]] = [
        ({"url": "http://p", "queries": {"latency": "x"}}, "source.queries"),
        ({"url": "http://p", "presets": ["dcgm", "dcgm"]}, "source.presets"),
        ({"url": "http://p", "presets": ["prometheus"]}, "source.presets"),
        (
            {
                "url": "http://p",
                "bearer_token_file": "t",
                "basic_auth": {"username": "u", "password_file": "p"},
            },
            "source",
        ),
        ({"url": "http://p", "replicas": {"kind": "static"}}, "source.replicas.current_replicas"),
    ]
    for source, key in bad:
        path = tmp_path / "scaler.yaml"
        path.write_text(yaml.safe_dump({"policy": "ray-serve", "source": {"kind": "prometheus", **source}}))
        with pytest.raises(ConfigError) as err:
            load_keda_scaler_config(path)
        assert key in str(err.value), (source, str(err.value))
    path = tmp_path / "scaler.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "policy": "ray-serve",
                "source": {"kind": "prometheus", "url": "http://p", "bearer_token_file": "nope"},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"source\.bearer_token_file"):
        build_server(load_keda_scaler_config(path), path, ManualClock(), host="127.0.0.1", port=0)


def test_a_5xx_answer_is_an_outage_and_a_4xx_is_a_bad_query() -> None:
    # Prometheus answers 503 when a query is aborted or times out inside, a proxy 502 with no upstream:
    # the source is unavailable. A 400 (bad PromQL) is the query's fault, not an outage.
    def answer(request: httpx.Request) -> httpx.Response:
        if "bad" in request.url.params["query"]:
            return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse"})
        return httpx.Response(503, json={"status": "error", "errorType": "timeout", "error": "aborted"})

    client = PrometheusClient("http://127.0.0.1:1", transport=httpx.MockTransport(answer))
    overrides = {"queue_length": Override("bad(")}
    source = PrometheusSource(client, LABELS, overrides=overrides)
    queue = SignalSpec(Metric.QUEUE_LENGTH, 60, Aggregation.TOTAL)
    got = source.signals([queue], CLOCK.now())
    assert got[queue].value is None and "HTTP 400" in got[queue].reason
    assert source.unavailable() is None
    got = source.signals([SignalSpec(Metric.GPU_UTIL, 60)], CLOCK.now())
    assert "HTTP 503" in (source.unavailable() or "")


def test_tls_and_basic_auth_against_a_secured_prometheus(exporter: Exporter, tmp_path: Path) -> None:
    # Prometheus' own --web.config.file: TLS with a self-signed certificate and a bcrypt basic-auth
    # user. The source's config (CA file, user, password file) reaches it; a wrong password or no CA
    # gives a missing value that says why, and counts as Prometheus not answering only when it did not.
    web = WebSecurity.create(tmp_path)
    (tmp_path / "password").write_text(web.password + "\n", encoding="utf-8")
    (tmp_path / "wrong").write_text("guess\n", encoding="utf-8")
    exporter.gpu_util.labels(NAMESPACE, "llm-0").set(64)
    exporter.gpu_util.labels(NAMESPACE, "llm-1").set(64)
    spec = SignalSpec(Metric.GPU_UTIL, 2, Aggregation.POD_MEAN)
    (tmp_path / "prometheus").mkdir()
    with scraping(exporter, tmp_path / "prometheus", web=web) as secured:
        assert secured.url.startswith("https://")
        secured.wait_settled('DCGM_FI_DEV_GPU_UTIL{pod="llm-1"}', 64, 2)

        def source(**auth: Any) -> PrometheusSource:
            config = PrometheusSourceConfig.model_validate({"url": secured.url, **auth})
            client = build_client(config, tmp_path / "controller.yaml", "prometheus")
            return PrometheusSource(client, LABELS)

        good = source(ca_file="tls.crt", basic_auth={"username": web.username, "password_file": "password"})
        assert good.fulfil(spec, CLOCK.now()).value == pytest.approx(64.0)
        assert good.unavailable() is None

        wrong = source(ca_file="tls.crt", basic_auth={"username": web.username, "password_file": "wrong"})
        got = wrong.signals([spec], CLOCK.now())[spec]
        assert got.value is None and "HTTP 401" in got.reason
        assert wrong.unavailable() is None  # Prometheus answered: the credentials are wrong

        untrusted = source(basic_auth={"username": web.username, "password_file": "password"})
        got = untrusted.signals([spec], CLOCK.now())[spec]
        assert got.value is None and "cannot reach" in got.reason and "CERTIFICATE" in got.reason.upper()
    with pytest.raises(ConfigError, match=r"prometheus\.ca_file"):
        source_config = PrometheusSourceConfig.model_validate({"url": "https://x", "ca_file": "password"})
        build_client(source_config, tmp_path / "controller.yaml", "prometheus")
