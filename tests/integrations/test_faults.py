"""Faults through real parts: Prometheus and the kube-apiserver stop under a running controller and
come back.

The controller is built as ``gpuscale run`` builds it (:func:`~gpuscale.controller.build_controller`:
a real PrometheusSource, a real KubernetesTarget) and runs on a ManualClock, so its waits -- the
interval, the backoff -- take no time and are exact; the real processes are waited for with bounded
polls. As in ``test_end_to_end``, :class:`~tests.integrations.test_end_to_end.WallClockQueries` asks
Prometheus at the real time and stamps the snapshot with the controller's.

What the loop does, by fault:

* **Prometheus gone**: every query fails, so every signal is missing with the reason; the HPA holds
  (``NoData``) and fail-static forbids any scale-down, so the replicas stay. Prometheus not answering
  at all (unlike an answer with no series) makes the tick a failed one, ``metrics_unavailable``: it
  is counted in ``gpuscale_controller_errors_total`` and each further one doubles the wait, while the
  policy still runs on every tick (its own no-data handling -- KEDA's fallback -- needs the reads).
  A new Prometheus on the same address: the next tick decides on data again and the wait is the
  interval again.
* **kube-apiserver gone**: a tick cannot read the target, so it fails with a temporary error, writes
  nothing, and each further failure doubles the wait; restarted, the next tick succeeds and the wait
  is the interval again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuscale._core.clock import ManualClock
from gpuscale.controller import Controller, build_controller, load_controller_config
from gpuscale.integrations.prometheus import PrometheusSource
from gpuscale.policies.base import SignalSpec
from tests.controlplane import ControlPlane, started_plane, wait_until

from .promserver import NAMESPACE, Exporter, Prometheus, scraping
from .scripted import queue_hpa
from .test_end_to_end import SCRAPE_S, WAIT_S, WallClockQueries, set_queue, settle

INTERVAL_S = 15.0
POLICY = queue_hpa(min_replicas=1, max_replicas=8, window_s=1, scale_up_pods=8)
"""desired = ceil(queue / 10) in 1..8, at once in both directions: 40 -> 4, 20 -> 2, 0 -> 1."""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(Path(tmp_path_factory.mktemp("control-plane")), [NAMESPACE]) as cp:
        yield cp


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    with Exporter() as exp:
        yield exp


@pytest.fixture
def prom(exporter: Exporter, tmp_path: Path) -> Iterator[Prometheus]:
    with scraping(exporter, tmp_path, scrape_interval_s=SCRAPE_S) as server:
        yield server


def controller(
    plane: ControlPlane, prom: Prometheus, tmp_path: Path, name: str
) -> tuple[Controller, PrometheusSource, SignalSpec, list[dict[str, Any]]]:
    config = {
        # the exporter's pods are llm-0 and llm-1, whatever the Deployment is called
        "prometheus": {"url": prom.url, "presets": ["vllm"], "selector": {"pod_regex": "llm-.*"}},
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NAMESPACE, "name": name},
        "pod_selector": f"app={name}",
        "kubeconfig": str(plane.kubeconfig(tmp_path / "kubeconfig")),
        "policy": POLICY,
        "safety": {"min_replicas": 1, "max_replicas": 8},
        "request_timeout_s": 5,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    records: list[dict[str, Any]] = []
    ctl = build_controller(
        load_controller_config(path),
        path,
        ManualClock(1_000.0),
        sink=lambda r: records.append(json.loads(json.dumps(r))),
    )
    assert isinstance(ctl.metrics, PrometheusSource) and ctl.interval_s == INTERVAL_S
    source = ctl.metrics
    ctl.metrics = WallClockQueries(source)
    (spec,) = ctl.policy.signals
    return ctl, source, spec, records


def sample(ctl: Controller, name: str, **labels: str) -> float:
    assert ctl.observer is not None
    value = ctl.observer.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_prometheus_down_holds_counts_backs_off_and_a_new_one_on_the_same_port_recovers(
    plane: ControlPlane, exporter: Exporter, prom: Prometheus, tmp_path: Path
) -> None:
    name = "prom-outage"
    plane.create_deployment(name, NAMESPACE, 1, gpus=1)
    ctl, source, spec, records = controller(plane, prom, tmp_path, name)
    clock = ctl.clock
    settle(prom, source, spec, set_queue(exporter, 40))
    up = ctl.tick()
    assert (up.action, up.replicas) == ("scaled", 4)
    clock.sleep(ctl.next_wait())

    prom.stop()
    set_queue(exporter, 0)  # no load any more: with data the policy would go down to 1
    started = clock.now()
    held = ctl.run(max_ticks=3)
    assert [(o.action, o.replicas) for o in held] == [("unchanged", 4)] * 3
    for o in held:
        assert o.decision is not None and o.decision.reason.value == "NoData" and o.decision.is_hold
        value = o.snapshot.get(spec) if o.snapshot is not None else None
        assert value is not None and value.value is None
        assert f"cannot reach {prom.url}" in value.reason
    for r in records[-3:]:
        assert r["signals"][spec.key]["value"] is None and "cannot reach" in r["signals"][spec.key]["reason"]
    assert plane.deployment_replicas(name, NAMESPACE) == 4  # fail-static: no data is never no load
    assert all(o.error_kind == "metrics_unavailable" and prom.url in (o.error or "") for o in held)
    assert all(r["error"]["kind"] == "metrics_unavailable" for r in records[-3:])
    assert ctl.errors == {"metrics_unavailable": 3} and ctl.failures == 3
    assert clock.now() - started == INTERVAL_S + 2 * INTERVAL_S  # waits 15 s, then 30 s: backoff
    assert ctl.next_wait() == 4 * INTERVAL_S
    assert sample(ctl, "gpuscale_controller_decisions_total", reason="NoData") == 3
    errors = {"kind": "metrics_unavailable", "stage": "tick"}
    assert sample(ctl, "gpuscale_controller_errors_total", **errors) == 3
    assert ctl.status is not None and not ctl.status.ready(clock.monotonic())[0]
    # the signal's own series: the last good value is withdrawn while missing, the misses counted
    assert sample(ctl, "gpuscale_controller_signal_missing_total", signal=spec.key) == 3
    assert ctl.observer is not None
    assert (
        ctl.observer.registry.get_sample_value("gpuscale_controller_signal_value", {"signal": spec.key})
        is None
    )

    # a new Prometheus (empty TSDB) on the same address; the source's client reconnects by itself
    shutil.rmtree(prom.workdir / "data")
    prom.start()
    wait_until(lambda: prom.value('up{job="exporter"}') == 1.0, "the exporter scraped again", WAIT_S)
    settle(prom, source, spec, set_queue(exporter, 20))
    clock.sleep(ctl.next_wait())
    back = ctl.tick()
    assert (back.action, back.replicas) == ("scaled", 2)
    assert back.decision is not None and back.decision.reason.value == "ScaleDown"
    assert back.snapshot is not None and back.snapshot.value(spec) == 20.0
    assert sample(ctl, "gpuscale_controller_signal_value", signal=spec.key) == 20.0
    assert 0.0 <= sample(ctl, "gpuscale_controller_signal_age_seconds", signal=spec.key) < 60.0
    assert plane.deployment_replicas(name, NAMESPACE) == 2
    assert back.error_kind is None and ctl.failures == 0 and ctl.next_wait() == INTERVAL_S


def stop_apiserver(plane: ControlPlane) -> list[str]:
    """Terminate kube-apiserver (etcd keeps the state); its command line, to start it again."""
    proc = next(
        p for p in plane.procs if isinstance(p.args, list) and Path(p.args[0]).name == "kube-apiserver"
    )
    proc.terminate()
    try:
        proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    plane.procs.remove(proc)
    assert isinstance(proc.args, list)
    return [str(a) for a in proc.args]


def start_apiserver(plane: ControlPlane, args: list[str]) -> None:
    """The same kube-apiserver again: same port, same etcd, the serving certificate it made before."""
    with (plane.workdir / "apiserver-restarted.log").open("wb") as log:
        plane.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))

    def ready() -> bool:
        try:
            return plane.request("GET", "/readyz").status == 200
        except OSError:
            return False

    wait_until(ready, "kube-apiserver ready again", WAIT_S, 0.25)


def test_api_server_down_fails_ticks_backs_off_and_recovers_when_it_restarts(
    plane: ControlPlane, exporter: Exporter, prom: Prometheus, tmp_path: Path
) -> None:
    name = "api-outage"
    plane.create_deployment(name, NAMESPACE, 1, gpus=1)
    ctl, source, spec, records = controller(plane, prom, tmp_path, name)
    clock = ctl.clock
    settle(prom, source, spec, set_queue(exporter, 40))
    assert ctl.tick().replicas == 4
    clock.sleep(ctl.next_wait())

    args = stop_apiserver(plane)
    try:
        set_queue(exporter, 0)
        failed = ctl.run(max_ticks=4)
        assert [(o.action, o.error_kind) for o in failed] == [("error", "temporary")] * 4
        assert all("did not answer" in (o.error or "") for o in failed)
        assert ctl.errors == {"temporary": 4} and ctl.failures == 4
        times = [r["time"] for r in records[-4:]]
        assert [b - a for a, b in pairwise(times)] == [15.0, 30.0, 60.0]  # doubling
        assert ctl.next_wait() == 120.0
        assert sample(ctl, "gpuscale_controller_errors_total", kind="temporary", stage="tick") == 4
        assert sample(ctl, "gpuscale_controller_next_wait_seconds") == 120.0
        assert ctl.status is not None and not ctl.status.ready(clock.monotonic())[0]
    finally:
        start_apiserver(plane, args)
    assert plane.deployment_replicas(name, NAMESPACE) == 4  # nothing was written while it was down

    settle(prom, source, spec, set_queue(exporter, 20))
    clock.sleep(ctl.next_wait())
    back = ctl.tick()
    assert (back.action, back.replicas) == ("scaled", 2)
    assert plane.deployment_replicas(name, NAMESPACE) == 2
    assert ctl.failures == 0 and ctl.next_wait() == INTERVAL_S
    assert sample(ctl, "gpuscale_controller_consecutive_failures") == 0
    assert ctl.status is not None and ctl.status.ready(clock.monotonic())[0]
