"""`tune --storage`: the search kept as an Optuna study in an SQLite or journal file, resumed after its
process is killed (to the same bytes as a search never stopped), shared by two processes, and refused
when the storage or the study does not fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.experiments.study import ABANDONED_ATTR, OWNER_ATTR, POINT_ATTR, RUNS_ATTR, open_storage
from tests.conftest import busy_scenario

runner = CliRunner()

SCENARIO = busy_scenario(duration_s=60)
TARGETS = "target=2,4,8,12,16,20,24,32,40,48"
FILES = ("tuned-policy.yaml", "candidates.csv", "candidates.json")
WAIT_S = 120.0
"""The most a test waits for a subprocess (polling the storage, not sleeping a fixed time)."""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("scenario") / "busy.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return str(path)


def tune_args(scenario: str, out: Path, *extra: str, budget: int = 12, seeds: str = "1,2") -> list[str]:
    return [
        "tune",
        "-p",
        "knative",
        "--scenarios",
        scenario,
        "--param",
        TARGETS,
        "--seeds",
        seeds,
        "--budget",
        str(budget),
        "--seed",
        "1",
        "--workers",
        "1",
        "--out",
        str(out),
        *extra,
    ]


_KILLS_ITSELF = """
import os, signal, sys
import optuna
from gpuscale.cli import app

told = [0]
tell = optuna.study.Study.tell

def tell_then_die(self, *args, **kwargs):
    out = tell(self, *args, **kwargs)
    told[0] += 1
    if told[0] >= {n}:  # SIGKILL: no clean-up, as a lost machine or the OOM killer leaves a run
        os.kill(os.getpid(), signal.SIGKILL)
    return out

optuna.study.Study.tell = tell_then_die
app(sys.argv[1:], prog_name="gpuscale")
"""


_STARTS_TOGETHER = """
import pathlib, sys, time
import optuna
from gpuscale.cli import app

mine, others = pathlib.Path({mine!r}), [pathlib.Path(p) for p in {others!r}]
ask = optuna.study.Study.ask

def ask_then_wait(self, *args, **kwargs):
    # Each worker holds its first trial until every other worker holds one too (bounded): none can
    # take the whole budget while another is still loading, however the machine schedules them.
    trial = ask(self, *args, **kwargs)
    if not mine.exists():
        mine.touch()
        deadline = time.monotonic() + 60.0
        while not all(p.exists() for p in others) and time.monotonic() < deadline:
            time.sleep(0.02)
    return trial

