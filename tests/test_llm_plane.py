"""The token-level data plane (sim/llm_kernel.py via sim/llm_plane.py) against hand-computed cases and
the invariants of docs/llm.md."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from gpuscale.sim import kernel as K
from gpuscale.sim import llm_kernel as L
from gpuscale.sim.dataplane import SCRAPE_COLUMNS
from gpuscale.sim.llm_plane import LLM_SCRAPE_COLUMNS, LlmDataPlane, UserDraws, bench_llm_plane
from gpuscale.sim.llm_serving import LlmParams

COL = {name: k for k, name in enumerate(LLM_SCRAPE_COLUMNS)}
VALUES = K.bucket_values()


def unit(**kw: Any) -> LlmParams:
    """Every iteration lasts exactly 1 s unless the betas are overridden."""
    base: dict[str, Any] = {
        "num_blocks": 64,
        "block_size": 4,
        "max_model_len": 64,
        "max_num_seqs": 8,
        "queue_capacity": 16,
        "beta0_s": 1.0,
        "beta_prefill_s": 0.0,
        "beta_decode_s": 0.0,
        "beta_kv_s": 0.0,
    }
    base.update(kw)
    return LlmParams(**base)


def plane(params: LlmParams, pods: int = 1, slots: int = 4, **kw: Any) -> LlmDataPlane:
    dp = LlmDataPlane(params, max_slots=slots, seed=0, record=True, **kw)
    for _ in range(pods):
        dp.open_slot(0.0)
    return dp


def push(dp: LlmDataPlane, t0: float, t1: float, reqs: list[tuple[float, int, int]]) -> None:
    """Advance over [t0, t1) with requests (arrival, prompt, output)."""
    arr = np.array([r[0] for r in reqs], dtype=np.float64)
    p = np.array([r[1] for r in reqs], dtype=np.int64)
    o = np.array([r[2] for r in reqs], dtype=np.int64)
    dp.advance(t0, t1, arr, prompt=p, output=o)


def by_seq(dp: LlmDataPlane) -> dict[int, dict[str, float]]:
    rec = dp.records()
    return {
        int(rec.seq[k]): {
            "outcome": int(rec.outcome[k]),
            "lat": float(rec.latency_s[k]),
            "ttft": float(rec.ttft_s[k]),
            "pre": int(rec.preemptions[k]),
            "pod": int(rec.pod[k]),
            "arr": float(rec.arrival_s[k]),
        }
        for k in range(len(rec.seq))
    }


def hist_samples(h: np.ndarray) -> dict[int, int]:
    nz = np.nonzero(h)[0]
    return {round(float(VALUES[k])): int(h[k]) for k in nz}


# ---- one request, by hand -------------------------------------------------------------------------
def test_one_request_exact_times_and_roofline() -> None:
    params = unit(
        beta0_s=0.01, beta_prefill_s=0.001, beta_decode_s=0.002, beta_kv_s=1e-4,
        weights_bytes=1e9, kv_bytes_per_token=1e6, hbm_bytes_per_s=1e12, params=1e9, peak_flops=1e12,
    )  # fmt: skip
    dp = plane(params)
    push(dp, 0.0, 10.0, [(1.0, 10, 3)])
    d1 = 0.01 + 0.001 * 10 + 1e-4 * 10  # prefill of 10 tokens, context 10
    d2 = 0.01 + 0.002 + 1e-4 * 11  # decode, context 11
    d3 = 0.01 + 0.002 + 1e-4 * 12
    rec = by_seq(dp)[0]
    assert rec["outcome"] == K.OUT_COMPLETED
    assert rec["ttft"] == pytest.approx(d1, abs=1e-12)
    assert rec["lat"] == pytest.approx(d1 + d2 + d3, abs=1e-12)
    assert dp.last_end_t(0) == pytest.approx(1.0 + d1 + d2 + d3, abs=1e-12)
    itl = np.nonzero(dp.itl_hist)[0]
    assert dp.itl_hist.sum() == 2
    assert all(abs(VALUES[k] - d) / d < K.HIST_REL_ERROR for k, d in zip(itl, (d2, d3), strict=True))
    assert dp.ttft_hist.sum() == 1 and dp.hist.sum() == 1
    assert dp.generated_tokens == 3 and dp.prompt_tokens == 10 and dp.preemptions == 0
    row = dp.scrape(np.array([0]), 10.0)[0]
    assert row[COL["gpu_busy_s"]] == pytest.approx(d1 + d2 + d3)
    assert row[COL["cpu_busy_s"]] == 0.0
    assert row[COL["inflight_int"]] == pytest.approx(d1 + d2 + d3)
    assert row[COL["admitted"]] == 1 and row[COL["outstanding"]] == 0 and row[COL["kv_used_blocks"]] == 0
    assert row[COL["prompt_tokens"]] == 10 and row[COL["generation_tokens"]] == 3
    # roofline: DRAM fraction = (weights + context x kv bytes) / (bandwidth x d), FLOPs 2 x params x tokens
    dram = [min(1.0, (1e9 + c * 1e6) / (1e12 * d)) for c, d in ((10, d1), (11, d2), (12, d3))]
    occ = [min(1.0, 2e9 * n / (1e12 * d)) for n, d in ((10, d1), (1, d2), (1, d3))]
    ds = (d1, d2, d3)
    assert row[COL["dram_active_int"]] == pytest.approx(sum(f * d for f, d in zip(dram, ds, strict=True)))
    assert row[COL["sm_occupancy_int"]] == pytest.approx(sum(f * d for f, d in zip(occ, ds, strict=True)))
    act = sum(max(a, b) * d for a, b, d in zip(dram, occ, ds, strict=True))
    assert row[COL["sm_active_int"]] == pytest.approx(act)
    # the first seven columns are the request-level plane's
    assert LLM_SCRAPE_COLUMNS[:7] == SCRAPE_COLUMNS


def test_iteration_in_progress_spans_advance_boundaries_and_scrape_counts_up_to_t() -> None:
    dp = plane(unit())
    push(dp, 0.0, 0.25, [(0.0, 4, 2)])
    row = dp.scrape(np.array([0]), 0.25)[0]
    assert row[COL["gpu_busy_s"]] == pytest.approx(0.25)
    assert row[COL["batch"]] == 1 and row[COL["kv_used_blocks"]] == 1
    assert row[COL["generation_tokens"]] == 0  # the iteration's effects come at its end
    dp.advance(0.25, 1.5, np.zeros(0))
    assert dp.generated_tokens == 1
    dp.advance(1.5, 5.0, np.zeros(0))
    assert by_seq(dp)[0]["lat"] == 2.0 and by_seq(dp)[0]["ttft"] == 1.0


def test_arrival_at_an_iteration_boundary_joins_the_iteration_starting_then() -> None:
    dp = plane(unit())
    push(dp, 0.0, 10.0, [(0.0, 4, 2), (1.0, 4, 1)])
    rec = by_seq(dp)
    assert rec[0]["lat"] == 2.0
    # routed at t=1 before the iteration that starts at 1: its prefill is in that iteration
    assert rec[1]["ttft"] == 1.0 and rec[1]["lat"] == 1.0
    assert dp.pi[0, L.P_N_ITER] == 2


def test_arrivals_at_the_same_instant_share_the_first_iteration() -> None:
    dp = plane(unit())
    push(dp, 0.0, 10.0, [(0.5, 4, 1), (0.5, 4, 1), (0.5, 4, 1)])
    assert [r["lat"] for r in by_seq(dp).values()] == [1.0, 1.0, 1.0]
    assert dp.high_water_batch(0) == 3


# ---- the scheduler ------------------------------------------------------------------------------------
def test_chunked_prefill_splits_a_long_prompt_under_the_token_budget() -> None:
    params = unit(
        max_num_batched_tokens=32, max_model_len=128, beta0_s=0.5, beta_prefill_s=0.25, beta_decode_s=0.125
    )
    dp = plane(params)
    chunks = [32, 32, 32, 4]  # every chunk of the prompt is one iteration, then one decode
    ds = [0.5 + 0.25 * n for n in chunks] + [0.5 + 0.125]
    push(dp, 0.0, 1.0, [(0.0, 100, 2)])
    seen = []
    t = 1.0
    for end in np.cumsum(ds):
        dp.advance(t, float(end) + 0.5, np.zeros(0))
        t = float(end) + 0.5
        seen.append(dp.prompt_tokens)
    assert seen == [32, 64, 96, 100, 100]
    assert dp.pi[0, L.P_N_ITER] == 5
    rec = by_seq(dp)[0]
    assert rec["ttft"] == pytest.approx(sum(ds[:4]))
    assert rec["lat"] == pytest.approx(sum(ds))
    assert dp.prompt_tokens == 100 and dp.generated_tokens == 2


def test_long_prefill_threshold_caps_a_request_per_iteration() -> None:
    dp = plane(unit(long_prefill_token_threshold=10))
    push(dp, 0.0, 20.0, [(0.0, 25, 1)])
    assert by_seq(dp)[0]["lat"] == 3.0  # 10 + 10 + 5 tokens
    assert dp.prompt_tokens == 25


def test_max_num_seqs_limits_the_running_batch() -> None:
    dp = plane(unit(max_num_seqs=2))
    push(dp, 0.0, 1.5, [(0.0, 4, 3), (0.0, 4, 3), (0.0, 4, 3)])
    row = dp.scrape(np.array([0]), 1.5)[0]
    assert row[COL["batch"]] == 2 and row[COL["waiting"]] == 1 and row[COL["outstanding"]] == 3
    dp.advance(1.5, 20.0, np.zeros(0))
    rec = by_seq(dp)
    assert [rec[s]["lat"] for s in range(3)] == [3.0, 3.0, 6.0]
    assert rec[2]["ttft"] == 4.0
    assert dp.high_water_batch(0) == 2
    # queue wait = first scheduled - arrival: 0, 0, 3
    assert dp.gf[K.F_WAIT_SUM] == 3.0 and dp.gf[K.F_N_WAIT] == 3.0
    assert dp.wait_hist.sum() == 3


def test_kv_exhaustion_preempts_the_last_running_request_and_recomputes_it() -> None:
    # 6 blocks of 4 tokens. A and B (P=8, O=10) start together; at t=5 A needs a 4th block, none is
    # free: B (the end of the running list) is preempted, its 3 blocks freed, computed reset.
    dp = plane(unit(num_blocks=6, block_size=4, max_model_len=24))
    push(dp, 0.0, 5.5, [(0.0, 8, 10), (0.0, 8, 10)])
    a, b = dp.running_rows(0).tolist() + dp.waiting_rows(0).tolist()
    assert dp.running_rows(0).tolist() == [a] and dp.waiting_rows(0).tolist() == [b]
    assert dp.ri[0, b, L.R_COMP] == 0 and dp.ri[0, b, L.R_GEN] == 5 and dp.ri[0, b, L.R_HELD] == 0
    assert dp.ri[0, b, L.R_SEQ] == 1
    assert dp.preemptions == 1 and dp.kv_used_blocks(0) == 4
    dp.advance(5.5, 30.0, np.zeros(0))
    rec = by_seq(dp)
    # A never waits: a token a second. B waits until A's blocks are freed at t=10, recomputes its
    # 8 + 5 known tokens in one iteration (token 6 at t=11), then decodes to t=15.
    assert rec[0]["lat"] == 10.0 and rec[0]["pre"] == 0
    assert rec[1]["lat"] == 15.0 and rec[1]["pre"] == 1 and rec[1]["ttft"] == 1.0
    assert dp.prompt_tokens == 8 + 8 + 13
    assert dp.generated_tokens == 20
    row = dp.scrape(np.array([0]), 30.0)[0]
    assert row[COL["preemptions"]] == 1 and row[COL["prompt_tokens"]] == 29
    # inter-token latencies: 17 of 1 s, and B's gap from t=5 to t=11
    assert hist_samples(dp.itl_hist) == {1: 17, 6: 1}
    assert dp.ttft_hist.sum() == 2


def test_without_chunked_prefill_a_head_over_budget_is_skipped_and_keeps_its_place() -> None:
    params = unit(chunked_prefill=False, max_num_batched_tokens=16)
    dp = plane(params)
    push(dp, 0.0, 1.5, [(0.0, 4, 5), (0.5, 16, 1), (0.5, 16, 1), (0.5, 2, 1)])
    # at t=1 A decodes (budget 16 - 1 = 15): C1 and C2 (16 tokens) are skipped, D (2) is scheduled
    c1, c2 = dp.waiting_rows(0).tolist()
    assert [dp.ri[0, c1, L.R_SEQ], dp.ri[0, c2, L.R_SEQ]] == [1, 2]
    dp.advance(1.5, 20.0, np.zeros(0))
    rec = by_seq(dp)
    assert rec[3]["lat"] == 1.5  # D
    assert rec[0]["lat"] == 5.0  # A
    assert rec[1]["lat"] == 5.5 and rec[2]["lat"] == 6.5  # C1 at t=5 (budget all its own), then C2


def test_with_chunked_prefill_the_head_takes_what_budget_is_left() -> None:
    params = unit(chunked_prefill=True, max_num_batched_tokens=16)
    dp = plane(params)
    push(dp, 0.0, 20.0, [(0.0, 4, 5), (0.5, 16, 1), (0.5, 16, 1), (0.5, 2, 1)])
    rec = by_seq(dp)
    # t=1: A 1 + C1 15; t=2: A 1 + C1 1 + C2 14; t=3: A 1 + C2 2 + D 2 -> C1 at 3, C2 and D at 4
    assert rec[1]["lat"] == 2.5 and rec[2]["lat"] == 3.5 and rec[3]["lat"] == 3.5
    assert rec[0]["lat"] == 5.0


# ---- rejections, router queue, routing -------------------------------------------------------------
def test_rejections_too_long_pod_full_and_router_full() -> None:
    dp = plane(unit(max_num_seqs=1, queue_capacity=1, max_model_len=32))
    push(dp, 0.0, 10.0, [(0.0, 30, 3), (0.0, 4, 1), (0.0, 4, 1), (0.0, 4, 1)])
    rec = by_seq(dp)
    assert rec[0]["outcome"] == K.OUT_REJECTED and rec[0]["pod"] == -1  # P + O > max_model_len
    assert rec[3]["outcome"] == K.OUT_REJECTED and rec[3]["pod"] == 0  # pod holds 1 + 1
    assert rec[1]["lat"] == 1.0 and rec[2]["lat"] == 2.0
    assert dp.counter(K.G_REJECTED) == 2 and dp.counter(K.G_COMPLETED) == 2


def test_router_queue_is_fifo_bounded_and_handed_out_when_a_pod_opens() -> None:
    dp = LlmDataPlane(unit(router_queue_capacity=2), max_slots=2, seed=0, record=True)
    push(dp, 0.0, 3.0, [(1.0, 4, 1), (2.0, 4, 1), (2.5, 4, 1)])
    assert dp.router_queue_len == 2 and dp.counter(K.G_REJECTED) == 1
    p = dp.open_slot(3.0)
    dp.hand_out(3.0)
    assert dp.router_queue_len == 0 and dp.outstanding(p) == 2
    push(dp, 3.0, 10.0, [(3.0, 4, 1)])  # arrives at the hand-out instant: same first iteration
    rec = by_seq(dp)
    assert rec[0]["lat"] == 3.0 and rec[1]["lat"] == 2.0 and rec[3]["lat"] == 1.0
    assert dp.gf[K.F_RQ_INT] == pytest.approx(2.0 + 1.0)
    assert dp.pi[p, L.P_N_ITER] == 1


def test_routing_goes_to_least_outstanding_lowest_slot_on_ties() -> None:
    dp = plane(unit(), pods=3)
    reqs = [(0.1 * k, 4, 30) for k in range(7)]
    push(dp, 0.0, 0.65, reqs)
    assert [dp.outstanding(p) for p in range(3)] == [3, 2, 2]
    dp.advance(0.65, 100.0, np.zeros(0))
    rec = by_seq(dp)
    assert [rec[s]["pod"] for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]


# ---- invariants on a busy run ---------------------------------------------------------------------------
def busy_run(
    seed: int, chunk: float = 0.5, stop_at: float = 60.0, timeout_s: float = math.inf
) -> tuple[LlmDataPlane, np.ndarray, list[str]]:
    params = LlmParams(
        num_blocks=400, block_size=16, max_model_len=2048, max_num_seqs=24, max_num_batched_tokens=512,
        queue_capacity=40, beta0_s=0.005, beta_prefill_s=3e-5, beta_decode_s=1e-4, beta_kv_s=5e-8,
        timeout_s=timeout_s,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    n = 2400
    times = np.cumsum(rng.exponential(1.0 / 40.0, n))
    prompt = rng.integers(1, 1500, n)
    output = rng.integers(1, 400, n)
    dp = LlmDataPlane(params, max_slots=4, seed=seed, record=True, ttft_slo_s=1.0, itl_slo_s=0.05)
    for _ in range(3):
        dp.open_slot(0.0)
    problems: list[str] = []
    t = 0.0
    while t < stop_at:
        t1 = t + chunk
        a, b = np.searchsorted(times, [t, t1])
        dp.advance(t, t1, times[a:b], prompt=prompt[a:b], output=output[a:b])
        t = t1
        for p in dp.active_slots.tolist():
            if dp.pi[p, L.P_FREE_BLOCKS] + dp.held_blocks(p) != params.num_blocks:
                problems.append(f"blocks leak on pod {p} at {t}")
        gi = dp.gi
        ended = gi[K.G_COMPLETED] + gi[K.G_TIMED_OUT] + gi[K.G_REJECTED] + gi[K.G_DROPPED]
        if gi[K.G_ARRIVED] != ended + dp.in_flight:
            problems.append(f"requests not conserved at {t}")
    return dp, output, problems


def inflight_generated(dp: LlmDataPlane) -> int:
    total = 0
    for p in dp.active_slots.tolist():
        rows = np.concatenate([dp.running_rows(p), dp.waiting_rows(p)])
        total += int(dp.ri[p, rows, L.R_GEN].sum())
    return total


def test_conservation_of_blocks_requests_and_tokens() -> None:
    dp, output, problems = busy_run(3)
    assert problems == []
    rec = dp.records()
    done = rec.seq[rec.outcome == K.OUT_COMPLETED]
    assert dp.preemptions > 0 and len(done) > 500 and dp.counter(K.G_REJECTED) > 0
    assert dp.generated_tokens == int(output[done].sum()) + inflight_generated(dp)
    assert dp.itl_hist.sum() == dp.generated_tokens - dp.ttft_hist.sum()
    assert dp.ttft_hist.sum() >= len(done)
    assert dp.hist.sum() == len(done)
    # SLO: goodput counts finished requests that met every target
    assert 0 < dp.counter(K.G_SLO_MET) <= len(done)


def test_littles_law_from_the_integrals() -> None:
    dp, _, _ = busy_run(5, stop_at=30.0)
    t = 30.0
    # ∫ (running + waiting + router queue) dt == Σ time in system of ended + Σ (t - arrival) in flight
    inside = 0.0
    for p in dp.active_slots.tolist():
        rows = np.concatenate([dp.running_rows(p), dp.waiting_rows(p)])
        inside += float((t - dp.rf[p, rows, L.RF_ARR]).sum())
    assert dp.system_integral == pytest.approx(float(dp.gf[K.F_SYS_SUM]) + inside, rel=1e-9)
    raw = dp.scrape(dp.active_slots, t)
    assert raw[:, COL["inflight_int"]].sum() == pytest.approx(dp.system_integral, rel=1e-12)
    # busy time never exceeds wall time, and a loaded pod is busy most of it
    assert np.all(raw[:, COL["gpu_busy_s"]] <= t + 1e-9)
    assert np.all(raw[:, COL["gpu_busy_s"]] > 0.5 * t)
    assert np.all(raw[:, COL["sm_active_int"]] <= raw[:, COL["gpu_busy_s"]] + 1e-9)


def test_determinism() -> None:
    a, _, _ = busy_run(11, stop_at=20.0)
    b, _, _ = busy_run(11, stop_at=20.0)
    ra, rb = a.records(), b.records()
    for field in ("seq", "outcome", "latency_s", "pod", "ttft_s", "preemptions", "arrival_s"):
        x, y = getattr(ra, field), getattr(rb, field)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    assert np.array_equal(a.hists, b.hists)
    assert np.array_equal(a.scrape(a.active_slots, 20.0), b.scrape(b.active_slots, 20.0))
    assert np.array_equal(a.gf, b.gf) and np.array_equal(a.gi, b.gi)


# ---- evict and drain -------------------------------------------------------------------------------------
def test_drain_keeps_iterating_then_evict_drops_everything() -> None:
    dp = plane(unit(), pods=2)
    push(dp, 0.0, 0.5, [(0.0, 4, 4), (0.0, 4, 3), (0.1, 4, 6)])  # pods 0, 1, 0
    dp.stop_accepting(0)
    push(dp, 0.5, 2.5, [(0.6, 4, 10), (0.7, 4, 10)])  # both to pod 1
    assert dp.outstanding(0) == 2 and dp.outstanding(1) == 3
    dp.advance(2.5, 7.5, np.zeros(0))
    # pod 0 drained: its requests ended at 4 (seq 0) and 7 (seq 2, admitted at 0.1, first iteration at 1)
    assert dp.outstanding(0) == 0 and dp.last_end_t(0) == 7.0
    rec = by_seq(dp)
    assert rec[0]["lat"] == 4.0 and rec[2]["lat"] == pytest.approx(6.9)
    dp.close_slot(0)
    held = dp.outstanding(1)
    assert held == 2 and dp.kv_used_blocks(1) > 0
    assert dp.evict(1, 7.5) == 2
    assert dp.outstanding(1) == 0 and dp.kv_used_blocks(1) == 0
    assert dp.counter(K.G_DROPPED) == 2
    rec = by_seq(dp)
    assert rec[3]["outcome"] == K.OUT_DROPPED and rec[3]["lat"] == pytest.approx(6.9)
    assert rec[3]["ttft"] == pytest.approx(1.4)  # its first token at t=2
    # busy time stops at the eviction (the iteration cut short is not charged past it)
    row = dp.scrape(np.array([1]), 9.0)[0]
    assert row[COL["gpu_busy_s"]] == pytest.approx(7.5)
    # Little's law with a retired slot and drops
    assert dp.system_integral == pytest.approx(float(dp.gf[K.F_SYS_SUM]))
    dp.advance(7.5, 9.0, np.zeros(0))
    assert dp.counter(K.G_ARRIVED) == dp.counter(K.G_COMPLETED) + dp.counter(K.G_DROPPED)


def test_advance_needs_token_counts() -> None:
    dp = plane(unit())
    with pytest.raises(ValueError):
        dp.advance(0.0, 1.0, np.array([0.5]))
    with pytest.raises(ValueError):
        dp.advance(0.0, 1.0, np.array([0.5]), prompt=np.array([3, 4]), output=np.array([1]))


def test_slo_rule_ttft_itl_e2e() -> None:
    # TTFT 1 s, then 3 more tokens 1 s apart: mean ITL 1 s, e2e 4 s
    cases: list[tuple[dict[str, Any], int]] = [
        ({}, 1),
        ({"ttft_slo_s": 0.99}, 0),
        ({"itl_slo_s": 1.0}, 1),
        ({"itl_slo_s": 0.99}, 0),
        ({"e2e_slo_s": 4.0}, 1),
        ({"e2e_slo_s": 3.99}, 0),
    ]
    for kw, met in cases:
        dp = plane(unit(), **kw)
        push(dp, 0.0, 10.0, [(0.0, 4, 4)])
        assert dp.counter(K.G_SLO_MET) == met, kw


def test_speed_multiplier_and_params_replace() -> None:
    params = replace(unit(), beta0_s=0.5)
    dp = LlmDataPlane(params, max_slots=1, seed=0, record=True)
    dp.open_slot(0.0, speed=2.0)
    push(dp, 0.0, 10.0, [(0.0, 4, 2)])
    assert by_seq(dp)[0]["lat"] == 2.0


def test_speed_figure() -> None:
    figures = bench_llm_plane(duration_s=60.0)
    print(
        f"\n32 pods, 60 simulated s: {figures['generated_tokens'] / 1e6:.1f} M tokens in "
        f"{figures['wall_s']:.3f} s = {figures['tokens_per_wall_s'] / 1e6:.1f} M generated tokens / wall s"
    )
    assert figures["generated_tokens"] > 1e6
    assert math.isfinite(figures["tokens_per_wall_s"])


# ---- client timeout (docs/llm.md, Client timeout) ---------------------------------------------------
def test_a_request_stuck_behind_a_long_prompt_times_out_at_the_next_iteration_start() -> None:
    # Budget 8 tokens, deadline = arrival + 2.5. A (P 16, O 3) prefills in two iterations (first token
    # at 2). B (P 16) gets 7 tokens at t=2 (2 blocks); C (P 4) waits. At t=3 B (deadline 2.75) and C
    # (deadline 3.0: due at exactly 3) still have no token: both are aborted before the scheduler runs,
    # B from the running list, then C from the waiting deque. A, with its tokens, decodes on to t=4.
    dp = plane(unit(max_num_batched_tokens=8, timeout_s=2.5))
    push(dp, 0.0, 2.5, [(0.0, 16, 3), (0.25, 16, 1), (0.5, 4, 1)])
    a, b = dp.running_rows(0).tolist()
    (c,) = dp.waiting_rows(0).tolist()
    assert dp.ri[0, c, L.R_SEQ] == 2 and dp.ri[0, b, L.R_SEQ] == 1
    assert dp.ri[0, b, L.R_HELD] == 2 and dp.ri[0, b, L.R_COMP] == 0 and dp.ri[0, a, L.R_GEN] == 1
    assert dp.kv_used_blocks(0) == 5 + 2
    dp.advance(2.5, 3.5, np.zeros(0))
    assert dp.running_rows(0).tolist() == [a] and dp.waiting_rows(0).tolist() == []
    assert dp.kv_used_blocks(0) == 5 == dp.held_blocks(0)  # B's blocks are free again
    assert dp.counter(K.G_TIMED_OUT) == 2 and dp.pi[0, L.P_TIMED_OUT] == 2
    dp.advance(3.5, 10.0, np.zeros(0))
    rec = by_seq(dp)
    assert [int(s) for s in dp.records().seq] == [1, 2, 0]  # running, then waiting, then A at t=4
    assert rec[1]["outcome"] == rec[2]["outcome"] == K.OUT_TIMED_OUT
    assert rec[1]["lat"] == 2.75 and rec[2]["lat"] == 2.5 and rec[1]["pod"] == rec[2]["pod"] == 0
    assert math.isnan(rec[1]["ttft"]) and math.isnan(rec[2]["ttft"])
    assert rec[0]["outcome"] == K.OUT_COMPLETED and rec[0]["lat"] == 4.0 and rec[0]["ttft"] == 2.0
    assert dp.counter(K.G_COMPLETED) == 1 and dp.counter(K.G_SLO_MET) == 1
    # latency: the time in the system, capped at the timeout for the histogram and the maximum
    assert dp.gf[K.F_LAT_SUM] == 4.0 + 2.75 + 2.5 and dp.gf[K.F_LAT_MAX] == 4.0
    assert dp.hist.sum() == 3 and dp.hist[K._bucket(2.5)] == 2
    assert dp.prompt_tokens == 16 + 7 and dp.generated_tokens == 3
    assert dp.kv_used_blocks(0) == 0 and dp.outstanding(0) == 0
    # Little's law: ∫ outstanding = Σ time in the system (A 4, B 2.75, C 2.5)
    assert dp.system_integral == pytest.approx(float(dp.gf[K.F_SYS_SUM])) == 9.25
    assert dp.gf[K.F_N_WAIT] == 2.0  # A and B were scheduled; C never was


def test_a_request_with_its_first_token_never_times_out() -> None:
    # Deadline 2.5; the first token at 1 and the last at 10.
    dp = plane(unit(timeout_s=2.5))
    push(dp, 0.0, 20.0, [(0.0, 4, 10)])
    assert by_seq(dp)[0]["outcome"] == K.OUT_COMPLETED and by_seq(dp)[0]["lat"] == 10.0
    # A first token emitted at the end of an iteration already running at the deadline counts: chunks
    # of 4 end at 1, 2, 3; the iteration that starts at 3 (past 2.5) finds the token there.
    dp = plane(unit(max_num_batched_tokens=4, timeout_s=2.5))
    push(dp, 0.0, 20.0, [(0.0, 12, 2)])
    rec = by_seq(dp)[0]
    assert rec["outcome"] == K.OUT_COMPLETED and rec["ttft"] == 3.0 and rec["lat"] == 4.0
    assert dp.counter(K.G_TIMED_OUT) == 0


def test_an_idle_pod_aborts_at_the_deadline_exactly_before_arrivals_of_that_instant() -> None:
    # No chunked prefill, budget 8: A (P 16) can never be scheduled and pod 0 idles with it. At 2.5,
    # its deadline, A is aborted; B, arriving then, finds both pods empty and goes to slot 0.
    dp = plane(unit(chunked_prefill=False, max_num_batched_tokens=8, timeout_s=2.5), pods=2)
    push(dp, 0.0, 2.4, [(0.0, 16, 1)])
    assert dp.outstanding(0) == 1 and dp.pi[0, L.P_BUSY] == 0
    push(dp, 2.4, 10.0, [(2.5, 4, 1)])
    rec = by_seq(dp)
    assert rec[0]["outcome"] == K.OUT_TIMED_OUT and rec[0]["lat"] == 2.5 and rec[0]["pod"] == 0
    assert rec[1]["outcome"] == K.OUT_COMPLETED and rec[1]["pod"] == 0 and rec[1]["lat"] == 1.0
    assert dp.pi[0, L.P_N_ITER] == 1 and dp.pi[1, L.P_N_ITER] == 0
    assert dp.system_integral == pytest.approx(float(dp.gf[K.F_SYS_SUM])) == 3.5


def test_router_queue_requests_give_up_at_their_deadline_or_when_handed_out_past_it() -> None:
    # Deadline = arrival + 2, router queue of 3, no pod until 3.0. The first leaves at 2.5, making room
    # for the arrival at that instant (a deadline before an arrival of the same instant); the second's
    # deadline is the hand-out instant: timed out instead of routed. The last two are served at 3.
    dp = LlmDataPlane(unit(router_queue_capacity=3, timeout_s=2.0), max_slots=2, seed=0, record=True)
    push(dp, 0.0, 3.0, [(0.5, 4, 1), (1.0, 4, 1), (1.5, 4, 1), (2.5, 4, 1)])
    assert dp.router_queue_len == 3 and dp.counter(K.G_TIMED_OUT) == 1 and dp.counter(K.G_REJECTED) == 0
    p = dp.open_slot(3.0)
    dp.hand_out(3.0)
    assert dp.router_queue_len == 0 and dp.outstanding(p) == 2 and dp.counter(K.G_TIMED_OUT) == 2
    dp.advance(3.0, 10.0, np.zeros(0))
    rec = by_seq(dp)
    assert [rec[s]["outcome"] for s in range(4)] == [K.OUT_TIMED_OUT] * 2 + [K.OUT_COMPLETED] * 2
    assert rec[0]["lat"] == 2.0 and rec[1]["lat"] == 2.0 and rec[0]["pod"] == rec[1]["pod"] == -1
    assert rec[2]["lat"] == 2.5 and rec[3]["lat"] == 1.5
    assert dp.gf[K.F_RQ_INT] == 0.5 * 1 + 0.5 * 2 + 1.0 * 3 + 0.5 * 3
    assert dp.gf[K.F_LAT_MAX] == 2.5 and dp.gf[K.F_LAT_SUM] == 2.0 + 2.0 + 2.5 + 1.5
    assert dp.system_integral == pytest.approx(float(dp.gf[K.F_SYS_SUM])) == 8.0


def test_conservation_and_littles_law_with_client_timeouts() -> None:
    dp, output, problems = busy_run(7, stop_at=30.0, timeout_s=1.5)
    assert problems == []
    rec = dp.records()
    done = rec.seq[rec.outcome == K.OUT_COMPLETED]
    timed_out = rec.outcome == K.OUT_TIMED_OUT
    assert timed_out.sum() > 20 and dp.counter(K.G_TIMED_OUT) == timed_out.sum()
    assert np.all(rec.latency_s[timed_out] >= 1.5) and np.all(np.isnan(rec.ttft_s[timed_out]))
    assert np.all(rec.pod[timed_out] >= 0)
    assert dp.generated_tokens == int(output[done].sum()) + inflight_generated(dp)
    assert dp.hist.sum() == len(done) + timed_out.sum()
    # nobody still inside is past its deadline without a token, beyond the iteration in progress
    t = 30.0
    inside = 0.0
    for p in dp.active_slots.tolist():
        rows = np.concatenate([dp.running_rows(p), dp.waiting_rows(p)])
        inside += float((t - dp.rf[p, rows, L.RF_ARR]).sum())
        late = (dp.ri[p, rows, L.R_GEN] == 0) & (dp.rf[p, rows, L.RF_ARR] + 1.5 <= dp.pf[p, L.P_ITER_START])
        assert not late.any()
    assert dp.system_integral == pytest.approx(float(dp.gf[K.F_SYS_SUM]) + inside, rel=1e-9)


def test_a_draining_pod_emptied_by_timeouts_ends_at_its_last_abort() -> None:
    dp = plane(unit(chunked_prefill=False, max_num_batched_tokens=8, timeout_s=2.5))
    push(dp, 0.0, 1.0, [(0.0, 4, 1), (0.5, 16, 1)])  # the first ends at 1; the second never fits
    dp.stop_accepting(0)
    dp.advance(1.0, 5.0, np.zeros(0))
    assert dp.outstanding(0) == 0 and dp.last_end_t(0) == 3.0


# ---- closed-loop users (docs/llm.md, Closed-loop users) -------------------------------------------
class FixedTokens:
    """Every request has ``prompt`` and ``output`` tokens; counts what was taken."""

    has_prefix = has_conversation = False  # independent prompts (the TokenTaker protocol)

    def __init__(self, prompt: int, output: int) -> None:
        self.prompt, self.output, self.taken = prompt, output, 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        self.taken += n
        return np.full(n, self.prompt, dtype=np.int32), np.full(n, self.output, dtype=np.int32)


def users_plane(seed: int = 5, max_users: int = 4, think: tuple[float, float] = (2.0, 3.0)) -> LlmDataPlane:
    """One pod of 1-s iterations; requests of 4 + 2 tokens: each one lasts exactly 2 s (prefill, decode)."""
    dp = LlmDataPlane(
        unit(),
        max_slots=2,
        seed=seed,
        record=True,
        think_s=think,
        max_users=max_users,
        tokens=FixedTokens(4, 2),
    )
    dp.open_slot(0.0)
    return dp


def sends(dp: LlmDataPlane) -> list[float]:
    return sorted(by_seq(dp)[k]["arr"] for k in by_seq(dp))


def test_one_user_sends_its_think_time_after_each_outcome() -> None:
    dp = users_plane()
    none = np.zeros(0)
    for t0, t1 in ((0.0, 3.3), (3.3, 3.3), (3.3, 11.0), (11.0, 30.0)):  # cut anywhere, even empty
        dp.advance(t0, t1, none, users_target=1)
    draws = UserDraws(5, (2.0, 3.0))
    think = draws.think(20)
    t = 0.0 + float(draws.start(1)[0])  # the first user starts within one (maximum) think time
    expected = []
    while t < 30.0:
        expected.append(t)
        t = (t + 1.0) + 1.0  # prefill, then the one decode: the outcome two iterations later
        t += float(think[len(expected) - 1])
    rec = by_seq(dp)
    assert [rec[k]["arr"] for k in sorted(rec)] == expected[: len(rec)]  # exact: the same sums
    assert len(rec) == len(expected) - (1 if dp.in_flight else 0)
    assert all(r["outcome"] == K.OUT_COMPLETED and r["lat"] == pytest.approx(2.0) for r in rec.values())
    assert dp.counter(K.G_ARRIVED) == len(expected)
    assert all(2.0 <= b - a - 2.0 <= 3.0 for a, b in pairwise(expected))


def test_users_target_adds_users_with_start_offsets_and_retires_them_as_they_become_free() -> None:
    dp = users_plane(max_users=3)
    none = np.zeros(0)
    schedule = ((0.0, 1), (10.0, 3), (20.0, 1), (20.5, 2), (21.0, 1))
    edges = [0.0, 10.0, 20.0, 20.5, 21.0, 60.0]
    for (t0, n), t1 in zip(schedule, edges[1:], strict=True):
        dp.advance(t0, t1, none, users_target=n)
    start = UserDraws(5, (2.0, 3.0)).start(3)
    arr = sends(dp)
    # the two users added at 10 s (ids 1 and 2) send first at 10 + their start offsets
    assert 10.0 + float(start[1]) in arr and 10.0 + float(start[2]) in arr
    assert all(t < 10.0 for t in arr if t < 10.0 + min(float(start[1]), float(start[2])))
    # 20 s: back to one user (two retire as they next become free); 20.5 s: two (one retirement is
    # cancelled, nobody new starts: the start stream is not drawn); 21 s: one again
    assert dp.gi[K.G_USERS_ACTIVE] == 1
    assert dp.draws.start(1)[0] == UserDraws(5, (2.0, 3.0)).start(4)[3]
    # once the retiring users' last requests are over, one user is left: sends 4 to 5 s apart
    late = [t for t in arr if t > 26.0]
    assert len(late) >= 6
    assert all(4.0 <= b - a <= 5.0 for a, b in pairwise(late))
    busy = [t for t in arr if 12.0 < t < 20.0]
    assert len(busy) >= 3 * 8 / 5 - 1  # three users, one request every 4-5 s each
    # conservation: every user is free, waiting to send, or has its one request in the system
    assert dp.gi[K.G_FREE_N] + dp.gi[K.G_HEAP_N] + dp.in_flight == 3
    assert dp.gi[K.G_RETIRE] == 0


def test_closed_loop_lengths_do_not_depend_on_how_the_run_is_cut() -> None:
    def run(edges: list[float]) -> dict[int, dict[str, float]]:
        dp = LlmDataPlane(
            unit(beta0_s=0.05, beta_prefill_s=0.001, beta_decode_s=0.002), max_slots=2, seed=9, record=True,
            think_s=(0.5, 1.5), max_users=8, tokens=_Seq(),
        )  # fmt: skip
        dp.open_slot(0.0)
        for t0, t1 in pairwise(edges):
            dp.advance(t0, t1, np.zeros(0), users_target=8 if t0 < 30.0 else 3)
        return by_seq(dp)

    one = run([0.0, 30.0, 60.0])
    cuts = np.concatenate([np.arange(0.0, 30.0, 0.7), [30.0], np.arange(30.0, 60.0, 2.9), [60.0]])
    many = run([float(t) for t in cuts])
    assert len(one) > 100 and one == many


class _Seq:
    """Lengths 1, 2, 3, ... (prompt) and 1..5 (output), in order: which request got which is visible."""

    has_prefix = has_conversation = False  # independent prompts (the TokenTaker protocol)

    def __init__(self) -> None:
        self.taken = 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        k = np.arange(self.taken, self.taken + n)
        self.taken += n
        return (k % 40 + 1).astype(np.int32), (k % 5 + 1).astype(np.int32)


def test_more_sends_than_the_buffer_bound_carry_on_exactly() -> None:
    """Think times under 1 ms and requests rejected at once (too long): far more sends than the bound
    the buffer is sized by; the plane refills and goes on from the send that found it empty."""

    def run(edges: list[float]) -> tuple[int, list[float]]:
        dp = LlmDataPlane(
            unit(max_model_len=8), max_slots=1, seed=2, record=True, think_s=(1e-5, 1e-4), max_users=2,
            tokens=FixedTokens(8, 4),
        )  # fmt: skip
        dp.open_slot(0.0)
        for t0, t1 in pairwise(edges):
            dp.advance(t0, t1, np.zeros(0), users_target=2)
        rec = by_seq(dp)
        assert all(r["outcome"] == K.OUT_REJECTED for r in rec.values())
        return dp.counter(K.G_REJECTED), [rec[k]["arr"] for k in sorted(rec)]

    rejected, sent = run([0.0, 1.0])
    assert rejected > 20_000 and len(sent) == rejected
    assert run([0.0, 0.25, 0.5, 1.0]) == (rejected, sent)


def test_users_need_a_closed_loop_plane_and_a_token_source() -> None:
    with pytest.raises(ValueError, match="closed-loop users"):
        plane(unit()).advance(0.0, 1.0, np.zeros(0), users_target=3)
    with pytest.raises(ValueError, match="token source"):
        LlmDataPlane(unit(), max_slots=1, seed=0, think_s=(1.0, 2.0), max_users=2)
    with pytest.raises(ValueError, match="max_users"):
        users_plane(max_users=2).advance(0.0, 1.0, np.zeros(0), users_target=3)
