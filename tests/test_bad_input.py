"""Bad input ends in exit code 2 and one message naming the file (or option), the key or line and what is
allowed: never a traceback, a hang, a silent acceptance, or a write outside --out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.config.loading import MAX_ALIAS_VALUES, MAX_DEPTH, load_yaml, parse_yaml
from gpuscale.policies import registry

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

SCENARIO = {
    "name": "bad-input",
    "duration_s": 60,
    "slo": {"latency_ms": 50},
    "workload": {"kind": "poisson", "rate_rps": 100},
    "model": {"profile": "resnet50-a100-triton"},
    "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]},
}

HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: triton, namespace: ml}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: triton}
  minReplicas: 2
  maxReplicas: 12
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
"""


def _refused(result: Any, *needles: str) -> str:
    """Exit 2, no traceback, and every needle in the one message on stderr (returned)."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    message = " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert message.startswith("error:"), message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def _scenario_file(tmp_path: Path, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


# --------------------------------------------------------------------------------------------------
# 1. A user path needs only the main dependencies
# --------------------------------------------------------------------------------------------------

_IMPORT_WITHOUT_DEV = """
import importlib, importlib.abc, importlib.metadata, pkgutil, re, sys, tomllib

def norm(name):
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\\[; ]", name, maxsplit=1)[0].strip()).lower()

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
main = {norm(d) for d in project["dependencies"]}
dev = {norm(d) for d in project["optional-dependencies"]["dev"]} - main
blocked = {
    module
    for module, dists in importlib.metadata.packages_distributions().items()
    if {norm(d) for d in dists} & dev and not {norm(d) for d in dists} & main
}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is a dev-only dependency", name=name)
        return None

sys.meta_path.insert(0, Block())
import gpuscale
importlib.import_module("gpuscale.cli")
importlib.import_module("gpuscale.experiments.bench")
for module in pkgutil.walk_packages(gpuscale.__path__, "gpuscale."):
    importlib.import_module(module.name)
print("ok", len(blocked))
"""


def test_every_module_imports_without_the_dev_only_packages() -> None:
    """`gpuscale bench` (and every other command) must run on the main-job install: no module of
    gpuscale may import a package that only the dev extra installs."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITHOUT_DEV, str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


# --------------------------------------------------------------------------------------------------
# 2. --out is checked before any work
# --------------------------------------------------------------------------------------------------


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("ran before --out was checked")

    import gpuscale.experiments.compare
    import gpuscale.experiments.tune
    import gpuscale.sim.engine

    monkeypatch.setattr(gpuscale.sim.engine, "simulate", refuse)
    monkeypatch.setattr(gpuscale.experiments.compare, "run_compare", refuse)
    monkeypatch.setattr(gpuscale.experiments.tune, "run_tune", refuse)


def _command(name: str, tmp_path: Path) -> list[str]:
    scenario = str(_scenario_file(tmp_path, "s.yaml"))
    if name == "simulate":
        return ["simulate", scenario]
    if name == "compare":
        return [
            "compare",
            "--scenarios",
            scenario,
            "--policies",
            "gpu-util",
            "--seeds",
            "1",
            "--workers",
            "1",
        ]
    if name == "tune":
        return [
            "tune",
            "-p",
            "gpu-util",
            "--scenarios",
            scenario,
            "--param",
            "max_replicas=2,3",
            "--seeds",
            "1",
            "--workers",
            "1",
        ]
    if name == "manifests":
        return ["manifests", "-p", "gpu-util", "--target", "Deployment/triton"]
    manifest = tmp_path / "hpa.yaml"
    manifest.write_text(HPA, encoding="utf-8")
    return ["import", str(manifest)]


FOLDER_COMMANDS = ("simulate", "compare", "tune")
FILE_COMMANDS = ("manifests", "import")


