"""The built-in GPU instance catalogue: what a node is, and what it costs on demand and on spot.

Clouds bill nodes, not pods: a node costs its hourly price from launch to termination whether its
GPUs are used or not. Every price cites its source; spot prices move daily, so the catalogue's spot
column is a representative figure, not a quote. A pool sets ``usd_per_node_hour`` to use its own.
"""

from __future__ import annotations

from pydantic import Field

from gpuscale.config.loading import StrictModel


class InstanceType(StrictModel):
    name: str
    gpu: str = Field(description="GPU type (a key of gpuscale.config.profiles.GPU_TYPES).")
    gpus_per_node: int = Field(ge=1)
    on_demand_usd_per_hour: float = Field(ge=0, description="On-demand price of the whole node, USD/h.")
    spot_usd_per_hour: float | None = Field(
        default=None, ge=0, description="Representative spot price of the node, USD/h; None = not known."
    )
    price_source: str


INSTANCE_TYPES: dict[str, InstanceType] = {
    i.name: i
    for i in (
        InstanceType(
            name="p4d.24xlarge", gpu="a100-40gb", gpus_per_node=8,
            on_demand_usd_per_hour=32.77, spot_usd_per_hour=9.83,
            price_source="AWS p4d.24xlarge (8x A100 40 GB), $32.77/h on demand, $9.83/h spot (seed 001 price table)",
        ),
        InstanceType(
            name="g5.xlarge", gpu="a10g", gpus_per_node=1,
            on_demand_usd_per_hour=1.01, spot_usd_per_hour=0.30,
            price_source="AWS g5.xlarge (1x A10G), $1.01/h on demand, $0.30/h spot (seed 001 price table)",
        ),
        InstanceType(
            name="a2-highgpu-1g", gpu="a100-40gb", gpus_per_node=1,
            on_demand_usd_per_hour=3.67, spot_usd_per_hour=1.10,
            price_source="GCP a2-highgpu-1g (1x A100 40 GB), $3.67/h on demand, $1.10/h spot "
            "(seed 001 price table)",
        ),
        InstanceType(
            name="g4dn.xlarge", gpu="t4", gpus_per_node=1,
            on_demand_usd_per_hour=0.526, spot_usd_per_hour=None,
            price_source="AWS g4dn.xlarge on-demand list price, us-east-1, $0.526/h for 1x T4",
        ),
        InstanceType(
            name="p5.48xlarge", gpu="h100-80gb", gpus_per_node=8,
            on_demand_usd_per_hour=98.32, spot_usd_per_hour=None,
            price_source="AWS p5.48xlarge (8x H100 80 GB) on-demand list price, us-east-1, $98.32/h "
            "(AWS public price at launch, 2023; quoted by nextplatform.com 2023-07-27); no stable spot "
            "figure: set usd_per_node_hour for a spot pool",
        ),
    )
}  # fmt: skip
