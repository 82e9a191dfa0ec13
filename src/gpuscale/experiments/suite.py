"""What a compare runs: scenarios × policies × seeds, the built-in default suite, and suite files.

A suite file is YAML::

    scenarios: [thesis-constant, my-service.yaml]     # built-in names or scenario files
    policies: [knative, gpu-util, my-policy.yaml]     # presets, policy files, or `static-peak`
    seeds: [1, 2, 3]
    slo_target: 0.99                                   # share of requests within the SLO that counts as met
    references: [auto]                                 # beside the oracle: auto, feasible, receding-horizon
    workers: 2
    runner: ray                                        # optional: local (default) or ray
    ray_address: auto                                  # with runner: ray; local, auto or HOST:PORT
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import StrictModel, load_yaml, parse_yaml, validate
from gpuscale.experiments.oracle import OracleResult
from gpuscale.policies.static_peak import peak_replicas

DEFAULT_SCENARIOS: tuple[str, ...] = (
    "thesis-constant",
    "thesis-variable",
    "kis-s-spike",
    "kis-s-ramp",
    "kis-s-periodic",
    "kis-s-random",
    "diurnal",
    "flash-crowd",
    "azure-trace",
    "cpu-preprocess",
    # the node and GPU layers: nodes billed by pool, pending pods, MIG slices
    "gpu-node-cold-start",
    "pending-pod-cascade",
    "small-model-mig",
)
DEFAULT_POLICIES: tuple[str, ...] = (
    "static-peak",
    "cpu-hpa",
    "gpu-util",
    "gpu-memory-thesis",
    "knative",
    "keda-queue-depth",
    "ray-serve",
    "hpa-three-metric",
    "multi-signal-gpu",
    "predictive-holt-winters",
    "warm-pool",
    "planner",
)
DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)

STATIC_PEAK = "static-peak"
"""Not a preset: the compare sizes it per scenario and seed to the oracle's peak fleet plus
:data:`STATIC_PEAK_HEADROOM_PCT` (policy kind ``static-peak``)."""

STATIC_PEAK_HEADROOM_PCT = 10.0
"""Spare capacity of the compare's static-peak baseline above the oracle's peak fleet, percent."""

CAPACITY_SIZED_KINDS = ("predictive", "static-peak")
"""Kinds whose presets carry a capacity per replica; the compare sets it to the oracle's measured one."""

CAPACITY_MODEL_KINDS = ("planner",)
"""Kinds whose presets carry a capacity table by fleet size and a cold start; the compare gives them
what ``gpuscale capacity`` measures for the scenario's service (the oracle's measurement)."""


Reference = Literal["auto", "feasible", "receding-horizon"]
"""A simulator-only reference a compare can run beside the oracle (:mod:`gpuscale.experiments.references`);
``auto``: the feasible one where the oracle's bound cannot be reached."""


def _default_references() -> list[Reference]:
    # the feasible reference is one simulation per scenario and seed (everywhere: about 20 % of the
    # default compare's time), so by default it runs only where the bound cannot be reached, which is
    # where a ratio to the bound needs it; the receding horizon costs about four times the whole
    # compare: asked for by name
    return ["auto"]


class SuiteConfig(StrictModel):
    scenarios: list[str] = Field(default_factory=lambda: list(DEFAULT_SCENARIOS), min_length=1)
    policies: list[str] = Field(default_factory=lambda: list(DEFAULT_POLICIES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS), min_length=1)
    slo_target: float = Field(
        default=0.99, gt=0, le=1, description="Attainment that counts as meeting the SLO."
    )
    references: list[Reference] = Field(
        default_factory=_default_references,
        description="Simulator-only references run beside the oracle's lower bound and shown apart from "
        "the ranked policies: feasible (the oracle's schedule asked for one real cold start and node "
        "provisioning ahead, one simulation per scenario and seed), auto (feasible only on the scenarios "
        "and seeds where the bound cannot be reached) and receding-horizon (the ceiling of planning: "
        "candidate fleets rolled forward in copies of the simulation every tick; 30-180 times a run's own "
        "time). Default [auto]; [] for none.",
    )
    workers: int | None = Field(default=None, ge=1, description="Worker processes (default: the cores).")
    runner: Literal["local", "ray"] = Field(
        default="local", description="Where the simulations run: local worker processes, or a Ray cluster."
    )
    ray_address: str = Field(
        default="auto",
        description="With runner: ray, the cluster: local (start one here for the run), auto (the one "
        "running here, or RAY_ADDRESS), or a head's HOST:PORT.",
    )

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str) -> str:
        from gpuscale.experiments.ray_runner import check_address

        try:
            return check_address(v)
        except ConfigError as exc:
            raise ValueError(exc.allowed) from None

    @field_validator("references")
    @classmethod
    def _references(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each reference once: auto or feasible, receding-horizon")
        if "auto" in v and "feasible" in v:
            raise ValueError(
                "auto or feasible, not both (auto is feasible where the bound cannot be reached)"
            )
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct integers >= 0")
        return v


def load_suite(path: str | Path, text: str | None = None) -> SuiteConfig:
    """The suite file at ``path`` (its ``text`` when already read: a pipe reads only once)."""
    data = load_yaml(path) if text is None else parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, data, "expected a mapping with scenarios, policies, seeds")
    return validate(SuiteConfig, data, str(path))


