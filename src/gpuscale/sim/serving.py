"""The data plane's parameters, resolved from a scenario's model profile and serving settings.

Both the compiled kernel and the SimPy reference model take a :class:`ServingParams`; see
``docs/simulator.md`` for the exact semantics they implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np


class Routing(StrEnum):
    LEAST_OUTSTANDING = "least-outstanding"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


class Jitter(StrEnum):
    NONE = "none"
    LOGNORMAL = "lognormal"
    EXPONENTIAL = "exponential"


class Outcome(IntEnum):
    COMPLETED = 0
    TIMED_OUT = 1
    REJECTED = 2
    DROPPED = 3


def interpolate_batch_latency(table: list[tuple[int, float]], max_batch: int) -> np.ndarray:
    """Seconds per batch for b = 0..max_batch (index 0 unused) by linear interpolation of ``table``.

    ``table`` holds (batch size, milliseconds) measurements in increasing batch size. Sizes below the
    first point extrapolate flat; sizes beyond the last extrapolate along the last segment.
    """
    sizes = np.array([b for b, _ in table], dtype=np.float64)
    ms = np.array([m for _, m in table], dtype=np.float64)
    b = np.arange(0, max_batch + 1, dtype=np.float64)
    out = np.interp(b, sizes, ms)
    if len(sizes) >= 2 and max_batch > sizes[-1]:
        slope = (ms[-1] - ms[-2]) / (sizes[-1] - sizes[-2])
        beyond = b > sizes[-1]
        out[beyond] = ms[-1] + slope * (b[beyond] - sizes[-1])
    out[0] = 0.0
    return out / 1000.0


@dataclass(frozen=True)
class ServingParams:
    """How one pod serves requests, and how requests reach pods."""

    batch_latency_s: np.ndarray
    """Seconds per batch, indexed by batch size 1..max_batch (index 0 unused)."""
    max_batch: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    jitter: Jitter = Jitter.NONE
    jitter_cv: float = 0.0
    cpu_s: float = 0.0
    cpu_workers: int = 1
    container_concurrency: int = 0
    queue_capacity: int = 4096
    router_queue_capacity: int = 0
    timeout_s: float = float("inf")
    routing: Routing = Routing.LEAST_OUTSTANDING

    def __post_init__(self) -> None:
        if len(self.batch_latency_s) != self.max_batch + 1:
            raise ValueError("batch_latency_s must have max_batch + 1 entries")

    @property
    def dispatch_threshold(self) -> int:
        """Queue length at which a batch goes at once: the largest preferred size (or max batch)."""
        return max(self.preferred_batch_sizes) if self.preferred_batch_sizes else self.max_batch
