"""The scenario file: workload, model, serving, cluster, cold start, telemetry, control, SLO.

A scenario is everything about the world a policy is tested in; the policy itself is separate, so
the same scenario runs under every policy. Durations carry ``_s``, latencies ``_ms``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gpuscale._core.errors import MISSING, ConfigError, shown
from gpuscale.config.instances import INSTANCE_TYPES
from gpuscale.config.loading import StrictModel, load_yaml, validate
from gpuscale.config.profiles import BUILTIN_PROFILES, GPU_TYPES, ModelProfile
from gpuscale.config.safety import SafetyConfig
from gpuscale.config.sharing import GpuSharing, MigLayout, TimeSlicing, WholeGpus, check_layout, mig_profile
from gpuscale.config.workload import (
    ClosedLoopWorkload,
    RateDiurnal,
    TokenDist,
    TraceWorkload,
    UsersDiurnal,
    WorkloadConfig,
)


class Uniform(StrictModel):
    """A duration drawn uniformly from ``[low, high]`` seconds: ``{uniform: [30, 60]}``."""

    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0 or v[1] < v[0]:
            raise ValueError("expected [low, high] with 0 <= low <= high")
        return v


class LogNormal(StrictModel):
    """A lognormal duration: ``{lognormal: {median_s: 40, sigma: 0.3}}``."""

    class Params(StrictModel):
        median_s: float = Field(gt=0)
        sigma: float = Field(gt=0, le=3)

    lognormal: Params


Duration = float | Uniform | LogNormal
"""A fixed number of seconds (``>= 0``), ``{uniform: [lo, hi]}``, or ``{lognormal: {median_s, sigma}}``."""


def _check_duration(v: Duration) -> Duration:
    if isinstance(v, (int, float)) and v < 0:
        raise ValueError("a duration must be >= 0 seconds")
    return v


class SloConfig(StrictModel):
    """When a request meets the SLO: every target that is set holds (docs/llm.md for the token ones)."""

    latency_ms: float = Field(
        gt=0, description="A request meets the SLO when answered within this many ms (end to end)."
    )
    ttft_ms: float | None = Field(
        default=None,
        gt=0,
        description="Time to first token, ms, at most (LLM profiles only: model.llm).",
    )
    itl_ms: float | None = Field(
        default=None,
        gt=0,
        description="Mean inter-token latency of a request, (e2e - TTFT) / (output tokens - 1), ms, at "
        "most (LLM profiles only: model.llm).",
    )


class ServingConfig(StrictModel):
    """How requests reach pods and how a pod admits them."""

    routing: Literal["least-outstanding", "round-robin", "random"] = Field(
        default="random",
        description="random = kube-proxy (iptables) behind a Service; least-outstanding = an L7 balancer "
        "(Envoy/Istio LEAST_REQUEST, the Knative activator); round-robin = kube-proxy IPVS rr.",
    )
    container_concurrency: int = Field(
        default=0,
        ge=0,
        description="Hard limit of requests inside a pod (Knative containerConcurrency); 0 = none.",
    )
    queue_capacity: int = Field(
        default=1024,
        ge=1,
        description="Requests a pod holds at most (queued + processing); more are rejected.",
    )
    session_affinity: bool = Field(
        default=False,
        description="Token-level engine, closed-loop conversations (workload.tokens.conversation): a "
        "conversation's later turn goes to the pod that served its previous turn while that pod accepts "
        "and has room, else by the normal choice (vLLM production-stack's session router; docs/llm.md, "
        "Routing).",
    )
    router_queue_capacity: int = Field(
        default=0,
        ge=0,
        description="Requests buffered in front of the pods when none can take one (Knative activator / "
        "queue-proxy); 0 = reject instead.",
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="Client timeout; a request older than this is a miss."
    )
    termination_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="Time a removed pod gets to finish in-flight requests (Kubernetes default 30 s).",
    )


class StartupConfig(StrictModel):
    """Cold start of a new pod, phase by phase. Defaults are the seed numbers (seed 001)."""

    scheduling_s: Duration = Field(default=1.0, description="Scheduler binding and container creation.")
    image_pull_s: Duration = Field(default=Uniform(uniform=(30.0, 60.0)), description="Image pull (30-60 s).")
    model_download_s: Duration = Field(
        default=Uniform(uniform=(60.0, 180.0)), description="Weights download from object storage (60-180 s)."
    )
    model_load_s: Duration = Field(
        default=Uniform(uniform=(10.0, 30.0)), description="Load weights to GPU (10-30 s)."
    )
    warmup_s: Duration = Field(default=Uniform(uniform=(5.0, 15.0)), description="CUDA warm-up (5-15 s).")
    image_cache: bool = Field(default=True, description="A node keeps an image it pulled once.")
    model_cache: bool = Field(default=True, description="A node keeps downloaded weights on local disk.")

    _check = field_validator("scheduling_s", "image_pull_s", "model_download_s", "model_load_s", "warmup_s")(
        _check_duration
    )


def _gpu_or_instance_type(schema: dict[str, Any]) -> None:
    """A pool names its GPU, or an instance type that fills it in (``NodePool._from_instance_type``)."""
    schema["required"] = [k for k in schema.get("required", []) if k != "gpu"]
    schema["anyOf"] = [{"required": ["gpu"]}, {"required": ["instance_type"]}]


class NodePool(StrictModel):
    """A group of identical GPU nodes (a cluster-autoscaler node group / a Karpenter instance type)."""

    model_config = ConfigDict(json_schema_extra=_gpu_or_instance_type)

    name: str = Field(default="gpu", description="Pool name.")
    instance_type: str | None = Field(
        default=None,
        description=f"Cloud instance type from the built-in catalogue ({', '.join(INSTANCE_TYPES)}); "
        "fills gpu, gpus_per_node and the node price.",
    )
    gpu: str = Field(description=f"GPU type; one of {', '.join(GPU_TYPES)}.")
    gpus_per_node: int = Field(default=1, ge=1, description="GPUs per node.")
    nodes: int = Field(
        ge=0, description="Nodes at t = 0 (the pool's fixed size when no node autoscaler is configured)."
    )
    usd_per_gpu_hour: float | None = Field(
        default=None, ge=0, description="Price of one GPU-hour; default: the GPU type's catalogue price."
    )
    capacity_type: Literal["on-demand", "spot"] = Field(
        default="on-demand", description="on-demand, or spot (cheaper, reclaimed with a 2-minute notice)."
    )
    usd_per_node_hour: float | None = Field(
        default=None,
        ge=0,
        description="Price of one node-hour; default: the instance type's on-demand or spot price, else "
        "gpus_per_node x the GPU-hour price (on demand).",
    )
    min_nodes: int = Field(
        default=0, ge=0, description="A node autoscaler never shrinks the pool below this."
    )
    max_nodes: int | None = Field(
        default=None,
        ge=0,
        description="A node autoscaler never grows the pool above this (the node group's max size); "
        "default: nodes (the pool does not grow).",
    )
    spot_interruptions_per_node_hour: float = Field(
        default=0.0,
        ge=0,
        description="Spot reclamations, per node-hour (exponential times). AWS Spot Instance Advisor "
        "buckets are per month: 5-10 %/month is about 0.0001 per node-hour.",
    )
    spot_interruptions_at_s: list[float] = Field(
        default_factory=list,
        description="Scripted reclamations: at each time the pool's oldest running node gets its notice.",
    )
    gpu_sharing: GpuSharing = Field(
        default=WholeGpus(),
        description="whole (default), mig (a MIG layout per GPU) or time-slicing (N pods per GPU); "
        "see gpuscale.config.sharing.",
    )
    capacity_shortages_s: list[tuple[float, float]] = Field(
        default_factory=list,
        description="Windows [start, end) in seconds when the cloud has no capacity for this pool "
        "(InsufficientInstanceCapacity, common for spot GPUs): every launch in them fails. The Cluster "
        "Autoscaler backs the node group off; Karpenter skips the offering for 3 minutes.",
    )
    image_cached: bool = Field(default=False, description="Nodes start with the image already pulled.")
    model_cached: bool = Field(
        default=False, description="Nodes start with the weights already on local disk."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_instance_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("instance_type"), str):
            it = INSTANCE_TYPES.get(data["instance_type"])
            if it is not None:
                data = {"gpu": it.gpu, "gpus_per_node": it.gpus_per_node, **data}
        return data

    @field_validator("instance_type")
    @classmethod
    def _known_instance(cls, v: str | None) -> str | None:
        if v is not None and v not in INSTANCE_TYPES:
            raise ValueError(f"unknown instance type {shown(v)}; allowed: {', '.join(INSTANCE_TYPES)}")
        return v

    @field_validator("capacity_shortages_s")
    @classmethod
    def _windows(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for start, end in v:
            if start < 0 or end <= start:
                raise ValueError(f"window [{start:g}, {end:g}]: expected [start, end] with 0 <= start < end")
        return v

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {shown(v)}; allowed: {', '.join(GPU_TYPES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> NodePool:
        it = INSTANCE_TYPES.get(self.instance_type) if self.instance_type else None
        if it is not None and (it.gpu, it.gpus_per_node) != (self.gpu, self.gpus_per_node):
            raise ValueError(
                f"instance_type {it.name} has {it.gpus_per_node}x {it.gpu}, not "
                f"{self.gpus_per_node}x {self.gpu}; leave gpu and gpus_per_node out"
            )
        if self.max_nodes is not None and self.max_nodes < max(self.nodes, self.min_nodes):
            raise ValueError(f"max_nodes = {self.max_nodes} is below nodes / min_nodes")
        no_spot_price = it is None or it.spot_usd_per_hour is None
        if self.capacity_type == "spot" and self.usd_per_node_hour is None and no_spot_price:
            raise ValueError(
                "a spot pool needs usd_per_node_hour or an instance_type with a catalogue spot price"
            )
        if self.capacity_type == "on-demand" and (
            self.spot_interruptions_per_node_hour > 0 or self.spot_interruptions_at_s
        ):
            raise ValueError("spot interruptions need capacity_type: spot")
        sharing = self.gpu_sharing
        if isinstance(sharing, MigLayout):
            why = check_layout(self.gpu, sharing.layout)
            if why is None and set(sharing.speed_factor) - set(sharing.layout):
                why = "speed_factor names a profile that is not in the layout"
            if why is not None:
                raise ValueError(f"gpu_sharing: {why}")
        return self

    @property
    def price(self) -> float:
        return (
            self.usd_per_gpu_hour
            if self.usd_per_gpu_hour is not None
            else GPU_TYPES[self.gpu].usd_per_gpu_hour
        )

    @property
    def on_demand_usd_per_node_hour(self) -> float:
        """What the same node costs on demand (the base of spot savings)."""
        if self.instance_type is not None:
            return INSTANCE_TYPES[self.instance_type].on_demand_usd_per_hour
        if self.capacity_type == "on-demand" and self.usd_per_node_hour is not None:
            return self.usd_per_node_hour
        return self.gpus_per_node * self.price

    @property
    def node_price(self) -> float:
        """USD per node-hour this pool is billed."""
        if self.usd_per_node_hour is not None:
            return self.usd_per_node_hour
        if self.capacity_type == "spot":
            spot = INSTANCE_TYPES[self.instance_type].spot_usd_per_hour if self.instance_type else None
            assert spot is not None  # checked by _consistent
            return spot
        return self.on_demand_usd_per_node_hour

    @property
    def max_size(self) -> int:
        return self.nodes if self.max_nodes is None else self.max_nodes


class NodeStartupConfig(StrictModel):
    """How long a new GPU node takes, from the cloud API call to GPUs the scheduler can use."""

    provision_s: Duration = Field(
        default=Uniform(uniform=(180.0, 240.0)),
        description="Launch to node Ready, GPU driver install included (cluster-autoscaler FAQ: 3-4 min "
        "on GCE; seed 004: 180 s+).",
    )
    gpu_allocatable_s: Duration = Field(
        default=30.0,
        description="Node Ready to nvidia.com/gpu allocatable (device plugin registration). An assumed "
        "30 s; measure yours (kubernetes/autoscaler#1949, NVIDIA/gpu-operator#708).",
    )

    _check = field_validator("provision_s", "gpu_allocatable_s")(_check_duration)


class NoNodeAutoscaler(StrictModel):
    """Fixed pools: each pool keeps its ``nodes`` (spot reclamations are not replaced)."""

    kind: Literal["none"] = "none"


class ClusterAutoscalerConfig(StrictModel):
    """Kubernetes Cluster Autoscaler over node groups (one per pool). Defaults are upstream's flags."""

    kind: Literal["cluster-autoscaler"]
    scan_interval_s: float = Field(default=10.0, gt=0, description="Default 10 s (--scan-interval).")
    expander: Literal["random", "priority", "price"] = Field(
        default="random",
        description="Which node group grows: random (upstream default, --expander), priority (pools in "
        "listed order: spot first, on-demand as fallback), price (cheapest per pod).",
    )
    scale_down_utilization_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A node is unneeded below this GPU requests / allocatable. Default 0.5 "
        "(--scale-down-gpu-utilization-threshold).",
    )
    scale_down_unneeded_time_s: float = Field(
        default=600.0, ge=0, description="Default 10 min (--scale-down-unneeded-time)."
    )
    scale_down_delay_after_add_s: float = Field(
        default=600.0, ge=0, description="Default 10 min (--scale-down-delay-after-add)."
    )
    max_node_provision_time_s: float = Field(
        default=900.0,
        gt=0,
        description="Default 15 min (--max-node-provision-time); later nodes are removed and their node "
        "group is backed off.",
    )
    initial_node_group_backoff_s: float = Field(
        default=300.0,
        gt=0,
        description="A node group whose launch failed is not expanded for this long; the expander picks "
        "another. Default 5 min (--initial-node-group-backoff-duration).",
    )
    max_node_group_backoff_s: float = Field(
        default=1800.0,
        gt=0,
        description="Each failure after a backoff has ended doubles the backoff, up to this. Default "
        "30 min (--max-node-group-backoff-duration).",
    )
    node_group_backoff_reset_s: float = Field(
        default=10800.0,
        gt=0,
        description="The backoff starts over from its initial length after this long without a failure. "
        "Default 3 h (--node-group-backoff-reset-timeout).",
    )
    max_empty_bulk_delete: int = Field(default=10, ge=1, description="Default 10 (--max-empty-bulk-delete).")
    gpu_unready_until_allocatable: bool = Field(
        default=True,
        description="A Ready GPU node counts as still starting until its GPUs are allocatable "
        "(kubernetes/autoscaler PR #461); false reproduces the extra scale-up it fixed.",
    )

    @model_validator(mode="after")
    def _backoff(self) -> ClusterAutoscalerConfig:
        if self.max_node_group_backoff_s < self.initial_node_group_backoff_s:
            raise ValueError("max_node_group_backoff_s must be >= initial_node_group_backoff_s")
        return self


