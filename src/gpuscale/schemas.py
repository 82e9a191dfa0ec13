"""JSON Schemas and the configuration reference of every file kind gpuscale reads, from its models.

``gpuscale schema KIND`` prints a file kind's JSON Schema (for editors: put
``# yaml-language-server: $schema=<path>/KIND.schema.json`` on a file's first line) or, with
``--markdown``, its reference page. Both are generated from the pydantic models that validate the
files, so neither can say something the loader does not do; ``docs/schemas/`` and
``docs/reference/`` hold the generated copies, and a test fails when they are stale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from gpuscale.config.reference import ParamInfo, describe_model

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class FileKind:
    name: str
    title: str
    what: str
    """One paragraph: which command reads such a file."""
    adapter: Callable[[], TypeAdapter[Any]]
    sections: Callable[[], list[tuple[str, str, type[BaseModel]]]]
    """(heading, summary, model) per reference section: one for most kinds, one per policy kind."""


def _scenario() -> type[BaseModel]:
    from gpuscale.config.scenario import Scenario

    return Scenario


def _controller() -> type[BaseModel]:
    from gpuscale.controller.config import ControllerConfig

    return ControllerConfig


def _keda() -> type[BaseModel]:
    from gpuscale.integrations.keda_scaler import KedaScalerConfig

    return KedaScalerConfig


def _suite() -> type[BaseModel]:
    from gpuscale.experiments.suite import SuiteConfig

    return SuiteConfig


def _policy_adapter() -> TypeAdapter[Any]:
    from gpuscale.policies import registry

    return registry.policy_adapter()


def _policy_sections() -> list[tuple[str, str, type[BaseModel]]]:
    from gpuscale.policies import registry

    return [(f"kind: {k.kind}", k.summary, k.config_class) for k in registry.policy_kinds()]


def _one(model: Callable[[], type[BaseModel]]) -> Callable[[], list[tuple[str, str, type[BaseModel]]]]:
    return lambda: [("Keys", "", model())]


FILE_KINDS: dict[str, FileKind] = {
    k.name: k
    for k in (
        FileKind(
            "scenario",
            "Scenario file",
            "A world to test policies in: `gpuscale simulate`, `compare`, `tune`, `capacity` and "
            "`train` read it (`--scenarios FILE`, or a suite's `scenarios:` list).",
            lambda: TypeAdapter(_scenario()),
            _one(_scenario),
        ),
        FileKind(
            "policy",
            "Policy file",
            "One autoscaling policy: `--policy FILE` / `--policies FILE` of `simulate`, `compare`, "
            "`tune`, `manifests`, the controller's `policy:` and the KEDA scaler's. `kind:` selects "
            "the family; each family's keys follow.",
            _policy_adapter,
            _policy_sections,
        ),
        FileKind(
            "controller",
            "Controller config",
            "What `gpuscale run --config FILE` reads: the Deployment to scale, the policy, Prometheus, "
            "leader election, the warm pool.",
            lambda: TypeAdapter(_controller()),
            _one(_controller),
        ),
        FileKind(
            "keda-scaler",
            "KEDA external scaler config",
            "What `gpuscale keda-scaler --config FILE` reads: the policy, where its signals come from, "
            "the gRPC listener.",
            lambda: TypeAdapter(_keda()),
            _one(_keda),
        ),
        FileKind(
            "suite",
            "Suite file",
            "A sweep: `gpuscale compare --suite FILE` and `gpuscale tune --suite FILE` read its "
            "scenarios, policies, seeds and runner.",
            lambda: TypeAdapter(_suite()),
            _one(_suite),
        ),
    )
}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of file kind ``kind``."""
    fk = FILE_KINDS[kind]
    schema = fk.adapter().json_schema(mode="validation")
    if kind == "scenario":
        _profile_by_name(schema)
    return {**schema, "$schema": JSON_SCHEMA_DIALECT, "title": fk.title, "description": fk.what}


def _profile_by_name(schema: dict[str, Any]) -> None:
    """A scenario's ``model`` may also name a built-in profile (``model: NAME``), or start from one
    and override some keys (``model: {profile: NAME, ...}``), as the loader resolves it."""
    from gpuscale.config.profiles import BUILTIN_PROFILES

    names = {"enum": sorted(BUILTIN_PROFILES)}
    full = schema["properties"]["model"]
    schema["properties"]["model"] = {
        "description": "The model profile: a built-in profile's name, a built-in profile with some keys "
        "overridden ({profile: NAME, ...}), or a whole profile.",
        "anyOf": [
            {"type": "string", **names},
            {
                "type": "object",
                "properties": {"profile": {"type": "string", **names}},
                "required": ["profile"],
            },
            full,
        ],
    }


def schema_text(kind: str) -> str:
    return json.dumps(json_schema(kind), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(params: list[ParamInfo]) -> list[str]:
    lines = ["| key | type | allowed | default | description |", "|---|---|---|---|---|"]
    lines += [
        f"| `{p.name}` | {_cell(p.type)} | {_cell(p.allowed)} | {_cell(p.default)} | {_cell(p.description)} |"
        for p in params
    ]
    return lines


def reference_markdown(kind: str) -> str:
    """The reference page of file kind ``kind``: every key, its type, default and description."""
    fk = FILE_KINDS[kind]
    lines = [
        f"# {fk.title}",
        "",
        "<!-- generated by `gpuscale schema "
        f"{kind} --markdown` from the models that validate these files; do not edit -->",
        "",
        fk.what,
        "",
        f"JSON Schema: [`{kind}.schema.json`](../schemas/{kind}.schema.json) (editors: "
        f"`# yaml-language-server: $schema=docs/schemas/{kind}.schema.json`). Unknown keys are "
        "errors. Types read `A | B` for either; `list of X`; `required` keys have no default. A key that "
        "takes one of several blocks (`RateStep | RateRamp`) is followed by each block's keys in turn, "
        "each block starting at its own `kind`.",
    ]
    for heading, summary, model in fk.sections():
        lines += ["", f"## {heading}", ""]
        if summary:
            lines += [summary, ""]
        lines += _table(describe_model(model, kind_field="The policy kind (selects the family)."))
    return "\n".join(lines) + "\n"
