"""Property-based fuzzing of every input gpuscale reads: the contract of tests/test_bad_input.py held
for generated input.

Every config kind (scenarios, policies, controller and KEDA scaler configs, suites), raw YAML text,
trace CSVs and the command line get mutated input. Each must be accepted, or refused with a
ConfigError whose message names the source and stays bounded; on the command line, exit code 0 or 2,
no traceback, one ``error:`` message on 2, and nothing written outside ``--out``.

The suite runs a small deterministic slice. A long run::

    GPUSCALE_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_fuzz.py -p no:randomly

(``GPUSCALE_FUZZ_EXAMPLES`` examples per in-process target, a tenth of that per command-line target,
randomised unless ``GPUSCALE_FUZZ_SEED`` is set.)
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.control import event as _event
from typer.testing import CliRunner

from gpuscale._core.errors import ConfigError, ConfigErrors
from gpuscale.cli import app
from gpuscale.config.loading import parse_yaml, validate
from gpuscale.config.scenario import scenario_from_dict
from gpuscale.controller.config import ControllerConfig
from gpuscale.experiments.catalog import _catalog_dir, scenario_names
from gpuscale.experiments.suite import SuiteConfig
from gpuscale.integrations.keda_scaler import KedaScalerConfig
from gpuscale.policies import registry
from gpuscale.sim.engine import check_run
from gpuscale.sim.workload import parse_trace_csv

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"

# --------------------------------------------------------------------------------------------------
# How much to run
# --------------------------------------------------------------------------------------------------

LONG = int(os.environ.get("GPUSCALE_FUZZ_EXAMPLES", "0") or 0)
FUZZ_SEED = os.environ.get("GPUSCALE_FUZZ_SEED")

MAX_MESSAGE_CHARS = 64_000
"""The longest error message a refusal may print, all its problems together."""
MAX_LINE_CHARS = 4_000
"""The longest one problem of it may be (a value is cut to 80 characters, a path to 1,000)."""
HANG_S = 60.0 if LONG else 30.0
"""One case that takes longer than this counts as a hang."""


def fuzz(fast: int, *, cli: bool = False) -> Callable[[Any], Any]:
    """Hypothesis settings: ``fast`` examples, deterministic, in the suite; the long run's count
    (a tenth of it for the slower command-line targets) when GPUSCALE_FUZZ_EXAMPLES is set."""
    long = max(fast, LONG // 10 if cli else LONG)
    s = settings(
        max_examples=long if LONG else fast,
        derandomize=not LONG,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )

    def wrap(f: Any) -> Any:
        f = s(f)
        if LONG and FUZZ_SEED is not None:
            f = seed(int(FUZZ_SEED))(f)
        return f

    return wrap


def event(name: str) -> None:
    """Count ``name`` in ``--hypothesis-show-statistics`` (nothing outside a property)."""
    if currently_in_test_context():
        _event(name)


class Hang(Exception):
    """A case ran past :data:`HANG_S`."""


@contextmanager
def no_hang(limit_s: float = HANG_S) -> Iterator[None]:
    """Fail a case that runs past ``limit_s`` (a hang) instead of waiting for it (POSIX only)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expired(_signum: int, _frame: object) -> None:
        raise Hang(f"ran for more than {limit_s:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------
# The contract, in process
# --------------------------------------------------------------------------------------------------


def check_refusal(exc: ConfigError, sources: tuple[str, ...]) -> str:
    """A refusal names one of ``sources`` in each of its problems and is bounded in size."""
    message = str(exc)
    assert message.strip(), "an empty error message"
    assert len(message) <= MAX_MESSAGE_CHARS, f"a message of {len(message):,} characters"
    parts = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    assert parts, "a ConfigErrors without errors"
    for part in parts:
        text = part.render()
        assert len(text) <= MAX_LINE_CHARS, f"one problem of {len(text):,} characters: {text[:300]}..."
        assert any(text.startswith(s) for s in sources), f"names none of {sources}: {text[:300]}"
        assert part.allowed.strip(), f"says nothing about what is allowed: {text[:300]}"
    return message


def holds(load: Callable[[], Any], *sources: str) -> Any:
    """``load()`` returns, or raises a ConfigError that keeps the contract; anything else fails."""
    try:
        with no_hang():
            value = load()
    except ConfigError as exc:
        check_refusal(exc, sources)
        event("refused")
        return None
    event("accepted")
    return value


# --------------------------------------------------------------------------------------------------
# Valid documents to start from
# --------------------------------------------------------------------------------------------------


def _builtin_scenarios() -> dict[str, Any]:
    return {
        f"builtin:{n}": parse_yaml(_catalog_dir().joinpath(f"{n}.yaml").read_text(encoding="utf-8"), n)
        for n in scenario_names()
    }


def _example(name: str) -> Any:
    return parse_yaml((EXAMPLES / name).read_text(encoding="utf-8"), name)


SCENARIOS: dict[str, Any] = {
    **_builtin_scenarios(),
    "diurnal-day": _example("diurnal-day.yaml"),
    "diurnal-day-business-hours": _example("diurnal-day-business-hours.yaml"),
    "llm-prefix-caching": _example("llm-prefix-caching.yaml"),
    "llm-chat-conversations": _example("llm-chat-conversations.yaml"),
}
POLICIES: dict[str, Any] = {
    **{f"preset {n}": parse_yaml(registry.preset_text(n), n) for n in registry.preset_names()},
    "policy-hpa-gpu-util": _example("policy-hpa-gpu-util.yaml"),
}
CONTROLLERS: dict[str, Any] = {
    "controller": _example("controller.yaml"),
    "controller-inline": {
        "prometheus": {"url": "http://127.0.0.1:9090"},
        "target": {"kind": "Deployment", "namespace": "ml", "name": "triton"},
        "pod_selector": "app=triton",
        "policy": {"kind": "knative", "metric": "concurrency", "target": 4, "min_scale": 1, "max_scale": 8},
        "safety": {"min_replicas": 1, "max_replicas": 12, "max_step": 4},
    },
}
KEDA_SCALERS: dict[str, Any] = {
    "keda-scaler": _example("keda-scaler.yaml"),
    "keda-scaler-static": {
        "policy": {"kind": "hpa", "min_replicas": 1, "max_replicas": 4, "metrics": [
            {"type": "Pods", "metric": "gpu_util", "target": {"type": "AverageValue", "average_value": 70}}
        ]},
        "source": {"kind": "static", "snapshot": {"current_replicas": 2, "signals": [
            {"metric": "gpu_util", "window_s": 60, "value": 80, "age_s": 5}
        ]}},
        "default_sync_period_s": 15,
    },
}  # fmt: skip
SUITES: dict[str, Any] = {"suite": _example("suite.yaml"), "suite-llm": _example("suite-llm.yaml")}


def _walk_dicts(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        yield doc
        for v in doc.values():
            yield from _walk_dicts(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk_dicts(v)


KINDS = sorted(
    {
        str(d["kind"])
        for docs in (SCENARIOS, POLICIES, CONTROLLERS, KEDA_SCALERS)
        for doc in docs.values()
        for d in _walk_dicts(doc)
        if isinstance(d.get("kind"), str)
    }
    | set(registry.kind_names())
)
KEYS = sorted(
    {str(k) for docs in (SCENARIOS, POLICIES) for doc in docs.values() for d in _walk_dicts(doc) for k in d}
)


def test_every_starting_document_is_valid() -> None:
    """The fuzzer mutates valid documents: each must load as it is."""
    for name, doc in SCENARIOS.items():
        scenario_from_dict(copy.deepcopy(doc), name)
    for name, doc in POLICIES.items():
        registry.load_policy_config(copy.deepcopy(doc), name)
    for name, doc in CONTROLLERS.items():
        validate(ControllerConfig, copy.deepcopy(doc), name)
    for name, doc in KEDA_SCALERS.items():
        validate(KedaScalerConfig, copy.deepcopy(doc), name)
    for name, doc in SUITES.items():
        validate(SuiteConfig, copy.deepcopy(doc), name)


# --------------------------------------------------------------------------------------------------
# Strategies: values of every type, and mutations of a document
# --------------------------------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**18, 10**400, 1e308, -1e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 1e-9]),
)
_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["", " ", "nan", ".nan", "inf", "-inf", "1e400", "-1", "0", "true", "null", "~", "10s", "5m",
         "../../etc/passwd", "/", "builtin:nope", "builtin:azure-llm-2023-conv", "a" * 5000, "\x00",
         "é" * 300, "2026-02-30T00:00:00Z", "25:00", "mon", "Europe/Nowhere", "app=", "a,b", "[x]",
         "${HOME}", "%s", "{}", "\u202e", "\ud7ff", "日本語", "kind"]
    ),
    st.sampled_from(KINDS),
    st.sampled_from(scenario_names() + registry.preset_names()),
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(), st.booleans(), _NUMBERS, _TEXT, st.dates(), st.datetimes(), st.binary(max_size=8)
)


