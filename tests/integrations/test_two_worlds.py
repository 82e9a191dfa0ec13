"""One policy, two worlds, for every policy kind: the simulator's decisions, replayed through a real
Prometheus and a real Kubernetes control plane, are the live controller's decisions, tick for tick.

**What is compared.** For each registered kind (the warm pool has its own test), a small policy of
that kind runs first in the simulator on a short closed-loop spike scenario (5 users, a peak for a
few ticks, 5 again; the LLM kinds wva-saturation, aibrix-apa, aibrix-kpa and sla-planner on an
open-loop spike of Poisson arrivals of 256-token prompts and 64-token outputs, served token by token
by a small inline vLLM profile of a ~1B model on the same RTX 3080s), with every tick's snapshot and
decision recorded. The same policy then runs live, built as
:func:`~gpuscale.controller.build_controller` builds it for ``gpuscale run``: a real
:class:`~gpuscale.integrations.prometheus.PrometheusSource` asking Debian's Prometheus, which
scrapes a test exporter every 0.25 s, and a real
:class:`~gpuscale.controller.target.KubernetesTarget` on a :class:`~tests.controlplane.GpuCluster`
(3 nodes of 4 GPUs) whose Deployment asks one ``nvidia.com/gpu`` per pod. Its ManualClock is stepped
through the simulator's tick times. Every tick of the scenario is compared (the scenarios are as
short as the behaviour they show: 3 to 15 ticks), and on every tick these are equal in both worlds:
the time, each signal's value, the replica counts the policy saw (spec, Ready pods, pods that
exist), the decision (desired replicas or hold) and its reason, and the replicas the Deployment has
after the tick; for WVA also each pod's own values of both gauges, in order. Both worlds wrap the
policy in the same ``safety:`` block (from the scenario in one, from the controller's config in the
other).

**How the live world is given the simulator's inputs.** Before each tick the test waits (bounded
poll) until the Deployment's pods are all Ready and none is starting, pending or going; then the
exporter's per-pod series (``llm-0`` and ``llm-1``) are set so that the policy's own PromQL answers
exactly the value the simulator's policy saw, and the test waits until every sample in each signal's
window is the set value and Prometheus answers that value.
:class:`~tests.integrations.test_end_to_end.WallClockQueries` asks Prometheus at the real time and
stamps the snapshot with the controller's time. Values are exact, not approximate: a total is served
as (value, 0) -- ``sum`` adds 0 exactly; a per-pod mean or maximum as (value, value) --
``avg_over_time``, ``avg`` and ``max`` of equal numbers are that number; GPU memory utilization,
which PromQL computes as ``100 * used / (used + free)``, from a used/free pair searched so that IEEE
double arithmetic (Prometheus' and Python's alike) gives the value to the last bit. The scenarios'
pods are Ready 0.4 s after they are asked for, before the next tick of even a 1-s policy, so the
simulator's policy sees every pod Ready and the live one is shown the same.

**Per-pod values (WVA).** WVA judges each pod from its own KV-cache usage and waiting requests, and
counts the pods that report. For it the exporter serves one series per live pod of the Deployment,
named as the cluster names them (read before each tick), with the simulator's per-pod values given
in the simulator's order to the pods sorted by name (the order the live source reads them), and
removes the series of a pod that is gone; the controller selects the Deployment's own pods
(``pod_regex: wva-saturation-.*``), so it sees as many reporting pods as the simulator's policy,
each with its value. The signal's value, the mean over the pods, must be exact too: the LLM profile
has 1024 KV blocks, so every KV-cache usage is a binary fraction and every waiting count an integer,
and the mean of two such values is exact both the way Prometheus' ``avg`` computes it (an
incremental mean) and the way Python does (sum, then divide); the case keeps to two pods
(``max_replicas: 2``): one pod saturated by its queue asks for a second, and two pods loaded
unevenly are judged whether one of them can go.

The signals per kind, through the presets ``dcgm``, ``knative`` and ``vllm``:

==============  =================================================================  ===========
kind            signals (series)                                                   ticks
==============  =================================================================  ===========
static          none                                                               3 x 15 s
static-peak     none                                                               3 x 15 s
hpa             Pods ``gpu_util`` mean (``DCGM_FI_DEV_GPU_UTIL``)                  10 x 15 s
keda            ``queue_length`` total (``vllm:num_requests_waiting``)             11 x 5 s
knative         ``concurrency`` total (``queue_average_concurrent_requests``)      12 x 2 s
ray-serve       ``concurrency`` total (``queue_average_concurrent_requests``)      15 x 1 s
gpu-memory      ``gpu_memory_util`` mean (``DCGM_FI_DEV_FB_USED`` / ``_FREE``)     12 x 5 s
multi-signal    ``gpu_util`` mean and ``queue_length`` total                       10 x 5 s
predictive      ``request_rate`` total (override, below) and ``concurrency`` total 12 x 5 s
planner         ``request_rate`` total (override, below)                           12 x 5 s
learned         ``gpu_util`` mean (``DCGM_FI_DEV_GPU_UTIL``)                       12 x 5 s
wva-saturation  ``kv_cache_usage`` and ``requests_waiting`` mean, and each pod's   6 x 5 s
                own (``vllm:kv_cache_usage_perc``, ``vllm:num_requests_waiting``,
                one series per live pod)
aibrix-apa      ``kv_cache_usage`` mean (``vllm:kv_cache_usage_perc``)             7 x 5 s
aibrix-kpa      ``kv_cache_usage`` total (``vllm:kv_cache_usage_perc``)            10 x 1 s
sla-planner     ``request_rate``, ``prompt_tokens_rate``, ``generation_tokens_     10 x 1 s
                rate`` total, ``ttft_p50_ms``, ``itl_p50_ms`` (overrides, below),
                ``requests_running`` mean (``vllm:num_requests_running``)
==============  =================================================================  ===========

**What is not the built-in path, and why.**

* *The request rate* (predictive, planner, sla-planner) is read through a ``prometheus.queries``
  override of gpuscale's config, ``sum(avg_over_time(pod:vllm_request_success:rate[1s]))``: a
  per-pod rate recorded as a gauge, as a recording rule stores it. The built-in query, ``rate()`` of
  the success counter, extrapolates over the samples' scrape timestamps, so no counter the test can
  serve makes it answer the simulator's rate to the bit; the override is gpuscale's own mechanism,
  and everything after the query (the HTTP API, the parsing, the aggregation, the policy) is the
  same.
* *The token rates* (sla-planner) likewise: ``prompt_tokens_rate`` and ``generation_tokens_rate``
  through overrides on the recorded per-pod gauges ``pod:vllm_prompt_tokens:rate`` and
  ``pod:vllm_generation_tokens:rate`` (summed), for the same reason (``rate()`` of
  ``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total``).
* *The TTFT and ITL p50* (sla-planner) through overrides on recorded gauges,
  ``max(avg_over_time(pod:vllm_time_to_first_token_ms:p50[1s]))`` and the same of
  ``pod:vllm_inter_token_latency_ms:p50``: the built-in ``histogram_quantile`` over ``rate()`` of
  vLLM's buckets interpolates within a bucket of Prometheus' extrapolated rates, and the
  simulator's quantile is its own histogram's bucket value, so no served histogram answers it to the
  bit. The exporter gives every pod the simulator's service-wide p50, so the ``max`` over the pods
  is that value.
* *The AIBrix KPA's panic window* is its stable window (1 s), as for the Knative KPA: one exporter
  series cannot hold two different window means at once. Panic is still entered, held for a tick
  and left (the KV-cache total jumps by more than twice the ready pods' target).
* *The sla-planner's adjustment interval* is 1 s (Dynamo's is 180 s): its window is its interval,
  and a Prometheus window is wall time.
* *The KPA's panic window* is as long as its stable window (6 s, ``panic_window_percentage: 100``)
  and the simulator scrapes every 6 s: one exporter series cannot hold a 6-s mean and a different
  1-s mean at the same moment, and the simulator refuses a window shorter than its scrape interval.
  Panic mode is still entered and held (the values jump by more than the panic threshold).
* *Windows are 1 s* (6 s for the Knative KPA): a Prometheus window is wall time while the
  controller's clock is compressed, so every window must fill with the new value before the tick.
* *The HPA's Pods metric* carries per-pod samples in the simulator and only the aggregate live (the
  HPA then stands the mean for every Ready pod); with every pod Ready and reporting both compute the
  same proposal, which the comparison shows tick by tick.
* *The pods' names* differ between the worlds (the simulator's own names, the cluster's live ones):
  WVA joins a pod's two gauges by name within one world and counts the pods, and the comparison is
  of the per-pod values in order.
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
from gpuscale.policies.base import Aggregation, Metric, MetricsSnapshot, SignalSpec
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
KV_SERIES = "vllm:kv_cache_usage_perc"
"""vLLM's KV-cache usage per pod (0-1), a gauge (the ``vllm`` preset's series)."""
RUNNING_SERIES = "vllm:num_requests_running"
"""vLLM's running requests per pod, a gauge (the ``vllm`` preset's series)."""
PROMPT_RATE_SERIES = "pod:vllm_prompt_tokens:rate"
"""Per-pod prompt tokens/s recorded as a gauge, read by the override."""
GENERATION_RATE_SERIES = "pod:vllm_generation_tokens:rate"
"""Per-pod generated tokens/s recorded as a gauge, read by the override."""
TTFT_SERIES = "pod:vllm_time_to_first_token_ms:p50"
"""A recorded time-to-first-token p50 (ms), read by the override as the ``max`` over the pods."""
ITL_SERIES = "pod:vllm_inter_token_latency_ms:p50"
"""A recorded inter-token latency p50 (ms), read by the override as the ``max`` over the pods."""
RECORDED: dict[Metric, tuple[str, str]] = {
    Metric.REQUEST_RATE: (RATE_SERIES, "$agg"),
    Metric.PROMPT_TOKENS_RATE: (PROMPT_RATE_SERIES, "$agg"),
    Metric.GENERATION_TOKENS_RATE: (GENERATION_RATE_SERIES, "$agg"),
    Metric.TTFT_P50_MS: (TTFT_SERIES, "max"),
    Metric.ITL_P50_MS: (ITL_SERIES, "max"),
}
"""The metrics read through an override: each one's recorded series and how its pods combine
(``$agg``: the signal's own aggregation; ``max``: the highest pod, a quantile not being additive)."""
QUERIES: dict[str, Any] = {
    metric.value: {
        "query": f"{fn}(avg_over_time({series}{{$labels}}[$window]))",
        "age_query": f"max(timestamp({series}{{$labels}}))",
    }
    for metric, (series, fn) in RECORDED.items()
}
"""The controller config's ``prometheus.queries``: each metric of :data:`RECORDED` from its series."""
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


LLM_MODEL: dict[str, Any] = {
    "name": "llm-1b-rtx3080-vllm",
    "description": "A ~1B-parameter decoder behind vLLM on an RTX 3080, served token by token.",
    "source": "Shape assumed (16 layers, 8 KV heads, head_dim 64, BF16: 32,768 bytes per token); "
    "iteration time from the RTX 3080's 760 GB/s and 59.5 TFLOPS, not measured",
    "gpu": "rtx3080",
    "allocator": "preallocate",
    "preallocate_fraction": 0.9,
    "weights_gb": 2.0,
    "runtime_overhead_gb": 0.5,
    "llm": {
        "num_layers": 16,
        "num_kv_heads": 8,
        "head_dim": 64,
        "params_b": 1.0,
        "activation_reserve_gb": 0.5,
        # 1024 blocks (--num-gpu-blocks-override): a pod's KV-cache usage is used / 1024, a binary
        # fraction, so the per-pod values of the WVA case add and halve exactly in either world
        "num_gpu_blocks": 1024,
        "block_size": 16,
        "max_num_seqs": 32,
        "max_num_batched_tokens": 2048,
        "max_model_len": 2048,
        "beta0_ms": 3.0,
        "beta_prefill_ms_per_token": 0.07,
        "beta_decode_ms_per_token": 0.1,
        "beta_kv_ms_per_1k_tokens": 0.05,
    },
}
"""A small LLM profile that fits an RTX 3080 (10 GB): at most 32 requests of 256 + 64 tokens run on a
pod (640 of its 1024 KV blocks), the rest wait."""


def llm_scenario(
    name: str,
    duration_s: float,
    *,
    start_s: float,
    hold_s: float,
    peak_rps: float,
    base_rps: float = 2,
    fall_s: float = 0,
) -> dict[str, Any]:
    """:func:`scenario` for the token-level engine: Poisson arrivals of 256-token prompts and 64-token
    outputs at ``base_rps``, ``peak_rps`` from ``start_s`` for ``hold_s`` (then down over ``fall_s``),
    on :data:`LLM_MODEL`; pods Ready 0.4 s after they are asked for, on the same 12 RTX 3080s."""
    closed = scenario(name, duration_s, start_s=start_s, hold_s=hold_s)
    return {
        **closed,
        "slo": {"latency_ms": 5000},
        "workload": {
            "kind": "poisson",
            "rate": {
                "kind": "spike",
                "base_rps": base_rps,
                "peak_rps": peak_rps,
                "start_s": start_s,
                "hold_s": hold_s,
                "fall_s": fall_s,
            },
            "tokens": {"prompt": {"fixed": 256}, "output": {"fixed": 64}},
        },
        "model": LLM_MODEL,
    }


PLANNER_PROFILE: dict[str, Any] = {
    "prefill": [{"isl": 256, "ttft_ms": 21, "throughput_tokens_per_s": 12000}],
    "decode": [
        {"context_length": 288, "concurrency": c, "itl_ms": itl, "throughput_tokens_per_s": tps}
        for c, itl, tps in ((1, 3.1, 320), (8, 3.9, 2000), (16, 4.8, 3300), (32, 6.7, 4800))
    ],
}
"""The sla-planner's profile of one :data:`LLM_MODEL` replica (its iteration-time model at 256 + 32
tokens of context)."""


@dataclass(frozen=True)
class Case:
    """One kind's policy and scenario, and the reasons its simulator run must show (so the comparison
    covers the kind's behaviour, not only holds).

    ``per_pod``: the policy judges each pod (WVA): the exporter serves one series per live pod of the
    Deployment with the simulator's per-pod values, and the ticks compare those values too."""

    kind: str
    policy: dict[str, Any]
    scenario: dict[str, Any]
    shows: frozenset[str] = field(default_factory=frozenset)
    per_pod: bool = False


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
        shows("ScaleUpLimit", "ScaleDownStabilized", "TooFewReplicas"),
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
        shows("ScaleUpPanic", "PanicMode", "ScaleDown", "ScaleDownLimit"),
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
    Case(
        "wva-saturation",
        # a pod is saturated at KV >= 0.8 or 5 waiting; +1 when the non-saturated pods' mean spare KV
        # < 0.1 or spare queue < 3 (every pod saturated: always); -1 only with 2 non-saturated pods
        # whose load still leaves both spares on one pod fewer; 1..2 pods; 1-s gauges; 5-s ticks.
        # The spike: one pod with 32 waiting -> +1; two at KV 0.378 / 0.385 would leave one at 0.76
        # (spare 0.04 < 0.1) -> keep; at 0.269 / 0.237 -> -1; a lone pod is never removed
        {
            "kind": "wva-saturation",
            "min_replicas": 1,
            "max_replicas": 2,
            "window_s": 1,
            "sync_period_s": 5,
        },
        llm_scenario("wva-saturation", 35, start_s=8, hold_s=10, fall_s=10, peak_rps=45),
        shows("ScaleUp", "WithinTolerance", "ScaleDown"),
        per_pod=True,
    ),
    Case(
        "aibrix-apa",
        # ceil(current x mean KV / 0.2) outside [0.8, 1.1] x 0.2, at most 2x up and 1/2 down per tick,
        # 1..8 replicas; 1-s window; 5-s ticks
        {
            "kind": "aibrix-apa",
            "metric": "kv_cache_usage",
            "target_value": 0.2,
            "window_s": 1,
            "sync_period_s": 5,
            "min_replicas": 1,
            "max_replicas": 8,
        },
        llm_scenario("aibrix-apa", 40, start_s=8, hold_s=10, peak_rps=60),
        shows("ScaleUp", "ScaleDown", "ClampedToMin"),
    ),
    Case(
        "aibrix-kpa",
        # ceil(total KV / 0.2) within [ready / 2, 2 x ready]; panic when that is at least twice the
        # ready pods, held (no scale-down) until a 1-s stable window passes without it; stable = panic
        # window (one value per window, as in the Knative case); 1..8 replicas; 1-s ticks
        {
            "kind": "aibrix-kpa",
            "metric": "kv_cache_usage",
            "target_value": 0.2,
            "stable_window_s": 1,
            "panic_window_s": 1,
            "sync_period_s": 1,
            "min_replicas": 1,
            "max_replicas": 8,
        },
        llm_scenario("aibrix-kpa", 11, start_s=4, hold_s=4, peak_rps=30),
        shows("ScaleUpPanic", "PanicMode", "ScaleDown"),
    ),
    Case(
        "sla-planner",
        # the last interval's rate and token lengths (constant predictor), TTFT/ITL correction
        # factors against PLANNER_PROFILE, a 5-ms ITL target; 1..8 replicas; 1-s intervals
        {
            "kind": "sla-planner",
            "itl_ms": 5,
            "profile": PLANNER_PROFILE,
            "adjustment_interval_s": 1,
            "min_replicas": 1,
            "max_replicas": 8,
        },
        llm_scenario("sla-planner", 11, start_s=4, hold_s=4, base_rps=8, peak_rps=40),
        shows("ScaleUp", "Predicted", "ScaleDown"),
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
    per_pod: tuple[tuple[str, tuple[float | None, ...]], ...] = ()
    """A per-pod case's (:attr:`Case.per_pod`) per-pod values of each per-pod signal, in the order
    the policy reads them; empty for the other cases."""

    def row(self) -> str:
        seen = " ".join("-" if v is None else f"{v:.6g}" for _, v in self.signals) or "-"
        desired = "hold" if self.desired is None else str(self.desired)
        pods = "".join(
            " [" + " ".join("-" if v is None else f"{v:.6g}" for v in values) + "]"
            for _, values in self.per_pod
        )
        return (
            f"t={self.time_s:>4g} {seen:>18}{pods} {self.current}({self.ready}/{self.pods})->{self.replicas}"
            f" {desired:>4} {self.reason}"
        )


def unique_signals(case: Case) -> tuple[SignalSpec, ...]:
    """The signals the case's policy reads, each once, in its order."""
    return tuple(dict.fromkeys(registry.load_policy(case.policy, "test").signals))


def per_pod_specs(case: Case, specs: Sequence[SignalSpec]) -> tuple[SignalSpec, ...]:
    """The signals whose per-pod values the case compares (and serves per live pod)."""
    if not case.per_pod:
        return ()
    return tuple(
        s
        for s in specs
        if s.metric in promql.PER_POD_SAMPLE_METRICS and s.aggregation is Aggregation.POD_MEAN
    )


def per_pod_values(
    snap: MetricsSnapshot, specs: Sequence[SignalSpec]
) -> tuple[tuple[str, tuple[float | None, ...]], ...]:
    """Each spec's per-pod values in ``snap``, in the snapshot's order."""
    return tuple((spec.key, tuple(p.value for p in snap.get(spec).per_pod)) for spec in specs)


def simulated(case: Case, specs: Sequence[SignalSpec]) -> tuple[list[Tick], Timeline]:
    """The simulator's ticks of the case's policy on its scenario, and the timeline."""
    recording = RecordingPolicy(registry.load_policy(case.policy, "test"))
    result = simulate(scenario_from_dict(case.scenario, "test"), recording)
    replicas = result.timeline.column("desired")  # the target's spec after each tick
    assert len(recording.seen) == len(replicas)
    pod_specs = per_pod_specs(case, specs)
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
            per_pod_values(snap, pod_specs),
        )
        for (snap, decision), after in zip(recording.seen, replicas, strict=True)
    ]
    return ticks, result.timeline


