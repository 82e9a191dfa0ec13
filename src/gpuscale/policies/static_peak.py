"""``kind: static-peak``: enough replicas for the peak, all the time.

The over-provisioning baseline every autoscaler is measured against: it never has a cold start and
never scales, and it pays for peak capacity around the clock. Configure the count directly
(``replicas``) or from the peak load (``peak_rps`` / ``capacity_rps_per_replica``, rounded up, with
optional ``headroom_pct``). Example: 930 rps at peak, 100 rps per replica, 10 % headroom →
ceil(930 × 1.1 / 100) = ceil(10.23) = 11 replicas.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from gpuscale.policies._config import MISSING_KEY, field_error
from gpuscale.policies.base import StaticPolicy
from gpuscale.policies.kinds import KindConfig, register_kind


def peak_replicas(peak_rps: float, capacity_rps_per_replica: float, headroom_pct: float = 0.0) -> int:
    """Replicas that carry ``peak_rps`` with ``headroom_pct`` spare: ``ceil(peak × (1 + h) / capacity)``.

    A small tolerance keeps an exact fit from rounding up on float noise (300 × 1.1 / 110 is
    3.0000000000000004, which is 3 replicas, not 4).
    """
    needed = peak_rps * (1.0 + headroom_pct / 100.0) / capacity_rps_per_replica
    return max(1, math.ceil(needed - 1e-9))


@register_kind
class StaticPeakConfig(KindConfig):
    """Hold the peak's replicas whatever the load (the over-provisioned baseline)."""

    kind: Literal["static-peak"] = "static-peak"
    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    replicas: int | None = Field(
        default=None,
        ge=1,
        description="Replicas to hold. Give this, or peak_rps and capacity_rps_per_replica.",
    )
    peak_rps: float | None = Field(
        default=None, gt=0, description="The highest request rate the service must carry, requests/s."
    )
    capacity_rps_per_replica: float | None = Field(
        default=None, gt=0, description="Requests/s one replica sustains within its latency SLO."
    )
    headroom_pct: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Spare capacity above the peak, percent of the peak (default 0).",
    )
    standby_replicas: int = Field(
        default=0, ge=0, description="Warm standby pods kept outside the Service as well (default 0)."
    )

    @classmethod
    def example(cls) -> StaticPeakConfig:
        """A representative config (sized from a peak rate) for docs and conformance tests."""
        return cls(peak_rps=930.0, capacity_rps_per_replica=100.0, headroom_pct=10.0)

    @model_validator(mode="after")
    def _one_way_to_size(self) -> StaticPeakConfig:
        if self.replicas is not None:
            if self.peak_rps is not None:
                field_error(("peak_rps",), self.peak_rps, "give either replicas or peak_rps, not both")
            if self.capacity_rps_per_replica is not None:
                field_error(
                    ("capacity_rps_per_replica",),
                    self.capacity_rps_per_replica,
                    "only used with peak_rps; replicas is given",
                )
            return self
        if self.peak_rps is None:
            field_error(
                ("replicas",), None, "required: give replicas, or peak_rps with capacity_rps_per_replica"
            )
        if self.capacity_rps_per_replica is None:
            field_error(("capacity_rps_per_replica",), MISSING_KEY)
        return self

    @property
    def resolved_replicas(self) -> int:
        """The replica count this configuration holds."""
        if self.replicas is not None:
            return self.replicas
        assert self.peak_rps is not None and self.capacity_rps_per_replica is not None
        return peak_replicas(self.peak_rps, self.capacity_rps_per_replica, self.headroom_pct)

    def build(self) -> StaticPolicy:
        return StaticPolicy(
            replicas=self.resolved_replicas, standby=self.standby_replicas, name=self.name or "static-peak"
        )
