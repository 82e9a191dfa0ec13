"""The warm pool's plan (which live pods are active, which standby) and the RBAC that keeping a warm
pool or a warm-node buffer adds to ``gpuscale manifests controller``; no cluster needed.

The plan mirrors the simulator's reconcile (``SimScaleTarget.reconcile``) on pods that already
exist: timelines below read like the simulator's ("2 active + 2 Ready standby, the policy asks 3:
one Ready standby pod is promoted"), and a property test checks what every plan keeps whatever the
pods: sides never overlap nor exceed their targets, a Pending standby pod is never promoted, and once
its labels are written a plan asks for no further change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuscale.controller.config import load_controller_config
from gpuscale.controller.manifests import render_controller
from gpuscale.controller.target import ACTIVE, STANDBY, PodView, plan_roles


def pod(name: str, state: str, side: str | None, created: float, ready: float | None = None) -> PodView:
    return PodView(name, f"uid-{name}", state, side, created, ready if state == "ready" else None)


def names(pods: tuple[PodView, ...]) -> list[str]:
    return sorted(p.name for p in pods)


def relabels(plan: Any) -> dict[str, str]:
    return {p.name: side for p, side in plan.relabel}


def test_a_scale_up_promotes_ready_standby_pods_first_the_longest_loaded_first() -> None:
    pods = [
        pod("a1", "ready", ACTIVE, 0, 10),
        pod("a2", "ready", ACTIVE, 1, 11),
        pod("s1", "ready", STANDBY, 2, 30),
        pod("s2", "ready", STANDBY, 3, 20),  # loaded before s1
    ]
    plan = plan_roles(pods, active=3, standby=2)
    assert names(plan.active) == ["a1", "a2", "s2"]
    assert relabels(plan) == {"s2": ACTIVE}  # a label flip: the pod stays, Ready
    assert names(plan.standby) == ["s1"]  # the ReplicaSet makes the refill; the next plan pools it

    refill = [*pods[:2], pod("s1", "ready", STANDBY, 2, 30), pod("s2", "ready", ACTIVE, 3, 20)]
    refill.append(pod("n1", "starting", None, 40))
    plan = plan_roles(refill, active=3, standby=2)
    assert names(plan.standby) == ["n1", "s1"] and relabels(plan) == {"n1": STANDBY}


def test_then_starting_standby_pods_then_new_pods_never_a_pending_standby_pod() -> None:
    pods = [
        pod("a1", "ready", ACTIVE, 0, 10),
        pod("s1", "starting", STANDBY, 5),
        pod("s2", "pending", STANDBY, 6),
        pod("n1", "pending", None, 7),
        pod("n2", "pending", None, 8),
    ]
    plan = plan_roles(pods, active=3, standby=2)
    # as the simulator: the Starting standby pod is promoted, the Pending one stays in the pool and a
    # new pod (the ReplicaSet's) joins the active side
    assert names(plan.active) == ["a1", "n1", "s1"]
    assert names(plan.standby) == ["n2", "s2"]
    assert relabels(plan) == {"s1": ACTIVE, "n1": ACTIVE, "n2": STANDBY}


def test_a_scale_down_that_deleted_a_standby_pod_demotes_an_active_one() -> None:
    # 3 active + 2 standby, the policy asked 2 active (spec 5 -> 4) and the ReplicaSet deleted a Ready
    # standby pod: the active pod it would have taken (the most recently Ready) goes to the pool
    pods = [
        pod("a1", "ready", ACTIVE, 0, 10),
        pod("a2", "ready", ACTIVE, 1, 12),
        pod("a3", "ready", ACTIVE, 2, 11),
        pod("s1", "ready", STANDBY, 3, 20),
    ]
    plan = plan_roles(pods, active=2, standby=2)
    assert names(plan.active) == ["a1", "a3"]
    assert names(plan.standby) == ["a2", "s1"] and relabels(plan) == {"a2": STANDBY}
    assert plan.surplus == ()


def test_a_scale_down_the_replicaset_has_not_carried_out_keeps_the_surplus_active() -> None:
    pods = [pod("a1", "ready", ACTIVE, 0, 10), pod("a2", "ready", ACTIVE, 1, 12)]
    pods += [pod("s1", "ready", STANDBY, 3, 20), pod("s2", "ready", STANDBY, 4, 21)]
    plan = plan_roles(pods, active=1, standby=2)
    assert names(plan.surplus) == ["a2"] and plan.relabel == ()  # it still serves until deleted


def test_a_first_plan_keeps_serving_pods_active_and_pools_the_new_ones() -> None:
    # a Deployment that ran without a pool: no pod has the label yet
    pods = [pod("old", "ready", None, 0, 10), pod("n1", "starting", None, 20), pod("n2", "pending", None, 21)]
    plan = plan_roles(pods, active=1, standby=2)
    assert names(plan.active) == ["old"] and names(plan.standby) == ["n1", "n2"]
    assert relabels(plan) == {"old": ACTIVE, "n1": STANDBY, "n2": STANDBY}


def test_draining_and_finished_pods_are_left_alone() -> None:
    finished = PodView("f", "uid-f", None, None, 2)  # Succeeded or Failed: pod_state None
    pods = [pod("a1", "ready", ACTIVE, 0, 10), pod("d", "draining", STANDBY, 1), finished]
    plan = plan_roles(pods, active=1, standby=1)
    assert names(plan.active) == ["a1"] and plan.standby == () and plan.relabel == ()


STATES = st.sampled_from(["ready", "starting", "pending", "draining"])
SIDES = st.sampled_from([ACTIVE, STANDBY, None])


@st.composite
def pod_sets(draw: st.DrawFn) -> list[PodView]:
    n = draw(st.integers(0, 12))
    out = []
    for i in range(n):
        state = draw(STATES)
        created = float(draw(st.integers(0, 5)))
        ready = created + draw(st.integers(0, 5)) if state == "ready" else None
        out.append(PodView(f"p{i}", f"u{i}", state, draw(SIDES), created, ready))
    return out


@settings(max_examples=300, deadline=None)
@given(pods=pod_sets(), active=st.integers(0, 8), standby=st.integers(0, 4))
def test_every_plan_is_consistent_and_a_fixed_point_once_written(
    pods: list[PodView], active: int, standby: int
) -> None:
    plan = plan_roles(pods, active, standby)
    chosen = [p.uid for p in (*plan.active, *plan.standby, *plan.surplus)]
    assert len(chosen) == len(set(chosen))  # no pod on two sides
    assert len(plan.active) <= active and len(plan.standby) <= standby
    assert all(p.state in ("ready", "starting", "pending") for p in (*plan.active, *plan.standby))
    promoted = [p for p, side in plan.relabel if side == ACTIVE and p.side == STANDBY]
    assert all(p.state != "pending" for p in promoted)
    assert all(p.side == ACTIVE for p in plan.surplus)
    # a side left short used everything it could take
    unplaced = [p for p in pods if p.side is None and p.state != "draining" and p.state is not None]
    unplaced = [p for p in unplaced if p.uid not in chosen]
    if len(plan.active) < active:
        assert not unplaced
        assert not [p for p in plan.standby if p.state in ("ready", "starting")]
    if len(plan.standby) < standby:
        assert not unplaced and plan.surplus == ()

    written = {p.uid: side for p, side in plan.relabel}
    after = [
        PodView(p.name, p.uid, p.state, written.get(p.uid, p.side), p.created_s, p.ready_since_s)
        for p in pods
    ]
    again = plan_roles(after, active, standby)
    assert again.relabel == ()
    assert {p.uid for p in again.active} == {p.uid for p in plan.active}
    assert {p.uid for p in again.standby} == {p.uid for p in plan.standby}


# --------------------------------------------------------------------------------------------------
# RBAC: grown exactly as needed
# --------------------------------------------------------------------------------------------------


def role_rules(tmp_path: Path, policy: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    cfg = {
        "target": {"namespace": "serving", "name": "triton"},
        "pod_selector": "app=triton",
        "policy": policy,
        "safety": {"max_replicas": 8},
        **extra,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    objects = render_controller(load_controller_config(path), path)
    (role,) = [o for o in objects if o["kind"] == "Role"]
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    pod_cfg = yaml.safe_load(configmap["data"]["controller.yaml"])
    assert ("warm_pool" in pod_cfg) == any(r["verbs"] == ["patch"] for r in role["rules"])
    rules: list[dict[str, Any]] = role["rules"]
    return rules


BASE = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments/scale"],
        "resourceNames": ["triton"],
        "verbs": ["get", "patch", "update"],
    },
]
POOL = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "resourceNames": ["triton"],
        "verbs": ["get", "patch"],
    },
]


def headroom_rule(name: str) -> dict[str, Any]:
    return {
        "apiGroups": ["apps"],
        "resources": ["deployments/scale"],
        "resourceNames": [name],
        "verbs": ["get", "patch"],
    }


@pytest.mark.parametrize(
    ("policy", "extra", "expected"),
    [
        ({"kind": "static", "replicas": 2}, {}, BASE),
        ("queue-depth", {}, BASE),
        ("warm-pool", {}, BASE + POOL),
        ({"kind": "static", "replicas": 2, "standby_replicas": 1}, {}, BASE + POOL),
        (
            {"kind": "warm-pool", "standby_replicas": 2, "headroom_replicas": 1, "target_per_replica": 10,
             "max_replicas": 8},
            {},
            [*BASE, *POOL, headroom_rule("triton-gpu-headroom")],
        ),
        (
            {"kind": "predictive", "headroom_replicas": 2, "max_replicas": 8, "capacity_rps_per_replica": 50},
            {"headroom": {"deployment": "spare-gpus"}},
            [*BASE, headroom_rule("spare-gpus")],
        ),
    ],
)  # fmt: skip
def test_the_role_grows_only_by_what_the_policy_needs(
    tmp_path: Path, policy: Any, extra: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    assert role_rules(tmp_path, policy, **extra) == expected
