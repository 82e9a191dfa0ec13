"""A plain SimPy model of the token-level LLM engine: the reference the compiled kernel is checked against.

It implements ``docs/llm.md`` (Requests, Routing, One pod: the scheduler) as directly as SimPy allows
and is written for clarity, not speed: requests are Python objects, each pod runs one SimPy process
that loops over vLLM's scheduler iterations, an arrival process feeds the router, and ``env.now`` is
the only clock.

Same-instant ordering
---------------------
``docs/llm.md`` fixes one order outright: an arrival at ``t`` is routed before any iteration that starts
at ``t``. The rest follows the request-level engine (``docs/simulator.md``: pod events, then arrivals,
lowest slot first). SimPy orders the events of one instant by ``(priority, scheduling order)``, and
every event of this model is scheduled with an explicit *rank* as that priority::

    rank = 2                        the closed-loop user count changes
    rank = 3 + slot                 the end of an iteration of pod ``slot``, or a client deadline of a
                                    request in pod ``slot``
    rank = 3 + n_pods + slot        pod ``slot`` starts accepting (and takes the router queue)
    rank = 3 + 2 * n_pods           a client deadline of a request in the router queue
    rank = 4 + 2 * n_pods           an arrival (open-loop, or a closed-loop user's send)
    rank = 5 + 2 * n_pods + slot    the start of an iteration of pod ``slot``

So at one instant the user count changes first (as the engine changes it at the start of an
interval), every iteration that ends there ends first (its finished requests leave before the
router counts outstanding requests), idle pods abort the requests whose deadline it is, then pods
open, then router-queue requests whose deadline it is give up, then arrivals are routed, and only then
do iterations start, seeing every request that arrived at that instant. Ranks start at 2 so that SimPy's
own bookkeeping (``URGENT`` = 0, ``NORMAL`` = 1) never reorders the model's events; ``run(until=t_end)``
stops at ``URGENT`` priority, so nothing at exactly ``t_end`` is processed.

Events are scheduled at absolute times, never as ``now + delay`` computed by SimPy, so that an
iteration ending at ``start + d`` coincides exactly with an arrival at the same float.

Readings of docs/llm.md
-----------------------
Where the text leaves a choice, this model reads it so:

* A request with ``P + O > max_model_len`` is rejected on arrival before routing (pod −1), whether or
  not a pod accepts; it never enters the router queue. A request that overflows the router queue has
  pod −1; one rejected by a full pod has that pod's slot.
* Pods that start accepting at one instant each take their own hand-out of the router queue, in slot
  order (as in docs/simulator.md), so the first takes the whole queue if it has room.
* Skipping (no chunked prefill, ``n > B``) applies to each waiting request the pass reaches, not
  only the first; skipped requests keep their places.
* "Decode" is read literally: any request scheduled for ``n = 1`` with ``computed = num_tokens − 1``,
  including a one-token chunk that ends a prompt or a recomputation, and a first iteration with
  ``P = 1``. Only prefill tokens count as prompt tokens.
* Prompt and generation tokens are counted when their iteration ends; a preemption when it happens,
  at the start of an iteration. An iteration that runs across ``t_end`` has its preemptions and
  blocks counted, but not its tokens.
* "The pod idles until the next arrival": the next arrival routed to that pod (no other can change
  what it schedules).
* The inter-token interval that spans a preemption is ``e − (time of the previous token)``, like any
  other.

Client timeouts (docs/llm.md, Client timeout) are modelled by one event per request at its deadline
``arrival + timeout_s``: in the router queue it gives up there and then; in a pod it is aborted there
and then only if the pod is idle (no iteration running and none due at this instant), and otherwise
left to the check that opens the pod's next iteration.

Prefix caching (docs/llm.md, Prefix caching; ``params.enable_prefix_caching``) keeps vLLM's structures
as Python objects: each block's reference count and key, the free queue as an ordered dict (head first),
and a dict from a block key to the blocks cached under it, earliest first. A request's block key is
``("group", g, j)`` for block ``j`` wholly inside its group's shared prefix and ``("own", c, j)``
otherwise, ``c`` its conversation (the ``seq`` of the conversation's first turn; its own ``seq`` outside
conversations).

Closed-loop users (docs/llm.md, Closed-loop users) are one heap of (wake time, user id), as in the
kernel: the earliest user sends at its wake time, taking the next prompt and output lengths of the run
and the think time that will follow its outcome; the think times and the start offsets of users added
are given, in order, by the caller (the same sequences the kernel gets from
:class:`~gpuscale.sim.llm_plane.UserDraws`).

Conversations (docs/llm.md, Conversations; ``turns`` given) are a small record per user: the conversation,
the turns left, its tokens so far (set when a turn completes, cleared when one is sent) and the pod that
served the last turn; with ``params.session_affinity`` the router sends a later turn to that pod while it
accepts and has room.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import simpy
from simpy.events import EventPriority

from gpuscale.sim.llm_serving import LlmParams

__all__ = ["LlmPodState", "LlmReferenceResult", "LlmRequestResult", "simulate_llm_reference"]

Outcome = Literal["completed", "timed_out", "rejected", "in_flight"]

_USERS_RANK = 2
_FIRST_RANK = 3

_ProcessGen = Generator[Any, Any, None]


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmRequestResult:
    """What happened to one request (times in seconds; ``nan`` where it has not happened)."""

    seq: int
    """Arrival index."""
    arrival_s: float
    prompt: int
    output: int
    outcome: Outcome
    pod: int
    """Slot of the pod that took it (or, full, rejected it); −1 for the router (queue or rejection)."""
    first_token_s: float
    """Time its first token was emitted."""
    completion_s: float
    """Time its last token was emitted."""
    timed_out_s: float
    """Time its client's abort took effect (the request left the router queue or its pod)."""
    e2e_s: float
    """``completion_s − arrival_s``; ``timed_out_s − arrival_s`` if timed out; 0 if rejected."""
    ttft_s: float
    """``first_token_s − arrival_s``."""
    preemptions: int
    itl_s: tuple[float, ...]
    """Every inter-token interval, in order (``generated − 1`` of them)."""
    generated: int
    """Output tokens emitted by ``t_end``."""
    slo_met: bool
    """Completed within every SLO target that is set."""
    cache_hits: int = 0
    """Prompt tokens taken from the prefix cache, over its admissions."""
    conversation: int = -1
    """The ``seq`` of the first turn of its conversation (its own ``seq`` outside conversations)."""
    user: int = -1
    """The closed-loop user who sent it (-1: an open-loop arrival)."""


