"""`gpuscale keda-scaler`: a real gRPC client calls the scaler exactly as KEDA's operator does.

KEDA sends a ScaledObjectRef (the ScaledObject's name and namespace, and its trigger's metadata),
asks GetMetricSpec once for the HPA target, then GetMetrics and IsActive on every poll. For each
policy below the test replays the very snapshots the scaler was served through the policy's own
``decide`` and checks that KEDA's generated HPA (AverageValue: ``ceil(metricValue / targetSize)``)
lands on the policy's count, and that IsActive is the policy's scale-to-zero decision.

Every server listens on 127.0.0.1 with an ephemeral port; every call has a deadline.
"""

from __future__ import annotations

import math
import os
import queue
import runpy
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from gpuscale._core.clock import ManualClock
from gpuscale._core.errors import TemporaryError
from gpuscale.cli import app
from gpuscale.integrations._externalscaler import externalscaler_pb2 as pb
from gpuscale.integrations._externalscaler import externalscaler_pb2_grpc as pb_grpc
from gpuscale.integrations.keda_scaler import (
    METADATA_KEYS,
    METRIC_NAME,
    SERVICE_NAME,
    KedaScalerServer,
    Observed,
    PolicyScaler,
    ScaledObjectKey,
    SourceFactory,
    TlsFiles,
)
from gpuscale.integrations.manifests import Target, render_keda
from gpuscale.policies import registry
from gpuscale.policies.base import MetricsSnapshot, Policy, SignalSpec, SignalValue, StaticPolicy
from gpuscale.policies.ports import ReplicaCounts, make_snapshot

from .conftest import all_policy_configs

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 10.0
NAMESPACE = "ml"
NAME = "llm"


# --------------------------------------------------------------------------------------------------
# Fixtures: a scaler on 127.0.0.1 and a source whose load the test sets
# --------------------------------------------------------------------------------------------------


@dataclass
class ScriptedSource:
    """Every signal the policy asks for reads ``load``; replicas are ``current`` (all ready).

    It keeps each snapshot it served so the test can replay exactly those through the policy.
    """

    policy: Policy[Any]
    load: float | None = 0.0
    current: int = 1
    fail: Exception | None = None
    served: list[MetricsSnapshot] = field(default_factory=list)

    def counts(self, now: float) -> ReplicaCounts:
        if self.fail is not None:
            raise self.fail
        return ReplicaCounts(self.current, self.current)

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        value = SignalValue(self.load) if self.load is not None else SignalValue.missing("no data")
        snap = make_snapshot(now, counts, dict.fromkeys(specs, value))
        self.served.append(snap)
        return snap

    def unavailable(self) -> str | None:
        return None

    def observed(self) -> Observed:
        return Observed(self, self)


@dataclass
class Running:
    server: KedaScalerServer
    channel: grpc.Channel
    stub: Any
    clock: ManualClock


