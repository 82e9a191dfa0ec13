"""The two ports every policy runs through, in the simulator and on a live cluster.

A policy declares the signals it needs (:class:`SignalSpec`); a metrics source (``SimMetricsSource``
in the simulator, ``PrometheusSource`` live) fulfils them in a :class:`MetricsSnapshot`; the policy's
pure ``decide(snapshot, state)`` returns a :class:`Decision` and its next state; a scale target
(``SimScaleTarget`` / ``KubernetesTarget``) applies the decision.

Rules every source keeps:

* a signal with no data is ``value=None`` with a ``reason``; never NaN, never 0;
* every value carries its ``age_s``: how old the newest sample behind it is, so staleness is visible;
* windows are the policy's: the source aggregates over ``window_s`` ending at the newest sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable


class Metric(StrEnum):
    """What a signal measures. Units are in the value names' suffixes."""

    GPU_UTIL = "gpu_util"
    """SM busy time in percent (0-100), as DCGM_FI_DEV_GPU_UTIL reports it; per pod."""
    GPU_MEMORY_UTIL = "gpu_memory_util"
    """GPU framebuffer used / total in percent (DCGM FB_USED / (FB_USED + FB_FREE)); per pod."""
    GPU_MEMORY_USED_GB = "gpu_memory_used_gb"
    """GPU framebuffer used, GB; per pod."""
    CPU_UTIL = "cpu_util"
    """CPU used in percent of the pod's CPU request (what the HPA's Utilization target divides by)."""
    CONCURRENCY = "concurrency"
    """In-flight requests, time-weighted over the window (Knative queue-proxy semantics)."""
    QUEUE_LENGTH = "queue_length"
    """Requests waiting and not yet being processed (Triton pending requests), averaged over scrapes."""
    REQUEST_RATE = "request_rate"
    """Requests per second arriving at the service (counter rate over the window)."""
    LATENCY_P50_MS = "latency_p50_ms"
    LATENCY_P95_MS = "latency_p95_ms"
    LATENCY_P99_MS = "latency_p99_ms"
    """Service-level latency quantiles of requests completed within the window, milliseconds."""
    # ---- LLM serving (token-level engine; vLLM's and DCGM's profiling metrics) ----
    KV_CACHE_USAGE = "kv_cache_usage"
    """KV-cache blocks in use / blocks, 0-1 (vllm:kv_cache_usage_perc), averaged over scrapes; per pod."""
    REQUESTS_RUNNING = "requests_running"
    """Requests in the running batch (vllm:num_requests_running), averaged over scrapes; per pod."""
    REQUESTS_WAITING = "requests_waiting"
    """Requests waiting to be scheduled (vllm:num_requests_waiting), averaged over scrapes; per pod."""
    PROMPT_TOKENS_RATE = "prompt_tokens_rate"
    """Prefill tokens computed per second (rate of vllm:prompt_tokens_total); per pod."""
    GENERATION_TOKENS_RATE = "generation_tokens_rate"
    """Output tokens per second (rate of vllm:generation_tokens_total); per pod."""
    PREEMPTION_RATE = "preemption_rate"
    """Preemptions per second (rate of vllm:num_preemptions_total); per pod."""
    SM_ACTIVE = "sm_active"
    """DCGM_FI_PROF_SM_ACTIVE, 0-1, time-averaged over the window; per pod."""
    SM_OCCUPANCY = "sm_occupancy"
    """DCGM_FI_PROF_SM_OCCUPANCY, 0-1, time-averaged over the window; per pod."""
    DRAM_ACTIVE = "dram_active"
    """DCGM_FI_PROF_DRAM_ACTIVE (memory-bandwidth use), 0-1, time-averaged over the window; per pod."""
    TTFT_P50_MS = "ttft_p50_ms"
    TTFT_P95_MS = "ttft_p95_ms"
    TTFT_P99_MS = "ttft_p99_ms"
    """Time-to-first-token quantiles of requests whose first token came within the window, ms."""
    ITL_P50_MS = "itl_p50_ms"
    ITL_P95_MS = "itl_p95_ms"
    ITL_P99_MS = "itl_p99_ms"
    """Inter-token latency quantiles of tokens emitted within the window, ms."""


