"""compare and tune on a real two-node Ray cluster on 127.0.0.1: the same bytes as local worker
processes, a worker killed mid-task retried with no row lost or doubled, and bad addresses refused.

The cluster is Ray's own multi-node test harness, a head and a second node on 127.0.0.1
(:mod:`tests.ray_cluster`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.compare import run_compare
from gpuscale.experiments.ray_runner import RayPool, check_address
from gpuscale.experiments.report import report_files
from gpuscale.experiments.suite import SuiteConfig
from tests.conftest import busy_scenario
from tests.ray_cluster import local_cluster, ray_home

runner = CliRunner()

SCENARIO = busy_scenario()
"""Three minutes of 3,000 req/s: each run takes about a second here."""

FILES = ("report.html", "summary.csv", "summary.json")
TUNE_FILES = ("tuned-policy.yaml", "candidates.csv", "candidates.json")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A head and a second node (one CPU each) on 127.0.0.1 for the module (:mod:`tests.ray_cluster`)."""
    with local_cluster() as cluster:
        yield str(cluster.address)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "busy.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


def _read(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def test_compare_and_tune_on_the_cluster_write_the_same_bytes_as_local_workers(
    ray_cluster: str, scenario: Path, tmp_path: Path
) -> None:
    import ray

    compare_args = [
        "compare",
        "--scenarios",
        str(scenario),
        "--policies",
        "knative,static-peak",
        "--seeds",
        "1,2",
    ]
    local = runner.invoke(app, [*compare_args, "--workers", "1", "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, [*compare_args, "--ray", ray_cluster, "--out", str(tmp_path / "ray")])
    assert on_ray.exit_code == 0, on_ray.output
    assert f"running on the Ray cluster at {ray_cluster}" in on_ray.output
    assert _read(tmp_path / "ray", FILES) == _read(tmp_path / "local", FILES)
    assert not ray.is_initialized()  # the run let go of the cluster

    # a suite file's runner: ray does the same
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "scenarios": [str(scenario)],
                "policies": ["knative", "static-peak"],
                "seeds": [1, 2],
                "runner": "ray",
                "ray_address": ray_cluster,
            }
        ),
        encoding="utf-8",
    )
    by_suite = runner.invoke(app, ["compare", "--suite", str(suite), "--out", str(tmp_path / "suite")])
    assert by_suite.exit_code == 0, by_suite.output
    assert _read(tmp_path / "suite", FILES) == _read(tmp_path / "local", FILES)

    tune_args = [
        "tune",
        "-p",
        "knative",
        "--scenarios",
        str(scenario),
        "--param",
        "target=4,16",
        "--seeds",
        "1",
    ]
    local = runner.invoke(app, [*tune_args, "--workers", "1", "--out", str(tmp_path / "tune-local")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, [*tune_args, "--ray", ray_cluster, "--out", str(tmp_path / "tune-ray")])
    assert on_ray.exit_code == 0, on_ray.output
    assert _read(tmp_path / "tune-ray", TUNE_FILES) == _read(tmp_path / "tune-local", TUNE_FILES)


def test_train_evaluates_on_the_cluster_with_the_same_model_and_figures(
    ray_cluster: str, tmp_path: Path
) -> None:
    from tests.rl.test_train import TOY

    toy = tmp_path / "toy.yaml"
    toy.write_text(yaml.safe_dump(TOY), encoding="utf-8")
    args = ["train", "--scenarios", str(toy), "--seeds", "1,2", "--timesteps", "512", "--eval-every", "256",
            "--eval-seeds", "11,12,13", "--max-replicas", "4", "--actions", "target", "--stack", "1"]  # fmt: skip
    local = runner.invoke(app, [*args, "--out", str(tmp_path / "local.npz")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, [*args, "--ray", ray_cluster, "--out", str(tmp_path / "ray.npz")])
    assert on_ray.exit_code == 0, on_ray.output
    assert f"running on the Ray cluster at {ray_cluster}" in on_ray.output
    assert (tmp_path / "ray.npz").read_bytes() == (tmp_path / "local.npz").read_bytes()

    def table(output: str) -> list[str]:  # the held-out evaluations: steps, SLO, runs, GPU-hours, cost
        return [line for line in output.splitlines() if line.lstrip("│ ")[:3] in ("256", "512")]

    assert len(table(local.output)) == 2
    assert table(on_ray.output) == table(local.output)
    assert "/3" in table(local.output)[-1]  # runs meeting the SLO out of three held-out runs


def test_evaluate_on_a_pool_sums_the_runs_in_order(ray_cluster: str, tmp_path: Path) -> None:
    from gpuscale.experiments.train import TrainConfig, evaluate, train
    from gpuscale.policies.learned import ActionSpec
    from gpuscale.rl import EnvConfig
    from tests.rl.test_train import TOY

    toy = tmp_path / "toy.yaml"
    toy.write_text(yaml.safe_dump(TOY), encoding="utf-8")
    env = EnvConfig(
        scenarios=(str(toy),),
        seeds=(1,),
        actions=ActionSpec("target", low=1, high=4),
        max_replicas=4,
        stack=1,
    )
    network = train(TrainConfig(env=env, timesteps=256, hyper={"n_steps": 128, "batch_size": 64})).network
    seeds = (11, 12, 13, 14, 15)
    here = evaluate(network, env, (str(toy),), seeds)
    with RayPool(ray_cluster) as pool:
        there = evaluate(network, env, (str(toy),), seeds, pool=pool)
    assert there == here  # every figure, to the last bit
    assert here.runs == 5


def _niceness(_: int) -> int:
    return os.nice(0)


def test_tasks_run_at_the_priority_of_local_workers_not_rays_niceness_15(ray_cluster: str) -> None:
    with RayPool(ray_cluster) as pool:
        assert {nice for _, nice in pool.imap_unordered(_niceness, range(4))} == {os.nice(0)}


def _running_tasks(name: str, address: str) -> list[int]:
    """Worker processes of the cluster at ``address`` running a task of function ``name`` right now
    (Ray titles a busy worker ``ray::NAME``; its parent is its node's raylet, which names the
    cluster's GCS address). Only this cluster's: other Ray clusters may run on the machine."""
    cmdlines: dict[int, list[bytes]] = {}
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    flag = f"--gcs-address={address}".encode()
    raylets = {pid for pid, cmd in cmdlines.items() if cmd[0].endswith(b"/raylet") and flag in cmd}
    return [
        pid
        for pid, cmd in cmdlines.items()
        if cmd[0].strip() == f"ray::{name}".encode() and parents.get(pid) in raylets
    ]


def test_a_worker_killed_mid_compare_is_retried_and_every_row_is_there_once(
    ray_cluster: str, scenario: Path, tmp_path: Path
) -> None:
    suite = SuiteConfig(
        scenarios=[str(scenario)], policies=["knative", "gpu-util", "static-peak"], seeds=[1, 2, 3, 4]
    )
    expected = run_compare(suite, workers=1)

    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        # once the simulations run, kill the first worker seen running one (bounded: 60 s)
        for _ in range(1200):
            if stop.wait(0.05):
                return
            pids = _running_tasks("run_job", ray_cluster)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return

    phases: list[str] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "runs" and not phases:
            phases.append(phase)
            thread.start()

    thread = threading.Thread(target=killer, daemon=True)
    try:
        with RayPool(ray_cluster) as pool:
            result = run_compare(suite, workers=1, progress=progress, pool=pool)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=10)
    assert killed, "no worker was seen running a simulation"
    keys = [run.key for run in result.runs]
    assert len(keys) == len(set(keys)) == 3 * 4
    assert all(run.ok for run in result.runs)
    assert report_files(result) == report_files(expected)
    summary: dict[str, Any] = json.loads(report_files(result)["summary.json"])
    assert summary["seeds"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "address", ["nowhere", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "ray://:10001"]
)
def test_a_bad_ray_address_exits_2_before_any_work(address: str, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="allowed: local"):
        check_address(address)
    result = runner.invoke(
        app,
        ["compare", "--scenarios", "thesis-constant", "--policies", "knative", "--ray", address,
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--ray" in result.output and "allowed: local" in result.output
    assert not (tmp_path / "out").exists()


def test_a_suite_names_its_runner_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("policies: [knative]\nrunner: spark\n", encoding="utf-8")
    result = runner.invoke(app, ["compare", "--suite", str(suite), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "runner" in result.output and "ray" in result.output
    suite.write_text("policies: [knative]\nrunner: ray\nray_address: 'here:there'\n", encoding="utf-8")
    result = runner.invoke(app, ["compare", "--suite", str(suite), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "ray_address" in result.output


def test_ray_local_starts_ray_on_loopback_for_the_run_and_stops_it(
    scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import ray

    monkeypatch.setenv("HOME", str(ray_home()))  # Ray's auth token goes under HOME
    # Ray's session files: a short path, as its sockets' paths must fit in 107 bytes
    short = Path(tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(short))
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    args = ["compare", "--scenarios", str(scenario), "--policies", "static-peak", "--seeds", "1"]
    local = runner.invoke(app, [*args, "--workers", "1", "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, [*args, "--ray", "local", "--workers", "2", "--out", str(tmp_path / "ray")])
    assert on_ray.exit_code == 0, on_ray.output
    assert "running on a Ray instance on 127.0.0.1" in on_ray.output
    assert _read(tmp_path / "ray", FILES) == _read(tmp_path / "local", FILES)
    assert not ray.is_initialized()
