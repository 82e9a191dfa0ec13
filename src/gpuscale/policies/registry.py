"""Every policy kind gpuscale knows, how to load one from YAML, and the presets users ask for by name.

A kind is a frozen pydantic config class with ``kind: Literal["..."]``, a ``build() -> Policy``
method and, when some field is required, an ``example()`` classmethod returning a representative
config (the conformance suite builds every kind from it), registered by
:func:`~gpuscale.policies.kinds.register_kind` in its own module. :func:`kind_configs` lists them
and everything else (the discriminated union, ``gpuscale policies list`` / ``show``, the conformance
suite) follows from that tuple.

Presets are policy YAML files shipped in ``gpuscale/policies/presets/``; the file name is the preset
name (``gpu-util.yaml`` -> ``gpu-util``).

This module reads files (presets, ``load_policy_file``); the policies it builds never do.
"""

from __future__ import annotations

import functools
import importlib
import operator
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field, TypeAdapter

from gpuscale._core.errors import MISSING, ConfigError, ConfigErrors
from gpuscale.config.loading import is_file, load_yaml, parse_yaml, validate
from gpuscale.config.reference import ParamInfo, describe_model
from gpuscale.config.safety import SafetyConfig
from gpuscale.policies.base import Policy, StaticPolicy
from gpuscale.policies.kinds import KindConfig, kind_of, register_kind, registered
from gpuscale.policies.safety import with_safety


@register_kind
class StaticConfig(KindConfig):
    """A fixed replica count, whatever the load (the baseline every comparison needs)."""

    kind: Literal["static"] = "static"
    name: str | None = Field(None, description="Display name; defaults to the kind.")
    replicas: int = Field(ge=0, description="The replica count to hold.")
    standby_replicas: int = Field(
        0, ge=0, description="Warm standby pods to keep outside the Service. Default 0."
    )

    @classmethod
    def example(cls) -> StaticConfig:
        """A representative config for docs and conformance tests."""
        return cls(replicas=3)

    def build(self) -> StaticPolicy:
        return StaticPolicy(self.replicas, self.standby_replicas, self.name or "static")


class PolicyConfig(Protocol):
    """What every kind's config class provides."""

    @property
    def kind(self) -> str: ...

    @property
    def safety(self) -> SafetyConfig | None: ...

    def build(self) -> Policy[Any]: ...


def build_policy(config: PolicyConfig) -> Policy[Any]:
    """The policy of ``config``, inside its ``safety:`` block when it has one."""
    return with_safety(config.build(), config.safety)


def _discover() -> None:
    """Import every module of ``gpuscale.policies`` (each family registers its kind on import), then
    every installed ``gpuscale.policy_kinds`` entry point."""
    package = importlib.import_module("gpuscale.policies")
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"gpuscale.policies.{module.name}")
    for entry in entry_points(group="gpuscale.policy_kinds"):
        entry.load()


_discover()


def kind_configs() -> tuple[type[BaseModel], ...]:
    """The registered kinds' config classes: static first, then by kind name, whatever order the
    modules were imported in (see :mod:`gpuscale.policies.kinds`: a kind is one module); a kind
    registered after this module loaded is included."""
    rest = sorted((k for k in registered() if k is not StaticConfig), key=kind_of)
    return (StaticConfig, *rest)


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindInfo:
    """One registered kind: its name, a one-line summary and its config class."""

    kind: str
    summary: str
    config_class: type[BaseModel]


_kind_of = kind_of


def _summary(cls: type[BaseModel]) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def policy_kinds() -> list[KindInfo]:
    """Every registered kind, in registration order."""
    return [KindInfo(_kind_of(c), _summary(c), c) for c in kind_configs()]


def kind_names() -> list[str]:
    return [_kind_of(c) for c in kind_configs()]


def config_class(kind: str) -> type[BaseModel]:
    """The config class of ``kind``; ConfigError naming the known kinds otherwise."""
    for c in kind_configs():
        if _kind_of(c) == kind:
            return c
    raise ConfigError(
        "policy kinds", "kind", kind, f"unknown policy kind; allowed: {', '.join(kind_names())}"
    )


def describe_kind(kind: str) -> list[ParamInfo]:
    """Every parameter of ``kind`` (nested ones included) with its type, default and description."""
    return describe_model(config_class(kind), kind_field="The policy kind (selects the family).")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@functools.cache
def _adapter(kinds: tuple[type[BaseModel], ...]) -> TypeAdapter[Any]:
    union = functools.reduce(operator.or_, kinds)
    tagged: Any = Annotated[union, Field(discriminator="kind")]
    return TypeAdapter(tagged)


def policy_adapter() -> TypeAdapter[Any]:
    """The validator of a policy mapping: every registered kind, told apart by ``kind``."""
    return _adapter(kind_configs())