def split_list(value: str, option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(option, None, value, "expected a comma-separated list")
    return items


def parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in split_list(value, "--seeds")]
    except ValueError:
        raise ConfigError("--seeds", None, value, "expected comma-separated integers, e.g. 1,2,3") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", None, value, "seeds must be distinct integers >= 0")
    return seeds


def parse_references(value: str) -> list[str]:
    """``--references``: a comma-separated list of references, or ``none``."""
    from gpuscale.experiments.references import REFERENCES

    if value.strip() == "none":
        return []
    items = split_list(value, "--references")
    bad = [v for v in items if v not in REFERENCES]
    if bad or len(set(items)) != len(items) or {"auto", "feasible"} <= set(items):
        raise ConfigError(
            "--references",
            None,
            value,
            f"expected distinct names from {', '.join(REFERENCES)} (auto or feasible, not both), or none",
        )
    return items


def policy_spec(name: str, oracle: OracleResult | None) -> tuple[str, Any]:
    """The policy to run for ``name`` on one scenario: (label, spec for ``runner.run_job``).

    ``name`` resolves as everywhere (``registry.resolve_policy``: a policy file, then a preset).
    Presets whose kind sizes replicas from a capacity per replica (predictive, static-peak) get the
    oracle's measured capacity, so they are judged with the same numbers as the oracle; the planner
    gets the measured capacity table by fleet size, the scenario's cold start and node provisioning
    time (what ``gpuscale capacity`` writes for the scenario's service). A policy file
    is passed on by path and read by the job, where a broken one becomes a failed run.
    """
    from gpuscale.policies import registry

    if name == STATIC_PEAK:
        # The oracle's peak fleet with headroom, as the static-peak kind sizes any peak: each of the
        # oracle's pods carries one pod's capacity, so the peak load is the peak fleet in pods. Sized
        # for the worst window of this seed's load, it never scales (at least one spare pod).
        peak = int(max(oracle.replicas)) if oracle is not None and len(oracle.replicas) else 1
        replicas = peak_replicas(float(max(1, peak)), 1.0, STATIC_PEAK_HEADROOM_PCT)
        if oracle is not None and oracle.max_replicas:
            # no more pods than the cluster holds: the rest would stay Pending, costing nothing but
            # telling nothing either
            replicas = min(replicas, oracle.max_replicas)
        return name, {"kind": "static-peak", "name": STATIC_PEAK, "replicas": replicas}
    try:
        resolved = registry.resolve_policy(name, key=None, source=f"policy {name}")
    except ConfigError:
        # neither a file nor a preset: the job reports why, as a failed run
        return Path(name).stem, name
    if resolved.source != f"preset {name}":
        return resolved.label, name
    data = resolved.data
    if isinstance(data, dict) and data.get("kind") in CAPACITY_SIZED_KINDS and oracle is not None:
        cap = oracle.capacity_rps_per_replica
        if cap > 0 and math.isfinite(cap):
            data = {**data, "capacity_rps_per_replica": round(cap, 3)}
    planned = oracle.planner_inputs if oracle is not None else None
    if isinstance(data, dict) and data.get("kind") in CAPACITY_MODEL_KINDS and planned is not None:
        data = {**data, **planned}
    return name, data