@dataclass(frozen=True)
class LlmPodState:
    """One pod at ``t_end`` (an iteration running across ``t_end`` holds what it was given at its start)."""

    slot: int
    used_blocks: int
    running: int
    waiting: int
    iterations: int
    """Iterations that ended before ``t_end``."""


@dataclass(frozen=True)
class LlmReferenceResult:
    """What the reference model observed over ``[0, t_end)``."""

    requests: tuple[LlmRequestResult, ...]
    """One per arrival before ``t_end``, in ``seq`` order."""
    generated_tokens: int
    """Output tokens emitted."""
    prompt_tokens: int
    """Tokens computed as prefill (recomputation included), counted when their iteration ends."""
    preemptions: int
    slo_met: int
    timed_out: int
    pods: tuple[LlmPodState, ...]
    prefix_cache_queries: int = 0
    """Tokens looked up in the prefix cache (each time a waiting request was considered)."""
    prefix_cache_hits: int = 0

    def by_outcome(self, outcome: Outcome) -> list[LlmRequestResult]:
        return [r for r in self.requests if r.outcome == outcome]


# -- SimPy plumbing ------------------------------------------------------------------------------------


class _Signal(simpy.Event):
    """A SimPy event that fires at an absolute time with an explicit same-instant rank."""

    def fire(self, when: float, rank: int) -> _Signal:
        env = self.env
        self._ok = True
        self._value = None
        heapq.heappush(env._queue, (when, EventPriority(rank), next(env._eid), self))
        return self


def _signal_at(env: simpy.Environment, when: float, rank: int) -> _Signal:
    return _Signal(env).fire(when, rank)


# -- the model ----------------------------------------------------------------------------------------


