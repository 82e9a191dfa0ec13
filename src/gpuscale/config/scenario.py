"""The scenario file: workload, model, serving, cluster, cold start, telemetry, control, SLO.

A scenario is everything about the world a policy is tested in; the policy itself is separate, so
the same scenario runs under every policy. Durations carry ``_s``, latencies ``_ms``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import StrictModel, load_yaml, validate
from gpuscale.config.profiles import BUILTIN_PROFILES, GPU_TYPES, ModelProfile
from gpuscale.config.workload import WorkloadConfig


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
    latency_ms: float = Field(gt=0, description="A request meets the SLO when answered within this many ms.")


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


class NodePool(StrictModel):
    name: str = Field(default="gpu", description="Pool name.")
    gpu: str = Field(description=f"GPU type; one of {', '.join(GPU_TYPES)}.")
    gpus_per_node: int = Field(default=1, ge=1, description="GPUs per node.")
    nodes: int = Field(ge=0, description="Nodes in the pool (fixed; node autoscaling is a later layer).")
    usd_per_gpu_hour: float | None = Field(
        default=None, ge=0, description="Price of one GPU-hour; default: the GPU type's catalogue price."
    )
    image_cached: bool = Field(default=False, description="Nodes start with the image already pulled.")
    model_cached: bool = Field(
        default=False, description="Nodes start with the weights already on local disk."
    )

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {v!r}; allowed: {', '.join(GPU_TYPES)}")
        return v

    @property
    def price(self) -> float:
        return (
            self.usd_per_gpu_hour
            if self.usd_per_gpu_hour is not None
            else GPU_TYPES[self.gpu].usd_per_gpu_hour
        )


class ClusterConfig(StrictModel):
    pools: list[NodePool] = Field(
        min_length=1, description="GPU node pools, tried first to last (first-fit)."
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


class Scenario(StrictModel):
    """One world to test policies in."""

    name: str = Field(description="Scenario name.")
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

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        gpus = sum(p.gpus_per_node * p.nodes for p in self.cluster.pools)
        if self.control.initial_replicas * self.model.gpus_per_pod > gpus:
            raise ValueError(
                f"control.initial_replicas = {self.control.initial_replicas} needs "
                f"{self.control.initial_replicas * self.model.gpus_per_pod} GPUs; the cluster has {gpus}"
            )
        return self


def _resolve_profile(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``model: {profile: NAME, ...overrides}`` starts from a built-in profile."""
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
    merged.update(spec)
    return {**data, "model": merged}


def scenario_from_dict(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate scenario settings already parsed from YAML."""
    if not isinstance(data, dict):
        raise ConfigError(source, None, data, "expected a mapping of scenario settings")
    return validate(Scenario, _resolve_profile(data, source), source)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    return scenario_from_dict(load_yaml(path), str(path))
