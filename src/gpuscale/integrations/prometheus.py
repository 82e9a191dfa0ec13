"""The Prometheus source: a policy's signals read live through Prometheus' HTTP API.

:class:`PrometheusSource` fulfils each :class:`~gpuscale.policies.base.SignalSpec` with one instant
query (``GET /api/v1/query`` with ``time=now``, so a snapshot is of a stated moment and tests are
deterministic), written by :mod:`gpuscale.integrations.promql` for the configured exporter presets:

* a window becomes ``avg_over_time(series[Ws])`` for a gauge and ``rate(series[Ws])`` for a counter;
* the pod aggregation becomes ``avg`` (pod_mean), ``sum`` (total) or ``max`` over the per-pod series;
* a latency quantile becomes ``histogram_quantile(q, sum by (le) (rate(bucket[Ws]))) * 1000``;
* a per-pod mean of vLLM's KV-cache usage or running/waiting requests also carries each pod's own
  value (``SignalValue.per_pod``, from ``max by (pod) (...)``), which WVA's saturation analysis reads.

Worked example: ``SignalSpec(queue_length, 60 s, total)`` with the ``triton`` preset, namespace
``ml`` and pods ``llm-.*`` asks
``sum(avg_over_time(nv_inference_pending_request_count{namespace="ml",pod=~"llm-.*"}[60s]))``; two
pods that averaged 3 and 4 waiting requests over the last minute give 7.

**Strict parsing, per signal.** An HTTP error, a timeout, a non-``success`` status, a malformed
body, an empty result, NaN or ±Inf, or several series where one is expected make *that* signal
``SignalValue(None, reason=...)``; the other signals are queried regardless, and nothing raises. A
signal with no value is never 0: "no pods report a queue" and "the queue is empty" differ.

**Age.** A value's ``age_s`` is ``now`` minus the timestamp of the newest raw sample behind it,
found with a second query, ``max(timestamp(series{...}))`` (``timestamp()`` of a plain selector is
the sample's scrape time). When the series went stale (the target vanished: Prometheus writes
staleness markers) while the window still holds samples, the age is reported as the window length,
an upper bound, with a reason saying so. A per-signal override with no ``age_query`` reads its age
from the preset's series when the preset serves that metric.

**Replica counts** are the caller's (the live controller's Kubernetes target counts pods from the
API server). The KEDA scaler has no Kubernetes client, so :class:`KubeStateMetricsReplicas` reads them from
kube-state-metrics through the same Prometheus (``kube_deployment_spec_replicas``,
``..._status_replicas_ready``, ``..._status_replicas`` and ``kube_pod_status_phase``), or takes fixed
counts from the config (``replicas.kind: static``). Without replica counts no snapshot can be made,
so a failure there raises :class:`~gpuscale._core.errors.TemporaryError` (KEDA then counts a failure
toward its fallback).

Queries run one after another, each bounded by ``timeout_s`` (per phase of the HTTP exchange, and
passed to Prometheus as its own evaluation ``timeout``).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from gpuscale._core.errors import ConfigError, TemporaryError
from gpuscale.config.loading import StrictModel
from gpuscale.integrations import promql
from gpuscale.policies.base import Metric, MetricsSnapshot, PodSample, SignalSpec, SignalValue
from gpuscale.policies.ports import FixedReplicas, ReplicaCounts, ReplicaReader, make_snapshot

log = logging.getLogger("gpuscale.prometheus")

_PLACEHOLDERS = frozenset({"labels", "window", "agg"})


# --------------------------------------------------------------------------------------------------
# The HTTP API
# --------------------------------------------------------------------------------------------------


class QueryFailed(Exception):
    """A query gave no usable answer; ``str(exc)`` is the reason a missing signal carries."""


class PrometheusUnreachable(QueryFailed):
    """Prometheus itself did not answer (refused, reset, timed out, 5xx) -- unlike an answer that holds
    no usable series, which is what a workload scaled to zero or a new one looks like."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's answer."""

    labels: Mapping[str, str]
    time_s: float
    value: float


