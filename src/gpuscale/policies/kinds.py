"""The registration point of policy kinds: a kind is one module that decorates its config class.

::

    @register_kind
    class MyConfig(KindConfig):
        \"\"\"One line that ``gpuscale policies list`` shows.\"\"\"

        kind: Literal["my-kind"] = "my-kind"
        ...

        def build(self) -> MyPolicy: ...

The registry (:mod:`gpuscale.policies.registry`) imports every module of ``gpuscale.policies`` and
every module named by an installed package's ``gpuscale.policy_kinds`` entry point, so a new kind
needs no edit anywhere else: the discriminated union of policy files, ``gpuscale policies list`` and
``show``, the presets and the conformance suite all follow from the registrations. A config class
whose fields are all required gives an ``example()`` classmethod returning a representative config
(the conformance suite builds the kind from it).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, Field

from gpuscale.config.loading import StrictModel
from gpuscale.config.safety import SafetyConfig


class KindConfig(StrictModel):
    """The base of every kind's config: what every policy file may carry besides its kind's own
    parameters. ``safety`` is the same block ``gpuscale run`` and a scenario take; the registry
    wraps the built policy in it (:func:`gpuscale.policies.safety.with_safety`), so the policy
    carries its limits into every world."""

    safety: SafetyConfig | None = Field(
        None,
        description="Safety limits applied after the policy, in the simulator and live alike: bounds, "
        "max step, GPU budget, schedule windows. Default none.",
    )


C = TypeVar("C", bound=type[KindConfig])

_KINDS: dict[str, type[KindConfig]] = {}


def kind_of(cls: type[BaseModel]) -> str:
    """The kind a config class declares (its ``kind`` field's default)."""
    field = cls.model_fields.get("kind")
    default = field.default if field is not None else None
    if not isinstance(default, str) or not default:
        raise TypeError(f"{cls.__name__}.kind must default to its kind name, e.g. kind: Literal['x'] = 'x'")
    return default


def register_kind(cls: C) -> C:
    """Register ``cls`` as the config of its kind; the same class twice is a no-op, another class
    claiming a registered kind is an error."""
    kind = kind_of(cls)
    if not issubclass(cls, KindConfig):
        raise TypeError(f"{cls.__name__} registers kind {kind!r} but does not derive from KindConfig")
    if not callable(getattr(cls, "build", None)):
        raise TypeError(f"{cls.__name__} registers kind {kind!r} but has no build() method")
    known = _KINDS.get(kind)
    if known is not None and known is not cls:
        raise TypeError(f"kind {kind!r} is registered twice: {known.__qualname__} and {cls.__qualname__}")
    _KINDS[kind] = cls
    return cls


def registered() -> tuple[type[KindConfig], ...]:
    """Every registered config class, in registration order."""
    return tuple(_KINDS.values())


def unregister_kind(kind: str) -> None:
    """Forget ``kind`` (a plug-in being unloaded, or a test that registered one)."""
    _KINDS.pop(kind, None)
