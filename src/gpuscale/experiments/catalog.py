"""The built-in scenario catalog: YAML files shipped with the package, addressed by name."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import exists, is_file, parse_yaml
from gpuscale.config.scenario import Scenario, load_scenario, scenario_from_dict

DEFAULT_SCENARIO = "thesis-variable"


@dataclass(frozen=True)
class ScenarioRef:
    """A loaded scenario and where it came from (relative trace paths resolve against ``base_dir``)."""

    scenario: Scenario
    source: str
    base_dir: Path | None


def _catalog_dir() -> resources.abc.Traversable:
    return resources.files("gpuscale.experiments").joinpath("scenarios")


def scenario_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _catalog_dir().iterdir() if p.name.endswith(".yaml"))


def builtin_scenario(name: str) -> Scenario:
    entry = _catalog_dir().joinpath(f"{name}.yaml")
    if not is_file(entry):
        raise ConfigError(
            "scenario", None, name, f"unknown built-in scenario; allowed: {', '.join(scenario_names())}"
        )
    source = f"builtin:{name}"
    return scenario_from_dict(parse_yaml(entry.read_text(encoding="utf-8"), source), source)


def resolve_scenario(spec: str) -> ScenarioRef:
    """A built-in name (``thesis-constant``) or a path to a scenario YAML file."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or exists(path):
        return ScenarioRef(load_scenario(path), str(path), path.parent)
    return ScenarioRef(builtin_scenario(spec), f"builtin:{spec}", None)