optuna.study.Study.ask = ask_then_wait
app(sys.argv[1:], prog_name="gpuscale")
"""


def spawn(
    args: list[str], kill_after_told: int | None = None, barrier: tuple[Path, list[Path]] | None = None
) -> subprocess.Popen[bytes]:
    """A ``gpuscale`` process; with ``kill_after_told``, one that kills itself (SIGKILL) right after
    telling the study that many trials: a real interruption at a deterministic point; with
    ``barrier`` (its own file, the others'), one that holds its first trial until every process of
    the group holds one, so each takes a share of the budget."""
    code = "import sys; from gpuscale.cli import app; app(sys.argv[1:], prog_name='gpuscale')"
    if kill_after_told is not None:
        code = _KILLS_ITSELF.format(n=kill_after_told)
    if barrier is not None:
        code = _STARTS_TOGETHER.format(mine=str(barrier[0]), others=[str(p) for p in barrier[1]])
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).parent.parent,
    )


def trials(url: str, name: str) -> list[Any]:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def why(result: Any) -> str:
    """A CliRunner result's output, and its traceback if it raised."""
    if result.exc_info is None or isinstance(result.exception, SystemExit):
        return str(result.output)
    return str(result.output) + "".join(traceback.format_exception(*result.exc_info))


def same_files(a: Path, b: Path, names: tuple[str, ...] = FILES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("finished", [2, 7], ids=["early", "late"])
def test_a_killed_tune_resumes_from_its_study_to_the_bytes_of_an_unstopped_one(
    scenario: str, tmp_path: Path, finished: int
) -> None:
    whole = runner.invoke(app, tune_args(scenario, tmp_path / "whole"))
    assert whole.exit_code == 0, why(whole)

    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'study.db'}"  # folders created
    args = tune_args(scenario, tmp_path / "part", "--storage", url, "--study-name", "s")
    proc = spawn(args, kill_after_told=finished)
    try:
        proc.wait(timeout=WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read() if proc.stdout else ""
    before = {t.number: t for t in trials(url, "s") if t.state.is_finished()}
    assert finished <= len(before) < 12, "killed part-way through"

    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, why(resumed)
    same_files(tmp_path / "part", tmp_path / "whole")

    after = trials(url, "s")
    # what had finished is kept as it was, and no candidate ran twice
    for number, t in before.items():
        assert after[number].state == t.state and after[number].values == t.values
    counted = [t for t in after if not t.user_attrs.get(ABANDONED_ATTR)]
    assert len(counted) == 12 and all(t.state.is_finished() for t in counted)
    ran = Counter(t.user_attrs[POINT_ATTR] for t in after if RUNS_ATTR in t.user_attrs)
    assert set(ran.values()) == {1}
    # the trials the killed process left running were failed, and asked again
    left = [t for t in after if t.user_attrs.get(ABANDONED_ATTR)]
    assert all(t.state.name == "FAIL" for t in left)
    print(f"killed after {len(before)} finished trials; {len(left)} left running were asked again")

    again = runner.invoke(app, args)  # a finished study: everything read back
    assert again.exit_code == 0, why(again)
    same_files(tmp_path / "part", tmp_path / "whole")
    assert len(trials(url, "s")) == len(after)


def test_two_processes_on_one_journal_share_the_budget_without_running_a_candidate_twice(
    scenario: str, tmp_path: Path
) -> None:
    url = f"journal:///{tmp_path / 'study.log'}"
    ready = [tmp_path / "ready-1", tmp_path / "ready-2"]
    procs = [
        spawn(
            tune_args(
                scenario, tmp_path / f"w{i}", "--storage", url, "--study-name", "shared", seeds="1,2,3"
            ),
            barrier=(ready[i - 1], [ready[2 - i]]),
        )
        for i in (1, 2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=WAIT_S)
        assert p.returncode == 0, output.decode()

    every = trials(url, "shared")
    counted = [t for t in every if not t.user_attrs.get(ABANDONED_ATTR)]
    assert len(counted) == 12 and all(t.state.is_finished() for t in counted)
    ran = Counter(t.user_attrs[POINT_ATTR] for t in every if RUNS_ATTR in t.user_attrs)
    assert set(ran.values()) == {1}, "no candidate was run by both"
    assert set(ran) == {t.user_attrs[POINT_ATTR] for t in counted}
    owners = {t.user_attrs[OWNER_ATTR]["pid"] for t in counted}
    assert owners == {p.pid for p in procs}, "both took trials"
    # each reads the whole study back: the same answer in both folders
    same_files(tmp_path / "w1", tmp_path / "w2")


@pytest.mark.parametrize(
    ("extra", "scheme"),
    [
        (("--method", "grid"), "sqlite"),
        (("--method", "random", "--budget", "4"), "journal"),
        (("--objectives", "attainment,gpu_hours", "--budget", "6"), "journal"),
    ],
    ids=["grid", "random", "nsga2"],
)
def test_grid_random_and_two_objective_searches_keep_their_answer_with_a_storage(
    scenario: str, tmp_path: Path, extra: tuple[str, ...], scheme: str
) -> None:
    plain = runner.invoke(app, [*tune_args(scenario, tmp_path / "plain", seeds="1"), *extra])
    assert plain.exit_code == 0, why(plain)
    url = f"{scheme}:///{tmp_path / 'study.x'}"
    names = FILES + (("report.html",) if "--objectives" in extra else ())
    for out in ("kept", "read-back"):
        kept = runner.invoke(app, [*tune_args(scenario, tmp_path / out, seeds="1"), *extra, "--storage", url])
        assert kept.exit_code == 0, why(kept)
        same_files(tmp_path / out, tmp_path / "plain", names)
    (study,) = [s.study_name for s in __import__("optuna").get_all_study_summaries(open_storage(url))]
    assert study.startswith("tune-knative-")


def test_a_bad_storage_or_a_study_of_another_search_is_refused(scenario: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    for url, words in [
        ("postgresql://localhost/db", "sqlite:///PATH"),
        ("sqlite://relative.db", "journal:///PATH"),
        (f"sqlite:///{blocker}/under/a/file.db", "cannot write"),
        (f"journal:///{tmp_path}", "is a folder"),
    ]:
        result = runner.invoke(app, tune_args(scenario, tmp_path / "out", "--storage", url))
        assert result.exit_code == 2, result.output
        assert "--storage" in result.output and words in " ".join(result.output.split()), result.output

    url = f"sqlite:///{tmp_path / 'one.db'}"
    first = runner.invoke(
        app, tune_args(scenario, tmp_path / "a", "--storage", url, "--study-name", "x", budget=2)
    )
    assert first.exit_code == 0, first.output
    other = runner.invoke(
        app, tune_args(scenario, tmp_path / "b", "--storage", url, "--study-name", "x", budget=2, seeds="1")
    )
    assert other.exit_code == 2, other.output
    flat = " ".join(other.output.split())
    assert "--study-name" in flat and "seeds" in flat, other.output

    lone = runner.invoke(app, tune_args(scenario, tmp_path / "c", "--study-name", "x"))
    assert lone.exit_code == 2 and "--storage" in lone.output, lone.output


class Stop(Exception):
    """Stands for Ctrl-C part-way through."""


@pytest.mark.parametrize(
    ("method", "objectives", "budget", "stop_at"),
    [("tpe", ("attainment", "gpu_hours"), 8, 7), ("grid", (), 10, 9), ("random", (), 6, 6)],
    ids=["nsga2", "grid", "random"],
)
def test_a_search_stopped_in_its_process_resumes_from_the_study_to_the_same_bytes(
    scenario: str, tmp_path: Path, method: str, objectives: tuple[str, ...], budget: int, stop_at: int
) -> None:
    from gpuscale.experiments.tune import parse_param, run_tune, tune_files

    kwargs: dict[str, Any] = {
        "seeds": [1],
        "method": method,
        "budget": budget,
        "seed": 3,
        "objectives": objectives,
    }
    params = [parse_param(TARGETS)]
    whole = tune_files(run_tune("knative", [scenario], params, **kwargs))

    def stop(done: int, total: int) -> None:
        if done == stop_at:
            raise Stop

    url = f"journal:///{tmp_path / 'study.log'}"
    with pytest.raises(Stop):
        run_tune("knative", [scenario], params, progress=stop, storage=url, **kwargs)
    name = next(iter(__import__("optuna").get_all_study_summaries(open_storage(url)))).study_name
    assert 0 < sum(t.state.is_finished() for t in trials(url, name)) < budget
    assert tune_files(run_tune("knative", [scenario], params, storage=url, **kwargs)) == whole


def test_a_worker_waiting_on_another_hosts_trial_gives_up_after_the_stall_limit(
    scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial another host's worker holds cannot be checked for life; the wait for it is bounded."""
    import optuna

    from gpuscale.experiments import study as st
    from gpuscale.experiments.tune import parse_param, run_tune

    class FakeClock:
        t = 1e9

        def now(self) -> float:
            return self.t

        def sleep(self, s: float) -> None:
            self.t += s

    url = f"journal:///{tmp_path / 'study.log'}"
    kwargs: dict[str, Any] = {"seeds": [1], "method": "tpe", "budget": 3, "seed": 3}
    params = [parse_param(TARGETS)]

    def stop(done: int, total: int) -> None:
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        run_tune("knative", [scenario], params, progress=stop, storage=url, **kwargs)
    name = next(iter(optuna.get_all_study_summaries(open_storage(url)))).study_name
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    foreign = study.ask()
    foreign.set_user_attr(OWNER_ATTR, {"host": "another-host", "pid": 1, "start": None, "token": "x"})
    clock = FakeClock()
    monkeypatch.setattr(st, "_CLOCK", clock)
    with pytest.raises(st.StalledStudy) as info:
        run_tune("knative", [scenario], params, storage=url, **kwargs)
    assert str(foreign.number) in str(info.value) and "run the same command again" in str(info.value)
    assert clock.t - 1e9 > st.STALL_S  # it waited the limit, on the injected clock, no longer
