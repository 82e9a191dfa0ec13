"""Shared by the token-level engine's tests: an iteration's duration by the docs' formula, and a pod
whose iteration costs are binary fractions, so every duration and sum is exact in floating point and
iteration ends and arrivals really coincide."""

from __future__ import annotations

from gpuscale.sim.llm_serving import LlmParams

CACHED = LlmParams(
    num_blocks=64,
    block_size=16,
    max_model_len=1024,
    beta0_s=1 / 128,
    beta_prefill_s=1 / 1024,
    beta_decode_s=1 / 512,
    beta_kv_s=1 / 65536,
    enable_prefix_caching=True,
)
"""One pod of 64 blocks of 16 tokens with vLLM's prefix caching on."""


def d(p: LlmParams, *, prefill: int = 0, decode: int = 0, context: int = 0, speed: float = 1.0) -> float:
    """One iteration's duration (docs/llm.md)."""
    return speed * (p.beta0_s + p.beta_prefill_s * prefill + p.beta_decode_s * decode + p.beta_kv_s * context)
