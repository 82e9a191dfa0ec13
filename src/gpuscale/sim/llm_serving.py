"""The token-level engine's parameters: one vLLM pod's scheduler, KV cache and iteration-time model.

Both the compiled kernel (``llm_kernel.py``) and the SimPy reference model (``llm_reference.py``)
take an :class:`LlmParams`; ``docs/llm.md`` states the semantics they implement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuscale.config.scenario import Scenario
    from gpuscale.config.workload import TokenDist


@dataclass(frozen=True)
class LlmParams:
    """How one vLLM pod schedules and how long an iteration takes."""

    num_blocks: int
    """KV-cache blocks of one pod."""
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    """Cap on the tokens one request computes in an iteration (0 = none)."""
    max_model_len: int = 8192
    beta0_s: float = 0.005
    """Fixed cost of an iteration, seconds."""
    beta_prefill_s: float = 3e-5
    """Seconds per prefill token."""
    beta_decode_s: float = 1e-4
    """Seconds per decode token."""
    beta_kv_s: float = 5e-8
    """Seconds per token of context read by attention."""
    queue_capacity: int = 1024
    """Requests a pod may hold beyond ``max_num_seqs`` (running + waiting ≤ max_num_seqs + this)."""
    router_queue_capacity: int = 0
    kv_bytes_per_token: float = 131072.0
    weights_bytes: float = 16e9
    params: float = 8e9
    """Model parameters (for the FLOPs of an iteration)."""
    peak_flops: float = 989e12
    """Dense peak FLOP/s of one pod's GPUs."""
    hbm_bytes_per_s: float = 3.35e12
    """Memory bandwidth of one pod's GPUs, bytes/s."""
    timeout_s: float = math.inf
    """Client timeout: a request without its first token this long after its arrival is abandoned."""
    enable_prefix_caching: bool = False
    """vLLM's automatic prefix caching (docs/llm.md, Prefix caching)."""
    session_affinity: bool = False
    """A conversation's later turn goes to the pod that served its previous turn (docs/llm.md, Routing)."""

    def __post_init__(self) -> None:
        if self.num_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"a KV cache of {self.num_blocks} blocks x {self.block_size} tokens cannot hold one "
                f"request of max_model_len = {self.max_model_len} tokens"
            )

    @property
    def blocks_per_request(self) -> int:
        """KV blocks of the longest request, ceil(max_model_len / block_size)."""
        return -(-self.max_model_len // self.block_size)

    @property
    def prefix_cache_bytes_per_pod(self) -> int:
        """Memory of one pod's prefix-cache structures in the compiled engine (0 when caching is off):
        per block its reference count, queue links, key and key-list links (6 x 8 bytes); the hash map
        (a power of two at least twice the blocks, 16 bytes a slot); a block table of
        ``blocks_per_request`` 4-byte entries for each of ``max_num_seqs`` running requests."""
        if not self.enable_prefix_caching:
            return 0
        slots = 1
        while slots < 2 * self.num_blocks:
            slots <<= 1
        return (
            48 * (self.num_blocks + 1)
            + 16 * slots
            + 4 * self.max_num_seqs * self.blocks_per_request
            + 8 * self.max_num_seqs
        )

    @property
    def pod_capacity(self) -> int:
        """Requests one pod holds at most (running + waiting)."""
        return self.max_num_seqs + self.queue_capacity


def llm_params(scenario: Scenario) -> LlmParams:
    """The :class:`LlmParams` of a scenario whose model profile has an ``llm:`` block.

    Scheduler, KV cache and iteration model come from ``model.llm`` (milliseconds turned to seconds;
    ``beta_kv_ms_per_1k_tokens`` to seconds per token); the pod's waiting room beyond ``max_num_seqs``
    is ``serving.queue_capacity`` and the router queue ``serving.router_queue_capacity``; peak FLOP/s
    and bandwidth default to the GPU type's x ``gpus_per_pod``.
    """
    model = scenario.model
    llm = model.llm
    if llm is None:
        raise ValueError(f"model profile {model.name!r} has no llm: block; the token-level engine needs one")
    return LlmParams(
        num_blocks=model.kv_cache_blocks(),
        block_size=llm.block_size,
        max_num_seqs=llm.max_num_seqs,
        max_num_batched_tokens=llm.max_num_batched_tokens,
        chunked_prefill=llm.chunked_prefill,
        long_prefill_token_threshold=llm.long_prefill_token_threshold,
        max_model_len=llm.max_model_len,
        beta0_s=llm.beta0_ms / 1e3,
        beta_prefill_s=llm.beta_prefill_ms_per_token / 1e3,
        beta_decode_s=llm.beta_decode_ms_per_token / 1e3,
        beta_kv_s=llm.beta_kv_ms_per_1k_tokens / 1e6,
        queue_capacity=scenario.serving.queue_capacity,
        router_queue_capacity=scenario.serving.router_queue_capacity,
        kv_bytes_per_token=llm.kv_bytes,
        weights_bytes=model.weights_gb * 1e9,
        params=llm.params_b * 1e9,
        peak_flops=model.pod_peak_flops,
        hbm_bytes_per_s=model.pod_hbm_bytes_per_s,
        timeout_s=scenario.serving.timeout_s,
        enable_prefix_caching=llm.enable_prefix_caching,
        session_affinity=scenario.serving.session_affinity,
    )


MAX_PREFIX_CACHE_BYTES = 4 * 2**30
"""The most memory the compiled prefix-cache structures of all pods may take (refused up front beyond)."""


def _longest(dist: TokenDist) -> float:
    """The longest length ``dist`` can give (a lognormal without ``max``: its mean, a lower bound)."""
    if dist.fixed is not None:
        return float(dist.fixed)
    if dist.uniform is not None:
        return float(dist.uniform[1])
    if dist.empirical is not None:
        e = dist.empirical
        w = e.weights if e.weights is not None else [1.0] * len(e.values)
        return float(max(v for v, x in zip(e.values, w, strict=True) if x > 0))
    assert dist.lognormal is not None
    ln = dist.lognormal
    return float(ln.max) if ln.max is not None else ln.mean


def check_prefix_caching(scenario: Scenario, source: str) -> None:
    """Refuse up front what prefix caching cannot serve, naming the key: a shared prefix that leaves no
    room for a request within ``max_model_len`` (a prefix is part of the prompt, and a request needs at
    least one prompt token of its own and one output token), and prefix-cache structures that would take
    more than :data:`MAX_PREFIX_CACHE_BYTES` over ``control.max_pods`` pods."""
    from gpuscale._core.errors import ConfigError

    llm = scenario.model.llm
    if llm is None:
        return
    tokens = getattr(scenario.workload, "tokens", None)
    prefix = tokens.prefix if tokens is not None else None
    if prefix is not None:
        longest = _longest(prefix.length)
        if longest + 2 > llm.max_model_len:
            raise ConfigError(
                source,
                "workload.tokens.prefix.length",
                prefix.length.model_dump(exclude_none=True),
                f"a shared prefix of up to {longest:,.0f} tokens leaves no room within model.llm.max_model_len "
                f"= {llm.max_model_len:,} for a prompt token of the request's own and an output token; "
                f"allowed: prefixes of at most {llm.max_model_len - 2:,} tokens (a request whose prefix, "
                "prompt and output exceed max_model_len is rejected)",
            )
    if llm.enable_prefix_caching:
        params = llm_params(scenario)
        need = params.prefix_cache_bytes_per_pod * scenario.control.max_pods
        if need > MAX_PREFIX_CACHE_BYTES:
            raise ConfigError(
                source,
                "model.llm.enable_prefix_caching",
                True,
                f"the prefix cache of {scenario.control.max_pods} pods x {params.num_blocks:,} KV blocks would "
                f"take about {need / 2**30:.1f} GiB of simulator memory "
                f"({params.prefix_cache_bytes_per_pod / 2**20:.1f} MiB a pod), above "
                f"{MAX_PREFIX_CACHE_BYTES / 2**30:.0f} GiB; allowed: fewer pods (control.max_pods), a "
                "smaller cache (model.llm.num_gpu_blocks), or enable_prefix_caching: false",
            )


def check_conversations(scenario: Scenario, source: str) -> None:
    """Refuse up front, naming the key, conversations where there are none to hold and session affinity
    where there is no conversation to stick to: ``workload.tokens.conversation`` on a workload other than
    closed-loop users (an open-loop arrival has no one to continue a conversation), and
    ``serving.session_affinity`` without conversations (every request would take the normal choice)."""
    from gpuscale._core.errors import ConfigError
    from gpuscale.config.workload import ClosedLoopWorkload

    workload = scenario.workload
    tokens = getattr(workload, "tokens", None)
    conversation = tokens.conversation if tokens is not None else None
    if conversation is not None and not isinstance(workload, ClosedLoopWorkload):
        raise ConfigError(
            source,
            "workload.tokens.conversation",
            conversation.model_dump(exclude_none=True),
            f"only for closed-loop users (kind: closed-loop): a {workload.kind} workload's requests have no "
            "user to continue a conversation; allowed: leave it out, or kind: closed-loop",
        )
    if scenario.serving.session_affinity and conversation is None:
        raise ConfigError(
            source,
            "serving.session_affinity",
            True,
            "needs conversations to stick to (workload.tokens.conversation on a closed-loop workload); "
            "without them every request takes the normal choice; allowed: false, or add "
            "workload.tokens.conversation: {turns: DIST}",
        )