class KarpenterConfig(StrictModel):
    """Karpenter: pools are the candidate instance types and capacity types of one NodePool.

    Defaults are upstream's (karpenter.sh settings and ``concepts/disruption.md``).
    """

    kind: Literal["karpenter"]
    batch_idle_s: float = Field(
        default=1.0,
        gt=0,
        description="A provisioning batch ends this long after the last new pending pod "
        "(BATCH_IDLE_DURATION, default 1 s).",
    )
    batch_max_s: float = Field(
        default=10.0,
        gt=0,
        description="...or this long after it opened (BATCH_MAX_DURATION, default 10 s).",
    )
    consolidation_policy: Literal["WhenEmptyOrUnderutilized", "WhenEmpty"] = Field(
        default="WhenEmptyOrUnderutilized",
        description="NodePool disruption.consolidationPolicy (default WhenEmptyOrUnderutilized).",
    )
    consolidate_after_s: float = Field(
        default=0.0,
        ge=0,
        description="A node is consolidatable this long after its last pod came or went "
        "(disruption.consolidateAfter; 0 s in the v1 examples).",
    )
    disruption_budget_pct: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="Nodes that may be disrupted at once, % of the NodePool, "
        "rounded up, minus nodes deleting or not ready (default budget nodes: 10%).",
    )
    consolidation_interval_s: float = Field(
        default=10.0, gt=0, description="How often the disruption controller looks for candidates (10 s)."
    )
    do_not_disrupt: bool = Field(
        default=False,
        description='The serving pods carry karpenter.sh/do-not-disrupt: "true": nodes '
        "running them are never consolidated (spot reclamation still takes them).",
    )
    registration_ttl_s: float = Field(
        default=900.0, gt=0, description="A NodeClaim not registered after this is deleted (15 min)."
    )
    expire_after_s: float | None = Field(
        default=2_592_000.0,
        gt=0,
        description="NodePool spec.template.spec.expireAfter: a node this old is disrupted forcefully "
        "(drained at once, past the disruption budget, no replacement waited for; the PDB and "
        "do-not-disrupt still hold its pods). Default 720 h, upstream's; null = Never.",
    )
    spot_to_spot_consolidation: bool = Field(
        default=False,
        description="The SpotToSpotConsolidation feature gate (default off): consolidation may replace "
        "spot nodes by a cheaper spot node. Off, spot nodes are only deleted, never replaced.",
    )

    @model_validator(mode="after")
    def _batch(self) -> KarpenterConfig:
        if self.batch_max_s < self.batch_idle_s:
            raise ValueError("batch_max_s must be >= batch_idle_s")
        return self


