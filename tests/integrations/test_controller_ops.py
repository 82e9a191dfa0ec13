"""Operating ``gpuscale run``: backoff, its own metrics and probes over HTTP, and the in-cluster
manifests applied to a real kube-apiserver and run as their own ServiceAccount.

Clocks are ManualClocks: a backoff of minutes takes no time, and the probes' verdicts move only when
the test moves the clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.clock import ManualClock
from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.controller import (
    Controller,
    ObservabilityServer,
    SafetyConfig,
    TargetConfig,
    backoff_wait,
    build_controller,
    load_controller_config,
)
from gpuscale.controller.loop import NoSignals
from gpuscale.controller.target import Forbidden, KubernetesTarget, api_client
from gpuscale.policies import registry
from tests.controlplane import ControlPlane, _free_port, started_plane, wait_until

NS = "ops"
SA_NS = "ops-sa"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(Path(tmp_path_factory.mktemp("control-plane")), [NS, SA_NS]) as cp:
        yield cp


def static_controller(
    plane: ControlPlane, tmp_path: Path, name: str, wants: int, **kw: Any
) -> tuple[Controller, list[dict[str, Any]]]:
    api = api_client(plane.kubeconfig(tmp_path / "kubeconfig"), "test")
    records: list[dict[str, Any]] = []
    ctl = Controller(
        registry.load_policy({"kind": "static", "replicas": wants}, "test"),
        NoSignals(),
        KubernetesTarget(api, TargetConfig(name=name, namespace=NS), f"app={name}", timeout_s=5),
        SafetyConfig(min_replicas=0, max_replicas=20),
        ManualClock(10_000.0),
        interval_s=15.0,
        target_name=f"{NS}/Deployment/{name}",
        sink=records.append,
        **kw,
    )
    return ctl, records


def cut_off(ctl: Controller) -> Any:
    """Point the controller's target at a port nobody listens on; returns a function undoing it."""
    assert isinstance(ctl.target, KubernetesTarget)
    conf = ctl.target.api.configuration
    hook, host = conf.refresh_api_key_hook, conf.host
    conf.refresh_api_key_hook = None  # the kubeconfig loader's hook would restore the host
    conf.host = f"https://127.0.0.1:{_free_port()}"

    def restore() -> None:
        conf.host = host
        conf.refresh_api_key_hook = hook

    return restore


# ------------------------------------------------------------------------------------------------
# backoff
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "cap", "waits"),
    [
        (15.0, None, [15, 15, 30, 60, 120, 150, 150]),  # cap: 10 x 15 s
        (60.0, None, [60, 60, 120, 240, 300, 300, 300]),  # cap: 5 min
        (15.0, 100.0, [15, 15, 30, 60, 100, 100, 100]),
        (400.0, None, [400, 400, 400, 400, 400, 400, 400]),  # never below the interval
    ],
)
def test_backoff_doubles_per_failure_and_is_capped(
    interval: float, cap: float | None, waits: list[int]
) -> None:
    assert [backoff_wait(interval, k, cap) for k in range(7)] == waits


