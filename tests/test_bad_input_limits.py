"""Bad input, continued: the pod limit, resource limits up front, safe scenario names, a diurnal day
that must be said, `gpuscale run`'s config refused at load, and `scenarios list` that fits.

The contract is tests/test_bad_input.py's: exit code 2 and one message naming the file, the key, the
value and what is allowed; never a traceback, a hang, a write outside --out; in compare and tune one
bad run is a failed row and the others complete.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import gpuscale.cli
import gpuscale.sim.engine
from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.config.scenario import SAFE_NAME_ALLOWED, load_scenario, scenario_from_dict
from gpuscale.controller import load_controller_config
from gpuscale.controller.config import NAMESPACE_ALLOWED, SELECTOR_ALLOWED, selector_problem
from gpuscale.experiments.catalog import builtin_scenario, scenario_names
from gpuscale.experiments.suite import SuiteConfig
from gpuscale.policies import registry
from gpuscale.policies.base import Decision, MetricsSnapshot, Reason, StaticPolicy, StaticState
from gpuscale.sim.engine import (
    MAX_MEMORY_BYTES,
    MAX_REQUESTS,
    MAX_STEPS,
    MAX_USERS,
    Simulation,
    check_run,
    estimate_run,
)
from tests.test_bad_input import SCENARIO, _refused, _tree

runner = CliRunner()

# A cluster with room for many pods, so that only the limits under test can refuse a run.
ROOMY = {**SCENARIO, "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 8, "nodes": 40}]}}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run starts generating arrivals or allocating the data plane: what is refused
    must be refused before either (where the limits fail, these would exhaust memory or hang)."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a run started before its size was checked")

    monkeypatch.setattr(gpuscale.sim.engine, "build_workload", refuse)
    monkeypatch.setattr(gpuscale.sim.engine, "DataPlane", refuse)


HPA_8 = (
    "kind: hpa\nname: hpa-8\nmin_replicas: 1\nmax_replicas: 8\nmetrics:\n"
    "  - {type: Pods, metric: gpu_util, window_s: 60, target: {type: AverageValue, average_value: 40}}\n"
)
KPA_UNBOUNDED = "kind: knative\nmetric: concurrency\ntarget: 1\nmin_scale: 1\n"  # max_scale 0: no maximum
# Enough load that a policy without a maximum asks for more pods than the scenario's limit of 4.
HEAVY = {
    **ROOMY,
    "duration_s": 120,
    "workload": {"kind": "poisson", "rate_rps": 3000},
    "control": {"max_pods": 4},
}


# --------------------------------------------------------------------------------------------------
# 1. The simulator's pod limit (control.max_pods)
# --------------------------------------------------------------------------------------------------


def test_simulate_refuses_replicas_above_max_pods_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = _write(tmp_path / "roomy.yaml", ROOMY)
    _no_generation(monkeypatch)
    before = _tree(tmp_path)
    result = runner.invoke(
        app, ["simulate", str(scenario), "--replicas", "300", "--out", str(tmp_path / "o")]
    )
    _refused(result, str(scenario), "control.max_pods = 256", "up to 300 replicas", "at least 300")
    assert _tree(tmp_path) == before
    policy = tmp_path / "hpa-8.yaml"
    policy.write_text(HPA_8, encoding="utf-8")
    small = _write(tmp_path / "small.yaml", {**ROOMY, "control": {"max_pods": 4}})
    before = _tree(tmp_path)
    result = runner.invoke(app, ["simulate", str(small), "-p", str(policy), "--out", str(tmp_path / "o")])
    _refused(result, str(small), "control.max_pods = 4", "policy hpa-8", "up to 8 replicas", "at least 8")
    assert _tree(tmp_path) == before


class _Unbounded(StaticPolicy):
    """Asks for ``replicas`` from the first tick on, and declares no maximum (as Knative's
    max_scale 0 does): only the run-time guard can stop it."""

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (0, None)

    @property
    def initial_replicas(self) -> int | None:
        return None

    def decide(self, snapshot: MetricsSnapshot, state: StaticState) -> tuple[Decision, StaticState]:
        return Decision(self.replicas, Reason.STATIC, f"{self.replicas} replicas"), state


def test_a_run_that_outgrows_max_pods_ends_in_a_named_error() -> None:
    scenario = scenario_from_dict({**ROOMY, "control": {"max_pods": 4}}, "s.yaml")
    sim = Simulation(scenario, _Unbounded(10), source="s.yaml")
    with pytest.raises(ConfigError) as info:
        sim.run()
    assert (info.value.source, info.value.key, info.value.value) == ("s.yaml", "control.max_pods", 4)
    message = str(info.value)
    assert "asked for 10 replicas" in message and "at least 10" in message and "t = 15 s" in message


def test_a_run_that_outgrows_max_pods_exits_2_from_simulate(tmp_path: Path) -> None:
    scenario = _write(
        tmp_path / "s.yaml",
        {
            **ROOMY,
            "duration_s": 120,
            "workload": {"kind": "poisson", "rate_rps": 3000},
            "control": {"max_pods": 3},
        },
    )
    policy = tmp_path / "kpa.yaml"
    policy.write_text("kind: knative\nmetric: concurrency\ntarget: 1\nmin_scale: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", str(scenario), "-p", str(policy), "--out", str(tmp_path / "o")])
    _refused(result, str(scenario), "control.max_pods = 3", "the policy asked for", "raise control.max_pods")
    assert not (tmp_path / "o").exists()


def test_compare_reports_runs_over_max_pods_as_failed_and_the_others_complete(tmp_path: Path) -> None:
    """One policy declares a maximum above the pod limit (refused up front), one has none and asks for
    more at run time (the guard); before, the second aborted the whole compare with a traceback."""
    scenario = _write(tmp_path / "s.yaml", HEAVY)
    hpa = tmp_path / "hpa-8.yaml"
    hpa.write_text(HPA_8, encoding="utf-8")
    kpa = tmp_path / "kpa.yaml"
    kpa.write_text(KPA_UNBOUNDED, encoding="utf-8")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"scenarios: [{scenario}]\npolicies: [gpu-util, {hpa}, {kpa}]\nseeds: [1]\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", "--suite", str(suite), "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "(2 failed)" in result.output
    policies = json.loads((out / "summary.json").read_text())["scenarios"]["bad-input"]["policies"]
    assert policies["gpu-util"]["failed"] == 0
    assert policies["hpa-8"]["failed"] == 1 and policies["kpa"]["failed"] == 1
    (up_front,) = policies["hpa-8"]["errors"]
    assert up_front.startswith(f"{scenario}: control.max_pods = 4: policy hpa-8 may ask for up to 8 replicas")
    (at_run_time,) = policies["kpa"]["errors"]
    assert at_run_time.startswith(f"{scenario}: control.max_pods = 4: at t = ")
    assert "the policy asked for" in at_run_time and "raise control.max_pods to at least" in at_run_time


def test_tune_reports_candidates_over_max_pods_as_failed_and_ranks_the_others(tmp_path: Path) -> None:
    scenario = _write(tmp_path / "s.yaml", HEAVY)
    kpa = tmp_path / "kpa.yaml"
    kpa.write_text(KPA_UNBOUNDED, encoding="utf-8")
    out = tmp_path / "out"
    args = ["tune", "-p", str(kpa), "--scenarios", str(scenario), "--param", "max_scale=2,0"]
    result = runner.invoke(
        app, [*args, "--method", "grid", "--seeds", "1", "--workers", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    text = (out / "candidates.json").read_text()
    assert "control.max_pods = 4: at t = " in text
    assert "max_scale: 2" in (out / "tuned-policy.yaml").read_text()


def test_initial_replicas_above_max_pods_is_refused_with_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", {**ROOMY, "control": {"initial_replicas": 10, "max_pods": 4}})
    result = runner.invoke(app, ["simulate", str(path)])
    _refused(result, str(path), "control", "initial_replicas = 10 is above max_pods = 4")


# --------------------------------------------------------------------------------------------------
# 2. Resource limits, checked before a run starts, with the estimate in the message
# --------------------------------------------------------------------------------------------------

OVERSIZED: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # a rate of 1e9 tried to allocate 447 GiB for its first 60-s block
    "rate-1e9": (
        {"workload": {"kind": "poisson", "rate_rps": 1e9}},
        ("workload.rate_rps", "about 60,000,000,000 requests", f"at most {MAX_REQUESTS:,}"),
    ),
    # 30 days at 1e6 req/s hung
    "30-days-at-1e6": (
        {"duration_s": 30 * 86400, "workload": {"kind": "poisson", "rate_rps": 1e6}},
        ("workload.rate_rps", "about 2,592,000,000,000 requests", "over 2,592,000 s", f"{MAX_REQUESTS:,}"),
    ),
    # a trace's rate_multiplier of 1e6 ended in a traceback (out of memory)
    "trace-x1e6": (
        {
            "duration_s": 3600,
            "workload": {"kind": "trace", "path": "builtin:azure-llm-2023-conv", "rate_multiplier": 1e6},
        },
        ("workload.rate_multiplier", "trace rows replayed", "requests", f"{MAX_REQUESTS:,}"),
    ),
    # ... and within the request limit, its copies still do not fit in memory
    "trace-x40000-short": (
        {"workload": {"kind": "trace", "path": "builtin:azure-llm-2023-conv", "rate_multiplier": 40000}},
        (
            "workload.rate_multiplier",
            "GiB of memory",
            "16,384 trace rows",
            f"at most {MAX_MEMORY_BYTES / 2**30:g} GiB",
        ),
    ),
    # 1e8 closed-loop users hung
    "users-1e8": (
        {"workload": {"kind": "closed-loop", "users": 100_000_000, "think_time_s": [1, 2]}},
        ("workload.users = 100000000", "100,000,000 closed-loop users", f"at most {MAX_USERS:,}"),
    ),
    "users-without-thinking": (
        {
            "duration_s": 30 * 86400,
            "workload": {"kind": "closed-loop", "users": 1000, "think_time_s": [0, 0]},
        },
        ("workload.users", "requests expected", "1,000 users on average", f"{MAX_REQUESTS:,}"),
    ),
    "a-spike-of-1e8": (
        {
            "workload": {
                "kind": "poisson",
                "rate": {"kind": "spike", "base_rps": 0, "peak_rps": 1e8, "start_s": 10, "hold_s": 1},
            }
        },
        (
            "workload.rate = 'spike'",
            "GiB of memory",
            "up to 100,000,000 req/s",
            f"{MAX_MEMORY_BYTES / 2**30:g} GiB",
        ),
    ),
    "tiny-scrapes": (
        {"duration_s": 3600, "telemetry": {"scrape_interval_s": 0.0001}},
        ("telemetry.scrape_interval_s = 0.0001", "36,000,000 scrapes", f"at most {MAX_STEPS:,}"),
    ),
    "tiny-ticks": (
        {"duration_s": 86400, "control": {"interval_s": 0.01}},
        ("control.interval_s = 0.01", "8,640,000 control ticks", f"{MAX_STEPS:,}"),
    ),
    "a-users-ramp-that-never-rests": (
        {
            "duration_s": 3600,
            "workload": {
                "kind": "closed-loop",
                "think_time_s": [1, 2],
                "users": {
                    "kind": "sinusoid",
                    "mean_users": 100_000,
                    "amplitude_users": 100_000,
                    "period_s": 10,
                },
            },
        },
        ("workload.users", "changes of the user count", f"{MAX_STEPS:,}"),
    ),
    "a-user-ramp-to-1e30": (  # a float count past int64 once wrapped to a negative one
        {
            "workload": {
                "kind": "closed-loop",
                "users": {"kind": "ramp", "from_users": 1, "to_users": 1e30, "end_s": 60},
                "think_time_s": [1, 2],
            }
        },
        ("workload.users.to_users", "less than or equal to 9007199254740992"),
    ),
    "user-points-to-1e30": (
        {
            "workload": {
                "kind": "closed-loop",
                "users": {"kind": "piecewise-linear", "points": [[0, 1], [60, 1e30]]},
                "think_time_s": [1, 2],
            }
        },
        ("workload.users = 4611686018427387904", "closed-loop users at once", f"at most {MAX_USERS:,}"),
    ),
    "a-huge-queue": (
        {"serving": {"queue_capacity": 1_000_000_000}},
        ("serving.queue_capacity", "GiB of memory", "1,073,741,824-request queue", "GiB"),
    ),
    "a-huge-pod-limit": (
        {"control": {"max_pods": 100_000_000}},
        ("control.max_pods = 100000000", "GiB of memory", "100,000,000 pod slots"),
    ),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_an_oversized_run_is_refused_before_it_starts_with_the_estimate_and_the_limit(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes, needles = OVERSIZED[case]
    path = _write(tmp_path / f"{case}.yaml", {**ROOMY, **changes})
    _no_generation(monkeypatch)
    before = _tree(tmp_path)
    result = runner.invoke(app, ["simulate", str(path), "--out", str(tmp_path / "o")])
    _refused(result, str(path), *needles)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_compare_and_tune_refuse_an_oversized_scenario_before_any_work(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpuscale.experiments.compare
    import gpuscale.experiments.tune

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("ran before the scenarios' sizes were checked")

    monkeypatch.setattr(gpuscale.experiments.compare, "run_compare", refuse)
    monkeypatch.setattr(gpuscale.experiments.tune, "run_tune", refuse)
    big = _write(tmp_path / "big.yaml", {**ROOMY, "workload": {"kind": "poisson", "rate_rps": 1e9}})
    scenarios = f"thesis-constant,{big}"
    out = tmp_path / "out"
    if command == "compare":
        args = ["compare", "--scenarios", scenarios, "--policies", "gpu-util", "--out", str(out)]
    else:
        args = [
            "tune",
            "-p",
            "gpu-util",
            "--scenarios",
            scenarios,
            "--param",
            "max_replicas=2,3",
            "--out",
            str(out),
        ]
    result = runner.invoke(app, args)
    _refused(result, str(big), "workload.rate_rps", "requests expected", f"{MAX_REQUESTS:,}")
    assert not out.exists()


def test_the_catalog_and_the_default_compare_are_well_inside_the_limits() -> None:
    """Every built-in scenario under every preset (and a fixed fleet) asks for at most a tenth of each
    limit: the limits refuse runaway input, never the runs gpuscale ships."""
    suite = SuiteConfig()
    assert set(suite.scenarios) <= set(scenario_names())
    for name in scenario_names():
        scenario = builtin_scenario(name)
        policies: list[Any] = [None, StaticPolicy(max(scenario.control.initial_replicas, 1))]
        policies += [registry.load_preset(p) for p in registry.preset_names()]
        for policy in policies:
            est = check_run(scenario, policy, source=name)
            label = (name, getattr(policy, "name", None))
            assert est.requests <= MAX_REQUESTS / 10, label
            assert est.users <= MAX_USERS / 10, label
            assert est.steps <= MAX_STEPS / 10, label
            assert est.memory_bytes <= MAX_MEMORY_BYTES / 10, label


def test_the_request_estimate_is_an_upper_bound_close_to_what_runs(tmp_path: Path) -> None:
    for name in ("thesis-variable", "kis-s-spike", "azure-trace"):
        scenario = builtin_scenario(name)
        result = gpuscale.sim.engine.simulate(scenario, StaticPolicy(scenario.control.initial_replicas or 1))
        expected = estimate_run(scenario, source=name).requests
        assert 0.6 * expected <= result.summary.requests <= 1.05 * expected, (name, expected)


@pytest.mark.parametrize(
    "workload",
    [
        {"kind": "poisson", "rate_rps": 50_000},
        {"kind": "poisson", "rate": {"kind": "ramp", "from_rps": 1_000, "to_rps": 80_000, "end_s": 120}},
        {"kind": "trace", "path": "builtin:azure-llm-2023-conv", "rate_multiplier": 300},
    ],
)
def test_the_memory_estimate_covers_what_a_run_allocates(workload: dict[str, Any]) -> None:
    import tracemalloc

    scenario = scenario_from_dict({**ROOMY, "duration_s": 120, "workload": workload}, "m.yaml")
    estimate = estimate_run(scenario, StaticPolicy(8), source="m.yaml").memory_bytes
    sim = Simulation(scenario, StaticPolicy(8), source="m.yaml")
    tracemalloc.start()
    try:
        sim.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= estimate <= 3 * peak + 64 * 2**20, (peak, estimate)


def test_a_run_at_the_limits_edge_is_accepted() -> None:
    ok = scenario_from_dict(
        {**ROOMY, "duration_s": 86400, "workload": {"kind": "poisson", "rate_rps": 10_000}}, "ok.yaml"
    )
    est = check_run(ok, StaticPolicy(1), source="ok.yaml")
    assert 8e8 < est.requests <= MAX_REQUESTS


# --------------------------------------------------------------------------------------------------
# 3. Scenario names are safe folder names
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "ABS", "a/b", ".hidden", "", "x" * 200, "sp ace", "..", "a\\b"])
def test_an_unsafe_scenario_name_is_refused_and_nothing_is_written(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    if name == "ABS":
        name = str(tmp_path / "abs")  # an absolute path, inside tmp_path even if it were written
    path = _write(work / "s.yaml", {**SCENARIO, "name": name})
    before = _tree(tmp_path)
    result = runner.invoke(app, ["simulate", str(path)])
    _refused(result, str(path), "name", "not a safe name", SAFE_NAME_ALLOWED)
    assert _tree(tmp_path) == before


def test_an_unsafe_policy_name_cannot_make_the_default_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)  # out/bad-input-/../../escaped is w/escaped: outside out/
    policy = tmp_path / "p.yaml"
    policy.write_text(HPA_8.replace("name: hpa-8", "name: /../../escaped"), encoding="utf-8")
    scenario = _write(tmp_path / "s.yaml", SCENARIO)
    before = _tree(tmp_path)
    result = runner.invoke(app, ["simulate", str(scenario), "-p", str(policy)])
    _refused(result, str(policy), "name", "output folder", "--out")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", ["bad-input", "my_scenario.v2", "A1", "x" * 128, "_x", "-x"])
def test_safe_scenario_names_load(name: str, tmp_path: Path) -> None:
    assert load_scenario(_write(tmp_path / "s.yaml", {**SCENARIO, "name": name})).name == name


# --------------------------------------------------------------------------------------------------
# 4. A diurnal shape in a run shorter than a day must give its period
# --------------------------------------------------------------------------------------------------

DIURNAL_RATE = {"kind": "diurnal", "trough_rps": 5, "peak_rps": 80, "peak_hour": 14}
DIURNAL_USERS = {"kind": "diurnal", "trough_users": 1, "peak_users": 20, "peak_hour": 14}


def test_a_short_diurnal_run_without_a_period_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.yaml",
        {**SCENARIO, "duration_s": 3600, "workload": {"kind": "poisson", "rate": DIURNAL_RATE}},
    )
    result = runner.invoke(app, ["simulate", str(path)])
    _refused(
        result,
        str(path),
        "workload.rate.period_s",
        "required when duration_s (3600 s) is shorter than a day",
        "period_s: 3600",
        "period_s: 86400",
    )
    users = {"kind": "closed-loop", "users": DIURNAL_USERS, "think_time_s": [1, 2]}
    path = _write(tmp_path / "u.yaml", {**SCENARIO, "duration_s": 3600, "workload": users})
    _refused(runner.invoke(app, ["simulate", str(path)]), str(path), "workload.users.period_s", "required")


@pytest.mark.parametrize(
    ("duration", "period"), [(3600, 3600), (3600, 86400), (86400, None), (2 * 86400, None)]
)
def test_a_diurnal_period_given_or_a_day_long_run_loads(duration: float, period: float | None) -> None:
    rate = {**DIURNAL_RATE, **({} if period is None else {"period_s": period})}
    data = {**SCENARIO, "duration_s": duration, "workload": {"kind": "poisson", "rate": rate}}
    assert scenario_from_dict(data, "s.yaml").duration_s == duration


def test_every_shipped_scenario_still_loads() -> None:
    for name in scenario_names():
        builtin_scenario(name)
    examples = Path(__file__).resolve().parents[1] / "docs" / "examples"
    for path in sorted(examples.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "workload" in data and "duration_s" in data:
            load_scenario(path)


# --------------------------------------------------------------------------------------------------
# 5. gpuscale run: selector, namespace and a signal source, refused when the config is loaded
# --------------------------------------------------------------------------------------------------

CONTROLLER = {
    "target": {"name": "triton"},
    "pod_selector": "app=triton",
    "policy": {"kind": "static", "replicas": 1},
    "safety": {"max_replicas": 4},
}


@pytest.mark.parametrize(
    "selector", ["app=x,,", "a b", "=x", "app in (", "app in ()", "Bad NS!", "app=-x", "app>3", ",", "!"]
)
def test_run_refuses_a_bad_label_selector_at_load(selector: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", {**CONTROLLER, "pod_selector": selector})
    with pytest.raises(ConfigError) as info:
        load_controller_config(path)
    assert info.value.key == "pod_selector"
    result = runner.invoke(app, ["run", "--config", str(path), "--once"])
    _refused(result, str(path), "pod_selector", "not a Kubernetes label selector", SELECTOR_ALLOWED)


@pytest.mark.parametrize(
    "selector",
    [
        "app=x",
        "app==x,tier!=db",
        "environment in (production, qa)",
        "!canary",
        "app",
        "gpuscale.io/role=active",
        "app = x , tier notin (a,b)",
        "app=",
    ],
)
def test_good_label_selectors_load(selector: str) -> None:
    assert selector_problem(selector) is None


@pytest.mark.parametrize("where", ["target", "leader_election"])
@pytest.mark.parametrize("namespace", ["Bad NS!", "UPPER", "-lead", "trail-", "a" * 64, "dots.not.ok"])
def test_run_refuses_a_bad_namespace_at_load(where: str, namespace: str, tmp_path: Path) -> None:
    block = {**CONTROLLER.get(where, {}), "namespace": namespace}
    path = _write(tmp_path / "c.yaml", {**CONTROLLER, where: block})
    with pytest.raises(ConfigError) as info:
        load_controller_config(path)
    assert info.value.key == f"{where}.namespace"
    result = runner.invoke(app, ["run", "--config", str(path), "--once"])
    _refused(result, str(path), f"{where}.namespace", "not a Kubernetes namespace", NAMESPACE_ALLOWED)


def test_run_refuses_a_signal_policy_without_prometheus_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpuscale.controller

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the controller was built")

    monkeypatch.setattr(gpuscale.controller, "build_controller", refuse)
    log = tmp_path / "decisions.jsonl"
    path = _write(tmp_path / "c.yaml", {**CONTROLLER, "policy": "gpu-util", "decision_log": str(log)})
    result = runner.invoke(app, ["run", "--config", str(path), "--once"])
    _refused(result, str(path), "prometheus", "required", "policy gpu-util reads signals (gpu_util)")
    assert not log.exists()


# --------------------------------------------------------------------------------------------------
# 6. scenarios list fits a terminal and is whole in a pipe
# --------------------------------------------------------------------------------------------------


def test_scenarios_list_is_one_line_per_scenario_when_piped() -> None:
    result = runner.invoke(app, ["scenarios", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in scenario_names():
        row = [line for line in lines if line.startswith(f"│ {name} ")]
        assert len(row) == 1, name
        assert " ".join(builtin_scenario(name).description.split()) in " ".join(row[0].split())


@pytest.mark.parametrize("width", [80, 100, 140, 220])
def test_scenarios_list_folds_to_fit_a_terminal(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(
        gpuscale.cli, "out", Console(file=screen, force_terminal=True, color_system=None, width=width)
    )
    result = runner.invoke(app, ["scenarios", "list"])
    assert result.exit_code == 0, result.output
    lines = screen.getvalue().splitlines()
    assert max(map(len, lines)) <= width
    assert len(lines) <= 10 * len(scenario_names())  # 615 lines at 80 columns before
    text = screen.getvalue()
    for name in scenario_names():
        assert name in text
        assert builtin_scenario(name).model.name in text
    # the description column is wide enough to read: its widest line has room for a phrase
    widest = max(
        len(cell.strip()) for line in lines if line.startswith("│") for cell in [line.split("│")[-2]]
    )
    assert widest >= 35


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each command in its own folder, so a default output (out/...) never lands in the repository."""
    monkeypatch.chdir(tmp_path)