NodeAutoscaler = Annotated[
    NoNodeAutoscaler | ClusterAutoscalerConfig | KarpenterConfig, Field(discriminator="kind")
]


class ClusterConfig(StrictModel):
    pools: list[NodePool] = Field(
        min_length=1, description="GPU node pools, tried first to last (first-fit)."
    )
    node_autoscaler: NodeAutoscaler = Field(
        default=NoNodeAutoscaler(), description="none (fixed pools), cluster-autoscaler or karpenter."
    )
    node_startup: NodeStartupConfig = NodeStartupConfig()
    spot_notice_s: float = Field(
        default=120.0, ge=0, description="Warning before a spot node is reclaimed (AWS: 2 minutes)."
    )
    pdb_min_available: int | None = Field(
        default=None,
        ge=0,
        description="PodDisruptionBudget minAvailable of the serving pods: voluntary evictions (node "
        "scale-down) keep this many Ready; spot reclamation ignores it.",
    )
    mig_profile: str | None = Field(
        default=None,
        description="The MIG slice each serving pod requests (nvidia.com/mig-<profile>: 1); the pods run "
        "only on pools whose MIG layout has it. None = whole GPUs or time-sliced shares.",
    )

    @model_validator(mode="after")
    def _mig(self) -> ClusterConfig:
        mig = [p for p in self.pools if isinstance(p.gpu_sharing, MigLayout)]
        if self.mig_profile is None and mig:
            raise ValueError(
                f"pool {mig[0].name} is partitioned by MIG; set mig_profile to the slice pods request"
            )
        if self.mig_profile is not None and not any(
            isinstance(p.gpu_sharing, MigLayout) and self.mig_profile in p.gpu_sharing.layout
            for p in self.pools
        ):
            raise ValueError(f"mig_profile {shown(self.mig_profile)} is in no pool's MIG layout")
        return self

    @property
    def shared(self) -> bool:
        """Whether some pool hands out MIG slices or time-sliced shares."""
        return any(not isinstance(p.gpu_sharing, WholeGpus) for p in self.pools)

    def pods_per_node(self, pool: NodePool, gpus_per_pod: int) -> int:
        """Serving pods an empty node of ``pool`` takes."""
        sharing = pool.gpu_sharing
        if isinstance(sharing, MigLayout):
            return pool.gpus_per_node * sharing.layout.count(self.mig_profile or "")
        if self.mig_profile is not None:
            return 0
        if isinstance(sharing, TimeSlicing):
            return pool.gpus_per_node * sharing.replicas_per_gpu
        return pool.gpus_per_node // gpus_per_pod

    @property
    def node_layer(self) -> bool:
        """Whether nodes change during a run (autoscaling or spot reclamation)."""
        return self.node_autoscaler.kind != "none" or any(
            p.spot_interruptions_per_node_hour > 0 or p.spot_interruptions_at_s for p in self.pools
        )


