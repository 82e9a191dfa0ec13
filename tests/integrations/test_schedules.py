"""Schedule windows live and in Kubernetes' own form.

* ``gpuscale run``: the :class:`~gpuscale.controller.Controller` against a real kube-apiserver, its
  ManualClock at epoch instants inside and outside the windows (across both daylight-saving changes
  in Europe/Amsterdam, and an overnight window), writes the scheduled minimum inside and the
  policy's own count outside.
* ``gpuscale manifests --format keda``: each window's minimum becomes a KEDA ``cron`` trigger. An
  emulation of KEDA's cron scaler (active while the next end comes no later than the next start)
  agrees with :func:`~gpuscale.policies.schedule.is_open` at every quarter hour of two weeks; the
  ScaledObject validates against KEDA's CRD schema and the API server accepts it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.clock import ManualClock
from gpuscale.cli import app
from gpuscale.config.safety import ScheduleWindow
from gpuscale.controller import Controller, SafetyConfig, TargetConfig
from gpuscale.controller.target import KubernetesTarget, api_client
from gpuscale.integrations import manifests as M
from gpuscale.policies import registry
from gpuscale.policies.schedule import is_open
from tests.controlplane import TOKEN, ControlPlane, started_plane
from tests.integrations.conftest import KEDA_CRD, validate_keda

from .scripted import ScriptedSource, queue_hpa

NS = "default"
TARGET = M.Target("Deployment", "llm", NS)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
BUSINESS = {
    "days": WEEKDAYS,
    "start": "08:00",
    "end": "20:00",
    "timezone": "Europe/Amsterdam",
    "min_replicas": 1,
}
"""Seed 002: one warm replica in business hours ..."""
FRIDAY_NIGHT = {
    "days": ["fri"],
    "start": "22:00",
    "end": "06:00",
    "timezone": "Europe/Amsterdam",
    "min_replicas": 2,
}
"""... and a batch run overnight from Friday to Saturday that wants two."""


def at(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(Path(tmp_path_factory.mktemp("control-plane"))) as cp:
        crd = yaml.safe_load(KEDA_CRD.read_text(encoding="utf-8"))
        created = cp.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        assert created.status == 201, created.body
        for _ in range(120):  # the CRD serves once Established (bounded wait)
            got = cp.request(
                "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/scaledobjects.keda.sh"
            )
            conditions = (got.body.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            time.sleep(0.25)
        else:
            raise AssertionError("KEDA's CRD never became Established")
        yield cp


# ---------------------------------------------------------------------------------------------------
# gpuscale run
# ---------------------------------------------------------------------------------------------------

# (instant, what the controller writes): a scale-to-zero policy (static 0) under the two windows.
LIVE: list[tuple[str, int]] = [
    ("2026-03-23T06:30:00Z", 0),  # Monday 07:30 CET: before business hours
    ("2026-03-23T07:00:00Z", 1),  # 08:00 CET: open
    ("2026-03-23T18:59:00Z", 1),  # 19:59 CET
    ("2026-03-23T19:00:00Z", 0),  # 20:00 CET: closed
    ("2026-03-27T20:59:00Z", 0),  # Friday 21:59 CET
    ("2026-03-27T21:00:00Z", 2),  # Friday 22:00 CET: the overnight window opens
    ("2026-03-28T04:59:00Z", 2),  # Saturday 05:59 CET: still open
    ("2026-03-28T05:00:00Z", 0),  # Saturday 06:00 CET: closed
    ("2026-03-28T12:00:00Z", 0),  # Saturday noon: no window
    # Sunday 2026-03-29 02:00 CET -> 03:00 CEST: from here 08:00 local is 06:00Z.
    ("2026-03-30T05:59:00Z", 0),  # Monday 07:59 CEST
    ("2026-03-30T06:30:00Z", 1),  # 08:30 CEST (07:30 local a week earlier: closed above)
    ("2026-03-30T17:59:00Z", 1),  # 19:59 CEST
    ("2026-03-30T18:00:00Z", 0),  # 20:00 CEST
    ("2026-04-03T20:00:00Z", 2),  # Friday 22:00 CEST: the overnight window in summer time
    ("2026-04-04T04:00:00Z", 0),  # Saturday 06:00 CEST: closed
    # Sunday 2026-10-25 03:00 CEST -> 02:00 CET: 08:00 local is 07:00Z again.
    ("2026-10-26T06:30:00Z", 0),  # Monday 07:30 CET
    ("2026-10-26T07:30:00Z", 1),  # 08:30 CET
]


def test_the_controller_writes_the_scheduled_minimum_inside_the_windows_only(
    plane: ControlPlane, tmp_path: Path
) -> None:
    name = "scheduled"
    plane.create_deployment(name, NS, 0, gpus=1)
    api = api_client(plane.kubeconfig(tmp_path / "kubeconfig", TOKEN), "test")
    target = KubernetesTarget(api, TargetConfig(name=name, namespace=NS), f"app={name}", timeout_s=5)
    safety = SafetyConfig.model_validate(
        {"min_replicas": 0, "max_replicas": 8, "schedules": [BUSINESS, FRIDAY_NIGHT]}
    )
    clock = ManualClock(at(LIVE[0][0]))
    records: list[dict[str, Any]] = []
    ctl = Controller(
        registry.load_policy({"kind": "static", "replicas": 0}, "test"),
        ScriptedSource([1.0]),
        target,
        safety,
        clock,
        target_name=name,
        sink=records.append,
    )
    for instant, want in LIVE:
        clock.advance(at(instant) - clock.now())
        outcome = ctl.tick()
        assert outcome.error is None, (instant, outcome.error)
        assert outcome.replicas == want, instant
        assert plane.deployment(name, NS)["spec"]["replicas"] == want, instant
        assert outcome.decision is not None
        assert (outcome.decision.reason.value == "Scheduled") is (want > 0), instant
    # The decision log says why: written only on a change, with the reason.
    written = [(r["time"], r["written_replicas"]) for r in records if r["action"] == "scaled"]
    assert written == [(at(t), n) for (t, n), (_, before) in zip(LIVE[1:], LIVE, strict=False) if n != before]
    first = next(r for r in records if r["action"] == "scaled")
    assert (first["decision"]["reason"], first["safety"]) == ("Scheduled", ["Scheduled"])
    assert first["decision"]["message"].endswith(
        "safety: below the minimum 1 (schedules[0] mon/tue/wed/thu/fri 08:00-20:00 Europe/Amsterdam open) -> 1"
    )


# ---------------------------------------------------------------------------------------------------
# gpuscale manifests --format keda
# ---------------------------------------------------------------------------------------------------


def _cron_next(expr: str, zone: str, after: float) -> float:
    """The first instant strictly after ``after`` matching ``M H * * DOW`` in ``zone`` (robfig/cron,
    as KEDA's cron scaler uses it, for the fixed minute and hour gpuscale writes)."""
    minute, hour, dom, month, dow = expr.split()
    assert (dom, month) == ("*", "*")
    days: set[int] = set()
    for part in dow.split(","):
        if part == "*":
            days |= set(range(7))
        elif "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            days |= set(range(lo, hi + 1))
        else:
            days.add(int(part))
    tz = ZoneInfo(zone)
    local_day: date = datetime.fromtimestamp(after, tz).date()
    for offset in range(9):
        day = local_day + timedelta(days=offset)
        candidate = datetime(day.year, day.month, day.day, int(hour), int(minute), tzinfo=tz).timestamp()
        if candidate > after and day.isoweekday() % 7 in days:
            return candidate
    raise AssertionError(f"{expr} never fires after {after}")


def keda_cron_active(trigger: dict[str, Any], now: float) -> bool:
    """KEDA's cron scaler ``IsActive``: inactive when the next start comes before the next end and
    now is before it; otherwise active while now is no later than the next end."""
    meta = trigger["metadata"]
    next_start = _cron_next(meta["start"], meta["timezone"], now)
    next_end = _cron_next(meta["end"], meta["timezone"], now)
    if next_start < next_end and now < next_start:
        return False
    return now <= next_end


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        (BUSINESS, "0 8 * * 1-5", "0 20 * * 1-5"),
        (FRIDAY_NIGHT, "0 22 * * 5", "0 6 * * 6"),
        ({**FRIDAY_NIGHT, "days": ["sat", "sun"], "start": "21:30"}, "30 21 * * 0,6", "0 6 * * 0-1"),
        ({"days": ["sun"], "start": "00:00", "end": "00:00", "min_replicas": 3}, "0 0 * * 0", "0 0 * * 1"),
        ({**BUSINESS, "start": "12:00", "end": "12:00"}, "0 0 * * 1-5", "0 0 * * 2-6"),
        (
            {"days": ["mon", "wed", "fri", "sat"], "start": "09:15", "end": "17:45", "min_replicas": 1},
            "15 9 * * 1,3,5-6",
            "45 17 * * 1,3,5-6",
        ),
    ],
)
def test_cron_expressions_and_keda_is_active_exactly_when_the_window_is_open(
    window: dict[str, Any], start: str, end: str
) -> None:
    w = ScheduleWindow.model_validate(window)
    assert M.cron_window(w) == (start, end)
    trigger = {"metadata": {"timezone": w.timezone, "start": start, "end": end}}
    # Every quarter hour (boundaries included) over two weeks across 2026-03-29's change to CEST.
    t0 = at("2026-03-22T00:00:00Z")
    for k in range(14 * 96):
        t = t0 + 900 * k
        assert keda_cron_active(trigger, t) is is_open(w, t), datetime.fromtimestamp(t, UTC).isoformat()