def _deep(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


JUNK = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=6),
    st.dictionaries(st.one_of(_TEXT, st.sampled_from(KEYS)), _SCALARS, max_size=4),
    st.integers(10, 200).map(_deep),
    st.integers(1000, 20_000).map(lambda n: [1] * n),
    st.integers(1000, 5000).map(lambda n: {f"k{i}": i for i in range(n)}),
    st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                 max_leaves=12),
)  # fmt: skip
"""A value of any type, in any shape: what a user's YAML file may hold."""


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


MUTATIONS = (
    "drop",
    "unknown",
    "replace",
    "swap-kind",
    "truncate",
    "wrap",
    "numeric",
    "duplicate-item",
    "scale",
    "scale",
)
"""What a mutation does at a random place; ``scale`` keeps a number's type (its value stays plausible,
so that more mutated documents get past validation into what follows it)."""
_FACTORS = st.sampled_from([0, 2, 10, 1000, 10**6, 10**12, -1]) | st.floats(0, 4)


def _scaled(number: float, factor: float) -> float:
    """``number * factor``, an integer kept an integer by an integer factor (inf past a float's range)."""
    if isinstance(number, int) and isinstance(factor, int):
        return number * factor
    try:
        return float(number) * factor
    except OverflowError:
        return math.inf


