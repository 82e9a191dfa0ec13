"""``gpuscale keda-scaler``: KEDA's external scaler, driven by any gpuscale policy.

KEDA asks an external scaler three things (``externalscaler.proto`` beside this module):

* ``GetMetricSpec`` -- the metric and target KEDA writes into the HPA it generates;
* ``GetMetrics`` -- the metric's current value, on each of that HPA's metric requests;
* ``IsActive`` / ``StreamIsActive`` -- activation: KEDA itself scales 0 -> 1 when active and 1 -> 0
  when inactive (after the ScaledObject's ``cooldownPeriod``); between 1 and N the HPA scales.

This scaler answers them so that the generated HPA lands exactly on the policy's desired count. The
metric is the desired count itself and its target is 1; KEDA's default external target type is
``AverageValue``, for which the HPA computes ``ceil(metricValue / targetSize)`` whatever the current
count. Worked example: the policy wants 7 replicas, 3 run; we report ``metricValue 7`` with
``targetSize 1``; the HPA computes ``ceil(7 / 1) = 7`` and scales 3 -> 7. (The HPA's 10 % tolerance
still applies on top: ``|7/(1*7) - 1| = 0`` at the desired count, but at 10 running and 11 desired
``|11/10 - 1| = 0.1`` is within it and the HPA keeps 10 -- the manifests renderer's notes say how to
set the tolerance to 0 on Kubernetes >= 1.33.) ``IsActive`` is ``desired > 0``: the policy's own
scale-to-zero decision, made after its own grace and delays, so the ScaledObject's cooldown is 0.

A hold decision ("keep what you have") reports the snapshot's ``current_replicas``.

Policy state is kept per ScaledObject (namespace/name), so one scaler can serve many workloads with
one policy. The policy runs at most once per evaluation period -- its ``sync_period_s`` (the HPA's
15 s, the KPA's 2 s, Ray Serve's 1 s), or the config's ``default_sync_period_s`` for a policy without
one; calls within a period get the cached decision. Policies that count ticks (Ray Serve's delays,
the KPA's windows) need one evaluation per period whether or not KEDA happens to call, so
:class:`KedaScalerServer` also evaluates every known ScaledObject once per period in the background.

Time is read only through the injected :class:`~gpuscale._core.clock.Clock`: ``now()`` stamps the
snapshot, ``monotonic()`` decides when the cached decision is due again.

Snapshots come from the config's ``source``: ``kind: static`` (a fixed snapshot, for trials) or
``kind: prometheus`` (:mod:`gpuscale.integrations.prometheus`: one source per ScaledObject, its
``$namespace``/``$name`` filled into the pod selector; replica counts from kube-state-metrics).

The scaler's own metrics (prometheus-client, on ``--metrics-port``; see :class:`ScalerMetrics`):
``gpuscale_scaler_desired_replicas{scaledobject}``, ``gpuscale_scaler_decisions_total{reason}`` (one
per policy evaluation, labelled with the decision's reason) and ``gpuscale_scaler_errors_total{kind}``.

The trigger metadata KEDA sends (``scalerMetadata``) is what ``gpuscale manifests --format keda``
renders: ``scalerAddress`` and ``policy`` (the policy's name; when present it must be the policy this
scaler runs, so a trigger pointed at the wrong scaler fails loudly), plus KEDA's own ``enableTLS`` and
``unsafeSsl``. Any other key is rejected with ``INVALID_ARGUMENT`` naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydantic import Field

from gpuscale._core.clock import Clock
from gpuscale._core.errors import MISSING, ConfigError, PermanentError, TemporaryError
from gpuscale.config.loading import StrictModel, load_yaml, validate
from gpuscale.integrations._externalscaler import externalscaler_pb2 as pb
from gpuscale.integrations._externalscaler import externalscaler_pb2_grpc as pb_grpc
from gpuscale.integrations.prometheus import (
    PrometheusSourceConfig,
    build_client,
    source_for,
)
from gpuscale.policies import registry
from gpuscale.policies.base import (
    Aggregation,
    Decision,
    Metric,
    MetricsSnapshot,
    Policy,
    SignalSpec,
    SignalValue,
)
from gpuscale.policies.ports import (
    MetricsSource,
    ReplicaCounts,
    ReplicaReader,
    counts_of,
    make_snapshot,
)

log = logging.getLogger("gpuscale.keda_scaler")

SERVICE_NAME = "externalscaler.ExternalScaler"
METRIC_NAME = "gpuscale-desired-replicas"
"""The one metric this scaler serves; KEDA names it ``s<trigger index>-gpuscale-desired-replicas``."""
METADATA_KEYS = frozenset({"scalerAddress", "policy", "enableTLS", "unsafeSsl"})
"""Trigger metadata keys accepted: what ``gpuscale manifests`` renders plus KEDA's TLS switches."""


