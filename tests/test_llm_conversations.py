"""Multi-turn conversations of closed-loop chat users and session-affine routing (docs/llm.md,
Conversations): the drawn structure, by hand on the SimPy reference model, the compiled kernel against it
request for request, what history caching and affinity do to a whole run, and the configuration.
"""

from __future__ import annotations

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
from gpuscale.sim import kernel as K
from gpuscale.sim.engine import simulate
from gpuscale.sim.llm_plane import LlmDataPlane, LlmRecords, UserDraws
from gpuscale.sim.llm_reference import LlmReferenceResult, simulate_llm_reference
from gpuscale.sim.llm_serving import LlmParams
from gpuscale.sim.workload import token_source
from tests.llm_exact import CACHED, d


def one_user(
    params: LlmParams,
    sends: list[tuple[int, int, int]],
    *,
    think: float = 1.0,
    group: int = -1,
    prefix_len: int = 0,
) -> LlmReferenceResult:
    """One closed-loop user on one pod of the reference model; ``sends`` = [(drawn prompt, output, turns),
    ...], then one-turn sends of 10 + 1 tokens until the run ends at 30 s."""
    sends = sends + [(10, 1, 1)] * 40
    n = len(sends)
    return simulate_llm_reference(
        params, [], [s[0] for s in sends], [s[1] for s in sends], pods=[(0.0, 1.0)], t_end=30.0,
        users=[(0.0, 1)], think=[think] * n, start=[0.0], group=[group] * n, prefix_len=[prefix_len] * n,
        turns=[s[2] for s in sends],
    )  # fmt: skip


# -- the reference model, by hand ---------------------------------------------------------------------


def test_a_later_turn_is_the_conversation_so_far_and_finds_it_cached() -> None:
    # Turn 1: 40 prompt + 3 output tokens. Turn 2 = those 43 tokens + a new 20-token message = 63. The
    # first turn's KV covers its first 42 tokens (the last output token is never computed): 2 full blocks.
    res = one_user(CACHED, [(40, 3, 3), (20, 2, 9), (10, 2, 9)])
    a, b, c = res.requests[:3]
    assert (a.prompt, b.prompt, c.prompt) == (40, 40 + 3 + 20, 63 + 2 + 10)
    assert a.conversation == b.conversation == c.conversation == 0  # the first turn's seq
    assert (a.cache_hits, b.cache_hits, c.cache_hits) == (0, 32, 64)
    # the hit is not computed again, only held: turn 2's first iteration computes 63 - 32 tokens
    assert b.ttft_s == pytest.approx(d(CACHED, prefill=63 - 32, context=63), abs=1e-12)
    # the conversation's 3 turns are over: the 4th send starts a new conversation with its own draws
    res4 = one_user(CACHED, [(40, 3, 3), (20, 2, 9), (10, 2, 9), (30, 2, 9)])
    last = res4.requests[3]
    assert (last.prompt, last.conversation, last.cache_hits) == (30, 3, 0)


def test_the_shared_prefix_opens_the_conversation_and_stays_keyed_by_its_group() -> None:
    # A 32-token system prompt of group 0 in front of turn 1 (drawn prompt 32 + 16); the later turn keeps
    # the conversation's prefix (its own drawn prefix is only used by a conversation's first turn).
    res = one_user(CACHED, [(48, 4, 2), (32 + 8, 4, 2), (32 + 8, 4, 2)], group=0, prefix_len=32)
    _, b, c = res.requests[:3]
    assert b.prompt == 48 + 4 + 8 and b.conversation == 0
    assert b.cache_hits == 48  # prefix blocks (group keys) and the history block after them
    assert (c.prompt, c.conversation) == (40, 2)  # a new conversation: finds the group's prefix only
    assert c.cache_hits == 32


