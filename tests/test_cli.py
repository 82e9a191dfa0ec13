"""The command line: commands a newcomer runs, and bad input that must end in one clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.catalog import scenario_names

runner = CliRunner()


def _scenario_file(tmp_path: Path, **overrides: object) -> Path:
    data: dict[str, object] = {
        "name": "cli",
        "duration_s": 60,
        "slo": {"latency_ms": 50},
        "workload": {"kind": "poisson", "rate_rps": 100},
        "model": {"profile": "resnet50-a100-triton"},
        "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]},
    }
    data.update(overrides)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_simulate_writes_summary_timeline_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", str(_scenario_file(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "SLO attainment" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0
    assert summary["scenario"] == "cli"
    header = (out / "timeline.csv").read_text().splitlines()[0]
    assert header.startswith("time_s,arrivals")


def test_simulate_with_a_preset_policy(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = runner.invoke(app, ["simulate", "kis-s-spike", "-p", "gpu-util", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["policy"] == "gpu-util"


def test_listing_commands_show_the_catalog() -> None:
    listed = runner.invoke(app, ["scenarios", "list"])
    assert listed.exit_code == 0
    for name in scenario_names():
        assert name in listed.output
    shown = runner.invoke(app, ["scenarios", "show", "thesis-constant"])
    assert shown.exit_code == 0 and "workload" in shown.output
    profiles = runner.invoke(app, ["profiles", "list"])
    assert profiles.exit_code == 0 and "resnet50-a100-triton" in profiles.output
    policies = runner.invoke(app, ["policies", "list"])
    assert policies.exit_code == 0 and "knative" in policies.output and "gpu-util" in policies.output
    knative = runner.invoke(app, ["policies", "show", "--kind", "knative"])
    assert knative.exit_code == 0 and "stable_window_s" in knative.output


def test_help_explains_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "scenarios", "profiles", "policies", "bench"):
        assert command in result.output


def test_bench_quick_prints_measured_figures() -> None:
    result = runner.invoke(app, ["bench", "--quick"])
    assert result.exit_code == 0, result.output
    assert "requests per second" in result.output
    assert "SimPy reference" in result.output


BAD_TRACE = "time_s\n0.5\n1.0\nnot-a-number\n2.0\n"


@pytest.mark.parametrize(
    ("write", "expect"),
    [
        (lambda p: p.write_text("name: x\nworkload: [unclosed\n"), ["line"]),
        (
            lambda p: _dump(p, model={"profile": "no-such-model"}),
            ["model.profile", "no-such-model", "allowed"],
        ),
        (lambda p: _dump(p, workload={"kind": "poisson", "rate_rps": -5}), ["workload.rate_rps", "-5"]),
        (
            lambda p: _dump(p, workload={"kind": "poisson", "rate_rps": 5, "burst": 1}),
            ["workload.burst", "unknown key"],
        ),
        (lambda p: _dump(p, workload={"kind": "telepathy"}), ["workload", "allowed"]),
        (lambda p: _dump(p, duration_s="long"), ["duration_s", "long"]),
        (lambda p: _trace(p), ["trace.csv", "line 4"]),
    ],
    ids=[
        "yaml-syntax",
        "unknown-profile",
        "negative-rate",
        "unknown-key",
        "unknown-kind",
        "bad-type",
        "bad-trace-row",
    ],
)
def test_bad_scenarios_give_one_clear_message_exit_2_and_write_nothing(
    tmp_path: Path, write: object, expect: list[str]
) -> None:
    path = tmp_path / "scenario.yaml"
    write(path)  # type: ignore[operator]
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", str(path), "--out", str(out)])
    assert result.exit_code == 2
    message = result.output
    assert "Traceback" not in message
    assert str(path) in message or "trace.csv" in message
    for word in expect:
        assert word in message
    assert not out.exists()


def _dump(path: Path, **overrides: object) -> None:
    data: dict[str, object] = {
        "name": "bad",
        "duration_s": 60,
        "slo": {"latency_ms": 50},
        "workload": {"kind": "poisson", "rate_rps": 100},
        "model": {"profile": "resnet50-a100-triton"},
        "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]},
    }
    data.update(overrides)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def _trace(path: Path) -> None:
    (path.parent / "trace.csv").write_text(BAD_TRACE, encoding="utf-8")
    _dump(path, workload={"kind": "trace", "path": "trace.csv"})


def test_bad_policy_names_the_key_and_exits_2(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("kind: hpa\nmin_replicas: 5\nmax_replicas: 2\nmetrics: []\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", "kis-s-spike", "-p", str(policy), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "policy.yaml" in result.output
    assert "Traceback" not in result.output
    unknown = runner.invoke(app, ["simulate", "kis-s-spike", "-p", "no-such-preset"])
    assert unknown.exit_code == 2 and "preset" in unknown.output


def test_unknown_builtin_scenario_lists_the_catalog() -> None:
    result = runner.invoke(app, ["simulate", "no-such-scenario"])
    assert result.exit_code == 2
    assert "thesis-constant" in result.output