@st.composite
def mutated(draw: st.DrawFn, docs: Mapping[str, Any]) -> tuple[str, Any]:
    """One of ``docs`` with one to four random mutations (returns its name and the document)."""
    name = draw(st.sampled_from(sorted(docs)))
    doc = copy.deepcopy(docs[name])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4]))):
        if not isinstance(doc, (dict, list)):
            break
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(MUTATIONS))
        node = _get(doc, path)
        parent: Any = _get(doc, path[:-1]) if path else None
        if op == "drop" and path:
            del parent[path[-1]]
        elif op == "unknown" and isinstance(node, dict):
            node[draw(st.one_of(_TEXT, st.sampled_from(KEYS), st.none(), st.integers(), st.booleans()))] = (
                draw(JUNK)
            )
        elif op == "swap-kind" and isinstance(node, dict):
            node["kind"] = draw(st.one_of(st.sampled_from(KINDS), JUNK))
        elif op == "truncate" and isinstance(node, list):
            del node[draw(st.integers(0, len(node))) :]
        elif op == "duplicate-item" and isinstance(node, list) and node:
            node.extend(copy.deepcopy(node[: draw(st.integers(1, 3))]))
        elif op == "wrap" and path:
            parent[path[-1]] = draw(
                st.sampled_from([[node], {"value": node}, {"kind": "constant", "v": node}])
            )
        elif op == "scale" and path and isinstance(node, (int, float)) and not isinstance(node, bool):
            factor = draw(_FACTORS)
            parent[path[-1]] = _scaled(node, factor)
        elif op == "numeric" and path:
            parent[path[-1]] = draw(_NUMBERS)
        elif path:
            parent[path[-1]] = draw(JUNK)
        else:
            doc = draw(JUNK)
    return name, doc


# --------------------------------------------------------------------------------------------------
# 1. Config models, in process
# --------------------------------------------------------------------------------------------------


@fuzz(150)
@given(case=mutated(SCENARIOS))
def test_fuzz_scenario(case: tuple[str, Any]) -> None:
    name, doc = case
    scenario = holds(lambda: scenario_from_dict(doc, f"{name}.yaml"), f"{name}.yaml")
    if (
        scenario is not None
    ):  # an accepted scenario is sized up front: it runs, or is refused in the same terms
        files = [str(Path(v).expanduser()) for v in _strings(doc.get("workload")) if v]
        holds(lambda: check_run(scenario, source=f"{name}.yaml"), f"{name}.yaml", *files)


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


@fuzz(150)
@given(case=mutated(POLICIES))
def test_fuzz_policy(case: tuple[str, Any]) -> None:
    name, doc = case
    config = holds(lambda: registry.load_policy_config(doc, f"{name}.yaml"), f"{name}.yaml")
    if config is not None:  # a valid config builds (the build may refuse it, in the same terms)
        holds(lambda: registry.build_policy(config), f"{name}.yaml")


@fuzz(100)
@given(case=mutated(CONTROLLERS))
def test_fuzz_controller_config(case: tuple[str, Any]) -> None:
    name, doc = case
    holds(lambda: validate(ControllerConfig, doc, f"{name}.yaml"), f"{name}.yaml")


@fuzz(100)
@given(case=mutated(KEDA_SCALERS))
def test_fuzz_keda_scaler_config(case: tuple[str, Any]) -> None:
    name, doc = case
    holds(lambda: validate(KedaScalerConfig, doc, f"{name}.yaml"), f"{name}.yaml")


@fuzz(100)
@given(case=mutated(SUITES))
def test_fuzz_suite(case: tuple[str, Any]) -> None:
    name, doc = case
    holds(lambda: validate(SuiteConfig, doc, f"{name}.yaml"), f"{name}.yaml")


# Raw YAML text: random bytes, broken YAML, anchors and aliases, tabs, huge numbers.

_YAML_PIECES = st.sampled_from(
    ["a: 1\n", "a: 1\na: 2\n", "- x\n", "&a [1, 2]\n", "b: *a\n", "*nope\n", "x: &r [*r]\n",
     "\t- y\n", "key:\tvalue\n", "k: " + "9" * 5000 + "\n", "k: 1e99999\n", "k: 0x" + "f" * 400 + "\n",
     "k: 2023-02-30\n", "k: 2023-01-01T25:00:00\n", "k: !!python/object:os.system x\n", "k: !!binary ====\n",
     "k: !!float abc\n", "k: !!int 1.5\n", "k: !custom x\n", "{", "}", "[", "]", ": x\n", "? [a]\n: 1\n",
     "<<: *a\n", "<<: {a: 1}\n", "%YAML 1.1\n---\n", "---\n", "...\n", "--- |\n  text\n", "'unterminated\n",
     '"\\x"\n', "k: \"\\uD800\"\n", "\ufeff", "\x00", "\r\n", "  " * 200 + "x\n", "[" * 80 + "]" * 80 + "\n",
     "{a: " * 70 + "1" + "}" * 70 + "\n", "k: .nan\n", "k: -.inf\n", "k: ~\n", "k: [1, 2\n", "#c\n"]
)  # fmt: skip


