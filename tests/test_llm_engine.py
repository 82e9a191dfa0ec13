"""The token-level engine inside a whole run: tokens matter, conservation, determinism, the metrics
policies see, and the errors a user gets (docs/llm.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from gpuscale._core.errors import ConfigError
from gpuscale.config.scenario import Scenario, scenario_from_dict
from gpuscale.policies.base import Aggregation, Metric, SignalSpec, StaticPolicy
from gpuscale.policies.registry import load_policy
from gpuscale.sim.engine import Simulation, simulate
from gpuscale.sim.llm_plane import LlmRecords
from gpuscale.sim.results import result_files

BASE: dict[str, Any] = {
    "name": "llm-test",
    "duration_s": 300,
    "seed": 3,
    "slo": {"latency_ms": 60000, "ttft_ms": 1000, "itl_ms": 80},
    "workload": {
        "kind": "poisson",
        "rate_rps": 12,
        "tokens": {
            "prompt": {"lognormal": {"mean": 1000, "cv": 1.0, "max": 6000}},
            "output": {"lognormal": {"mean": 200, "cv": 1.0, "max": 1500}},
        },
    },
    "model": {"profile": "llama3-8b-h100-vllm"},
    "serving": {"queue_capacity": 128},
    "cluster": {"pools": [{"gpu": "h100-80gb", "gpus_per_node": 8, "nodes": 1}]},
    "control": {"initial_replicas": 2},
}


def _scenario(**changes: Any) -> Scenario:
    data = {**BASE, **changes}
    return scenario_from_dict(data, "llm-test")


def test_token_counts_change_the_results() -> None:
    """The same arrivals with other prompt/output lengths give other latencies and token totals (the
    lengths were once parsed and ignored)."""
    long = simulate(_scenario(), StaticPolicy(2)).summary
    tokens = {"prompt": {"fixed": 1}, "output": {"fixed": 1}}
    short = simulate(_scenario(workload={**BASE["workload"], "tokens": tokens}), StaticPolicy(2)).summary
    assert long.requests == short.requests
    assert short.generated_tokens == short.completed  # one token each
    assert long.generated_tokens > 100 * long.completed
    assert long.latency_p50_ms is not None and short.latency_p50_ms is not None
    assert long.latency_p50_ms > 20 * short.latency_p50_ms
    assert long.prompt_tokens > 500 * long.completed


def test_longer_prompts_cost_prefill_and_longer_outputs_cost_decode() -> None:
    def run(prompt: int, output: int) -> Any:
        tokens = {"prompt": {"fixed": prompt}, "output": {"fixed": output}}
        return simulate(_scenario(workload={**BASE["workload"], "tokens": tokens}), StaticPolicy(2)).summary

    base, long_prompt, long_output = run(500, 100), run(4000, 100), run(500, 800)
    assert long_prompt.ttft_p50_ms is not None and base.ttft_p50_ms is not None
    assert long_prompt.ttft_p50_ms > 3 * base.ttft_p50_ms
    assert long_output.generated_tokens > 4 * base.generated_tokens  # 8x the tokens asked; saturates
    assert long_output.latency_p50_ms is not None and base.latency_p50_ms is not None
    assert long_output.latency_p50_ms > 5 * base.latency_p50_ms


def test_conservation_and_littles_law() -> None:
    s = simulate(_scenario(duration_s=600), StaticPolicy(2)).summary
    assert s.requests == s.completed + s.rejected + s.timed_out + s.dropped + s.in_flight
    assert s.completed > 1000
    assert s.littles_law_l == pytest.approx(s.littles_law_lambda_w, rel=0.02)
    assert s.ttft_p50_ms is not None and s.itl_p50_ms is not None
    assert s.ttft_p50_ms <= (s.latency_p50_ms or 0.0)
    assert 0.0 < s.slo_attainment <= 1.0
    assert s.mean_kv_cache_usage is not None and 0.0 < s.mean_kv_cache_usage < 1.0


def test_same_seed_same_bytes() -> None:
    policy = load_policy(
        {
            "kind": "hpa",
            "max_replicas": 6,
            "metrics": [
                {
                    "type": "Pods",
                    "metric": "kv_cache_usage",
                    "window_s": 60,
                    "target": {"type": "AverageValue", "average_value": 0.3},
                }
            ],
        },
        "test",
    )
    a = result_files(simulate(_scenario(), policy))
    b = result_files(simulate(_scenario(), policy))
    assert a == b
    c = result_files(simulate(_scenario(seed=4), policy))
    assert c["summary.json"] != a["summary.json"]


def test_a_policy_sees_what_a_vllm_pod_exports() -> None:
    specs = [
        SignalSpec(Metric.KV_CACHE_USAGE, 60),
        SignalSpec(Metric.REQUESTS_RUNNING, 60),
        SignalSpec(Metric.REQUESTS_WAITING, 60, Aggregation.TOTAL),
        SignalSpec(Metric.GENERATION_TOKENS_RATE, 60, Aggregation.TOTAL),
        SignalSpec(Metric.PROMPT_TOKENS_RATE, 60, Aggregation.TOTAL),
        SignalSpec(Metric.TTFT_P95_MS, 60),
        SignalSpec(Metric.ITL_P95_MS, 60),
        SignalSpec(Metric.SM_ACTIVE, 60),
        SignalSpec(Metric.DRAM_ACTIVE, 60),
        SignalSpec(Metric.SM_OCCUPANCY, 60),
        SignalSpec(Metric.GPU_UTIL, 60),
        SignalSpec(Metric.GPU_MEMORY_UTIL, 60),
    ]
    sim = Simulation(_scenario(), StaticPolicy(2))
    for _ in range(12):  # three minutes of 15-s ticks
        sim.step_to_next_tick()
    snap = sim.source.snapshot(sim.now, specs, sim.target.counts(sim.now))
    v = {spec.metric: snap.value(spec) for spec in specs}
    assert all(x is not None for x in v.values()), v
    assert 0.0 < v[Metric.KV_CACHE_USAGE] < 1.0  # type: ignore[operator]
    assert 0.0 < v[Metric.REQUESTS_RUNNING] <= 256  # type: ignore[operator]
    # about 12 requests/s of ~200 output tokens and ~1,000 prompt tokens
    assert 1200 < v[Metric.GENERATION_TOKENS_RATE] < 4000  # type: ignore[operator]
    assert 5000 < v[Metric.PROMPT_TOKENS_RATE] < 25000  # type: ignore[operator]
    assert v[Metric.ITL_P95_MS] < v[Metric.TTFT_P95_MS] * 10  # type: ignore[operator]
    for m in (Metric.SM_ACTIVE, Metric.DRAM_ACTIVE, Metric.SM_OCCUPANCY):
        assert 0.0 < v[m] <= 1.0  # type: ignore[operator]
    # decode reads the weights every iteration: DRAM is busier than the tensor cores (seed 004)
    assert v[Metric.DRAM_ACTIVE] > v[Metric.SM_OCCUPANCY]  # type: ignore[operator]
    # vLLM preallocates: memory is flat, whatever the load; GPU "utilization" is ~100 % while serving
    assert v[Metric.GPU_MEMORY_UTIL] == pytest.approx(90.0)
    assert v[Metric.GPU_UTIL] > 90.0  # type: ignore[operator]


def test_timeline_carries_the_llm_columns() -> None:
    result = simulate(_scenario(), StaticPolicy(2))
    kv = result.timeline.column("kv_cache_usage")
    itl = result.timeline.column("itl_p95_ms")
    assert np.nanmax(kv) > 0.0 and np.nanmax(kv) < 1.0
    assert np.isfinite(itl[5:]).all()


def test_request_level_scenarios_leave_the_llm_figures_empty() -> None:
    sc = scenario_from_dict(
        {
            "name": "plain",
            "duration_s": 60,
            "slo": {"latency_ms": 50},
            "workload": {"kind": "poisson", "rate_rps": 50},
            "model": {"profile": "resnet50-a100-triton"},
            "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]},
        },
        "plain",
    )
    result = simulate(sc, StaticPolicy(1))
    s = result.summary
    assert s.generated_tokens == 0 and s.ttft_p95_ms is None and s.mean_kv_cache_usage is None
    assert np.isnan(result.timeline.column("kv_cache_usage")).all()


def test_an_llm_signal_on_a_request_level_scenario_is_refused() -> None:
    sc = scenario_from_dict(
        {
            "name": "plain",
            "duration_s": 60,
            "slo": {"latency_ms": 50},
            "workload": {"kind": "poisson", "rate_rps": 50},
            "model": {"profile": "resnet50-a100-triton"},
            "cluster": {"pools": [{"gpu": "a100-80gb", "gpus_per_node": 2, "nodes": 1}]},
        },
        "plain",
    )
    policy = load_policy(
        {
            "kind": "hpa",
            "max_replicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "metric": "kv_cache_usage",
                    "target": {"type": "AverageValue", "average_value": 0.5},
                }
            ],
        },
        "test",
    )
    with pytest.raises(ConfigError) as info:
        simulate(sc, policy)
    assert info.value.key == "model.llm" and "kv_cache_usage" in str(info.value)


def test_records_carry_ttft_and_preemptions() -> None:
    result = simulate(_scenario(duration_s=120), StaticPolicy(2), record=True)
    rec = result.records
    assert isinstance(rec, LlmRecords)
    done = rec.outcome == 0
    assert done.sum() == result.summary.completed
    ttft = rec.ttft_s[done]
    assert np.all(ttft > 0) and np.all(ttft <= rec.latency_s[done] + 1e-12)
    assert math.isfinite(float(np.median(ttft)))


def test_an_llm_block_override_changes_only_the_keys_it_names() -> None:
    sc = _scenario(model={"profile": "llama3-8b-h100-vllm", "llm": {"max_num_batched_tokens": 2048}})
    assert sc.model.llm is not None
    assert sc.model.llm.max_num_batched_tokens == 2048
    assert sc.model.llm.num_layers == 32 and sc.model.llm.max_model_len == 8192


CHAT: dict[str, Any] = {
    "kind": "closed-loop",
    "users": 60,
    "think_time_s": [2, 8],
    "tokens": BASE["workload"]["tokens"],
}


def test_closed_loop_chat_users() -> None:
    """Chat users served token by token (docs/llm.md, Closed-loop users): requests are conserved,
    Little's law holds, the same seed gives the same bytes, and more users bring more load."""
    few = simulate(_scenario(duration_s=600, workload=CHAT), StaticPolicy(2))
    s = few.summary
    assert s.requests == s.completed + s.rejected + s.timed_out + s.dropped + s.in_flight
    assert s.completed > 1000
    assert s.in_flight <= 60  # one request per user at most
    assert s.littles_law_l == pytest.approx(s.littles_law_lambda_w, rel=0.02)
    # each user cycles through one request and one think time (mean 5 s): L + rate x 5 s = 60
    rate = s.requests / 600
    assert s.littles_law_l + rate * 5.0 == pytest.approx(60, rel=0.05)
    assert s.ttft_p50_ms is not None and s.generated_tokens > 150 * s.completed
    again = simulate(_scenario(duration_s=600, workload=CHAT), StaticPolicy(2))
    assert result_files(again) == result_files(few)
    other = simulate(_scenario(duration_s=600, workload=CHAT, seed=4), StaticPolicy(2))
    assert result_files(other)["summary.json"] != result_files(few)["summary.json"]
    many = simulate(_scenario(duration_s=600, workload={**CHAT, "users": 240}), StaticPolicy(2)).summary
    assert many.requests > 2 * s.requests and many.generated_tokens > 2 * s.generated_tokens  # 4x the users
    assert many.mean_kv_cache_usage is not None and s.mean_kv_cache_usage is not None
    assert many.mean_kv_cache_usage > 2 * s.mean_kv_cache_usage


def test_closed_loop_users_follow_their_schedule() -> None:
    """A users shape changes the count as for the request-level engine: a step from 20 to 120 users at
    300 s and back to 20 at 600 s."""
    users = {"kind": "piecewise-linear", "points": [[0, 20], [300, 20], [300, 120], [600, 120], [600, 20]]}
    sc = _scenario(duration_s=900, workload={**CHAT, "users": users})
    result = simulate(sc, StaticPolicy(2), record=True)
    rec = result.records
    assert isinstance(rec, LlmRecords)
    arrival = rec.arrival_s
    per_window = [int(((arrival >= a) & (arrival < a + 250)).sum()) for a in (40.0, 340.0, 640.0)]
    assert per_window[1] > 4 * per_window[0]
    assert per_window[2] == pytest.approx(per_window[0], rel=0.3)
