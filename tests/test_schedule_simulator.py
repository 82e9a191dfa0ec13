"""Schedule windows in the simulator: a scenario's ``start`` puts t = 0 on the calendar, and the
timeline's desired column follows a window's bound exactly while it is open, and only then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.scenario import load_scenario
from gpuscale.policies.base import StaticPolicy
from gpuscale.policies.registry import load_policy
from gpuscale.sim.engine import Simulation, scenario_epoch_s, simulate
from tests.conftest import make_scenario


def _scenario(start: str, window: dict[str, Any], duration_s: float = 10_800) -> Any:
    return make_scenario(
        duration_s=duration_s,
        start=start,
        workload={"kind": "poisson", "rate_rps": 1},
        control={"interval_s": 60, "initial_replicas": 0},
        safety={"min_replicas": 0, "max_replicas": 4, "schedules": [window]},
    )


def test_the_minimum_holds_exactly_while_the_window_is_open_across_daylight_saving() -> None:
    # t = 0 is Saturday 2026-03-28 23:30Z (Sunday 00:30 CET). Daylight saving starts that night at
    # 02:00 CET, so the window's 03:00 is CEST: 01:00Z, t = 5400 s (without the change it would be
    # 02:00Z, t = 9000 s); it closes at 04:00 CEST = 02:00Z, t = 9000 s.
    window = {
        "days": ["sun"],
        "start": "03:00",
        "end": "04:00",
        "timezone": "Europe/Amsterdam",
        "min_replicas": 2,
    }
    scenario = _scenario("2026-03-28T23:30:00Z", window)
    assert scenario_epoch_s(scenario) == 1_774_740_600.0
    result = simulate(scenario, StaticPolicy(0))
    rows = result.timeline.rows
    assert sum(5_400 <= r.time_s < 9_000 for r in rows) == 60  # one row per 60-s tick in the window
    for row in rows:
        if 5_400 <= row.time_s < 9_000:
            assert (row.desired, row.reason) == (2, "Scheduled"), row.time_s
        else:
            assert (row.desired, row.reason) == (0, "Static"), row.time_s
    # The pods really came: Ready before the window closed (cold start about 40 s here).
    assert max(r.ready for r in rows if r.time_s < 9_000) == 2
    assert result.summary.decisions_by_reason["Scheduled"] == 60


def test_an_overnight_maximum_caps_the_count_from_the_evening_on() -> None:
    # t = 0 is Friday 2026-03-06 21:00Z; the window fri 22:00-06:00 UTC caps the count at 1 from
    # t = 3600 s to the end of the run (Saturday 00:00Z is still inside it).
    window = {"days": ["fri"], "start": "22:00", "end": "06:00", "timezone": "UTC", "max_replicas": 1}
    result = simulate(_scenario("2026-03-06T21:00:00+00:00", window), StaticPolicy(3))
    for row in result.timeline.rows:
        want = (1, "Scheduled") if row.time_s >= 3_600 else (3, "Static")
        assert (row.desired, row.reason) == want, row.time_s


def test_the_wrapper_reads_the_scenarios_start() -> None:
    window = {"days": ["mon"], "start": "08:00", "end": "09:00", "timezone": "UTC", "min_replicas": 1}
    run = Simulation(_scenario("2026-03-02T07:00:00Z", window, duration_s=600), StaticPolicy(0))
    assert getattr(run.policy, "epoch_offset_s", None) == 1_772_434_800.0  # 2026-03-02T07:00Z


def test_the_readme_examples_differ_only_by_the_window() -> None:
    examples = Path(__file__).resolve().parent.parent / "docs" / "examples"
    plain = load_scenario(examples / "diurnal-day.yaml")
    scheduled = load_scenario(examples / "diurnal-day-business-hours.yaml")
    assert plain.start == scheduled.start and plain.start_epoch_s == 1_772_406_000.0  # Monday 00:00 CET
    assert plain.safety is None and scheduled.safety is not None
    (window,) = scheduled.safety.schedules
    assert (window.start, window.end, window.timezone, window.min_replicas) == (
        "08:00",
        "20:00",
        "Europe/Amsterdam",
        1,
    )
    same = {"name", "description", "safety"}
    assert plain.model_dump(exclude=same) == scheduled.model_dump(exclude=same)


def test_a_policy_files_own_schedule_reads_the_scenarios_calendar() -> None:
    # The same fri 22:00-06:00 cap, carried by the policy file instead of the scenario: anchored to
    # the scenario's start like the scenario's own block (t = 3600 s is Friday 22:00Z).
    policy = load_policy(
        {
            "kind": "static",
            "replicas": 3,
            "safety": {
                "min_replicas": 0,
                "max_replicas": 4,
                "schedules": [{"days": ["fri"], "start": "22:00", "end": "06:00", "max_replicas": 1}],
            },
        },
        "policy.yaml",
    )
    scenario = make_scenario(
        duration_s=10_800,
        start="2026-03-06T21:00:00+00:00",
        workload={"kind": "poisson", "rate_rps": 1},
        control={"interval_s": 60, "initial_replicas": 0},
    )
    for row in simulate(scenario, policy).timeline.rows:
        want = (1, "Scheduled") if row.time_s >= 3_600 else (3, "Static")
        assert (row.desired, row.reason) == want, row.time_s
    no_start = make_scenario(duration_s=600, workload={"kind": "poisson", "rate_rps": 1})
    with pytest.raises(ConfigError) as err:
        simulate(no_start, policy)
    assert err.value.key == "start"
