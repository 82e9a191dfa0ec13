"""The ``safety:`` block: limits every decision passes through before anything is written.

The same block is read by ``gpuscale run`` (the controller's config) and by the simulator (a
scenario's ``safety:``), and both apply it through one wrapper
(:class:`gpuscale.policies.safety.SafePolicy`), so ``compare`` shows exactly what ``run`` would
write. Example::

    safety:
      min_replicas: 0
      max_replicas: 16
      max_step: 4                 # at most 4 replicas added or removed per tick
      gpu_budget: 32              # GPUs in all: active + standby + placeholder pods
      gpus_per_pod: 2
      schedules:                  # seed 002: one warm replica in business hours, zero overnight
        - {days: [mon, tue, wed, thu, fri], start: "08:00", end: "20:00",
           timezone: Europe/Amsterdam, min_replicas: 1}
"""

from __future__ import annotations

import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gpuscale._core.errors import shown
from gpuscale.config.loading import StrictModel

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names in ISO order: ``DAYS[datetime.weekday()]``."""

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _rule(message: str) -> PydanticCustomError:
    """A validation error whose message is ours alone (no "value error," before it)."""
    return PydanticCustomError("gpuscale_rule", message.replace("{", "{{").replace("}", "}}"))


def minute_of_day(text: str) -> int:
    """``"08:30"`` -> 510. Raises ValueError for anything but ``HH:MM`` on a 24-hour clock."""
    m = _CLOCK.match(text)
    if m is None:
        raise ValueError(
            f"{shown(text)} is not a time of day; allowed: HH:MM on a 24-hour clock, 00:00 to 23:59"
        )
    return int(m.group(1)) * 60 + int(m.group(2))


class ScheduleWindow(StrictModel):
    """A recurring time window that raises the minimum or lowers the maximum (KEDA's cron trigger).

    The window opens at ``start`` on each of ``days`` and closes at ``end``, local time in
    ``timezone``; an ``end`` before ``start`` runs overnight into the next day (``22:00``-``06:00``
    on ``fri`` covers Friday 22:00 to Saturday 06:00). ``start`` equal to ``end`` is the whole day.
    """

    days: tuple[Day, ...] = Field(DAYS, min_length=1, description="Days the window opens on. Default all.")
    start: str = Field(description="Local time the window opens, HH:MM (24-hour clock).")
    end: str = Field(description="Local time the window closes, HH:MM; before start: the next day.")
    timezone: str = Field("UTC", description="IANA time zone of start and end. Default UTC.")
    min_replicas: int | None = Field(None, ge=0, description="The minimum while open; null: unchanged.")
    max_replicas: int | None = Field(None, ge=0, description="The maximum while open; null: unchanged.")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        try:
            minute_of_day(value)
        except ValueError as exc:
            raise _rule(str(exc)) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a path
            raise _rule(
                f"unknown time zone {shown(value)}; allowed: an IANA name such as UTC or Europe/Amsterdam"
            ) from None
        return value

    @model_validator(mode="after")
    def _does_something(self) -> ScheduleWindow:
        if self.min_replicas is None and self.max_replicas is None:
            raise _rule("a schedule window sets min_replicas, max_replicas or both")
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            raise _rule(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if len(set(self.days)) != len(self.days):
            raise _rule("days must not repeat a day")
        return self


class SafetyConfig(StrictModel):
    """Bounds every decision passes through before anything is written."""

    min_replicas: int = Field(1, ge=0, description="Never fewer replicas. Default 1.")
    max_replicas: int = Field(ge=1, description="Never more replicas.")
    max_step: int | None = Field(
        None, ge=1, description="Most replicas added or removed per tick; null: no limit. Default null."
    )
    gpu_budget: int | None = Field(
        None,
        ge=0,
        description="Most GPUs the target may request in all (active, standby and placeholder pods); "
        "null: no budget. Default null.",
    )
    gpus_per_pod: int = Field(1, ge=0, description="GPUs each replica requests. Default 1.")
    schedules: tuple[ScheduleWindow, ...] = Field(
        (),
        description="Time windows raising the minimum or lowering the maximum (KEDA's cron trigger); "
        "the highest open minimum and the lowest open maximum apply; a maximum wins over a minimum.",
    )

    @property
    def ceiling(self) -> int:
        """The most replicas allowed: ``max_replicas``, lowered to what the GPU budget pays for.

        Worked example: budget 10 GPUs at 4 per pod pays for ``10 // 4 = 2`` replicas (8 GPUs).
        """
        if self.gpu_budget is None or self.gpus_per_pod == 0:
            return self.max_replicas
        return min(self.max_replicas, self.gpu_budget // self.gpus_per_pod)

    @property
    def budget_pods(self) -> int | None:
        """Pods of every kind the GPU budget pays for (None: no budget)."""
        if self.gpu_budget is None or self.gpus_per_pod == 0:
            return None
        return self.gpu_budget // self.gpus_per_pod

    @model_validator(mode="after")
    def _consistent(self) -> SafetyConfig:
        if self.min_replicas > self.max_replicas:
            raise _rule(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.min_replicas > self.ceiling:
            raise _rule(
                f"min_replicas {self.min_replicas} x gpus_per_pod {self.gpus_per_pod} exceeds "
                f"gpu_budget {self.gpu_budget}"
            )
        return self
