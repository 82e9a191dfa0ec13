"""A Ray head that goes away in the middle of a compare: the command ends with one clear error and
exit code 2 (no traceback, no hang), the runs that had finished are kept, and ``--resume`` on local
workers finishes the rest into the same bytes as a compare that was never interrupted.

The compare runs in its own process, as a user's would: Ray ends a driver whose head has been gone
for a minute, and that must be the command's process, not the test's.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.clock import ManualClock
from gpuscale.cli import app
from gpuscale.experiments.checkpoint import STORE_DIR
from gpuscale.experiments.ray_runner import HeadWatch, RayClusterError, head_answers
from tests.conftest import busy_scenario
from tests.ray_cluster import local_cluster

runner = CliRunner()

FILES = ("report.html", "summary.csv", "summary.json")
POLICIES = ("knative", "gpu-util", "static-peak")
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "busy.yaml"
    path.write_text(yaml.safe_dump(busy_scenario()), encoding="utf-8")
    return path


def test_the_head_watch_gives_up_after_the_grace_and_not_before() -> None:
    clock = ManualClock()
    answers = [True, False, False, True, False, False, False]
    probes: list[float] = []

    def probe() -> bool:
        probes.append(clock.monotonic())
        return answers.pop(0)

    watch = HeadWatch("127.0.0.1:6379", probe, clock, grace_s=10, every_s=1)

    def at(t: float, finished: int = 3) -> None:
        clock.advance(t - clock.monotonic())
        watch.check(finished, 12)

    at(0)  # answers
    at(0.5)  # too soon to probe again
    assert probes == [0.0]
    at(5)  # silent
    at(10)  # silent for 5 s
    at(15)  # answers again: the count starts over
    at(20)  # silent
    at(25)  # silent for 5 s
    with pytest.raises(
        RayClusterError, match=r"lost the cluster's head .* 10 s\); 3 of 12 tasks had finished"
    ):
        at(30)  # silent for 10 s: the head is gone
    assert probes == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]


def test_a_closed_port_does_not_answer() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not head_answers(f"127.0.0.1:{port}", timeout_s=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert head_answers(f"127.0.0.1:{s.getsockname()[1]}", timeout_s=1)


def _kept_runs(out: Path) -> int:
    folder = out / STORE_DIR
    return len(list(folder.glob("run-*.pkl"))) if folder.is_dir() else 0


def test_a_head_killed_mid_compare_ends_with_one_error_and_resume_finishes_the_rest(
    scenario: Path, tmp_path: Path
) -> None:
    args = ["compare", "--scenarios", str(scenario), "--policies", ",".join(POLICIES),
            "--seeds", ",".join(map(str, SEEDS))]  # fmt: skip
    whole = runner.invoke(app, [*args, "--workers", "1", "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "ray"
    total = len(POLICIES) * len(SEEDS)
    with local_cluster() as cluster:
        address = str(cluster.address)
        command = [sys.executable, "-m", "gpuscale.cli", *args, "--ray", address, "--out", str(out)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # once two runs are kept (bounded: 3 min), the head goes: its GCS, raylet and the rest
            stopped = threading.Event()
            for _ in range(1800):
                if _kept_runs(out) >= 2 or proc.poll() is not None or stopped.wait(0.1):
                    break
            assert proc.poll() is None, "the compare ended before the head could be killed"
            assert _kept_runs(out) >= 2, "no run finished on the cluster"
            cluster.remove_node(cluster.head_node, allow_graceful=False)
            # the run gives up 10 s after the head stopped answering; ray.shutdown with a dead head
            # then takes about 17 s; Ray itself would end the process after 60 s
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 2, stdout + stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert f"--ray {address}: lost the cluster's head" in errors[0]
    assert 2 <= _kept_runs(out) < total
    kept = len(list((out / STORE_DIR).glob("*.pkl")))  # the oracles too
    assert f"{kept} finished oracles and runs are kept" in " ".join(stderr.split())
    assert not (out / "summary.json").exists()

    # the user runs the command again, on local workers (its own process, like the first: the kept
    # runs are keyed by a digest of gpuscale's sources as that process reads them)
    resume = [sys.executable, "-m", "gpuscale.cli", *args, "--workers", "1", "--out", str(out), "--resume"]
    resumed = subprocess.run(resume, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{kept} finished oracles and runs reused" in " ".join(resumed.stdout.split())
    for name in FILES:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
