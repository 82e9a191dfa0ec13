"""`gpuscale compare` end to end: files, determinism, failed runs kept as rows, suites, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.compare import estimate, pareto_front

runner = CliRunner()


def _compare(out: Path, *extra: str) -> str:
    result = runner.invoke(
        app,
        [
            "compare",
            "--scenarios",
            "kis-s-spike",
            "--policies",
            "gpu-util,knative,static-peak",
            "--seeds",
            "1,2",
            "--workers",
            "2",
            "--out",
            str(out),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_compare_writes_the_report_and_identical_summaries_for_the_same_seeds(tmp_path: Path) -> None:
    out_a = _compare(tmp_path / "a")
    _compare(tmp_path / "b")
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("summary.json", "summary.csv", "report.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert "kis-s-spike" in out_a and "runs/s" in out_a
    summary = json.loads((a / "summary.json").read_text())
    policies = summary["scenarios"]["kis-s-spike"]["policies"]
    assert set(policies) == {"gpu-util", "knative", "static-peak"}
    rows = list(csv.DictReader((a / "summary.csv").open()))
    assert {r["policy"] for r in rows} == {"gpu-util", "knative", "static-peak"}


def test_a_broken_policy_is_reported_as_failed_and_the_others_complete(tmp_path: Path) -> None:
    # Valid on its own (so compare accepts it up front), it cannot run on this scenario: its 0.5-s
    # window is shorter than the scenario's scrape interval.
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "kind: hpa\nmin_replicas: 1\nmax_replicas: 4\nmetrics:\n"
        "  - {type: External, metric: queue_length, aggregation: total, window_s: 0.5,\n"
        "     target: {type: AverageValue, average_value: 10}}\n",
        encoding="utf-8",
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"scenarios: [kis-s-spike]\npolicies: [gpu-util, {broken}]\nseeds: [1]\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", "--suite", str(suite), "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "failed" in result.output
    summary = json.loads((out / "summary.json").read_text())
    policies = summary["scenarios"]["kis-s-spike"]["policies"]
    assert policies["broken"]["failed"] == 1
    assert policies["broken"]["errors"]
    assert policies["gpu-util"]["failed"] == 0
    assert "failed" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--scenarios", "no-such-scenario"], "no-such-scenario"),
        (["--seeds", "1,x"], "--seeds"),
        (["--policies", " , "], "--policies"),
    ],
)
def test_bad_compare_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], expect: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert expect in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_estimate_gives_a_student_t_interval() -> None:
    e = estimate([1.0, 2.0, 3.0])
    assert e.mean == pytest.approx(2.0)
    # t(0.975, 2) = 4.303, s = 1, n = 3
    assert e.half_width == pytest.approx(4.303 / 3**0.5, rel=1e-3)
    assert estimate([None, 5.0]).half_width == 0.0
    assert estimate([]).mean is None


def test_pareto_front_keeps_only_undominated_trade_offs() -> None:
    # (GPU-hours, attainment): the second is dominated by the first (dearer and no better).
    flags = pareto_front([(1.0, 0.99), (2.0, 0.99), (0.5, 0.5), (3.0, 1.0), (0.5, 0.4)])
    assert flags == [True, False, True, True, False]


def test_static_peak_asks_no_more_pods_than_the_cluster_holds() -> None:
    import numpy as np

    from gpuscale.experiments.oracle import OracleResult
    from gpuscale.experiments.suite import policy_spec

    def oracle(max_replicas: int | None) -> OracleResult:
        return OracleResult(
            scenario="s", seed=1, capacity_rps_per_replica=10.0, gpu_hours=1.0, cost_usd=1.0,
            times_s=np.array([0.0, 10.0]), replicas=np.array([3, 7]), method="", max_replicas=max_replicas,
        )  # fmt: skip

    _, free = policy_spec("static-peak", oracle(None))
    _, capped = policy_spec("static-peak", oracle(6))
    assert free["replicas"] > 7
    assert capped["replicas"] == 6
