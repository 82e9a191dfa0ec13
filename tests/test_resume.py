"""`--resume`: a compare or tune stopped part-way goes on from its finished runs (kept in OUT/.runs)
and ends with the same bytes as a run that was never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.checkpoint import STORE_DIR, RunStore, job_digest
from gpuscale.experiments.compare import run_compare
from gpuscale.experiments.report import report_files
from gpuscale.experiments.suite import SuiteConfig
from gpuscale.experiments.tune import parse_param, run_tune, tune_files
from tests.conftest import busy_scenario

runner = CliRunner()

SCENARIO = busy_scenario(duration_s=120)


class Stop(Exception):
    """Stands for Ctrl-C or a lost cluster part-way through."""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "busy.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


def test_a_stopped_compare_resumes_from_its_finished_runs_to_the_same_bytes(
    scenario: Path, tmp_path: Path
) -> None:
    suite = SuiteConfig(scenarios=[str(scenario)], policies=["knative", "static-peak"], seeds=[1, 2])
    whole = report_files(run_compare(suite, workers=1))

    store = RunStore(tmp_path / STORE_DIR)

    def stop_after_three(phase: str, done: int, total: int) -> None:
        if phase == "runs" and done == 3:
            raise Stop

    with pytest.raises(Stop):
        run_compare(suite, workers=1, progress=stop_after_three, store=store)
    assert store.reused == 0
    assert len(list(store.folder.glob("run-*.pkl"))) == 3
    assert len(list(store.folder.glob("oracle-*.pkl"))) == 2

    calls: list[tuple[str, int, int]] = []
    resumed = RunStore(tmp_path / STORE_DIR)
    result = run_compare(suite, workers=1, progress=lambda *a: calls.append(a), store=resumed)
    assert resumed.reused == 2 + 3  # both oracles and three runs read back, one run simulated
    assert report_files(result) == whole
    assert [c for c in calls if c[0] == "runs"][-1] == ("runs", 4, 4)
    keys = [r.key for r in result.runs]
    assert len(keys) == len(set(keys)) == 4


def test_a_kept_run_is_keyed_by_its_specs_and_the_code_version(scenario: Path, tmp_path: Path) -> None:
    a = job_digest("run", "busy", str(scenario), "kpa", {"kind": "knative", "target": 4}, 1)
    assert a == job_digest("run", "busy", str(scenario), "kpa", {"kind": "knative", "target": 4}, 1)
    assert a != job_digest("run", "busy", str(scenario), "kpa", {"kind": "knative", "target": 8}, 1)
    assert a != job_digest("run", "busy", str(scenario), "kpa", {"kind": "knative", "target": 4}, 2)
    # a scenario file named by path: its content is part of the key
    other = tmp_path / "busy.yaml"
    other.write_text(yaml.safe_dump({**SCENARIO, "duration_s": 60}), encoding="utf-8")
    assert a != job_digest("run", "busy", str(other), "kpa", {"kind": "knative", "target": 4}, 1)


def test_a_stopped_tune_resumes_without_rerunning_finished_candidates(scenario: Path, tmp_path: Path) -> None:
    params = [parse_param("target=4,16")]
    whole = tune_files(run_tune("knative", [str(scenario)], params, seeds=[1], method="grid"))
    store = RunStore(tmp_path / STORE_DIR)

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        run_tune(
            "knative", [str(scenario)], params, seeds=[1], method="grid", progress=stop_after_two, store=store
        )
    resumed = RunStore(tmp_path / STORE_DIR)
    result = run_tune("knative", [str(scenario)], params, seeds=[1], method="grid", store=resumed)
    assert resumed.reused == 2  # the baseline and c001 were finished; only c002 ran
    assert tune_files(result) == whole


def test_the_cli_resumes_into_the_same_out_folder_and_says_so(scenario: Path, tmp_path: Path) -> None:
    args = ["compare", "--scenarios", str(scenario), "--policies", "static-peak", "--seeds", "1",
            "--workers", "1", "--references", "feasible", "--out", str(tmp_path / "out")]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = (tmp_path / "out" / "summary.json").read_bytes()
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    # the oracle, static-peak's run and the feasible reference's
    assert "3 finished oracles and runs reused" in again.output
    assert (tmp_path / "out" / "summary.json").read_bytes() == before
    fresh = runner.invoke(app, args)  # without --resume, everything runs again
    assert fresh.exit_code == 0, fresh.output
    assert "reused" not in fresh.output