class TelemetryConfig(StrictModel):
    scrape_interval_s: float = Field(
        default=1.0, gt=0, le=300, description="How often metrics are scraped (Knative scrapes every 1 s)."
    )
    metrics_delay_s: float = Field(
        default=0.0, ge=0, description="Pipeline delay: the newest sample a policy sees is this old."
    )


class ControlConfig(StrictModel):
    interval_s: float = Field(
        default=15.0,
        gt=0,
        description="Control tick when the policy has none of its own (HPA sync period 15 s).",
    )
    initial_replicas: int = Field(default=1, ge=0, description="Ready pods at t = 0.")
    max_pods: int = Field(
        default=256, ge=1, description="Safety cap on pods the simulation may hold at once."
    )

    @model_validator(mode="after")
    def _room_to_start(self) -> ControlConfig:
        if self.initial_replicas > self.max_pods:
            raise ValueError(
                f"initial_replicas = {self.initial_replicas} is above max_pods = {self.max_pods}; raise "
                "max_pods or start with fewer replicas"
            )
        return self


SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
SAFE_NAME_ALLOWED = (
    "a name of 1 to 128 letters, digits, '.', '_' and '-', not starting with '.' (it names output "
    "folders: out/SCENARIO-POLICY)"
)
"""A scenario's (or a policy's) name becomes part of a folder name: nothing that reaches outside it."""


