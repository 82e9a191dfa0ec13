"""GPU sharing: whole GPUs, MIG partitions and time-slicing, per node pool.

A pool's GPUs are handed out whole (the default: ``nvidia.com/gpu``), partitioned into MIG slices
(each slice its own device with its own memory and a share of the SMs), or time-sliced (the device
plugin advertises each GPU ``replicas_per_gpu`` times; the pods share its memory and its SMs).

MIG profiles (NVIDIA MIG User Guide, "Supported MIG Profiles"): ``<g>g.<m>gb`` has g of the 7 compute
slices and m GB of memory, taking some of the 8 memory slices. A slice's throughput is modelled as
g / 7 of the whole GPU: its batch times are 7 / g times the whole-GPU table (1g → 7 x, 7g → 1 x).
That is the compute-proportional bound; a small model that cannot fill a whole GPU does better on a
small slice than that, so measure yours and set ``speed_factor`` per profile if it matters. Placement
geometry (which start slices a profile may use) is not modelled: a layout is valid when its compute
and memory slices add up to at most 7 and 8.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpuscale._core.errors import shown
from gpuscale.config.loading import StrictModel


class MigProfile(StrictModel):
    name: str
    compute_slices: int = Field(ge=1, le=7)
    memory_slices: int = Field(ge=1, le=8)
    memory_gb: float = Field(gt=0)


def _table(rows: list[tuple[str, int, int, float]]) -> dict[str, MigProfile]:
    return {n: MigProfile(name=n, compute_slices=c, memory_slices=m, memory_gb=gb) for n, c, m, gb in rows}


MIG_PROFILES: dict[str, dict[str, MigProfile]] = {
    # NVIDIA MIG User Guide, "A100 MIG Profiles" (A100-SXM4-80GB) and "H100 MIG Profiles"
    # (H100-SXM5-80GB): profile, compute slices, memory slices (of 8), memory.
    "a100-80gb": _table(
        [("1g.10gb", 1, 1, 10), ("2g.20gb", 2, 2, 20), ("3g.40gb", 3, 4, 40), ("4g.40gb", 4, 4, 40),
         ("7g.80gb", 7, 8, 80)]
    ),
    "h100-80gb": _table(
        [("1g.10gb", 1, 1, 10), ("1g.20gb", 1, 2, 20), ("2g.20gb", 2, 2, 20), ("3g.40gb", 3, 4, 40),
         ("4g.40gb", 4, 4, 40), ("7g.80gb", 7, 8, 80)]
    ),
    # NVIDIA MIG User Guide, "A100 MIG Profiles" (A100-SXM4-40GB).
    "a100-40gb": _table(
        [("1g.5gb", 1, 1, 5), ("2g.10gb", 2, 2, 10), ("3g.20gb", 3, 4, 20), ("4g.20gb", 4, 4, 20),
         ("7g.40gb", 7, 8, 40)]
    ),
}  # fmt: skip


class WholeGpus(StrictModel):
    """Each pod gets ``model.gpus_per_pod`` whole GPUs (today's behaviour)."""

    kind: Literal["whole"] = "whole"


class MigLayout(StrictModel):
    """Every GPU of the pool is partitioned into ``layout`` (the MIG manager's mixed strategy)."""

    kind: Literal["mig"]
    layout: list[str] = Field(
        min_length=1, description="MIG profiles of one GPU, e.g. [3g.40gb, 2g.20gb, 2g.20gb]."
    )
    speed_factor: dict[str, float] = Field(
        default_factory=dict,
        description="Batch-time multiplier per profile (default 7 / compute slices).",
    )

    def speed(self, profile: MigProfile) -> float:
        return self.speed_factor.get(profile.name, 7.0 / profile.compute_slices)

    @model_validator(mode="after")
    def _positive(self) -> MigLayout:
        if any(v <= 0 for v in self.speed_factor.values()):
            raise ValueError("speed_factor values must be > 0")
        return self


class TimeSlicing(StrictModel):
    """The device plugin advertises each GPU ``replicas_per_gpu`` times (NVIDIA k8s-device-plugin
    ``sharing.timeSlicing.resources[].replicas``); pods on one GPU share its memory, with no
    isolation, and take turns on its SMs."""

    kind: Literal["time-slicing"]
    replicas_per_gpu: int = Field(ge=2, le=64, description="Pods one GPU takes (device plugin replicas).")
    interference: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Slowdown per extra serving pod on the GPU: batch times x (1 + interference x "
        "(serving pods on the GPU - 1)). An assumption to measure (0 = perfect sharing of idle time).",
    )


GpuSharing = Annotated[WholeGpus | MigLayout | TimeSlicing, Field(discriminator="kind")]


def mig_profile(gpu: str, name: str) -> MigProfile | None:
    return MIG_PROFILES.get(gpu, {}).get(name)


def check_layout(gpu: str, layout: list[str]) -> str | None:
    """Why ``layout`` is not a valid MIG partition of a ``gpu`` (None when it is)."""
    table = MIG_PROFILES.get(gpu)
    if table is None:
        return f"{gpu} does not support MIG; MIG GPUs: {', '.join(MIG_PROFILES)}"
    unknown = [p for p in layout if p not in table]
    if unknown:
        return f"unknown MIG profile {shown(unknown[0])} for {gpu}; allowed: {', '.join(table)}"
    compute = sum(table[p].compute_slices for p in layout)
    memory = sum(table[p].memory_slices for p in layout)
    if compute > 7 or memory > 8:
        return f"layout takes {compute} compute / {memory} memory slices; a GPU has 7 / 8"
    return None
