"""How a user describes an LLM service and its token mix: the ``llm:`` block of a profile, the
``tokens:`` block of a workload, the token SLO targets, and the clear errors on bad input."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from gpuscale._core.errors import ConfigError
from gpuscale.config.loading import validate
from gpuscale.config.profiles import BUILTIN_PROFILES, GPU_TYPES, LlmEngineConfig, ModelProfile
from gpuscale.config.workload import TokenDist, WorkloadConfig
from gpuscale.experiments.catalog import builtin_scenario, scenario_names
from gpuscale.experiments.suite import DEFAULT_SCENARIOS
from gpuscale.sim.llm_serving import LlmParams, llm_params
from gpuscale.sim.workload import (
    TOKEN_BLOCK,
    build_workload,
    load_trace,
    sample_token_lengths,
    token_source,
)
from tests.conftest import make_scenario

WORKLOAD: TypeAdapter[Any] = TypeAdapter(WorkloadConfig)

LLM_SCENARIOS = (
    "llm-azure-conv",
    "llm-prefill-heavy",
    "llm-decode-heavy",
    "llm-diurnal-chat",
    "llm-flash-crowd-long-prompts",
)

SMALL_LLM: dict[str, Any] = {
    "name": "small-llm",
    "gpu": "a10g",
    "allocator": "preallocate",
    "preallocate_fraction": 0.9,
    "weights_gb": 10.0,
    "runtime_overhead_gb": 1.0,
    "llm": {
        "num_layers": 24,
        "num_kv_heads": 4,
        "head_dim": 64,
        "params_b": 5.0,
        "activation_reserve_gb": 2.0,
        "max_model_len": 4096,
        "beta0_ms": 5.0,
        "beta_prefill_ms_per_token": 0.03,
        "beta_decode_ms_per_token": 0.1,
        "beta_kv_ms_per_1k_tokens": 0.05,
    },
}


def _llm_scenario(**overrides: Any) -> Any:
    """A small scenario on the Llama-3-8B vLLM profile with a token mix; overrides replace sections."""
    data: dict[str, Any] = {
        "slo": {"latency_ms": 30000, "ttft_ms": 1000, "itl_ms": 80},
        "workload": {
            "kind": "poisson",
            "rate_rps": 5,
            "tokens": {"prompt": {"fixed": 512}, "output": {"lognormal": {"mean": 200, "cv": 1.0}}},
        },
        "model": {"profile": "llama3-8b-h100-vllm"},
        "cluster": {"pools": [{"gpu": "h100-80gb", "gpus_per_node": 8, "nodes": 1}]},
    }
    data.update(overrides)
    return make_scenario(**data)


def _refused(excinfo: pytest.ExceptionInfo[ConfigError], *needles: str) -> str:
    text = str(excinfo.value)
    for needle in needles:
        assert needle in text, (needle, text)
    return text


# ---------------------------------------------------------------------------------------------------------
# The llm: block of a profile
# ---------------------------------------------------------------------------------------------------------


def test_kv_blocks_follow_the_memory_formula_on_a_hand_computed_example() -> None:
    profile = ModelProfile.model_validate(SMALL_LLM)
    assert profile.llm is not None
    # 2 x 24 layers x 4 KV heads x 64 x 2 bytes = 24,576 bytes per token; a block of 16 is 393,216 B.
    assert profile.llm.kv_bytes == 24_576
    # 0.9 x 24 GB - 10 - 1 - 2 = 8.6 GB; 8.6e9 / 393,216 = 21,870.9 -> 21,870 blocks.
    assert profile.kv_cache_blocks() == 21_870
    assert 21_870 * 393_216 <= 8.6e9 < 21_871 * 393_216
    # kv_bytes_per_token given outright gives the same cache.
    direct = {**SMALL_LLM, "llm": {**_without(SMALL_LLM["llm"], "num_layers", "num_kv_heads", "head_dim")}}
    direct["llm"]["kv_bytes_per_token"] = 24_576
    assert ModelProfile.model_validate(direct).kv_cache_blocks() == 21_870
    # An FP8 cache holds twice the tokens.
    fp8 = {**SMALL_LLM, "llm": {**SMALL_LLM["llm"], "kv_dtype_bytes": 1}}
    assert ModelProfile.model_validate(fp8).kv_cache_blocks() == math.floor(8.6e9 / (16 * 12_288))


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def test_num_gpu_blocks_overrides_the_formula_and_peaks_default_from_the_gpu() -> None:
    profile = ModelProfile.model_validate({**SMALL_LLM, "llm": {**SMALL_LLM["llm"], "num_gpu_blocks": 300}})
    assert profile.kv_cache_blocks() == 300
    assert profile.pod_peak_flops == GPU_TYPES["a10g"].peak_tflops * 1e12
    two = ModelProfile.model_validate({**SMALL_LLM, "gpus_per_pod": 2})
    assert two.pod_hbm_bytes_per_s == 2 * GPU_TYPES["a10g"].hbm_tb_per_s * 1e12
    # Two GPUs hold twice the memory: (0.9 x 48 - 13) GB of cache.
    assert two.kv_cache_blocks() == math.floor((0.9 * 48 - 13) * 1e9 / (16 * 24_576))


def test_builtin_llm_profiles() -> None:
    small = BUILTIN_PROFILES["llama3-8b-h100-vllm"]
    assert small.llm is not None and small.llm.kv_bytes == 131_072
    # (0.9 x 80 - 16.06 - 0.55 - 1.5) GB / (16 x 131,072 B) = 25,696.8
    assert small.kv_cache_blocks() == 25_696
    assert small.batch_latency_ms == []
    big = BUILTIN_PROFILES["llama2-70b-h100x8-mlperf"]
    assert big.llm is not None and big.llm.kv_bytes == 163_840 and big.gpus_per_pod == 8
    assert big.kv_cache_blocks() == math.floor((0.9 * 640 - 69 - 8 - 16) * 1e9 / (16 * 163_840))
    assert big.pod_peak_flops == 8 * 1979e12
    for name in ("llama3-8b-h100-vllm", "llama2-70b-h100x8-mlperf"):
        assert "MLPerf" in BUILTIN_PROFILES[name].source or "PyTorch" in BUILTIN_PROFILES[name].source
    # The static-batching profiles are unchanged.
    assert BUILTIN_PROFILES["llama2-70b-h100x8-vllm"].llm is None
    assert BUILTIN_PROFILES["llama2-70b-h100x8-vllm"].batch_latency_ms[0] == (1, 6491.0)
    for gpu in GPU_TYPES.values():
        assert gpu.peak_tflops > 0 and gpu.hbm_tb_per_s > 0 and gpu.perf_source


def test_the_mlperf_profile_reproduces_its_published_figures_in_the_iteration_model() -> None:
    """The derivation in the profile's source, checked in closed form: the Server rate at TPOT 139 ms
    and the Offline rate at max_num_seqs decoding (mean prompt 300 assumed, output 291.9)."""
    llm = BUILTIN_PROFILES["llama2-70b-h100x8-mlperf"].llm
    assert llm is not None
    b0 = llm.beta0_ms / 1e3
    bt = llm.beta_decode_ms_per_token / 1e3
    bkv = llm.beta_kv_ms_per_1k_tokens / 1e6
    p, o = 300.0, 21_805.8 / 74.7
    per_request_tokens = p + o
    per_request_context = o * (p + o / 2) + p
    # Server: 70.42 requests/s; the iteration length d solves d = b0 + d x (work per second).
    load = 70.42 * (bt * per_request_tokens + bkv * per_request_context)
    d = b0 / (1 - load)
    assert d == pytest.approx(0.139, rel=0.01)
    assert 70.42 * o == pytest.approx(20_556.4, rel=0.001)
    # Offline: max_num_seqs requests decode in each iteration, and max_num_seqs / O finish and are
    # replaced by a prefill.
    m = llm.max_num_seqs
    d_off = b0 + bt * (m + m / o * p) + bkv * (m * (p + o / 2) + m / o * p)
    assert m / d_off == pytest.approx(21_805.8, rel=0.01)
    assert m + m / o * p < llm.max_num_batched_tokens


def test_the_llm_block_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _llm_scenario(model={"profile": "llama3-8b-h100-vllm", "allocator": "caching"})
    _refused(info, "model.llm", "allocator: preallocate")
    partial = _without(SMALL_LLM["llm"], "head_dim")
    with pytest.raises(ConfigError) as info:
        validate(ModelProfile, {**SMALL_LLM, "llm": partial}, "p.yaml", "model")
    _refused(info, "model.llm", "head_dim")
    both = {**SMALL_LLM["llm"], "kv_bytes_per_token": 1000}
    with pytest.raises(ConfigError) as info:
        validate(ModelProfile, {**SMALL_LLM, "llm": both}, "p.yaml", "model")
    _refused(info, "model.llm", "kv_bytes_per_token")
    with pytest.raises(ConfigError) as info:
        validate(ModelProfile, _without(SMALL_LLM, "llm"), "p.yaml", "model")
    _refused(info, "batch_latency_ms")
    with pytest.raises(ConfigError) as info:
        validate(ModelProfile, {**SMALL_LLM, "llm": {**SMALL_LLM["llm"], "beta0_ms": -1}}, "p.yaml", "model")
    _refused(info, "model.llm.beta0_ms", "-1")
    with pytest.raises(ConfigError) as info:
        validate(
            ModelProfile,
            {
                **SMALL_LLM,
                "llm": {**SMALL_LLM["llm"], "chunked_prefill": False, "max_num_batched_tokens": 2048},
            },
            "p.yaml",
            "model",
        )
    _refused(info, "max_num_batched_tokens", "max_model_len")
    with pytest.raises(ConfigError) as info:
        validate(
            ModelProfile,
            {**SMALL_LLM, "llm": {**SMALL_LLM["llm"], "gpu_memory_utilization": 0.8}},
            "p.yaml",
            "model",
        )
    _refused(info, "gpu_memory_utilization", "preallocate_fraction")


def test_a_cache_too_small_for_one_request_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        _llm_scenario(
            model={"profile": "llama3-8b-h100-vllm", "llm": {**_llm_block(), "max_model_len": 500_000}}
        )
    _refused(info, "test", "model.llm", "llm.max_model_len = 500000", "vLLM refuses to start")
    with pytest.raises(ConfigError) as info:
        validate(
            ModelProfile, {**SMALL_LLM, "llm": {**SMALL_LLM["llm"], "num_gpu_blocks": 100}}, "p.yaml", "model"
        )
    _refused(info, "llm.num_gpu_blocks = 100", "num_gpu_blocks >= 256")
    # Weights that leave no room at all.
    with pytest.raises(ConfigError) as info:
        validate(ModelProfile, {**SMALL_LLM, "weights_gb": 19.0}, "p.yaml", "model")
    _refused(info, "llm.max_model_len = 4096", "0 blocks")


def _llm_block() -> dict[str, Any]:
    llm = BUILTIN_PROFILES["llama3-8b-h100-vllm"].llm
    assert llm is not None
    return llm.model_dump()


def test_llm_params_of_a_scenario() -> None:
    sc = _llm_scenario(serving={"queue_capacity": 64, "router_queue_capacity": 500, "timeout_s": 60})
    params = llm_params(sc)
    assert isinstance(params, LlmParams)
    assert params.num_blocks == 25_696 and params.block_size == 16 and params.max_model_len == 8192
    assert params.queue_capacity == 64 and params.router_queue_capacity == 500
    assert params.beta0_s == pytest.approx(8.27e-3)
    assert params.beta_prefill_s == pytest.approx(0.02804e-3)
    assert params.beta_decode_s == pytest.approx(0.2635e-3)
    assert params.beta_kv_s == pytest.approx(0.0391e-6)
    assert params.kv_bytes_per_token == 131_072 and params.weights_bytes == pytest.approx(16.06e9)
    assert params.params == pytest.approx(8.03e9) and params.peak_flops == 989e12
    assert params.hbm_bytes_per_s == 3.35e12
    with pytest.raises(ValueError, match="no llm"):
        llm_params(make_scenario())


# ---------------------------------------------------------------------------------------------------------
# Token lengths
# ---------------------------------------------------------------------------------------------------------


def _dist(spec: Any) -> TokenDist:
    return TokenDist.model_validate(spec)


def test_token_distributions_have_their_means_and_bounds() -> None:
    rng = np.random.default_rng(7)
    n = 200_000
    assert (sample_token_lengths(_dist(512), rng, 10) == 512).all()
    ln = sample_token_lengths(_dist({"lognormal": {"mean": 300, "cv": 1.5}}), rng, n)
    assert ln.min() >= 1 and ln.mean() == pytest.approx(300, rel=0.03)
    assert ln.std() / ln.mean() == pytest.approx(1.5, rel=0.1)
    capped = sample_token_lengths(_dist({"lognormal": {"mean": 300, "cv": 1.5, "max": 400}}), rng, n)
    assert capped.max() == 400 and capped.min() >= 1
    small = sample_token_lengths(_dist({"lognormal": {"mean": 1, "cv": 2}}), rng, n)
    assert small.min() == 1  # rounded, at least 1
    uni = sample_token_lengths(_dist({"uniform": [3, 7]}), rng, n)
    assert set(np.unique(uni).tolist()) == {3, 4, 5, 6, 7}
    assert uni.mean() == pytest.approx(5, rel=0.01)
    emp = sample_token_lengths(_dist({"empirical": {"values": [10, 100], "weights": [3, 1]}}), rng, n)
    assert set(np.unique(emp).tolist()) == {10, 100}
    assert (emp == 10).mean() == pytest.approx(0.75, abs=0.01)
    assert _dist({"empirical": {"values": [10, 100], "weights": [3, 1]}}).mean == pytest.approx(32.5)
    never = sample_token_lengths(_dist({"empirical": {"values": [5, 9], "weights": [0, 2]}}), rng, 1000)
    assert (never == 9).all()


def test_token_lengths_are_deterministic_and_independent_of_how_they_are_taken() -> None:
    cfg = WORKLOAD.validate_python(
        {
            "kind": "gamma",
            "rate_rps": 3,
            "cv": 2,
            "tokens": {"prompt": {"uniform": [1, 10_000]}, "output": {"lognormal": {"mean": 200, "cv": 1}}},
        }
    )
    n = 2 * TOKEN_BLOCK + 17
    whole = token_source(cfg, seed=4, source="s").take(n)
    ts = token_source(cfg, seed=4, source="s")
    parts = [ts.take(k) for k in (0, 1, 5, TOKEN_BLOCK, 0, n - TOKEN_BLOCK - 6)]
    assert ts.taken == n
    for i in (0, 1):
        assert whole[i].dtype == np.int32
        assert np.array_equal(whole[i], np.concatenate([p[i] for p in parts]))
    other = token_source(cfg, seed=5, source="s").take(n)
    assert not np.array_equal(whole[0], other[0])
    # The prompt distribution does not shift the output draws (own streams).
    cfg2 = WORKLOAD.validate_python(
        {
            "kind": "poisson",
            "rate_rps": 3,
            "tokens": {"prompt": 7, "output": {"lognormal": {"mean": 200, "cv": 1}}},
        }
    )
    assert np.array_equal(token_source(cfg2, seed=4, source="s").take(n)[1], whole[1])


def _write_trace(tmp_path: Path, times: list[float], prompt: list[int], output: list[int]) -> Path:
    rows = ["time_s,context_tokens,generated_tokens"]
    rows += [f"{t},{p},{o}" for t, p, o in zip(times, prompt, output, strict=True)]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("multiplier", "loop", "offset", "scale"),
    [(1.0, False, 0.0, 1.0), (2.5, True, 0.0, 1.0), (0.4, True, 7.0, 2.0), (3.0, False, 12.0, 0.5)],
)
def test_trace_tokens_follow_the_rows_of_the_arrivals(
    tmp_path: Path, multiplier: float, loop: bool, offset: float, scale: float
) -> None:
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.integers(1, 5, size=300)).astype(float)
    rows = np.arange(300)
    _write_trace(tmp_path, times.tolist(), (1000 + rows).tolist(), (1 + rows).tolist())
    cfg = WORKLOAD.validate_python(
        {
            "kind": "trace",
            "path": "trace.csv",
            "rate_multiplier": multiplier,
            "loop": loop,
            "start_offset_s": offset,
            "time_scale": scale,
        }
    )
    horizon = 2.5 * times[-1] / scale
    w = build_workload(cfg, seed=9, duration_s=horizon, source="s", base_dir=tmp_path)
    ts = token_source(cfg, seed=9, source="s", base_dir=tmp_path)
    assert w.open_loop is not None
    got_t, got_p, got_o = [], [], []
    edges = np.linspace(0.0, horizon, 37)
    for a, b in itertools.pairwise(edges):
        arr = w.open_loop.arrivals(float(a), float(b))
        p, o = ts.take(len(arr))
        got_t.append(arr)
        got_p.append(p)
        got_o.append(o)
    t = np.concatenate(got_t)
    p = np.concatenate(got_p).astype(np.int64)
    o = np.concatenate(got_o).astype(np.int64)
    assert len(t) > 50
    row = p - 1000
    assert np.array_equal(o - 1, row)  # both columns of the same row
    # Each arrival lies between its row's time and the next row's (in its loop pass).
    trace = load_trace(str(tmp_path / "trace.csv"))
    period = trace.times_s[-1] + trace.span_s / (trace.n_requests - 1)
    tau = offset + t * scale
    lo = np.mod(tau - times[row] + 1e-9, period) if loop else tau - times[row]
    assert (lo >= -1e-6).all()
    nxt = np.where(row + 1 < len(times), times[np.minimum(row + 1, len(times) - 1)], period)
    assert (lo <= nxt - times[row] + 1e-6).all()
    # Rows come in trace order (passes wrap around).
    step = np.diff(row)
    assert ((step >= 0) | (row[1:] < row[:-1]) & loop).all()


def test_a_tokens_block_replaces_one_trace_column(tmp_path: Path) -> None:
    _write_trace(tmp_path, [0, 1, 2, 3], [10, 20, 30, 40], [1, 2, 3, 4])
    cfg = WORKLOAD.validate_python({"kind": "trace", "path": "trace.csv", "tokens": {"output": 64}})
    p, o = token_source(cfg, seed=1, source="s", base_dir=tmp_path).take(4)
    assert p.tolist() == [10, 20, 30, 40] and o.tolist() == [64] * 4


def test_the_builtin_azure_trace_gives_its_own_tokens() -> None:
    sc = builtin_scenario("llm-azure-conv")
    ts = token_source(sc.workload, seed=sc.seed, source="builtin:llm-azure-conv")
    p, o = ts.take(5000)
    assert p.min() >= 1 and o.min() >= 1
    assert 500 < p.mean() < 2500 and 100 < o.mean() < 400


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "needles"),
    [
        ({"prompt": 0, "output": 5}, ("workload.tokens.prompt", "= 0:", "greater than or equal to 1")),
        ({"prompt": {"fixed": -3}, "output": 5}, ("workload.tokens.prompt.fixed = -3",)),
        (
            {"prompt": 5, "output": {"lognormal": {"mean": 0, "cv": 1}}},
            ("workload.tokens.output.lognormal.mean",),
        ),
        (
            {"prompt": 5, "output": {"lognormal": {"mean": 50, "cv": 0}}},
            ("workload.tokens.output.lognormal.cv",),
        ),
        ({"prompt": {"uniform": [0, 5]}, "output": 5}, ("workload.tokens.prompt.uniform[0]", "0")),
        ({"prompt": {"uniform": [9, 5]}, "output": 5}, ("workload.tokens.prompt.uniform", "a ≤ b")),
        (
            {"prompt": {"empirical": {"values": [0, 3]}}, "output": 5},
            ("workload.tokens.prompt.empirical.values[0]",),
        ),
        (
            {"prompt": {"empirical": {"values": [2, 3], "weights": [0, 0]}}, "output": 5},
            ("workload.tokens.prompt.empirical", "sum to more than 0"),
        ),
        (
            {"prompt": {"empirical": {"values": [2, 3], "weights": [1]}}, "output": 5},
            ("workload.tokens.prompt.empirical", "one per value"),
        ),
        (
            {"prompt": {"empirical": {"values": [2, 3], "weights": [1, -1]}}, "output": 5},
            ("workload.tokens.prompt.empirical.weights[1]",),
        ),
        (
            {"prompt": {"fixed": 3, "uniform": [1, 2]}, "output": 5},
            ("workload.tokens.prompt", "exactly one of"),
        ),
        ({"prompt": {}, "output": 5}, ("workload.tokens.prompt", "exactly one of", "given: none")),
        ({"prompt": {"normal": 3}, "output": 5}, ("workload.tokens.prompt.normal", "fixed, lognormal")),
        ({"prompt": 5}, ("workload.tokens", "tokens.output is missing")),
        ({"prompt": 6000, "output": 3000}, ("workload.tokens", "max_model_len = 8192")),
    ],
)
def test_bad_token_distributions_name_their_key(tokens: dict[str, Any], needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        _llm_scenario(workload={"kind": "poisson", "rate_rps": 5, "tokens": tokens})
    _refused(info, "test", *needles)


def test_token_settings_need_an_llm_profile() -> None:
    with pytest.raises(ConfigError) as info:
        make_scenario(workload={"kind": "poisson", "rate_rps": 5, "tokens": {"prompt": 5, "output": 5}})
    _refused(info, "workload.tokens", "only for an LLM profile", "resnet50-a100-triton")
    for key in ("ttft_ms", "itl_ms"):
        with pytest.raises(ConfigError) as info:
            make_scenario(slo={"latency_ms": 50, key: 20})
        _refused(info, f"slo.{key} = 20", "only for an LLM profile")
    with pytest.raises(ConfigError) as info:
        _llm_scenario(slo={"latency_ms": 100, "ttft_ms": 0})
    _refused(info, "slo.ttft_ms", "greater than 0")


def test_an_llm_profile_needs_token_lengths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _llm_scenario(workload={"kind": "poisson", "rate_rps": 5})
    _refused(info, "workload.tokens", "required with an LLM profile")
    with pytest.raises(ConfigError) as info:
        _llm_scenario(workload={"kind": "closed-loop", "users": 5, "think_time_s": [1, 2]})
    _refused(info, "workload.tokens", "required with an LLM profile", "closed-loop users")
    # A trace without token columns: refused when its lengths are asked for.
    (tmp_path / "bare.csv").write_text("time_s\n0\n1\n2\n")
    sc = _llm_scenario(workload={"kind": "trace", "path": "bare.csv"})
    with pytest.raises(ConfigError) as info:
        token_source(sc.workload, seed=1, source="scenario.yaml", base_dir=tmp_path)
    _refused(info, "scenario.yaml: workload.tokens.prompt", "no ContextTokens", "tokens: {prompt: DIST}")
    # ... and accepted with a tokens block.
    sc = _llm_scenario(workload={"kind": "trace", "path": "bare.csv", "tokens": {"prompt": 9, "output": 2}})
    p, o = token_source(sc.workload, seed=1, source="s", base_dir=tmp_path).take(3)
    assert p.tolist() == [9, 9, 9] and o.tolist() == [2, 2, 2]


def test_a_closed_loop_llm_scenario_loads_and_takes_its_lengths_in_send_order() -> None:
    tokens = {"prompt": {"uniform": [100, 200]}, "output": {"fixed": 7}}
    sc = _llm_scenario(workload={"kind": "closed-loop", "users": 5, "think_time_s": [1, 2], "tokens": tokens})
    assert sc.workload.kind == "closed-loop" and sc.workload.tokens is not None
    p, o = token_source(sc.workload, seed=1, source="s").take(1000)
    assert p.min() >= 100 and p.max() <= 200 and set(o.tolist()) == {7}
    # the same lengths, in the same order, as an open-loop workload with the same tokens: block
    open_loop = _llm_scenario(workload={"kind": "poisson", "rate_rps": 5, "tokens": tokens})
    p2, _ = token_source(open_loop.workload, seed=1, source="s").take(1000)
    assert p.tolist() == p2.tolist()
    # a request-level profile refuses the block, as for open-loop kinds
    with pytest.raises(ConfigError) as info:
        make_scenario(workload={"kind": "closed-loop", "users": 5, "think_time_s": [1, 2], "tokens": tokens})
    _refused(info, "workload.tokens", "only for an LLM profile")
    with pytest.raises(ConfigError) as info:
        _llm_scenario(
            workload={"kind": "closed-loop", "users": 5, "think_time_s": [1, 2], "tokens": {"prompt": 5}}
        )
    _refused(info, "tokens.output is missing")


def test_zero_or_negative_lengths_in_a_trace_are_refused(tmp_path: Path) -> None:
    _write_trace(tmp_path, [0, 1, 2], [5, 0, 7], [1, 2, 3])
    cfg = WORKLOAD.validate_python({"kind": "trace", "path": "trace.csv"})
    with pytest.raises(ConfigError) as info:
        token_source(cfg, seed=1, source="s", base_dir=tmp_path)
    _refused(info, "trace.csv: ContextTokens = 0", "≥ 1", "request 2")
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,0\n")
    cfg = WORKLOAD.validate_python({"kind": "trace", "path": "azure.csv"})
    with pytest.raises(ConfigError) as info:
        token_source(cfg, seed=1, source="s", base_dir=tmp_path)
    _refused(info, "azure.csv: GeneratedTokens = 0", "workload.tokens.output")
    _write_trace(tmp_path, [0, 1], [5, -4], [1, 2])
    with pytest.raises(ConfigError) as info:
        load_trace(str(tmp_path / "trace.csv"))
    _refused(info, "context_tokens = '-4'")


def test_llm_engine_config_alone_rejects_an_unknown_key() -> None:
    with pytest.raises(ConfigError) as info:
        validate(LlmEngineConfig, {**SMALL_LLM["llm"], "max_batch": 3}, "p.yaml", "model.llm")
    _refused(info, "model.llm.max_batch", "unknown key", "max_num_seqs")


# ---------------------------------------------------------------------------------------------------------
# Built-in scenarios
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LLM_SCENARIOS)
def test_the_llm_scenarios_load_and_validate(name: str) -> None:
    assert name in scenario_names()
    assert name not in DEFAULT_SCENARIOS
    sc = builtin_scenario(name)
    assert sc.model.llm is not None
    assert sc.duration_s <= 3600
    assert sc.slo.ttft_ms is not None and sc.slo.itl_ms is not None
    params = llm_params(sc)
    assert params.num_blocks * params.block_size >= params.max_model_len
    ts = token_source(sc.workload, seed=sc.seed, source=name)
    p, o = ts.take(1000)
    assert p.min() >= 1 and o.min() >= 1
    # Rates sized for a handful to about 20 pods.
    gpus = sum(pool.gpus_per_node * pool.max_size for pool in sc.cluster.pools)
    assert 4 <= gpus // sc.model.gpus_per_pod <= 32
