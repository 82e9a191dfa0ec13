"""``gpuscale run``: the live controller (a policy driving a Kubernetes scale subresource)."""

from gpuscale.config.safety import SafetyConfig
from gpuscale.controller.config import (
    ControllerConfig,
    HeadroomConfig,
    LeaderElectionConfig,
    MetricsServerConfig,
    TargetConfig,
    WarmPoolLabels,
    load_controller_config,
)
from gpuscale.controller.leader import LeaderElector
from gpuscale.controller.loop import Controller, TickOutcome, backoff_wait, build_controller
from gpuscale.controller.manifests import render_controller
from gpuscale.controller.observe import ControllerMetrics, LoopStatus, ObservabilityServer
from gpuscale.controller.target import KubernetesTarget

__all__ = [
    "Controller",
    "ControllerConfig",
    "ControllerMetrics",
    "HeadroomConfig",
    "KubernetesTarget",
    "LeaderElectionConfig",
    "LeaderElector",
    "LoopStatus",
    "MetricsServerConfig",
    "ObservabilityServer",
    "SafetyConfig",
    "TargetConfig",
    "TickOutcome",
    "WarmPoolLabels",
    "backoff_wait",
    "build_controller",
    "load_controller_config",
    "render_controller",
]