@st.composite
def _aliases(draw: st.DrawFn) -> str:
    levels = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    lines = ["a0: &a0 [x, y]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
    st.lists(_YAML_PIECES, max_size=8).map("".join),
    _aliases(),
    st.builds(yaml.safe_dump, JUNK).map(lambda s: s),
)


@fuzz(300)
@given(text=YAML_TEXT)
def test_fuzz_yaml_text(text: str) -> None:
    data = holds(lambda: parse_yaml(text, "fuzz.yaml"), "fuzz.yaml")
    if isinstance(data, dict):  # what parsed goes on into every loader
        holds(lambda: scenario_from_dict(data, "fuzz.yaml"), "fuzz.yaml")
        holds(lambda: registry.load_policy_config(data, "fuzz.yaml"), "fuzz.yaml")
        holds(lambda: validate(ControllerConfig, data, "fuzz.yaml"), "fuzz.yaml")
        holds(lambda: validate(SuiteConfig, data, "fuzz.yaml"), "fuzz.yaml")


@fuzz(150)
@given(case=mutated({**SCENARIOS, **POLICIES, **CONTROLLERS, **SUITES}))
def test_fuzz_yaml_round_trip(case: tuple[str, Any]) -> None:
    """A mutated document written as YAML and read back through the real reader into each loader."""
    name, doc = case
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, RecursionError):
        assume(False)
        return
    data = holds(lambda: parse_yaml(text, f"{name}.yaml"), f"{name}.yaml")
    for load in (
        lambda: scenario_from_dict(data, f"{name}.yaml"),
        lambda: registry.load_policy_config(data, f"{name}.yaml"),
        lambda: validate(ControllerConfig, data, f"{name}.yaml"),
        lambda: validate(KedaScalerConfig, data, f"{name}.yaml"),
        lambda: validate(SuiteConfig, data, f"{name}.yaml"),
    ):
        holds(load, f"{name}.yaml")


# --------------------------------------------------------------------------------------------------
# 2. Traces
# --------------------------------------------------------------------------------------------------

_AZURE_HEADERS = [
    "TIMESTAMP,ContextTokens,GeneratedTokens",
    "TIMESTAMP",
    "TIMESTAMP,ContextTokens",
    "\ufeffTIMESTAMP,GeneratedTokens",
    "ContextTokens,TIMESTAMP,GeneratedTokens,extra",
]
_PLAIN_HEADERS = [
    "time_s",
    "time_s,context_tokens,generated_tokens",
    "time_s,generated_tokens",
    " time_s , context_tokens ",
    "x,time_s",
]
_BAD_HEADERS = ["", "time", "timestamp", "a,b,c", "TIMESTAMP,TIMESTAMP", "time_s,time_s", ",", "\x00"]  # fmt: skip

_FIELD = st.one_of(
    st.integers(0, 10**6).map(str),
    st.floats(0, 1e6, allow_nan=False).map(repr),
    st.sampled_from(
        ["", " ", "-1", "0", "nan", "NaN", "inf", "-inf", "1e400", "1e-400", "1_000", "٣", "²", "0x10",
         "2023-11-16 18:15:46.6805900", "2023-11-16T18:15:46", "2023-02-30 00:00:00", "2023-11-16 24:00:00",
         "2023-11-16 18:15:46.1234567890", "9999-12-31 23:59:59.999999999", "0001-01-01 00:00:00",
         "  2023-11-16 18:15:47  ", "\"1\"", "1,2", "9" * 400, "é"]
    ),
    st.text(max_size=6),
)  # fmt: skip


@st.composite
def trace_csv(draw: st.DrawFn) -> str:
    """A trace CSV: a header of either format (or a broken one), rows that are well formed and in
    order, or not."""
    kind = draw(st.sampled_from(["azure", "plain", "plain", "bad"]))
    headers = {"azure": _AZURE_HEADERS, "plain": _PLAIN_HEADERS, "bad": _BAD_HEADERS}[kind]
    header = (
        draw(st.sampled_from(headers) | st.text(max_size=30))
        if kind == "bad"
        else draw(st.sampled_from(headers))
    )
    columns = [c.strip().lstrip("\ufeff") for c in header.split(",")]
    clean = draw(st.booleans())  # every cell well formed: only the order or a count can be wrong
    ordered = clean and draw(st.booleans())
    rows = []
    t = draw(st.floats(0, 1e5, allow_nan=False))
    for _ in range(draw(st.integers(1 if clean else 0, 40))):
        t = max(0.0, t + draw(st.floats(0 if ordered else -2, 5, allow_nan=False)))
        cells = []
        for column in columns:
            if column == "TIMESTAMP":
                good = f"2023-11-16 {int(t // 3600) % 24:02d}:{int(t // 60) % 60:02d}:{t % 60:09.6f}"
            elif column == "time_s":
                good = repr(t)
            else:
                good = str(draw(st.integers(0, 4096)))
            cells.append(good if clean else draw(st.just(good) | _FIELD))
        if not clean and draw(st.integers(0, 9)) == 0:  # a missing or extra column
            cells = cells[:-1] if draw(st.booleans()) else [*cells, "1"]
        rows.append(",".join(cells))
    ending = draw(st.sampled_from(["\n", "\r\n", "\n\n\n", "\r"]))
    return ending.join([header, *rows]) + draw(st.sampled_from([ending, ""]))