def test_a_config_error_crosses_a_process_boundary_whole() -> None:
    """Raised in a worker process (compare's oracle pool, a job), it reaches the parent located as it
    was, the missing-key sentinel included."""
    import pickle

    from gpuscale._core.errors import MISSING, ConfigError, ConfigErrors

    one = ConfigError("scenario.yaml", "workload.rate_rps", MISSING, "required", line=3)
    back = pickle.loads(pickle.dumps(one))
    assert (type(back), str(back), back.key, back.line) == (ConfigError, str(one), "workload.rate_rps", 3)
    assert back.value is MISSING
    both = ConfigErrors([one, ConfigError("scenario.yaml", "duration_s", -1, "a number > 0")])
    again = pickle.loads(pickle.dumps(both))
    assert isinstance(again, ConfigErrors) and str(again) == str(both) and len(again.errors) == 2


# --------------------------------------------------------------------------------------------------
# 7. compare's tables: every column into a pipe, folded to fit a terminal
# --------------------------------------------------------------------------------------------------

_TINY = {
    "name": "tiny",
    "duration_s": 120,
    "slo": {"latency_ms": 50},
    "workload": {"kind": "poisson", "rate_rps": 50},
    "model": {"profile": "resnet50-a100-triton"},
    "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 2}]},
}


def _compare_tiny(tmp_path: Path) -> Any:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(_TINY), encoding="utf-8")
    return runner.invoke(
        app,
        ["compare", "--scenarios", str(scenario), "--policies", "gpu-util", "--seeds", "1",
         "--workers", "1", "--out", str(tmp_path / "o")],
    )  # fmt: skip


def test_compare_table_has_every_column_when_piped(tmp_path: Path) -> None:
    result = _compare_tiny(tmp_path)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "policy" in line and "SLO %" in line)
    for column in ("p99 ms", "×orc", "$", "cold", "scale", "mem%", "SM%"):
        assert column in header, (column, header)
    assert any(
        line.startswith("1 runs (0 failed)") and "Report:" in line for line in result.stdout.splitlines()
    )


def test_compare_table_fits_a_narrow_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(
        gpuscale.cli, "out", Console(file=screen, force_terminal=True, color_system=None, width=80)
    )
    result = _compare_tiny(tmp_path)
    assert result.exit_code == 0, result.output
    lines = screen.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    assert "gpu-util" in screen.getvalue()