# --------------------------------------------------------------------------------------------------
# serving the simulator's values through Prometheus
# --------------------------------------------------------------------------------------------------


class TwoWorldsExporter(Exporter):
    """The test exporter with more per-pod gauges: Knative queue-proxy's average concurrency, vLLM's
    KV-cache usage and running requests, and the recorded series of :data:`RECORDED`; :attr:`gauges`
    maps each series a case replays to its gauge. Besides ``llm-0`` and ``llm-1`` it serves series
    of other pods (:meth:`serve`), which :meth:`forget` removes again."""

    def __init__(self) -> None:
        super().__init__()
        labels = ["namespace", "pod"]
        self.concurrency = Gauge(CONCURRENCY_SERIES, "Knative concurrency", labels, registry=self.registry)
        self.kv_cache = Gauge(KV_SERIES, "vLLM KV-cache usage", labels, registry=self.registry)
        self.vllm_running = Gauge(RUNNING_SERIES, "vLLM running", labels, registry=self.registry)
        recorded = {
            series: Gauge(series, f"{metric.value} (recorded)", labels, registry=self.registry)
            for metric, (series, _) in RECORDED.items()
        }
        self.request_rate = recorded[RATE_SERIES]
        self.gauges: dict[str, Gauge] = {
            "vllm:num_requests_waiting": self.vllm_waiting,
            "DCGM_FI_DEV_GPU_UTIL": self.gpu_util,
            "DCGM_FI_DEV_FB_USED": self.fb_used,
            "DCGM_FI_DEV_FB_FREE": self.fb_free,
            CONCURRENCY_SERIES: self.concurrency,
            KV_SERIES: self.kv_cache,
            RUNNING_SERIES: self.vllm_running,
            **recorded,
        }
        for gauge in (self.concurrency, self.kv_cache, self.vllm_running, *recorded.values()):
            for pod in PODS:
                gauge.labels(NAMESPACE, pod).set(0)
        self.others: dict[str, set[str]] = {}
        """Series name -> the pods other than ``llm-0``/``llm-1`` it is served for."""

    def serve(self, name: str, per_pod: Mapping[str, float]) -> None:
        """Set ``name`` for each pod of ``per_pod``; other pods' series of ``name`` served before (not
        ``llm-0``/``llm-1``) are removed, so that Prometheus marks them stale."""
        gauge = self.gauges[name]
        for pod, value in per_pod.items():
            gauge.labels(NAMESPACE, pod).set(value)
        others = set(per_pod) - set(PODS)
        for pod in self.others.get(name, set()) - others:
            gauge.remove(NAMESPACE, pod)
        self.others[name] = others

    def forget(self) -> None:
        """Remove every series of pods other than ``llm-0``/``llm-1``."""
        for name in list(self.others):
            self.serve(name, {})


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


