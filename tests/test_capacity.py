"""``gpuscale capacity SCENARIO``: the planner's capacity table, measured with the oracle's bisection,
written as a planner policy file that loads and runs; and the compare handing the planner the same
measurement per scenario (never the future load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.capacity import (
    planner_inputs,
    planner_tick_s,
    table_points,
    typical_cold_start_s,
    typical_restart_s,
)
from gpuscale.experiments.catalog import builtin_scenario
from gpuscale.experiments.oracle import capacity_at_slo, compute_oracle
from gpuscale.experiments.suite import DEFAULT_POLICIES, policy_spec
from gpuscale.policies import registry
from gpuscale.policies.planner import PlannerConfig

runner = CliRunner()


def test_capacity_writes_a_planner_policy_with_the_measured_table(tmp_path: Path) -> None:
    out = tmp_path / "planner.yaml"
    result = runner.invoke(app, ["capacity", "kis-s-spike", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(out.read_text())
    config = registry.resolve_policy(str(out), key=None, source="test").config()
    assert isinstance(config, PlannerConfig)
    scenario = builtin_scenario("kis-s-spike")
    cap = config.capacity
    assert cap.profile == config.profile == scenario.model.name == "mobilenetv4-rtx3080-triton"
    assert cap.slo_latency_ms == 500 and cap.slo_target == 0.99
    # the oracle's own measurement: one pod's capacity is what capacity_at_slo measures
    assert cap.points[0].replicas == 1
    assert abs(cap.points[0].rps_per_replica - capacity_at_slo(scenario, 1)) < 0.001
    # fleet sizes 1, 2, ... until the spike's peak of 80 users is covered; total never falls
    ks = [p.replicas for p in cap.points]
    assert ks == list(range(1, len(ks) + 1)) and len(ks) >= 4
    totals = [p.replicas * p.rps_per_replica for p in cap.points]
    assert totals == sorted(totals)
    # the scenario's mean cold start: scheduling 1 s + load 2-5 s + warm-up 1-3 s (images cached)
    assert data["cold_start_s"] == 1 + 3.5 + 2 == typical_cold_start_s(scenario)
    assert data["node_provision_s"] == 0.0
    assert data["restart_s"] == data["cold_start_s"]  # nothing to pull here
    # a 6.5-s cold start gets a 2-s tick and a burst window of one tick (planner_tick_s)
    assert data["sync_period_s"] == data["burst_window_s"] == 2
    # it runs
    sim = runner.invoke(app, ["simulate", "kis-s-spike", "--policy", str(out), "--out", str(tmp_path / "s")])
    assert sim.exit_code == 0, sim.output


def test_capacity_prints_the_policy_without_out() -> None:
    result = runner.invoke(app, ["capacity", "kis-s-spike"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# gpuscale capacity kis-s-spike")
    assert yaml.safe_load(result.output)["kind"] == "planner"


def test_capacity_of_an_unknown_scenario_is_a_clear_error() -> None:
    result = runner.invoke(app, ["capacity", "no-such-scenario"])
    assert result.exit_code == 2
    assert "no-such-scenario" in result.output


def test_measurement_noise_never_makes_the_table_non_monotone() -> None:
    # 2 pods measured at 95 rps in total, less than 1 pod's 100 (the bisection's 1 % noise): total
    # capacity is made non-decreasing (more pods never carry less); per replica rounded up to 0.001
    points = table_points([(1, 100.0), (2, 95.0), (4, 420.0)])
    assert points == [
        {"replicas": 1, "rps_per_replica": 100.0},
        {"replicas": 2, "rps_per_replica": 50.0},
        {"replicas": 4, "rps_per_replica": 105.0},
    ]


def test_the_cold_start_is_the_scenarios_mean_phase_by_phase() -> None:
    # flash-crowd: scheduling 1 + image pull 30-60 + download 20-40 + load 5-10 + warm-up 5-15 s
    flash = builtin_scenario("flash-crowd")
    assert typical_cold_start_s(flash) == 1 + 45 + 30 + 7.5 + 10
    # a restart on a node that keeps the image and the weights skips the pull and the download
    assert typical_restart_s(flash) == 1 + 7.5 + 10
    # gpu-node-cold-start: a node must come first (9-11 min + 30 s for its GPUs)
    inputs = planner_inputs(builtin_scenario("gpu-node-cold-start"), [(1, 50.0)], 0.99)
    assert inputs["node_provision_s"] == 600 + 30


@pytest.mark.parametrize(
    ("cold_start_s", "tick_s"), [(1.0, 2.0), (6.5, 2.0), (9.0, 3.0), (20.0, 6.0), (93.5, 10.0), (630.0, 10.0)]
)
def test_the_planners_tick_is_a_third_of_the_cold_start_from_2_to_10_s(
    cold_start_s: float, tick_s: float
) -> None:
    assert planner_tick_s(cold_start_s) == tick_s


def test_a_long_cold_start_keeps_the_10_s_tick_and_no_burst_window() -> None:
    inputs = planner_inputs(builtin_scenario("flash-crowd"), [(1, 50.0)], 0.99)
    assert inputs["sync_period_s"] == 10 and "burst_window_s" not in inputs


def test_the_compare_gives_the_planner_the_measured_table_of_the_scenarios_service() -> None:
    assert "planner" in DEFAULT_POLICIES
    scenario = builtin_scenario("kis-s-spike")
    oracle = compute_oracle(scenario, 1)
    label, data = policy_spec("planner", oracle)
    assert label == "planner"
    assert oracle.planner_inputs is not None
    assert data["capacity"] == oracle.planner_inputs["capacity"]
    assert data["cold_start_s"] == round(typical_cold_start_s(scenario), 3)
    assert PlannerConfig.model_validate(data).capacity.profile == scenario.model.name
    # the other presets are handed what they were before
    assert policy_spec("predictive-holt-winters", oracle)[1]["capacity_rps_per_replica"] == round(
        oracle.capacity_rps_per_replica, 3
    )


def test_a_capacity_table_of_another_service_is_refused() -> None:
    import pytest

    from gpuscale._core.errors import ConfigError
    from gpuscale.experiments.catalog import builtin_scenario
    from gpuscale.policies.registry import load_preset
    from gpuscale.sim.engine import simulate

    planner = load_preset("planner")  # its table is resnet50-a100-triton's
    with pytest.raises(ConfigError) as info:
        simulate(builtin_scenario("flash-crowd"), planner)
    assert info.value.key == "model.profile" and "resnet50-a100-triton" in str(info.value)
