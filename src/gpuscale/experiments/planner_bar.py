"""The planner's bar, computed from a compare's ``summary.json`` (``scripts/bench_planner.py`` prints it).

The bar: on every scenario where ``static-peak`` meets the SLO target, the planner meets it too and
is at least as cheap (GPU-hours) as every upstream preset that also meets it; its GPU-hours are at
most 1.15 x the oracle's on at least 8 of those scenarios and at most 1.3 x on all of them. Each
scenario gets a :class:`ScenarioCheck` that says which part holds, so a shortfall names its
scenario and figures; nothing here is hard-coded to a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLANNER = "planner"
BASELINE = "static-peak"
NOT_UPSTREAM = frozenset({PLANNER, BASELINE, "ppo", "sla-planner"})
"""Rows that are not upstream presets: the planner, the fixed baseline, the learned policy, and the
LLM SLA planner (Dynamo's method, but given an illustrative table)."""

NEAR = 1.15
FAR = 1.3
NEAR_COUNT = 8


@dataclass(frozen=True)
class ScenarioCheck:
    scenario: str
    planner_attainment: float | None
    planner_x_oracle: float | None
    meets: bool
    cheaper_meeting: tuple[str, ...]
    """Upstream presets that meet the target on fewer GPU-hours than the planner."""

    @property
    def cheapest(self) -> bool:
        return self.meets and not self.cheaper_meeting


@dataclass(frozen=True)
class PlannerBar:
    slo_target: float
    checks: tuple[ScenarioCheck, ...]
    """One per scenario where static-peak meets the target, in the compare's order."""

    @property
    def near(self) -> int:
        return sum(1 for c in self.checks if c.meets and (c.planner_x_oracle or 0) <= NEAR)

    @property
    def met(self) -> bool:
        return all(c.cheapest and (c.planner_x_oracle or 0) <= FAR for c in self.checks) and self.near >= min(
            NEAR_COUNT, len(self.checks)
        )


def _mean(row: Mapping[str, Any], key: str) -> float | None:
    est = row.get("gpu_hours_x_oracle") if key == "x_oracle" else row["estimates"].get(key)
    value = est.get("mean") if isinstance(est, Mapping) else None
    return float(value) if value is not None else None


def planner_bar(doc: Mapping[str, Any], upstream: Sequence[str] | None = None) -> PlannerBar:
    """The bar on a compare's ``summary.json`` document (``upstream``: the rows that count as upstream
    presets; default every row but :data:`NOT_UPSTREAM`)."""
    target = float(doc["slo_target"])
    checks = []
    for name, scenario in doc["scenarios"].items():
        rows = scenario["policies"]
        if BASELINE not in rows or PLANNER not in rows:
            continue
        base = _mean(rows[BASELINE], "slo_attainment")
        if base is None or base < target:
            continue
        planner = rows[PLANNER]
        att, ratio = _mean(planner, "slo_attainment"), _mean(planner, "x_oracle")
        meets = att is not None and att >= target
        gpu = _mean(planner, "gpu_hours")
        names = [r for r in rows if r not in NOT_UPSTREAM] if upstream is None else list(upstream)
        cheaper = []
        for other in names:
            row = rows.get(other)
            if row is None:
                continue
            o_att, o_gpu = _mean(row, "slo_attainment"), _mean(row, "gpu_hours")
            if o_att is not None and o_att >= target and o_gpu is not None and (gpu is None or o_gpu < gpu):
                cheaper.append(other)
        checks.append(ScenarioCheck(name, att, ratio, meets, tuple(cheaper)))
    return PlannerBar(target, tuple(checks))


def render(bar: PlannerBar) -> str:
    """The bar as a table and a verdict, for a terminal."""
    lines = [f"{'scenario':22} {'planner':>9} {'x oracle':>9}  verdict"]
    for c in bar.checks:
        att = f"{c.planner_attainment:.2%}" if c.planner_attainment is not None else "-"
        ratio = f"{c.planner_x_oracle:.2f}" if c.planner_x_oracle is not None else "-"
        if not c.meets:
            verdict = "misses the target"
        elif c.cheaper_meeting:
            verdict = "meets it; cheaper and meeting it: " + ", ".join(c.cheaper_meeting)
        else:
            verdict = "meets it, cheapest of the upstream presets that do"
        lines.append(f"{c.scenario:22} {att:>9} {ratio:>9}  {verdict}")
    met = sum(1 for c in bar.checks if c.meets)
    lines.append(
        f"static-peak meets {bar.slo_target:.0%} on {len(bar.checks)} scenarios; the planner meets it on "
        f"{met}, is the cheapest that does on {sum(1 for c in bar.checks if c.cheapest)}, within "
        f"{NEAR:g}x of the oracle on {bar.near} (bar: {min(NEAR_COUNT, len(bar.checks))}); bar "
        + ("met" if bar.met else "not met")
    )
    return "\n".join(lines)
