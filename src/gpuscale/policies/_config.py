"""Helpers shared by the policy families' pydantic configs (private to ``gpuscale.policies``).

:func:`field_error` raises a validation error *at a key* from inside a model validator, so a
cross-field rule ("min_replicas must be <= max_replicas") reaches the user as
``policy.yaml: min_replicas = 5: must be <= max_replicas (3)`` rather than as an error about the
whole mapping. Pydantic merges the raised error into the outer location, list indices included.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class _Missing:
    pass


MISSING_KEY: Any = _Missing()
"""Pass as ``value`` to :func:`field_error` when the key is absent."""


def field_error(loc: tuple[str | int, ...], value: Any, message: str = "") -> NoReturn:
    """Raise a validation error located at ``loc`` (relative to the model being validated).

    ``message`` says what is allowed; it may name other keys ("must be <= max_replicas (3)"). With
    ``value=MISSING_KEY`` the error reads "required key is missing" at ``loc``.
    """
    if value is MISSING_KEY:
        error = InitErrorDetails(type="missing", loc=loc, input={})
    else:
        error = InitErrorDetails(type=PydanticCustomError("gpuscale_rule", message), loc=loc, input=value)
    raise ValidationError.from_exception_data("policy", [error])


def default_max_age_s(configured: float | None, sync_period_s: float) -> float:
    """A signal older than this is stale: the configured value, else three sync periods."""
    return configured if configured is not None else 3.0 * sync_period_s


class TimedBoundedConfig(Protocol):
    """What :class:`ConfigTiming` reads: a config with a sync period, a staleness limit and bounds."""

    @property
    def sync_period_s(self) -> float: ...

    @property
    def max_signal_age_s(self) -> float | None: ...

    @property
    def min_replicas(self) -> int: ...

    @property
    def max_replicas(self) -> int | None: ...


class ConfigTiming:
    """The policy protocol's ``sync_period_s``, ``max_signal_age_s`` (default three sync periods),
    ``replica_bounds`` and ``initial_replicas`` (None: adaptive), read from ``self.config`` -- the same for every family whose config names them
    ``sync_period_s``, ``max_signal_age_s``, ``min_replicas`` and ``max_replicas``."""

    config: TimedBoundedConfig

    @property
    def sync_period_s(self) -> float:
        return self.config.sync_period_s

    @property
    def max_signal_age_s(self) -> float:
        return default_max_age_s(self.config.max_signal_age_s, self.config.sync_period_s)

    @property
    def replica_bounds(self) -> tuple[int, int | None]:
        return (self.config.min_replicas, self.config.max_replicas)

    @property
    def initial_replicas(self) -> int | None:
        """Adaptive: the run starts from the scenario's (or the cluster's) count."""
        return None
