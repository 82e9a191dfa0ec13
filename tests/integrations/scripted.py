"""What the controller tests script at gpuscale's own boundary: :class:`ScriptedSource`, a metrics
source serving the values a test gives, and :func:`queue_hpa`, an HPA on the total queue length
(External AverageValue 10 per pod: desired = ceil(queue / 10)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpuscale.policies.base import MetricsSnapshot, SignalSpec, SignalValue
from gpuscale.policies.ports import ReplicaCounts, make_snapshot


class ScriptedSource:
    """Serves every signal the policy asks for from a script: one value (None: no data) per snapshot,
    the last one repeated. Setting :attr:`value` serves that value from the next snapshot on."""

    def __init__(self, values: Sequence[float | None]) -> None:
        self.values = list(values)
        self.calls = 0

    @property
    def value(self) -> float | None:
        """The value the next snapshot serves."""
        return self.values[min(self.calls, len(self.values) - 1)]

    @value.setter
    def value(self, value: float | None) -> None:
        self.values = [value]

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        value = self.value
        self.calls += 1
        signals = {
            spec: SignalValue(value, age_s=5.0) if value is not None else SignalValue.missing("scripted gap")
            for spec in specs
        }
        return make_snapshot(now, counts, signals)

    def unavailable(self) -> str | None:
        return None


def queue_hpa(
    *,
    min_replicas: int,
    max_replicas: int,
    window_s: float,
    scale_up_pods: int,
    scale_up_period_s: int = 15,
    scale_down_window_s: int = 0,
    name: str | None = None,
) -> dict[str, Any]:
    """An HPA config on the total ``queue_length`` over ``window_s``, 10 per pod: desired =
    ceil(queue / 10) within ``min_replicas``..``max_replicas``; scale-up at most ``scale_up_pods``
    pods per ``scale_up_period_s``; scale-down to the highest desired of the last
    ``scale_down_window_s`` (0: at once)."""
    policy: dict[str, Any] = {
        "kind": "hpa",
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "downscale_stabilization_s": scale_down_window_s,
        "behavior": {
            "scale_up": {
                "policies": [{"type": "Pods", "value": scale_up_pods, "period_s": scale_up_period_s}]
            },
            "scale_down": {"stabilization_window_s": scale_down_window_s},
        },
        "metrics": [
            {
                "type": "External",
                "metric": "queue_length",
                "aggregation": "total",
                "window_s": window_s,
                "target": {"type": "AverageValue", "average_value": 10},
            }
        ],
    }
    if name is not None:
        policy["name"] = name
    return policy