def test_a_turn_that_would_not_fit_max_model_len_starts_a_new_conversation() -> None:
    p = replace(CACHED, max_model_len=100)
    res = one_user(p, [(40, 10, 5), (30, 10, 5), (30, 10, 5)])
    _, b, c = res.requests[:3]
    assert (b.prompt, b.conversation) == (80, 0)  # 80 + 10 output = 90 fits 100
    assert (c.prompt, c.conversation) == (30, 2)  # 90 + 30 + 10 = 130 would not: a fresh conversation
    assert all(r.outcome == "completed" for r in res.requests[:3])


def test_a_turn_that_is_not_answered_ends_its_conversation() -> None:
    # Client timeout 0.05 s: the second turn's prompt (30 + 1 + 700 tokens) is prefilled in chunks of 256
    # tokens at 1 ms a token, so it has no first token when the second chunk's iteration starts and is
    # aborted; the user's next send opens a new conversation.
    p = replace(CACHED, num_blocks=128, max_num_batched_tokens=256, timeout_s=0.05)
    res = one_user(p, [(30, 1, 9), (700, 1, 9), (20, 1, 9)])
    a, b, c = res.requests[:3]
    assert a.outcome == "completed" and b.outcome == "timed_out" and b.conversation == 0
    assert (c.prompt, c.conversation) == (20, 2)


def test_session_affinity_sends_a_later_turn_to_the_pod_of_the_previous_one() -> None:
    # Two pods, two users. User 0 sends at 0 (pod 0); user 1 at 0.01, pod 0 still busy: pod 1. User 1's
    # second turn comes at about 2 s, both pods idle: least-outstanding routing ties to pod 0, where its
    # history is not; with session affinity it goes back to pod 1 and finds its first turn's 2 full blocks.
    got = {}
    for affinity in (False, True):
        res = simulate_llm_reference(
            replace(CACHED, session_affinity=affinity), [], [40, 40] + [20] * 8, [2] * 10,
            pods=[(0.0, 1.0), (0.0, 1.0)], t_end=3.0, users=[(0.0, 2)], think=[1.0, 2.0] + [1.0] * 8,
            start=[0.0, 0.01], turns=[3] * 10,
        )  # fmt: skip
        second = next(r for r in res.requests if r.user == 1 and r.conversation != r.seq)
        first = res.requests[second.conversation]
        assert first.pod == 1
        got[affinity] = (second.pod, second.cache_hits)
    assert got == {False: (0, 0), True: (1, 32)}


# -- the kernel against the reference ------------------------------------------------------------------