def load_policy_config(data: Any, source: str, prefix: str = "") -> PolicyConfig:
    """Validate a policy mapping into its kind's config; ConfigError naming the key otherwise."""
    kinds = kind_names()
    key = f"{prefix}.kind" if prefix else "kind"
    if isinstance(data, Mapping):
        if "kind" not in data:
            raise ConfigError(source, key, MISSING, f"required: the policy kind, one of {', '.join(kinds)}")
        if data["kind"] not in kinds:
            raise ConfigError(source, key, data["kind"], f"unknown policy kind; allowed: {', '.join(kinds)}")
    config: PolicyConfig = validate(_adapter(kind_configs()), data, source, prefix)
    return config


def load_policy(data: Any, source: str, prefix: str = "") -> Policy[Any]:
    """Validate a policy mapping and build the policy."""
    return build_policy(load_policy_config(data, source, prefix))


def load_policy_file(path: str | Path) -> Policy[Any]:
    """Read a policy YAML file and build the policy."""
    return load_policy(load_yaml(path), str(path))


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


def _presets_dir() -> resources.abc.Traversable:
    return resources.files("gpuscale.policies").joinpath("presets")


def preset_names() -> list[str]:
    """The shipped presets, sorted."""
    folder = _presets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    """The YAML of preset ``name`` (comments included: they explain where it comes from)."""
    if name not in preset_names():
        raise ConfigError("presets", "preset", name, f"unknown preset; allowed: {', '.join(preset_names())}")
    return _presets_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def load_preset_config(name: str) -> PolicyConfig:
    """The config of preset ``name``, named after the preset unless it names itself."""
    source = f"preset {name}"
    config = load_policy_config(parse_yaml(preset_text(name), source), source)
    if (
        isinstance(config, BaseModel)
        and getattr(config, "name", None) is None
        and "name" in type(config).model_fields
    ):
        updated: PolicyConfig = config.model_copy(update={"name": name})
        return updated
    return config


def load_preset(name: str) -> Policy[Any]:
    """Build preset ``name``."""
    return build_policy(load_preset_config(name))


# --------------------------------------------------------------------------------------------------
# A policy named the ways users name one
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """A policy's raw mapping and where it came from (for error messages and labels)."""

    data: Any
    source: str
    """The file, ``preset NAME``, or the config holding the inline mapping."""
    label: str
    """The file's stem, the preset's name, or ``key`` for an inline mapping."""
    prefix: str = ""
    """The key the mapping sits under in ``source`` (inline: ``key``), for error locations."""

    def config(self) -> PolicyConfig:
        return load_policy_config(self.data, self.source, self.prefix)

    def build(self) -> Policy[Any]:
        return build_policy(self.config())


def resolve_policy(
    spec: str | Mapping[str, Any], *, key: str | None, source: str, base: Path | None = None
) -> PolicySpec:
    """A policy given as an inline mapping, a YAML file (relative to ``base`` unless absolute), or a
    preset name -- read, not yet validated. A preset's mapping is named after it unless it names
    itself. Anything else: ConfigError at ``key`` of ``source`` listing the presets."""
    if isinstance(spec, Mapping):
        return PolicySpec(spec, source, key or "policy", key or "")
    path = Path(spec) if base is None or Path(spec).is_absolute() else base / spec
    if spec.endswith((".yaml", ".yml")) or is_file(path):
        return PolicySpec(load_yaml(path), str(path), path.stem)
    if spec in preset_names():
        label = f"preset {spec}"
        data = parse_yaml(preset_text(spec), label)
        if isinstance(data, dict) and data.get("name") is None:
            kind = data.get("kind")
            if kind in kind_names() and "name" in config_class(kind).model_fields:
                data = {**data, "name": spec}
        return PolicySpec(data, label, spec)
    from gpuscale.policies.clairvoyant import SIMULATOR_ONLY

    if spec in SIMULATOR_ONLY:
        raise ConfigError(source, key, spec, SIMULATOR_ONLY[spec])
    raise ConfigError(
        source, key, spec, f"not a policy file or a preset; presets: {', '.join(preset_names())}"
    )


# --------------------------------------------------------------------------------------------------
# Checks against the metrics source
# --------------------------------------------------------------------------------------------------


def check_windows(policy: Policy[Any], scrape_interval_s: float, source: str) -> None:
    """Raise ConfigError when a signal's window is shorter than the scrape interval.

    A window shorter than one scrape holds at most one sample: the "average over 6 s" a KPA asks for
    is a single 15-s scrape in disguise. The error names the config key when the policy says where
    the signal comes from (``signal_keys``), and the allowed range.
    """
    keys = policy.signal_keys
    errors: list[ConfigError] = []
    for i, spec in enumerate(policy.signals):
        if spec.window_s < scrape_interval_s:
            key = keys.get(spec, f"signals[{i}]")
            errors.append(
                ConfigError(
                    source,
                    key,
                    spec.window_s,
                    f"the window of signal {spec.key} ({spec.window_s:g} s) is shorter than the scrape "
                    f"interval; allowed: >= {scrape_interval_s:g} s (the scrape interval)",
                )
            )
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