Serve = Callable[..., Running]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start scalers on 127.0.0.1:0 with a manual clock and no background ticks; stop them after."""
    started: list[Running] = []

    def start(
        policy: Policy[Any], sources: SourceFactory, *, tls: TlsFiles | None = None, **kw: Any
    ) -> Running:
        clock = ManualClock(1_000.0)
        scaler = PolicyScaler(policy, sources, clock)
        server = KedaScalerServer(
            scaler, host="127.0.0.1", port=0, tls=tls, max_workers=4, background_ticks=False, **kw
        )
        port = server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}") if tls is None else kw_channel(port, tls)
        running = Running(server, channel, pb_grpc.ExternalScalerStub(channel), clock)
        started.append(running)
        return running

    def kw_channel(port: int, tls: TlsFiles) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=tls.cert)
        return grpc.secure_channel(
            f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )

    yield start
    for running in started:
        running.channel.close()
        running.server.stop(grace_s=1.0)


def ref(policy: Policy[Any], metadata: dict[str, str] | None = None) -> pb.ScaledObjectRef:
    """What KEDA sends for the ScaledObject ml/llm whose external trigger names ``policy``."""
    meta = {"scalerAddress": f"gpuscale-keda-scaler.{NAMESPACE}.svc:9090", "policy": policy.name}
    meta.update(metadata or {})
    return pb.ScaledObjectRef(name=NAME, namespace=NAMESPACE, scalerMetadata=meta)


def hpa_replicas(spec: pb.MetricSpec, value: pb.MetricValue) -> int:
    """What KEDA's generated HPA computes from our answers (AverageValue target).

    KEDA reads the float fields when they are > 0 and the deprecated integer ones otherwise.
    """
    target = spec.targetSizeFloat if spec.targetSizeFloat > 0 else float(spec.targetSize)
    metric = value.metricValueFloat if value.metricValueFloat > 0 else float(value.metricValue)
    return math.ceil(metric / target)


# --------------------------------------------------------------------------------------------------
# The table: for each policy, the scaler's answers equal the policy's own decisions, tick by tick
# --------------------------------------------------------------------------------------------------


def _knative_to_zero() -> Policy[Any]:
    return registry.load_policy(
        {"kind": "knative", "name": "kpa-zero", "target": 4, "min_scale": 0, "max_scale": 10}, "test"
    )


def _ray_to_zero() -> Policy[Any]:
    return registry.load_policy(
        {
            "kind": "ray-serve",
            "name": "ray-zero",
            "min_replicas": 0,
            "max_replicas": 8,
            "upscale_delay_s": 5,
            "downscale_delay_s": 20,
            "downscale_to_zero_delay_s": 30,
        },
        "test",
    )


def _keda_to_zero() -> Policy[Any]:
    return registry.load_policy(
        {
            "kind": "keda",
            "name": "keda-zero",
            "triggers": [{"metric": "queue_length", "aggregation": "total", "window_s": 15, "threshold": 5}],
            "polling_interval_s": 15,
            "cooldown_period_s": 60,
            "min_replica_count": 0,
            "max_replica_count": 10,
        },
        "test",
    )


def _busy_then_idle(t: float) -> float:
    """Light load, a surge from 60 s to 400 s, then idle from 700 s, and load again from 1000 s."""
    if t < 60:
        return 3.0
    if t < 400:
        return 40.0
    if t < 700:
        return 6.0
    if t < 1000:
        return 0.0
    return 12.0


POLICIES: dict[str, Callable[[], Policy[Any]]] = {
    "hpa-queue-length": lambda: registry.load_preset("queue-depth"),
    "knative": lambda: registry.load_preset("knative"),
    "keda-queue-depth": lambda: registry.load_preset("keda-queue-depth"),
    "ray-serve": lambda: registry.load_preset("ray-serve"),
    "static": lambda: StaticPolicy(3),
    "knative-min-0": _knative_to_zero,
    "ray-serve-min-0": _ray_to_zero,
    "keda-min-0": _keda_to_zero,
}


def drive(running: Running, source: ScriptedSource, policy: Policy[Any], until_s: float) -> list[int]:
    """Poll like KEDA once per evaluation period; check each answer against ``policy.decide``.

    After each tick the scale target follows the answer, as the HPA (or KEDA's 0 <-> 1 step) would.
    Returns the desired count per tick.
    """
    stub, clock = running.stub, running.clock
    period = running.server.scaler.period_s
    so = ref(policy)
    spec_response = stub.GetMetricSpec(so, timeout=DEADLINE_S)
    assert len(spec_response.metricSpecs) == 1
    spec = spec_response.metricSpecs[0]
    request = pb.GetMetricsRequest(scaledObjectRef=so, metricName=spec.metricName)

    state = policy.initial_state()
    start = clock.now()
    desired_per_tick: list[int] = []
    for tick in range(int(until_s / period) + 1):
        source.load = _busy_then_idle(clock.now() - start)
        served_before = len(source.served)
        values = stub.GetMetrics(request, timeout=DEADLINE_S).metricValues
        active = stub.IsActive(so, timeout=DEADLINE_S).result
        again = stub.GetMetrics(request, timeout=DEADLINE_S).metricValues  # same tick: cached
        assert len(source.served) == served_before + 1, "the policy runs once per tick"

        decision, state = policy.decide(source.served[-1], state)
        expected = source.current if decision.desired_replicas is None else decision.desired_replicas
        assert len(values) == 1 and values[0].metricName == spec.metricName
        got = hpa_replicas(spec, values[0])
        assert got == expected, f"tick {tick} at t={tick * period:g} s: {decision}"
        assert hpa_replicas(spec, again[0]) == expected
        assert active is (expected > 0), f"tick {tick}: IsActive {active}, desired {expected}"

        desired_per_tick.append(expected)
        source.current = expected
        clock.advance(period)
    return desired_per_tick


@pytest.mark.parametrize("case", list(POLICIES))
def test_hpa_lands_on_the_policys_desired_count_every_tick(serve: Serve, case: str) -> None:
    policy = POLICIES[case]()
    source = ScriptedSource(POLICIES[case]())  # a second instance: the scaler shares nothing with us
    running = serve(policy, lambda _key: source.observed())
    desired = drive(running, source, POLICIES[case](), until_s=1200)
    if case == "static":
        assert set(desired) == {3}
    else:
        assert len(set(desired)) > 2, f"the load should move {case}: {sorted(set(desired))}"


@pytest.mark.parametrize("case", ["knative-min-0", "ray-serve-min-0", "keda-min-0"])
def test_is_active_follows_scale_to_zero_and_back(serve: Serve, case: str) -> None:
    source = ScriptedSource(POLICIES[case]())
    running = serve(POLICIES[case](), lambda _key: source.observed())
    desired = drive(running, source, POLICIES[case](), until_s=1200)
    period = running.server.scaler.period_s
    active = [d > 0 for d in desired]
    idle_from, load_again = int(700 / period), int(1000 / period)
    assert all(active[:idle_from]), "active while there is load"
    assert not active[load_again - 1], "inactive after the policy's own delays at zero load"
    zero_at = active.index(False, idle_from)
    assert zero_at > idle_from, "scale to zero waits for the policy's grace / delay"
    assert active[-1], "active again once load returns"


def test_policy_state_is_kept_per_scaled_object(serve: Serve) -> None:
    policy = _ray_to_zero()
    sources = {
        ScaledObjectKey(NAMESPACE, "busy"): ScriptedSource(policy, load=20.0, current=1),
        ScaledObjectKey(NAMESPACE, "idle"): ScriptedSource(policy, load=0.0, current=1),
    }
    running = serve(policy, lambda key: sources[key].observed())
    metadata = {"policy": policy.name}
    busy = pb.ScaledObjectRef(name="busy", namespace=NAMESPACE, scalerMetadata=metadata)
    idle = pb.ScaledObjectRef(name="idle", namespace=NAMESPACE, scalerMetadata=metadata)
    for _ in range(40):
        b = running.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=busy, metricName=METRIC_NAME))
        i = running.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=idle, metricName=METRIC_NAME))
        for key, response in ((busy, b), (idle, i)):  # each target follows its own answer
            sources[ScaledObjectKey(NAMESPACE, key.name)].current = response.metricValues[0].metricValue
        running.clock.advance(running.server.scaler.period_s)
    assert b.metricValues[0].metricValueFloat == 8  # 20 ongoing / 2 per replica, capped at max 8
    assert i.metricValues[0].metricValue == 0
    assert running.stub.IsActive(busy, timeout=DEADLINE_S).result is True
    assert running.stub.IsActive(idle, timeout=DEADLINE_S).result is False


# --------------------------------------------------------------------------------------------------
# The contract's edges
# --------------------------------------------------------------------------------------------------


def test_metric_spec_is_the_desired_count_over_a_target_of_one(serve: Serve) -> None:
    policy = registry.load_preset("ray-serve")
    running = serve(policy, lambda _key: ScriptedSource(policy).observed())
    specs = running.stub.GetMetricSpec(ref(policy), timeout=DEADLINE_S).metricSpecs
    assert [(s.metricName, s.targetSize, s.targetSizeFloat) for s in specs] == [(METRIC_NAME, 1, 1.0)]


def test_a_hold_reports_the_current_replicas(serve: Serve) -> None:
    policy = registry.load_preset("ray-serve")
    source = ScriptedSource(policy, load=None, current=4)  # no data: the policy holds
    running = serve(policy, lambda _key: source.observed())
    request = pb.GetMetricsRequest(scaledObjectRef=ref(policy), metricName=METRIC_NAME)
    value = running.stub.GetMetrics(request, timeout=DEADLINE_S).metricValues[0]
    decision, _ = policy.decide(source.served[-1], policy.initial_state())
    assert decision.is_hold
    assert (value.metricValue, value.metricValueFloat) == (4, 4.0)


@pytest.mark.parametrize(
    ("label", "config"),
    [
        (label, config)
        for label, config in all_policy_configs()
        if any(
            t["type"] == "external"
            for t in render_keda(config, Target("Deployment", NAME, NAMESPACE)).body["spec"]["triggers"]
        )
    ],
)
def test_the_rendered_scaled_objects_trigger_metadata_is_accepted(
    serve: Serve, label: str, config: Any
) -> None:
    body = render_keda(config, Target("Deployment", NAME, NAMESPACE)).body
    trigger = next(t for t in body["spec"]["triggers"] if t["type"] == "external")
    assert set(trigger["metadata"]) <= METADATA_KEYS
    policy = config.build()
    running = serve(policy, lambda _key: ScriptedSource(policy).observed())
    so = pb.ScaledObjectRef(
        name=body["metadata"]["name"],
        namespace=body["metadata"]["namespace"],
        scalerMetadata=trigger["metadata"],
    )
    assert running.stub.GetMetricSpec(so, timeout=DEADLINE_S).metricSpecs[0].metricName == METRIC_NAME
    running.stub.IsActive(so, timeout=DEADLINE_S)


@pytest.mark.parametrize(
    ("metadata", "metric", "code", "words"),
    [
        ({"threshold": "5"}, METRIC_NAME, grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
        ({"policy": "gpu-util"}, METRIC_NAME, grpc.StatusCode.INVALID_ARGUMENT, "gpu-util"),
        ({}, "s0-queue", grpc.StatusCode.NOT_FOUND, "s0-queue"),
    ],
)
def test_a_misconfigured_trigger_gets_a_clear_grpc_error(
    serve: Serve, metadata: dict[str, str], metric: str, code: grpc.StatusCode, words: str
) -> None:
    policy = registry.load_preset("ray-serve")
    running = serve(policy, lambda _key: ScriptedSource(policy).observed())
    request = pb.GetMetricsRequest(scaledObjectRef=ref(policy, metadata), metricName=metric)
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.GetMetrics(request, timeout=DEADLINE_S)
    assert caught.value.code() == code
    assert words in caught.value.details()


def test_a_failing_source_is_unavailable_and_the_server_lives_on(serve: Serve) -> None:
    policy = registry.load_preset("ray-serve")
    source = ScriptedSource(policy, load=4.0, current=2, fail=TemporaryError("prometheus timed out"))
    running = serve(policy, lambda _key: source.observed())
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.IsActive(ref(policy), timeout=DEADLINE_S)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "prometheus timed out" in caught.value.details()
    source.fail = None
    assert running.stub.IsActive(ref(policy), timeout=DEADLINE_S).result is True


def test_stream_is_active_pushes_each_evaluation_and_ends_when_the_server_stops(serve: Serve) -> None:
    policy = _ray_to_zero()
    source = ScriptedSource(policy, load=4.0, current=1)
    running = serve(policy, lambda _key: source.observed(), stream_wait_s=0.05)
    stream = running.stub.StreamIsActive(ref(policy), timeout=DEADLINE_S)
    try:
        assert next(stream).result is True  # the current activity at once
        source.load, source.current = 0.0, 0
        running.clock.advance(running.server.scaler.period_s)
        running.stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref(policy), metricName=METRIC_NAME), timeout=DEADLINE_S
        )
        assert next(stream).result is False  # pushed by that evaluation
        running.server.stop(grace_s=1.0)
        with pytest.raises((StopIteration, grpc.RpcError)):
            for _ in range(100):  # bounded: the stream ends, with or without a status
                next(stream)
    finally:
        stream.cancel()


def test_stream_metric_spec_is_unimplemented_so_keda_pulls(serve: Serve) -> None:
    policy = StaticPolicy(2)
    running = serve(policy, lambda _key: ScriptedSource(policy).observed())
    with pytest.raises(grpc.RpcError) as caught:
        next(running.stub.StreamMetricSpec(ref(policy), timeout=DEADLINE_S))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_check_reports_serving(serve: Serve) -> None:
    policy = StaticPolicy(2)
    running = serve(policy, lambda _key: ScriptedSource(policy).observed())
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(serve: Serve, tmp_path: Path) -> None:
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    policy = StaticPolicy(2)
    running = serve(
        policy,
        lambda _key: ScriptedSource(policy).observed(),
        tls=TlsFiles(cert.read_bytes(), key.read_bytes()),
    )
    request = pb.GetMetricsRequest(scaledObjectRef=ref(policy), metricName=METRIC_NAME)
    assert running.stub.GetMetrics(request, timeout=DEADLINE_S).metricValues[0].metricValue == 2
    plain = pb_grpc.ExternalScalerStub(grpc.insecure_channel(f"127.0.0.1:{running.server.port}"))
    with pytest.raises(grpc.RpcError):
        plain.GetMetrics(request, timeout=2.0)


# --------------------------------------------------------------------------------------------------
# Generated code and the command line
# --------------------------------------------------------------------------------------------------


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "gen_externalscaler.py"))
    for path in script["generate"](tmp_path):
        committed = ROOT / "src" / "gpuscale" / "integrations" / "_externalscaler" / path.name
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed.name} is stale: run scripts/gen_externalscaler.py"
        )


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "scaler.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


STATIC_SOURCE = {
    "kind": "static",
    "snapshot": {
        "current_replicas": 3,
        "signals": [{"metric": "queue_length", "aggregation": "total", "window_s": 15, "value": 23}],
    },
}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"source": STATIC_SOURCE}, "policy"),
        ({"policy": "no-such-preset", "source": STATIC_SOURCE}, "no-such-preset"),
        ({"policy": "ray-serve", "source": {"kind": "prometheus"}}, "source.url"),
        ({"policy": "ray-serve", "source": {"kind": "prometheus", "url": "localhost:9090"}}, "http://"),
        ({"policy": "ray-serve", "source": {"kind": "prometheus", "url": "http://p:9090", "queries": {"queue_length": "sum(x{$selector})"}}}, "$selector"),
        ({"policy": "ray-serve", "source": STATIC_SOURCE, "port": 1}, "port"),
        ({"policy": {"kind": "ray-serve", "min_replicas": -1}, "source": STATIC_SOURCE}, "policy.min_replicas"),
        ({"policy": "ray-serve", "source": STATIC_SOURCE, "tls": {"cert_file": "x.crt", "key_file": "x.key"}}, "tls.cert_file"),
        ("policy: [unclosed", "YAML"),
    ],
)  # fmt: skip
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, data: Any, words: str) -> None:
    result = CliRunner().invoke(app, ["keda-scaler", "--config", str(_write(tmp_path, data)), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keda-scaler", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "file not found" in result.output


def test_the_command_serves_a_static_snapshot_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = _write(tmp_path, {"policy": "keda-queue-depth", "source": STATIC_SOURCE})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuscale.cli", "keda-scaler", "--config", str(config),
         "--port", "0", "--host", "127.0.0.1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        port = None
        for _ in range(200):
            line = lines.get(timeout=DEADLINE_S * 3)
            if "listening on 127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1])
                break
        assert port is not None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            so = pb.ScaledObjectRef(
                name=NAME, namespace=NAMESPACE, scalerMetadata={"policy": "keda-queue-depth"}
            )
            value = stub.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=so, metricName=METRIC_NAME), timeout=DEADLINE_S
            ).metricValues[0]
        policy = registry.load_preset("keda-queue-depth")
        snapshot = MetricsSnapshot(
            time_s=0.0,
            current_replicas=3,
            ready=3,
            signals=dict.fromkeys(policy.signals, SignalValue(23.0)),
        )
        decision, _ = policy.decide(snapshot, policy.initial_state())
        assert value.metricValue == decision.desired_replicas == 5  # ceil(23 waiting / 5 per replica) from 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S * 2) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE_S)
