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

    def __post_init__(self) -> None:
        if self.num_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"a KV cache of {self.num_blocks} blocks x {self.block_size} tokens cannot hold one "
                f"request of max_model_len = {self.max_model_len} tokens"
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
    )
