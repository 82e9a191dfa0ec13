"""The simulator's speed and memory benchmark (printed by ``gpuscale bench``; never asserted).

* Throughput: simulated requests per wall-clock second on one core, for one hour at 2,000 requests/s
  on 32 GPU pods with dynamic batching, least-outstanding routing and a 15-s control loop.
* The same with the node layer on (a Cluster Autoscaler scanning its node group every 10 s), as a
  ratio to the run without it in the same process.
* The SimPy reference model on a slice of the same scenario, and the ratio between the two.
* Compilation: the kernel's cold compile (in a fresh process with an empty cache) and the cached load.
* Peak memory of a 24-hour run at 2,000 requests/s (in a fresh process, ``ru_maxrss``).
* LLM serving, token by token: generated tokens and requests per wall-clock second for one hour of
  32 vLLM pods of Llama-3-8B at the Azure conversation trace's token mix, at a rate that keeps the
  fleet near saturation; peak memory of that hour and of a quarter of it (fresh processes), which
  should not differ: the engine's memory does not grow with requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuscale.config.scenario import Scenario, scenario_from_dict
from gpuscale.policies.base import StaticPolicy
from gpuscale.sim.engine import serving_params, simulate
from gpuscale.sim.reference import simulate_reference

FULL_FEATURED = {"max_queue_delay_ms": 1.0, "cpu_ms_per_request": 0.5}
"""The profile as shipped: a 1-ms batching window and 0.5 ms of CPU work per request (two more events
per request: the CPU completion and the batcher's timer)."""
BAR_CONFIG = {"max_queue_delay_ms": 0.0, "cpu_ms_per_request": 0.0}
"""Dynamic batching as Triton does with no queue delay (a batch takes whatever waits when the GPU
frees), lognormal batch-time jitter, no CPU stage: the configuration the speed bar names."""


def bench_scenario(
    duration_s: float = 3600.0,
    rate_rps: float = 2000.0,
    pods: int = 32,
    model: dict[str, float] | None = None,
    node_layer: bool = False,
) -> Scenario:
    nodes = (pods + 7) // 8
    cluster: dict[str, Any] = {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 8, "nodes": nodes}]}
    if node_layer:
        cluster["pools"][0]["max_nodes"] = 2 * nodes
        cluster["node_autoscaler"] = {"kind": "cluster-autoscaler"}
    return scenario_from_dict(
        {
            "name": "bench",
            "description": "speed benchmark",
            "duration_s": duration_s,
            "seed": 7,
            "slo": {"latency_ms": 50},
            "workload": {"kind": "poisson", "rate_rps": rate_rps},
            "model": {"profile": "resnet50-a100-triton", **(BAR_CONFIG if model is None else model)},
            "serving": {"routing": "least-outstanding", "timeout_s": 10},
            "cluster": cluster,
            "control": {"interval_s": 15, "initial_replicas": pods, "max_pods": pods + 8},
            "telemetry": {"scrape_interval_s": 5},
        },
        "bench",
    )


LLM_RATE_MULTIPLIER = 40.0
"""The Azure conversation trace (about 5.5 requests/s) at 40 times its rate, about 220 requests/s:
32 pods of ``llama3-8b-h100-vllm`` near saturation (KV cache and running batch mostly full)."""


