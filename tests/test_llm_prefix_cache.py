"""Prefix caching in the token-level engine (docs/llm.md, Prefix caching): vLLM's automatic prefix caching,
by hand on the SimPy reference model, the compiled kernel against it request for request, the kernel's
block bookkeeping, what caching does to a whole run, and the configuration that describes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gpuscale._core.errors import ConfigError
from gpuscale.cli import app
from gpuscale.config.scenario import Scenario, scenario_from_dict
from gpuscale.policies.base import StaticPolicy
from gpuscale.sim.engine import simulate
from gpuscale.sim.llm_plane import LlmDataPlane
from gpuscale.sim.llm_reference import LlmReferenceResult, simulate_llm_reference
from gpuscale.sim.llm_serving import LlmParams
from gpuscale.sim.workload import token_source
from tests.llm_exact import CACHED, d


def ref(
    params: LlmParams, requests: list[tuple[float, int, int, int, int]], t_end: float = 100.0
) -> LlmReferenceResult:
    """``requests`` = [(arrival, prompt, output, group, prefix length), ...] on one pod."""
    return simulate_llm_reference(
        params,
        [r[0] for r in requests],
        [r[1] for r in requests],
        [r[2] for r in requests],
        pods=[(0.0, 1.0)],
        t_end=t_end,
        group=[r[3] for r in requests],
        prefix_len=[r[4] for r in requests],
    )


# -- the reference model, by hand ---------------------------------------------------------------------


def test_a_later_request_of_the_group_computes_only_what_follows_the_cached_prefix() -> None:
    # Two requests share a 64-token prefix (4 blocks of 16); the second arrives after the first finished.
    res = ref(CACHED, [(0.0, 80, 2, 0, 64), (1.0, 90, 2, 0, 64)])
    a, b = res.requests
    assert a.ttft_s == pytest.approx(d(CACHED, prefill=80, context=80), abs=1e-12)
    assert (a.cache_hits, b.cache_hits) == (0, 64)
    # The cached 64 tokens are not computed (no prefill cost) but are context held (the KV term).
    assert b.ttft_s == pytest.approx(d(CACHED, prefill=90 - 64, context=90), abs=1e-12)
    assert res.prompt_tokens == 80 + 26
    # Queries count every token of each request looked up, hits the tokens found.
    assert (res.prefix_cache_queries, res.prefix_cache_hits) == (80 + 90, 64)


def test_the_hit_stops_one_token_short_of_the_prompt() -> None:
    # The whole prompt is the shared prefix: at most (64 - 1) // 16 = 3 blocks may hit, and the last
    # block is computed again (vLLM needs the logits of the last token).
    res = ref(CACHED, [(0.0, 64, 1, 0, 64), (1.0, 64, 1, 0, 64)])
    _, b = res.requests
    assert b.cache_hits == 48
    assert b.ttft_s == pytest.approx(d(CACHED, prefill=16, context=64), abs=1e-12)


def test_only_full_blocks_of_the_prefix_are_shared() -> None:
    # A 40-token prefix fills 2 blocks; the block holding tokens 32..47 mixes in the request's own tokens.
    res = ref(CACHED, [(0.0, 60, 1, 3, 40), (1.0, 60, 1, 3, 40), (2.0, 60, 1, 4, 40)])
    assert [r.cache_hits for r in res.requests] == [0, 32, 0]  # another group shares nothing


def test_without_caching_groups_change_nothing() -> None:
    off = replace(CACHED, enable_prefix_caching=False)
    reqs = [(0.0, 80, 3, 0, 64), (0.01, 90, 2, 0, 64), (1.0, 70, 2, -1, 0)]
    with_groups = ref(off, reqs)
    without = ref(off, [(t, p, o, -1, 0) for t, p, o, _, _ in reqs])
    assert with_groups == without
    assert with_groups.prefix_cache_queries == 0


def test_a_preempted_request_finds_its_own_blocks_again() -> None:
    # 10 blocks of 16 tokens: two 60-token prompts (4 blocks each) decode until the cache is full, the
    # later one is preempted, and on its return it finds its own full blocks still cached.
    p = replace(CACHED, num_blocks=10, max_model_len=160, max_num_batched_tokens=160)
    res = ref(p, [(0.0, 60, 40, -1, 0), (0.0, 60, 40, -1, 0)])
    a, b = res.requests
    assert res.preemptions >= 1 and b.preemptions >= 1
    assert b.cache_hits > 0 and a.outcome == b.outcome == "completed"


# -- the kernel against the reference ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    params: LlmParams
    rate: float
    t_end: float
    prompt: tuple[int, int]
    """Own prompt tokens (after the prefix), uniform."""
    output: tuple[int, int]
    groups: int
    prefix: tuple[int, ...]
    """Prefix length of each group."""
    share: float
    chunk_s: float = 1.0
    expect_preemptions: bool = True


BASE = LlmParams(
    num_blocks=48,
    block_size=4,
    max_num_seqs=6,
    max_num_batched_tokens=48,
    max_model_len=160,
    beta0_s=1 / 64,
    beta_prefill_s=1 / 2048,
    beta_decode_s=1 / 256,
    beta_kv_s=1 / 32768,
    queue_capacity=64,
    enable_prefix_caching=True,
)

CASES = {
    # a small cache under pressure: cached blocks evicted, requests preempted while their prefix is shared
    "pressure": Case(BASE, 4.0, 30.0, (1, 20), (10, 60), 3, (24, 37, 9), 0.8),
    # chunks of 16 tokens: prefixes computed over several iterations, identical blocks cached twice
    "chunked": Case(
        replace(BASE, max_num_batched_tokens=16, num_blocks=80),
        2.0,
        30.0,
        (1, 12),
        (1, 12),
        2,
        (40, 30),
        0.9,
        expect_preemptions=False,
    ),
    # no chunked prefill: a prompt over the budget is skipped (looked up all the same)
    "whole-prompts": Case(
        replace(BASE, chunked_prefill=False, max_num_batched_tokens=160, num_blocks=44),
        4.0,
        30.0,
        (1, 40),
        (10, 60),
        2,
        (48, 20),
        0.7,
    ),
}


def workload(c: Case, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n = rng.poisson(c.rate * c.t_end)
    arrivals = np.sort(np.floor(rng.uniform(0.0, c.t_end, n) * 256) / 256)
    group = np.where(rng.random(n) < c.share, rng.integers(0, c.groups, n), -1)
    plen = np.where(group >= 0, np.array(c.prefix)[np.maximum(group, 0)], 0)
    prompt = plen + rng.integers(c.prompt[0], c.prompt[1] + 1, n)
    output = rng.integers(c.output[0], c.output[1] + 1, n)
    return (
        arrivals,
        prompt.astype(np.int64),
        output.astype(np.int64),
        group.astype(np.int64),
        plen.astype(np.int64),
    )


def run_kernel(c: Case, arrivals: np.ndarray, *cols: np.ndarray, check: bool = True) -> LlmDataPlane:
    prompt, output, group, plen = cols
    dp = LlmDataPlane(c.params, max_slots=1, seed=0, record=True)
    dp.open_slot(0.0)
    edges = [*np.arange(0.0, c.t_end, c.chunk_s).tolist(), c.t_end]
    for t0, t1 in pairwise(edges):
        lo, hi = np.searchsorted(arrivals, [t0, t1], side="left")
        dp.advance(
            t0, t1, arrivals[lo:hi], prompt=prompt[lo:hi], output=output[lo:hi], group=group[lo:hi],
            prefix_len=plen[lo:hi],
        )  # fmt: skip
        if check:
            dp.check_blocks(0)
    return dp


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_agrees_with_the_reference_request_for_request(name: str, seed: int) -> None:
    c = CASES[name]
    arrivals, prompt, output, group, plen = workload(c, seed)
    expected = simulate_llm_reference(
        c.params, arrivals.tolist(), prompt.tolist(), output.tolist(), pods=[(0.0, 1.0)], t_end=c.t_end,
        group=group.tolist(), prefix_len=plen.tolist(),
    )  # fmt: skip
    dp = run_kernel(c, arrivals, prompt, output, group, plen)
    rec = dp.records()
    rows = {int(s): i for i, s in enumerate(rec.seq)}
    compared = 0
    for r in expected.requests:
        if r.outcome != "completed":
            assert r.seq not in rows or rec.outcome[rows[r.seq]] != 0, r
            continue
        i = rows[r.seq]
        got = (
            rec.outcome[i],
            rec.ttft_s[i],
            rec.arrival_s[i] + rec.latency_s[i],
            rec.preemptions[i],
            rec.cache_hits[i],
        )
        want = (0, r.ttft_s, r.completion_s, r.preemptions, r.cache_hits)
        assert got == pytest.approx(want, abs=1e-9), (r, got)
        compared += 1
    assert compared == int((rec.outcome == 0).sum()) and compared > 10
    totals = (
        dp.prompt_tokens,
        dp.generated_tokens,
        dp.preemptions,
        dp.prefix_cache_queries,
        dp.prefix_cache_hits,
    )
    assert totals == (
        expected.prompt_tokens, expected.generated_tokens, expected.preemptions, expected.prefix_cache_queries,
        expected.prefix_cache_hits,
    )  # fmt: skip
    # each case exercises what it is named for
    assert expected.prefix_cache_hits > 0
    if c.expect_preemptions:
        assert expected.preemptions > 0
        assert any(r.cache_hits > 0 and r.preemptions > 0 for r in expected.requests)


@pytest.mark.parametrize(("other", "hits"), [(0, 64), (150, 32), (180, 0)])
def test_a_freed_prefix_stays_cached_until_its_blocks_are_reused_tail_first(other: int, hits: int) -> None:
    """12 blocks of 16. A (group 0, a 64-token prompt that is all prefix) finishes at once and frees its 4
    blocks to the tail of the free queue, last block first. B (its own prompt of ``other`` tokens) takes
    blocks from the head: the 8 never used, then A's tail blocks. C (group 0) finds what is left of A's
    prefix: 4 blocks (capped at 3 by its own length were it 64 long; it is 80), 2, or none."""
    p = replace(CACHED, num_blocks=12, max_model_len=192)
    reqs = [(0.0, 64, 1, 0, 64), (2.0, 80, 1, 0, 64)]
    if other:
        reqs.insert(1, (1.0, other, 1, -1, 0))
    expected = ref(p, reqs)
    assert expected.requests[-1].cache_hits == hits
    c = Case(p, 0.0, 10.0, (0, 0), (0, 0), 1, (64,), 1.0)
    cols = [np.array([r[k] for r in reqs], dtype=np.int64) for k in range(1, 5)]
    dp = run_kernel(c, np.array([r[0] for r in reqs]), *cols)
    rec = dp.records()
    assert rec.cache_hits[list(rec.seq).index(len(reqs) - 1)] == hits
    assert rec.ttft_s[list(rec.seq).index(len(reqs) - 1)] == pytest.approx(
        expected.requests[-1].ttft_s, abs=1e-12
    )


def test_blocks_are_conserved_and_freed_only_by_their_last_holder() -> None:
    """The bookkeeping after every interval (``check_blocks``: reference counts equal the block tables
    that list each block, never negative, a block is in the free queue exactly when no one holds it,
    free + held blocks = all) and at the end, every request done, every block free."""
    c = replace(CASES["pressure"], t_end=40.0)
    arrivals, prompt, output, group, plen = workload(c, 3)
    keep = arrivals < 30.0  # nothing arrives in the last 10 s: the pod empties
    dp = run_kernel(c, arrivals[keep], prompt[keep], output[keep], group[keep], plen[keep])
    assert dp.outstanding(0) == 0
    assert dp.kv_used_blocks(0) == 0
    assert int(dp.pc_blk[0, : c.params.num_blocks, 3].max()) >= 0  # blocks keep their keys when freed
    hits = dp.records().cache_hits
    assert hits.max() > 0


# -- a whole run -----------------------------------------------------------------------------------------

RUN: dict[str, Any] = {
    "name": "prefix-test",
    "duration_s": 120,
    "seed": 5,
    "slo": {"latency_ms": 60000, "ttft_ms": 1000, "itl_ms": 80},
    "workload": {
        "kind": "poisson",
        "rate_rps": 20,
        "tokens": {
            "prompt": {"lognormal": {"mean": 200, "cv": 1.0, "max": 2000}},
            "output": {"lognormal": {"mean": 100, "cv": 1.0, "max": 500}},
            "prefix": {"groups": 4, "length": 1000},
        },
    },
    "model": {"profile": "llama3-8b-h100-vllm"},
    "serving": {"queue_capacity": 128},
    "cluster": {"pools": [{"gpu": "h100-80gb", "gpus_per_node": 8, "nodes": 1}]},
    "control": {"initial_replicas": 1, "max_pods": 2},
}


def _scenario(caching: bool, **changes: Any) -> Scenario:
    data = {**RUN, **changes}
    data["model"] = {**data["model"], "llm": {"enable_prefix_caching": caching}}
    return scenario_from_dict(data, "prefix-test")


def test_caching_a_shared_prompt_lowers_ttft_and_prefill_and_raises_throughput() -> None:
    off = simulate(_scenario(False), StaticPolicy(1)).summary
    on = simulate(_scenario(True), StaticPolicy(1)).summary
    assert off.requests == on.requests
    assert on.prompt_tokens < 0.5 * off.prompt_tokens
    assert on.ttft_p95_ms is not None and off.ttft_p95_ms is not None and on.ttft_p95_ms < off.ttft_p95_ms
    assert on.generated_tokens_per_s >= off.generated_tokens_per_s
    assert on.slo_attainment >= off.slo_attainment


def test_the_prefix_lengthens_the_prompts_by_its_length() -> None:
    src = token_source(_scenario(False).workload, seed=1, source="t")
    prompt, _ = src.take(5000)
    group, plen = src.take_prefix(5000)
    plain = token_source(_scenario(False, workload={**RUN["workload"], "tokens": {
        k: v for k, v in RUN["workload"]["tokens"].items() if k != "prefix"}}).workload, seed=1, source="t")  # fmt: skip
    base, _ = plain.take(5000)
    assert np.array_equal(prompt - plen, base)  # the prompt draws are the same, the prefix in front
    assert set(np.unique(group).tolist()) == {0, 1, 2, 3} and set(np.unique(plen).tolist()) == {1000}


def test_group_draws_do_not_depend_on_how_the_run_is_cut() -> None:
    wl = _scenario(False, workload={**RUN["workload"], "tokens": {**RUN["workload"]["tokens"], "prefix": {
        "groups": 50, "length": {"uniform": [10, 900]}, "share": 0.6, "popularity": "zipf", "zipf_exponent": 1.2,
    }}}).workload  # fmt: skip
    a = token_source(wl, seed=9, source="t")
    a.take(10_000)
    whole = a.take_prefix(10_000)
    b = token_source(wl, seed=9, source="t")
    parts = []
    for n in (3, 4093, 1, 5000, 903):
        b.take(n)
        parts.append(b.take_prefix(n))
    assert np.array_equal(whole[0], np.concatenate([g for g, _ in parts]))
    assert np.array_equal(whole[1], np.concatenate([x for _, x in parts]))
    g = whole[0]
    assert abs((g >= 0).mean() - 0.6) < 0.03
    counts = np.bincount(g[g >= 0], minlength=50)
    assert counts[0] > counts[1] > counts[10]  # Zipf: the first groups are the popular ones


def test_same_seed_same_bytes_with_caching(tmp_path: Path) -> None:
    data = {**RUN, "duration_s": 60}
    data["model"] = {**RUN["model"], "llm": {"enable_prefix_caching": True}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        result = CliRunner().invoke(app, ["simulate", str(path), "--replicas", "1", "--out", str(out)])
        assert result.exit_code == 0, result.output
        outs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outs[0] == outs[1] and outs[0]


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ({"groups": 0, "length": 100}, "workload.tokens.prefix.groups"),
        ({"groups": 2, "length": 100, "share": 1.5}, "workload.tokens.prefix.share"),
        ({"groups": 2, "length": 9000}, "workload.tokens.prefix.length"),
        ({"groups": 2, "length": 100, "popularity": "pareto"}, "workload.tokens.prefix.popularity"),
    ],
)
def test_bad_prefix_exits_2_naming_the_key(tmp_path: Path, prefix: dict[str, Any], key: str) -> None:
    data = {**RUN, "workload": {**RUN["workload"], "tokens": {**RUN["workload"]["tokens"], "prefix": prefix}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = CliRunner().invoke(app, ["simulate", str(path), "--replicas", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert key in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_a_prefix_on_a_request_level_profile_is_refused() -> None:
    data = {**RUN, "model": {"profile": "llama2-70b-h100x8-vllm"}}
    data["slo"] = {"latency_ms": 60000}
    with pytest.raises(ConfigError, match=r"workload\.tokens"):
        scenario_from_dict(data, "t")


def test_a_prefix_cache_too_large_for_memory_is_refused_with_the_estimate() -> None:
    data = {**RUN, "control": {"initial_replicas": 1, "max_pods": 5000}}
    data["model"] = {**RUN["model"], "llm": {"enable_prefix_caching": True}}
    with pytest.raises(ConfigError, match=r"model\.llm\.enable_prefix_caching.*GiB") as excinfo:
        scenario_from_dict(data, "t")
    assert "max_pods" in str(excinfo.value)
    assert math.isfinite(LlmParams(num_blocks=25_696, enable_prefix_caching=True).prefix_cache_bytes_per_pod)
