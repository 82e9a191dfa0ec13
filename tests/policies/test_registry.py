"""The registry: loading any kind from YAML, listing and describing kinds, presets, and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.policies.base import Metric, SignalSpec, StaticPolicy
from gpuscale.policies.conformance import check_policy
from gpuscale.policies.hpa import HpaPolicy
from gpuscale.policies.keda import KedaPolicy
from gpuscale.policies.kinds import KindConfig, register_kind, unregister_kind
from gpuscale.policies.knative import KnativePolicy
from gpuscale.policies.registry import (
    check_windows,
    config_class,
    describe_kind,
    kind_configs,
    kind_names,
    load_policy,
    load_policy_config,
    load_policy_file,
    load_preset,
    load_preset_config,
    policy_kinds,
    preset_names,
    preset_text,
    resolve_policy,
)

OUR_KINDS = {"static", "hpa", "knative", "keda"}
OUR_PRESETS = {"gpu-util", "queue-depth", "latency-slo", "cpu-hpa", "hpa-three-metric"}


def test_our_kinds_are_registered_with_a_summary() -> None:
    kinds = {k.kind: k for k in policy_kinds()}
    assert set(kinds) >= OUR_KINDS
    assert all(k.summary for k in kinds.values())
    assert kind_names() == [k.kind for k in policy_kinds()]
    assert len(set(kind_names())) == len(kind_configs()), "two config classes share a kind"


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        ({"kind": "static", "replicas": 3}, StaticPolicy),
        ({"kind": "hpa", "max_replicas": 5}, HpaPolicy),
        ({"kind": "knative"}, KnativePolicy),
        ({"kind": "keda", "triggers": [{"metric": "queue_length", "threshold": 5}]}, KedaPolicy),
    ],
)
def test_load_each_kind(data: dict[str, object], cls: type) -> None:
    policy = load_policy(data, "policy.yaml")
    assert isinstance(policy, cls)
    assert policy.name == data["kind"]


def test_unknown_kind_names_the_key_and_the_allowed_kinds() -> None:
    with pytest.raises(ConfigError) as err:
        load_policy({"kind": "hpa2", "max_replicas": 3}, "policy.yaml")
    assert err.value.key == "kind" and err.value.value == "hpa2"
    assert "allowed: " in err.value.allowed and "hpa" in err.value.allowed and "knative" in err.value.allowed
    assert str(err.value).startswith(
        "policy.yaml: kind = 'hpa2': unknown policy kind; allowed: static, aibrix-apa, aibrix-kpa, gpu-memory, hpa"
    )


def test_missing_kind() -> None:
    with pytest.raises(ConfigError) as err:
        load_policy({"max_replicas": 3}, "policy.yaml")
    assert err.value.key == "kind" and "required" in err.value.allowed


def test_prefix_locates_a_policy_inside_a_bigger_file() -> None:
    with pytest.raises(ConfigError) as err:
        load_policy({"kind": "hpa", "max_replicas": 3, "min_replicas": 4}, "scenario.yaml", prefix="policy")
    assert err.value.key == "policy.min_replicas"


def test_missing_target_names_the_key() -> None:
    data = {"kind": "hpa", "max_replicas": 3, "metrics": [{"type": "Pods", "metric": "gpu_util"}]}
    with pytest.raises(ConfigError) as err:
        load_policy(data, "p.yaml")
    assert str(err.value) == "p.yaml: metrics[0].target: required key is missing"


def test_min_above_max_names_both_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_policy({"kind": "hpa", "min_replicas": 8, "max_replicas": 3}, "p.yaml")
    assert str(err.value) == "p.yaml: min_replicas = 8: must be <= max_replicas (3)"
    with pytest.raises(ConfigError) as err:
        load_policy({"kind": "knative", "min_scale": 8, "max_scale": 3}, "p.yaml")
    assert "max_scale" in str(err.value) and err.value.key == "min_scale"


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        load_policy({"kind": "static", "replicas": 2, "replica": 3}, "p.yaml")
    assert err.value.key == "replica" and "unknown key" in err.value.allowed


def test_window_shorter_than_the_scrape_interval_names_the_key_and_range() -> None:
    kpa = load_policy({"kind": "knative"}, "kpa.yaml")
    with pytest.raises(ConfigError) as err:
        check_windows(kpa, 15.0, "kpa.yaml")
    # The 6-s panic window cannot be fulfilled by 15-s scrapes.
    assert err.value.key == "panic_window_percentage"
    assert err.value.value == 6.0
    assert "concurrency:total:6s" in err.value.allowed and "allowed: >= 15 s" in err.value.allowed
    check_windows(kpa, 1.0, "kpa.yaml")  # Knative scrapes every second: fine

    hpa = load_policy(
        {
            "kind": "hpa",
            "max_replicas": 3,
            "metrics": [
                {
                    "type": "Pods",
                    "metric": "gpu_util",
                    "window_s": 10,
                    "target": {"type": "AverageValue", "average_value": 40},
                }
            ],
        },
        "hpa.yaml",
    )
    with pytest.raises(ConfigError) as err:
        check_windows(hpa, 30.0, "hpa.yaml")
    assert str(err.value) == (
        "hpa.yaml: metrics[0].window_s = 10.0: the window of signal gpu_util:pod_mean:10s (10 s) is shorter "
        "than the scrape interval; allowed: >= 30 s (the scrape interval)"
    )


def test_zero_or_negative_window_is_rejected_at_load() -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(
            {"kind": "keda", "triggers": [{"metric": "queue_length", "threshold": 5, "window_s": -1}]},
            "k.yaml",
        )
    assert err.value.key == "triggers[0].window_s" and "greater than 0" in err.value.allowed


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("kind: knative\nmetric: rps\ntarget: 50\n", encoding="utf-8")
    policy = load_policy_file(path)
    assert isinstance(policy, KnativePolicy) and policy.target == pytest.approx(35.0)
    path.write_text("kind: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy_file(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_policy_file(tmp_path / "nope.yaml")


def test_load_policy_config_returns_the_config() -> None:
    cfg = load_policy_config({"kind": "static", "replicas": 2}, "x")
    assert cfg.kind == "static"


# -------------------------------------------------------------------------------------------- describe


def test_describe_kind_lists_nested_parameters_with_defaults_and_sources() -> None:
    params = {p.name: p for p in describe_kind("hpa")}
    assert params["max_replicas"].default == "required"
    assert params["tolerance"].default == "0.1"
    assert "--horizontal-pod-autoscaler-tolerance" in params["tolerance"].description
    assert "metrics[].target.average_value" in params
    assert "behavior.scale_down.policies[].period_s" in params
    assert params["behavior.scale_up.policies[].type"].type == "'Pods' | 'Percent'"
    knative = {p.name: p for p in describe_kind("knative")}
    assert knative["stable_window_s"].default == "60.0"
    assert "stable-window" in knative["stable_window_s"].description
    keda = {p.name: p for p in describe_kind("keda")}
    assert keda["polling_interval_s"].default == "30"
    assert "triggers[].activation_threshold" in keda
    assert "advanced.horizontal_pod_autoscaler_config.behavior.scale_up.select_policy" in keda


@pytest.mark.parametrize("kind", sorted(OUR_KINDS))
def test_every_field_of_our_kinds_is_documented(kind: str) -> None:
    undocumented = [p.name for p in describe_kind(kind) if not p.description and p.name != "kind"]
    assert not undocumented


def test_describe_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="unknown policy kind"):
        describe_kind("nope")
    with pytest.raises(ConfigError):
        config_class("nope")


# --------------------------------------------------------------------------------------------- presets


def test_presets_ship_and_load() -> None:
    assert set(preset_names()) >= OUR_PRESETS
    for name in OUR_PRESETS:
        policy = load_preset(name)
        assert policy.name == name
        assert preset_text(name).startswith(f"# {name}:")


def test_gpu_util_preset_is_seed_004() -> None:
    policy = load_preset("gpu-util")
    assert isinstance(policy, HpaPolicy)
    assert policy.signals == (SignalSpec(Metric.GPU_UTIL, 180.0),)
    assert (policy.config.min_replicas, policy.config.max_replicas) == (1, 4)
    assert policy.config.metrics[0].target.average_value == 40


def test_three_metric_preset_is_seed_001() -> None:
    cfg = load_preset_config("hpa-three-metric")
    policy = cfg.build()
    assert isinstance(policy, HpaPolicy)
    c = policy.config
    assert (c.min_replicas, c.max_replicas) == (2, 20)
    targets = {m.metric: m.target.average_value for m in c.metrics}
    assert targets == {Metric.QUEUE_LENGTH: 10, Metric.GPU_UTIL: 75, Metric.LATENCY_P99_MS: 50}
    assert c.behavior is not None
    assert c.behavior.scale_up.stabilization_window_s == 60
    up = c.behavior.scale_up.policies
    down = c.behavior.scale_down.policies
    assert up is not None and [(p.type, p.value, p.period_s) for p in up] == [("Pods", 4, 120)]
    assert down is not None and [(p.type, p.value, p.period_s) for p in down] == [("Pods", 1, 300)]
    assert c.behavior.scale_down.stabilization_window_s == 300


def test_cpu_hpa_preset_is_cpu_utilization_80() -> None:
    policy = load_preset("cpu-hpa")
    assert isinstance(policy, HpaPolicy)
    assert policy.config.metrics[0].type == "Resource"
    assert policy.config.metrics[0].target.average_utilization_percent == 80


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError) as err:
        load_preset("gpu-utilization")
    assert err.value.value == "gpu-utilization" and "gpu-util" in err.value.allowed


def test_a_policy_resolves_from_a_mapping_a_file_beside_the_config_or_a_preset(tmp_path: Path) -> None:
    config = tmp_path / "controller.yaml"
    (tmp_path / "mine.yaml").write_text("kind: static\nreplicas: 2\n", encoding="utf-8")
    inline = resolve_policy({"kind": "static", "replicas": 4}, key="policy", source=str(config))
    assert (inline.label, inline.prefix, inline.build().replicas) == ("policy", "policy", 4)
    beside = resolve_policy("mine.yaml", key="policy", source=str(config), base=tmp_path)
    assert (beside.label, beside.source) == ("mine", str(tmp_path / "mine.yaml"))
    assert beside.build().replicas == 2
    preset = resolve_policy("knative", key="policy", source=str(config))
    assert (preset.label, preset.source, preset.data["name"]) == ("knative", "preset knative", "knative")
    assert preset.build().name == load_preset("knative").name
    with pytest.raises(ConfigError) as err:
        resolve_policy("nope", key="policy", source=str(config), base=tmp_path)
    assert err.value.key == "policy" and "presets:" in str(err.value) and "knative" in str(err.value)
    with pytest.raises(ConfigError) as err:  # an inline mapping's errors sit under its key
        resolve_policy({"kind": "static"}, key="policy", source=str(config)).build()
    assert "policy.replicas" in str(err.value)


def test_a_new_kind_is_one_module_that_registers_its_config() -> None:
    """A kind registered from its own module joins loading, listing and the conformance check with no
    edit to the registry; a second class claiming the same kind is refused."""

    @register_kind
    class DoubleConfig(KindConfig):
        """Twice a fixed count (a kind defined outside gpuscale)."""

        kind: Literal["double-static"] = "double-static"
        replicas: int = 1

        def build(self) -> StaticPolicy:
            return StaticPolicy(2 * self.replicas, name="double-static")

    try:
        assert "double-static" in kind_names()
        policy = load_policy({"kind": "double-static", "replicas": 3}, "policy.yaml")
        assert isinstance(policy, StaticPolicy) and policy.replicas == 6
        check_policy(policy)

        class Impostor(KindConfig):
            kind: Literal["double-static"] = "double-static"

            def build(self) -> StaticPolicy:
                return StaticPolicy(1)

        with pytest.raises(TypeError, match="registered twice"):
            register_kind(Impostor)
    finally:
        unregister_kind("double-static")
    assert "double-static" not in kind_names()