class _Request:
    """One request and its scheduler state (docs/llm.md: held, computed, generated, num_tokens)."""

    def __init__(
        self, seq: int, arrival: float, prompt: int, output: int, group: int = -1, prefix_len: int = 0
    ) -> None:
        self.seq = seq
        self.conv = seq
        """Its conversation: the ``seq`` of the conversation's first turn (its own outside conversations)."""
        self.affinity: _Pod | None = None
        """Session affinity: the pod that served the previous turn of its conversation."""
        self.group = group
        """Shared-prefix group (-1: none): its first ``prefix_len`` prompt tokens are the group's."""
        self.prefix_len = prefix_len
        self.blocks: list[int] = []
        """Prefix caching: its blocks, in token order."""
        self.n_cached = 0
        """Prefix caching: how many of them are cached (keyed)."""
        self.cache_hits = 0
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.held = 0
        self.computed = 0
        self.generated = 0
        self.outcome: Outcome = "in_flight"
        self.pod = -1
        self.first_token = math.nan
        self.last_token = math.nan
        self.completion = math.nan
        self.timed_out = math.nan
        self.preemptions = 0
        self.itl: list[float] = []
        self.user = -1
        """The closed-loop user who sent it (-1: an open-loop arrival)."""
        self.think = 0.0
        """Its user's think time after its outcome."""

    @property
    def num_tokens(self) -> int:
        return self.prompt + self.generated


@dataclass
class _Scheduled:
    """One request's share of an iteration."""

    req: _Request
    n: int
    decode: bool


class _Totals:
    """Counters over the whole run."""

    def __init__(self) -> None:
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.preemptions = 0
        self.timed_out = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.users: _Users | None = None

    def ended(self, req: _Request) -> None:
        """``req``'s outcome was decided now: its user (if any) becomes free."""
        if self.users is not None and req.user >= 0:
            self.users.free_user(req)

    def time_out(self, req: _Request, now: float) -> None:
        """Its client gives up: the request ends, timed out, at ``now``."""
        req.outcome = "timed_out"
        req.timed_out = now
        self.timed_out += 1
        self.ended(req)


class _Router:
    """Least outstanding routing over the accepting pods; the router queue while none accepts."""

    def __init__(
        self, env: simpy.Environment, params: LlmParams, totals: _Totals, deadline_rank: int
    ) -> None:
        self.env = env
        self.params = params
        self.totals = totals
        self.deadline_rank = deadline_rank
        self.pods: list[_Pod] = []
        self.queue: deque[_Request] = deque()

    def _choose(self, req: _Request) -> _Pod | None:
        sticky = req.affinity
        if sticky is not None and sticky.accepting and sticky.outstanding < self.params.pod_capacity:
            return sticky
        best: _Pod | None = None
        for pod in self.pods:  # slot order: a strict < keeps the lowest slot on ties
            if pod.accepting and (best is None or pod.outstanding < best.outstanding):
                best = pod
        return best

    def arrive(self, req: _Request) -> None:
        if req.prompt + req.output > self.params.max_model_len:
            req.outcome = "rejected"  # vLLM refuses it before any routing
            self.totals.ended(req)
            return
        pod = self._choose(req)
        if pod is not None:
            pod.admit(req)
        elif len(self.queue) < self.params.router_queue_capacity:
            self.queue.append(req)
            if math.isfinite(self.params.timeout_s):
                deadline = _signal_at(self.env, req.arrival + self.params.timeout_s, self.deadline_rank)
                deadline.callbacks.append(lambda _: self._deadline(req))
        else:
            req.outcome = "rejected"
            self.totals.ended(req)

    def _deadline(self, req: _Request) -> None:
        """The client of a request still in the router queue gives up at its deadline."""
        if req.outcome == "in_flight" and req.pod == -1:
            self.queue.remove(req)
            self.totals.time_out(req, self.env.now)

    def hand_out(self) -> None:
        """A pod started accepting: every request of the router queue is routed, in FIFO order (one
        whose deadline is now is timed out instead)."""
        while self.queue:
            req = self.queue.popleft()
            if self.env.now >= req.arrival + self.params.timeout_s:
                self.totals.time_out(req, self.env.now)
                continue
            pod = self._choose(req)
            assert pod is not None  # called only when a pod has just started accepting
            pod.admit(req)