class _BearerTokenFile(httpx.Auth):
    """``Authorization: Bearer <file contents>``, the file re-read per request (tokens rotate)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.path.read_text(encoding='utf-8').strip()}"
        yield request


class PrometheusClient:
    """Instant queries against one Prometheus (or a compatible API: Thanos, Mimir, VictoriaMetrics).

    ``query`` raises :class:`QueryFailed` with the reason on every kind of failure; it never raises
    anything else for a bad server, a bad network or a bad answer.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        bearer_token_file: Path | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_file: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        auth: httpx.Auth | None = None
        if bearer_token_file is not None:
            auth = _BearerTokenFile(bearer_token_file)
        elif basic_auth is not None:
            auth = httpx.BasicAuth(*basic_auth)
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._http = httpx.Client(
            auth=auth, verify=verify, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def query(self, promql_text: str, at_s: float) -> list[Sample]:
        """Every series of ``promql_text`` evaluated at ``at_s`` (epoch seconds)."""
        params = {"query": promql_text, "time": f"{at_s:.3f}", "timeout": f"{self.timeout_s:g}"}
        try:
            response = self._http.get(f"{self.url}/api/v1/query", params=params)
        except httpx.TimeoutException:
            raise PrometheusUnreachable(f"timed out after {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise PrometheusUnreachable(f"cannot reach {self.url}: {exc.__class__.__name__}: {exc}") from None
        except OSError as exc:  # the bearer token file could not be read
            raise QueryFailed(f"cannot authenticate: {exc}") from None
        if response.status_code >= 500:  # overloaded, timed out inside, or a proxy with no upstream
            raise PrometheusUnreachable(f"HTTP {response.status_code} from {self.url}: {response.text[:200]}")
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise QueryFailed(f"HTTP {response.status_code}: the answer is not a JSON object")
        if body.get("status") != "success":
            detail = f"{body.get('errorType', '?')}: {body.get('error', '?')}"
            raise QueryFailed(f"HTTP {response.status_code}: status {body.get('status')!r} ({detail})")
        if response.status_code != 200:
            raise QueryFailed(f"HTTP {response.status_code}")
        return _samples(body.get("data"))


def _number(pair: Any) -> tuple[float, float]:
    """``[<unix time>, "<value>"]`` -> (time, value); Prometheus sends values as strings."""
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
        raise QueryFailed(f"malformed sample {pair!r}")
    try:
        return float(pair[0]), float(pair[1])
    except (TypeError, ValueError):
        raise QueryFailed(f"malformed sample {pair!r}") from None


def _samples(data: Any) -> list[Sample]:
    if not isinstance(data, dict):
        raise QueryFailed("malformed answer: no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        t, v = _number(result)
        return [Sample({}, t, v)]
    if kind != "vector":
        raise QueryFailed(f"the query returned a {kind!r}, not an instant vector")
    if not isinstance(result, list):
        raise QueryFailed("malformed answer: result is not a list")
    out = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric", {}), dict):
            raise QueryFailed(f"malformed series {item!r}")
        t, v = _number(item.get("value"))
        out.append(Sample({str(k): str(x) for k, x in item.get("metric", {}).items()}, t, v))
    return out


def _series_name(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def one_value(samples: list[Sample]) -> Sample:
    """The single finite sample of an answer that must hold exactly one series."""
    if not samples:
        raise QueryFailed("empty result (no series match)")
    if len(samples) > 1:
        shown = ", ".join(_series_name(s.labels) for s in samples[:3])
        more = f" and {len(samples) - 3} more" if len(samples) > 3 else ""
        raise QueryFailed(f"{len(samples)} series where one is expected: {shown}{more}")
    sample = samples[0]
    if not math.isfinite(sample.value):
        raise QueryFailed(f"the value is {sample.value} (no data behind it, e.g. 0/0 or no requests)")
    return sample


# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """A hand-written query for a signal; ``$labels``, ``$window``, ``$agg`` are filled in."""

    query: str
    age_query: str | None = None


class PrometheusSource:
    """Fulfils signal specs from Prometheus for one workload (the pods ``labels`` select).

    ``presets`` (first wins) choose which exporter each metric is read from; ``overrides`` replace
    the built-in query of a metric (key: the metric name) or of one signal (key: ``SignalSpec.key``,
    e.g. ``queue_length:total:60s``; it wins over the metric's).
    """

    def __init__(
        self,
        client: PrometheusClient,
        labels: str,
        *,
        presets: tuple[promql.Preset, ...] = promql.ALL_PRESETS,
        overrides: Mapping[str, Override] | None = None,
    ) -> None:
        self.client = client
        self.labels = labels
        self.presets = presets
        self.overrides = dict(overrides or {})
        self.outage: str | None = None

    def queries(self, spec: SignalSpec) -> tuple[str | None, str | None]:
        """(value query, age query) of ``spec``; a None value query: no preset serves the metric."""
        builtin_age = promql.freshness_query(spec.metric, self.labels, self.presets)
        override = self.overrides.get(spec.key) or self.overrides.get(spec.metric.value)
        if override is None:
            return promql.signal_query(spec, self.labels, self.presets), builtin_age
        fill = {
            "labels": self.labels,
            "window": promql.window(spec.window_s),
            "agg": promql.aggregation_fn(spec.aggregation),
        }
        age = Template(override.age_query).substitute(fill) if override.age_query else builtin_age
        return Template(override.query).substitute(fill), age

    def fulfil(self, spec: SignalSpec, now: float) -> SignalValue:
        """One signal; never raises: a failure is a missing value with the reason."""
        value_query, age_query = self.queries(spec)
        if value_query is None:
            return SignalValue.missing(
                f"{spec.key}: none of the presets {', '.join(self.presets)} serves {spec.metric.value}; "
                f"add a preset or a query override"
            )
        try:
            sample = one_value(self.client.query(value_query, now))
        except PrometheusUnreachable as exc:
            self.outage = str(exc)
            log.debug("%s: %s: %s", spec.key, value_query, exc)
            return SignalValue.missing(f"{spec.key}: {exc} [{value_query}]")
        except QueryFailed as exc:
            log.debug("%s: %s: %s", spec.key, value_query, exc)
            return SignalValue.missing(f"{spec.key}: {exc} [{value_query}]")
        age_s, reason = self._age(spec, age_query, now)
        return SignalValue(sample.value, age_s=age_s, reason=reason, per_pod=self._per_pod(spec, now))

    def _per_pod(self, spec: SignalSpec, now: float) -> tuple[PodSample, ...]:
        """Each pod's own value of a per-pod LLM gauge (one more query); empty when the signal has an
        override, is not one of :data:`~gpuscale.integrations.promql.PER_POD_SAMPLE_METRICS`, or the
        query fails (the pod mean still stands). Pods are the ones reporting: all counted ready."""
        if spec.key in self.overrides or spec.metric.value in self.overrides:
            return ()
        text = promql.per_pod_query(spec, self.labels, self.presets)
        if text is None:
            return ()
        try:
            samples = self.client.query(text, now)
        except QueryFailed as exc:
            log.debug("%s per pod: %s: %s", spec.key, text, exc)
            return ()
        pods = sorted(
            (s.labels["pod"], s.value) for s in samples if "pod" in s.labels and math.isfinite(s.value)
        )
        return tuple(PodSample(name, value, ready=True) for name, value in pods)

    def _age(self, spec: SignalSpec, age_query: str | None, now: float) -> tuple[float, str]:
        if age_query is None:
            return math.inf, "the age of this value is unknown (no age query)"
        try:
            newest = one_value(self.client.query(age_query, now)).value
        except QueryFailed as exc:
            # The window still holds samples but the series went stale: at most a window old.
            return spec.window_s, f"the series went stale ({exc}); age at most the window"
        return max(0.0, now - newest), ""

    def signals(self, specs: Iterable[SignalSpec], now: float) -> dict[SignalSpec, SignalValue]:
        """Every spec, each on its own: one failed query never fails the others. Afterwards
        :meth:`unavailable` says whether Prometheus itself failed to answer any of them."""
        self.outage = None
        return {spec: self.fulfil(spec, now) for spec in specs}

    def unavailable(self) -> str | None:
        """Why Prometheus did not answer during the last :meth:`signals` call; None when it did."""
        return self.outage

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        """A snapshot at ``now`` of ``specs`` with the target's replica counts (the
        :class:`~gpuscale.policies.ports.MetricsSource` port)."""
        return make_snapshot(now, counts, self.signals(specs, now))

    def scalar(self, query: str, now: float) -> float:
        """One number, raising :class:`QueryFailed` unless exactly one finite series answers."""
        return one_value(self.client.query(query, now)).value


# --------------------------------------------------------------------------------------------------
# Replica counts for the KEDA scaler
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeStateMetricsReplicas:
    """Replica counts of a Deployment from kube-state-metrics, through the same Prometheus.

    ``current`` is ``kube_deployment_spec_replicas``; ``ready`` ``..._status_replicas_ready``;
    ``pending`` counts the selected pods in phase Pending (``kube_pod_status_phase``; none found is 0);
    ``starting`` is the rest of ``..._status_replicas`` (pods that exist, are scheduled and not Ready).
    """

    namespace: str
    deployment: str
    pod_labels: str
    source: PrometheusSource

    def _query(self, name: str) -> str:
        sel = promql.matchers(self.namespace, None, deployment=self.deployment)
        return f"{name}{{{sel}}}"

    def counts(self, now: float) -> ReplicaCounts:
        """The Deployment's counts at ``now`` (the :class:`~gpuscale.policies.ports.ReplicaReader`
        port); TemporaryError when kube-state-metrics has no answer."""
        source = self.source
        try:
            current = source.scalar(self._query("kube_deployment_spec_replicas"), now)
            ready = source.scalar(self._query("kube_deployment_status_replicas_ready"), now)
        except QueryFailed as exc:
            raise TemporaryError(
                f"replica counts of deployment {self.namespace}/{self.deployment} from "
                f"kube-state-metrics: {exc}"
            ) from None
        try:
            total = source.scalar(self._query("kube_deployment_status_replicas"), now)
        except QueryFailed:
            total = ready
        pending_query = f'sum(kube_pod_status_phase{{{self.pod_labels},phase="Pending"}})'
        try:
            pending = source.scalar(pending_query, now)
        except QueryFailed:
            pending = 0.0
        starting = max(0.0, total - ready - pending)
        return ReplicaCounts(int(current), int(ready), int(starting), int(pending))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class BasicAuthConfig(StrictModel):
    """HTTP basic authentication; the password is read from a file (a mounted Secret)."""

    username: str = Field(min_length=1, description="The user name.")
    password_file: Path = Field(description="File holding the password; relative to the config file.")


class PodSelectorConfig(StrictModel):
    """Which series belong to the workload. ``$namespace`` and ``$name`` are the ScaledObject's."""

    namespace: str | None = Field(
        "$namespace", description="The namespace label; null: any. Default the ScaledObject's namespace."
    )
    pod_regex: str | None = Field(
        "$name-.*", description="A regex on the pod label (RE2, anchored); null: any. Default '$name-.*'."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Further exact label matches (e.g. a relabeled app label)."
    )


class OverrideConfig(StrictModel):
    """A per-signal PromQL override with an optional query for its age."""

    query: str = Field(min_length=1, description="PromQL giving one series; $labels, $window, $agg.")
    age_query: str | None = Field(
        None, description="PromQL giving the newest sample's timestamp; default the preset's."
    )


class KubeStateMetricsReplicasConfig(StrictModel):
    """Replica counts of a Deployment from kube-state-metrics series in the same Prometheus."""

    kind: Literal["kube_state_metrics"] = "kube_state_metrics"
    deployment: str = Field("$name", description="The Deployment's name. Default the ScaledObject's name.")


class StaticReplicasConfig(StrictModel):
    """Fixed replica counts (for trials, or where kube-state-metrics is not scraped)."""

    kind: Literal["static"] = "static"
    current_replicas: int = Field(ge=0, description="The scale target's spec.replicas.")
    ready: int | None = Field(None, ge=0, description="Ready pods; default current_replicas.")
    starting: int = Field(0, ge=0, description="Scheduled, not Ready yet. Default 0.")
    pending: int = Field(0, ge=0, description="Waiting for a GPU. Default 0.")


ReplicasConfig = Annotated[KubeStateMetricsReplicasConfig | StaticReplicasConfig, Field(discriminator="kind")]


class PrometheusSourceConfig(StrictModel):
    """Read the policy's signals from Prometheus (``source.kind: prometheus``)."""

    kind: Literal["prometheus"] = "prometheus"
    url: str = Field(description="Prometheus' base URL, e.g. http://prometheus.monitoring:9090.")
    bearer_token_file: Path | None = Field(
        None, description="File with a bearer token (re-read per request); relative to the config file."
    )
    basic_auth: BasicAuthConfig | None = Field(None, description="HTTP basic authentication.")
    ca_file: Path | None = Field(None, description="PEM CA bundle to verify an https URL with.")
    timeout_s: float = Field(5.0, gt=0, description="Per-query timeout, seconds. Default 5.")
    presets: tuple[promql.Preset, ...] = Field(
        promql.ALL_PRESETS,
        min_length=1,
        description="Exporters to read, first wins where two serve a metric: dcgm, knative, triton, "
        "vllm. Default all four in that order.",
    )
    selector: PodSelectorConfig = Field(default_factory=PodSelectorConfig, description="The pods' series.")
    queries: dict[str, str | OverrideConfig] = Field(
        default_factory=dict,
        description="PromQL overrides keyed by metric (queue_length) or signal (queue_length:total:60s).",
    )
    replicas: ReplicasConfig = Field(
        default_factory=KubeStateMetricsReplicasConfig,
        description="Where replica counts come from. Default kube-state-metrics for the Deployment $name.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("presets")
    @classmethod
    def _unique(cls, presets: tuple[promql.Preset, ...]) -> tuple[promql.Preset, ...]:
        if len(set(presets)) != len(presets):
            raise ValueError("each preset at most once")
        return presets

    @field_validator("queries")
    @classmethod
    def _known_keys(cls, queries: dict[str, str | OverrideConfig]) -> dict[str, str | OverrideConfig]:
        metrics = {m.value for m in Metric}
        for key, override in queries.items():
            if key.split(":", 1)[0] not in metrics:
                raise ValueError(f"{key!r}: not a metric ({', '.join(sorted(metrics))}) or a signal key")
            texts = [override] if isinstance(override, str) else [override.query, override.age_query]
            for text in filter(None, texts):
                for ident in _template_names(text):
                    if ident not in _PLACEHOLDERS:
                        raise ValueError(
                            f"{key!r}: unknown placeholder ${ident}; allowed $labels $window $agg"
                        )
        return queries

    @model_validator(mode="after")
    def _one_auth(self) -> PrometheusSourceConfig:
        if self.bearer_token_file is not None and self.basic_auth is not None:
            raise ValueError("use bearer_token_file or basic_auth, not both")
        return self


def _template_names(text: str) -> set[str]:
    names: set[str] = set()
    for match in Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            raise ValueError(f"a '$' that is no placeholder in {text!r} (write $$ for a literal $)")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def build_client(
    config: PrometheusSourceConfig, config_path: str | Path, key: str = "source"
) -> PrometheusClient:
    """The HTTP client a config describes (secrets read here; a file that cannot be read: ConfigError
    naming ``key``, the config's key of this block: ``source`` for the scaler, ``prometheus`` for
    the controller)."""
    source = str(config_path)
    base = Path(config_path).parent
    basic = None
    if config.basic_auth is not None:
        path = _resolve(config.basic_auth.password_file, base)
        try:
            basic = (config.basic_auth.username, path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(
                source, f"{key}.basic_auth.password_file", str(path), f"cannot be read ({exc})"
            ) from None
    token = None
    if config.bearer_token_file is not None:
        token = _resolve(config.bearer_token_file, base)
        if not token.is_file():
            raise ConfigError(source, f"{key}.bearer_token_file", str(token), "not a readable file")
    ca = None
    if config.ca_file is not None:
        ca = _resolve(config.ca_file, base)
        try:
            ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(source, f"{key}.ca_file", str(ca), f"not a PEM CA bundle ({exc})") from None
    return PrometheusClient(
        config.url, timeout_s=config.timeout_s, bearer_token_file=token, basic_auth=basic, ca_file=ca
    )


def _overrides(config: PrometheusSourceConfig) -> dict[str, Override]:
    return {
        key: Override(o) if isinstance(o, str) else Override(o.query, o.age_query)
        for key, o in config.queries.items()
    }


def source_for(
    config: PrometheusSourceConfig, client: PrometheusClient, *, namespace: str, name: str
) -> tuple[PrometheusSource, ReplicaReader]:
    """The source of one workload (``$namespace``/``$name`` filled in) and its replica counter."""
    fill = {"namespace": namespace, "name": name}
    sel = config.selector
    ns = None if sel.namespace is None else Template(sel.namespace).safe_substitute(fill)
    pods = None if sel.pod_regex is None else Template(sel.pod_regex).safe_substitute(fill)
    labels = promql.matchers(ns, pods, **sel.labels)
    source = PrometheusSource(client, labels, presets=config.presets, overrides=_overrides(config))
    replicas: ReplicaReader
    if isinstance(config.replicas, StaticReplicasConfig):
        r = config.replicas
        ready = r.current_replicas if r.ready is None else r.ready
        replicas = FixedReplicas(ReplicaCounts(r.current_replicas, ready, r.starting, r.pending))
    else:
        deployment = Template(config.replicas.deployment).safe_substitute(fill)
        replicas = KubeStateMetricsReplicas(ns or namespace, deployment, labels, source)
    return source, replicas