@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
@pytest.mark.parametrize("case", ["wrong-type", "under-a-file", "unwritable"])
def test_a_bad_out_is_refused_up_front(
    command: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    args = _command(command, tmp_path)
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("keep me\n", encoding="utf-8")
    a_folder = tmp_path / "a-folder"
    a_folder.mkdir()
    if case == "wrong-type":
        target = a_file if command in FOLDER_COMMANDS else a_folder
        why = "is a file" if command in FOLDER_COMMANDS else "is a folder"
    elif case == "under-a-file":
        target = a_file / "sub" / "x"
        why = f"{a_file} is a file"
    else:
        target = Path("/proc/gpuscale-test/x")
        why = "cannot be written"
    before = _tree(tmp_path)
    result = runner.invoke(app, [*args, "--out", str(target)])
    _refused(result, "--out", str(target), why)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
def test_an_out_with_a_nul_byte_is_refused(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    args = _command(command, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = runner.invoke(app, [*args, "--out", "out\x00x"])
    assert result.exit_code == 2, result.output
    assert "NUL byte" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(
    command: str, empty: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    args = _command(command, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = runner.invoke(app, [*args, "--out", empty])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "is empty" in result.output
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "{fifo}", "-p", "gpu-util"],
        ["compare", "--suite", "{fifo}"],
        ["import", "{fifo}"],
        ["manifests", "rayjob", "--config", "{fifo}", "--image", "localhost/x:1"],
    ],
)
def test_a_named_pipe_nobody_writes_is_read_as_empty_not_waited_on(args: list[str], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    # in a child process: a regression would block on open() for ever, which a timeout turns into a failure
    cmd = [str(Path(sys.executable).with_name("gpuscale")), *(a.format(fifo=fifo) for a in args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(fifo) in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["compare", "--suite", "{path}"], ["import", "{path}"]])
def test_a_folder_given_as_a_file_is_named_as_one(args: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "suite.yaml"
    folder.mkdir()
    result = runner.invoke(app, [a.format(path=folder) for a in args])
    assert result.exit_code == 2, result.output
    assert f"{folder}: is a folder; expected a file" in " ".join(result.output.split())


def test_a_good_out_still_works(tmp_path: Path) -> None:
    manifest = tmp_path / "hpa.yaml"
    manifest.write_text(HPA, encoding="utf-8")
    out = tmp_path / "new" / "policy.yaml"
    result = runner.invoke(app, ["import", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["kind"] == "hpa"
    existing = tmp_path / "existing.yaml"
    existing.write_text("old\n", encoding="utf-8")
    result = runner.invoke(app, ["import", str(manifest), "--out", str(existing)])
    assert result.exit_code == 0, result.output
    assert "hpa" in existing.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# 3. YAML: duplicate keys, depth, alias expansion, and a renderer that bounds its work
# --------------------------------------------------------------------------------------------------


def test_a_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = yaml.safe_dump(SCENARIO, sort_keys=False) + "duration_s: 120\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    line = len(text.splitlines())
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.line == line
    assert "duration_s" in str(info.value) and "duplicate" in str(info.value)
    result = runner.invoke(app, ["simulate", str(path), "--out", str(tmp_path / "o")])
    _refused(result, str(path), f"line {line}", "duration_s", "duplicate key", "line 2")
    assert not (tmp_path / "o").exists()


def test_duplicates_are_found_in_nested_mappings_and_merges_still_work() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a:\n  b: 1\n  c: 2\n  b: 3\n", "t.yaml")
    assert info.value.line == 4 and "b: duplicate key (first set on line 2)" in str(info.value)
    merged = parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", "t.yaml")
    assert merged["other"] == {"x": 1, "y": 3}


def test_a_deeply_nested_document_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(MAX_DEPTH) in str(info.value) and info.value.line == 1
    result = runner.invoke(app, ["simulate", str(path)])
    _refused(result, str(path), "nested deeper than", str(MAX_DEPTH))
    block = "\n".join("  " * i + "- " for i in range(MAX_DEPTH + 5))
    with pytest.raises(ConfigError):
        parse_yaml(block, "t.yaml")
    assert parse_yaml("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1), "t.yaml") is not None


def _alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    text = _alias_bomb(8)
    assert len(text) < 1000
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert time.perf_counter() - start < 5
    assert f"{MAX_ALIAS_VALUES:,}" in str(info.value)
    # the whole command, in its own process, so that a hang fails the test instead of hanging it
    done = subprocess.run(
        [sys.executable, "-m", "gpuscale.cli", "simulate", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(path) in done.stderr and "alias" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_a_self_referencing_alias_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: &a [1, *a]\n", "t.yaml")
    assert "alias" in str(info.value)


def test_anchors_and_aliases_in_ordinary_use_still_load() -> None:
    data = parse_yaml("d: &d {kind: poisson, rate_rps: 5}\nw: [*d, *d, *d]\n", "t.yaml")
    assert data["w"] == [{"kind": "poisson", "rate_rps": 5}] * 3


def test_the_error_renderer_bounds_its_work() -> None:
    level: Any = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9  # 9**9 strings when written out; shared references in memory
    start = time.perf_counter()
    text = str(ConfigError("f.yaml", "k", level, "a number"))
    assert time.perf_counter() - start < 1
    assert text.startswith("f.yaml: k = [[[") and text.endswith(": a number")
    assert len(text) < 200
    loop: list[Any] = []
    loop.append(loop)
    assert "f.yaml: k = [" in str(ConfigError("f.yaml", "k", loop, "a number"))
    assert str(ConfigError("f.yaml", "k", "x" * 10_000, "short")).count("x") <= 80
    huge_int = 10**5000
    assert "f.yaml: k = " in str(ConfigError("f.yaml", "k", huge_int, "an integer"))


def test_a_bad_value_in_a_yaml_scalar_is_located(tmp_path: Path) -> None:
    path = tmp_path / "bad-date.yaml"
    path.write_text("name: x\nwhen: 2023-02-30\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(path) in str(info.value) and info.value.line == 2


# --------------------------------------------------------------------------------------------------
# 4. compare refuses unknown or invalid policies before any simulation
# --------------------------------------------------------------------------------------------------


def test_compare_refuses_an_unknown_preset_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_work(monkeypatch)
    scenario = str(_scenario_file(tmp_path))
    result = runner.invoke(
        app, ["compare", "--scenarios", scenario, "--policies", "gpu-util,nope", "--out", str(tmp_path / "o")]
    )
    _refused(result, "--policies", "'nope'", "gpu-util", "knative", "static-peak")
    assert not (tmp_path / "o").exists()


def test_compare_refuses_an_invalid_policy_file_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    scenario = str(_scenario_file(tmp_path))
    bad = tmp_path / "bad-policy.yaml"
    bad.write_text("kind: hpa\nmax_replicas: 4\nbogus: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["compare", "--scenarios", scenario, "--policies", str(bad)])
    _refused(result, str(bad), "bogus", "unknown key")
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(app, ["compare", "--scenarios", scenario, "--policies", str(missing)])
    _refused(result, str(missing), "file not found")


def test_compare_refuses_a_suite_file_with_an_unknown_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump({"scenarios": [str(_scenario_file(tmp_path))], "policies": ["static-peak", "nope"]}),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["compare", "--suite", str(suite)])
    _refused(result, str(suite), "policies[1]", "'nope'", "gpu-util")


# --------------------------------------------------------------------------------------------------
# 5. Namespaces are DNS-1123 labels
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["Bad NS!", "UPPER", "-lead", "trail-", "a" * 64, "dots.not.ok", ""])
def test_manifests_refuses_a_namespace_that_is_not_a_dns_label(namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    result = runner.invoke(
        app,
        [
            "manifests",
            "-p",
            "gpu-util",
            "--target",
            "Deployment/triton",
            "--namespace",
            namespace,
            "--out",
            str(out),
        ],
    )
    _refused(result, "--namespace", repr(namespace), "DNS-1123 label")
    assert not out.exists()


def test_manifests_controller_refuses_a_bad_namespace(tmp_path: Path) -> None:
    result = runner.invoke(app, ["manifests", "controller", "--config", "c.yaml", "--namespace", "Bad NS!"])
    _refused(result, "--namespace", "DNS-1123 label")


def test_manifests_accepts_a_good_namespace() -> None:
    result = runner.invoke(
        app, ["manifests", "-p", "gpu-util", "--target", "Deployment/triton", "--namespace", "team-a1"]
    )
    assert result.exit_code == 0, result.output
    assert "namespace: team-a1" in result.stdout


# --------------------------------------------------------------------------------------------------
# 6. policies show round-trips, and names that are both a kind and a preset
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", registry.preset_names())
def test_policies_show_prints_a_preset_that_loads_back_as_the_same_policy(preset: str) -> None:
    result = runner.invoke(app, ["policies", "show", preset])
    assert result.exit_code == 0, result.output
    assert result.stdout == registry.preset_text(preset)  # byte for byte: never wrapped
    shown = registry.load_policy_config(yaml.safe_load(result.stdout), "p.yaml")
    original = registry.load_policy_config(parse_yaml(registry.preset_text(preset), preset), preset)
    assert shown == original


@pytest.mark.parametrize("name", sorted(set(registry.kind_names()) & set(registry.preset_names())))
def test_a_name_that_is_both_kind_and_preset_shows_the_preset_and_says_so(name: str) -> None:
    result = runner.invoke(app, ["policies", "show", name])
    assert result.exit_code == 0, result.output
    assert result.stdout == registry.preset_text(name)
    note = " ".join(result.stderr.split())
    assert "also a policy kind" in note and f"gpuscale policies show --kind {name}" in note
    table = runner.invoke(app, ["policies", "show", "--kind", name])
    assert table.exit_code == 0, table.output
    assert f"kind: {name}" in table.stdout and "parameter" in table.stdout


def test_policies_show_kind_is_full_width_when_piped() -> None:
    result = runner.invoke(app, ["policies", "show", "hpa"])
    assert result.exit_code == 0, result.output
    for prm in registry.describe_kind("hpa"):
        if prm.description:
            assert prm.description in result.stdout, prm.name


def test_policies_show_kind_refuses_a_preset_only_name() -> None:
    result = runner.invoke(app, ["policies", "show", "--kind", "gpu-util"])
    _refused(result, "gpu-util", "unknown policy kind", "hpa")


# --------------------------------------------------------------------------------------------------
# Messages: NaN, unknown keys
# --------------------------------------------------------------------------------------------------


def test_nan_is_reported_as_not_a_number(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("policies: [gpu-util]\nslo_target: .nan\n", encoding="utf-8")
    result = runner.invoke(app, ["compare", "--suite", str(suite)])
    _refused(result, str(suite), "slo_target = nan: not a number (NaN)")


def test_an_unknown_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    data = {**SCENARIO, "workload": {"kind": "poisson", "rate_rps": 5, "rat": 1}, "duraton_s": 3}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = runner.invoke(app, ["simulate", str(path)])
    message = _refused(
        result, str(path), "workload.rat", "unknown key", "rate_rps", "duraton_s", "duration_s"
    )
    policy = tmp_path / "typo-policy.yaml"
    policy.write_text("kind: hpa\nmax_replicas: 3\nmin_replica: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", "-p", str(policy)])
    _refused(result, str(policy), "min_replica", "min_replicas", "max_replicas")
    assert "see the documentation" not in message


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each command in its own folder, so a default output (out/...) never lands in the repository."""
    monkeypatch.chdir(tmp_path)
    assert os.getcwd() == str(tmp_path)


# --------------------------------------------------------------------------------------------------
# A value that fits no member of a union: one message about the member meant, no union internals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key", "says"),
    [
        ({"uniform": [60, 30]}, "startup.image_pull_s.uniform", "expected [low, high] with 0 <= low <= high"),
        ({"uniform": [30, 60, 90]}, "startup.image_pull_s.uniform", "at most 2 items"),
        ({"normal": 3}, "startup.image_pull_s", "allowed: a number, or {uniform: ...}, or {lognormal: ...}"),
        ([1, 2], "startup.image_pull_s", "allowed: a number, or {uniform: ...}, or {lognormal: ...}"),
        (
            {"lognormal": {"median_s": -1, "sigma": 1}},
            "startup.image_pull_s.lognormal.median_s",
            "greater than 0",
        ),
        ("abc", "startup.image_pull_s", "valid number"),
    ],
)
def test_a_union_value_gets_one_message_about_the_form_meant(
    tmp_path: Path, value: Any, key: str, says: str
) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, "startup": {"image_pull_s": value}}), encoding="utf-8")
    result = runner.invoke(app, ["simulate", str(path), "-p", "gpu-util", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert message.count("error:") == 1 and message.count(str(path)) == 1, message
    assert f"{key} =" in message and says in message, message
    for internal in ("Uniform", "LogNormal", ".float", "value error"):
        assert internal not in message, message


def test_a_key_missing_in_a_tagged_union_member_is_named() -> None:
    from gpuscale.policies.registry import load_policy

    with pytest.raises(ConfigError) as info:
        load_policy({"kind": "hpa", "metrics": []}, "policy.yaml")
    assert "max_replicas" in str(info.value) and "required" in str(info.value)


def test_a_command_whose_package_is_not_installed_says_so_without_a_traceback(tmp_path: Path) -> None:
    # the controller's image leaves out Numba: `simulate` there must be one message, exit 2
    shim = tmp_path / "shim" / "numba"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'numba\'", name="numba")\n', encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    cmd = [str(Path(sys.executable).with_name("gpuscale")), "simulate", "thesis-constant", "-p", "gpu-util"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "has no numba" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shim"]  # nothing written