def is_safe_name(name: str) -> bool:
    """Whether ``name`` may be part of an output folder's name (:data:`SAFE_NAME`)."""
    return SAFE_NAME.fullmatch(name) is not None


START_ALLOWED = "an ISO-8601 date-time with a UTC offset or Z, e.g. 2026-03-02T00:00:00+01:00"


def parse_start(value: Any) -> datetime:
    """A scenario's ``start``: an ISO-8601 date-time with a UTC offset (a string, or the datetime
    YAML makes of an unquoted one). Without an offset the instant is ambiguous -- 08:00 is 07:00Z
    in Amsterdam in winter and 15:00Z in Los Angeles -- so a naive time is an error, not UTC."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PydanticCustomError(
                "start_format", "not a date-time; allowed: {allowed}", {"allowed": START_ALLOWED}
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        raise PydanticCustomError(
            "start_date", "a date without a time; allowed: {allowed}", {"allowed": START_ALLOWED}
        )
    else:
        raise PydanticCustomError("start_type", "allowed: {allowed}", {"allowed": START_ALLOWED})
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PydanticCustomError(
            "start_offset", "no UTC offset; allowed: {allowed}", {"allowed": START_ALLOWED}
        )
    return parsed


class Scenario(StrictModel):
    """One world to test policies in."""

    name: str = Field(
        description="Scenario name: letters, digits, '.', '_' and '-', not starting with '.' (it names "
        "the output folder out/SCENARIO-POLICY)."
    )
    description: str = Field(default="", description="What this scenario shows.")
    duration_s: float = Field(gt=0, le=30 * 86400, description="Simulated time.")
    seed: int = Field(default=1, ge=0, description="Root seed; every component draws from its own stream.")
    slo: SloConfig
    workload: WorkloadConfig
    model: ModelProfile
    serving: ServingConfig = ServingConfig()
    startup: StartupConfig = StartupConfig()
    cluster: ClusterConfig
    telemetry: TelemetryConfig = TelemetryConfig()
    control: ControlConfig = ControlConfig()
    safety: SafetyConfig | None = Field(
        None,
        description="Limits every decision passes through before it is applied, the same block "
        "`gpuscale run` reads (bounds, max step per tick, GPU budget, schedule windows); null: none.",
    )
    start: datetime | None = Field(
        None,
        description="The calendar instant of t = 0, an ISO-8601 date-time with a UTC offset or Z "
        "(2026-03-02T00:00:00+01:00): schedule windows (safety.schedules) read the day and the time "
        "of day from it. Required with safety.schedules; default: none.",
    )

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any, info: ValidationInfo) -> datetime | None:
        # Declared after `safety`, so info.data holds the validated block (validate_default runs this
        # for an absent start too). No silent default: t = 0 at 1970-01-01 (a Thursday, 00:00 UTC)
        # would open and close every window at the wrong hours without a word.
        if value is None:
            safety = info.data.get("safety")
            if isinstance(safety, SafetyConfig) and safety.schedules:
                raise PydanticCustomError(
                    "start_required",
                    "required when safety.schedules is set (the calendar instant of t = 0); allowed: "
                    "{allowed}",
                    {"allowed": START_ALLOWED},
                )
            return None
        return parse_start(value)

    @property
    def start_epoch_s(self) -> float:
        """Epoch seconds of t = 0: ``2026-03-02T00:00:00+01:00`` -> 1772406000.0; 0.0 without a start."""
        return 0.0 if self.start is None else self.start.timestamp()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        c = self.cluster
        if c.shared:
            if self.model.gpus_per_pod != 1:
                raise ValueError("model.gpus_per_pod must be 1 on MIG or time-sliced pools")
            for pool in c.pools:
                profile = mig_profile(pool.gpu, c.mig_profile) if c.mig_profile else None
                if profile is None or not isinstance(pool.gpu_sharing, MigLayout):
                    continue
                if self.model.memory_at_batch_gb(0) > profile.memory_gb:
                    raise ValueError(
                        f"cluster.mig_profile {profile.name} has {profile.memory_gb:g} GB; the model needs "
                        f"{self.model.memory_at_batch_gb(0):g} GB before its first batch"
                    )
            pods = sum(c.pods_per_node(p, 1) * p.nodes for p in c.pools)
            if self.control.initial_replicas > pods:
                raise ValueError(
                    f"control.initial_replicas = {self.control.initial_replicas}; the cluster takes {pods} pods"
                )
            return self
        gpus = sum(p.gpus_per_node * p.nodes for p in self.cluster.pools)
        if self.control.initial_replicas * self.model.gpus_per_pod > gpus:
            raise ValueError(
                f"control.initial_replicas = {self.control.initial_replicas} needs "
                f"{self.control.initial_replicas * self.model.gpus_per_pod} GPUs; the cluster has {gpus}"
            )
        return self


def _resolve_profile(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``model: {profile: NAME, ...overrides}`` starts from a built-in profile; an override of one of
    its blocks (``llm:``) changes only the keys it names."""
    model = data.get("model")
    if isinstance(model, str):
        model = {"profile": model}
    if not (isinstance(model, dict) and "profile" in model):
        return data
    spec = dict(model)
    name = spec.pop("profile")
    base = BUILTIN_PROFILES.get(name) if isinstance(name, str) else None
    if base is None:
        raise ConfigError(
            source, "model.profile", name, f"unknown profile; allowed: {', '.join(BUILTIN_PROFILES)}"
        )
    merged = base.model_dump()
    for key, value in spec.items():
        # A block the profile has (llm:) takes overrides key by key: {llm: {max_num_seqs: 128}}
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return {**data, "model": merged}


