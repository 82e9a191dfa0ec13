"""Schedule windows: the calendar side of the safety tail (seed 002, KEDA's cron trigger).

"Keep a minimum of 1 replica during business hours and scale to zero only overnight": a window
raises the minimum (or lowers the maximum) while it is open. Whether a window is open is a pure
function of an instant: epoch seconds -> local wall time in the window's zone (``zoneinfo``, with
its daylight-saving rules) -> day of week and minute of day. The instant comes from the snapshot,
never from a clock: live, ``snapshot.time_s`` is epoch seconds; in the simulator it is seconds since
the scenario's ``start``, and the wrapper adds that start's epoch.

Worked example: window ``mon-fri 08:00-20:00 Europe/Amsterdam, min 1``; the instant
2026-03-02T07:30:00Z is Monday 08:30 in Amsterdam (UTC+1 in March): open, the minimum is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from gpuscale.config.safety import DAYS, ScheduleWindow, minute_of_day


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def local_time(epoch_s: float, zone: str) -> tuple[int, int]:
    """``(weekday, minute of day)`` of the instant ``epoch_s`` in ``zone`` (weekday 0 = Monday)."""
    local = (_EPOCH + timedelta(seconds=epoch_s)).astimezone(_zone(zone))
    return local.weekday(), local.hour * 60 + local.minute


def is_open(window: ScheduleWindow, epoch_s: float) -> bool:
    """Whether ``window`` is open at ``epoch_s``.

    A window that runs overnight (``end`` before ``start``) belongs to the day it opens: ``fri
    22:00-06:00`` is open on Saturday at 05:00 but not on Monday at 05:00.
    """
    weekday, minute = local_time(epoch_s, window.timezone)
    start, end = minute_of_day(window.start), minute_of_day(window.end)
    today, yesterday = DAYS[weekday], DAYS[(weekday - 1) % 7]
    if start == end:  # the whole day
        return today in window.days
    if start < end:
        return today in window.days and start <= minute < end
    return (today in window.days and minute >= start) or (yesterday in window.days and minute < end)


@dataclass(frozen=True)
class ScheduledBounds:
    """The bounds the open windows set at one instant (None: no open window sets one)."""

    min_replicas: int | None
    max_replicas: int | None
    note: str


def scheduled_bounds(windows: Sequence[ScheduleWindow], epoch_s: float) -> ScheduledBounds:
    """The highest minimum and the lowest maximum of the windows open at ``epoch_s``."""
    lows: list[int] = []
    highs: list[int] = []
    notes: list[str] = []
    for i, window in enumerate(windows):
        if not is_open(window, epoch_s):
            continue
        if window.min_replicas is not None:
            lows.append(window.min_replicas)
        if window.max_replicas is not None:
            highs.append(window.max_replicas)
        notes.append(f"schedules[{i}] {'/'.join(window.days)} {window.start}-{window.end} {window.timezone}")
    return ScheduledBounds(max(lows, default=None), min(highs, default=None), ", ".join(notes))
