"""`tune --method tpe`: Optuna's TPE proposes the candidates, hopeless ones are pruned (the runs saved
counted from the search), the same inputs give the same bytes, and a stopped search resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.checkpoint import STORE_DIR, RunStore
from gpuscale.experiments.study import distributions, hopeless
from gpuscale.experiments.tune import parse_param, run_tune, tune_files
from tests.conftest import busy_scenario

runner = CliRunner()

SCENARIO = busy_scenario(duration_s=120)
"""Two minutes of 3,000 req/s on up to four pods: a KPA target of about 20 or more scales out too
late and misses a 50-ms SLO; lower targets meet it, the higher the cheaper."""

TARGETS = "target=2,4,8,12,16,20,24,32,40,48"


class Stop(Exception):
    """Stands for Ctrl-C part-way through."""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("scenario") / "busy.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return str(path)


def test_hopeless_means_the_target_is_out_of_reach_even_with_perfect_seeds_to_come() -> None:
    assert hopeless([0.96], 3, 0.99)  # (0.96 + 1 + 1) / 3 = 98.7 %
    assert not hopeless([0.98], 3, 0.99)  # (0.98 + 1 + 1) / 3 = 99.3 %
    assert hopeless([0.999, 0.97], 2, 0.99)
    assert not hopeless([0.99], 1, 0.99)


def test_each_param_becomes_a_distribution_of_its_own_kind() -> None:
    d = distributions(
        [parse_param("a=1,2,x"), parse_param("b=1:10"), parse_param("c=0.5:2"), parse_param("d=1:10:4")]
    )
    assert type(d["a"]).__name__ == "CategoricalDistribution" and list(d["a"].choices) == [1, 2, "x"]
    assert type(d["b"]).__name__ == "IntDistribution" and (d["b"].low, d["b"].high) == (1, 10)
    assert type(d["c"]).__name__ == "FloatDistribution"
    assert list(d["d"].choices) == [1, 4, 7, 10]


def test_pruning_saves_the_runs_of_hopeless_candidates_and_keeps_the_answer(scenario: str) -> None:
    params = [parse_param(TARGETS)]
    tpe = run_tune("knative", [scenario], params, seeds=[1, 2], method="tpe", budget=12, seed=1)
    grid = run_tune("knative", [scenario], params, seeds=[1, 2], method="grid")
    by_setting = {s.candidate.overrides.get("target"): s for s in grid.candidates if s.candidate.index}

    assert tpe.trials == 12
    assert tpe.pruned, "some targets miss the SLO on the first seed: they are pruned"
    planned = len(tpe.candidates) * 2
    assert len(tpe.runs) + tpe.runs_saved == planned
    # every pruned candidate misses the target when it runs in full (the grid ran all of them)
    for label in tpe.pruned:
        cand = next(s for s in tpe.candidates if s.candidate.label == label)
        assert not by_setting[cand.candidate.overrides["target"]].meets_slo
    # the search found the grid's winner: the cheapest setting that meets the SLO
    assert tpe.found
    assert tpe.winner.candidate.overrides == grid.winner.candidate.overrides
    doc = json.loads(tune_files(tpe)["candidates.json"])
    assert doc["runs_saved_by_pruning"] == tpe.runs_saved
    assert {c["candidate"] for c in doc["candidates"] if c["pruned_runs_skipped"]} == set(tpe.pruned)


def test_a_stopped_tpe_search_resumes_to_the_same_bytes_without_rerunning_finished_runs(
    scenario: str, tmp_path: Path
) -> None:
    args = ["tune", "-p", "knative", "--scenarios", scenario, "--param", "target=2:48",
            "--param", "stable_window_s=30,60", "--budget", "8", "--seed", "4", "--seeds", "1,2"]  # fmt: skip
    whole = runner.invoke(app, [*args, "--workers", "2", "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert "TPE: 8 trials" in whole.output

    params = [parse_param("target=2:48"), parse_param("stable_window_s=30,60")]
    store = RunStore(tmp_path / "part" / STORE_DIR)

    def stop_half_way(done: int, total: int) -> None:
        if done >= total // 2:
            raise Stop

    with pytest.raises(Stop):
        run_tune("knative", [scenario], params, seeds=[1, 2], method="tpe", budget=8, seed=4,
                 progress=stop_half_way, store=store)  # fmt: skip
    finished = len(list(store.folder.glob("run-*.pkl")))
    assert finished > 0

    resumed = runner.invoke(app, [*args, "--workers", "1", "--resume", "--out", str(tmp_path / "part")])
    assert resumed.exit_code == 0, resumed.output
    assert f"{finished} finished runs reused" in resumed.output
    for name in ("tuned-policy.yaml", "candidates.csv", "candidates.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_an_unknown_method_lists_tpe_first(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["tune", "-p", "knative", "--scenarios", "kis-s-spike", "--param", "target=2,4", "--method", "anneal",
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "allowed: tpe, grid, random" in result.output
    assert not (tmp_path / "out").exists()


def test_a_two_objective_search_gives_a_non_dominated_front_holding_the_winners_region(
    scenario: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cli = runner.invoke(
        app,
        ["tune", "-p", "knative", "--scenarios", scenario, "--param", "target=1:48",
         "--param", "stable_window_s=30,60", "--objectives", "attainment,gpu_hours", "--budget", "12",
         "--seeds", "1", "--workers", "1", "--out", str(out)],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    doc = json.loads((out / "candidates.json").read_text())
    assert doc["objectives"] == ["attainment", "gpu_hours"]
    by_label = {c["candidate"]: c for c in doc["candidates"]}
    front = [by_label[label] for label in doc["pareto_front"]]
    assert front

    def dominates(a: dict[str, float], b: dict[str, float]) -> bool:
        att_a, att_b = round(a["worst_slo_attainment"] / 1e-4), round(b["worst_slo_attainment"] / 1e-4)
        return (a["gpu_hours"] <= b["gpu_hours"] and att_a >= att_b) and (
            a["gpu_hours"] < b["gpu_hours"] or att_a > att_b
        )

    for a in front:
        assert not any(dominates(b, a) for b in doc["candidates"] if b is not a)
    for c in doc["candidates"]:  # every candidate off the front is dominated by one on it
        if not c["pareto"] and c["gpu_hours"] is not None:
            assert any(dominates(f, c) for f in front)
    winner = by_label[doc["winner"]]
    assert winner["meets_slo"]
    assert any(f["worst_slo_attainment"] >= 0.99 and f["gpu_hours"] <= winner["gpu_hours"] for f in front)
    page = (out / "report.html").read_text()
    assert "Pareto front" in page and "data:image/png;base64," in page


def test_objectives_need_attainment_and_the_tpe_method(tmp_path: Path) -> None:
    base = [
        "tune",
        "-p",
        "knative",
        "--scenarios",
        "kis-s-spike",
        "--param",
        "target=2,4",
        "--out",
        str(tmp_path / "o"),
    ]
    for extra, needle in (
        (["--objectives", "gpu_hours,cost"], "two objectives"),
        (["--objectives", "attainment"], "two objectives"),
        (["--objectives", "attainment,gpu_hours", "--method", "grid"], "--method tpe"),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert needle in result.output
    assert not (tmp_path / "o").exists()