PER_POD_METRICS = frozenset(
    {
        Metric.GPU_UTIL,
        Metric.GPU_MEMORY_UTIL,
        Metric.GPU_MEMORY_USED_GB,
        Metric.CPU_UTIL,
        Metric.CONCURRENCY,
        Metric.QUEUE_LENGTH,
        Metric.REQUEST_RATE,
        Metric.KV_CACHE_USAGE,
        Metric.REQUESTS_RUNNING,
        Metric.REQUESTS_WAITING,
        Metric.PROMPT_TOKENS_RATE,
        Metric.GENERATION_TOKENS_RATE,
        Metric.PREEMPTION_RATE,
        Metric.SM_ACTIVE,
        Metric.SM_OCCUPANCY,
        Metric.DRAM_ACTIVE,
    }
)
LATENCY_METRICS = frozenset({Metric.LATENCY_P50_MS, Metric.LATENCY_P95_MS, Metric.LATENCY_P99_MS})
TOKEN_LATENCY_METRICS = frozenset(
    {
        Metric.TTFT_P50_MS,
        Metric.TTFT_P95_MS,
        Metric.TTFT_P99_MS,
        Metric.ITL_P50_MS,
        Metric.ITL_P95_MS,
        Metric.ITL_P99_MS,
    }
)
"""Service-level token latencies (the token-level engine only); their aggregation is ignored."""
LLM_METRICS = TOKEN_LATENCY_METRICS | {
    Metric.KV_CACHE_USAGE,
    Metric.REQUESTS_RUNNING,
    Metric.REQUESTS_WAITING,
    Metric.PROMPT_TOKENS_RATE,
    Metric.GENERATION_TOKENS_RATE,
    Metric.PREEMPTION_RATE,
    Metric.SM_ACTIVE,
    Metric.SM_OCCUPANCY,
    Metric.DRAM_ACTIVE,
}
"""Metrics only an LLM pod (a profile with an ``llm:`` block) exports."""


class Aggregation(StrEnum):
    """How per-pod series become one number."""

    POD_MEAN = "pod_mean"
    """Mean over the pods that report the metric (the HPA's per-pod average)."""
    TOTAL = "total"
    """Sum over all pods (the KPA's observed concurrency, KEDA's queue length)."""
    MAX = "max"
    """The busiest pod."""


@dataclass(frozen=True, order=True)
class SignalSpec:
    """One signal a policy needs: a metric, aggregated over pods, averaged over a window.

    Latency metrics are service-level quantiles; their aggregation is ignored.
    """

    metric: Metric
    window_s: float
    aggregation: Aggregation = Aggregation.POD_MEAN

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s!r}")

    @property
    def key(self) -> str:
        return f"{self.metric.value}:{self.aggregation.value}:{self.window_s:g}s"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class PodSample:
    """One pod's value of a per-pod signal, with the facts the HPA's pod grouping needs."""

    name: str
    value: float | None
    ready: bool
    running: bool = True
    """False for a Pending pod (not scheduled / containers not started)."""
    ready_for_s: float = 0.0
    """How long the pod has been Ready (0 when not ready); the HPA's CPU initialization rules use it."""


