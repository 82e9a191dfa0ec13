"""One policy, two worlds, for every policy kind: the simulator's decisions, replayed through a real
Prometheus and a real Kubernetes control plane, are the live controller's decisions, tick for tick.

**What is compared.** For each registered kind (the warm pool has its own test), a small policy of
that kind runs first in the simulator on a short closed-loop spike scenario (5 users, a peak for a few
ticks, 5 again), with every tick's snapshot and decision recorded. The same policy then runs live,
built as :func:`~gpuscale.controller.build_controller` builds it for ``gpuscale run``: a real
:class:`~gpuscale.integrations.prometheus.PrometheusSource` asking Debian's Prometheus, which scrapes
a test exporter every 0.25 s, and a real :class:`~gpuscale.controller.target.KubernetesTarget` on a
:class:`~tests.controlplane.GpuCluster` (3 nodes of 4 GPUs) whose Deployment asks one
``nvidia.com/gpu`` per pod. Its ManualClock is stepped through the simulator's tick times. Every tick
of the scenario is compared (the scenarios are as short as the behaviour they show: 3 to 15 ticks),
and on every tick these are equal in both worlds: the time, each signal's value, the replica counts
the policy saw (spec, Ready pods, pods that exist), the decision (desired replicas or hold) and its
reason, and the replicas the Deployment has after the tick. Both worlds wrap the policy in the same
``safety:`` block (from the scenario in one, from the controller's config in the other).

**How the live world is given the simulator's inputs.** Before each tick the exporter's per-pod
series (``llm-0`` and ``llm-1``) are set so that the policy's own PromQL answers exactly the value the
simulator's policy saw, and the test waits (bounded poll) until every sample in each signal's window
is the set value and Prometheus answers that value; then until the Deployment's pods are all Ready
and none is starting, pending or going. :class:`~tests.integrations.test_end_to_end.WallClockQueries`
asks Prometheus at the real time and stamps the snapshot with the controller's time. Values are
exact, not approximate: a total is served as (value, 0) -- ``sum`` adds 0 exactly; a per-pod mean or
maximum as (value, value) -- ``avg_over_time``, ``avg`` and ``max`` of equal numbers are that number;
GPU memory utilization, which PromQL computes as ``100 * used / (used + free)``, from a used/free
pair searched so that IEEE double arithmetic (Prometheus' and Python's alike) gives the value to the
last bit. The scenarios' pods are Ready 0.4 s after they are asked for, before the next tick of
even a 1-s policy, so the simulator's policy sees every pod Ready and the live one is shown the same.

The signals per kind, through the presets ``dcgm``, ``knative`` and ``vllm``:

=============  =================================================================  ===========
kind           signals (series)                                                   ticks
=============  =================================================================  ===========
static         none                                                               3 x 15 s
static-peak    none                                                               3 x 15 s
hpa            Pods ``gpu_util`` mean (``DCGM_FI_DEV_GPU_UTIL``)                  10 x 15 s
keda           ``queue_length`` total (``vllm:num_requests_waiting``)             11 x 5 s
knative        ``concurrency`` total (``queue_average_concurrent_requests``)      12 x 2 s
ray-serve      ``concurrency`` total (``queue_average_concurrent_requests``)      15 x 1 s
gpu-memory     ``gpu_memory_util`` mean (``DCGM_FI_DEV_FB_USED`` / ``_FREE``)     12 x 5 s
multi-signal   ``gpu_util`` mean and ``queue_length`` total                       10 x 5 s
predictive     ``request_rate`` total (override, below) and ``concurrency`` total 12 x 5 s
planner        ``request_rate`` total (override, below)                           12 x 5 s
learned        ``gpu_util`` mean (``DCGM_FI_DEV_GPU_UTIL``)                       12 x 5 s
=============  =================================================================  ===========

**What is not the built-in path, and why.**

* *The request rate* (predictive, planner) is read through a ``prometheus.queries`` override of gpuscale's
  config, ``sum(avg_over_time(pod:vllm_request_success:rate[1s]))``: a per-pod rate recorded as a
  gauge, as a recording rule stores it. The built-in query, ``rate()`` of the success counter,
  extrapolates over the samples' scrape timestamps, so no counter the test can serve makes it answer
  the simulator's rate to the bit; the override is gpuscale's own mechanism, and everything after
  the query (the HTTP API, the parsing, the aggregation, the policy) is the same.
* *The KPA's panic window* is as long as its stable window (6 s, ``panic_window_percentage: 100``)
  and the simulator scrapes every 6 s: one exporter series cannot hold a 6-s mean and a different
  1-s mean at the same moment, and the simulator refuses a window shorter than its scrape interval.
  Panic mode is still entered and held (the values jump by more than the panic threshold).
* *Windows are 1 s* (6 s for the KPA): a Prometheus window is wall time while the controller's clock
  is compressed, so every window must fill with the new value before the tick.
* *The HPA's Pods metric* carries per-pod samples in the simulator and only the aggregate live (the
  HPA then stands the mean for every Ready pod); with every pod Ready and reporting both compute the
  same proposal, which the comparison shows tick by tick.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Gauge

from gpuscale._core.clock import ManualClock, SystemClock
from gpuscale.config.scenario import scenario_from_dict
from gpuscale.controller import build_controller, load_controller_config
from gpuscale.controller.target import KubernetesTarget
from gpuscale.integrations import promql
from gpuscale.integrations.prometheus import PrometheusSource, QueryFailed
from gpuscale.policies import registry
from gpuscale.policies.base import Aggregation, Metric, SignalSpec
from gpuscale.policies.ports import ReplicaCounts
from gpuscale.sim.engine import simulate
from gpuscale.sim.results import Timeline
from tests.controlplane import GpuCluster, serving_cluster, wait_until

from .promserver import NAMESPACE, PODS, Exporter, Prometheus, scraping
from .test_end_to_end import SCRAPE_S, VLLM, WAIT_S, RecordingPolicy, WallClockQueries

PRESETS: tuple[promql.Preset, ...] = ("dcgm", "knative", "vllm")
"""The exporters the live controller reads (Triton's queue would shadow vLLM's otherwise)."""
CONCURRENCY_SERIES = "queue_average_concurrent_requests"
"""Knative queue-proxy's time-weighted in-flight requests per pod (the ``knative`` preset's series)."""
RATE_SERIES = "pod:vllm_request_success:rate"
"""A per-pod request rate recorded as a gauge (a recording rule's output), read by the override."""
QUERIES: dict[str, Any] = {
    "request_rate": {
        "query": f"$agg(avg_over_time({RATE_SERIES}{{$labels}}[$window]))",
        "age_query": f"max(timestamp({RATE_SERIES}{{$labels}}))",
    }
}
"""The controller config's ``prometheus.queries``: the request rate from :data:`RATE_SERIES`."""
SAFETY: dict[str, Any] = {"min_replicas": 1, "max_replicas": 12}
"""The ``safety:`` block of both worlds: the cluster's 12 GPUs; no case's policy reaches it."""


# --------------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------------


def scenario(
    name: str,
    duration_s: float,
    *,
    start_s: float,
    hold_s: float,
    peak_users: int = 80,
    scrape_s: float = 1.0,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """5 closed-loop users, ``peak_users`` from ``start_s`` for ``hold_s``, then 5 again; pods Ready
    0.4 s after they are asked for; 3 nodes of 4 RTX 3080s, as the live cluster has."""
    return {
        "name": f"two-worlds-{name}",
        "duration_s": duration_s,
        "seed": 3,
        "slo": {"latency_ms": 500},
        "workload": {
            "kind": "closed-loop",
            "users": {
                "kind": "spike",
                "base_users": 5,
                "peak_users": peak_users,
                "start_s": start_s,
                "hold_s": hold_s,
            },
            "think_time_s": [0.5, 1],
        },
        "model": {"profile": "mobilenetv4-rtx3080-triton", **(model or {})},
        "startup": {
            "scheduling_s": 0.2,
            "image_pull_s": 0,
            "model_download_s": 0,
            "model_load_s": 0.2,
            "warmup_s": 0,
        },
        "cluster": {
            "pools": [
                {
                    "name": "g",
                    "gpu": "rtx3080",
                    "gpus_per_node": 4,
                    "nodes": 3,
                    "image_cached": True,
                    "model_cached": True,
                }
            ]
        },
        "telemetry": {"scrape_interval_s": scrape_s},
        "control": {"initial_replicas": 1},
        "safety": SAFETY,
    }


@dataclass(frozen=True)
class Case:
    """One kind's policy and scenario, and the reasons its simulator run must show (so the comparison
    covers the kind's behaviour, not only holds)."""

    kind: str
    policy: dict[str, Any]
    scenario: dict[str, Any]
    shows: frozenset[str] = field(default_factory=frozenset)


def shows(*reasons: str) -> frozenset[str]:
    return frozenset(reasons)


CASES: tuple[Case, ...] = (
    Case(
        "static",
        {"kind": "static", "replicas": 3},
        scenario("static", 60, start_s=20, hold_s=20),
        shows("Static"),
    ),
    Case(
        "static-peak",
        # ceil(100 rps x 1.1 / 30 rps per replica) = 4
        {"kind": "static-peak", "peak_rps": 100, "capacity_rps_per_replica": 30, "headroom_pct": 10},
        scenario("static-peak", 60, start_s=20, hold_s=20),
        shows("Static"),
    ),
    Case(
        "hpa",
        # ceil(ready x mean util / 50) in 1..8; the default scale-up policies; 30-s scale-down window
        {
            "kind": "hpa",
            "min_replicas": 1,
            "max_replicas": 8,
            "metrics": [
                {
                    "type": "Pods",
                    "metric": "gpu_util",
                    "window_s": 1,
                    "target": {"type": "AverageValue", "average_value": 50},
                }
            ],
            "behavior": {"scale_down": {"stabilization_window_s": 30}},
        },
        scenario("hpa", 165, start_s=30, hold_s=90),
        shows("ScaleUp", "TooManyReplicas", "ScaleDownStabilized", "ScaleDown"),
    ),
    Case(
        "keda",
        # ceil(queue / 5) in 1..8, polled and synced every 5 s; 10-s scale-down stabilization
        {
            "kind": "keda",
            "triggers": [
                {
                    "metric": "queue_length",
                    "aggregation": "total",
                    "window_s": 1,
                    "threshold": 5,
                    "activation_threshold": 0,
                }
            ],
            "polling_interval_s": 5,
            "hpa_sync_period_s": 5,
            "cooldown_period_s": 30,
            "min_replica_count": 1,
            "max_replica_count": 8,
            "advanced": {
                "horizontal_pod_autoscaler_config": {
                    "behavior": {"scale_down": {"stabilization_window_s": 10}}
                }
            },
        },
        scenario("keda", 60, start_s=10, hold_s=30),
        shows("ScaleUpLimited", "ScaleDownStabilized", "TooFewReplicas"),
    ),
    Case(
        "knative",
        # 7 in flight per pod (10 x 70 %), stable = panic window 6 s, 1..8 pods, 2-s ticks
        {
            "kind": "knative",
            "metric": "concurrency",
            "target": 10,
            "stable_window_s": 6,
            "panic_window_percentage": 100,
            "min_scale": 1,
            "max_scale": 8,
        },
        scenario("knative", 26, start_s=8, hold_s=10, peak_users=60, scrape_s=6),
        shows("ScaleUpPanic", "PanicMode", "ScaleDown", "ScaleDownLimited"),
    ),
    Case(
        "ray-serve",
        # 2 ongoing requests per replica over 1 s, up after 2 s, down after 3 s, 1-s ticks
        {
            "kind": "ray-serve",
            "min_replicas": 1,
            "max_replicas": 8,
            "target_ongoing_requests": 2,
            "look_back_period_s": 1,
            "upscale_delay_s": 2,
            "downscale_delay_s": 3,
        },
        scenario("ray-serve", 16, start_s=3, hold_s=7, peak_users=60),
        shows("DelayPending", "ClampedToMax", "ScaleDown"),
    ),
    Case(
        "gpu-memory",
        # up above 12 % mean memory (proportional), down below 11 %; 10-s / 20-s cooldowns; 5-s ticks
        {
            "kind": "gpu-memory",
            "min_replicas": 1,
            "max_replicas": 8,
            "scale_up_threshold_pct": 12,
            "scale_down_threshold_pct": 11,
            "window_s": 1,
            "sizing": "proportional",
            "scale_up_cooldown_s": 10,
            "scale_down_cooldown_s": 20,
            "sync_period_s": 5,
        },
        # weights + the current batch only, so memory follows the load
        scenario("gpu-memory", 65, start_s=10, hold_s=30, model={"allocator": "exact"}),
        shows("ScaleUp", "Cooldown", "ScaleDown"),
    ),
    Case(
        "multi-signal",
        # up when util > 60 % or queue > 10, down when util < 20 % and queue < 2; 5-s ticks
        {
            "kind": "multi-signal",
            "min_replicas": 1,
            "max_replicas": 8,
            "sync_period_s": 5,
            "scale_down_stabilization_s": 10,
            "signals": [
                {"metric": "gpu_util", "window_s": 1, "scale_up_above": 60, "scale_down_below": 20},
                {
                    "metric": "queue_length",
                    "aggregation": "total",
                    "window_s": 1,
                    "scale_up_above": 10,
                    "scale_down_below": 2,
                },
            ],
        },
        scenario("multi-signal", 55, start_s=10, hold_s=30),
        shows("ScaleUp", "ScaleDownStabilized", "ScaleDown"),
    ),
    Case(
        "predictive",
        # the rate one 20-s season ago, p90, +20 %, at 12 rps per replica, 5 s ahead; a reactive
        # floor of 2 in flight per replica; 10-s scale-down stabilization; 5-s ticks
        {
            "kind": "predictive",
            "min_replicas": 1,
            "max_replicas": 8,
            "capacity_rps_per_replica": 12,
            "forecaster": "seasonal",
            "season_s": 20,
            "seasons": [1],
            "quantile": 0.9,
            "history_resolution_s": 5,
            "lead_time_s": 5,
            "rate_window_s": 1,
            "reactive_metric": "concurrency",
            "reactive_target_per_replica": 2,
            "reactive_window_s": 1,
            "scale_down_stabilization_s": 10,
            "sync_period_s": 5,
        },
        scenario("predictive", 65, start_s=10, hold_s=20),
        shows("Predicted", "ScaleDown"),
    ),
    Case(
        "planner",
        # 12 rps per replica within the SLO, a 5-s cold start (the horizon), 5-s history buckets; the
        # burst detector asks for the spike's pods, the scale-down guard (2 x (5 s + a 5-s tick))
        # holds them 20 s after it; the latency terms are off (the test serves no latency histogram)
        {
            "kind": "planner",
            "min_replicas": 1,
            "max_replicas": 8,
            "capacity": {
                "profile": "mobilenetv4-rtx3080-triton",
                "slo_latency_ms": 500,
                "points": [{"replicas": 1, "rps_per_replica": 12}],
            },
            "cold_start_s": 5,
            "rate_window_s": 1,
            "history_resolution_s": 5,
            "correction_window_s": None,
            "saturation_window_s": None,
            "sync_period_s": 5,
        },
        scenario("planner", 65, start_s=10, hold_s=20),
        shows("ScaleUpPanic", "ScaleDown"),
    ),
    Case(
        "learned",
        # a hand-set network on the 1-s GPU util (tests/data/learned_two_worlds.py): -1 below 25 %,
        # +1 above 60 %, +2 above 80 %; 1..8 replicas; 5-s ticks
        {
            "kind": "learned",
            "model": str(Path(__file__).resolve().parents[1] / "data" / "learned-two-worlds.npz"),
            "min_replicas": 1,
            "max_replicas": 8,
        },
        scenario("learned", 65, start_s=10, hold_s=25),
        shows("ScaleUp", "ClampedToMax", "ScaleDown"),
    ),
)


# --------------------------------------------------------------------------------------------------
# ticks, in either world
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """What one policy tick saw and did, in either world."""

    time_s: float
    signals: tuple[tuple[str, float | None], ...]
    """Each signal's key and value, in the policy's order."""
    current: int
    ready: int
    pods: int
    """The pods that exist (ready + starting + pending)."""
    desired: int | None
    reason: str
    replicas: int
    """Spec replicas after the tick (written, or kept)."""

    def row(self) -> str:
        seen = " ".join("-" if v is None else f"{v:.6g}" for _, v in self.signals) or "-"
        desired = "hold" if self.desired is None else str(self.desired)
        return (
            f"t={self.time_s:>4g} {seen:>18} {self.current}({self.ready}/{self.pods})->{self.replicas}"
            f" {desired:>4} {self.reason}"
        )


def unique_signals(case: Case) -> tuple[SignalSpec, ...]:
    """The signals the case's policy reads, each once, in its order."""
    return tuple(dict.fromkeys(registry.load_policy(case.policy, "test").signals))


def simulated(case: Case, specs: Sequence[SignalSpec]) -> tuple[list[Tick], Timeline]:
    """The simulator's ticks of the case's policy on its scenario, and the timeline."""
    recording = RecordingPolicy(registry.load_policy(case.policy, "test"))
    result = simulate(scenario_from_dict(case.scenario, "test"), recording)
    replicas = result.timeline.column("desired")  # the target's spec after each tick
    assert len(recording.seen) == len(replicas)
    ticks = [
        Tick(
            snap.time_s,
            tuple((spec.key, snap.value(spec)) for spec in specs),
            snap.current_replicas,
            snap.ready,
            snap.ready + snap.starting + snap.pending,
            decision.desired_replicas,
            decision.reason.value,
            int(after),
        )
        for (snap, decision), after in zip(recording.seen, replicas, strict=True)
    ]
    return ticks, result.timeline


# --------------------------------------------------------------------------------------------------
# serving the simulator's values through Prometheus
# --------------------------------------------------------------------------------------------------


class TwoWorldsExporter(Exporter):
    """The test exporter with two more per-pod gauges: Knative queue-proxy's average concurrency and
    a recorded request rate; :attr:`gauges` maps each series a case replays to its gauge."""

    def __init__(self) -> None:
        super().__init__()
        labels = ["namespace", "pod"]
        self.concurrency = Gauge(CONCURRENCY_SERIES, "Knative concurrency", labels, registry=self.registry)
        self.request_rate = Gauge(
            RATE_SERIES, "requests/s per pod (recorded)", labels, registry=self.registry
        )
        for pod in PODS:
            self.concurrency.labels(NAMESPACE, pod).set(0)
            self.request_rate.labels(NAMESPACE, pod).set(0)
        self.gauges: dict[str, Gauge] = {
            "vllm:num_requests_waiting": self.vllm_waiting,
            "DCGM_FI_DEV_GPU_UTIL": self.gpu_util,
            "DCGM_FI_DEV_FB_USED": self.fb_used,
            "DCGM_FI_DEV_FB_FREE": self.fb_free,
            CONCURRENCY_SERIES: self.concurrency,
            RATE_SERIES: self.request_rate,
        }


def _near(x: float, steps: int = 8) -> Iterator[float]:
    """``x`` and the ``steps`` doubles on either side of it, nearest first."""
    yield x
    lo = hi = x
    for _ in range(steps):
        hi, lo = math.nextafter(hi, math.inf), math.nextafter(lo, -math.inf)
        yield hi
        yield lo


def framebuffer(percent: float) -> tuple[float, float]:
    """Framebuffer used and free (MiB) whose utilization as PromQL computes it,
    ``100 * used / (used + free)``, is exactly ``percent`` in IEEE double arithmetic."""
    for total in (10240.0, 10000.0, 16384.0, 24576.0, 40960.0, 81920.0, 12288.0, 15360.0):
        for used in _near(percent / 100.0 * total):
            for free in _near(total - used):
                if used >= 0 and free >= 0 and 100.0 * used / (used + free) == percent:
                    return used, free
    raise AssertionError(f"no used/free framebuffer pair gives exactly {percent!r} %")


def replay(spec: SignalSpec, value: float) -> dict[str, tuple[float, float]]:
    """The per-pod values (``llm-0``, ``llm-1``) of each series behind ``spec`` for which Prometheus
    answers the signal's query with exactly ``value``."""
    if spec.metric is Metric.GPU_MEMORY_UTIL:
        assert spec.aggregation is not Aggregation.TOTAL, spec
        used, free = framebuffer(value)
        return {"DCGM_FI_DEV_FB_USED": (used, used), "DCGM_FI_DEV_FB_FREE": (free, free)}
    if spec.metric is Metric.REQUEST_RATE:
        series = RATE_SERIES
    else:
        source = promql.preset_source(spec.metric, PRESETS)
        assert source is not None and not source.counter, spec
        series = source.series
    return {series: (value, 0.0) if spec.aggregation is Aggregation.TOTAL else (value, value)}


def settle(
    prom: Prometheus,
    exporter: TwoWorldsExporter,
    source: PrometheusSource,
    wanted: Mapping[SignalSpec, float],
) -> None:
    """Serve ``wanted``; wait until every sample in each signal's window is the served value, and each
    signal's own query answers its value exactly."""
    series: dict[str, tuple[tuple[float, float], float]] = {}  # name -> per-pod values, longest window
    for spec, value in wanted.items():
        for name, per_pod in replay(spec, value).items():
            known = series.get(name)
            assert known is None or known[0] == per_pod, f"{name}: two signals want {known} and {per_pod}"
            series[name] = (per_pod, max(spec.window_s, known[1] if known else 0.0))
    for name, (per_pod, _) in series.items():
        for pod, value in zip(PODS, per_pod, strict=True):
            exporter.gauges[name].labels(NAMESPACE, pod).set(value)
    queries = {spec: source.queries(spec)[0] for spec in wanted}
    wall = SystemClock()

    def settled() -> bool:
        for name, (per_pod, window_s) in series.items():
            selector = f'{name}{{namespace="{NAMESPACE}"}}[{promql.window(window_s)}]'
            for fn in ("min_over_time", "max_over_time"):
                got = {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(f"{fn}({selector})")}
                if got != dict(zip(PODS, per_pod, strict=True)):
                    return False
        for spec, query in queries.items():
            assert query is not None, spec
            try:
                if source.scalar(query, wall.now()) != wanted[spec]:
                    return False
            except QueryFailed:
                return False
        return True

    shown = ", ".join(f"{spec.key} = {value!r}" for spec, value in wanted.items())
    wait_until(settled, f"Prometheus answers {shown}", WAIT_S, 0.05)


def converge(target: KubernetesTarget) -> ReplicaCounts:
    """Wait until every pod the last write asked for is Ready and none is starting, pending or going."""

    def done() -> ReplicaCounts | None:
        c = target.counts()
        ok = c.ready == c.current_replicas and c.starting == c.pending == c.draining == 0
        return c if ok else None

    return wait_until(done, "the Deployment's pods all Ready", WAIT_S)


def scale_away(cluster: GpuCluster, name: str) -> None:
    """Scale the Deployment to 0 and wait until its pods are gone (their GPUs free for the next case)."""
    patched = cluster.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}/scale",
        {"spec": {"replicas": 0}},
        content_type="application/merge-patch+json",
    )
    assert patched.status == 200, patched.body
    wait_until(lambda: not cluster.pods(NAMESPACE, f"app={name}"), f"the pods of {name} gone", WAIT_S)


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    workdir = Path(tmp_path_factory.mktemp("gpu-cluster"))
    with serving_cluster(
        workdir, [NAMESPACE], nodes=3, gpus_per_node=4, cold_start_s=0.5, heartbeat_s=2.0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def exporter() -> Iterator[TwoWorldsExporter]:
    exp = TwoWorldsExporter()
    exp.start()
    try:
        yield exp
    finally:
        exp.stop()


@pytest.fixture(scope="module")
def prom(exporter: TwoWorldsExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with scraping(exporter, tmp_path_factory.mktemp("prometheus"), scrape_interval_s=SCRAPE_S) as server:
        yield server


# --------------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------------


def test_every_policy_kind_but_the_warm_pool_has_a_case() -> None:
    assert sorted(c.kind for c in CASES) == sorted(set(registry.kind_names()) - {"warm-pool"})


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_the_simulator_and_the_live_controller_make_the_same_decisions(
    case: Case, cluster: GpuCluster, exporter: TwoWorldsExporter, prom: Prometheus, tmp_path: Path
) -> None:
    specs = unique_signals(case)
    sim, timeline = simulated(case, specs)
    # what the live world can be shown: the safety block never bound (the recorded decision is the
    # one written), every signal has a value, and every pod is Ready at every tick
    assert list(timeline.column("reason")) == [t.reason for t in sim]
    assert all(value is not None for t in sim for _, value in t.signals), sim
    assert all(t.ready == t.pods == t.current for t in sim), sim
    assert case.shows <= {t.reason for t in sim}, {t.reason for t in sim}
    assert len({round(b.time_s - a.time_s, 9) for a, b in itertools.pairwise(sim)}) == 1

    name = case.kind
    cluster.create_deployment(name, NAMESPACE, sim[0].current, gpus=1, image=VLLM)
    try:
        config = {
            "prometheus": {
                "url": prom.url,
                "presets": list(PRESETS),
                "selector": {"pod_regex": "llm-.*"},  # the exporter's pods
                "queries": QUERIES,
            },
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NAMESPACE, "name": name},
            "pod_selector": f"app={name}",
            "kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
            "policy": case.policy,
            "safety": SAFETY,
        }
        path = tmp_path / "controller.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        clock = ManualClock(sim[0].time_s)
        records: list[dict[str, Any]] = []
        ctl = build_controller(
            load_controller_config(path),
            path,
            clock,
            sink=lambda r: records.append(json.loads(json.dumps(r))),
        )
        assert isinstance(ctl.metrics, PrometheusSource) and isinstance(ctl.target, KubernetesTarget)
        assert ctl.interval_s == sim[1].time_s - sim[0].time_s  # the policy's tick, as in the simulator
        source, target = ctl.metrics, ctl.target
        ctl.metrics = WallClockQueries(source)

        live: list[Tick] = []
        for expected in sim:
            clock.advance(expected.time_s - clock.now())
            wanted = {spec: value for spec, (_, value) in zip(specs, expected.signals, strict=True)}
            settle(prom, exporter, source, {s: v for s, v in wanted.items() if v is not None})
            converge(target)
            out = ctl.tick()
            assert out.action in ("scaled", "unchanged"), out
            rec = records[-1]
            counts = rec["replicas"]
            live.append(
                Tick(
                    rec["time"],
                    tuple((spec.key, rec["signals"][spec.key]["value"]) for spec in specs),
                    counts["current"],
                    counts["ready"],
                    counts["ready"] + counts["starting"] + counts["pending"],
                    rec["decision"]["desired_replicas"],
                    rec["decision"]["reason"],
                    rec["written_replicas"] if out.action == "scaled" else rec["target_replicas"],
                )
            )
            assert cluster.deployment_replicas(name, NAMESPACE) == live[-1].replicas
        print(f"\n{case.kind}: simulator | live")
        print("\n".join(f"{s.row()}   | {t.row()}" for s, t in zip(sim, live, strict=True)))
        assert live == sim
    finally:
        scale_away(cluster, name)