def _check_trace(trace: Any) -> None:
    import numpy as np

    t = trace.times_s
    assert len(t) > 0
    assert np.all(np.isfinite(t)) and np.all(t >= 0) and np.all(np.diff(t) >= 0)
    for col in (trace.context_tokens, trace.generated_tokens):
        assert col is None or (len(col) == len(t) and np.all(col >= 0))


@fuzz(300)
@given(text=trace_csv())
def test_fuzz_trace_csv(text: str) -> None:
    trace = holds(lambda: parse_trace_csv(text, "trace.csv"), "trace.csv")
    if trace is not None:
        _check_trace(trace)


# --------------------------------------------------------------------------------------------------
# 3. The command line
# --------------------------------------------------------------------------------------------------

runner = CliRunner()

SMALL = {
    "name": "fuzz",
    "duration_s": 60,
    "seed": 1,
    "slo": {"latency_ms": 50},
    "workload": {"kind": "poisson", "rate_rps": 50},
    "model": {"profile": "resnet50-a100-triton"},
    "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]},
    "control": {"interval_s": 5, "initial_replicas": 1},
}
SMALL_TRACE = {**SMALL, "workload": {"kind": "trace", "path": "trace.csv"}}
CLI_SCENARIOS: dict[str, Any] = {"small": SMALL, **{n: d for n, d in SCENARIOS.items() if "llm" not in n}}

RATE_KEYS = ("rps", "users", "rate", "peak", "trough", "base", "mean", "amplitude", "level")


def clamp(doc: Any, key: str = "") -> Any:
    """A scenario small enough to run in well under a second: at most 120 s, light traffic."""
    if isinstance(doc, dict):
        out = {k: clamp(v, str(k)) for k, v in doc.items()}
        if isinstance(out.get("duration_s"), (int, float)) and not isinstance(out.get("duration_s"), bool):
            out["duration_s"] = min(out["duration_s"], 120)
        return out
    if isinstance(doc, list):
        return [clamp(v, key) for v in doc]
    if isinstance(doc, (int, float)) and not isinstance(doc, bool) and any(r in key for r in RATE_KEYS):
        return min(doc, 100) if doc == doc else doc
    if key in ("nodes", "gpus_per_node", "initial_replicas", "max_pods", "replicas") and isinstance(doc, int):
        return min(doc, 8)
    return doc


def _clamped_scenario(doc: Any) -> Any:
    doc = clamp(doc)
    if isinstance(doc, dict):
        doc.setdefault("duration_s", 120)
        if isinstance(doc.get("workload"), dict) and doc["workload"].get("kind") == "trace":
            doc["workload"].pop("loop", None)
        doc.pop("start", None) if "schedules" not in str(doc.get("safety", "")) else None
    return doc


def _snapshot(root: Path, out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_relative_to(out)
    }


def cli_holds(args: list[str], root: Path, out: Path) -> Any:
    """Run ``gpuscale ARGS`` in ``root``: exit 0 or 2, no traceback, one ``error:`` on 2, and nothing
    written in ``root`` outside ``out``."""
    before = _snapshot(root, out)
    with no_hang():
        result = runner.invoke(app, args, catch_exceptions=True)
    shown = f"gpuscale {' '.join(args)[:500]}\n{result.output[-3000:]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{shown}\nraised {result.exception!r}") from result.exception
    assert result.exit_code in (0, 2), f"exit code {result.exit_code}: {shown}"
    event(f"{args[0]} exit {result.exit_code}")
    assert "Traceback" not in result.output, shown
    if result.exit_code == 2:
        if result.stderr.startswith(("Usage:", "╭─ Error")):  # typer's own usage error (an unknown
            assert "Error" in result.stderr, shown  # flag, a bad int, an option without its value)
        else:  # gpuscale's refusal: exactly one message
            assert result.stderr.startswith("error:"), f"not one error: message: {shown}"
            assert result.stderr.count("\nerror:") == 0, f"more than one error: message: {shown}"
            assert len(result.stderr) <= MAX_MESSAGE_CHARS + 200, shown[:500]
    after = _snapshot(root, out)
    assert after == before, f"wrote outside --out: {sorted(set(after) ^ set(before))}: {shown}"
    return result


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def _write_doc(path: Path, doc: Any, raw: str | None) -> None:
    if raw is not None:
        path.write_text(raw, encoding="utf-8", errors="surrogatepass")
        return
    try:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    except (yaml.YAMLError, RecursionError, UnicodeEncodeError):
        path.write_text("{bad: [", encoding="utf-8")


