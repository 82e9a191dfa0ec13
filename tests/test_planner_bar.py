"""The planner's bar is computed from a compare's summary.json, scenario by scenario."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpuscale.experiments.compare import run_compare
from gpuscale.experiments.planner_bar import planner_bar, render
from gpuscale.experiments.report import report_files
from gpuscale.experiments.suite import SuiteConfig


def _row(att: float, gpu: float, x: float) -> dict[str, Any]:
    return {
        "estimates": {"slo_attainment": {"mean": att}, "gpu_hours": {"mean": gpu}},
        "gpu_hours_x_oracle": {"mean": x},
    }


def _doc(**scenarios: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"slo_target": 0.99, "scenarios": {k: {"policies": v} for k, v in scenarios.items()}}


def test_only_scenarios_static_peak_meets_count_and_cheaper_upstream_rows_are_named() -> None:
    doc = _doc(
        easy={
            "static-peak": _row(0.999, 4, 2.0),
            "planner": _row(0.995, 2.2, 1.1),
            "hpa": _row(0.992, 2.5, 1.25),
        },
        beaten={
            "static-peak": _row(0.999, 4, 2.0),
            "planner": _row(0.995, 3, 1.5),
            "hpa": _row(0.991, 2.8, 1.4),
        },
        missed={
            "static-peak": _row(0.999, 4, 2.0),
            "planner": _row(0.95, 1, 0.5),
            "ppo": _row(0.999, 0.5, 0.2),
        },
        hopeless={"static-peak": _row(0.7, 4, 2.0), "planner": _row(0.5, 1, 0.5)},
    )
    bar = planner_bar(doc)
    assert [c.scenario for c in bar.checks] == ["easy", "beaten", "missed"]
    easy, beaten, missed = bar.checks
    assert easy.cheapest and easy.planner_x_oracle == 1.1
    assert beaten.meets and beaten.cheaper_meeting == ("hpa",)
    assert not missed.meets and missed.cheaper_meeting == ()  # ppo is not an upstream preset
    assert bar.near == 1 and not bar.met
    assert "within 1.15x of the oracle on 1 (bar: 3); bar not met" in render(bar)
    assert planner_bar(_doc(easy=doc["scenarios"]["easy"]["policies"])).met


def test_the_bar_reads_what_a_compare_writes() -> None:
    suite = SuiteConfig(scenarios=["kis-s-ramp"], policies=["static-peak", "planner", "gpu-util"], seeds=[1])
    result = run_compare(suite, workers=1)
    bar = planner_bar(json.loads(report_files(result)["summary.json"]))
    rows = {r.policy: r for r in result.rows}
    [check] = bar.checks
    assert check.planner_attainment == pytest.approx(
        rows["planner"].estimates["slo_attainment"].mean, rel=1e-8
    )
    assert check.planner_x_oracle == pytest.approx(rows["planner"].gpu_hours_x_oracle.mean, rel=1e-8)
    gpu = rows["gpu-util"].estimates
    cheaper = (
        gpu["slo_attainment"].mean >= 0.99
        and gpu["gpu_hours"].mean < rows["planner"].estimates["gpu_hours"].mean
    )
    assert check.cheaper_meeting == (("gpu-util",) if cheaper else ())
