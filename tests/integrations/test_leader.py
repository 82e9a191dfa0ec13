"""Leader election against a real kube-apiserver: two controllers, one real Deployment, one real Lease.

Each controller has its own ManualClock, started at very different times of day, so nothing can
work by comparing the Lease's timestamps with a candidate's clock: expiry is judged only on the
candidate's own clock, from when it saw the Lease change (client-go's ``observedTime``). Retry
period 2 s, renew deadline 10 s, lease 15 s (client-go's defaults); one ``elect()`` is one round.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuscale._core.clock import ManualClock
from gpuscale.controller import Controller, SafetyConfig, TargetConfig
from gpuscale.controller.leader import LeaderElector, micro_time
from gpuscale.controller.loop import NoSignals
from gpuscale.controller.target import ApiUnreachable, KubernetesTarget, api_client
from gpuscale.policies import registry
from tests.controlplane import ControlPlane, _free_port, started_plane

NS = "ha"
RETRY, DEADLINE, LEASE = 2.0, 10.0, 15.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(Path(tmp_path_factory.mktemp("control-plane")), [NS]) as cp:
        yield cp


def lease(plane: ControlPlane, name: str) -> dict[str, Any]:
    got = plane.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{name}")
    assert got.status == 200, got.body
    spec: dict[str, Any] = got.body["spec"]
    return spec


def candidate(
    plane: ControlPlane, tmp_path: Path, deployment: str, identity: str, start: float, wants: int
) -> Controller:
    """A controller holding ``wants`` replicas (a static policy), elected on lease ``deployment``.

    The elector has an API client of its own, so a test can cut only the elector off.
    """
    kc = plane.kubeconfig(tmp_path / f"kubeconfig-{identity}")
    clock = ManualClock(start)
    target = KubernetesTarget(
        api_client(kc, "test"), TargetConfig(name=deployment, namespace=NS), f"app={deployment}", timeout_s=5
    )
    elector = LeaderElector(
        api_client(kc, "test"),
        namespace=NS,
        name=deployment,
        identity=identity,
        clock=clock,
        lease_duration_s=LEASE,
        renew_deadline_s=DEADLINE,
        retry_period_s=RETRY,
        timeout_s=5,
    )
    return Controller(
        registry.load_policy({"kind": "static", "replicas": wants}, "test"),
        NoSignals(),
        target,
        SafetyConfig(min_replicas=0, max_replicas=20),
        clock,
        interval_s=15.0,
        target_name=deployment,
        elector=elector,
    )


def clock_of(ctl: Controller) -> ManualClock:
    assert isinstance(ctl.clock, ManualClock)
    return ctl.clock


def elector_of(ctl: Controller) -> LeaderElector:
    assert ctl.elector is not None
    return ctl.elector


MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_only_the_leader_writes_and_a_crashed_leader_is_replaced_after_the_lease_duration(
    plane: ControlPlane, tmp_path: Path
) -> None:
    plane.create_deployment("crash", NS, 1)
    a = candidate(plane, tmp_path, "crash", "a", start=1_000.0, wants=3)
    b = candidate(plane, tmp_path, "crash", "b", start=900_000.0, wants=5)  # a clock ~10 days ahead

    assert a.elect() is True  # no Lease yet: a creates it
    assert b.elect() is False
    spec = lease(plane, "crash")
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"] == micro_time(1_000.0)
    assert MICRO.match(spec["renewTime"])

    out_a, out_b = a.tick(), b.tick()
    assert (out_a.action, out_a.replicas) == ("scaled", 3)
    assert out_b.action == "standby" and out_b.counts is None  # the standby reads nothing
    assert out_b.record("crash") == {"time": 900_000.0, "target": "crash", "action": "standby"}
    assert plane.deployment_replicas("crash", NS) == 3

    # a renews every retry period; b sees the record change each time and keeps waiting,
    # although by b's clock a's renewTime is ten days old
    for _ in range(10):
        clock_of(a).advance(RETRY)
        clock_of(b).advance(RETRY)
        assert a.elect() is True
        assert b.elect() is False
    assert lease(plane, "crash")["renewTime"] == micro_time(1_020.0)
    assert lease(plane, "crash")["acquireTime"] == micro_time(1_000.0)  # a renewal keeps it
    assert b.tick().action == "standby" and plane.deployment_replicas("crash", NS) == 3

    # a crashes (no release). b saw the last change at its last round: it waits 15 s from there
    clock_of(b).advance(LEASE - 0.25)
    assert b.elect() is False
    assert b.tick().action == "standby"
    clock_of(b).advance(0.25)
    assert b.elect() is True
    spec = lease(plane, "crash")
    took = clock_of(b).now()
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert spec["acquireTime"] == spec["renewTime"] == micro_time(took)
    out_b = b.tick()
    assert (out_b.action, out_b.replicas) == ("scaled", 5)
    assert plane.deployment_replicas("crash", NS) == 5
    assert elector_of(b).transitions_seen == 1


def test_a_released_lease_is_taken_at_the_next_retry(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("graceful", NS, 1)
    a = candidate(plane, tmp_path, "graceful", "a", start=50_000.0, wants=2)
    b = candidate(plane, tmp_path, "graceful", "b", start=7.0, wants=4)

    outcomes = a.run(max_ticks=1)  # elects, acts, and releases on the way out
    assert [(o.action, o.replicas) for o in outcomes] == [("scaled", 2)]
    assert plane.deployment_replicas("graceful", NS) == 2
    spec = lease(plane, "graceful")
    assert not spec.get("holderIdentity") and spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    assert not a.acting

    clock_of(b).advance(RETRY)  # b's next round, long before any lease duration
    assert b.elect() is True
    spec = lease(plane, "graceful")
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert b.tick().replicas == 4 and plane.deployment_replicas("graceful", NS) == 4

    # a is back: it sees b's record and stands by for b's full lease
    assert a.elect() is False
    assert a.tick().action == "standby"
    b.run(max_ticks=1)  # ticks, then releases
    clock_of(a).advance(RETRY)
    assert a.elect() is True
    assert lease(plane, "graceful")["leaseTransitions"] == 2


def test_a_stale_leader_cannot_release_a_lease_someone_else_took(plane: ControlPlane, tmp_path: Path) -> None:
    plane.create_deployment("stale", NS, 1)
    a = candidate(plane, tmp_path, "stale", "a", start=0.0, wants=2)
    b = candidate(plane, tmp_path, "stale", "b", start=0.0, wants=3)
    assert a.elect() and not b.elect()
    clock_of(b).advance(LEASE)  # a froze (a long GC pause, a partition); b takes over
    assert b.elect() is True
    # a wakes up and releases what it believes is its lease: the stale resourceVersion is refused
    assert elector_of(a).release() is False
    assert lease(plane, "stale")["holderIdentity"] == "b"
    assert a.elect() is False  # and on its next round a sees b's record and stands by


def test_a_leader_that_cannot_renew_steps_down_before_a_standby_may_take_over(
    plane: ControlPlane, tmp_path: Path
) -> None:
    plane.create_deployment("partition", NS, 1)
    a = candidate(plane, tmp_path, "partition", "a", start=100.0, wants=2)
    b = candidate(plane, tmp_path, "partition", "b", start=333_333.0, wants=6)
    assert a.elect() and not b.elect()
    assert a.tick().action == "scaled"

    # a's elector loses the API server: its own client now points at a port nobody listens on (the
    # kubeconfig loader's hook would restore the server before each request, so it goes first)
    conf = elector_of(a).api.configuration
    conf.refresh_api_key_hook = None
    conf.host = f"https://127.0.0.1:{_free_port()}"
    a_stopped = b_took = None
    for step in range(1, 12):  # both clocks advance one retry period per round
        t = step * RETRY
        clock_of(a).advance(RETRY)
        clock_of(b).advance(RETRY)
        if a.elect() is False and a_stopped is None:
            a_stopped = t
        if b.elect() is True and b_took is None:
            b_took = t
        if a_stopped is None:
            assert a.tick().action == "unchanged"  # still leader: acts (the target is reachable)
        else:
            assert a.tick().action == "standby"
    assert a_stopped == DEADLINE  # renewed at 0, could not renew by 10 s: stopped
    assert b_took == 16.0  # b saw the last change at 0; 15 s later, at its next round
    assert a_stopped < b_took
    assert isinstance(elector_of(a).last_error, ApiUnreachable)
    assert a.errors["election_temporary"] == 11
    assert plane.deployment_replicas("partition", NS) == 2
    assert b.tick().replicas == 6 and plane.deployment_replicas("partition", NS) == 6
    assert lease(plane, "partition")["leaseTransitions"] == 1