class _Pod:
    """One vLLM pod: a running list, a waiting deque, a paged KV cache and the scheduler loop."""

    def __init__(
        self,
        env: simpy.Environment,
        slot: int,
        n_pods: int,
        params: LlmParams,
        speed: float,
        totals: _Totals,
    ) -> None:
        self.env = env
        self.slot = slot
        self.p = params
        self.speed = speed
        self.totals = totals
        self.accepting = False
        self.running: list[_Request] = []
        self.waiting: deque[_Request] = deque()
        self.free_blocks = params.num_blocks
        self.caching = params.enable_prefix_caching
        self.ref = [0] * params.num_blocks
        self.key: list[tuple[str, int, int] | None] = [None] * params.num_blocks
        self.free_queue: dict[int, None] = dict.fromkeys(range(params.num_blocks))
        """The free blocks, head (next to be reused) first; a dict keeps insertion order."""
        self.cached: dict[tuple[str, int, int], list[int]] = {}
        """Block key -> the blocks cached under it, earliest first."""
        self.iterations = 0
        self.end_rank = _FIRST_RANK + slot
        self.open_rank = _FIRST_RANK + n_pods + slot
        self.start_rank = _FIRST_RANK + 2 * n_pods + 2 + slot
        self._busy = False
        self._wake = _Signal(env)
        self._wake_pending = False
        env.process(self._loop())

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting)

    @property
    def used_blocks(self) -> int:
        return self.p.num_blocks - self.free_blocks

    def admit(self, req: _Request) -> None:
        req.pod = self.slot
        if self.outstanding >= self.p.pod_capacity:
            req.outcome = "rejected"
            self.totals.ended(req)
            return
        self.waiting.append(req)
        if math.isfinite(self.p.timeout_s):
            deadline = _signal_at(self.env, req.arrival + self.p.timeout_s, self.end_rank)
            deadline.callbacks.append(lambda _: self._deadline(req))
        self._request_iteration()

    # -- client timeouts ------------------------------------------------------------------------------

    def _expired(self, req: _Request) -> bool:
        return req.generated == 0 and self.env.now >= req.arrival + self.p.timeout_s

    def _time_out(self, req: _Request) -> None:
        self._release(req)
        self.totals.time_out(req, self.env.now)

    def _abort_expired(self) -> None:
        """At an iteration's start: abort every request without a first token whose deadline has come,
        running ones in list order, then waiting ones in deque order."""
        for req in [r for r in self.running if self._expired(r)]:
            self.running.remove(req)
            self._time_out(req)
        for req in [r for r in self.waiting if self._expired(r)]:
            self.waiting.remove(req)
            self._time_out(req)

    def _deadline(self, req: _Request) -> None:
        """A request's deadline: aborted now if it is still here without a token and the pod is idle;
        a busy pod (or one whose iteration starts at this instant) aborts it when its next iteration
        starts."""
        if req.outcome != "in_flight" or req.generated > 0 or self._busy or self._wake_pending:
            return
        assert not self.running  # an idle pod has scheduled nothing: nothing runs
        self.waiting.remove(req)
        self._time_out(req)

    def _request_iteration(self) -> None:
        """Start an iteration at this instant (after its arrivals) unless one runs or is due already."""
        if self._busy or self._wake_pending:
            return
        self._wake_pending = True
        self._wake.fire(self.env.now, self.start_rank)

    # -- the scheduler ------------------------------------------------------------------------------

    def _cap(self, n: int) -> int:
        threshold = self.p.long_prefill_token_threshold
        return min(n, threshold) if threshold > 0 else n

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.p.block_size)

    # -- the KV cache and its prefix cache -----------------------------------------------------------

    def _key(self, req: _Request, j: int) -> tuple[str, int, int]:
        """What vLLM's chained hash of block ``j`` of ``req``'s tokens tells apart."""
        if req.group >= 0 and (j + 1) * self.p.block_size <= req.prefix_len:
            return ("group", req.group, j)
        return ("own", req.conv, j)

    def _release(self, req: _Request) -> None:
        """``req`` gives up its blocks, last first; those no one else holds join the free queue's tail,
        keeping their keys."""
        if self.caching:
            for b in reversed(req.blocks):
                self.ref[b] -= 1
                if self.ref[b] == 0:
                    self.free_queue[b] = None
                    self.free_blocks += 1
            req.blocks = []
            req.n_cached = 0
        else:
            self.free_blocks += req.held
        req.held = 0

    def _take(self, req: _Request, count: int) -> None:
        """``req`` takes ``count`` blocks (the counter only, or from the free queue's head, each losing
        its key)."""
        self.free_blocks -= count
        req.held += count
        if not self.caching:
            return
        for _ in range(count):
            b = next(iter(self.free_queue))
            del self.free_queue[b]
            key = self.key[b]
            if key is not None:
                self.cached[key].remove(b)
                if not self.cached[key]:
                    del self.cached[key]
                self.key[b] = None
            self.ref[b] = 1
            req.blocks.append(b)

    def _cache(self, req: _Request, tokens: int) -> None:
        """The full blocks among ``req``'s first ``tokens`` tokens become cached."""
        if not self.caching:
            return
        full = tokens // self.p.block_size
        for j in range(req.n_cached, full):
            b = req.blocks[j]
            key = self._key(req, j)
            self.key[b] = key
            self.cached.setdefault(key, []).append(b)
        req.n_cached = max(req.n_cached, full)

    def _lookup(self, req: _Request) -> list[int]:
        """The longest run of cached blocks of ``req``'s tokens, short of its last token (counted in the
        prefix-cache queries and hits)."""
        hits: list[int] = []
        if not self.caching:
            return hits
        most = (req.num_tokens - 1) // self.p.block_size
        while len(hits) < most:
            blocks = self.cached.get(self._key(req, len(hits)))
            if not blocks:
                break
            hits.append(blocks[0])
        self.totals.prefix_cache_queries += req.num_tokens
        self.totals.prefix_cache_hits += len(hits) * self.p.block_size
        return hits

    def _preempt_last(self) -> _Request:
        victim = self.running.pop()
        self._release(victim)
        victim.computed = 0
        victim.preemptions += 1
        self.totals.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def _schedule(self) -> list[_Scheduled]:
        """One scheduler step (docs/llm.md, steps 1 and 2): what this iteration computes."""
        budget = self.p.max_num_batched_tokens
        scheduled: list[_Scheduled] = []
        preempted = False

        # 1. Running requests, in list order. A preemption removes the *last* request of the list,
        #    which is never one already scheduled (those precede r), so index i stays valid.
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(self._cap(r.num_tokens - r.computed), budget)
            need = self._blocks_for(r.computed + n) - r.held
            victim: _Request | None = None
            while need > self.free_blocks:
                victim = self._preempt_last()
                preempted = True
                if victim is r:
                    break
            if victim is r:
                break
            if need > 0:
                self._take(r, need)
            self._cache(r, min(r.computed + n, r.num_tokens))
            decode = n == 1 and r.computed == r.num_tokens - 1
            scheduled.append(_Scheduled(r, n, decode))
            budget -= n
            i += 1

        # 2. Waiting requests, in deque order, only if nothing was preempted.
        if not preempted:
            skipped: list[_Request] = []
            while self.waiting and budget > 0 and len(self.running) < self.p.max_num_seqs:
                r = self.waiting[0]
                hits = self._lookup(r)
                hit_tokens = len(hits) * self.p.block_size
                n = self._cap(r.num_tokens - hit_tokens)
                if not self.p.chunked_prefill and n > budget:
                    skipped.append(self.waiting.popleft())  # keeps its place (restored below)
                    continue
                n = min(n, budget)
                need = self._blocks_for(hit_tokens + n) - len(hits)
                taken = sum(1 for b in hits if self.ref[b] == 0)  # cached, but in the free queue
                if need + taken > self.free_blocks:
                    break
                self.waiting.popleft()
                for b in hits:
                    if self.ref[b] == 0:
                        del self.free_queue[b]
                        self.free_blocks -= 1
                    self.ref[b] += 1
                r.blocks = list(hits)
                r.held = len(hits)
                r.n_cached = len(hits)
                r.computed = hit_tokens
                r.cache_hits += hit_tokens
                self._take(r, need)
                self._cache(r, min(r.computed + n, r.num_tokens))
                self.running.append(r)
                decode = n == 1 and r.computed == r.num_tokens - 1
                scheduled.append(_Scheduled(r, n, decode))
                budget -= n
            self.waiting.extendleft(reversed(skipped))
        return scheduled

    def _duration(self, scheduled: list[_Scheduled]) -> float:
        prefill = sum(s.n for s in scheduled if not s.decode)
        decode = sum(s.n for s in scheduled if s.decode)
        context = sum(s.req.computed + s.n for s in scheduled)
        p = self.p
        return self.speed * (
            p.beta0_s + p.beta_prefill_s * prefill + p.beta_decode_s * decode + p.beta_kv_s * context
        )

    def _finish_iteration(self, scheduled: list[_Scheduled]) -> None:
        """The end of an iteration at ``now``: KV computed, tokens emitted, requests finished."""
        e = self.env.now
        self.iterations += 1
        for s in scheduled:
            r = s.req
            if not s.decode:
                self.totals.prompt_tokens += s.n
            r.computed += s.n
            if r.computed != r.num_tokens:
                continue
            r.generated += 1
            self.totals.generated_tokens += 1
            if r.generated == 1:
                r.first_token = e
            else:
                r.itl.append(e - r.last_token)
            r.last_token = e
            if r.generated == r.output:
                r.outcome = "completed"
                r.completion = e
                self._release(r)
                self.running.remove(r)
                self.totals.ended(r)

    def _loop(self) -> _ProcessGen:
        """Iterate while there is work; when nothing can be scheduled, idle until the next arrival."""
        env = self.env
        while True:
            yield self._wake
            self._wake = _Signal(env)
            self._wake_pending = False
            self._abort_expired()
            scheduled = self._schedule()
            if not scheduled:
                continue
            self._busy = True
            end = env.now + self._duration(scheduled)
            yield _signal_at(env, end, self.end_rank)
            self._busy = False
            self._finish_iteration(scheduled)
            if self.running or self.waiting:
                self._request_iteration()

    def open_at(self, when: float, router: _Router) -> _ProcessGen:
        yield _signal_at(self.env, when, self.open_rank)
        self.accepting = True
        router.hand_out()


