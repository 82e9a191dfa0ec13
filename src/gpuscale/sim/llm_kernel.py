"""The compiled token-level data plane: vLLM's scheduler, iteration by iteration, for many pods.

``docs/llm.md`` states the semantics; :class:`~gpuscale.sim.llm_plane.LlmDataPlane` owns the arrays
and calls these functions. As in :mod:`gpuscale.sim.kernel`, every function is compiled without
reference counting and never allocates: all state lives in preallocated numpy arrays.

Per pod ``p`` (a *slot*), requests live in rows of a pool of ``pod_capacity`` rows:

* ``ri[p, row, R_*]`` (int64) and ``rf[p, row, RF_*]`` (float64): the request's fields;
* ``run[p, :pi[p, P_NRUN]]``: the running list, in order;
* ``wq[p, :]``: the waiting deque, a ring buffer (head ``P_WHEAD``, length ``P_WN``);
* ``frow[p, :pi[p, P_FREE_ROWS]]``: the free rows;
* ``sched[p, :pi[p, P_NSCHED], 0/1]``: the iteration in progress (row, tokens), in schedule order.

Events at one instant ``t`` are taken in this order: pod events (iteration ends and their effects,
client deadlines in idle pods), then client deadlines in the router queue, then arrivals (routing;
open-loop arrivals, then closed-loop users' sends in user-id order), then iteration starts (each
opening with the client deadlines due in its pod). A pod whose iteration ended at ``t``, or which
received a request while idle, is put on a *pending* list and starts its next iteration once every
event at ``t`` has been handled (pending pods in slot order), so an arrival at ``t`` is routed before
any iteration that starts at ``t``.
"""

from __future__ import annotations

import math

import numpy as np

from gpuscale.sim import kernel as K
from gpuscale.sim.kernel import _compiled

# ---- per-request integer fields (RI) -------------------------------------------------------------
R_SEQ = 0
R_P = 1
R_O = 2
R_COMP = 3
R_GEN = 4
R_HELD = 5
R_PRE = 6
R_USER = 7
"""Closed-loop user who sent it (-1 for an open-loop arrival)."""
R_GROUP = 8
"""Shared-prefix group (-1: none); its first ``R_PLEN`` prompt tokens are the group's."""
R_PLEN = 9
R_BT = 10
"""Prefix caching: the request's block table (a row of ``pc_bt``), -1 while it holds no blocks."""
R_NCACHED = 11
"""Prefix caching: blocks of its table already cached (keyed)."""
R_HITS = 12
"""Prefix-cache hits, tokens, over its admissions."""
R_CONV = 13
"""Conversation: the ``seq`` of its first turn (its own ``seq`` outside conversations); its blocks beyond
the group prefix are keyed by it, so a later turn finds the history an earlier turn cached."""
N_RI = 14

# ---- per-request float fields (RF) ---------------------------------------------------------------
RF_ARR = 0
RF_FIRST = 1
"""Time of the first token (NaN before)."""
RF_LAST = 2
"""Time of the newest token (NaN before the first)."""
RF_SCHED = 3
"""Time first scheduled (-1 before)."""
N_RF = 4

# ---- per-pod integer columns (PI) ----------------------------------------------------------------
P_NRUN = 0
P_WHEAD = 1
P_WN = 2
P_FREE_ROWS = 3
P_FREE_BLOCKS = 4
P_BUSY = 5
P_NSCHED = 6
HW_BATCH = K.HW_BATCH
"""Largest running list the pod has had (same column as the request-level kernel's)."""
P_ADMITTED = 8
P_PROMPT_TOK = 9
P_GEN_TOK = 10
P_PREEMPT = 11
P_IT_PREFILL = 12
"""Prefill tokens of the iteration in progress."""
P_PENDING = 13
P_N_ITER = 14
P_COMPLETED = 15
P_REJECTED = 16
P_DROPPED = 17
P_TIMED_OUT = 18
P_PC_QUERIES = 19
"""vllm:prefix_cache_queries: tokens looked up in the prefix cache."""
P_PC_HITS = 20
"""vllm:prefix_cache_hits: tokens found there."""
P_TFREE = 21
"""Prefix caching: free block tables (``pc_ts[p, :P_TFREE]``)."""
P_UID = 22
"""The pod's identity, unique over the run (a slot reused by a later pod gets a new one)."""
N_PI = 23

# ---- per-pod float columns (PF) ------------------------------------------------------------------
P_ITER_END = 0
P_ITER_START = 1
NEXT_T = K.NEXT_T
"""Key of the pod-event heap: the end of the iteration in progress, inf when idle."""
P_BUSY_S = 3
P_INFLIGHT_INT = 4
P_LAST_T = 5
P_SPEED = 6
P_LAST_END_T = 7
P_SM_ACT_INT = 8
P_SM_OCC_INT = 9
P_DRAM_INT = 10
P_FR_ACT = 11
P_FR_OCC = 12
P_FR_DRAM = 13
P_DEADLINE = 14
"""Earliest client deadline (arrival + timeout) of a request without a first token, or a lower bound
of it (it is made exact whenever the pod checks its deadlines); inf when none."""
N_PF = 15
assert NEXT_T == 2 and HW_BATCH == 7

# ---- global counters: the request-level kernel's G_* / F_* first, then these ---------------------
LG_GEN_TOK = K.N_GI
LG_PROMPT_TOK = K.N_GI + 1
LG_PREEMPT = K.N_GI + 2
LG_NPEND = K.N_GI + 3
LG_TB_HEAD = K.N_GI + 4
"""Next unused entry of the closed-loop token buffer."""
LG_TB_N = K.N_GI + 5
"""Entries filled in the closed-loop token buffer."""
LG_TB_SHORT = K.N_GI + 6
"""Set when a user was due to send and the token buffer was empty (the advance stopped there)."""
LG_PC_QUERIES = K.N_GI + 7
LG_PC_HITS = K.N_GI + 8
N_LGI = K.N_GI + 9

LF_PEND_T = K.N_GF
N_LGF = K.N_GF + 1

# ---- configuration --------------------------------------------------------------------------------
C_BLOCK = 0
C_MAX_SEQS = 1
C_MNBT = 2
C_CHUNKED = 3
C_THRESHOLD = 4
C_MAX_LEN = 5
C_POD_CAP = 6
C_RQ_CAP = 7
C_NUM_BLOCKS = 8
C_RING_MASK = 9
C_CACHING = 10
"""Prefix caching on (1) or off (0)."""
C_MAXB = 11
"""Blocks of the longest request, ceil(max_model_len / block_size): the width of a block table."""
C_MAP_MASK = 12
"""Prefix caching: slots of the hash map - 1 (a power of two)."""
C_CONV = 13
"""Closed-loop users hold multi-turn conversations (1) or send independent prompts (0)."""
C_AFFINITY = 14
"""Session affinity: a conversation's later turn goes to the pod that served its previous turn (1)."""
N_LCI = 15

CF_BETA0 = 0
CF_BETA_PREFILL = 1
CF_BETA_DECODE = 2
CF_BETA_KV = 3
CF_TTFT_SLO = 4
CF_ITL_SLO = 5
CF_E2E_SLO = 6
CF_KV_BYTES = 7
CF_WEIGHTS = 8
CF_PARAMS = 9
CF_PEAK_FLOPS = 10
CF_HBM = 11
CF_TIMEOUT = 12
N_LCF = 13

# ---- histograms (rows of ``hists``) and records ----------------------------------------------------
H_E2E = 0
H_WAIT = 1
H_TTFT = 2
H_ITL = 3
N_HIST = 4