def replay(spec: SignalSpec, value: float) -> dict[str, dict[str, float]]:
    """The values per pod (``llm-0``, ``llm-1``) of each series behind ``spec`` for which Prometheus
    answers the signal's query with exactly ``value``."""
    if spec.metric is Metric.GPU_MEMORY_UTIL:
        assert spec.aggregation is not Aggregation.TOTAL, spec
        used, free = framebuffer(value)
        return {
            "DCGM_FI_DEV_FB_USED": dict.fromkeys(PODS, used),
            "DCGM_FI_DEV_FB_FREE": dict.fromkeys(PODS, free),
        }
    if spec.metric in RECORDED:
        series, fn = RECORDED[spec.metric]
        total = fn == "$agg" and spec.aggregation is Aggregation.TOTAL
    else:
        source = promql.preset_source(spec.metric, PRESETS)
        assert source is not None and not source.counter, spec
        series, total = source.series, spec.aggregation is Aggregation.TOTAL
    return {series: dict(zip(PODS, (value, 0.0) if total else (value, value), strict=True))}


def replay_per_pod(
    spec: SignalSpec, values: Sequence[float | None], pods: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The series behind a per-pod gauge ``spec`` with the simulator's per-pod ``values`` given, in
    their order, to the live ``pods`` in theirs (by name: the order the live source reads them)."""
    source = promql.preset_source(spec.metric, PRESETS)
    assert source is not None and not source.counter and spec.metric in promql.PER_POD_SAMPLE_METRICS
    assert all(v is not None for v in values) and len(values) == len(pods), (values, pods)
    return {source.series: {pod: float(v) for pod, v in zip(pods, values, strict=True) if v is not None}}


def settle(
    prom: Prometheus,
    exporter: TwoWorldsExporter,
    source: PrometheusSource,
    wanted: Mapping[SignalSpec, float],
    per_pod: Mapping[SignalSpec, dict[str, dict[str, float]]] | None = None,
    pod_regex: str = "llm-.*",
) -> None:
    """Serve ``wanted`` (``per_pod``: a signal's series per live pod instead, from
    :func:`replay_per_pod`); wait until every sample in each signal's window is the served value,
    for exactly the pods served, and each signal's own query answers its value exactly."""
    series: dict[str, tuple[dict[str, float], float]] = {}  # name -> values per pod, longest window
    for spec, value in wanted.items():
        served = (per_pod or {}).get(spec) or replay(spec, value)
        for name, values in served.items():
            known = series.get(name)
            assert known is None or known[0] == values, f"{name}: two signals want {known} and {values}"
            series[name] = (values, max(spec.window_s, known[1] if known else 0.0))
    for name, (values, _) in series.items():
        exporter.serve(name, values)
    queries = {spec: source.queries(spec)[0] for spec in wanted}
    wall = SystemClock()
    labels = promql.matchers(NAMESPACE, pod_regex)

    def settled() -> bool:
        for name, (values, window_s) in series.items():
            selector = f"{name}{{{labels}}}[{promql.window(window_s)}]"
            for fn in ("min_over_time", "max_over_time"):
                got = {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(f"{fn}({selector})")}
                if got != values:
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


def live_pods(cluster: GpuCluster, name: str) -> list[str]:
    """The names of the Deployment's pods (none going), sorted as the live source orders its pods."""
    pods = cluster.pods(NAMESPACE, f"app={name}")
    return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))