def test_failed_ticks_back_off_and_the_first_success_resets(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("backoff", NS, 1)
    ctl, records = static_controller(plane, tmp_path, "backoff", wants=2)
    restore = cut_off(ctl)

    def sink(record: dict[str, Any]) -> None:
        records.append(record)
        if len(records) == 5:
            restore()  # the API server is back after the fifth failed tick

    ctl.sink = sink
    outcomes = ctl.run(max_ticks=8)  # never raises
    assert [o.action for o in outcomes] == ["error"] * 5 + ["scaled", "unchanged", "unchanged"]
    times = [r["time"] - 10_000.0 for r in records]
    # waits 15, 30, 60, 120 after failures 1-4; 150 (10 x 15 s) after the fifth; back to 15 after success
    assert times == [0, 15, 45, 105, 225, 375, 390, 405]
    assert ctl.errors == {"temporary": 5}
    assert plane.deployment_replicas("backoff", NS) == 2
    assert ctl.observer is not None
    reg = ctl.observer.registry
    assert (
        reg.get_sample_value("gpuscale_controller_errors_total", {"kind": "temporary", "stage": "tick"}) == 5
    )
    assert reg.get_sample_value("gpuscale_controller_consecutive_failures") == 0
    assert reg.get_sample_value("gpuscale_controller_next_wait_seconds") == 15


# ------------------------------------------------------------------------------------------------
# /metrics, /healthz, /readyz
# ------------------------------------------------------------------------------------------------


def metric(text: str, name: str, labels: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return None


def test_metrics_and_probes_follow_the_ticks_over_http(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("observed", NS, 1)
    ctl, _ = static_controller(plane, tmp_path, "observed", wants=4)
    assert ctl.observer is not None and ctl.status is not None
    clock = ctl.clock
    assert isinstance(clock, ManualClock)
    server = ObservabilityServer(ctl.observer.registry, ctl.status, clock, host="127.0.0.1", port=0)
    port = server.start()
    base = f"http://127.0.0.1:{port}"
    target = f'{{target="{NS}/Deployment/observed"}}'
    try:
        with httpx.Client(base_url=base, timeout=5) as http:
            assert http.get("/healthz").status_code == 200  # alive: just started
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "no tick yet" in ready.text
            assert metric(http.get("/metrics").text, "gpuscale_controller_written_replicas", target) is None

            out = ctl.tick()
            assert (out.action, out.replicas) == ("scaled", 4)
            assert out.decision is not None
            assert http.get("/readyz").status_code == 200
            text = http.get("/metrics").text
            assert metric(text, "gpuscale_controller_written_replicas", target) == 4
            assert metric(text, "gpuscale_controller_desired_replicas", target) == 4
            assert metric(text, "gpuscale_controller_current_replicas", target) == 1
            reason = f'{{reason="{out.decision.reason.value}"}}'
            assert metric(text, "gpuscale_controller_decisions_total", reason) == 1
            assert metric(text, "gpuscale_controller_is_leader") == 1
            assert metric(text, "gpuscale_controller_last_success_timestamp_seconds") == 10_000.0
            assert metric(text, "gpuscale_controller_tick_duration_seconds_count") == 1

            clock.advance(15)
            assert ctl.tick().action == "unchanged"
            text = http.get("/metrics").text
            assert metric(text, "gpuscale_controller_current_replicas", target) == 4
            assert metric(text, "gpuscale_controller_decisions_total", reason) == 2
            assert metric(text, "gpuscale_controller_last_success_timestamp_seconds") == 10_015.0

            # the API server goes away: alive but not ready, errors counted
            restore = cut_off(ctl)
            clock.advance(15)
            assert ctl.tick().action == "error"
            assert http.get("/healthz").status_code == 200
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "1 failed tick" in ready.text
            errs = '{kind="temporary",stage="tick"}'
            assert metric(http.get("/metrics").text, "gpuscale_controller_errors_total", errs) == 1
            restore()

            # the loop stops ticking: after the planned wait (15 s) plus two intervals it is stuck
            clock.advance(45)
            assert http.get("/healthz").status_code == 200
            clock.advance(1)
            health = http.get("/healthz")
            assert health.status_code == 503 and "stuck" in health.text
            assert http.get("/readyz").status_code == 503

            assert ctl.tick().action == "unchanged"  # ticking again: alive and ready
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
            assert http.get("/nothing").status_code == 404
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------
# the rendered manifests, applied and run as their ServiceAccount
# ------------------------------------------------------------------------------------------------

PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
}


def test_rendered_manifests_run_the_controller_as_its_service_account(
    plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane.create_deployment("served", SA_NS, 1)
    (tmp_path / "policy.yaml").write_text("kind: static\nreplicas: 3\n", encoding="utf-8")
    cfg = {
        "kubeconfig": "kubeconfig-on-my-laptop",
        "decision_log": "decisions.jsonl",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": SA_NS, "name": "served"},
        "pod_selector": "app=served",
        "policy": "policy.yaml",
        "safety": {"min_replicas": 1, "max_replicas": 8},
        "leader_election": {"enabled": True, "identity": "fixed-id"},
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = CliRunner().invoke(
        app, ["manifests", "controller", "--config", str(path), "--image", "reg/gpuscale:t"]
    )
    assert result.exit_code == 0, result.output
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert [o["kind"] for o in objects] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
    ]
    by_kind = {o["kind"]: o for o in objects}
    deploy = by_kind["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deploy["spec"]["replicas"] == 2  # leader election on
    assert container["image"] == "reg/gpuscale:t"
    assert container["args"] == ["run", "--config", "/etc/gpuscale/controller.yaml"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    pod_cfg = yaml.safe_load(by_kind["ConfigMap"]["data"]["controller.yaml"])
    assert pod_cfg["policy"] == {"kind": "static", "replicas": 3}  # inlined: the pod has no policy.yaml
    assert "kubeconfig" not in pod_cfg and "decision_log" not in pod_cfg
    assert "identity" not in pod_cfg["leader_election"]  # each pod is $POD_NAME
    assert pod_cfg["metrics"] == {"bind_address": "0.0.0.0", "port": container["ports"][0]["containerPort"]}

    for obj in objects:  # validated by the API server first, then created
        url = PATHS[obj["kind"]].format(ns=obj["metadata"]["namespace"])
        dry = plane.request("POST", url + "?dryRun=All", obj)
        assert dry.status == 201, (obj["kind"], dry.body)
        made = plane.request("POST", url, obj)
        assert made.status == 201, (obj["kind"], made.body)

    sa = by_kind["ServiceAccount"]["metadata"]["name"]
    token = plane.request(
        "POST",
        f"/api/v1/namespaces/{SA_NS}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert token.status == 201, token.body
    kubeconfig = plane.kubeconfig(tmp_path / "sa-kubeconfig", token.body["status"]["token"])

    # the pod's config, with only the way in to this API server added
    pod_cfg["kubeconfig"] = str(kubeconfig)
    pod_path = tmp_path / "pod" / "controller.yaml"
    pod_path.parent.mkdir()
    pod_path.write_text(yaml.safe_dump(pod_cfg), encoding="utf-8")
    monkeypatch.setenv("POD_NAME", "gpuscale-served-7d9f-abcde")
    ctl = build_controller(load_controller_config(pod_path), pod_path, ManualClock(0.0))

    def bound() -> bool:  # the Role and its binding reach the authorizer through a watch
        try:
            ctl.target.counts()
        except Forbidden:
            return False
        return True

    wait_until(bound, "the rendered Role to be in force", 20.0)
    outcomes = ctl.run(max_ticks=1, release=False)  # elects, reads, scales: the Role suffices
    assert [(o.action, o.replicas) for o in outcomes] == [("scaled", 3)], outcomes[0].error
    assert plane.deployment_replicas("served", SA_NS) == 3
    assert ctl.elector is not None and ctl.elector.last_error is None
    lease = plane.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{SA_NS}/leases/gpuscale-served")
    assert lease.body["spec"]["holderIdentity"] == "gpuscale-served-7d9f-abcde"

    role = by_kind["Role"]
    role_url = PATHS["Role"].format(ns=SA_NS) + f"/{role['metadata']['name']}"

    def without(resource: str, verb: str) -> None:
        rules = [r for r in role["rules"] if not (resource in r["resources"] and verb in r["verbs"])]
        assert len(rules) == len(role["rules"]) - 1
        put = plane.request("PUT", role_url, {**role, "rules": rules})
        assert put.status == 200, put.body

    # without the lease rule the election fails, naming the verb and the resource
    without("leases", "get")

    def election_denied() -> Any:
        assert ctl.elector is not None
        ctl.elect()
        return ctl.elector.last_error if isinstance(ctl.elector.last_error, Forbidden) else None

    # RBAC changes reach the API server's authorizer through a watch: poll, within a deadline
    denied = wait_until(election_denied, "the leases rule to be gone", 20.0)
    # The rule removed grants get and update on the Lease: the authorizer's cache may drop it between
    # the round's read and its write, so either verb can be the one refused first.
    assert denied.resource == "leases" and denied.verb in ("get", "update")
    assert f"may not {denied.verb} leases in namespace ops-sa" in str(denied)

    # the lease rule back, the pods rule gone: the tick fails, naming list pods
    without("pods", "list")

    def tick_denied() -> Any:
        ctl.elect()
        out = ctl.tick()
        return out if out.action == "error" else None

    out = wait_until(tick_denied, "the pods rule to be gone", 20.0)
    assert out.error_kind == "permanent"
    assert out.error is not None and "may not list pods in namespace ops-sa" in out.error


def test_manifests_with_and_without_the_controller_argument(tmp_path: Path) -> None:
    runner = CliRunner()
    policy = runner.invoke(
        app, ["manifests", "--policy", "queue-depth", "--target", "Deployment/t", "--format", "hpa"]
    )
    assert policy.exit_code == 0, policy.output
    assert [d["kind"] for d in yaml.safe_load_all(policy.stdout) if d] == ["HorizontalPodAutoscaler"]

    cfg = {
        "target": {"namespace": "serving", "name": "triton"},
        "pod_selector": "app=triton",
        "policy": "queue-depth",  # a preset: inlined
        "safety": {"max_replicas": 4},
        "metrics": {"port": 9100},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "out.yaml"
    ctl = runner.invoke(
        app, ["manifests", "controller", "-c", str(path), "--namespace", "ops", "--out", str(out)]
    )
    assert ctl.exit_code == 0, ctl.output
    objects = [d for d in yaml.safe_load_all(out.read_text()) if d]
    kinds = [(o["kind"], o["metadata"]["namespace"]) for o in objects]
    # the controller runs in ops; its Role lives where the target is
    assert kinds == [
        ("ServiceAccount", "ops"),
        ("Role", "serving"),
        ("RoleBinding", "serving"),
        ("ConfigMap", "ops"),
        ("Deployment", "ops"),
    ]
    role = objects[1]
    assert all(r["resources"] != ["leases"] for r in role["rules"])  # no election, no lease rights
    assert objects[2]["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpuscale-triton", "namespace": "ops"}
    ]
    deploy = objects[4]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 9100
    pod_cfg = yaml.safe_load(objects[3]["data"]["controller.yaml"])
    assert pod_cfg["policy"]["kind"] == registry.load_preset_config("queue-depth").kind

    for args, needle in [
        (["manifests", "controller"], "--config"),
        (["manifests", "bogus", "-c", str(path)], "controller"),
        (["manifests", "--target", "Deployment/t"], "--policy"),
    ]:
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2, bad.output
        assert needle in bad.output


# ------------------------------------------------------------------------------------------------
# bad configuration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "needle"),
    [
        ({"leader_election": {"enabled": True, "renew_deadline_s": 20}}, "leader_election", "greater than"),
        ({"leader_election": {"retry_period_s": 9}}, "leader_election", "1.2 x retry_period_s"),
        ({"leader_election": {"lease_name": "Not_A_Name"}}, "leader_election.lease_name", "pattern"),
        ({"metrics": {"port": 70000}}, "metrics.port", "65535"),
        ({"backoff_max_s": 0}, "backoff_max_s", "greater than 0"),
        ({"leader_election": {"lease_seconds": 5}}, "leader_election.lease_seconds", "unknown key"),
    ],
)
def test_bad_config_names_the_key_and_run_exits_2(
    tmp_path: Path, extra: dict[str, Any], key: str, needle: str
) -> None:
    cfg = {
        "target": {"name": "x"},
        "pod_selector": "app=x",
        "policy": {"kind": "static", "replicas": 1},
        "safety": {"max_replicas": 2},
        **extra,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_controller_config(path)
    assert info.value.key is not None and info.value.key.startswith(key)
    assert needle in str(info.value)
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--once"])
    assert result.exit_code == 2
    assert key in result.output and needle in result.output


def test_cli_once_with_leader_election_elects_acts_and_releases(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("cli-once", NS, 1)
    cfg = {
        "kubeconfig": str(plane.kubeconfig(tmp_path / "kubeconfig")),
        "target": {"namespace": NS, "name": "cli-once"},
        "pod_selector": "app=cli-once",
        "policy": {"kind": "static", "replicas": 2},
        "safety": {"max_replicas": 4},
        "leader_election": {"enabled": True, "identity": "cli"},
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--once"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["action"], record["written_replicas"]) == ("scaled", 2)
    assert plane.deployment_replicas("cli-once", NS) == 2
    lease = plane.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/gpuscale-cli-once")
    assert lease.status == 200 and not lease.body["spec"].get("holderIdentity")  # released on exit