@dataclass(frozen=True)
class SignalValue:
    """The fulfilment of one :class:`SignalSpec`.

    ``value`` is ``None`` when there is no data (``reason`` says why); ``age_s`` is the age of the
    newest sample behind the value (``math.inf`` when there is none).
    """

    value: float | None
    age_s: float = 0.0
    reason: str = ""
    per_pod: tuple[PodSample, ...] = ()

    def __post_init__(self) -> None:
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError("a SignalValue is None when there is no data, never NaN or infinite")

    @staticmethod
    def missing(reason: str, age_s: float = math.inf) -> SignalValue:
        return SignalValue(value=None, age_s=age_s, reason=reason)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything a policy may look at, taken at ``time_s``.

    Replica counts are of the scale target's pods: ``current_replicas`` is the target's spec (what was
    last asked for); ``ready`` serve traffic; ``starting`` are scheduled but not Ready yet; ``pending``
    wait for a GPU; ``draining`` finish in-flight work before they go; ``standby`` are loaded warm-pool
    pods outside the Service.
    """

    time_s: float
    current_replicas: int
    ready: int
    starting: int = 0
    pending: int = 0
    draining: int = 0
    standby: int = 0
    standby_target: int = 0
    pending_nodes: int = 0
    signals: Mapping[SignalSpec, SignalValue] = field(default_factory=dict)

    def get(self, spec: SignalSpec) -> SignalValue:
        """The value for ``spec``; a source that did not fulfil it yields a missing value."""
        found = self.signals.get(spec)
        if found is None:
            return SignalValue.missing(f"signal {spec.key} was not collected")
        return found

    def value(self, spec: SignalSpec) -> float | None:
        return self.get(spec).value


class Reason(StrEnum):
    """Why a decision came out as it did (HPA condition reasons where they exist)."""

    DESIRED_WITHIN_RANGE = "DesiredWithinRange"
    WITHIN_TOLERANCE = "WithinTolerance"
    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    SCALE_UP_LIMIT = "ScaleUpLimit"
    SCALE_DOWN_LIMIT = "ScaleDownLimit"
    """A rate limit held the change back (the HPA's ScalingLimited condition reasons; also Knative's
    max scale-up/down rates and the safety tail's max step)."""
    SCALE_UP_STABILIZED = "ScaleUpStabilized"
    SCALE_DOWN_STABILIZED = "ScaleDownStabilized"
    TOO_FEW_REPLICAS = "TooFewReplicas"
    TOO_MANY_REPLICAS = "TooManyReplicas"
    CLAMPED_TO_MIN = "ClampedToMin"
    CLAMPED_TO_MAX = "ClampedToMax"
    NO_DATA = "NoData"
    STALE_DATA = "StaleData"
    PARTIAL_DATA = "PartialData"
    PANIC_MODE = "PanicMode"
    SCALE_UP_PANIC = "ScaleUpPanic"
    SCALE_TO_ZERO = "ScaleToZero"
    SCALE_FROM_ZERO = "ScaleFromZero"
    SCALE_TO_ZERO_GRACE = "ScaleToZeroGrace"
    COOLDOWN = "Cooldown"
    ACTIVATION = "Activation"
    FALLBACK = "Fallback"
    DELAY_PENDING = "DelayPending"
    PREDICTED = "Predicted"
    WARM_POOL_PROMOTE = "WarmPoolPromote"
    STATIC = "Static"
    SCALING_DISABLED = "ScalingDisabled"
    GPU_BUDGET = "GpuBudget"
    """The safety block's GPU budget lowered the count."""
    SCHEDULED = "Scheduled"
    """A schedule window of the safety block raised the minimum or lowered the maximum."""


@dataclass(frozen=True)
class Decision:
    """Desired replicas, or hold (``desired_replicas is None``), with a reason and a message.

    ``standby_replicas`` (warm-pool policies only) asks the target to keep that many loaded pods
    outside the Service; ``None`` leaves the standby pool as it is.

    ``placeholder_pods`` asks for that many low-priority placeholder ("pause") pods, each requesting
    what a serving pod requests (the cluster over-provisioner pattern): they hold spare GPUs on nodes
    the node autoscaler keeps up for them, and a serving pod that finds no free GPU preempts one at
    once. ``None`` leaves them as they are. Both worlds apply it: the simulator's placeholders, and
    live the over-provisioner Deployment that ``gpuscale manifests --format headroom`` renders, scaled
    by ``gpuscale run``.
    """

    desired_replicas: int | None
    reason: Reason
    message: str = ""
    standby_replicas: int | None = None
    placeholder_pods: int | None = None
    limits: tuple[str, ...] = ()
    """The safety stages that changed the policy's count, in order (``NoData``, ``TooManyReplicas``,
    ``ScaleUpLimit``, ``GpuBudget``, ``Scheduled``); empty when none did."""

    def __post_init__(self) -> None:
        if self.desired_replicas is not None and self.desired_replicas < 0:
            raise ValueError("desired_replicas must be >= 0")
        if self.standby_replicas is not None and self.standby_replicas < 0:
            raise ValueError("standby_replicas must be >= 0")
        if self.placeholder_pods is not None and self.placeholder_pods < 0:
            raise ValueError("placeholder_pods must be >= 0")

    @property
    def is_hold(self) -> bool:
        return self.desired_replicas is None

    @staticmethod
    def hold(reason: Reason, message: str = "") -> Decision:
        return Decision(desired_replicas=None, reason=reason, message=message)


S = TypeVar("S")


@runtime_checkable
class Policy(Protocol[S]):
    """A pure autoscaling policy: everything gpuscale reads from a policy is on this protocol.

    ``decide`` must be deterministic, read no clock and draw no randomness of its own; time comes in
    ``snapshot.time_s``, memory lives in the explicit immutable ``state``.
    :func:`gpuscale.policies.conformance.check_policy` checks a policy against these rules.
    """

    @property
    def name(self) -> str: ...

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        """The signals this policy reads; the source fulfils exactly these."""
        ...

    @property
    def signal_keys(self) -> Mapping[SignalSpec, str]:
        """Where each signal comes from in the policy's config (``metrics[0].window_s``), for errors
        about a signal; may be empty."""
        ...

    @property
    def sync_period_s(self) -> float | None:
        """The policy's own control tick (HPA 15 s, KPA 2 s), or None to use the scenario's."""
        ...

    @property
    def max_signal_age_s(self) -> float | None:
        """A signal older than this makes the policy hold (``StaleData``); None: the policy has no
        such limit (it reads no signal)."""
        ...

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        """``(min, max)`` of the counts it decides (max None: unbounded); a non-hold decision is
        always within them."""
        ...

    @property
    def initial_replicas(self) -> int | None:
        """A fixed-size policy's count, which the deployment already has when a run starts (no
        scale-up from the scenario's initial replicas); None for every adaptive policy."""
        ...

    def initial_state(self) -> S: ...

    def decide(self, snapshot: MetricsSnapshot, state: S) -> tuple[Decision, S]: ...


class Delegating:
    """A policy wrapper's declarations, forwarded to the policy it wraps (``self.inner``): a wrapper
    (the safety tail, the warm pool, a recorder in a test) overrides only what it changes."""

    inner: Policy[Any]

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return self.inner.signals

    @property
    def signal_keys(self) -> Mapping[SignalSpec, str]:
        return self.inner.signal_keys

    @property
    def sync_period_s(self) -> float | None:
        return self.inner.sync_period_s

    @property
    def max_signal_age_s(self) -> float | None:
        return self.inner.max_signal_age_s

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return self.inner.replica_bounds

    @property
    def initial_replicas(self) -> int | None:
        return self.inner.initial_replicas


class ReadsNoSignals:
    """The :class:`Policy` declarations of a policy that reads no metric (a fixed fleet, a plan given
    in advance): no signals, so none can be missing or stale."""

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        return ()

    @property
    def signal_keys(self) -> Mapping[SignalSpec, str]:
        return {}

    @property
    def max_signal_age_s(self) -> float | None:
        return None


@dataclass(frozen=True)
class StaticState:
    pass


@dataclass(frozen=True)
class StaticPolicy(ReadsNoSignals):
    """Hold exactly ``replicas`` pods (``standby`` warm pods optional), whatever the load."""

    replicas: int
    standby: int = 0
    name: str = "static"

    @property
    def sync_period_s(self) -> float | None:
        return None

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (self.replicas, self.replicas)

    @property
    def initial_replicas(self) -> int | None:
        return self.replicas

    def initial_state(self) -> StaticState:
        return StaticState()

    def decide(self, snapshot: MetricsSnapshot, state: StaticState) -> tuple[Decision, StaticState]:
        if snapshot.current_replicas == self.replicas:
            return (
                Decision(None, Reason.STATIC, f"holding {self.replicas} replicas", self.standby or None),
                state,
            )
        return (
            Decision(
                self.replicas, Reason.STATIC, f"fixed at {self.replicas} replicas", self.standby or None
            ),
            state,
        )
