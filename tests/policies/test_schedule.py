"""Schedule windows (:mod:`gpuscale.policies.schedule`): worked instants for ``is_open`` and
``scheduled_bounds`` -- daylight saving in Europe/Amsterdam, overnight windows, whole days -- and the
config errors of a window and of a scenario's ``start``."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuscale._core.errors import ConfigError
from gpuscale.config.safety import ScheduleWindow
from gpuscale.config.scenario import load_scenario, scenario_from_dict
from gpuscale.policies.registry import load_policy_config
from gpuscale.policies.schedule import is_open, local_time, scheduled_bounds

BUSINESS = ScheduleWindow(
    days=("mon", "tue", "wed", "thu", "fri"),
    start="08:00",
    end="20:00",
    timezone="Europe/Amsterdam",
    min_replicas=1,
)
"""Seed 002: one warm replica in business hours."""


def at(text: str) -> float:
    """Epoch seconds of an ISO-8601 instant with its offset."""
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def test_the_module_docs_worked_example() -> None:
    # 2026-03-02T07:30:00Z is Monday 08:30 in Amsterdam (UTC+1 in March): open, the minimum is 1.
    t = at("2026-03-02T07:30:00Z")
    assert local_time(t, "Europe/Amsterdam") == (0, 8 * 60 + 30)
    assert is_open(BUSINESS, t)
    bounds = scheduled_bounds([BUSINESS], t)
    assert (bounds.min_replicas, bounds.max_replicas) == (1, None)
    assert bounds.note == "schedules[0] mon/tue/wed/thu/fri 08:00-20:00 Europe/Amsterdam"


@pytest.mark.parametrize(
    ("instant", "open_"),
    [
        ("2026-03-02T06:59:59Z", False),  # Monday 07:59:59 CET
        ("2026-03-02T07:00:00Z", True),  # 08:00 CET: start is inclusive
        ("2026-03-02T18:59:59Z", True),  # 19:59:59 CET
        ("2026-03-02T19:00:00Z", False),  # 20:00 CET: end is exclusive
        ("2026-03-07T10:00:00Z", False),  # Saturday
        # Daylight saving starts Sunday 2026-03-29 (02:00 CET -> 03:00 CEST): the same 06:30Z is
        # 07:30 local the Monday before (closed) and 08:30 local the Monday after (open).
        ("2026-03-23T06:30:00Z", False),
        ("2026-03-30T06:30:00Z", True),
        ("2026-03-30T18:30:00Z", False),  # 20:30 CEST
        # ... and ends Sunday 2026-10-25 (03:00 CEST -> 02:00 CET): 06:30Z is 08:30 the Monday
        # before (open), 07:30 the Monday after (closed); 07:30Z is 08:30 then (open).
        ("2026-10-19T06:30:00Z", True),
        ("2026-10-26T06:30:00Z", False),
        ("2026-10-26T07:30:00Z", True),
    ],
)
def test_business_hours_in_amsterdam_across_daylight_saving(instant: str, open_: bool) -> None:
    assert is_open(BUSINESS, at(instant)) is open_
    assert scheduled_bounds([BUSINESS], at(instant)).min_replicas == (1 if open_ else None)


@pytest.mark.parametrize(
    ("instant", "open_"),
    [
        ("2026-03-06T21:59:00Z", False),  # Friday 21:59
        ("2026-03-06T22:00:00Z", True),  # Friday 22:00: opens
        ("2026-03-07T05:59:00Z", True),  # Saturday 05:59: still Friday's window
        ("2026-03-07T06:00:00Z", False),  # Saturday 06:00: closed
        ("2026-03-07T23:00:00Z", False),  # Saturday night: Saturday is not a day of the window
        ("2026-03-09T05:00:00Z", False),  # Monday 05:00: Sunday opened no window
        ("2026-03-05T05:00:00Z", False),  # Thursday 05:00: Wednesday opened none either
    ],
)
def test_an_overnight_window_belongs_to_the_day_it_opens(instant: str, open_: bool) -> None:
    night = ScheduleWindow(days=("fri",), start="22:00", end="06:00", max_replicas=0)
    assert is_open(night, at(instant)) is open_


def test_start_equal_to_end_is_the_whole_day() -> None:
    sunday = ScheduleWindow(days=("sun",), start="00:00", end="00:00", timezone="UTC", min_replicas=3)
    assert is_open(sunday, at("2026-03-08T00:00:00Z"))
    assert is_open(sunday, at("2026-03-08T23:59:59Z"))
    assert not is_open(sunday, at("2026-03-09T00:00:00Z"))
    assert not is_open(sunday, at("2026-03-07T23:59:59Z"))


def test_the_highest_open_minimum_and_the_lowest_open_maximum() -> None:
    windows = [
        BUSINESS,  # min 1
        ScheduleWindow(
            days=("mon",), start="12:00", end="14:00", timezone="Europe/Amsterdam", min_replicas=4
        ),
        ScheduleWindow(start="00:00", end="00:00", max_replicas=6),  # every day, all day: max 6
        ScheduleWindow(start="11:00", end="13:00", timezone="UTC", max_replicas=5),
    ]
    # Monday 12:30 in Amsterdam is 11:30Z: all four open -> min max(1, 4) = 4, max min(6, 5) = 5.
    noon = scheduled_bounds(windows, at("2026-03-02T11:30:00Z"))
    assert (noon.min_replicas, noon.max_replicas) == (4, 5)
    assert noon.note.count("schedules[") == 4
    # Monday 09:00 Amsterdam (08:00Z): the business window and the all-day one.
    morning = scheduled_bounds(windows, at("2026-03-02T08:00:00Z"))
    assert (morning.min_replicas, morning.max_replicas) == (1, 6)
    assert morning.note.startswith("schedules[0] ") and "schedules[2] " in morning.note
    # Saturday 14:00Z: only the all-day maximum.
    saturday = scheduled_bounds(windows, at("2026-03-07T14:00:00Z"))
    assert (saturday.min_replicas, saturday.max_replicas) == (None, 6)


# ---------------------------------------------------------------------------------------------------
# Config errors: file, key, value, what is allowed
# ---------------------------------------------------------------------------------------------------


def _policy_error(window: dict[str, Any]) -> ConfigError:
    data = {"kind": "static", "replicas": 1, "safety": {"max_replicas": 4, "schedules": [window]}}
    with pytest.raises(ConfigError) as err:
        load_policy_config(data, "policy.yaml")
    return err.value


@pytest.mark.parametrize(
    ("window", "key", "needle"),
    [
        ({"start": "8:00", "end": "20:00", "min_replicas": 1}, "start", "HH:MM on a 24-hour clock"),
        ({"start": "08:00", "end": "24:00", "min_replicas": 1}, "end", "00:00 to 23:59"),
        ({"start": "08:60", "end": "20:00", "min_replicas": 1}, "start", "HH:MM"),
        (
            {"start": "08:00", "end": "20:00", "timezone": "Europe/Amsterdm", "min_replicas": 1},
            "timezone",
            "IANA name",
        ),
        ({"start": "08:00", "end": "20:00", "timezone": "CET+1", "min_replicas": 1}, "timezone", "IANA"),
        ({"start": "08:00", "end": "20:00"}, "", "sets min_replicas, max_replicas or both"),
        ({"days": ["mon", "mon"], "start": "08:00", "end": "20:00", "min_replicas": 1}, "", "repeat"),
        ({"days": ["monday"], "start": "08:00", "end": "20:00", "min_replicas": 1}, "days[0]", "'mon'"),
        ({"days": [], "start": "08:00", "end": "20:00", "min_replicas": 1}, "days", "at least 1"),
        (
            {"start": "08:00", "end": "20:00", "min_replicas": 3, "max_replicas": 2},
            "",
            "min_replicas 3 > max",
        ),
    ],
)
def test_a_bad_window_names_the_file_the_key_and_what_is_allowed(
    window: dict[str, Any], key: str, needle: str
) -> None:
    err = _policy_error(window)
    assert err.source == "policy.yaml"
    assert err.key == "safety.schedules[0]" + (f".{key}" if key else "")
    assert needle in err.allowed, err.allowed


# ---------------------------------------------------------------------------------------------------
# A scenario's start: the calendar instant of t = 0
# ---------------------------------------------------------------------------------------------------

DIURNAL = resources.files("gpuscale.experiments").joinpath("scenarios", "diurnal.yaml")
WINDOW = {
    "days": ["mon"],
    "start": "08:00",
    "end": "20:00",
    "timezone": "Europe/Amsterdam",
    "min_replicas": 1,
}


def _scenario(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DIURNAL.read_text(encoding="utf-8"))
    return {**data, **extra}


@pytest.mark.parametrize(
    ("start", "epoch_s"),
    [
        ("2026-03-02T00:00:00+01:00", 1_772_406_000.0),  # Monday 00:00 in Amsterdam = 2026-03-01T23:00Z
        ("2026-03-01T23:00:00Z", 1_772_406_000.0),
        ("2026-03-02T00:00:00.5+00:00", 1_772_409_600.5),
    ],
)
def test_start_maps_t0_to_the_calendar(start: str, epoch_s: float) -> None:
    assert scenario_from_dict(_scenario(start=start), "s.yaml").start_epoch_s == epoch_s


def test_no_start_is_epoch_zero_and_an_unquoted_yaml_timestamp_works(tmp_path: Path) -> None:
    assert scenario_from_dict(_scenario(), "s.yaml").start_epoch_s == 0.0
    path = tmp_path / "s.yaml"
    path.write_text(
        DIURNAL.read_text(encoding="utf-8") + "start: 2026-03-02T00:00:00+01:00\n", encoding="utf-8"
    )
    assert load_scenario(path).start_epoch_s == 1_772_406_000.0  # YAML made it a datetime


@pytest.mark.parametrize(
    ("start", "needle"),
    [
        ("2026-03-02T00:00:00", "no UTC offset"),  # ambiguous: which zone's midnight?
        ("2026-03-02", "no UTC offset"),
        ("Monday 8 am", "not a date-time"),
        ("2026-02-30T00:00:00Z", "not a date-time"),
        (1_772_406_000, "ISO-8601"),  # epoch numbers are not accepted: say the date
    ],
)
def test_a_bad_start_is_a_config_error(start: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(_scenario(start=start), "s.yaml")
    assert (err.value.source, err.value.key) == ("s.yaml", "start")
    assert needle in err.value.allowed
    assert "2026-03-02T00:00:00+01:00" in err.value.allowed  # an example of what is allowed


def test_schedules_without_a_start_are_a_config_error() -> None:
    safety = {"min_replicas": 0, "max_replicas": 4, "schedules": [WINDOW]}
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(_scenario(safety=safety), "s.yaml")
    assert (err.value.source, err.value.key) == ("s.yaml", "start")
    assert "required when safety.schedules is set" in err.value.allowed
    # A safety block without schedules needs no calendar.
    assert scenario_from_dict(_scenario(safety={"max_replicas": 4}), "s.yaml").start is None