def llm_bench_scenario(
    duration_s: float = 3500.0, pods: int = 32, multiplier: float = LLM_RATE_MULTIPLIER
) -> Scenario:
    """A fixed fleet of vLLM pods serving the Azure conversation trace with its own token lengths."""
    return scenario_from_dict(
        {
            "name": "bench-llm",
            "description": "LLM speed benchmark",
            "duration_s": duration_s,
            "seed": 7,
            "slo": {"latency_ms": 60000, "ttft_ms": 2000, "itl_ms": 100},
            "workload": {
                "kind": "trace",
                "path": "builtin:azure-llm-2023-conv",
                "rate_multiplier": multiplier,
            },
            "model": {"profile": "llama3-8b-h100-vllm"},
            "serving": {"routing": "least-outstanding", "queue_capacity": 256},
            "cluster": {"pools": [{"gpu": "h100-80gb", "gpus_per_node": 8, "nodes": (pods + 7) // 8}]},
            "control": {"interval_s": 15, "initial_replicas": pods, "max_pods": pods + 8},
            "telemetry": {"scrape_interval_s": 5},
        },
        "bench-llm",
    )


@dataclass(frozen=True)
class LlmFigures:
    duration_s: float
    pods: int
    requests: int
    generated_tokens: int
    wall_s: float
    mean_kv_cache_usage: float | None
    preemptions: int
    peak_rss_mb: float | None
    peak_rss_mb_quarter: float | None

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s


def llm_run(duration_s: float = 3500.0, pods: int = 32) -> tuple[Any, float]:
    sc = llm_bench_scenario(duration_s, pods)
    result, wall = _timed(lambda: simulate(sc, StaticPolicy(pods)))
    return result.summary, wall


_LLM_RSS = """
import json, resource
from gpuscale.experiments.bench import llm_run
llm_run(10.0, 2)
s, wall = llm_run({duration}, {pods})
print(json.dumps({{"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_llm_bench(*, duration_s: float = 3500.0, pods: int = 32, memory: bool = True) -> LlmFigures:
    """The token-level engine's speed (in this process, compile excluded) and peak memory (fresh
    processes, the whole run and a quarter of it)."""
    llm_run(10.0, 2)
    summary, wall = llm_run(duration_s, pods)
    rss = quarter = None
    if memory:
        rss = float(_subprocess_figures(_LLM_RSS.format(duration=duration_s, pods=pods))["rss_mb"])
        quarter = float(_subprocess_figures(_LLM_RSS.format(duration=duration_s / 4, pods=pods))["rss_mb"])
    return LlmFigures(
        duration_s,
        pods,
        summary.requests,
        summary.generated_tokens,
        wall,
        summary.mean_kv_cache_usage,
        summary.preemptions,
        rss,
        quarter,
    )


@dataclass(frozen=True)
class BenchFigures:
    duration_s: float
    requests: int
    wall_s: float
    requests_per_s: float
    full_requests_per_s: float
    node_layer_requests_per_s: float
    reference_requests: int
    reference_wall_s: float
    reference_requests_per_s: float
    ratio: float
    first_call_s: float
    cold_compile_s: float | None
    peak_rss_mb_24h: float | None
    requests_24h: int | None
    wall_s_24h: float | None


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def engine_run(
    duration_s: float,
    rate_rps: float,
    pods: int,
    model: dict[str, float] | None = None,
    node_layer: bool = False,
) -> tuple[int, float]:
    sc = bench_scenario(duration_s, rate_rps, pods, model, node_layer)
    result, wall = _timed(lambda: simulate(sc, StaticPolicy(pods)))
    return result.summary.requests, wall


def reference_run(duration_s: float, rate_rps: float, pods: int) -> tuple[int, float]:
    """The SimPy reference on the same serving setup and arrival rate."""
    sc = bench_scenario(duration_s, rate_rps, pods)
    params = serving_params(sc)
    rng = np.random.default_rng(7)
    n = int(duration_s * rate_rps)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, n))
    result, wall = _timed(
        lambda: simulate_reference(params, pods, arrivals, float(arrivals[-1]) + 1.0, seed=7)
    )
    return int(result.seq.size + result.in_flight), wall


def _subprocess_figures(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


_COLD = """
import json, time
t = time.perf_counter()
from gpuscale.experiments.bench import engine_run
engine_run(1.0, 100.0, 2)
print(json.dumps({"s": time.perf_counter() - t}))
"""

_LONG = """
import json, resource, time
from gpuscale.experiments.bench import engine_run
engine_run(1.0, 100.0, 2)
t = time.perf_counter()
n, wall = engine_run({duration}, {rate}, {pods})
print(json.dumps({{"requests": n, "wall_s": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_bench(
    *,
    duration_s: float = 3600.0,
    rate_rps: float = 2000.0,
    pods: int = 32,
    reference_s: float = 60.0,
    long_s: float | None = 86400.0,
    cold_compile: bool = True,
) -> BenchFigures:
    """Measure everything the benchmark reports (in this process and two fresh ones)."""
    _, first = _timed(lambda: engine_run(1.0, 100.0, 2))
    n, wall = engine_run(duration_s, rate_rps, pods)
    fn, fwall = engine_run(duration_s, rate_rps, pods, FULL_FEATURED)
    nn, nwall = engine_run(duration_s, rate_rps, pods, node_layer=True)
    rn, rwall = reference_run(reference_s, rate_rps, pods)
    cold = None
    if cold_compile:
        with tempfile.TemporaryDirectory() as cache:
            cold = float(_subprocess_figures(_COLD, {"NUMBA_CACHE_DIR": cache})["s"])
    rss = n24 = w24 = None
    if long_s:
        figs = _subprocess_figures(_LONG.format(duration=long_s, rate=rate_rps, pods=pods))
        rss, n24, w24 = float(figs["rss_mb"]), int(figs["requests"]), float(figs["wall_s"])
    rps = n / wall
    rrps = rn / rwall
    return BenchFigures(
        duration_s,
        n,
        wall,
        rps,
        fn / fwall,
        nn / nwall,
        rn,
        rwall,
        rrps,
        rps / rrps,
        first,
        cold,
        rss,
        n24,
        w24,
    )