DAY_S = 86_400.0


def _check_diurnal_period(scenario: Scenario, source: str) -> None:
    """A diurnal shape in a run shorter than a day must say what its day is.

    Its ``period_s`` defaults to a real day (86,400 s), and a run shorter than that sees only part of
    it: a 1-hour run from ``start_hour`` 0 sits near the trough and never scales, which is hardly what
    a scenario called diurnal means -- yet a user may want exactly that slice (a morning ramp). So the
    period is required, not guessed, whenever ``duration_s`` is shorter than the default day: a
    period equal to the duration compresses one whole day into the run; 86400 keeps a real day and
    shows ``duration_s`` of it from ``start_hour``. Runs of a day or more keep the default.
    """
    w = scenario.workload
    shape = w.users if isinstance(w, ClosedLoopWorkload) else getattr(w, "rate", None)
    if not isinstance(shape, (RateDiurnal, UsersDiurnal)) or "period_s" in shape.model_fields_set:
        return
    if scenario.duration_s >= DAY_S:
        return
    key = "workload.users.period_s" if isinstance(shape, UsersDiurnal) else "workload.rate.period_s"
    d = scenario.duration_s
    raise ConfigError(
        source,
        key,
        MISSING,
        f"required when duration_s ({d:g} s) is shorter than a day: with the default period_s of "
        f"{DAY_S:g} s the run sees only {d / 3600:.3g} h of the day, from hour {shape.start_hour:g} (the "
        f"peak is at hour {shape.peak_hour:g}); allowed: period_s: {d:g} compresses a whole day into the "
        f"run, period_s: {DAY_S:g} keeps a real day",
    )


