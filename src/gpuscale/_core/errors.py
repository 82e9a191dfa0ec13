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

from collections.abc import Sequence


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

    def render(self) -> str:
        where = self.source
        if self.line is not None:
            where += f", line {self.line}"
        if self.key:
            where += f": {self.key}"
        shown = repr(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return (
            f"{where} = {shown}: {self.allowed}" if self.value is not _MISSING else f"{where}: {self.allowed}"
        )


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: object = _Missing()
MISSING = _MISSING
"""Pass as ``value`` when the key is absent: the message then reads ``file: key: allowed``."""


class ConfigErrors(ConfigError):
    """Several independent problems found in one file, reported together."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.source, first.key, first.value, first.allowed, line=first.line)

    def render(self) -> str:
        if not hasattr(self, "errors"):
            return super().render()
        return "\n".join(e.render() for e in self.errors)


class TemporaryError(GpuscaleError):
    """A failure worth retrying later (with backoff)."""


class PermanentError(GpuscaleError):
    """A failure that retrying will not fix; stop acting on the thing it concerns."""
