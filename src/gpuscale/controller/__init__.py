"""``gpuscale run``: the live controller (a policy driving a Kubernetes scale subresource)."""

from gpuscale.controller.config import (
    ControllerConfig,
    LeaderElectionConfig,
    MetricsServerConfig,
    SafetyConfig,
    TargetConfig,
    load_controller_config,
)
from gpuscale.controller.leader import LeaderElector
from gpuscale.controller.loop import Controller, TickOutcome, apply_safety, backoff_wait, build_controller
from gpuscale.controller.manifests import render_controller
from gpuscale.controller.observe import ControllerMetrics, LoopStatus, ObservabilityServer
from gpuscale.controller.target import KubernetesTarget, TargetCounts

__all__ = [
    "Controller",
    "ControllerConfig",
    "ControllerMetrics",
    "KubernetesTarget",
    "LeaderElectionConfig",
    "LeaderElector",
    "LoopStatus",
    "MetricsServerConfig",
    "ObservabilityServer",
    "SafetyConfig",
    "TargetConfig",
    "TargetCounts",
    "TickOutcome",
    "apply_safety",
    "backoff_wait",
    "build_controller",
    "load_controller_config",
    "render_controller",
]