class ConvTokens:
    """A fixed token sequence handed out in send order (a TokenSource's ``take``, ``take_prefix`` and
    ``take_turns``)."""

    has_prefix = True
    has_conversation = True

    def __init__(
        self, prompt: np.ndarray, output: np.ndarray, group: np.ndarray, plen: np.ndarray, turns: np.ndarray
    ):
        self.cols = (prompt, output, group, plen, turns)
        self.taken = [0, 0, 0]

    def _take(self, which: int, cols: tuple[int, ...], n: int) -> tuple[np.ndarray, ...]:
        a = self.taken[which]
        if a + n > len(self.cols[0]):
            raise AssertionError("the test's token sequence is too short")
        self.taken[which] = a + n
        return tuple(self.cols[c][a : a + n] for c in cols)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        p, o = self._take(0, (0, 1), n)
        return p, o

    def take_prefix(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        g, x = self._take(1, (2, 3), n)
        return g, x

    def take_turns(self, n: int) -> np.ndarray:
        (t,) = self._take(2, (4,), n)
        return t


@dataclass(frozen=True)
class Case:
    params: LlmParams
    pods: tuple[tuple[float, float], ...]
    users: tuple[tuple[float, int], ...]
    think_s: tuple[float, float] = (0.2, 1.0)
    message: tuple[int, int] = (4, 60)
    output: tuple[int, int] = (1, 40)
    turns: tuple[int, int] = (1, 6)
    prefix: tuple[int, ...] = (24, 13)
    share: float = 0.7
    t_end: float = 20.0
    chunk_s: float = 0.37
    must_time_out: bool = False


SMALL = LlmParams(
    num_blocks=80,
    block_size=4,
    max_num_seqs=6,
    max_num_batched_tokens=64,
    max_model_len=320,
    beta0_s=1 / 64,
    beta_prefill_s=1 / 2048,
    beta_decode_s=1 / 256,
    beta_kv_s=1 / 32768,
    queue_capacity=16,
    enable_prefix_caching=True,
)
CASES = {
    # three pods, users coming and going, a small cache: evictions, preemptions, the length cap
    "pressure": Case(SMALL, ((0.0, 1.0), (0.0, 1.0), (2.5, 1.25)), ((0.0, 12), (6.05, 24), (13.3, 8))),
    # no pod until 1.5 s, client timeouts, a router queue, pods full: turns end unanswered
    "timeouts": Case(
        replace(SMALL, timeout_s=0.8, router_queue_capacity=10, queue_capacity=4, max_num_seqs=4),
        ((1.5001, 1.0), (1.5001, 1.0), (4.1003, 1.0)),
        ((0.0, 14), (3.0, 26), (11.1, 10)),
        must_time_out=True,
    ),
}


def inputs(c: Case, seed: int) -> tuple[ConvTokens, np.ndarray, np.ndarray, np.ndarray]:
    """The drawn sequence per send, and the think times and start offsets the plane draws for ``seed``."""
    rng = np.random.default_rng(seed)
    n = 20_000
    group = np.where(rng.random(n) < c.share, rng.integers(0, len(c.prefix), n), -1).astype(np.int64)
    plen = np.where(group >= 0, np.array(c.prefix)[np.maximum(group, 0)], 0).astype(np.int64)
    prompt = plen + rng.integers(c.message[0], c.message[1] + 1, n)
    output = rng.integers(c.output[0], c.output[1] + 1, n).astype(np.int64)
    turns = rng.integers(c.turns[0], c.turns[1] + 1, n).astype(np.int64)
    draws = UserDraws(seed, c.think_s)
    added = sum(max(0, b[1] - a[1]) for a, b in pairwise(((0.0, 0), *c.users)))
    return ConvTokens(prompt, output, group, plen, turns), draws.think(n), draws.start(added), turns


def run_plane(c: Case, seed: int, tokens: ConvTokens, edges_step: float | None = None) -> LlmDataPlane:
    dp = LlmDataPlane(
        c.params, max_slots=len(c.pods), seed=seed, record=True, think_s=c.think_s,
        max_users=max(n for _, n in c.users), tokens=tokens,
    )  # fmt: skip
    step = edges_step or c.chunk_s
    edges = sorted(
        {
            0.0,
            c.t_end,
            *(t for t, _ in c.pods),
            *(t for t, _ in c.users),
            *np.arange(step, c.t_end, step).tolist(),
        }
    )
    opened = 0
    for t0, t1 in pairwise(edges):
        while opened < len(c.pods) and c.pods[opened][0] <= t0:
            assert dp.open_slot(t0, speed=c.pods[opened][1]) == opened
            opened += 1
            if dp.router_queue_len:
                dp.hand_out(t0)
        dp.advance(t0, t1, np.zeros(0), users_target=[n for t, n in c.users if t <= t0][-1])
        for p in range(opened):
            dp.check_blocks(p)
    return dp


def rows(rec: LlmRecords) -> dict[int, tuple[Any, ...]]:
    out = {}
    for i in range(len(rec.seq)):
        out[int(rec.seq[i])] = (
            int(rec.outcome[i]), int(rec.pod[i]), float(rec.ttft_s[i]), float(rec.arrival_s[i] + rec.latency_s[i]),
            int(rec.preemptions[i]), int(rec.cache_hits[i]), int(rec.prompt[i]), int(rec.conversation[i]),
            int(rec.user[i]),
        )  # fmt: skip
    return out


_OUTCOME = {"completed": K.OUT_COMPLETED, "timed_out": K.OUT_TIMED_OUT, "rejected": K.OUT_REJECTED}


@pytest.mark.parametrize("affinity", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_agrees_with_the_reference_request_for_request(name: str, seed: int, affinity: bool) -> None:
    c = CASES[name]
    c = replace(c, params=replace(c.params, session_affinity=affinity))
    tokens, think, start, turns = inputs(c, seed)
    prompt, output, group, plen, _ = tokens.cols
    ref = simulate_llm_reference(
        c.params, [], prompt.tolist(), output.tolist(), pods=list(c.pods), t_end=c.t_end, users=list(c.users),
        think=think.tolist(), start=start.tolist(), group=group.tolist(), prefix_len=plen.tolist(),
        turns=turns.tolist(),
    )  # fmt: skip
    got = rows(run_plane(c, seed, tokens).records())
    ended = [r for r in ref.requests if r.outcome != "in_flight"]
    assert len(got) == len(ended) and len(ended) > 100
    for r in ended:
        want = (
            _OUTCOME[r.outcome], r.pod, r.ttft_s, r.completion_s, r.preemptions, r.cache_hits, r.prompt,
            r.conversation, r.user,
        )  # fmt: skip
        g = got[r.seq]
        if r.outcome != "completed":  # no token, no completion: compare what a failure records
            assert (g[0], g[1], g[6], g[7], g[8]) == (want[0], want[1], want[6], want[7], want[8]), r
            continue
        assert g == pytest.approx(want, abs=1e-9, nan_ok=True), (r, g)
    # what each case is there for: multi-turn conversations, history hits, eviction and preemption
    later = [r for r in ref.requests if r.conversation != r.seq]
    assert len(later) > 30 and any(r.cache_hits > 0 and r.preemptions > 0 for r in ref.requests)
    assert ref.preemptions > 0
    if c.must_time_out:
        assert any(r.outcome == "timed_out" for r in later) and any(
            r.outcome == "rejected" for r in ref.requests
        )


def test_the_drawn_lengths_do_not_depend_on_how_the_run_is_cut() -> None:
    c = CASES["pressure"]
    whole = rows(run_plane(replace(c, chunk_s=c.t_end), 3, inputs(c, 3)[0]).records())
    cut = rows(run_plane(replace(c, chunk_s=0.13), 3, inputs(c, 3)[0]).records())
    assert whole == cut and len(whole) > 100


# -- whole runs ---------------------------------------------------------------------------------------

CHAT: dict[str, Any] = {
    "name": "chat-test",
    "duration_s": 120,
    "seed": 4,
    "slo": {"latency_ms": 60000, "ttft_ms": 1000, "itl_ms": 80},
    "workload": {
        "kind": "closed-loop",
        "users": 30,
        "think_time_s": [2, 8],
        "tokens": {
            "prompt": {"lognormal": {"mean": 300, "cv": 1.0, "max": 3000}},
            "output": {"lognormal": {"mean": 200, "cv": 1.0, "max": 1000}},
            "prefix": {"groups": 2, "length": 500},
            "conversation": {"turns": {"uniform": [2, 6]}},
        },
    },
    "model": {"profile": "llama3-8b-h100-vllm", "llm": {"max_model_len": 4096}},
    "serving": {"queue_capacity": 128},
    "cluster": {"pools": [{"gpu": "h100-80gb", "gpus_per_node": 8, "nodes": 1}]},
    "control": {"initial_replicas": 3, "max_pods": 3},
}


def chat(caching: bool = True, affinity: bool = False, **changes: Any) -> Scenario:
    data = {**CHAT, **changes}
    data["model"] = {**data["model"], "llm": {**data["model"]["llm"], "enable_prefix_caching": caching}}
    data["serving"] = {**data["serving"], "session_affinity": affinity}
    return scenario_from_dict(data, "chat-test")


def by_seq(rec: Any) -> dict[int, dict[str, int]]:
    return {
        int(rec.seq[i]): {
            "outcome": int(rec.outcome[i]),
            "prompt": int(rec.prompt[i]),
            "output": int(rec.output[i]),
            "conv": int(rec.conversation[i]),
            "user": int(rec.user[i]),
            "pod": int(rec.pod[i]),
            "hits": int(rec.cache_hits[i]),
        }
        for i in range(len(rec.seq))
    }


def test_each_turn_is_the_previous_prompt_and_output_and_a_new_message() -> None:
    # one pod of 16 sequences for 40 users, a small queue and a short client timeout: some turns are
    # rejected or time out
    s = chat(
        caching=False,
        serving={"queue_capacity": 4, "timeout_s": 1},
        workload={**CHAT["workload"], "users": 40},
        model={**CHAT["model"], "llm": {"max_model_len": 4096, "max_num_seqs": 16}},
    )
    result = simulate(s, StaticPolicy(1), record=True)
    rec = by_seq(result.records)
    src = token_source(s.workload, seed=s.seed, source="t")
    n = max(rec) + 1
    drawn_prompt, drawn_output = src.take(n)
    _, drawn_plen = src.take_prefix(n)
    drawn_turns = src.take_turns(n)
    message = drawn_prompt - drawn_plen
    max_len = 4096
    reasons = {"turns": 0, "length": 0, "unanswered": 0}
    users: dict[int, list[int]] = {}
    for seq in sorted(rec):
        users.setdefault(rec[seq]["user"], []).append(seq)
    for sends in users.values():
        first = rec[sends[0]]
        assert first["conv"] == sends[0] and first["prompt"] == drawn_prompt[sends[0]]
        for a, b in pairwise(sends):
            prev, cur = rec[a], rec[b]
            assert cur["output"] == drawn_output[b]
            turns_so_far = sum(1 for k in sends if rec[k]["conv"] == prev["conv"] and k <= a)
            if cur["conv"] == prev["conv"]:
                assert cur["prompt"] == prev["prompt"] + prev["output"] + message[b]
                assert prev["outcome"] == K.OUT_COMPLETED and turns_so_far < drawn_turns[prev["conv"]]
                continue
            # a new conversation: its first turn as drawn, and a reason to leave the old one
            assert cur["conv"] == b and cur["prompt"] == drawn_prompt[b]
            if prev["outcome"] != K.OUT_COMPLETED:
                reasons["unanswered"] += 1
            elif turns_so_far == drawn_turns[prev["conv"]]:
                reasons["turns"] += 1
            else:
                assert prev["prompt"] + prev["output"] + message[b] + drawn_output[b] > max_len
                reasons["length"] += 1
    assert all(v > 0 for v in reasons.values()), reasons


def test_history_caching_with_affinity_cuts_ttft_and_prefill_and_beats_spreading_the_turns() -> None:
    runs = {
        key: simulate(chat(caching=caching, affinity=affinity), StaticPolicy(3), record=True)
        for key, (caching, affinity) in {
            "off": (False, False),
            "spread": (True, False),
            "sticky": (True, True),
        }.items()
    }
    summary = {k: r.summary for k, r in runs.items()}
    assert summary["sticky"].prompt_tokens < 0.5 * summary["off"].prompt_tokens
    assert summary["sticky"].prompt_tokens < summary["spread"].prompt_tokens
    p95 = {k: s.ttft_p95_ms for k, s in summary.items()}
    assert p95["sticky"] is not None and p95["off"] is not None and p95["sticky"] < p95["off"]
    rate = {}
    for k, r in runs.items():
        rec = by_seq(r.records)
        done = [x for x in rec.values() if x["outcome"] == K.OUT_COMPLETED]
        rate[k] = sum(x["hits"] for x in done) / sum(x["prompt"] for x in done)
    assert rate["off"] == 0.0 and rate["sticky"] > rate["spread"] + 0.2
    # with affinity a later turn on the previous turn's pod finds its whole history but the block the
    # previous turn's last token partly filled (a cache of 25,696 blocks a pod evicts nothing here)
    rec = by_seq(runs["sticky"].records)
    last_of: dict[int, dict[str, int]] = {}
    checked = 0
    for seq in sorted(rec):
        x = rec[seq]
        prev = last_of.get(x["user"])
        last_of[x["user"]] = x
        if prev is None or x["conv"] != prev["conv"] or x["outcome"] != K.OUT_COMPLETED:
            continue
        assert x["pod"] == prev["pod"]
        history = prev["prompt"] + prev["output"]
        assert history - 1 - 16 < x["hits"] <= history - 1
        checked += 1
    assert checked > 100


def test_same_seed_same_bytes_with_conversations(tmp_path: Path) -> None:
    data = {**CHAT, "duration_s": 60}
    data["model"] = {**CHAT["model"], "llm": {"max_model_len": 4096, "enable_prefix_caching": True}}
    data["serving"] = {**CHAT["serving"], "session_affinity": True}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        result = CliRunner().invoke(app, ["simulate", str(path), "--replicas", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        outs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outs[0] == outs[1] and outs[0]


# -- configuration ----------------------------------------------------------------------------------------


def _cli(tmp_path: Path, data: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = CliRunner().invoke(app, ["simulate", str(path), "--replicas", "1", "--out", str(tmp_path / "o")])
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.stderr.split())


def _with_tokens(**tokens: Any) -> dict[str, Any]:
    return {**CHAT, "workload": {**CHAT["workload"], "tokens": {**CHAT["workload"]["tokens"], **tokens}}}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_with_tokens(conversation={"turns": 0}), "workload.tokens.conversation.turns"),
        (_with_tokens(conversation={"turns": {"uniform": [0, 3]}}), "workload.tokens.conversation.turns"),
        (_with_tokens(conversation={}), "workload.tokens.conversation.turns"),
        (_with_tokens(conversation={"turns": 3, "rounds": 2}), "workload.tokens.conversation.rounds"),
        (
            {
                **CHAT,
                "workload": {"kind": "poisson", "rate_rps": 5, "tokens": CHAT["workload"]["tokens"]},
            },
            "workload.tokens.conversation",
        ),
        ({**CHAT, "serving": {"routing": "sticky"}}, "serving.routing"),
        ({**CHAT, "serving": {"session_affinity": "yes please"}}, "serving.session_affinity"),
        (
            {
                **CHAT,
                "serving": {"session_affinity": True},
                "workload": {**CHAT["workload"], "tokens": {"prompt": 100, "output": 100}},
            },
            "serving.session_affinity",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    code, err = _cli(tmp_path, data)
    assert code == 2, err
    assert key in err


def test_session_affinity_on_a_request_level_profile_is_refused() -> None:
    data = {
        **CHAT,
        "model": {"profile": "llama2-70b-h100x8-vllm"},
        "slo": {"latency_ms": 60000},
        "workload": {"kind": "closed-loop", "users": 5, "think_time_s": [1, 2]},
        "serving": {"session_affinity": True},
        "control": {"initial_replicas": 1, "max_pods": 1},
    }
    with pytest.raises(ConfigError, match=r"serving\.session_affinity"):
        scenario_from_dict(data, "t")


def test_conversations_off_change_nothing() -> None:
    # the same users without the conversation: block send the drawn prompts, each its own conversation
    plain = {**CHAT, "duration_s": 30}
    plain["workload"] = {**CHAT["workload"], "tokens": {
        k: v for k, v in CHAT["workload"]["tokens"].items() if k != "conversation"}}  # fmt: skip
    result = simulate(scenario_from_dict(plain, "t"), StaticPolicy(2), record=True)
    rec = by_seq(result.records)
    src = token_source(scenario_from_dict(plain, "t").workload, seed=4, source="t")
    drawn, _ = src.take(max(rec) + 1)
    assert all(x["conv"] == seq and x["prompt"] == drawn[seq] for seq, x in rec.items())