class SnapshotQueries(WallClockQueries):
    """:class:`WallClockQueries` keeping the last snapshot it gave (the per-pod values the policy read)."""

    last: MetricsSnapshot | None = None

    def snapshot(self, now: float, specs: Sequence[SignalSpec], counts: ReplicaCounts) -> MetricsSnapshot:
        self.last = super().snapshot(now, specs, counts)
        return self.last


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
    pod_specs = per_pod_specs(case, specs)
    assert bool(pod_specs) == case.per_pod, pod_specs
    # a per-pod case: every pod reports every per-pod signal
    assert all(len(v) == t.current and None not in v for t in sim for _, v in t.per_pod), sim

    name = case.kind
    # the exporter's pods llm-0 and llm-1; a per-pod case: the Deployment's own pods
    pod_regex = f"{promql.regex_escape(name)}-.*" if case.per_pod else "llm-.*"
    cluster.create_deployment(name, NAMESPACE, sim[0].current, gpus=1, image=VLLM)
    try:
        config = {
            "prometheus": {
                "url": prom.url,
                "presets": list(PRESETS),
                "selector": {"pod_regex": pod_regex},
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
        queries = SnapshotQueries(source)
        ctl.metrics = queries

        live: list[Tick] = []
        for expected in sim:
            clock.advance(expected.time_s - clock.now())
            wanted = {spec: value for spec, (_, value) in zip(specs, expected.signals, strict=True)}
            converge(target)  # first: a per-pod case serves the pods that are there
            pods = live_pods(cluster, name) if case.per_pod else []
            per_pod = {
                spec: replay_per_pod(spec, values, pods)
                for spec, (_, values) in zip(pod_specs, expected.per_pod, strict=True)
            }
            settle(
                prom, exporter, source, {s: v for s, v in wanted.items() if v is not None}, per_pod, pod_regex
            )
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
                    per_pod_values(queries.last, pod_specs) if queries.last is not None else (),
                )
            )
            assert cluster.deployment_replicas(name, NAMESPACE) == live[-1].replicas
        print(f"\n{case.kind}: simulator | live")
        print("\n".join(f"{s.row()}   | {t.row()}" for s, t in zip(sim, live, strict=True)))
        assert live == sim
    finally:
        exporter.forget()
        scale_away(cluster, name)