class _Users:
    """Closed-loop users: a heap of (wake time, user id), the free ids (a stack), pending retirements."""

    def __init__(
        self,
        env: simpy.Environment,
        router: _Router,
        rank: int,
        prompts: list[int],
        outputs: list[int],
        think: list[float],
        start: list[float],
        max_users: int,
        groups: list[int],
        plens: list[int],
        turns: list[int] | None,
    ) -> None:
        self.env = env
        self.turns = turns
        """Turns of a conversation started by the ``k``-th send (None: no conversations)."""
        self.conv: dict[int, _Conversation] = {}
        self.groups = groups
        self.plens = plens
        self.router = router
        self.rank = rank
        self.prompts = prompts
        self.outputs = outputs
        self.think = think
        self.start = start
        self.n_started = 0
        self.heap: list[tuple[float, int]] = []
        self.free = list(range(max_users - 1, -1, -1))
        self.active = 0
        self.retire = 0
        self.sent: list[_Request] = []
        self._armed = math.inf
        self._generation = 0

    def set_count(self, target: int) -> None:
        """The user count becomes ``target`` now: pending retirements are cancelled first, then new users
        (lowest free id first) start at now + the next start offset; fewer users retire as they next
        become free."""
        now = self.env.now
        if target > self.active:
            add = target - self.active
            cancel = min(add, self.retire)
            self.retire -= cancel
            for _ in range(add - cancel):
                if self.n_started >= len(self.start):
                    raise ValueError("the start offsets ran out: give one per user added")
                user = self.free.pop()
                self.conv.pop(user, None)  # a user added has no conversation yet
                offset = self.start[self.n_started]
                self.n_started += 1
                self._push(now + offset, user)
        elif target < self.active:
            self.retire += self.active - target
        self.active = target

    def free_user(self, req: _Request) -> None:
        """The outcome of ``req`` was decided now: its user retires, or thinks and sends again."""
        conv = self.conv.get(req.user)
        if conv is not None and req.outcome == "completed":
            conv.history = req.prompt + req.output
            conv.pod = self.router.pods[req.pod]
        if self.retire > 0:
            self.retire -= 1
            self.free.append(req.user)
        else:
            self._push(self.env.now + req.think, req.user)

    def _push(self, when: float, user: int) -> None:
        heapq.heappush(self.heap, (when, user))
        self._arm()

    def _arm(self) -> None:
        """Keep one live signal at the earliest wake time (an earlier one makes the old one stale)."""
        if self.heap and self.heap[0][0] < self._armed:
            self._armed = self.heap[0][0]
            self._generation += 1
            generation = self._generation
            signal = _signal_at(self.env, self._armed, self.rank)
            signal.callbacks.append(lambda _: self._wake(generation))

    def _wake(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._armed = math.inf
        _, user = heapq.heappop(self.heap)
        if self.retire > 0:  # the first user to become free leaves
            self.retire -= 1
            self.free.append(user)
        else:
            self._send(user)
        self._arm()

    def _send(self, user: int) -> None:
        seq = len(self.sent)
        if seq >= len(self.prompts) or seq >= len(self.think):
            raise ValueError("the token sequence ran out: give more prompt, output and think values")
        req = _Request(
            seq, self.env.now, self.prompts[seq], self.outputs[seq], self.groups[seq], self.plens[seq]
        )
        if self.turns is not None:
            _converse(self, user, req)
        req.user = user
        req.think = self.think[seq]
        self.sent.append(req)
        self.router.arrive(req)


@dataclass
class _Conversation:
    """A user's conversation (docs/llm.md, Conversations)."""

    conv: int
    left: int
    """Turns still to send after the last one sent."""
    group: int
    prefix_len: int
    history: int = 0
    """Prompt + output of the last turn once it completed; 0 before."""
    pod: _Pod | None = None
    """The pod that served the last completed turn."""


def _converse(users: _Users, user: int, req: _Request) -> None:
    """``req``, as drawn, is ``user``'s next send: the next turn of its conversation, or a new one's first."""
    assert users.turns is not None
    max_len = users.router.params.max_model_len
    c = users.conv.get(user)
    message = req.prompt - req.prefix_len
    if c is not None and c.left > 0 and c.history > 0 and c.history + message + req.output <= max_len:
        req.prompt = c.history + message
        req.group, req.prefix_len, req.conv = c.group, c.prefix_len, c.conv
        c.left -= 1
        if users.router.params.session_affinity:
            req.affinity = c.pod
    else:
        if req.seq >= len(users.turns):
            raise ValueError("the turns ran out: give one per send")
        c = _Conversation(req.seq, users.turns[req.seq] - 1, req.group, req.prefix_len)
        users.conv[user] = c
    c.history = 0


def _user_schedule(env: simpy.Environment, users: _Users, schedule: list[tuple[float, int]]) -> _ProcessGen:
    for when, count in schedule:
        yield _signal_at(env, when, _USERS_RANK)
        users.set_count(count)


def _arrivals(env: simpy.Environment, requests: list[_Request], rank: int, router: _Router) -> _ProcessGen:
    for req in requests:
        yield _signal_at(env, req.arrival, rank)
        router.arrive(req)


def _slo_met(req: _Request, ttft_slo_s: float, itl_slo_s: float, e2e_slo_s: float) -> bool:
    if req.outcome != "completed":
        return False
    ttft = req.first_token - req.arrival
    e2e = req.completion - req.arrival
    itl_ok = req.output == 1 or (e2e - ttft) / (req.output - 1) <= itl_slo_s
    return ttft <= ttft_slo_s and itl_ok and e2e <= e2e_slo_s


def simulate_llm_reference(
    params: LlmParams,
    arrivals: Sequence[float],
    prompt: Sequence[int],
    output: Sequence[int],
    *,
    pods: Sequence[tuple[float, float]],
    t_end: float,
    ttft_slo_s: float = math.inf,
    itl_slo_s: float = math.inf,
    e2e_slo_s: float = math.inf,
    users: Sequence[tuple[float, int]] = (),
    think: Sequence[float] = (),
    start: Sequence[float] = (),
    group: Sequence[int] | None = None,
    prefix_len: Sequence[int] | None = None,
    turns: Sequence[int] | None = None,
) -> LlmReferenceResult:
    """Run the SimPy reference model of the token-level engine over ``[0, t_end)``.

    Request ``i`` arrives at ``arrivals[i]`` (sorted) with ``prompt[i]`` prompt and ``output[i]`` output
    tokens. ``pods[k] = (opens_at, speed)``: slot ``k`` starts accepting at ``opens_at`` and never
    stops; ``speed`` multiplies its iteration times. Arrivals at or after ``t_end`` never happen and
    nothing scheduled at exactly ``t_end`` is processed.

    Closed-loop users instead (``arrivals`` empty): ``users = [(time, count), ...]`` (sorted) sets the
    user count from each time on; the ``k``-th request sent has ``prompt[k]``, ``output[k]``, and is
    followed by a think time of ``think[k]``; the ``j``-th user added starts at the time it is added
    plus ``start[j]``.

    ``group[k]``, ``prefix_len[k]``: the shared-prefix group (-1: none) of the ``k``-th request (arrival
    or send) and the length of that prefix, part of its prompt (default: none).

    ``turns[k]``: closed-loop users hold conversations (docs/llm.md, Conversations), and the ``k``-th send,
    if it starts one, starts one of ``turns[k]`` turns; ``prompt[k]`` is then its prompt as drawn (its
    prefix and new message), and a later turn's prompt the conversation so far followed by the message.
    """
    times = [float(t) for t in arrivals]
    prompts = [int(p) for p in prompt]
    outputs = [int(o) for o in output]
    if len(prompts) != len(outputs) or (not users and len(times) != len(prompts)):
        raise ValueError("arrivals, prompt and output must have the same length")
    if any(b < a for a, b in pairwise(times)) or (times and times[0] < 0.0):
        raise ValueError("arrival times must be sorted and >= 0")
    if any(p < 1 for p in prompts) or any(o < 1 for o in outputs):
        raise ValueError("prompt and output lengths must be >= 1")
    if not t_end > 0.0:
        raise ValueError(f"t_end must be > 0, got {t_end}")
    groups = [int(g) for g in group] if group is not None else [-1] * len(prompts)
    plens = [int(x) for x in prefix_len] if prefix_len is not None else [0] * len(prompts)
    if len(groups) != len(prompts) or len(plens) != len(prompts):
        raise ValueError("group and prefix_len must be parallel to prompt")
    if turns is not None and (any(int(x) < 1 for x in turns) or not users):
        raise ValueError("turns are for closed-loop users (users=), each >= 1")
    schedule = [(float(t), int(n)) for t, n in users]
    if schedule and times:
        raise ValueError("give open-loop arrivals or closed-loop users, not both")
    if any(b[0] < a[0] for a, b in pairwise(schedule)) or any(n < 0 for _, n in schedule):
        raise ValueError("the users schedule must be sorted by time, with counts >= 0")

    env = simpy.Environment()
    totals = _Totals()
    n_pods = len(pods)
    router = _Router(env, params, totals, _FIRST_RANK + 2 * n_pods)
    router.pods = [
        _Pod(env, slot, n_pods, params, float(speed), totals) for slot, (_, speed) in enumerate(pods)
    ]
    for pod, (opens_at, _) in zip(router.pods, pods, strict=True):
        env.process(pod.open_at(float(opens_at), router))
    arrival_rank = _FIRST_RANK + 2 * n_pods + 1
    closed: _Users | None = None
    if schedule:
        max_users = max(n for _, n in schedule)
        closed = _Users(
            env, router, arrival_rank, prompts, outputs, [float(x) for x in think],
            [float(x) for x in start], max_users, groups, plens,
            [int(x) for x in turns] if turns is not None else None,
        )  # fmt: skip
        totals.users = closed
        env.process(_user_schedule(env, closed, schedule))
        requests: list[_Request] = []
    else:
        requests = [
            _Request(seq, t, p, o, g, x)
            for seq, (t, p, o, g, x) in enumerate(zip(times, prompts, outputs, groups, plens, strict=True))
            if t < t_end
        ]
        env.process(_arrivals(env, requests, arrival_rank, router))
    env.run(until=t_end)
    if closed is not None:
        requests = closed.sent

    results = []
    for r in requests:
        met = _slo_met(r, ttft_slo_s, itl_slo_s, e2e_slo_s)
        rejected = r.outcome == "rejected"
        e2e = r.timed_out - r.arrival if r.outcome == "timed_out" else r.completion - r.arrival
        results.append(
            LlmRequestResult(
                seq=r.seq,
                arrival_s=r.arrival,
                prompt=r.prompt,
                output=r.output,
                outcome=r.outcome,
                pod=r.pod,
                first_token_s=r.first_token,
                completion_s=r.completion,
                timed_out_s=r.timed_out,
                e2e_s=0.0 if rejected else e2e,
                ttft_s=r.first_token - r.arrival,
                preemptions=r.preemptions,
                itl_s=tuple(r.itl),
                generated=r.generated,
                slo_met=met,
                cache_hits=r.cache_hits,
                conversation=r.conv,
                user=r.user,
            )
        )
    return LlmReferenceResult(
        requests=tuple(results),
        generated_tokens=totals.generated_tokens,
        prompt_tokens=totals.prompt_tokens,
        preemptions=totals.preemptions,
        slo_met=sum(r.slo_met for r in results),
        timed_out=totals.timed_out,
        prefix_cache_queries=totals.prefix_cache_queries,
        prefix_cache_hits=totals.prefix_cache_hits,
        pods=tuple(
            LlmPodState(pod.slot, pod.used_blocks, len(pod.running), len(pod.waiting), pod.iterations)
            for pod in router.pods
        ),
    )