_DIST_FORMS = "{fixed: N}, {lognormal: {mean, cv, max}}, {uniform: [a, b]}, {empirical: {values, weights}}"


def _shortest(dist: TokenDist) -> int:
    """The shortest length ``dist`` can give."""
    if dist.fixed is not None:
        return dist.fixed
    if dist.uniform is not None:
        return dist.uniform[0]
    if dist.empirical is not None:
        e = dist.empirical
        w = e.weights if e.weights is not None else [1.0] * len(e.values)
        return min(v for v, x in zip(e.values, w, strict=True) if x > 0)
    return 1


def _check_llm(scenario: Scenario, source: str) -> None:
    """What ties the model to the workload and the SLO: token lengths and token targets belong to an
    LLM profile (``model.llm``), and an LLM profile needs token lengths."""
    model, w, slo = scenario.model, scenario.workload, scenario.slo
    tokens = getattr(w, "tokens", None)
    if model.llm is None:
        if scenario.serving.session_affinity:
            raise ConfigError(
                source,
                "serving.session_affinity",
                True,
                f"only for an LLM profile (one with an llm: block) with closed-loop conversations; "
                f"{shown(model.name)} is served request by request and has no conversations; allowed: false",
            )
        for key, value in (("ttft_ms", slo.ttft_ms), ("itl_ms", slo.itl_ms)):
            if value is not None:
                raise ConfigError(
                    source,
                    f"slo.{key}",
                    value,
                    f"only for an LLM profile (one with an llm: block); {shown(model.name)} is served request "
                    "by request and has no tokens; allowed: leave it out, or use a profile with model.llm "
                    "(e.g. llama3-8b-h100-vllm)",
                )
        if tokens is not None:
            raise ConfigError(
                source,
                "workload.tokens",
                tokens.model_dump(exclude_none=True),
                f"only for an LLM profile (one with an llm: block); {shown(model.name)} is served request by "
                "request and would ignore the lengths; allowed: leave it out, or use a profile with "
                "model.llm (e.g. llama3-8b-h100-vllm)",
            )
        return
    if tokens is None and not isinstance(w, TraceWorkload):
        closed = isinstance(w, ClosedLoopWorkload)
        users = " (closed-loop users send requests of these lengths)" if closed else ""
        raise ConfigError(
            source,
            "workload.tokens",
            MISSING,
            "required with an LLM profile (model.llm): tokens: {prompt: DIST, output: DIST}, each DIST "
            f"one of {_DIST_FORMS}{users}",
        )
    if tokens is not None and tokens.prompt is not None and tokens.output is not None:
        shortest = _shortest(tokens.prompt) + _shortest(tokens.output)
        limit = model.llm.max_model_len
        if shortest > limit:
            raise ConfigError(
                source,
                "workload.tokens",
                tokens.model_dump(exclude_none=True),
                f"every request would be rejected: the shortest prompt + output is {shortest} tokens, "
                f"above model.llm.max_model_len = {limit}; allowed: shorter lengths or a larger "
                "max_model_len",
            )
    from gpuscale.sim.llm_serving import (  # the engine's limits: imported late
        check_conversations,
        check_prefix_caching,
    )

    check_prefix_caching(scenario, source)
    check_conversations(scenario, source)


def scenario_from_dict(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate scenario settings already parsed from YAML."""
    if not isinstance(data, dict):
        raise ConfigError(source, None, data, "expected a mapping of scenario settings")
    scenario = validate(Scenario, _resolve_profile(data, source), source)
    _check_diurnal_period(scenario, source)
    _check_llm(scenario, source)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; its ``name`` must be a safe one (:data:`SAFE_NAME`): it
    names output folders. (Scenarios gpuscale builds for itself, such as the oracle's capacity
    probes, may use other names: they are never written.)"""
    scenario = scenario_from_dict(load_yaml(path), str(path))
    if not is_safe_name(scenario.name):
        raise ConfigError(str(path), "name", scenario.name, f"not a safe name; allowed: {SAFE_NAME_ALLOWED}")
    return scenario
