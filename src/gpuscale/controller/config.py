"""The ``gpuscale run --config`` file: what to scale, from which signals, with which policy, how safely.

Example::

    prometheus: {url: http://prometheus.monitoring:9090}
    target: {apiVersion: apps/v1, kind: Deployment, namespace: serving, name: triton-resnet}
    pod_selector: app=triton-resnet
    policy: hpa-gpu-util            # a preset, a policy YAML beside this file, or an inline mapping
    interval_s: 15
    safety: {min_replicas: 1, max_replicas: 16, max_step: 4, gpu_budget: 32, gpus_per_pod: 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from gpuscale.config.loading import StrictModel, load_yaml, validate
from gpuscale.integrations.prometheus import PrometheusSourceConfig


class TargetConfig(StrictModel):
    """The scalable object, addressed like a ``scaleTargetRef``; it must serve the scale subresource."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, populate_by_name=True)

    api_version: str = Field("apps/v1", alias="apiVersion", description="Group/version. Default apps/v1.")
    kind: str = Field("Deployment", min_length=1, description="Kind. Default Deployment.")
    namespace: str = Field("default", min_length=1, description="Namespace. Default 'default'.")
    name: str = Field(min_length=1, description="The object's name.")
    plural: str | None = Field(
        None, description="Resource name of a custom kind; default the kind lower-cased plus 's'."
    )

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> str:
        return self.plural or self.kind.lower() + "s"

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} in {self.namespace}"


class SafetyConfig(StrictModel):
    """Bounds every decision passes through before anything is written."""

    min_replicas: int = Field(1, ge=0, description="Never fewer replicas. Default 1.")
    max_replicas: int = Field(ge=1, description="Never more replicas.")
    max_step: int | None = Field(
        None, ge=1, description="Most replicas added or removed per tick; null: no limit. Default null."
    )
    gpu_budget: int | None = Field(
        None, ge=0, description="Most GPUs the target may request in all; null: no budget. Default null."
    )
    gpus_per_pod: int = Field(1, ge=0, description="GPUs each replica requests. Default 1.")

    @property
    def ceiling(self) -> int:
        """The most replicas allowed: ``max_replicas``, lowered to what the GPU budget pays for.

        Worked example: budget 10 GPUs at 4 per pod pays for ``10 // 4 = 2`` replicas (8 GPUs).
        """
        if self.gpu_budget is None or self.gpus_per_pod == 0:
            return self.max_replicas
        return min(self.max_replicas, self.gpu_budget // self.gpus_per_pod)

    @model_validator(mode="after")
    def _consistent(self) -> SafetyConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.min_replicas > self.ceiling:
            raise ValueError(
                f"min_replicas {self.min_replicas} x gpus_per_pod {self.gpus_per_pod} exceeds "
                f"gpu_budget {self.gpu_budget}"
            )
        return self


class ControllerConfig(StrictModel):
    """The ``gpuscale run --config`` file."""

    prometheus: PrometheusSourceConfig | None = Field(
        None,
        description="Where the policy's signals come from ($namespace/$name: the target's); "
        "null: none (only policies that read no signal can act).",
    )
    target: TargetConfig = Field(description="The object whose scale subresource is set.")
    pod_selector: str = Field(
        min_length=1, description="Label selector of the target's pods (ready/starting/pending counts)."
    )
    policy: str | dict[str, Any] = Field(
        description="A preset name, a policy YAML file (relative to this file), or an inline policy."
    )
    interval_s: float | None = Field(
        None, gt=0, description="Seconds between ticks; default the policy's sync period, else 15."
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file (relative to this file); default in-cluster, else ~/.kube/config."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Per API request timeout, seconds. Default 10.")
    decision_log: Path | None = Field(
        None, description="Append JSON-lines decision records here; default standard output."
    )
    safety: SafetyConfig


def load_controller_config(path: str | Path) -> ControllerConfig:
    """Read and validate a controller config file; ConfigError naming the key otherwise."""
    return validate(ControllerConfig, load_yaml(path), str(path))