def _keda_policy(*windows: dict[str, Any], **safety: Any) -> Any:
    return registry.load_policy_config(
        {
            "kind": "keda",
            "triggers": [{"metric": "queue_length", "threshold": 5}],
            "min_replica_count": 0,
            "max_replica_count": 10,
            "safety": {"min_replicas": 0, "max_replicas": 10, "schedules": list(windows), **safety},
        },
        "policy.yaml",
    )


def test_each_minimum_becomes_a_cron_trigger_and_a_maximum_a_note(keda_schema: dict[str, Any]) -> None:
    cap = {"days": ["sat", "sun"], "start": "00:00", "end": "00:00", "max_replicas": 2}
    manifest = M.render_keda(_keda_policy(BUSINESS, FRIDAY_NIGHT, cap), TARGET)
    validate_keda(manifest.body, keda_schema)
    triggers = manifest.body["spec"]["triggers"]
    assert [t["type"] for t in triggers] == ["prometheus", "cron", "cron"]
    assert triggers[1] == {
        "type": "cron",
        "name": "schedule-0",
        "metadata": {
            "timezone": "Europe/Amsterdam",
            "start": "0 8 * * 1-5",
            "end": "0 20 * * 1-5",
            "desiredReplicas": "1",
        },
    }
    assert triggers[2]["metadata"]["desiredReplicas"] == "2"
    assert (triggers[2]["metadata"]["start"], triggers[2]["metadata"]["end"]) == ("0 22 * * 5", "0 6 * * 6")
    assert any(
        n.startswith("safety.schedules[2]: max_replicas 2") and "no KEDA form" in n for n in manifest.notes
    )
    assert any("cooldownPeriod 300 s" in n for n in manifest.notes)  # the release after a close


