"""The Python face of the token-level kernel (``llm_kernel.py``): owns its arrays, hands out pod slots,
advances time. It offers the methods and attributes of :class:`~gpuscale.sim.dataplane.DataPlane`, so
the engine, the scale target, telemetry and the summary drive either one; ``docs/llm.md`` states the
semantics.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gpuscale._core.rng import generator
from gpuscale.sim import kernel as K
from gpuscale.sim import llm_kernel as L
from gpuscale.sim.dataplane import SCRAPE_COLUMNS, DataPlane, SlotBook, readonly
from gpuscale.sim.llm_serving import MAX_PREFIX_CACHE_BYTES, LlmParams

LLM_SCRAPE_COLUMNS = (
    *SCRAPE_COLUMNS,
    "kv_used_blocks",
    "prompt_tokens",
    "generation_tokens",
    "preemptions",
    "sm_active_int",
    "sm_occupancy_int",
    "dram_active_int",
    "prefix_cache_queries",
    "prefix_cache_hits",
)
"""Scrape columns: the request-level plane's seven (``batch`` = requests running now), then the
KV blocks in use, vLLM's token and preemption counters, the DCGM roofline integrals (s), and vLLM's
prefix-cache counters (tokens looked up, tokens found; 0 without prefix caching)."""


TB_COLUMNS = 5
"""Columns of the closed-loop token buffer: prompt, output, prefix group, prefix length, turns."""


def _pow2_at_least(n: int) -> int:
    size = 1
    while size < n:
        size <<= 1
    return size


class TokenTaker(Protocol):
    """What the plane takes token lengths from (a :class:`~gpuscale.sim.workload.TokenSource`): ``take(n)``
    gives the next ``n`` (prompt, output) lengths of the run, in order; ``take_prefix(n)`` the shared-prefix
    (group, length) of those taken (asked only where ``has_prefix``); ``take_turns(n)`` the turns per
    conversation of the next sends (asked only where ``has_conversation``)."""

    @property
    def has_prefix(self) -> bool: ...

    @property
    def has_conversation(self) -> bool: ...

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]: ...

    def take_prefix(self, n: int) -> tuple[np.ndarray, np.ndarray]: ...

    def take_turns(self, n: int) -> np.ndarray: ...


class UserDraws:
    """The random numbers of closed-loop users (docs/llm.md, Closed-loop users), drawn ahead of use from
    two seeded streams, each consumed strictly in order: the think time that follows the ``k``-th
    request sent (``llm-users/think``: ``min + (max - min) × U``) and the start offset of the ``j``-th
    user added (``llm-users/start``: ``max × U``), ``U`` uniform in [0, 1). The kernel and the
    reference model take the same sequences, so they agree whatever the order of events at one instant.
    """

    def __init__(self, seed: int, think_s: tuple[float, float]) -> None:
        self.think_s = (float(think_s[0]), float(think_s[1]))
        self._think = generator(seed, "llm-users/think")
        self._start = generator(seed, "llm-users/start")

    def think(self, n: int) -> np.ndarray:
        """The next ``n`` think times (s)."""
        lo, hi = self.think_s
        out: np.ndarray = lo + (hi - lo) * self._think.random(n)
        return out

    def start(self, n: int) -> np.ndarray:
        """The next ``n`` start offsets (s) of users added."""
        out: np.ndarray = self.think_s[1] * self._start.random(n)
        return out


@dataclass(frozen=True)
class LlmRecords:
    """Per-request rows, in the order requests ended (only when recording was asked for).

    ``outcome``: 0 completed, 1 timed out (no first token within ``timeout_s``), 2 rejected, 3 dropped
    (evicted). ``latency_s``: end-to-end latency (time in the system until the abort for a timed-out
    request, until dropped for a dropped one; 0 for a rejected one). ``ttft_s``: NaN when no token was
    emitted.
    """

    seq: np.ndarray
    outcome: np.ndarray
    latency_s: np.ndarray
    pod: np.ndarray
    ttft_s: np.ndarray
    preemptions: np.ndarray
    arrival_s: np.ndarray
    cache_hits: np.ndarray
    """Prompt tokens a completed request took from the prefix cache, over its admissions (0 otherwise)."""
    prompt: np.ndarray
    """Prompt tokens (a conversation's later turn: its whole history and the new message)."""
    output: np.ndarray
    conversation: np.ndarray
    """The ``seq`` of the first turn of its conversation (its own ``seq`` outside conversations)."""
    user: np.ndarray
    """The closed-loop user who sent it (-1: an open-loop arrival)."""


class LlmDataPlane(SlotBook):
    """Arrays and calls of the token-level kernel for one simulation run."""

    def __init__(
        self,
        params: LlmParams,
        *,
        max_slots: int,
        ttft_slo_s: float = math.inf,
        itl_slo_s: float = math.inf,
        e2e_slo_s: float = math.inf,
        seed: int,
        record: bool = False,
        think_s: tuple[float, float] | None = None,
        max_users: int = 0,
        tokens: TokenTaker | None = None,
    ) -> None:
        self.params = params
        self.max_slots = max_slots
        self.seed = seed
        """Seeds the closed-loop users' think times and start offsets (:class:`UserDraws`)."""
        self.closed_loop = think_s is not None
        """Closed-loop users (``think_s`` given): ``advance`` takes ``users_target`` and the lengths
        of their requests come from ``tokens``."""
        if self.closed_loop and tokens is None:
            raise ValueError("closed-loop users need a token source (tokens=)")
        self.tokens = tokens
        self.conversations = tokens is not None and tokens.has_conversation and self.closed_loop
        """Closed-loop users hold multi-turn conversations (docs/llm.md, Conversations); the token source
        gives the turns of each conversation (``take_turns``)."""
        self.draws = UserDraws(seed, think_s if think_s is not None else (0.0, 0.0))
        self.max_users = max_users
        pool = params.pod_capacity
        ring = _pow2_at_least(pool)
        self.pool = pool
        self.ci = np.zeros(L.N_LCI, dtype=np.int64)
        self.ci[L.C_BLOCK] = params.block_size
        self.ci[L.C_MAX_SEQS] = params.max_num_seqs
        self.ci[L.C_MNBT] = params.max_num_batched_tokens
        self.ci[L.C_CHUNKED] = 1 if params.chunked_prefill else 0
        self.ci[L.C_THRESHOLD] = params.long_prefill_token_threshold
        self.ci[L.C_MAX_LEN] = params.max_model_len
        self.ci[L.C_POD_CAP] = pool
        self.ci[L.C_RQ_CAP] = params.router_queue_capacity
        self.ci[L.C_NUM_BLOCKS] = params.num_blocks
        self.ci[L.C_RING_MASK] = ring - 1
        self.caching = params.enable_prefix_caching
        """vLLM's automatic prefix caching (docs/llm.md, Prefix caching)."""
        need = params.prefix_cache_bytes_per_pod * max_slots
        if need > MAX_PREFIX_CACHE_BYTES:
            raise ValueError(
                f"prefix caching for {max_slots} pods of {params.num_blocks:,} KV blocks would take "
                f"{need / 2**30:.1f} GiB of simulator memory, above {MAX_PREFIX_CACHE_BYTES / 2**30:.0f} GiB; "
                "allowed: fewer pods (control.max_pods), fewer blocks, or enable_prefix_caching: false"
            )
        maxb = params.blocks_per_request
        map_slots = _pow2_at_least(2 * params.num_blocks) if self.caching else 1
        self.ci[L.C_CACHING] = 1 if self.caching else 0
        self.ci[L.C_MAXB] = maxb
        self.ci[L.C_MAP_MASK] = map_slots - 1
        self.ci[L.C_CONV] = 1 if self.conversations else 0
        self.ci[L.C_AFFINITY] = 1 if params.session_affinity else 0
        self._pods_opened = 0
        nb = params.num_blocks + 1 if self.caching else 1
        pc_slots = max_slots if self.caching else 1
        self.pc_blk = np.zeros((pc_slots, nb, L.N_BK), dtype=np.int64)
        """Per block: reference count, free-queue links, key, links to the blocks of the same key."""
        self.pc_map = np.full((pc_slots, map_slots, 2), -1, dtype=np.int64)
        """Hash map: block key -> first cached block with that key."""
        self.pc_bt = np.zeros(
            (pc_slots, params.max_num_seqs if self.caching else 1, maxb if self.caching else 1),
            dtype=np.int32,
        )
        """Block tables of the running requests."""
        self.pc_ts = np.zeros((pc_slots, params.max_num_seqs if self.caching else 1), dtype=np.int64)
        """Free block tables (a stack)."""
        self._no_prefix = np.zeros((0, 2), dtype=np.int64)
        self.cf = np.zeros(L.N_LCF, dtype=np.float64)
        self.cf[L.CF_BETA0] = params.beta0_s
        self.cf[L.CF_BETA_PREFILL] = params.beta_prefill_s
        self.cf[L.CF_BETA_DECODE] = params.beta_decode_s
        self.cf[L.CF_BETA_KV] = params.beta_kv_s
        self.cf[L.CF_TTFT_SLO] = ttft_slo_s
        self.cf[L.CF_ITL_SLO] = itl_slo_s
        self.cf[L.CF_E2E_SLO] = e2e_slo_s
        self.cf[L.CF_KV_BYTES] = params.kv_bytes_per_token
        self.cf[L.CF_WEIGHTS] = params.weights_bytes
        self.cf[L.CF_PARAMS] = params.params
        self.cf[L.CF_PEAK_FLOPS] = params.peak_flops
        self.cf[L.CF_HBM] = params.hbm_bytes_per_s
        self.cf[L.CF_TIMEOUT] = params.timeout_s
        self.pi = np.zeros((max_slots, L.N_PI), dtype=np.int64)
        self.pf = np.zeros((max_slots, L.N_PF), dtype=np.float64)
        self.pf[:, L.NEXT_T] = np.inf
        self.pf[:, L.P_DEADLINE] = np.inf
        self.pf[:, L.P_SPEED] = 1.0
        self.ri = np.zeros((max_slots, pool, L.N_RI), dtype=np.int64)
        self.rf = np.zeros((max_slots, pool, L.N_RF), dtype=np.float64)
        self.run = np.zeros((max_slots, params.max_num_seqs), dtype=np.int64)
        self.wq = np.zeros((max_slots, ring), dtype=np.int64)
        self.sched = np.zeros((max_slots, params.max_num_seqs, 2), dtype=np.int64)
        self.frow = np.zeros((max_slots, pool), dtype=np.int64)
        self.skip = np.zeros(pool, dtype=np.int64)
        self.pend = np.zeros(max_slots, dtype=np.int64)
        self.pod_heap = np.zeros(2 * max_slots + 1, dtype=np.int64)
        rq = max(params.router_queue_capacity, 1)
        self.rq_f = np.zeros(rq, dtype=np.float64)
        self.rq_i = np.zeros((rq, L.N_RQI), dtype=np.int64)
        self.gi = np.zeros(L.N_LGI, dtype=np.int64)
        self.gi[K.G_RECORD] = 1 if record else 0
        self.gf = np.zeros(L.N_LGF, dtype=np.float64)
        self.hists = np.zeros((L.N_HIST, K.HIST_BUCKETS), dtype=np.int64)
        self.hist = self.hists[L.H_E2E]
        """End-to-end latency of completed requests (buckets of :func:`kernel.bucket_values`)."""
        self.wait_hist = self.hists[L.H_WAIT]
        """Queue wait: first scheduled - arrival."""
        self.ttft_hist = self.hists[L.H_TTFT]
        self.itl_hist = self.hists[L.H_ITL]
        self._rec_cap = 1024 if record else 1
        self.rec_i = np.zeros((self._rec_cap, L.N_RECI), dtype=np.int64)
        self.rec_f = np.zeros((self._rec_cap, L.N_RECF), dtype=np.float64)
        n_users = max(max_users, 1)
        self.uq = np.zeros((2, n_users), dtype=np.int64)
        """Users: row 0 the wake-time heap, row 1 the free ids (a stack, user 0 on top)."""
        self.uq[1] = np.arange(n_users - 1, -1, -1, dtype=np.int64)
        self.gi[K.G_FREE_N] = max_users
        self.uf = np.zeros((2, n_users), dtype=np.float64)
        """Users: row 0 the wake time, row 1 the think time after the request in flight."""
        self.us = np.zeros((n_users, L.N_US), dtype=np.int64)
        """Users' conversations (``L.US_*``): a user added starts without one."""
        self.tb_i = np.zeros((16, TB_COLUMNS), dtype=np.int64)
        """Pre-drawn (prompt, output, prefix group, prefix length, turns) of the next sends,
        ``gi[LG_TB_HEAD]`` to ``gi[LG_TB_N]``."""
        self.tb_f = np.zeros(16, dtype=np.float64)
        """The think time after each of those sends."""
        self._init_slots(max_slots)
        self._no_ints = readonly(np.zeros(0, dtype=np.int64))
        self.retired_inflight_int = 0.0
        """In-flight integral of pods whose slots were handed back (for Little's law)."""
        self.retired_busy_s = 0.0
        self.retired_cpu_s = 0.0

    # -- slots ------------------------------------------------------------------------------------
    def open_slot(self, t: float, speed: float = 1.0) -> int:
        """A fresh slot for a pod that starts serving at ``t`` (accepting traffic)."""
        p = self._take_slot()
        self.pi[p, :] = 0
        self.pf[p, :] = 0.0
        self.pi[p, L.P_FREE_ROWS] = self.pool
        self.pi[p, L.P_FREE_BLOCKS] = self.params.num_blocks
        self.frow[p, :] = np.arange(self.pool - 1, -1, -1, dtype=np.int64)
        self.pf[p, L.NEXT_T] = np.inf
        self.pf[p, L.P_DEADLINE] = np.inf
        self.pf[p, L.P_SPEED] = speed
        self.pf[p, L.P_LAST_T] = t
        self.pf[p, L.P_LAST_END_T] = t
        self.pi[p, L.P_UID] = self._pods_opened
        self._pods_opened += 1
        if self.caching:
            self._reset_cache(p)
        return p

    def _reset_cache(self, p: int) -> None:
        """Pod ``p``'s prefix cache empty: every block free, in the queue in block order, no key."""
        nb = self.params.num_blocks
        blk = self.pc_blk[p]
        blk[:, L.BK_REF] = 0
        blk[:, L.BK_KEY] = -1
        blk[:, L.BK_DPREV] = -1
        blk[:, L.BK_DNEXT] = -1
        order = np.arange(nb + 1, dtype=np.int64)
        blk[:, L.BK_NEXT] = (order + 1) % (nb + 1)
        blk[:, L.BK_PREV] = (order - 1) % (nb + 1)
        self.pc_map[p] = -1
        seqs = self.params.max_num_seqs
        self.pc_ts[p] = np.arange(seqs - 1, -1, -1, dtype=np.int64)
        self.pi[p, L.P_TFREE] = seqs

    def set_speed(self, p: int, speed: float) -> None:
        """Iteration-time multiplier of pod ``p`` from its next iteration on."""
        self.pf[p, L.P_SPEED] = speed

    def close_slot(self, p: int) -> None:
        """Hand back an empty slot (after draining or eviction)."""
        if self.outstanding(p):
            raise RuntimeError("closing a slot that still holds requests")
        self.retired_inflight_int += float(self.pf[p, L.P_INFLIGHT_INT])
        self.retired_busy_s += float(self.pf[p, L.P_BUSY_S])
        self._release_slot(p)

    def outstanding(self, p: int) -> int:
        """Requests in pod ``p``: running + waiting."""
        return int(self.pi[p, L.P_NRUN] + self.pi[p, L.P_WN])

    def last_end_t(self, p: int) -> float:
        """End of pod ``p``'s last iteration, or its last client-timeout abort when that came later (its
        opening time before either)."""
        return float(self.pf[p, L.P_LAST_END_T])

    @property
    def router_queue_len(self) -> int:
        return int(self.gi[K.G_RQ_TAIL] - self.gi[K.G_RQ_HEAD])

    def kv_used_blocks(self, p: int) -> int:
        return int(self.params.num_blocks - self.pi[p, L.P_FREE_BLOCKS])

    def high_water_batch(self, p: int) -> int:
        """The largest running batch pod ``p`` has had."""
        return int(self.pi[p, L.HW_BATCH])

    def running_rows(self, p: int) -> np.ndarray:
        """Pool rows of pod ``p``'s running list, in order."""
        return self.run[p, : self.pi[p, L.P_NRUN]].copy()

    def waiting_rows(self, p: int) -> np.ndarray:
        """Pool rows of pod ``p``'s waiting deque, front first."""
        head, n = int(self.pi[p, L.P_WHEAD]), int(self.pi[p, L.P_WN])
        mask = int(self.ci[L.C_RING_MASK])
        rows: np.ndarray = self.wq[p, (head + np.arange(n)) & mask]
        return rows

    def held_blocks(self, p: int) -> int:
        """Σ blocks held by pod ``p``'s requests (with the free blocks, always ``num_blocks``)."""
        rows = np.concatenate([self.running_rows(p), self.waiting_rows(p)])
        return int(self.ri[p, rows, L.R_HELD].sum())

    # -- time ---------------------------------------------------------------------------------------
    def _ensure_records(self, extra: int) -> None:
        if not self.gi[K.G_RECORD]:
            return
        need = int(self.gi[K.G_N_REC]) + extra
        if need > self._rec_cap:
            cap = max(need, 2 * self._rec_cap)
            n = int(self.gi[K.G_N_REC])
            new_i = np.zeros((cap, L.N_RECI), dtype=np.int64)
            new_f = np.zeros((cap, L.N_RECF), dtype=np.float64)
            new_i[:n] = self.rec_i[:n]
            new_f[:n] = self.rec_f[:n]
            self.rec_i, self.rec_f = new_i, new_f
            self._rec_cap = cap

    def advance(
        self,
        t0: float,
        t1: float,
        arrivals: np.ndarray,
        users_target: int = -1,
        prompt: np.ndarray | None = None,
        output: np.ndarray | None = None,
        group: np.ndarray | None = None,
        prefix_len: np.ndarray | None = None,
    ) -> None:
        """Advance over ``[t0, t1)``; ``arrivals`` (sorted times in it) carry ``prompt`` and ``output``
        token counts. ``users_target``: closed-loop users wanted from ``t0`` on (-1: no change).

        ``group`` and ``prefix_len``: each arrival's shared-prefix group (-1: none) and the length of that
        prefix (its first tokens, part of ``prompt``); without them, taken from the token source when it
        has a ``prefix:`` block, else none."""
        users = 0
        if users_target >= 0:
            if not self.closed_loop:
                raise ValueError("users_target needs closed-loop users (think_s=) on this data plane")
            self._set_users(t0, users_target)
        if self.closed_loop:
            users = self._refill(t0, t1)
        n = len(arrivals)
        arr_t = readonly(np.ascontiguousarray(arrivals, dtype=np.float64))
        if n:
            if prompt is None or output is None:
                raise ValueError("arrivals need their prompt and output token counts")
            arr_p = readonly(np.ascontiguousarray(prompt, dtype=np.int64))
            arr_o = readonly(np.ascontiguousarray(output, dtype=np.int64))
            if arr_p.shape != (n,) or arr_o.shape != (n,):
                raise ValueError("prompt and output must be parallel to arrivals")
            if int(arr_p.min()) < 1 or int(arr_o.min()) < 1:
                raise ValueError("prompt and output lengths must be >= 1")
            if group is None and self.tokens is not None and self.tokens.has_prefix:
                group, prefix_len = self.tokens.take_prefix(n)
            arr_x = self._prefix_columns(n, group, prefix_len, arr_p)
        else:
            arr_p = arr_o = self._no_ints
            arr_x = self._no_prefix
        while True:
            if self.gi[K.G_RECORD]:
                self._ensure_records(n + self.in_flight + users + 16)
            L.advance(
                t0, t1, arr_t, arr_p, arr_o, arr_x, self._acc, len(self._acc), self._act, len(self._act),
                self.pi, self.pf, self.ri, self.rf, self.run, self.wq, self.sched, self.frow, self.skip,
                self.pend, self.pod_heap, self.rq_f, self.rq_i, self.ci, self.cf, self.gi, self.gf,
                self.hists, self.rec_i, self.rec_f, self.uq, self.uf, self.tb_i, self.tb_f,
                self.pc_blk, self.pc_map, self.pc_bt, self.pc_ts, self.us,
            )  # fmt: skip
            if not self.gi[L.LG_TB_SHORT]:
                break
            # More sends than the bound (think times under 1 ms): the kernel stopped at the send that
            # found the buffer empty, every event before it handled; go on from there with more entries.
            if n:
                raise RuntimeError("closed-loop token buffer ran out with open-loop arrivals in the call")
            self.gi[L.LG_TB_SHORT] = 0
            t0 = float(self.uf[0, self.uq[0, 0]])
            users = self._refill(t0, t1, at_least=2 * len(self.tb_f))
        if self.gi[K.G_RECORD] and self.gi[K.G_N_REC] > self._rec_cap:
            raise RuntimeError("per-request record buffer overflowed")

    @staticmethod
    def _prefix_columns(
        n: int, group: np.ndarray | None, prefix_len: np.ndarray | None, prompt: np.ndarray
    ) -> np.ndarray:
        """``(n, 2)`` int64 rows (group, prefix length), checked against the prompts."""
        x = np.empty((n, 2), dtype=np.int64)
        if group is None:
            x[:, 0] = -1
            x[:, 1] = 0
            return x
        if prefix_len is None:
            raise ValueError("group needs prefix_len")
        x[:, 0] = group
        x[:, 1] = prefix_len
        if np.any((x[:, 0] >= 0) & ((x[:, 1] < 0) | (x[:, 1] > prompt))):
            raise ValueError("a shared prefix must be 0 to prompt tokens long")
        return x

    def _set_users(self, t0: float, target: int) -> None:
        """The user count becomes ``target`` at ``t0`` (docs/llm.md, Closed-loop users): retirements
        still pending are cancelled first, then new users (the lowest free ids) start at ``t0`` plus a
        start offset; a smaller count retires users as they next become free."""
        if target > self.max_users:
            raise ValueError(f"users_target {target} exceeds max_users {self.max_users}")
        gi = self.gi
        active = int(gi[K.G_USERS_ACTIVE])
        if target > active:
            add = target - active
            cancel = min(add, int(gi[K.G_RETIRE]))
            gi[K.G_RETIRE] -= cancel
            add -= cancel
            offsets = self.draws.start(add)
            for k in range(add):
                gi[K.G_FREE_N] -= 1
                u = int(self.uq[1, gi[K.G_FREE_N]])
                self.us[u] = 0  # no conversation yet (an id handed back by a retired user included)
                self.uf[0, u] = t0 + float(offsets[k])
                K._heap_push(self.uq[0], self.uf[0], gi, u)
        elif target < active:
            gi[K.G_RETIRE] += active - target
        gi[K.G_USERS_ACTIVE] = target

    def _refill(self, t0: float, t1: float, at_least: int = 0) -> int:
        """Top the token buffer up to the most sends ``[t0, t1)`` can hold: every user present sends at
        most once per think time, plus one (as the request-level plane bounds its record buffer).
        Unused entries carry over, so the k-th send of the run gets the k-th lengths and think time
        however the run is cut into intervals. Returns the entries now in the buffer (``at_least`` or
        more)."""
        gi = self.gi
        present = int(gi[K.G_USERS_ACTIVE] + gi[K.G_RETIRE])
        think_min = max(self.draws.think_s[0], 1e-3)
        need = max(present * (int((t1 - t0) / think_min) + 2), at_least)
        head, filled = int(gi[L.LG_TB_HEAD]), int(gi[L.LG_TB_N])
        left = filled - head
        if left >= need:
            return need
        if need > len(self.tb_f):
            cap = _pow2_at_least(need)
            tb_i = np.zeros((cap, TB_COLUMNS), dtype=np.int64)
            tb_f = np.zeros(cap, dtype=np.float64)
        else:
            tb_i, tb_f = self.tb_i, self.tb_f
        tb_i[:left] = self.tb_i[head:filled]
        tb_f[:left] = self.tb_f[head:filled]
        assert self.tokens is not None
        prompt, output = self.tokens.take(need - left)
        prompt = np.asarray(prompt, dtype=np.int64)
        output = np.asarray(output, dtype=np.int64)
        if len(prompt) and (int(prompt.min()) < 1 or int(output.min()) < 1):
            raise ValueError("prompt and output lengths must be >= 1")
        tb_i[left:need, 0] = prompt
        tb_i[left:need, 1] = output
        if self.tokens.has_prefix:
            group, prefix_len = self.tokens.take_prefix(need - left)
            tb_i[left:need, 2] = group
            tb_i[left:need, 3] = prefix_len
        else:
            tb_i[left:need, 2] = -1
            tb_i[left:need, 3] = 0
        if self.conversations:
            turns = np.asarray(self.tokens.take_turns(need - left), dtype=np.int64)
            if len(turns) and int(turns.min()) < 1:
                raise ValueError("turns per conversation must be >= 1")
            tb_i[left:need, 4] = turns
        else:
            tb_i[left:need, 4] = 1
        tb_f[left:need] = self.draws.think(need - left)
        self.tb_i, self.tb_f = tb_i, tb_f
        gi[L.LG_TB_HEAD] = 0
        gi[L.LG_TB_N] = need
        return need

    def hand_out(self, t: float) -> None:
        """Serve the router queue at ``t`` (a pod just became Ready), advancing no time. The pods that
        receive requests start iterating at ``t`` after the arrivals at ``t`` are routed."""
        self.advance(t, t, np.zeros(0, dtype=np.float64), -1)

    def evict(self, p: int, t: float) -> int:
        """Drop every request still in pod ``p`` at ``t`` (running and waiting); returns how many."""
        self._ensure_records(self.outstanding(p) + 1)
        if self.caching:  # the pod's KV cache goes with it
            self._reset_cache(p)
        return int(
            L.evict(
                p,
                t,
                self.pi,
                self.pf,
                self.ri,
                self.rf,
                self.run,
                self.wq,
                self.frow,
                self.pend,
                self.ci,
                self.gi,
                self.gf,
                self.rec_i,
                self.rec_f,
                self.uq,
                self.uf,
            )
        )

    def scrape(self, slots: np.ndarray, t: float) -> np.ndarray:
        """Exporter readings for ``slots`` at ``t``; columns are :data:`LLM_SCRAPE_COLUMNS`."""
        out = np.zeros((len(slots), len(LLM_SCRAPE_COLUMNS)), dtype=np.float64)
        if len(slots):
            L.scrape(np.ascontiguousarray(slots, dtype=np.int64), t, self.pi, self.pf, self.ci, out)
        return out

    def records(self) -> LlmRecords:
        n = int(self.gi[K.G_N_REC])
        ri, rf = self.rec_i[:n], self.rec_f[:n]
        return LlmRecords(
            seq=ri[:, L.RI_SEQ].copy(),
            outcome=ri[:, L.RI_OUT].astype(np.int8),
            latency_s=rf[:, L.RFR_LAT].copy(),
            pod=ri[:, L.RI_POD].astype(np.int32),
            ttft_s=rf[:, L.RFR_TTFT].copy(),
            preemptions=ri[:, L.RI_PRE].astype(np.int32),
            arrival_s=rf[:, L.RFR_ARR].copy(),
            cache_hits=ri[:, L.RI_HITS].copy(),
            prompt=ri[:, L.RI_P].copy(),
            output=ri[:, L.RI_O].copy(),
            conversation=ri[:, L.RI_CONV].copy(),
            user=ri[:, L.RI_USER].copy(),
        )

    # -- totals ----------------------------------------------------------------------------------
    def counter(self, index: int) -> int:
        return int(self.gi[index])

    @property
    def num_blocks(self) -> int:
        return self.params.num_blocks

    @property
    def generated_tokens(self) -> int:
        return int(self.gi[L.LG_GEN_TOK])

    @property
    def prompt_tokens(self) -> int:
        """Prefill tokens computed, recomputation included."""
        return int(self.gi[L.LG_PROMPT_TOK])

    @property
    def preemptions(self) -> int:
        return int(self.gi[L.LG_PREEMPT])

    @property
    def prefix_cache_queries(self) -> int:
        """vllm:prefix_cache_queries: tokens of the waiting requests looked up in the prefix cache (each
        time the scheduler considered one), all pods."""
        return int(self.gi[L.LG_PC_QUERIES])

    @property
    def prefix_cache_hits(self) -> int:
        """vllm:prefix_cache_hits: tokens of those found cached."""
        return int(self.gi[L.LG_PC_HITS])

    def check_blocks(self, p: int) -> None:
        """Raise ``AssertionError`` unless pod ``p``'s KV blocks are consistent: with prefix caching, every
        block is free (reference count 0, in the free queue, exactly once) or held (its count equal to the
        block tables that list it), and the hash map holds exactly the first block of each cached key;
        in any case the free blocks and the blocks held add up to ``num_blocks``."""
        held = self.held_blocks(p)
        free = int(self.pi[p, L.P_FREE_BLOCKS])
        if not self.caching:
            assert held + free == self.params.num_blocks, (held, free)
            return
        nb = self.params.num_blocks
        blk = self.pc_blk[p]
        refs = np.zeros(nb, dtype=np.int64)
        rows = np.concatenate([self.running_rows(p), self.waiting_rows(p)])
        for r in rows:
            t, h = int(self.ri[p, r, L.R_BT]), int(self.ri[p, r, L.R_HELD])
            assert (t >= 0) == (h > 0) or h == 0, (r, t, h)
            if h:
                np.add.at(refs, self.pc_bt[p, t, :h].astype(np.int64), 1)
        assert np.array_equal(refs, blk[:nb, L.BK_REF]), "reference counts differ from the block tables"
        assert int(blk[:nb, L.BK_REF].min()) >= 0
        seen = np.zeros(nb, dtype=bool)
        b = int(blk[nb, L.BK_NEXT])
        count = 0
        while b != nb:
            assert not seen[b] and blk[b, L.BK_REF] == 0, b
            seen[b] = True
            count += 1
            b = int(blk[b, L.BK_NEXT])
        assert count == free, (count, free)
        assert count == int((blk[:nb, L.BK_REF] == 0).sum())
        keys = blk[:nb, L.BK_KEY]
        m = self.pc_map[p]
        live = m[m[:, 0] >= 0]
        assert len(live) == len(np.unique(keys[keys >= 0])), "hash map entries differ from the cached keys"
        for key, first in live:
            assert keys[first] == key and blk[first, L.BK_DPREV] == -1
        assert int(self.pi[p, L.P_TFREE]) == self.params.max_num_seqs - int(self.pi[p, L.P_NRUN])

    @property
    def in_flight(self) -> int:
        pods = int((self.pi[:, L.P_NRUN] + self.pi[:, L.P_WN]).sum())
        return pods + self.router_queue_len

    @property
    def system_integral(self) -> float:
        """∫ (requests in the system) dt so far: pods (live and retired) plus the router queue."""
        live = float(self.pf[self._act, L.P_INFLIGHT_INT].sum()) if len(self._act) else 0.0
        return self.retired_inflight_int + live + float(self.gf[K.F_RQ_INT])


def bench_llm_plane(
    pods: int = 32,
    duration_s: float = 600.0,
    rate_per_s: float = 420.0,
    chunk_s: float = 1.0,
    seed: int = 1,
    timeout_s: float = math.inf,
) -> dict[str, float]:
    """Generated tokens per wall second for ``pods`` pods of an 8B model near saturation.

    Poisson arrivals, prompts ~ lognormal around 1,000 tokens, outputs around 250; advanced in
    ``chunk_s`` steps as the engine would. The first call compiles the kernel (excluded: a warm-up run
    of one chunk comes first). ``timeout_s``: the client timeout (none by default).
    """
    params = LlmParams(num_blocks=25_000, max_model_len=8192, timeout_s=timeout_s)
    rng = np.random.default_rng(seed)
    n = int(rate_per_s * duration_s * 1.2) + 16
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    times = times[times < duration_s]
    k = len(times)
    prompt = np.clip(rng.lognormal(math.log(1000.0) - 0.08, 0.4, k), 1, 6000).astype(np.int64)
    output = np.clip(rng.lognormal(math.log(250.0) - 0.08, 0.4, k), 1, 2000).astype(np.int64)

    def make() -> LlmDataPlane:
        dp = LlmDataPlane(params, max_slots=pods, seed=seed)
        for _ in range(pods):
            dp.open_slot(0.0)
        return dp

    warm = make()
    m = int(np.searchsorted(times, chunk_s))
    warm.advance(0.0, chunk_s, times[:m], prompt=prompt[:m], output=output[:m])
    dp = make()
    edges = np.searchsorted(times, np.arange(0.0, duration_s + chunk_s, chunk_s))
    start = _time.perf_counter()
    t = 0.0
    for j in range(len(edges) - 1):
        a, b = int(edges[j]), int(edges[j + 1])
        t1 = min(t + chunk_s, duration_s)
        dp.advance(t, t1, times[a:b], prompt=prompt[a:b], output=output[a:b])
        t = t1
        if t >= duration_s:
            break
    wall = _time.perf_counter() - start
    raw = dp.scrape(dp.active_slots, duration_s)
    return {
        "wall_s": wall,
        "simulated_s": duration_s,
        "arrived": float(dp.counter(K.G_ARRIVED)),
        "completed": float(dp.counter(K.G_COMPLETED)),
        "timed_out": float(dp.counter(K.G_TIMED_OUT)),
        "in_flight": float(dp.in_flight),
        "generated_tokens": float(dp.generated_tokens),
        "tokens_per_wall_s": dp.generated_tokens / wall if wall > 0 else math.inf,
        "iterations": float(dp.pi[:, L.P_N_ITER].sum()),
        "preemptions": float(dp.preemptions),
        "max_running": float(dp.pi[:, L.HW_BATCH].max()),
        "mean_outstanding_per_pod": dp.system_integral / (pods * duration_s),
        "gpu_busy_fraction": float(raw[:, 0].sum()) / (pods * duration_s),
    }


Plane = DataPlane | LlmDataPlane
"""Either engine's data plane: the request-level one or the token-level one (an LLM profile)."""
