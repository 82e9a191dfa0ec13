"""Shared helpers: the policies every manifest test runs over, and the schema validators."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gpuscale.policies import registry

KUBERNETES_VERSION = "1.37.0"
"""The newest release whose OpenAPI schemas kubernetes-validate ships."""
KEDA_CRD = Path(__file__).parent.parent / "data" / "keda" / "keda.sh_scaledobjects.yaml"


def all_policy_configs() -> list[tuple[str, Any]]:
    """Every preset and every kind's example config."""
    out: list[tuple[str, Any]] = [
        (f"preset:{n}", registry.load_preset_config(n)) for n in registry.preset_names()
    ]
    for info in registry.policy_kinds():
        example = getattr(info.config_class, "example", None)
        if example is not None:
            out.append((f"example:{info.kind}", example()))
    return out


@pytest.fixture(scope="session")
def keda_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KEDA_CRD.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields rejected where it lists properties.

    A structural CRD *prunes* unknown fields instead of rejecting them; rejecting them here catches
    a field the API server would silently drop.
    """
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def validate_keda(obj: dict[str, Any], schema: dict[str, Any], *, pruned_ok: bool = False) -> None:
    jsonschema.validate(obj, schema if pruned_ok else strict(schema))


def validate_kubernetes(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    kubernetes_validate.validate(obj, version, strict=True)
