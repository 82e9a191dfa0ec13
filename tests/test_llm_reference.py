"""The SimPy reference model of the token-level engine, by hand and against the compiled kernel.

The first part checks :func:`~gpuscale.sim.llm_reference.simulate_llm_reference` alone on cases traced
by hand from docs/llm.md: each expected time is a sum of iteration durations ``d(...)`` written out
iteration by iteration in the test.

The second part runs the compiled engine (:class:`gpuscale.sim.llm_plane.LlmDataPlane`) as the engine
runs it, in chunks with pods opened between two ``advance`` calls, on small deterministic scenarios,
and holds it to the reference request for request: outcome, pod, TTFT, completion time, preemptions,
and the totals. Each scenario states what it must exercise (preemptions, rejections, the router
queue), so that one that stopped exercising its mechanism fails instead of agreeing vacuously. The
third part does the same with closed-loop users: both sides get the same token sequence, think times
and start offsets (``UserDraws``), and the kernel gets each change of the user count at a chunk start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from gpuscale.sim.llm_reference import LlmReferenceResult, LlmRequestResult, simulate_llm_reference
from gpuscale.sim.llm_serving import LlmParams
from tests.llm_exact import CACHED, d

# -- helpers ------------------------------------------------------------------------------------------


def run(
    params: LlmParams,
    requests: list[tuple[float, int, int]],
    *,
    pods: list[tuple[float, float]] | None = None,
    t_end: float = 100.0,
    **kw: Any,
) -> LlmReferenceResult:
    """``requests`` = [(arrival, prompt, output), ...]; one pod open from 0 unless ``pods`` says more."""
    arrivals = [a for a, _, _ in requests]
    prompt = [p for _, p, _ in requests]
    output = [o for _, _, o in requests]
    return simulate_llm_reference(
        params, arrivals, prompt, output, pods=pods or [(0.0, 1.0)], t_end=t_end, **kw
    )


def approx(x: float) -> Any:
    return pytest.approx(x, abs=1e-12)


# Binary-fraction iteration costs: every duration and sum below is exact in floating point, so that
# iteration ends and arrivals really coincide.
EXACT = replace(CACHED, beta_kv_s=0.0, enable_prefix_caching=False)


# -- one request ---------------------------------------------------------------------------------------


def test_one_request_prefills_in_one_iteration_then_decodes_one_token_per_iteration() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096)
    prompt, output, t0 = 100, 5, 0.25
    res = run(p, [(t0, prompt, output)])
    (r,) = res.requests

    prefill = d(p, prefill=prompt, context=prompt)
    # Decode k computes the KV of token prompt + k (its newest) and reads prompt + k tokens of context.
    decodes = [d(p, decode=1, context=prompt + k) for k in range(1, output)]
    assert r.outcome == "completed"
    assert r.pod == 0
    assert r.ttft_s == approx(prefill)
    assert r.itl_s == pytest.approx(decodes, abs=1e-12)
    assert r.completion_s == approx(t0 + prefill + sum(decodes))
    assert r.e2e_s == approx(prefill + sum(decodes))
    assert r.generated == output and r.preemptions == 0 and r.slo_met
    assert (res.generated_tokens, res.prompt_tokens, res.preemptions) == (output, prompt, 0)
    assert res.pods[0].used_blocks == 0 and res.pods[0].running == res.pods[0].waiting == 0
    assert res.pods[0].iterations == output


def test_a_single_output_token_request_finishes_at_its_first_token() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096)
    (r,) = run(p, [(0.0, 40, 1)]).requests
    assert r.ttft_s == r.e2e_s == approx(d(p, prefill=40, context=40))
    assert r.itl_s == ()


def test_pod_speed_multiplies_every_iteration() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096)
    slow = run(p, [(0.0, 100, 3)], pods=[(0.0, 2.5)]).requests[0]
    fast = run(p, [(0.0, 100, 3)]).requests[0]
    assert slow.ttft_s == approx(2.5 * fast.ttft_s)
    assert slow.e2e_s == approx(2.5 * fast.e2e_s)


# -- chunked prefill and the token budget --------------------------------------------------------------


def test_chunked_prefill_splits_a_long_prompt_by_the_token_budget() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=32)
    (r,) = run(p, [(0.0, 80, 2)]).requests
    chunks = [
        d(p, prefill=32, context=32),
        d(p, prefill=32, context=64),
        d(p, prefill=16, context=80),  # the last chunk emits the first token
    ]
    assert r.ttft_s == approx(sum(chunks))
    assert r.itl_s == pytest.approx([d(p, decode=1, context=81)], abs=1e-12)


def test_long_prefill_token_threshold_caps_each_chunk() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, long_prefill_token_threshold=20)
    res = run(p, [(0.0, 50, 1)])
    chunks = [d(p, prefill=20, context=20), d(p, prefill=20, context=40), d(p, prefill=10, context=50)]
    assert res.requests[0].ttft_s == approx(sum(chunks))
    assert res.prompt_tokens == 50


def test_a_running_decode_shares_the_budget_with_a_new_prompt() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=64)
    # A (P = 10, O = 3) prefills alone; B (P = 100) arrives during that iteration.
    a_prefill = d(p, prefill=10, context=10)
    res = run(p, [(0.0, 10, 3), (0.001, 100, 2)])
    a, b = res.requests
    assert a_prefill > 0.001
    # Iteration 2: A decodes (1 token), B gets the other 63 of the budget.
    it2 = d(p, prefill=63, decode=1, context=11 + 63)
    # Iteration 3: A decodes its last token, B its last 37 prompt tokens (its first token).
    it3 = d(p, prefill=37, decode=1, context=12 + 100)
    assert a.ttft_s == approx(a_prefill)
    assert a.e2e_s == approx(a_prefill + it2 + it3)
    assert b.first_token_s == approx(a_prefill + it2 + it3)
    # Iteration 4: B decodes alone.
    assert b.completion_s == approx(a_prefill + it2 + it3 + d(p, decode=1, context=101))


def test_a_one_token_chunk_that_completes_a_prompt_counts_as_decode() -> None:
    # docs/llm.md: a request scheduled for n = 1 with computed = num_tokens − 1 counts as decode.
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=16)
    res = run(p, [(0.0, 17, 1)])
    assert res.requests[0].ttft_s == approx(d(p, prefill=16, context=16) + d(p, decode=1, context=17))
    assert res.prompt_tokens == 16


# -- max_num_seqs ------------------------------------------------------------------------------------


def test_max_num_seqs_holds_the_next_request_in_waiting_until_one_finishes() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_seqs=2)
    res = run(p, [(0.0, 10, 2), (0.0, 20, 2), (0.0, 30, 1)])
    a, b, c = res.requests
    it1 = d(p, prefill=30, context=30)  # A and B; C waits (two running)
    it2 = d(p, decode=2, context=11 + 21)  # both finish
    it3 = d(p, prefill=30, context=30)  # C at last
    assert a.completion_s == b.completion_s == approx(it1 + it2)
    assert c.ttft_s == approx(it1 + it2 + it3)


# -- KV cache exhaustion and preemption ---------------------------------------------------------------


def test_kv_exhaustion_preempts_the_last_running_request_to_the_front_of_waiting() -> None:
    # Blocks of 4 tokens, 4 blocks. A (P = 8, O = 4) and B (P = 6, O = 3) at 0; C (P = 4, O = 1) at 1 ms.
    p = LlmParams(num_blocks=4, block_size=4, max_model_len=16)
    res = run(p, [(0.0, 8, 4), (0.0, 6, 3), (0.001, 4, 1)])
    a, b, c = res.requests

    # 1: A (8 tokens, 2 blocks) and B (6 tokens, 2 blocks) prefill; no block is left; C arrives.
    e1 = d(p, prefill=14, context=14)
    assert c.arrival_s < e1
    # 2: A's decode needs a 3rd block: B, the LAST running request, is preempted (its 2 blocks freed,
    #    computed = 0) and goes to the FRONT of waiting, ahead of C. Nothing waiting is scheduled.
    e2 = e1 + d(p, decode=1, context=9)
    # 3, 4: A decodes (10, 11 tokens fit in its 3 blocks). B, at the head, needs ceil(7 / 4) = 2
    #    blocks, one is free: scheduling stops, and C (which would fit in 1 block) waits behind it.
    e3 = e2 + d(p, decode=1, context=10)
    e4 = e3 + d(p, decode=1, context=11)  # A's 4th token: A finishes, 4 blocks free
    # 5: B recomputes its prompt and its one generated token (7 tokens, prefill) and emits its 2nd
    #    token; C prefills and finishes.
    e5 = e4 + d(p, prefill=7 + 4, context=7 + 4)
    # 6: B decodes its 3rd and last token.
    e6 = e5 + d(p, decode=1, context=8)

    assert a.outcome == b.outcome == c.outcome == "completed"
    assert a.completion_s == approx(e4) and a.preemptions == 0
    assert a.itl_s == pytest.approx([e2 - e1, e3 - e2, e4 - e3], abs=1e-12)
    assert b.ttft_s == approx(e1) and b.preemptions == 1
    assert b.itl_s == pytest.approx([e5 - e1, e6 - e5], abs=1e-12)
    assert b.completion_s == approx(e6)
    assert c.ttft_s == approx(e5 - 0.001) and c.completion_s == approx(e5)
    assert res.preemptions == 1
    assert res.prompt_tokens == 14 + 7 + 4  # the recomputation counts as prompt tokens
    assert res.generated_tokens == 4 + 3 + 1
    assert res.pods[0].iterations == 6


def test_the_victim_is_the_last_running_request_not_the_one_that_needs_a_block() -> None:
    # Blocks of 4, 4 blocks. A (P = 8, O = 3) and B (P = 8, O = 3): each holds 2 blocks after prefill.
    # Iteration 2: A needs a 3rd block with none free, so B (the last) is preempted and A takes one of
    # B's; B has left the running list, so the pass ends; A decodes alone.
    p = LlmParams(num_blocks=4, block_size=4, max_model_len=16)
    res = run(p, [(0.0, 8, 3), (0.0, 8, 3)])
    a, b = res.requests
    e1 = d(p, prefill=16, context=16)
    e2 = e1 + d(p, decode=1, context=9)
    e3 = e2 + d(p, decode=1, context=10)  # A finishes (3 tokens); B needs ceil(9 / 4) = 3 blocks
    # B waits until A is gone: its 1 free block is not enough while A holds 3.
    e4 = e3 + d(p, prefill=9, context=9)
    e5 = e4 + d(p, decode=1, context=10)
    assert a.completion_s == approx(e3) and a.preemptions == 0
    assert b.preemptions == 1 and b.ttft_s == approx(e1)
    assert b.itl_s == pytest.approx([e4 - e1, e5 - e4], abs=1e-12)
    assert res.pods[0].iterations == 5


def test_the_request_itself_is_the_victim_when_it_is_last() -> None:
    # Blocks of 4, 5 blocks. A (P = 8, O = 6) and B (P = 8, O = 2): 4 blocks held, 1 free.
    # Iteration 2: A needs a 3rd block and takes the free one; B then needs a 3rd block, none is
    # free: B, the last running request, is B itself: it is preempted and the pass stops.
    p = LlmParams(num_blocks=5, block_size=4, max_model_len=16)
    res = run(p, [(0.0, 8, 6), (0.0, 8, 2)])
    a, b = res.requests
    e1 = d(p, prefill=16, context=16)
    e2 = e1 + d(p, decode=1, context=9)  # A alone
    assert a.itl_s[0] == approx(e2 - e1)
    assert b.preemptions == 1 and a.preemptions == 0
    # 3..6: A decodes (10, 11, 12 then 13 tokens: a 4th block at 13); B needs 3 blocks, 2 are free.
    e6 = e2 + sum(d(p, decode=1, context=c) for c in (10, 11, 12, 13))
    assert a.completion_s == approx(e6)
    # 7: B recomputes 9 tokens, emits its 2nd (last) token.
    assert b.completion_s == approx(e6 + d(p, prefill=9, context=9))


def test_no_waiting_request_is_scheduled_in_an_iteration_with_a_preemption() -> None:
    # Blocks of 4, 4 blocks, at most 4 tokens per request per iteration. A and B (P = 4, O = 6) each
    # hold 2 blocks after 4 tokens of output. Iteration 6: A needs a 3rd block, B is preempted (2
    # blocks free, A takes one). B's first chunk (4 tokens, 1 block) would fit in the free block, but
    # waiting requests are not considered in an iteration that preempted.
    p = LlmParams(num_blocks=4, block_size=4, max_model_len=16, long_prefill_token_threshold=4)
    res = run(p, [(0.0, 4, 6), (0.0, 4, 6)])
    a, b = res.requests
    e5 = d(p, prefill=8, context=8) + sum(d(p, decode=2, context=2 * c) for c in (5, 6, 7, 8))
    e6 = e5 + d(p, decode=1, context=9)  # A alone; A's 6th token: A finishes
    assert a.completion_s == approx(e6)
    # B recomputes its 9 tokens in chunks of 4, 4 and 1 (the last counts as decode) and emits its 6th.
    e9 = e6 + d(p, prefill=4, context=4) + d(p, prefill=4, context=8) + d(p, decode=1, context=9)
    assert b.completion_s == approx(e9) and b.preemptions == 1
    assert res.prompt_tokens == 8 + 8


def test_state_at_t_end() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, router_queue_capacity=5)
    # The pod opens at 2.0, after t_end: both requests are still in the router queue.
    res = run(p, [(0.0, 10, 2), (0.5, 10, 2)], pods=[(2.0, 1.0)], t_end=1.0)
    assert [(r.outcome, r.pod) for r in res.requests] == [("in_flight", -1)] * 2
    assert res.pods[0].running == res.pods[0].waiting == 0
    # Mid-decode at t_end: the request holds its blocks; nothing it has not emitted is counted.
    t_end = d(p, prefill=20, context=20) + 0.001
    res = run(p, [(0.0, 20, 50)], t_end=t_end)
    (r,) = res.requests
    assert r.outcome == "in_flight" and r.generated == 1 and math.isnan(r.completion_s)
    assert res.pods[0].running == 1 and res.pods[0].used_blocks == 2
    assert (res.generated_tokens, res.prompt_tokens) == (1, 20)


# -- without chunked prefill --------------------------------------------------------------------------


def test_without_chunked_prefill_a_prompt_over_the_budget_is_skipped_and_keeps_its_place() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=64, chunked_prefill=False)
    # A's 100 tokens never fit in the budget of 64: it is skipped, B and then C are served behind it.
    res = run(p, [(0.0, 100, 2), (0.0, 10, 1), (1.0, 5, 1)], t_end=2.0)
    a, b, c = res.requests
    assert b.ttft_s == approx(d(p, prefill=10, context=10))
    # After B the pod has only A, which cannot be scheduled: it idles until C arrives.
    assert c.ttft_s == approx(d(p, prefill=5, context=5))
    assert a.outcome == "in_flight" and a.pod == 0 and a.generated == 0
    assert res.pods[0].waiting == 1 and res.pods[0].running == 0 and res.pods[0].used_blocks == 0
    assert res.pods[0].iterations == 2


def test_without_chunked_prefill_a_prompt_waits_for_a_budget_it_fits_in_whole() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=64, chunked_prefill=False)
    # A (P = 40, O = 3) runs; B (P = 64) arrives during A's prefill. Iteration 2: A decodes (budget
    # 63 left), so B (64 > 63) is skipped; C (P = 30) behind it is scheduled. Iteration 3: A and C
    # decode (62 left): B again skipped. Iteration 4: A finished at 3, C at 2: B alone, whole.
    res = run(p, [(0.0, 40, 3), (0.001, 64, 1), (0.002, 30, 2)])
    a, b, c = res.requests
    e1 = d(p, prefill=40, context=40)
    e2 = e1 + d(p, prefill=30, decode=1, context=41 + 30)
    e3 = e2 + d(p, decode=2, context=42 + 31)
    e4 = e3 + d(p, prefill=64, context=64)
    assert a.completion_s == approx(e3) and c.completion_s == approx(e3) and c.ttft_s == approx(e2 - 0.002)
    assert b.completion_s == approx(e4)
    # With chunked prefill B takes the 63 tokens left in iteration 2 (C, behind it, gets none); in
    # iteration 3 its 64th token has n = 1 and computed = num_tokens − 1: it counts as decode.
    chunked = run(replace(p, chunked_prefill=True), [(0.0, 40, 3), (0.001, 64, 1), (0.002, 30, 2)])
    e2c = e1 + d(p, prefill=63, decode=1, context=41 + 63)
    e3c = e2c + d(p, prefill=30, decode=2, context=42 + 64 + 30)
    assert chunked.requests[1].first_token_s == approx(e3c)
    assert chunked.requests[2].first_token_s == approx(e3c)
    assert chunked.prompt_tokens == 40 + 63 + 30


# -- rejection and routing ----------------------------------------------------------------------------


def test_a_request_longer_than_max_model_len_is_rejected_on_arrival() -> None:
    p = LlmParams(num_blocks=64, block_size=16, max_model_len=1000)
    res = run(p, [(0.0, 990, 11), (0.0, 990, 10), (0.5, 1, 1000)], t_end=10.0)
    too_long, fits, also_too_long = res.requests
    assert too_long.outcome == also_too_long.outcome == "rejected"
    assert too_long.pod == -1 and too_long.e2e_s == 0.0 and too_long.generated == 0
    assert fits.outcome == "completed"
    assert res.preemptions == 0 and res.slo_met == 1


def test_least_outstanding_routing_ties_to_the_lowest_slot() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096)
    res = run(p, [(0.0, 10, 50)] * 5, pods=[(0.0, 1.0), (0.0, 1.0), (0.0, 1.0)])
    assert [r.pod for r in res.requests] == [0, 1, 2, 0, 1]


def test_a_full_pod_rejects_and_the_router_queue_waits_for_the_first_pod() -> None:
    p = LlmParams(
        num_blocks=600, max_model_len=4096, max_num_seqs=1, queue_capacity=1, router_queue_capacity=3
    )
    # No pod until 1.0: four arrive, three wait in the router queue, the fourth is rejected there.
    # At 1.0 pod 0 opens and takes two (its capacity); the third is rejected by it. Pod 1 opens at 2.0.
    reqs = [(0.1 * k, 10, 1) for k in range(1, 5)] + [(3.0, 10, 1)]
    res = run(p, reqs, pods=[(1.0, 1.0), (2.0, 1.0)], t_end=10.0)
    r1, r2, r3, r4, r5 = res.requests
    assert (r4.outcome, r4.pod) == ("rejected", -1)
    assert (r3.outcome, r3.pod) == ("rejected", 0)
    assert (r1.pod, r2.pod) == (0, 0)
    one = d(p, prefill=10, context=10)
    assert r1.completion_s == approx(1.0 + one)
    assert r2.completion_s == approx(1.0 + 2 * one)  # max_num_seqs = 1: one after the other
    assert r5.pod == 0  # both idle at 3.0: the lowest slot


def test_of_two_pods_opening_at_one_instant_the_first_takes_the_router_queue() -> None:
    # Each pod that starts accepting takes its own hand-out, in slot order: slot 0 takes all three
    # queued requests (it has room); slot 1 gets the next arrival (fewest outstanding).
    p = LlmParams(num_blocks=600, max_model_len=4096, router_queue_capacity=5)
    reqs = [(0.1, 10, 20), (0.2, 10, 20), (0.3, 10, 20), (1.0, 10, 20)]
    res = run(p, reqs, pods=[(1.0, 1.0), (1.0, 1.0)], t_end=10.0)
    assert [r.pod for r in res.requests] == [0, 0, 0, 1]
    # The arrival at the opening instant is routed after the hand-outs and before any iteration.
    assert res.requests[3].ttft_s == approx(d(p, prefill=10, context=10))
    assert res.requests[0].first_token_s == approx(1.0 + d(p, prefill=30, context=30))


def test_ttft_itl_and_e2e_slos() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096)
    res = run(p, [(0.0, 100, 5), (10.0, 100, 1), (20.0, 2000, 5)])
    a = res.requests[0]
    assert res.slo_met == 3
    # ITL target between A's mean ITL and the prefill time: B (O = 1) is exempt, C's TTFT too long.
    itl_a = (a.e2e_s - a.ttft_s) / 4
    assert itl_a == approx(sum(a.itl_s) / 4)
    tight = run(p, [(0.0, 100, 5), (10.0, 100, 1), (20.0, 2000, 5)], itl_slo_s=itl_a, ttft_slo_s=0.05)
    assert [r.slo_met for r in tight.requests] == [True, True, False]
    assert run(p, [(0.0, 100, 5)], itl_slo_s=itl_a * 0.999).slo_met == 0
    assert run(p, [(0.0, 100, 5)], e2e_slo_s=a.e2e_s).slo_met == 1
    assert run(p, [(0.0, 100, 5)], e2e_slo_s=a.e2e_s * 0.999).slo_met == 0


# -- client timeout (docs/llm.md, Client timeout) ---------------------------------------------------


def test_requests_without_a_token_are_aborted_at_the_first_iteration_start_past_their_deadline() -> None:
    # Budget 32. A (P = 64, O = 3) prefills in two iterations; B (P = 64) arrives at 1 ms and gets the
    # 31 tokens left in iteration 3; C (P = 8) at 2 ms waits. The deadlines of B and C fall during
    # iteration 3: at its end both still have no token and the iteration that starts then aborts them
    # (B from the running list, its blocks freed; C from the waiting deque) before scheduling.
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=32)
    e1 = d(p, prefill=32, context=32)
    e2 = e1 + d(p, prefill=32, context=64)  # A's first token
    e3 = e2 + d(p, prefill=31, decode=1, context=65 + 31)
    timeout = (e2 + e3) / 2
    assert e2 < 0.001 + timeout and 0.002 + timeout <= e3
    p = replace(p, timeout_s=timeout)
    res = run(p, [(0.0, 64, 3), (0.001, 64, 1), (0.002, 8, 1)])
    a, b, c = res.requests
    e4 = e3 + d(p, decode=1, context=66)  # A alone, its last token
    assert a.outcome == "completed" and a.completion_s == approx(e4) and a.ttft_s == approx(e2)
    for r in (b, c):
        assert r.outcome == "timed_out" and r.timed_out_s == e3 and r.pod == 0
        assert r.e2e_s == e3 - r.arrival_s and r.generated == 0 and math.isnan(r.ttft_s)
        assert not r.slo_met
    assert res.timed_out == 2 and res.slo_met == 1
    assert res.prompt_tokens == 32 + 32 + 31  # B's chunk was computed all the same
    assert res.pods[0].used_blocks == 0 and res.pods[0].iterations == 4


def test_a_request_with_its_first_token_never_times_out() -> None:
    p = LlmParams(num_blocks=600, max_model_len=4096, timeout_s=0.05)
    (r,) = run(p, [(0.0, 100, 40)]).requests
    assert r.ttft_s < 0.05 < r.e2e_s and r.outcome == "completed"
    # Chunks of 32: the first token comes at the end of the 3rd iteration, past the deadline; the
    # iteration that starts then finds it there.
    p = LlmParams(num_blocks=600, max_model_len=4096, max_num_batched_tokens=32)
    e2 = d(p, prefill=32, context=32) + d(p, prefill=32, context=64)
    (r,) = run(replace(p, timeout_s=e2 + 1e-6), [(0.0, 80, 2)]).requests
    assert r.outcome == "completed" and r.ttft_s > e2 + 1e-6


def test_an_idle_pod_aborts_at_the_deadline_exactly_before_arrivals_of_that_instant() -> None:
    # No chunked prefill, budget 64: A (P = 100) is skipped for ever and pod 0 idles with it. At 2.0,
    # its deadline, it is aborted; B, arriving then, finds both pods empty and goes to slot 0.
    p = LlmParams(
        num_blocks=600, max_model_len=4096, max_num_batched_tokens=64, chunked_prefill=False, timeout_s=2.0
    )
    res = run(p, [(0.0, 100, 1), (2.0, 10, 1)], pods=[(0.0, 1.0), (0.0, 1.0)], t_end=5.0)
    a, b = res.requests
    assert a.outcome == "timed_out" and a.timed_out_s == 2.0 and a.pod == 0
    assert b.outcome == "completed" and b.pod == 0
    assert [pod.iterations for pod in res.pods] == [1, 0]


def test_router_queue_requests_give_up_at_their_deadline_or_at_the_hand_out() -> None:
    # Router queue of 2, deadline = arrival + 1, no pod until 3.0. Each arrival from 1.5 on finds the
    # queue full but its oldest request giving up at that instant first, so none is rejected. At 3.0
    # the request that arrived at 2.0 is due: timed out instead of routed; the last one is served.
    p = LlmParams(num_blocks=600, max_model_len=4096, router_queue_capacity=2, timeout_s=1.0)
    reqs = [(0.5, 10, 1), (1.0, 10, 1), (1.5, 10, 1), (2.0, 10, 1), (2.5, 10, 1)]
    res = run(p, reqs, pods=[(3.0, 1.0)], t_end=10.0)
    *gave_up, last = res.requests
    assert [(r.outcome, r.pod, r.timed_out_s) for r in gave_up] == [
        ("timed_out", -1, 1.5),
        ("timed_out", -1, 2.0),
        ("timed_out", -1, 2.5),
        ("timed_out", -1, 3.0),
    ]
    assert last.outcome == "completed" and last.completion_s == approx(3.0 + d(p, prefill=10, context=10))
    assert res.timed_out == 4


# -- same-instant order and t_end --------------------------------------------------------------------


def test_an_arrival_at_the_end_of_an_iteration_joins_the_next_one() -> None:
    p = EXACT
    e1 = d(p, prefill=8, context=8)
    assert e1 == 1 / 64
    res = run(p, [(0.0, 8, 3), (e1, 8, 1)])
    a, b = res.requests
    e2 = e1 + d(p, prefill=8, decode=1, context=9 + 8)
    assert b.completion_s == e2 and a.itl_s[0] == e2 - e1


def test_an_iteration_end_frees_its_pod_before_an_arrival_at_that_instant_is_routed() -> None:
    p = EXACT
    e1 = d(p, prefill=8, context=8)
    # A finishes on pod 0 at e1; at e1 both pods have nothing outstanding: the arrival goes to slot 0.
    res = run(p, [(0.0, 8, 1), (e1, 8, 1)], pods=[(0.0, 1.0), (0.0, 1.0)])
    assert [r.pod for r in res.requests] == [0, 0]


def test_nothing_at_t_end_is_processed() -> None:
    p = EXACT
    e1 = d(p, prefill=8, context=8)
    res = run(p, [(0.0, 8, 1), (e1, 8, 1)], t_end=e1)
    assert [r.outcome for r in res.requests] == ["in_flight"]  # the 2nd never arrived
    assert res.generated_tokens == 0 and res.prompt_tokens == 0
    assert res.pods[0].running == 1 and res.pods[0].used_blocks == 1


def test_bad_input_is_refused() -> None:
    p = EXACT
    with pytest.raises(ValueError, match="sorted"):
        simulate_llm_reference(p, [1.0, 0.0], [1, 1], [1, 1], pods=[(0.0, 1.0)], t_end=2.0)
    with pytest.raises(ValueError, match=">= 1"):
        simulate_llm_reference(p, [0.0], [0], [1], pods=[(0.0, 1.0)], t_end=2.0)
    with pytest.raises(ValueError, match="same length"):
        simulate_llm_reference(p, [0.0], [1, 2], [1], pods=[(0.0, 1.0)], t_end=2.0)


# -- the compiled engine against the reference --------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    params: LlmParams
    pods: tuple[tuple[float, float], ...]
    """(opens at, speed) per slot, in order of opening."""
    rate: float = 22.0
    """Arrivals per second."""
    prompt: tuple[int, int] = (8, 600)
    output: tuple[int, int] = (1, 100)
    """Uniform ranges of the prompt and output lengths."""
    t_end: float = 15.0
    chunk_s: float = 0.37
    grid: bool = False
    """Binary-fraction arrival times (with EXACT-like costs): iteration ends and arrivals coincide."""
    must_reject: bool = False
    must_time_out_idle: bool = False
    must_time_out_queued: bool = False
    slo: tuple[float, float, float] = (0.5, 0.05, 4.0)


SMALL_KV = LlmParams(
    num_blocks=96,
    block_size=16,
    max_model_len=1024,
    max_num_batched_tokens=512,
    max_num_seqs=12,
    queue_capacity=40,
)
THREE_PODS = ((0.0, 1.0), (2.5, 1.0), (6.1, 1.5))

CROSS_SCENARIOS: dict[str, Scenario] = {
    "chunked-prefill-preemption": Scenario(SMALL_KV, THREE_PODS),
    "no-chunked-prefill": Scenario(
        replace(SMALL_KV, chunked_prefill=False, max_num_batched_tokens=1024),
        ((0.0, 1.0), (2.5, 1.25), (6.1, 1.0)),
    ),
    # Prompts over the budget of 512 are never scheduled without chunked prefill: skipped for ever, they
    # fill the waiting deques; a pod left with only those idles until its next arrival.
    "no-chunked-prefill-skipped-for-ever": Scenario(
        replace(SMALL_KV, chunked_prefill=False, queue_capacity=12), THREE_PODS, must_reject=True
    ),
    "long-prefill-threshold": Scenario(
        replace(SMALL_KV, long_prefill_token_threshold=96, max_num_batched_tokens=256), THREE_PODS
    ),
    "no-chunked-prefill-threshold": Scenario(
        replace(
            SMALL_KV, chunked_prefill=False, long_prefill_token_threshold=200, max_num_batched_tokens=384
        ),
        ((0.0, 1.0), (4.3, 1.0)),
        rate=18.0,
    ),
    # No pod until 0.3 s: the router queue fills and overflows; small pod queues reject; some requests
    # are longer than max_model_len.
    "router-queue-late-pods-rejections": Scenario(
        replace(SMALL_KV, max_num_seqs=8, queue_capacity=6, router_queue_capacity=12, max_model_len=900),
        ((0.3001, 1.0), (4.1003, 1.0), (9.6007, 1.0)),
        rate=16.0,
        prompt=(8, 700),
        output=(1, 300),
        must_reject=True,
    ),
    # Two pods start accepting at one instant: the first takes the whole router queue (each opening is
    # its own hand-out), the second gets only later arrivals.
    "pods-open-together": Scenario(
        replace(SMALL_KV, router_queue_capacity=12, queue_capacity=20),
        ((0.8, 1.0), (0.8, 1.0), (5.5, 1.0)),
        must_reject=True,
    ),
    # Every iteration lasts a whole number of 1/512 s (4 + 1 per token), as does every arrival time:
    # iteration ends, arrivals, iteration starts and pod openings share instants, and the same-instant
    # order decides.
    "grid-ties": Scenario(
        LlmParams(
            num_blocks=40,
            block_size=4,
            max_model_len=100,
            max_num_batched_tokens=48,
            max_num_seqs=8,
            queue_capacity=8,
            beta0_s=4 / 512,
            beta_prefill_s=1 / 512,
            beta_decode_s=1 / 512,
            beta_kv_s=0.0,
        ),
        ((0.0, 1.0), (2.5, 1.0), (6.0, 0.5)),
        rate=22.0,
        prompt=(1, 40),
        output=(1, 40),
        grid=True,
        must_reject=True,
    ),
    # Client timeouts (docs/llm.md, Client timeout), short enough that requests stuck behind long
    # prompts and preempted prefills time out at their pods' iteration starts.
    "timeout-chunked-prefill-preemption": Scenario(replace(SMALL_KV, timeout_s=1.2), THREE_PODS),
    # Requests skipped for ever leave idle pods at their deadlines exactly.
    "timeout-skipped-for-ever-idle-pods": Scenario(
        replace(SMALL_KV, chunked_prefill=False, queue_capacity=12, timeout_s=0.75),
        THREE_PODS,
        must_time_out_idle=True,
    ),
    # No pod until 1.5 s: requests give up in the router queue (at their deadlines, or when handed out).
    "timeout-router-queue": Scenario(
        replace(
            SMALL_KV,
            max_num_seqs=8,
            queue_capacity=6,
            router_queue_capacity=12,
            max_model_len=900,
            timeout_s=1.0,
        ),
        ((1.5001, 1.0), (4.1003, 1.0), (9.6007, 1.0)),
        rate=16.0,
        prompt=(8, 700),
        output=(1, 300),
        must_reject=True,
        must_time_out_queued=True,
    ),
    # Deadlines on the 1/512 s grid: they coincide with iteration ends, starts and arrivals.
    "timeout-grid-ties": Scenario(
        LlmParams(
            num_blocks=40,
            block_size=4,
            max_model_len=100,
            max_num_batched_tokens=48,
            max_num_seqs=8,
            queue_capacity=8,
            beta0_s=4 / 512,
            beta_prefill_s=1 / 512,
            beta_decode_s=1 / 512,
            beta_kv_s=0.0,
            timeout_s=1.0,
        ),
        ((0.0, 1.0), (2.5, 1.0), (6.0, 0.5)),
        rate=22.0,
        prompt=(1, 40),
        output=(1, 40),
        grid=True,
    ),
}


def workload(s: Scenario, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = rng.poisson(s.rate * s.t_end * 1.1)
    arrivals = np.sort(rng.uniform(0.0, s.t_end * 1.1, n))
    if s.grid:
        arrivals = np.floor(arrivals * 512) / 512
    prompt = rng.integers(s.prompt[0], s.prompt[1] + 1, n)
    output = rng.integers(s.output[0], s.output[1] + 1, n)
    return arrivals, prompt.astype(np.int64), output.astype(np.int64)


@dataclass(frozen=True)
class EngineRun:
    rows: dict[int, tuple[int, int, float, float, int, float]]
    """seq → (outcome, pod, latency, ttft, preemptions, arrival)."""
    counters: dict[str, int]
    generated_tokens: int
    prompt_tokens: int
    preemptions: int
    in_flight: int
    pods: list[tuple[int, int, int]]
    """Per slot at t_end: (running, waiting, used KV blocks)."""


def run_engine(s: Scenario, arrivals: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> EngineRun:
    llm_plane = pytest.importorskip("gpuscale.sim.llm_plane")
    from gpuscale.sim import kernel as K

    ttft, itl, e2e = s.slo
    dp = llm_plane.LlmDataPlane(
        s.params, max_slots=len(s.pods), ttft_slo_s=ttft, itl_slo_s=itl, e2e_slo_s=e2e, seed=0, record=True
    )
    opens = [t for t, _ in s.pods]
    edges = sorted({0.0, s.t_end, *opens, *np.arange(s.chunk_s, s.t_end, s.chunk_s).tolist()})
    opened = 0
    for t0, t1 in pairwise(edges):
        while opened < len(s.pods) and s.pods[opened][0] <= t0:
            assert dp.open_slot(t0, speed=s.pods[opened][1]) == opened
            opened += 1
            # As the engine does: a pod that starts accepting takes from the router queue at once,
            # before the next pod that starts at the same instant.
            if dp.router_queue_len:
                dp.hand_out(t0)
        lo, hi = np.searchsorted(arrivals, [t0, t1], side="left")
        dp.advance(t0, t1, arrivals[lo:hi], prompt=prompt[lo:hi], output=output[lo:hi])
    rec = dp.records()
    rows = {
        int(rec.seq[i]): (
            int(rec.outcome[i]),
            int(rec.pod[i]),
            float(rec.latency_s[i]),
            float(rec.ttft_s[i]),
            int(rec.preemptions[i]),
            float(rec.arrival_s[i]),
        )
        for i in range(len(rec.seq))
    }
    assert len(rows) == len(rec.seq), "a request ended twice"
    counters = {
        name: int(dp.counter(getattr(K, name)))
        for name in ("G_ARRIVED", "G_COMPLETED", "G_TIMED_OUT", "G_REJECTED", "G_DROPPED", "G_SLO_MET")
    }
    pods = [
        (len(dp.running_rows(k)), len(dp.waiting_rows(k)), int(dp.kv_used_blocks(k)))
        for k in range(len(s.pods))
    ]
    return EngineRun(
        rows,
        counters,
        int(dp.generated_tokens),
        int(dp.prompt_tokens),
        int(dp.preemptions),
        int(dp.in_flight),
        pods,
    )


_CODE = {"completed": 0, "timed_out": 1, "rejected": 2}


def describe(r: LlmRequestResult) -> str:
    return (
        f"seq {r.seq} (arrival {r.arrival_s!r}, P {r.prompt}, O {r.output}): {r.outcome}, pod {r.pod}, "
        f"TTFT {r.ttft_s!r}, completion {r.completion_s!r}, timed out {r.timed_out_s!r}, e2e {r.e2e_s!r}, "
        f"preemptions {r.preemptions}"
    )


def first_disagreement(eng: EngineRun, ref: LlmReferenceResult) -> str:
    """'none', or the first request (by seq) on which the two differ, with both sides."""
    for r in ref.requests:
        row = eng.rows.get(r.seq)
        if r.outcome == "in_flight":
            if row is not None:
                return f"engine ended {describe(r)} as {row}"
            continue
        if row is None:
            return f"engine has no record of {describe(r)}"
        outcome, pod, latency, ttft, preemptions, arrival = row
        same = outcome == _CODE[r.outcome] and pod == r.pod and arrival == r.arrival_s
        if r.outcome == "completed":
            same = (
                same
                and abs(latency - r.e2e_s) <= 1e-9
                and abs(arrival + latency - r.completion_s) <= 1e-9
                and abs(ttft - r.ttft_s) <= 1e-9
                and preemptions == r.preemptions
            )
        if r.outcome == "timed_out":
            same = (
                same
                and abs(latency - r.e2e_s) <= 1e-9
                and abs(arrival + latency - r.timed_out_s) <= 1e-9
                and math.isnan(ttft)
                and preemptions == r.preemptions
            )
        if not same:
            return (
                f"{describe(r)}; engine: outcome {outcome}, pod {pod}, latency {latency!r}, "
                f"TTFT {ttft!r}, preemptions {preemptions}"
            )
    extra = set(eng.rows) - {r.seq for r in ref.requests}
    return f"engine records unknown requests {sorted(extra)[:5]}" if extra else "none"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(CROSS_SCENARIOS))
def test_engine_agrees_with_the_reference_request_for_request(name: str, seed: int) -> None:
    s = CROSS_SCENARIOS[name]
    arrivals, prompt, output = workload(s, seed)
    ttft, itl, e2e = s.slo
    ref = simulate_llm_reference(
        s.params,
        arrivals.tolist(),
        prompt.tolist(),
        output.tolist(),
        pods=list(s.pods),
        t_end=s.t_end,
        ttft_slo_s=ttft,
        itl_slo_s=itl,
        e2e_slo_s=e2e,
    )

    # The scenario exercises what it is there for.
    completed = ref.by_outcome("completed")
    rejected = ref.by_outcome("rejected")
    timed_out = ref.by_outcome("timed_out")
    assert len(timed_out) == ref.timed_out
    assert len(completed) > 50
    assert ref.preemptions > 0
    assert ref.by_outcome("in_flight")
    assert 0 < ref.slo_met < len(completed)
    if s.must_reject:
        assert rejected
    if math.isfinite(s.params.timeout_s):
        assert timed_out
        assert all(r.generated == 0 and r.timed_out_s >= r.arrival_s + s.params.timeout_s for r in timed_out)
        if s.must_time_out_idle:  # some at their deadline exactly: in an idle pod or the router queue
            assert any(r.timed_out_s == r.arrival_s + s.params.timeout_s for r in timed_out)
        if s.must_time_out_queued:
            assert any(r.pod == -1 for r in timed_out)
    else:
        assert not timed_out
    if s.grid:
        ends = {r.completion_s for r in completed} | {r.first_token_s for r in completed}
        assert len(ends & set(arrivals.tolist())) > 10  # iteration ends that coincide with arrivals

    eng = run_engine(s, arrivals, prompt, output)
    assert first_disagreement(eng, ref) == "none"
    assert eng.counters == {
        "G_ARRIVED": len(ref.requests),
        "G_COMPLETED": len(completed),
        "G_TIMED_OUT": len(timed_out),
        "G_REJECTED": len(rejected),
        "G_DROPPED": 0,
        "G_SLO_MET": ref.slo_met,
    }
    assert (eng.generated_tokens, eng.prompt_tokens, eng.preemptions) == (
        ref.generated_tokens,
        ref.prompt_tokens,
        ref.preemptions,
    )
    assert eng.in_flight == len(ref.by_outcome("in_flight"))
    assert eng.pods == [(pod.running, pod.waiting, pod.used_blocks) for pod in ref.pods]


def test_reference_scenarios_are_deterministic() -> None:
    s = CROSS_SCENARIOS["chunked-prefill-preemption"]
    arrivals, prompt, output = workload(s, 3)
    args = (s.params, arrivals.tolist(), prompt.tolist(), output.tolist())
    one = simulate_llm_reference(*args, pods=list(s.pods), t_end=2.0)
    two = simulate_llm_reference(*args, pods=list(s.pods), t_end=2.0)
    assert repr(one) == repr(two)  # repr: nan (times that have not happened) is not equal to itself
    assert not math.isnan(one.requests[0].ttft_s)
    assert any(math.isnan(r.completion_s) for r in one.requests)


# -- closed-loop users, against the compiled kernel ------------------------------------------------------


@dataclass(frozen=True)
class UsersScenario:
    params: LlmParams
    pods: tuple[tuple[float, float], ...]
    users: tuple[tuple[float, int], ...]
    """(time, user count from then on), sorted; the kernel gets each count at the chunk starting then."""
    think_s: tuple[float, float]
    prompt: tuple[int, int] = (8, 600)
    output: tuple[int, int] = (1, 100)
    t_end: float = 15.0
    chunk_s: float = 0.37
    must_reject: bool = False
    must_time_out: bool = False
    must_tie: bool = False
    """Some users send at one instant (a constant think time after outcomes of one iteration)."""
    slo: tuple[float, float, float] = (0.5, 0.05, 4.0)


USERS_SCENARIOS: dict[str, UsersScenario] = {
    # Users come and go (30, then 60, then 20 of them), enough to exhaust the small KV caches.
    "users-chunked-prefill-preemption": UsersScenario(
        SMALL_KV, THREE_PODS, ((0.0, 30), (5.05, 60), (9.3, 20)), (0.2, 1.0)
    ),
    # No pod until 1.5 s, client timeouts, small queues and over-long requests: users are freed by
    # rejections and timeouts (in the router queue and in pods) as well as completions.
    "users-timeouts-router-queue-rejections": UsersScenario(
        replace(
            SMALL_KV,
            max_num_seqs=8,
            queue_capacity=6,
            router_queue_capacity=12,
            max_model_len=900,
            timeout_s=1.0,
        ),
        ((1.5001, 1.0), (4.1003, 1.0), (9.6007, 1.0)),
        ((0.0, 25), (3.0, 45), (8.2, 10), (11.1, 30)),
        (0.1, 0.6),
        prompt=(8, 700),
        output=(1, 300),
        must_reject=True,
        must_time_out=True,
    ),
    # A constant think time: users whose requests end in one iteration send again at one instant, in
    # user-id order.
    "users-constant-think": UsersScenario(
        replace(SMALL_KV, max_num_batched_tokens=256),
        THREE_PODS,
        ((0.0, 40), (6.5, 15)),
        (0.5, 0.5),
        prompt=(8, 200),
        output=(1, 60),
        must_tie=True,
    ),
}


class _Tokens:
    """A fixed token sequence handed out in order (a TokenSource's ``take``)."""

    has_prefix = has_conversation = False  # independent prompts (the TokenTaker protocol)

    def __init__(self, prompt: np.ndarray, output: np.ndarray) -> None:
        self.prompt, self.output, self.taken = prompt, output, 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.taken, self.taken + n
        if b > len(self.prompt):
            raise AssertionError("the test's token sequence is too short")
        self.taken = b
        return self.prompt[a:b], self.output[a:b]


def users_inputs(s: UsersScenario, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The token sequence, and the think times and start offsets the plane draws for ``seed``."""
    from gpuscale.sim.llm_plane import UserDraws

    rng = np.random.default_rng(seed)
    n = 40_000
    prompt = rng.integers(s.prompt[0], s.prompt[1] + 1, n).astype(np.int64)
    output = rng.integers(s.output[0], s.output[1] + 1, n).astype(np.int64)
    draws = UserDraws(seed, s.think_s)
    added = sum(max(0, b[1] - a[1]) for a, b in pairwise(((0.0, 0), *s.users)))
    return prompt, output, draws.think(n), draws.start(added)


def run_users_engine(s: UsersScenario, seed: int, prompt: np.ndarray, output: np.ndarray) -> EngineRun:
    llm_plane = pytest.importorskip("gpuscale.sim.llm_plane")
    from gpuscale.sim import kernel as K

    ttft, itl, e2e = s.slo
    dp = llm_plane.LlmDataPlane(
        s.params, max_slots=len(s.pods), ttft_slo_s=ttft, itl_slo_s=itl, e2e_slo_s=e2e, seed=seed,
        record=True, think_s=s.think_s, max_users=max(n for _, n in s.users), tokens=_Tokens(prompt, output),
    )  # fmt: skip
    opens = [t for t, _ in s.pods]
    changes = [t for t, _ in s.users]
    edges = sorted({0.0, s.t_end, *opens, *changes, *np.arange(s.chunk_s, s.t_end, s.chunk_s).tolist()})
    opened = 0
    none = np.zeros(0, dtype=np.float64)
    for t0, t1 in pairwise(edges):
        while opened < len(s.pods) and s.pods[opened][0] <= t0:
            assert dp.open_slot(t0, speed=s.pods[opened][1]) == opened
            opened += 1
            if dp.router_queue_len:
                dp.hand_out(t0)
        target = [n for t, n in s.users if t <= t0][-1]
        dp.advance(t0, t1, none, users_target=target)
    rec = dp.records()
    rows = {
        int(rec.seq[i]): (
            int(rec.outcome[i]),
            int(rec.pod[i]),
            float(rec.latency_s[i]),
            float(rec.ttft_s[i]),
            int(rec.preemptions[i]),
            float(rec.arrival_s[i]),
        )
        for i in range(len(rec.seq))
    }
    assert len(rows) == len(rec.seq), "a request ended twice"
    counters = {
        name: int(dp.counter(getattr(K, name)))
        for name in ("G_ARRIVED", "G_COMPLETED", "G_TIMED_OUT", "G_REJECTED", "G_DROPPED", "G_SLO_MET")
    }
    pods = [
        (len(dp.running_rows(k)), len(dp.waiting_rows(k)), int(dp.kv_used_blocks(k)))
        for k in range(len(s.pods))
    ]
    return EngineRun(
        rows, counters, int(dp.generated_tokens), int(dp.prompt_tokens), int(dp.preemptions),
        int(dp.in_flight), pods,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(USERS_SCENARIOS))
def test_closed_loop_users_agree_with_the_reference_request_for_request(name: str, seed: int) -> None:
    s = USERS_SCENARIOS[name]
    prompt, output, think, start = users_inputs(s, seed)
    ttft, itl, e2e = s.slo
    ref = simulate_llm_reference(
        s.params, [], prompt.tolist(), output.tolist(), pods=list(s.pods), t_end=s.t_end,
        ttft_slo_s=ttft, itl_slo_s=itl, e2e_slo_s=e2e,
        users=list(s.users), think=think.tolist(), start=start.tolist(),
    )  # fmt: skip

    # The scenario exercises what it is there for.
    completed = ref.by_outcome("completed")
    assert len(completed) > 50
    assert ref.preemptions > 0
    assert ref.by_outcome("in_flight")
    if s.must_reject:
        assert ref.by_outcome("rejected")
    if s.must_time_out:
        timed_out = ref.by_outcome("timed_out")
        assert any(r.pod == -1 for r in timed_out) and any(r.pod >= 0 for r in timed_out)
    sends = [r.arrival_s for r in ref.requests]
    if s.must_tie:
        assert len(sends) - len(set(sends)) > 10
    # Users send in every period of the schedule; at most one request per user is left in flight.
    for (t0, _), (t1, _) in pairwise((*s.users, (s.t_end, 0))):
        assert any(t0 <= t < t1 for t in sends)
    assert len(ref.by_outcome("in_flight")) <= s.users[-1][1]

    eng = run_users_engine(s, seed, prompt, output)
    assert first_disagreement(eng, ref) == "none"
    assert eng.counters == {
        "G_ARRIVED": len(ref.requests),
        "G_COMPLETED": len(completed),
        "G_TIMED_OUT": len(ref.by_outcome("timed_out")),
        "G_REJECTED": len(ref.by_outcome("rejected")),
        "G_DROPPED": 0,
        "G_SLO_MET": ref.slo_met,
    }
    assert (eng.generated_tokens, eng.prompt_tokens, eng.preemptions) == (
        ref.generated_tokens,
        ref.prompt_tokens,
        ref.preemptions,
    )
    assert eng.in_flight == len(ref.by_outcome("in_flight"))
    assert eng.pods == [(pod.running, pod.waiting, pod.used_blocks) for pod in ref.pods]
