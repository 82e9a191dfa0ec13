"""How :class:`~gpuscale.controller.target.KubernetesTarget` counts a workload's pods, on the client's
own pod objects (the same models the API answers are parsed into)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client as k8s

from gpuscale.controller.target import pod_state

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def pod(
    *,
    node: str | None = None,
    phase: str = "Pending",
    conditions: dict[str, str] | None = None,
    deleting: bool = False,
) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="llm-0", deletion_timestamp=T0 if deleting else None),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="server")], node_name=node),
        status=k8s.V1PodStatus(
            phase=phase,
            conditions=[k8s.V1PodCondition(type=t, status=s) for t, s in (conditions or {}).items()] or None,
        ),
    )


def test_a_pod_bound_without_the_scheduler_is_starting_not_pending() -> None:
    # created with spec.nodeName (a DaemonSet's pod, a static pod, a custom scheduler's binding):
    # no PodScheduled condition, yet it waits for its containers on a node, not for a GPU
    assert pod_state(pod(node="gpu-0")) == "starting"
    assert pod_state(pod(node="gpu-0", conditions={"Initialized": "True", "Ready": "False"})) == "starting"


@pytest.mark.parametrize(
    ("kwargs", "state"),
    [
        ({}, "pending"),  # not looked at by the scheduler yet
        ({"conditions": {"PodScheduled": "False"}}, "pending"),  # Unschedulable: no free GPU
        ({"node": "gpu-0", "conditions": {"PodScheduled": "True"}}, "starting"),
        (
            {"node": "gpu-0", "phase": "Running", "conditions": {"PodScheduled": "True", "Ready": "True"}},
            "ready",
        ),
        (
            {"node": "gpu-0", "phase": "Running", "conditions": {"Ready": "True"}, "deleting": True},
            "draining",
        ),
        ({"node": "gpu-0", "phase": "Succeeded"}, None),
        ({"node": "gpu-0", "phase": "Failed", "conditions": {"Ready": "False"}}, None),
    ],
)
def test_pod_states(kwargs: dict[str, object], state: str | None) -> None:
    assert pod_state(pod(**kwargs)) == state  # type: ignore[arg-type]
