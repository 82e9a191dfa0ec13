"""The error taxonomy, documented in one place.

``GpuscaleError``
├── ``ConfigError``      bad user input (scenario, policy, controller config, trace file): names the file,
│                        the key path (or line), the offending value and what is allowed. The CLI turns it
│                        into one message and exit code 2.
├── ``TemporaryError``   an outside system misbehaved in a way that may pass (timeout, 409 conflict, 5xx):
│                        retry with backoff.
└── ``PermanentError``   an outside system said no in a way that will not pass by itself (403, the target
                         vanished): report and stop acting on that target.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

SHOWN_CHARS = 80
"""The most characters of an offending value an error message shows."""
SHOWN_STRING_CHARS = 1000
"""A string value (a path, a name) is shown whole up to this length: cutting a path in the middle
hides the part that was wrong."""


class _Short(reprlib.Repr):
    """``repr`` with bounded work: a few items per level, a few levels, long scalars cut."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = 8
        self.maxdict = self.maxset = self.maxfrozenset = 8
        self.maxstring = self.maxlong = self.maxother = SHOWN_CHARS

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # repr of a 5,000-digit integer raises; of a long one, takes time
            return f"<an integer of about {round(x.bit_length() * 0.30103):,} digits>"
        return super().repr_int(x, level)


_SHORT = _Short()


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, built with bounded work whatever the value (a huge,
    deeply nested or self-referencing list does not get written out first). A string up to
    :data:`SHOWN_STRING_CHARS` long is shown whole."""
    if isinstance(value, str) and len(value) <= SHOWN_STRING_CHARS:
        return repr(value)
    try:
        text = _SHORT.repr(value)
    except Exception:  # a user object whose repr fails: name its type instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GpuscaleError(Exception):
    """Base of every error gpuscale raises on purpose."""


class ConfigError(GpuscaleError):
    """Invalid user input, located as precisely as possible.

    ``ConfigError("scenario.yaml", "workload.rate_rps", -3, "a number > 0")`` renders as
    ``scenario.yaml: workload.rate_rps = -3: expected a number > 0``.
    """

    def __init__(
        self,
        source: str,
        key: str | None,
        value: object,
        allowed: str,
        *,
        line: int | None = None,
    ) -> None:
        self.source = source
        self.key = key
        self.value = value
        self.allowed = allowed
        self.line = line
        super().__init__(self.render())

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its parts (an exception pickles its message alone by default): a ConfigError
        # raised in a worker process reaches the parent whole, located as it was.
        return (_config_error, (type(self), self.source, self.key, self.value, self.allowed, self.line))

    def render(self) -> str:
        where = self.source
        if self.line is not None:
            where += f", line {self.line}"
        if self.key:
            where += f": {self.key}"
        if self.value is _MISSING:
            return f"{where}: {self.allowed}"
        return f"{where} = {shown(self.value)}: {self.allowed}"


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        return "_MISSING"  # the one sentinel, also after a trip through pickle


_MISSING: object = _Missing()
MISSING = _MISSING
"""Pass as ``value`` when the key is absent: the message then reads ``file: key: allowed``."""


class ConfigErrors(ConfigError):
    """Several independent problems found in one file, reported together."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.source, first.key, first.value, first.allowed, line=first.line)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors,))

    def render(self) -> str:
        if not hasattr(self, "errors"):
            return super().render()
        return "\n".join(e.render() for e in self.errors)


def _config_error(
    cls: type[ConfigError], source: str, key: str | None, value: object, allowed: str, line: int | None
) -> ConfigError:
    return cls(source, key, value, allowed, line=line)


class TemporaryError(GpuscaleError):
    """A failure worth retrying later (with backoff)."""


class PermanentError(GpuscaleError):
    """A failure that retrying will not fix; stop acting on the thing it concerns."""