_OUT = st.sampled_from(["out", "out/nested/deeper", "scenario.yaml/under-a-file", "scenario.yaml",
                        "ro/out", "", ".", "/dev/null", "/proc/nope/x", "out\x00x"])  # fmt: skip
_FLAG_JUNK = st.sampled_from(["--bogus", "-x", "--seed=-1", "--seed=abc", "--replicas=-3", "--replicas=1e9",
                              "--seeds=1,1", "--seeds=", "--policies=", "--workers=0", "--format=nope",
                              "--markdown", "--", "-p", "--out"])  # fmt: skip
_NAME = _TEXT.filter(lambda t: len(t.encode("utf-8", "surrogatepass")) < 250)
"""A scenario or policy name on the command line. Longer ones are left out until a name past the
file system's limit is refused (test_a_name_longer_than_a_file_name_is_refused)."""
_POLICY_SPECS = st.one_of(st.sampled_from(registry.preset_names()), st.just("policy.yaml"), _NAME)


often = st.integers(0, 9).map(lambda n: n < 5)
"""Fuzz this part half the time..."""
seldom = st.integers(0, 9).map(lambda n: n < 7)
"""...and keep this part valid 70 % of the time (so that some cases get past the first refusal)."""


@st.composite
def cli_case(draw: st.DrawFn) -> tuple[list[str], Any, str | None, Any, str | None, str | None]:
    command = draw(st.sampled_from(
        ["simulate", "simulate", "simulate", "compare", "tune", "manifests", "schema", "policies-show",
         "scenarios-show", "capacity"]
    ))  # fmt: skip
    _, scen = draw(mutated(CLI_SCENARIOS)) if draw(often) else ("small", copy.deepcopy(SMALL))
    if draw(st.integers(0, 7)) == 0:
        scen = copy.deepcopy(SMALL_TRACE)
    scen = _clamped_scenario(scen)
    scen_raw = draw(YAML_TEXT) if draw(st.integers(0, 9)) == 0 else None
    _, pol = (
        draw(mutated(POLICIES)) if draw(st.booleans()) else ("p", copy.deepcopy(POLICIES["preset gpu-util"]))
    )
    pol_raw = draw(YAML_TEXT) if draw(st.integers(0, 9)) == 0 else None
    trace = draw(trace_csv()) if draw(often) else "time_s\n0\n1.5\n3\n30\n"
    scenario_arg = "scenario.yaml" if draw(seldom) else draw(st.sampled_from(scenario_names()) | _NAME)
    policy_arg = draw(st.sampled_from(registry.preset_names())) if draw(seldom) else draw(_POLICY_SPECS)
    out = "out" if draw(seldom) else draw(_OUT)
    if command == "simulate":
        args = ["simulate", scenario_arg, "-p", policy_arg, "--out", out]
        if draw(st.booleans()):
            args[2:4] = ["--replicas", str(draw(st.integers(-2, 6)))]
        if draw(st.booleans()):
            args += ["--seed", str(draw(st.one_of(st.integers(-3, 10**6), st.just("x"))))]
        if scenario_arg != "scenario.yaml" and scenario_arg in scenario_names():
            args[1] = "scenario.yaml"  # a built-in would run for minutes: fuzz the file instead
    elif command == "compare":
        args = ["compare", "--scenarios", "scenario.yaml", "--policies", policy_arg, "--seeds",
                draw(st.sampled_from(["1", "0", "-1", "a", "1,1", ""])), "--workers", "1", "--out", out]  # fmt: skip
    elif command == "tune":
        args = ["tune", "-p", draw(st.sampled_from(["gpu-util", "knative", "policy.yaml"])), "--scenarios",
                "scenario.yaml", "--param", draw(st.sampled_from(
                    ["max_replicas=2,3", "max_replicas=2", "nope=1,2", "max_replicas=a", "max_replicas=1:2",
                     "=", "max_replicas=", "max_replicas=9:1", "max_replicas=1:1e9:1e9"])),
                "--method", draw(st.sampled_from(["grid", "random", "tpe", "nope"])), "--budget", "2",
                "--seeds", "1", "--workers", "1", "--out", out]  # fmt: skip
    elif command == "manifests":
        args = ["manifests", "-p", policy_arg, "--format",
                draw(st.sampled_from(["all", "hpa", "keda", "knative", "adapter", "headroom", "nope"])),
                "--target", draw(st.sampled_from(["Deployment/triton", "x", "/", "Deployment/", "A/B/C"]))]  # fmt: skip
        if draw(st.booleans()):
            args += ["--out", out if out not in ("out", "") else "out/m.yaml"]
    elif command == "schema":
        args = [
            "schema",
            draw(st.sampled_from(["scenario", "policy", "controller", "keda-scaler", "suite", "x"])),
        ]
        if draw(st.booleans()):
            args.append("--markdown")
        if draw(st.booleans()):
            args += ["--out", out if out not in ("out", "") else "out/s.json"]
    elif command == "policies-show":
        args = ["policies", "show", policy_arg] + (["--kind"] if draw(st.booleans()) else [])
    elif command == "scenarios-show":
        args = ["scenarios", "show", draw(st.one_of(st.sampled_from(scenario_names()), _NAME))]
    else:
        args = [
            "capacity",
            "scenario.yaml",
            "--slo-target",
            draw(st.sampled_from(["0.99", "0.4", "1.5", "x"])),
        ]
    if draw(st.integers(0, 5)) == 0:
        args.insert(draw(st.integers(1, len(args))), draw(_FLAG_JUNK))
    return args, scen, scen_raw, pol, pol_raw, trace


