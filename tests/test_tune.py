"""`gpuscale tune`: parameter specs, dotted keys, validation, search spaces, the choice, and the files."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.errors import MISSING, ConfigError
from gpuscale.cli import app
from gpuscale.experiments.tune import (
    get_path,
    load_baseline,
    make_candidates,
    parse_param,
    random_points,
    run_tune,
    set_path,
)
from gpuscale.policies import registry
from tests.conftest import busy_scenario

runner = CliRunner()


def _scenario(tmp_path: Path, *, slo_ms: float = 50, name: str = "busy") -> Path:
    """:func:`tests.conftest.busy_scenario`, written to a file."""
    data = busy_scenario(name=name, slo={"latency_ms": slo_ms})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _kpa(tmp_path: Path, target: float) -> Path:
    path = tmp_path / f"kpa-{target:g}.yaml"
    path.write_text(
        f"kind: knative\nname: kpa\nmetric: concurrency\ntarget: {target}\nmin_scale: 1\nmax_scale: 4\n",
        encoding="utf-8",
    )
    return path


# -- KEY=SPEC --------------------------------------------------------------------------------------------
def test_a_list_spec_keeps_the_values_typed_and_in_order() -> None:
    p = parse_param("scale_down_delay_s=0,60,300")
    assert (p.key, p.values) == ("scale_down_delay_s", (0, 60, 300))
    assert parse_param("target= 0.5, 2 ,x").values == (0.5, 2, "x")
    assert parse_param("enable_scale_to_zero=true,false").values == (True, False)
    assert parse_param("metrics.0.target.average_value=40").key == "metrics.0.target.average_value"


def test_a_range_spec_gives_ends_and_grid_steps() -> None:
    p = parse_param("target=1:10")
    assert (p.low, p.high, p.steps, p.values) == (1, 10, None, None)
    assert parse_param("target=1:10:4").grid_values() == (1, 4, 7, 10)
    assert parse_param("target=0.5:1.5:3").grid_values() == (0.5, 1.0, 1.5)
    # two integer ends give integer settings, rounded and without repeats
    assert parse_param("min_scale=1:2:3").grid_values() == (1, 2)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("target", "KEY=A,B,C"),
        ("=1,2", "KEY=A,B,C"),
        ("target=", "KEY=A,B,C"),
        ("target=1,,2", "empty item"),
        ("target=1:x", "two numbers"),
        ("target=5:1", "LO < HI"),
        ("target=1:4:1", "STEPS"),
        ("target=1,2:3", "not both"),
        ("behavior..x=1", "dotted path"),
    ],
)
def test_bad_param_forms_name_the_option_and_the_accepted_forms(text: str, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_param(text)
    assert f"--param {text}" in str(info.value)
    assert expect in str(info.value)


def test_a_grid_over_a_range_without_steps_is_refused() -> None:
    with pytest.raises(ConfigError, match="LO:HI:STEPS"):
        parse_param("target=1:4").grid_values()


# -- dotted paths ------------------------------------------------------------------------------------------
def test_dotted_paths_reach_into_lists_and_create_missing_mappings() -> None:
    base = load_baseline("gpu-util").config
    changed = set_path(base, "metrics.0.target.average_value", 55)
    assert get_path(changed, "metrics.0.target.average_value") == 55
    assert get_path(base, "metrics.0.target.average_value") == 40  # the original is left alone
    deeper = set_path(changed, "behavior.scale_down.stabilization_window_s", 30)
    assert deeper["behavior"] == {"scale_down": {"stabilization_window_s": 30}}
    registry.load_policy(deeper, "test")  # the kind accepts both
    assert get_path(base, "metrics.3.target") is MISSING and get_path(base, "nope.x") is MISSING


@pytest.mark.parametrize(
    ("key", "expect"),
    [
        ("metrics.3.target.average_value", "out of range, allowed: 0..0"),
        ("metrics.x.target", "is a list"),
        ("min_replicas.value", "is a value"),
    ],
)
def test_a_path_that_leads_nowhere_says_why(key: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        set_path(load_baseline("gpu-util").config, key, 1)


# -- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "param", "expect"),
    [
        ("knative", "targt=1,2", ["--param targt=1,2", "targt", "not a parameter of kind knative", "target"]),
        ("knative", "target=1,-3", ["--param target=1,-3", "target = -3", "greater than 0"]),
        (
            "gpu-util",
            "metrics.0.target.average_value=abc",
            ["metrics.0.target.average_value = 'abc'", "valid number"],
        ),
        ("gpu-util", "min_replicas=1,5", ["min_replicas = 5", "max_replicas"]),
        ("gpu-util", "metrics.0.target.averge_value=1", ["averge_value", "allowed: ", "average_value"]),
    ],
)
def test_a_bad_key_or_a_rejected_value_is_a_config_error_naming_it(
    policy: str, param: str, expect: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_candidates(load_baseline(policy), [parse_param(param)], "grid", 50, 0)
    for text in expect:
        assert text in str(info.value)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--param", "targt=1,2"], "targt"),
        (["--param", "target=0,2"], "target = 0"),
        (["--param", "target=1:4"], "LO:HI:STEPS"),
        (["--param", "target=1,2,3", "--param", "scale_down_delay_s=0,60", "--budget", "5"], "3 × 2 = 6"),
        (["--param", "target=2", "--method", "annealing"], "--method"),
        (["--param", "target=2", "--policy", "no-such-preset"], "no-such-preset"),
    ],
)
def test_bad_tune_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], expect: str) -> None:
    out = tmp_path / "out"
    argv = ["tune", "--policy", "knative", "--scenarios", "kis-s-spike", "--seeds", "1", "--method", "grid"]
    result = runner.invoke(app, [*argv, *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert expect in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


# -- search spaces ----------------------------------------------------------------------------------------------
def test_the_grid_is_the_exact_product_after_the_baseline() -> None:
    params = [parse_param("target=2,4,8"), parse_param("scale_down_delay_s=0:300:3")]
    cands = make_candidates(load_baseline("knative"), params, "grid", 9, 0)
    assert cands[0].label == "baseline" and cands[0].overrides == {}
    expected = [
        {"target": t, "scale_down_delay_s": d} for t, d in itertools.product((2, 4, 8), (0, 150, 300))
    ]
    assert [c.overrides for c in cands[1:]] == expected
    assert [c.config["target"] for c in cands[1:4]] == [2, 2, 2]


def test_random_search_is_deterministic_for_a_seed_and_differs_for_another() -> None:
    params = [parse_param("target=1:64"), parse_param("panic_threshold_percentage=110.0:400.0")]
    a = random_points(params, 12, seed=7)
    assert a == random_points(params, 12, seed=7)
    assert a != random_points(params, 12, seed=8)
    assert len(a) == 12 and len({json.dumps(p) for p in a}) == 12
    for p in a:
        assert isinstance(p["target"], int) and 1 <= p["target"] <= 64
        assert isinstance(p["panic_threshold_percentage"], float)
        assert 110.0 <= p["panic_threshold_percentage"] <= 400.0
    # a space smaller than the budget gives each point once
    small = random_points([parse_param("target=2,4")], 10, seed=1)
    assert sorted(p["target"] for p in small) == [2, 4]


# -- choosing --------------------------------------------------------------------------------------------------
def test_tuning_the_target_of_an_over_provisioned_kpa_finds_a_cheaper_config_that_meets_the_slo(
    tmp_path: Path,
) -> None:
    result = run_tune(
        str(_kpa(tmp_path, 1)),
        [str(_scenario(tmp_path))],
        [parse_param("target=2,4,8,16,32")],
        seeds=[1],
    )
    base, win = result.baseline, result.winner
    assert result.found and base.meets_slo
    assert win.candidate.index != 0
    assert win.cost_usd is not None and base.cost_usd is not None
    assert win.cost_usd < base.cost_usd
    meeting = [s for s in result.candidates if s.meets_slo]
    assert win.cost_usd == min(s.cost_usd or 0.0 for s in meeting)
    assert any(not s.meets_slo for s in result.candidates)  # the target is not free: some miss the SLO
    # ties on cost go to the earlier candidate: the winner is the first of the cheapest
    cheapest = [s for s in meeting if s.cost_usd == win.cost_usd and s.gpu_hours == win.gpu_hours]
    assert win is min(cheapest, key=lambda s: s.candidate.index)
    assert [s.rank for s in result.ranked] == list(range(1, len(result.candidates) + 1))


def test_when_no_candidate_meets_the_slo_the_best_worst_case_wins_and_the_cli_says_so(
    tmp_path: Path,
) -> None:
    # a 5-ms SLO at 3,000 req/s: even four pods leave a few % of requests over it
    scenario = _scenario(tmp_path, slo_ms=5, name="tight")
    out = tmp_path / "out"
    argv = [
        "tune",
        "-p",
        str(_kpa(tmp_path, 16)),
        "--scenarios",
        str(scenario),
        "--seeds",
        "1",
        "--method",
        "grid",
    ]
    cli = runner.invoke(app, [*argv, "--param", "target=4,8,32", "--workers", "1", "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    assert "No candidate meets the SLO target" in cli.output
    doc = json.loads((out / "candidates.json").read_text())
    assert doc["winner_meets_slo"] is False
    assert not any(c["meets_slo"] for c in doc["candidates"])
    best = max(c["worst_slo_attainment"] for c in doc["candidates"])
    winner = next(c for c in doc["candidates"] if c["candidate"] == doc["winner"])
    assert winner["worst_slo_attainment"] == best
    assert winner["candidate"] != "baseline"  # the 16-target baseline is the worst here
    assert "NO candidate meets" in (out / "tuned-policy.yaml").read_text()


# -- files -------------------------------------------------------------------------------------------------------
def _tune_cli(out: Path, tmp_path: Path, workers: str) -> str:
    result = runner.invoke(
        app,
        [
            "tune",
            "--policy",
            str(_kpa(tmp_path, 1)),
            "--scenarios",
            str(_scenario(tmp_path)),
            "--param",
            "target=2:48",
            "--param",
            "stable_window_s=30,60",
            "--method",
            "random",
            "--budget",
            "6",
            "--seed",
            "3",
            "--seeds",
            "1,2",
            "--workers",
            workers,
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_tune_files_are_byte_identical_across_runs_and_the_tuned_policy_simulates(tmp_path: Path) -> None:
    text = _tune_cli(tmp_path / "a", tmp_path, "1")
    _tune_cli(tmp_path / "b", tmp_path, "2")
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("tuned-policy.yaml", "candidates.csv", "candidates.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert "Winner" in text and "baseline" in text

    rows = list(csv.DictReader((a / "candidates.csv").open()))
    assert len(rows) == 7 and rows[0]["candidate"] == "baseline" and rows[0]["target"] == "1"
    assert {"slo_attainment[busy]", "cost_usd[busy]", "latency_p95_ms[busy]", "gpu_hours[busy]"} <= set(
        rows[0]
    )
    doc: dict[str, Any] = json.loads((a / "candidates.json").read_text())
    winner = next(c for c in doc["candidates"] if c["candidate"] == doc["winner"])

    tuned = a / "tuned-policy.yaml"
    config = yaml.safe_load(tuned.read_text())
    assert config["target"] == winner["params"]["target"]
    assert config["stable_window_s"] == winner["params"]["stable_window_s"]
    registry.load_policy_file(tuned)
    sim_out = tmp_path / "s"
    sim = runner.invoke(
        app, ["simulate", str(_scenario(tmp_path)), "-p", str(tuned), "--seed", "1", "--out", str(sim_out)]
    )
    assert sim.exit_code == 0, sim.output
    summary = json.loads((sim_out / "summary.json").read_text())
    assert summary["policy"] == ("kpa" if doc["winner"] == "baseline" else "kpa-tuned")
    assert summary["requests"] > 0