RI_SEQ = 0
RI_OUT = 1
RI_POD = 2
RI_PRE = 3
RI_HITS = 4
RI_P = 5
RI_O = 6
RI_CONV = 7
RI_USER = 8
N_RECI = 9
RFR_LAT = 0
RFR_TTFT = 1
RFR_ARR = 2
N_RECF = 3

RQ_SEQ = 0
RQ_P = 1
RQ_O = 2
RQ_USER = 3
RQ_GROUP = 4
RQ_PLEN = 5
RQ_CONV = 6
RQ_AFF = 7
"""Session affinity: the slot of the pod that served the conversation's previous turn (-1: none)."""
RQ_AFF_UID = 8
N_RQI = 9

# ---- prefix caching (docs/llm.md, Prefix caching) -----------------------------------------------------
# Per pod ``p`` with ``nb`` blocks: ``pc_blk[p, b, BK_*]`` for block ``b`` (row ``nb``: the free queue's
# sentinel, its BK_NEXT the head, its BK_PREV the tail); ``pc_map[p, :, 0/1]``: an open-addressing hash map
# (linear probing, deletion by backward shift) from a block key to the first cached block with that key
# (key -1: an empty slot); the other blocks of one key follow it in a list through BK_DPREV/BK_DNEXT, in the
# order they were cached (vLLM keeps identical blocks apart and hands out the earliest). ``pc_bt[p, t, j]``:
# block table ``t`` (``max_num_seqs`` of them: only running requests hold blocks), its ``j``-th block;
# ``pc_ts[p, :pi[P_TFREE]]``: the free tables. A block key stands for vLLM's chained block hash: block ``j``
# of a request of group ``g`` lying wholly in the group's prefix is ``2 g x MAXB + j``; any other block of
# a request of conversation ``c`` (``R_CONV``: the ``seq`` of the conversation's first turn, the request's
# own ``seq`` outside conversations) is ``(2 c + 1) x MAXB + j``: a conversation's tokens only grow, turn
# after turn, so block ``j`` of any of its turns holds the same tokens.
BK_REF = 0
BK_PREV = 1
BK_NEXT = 2
BK_KEY = 3
BK_DPREV = 4
BK_DNEXT = 5
N_BK = 6

# ---- closed-loop users -------------------------------------------------------------------------------
# ``uq[0, :gi[G_HEAP_N]]``: a binary min-heap of waiting users keyed by (wake time, user id);
# ``uq[1, :gi[G_FREE_N]]``: the free user ids (a stack); ``uf[0, u]``: user ``u``'s wake time;
# ``uf[1, u]``: the think time that follows the request ``u`` has in flight. The gi counters
# G_USERS_ACTIVE, G_HEAP_N, G_RETIRE and G_FREE_N are the request-level kernel's.
# The token buffer ``tb_i[k] = (prompt, output, group, prefix length, turns)``, ``tb_f[k]`` = think time:
# one entry per send, in send order, from ``gi[LG_TB_HEAD]`` up to ``gi[LG_TB_N]``.
# Conversations (``ci[C_CONV]``): ``us[u, US_*]`` is user ``u``'s conversation (docs/llm.md, Conversations).
US_CONV = 0
"""The conversation: the ``seq`` of its first turn."""
US_LEFT = 1
"""Turns still to send after the one sent last."""
US_HIST = 2
"""Tokens of the conversation so far (prompt + output of the last turn), 0 until that turn completed."""
US_GROUP = 3
US_PLEN = 4
US_POD = 5
"""The slot of the pod that served the last turn, and that pod's ``P_UID``."""
US_POD_UID = 6
N_US = 7


# ---- small helpers ---------------------------------------------------------------------------------
@_compiled(inline=True)
def _touch(p: int, t: float, pi: np.ndarray, pf: np.ndarray) -> None:
    dt = t - pf[p, P_LAST_T]
    if dt > 0.0:
        pf[p, P_INFLIGHT_INT] += (pi[p, P_NRUN] + pi[p, P_WN]) * dt
        pf[p, P_LAST_T] = t


@_compiled(inline=True)
def _rq_touch(t: float, gi: np.ndarray, gf: np.ndarray) -> None:
    dt = t - gf[K.F_RQ_LAST]
    if dt > 0.0:
        gf[K.F_RQ_INT] += (gi[K.G_RQ_TAIL] - gi[K.G_RQ_HEAD]) * dt
        gf[K.F_RQ_LAST] = t


@_compiled(inline=True)
def _record(
    gi: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    seq: int,
    outcome: int,
    pod: int,
    pre: int,
    lat: float,
    ttft: float,
    arr: float,
    prompt: int,
    output: int,
    conv: int,
    user: int,
) -> None:
    if gi[K.G_RECORD] != 0:
        n = gi[K.G_N_REC]
        if n < rec_i.shape[0]:
            rec_i[n, RI_SEQ] = seq
            rec_i[n, RI_OUT] = outcome
            rec_i[n, RI_POD] = pod
            rec_i[n, RI_PRE] = pre
            rec_i[n, RI_HITS] = 0
            rec_i[n, RI_P] = prompt
            rec_i[n, RI_O] = output
            rec_i[n, RI_CONV] = conv
            rec_i[n, RI_USER] = user
            rec_f[n, RFR_LAT] = lat
            rec_f[n, RFR_TTFT] = ttft
            rec_f[n, RFR_ARR] = arr
        gi[K.G_N_REC] = n + 1


@_compiled(inline=True)
def _reject(
    seq: int,
    user: int,
    arr: float,
    t: float,
    pod: int,
    prompt: int,
    output: int,
    conv: int,
    gi: np.ndarray,
    gf: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
) -> None:
    gi[K.G_REJECTED] += 1
    gf[K.F_SYS_SUM] += t - arr
    _record(gi, rec_i, rec_f, seq, K.OUT_REJECTED, pod, 0, 0.0, math.nan, arr, prompt, output, conv, user)
    _user_free(user, t, uq, uf, gi)


@_compiled(inline=True)
def _timed_out(
    seq: int,
    user: int,
    arr: float,
    t: float,
    pod: int,
    pre: int,
    prompt: int,
    output: int,
    conv: int,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
) -> None:
    """Request ``seq`` is abandoned by its client at ``t`` (as the request-level kernel counts it: its
    time in the system as latency, capped at the timeout for the histogram and the maximum)."""
    lat = t - arr
    gi[K.G_TIMED_OUT] += 1
    gf[K.F_SYS_SUM] += lat
    gf[K.F_LAT_SUM] += lat
    seen = min(lat, cf[CF_TIMEOUT])
    hists[H_E2E, K._bucket(seen)] += 1
    if seen > gf[K.F_LAT_MAX]:
        gf[K.F_LAT_MAX] = seen
    _record(gi, rec_i, rec_f, seq, K.OUT_TIMED_OUT, pod, pre, lat, math.nan, arr, prompt, output, conv, user)
    _user_free(user, t, uq, uf, gi)


@_compiled(inline=True)
def _set_pending(p: int, t: float, pi: np.ndarray, pend: np.ndarray, gi: np.ndarray, gf: np.ndarray) -> None:
    if pi[p, P_BUSY] == 0 and pi[p, P_PENDING] == 0:
        pi[p, P_PENDING] = 1
        pend[gi[LG_NPEND]] = p
        gi[LG_NPEND] += 1
        gf[LF_PEND_T] = t


@_compiled(inline=True)
def _user_free(user: int, t: float, uq: np.ndarray, uf: np.ndarray, gi: np.ndarray) -> None:
    """The outcome of ``user``'s request was decided at ``t``: it retires if the population is shrinking,
    else it thinks and sends again at ``t + think`` (docs/llm.md, Closed-loop users)."""
    if user < 0:
        return
    if gi[K.G_RETIRE] > 0:
        gi[K.G_RETIRE] -= 1
        uq[1, gi[K.G_FREE_N]] = user
        gi[K.G_FREE_N] += 1
    else:
        uf[0, user] = t + uf[1, user]
        K._heap_push(uq[0], uf[0], gi, user)