# --------------------------------------------------------------------------------------------------
# The metrics port
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ScaledObjectKey:
    """A ScaledObject, as KEDA names it in ``ScaledObjectRef``."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Observed:
    """What the scaler reads for one ScaledObject, through the two read ports: its replica counts
    (kube-state-metrics, or fixed) and the policy's signals (Prometheus, or a fixed snapshot).

    Either may raise :class:`~gpuscale._core.errors.TemporaryError` (Prometheus timed out: KEDA
    retries and, after its failure threshold, applies the ScaledObject's fallback) or
    :class:`~gpuscale._core.errors.PermanentError`.
    """

    replicas: ReplicaReader
    metrics: MetricsSource


SourceFactory = Callable[[ScaledObjectKey], Observed]
"""Makes what the scaler reads for one ScaledObject, the first time KEDA asks about it."""


@dataclass(frozen=True)
class StaticSource:
    """The same signals and counts at every call, stamped with the time asked for (trials, dry runs)."""

    template: MetricsSnapshot

    def counts(self, now: float) -> ReplicaCounts:
        return counts_of(self.template)

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        return make_snapshot(now, counts, self.template.signals)

    def unavailable(self) -> str | None:
        return None


# --------------------------------------------------------------------------------------------------
# The scaler, apart from gRPC
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One run of the policy for one ScaledObject, and what KEDA is told."""

    key: ScaledObjectKey
    time_s: float
    decision: Decision
    desired_replicas: int
    """The decision's count, or on a hold the snapshot's ``current_replicas``."""
    seq: int
    """Counts evaluations of this ScaledObject from 1."""

    @property
    def active(self) -> bool:
        return self.desired_replicas > 0


class ScalerMetrics:
    """The scaler's own Prometheus metrics, in a registry of their own (several scalers per process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.desired = Gauge(
            "gpuscale_scaler_desired_replicas",
            "Replicas the policy wants (on a hold: the current count), per ScaledObject.",
            ["scaledobject"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "gpuscale_scaler_decisions",
            "Policy evaluations, by the decision's reason.",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "gpuscale_scaler_errors",
            "Failed evaluations and rejected requests, by kind (temporary, permanent, internal, or the "
            "gRPC status of a rejected request).",
            ["kind"],
            registry=self.registry,
        )

    def observe(self, evaluation: Evaluation) -> None:
        self.desired.labels(scaledobject=str(evaluation.key)).set(evaluation.desired_replicas)
        self.decisions.labels(reason=evaluation.decision.reason.value).inc()

    def error(self, exc: BaseException) -> None:
        self.errors.labels(kind=error_kind(exc)).inc()


def error_kind(exc: BaseException) -> str:
    """``temporary``, ``permanent``, a rejected request's gRPC status (``invalid_argument``), or ``internal``."""
    if isinstance(exc, _Abort):
        return str(exc.code.name).lower()
    if isinstance(exc, TemporaryError):
        return "temporary"
    if isinstance(exc, PermanentError):
        return "permanent"
    return "internal"


class TooManyScaledObjects(PermanentError):
    """More distinct ScaledObjects asked than ``max_scaled_objects`` allows."""


@dataclass
class _Entry:
    source: Observed
    state: Any
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    evaluation: Evaluation | None = None
    due: float = 0.0


class PolicyScaler:
    """Runs one policy for any number of ScaledObjects, each with its own state and cached decision."""

    def __init__(
        self,
        policy: Policy[Any],
        sources: SourceFactory,
        clock: Clock,
        *,
        default_sync_period_s: float = 15.0,
        max_scaled_objects: int = 1000,
        metrics: ScalerMetrics | None = None,
    ) -> None:
        if not default_sync_period_s > 0:
            raise ValueError("default_sync_period_s must be > 0")
        self.policy = policy
        self.period_s = float(policy.sync_period_s or default_sync_period_s)
        self._sources = sources
        self._clock = clock
        self._max = max_scaled_objects
        self._entries: dict[ScaledObjectKey, _Entry] = {}
        self._changed = threading.Condition()
        self._closed = False
        self.metrics = metrics if metrics is not None else ScalerMetrics()

    @property
    def closed(self) -> bool:
        return self._closed

    def scaled_objects(self) -> list[ScaledObjectKey]:
        with self._changed:
            return list(self._entries)

    def _entry(self, key: ScaledObjectKey) -> _Entry:
        with self._changed:
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self._max:
                    raise TooManyScaledObjects(
                        f"{key}: this scaler already serves {self._max} ScaledObjects (max_scaled_objects)"
                    )
                entry = _Entry(source=self._sources(key), state=self.policy.initial_state())
                self._entries[key] = entry
            return entry

    def evaluate(self, key: ScaledObjectKey) -> Evaluation:
        """The decision for ``key``: cached within an evaluation period, else the policy runs once."""
        try:
            return self._evaluate(key)
        except Exception as exc:
            self.metrics.error(exc)
            raise

    def _evaluate(self, key: ScaledObjectKey) -> Evaluation:
        entry = self._entry(key)
        with entry.lock:
            now_mono = self._clock.monotonic()
            if entry.evaluation is not None and now_mono < entry.due:
                return entry.evaluation
            now = self._clock.now()
            counts = entry.source.replicas.counts(now)
            snapshot = entry.source.metrics.snapshot(now, self.policy.signals, counts)
            decision, state = self.policy.decide(snapshot, entry.state)
            desired = (
                snapshot.current_replicas if decision.desired_replicas is None else decision.desired_replicas
            )
            previous = entry.evaluation
            seq = previous.seq + 1 if previous is not None else 1
            evaluation = Evaluation(key, snapshot.time_s, decision, desired, seq)
            entry.state = state
            entry.evaluation = evaluation
            entry.due = now_mono + self.period_s
            self.metrics.observe(evaluation)
        # A change of count or reason at INFO; a repeat (one per period per ScaledObject) at DEBUG.
        changed = previous is None or (previous.desired_replicas, previous.decision.reason) != (
            desired,
            decision.reason,
        )
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "%s: %s %d replicas (current %d, ready %d): %s%s",
            key,
            "hold at" if decision.is_hold else "desired",
            desired,
            snapshot.current_replicas,
            snapshot.ready,
            decision.reason.value,
            f": {decision.message}" if decision.message else "",
        )
        with self._changed:
            self._changed.notify_all()
        return evaluation

    def latest(self, key: ScaledObjectKey) -> Evaluation | None:
        with self._changed:
            entry = self._entries.get(key)
        return None if entry is None else entry.evaluation

    def wait_for_change(self, key: ScaledObjectKey, after_seq: int, timeout_s: float) -> None:
        """Block until ``key`` has an evaluation newer than ``after_seq``, the scaler closes, or timeout."""

        def changed() -> bool:
            latest = self.latest(key)
            return self._closed or (latest is not None and latest.seq != after_seq)

        with self._changed:
            self._changed.wait_for(changed, timeout=timeout_s)

    def close(self) -> None:
        """Wake and end every waiting stream."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


# --------------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------------


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """Map our errors onto gRPC status codes (KEDA counts any error toward its fallback)."""
    if isinstance(exc, _Abort):
        return exc.code, exc.details
    if isinstance(exc, TooManyScaledObjects):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, TemporaryError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, PermanentError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    log.exception("internal error in the KEDA scaler")
    return grpc.StatusCode.INTERNAL, f"{exc.__class__.__name__}: {exc}"


class ExternalScalerServicer:
    """KEDA's ``externalscaler.ExternalScaler`` service over a :class:`PolicyScaler`.

    ``stream_wait_s`` bounds how long a ``StreamIsActive`` stream sleeps between looks at the policy
    (it also wakes on every evaluation and when the server stops).
    """

    def __init__(self, scaler: PolicyScaler, *, stream_wait_s: float | None = None) -> None:
        self.scaler = scaler
        self.stream_wait_s = stream_wait_s if stream_wait_s is not None else scaler.period_s

    def _key(self, ref: Any) -> ScaledObjectKey:
        if not ref.name or not ref.namespace:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "ScaledObjectRef needs a name and a namespace")
        metadata: Mapping[str, str] = ref.scalerMetadata
        unknown = sorted(set(metadata) - METADATA_KEYS)
        if unknown:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{ref.namespace}/{ref.name}: unknown trigger metadata key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(METADATA_KEYS))}",
            )
        asked = metadata.get("policy")
        if asked is not None and asked != self.scaler.policy.name:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{ref.namespace}/{ref.name}: trigger metadata policy = {asked!r}, but this scaler runs "
                f"policy {self.scaler.policy.name!r}",
            )
        return ScaledObjectKey(ref.namespace, ref.name)

    def _evaluate(self, ref: Any) -> Evaluation:
        return self.scaler.evaluate(self._key(ref))

    def _abort(self, context: Any, exc: Exception) -> None:
        if isinstance(exc, _Abort):  # evaluation failures are counted by the scaler itself
            self.scaler.metrics.error(exc)
        code, details = _status_of(exc)
        context.abort(code, details)

    def IsActive(self, request: Any, context: Any) -> Any:
        try:
            return pb.IsActiveResponse(result=self._evaluate(request).active)
        except Exception as exc:
            self._abort(context, exc)
            raise  # not reached: abort raises

    def StreamIsActive(self, request: Any, context: Any) -> Iterator[Any]:
        """Push activity on every new evaluation; end when the server stops or the client leaves."""
        try:
            key = self._key(request)
            last = 0
            while not self.scaler.closed and context.is_active():
                evaluation = self.scaler.evaluate(key)
                if evaluation.seq != last:
                    last = evaluation.seq
                    yield pb.IsActiveResponse(result=evaluation.active)
                self.scaler.wait_for_change(key, last, self.stream_wait_s)
        except Exception as exc:
            self._abort(context, exc)

    def GetMetricSpec(self, request: Any, context: Any) -> Any:
        try:
            self._key(request)
            return pb.GetMetricSpecResponse(
                metricSpecs=[pb.MetricSpec(metricName=METRIC_NAME, targetSize=1, targetSizeFloat=1.0)]
            )
        except Exception as exc:
            self._abort(context, exc)
            raise

    def GetMetrics(self, request: Any, context: Any) -> Any:
        try:
            if request.metricName != METRIC_NAME:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"unknown metric {request.metricName!r}; this scaler serves {METRIC_NAME!r}",
                )
            evaluation = self._evaluate(request.scaledObjectRef)
            desired = evaluation.desired_replicas
            value = pb.MetricValue(
                metricName=METRIC_NAME, metricValue=desired, metricValueFloat=float(desired)
            )
            return pb.GetMetricsResponse(metricValues=[value])
        except Exception as exc:
            self._abort(context, exc)
            raise

    def StreamMetricSpec(self, request: Any, context: Any) -> Iterator[Any]:
        # The spec never changes (the desired count over a target of 1), so KEDA's pull suffices:
        # Unimplemented tells it so, and it stops asking.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the metric spec is fixed; use GetMetricSpec")
        yield from ()


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the server's certificate and key, and optionally a CA that client certs must chain to."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


class KedaScalerServer:
    """The gRPC server: the external scaler, grpc.health.v1 (SERVING while up), a background ticker."""

    def __init__(
        self,
        scaler: PolicyScaler,
        *,
        host: str = "0.0.0.0",
        port: int = 9090,
        tls: TlsFiles | None = None,
        max_workers: int = 16,
        background_ticks: bool = True,
        stream_wait_s: float | None = None,
        metrics_host: str | None = None,
        metrics_port: int | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """``metrics_port`` (0: a free one) serves the scaler's metrics on ``metrics_host`` (default
        ``host``); None serves none. ``on_stop`` runs last in :meth:`stop` (closes the source's client).
        """
        self.scaler = scaler
        self.servicer = ExternalScalerServicer(scaler, stream_wait_s=stream_wait_s)
        self.health = health.HealthServicer()
        self._host = host
        self._requested_port = port
        self._tls = tls
        self._background = background_ticks
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.port: int | None = None
        self._metrics_host = metrics_host if metrics_host is not None else host
        self._metrics_port = metrics_port
        self._metrics_http: Any = None
        self.metrics_port: int | None = None
        self._on_stop = on_stop

    def start(self) -> int:
        """Bind, start serving and return the bound port (``port=0`` picks a free one)."""
        pb_grpc.add_ExternalScalerServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        address = f"{self._host}:{self._requested_port}"
        try:
            if self._tls is None:
                port = self._server.add_insecure_port(address)
            else:
                creds = grpc.ssl_server_credentials(
                    [(self._tls.key, self._tls.cert)],
                    root_certificates=self._tls.client_ca,
                    require_client_auth=self._tls.client_ca is not None,
                )
                port = self._server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise PermanentError(f"cannot listen on {address}: {exc}") from None
        if not port:
            raise PermanentError(f"cannot listen on {address}")
        self.port = int(port)
        if self._metrics_port is not None:
            try:
                self._metrics_http, _thread = start_http_server(
                    self._metrics_port, addr=self._metrics_host, registry=self.scaler.metrics.registry
                )
            except OSError as exc:
                self._server.stop(None)
                raise PermanentError(
                    f"cannot serve metrics on {self._metrics_host}:{self._metrics_port}: {exc}"
                ) from None
            self.metrics_port = int(self._metrics_http.server_port)
        self._server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self._background:
            self._ticker = threading.Thread(target=self._tick, name="keda-scaler-ticker", daemon=True)
            self._ticker.start()
        log.info(
            "KEDA external scaler for policy %r on %s:%d (%s), evaluating every %g s",
            self.scaler.policy.name,
            self._host,
            self.port,
            "TLS" if self._tls else "plaintext",
            self.scaler.period_s,
        )
        return self.port

    def _tick(self) -> None:
        # Tick-counting policies need one evaluation per period even when KEDA calls less often.
        while not self._stop.wait(self.scaler.period_s):
            for key in self.scaler.scaled_objects():
                try:
                    self.scaler.evaluate(key)
                except Exception as exc:  # the loop never dies; the next call reports the error
                    log.warning("%s: evaluation failed: %s", key, exc)

    def stop(self, grace_s: float = 2.0) -> None:
        """Report NOT_SERVING, end the streams, stop the ticker and the server (bounded by ``grace_s``)."""
        self.health.enter_graceful_shutdown()
        self._stop.set()
        self.scaler.close()
        self._server.stop(grace_s).wait(timeout=grace_s + 5.0)
        if self._ticker is not None:
            self._ticker.join(timeout=grace_s + 5.0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        if self._on_stop is not None:
            on_stop, self._on_stop = self._on_stop, None
            on_stop()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (or ``timeout_s``); True when it stopped."""
        return bool(self._server.wait_for_termination(timeout=timeout_s))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class StaticSignal(StrictModel):
    """One signal value of a static snapshot."""

    metric: Metric = Field(description="What the signal measures (gpuscale's metric names).")
    aggregation: Aggregation = Field(Aggregation.POD_MEAN, description="How pods combine. Default pod_mean.")
    window_s: float = Field(gt=0, description="The window the policy asks for, seconds.")
    value: float | None = Field(description="The value; null means no data.")
    age_s: float = Field(0.0, ge=0, description="Age of the newest sample behind it, seconds. Default 0.")


class StaticSnapshot(StrictModel):
    """Replica counts and signal values that every evaluation sees."""

    current_replicas: int = Field(ge=0, description="The scale target's spec.replicas.")
    ready: int | None = Field(None, ge=0, description="Ready pods; default current_replicas.")
    starting: int = Field(0, ge=0, description="Scheduled, not Ready yet. Default 0.")
    pending: int = Field(0, ge=0, description="Waiting for a GPU. Default 0.")
    signals: tuple[StaticSignal, ...] = Field((), description="Signal values; match the policy's signals.")

    def build(self) -> MetricsSnapshot:
        signals = {
            SignalSpec(s.metric, s.window_s, s.aggregation): (
                SignalValue(s.value, s.age_s)
                if s.value is not None
                else SignalValue.missing("no data in the static source")
            )
            for s in self.signals
        }
        return MetricsSnapshot(
            time_s=0.0,
            current_replicas=self.current_replicas,
            ready=self.current_replicas if self.ready is None else self.ready,
            starting=self.starting,
            pending=self.pending,
            signals=signals,
        )


class StaticSourceConfig(StrictModel):
    """A fixed snapshot, for tests and dry runs."""

    kind: Literal["static"] = "static"
    snapshot: StaticSnapshot


class TlsConfig(StrictModel):
    """Serve TLS; with ``client_ca_file`` also require client certificates signed by that CA."""

    cert_file: Path = Field(description="PEM server certificate (chain); relative to the config file.")
    key_file: Path = Field(description="PEM private key of the certificate; relative to the config file.")
    client_ca_file: Path | None = Field(None, description="PEM CA bundle for client certs (mutual TLS).")


class KedaScalerConfig(StrictModel):
    """The ``gpuscale keda-scaler --config`` file."""

    policy: str | dict[str, Any] = Field(
        description="A preset name, a policy YAML file (relative to this file), or an inline policy."
    )
    source: Annotated[StaticSourceConfig | PrometheusSourceConfig, Field(discriminator="kind")] = Field(
        description="Where snapshots come from: kind static (a fixed snapshot) or prometheus."
    )
    default_sync_period_s: float = Field(
        15.0,
        gt=0,
        description="Evaluation period for a policy with no sync period of its own. Default 15 s "
        "(the HPA's --horizontal-pod-autoscaler-sync-period).",
    )
    max_scaled_objects: int = Field(1000, ge=1, description="Most ScaledObjects served. Default 1000.")
    max_workers: int = Field(
        16,
        ge=2,
        description="gRPC worker threads. Each open StreamIsActive (external-push trigger) holds one. "
        "Default 16.",
    )
    tls: TlsConfig | None = Field(None, description="Serve TLS (KEDA: enableTLS / caCert). Default off.")


def load_keda_scaler_config(path: str | Path) -> KedaScalerConfig:
    """Read and validate a scaler config file; ConfigError naming the key otherwise."""
    return validate(KedaScalerConfig, load_yaml(path), str(path))


def build_policy(config: KedaScalerConfig, config_path: str | Path) -> Policy[Any]:
    """The policy the config names: a preset, a file beside the config, or inline."""
    base = Path(config_path).parent
    return registry.resolve_policy(config.policy, key="policy", source=str(config_path), base=base).build()


def _read(path: Path | None, base: Path, source: str, key: str) -> bytes | None:
    if path is None:
        return None
    full = path if path.is_absolute() else base / path
    try:
        return full.read_bytes()
    except OSError as exc:
        raise ConfigError(source, key, str(path), f"cannot be read ({exc.strerror or exc})") from None


def build_server(
    config: KedaScalerConfig,
    config_path: str | Path,
    clock: Clock,
    *,
    host: str,
    port: int,
    metrics_host: str | None = None,
    metrics_port: int | None = None,
) -> KedaScalerServer:
    """Everything ``gpuscale keda-scaler`` runs, from its config (files read here, nothing started)."""
    source_name = str(config_path)
    policy = build_policy(config, config_path)
    sources: SourceFactory
    on_stop: Callable[[], None] | None = None
    if isinstance(config.source, PrometheusSourceConfig):
        prometheus = config.source
        client = build_client(prometheus, config_path)  # one connection pool for every ScaledObject
        on_stop = client.close

        def sources(key: ScaledObjectKey) -> Observed:
            source, replicas = source_for(prometheus, client, namespace=key.namespace, name=key.name)
            return Observed(replicas, source)

    else:
        static = StaticSource(config.source.snapshot.build())

        def sources(key: ScaledObjectKey) -> Observed:
            return Observed(static, static)

    scaler = PolicyScaler(
        policy,
        sources,
        clock,
        default_sync_period_s=config.default_sync_period_s,
        max_scaled_objects=config.max_scaled_objects,
    )
    tls = None
    if config.tls is not None:
        base = Path(config_path).parent
        cert = _read(config.tls.cert_file, base, source_name, "tls.cert_file")
        key = _read(config.tls.key_file, base, source_name, "tls.key_file")
        ca = _read(config.tls.client_ca_file, base, source_name, "tls.client_ca_file")
        if cert is None or key is None:  # pragma: no cover - both fields are required
            raise ConfigError(source_name, "tls", MISSING, "cert_file and key_file are required")
        tls = TlsFiles(cert, key, ca)
    return KedaScalerServer(
        scaler,
        host=host,
        port=port,
        tls=tls,
        max_workers=config.max_workers,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        on_stop=on_stop,
    )
