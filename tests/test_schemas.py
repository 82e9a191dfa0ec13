"""JSON Schemas and the configuration reference: generated from the models, current, and usable.

Every shipped example names its file kind on its first line (``# yaml-language-server:
$schema=../schemas/KIND.schema.json``, as an editor reads it); each must load with gpuscale's own
loader AND validate against the JSON Schema, so a schema that rejects valid files (or a loader that
rejects what the schema promises) fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from gpuscale.cli import app
from gpuscale.schemas import FILE_KINDS, json_schema, reference_markdown, schema_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.yaml"))
_HEADER = re.compile(r"# yaml-language-server: \$schema=\.\./schemas/([a-z-]+)\.schema\.json")


def _kind_of(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = _HEADER.fullmatch(first)
    assert m is not None, f"{path.name}: first line must name its schema, got {first!r}"
    return m.group(1)


def _load(kind: str, path: Path) -> Any:
    if kind == "scenario":
        from gpuscale.config.scenario import load_scenario

        return load_scenario(path)
    if kind == "policy":
        from gpuscale.policies.registry import load_policy_file

        return load_policy_file(path)
    if kind == "controller":
        from gpuscale.controller.config import load_controller_config

        return load_controller_config(path)
    if kind == "keda-scaler":
        from gpuscale.integrations.keda_scaler import load_keda_scaler_config

        return load_keda_scaler_config(path)
    from gpuscale.experiments.suite import load_suite

    return load_suite(path)


@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_generated_schema_and_reference_are_current(kind: str) -> None:
    schema_file = DOCS / "schemas" / f"{kind}.schema.json"
    ref_file = DOCS / "reference" / f"{kind}.md"
    how = f"regenerate: gpuscale schema {kind} --out {schema_file.relative_to(ROOT)}; " + (
        f"gpuscale schema {kind} --markdown --out {ref_file.relative_to(ROOT)}"
    )
    assert schema_file.read_text(encoding="utf-8") == schema_text(kind), how
    assert ref_file.read_text(encoding="utf-8") == reference_markdown(kind), how


@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_schema_is_a_valid_json_schema(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema(kind))


def test_every_file_kind_has_an_example() -> None:
    assert {_kind_of(p) for p in EXAMPLES} == set(FILE_KINDS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_and_validates_against_its_schema(path: Path) -> None:
    kind = _kind_of(path)
    assert _load(kind, path) is not None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, json_schema(kind), cls=jsonschema.Draft202012Validator)


CATALOG = sorted((ROOT / "src" / "gpuscale" / "experiments" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.stem)
def test_every_built_in_scenario_validates_against_the_schema(path: Path) -> None:
    # the catalog uses the short forms an editor must not flag (a pool by instance_type, no gpu:)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, json_schema("scenario"), cls=jsonschema.Draft202012Validator)


def test_the_schema_takes_the_short_forms_the_loader_takes() -> None:
    """A plain number for a token length (``{fixed: N}``) and for a closed loop's users (the constant
    shape); a pool named by its instance type instead of its GPU; and refuses their bad values."""
    from gpuscale.config.scenario import scenario_from_dict

    validator = jsonschema.Draft202012Validator(json_schema("scenario"))
    data: dict[str, Any] = {
        "name": "short",
        "duration_s": 60,
        "slo": {"latency_ms": 60000},
        "workload": {
            "kind": "closed-loop",
            "users": 4,
            "think_time_s": [1, 2],
            "tokens": {"prompt": 100, "output": {"fixed": 20}, "conversation": {"turns": 3}},
        },
        "model": "llama3-8b-h100-vllm",
        "cluster": {"pools": [{"instance_type": "p5.48xlarge", "nodes": 1}]},
    }
    assert scenario_from_dict(data, "test") is not None
    assert validator.is_valid(data), [e.message for e in validator.iter_errors(data)]
    for key, bad in (("users", -1), ("users", 2.5)):
        assert not validator.is_valid({**data, "workload": {**data["workload"], key: bad}})
    tokens = {**data["workload"]["tokens"], "prompt": 0}
    assert not validator.is_valid({**data, "workload": {**data["workload"], "tokens": tokens}})
    assert not validator.is_valid({**data, "cluster": {"pools": [{"nodes": 1}]}})


def test_schema_rejects_what_the_loader_rejects() -> None:
    """An unknown key and a value out of range fail both the schema and the loader."""
    validator = jsonschema.Draft202012Validator(json_schema("suite"))
    assert not validator.is_valid({"seeds": [1], "nope": 1})
    assert not validator.is_valid({"slo_target": 1.5})
    assert validator.is_valid({"seeds": [1, 2], "slo_target": 0.9})


def test_reference_lists_every_key_with_its_bounds() -> None:
    text = reference_markdown("scenario")
    for key in ("`duration_s`", "`slo.latency_ms`", "`control.interval_s`", "`startup.image_pull_s`"):
        assert key in text
    assert "| > 0 |" in text  # duration_s > 0
    policy = reference_markdown("policy")
    assert "## kind: hpa" in policy and "`behavior.scale_down.stabilization_window_s`" in policy


def test_schema_command(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["schema", "suite"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["title"] == "Suite file"
    out = tmp_path / "suite.md"
    res = runner.invoke(app, ["schema", "suite", "--markdown", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text(encoding="utf-8") == reference_markdown("suite")
    res = runner.invoke(app, ["schema", "nope"])
    assert res.exit_code == 2
    assert "KIND" in res.output and "scenario, policy, controller, keda-scaler, suite" in res.output