def _run_cli_case(case: tuple[list[str], Any, str | None, Any, str | None, str | None], root: Path) -> Any:
    args, scen, scen_raw, pol, pol_raw, trace = case
    for p in sorted(root.iterdir(), reverse=True):  # each example starts from an empty folder
        if p.name != "ro":
            _remove(p)
    ro = root / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    _write_doc(root / "scenario.yaml", scen, scen_raw)
    _write_doc(root / "policy.yaml", pol, pol_raw)
    if trace is not None:
        (root / "trace.csv").write_text(trace, encoding="utf-8")
    out_index = args.index("--out") + 1 if "--out" in args[:-1] else None
    out = root / args[out_index] if out_index is not None else root / "out"  # --out '' is refused
    if "\x00" in str(out):
        out = root / "out"
    return cli_holds(args, root, out)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        for q in p.iterdir():
            _remove(q)
        p.rmdir()
    else:
        p.unlink()


needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="permissions and SIGALRM")


@needs_posix
@fuzz(12, cli=True)
@given(case=cli_case())
def test_fuzz_cli(case: Any, in_tmp: Path) -> None:
    _run_cli_case(case, in_tmp)


@needs_posix
@fuzz(8, cli=True)
@given(text=trace_csv(), policy=st.sampled_from(["gpu-util", "knative", "static"]))
def test_fuzz_trace_simulate(text: str, policy: str, in_tmp: Path) -> None:
    """A fuzzed trace replayed by a short ``simulate``."""
    args = ["simulate", "scenario.yaml", "--out", "out"]
    if policy != "static":
        args += ["-p", policy]
    _run_cli_case((args, SMALL_TRACE, None, None, "", text), in_tmp)


def test_the_fuzzer_reaches_a_successful_run(in_tmp: Path) -> None:
    """The harness itself: its base case runs (exit 0, files under --out)."""
    result = _run_cli_case(
        (["simulate", "scenario.yaml", "-p", "gpu-util", "--out", "out"], SMALL, None, None, "", None), in_tmp
    )
    assert result.exit_code == 0, result.output
    assert (in_tmp / "out" / "summary.json").is_file()