@_compiled(inline=True)
def _heap_fix(ph: np.ndarray, pf: np.ndarray, p: int) -> None:
    if ph[1 + (ph.shape[0] - 1) // 2 + p] > 0:
        K._ph_fix(ph, pf, p)


@_compiled(inline=True)
def _choose_pod(pi: np.ndarray, acc: np.ndarray, n_acc: int) -> int:
    """The accepting pod with the fewest outstanding requests, lowest slot on ties (-1: none)."""
    best = -1
    best_out = 0
    for k in range(n_acc):
        p = acc[k]
        out = pi[p, P_NRUN] + pi[p, P_WN]
        if best < 0 or out < best_out:
            best = p
            best_out = out
    return best


@_compiled(inline=True)
def _route(pi: np.ndarray, acc: np.ndarray, n_acc: int, aff: int, aff_uid: int, ci: np.ndarray) -> int:
    """Session affinity (docs/llm.md, Routing): the pod that served the conversation's previous turn
    (slot ``aff``, identity ``aff_uid``) while it accepts and has room; else :func:`_choose_pod`."""
    if aff >= 0 and pi[aff, P_UID] == aff_uid and pi[aff, P_NRUN] + pi[aff, P_WN] < ci[C_POD_CAP]:
        for k in range(n_acc):
            if acc[k] == aff:
                return aff
    return _choose_pod(pi, acc, n_acc)


# ---- prefix caching ----------------------------------------------------------------------------------
_HASH_MUL = -7046029254386353131
"""0x9E3779B97F4A7C15 (Fibonacci hashing) as a signed 64-bit number."""


@_compiled(inline=True)
def _pc_key(ri: np.ndarray, p: int, r: int, j: int, bs: int, maxb: int) -> int:
    """The key of block ``j`` of row ``r``'s tokens (see the prefix-caching layout above)."""
    g = ri[p, r, R_GROUP]
    if g >= 0 and (j + 1) * bs <= ri[p, r, R_PLEN]:
        return int(2 * g * maxb + j)
    return int((2 * ri[p, r, R_CONV] + 1) * maxb + j)


@_compiled(inline=True)
def _map_home(key: int, mask: int) -> int:
    h = key * _HASH_MUL
    return int((h ^ (h >> 29)) & mask)


@_compiled(inline=True)
def _map_find(pm: np.ndarray, p: int, key: int, mask: int) -> int:
    i = _map_home(key, mask)
    while pm[p, i, 0] != -1:
        if pm[p, i, 0] == key:
            return int(pm[p, i, 1])
        i = (i + 1) & mask
    return -1


@_compiled(inline=True)
def _map_put(pm: np.ndarray, p: int, key: int, b: int, mask: int) -> None:
    i = _map_home(key, mask)
    while pm[p, i, 0] != -1 and pm[p, i, 0] != key:
        i = (i + 1) & mask
    pm[p, i, 0] = key
    pm[p, i, 1] = b


@_compiled()
def _map_del(pm: np.ndarray, p: int, key: int, mask: int) -> None:
    """Remove ``key`` (present); the entries after it move back so that no probe sequence breaks."""
    i = _map_home(key, mask)
    while pm[p, i, 0] != key:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        kj = pm[p, j, 0]
        if kj == -1:
            break
        home = _map_home(kj, mask)
        # the entry at j stays when its home lies cyclically in (i, j]
        stays = (i < home <= j) if i <= j else (home > i or home <= j)
        if not stays:
            pm[p, i, 0] = kj
            pm[p, i, 1] = pm[p, j, 1]
            i = j
    pm[p, i, 0] = -1


@_compiled(inline=True)
def _fq_remove(pb: np.ndarray, p: int, b: int) -> None:
    prv = pb[p, b, BK_PREV]
    nxt = pb[p, b, BK_NEXT]
    pb[p, prv, BK_NEXT] = nxt
    pb[p, nxt, BK_PREV] = prv


@_compiled(inline=True)
def _fq_append(pb: np.ndarray, p: int, b: int, sentinel: int) -> None:
    tail = pb[p, sentinel, BK_PREV]
    pb[p, tail, BK_NEXT] = b
    pb[p, b, BK_PREV] = tail
    pb[p, b, BK_NEXT] = sentinel
    pb[p, sentinel, BK_PREV] = b


@_compiled()
def _pc_uncache(pb: np.ndarray, pm: np.ndarray, p: int, b: int, mask: int) -> None:
    """Block ``b`` loses its key (it is about to be reused): out of the map or its key's list."""
    key = pb[p, b, BK_KEY]
    if key < 0:
        return
    dp = pb[p, b, BK_DPREV]
    dn = pb[p, b, BK_DNEXT]
    if dp < 0:
        if dn < 0:
            _map_del(pm, p, key, mask)
        else:
            _map_put(pm, p, key, dn, mask)
            pb[p, dn, BK_DPREV] = -1
    else:
        pb[p, dp, BK_DNEXT] = dn
        if dn >= 0:
            pb[p, dn, BK_DPREV] = dp
    pb[p, b, BK_KEY] = -1
    pb[p, b, BK_DPREV] = -1
    pb[p, b, BK_DNEXT] = -1


@_compiled()
def _pc_cache_upto(
    p: int,
    r: int,
    tokens: int,
    ri: np.ndarray,
    ci: np.ndarray,
    pb: np.ndarray,
    pm: np.ndarray,
    pbt: np.ndarray,
) -> None:
    """Row ``r``'s full blocks among its first ``tokens`` tokens become cached (vLLM caches them when it
    schedules the tokens that fill them)."""
    bs = ci[C_BLOCK]
    full = tokens // bs
    done = ri[p, r, R_NCACHED]
    if full <= done:
        return
    maxb = ci[C_MAXB]
    mask = ci[C_MAP_MASK]
    t = ri[p, r, R_BT]
    for j in range(done, full):
        b = pbt[p, t, j]
        key = _pc_key(ri, p, r, j, bs, maxb)
        pb[p, b, BK_KEY] = key
        pb[p, b, BK_DNEXT] = -1
        head = _map_find(pm, p, key, mask)
        if head < 0:
            _map_put(pm, p, key, b, mask)
            pb[p, b, BK_DPREV] = -1
        else:
            last = head
            while pb[p, last, BK_DNEXT] >= 0:
                last = pb[p, last, BK_DNEXT]
            pb[p, last, BK_DNEXT] = b
            pb[p, b, BK_DPREV] = last
    ri[p, r, R_NCACHED] = full


@_compiled()
def _pc_alloc(
    p: int,
    r: int,
    count: int,
    ri: np.ndarray,
    ci: np.ndarray,
    pb: np.ndarray,
    pm: np.ndarray,
    pbt: np.ndarray,
) -> None:
    """Row ``r`` takes ``count`` blocks from the head of the free queue (evicting their keys), appended
    to its table after the ``R_HELD`` it holds (the caller updates ``R_HELD``)."""
    sentinel = ci[C_NUM_BLOCKS]
    mask = ci[C_MAP_MASK]
    t = ri[p, r, R_BT]
    j = ri[p, r, R_HELD]
    for _ in range(count):
        b = pb[p, sentinel, BK_NEXT]
        _fq_remove(pb, p, b)
        _pc_uncache(pb, pm, p, b, mask)
        pb[p, b, BK_REF] = 1
        pbt[p, t, j] = b
        j += 1


@_compiled()
def _pc_release(
    p: int,
    r: int,
    pi: np.ndarray,
    ri: np.ndarray,
    ci: np.ndarray,
    pb: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
) -> int:
    """Row ``r`` gives up its blocks, last first (so its tail is evicted first); a block no one else
    holds joins the tail of the free queue, keeping its key. Returns the blocks that became free."""
    t = ri[p, r, R_BT]
    if t < 0:
        return 0
    sentinel = ci[C_NUM_BLOCKS]
    freed = 0
    for j in range(ri[p, r, R_HELD] - 1, -1, -1):
        b = pbt[p, t, j]
        ref = pb[p, b, BK_REF] - 1
        pb[p, b, BK_REF] = ref
        if ref == 0:
            _fq_append(pb, p, b, sentinel)
            freed += 1
    pts[p, pi[p, P_TFREE]] = t
    pi[p, P_TFREE] += 1
    ri[p, r, R_BT] = -1
    ri[p, r, R_NCACHED] = 0
    return freed


@_compiled(inline=True)
def _release(
    p: int,
    r: int,
    pi: np.ndarray,
    ri: np.ndarray,
    ci: np.ndarray,
    pb: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
) -> int:
    """Row ``r`` gives up its blocks; returns how many became free (all it held, without caching)."""
    held = ri[p, r, R_HELD]
    if ci[C_CACHING] != 0:
        held = _pc_release(p, r, pi, ri, ci, pb, pbt, pts)
    ri[p, r, R_HELD] = 0
    return int(held)


# ---- one pod -----------------------------------------------------------------------------------------
@_compiled()
def _admit(
    p: int,
    t: float,
    seq: int,
    user: int,
    arr: float,
    prompt: int,
    output: int,
    group: int,
    plen: int,
    conv: int,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    wq: np.ndarray,
    frow: np.ndarray,
    pend: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
) -> None:
    """Request ``seq`` (of ``user``, -1 for none) reaches pod ``p`` at ``t``: it joins the back of the
    waiting deque (or is rejected when the pod is full)."""
    if pi[p, P_NRUN] + pi[p, P_WN] >= ci[C_POD_CAP]:
        pi[p, P_REJECTED] += 1
        _reject(seq, user, arr, t, p, prompt, output, conv, gi, gf, rec_i, rec_f, uq, uf)
        return
    _touch(p, t, pi, pf)
    nf = pi[p, P_FREE_ROWS] - 1
    pi[p, P_FREE_ROWS] = nf
    r = frow[p, nf]
    ri[p, r, R_SEQ] = seq
    ri[p, r, R_P] = prompt
    ri[p, r, R_O] = output
    ri[p, r, R_COMP] = 0
    ri[p, r, R_GEN] = 0
    ri[p, r, R_HELD] = 0
    ri[p, r, R_PRE] = 0
    ri[p, r, R_USER] = user
    ri[p, r, R_GROUP] = group
    ri[p, r, R_PLEN] = plen
    ri[p, r, R_BT] = -1
    ri[p, r, R_NCACHED] = 0
    ri[p, r, R_HITS] = 0
    ri[p, r, R_CONV] = conv
    rf[p, r, RF_ARR] = arr
    rf[p, r, RF_FIRST] = math.nan
    rf[p, r, RF_LAST] = math.nan
    rf[p, r, RF_SCHED] = -1.0
    mask = ci[C_RING_MASK]
    wq[p, (pi[p, P_WHEAD] + pi[p, P_WN]) & mask] = r
    pi[p, P_WN] += 1
    pi[p, P_ADMITTED] += 1
    # admission order is arrival order: the newcomer's deadline matters only to a pod without one
    deadline = arr + cf[CF_TIMEOUT]
    if deadline < pf[p, P_DEADLINE]:
        pf[p, P_DEADLINE] = deadline
    _set_pending(p, t, pi, pend, gi, gf)


@_compiled(inline=True)
def _abort(
    p: int,
    r: int,
    t: float,
    pi: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    frow: np.ndarray,
    nf: int,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
    ci: np.ndarray,
    pb: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
) -> int:
    """Row ``r`` of pod ``p`` times out at ``t``: recorded as such, its row put on the free list at
    ``nf``; returns the KV blocks that became free."""
    held = _release(p, r, pi, ri, ci, pb, pbt, pts)
    _timed_out(
        ri[p, r, R_SEQ], ri[p, r, R_USER], rf[p, r, RF_ARR], t, p, ri[p, r, R_PRE], ri[p, r, R_P],
        ri[p, r, R_O], ri[p, r, R_CONV], cf, gi, gf, hists, rec_i, rec_f, uq, uf,
    )  # fmt: skip
    frow[p, nf] = r
    return int(held)


@_compiled()
def _expire(
    p: int,
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    run: np.ndarray,
    wq: np.ndarray,
    frow: np.ndarray,
    skip: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
    pb: np.ndarray,
    pm: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
) -> None:
    """Client timeouts on pod ``p`` at ``t`` (docs/llm.md, Client timeout): every request without a first
    token whose deadline ``arrival + timeout`` is at most ``t`` is aborted, running requests in list
    order, then waiting ones in deque order; ``P_DEADLINE`` becomes the earliest deadline left.

    The waiting deque holds the requests scheduled before (preempted: pushed to the front) ahead of
    those never scheduled (appended at the back, in arrival order), so the scan stops at the first
    never-scheduled request that has not expired: every one behind it is younger.
    """
    timeout = cf[CF_TIMEOUT]
    _touch(p, t, pi, pf)
    nxt = math.inf
    free = pi[p, P_FREE_BLOCKS]
    nf = pi[p, P_FREE_ROWS]
    gone = 0
    # running requests, in list order (the order of the others kept)
    nrun = pi[p, P_NRUN]
    w = 0
    for i in range(nrun):
        r = run[p, i]
        if ri[p, r, R_GEN] == 0:
            deadline = rf[p, r, RF_ARR] + timeout
            if t >= deadline:
                free += _abort(
                    p, r, t, pi, ri, rf, frow, nf, cf, gi, gf, hists, rec_i, rec_f, uq, uf, ci, pb, pbt, pts
                )
                nf += 1
                gone += 1
                continue
            if deadline < nxt:
                nxt = deadline
        run[p, w] = r
        w += 1
    pi[p, P_NRUN] = w
    # waiting requests, in deque order, up to the first never-scheduled one that has not expired
    mask = ci[C_RING_MASK]
    head = pi[p, P_WHEAD]
    wn = pi[p, P_WN]
    kept = 0
    k = 0
    while k < wn:
        r = wq[p, (head + k) & mask]
        if ri[p, r, R_GEN] == 0:
            deadline = rf[p, r, RF_ARR] + timeout
            if t >= deadline:
                free += _abort(
                    p, r, t, pi, ri, rf, frow, nf, cf, gi, gf, hists, rec_i, rec_f, uq, uf, ci, pb, pbt, pts
                )
                nf += 1
                gone += 1
                k += 1
                continue
            if deadline < nxt:
                nxt = deadline
            if rf[p, r, RF_SCHED] < 0.0:
                break
        skip[kept] = r
        kept += 1
        k += 1
    # the kept requests of the scanned part close up behind the part not scanned
    for j in range(kept):
        wq[p, (head + k - kept + j) & mask] = skip[j]
    pi[p, P_WHEAD] = (head + k - kept) & mask
    pi[p, P_WN] = wn - (k - kept)
    pi[p, P_FREE_BLOCKS] = free
    pi[p, P_FREE_ROWS] = nf
    pi[p, P_TIMED_OUT] += gone
    pf[p, P_DEADLINE] = nxt
    if gone > 0:
        pf[p, P_LAST_END_T] = t  # a request left the pod (as the request-level kernel's timeout drops)


@_compiled()
def _start_iter(
    p: int,
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    run: np.ndarray,
    wq: np.ndarray,
    sched: np.ndarray,
    frow: np.ndarray,
    skip: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
    pb: np.ndarray,
    pm: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
) -> None:
    """The client timeouts due, then the scheduler's decision at ``t`` (docs/llm.md, One pod) and the
    iteration's duration."""
    if t >= pf[p, P_DEADLINE]:
        _expire(
            p, t, pi, pf, ri, rf, run, wq, frow, skip, ci, cf, gi, gf, hists, rec_i, rec_f, uq, uf, pb, pm, pbt,
            pts,
        )  # fmt: skip
    bs = ci[C_BLOCK]
    caching = ci[C_CACHING] != 0
    maxb = ci[C_MAXB]
    mask_map = ci[C_MAP_MASK]
    budget = ci[C_MNBT]
    thr = ci[C_THRESHOLD]
    max_seqs = ci[C_MAX_SEQS]
    mask = ci[C_RING_MASK]
    nrun = pi[p, P_NRUN]
    free = pi[p, P_FREE_BLOCKS]
    ns = 0
    n_prefill = 0
    n_decode = 0
    ctx = 0
    preempted = False
    # 1. running requests, in list order
    i = 0
    while i < nrun and budget > 0:
        r = run[p, i]
        comp = ri[p, r, R_COMP]
        num = ri[p, r, R_P] + ri[p, r, R_GEN]
        n = num - comp
        if thr > 0 and n > thr:
            n = thr
        if n > budget:
            n = budget
        need = (comp + n + bs - 1) // bs - ri[p, r, R_HELD]
        stop = False
        while need > free:
            # preempt the request at the end of the running list (recomputation)
            nrun -= 1
            v = run[p, nrun]
            free += _release(p, v, pi, ri, ci, pb, pbt, pts)
            ri[p, v, R_COMP] = 0
            ri[p, v, R_PRE] += 1
            pi[p, P_PREEMPT] += 1
            gi[LG_PREEMPT] += 1
            head = (pi[p, P_WHEAD] - 1) & mask
            wq[p, head] = v
            pi[p, P_WHEAD] = head
            pi[p, P_WN] += 1
            preempted = True
            if v == r:
                stop = True
                break
        if stop:
            break
        if need > 0:
            if caching:
                _pc_alloc(p, r, need, ri, ci, pb, pm, pbt)
            ri[p, r, R_HELD] += need
            free -= need
        if caching:
            _pc_cache_upto(p, r, min(comp + n, num), ri, ci, pb, pm, pbt)
        sched[p, ns, 0] = r
        sched[p, ns, 1] = n
        ns += 1
        if n == 1 and comp == num - 1:
            n_decode += 1
        else:
            n_prefill += n
        ctx += comp + n
        budget -= n
        i += 1
    # 2. waiting requests, in deque order, only when nobody was preempted
    if not preempted:
        chunked = ci[C_CHUNKED] != 0
        wn = pi[p, P_WN]
        head = pi[p, P_WHEAD]
        k = 0
        kept = 0
        wait_hist = hists[H_WAIT]
        while k < wn and budget > 0 and nrun < max_seqs:
            r = wq[p, (head + k) & mask]
            num = ri[p, r, R_P] + ri[p, r, R_GEN]
            # prefix caching: the longest run of cached blocks of its tokens, short of the last token
            hit = 0
            taken = 0
            tb = -1
            if caching:
                tb = pts[p, pi[p, P_TFREE] - 1]
                most = (num - 1) // bs
                while hit < most:
                    b = _map_find(pm, p, _pc_key(ri, p, r, hit, bs, maxb), mask_map)
                    if b < 0:
                        break
                    pbt[p, tb, hit] = b
                    if pb[p, b, BK_REF] == 0:
                        taken += 1
                    hit += 1
                pi[p, P_PC_QUERIES] += num
                pi[p, P_PC_HITS] += hit * bs
                gi[LG_PC_QUERIES] += num
                gi[LG_PC_HITS] += hit * bs
            comp = hit * bs
            n = num - comp
            if thr > 0 and n > thr:
                n = thr
            if n > budget:
                if not chunked:
                    skip[kept] = r
                    kept += 1
                    k += 1
                    continue
                n = budget
            blocks = (comp + n + bs - 1) // bs - hit
            if blocks + taken > free:
                break
            if caching:
                pi[p, P_TFREE] -= 1
                ri[p, r, R_BT] = tb
                for j in range(hit):
                    b = pbt[p, tb, j]
                    if pb[p, b, BK_REF] == 0:
                        _fq_remove(pb, p, b)
                    pb[p, b, BK_REF] += 1
                ri[p, r, R_HELD] = hit
                ri[p, r, R_NCACHED] = hit
                ri[p, r, R_COMP] = comp
                ri[p, r, R_HITS] += comp
                _pc_alloc(p, r, blocks, ri, ci, pb, pm, pbt)
                _pc_cache_upto(p, r, min(comp + n, num), ri, ci, pb, pm, pbt)
            free -= blocks + taken
            ri[p, r, R_HELD] = hit + blocks
            run[p, nrun] = r
            nrun += 1
            sched[p, ns, 0] = r
            sched[p, ns, 1] = n
            ns += 1
            if n == 1 and comp + 1 == num:
                n_decode += 1
            else:
                n_prefill += n
            ctx += comp + n
            budget -= n
            if rf[p, r, RF_SCHED] < 0.0:
                rf[p, r, RF_SCHED] = t
                w = t - rf[p, r, RF_ARR]
                wait_hist[K._bucket(w)] += 1
                gf[K.F_WAIT_SUM] += w
                gf[K.F_N_WAIT] += 1.0
            k += 1
        # the skipped requests keep their places just before the ones not considered
        for j in range(kept):
            wq[p, (head + k - kept + j) & mask] = skip[j]
        pi[p, P_WHEAD] = (head + k - kept) & mask
        pi[p, P_WN] = wn - (k - kept)
    pi[p, P_NRUN] = nrun
    pi[p, P_FREE_BLOCKS] = free
    if nrun > pi[p, HW_BATCH]:
        pi[p, HW_BATCH] = nrun
    if ns == 0:
        # idle: the pod's next event is the next client deadline (docs/llm.md, Client timeout)
        pi[p, P_BUSY] = 0
        pi[p, P_NSCHED] = 0
        if nrun + pi[p, P_WN] == 0:
            pf[p, P_DEADLINE] = math.inf
        pf[p, NEXT_T] = pf[p, P_DEADLINE]
        return
    d = pf[p, P_SPEED] * (
        cf[CF_BETA0] + cf[CF_BETA_PREFILL] * n_prefill + cf[CF_BETA_DECODE] * n_decode + cf[CF_BETA_KV] * ctx
    )
    fr_dram = 0.0
    fr_occ = 0.0
    if d > 0.0:
        fr_dram = min(1.0, (cf[CF_WEIGHTS] + ctx * cf[CF_KV_BYTES]) / (cf[CF_HBM] * d))
        fr_occ = min(1.0, 2.0 * cf[CF_PARAMS] * (n_prefill + n_decode) / (cf[CF_PEAK_FLOPS] * d))
    fr_act = max(fr_dram, fr_occ)
    end = t + d
    pi[p, P_BUSY] = 1
    pi[p, P_NSCHED] = ns
    pi[p, P_IT_PREFILL] = n_prefill
    pi[p, P_N_ITER] += 1
    pf[p, P_ITER_START] = t
    pf[p, P_ITER_END] = end
    pf[p, NEXT_T] = end
    pf[p, P_BUSY_S] += d
    pf[p, P_SM_ACT_INT] += fr_act * d
    pf[p, P_SM_OCC_INT] += fr_occ * d
    pf[p, P_DRAM_INT] += fr_dram * d
    pf[p, P_FR_ACT] = fr_act
    pf[p, P_FR_OCC] = fr_occ
    pf[p, P_FR_DRAM] = fr_dram


@_compiled()
def _end_iter(
    p: int,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    run: np.ndarray,
    sched: np.ndarray,
    frow: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
    pb: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
    us: np.ndarray,
) -> None:
    """The iteration in progress on pod ``p`` ends: tokens, TTFT and ITL samples, finishes (a finished
    turn of a conversation leaves its tokens and its pod to its user's next turn)."""
    e = pf[p, P_ITER_END]
    start = pf[p, P_ITER_START]
    _touch(p, e, pi, pf)
    ns = pi[p, P_NSCHED]
    free = pi[p, P_FREE_BLOCKS]
    ttft_slo = cf[CF_TTFT_SLO]
    itl_slo = cf[CF_ITL_SLO]
    e2e_slo = cf[CF_E2E_SLO]
    e2e_hist = hists[H_E2E]
    ttft_hist = hists[H_TTFT]
    itl_hist = hists[H_ITL]
    same = 0
    emitted = 0
    finished = 0
    nf = pi[p, P_FREE_ROWS]
    for k in range(ns):
        r = sched[p, k, 0]
        comp = ri[p, r, R_COMP] + sched[p, k, 1]
        ri[p, r, R_COMP] = comp
        gen = ri[p, r, R_GEN]
        if comp != ri[p, r, R_P] + gen:
            continue
        gen += 1
        ri[p, r, R_GEN] = gen
        emitted += 1
        if gen == 1:
            rf[p, r, RF_FIRST] = e
            ttft_hist[K._bucket(e - rf[p, r, RF_ARR])] += 1
        else:
            last = rf[p, r, RF_LAST]
            if last == start:
                same += 1
            else:
                itl_hist[K._bucket(e - last)] += 1
        rf[p, r, RF_LAST] = e
        if gen == ri[p, r, R_O]:
            free += _release(p, r, pi, ri, ci, pb, pbt, pts)
            arr = rf[p, r, RF_ARR]
            lat = e - arr
            ttft = rf[p, r, RF_FIRST] - arr
            gi[K.G_COMPLETED] += 1
            gf[K.F_LAT_SUM] += lat
            gf[K.F_SYS_SUM] += lat
            if lat > gf[K.F_LAT_MAX]:
                gf[K.F_LAT_MAX] = lat
            e2e_hist[K._bucket(lat)] += 1
            if ttft <= ttft_slo and lat <= e2e_slo and (gen == 1 or (lat - ttft) / (gen - 1) <= itl_slo):
                gi[K.G_SLO_MET] += 1
            user = ri[p, r, R_USER]
            _record(
                gi, rec_i, rec_f, ri[p, r, R_SEQ], K.OUT_COMPLETED, p, ri[p, r, R_PRE], lat, ttft, arr,
                ri[p, r, R_P], ri[p, r, R_O], ri[p, r, R_CONV], user,
            )  # fmt: skip
            n_rec = gi[K.G_N_REC] - 1
            if gi[K.G_RECORD] != 0 and n_rec < rec_i.shape[0]:
                rec_i[n_rec, RI_HITS] = ri[p, r, R_HITS]
            if user >= 0 and ci[C_CONV] != 0:
                us[user, US_HIST] = ri[p, r, R_P] + ri[p, r, R_O]
                us[user, US_POD] = p
                us[user, US_POD_UID] = pi[p, P_UID]
            _user_free(user, e, uq, uf, gi)
            frow[p, nf] = r
            nf += 1
            finished += 1
    if same > 0:
        itl_hist[K._bucket(e - start)] += same
    pi[p, P_FREE_ROWS] = nf
    pi[p, P_FREE_BLOCKS] = free
    pi[p, P_GEN_TOK] += emitted
    gi[LG_GEN_TOK] += emitted
    pi[p, P_PROMPT_TOK] += pi[p, P_IT_PREFILL]
    gi[LG_PROMPT_TOK] += pi[p, P_IT_PREFILL]
    pi[p, P_COMPLETED] += finished
    if finished > 0:
        nrun = pi[p, P_NRUN]
        w = 0
        for i in range(nrun):
            r = run[p, i]
            if ri[p, r, R_GEN] < ri[p, r, R_O]:
                run[p, w] = r
                w += 1
        pi[p, P_NRUN] = w
    pi[p, P_BUSY] = 0
    pi[p, P_NSCHED] = 0
    pi[p, P_IT_PREFILL] = 0
    pf[p, NEXT_T] = math.inf
    pf[p, P_LAST_END_T] = e


@_compiled()
def _flush(
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    run: np.ndarray,
    wq: np.ndarray,
    sched: np.ndarray,
    frow: np.ndarray,
    skip: np.ndarray,
    pend: np.ndarray,
    ph: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
    pb: np.ndarray,
    pm: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
) -> None:
    """Start the iterations of the pending pods at ``t`` (every event at ``t`` has been handled), in
    slot order."""
    npend = gi[LG_NPEND]
    for k in range(1, npend):  # insertion sort: a handful of pods at one instant
        v = pend[k]
        j = k - 1
        while j >= 0 and pend[j] > v:
            pend[j + 1] = pend[j]
            j -= 1
        pend[j + 1] = v
    for k in range(npend):
        p = pend[k]
        if pi[p, P_PENDING] == 0:
            continue
        pi[p, P_PENDING] = 0
        if pi[p, P_BUSY] == 0 and pi[p, P_NRUN] + pi[p, P_WN] > 0:
            _start_iter(
                p, t, pi, pf, ri, rf, run, wq, sched, frow, skip, ci, cf, gi, gf, hists, rec_i, rec_f, uq, uf,
                pb, pm, pbt, pts,
            )  # fmt: skip
            _heap_fix(ph, pf, p)
    gi[LG_NPEND] = 0


@_compiled()
def _drain_router(
    t: float,
    acc: np.ndarray,
    n_acc: int,
    rq_f: np.ndarray,
    rq_i: np.ndarray,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    wq: np.ndarray,
    frow: np.ndarray,
    pend: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
) -> None:
    """Hand the router queue out at ``t`` in FIFO order, each request by the routing rule; one whose
    client deadline has come is timed out instead (pod -1)."""
    cap = rq_f.shape[0]
    while n_acc > 0 and gi[K.G_RQ_HEAD] < gi[K.G_RQ_TAIL]:
        _rq_touch(t, gi, gf)
        j = gi[K.G_RQ_HEAD] % cap
        gi[K.G_RQ_HEAD] += 1
        if t >= rq_f[j] + cf[CF_TIMEOUT]:
            _timed_out(
                rq_i[j, RQ_SEQ], rq_i[j, RQ_USER], rq_f[j], t, -1, 0, rq_i[j, RQ_P], rq_i[j, RQ_O],
                rq_i[j, RQ_CONV], cf, gi, gf, hists, rec_i, rec_f, uq, uf,
            )  # fmt: skip
            continue
        p = _route(pi, acc, n_acc, rq_i[j, RQ_AFF], rq_i[j, RQ_AFF_UID], ci)
        _admit(
            p, t, rq_i[j, RQ_SEQ], rq_i[j, RQ_USER], rq_f[j], rq_i[j, RQ_P], rq_i[j, RQ_O], rq_i[j, RQ_GROUP],
            rq_i[j, RQ_PLEN], rq_i[j, RQ_CONV], pi, pf, ri, rf, wq, frow, pend, ci, cf, gi, gf, rec_i, rec_f,
            uq, uf,
        )  # fmt: skip


@_compiled()
def advance(
    t0: float,
    t1: float,
    arr_t: np.ndarray,
    arr_p: np.ndarray,
    arr_o: np.ndarray,
    arr_x: np.ndarray,
    acc: np.ndarray,
    n_acc: int,
    act: np.ndarray,
    n_act: int,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    run: np.ndarray,
    wq: np.ndarray,
    sched: np.ndarray,
    frow: np.ndarray,
    skip: np.ndarray,
    pend: np.ndarray,
    ph: np.ndarray,
    rq_f: np.ndarray,
    rq_i: np.ndarray,
    ci: np.ndarray,
    cf: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    hists: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
    tb_i: np.ndarray,
    tb_f: np.ndarray,
    pb: np.ndarray,
    pm: np.ndarray,
    pbt: np.ndarray,
    pts: np.ndarray,
    us: np.ndarray,
) -> None:
    """Advance the token-level data plane over [t0, t1).

    A pod's event time (``NEXT_T``, the key of the pod-event heap) is the end of its iteration in
    progress, or, while it idles with requests, its next client deadline (``P_DEADLINE``).

    ``acc[:n_acc]``: pods accepting traffic, ascending slot order; ``act[:n_act]``: every pod with a
    data plane (accepting or draining), ascending. An iteration in progress at ``t1`` stays in
    progress. Pods made pending at ``t1`` itself (by :func:`advance` with ``t0 == t1``, a hand-out)
    start at the next call, after the arrivals at that instant are routed.

    Closed-loop users (``uq``, ``uf``; the caller changes their number between calls) send when they
    wake, as arrivals, each taking the next entry of the token buffer ``tb_i``/``tb_f``; should it be
    empty, ``gi[LG_TB_SHORT]`` is set and the call returns at once (the caller sizes the buffer).

    ``arr_x[k] = (group, prefix length)`` of open-loop arrival ``k`` (columns 2 and 3 of ``tb_i`` for a
    send); ``pb``, ``pm``, ``pbt``, ``pts``: the prefix cache (used only with ``ci[C_CACHING]``).

    ``us``: the users' conversations (used only with ``ci[C_CONV]``; docs/llm.md, Conversations). A send
    continues its user's conversation when the previous turn completed, turns are left and the new turn
    fits ``max_model_len``: its prompt is the conversation so far followed by the new message (the
    send's prompt less its drawn prefix); otherwise it starts a conversation of ``tb_i[k, 4]`` turns.
    """
    K._ph_build(ph, pf, act, n_act)
    if gi[LG_NPEND] > 0 and t0 > gf[LF_PEND_T]:
        _flush(
            gf[LF_PEND_T], pi, pf, ri, rf, run, wq, sched, frow, skip, pend, ph, ci, cf, gi, gf, hists,
            rec_i, rec_f, uq, uf, pb, pm, pbt, pts,
        )  # fmt: skip
    if gi[K.G_RQ_HEAD] < gi[K.G_RQ_TAIL]:
        _drain_router(
            t0, acc, n_acc, rq_f, rq_i, pi, pf, ri, rf, wq, frow, pend, ci, cf, gi, gf, hists, rec_i, rec_f,
            uq, uf,
        )  # fmt: skip
    ai = 0
    n_arr = arr_t.shape[0]
    max_len = ci[C_MAX_LEN]
    rq_cap = ci[C_RQ_CAP]
    rq_n = rq_f.shape[0]
    timeout = cf[CF_TIMEOUT]
    user_heap = uq[0]
    user_t = uf[0]
    conversations = ci[C_CONV] != 0
    affinity = ci[C_AFFINITY] != 0
    h = 0
    while True:
        t_arr = arr_t[ai] if ai < n_arr else math.inf
        # the earliest waking user sends after the open-loop arrivals of the same instant
        from_user = False
        if gi[K.G_HEAP_N] > 0 and user_t[user_heap[0]] < t_arr:
            t_arr = user_t[user_heap[0]]
            from_user = True
        # the next pod event: an iteration's end, or a client deadline in an idle pod
        p_ev = -1
        t_end = math.inf
        if ph[0] > 0:
            p_ev = ph[1]
            t_end = pf[p_ev, NEXT_T]
        # the oldest router-queue request's client gives up at its deadline
        t_rqx = math.inf
        if gi[K.G_RQ_HEAD] < gi[K.G_RQ_TAIL]:
            t_rqx = rq_f[gi[K.G_RQ_HEAD] % rq_n] + timeout
        t_next = min(t_arr, t_end, t_rqx)
        if gi[LG_NPEND] > 0:
            t_pend = gf[LF_PEND_T]
            # every event at t_pend is handled once the next one (or the horizon) lies beyond it
            if min(t_next, t1) > t_pend:
                _flush(
                    t_pend, pi, pf, ri, rf, run, wq, sched, frow, skip, pend, ph, ci, cf, gi, gf, hists,
                    rec_i, rec_f, uq, uf, pb, pm, pbt, pts,
                )  # fmt: skip
                continue
        if t_next >= t1:
            break
        gi[K.G_EVENTS] += 1
        if t_end <= t_arr and t_end <= t_rqx:
            if pi[p_ev, P_BUSY] != 0:
                _end_iter(
                    p_ev, pi, pf, ri, rf, run, sched, frow, ci, cf, gi, gf, hists, rec_i, rec_f, uq, uf, pb, pbt,
                    pts, us,
                )  # fmt: skip
                K._ph_fix(ph, pf, p_ev)
                if pi[p_ev, P_NRUN] + pi[p_ev, P_WN] > 0:
                    _set_pending(p_ev, t_end, pi, pend, gi, gf)
            else:
                # a client deadline in an idle pod: aborted at once; the pod stays idle
                _expire(
                    p_ev, t_end, pi, pf, ri, rf, run, wq, frow, skip, ci, cf, gi, gf, hists, rec_i, rec_f,
                    uq, uf, pb, pm, pbt, pts,
                )  # fmt: skip
                if pi[p_ev, P_NRUN] + pi[p_ev, P_WN] == 0:
                    pf[p_ev, P_DEADLINE] = math.inf
                pf[p_ev, NEXT_T] = pf[p_ev, P_DEADLINE]
                K._ph_fix(ph, pf, p_ev)
            continue
        if t_rqx <= t_arr:
            _rq_touch(t_rqx, gi, gf)
            j = gi[K.G_RQ_HEAD] % rq_n
            gi[K.G_RQ_HEAD] += 1
            _timed_out(
                rq_i[j, RQ_SEQ], rq_i[j, RQ_USER], rq_f[j], t_rqx, -1, 0, rq_i[j, RQ_P], rq_i[j, RQ_O],
                rq_i[j, RQ_CONV], cf, gi, gf, hists, rec_i, rec_f, uq, uf,
            )  # fmt: skip
            continue
        # -- an arrival: open-loop, or a user's send
        t = t_arr
        if from_user:
            user = K._heap_pop(user_heap, user_t, gi)
            if gi[K.G_RETIRE] > 0:  # the population shrank: the first user to become free leaves
                gi[K.G_RETIRE] -= 1
                uq[1, gi[K.G_FREE_N]] = user
                gi[K.G_FREE_N] += 1
                continue
            h = gi[LG_TB_HEAD]
            if h >= gi[LG_TB_N]:
                K._heap_push(user_heap, user_t, gi, user)
                gi[LG_TB_SHORT] = 1
                return
            gi[LG_TB_HEAD] = h + 1
            prompt = tb_i[h, 0]
            output = tb_i[h, 1]
            group = tb_i[h, 2]
            plen = tb_i[h, 3]
            uf[1, user] = tb_f[h]
        else:
            user = -1
            prompt = arr_p[ai]
            output = arr_o[ai]
            group = arr_x[ai, 0]
            plen = arr_x[ai, 1]
            ai += 1
        seq = gi[K.G_ARRIVED]
        gi[K.G_ARRIVED] = seq + 1
        conv = seq
        aff = -1
        aff_uid = -1
        if user >= 0 and conversations:
            hist = us[user, US_HIST]
            message = prompt - plen
            if us[user, US_LEFT] > 0 and hist > 0 and hist + message + output <= max_len:
                # the next turn: the conversation so far, then the new message
                prompt = hist + message
                group = us[user, US_GROUP]
                plen = us[user, US_PLEN]
                conv = us[user, US_CONV]
                us[user, US_LEFT] -= 1
                if affinity:
                    aff = us[user, US_POD]
                    aff_uid = us[user, US_POD_UID]
            else:
                us[user, US_CONV] = seq
                us[user, US_LEFT] = tb_i[h, 4] - 1
                us[user, US_GROUP] = group
                us[user, US_PLEN] = plen
            us[user, US_HIST] = 0
        if prompt + output > max_len:
            _reject(seq, user, t, t, -1, prompt, output, conv, gi, gf, rec_i, rec_f, uq, uf)
        elif n_acc > 0:
            p = _route(pi, acc, n_acc, aff, aff_uid, ci)
            _admit(
                p, t, seq, user, t, prompt, output, group, plen, conv, pi, pf, ri, rf, wq, frow, pend, ci, cf,
                gi, gf, rec_i, rec_f, uq, uf,
            )  # fmt: skip
        elif gi[K.G_RQ_TAIL] - gi[K.G_RQ_HEAD] < rq_cap:
            _rq_touch(t, gi, gf)
            j = gi[K.G_RQ_TAIL] % rq_n
            rq_f[j] = t
            rq_i[j, RQ_SEQ] = seq
            rq_i[j, RQ_P] = prompt
            rq_i[j, RQ_O] = output
            rq_i[j, RQ_USER] = user
            rq_i[j, RQ_GROUP] = group
            rq_i[j, RQ_PLEN] = plen
            rq_i[j, RQ_CONV] = conv
            rq_i[j, RQ_AFF] = aff
            rq_i[j, RQ_AFF_UID] = aff_uid
            gi[K.G_RQ_TAIL] += 1
        else:
            _reject(seq, user, t, t, -1, prompt, output, conv, gi, gf, rec_i, rec_f, uq, uf)
    for k in range(n_act):
        _touch(act[k], t1, pi, pf)
    _rq_touch(t1, gi, gf)


@_compiled()
def evict(
    p: int,
    t: float,
    pi: np.ndarray,
    pf: np.ndarray,
    ri: np.ndarray,
    rf: np.ndarray,
    run: np.ndarray,
    wq: np.ndarray,
    frow: np.ndarray,
    pend: np.ndarray,
    ci: np.ndarray,
    gi: np.ndarray,
    gf: np.ndarray,
    rec_i: np.ndarray,
    rec_f: np.ndarray,
    uq: np.ndarray,
    uf: np.ndarray,
) -> int:
    """Kill pod ``p`` at ``t``: every request in it (running, then waiting) is dropped; the iteration
    in progress is cut short at ``t``."""
    _touch(p, t, pi, pf)
    if pi[p, P_BUSY] != 0:
        rest = pf[p, P_ITER_END] - t
        if rest > 0.0:
            pf[p, P_BUSY_S] -= rest
            pf[p, P_SM_ACT_INT] -= pf[p, P_FR_ACT] * rest
            pf[p, P_SM_OCC_INT] -= pf[p, P_FR_OCC] * rest
            pf[p, P_DRAM_INT] -= pf[p, P_FR_DRAM] * rest
    mask = ci[C_RING_MASK]
    nrun = pi[p, P_NRUN]
    wn = pi[p, P_WN]
    head = pi[p, P_WHEAD]
    nf = pi[p, P_FREE_ROWS]
    for k in range(nrun + wn):
        r = run[p, k] if k < nrun else wq[p, (head + k - nrun) & mask]
        arr = rf[p, r, RF_ARR]
        gi[K.G_DROPPED] += 1
        gf[K.F_SYS_SUM] += t - arr
        _record(
            gi, rec_i, rec_f, ri[p, r, R_SEQ], K.OUT_DROPPED, p, ri[p, r, R_PRE], t - arr,
            rf[p, r, RF_FIRST] - arr, arr, ri[p, r, R_P], ri[p, r, R_O], ri[p, r, R_CONV], ri[p, r, R_USER],
        )  # fmt: skip
        ri[p, r, R_HELD] = 0
        frow[p, nf] = r
        nf += 1
        _user_free(ri[p, r, R_USER], t, uq, uf, gi)
    pi[p, P_FREE_ROWS] = nf
    pi[p, P_FREE_BLOCKS] = ci[C_NUM_BLOCKS]
    pi[p, P_DROPPED] += nrun + wn
    pi[p, P_NRUN] = 0
    pi[p, P_WN] = 0
    pi[p, P_BUSY] = 0
    pi[p, P_NSCHED] = 0
    if pi[p, P_PENDING] != 0:
        pi[p, P_PENDING] = 0
        w = 0
        for k in range(gi[LG_NPEND]):
            if pend[k] != p:
                pend[w] = pend[k]
                w += 1
        gi[LG_NPEND] = w
    pf[p, NEXT_T] = math.inf
    pf[p, P_DEADLINE] = math.inf
    return int(nrun + wn)


@_compiled()
def scrape(
    slots: np.ndarray, t: float, pi: np.ndarray, pf: np.ndarray, ci: np.ndarray, out: np.ndarray
) -> None:
    """Per-pod exporter readings at ``t`` (columns: ``llm_plane.LLM_SCRAPE_COLUMNS``). Time-integrals
    are charged when an iteration starts; the part of the one in progress after ``t`` is taken back."""
    for k in range(slots.shape[0]):
        p = slots[k]
        rest = 0.0
        if pi[p, P_BUSY] != 0 and pf[p, P_ITER_END] > t:
            rest = pf[p, P_ITER_END] - t
        outstanding = pi[p, P_NRUN] + pi[p, P_WN]
        out[k, 0] = pf[p, P_BUSY_S] - rest
        out[k, 1] = 0.0
        out[k, 2] = pf[p, P_INFLIGHT_INT] + outstanding * max(0.0, t - pf[p, P_LAST_T])
        out[k, 3] = pi[p, P_ADMITTED]
        out[k, 4] = outstanding
        out[k, 5] = pi[p, P_WN]
        out[k, 6] = pi[p, P_NRUN]
        out[k, 7] = ci[C_NUM_BLOCKS] - pi[p, P_FREE_BLOCKS]
        out[k, 8] = pi[p, P_PROMPT_TOK]
        out[k, 9] = pi[p, P_GEN_TOK]
        out[k, 10] = pi[p, P_PREEMPT]
        out[k, 11] = pf[p, P_SM_ACT_INT] - pf[p, P_FR_ACT] * rest
        out[k, 12] = pf[p, P_SM_OCC_INT] - pf[p, P_FR_OCC] * rest
        out[k, 13] = pf[p, P_DRAM_INT] - pf[p, P_FR_DRAM] * rest
        out[k, 14] = pi[p, P_PC_QUERIES]
        out[k, 15] = pi[p, P_PC_HITS]
