"""``gpuscale run``: the live controller (a policy driving a Kubernetes scale subresource)."""

from gpuscale.controller.config import ControllerConfig, SafetyConfig, TargetConfig, load_controller_config
from gpuscale.controller.loop import Controller, TickOutcome, apply_safety, build_controller
from gpuscale.controller.target import KubernetesTarget, TargetCounts

__all__ = [
    "Controller",
    "ControllerConfig",
    "KubernetesTarget",
    "SafetyConfig",
    "TargetConfig",
    "TargetCounts",
    "TickOutcome",
    "apply_safety",
    "build_controller",
    "load_controller_config",
]