# --------------------------------------------------------------------------------------------------
# What the fuzzer found, kept as plain regression tests
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\x1f", "a: 1\n\x07\n", "k: \x00"])
def test_a_control_character_in_yaml_is_a_config_error(text: str, in_tmp: Path) -> None:
    """PyYAML's reader refuses control characters while the loader is being made, before parsing:
    that refusal was a traceback."""
    with pytest.raises(ConfigError, match=r"^bad\.yaml: is not valid YAML \(unacceptable character"):
        parse_yaml(text, "bad.yaml")
    (in_tmp / "bad.yaml").write_text(text, encoding="utf-8")
    result = cli_holds(["simulate", "bad.yaml", "--out", "out"], in_tmp, in_tmp / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: bad.yaml: is not valid YAML")


def test_a_document_with_thousands_of_problems_gets_a_bounded_message() -> None:
    """Every problem was one line: 5,000 unknown keys made a message of 5,000 lines (850 kB)."""
    doc = {**SMALL, **{f"k{i}": i for i in range(5000)}}
    with pytest.raises(ConfigErrors) as caught:
        scenario_from_dict(doc, "many.yaml")
    message = check_refusal(caught.value, ("many.yaml",))
    assert len(caught.value.errors) == 21
    assert message.startswith("many.yaml: k0 = 0: unknown key; allowed: name, ")
    assert message.endswith("many.yaml: and 4,980 more problems (the first 20 are listed)")


def test_an_unknown_key_of_any_length_is_cut_in_the_message() -> None:
    """A key path was printed whole: an unknown key of 5,000 characters made a line of 5,000."""
    with pytest.raises(ConfigErrors) as caught:
        validate(ControllerConfig, {**CONTROLLERS["controller"], "a" * 5000: None}, "controller.yaml")
    message = check_refusal(caught.value, ("controller.yaml",))
    assert f"controller.yaml: {'a' * 77}... = None: unknown key; allowed: " in message
    assert len(message) < 1000


needs_dev_zero = pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")


@needs_dev_zero
@pytest.mark.parametrize("where", ["scenario", "trace"])
def test_a_file_that_never_ends_is_refused_not_read_forever(
    where: str, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gpuscale simulate /dev/zero``, or a trace path of /dev/zero, read until memory ran out."""
    import gpuscale.sim.workload as workload

    monkeypatch.setattr(workload, "MAX_TRACE_BYTES", 2**20)  # the same path as 256 MiB, sooner
    if where == "scenario":
        args, limit = ["simulate", "/dev/zero", "--out", "out"], "16 MiB"
    else:
        scenario = {**SMALL, "workload": {"kind": "trace", "path": "/dev/zero"}}
        (in_tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario), encoding="utf-8")
        args, limit = ["simulate", "scenario.yaml", "--out", "out"], "1 MiB"
    result = cli_holds(args, in_tmp, in_tmp / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: /dev/zero: is larger than {limit}, the most gpuscale reads")


def test_a_trace_over_the_size_limit_is_refused_before_it_is_parsed(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpuscale.sim.workload as workload

    monkeypatch.setattr(workload, "MAX_TRACE_BYTES", 1000)
    (in_tmp / "big.csv").write_text("time_s\n" + "".join(f"{i}\n" for i in range(1000)), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"big\.csv: is larger than 0\.000953674 MiB"):
        workload.load_trace("big.csv", base_dir=in_tmp)
    (in_tmp / "small.csv").write_text("time_s\n0\n1\n", encoding="utf-8")
    assert workload.load_trace("small.csv", base_dir=in_tmp).n_requests == 2


_LONG = "a" * 5000
_SAFETY = {"min_replicas": 1, "max_replicas": 4}


@pytest.mark.parametrize(
    ("kind", "doc"),
    [
        ("controller", {**CONTROLLERS["controller"], "pod_selector": _LONG}),
        ("controller", {**CONTROLLERS["controller"], "pod_selector": f"app={_LONG}"}),
        ("scenario", {**SMALL, "cluster": {"pools": [{"gpu": _LONG, "gpus_per_node": 2, "nodes": 1}]}}),
        (
            "scenario",
            {
                **SMALL,
                "safety": {**_SAFETY, "schedules": [{"start": _LONG, "end": "20:00", "min_replicas": 1}]},
            },
        ),
        (
            "scenario",
            {
                **SMALL,
                "start": "2026-03-02T00:00:00Z",
                "safety": {
                    **_SAFETY,
                    "schedules": [{"start": "08:00", "end": "20:00", "timezone": _LONG, "min_replicas": 1}],
                },
            },
        ),
    ],
)
def test_a_long_value_is_cut_in_every_message_that_quotes_it(kind: str, doc: dict[str, Any]) -> None:
    """Validators quoted the offending text whole (``{value!r}``): a 5,000-character label selector key,
    GPU type, time of day or time zone made a line of 5,000 characters."""
    with pytest.raises(ConfigError) as caught:
        if kind == "controller":
            validate(ControllerConfig, doc, "file.yaml")
        else:
            scenario_from_dict(doc, "file.yaml")
    message = check_refusal(caught.value, ("file.yaml",))
    assert "a" * 100 not in message
    assert len(message) < 1500, message


@pytest.mark.parametrize("change", [{"season_s": math.inf}, {"history_resolution_s": 1e-320}])
def test_an_infinite_predictive_season_is_refused(change: dict[str, float]) -> None:
    doc = {
        "kind": "predictive",
        "forecaster": "holt-winters",
        "capacity_rps_per_replica": 100,
        "max_replicas": 20,
    }
    with pytest.raises(ConfigError, match=r"season_s|history_resolution_s"):
        registry.load_policy_config({**doc, **change}, "p.yaml")


@pytest.mark.parametrize("users", [10**400, {"kind": "constant", "users": 10**400}, 10**30])
def test_a_user_count_past_a_float_is_refused_at_validation(users: Any) -> None:
    """``users: 1000…0`` (400 digits) overflowed in ``math.isfinite`` (a traceback); as a mapping it
    passed validation and overflowed in the run's estimate; 10**30 wrapped to a negative int64 there."""
    doc = {**SMALL, "workload": {"kind": "closed-loop", "users": users, "think_time_s": [1, 2]}}
    with pytest.raises(ConfigError) as caught:
        scenario_from_dict(doc, "users.yaml")
    message = check_refusal(caught.value, ("users.yaml",))
    assert "users = " in message and "less than or equal to 9007199254740992" in message


@pytest.mark.parametrize(
    "args",
    [
        ["scenarios", "show", "a" * 300],
        ["simulate", "a" * 300, "--out", "out"],
        ["simulate", "scenario.yaml", "-p", "a" * 300, "--out", "out"],
        ["capacity", "a" * 300],
    ],
    ids=["scenarios-show", "simulate", "simulate-policy", "capacity"],
)
def test_a_name_longer_than_a_file_name_is_refused(args: list[str], in_tmp: Path) -> None:
    (in_tmp / "scenario.yaml").write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    result = cli_holds(args, in_tmp, in_tmp / "out")
    assert result.exit_code == 2