def test_an_always_open_minimum_raises_min_replica_count() -> None:
    # KEDA rejects a cron trigger whose start equals its end; every day, all day is minReplicaCount.
    always = {"start": "00:00", "end": "00:00", "min_replicas": 2}
    spec = M.render_keda(_keda_policy(always), TARGET).body["spec"]
    assert spec["minReplicaCount"] == 2
    assert [t["type"] for t in spec["triggers"]] == ["prometheus"]


def test_an_hpa_policy_gets_cron_triggers_and_other_forms_say_there_is_none() -> None:
    data = queue_hpa(min_replicas=0, max_replicas=10, window_s=60, scale_up_pods=4)
    data["safety"] = {"min_replicas": 0, "max_replicas": 10, "schedules": [BUSINESS]}
    hpa = registry.load_policy_config(data, "policy.yaml")
    keda = M.render_keda(hpa, TARGET)
    assert [t["type"] for t in keda.body["spec"]["triggers"]][-1] == "cron"
    for manifest in (M.render_hpa(hpa, TARGET), M.render_hpa(_keda_policy(BUSINESS), TARGET)):
        assert any(
            n.startswith("safety.schedules: schedule windows have no native form") for n in manifest.notes
        )
    knative = registry.load_policy_config(
        {
            "kind": "knative",
            "min_scale": 0,
            "safety": {"min_replicas": 0, "max_replicas": 10, "schedules": [BUSINESS]},
        },
        "policy.yaml",
    )
    assert any("no native form" in n for n in M.render_knative(knative, TARGET).notes)
    # The external scaler runs the wrapped policy, schedules included: nothing to add, and it says so.
    external = M.render_keda(knative, TARGET)
    assert [t["type"] for t in external.body["spec"]["triggers"]] == ["external"]
    assert "keda-scaler" in external.header
    # No safety block: no schedule notes anywhere.
    plain = registry.load_preset_config("keda-queue-depth")
    assert not any("safety" in n for m in M.render(plain, TARGET, "all") for n in m.notes)


def test_cli_renders_cron_triggers_from_a_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "business-hours.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "kind": "keda",
                "triggers": [{"metric": "queue_length", "threshold": 5}],
                "safety": {"min_replicas": 0, "max_replicas": 10, "schedules": [BUSINESS]},
            }
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["manifests", "--policy", str(policy), "--target", "Deployment/llm", "--format", "keda"]
    )
    assert result.exit_code == 0, result.output
    (scaled,) = M.objects(result.output)
    assert scaled["spec"]["triggers"][-1]["metadata"]["start"] == "0 8 * * 1-5"
    assert "NOT EXACT" in result.output and "cooldownPeriod" in result.output


def test_the_api_server_accepts_the_scaled_object(plane: ControlPlane) -> None:
    body = copy.deepcopy(M.render_keda(_keda_policy(BUSINESS, FRIDAY_NIGHT), TARGET).body)
    response = plane.request("POST", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects?dryRun=All", body)
    assert response.status in (200, 201), response.body.get("message")
    assert [t["type"] for t in response.body["spec"]["triggers"]] == ["prometheus", "cron", "cron"]
