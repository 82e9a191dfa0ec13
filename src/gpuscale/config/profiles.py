"""Model profiles and GPU types: how a pod serves (batch latency, memory, CPU work) and what it costs.

Every built-in number cites its source. Latency tables are per *batch*: a batch of b requests
occupies the GPU for latency(b) ms. Where a source gives throughput per batch size, latency(b) =
b / throughput(b).

A profile with an ``llm:`` block (:class:`LlmEngineConfig`) is served token by token instead, as a vLLM
pod (``docs/llm.md``): its KV cache, scheduler limits and iteration-time coefficients replace the batch
table. GPU types carry their dense peak TFLOP/s and memory bandwidth for its roofline metrics.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gpuscale._core.errors import shown
from gpuscale.config.loading import StrictModel


class GpuType(StrictModel):
    name: str
    memory_gb: float = Field(gt=0, description="Device memory, GB.")
    usd_per_gpu_hour: float = Field(ge=0, description="On-demand price of one GPU for an hour, USD.")
    price_source: str = Field(description="Where the price comes from.")
    peak_tflops: float = Field(
        gt=0, description="Dense peak tensor TFLOP/s of one GPU at 16-bit precision (BF16, else FP16)."
    )
    hbm_tb_per_s: float = Field(gt=0, description="Memory bandwidth of one GPU, TB/s (1e12 bytes/s).")
    perf_source: str = Field(description="Where peak_tflops and hbm_tb_per_s come from.")


GPU_TYPES: dict[str, GpuType] = {
    g.name: g
    for g in (
        GpuType(
            name="a100-80gb", memory_gb=80, usd_per_gpu_hour=2.21,
            price_source="inference-fleet-sim (arXiv 2603.16054) default A100 80 GB cost",
            peak_tflops=312, hbm_tb_per_s=2.039,
            perf_source="NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB): BF16 tensor 312 TFLOPS dense (624 with sparsity), 2,039 GB/s HBM2e",
        ),
        GpuType(
            name="a100-40gb", memory_gb=40, usd_per_gpu_hour=3.67,
            price_source="GCP a2-highgpu-1g on-demand, $3.67/h for 1x A100 (seed 001 price table)",
            peak_tflops=312, hbm_tb_per_s=1.555,
            perf_source="NVIDIA A100 Tensor Core GPU datasheet (40GB): BF16 tensor 312 TFLOPS dense, 1,555 GB/s HBM2",
        ),
        GpuType(
            name="h100-80gb", memory_gb=80, usd_per_gpu_hour=4.02,
            price_source="inference-fleet-sim (arXiv 2603.16054) default H100 80 GB cost",
            peak_tflops=989, hbm_tb_per_s=3.35,
            perf_source="NVIDIA H100 Tensor Core GPU datasheet (SXM): BF16 tensor 989 TFLOPS dense (1,979 with sparsity), 3.35 TB/s HBM3",
        ),
        GpuType(
            name="a10g", memory_gb=24, usd_per_gpu_hour=1.01,
            price_source="AWS g5.xlarge on-demand, $1.01/h for 1x A10G (seed 001 price table)",
            peak_tflops=125, hbm_tb_per_s=0.6,
            perf_source="NVIDIA A10 datasheet: BF16 tensor 125 TFLOPS dense (250 with sparsity), 600 GB/s GDDR6; the A10G of AWS g5 taken as an A10 (assumed)",
        ),
        GpuType(
            name="t4", memory_gb=16, usd_per_gpu_hour=0.526,
            price_source="AWS g4dn.xlarge on-demand list price, us-east-1, $0.526/h for 1x T4",
            peak_tflops=65, hbm_tb_per_s=0.32,
            perf_source="NVIDIA T4 datasheet: FP16 mixed-precision 65 TFLOPS, 320 GB/s GDDR6 (no BF16)",
        ),
        GpuType(
            name="rtx3080", memory_gb=10, usd_per_gpu_hour=0.25,
            price_source="no cloud list price: an assumed amortised on-premises cost; set your own",
            peak_tflops=59.5, hbm_tb_per_s=0.76,
            perf_source="NVIDIA Ampere GA102 whitepaper, RTX 3080: FP16 tensor with FP32 accumulate 59.5 TFLOPS dense, 760 GB/s GDDR6X",
        ),
    )
}  # fmt: skip


GB = 1e9
"""Bytes in a GB: every memory size in a profile is in GB of 10^9 bytes."""


class LlmEngineConfig(StrictModel):
    """The ``llm:`` block of a model profile: one vLLM pod's KV cache, scheduler and iteration time.

    A profile with this block is served token by token (``docs/llm.md``). The KV cache holds

        num_blocks = floor((gpu_memory_utilization x device memory - weights - runtime overhead
                            - activation reserve) / (block_size x kv_bytes_per_token))

    blocks (memory in GB of 10^9 bytes; device memory = the GPU type's x gpus_per_pod), or
    ``num_gpu_blocks`` outright. One iteration lasts

        beta0_ms + beta_prefill_ms_per_token x prefill tokens + beta_decode_ms_per_token x decode tokens
        + beta_kv_ms_per_1k_tokens x context tokens / 1000

    milliseconds, where context tokens are the KV entries attention reads (docs/llm.md).
    """

    num_layers: int | None = Field(
        default=None, ge=1, description="Decoder layers (with num_kv_heads, head_dim)."
    )
    num_kv_heads: int | None = Field(
        default=None, ge=1, description="Key/value heads per layer (GQA groups)."
    )
    head_dim: int | None = Field(default=None, ge=1, description="Dimension of one attention head.")
    kv_dtype_bytes: float = Field(
        default=2, gt=0, le=8, description="Bytes per KV element: 2 for BF16/FP16, 1 for an FP8 cache."
    )
    kv_bytes_per_token: float | None = Field(
        default=None,
        gt=0,
        description="KV-cache bytes of one token, all layers; give this or the model shape "
        "(then 2 x num_layers x num_kv_heads x head_dim x kv_dtype_bytes).",
    )
    params_b: float = Field(gt=0, description="Model parameters, billions (FLOPs = 2 x parameters x tokens).")
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction of device memory vLLM takes (--gpu-memory-utilization, default 0.9); "
        "default: the profile's preallocate_fraction.",
    )
    activation_reserve_gb: float = Field(
        default=0.0,
        ge=0,
        description="Peak activation memory of vLLM's profiling run (a forward pass of "
        "max_num_batched_tokens), kept out of the KV cache, GB per pod.",
    )
    num_gpu_blocks: int | None = Field(
        default=None, ge=1, description="KV-cache blocks per pod outright (--num-gpu-blocks-override)."
    )
    block_size: int = Field(
        default=16, ge=1, le=1024, description="Tokens per KV-cache block (--block-size)."
    )
    max_num_seqs: int = Field(
        default=256, ge=1, description="Most requests running at once (--max-num-seqs)."
    )
    max_num_batched_tokens: int = Field(
        default=8192, ge=1, description="Token budget of one iteration (--max-num-batched-tokens)."
    )
    chunked_prefill: bool = Field(
        default=True, description="Split a long prompt over iterations (--enable-chunked-prefill)."
    )
    long_prefill_token_threshold: int = Field(
        default=0,
        ge=0,
        description="Most tokens one request computes in an iteration, 0 = no cap "
        "(--long-prefill-token-threshold).",
    )
    enable_prefix_caching: bool = Field(
        default=False,
        description="Automatic prefix caching (--enable-prefix-caching): full KV blocks keep their "
        "content hash when freed, and a request admitted later reuses the longest cached run of its "
        "prompt's blocks instead of computing them (docs/llm.md, Prefix caching).",
    )
    max_model_len: int = Field(
        ge=2,
        description="Longest request, prompt + output tokens (--max-model-len); longer ones are rejected.",
    )
    beta0_ms: float = Field(ge=0, description="Fixed cost of an iteration, ms.")
    beta_prefill_ms_per_token: float = Field(ge=0, description="Cost of one prefill token, ms.")
    beta_decode_ms_per_token: float = Field(ge=0, description="Cost of one decode token, ms.")
    beta_kv_ms_per_1k_tokens: float = Field(
        ge=0, description="Cost of attention reading 1,000 tokens of context (KV entries), ms."
    )
    peak_tflops: float | None = Field(
        default=None,
        gt=0,
        description="Dense peak TFLOP/s of one pod at the precision served; default: the GPU type's "
        "x gpus_per_pod.",
    )
    hbm_tb_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Memory bandwidth of one pod, TB/s; default: the GPU type's x gpus_per_pod.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LlmEngineConfig:
        shape = {"num_layers": self.num_layers, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim}
        given = [k for k, v in shape.items() if v is not None]
        if self.kv_bytes_per_token is not None and given:
            raise ValueError(
                f"give kv_bytes_per_token or the model shape (num_layers, num_kv_heads, head_dim), not "
                f"both; {', '.join(given)} also given"
            )
        if self.kv_bytes_per_token is None and len(given) < 3:
            missing = [k for k, v in shape.items() if v is None]
            raise ValueError(
                f"the KV cache size needs kv_bytes_per_token or all of num_layers, num_kv_heads, "
                f"head_dim; missing: {', '.join(missing)}"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens = {self.max_num_batched_tokens} is below max_num_seqs = "
                f"{self.max_num_seqs}; allowed: max_num_batched_tokens >= max_num_seqs (vLLM refuses "
                "to start otherwise)"
            )
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens = {self.max_num_batched_tokens} is below max_model_len = "
                f"{self.max_model_len} without chunked prefill: a long prompt could never be scheduled; "
                "allowed: max_num_batched_tokens >= max_model_len, or chunked_prefill: true"
            )
        return self

    @property
    def kv_bytes(self) -> float:
        """KV-cache bytes of one token, all layers."""
        if self.kv_bytes_per_token is not None:
            return self.kv_bytes_per_token
        assert self.num_layers is not None and self.num_kv_heads is not None and self.head_dim is not None
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes


def _kv_blocks_from_memory(
    llm: LlmEngineConfig, utilization: float, device_gb: float, weights_gb: float, runtime_gb: float
) -> tuple[int, float]:
    """(blocks, free GB) the memory formula gives."""
    free_gb = utilization * device_gb - weights_gb - runtime_gb - llm.activation_reserve_gb
    blocks = math.floor(free_gb * GB / (llm.block_size * llm.kv_bytes)) if free_gb > 0 else 0
    return blocks, free_gb


class ModelProfile(StrictModel):
    """How one pod of the model serves requests on one GPU type."""

    name: str = Field(description="Profile name.")
    description: str = Field(default="", description="What this profile models.")
    source: str = Field(default="", description="Where the numbers come from.")
    gpu: str = Field(description=f"GPU type; one of {', '.join(GPU_TYPES)}.")
    gpus_per_pod: int = Field(default=1, ge=1, description="Whole GPUs each pod requests (nvidia.com/gpu).")
    batch_latency_ms: list[tuple[int, float]] = Field(
        default_factory=list,
        description="Measured (batch size, milliseconds per batch) points, increasing batch size; "
        "interpolated linearly in between. Required unless the profile has an llm: block.",
    )
    max_batch_size: int = Field(
        default=1, ge=1, description="Largest batch the batcher forms (Triton max_batch_size)."
    )
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="How long the dynamic batcher waits to fill a batch (Triton max_queue_delay).",
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list,
        description="Batch sizes the batcher sends at once when it can form them (Triton).",
    )
    jitter: Literal["none", "lognormal", "exponential"] = Field(
        default="none",
        description="Random variation of batch time: none, mean-one lognormal, or exponential.",
    )
    jitter_cv: float = Field(
        default=0.0, ge=0, description="Coefficient of variation of the lognormal jitter."
    )
    cpu_ms_per_request: float = Field(
        default=0.0, ge=0, description="CPU pre- plus post-processing per request, ms (0 = no CPU stage)."
    )
    cpu_workers: int = Field(default=1, ge=1, description="Parallel CPU workers in the pod.")
    cpu_request_cores: float | None = Field(
        default=None,
        gt=0,
        description="The pod's CPU request, cores (default: cpu_workers); HPA CPU % divides by it.",
    )
    cpu_idle_pct: float = Field(
        default=3.0,
        ge=0,
        le=100,
        description="CPU the idle server uses, % of its request (health checks, runtime).",
    )
    runtime_overhead_gb: float = Field(default=1.0, ge=0, description="CUDA context and runtime memory, GB.")
    weights_gb: float = Field(default=0.1, ge=0, description="Model weights in GPU memory, GB.")
    activation_gb_per_request: float = Field(
        default=0.0, ge=0, description="Activation memory per request in a batch, GB."
    )
    allocator: Literal["caching", "preallocate", "exact"] = Field(
        default="caching",
        description="How GPU memory use shows: caching (PyTorch: keeps its high-water mark, never shrinks), "
        "preallocate (vLLM: a fixed fraction of the device), exact (weights + the current batch).",
    )
    preallocate_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Fraction of device memory a preallocating runtime takes (vLLM 0.9).",
    )
    llm: LlmEngineConfig | None = Field(
        default=None,
        description="Serve token by token as a vLLM pod (docs/llm.md): KV cache, scheduler and "
        "iteration-time model. Needs allocator: preallocate; batch_latency_ms may then be omitted.",
    )

    @field_validator("batch_latency_ms")
    @classmethod
    def _increasing(cls, v: list[tuple[int, float]]) -> list[tuple[int, float]]:
        sizes = [b for b, _ in v]
        if any(b < 1 for b in sizes) or sizes != sorted(set(sizes)):
            raise ValueError("batch sizes must be >= 1 and strictly increasing")
        if any(ms <= 0 for _, ms in v):
            raise ValueError("batch latencies must be > 0 ms")
        return v

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {shown(v)}; allowed: {', '.join(GPU_TYPES)}")
        return v

    @field_validator("llm")
    @classmethod
    def _llm_fits(cls, v: LlmEngineConfig | None, info: ValidationInfo) -> LlmEngineConfig | None:
        # Declared after the fields it reads, so info.data holds them (when they are valid).
        d = info.data
        if v is None or not {"gpu", "gpus_per_pod", "allocator", "preallocate_fraction"} <= set(d):
            return v
        if d["allocator"] != "preallocate":
            raise PydanticCustomError(
                "llm_allocator",
                "an llm profile needs allocator: preallocate (vLLM preallocates its KV cache), not "
                "allocator: {a}",
                {"a": d["allocator"]},
            )
        fraction = d["preallocate_fraction"]
        if v.gpu_memory_utilization is not None and v.gpu_memory_utilization != fraction:
            raise PydanticCustomError(
                "llm_utilization",
                "llm.gpu_memory_utilization = {u} differs from preallocate_fraction = {f}; they are "
                "the same setting: give one of them (or the same value)",
                {"u": v.gpu_memory_utilization, "f": fraction},
            )
        if v.num_gpu_blocks is not None:
            blocks = v.num_gpu_blocks
            why = f"llm.num_gpu_blocks = {blocks}"
        else:
            if not {"weights_gb", "runtime_overhead_gb"} <= set(d):
                return v
            device_gb = GPU_TYPES[d["gpu"]].memory_gb * d["gpus_per_pod"]
            util = v.gpu_memory_utilization if v.gpu_memory_utilization is not None else fraction
            blocks, free_gb = _kv_blocks_from_memory(
                v, util, device_gb, d["weights_gb"], d["runtime_overhead_gb"]
            )
            why = (
                f"{util:g} x {device_gb:g} GB - weights {d['weights_gb']:g} GB - runtime "
                f"{d['runtime_overhead_gb']:g} GB - llm.activation_reserve_gb {v.activation_reserve_gb:g} GB "
                f"= {free_gb:.4g} GB leaves {blocks} blocks of {v.block_size} tokens x "
                f"{v.kv_bytes:g} bytes"
            )
        if blocks * v.block_size < v.max_model_len:
            raise PydanticCustomError(
                "llm_kv_cache",
                "the KV cache cannot hold one request of llm.max_model_len = {n} tokens: {why} = "
                "{t} tokens (vLLM refuses to start); allowed: a smaller llm.max_model_len, a larger "
                "llm.gpu_memory_utilization (preallocate_fraction), fewer weights or reserve, more "
                "gpus_per_pod, or llm.num_gpu_blocks >= {need}",
                {
                    "n": v.max_model_len,
                    "why": why,
                    "t": blocks * v.block_size,
                    "need": -(-v.max_model_len // v.block_size),
                },
            )
        return v

    @model_validator(mode="after")
    def _batch_sizes(self) -> ModelProfile:
        if self.llm is None and not self.batch_latency_ms:
            raise PydanticCustomError(
                "batch_latency_required",
                "batch_latency_ms is required (at least one [batch, ms] point) unless the profile "
                "has an llm: block",
            )
        if any(b < 1 or b > self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must lie in 1..max_batch_size")
        if self.memory_at_batch_gb(self.max_batch_size) > self.gpu_type.memory_gb * self.gpus_per_pod:
            raise ValueError(
                f"runtime + weights + activations at batch {self.max_batch_size} exceed the "
                f"{self.gpu_type.memory_gb:g} GB of a {self.gpu}"
            )
        return self

    @property
    def gpu_type(self) -> GpuType:
        return GPU_TYPES[self.gpu]

    @property
    def device_memory_gb(self) -> float:
        return self.gpu_type.memory_gb * self.gpus_per_pod

    @property
    def cpu_cores(self) -> float:
        return self.cpu_request_cores if self.cpu_request_cores is not None else float(self.cpu_workers)

    def memory_at_batch_gb(self, batch: int) -> float:
        return self.runtime_overhead_gb + self.weights_gb + self.activation_gb_per_request * batch

    @property
    def is_llm(self) -> bool:
        """Whether the token-level engine serves this profile (it has an ``llm:`` block)."""
        return self.llm is not None

    def kv_cache_blocks(self) -> int:
        """KV-cache blocks of one pod (``llm.num_gpu_blocks``, else the memory formula)."""
        llm = self._need_llm()
        if llm.num_gpu_blocks is not None:
            return llm.num_gpu_blocks
        return _kv_blocks_from_memory(
            llm, self.gpu_memory_utilization, self.device_memory_gb, self.weights_gb, self.runtime_overhead_gb
        )[0]

    @property
    def gpu_memory_utilization(self) -> float:
        """The fraction of device memory vLLM takes (``llm.gpu_memory_utilization`` or preallocate_fraction)."""
        llm = self.llm
        if llm is not None and llm.gpu_memory_utilization is not None:
            return llm.gpu_memory_utilization
        return self.preallocate_fraction

    @property
    def pod_peak_flops(self) -> float:
        """Dense peak FLOP/s of one pod (``llm.peak_tflops``, else the GPU type's x gpus_per_pod)."""
        llm = self.llm
        if llm is not None and llm.peak_tflops is not None:
            return llm.peak_tflops * 1e12
        return self.gpu_type.peak_tflops * 1e12 * self.gpus_per_pod

    @property
    def pod_hbm_bytes_per_s(self) -> float:
        """Memory bandwidth of one pod, bytes/s (``llm.hbm_tb_per_s``, else the GPU type's x gpus_per_pod)."""
        llm = self.llm
        if llm is not None and llm.hbm_tb_per_s is not None:
            return llm.hbm_tb_per_s * 1e12
        return self.gpu_type.hbm_tb_per_s * 1e12 * self.gpus_per_pod

    def _need_llm(self) -> LlmEngineConfig:
        if self.llm is None:
            raise ValueError(f"profile {shown(self.name)} has no llm: block")
        return self.llm


def _per_batch(throughput: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(batch, inferences/s) → (batch, ms per batch)."""
    return [(b, round(1000.0 * b / rate, 4)) for b, rate in throughput]


BUILTIN_PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile(
            name="resnet50-a100-triton",
            description="ResNet-50 image classification behind Triton (ONNX Runtime + TensorRT EP, FP16) on one A100 80GB.",
            source="NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/triton/resnet50 README, offline "
            "inferences/s by batch size (469.1 at 1 ... 2,662.4 at 128); latency(b) = b / throughput(b)",
            gpu="a100-80gb",
            batch_latency_ms=_per_batch(
                [(1, 469.1), (2, 910.0), (4, 1447.6), (8, 2051.2), (16, 2760.0), (32, 2857.6), (64, 2534.4), (128, 2662.4)]
            ),
            max_batch_size=128,
            max_queue_delay_ms=1.0,
            jitter="lognormal",
            jitter_cv=0.05,
            cpu_ms_per_request=0.5,
            cpu_workers=4,
            runtime_overhead_gb=1.5,
            weights_gb=0.05,
            activation_gb_per_request=0.025,
        ),
        ModelProfile(
            name="resnet50-t4-triton",
            description="ResNet-50 behind Triton on one T4 (16 GB): the GPU-bound image service of the thesis scenarios.",
            source="NVIDIA DeepLearningExamples ResNet-50 Triton README: T4 332.4 inferences/s at batch 1, "
            "1,280 at batch 128; linear in between",
            gpu="t4",
            batch_latency_ms=_per_batch([(1, 332.4), (128, 1280.0)]),
            max_batch_size=32,
            max_queue_delay_ms=2.0,
            jitter="lognormal",
            jitter_cv=0.05,
            cpu_ms_per_request=0.5,
            cpu_workers=4,
            runtime_overhead_gb=1.2,
            weights_gb=0.1,
            # FP32 activations of a 224x224 image held by a PyTorch caching allocator (assumed)
            activation_gb_per_request=0.4,
        ),
        ModelProfile(
            name="bert-large-h100-mlperf",
            description="BERT-Large (SQuAD, seq 384) on one H100-SXM-80GB with TensorRT.",
            source="MLPerf Inference v4.0 closed, NVIDIA DGX-H100 1x H100 bert-99: offline 9,081.5 samples/s; "
            "latency(b) = 1.6 ms + b / 9,081.5 s (batch-1 overhead assumed)",
            gpu="h100-80gb",
            batch_latency_ms=[(1, 1.71), (256, 29.79)],
            max_batch_size=256,
            max_queue_delay_ms=5.0,
            jitter="lognormal",
            jitter_cv=0.05,
            cpu_ms_per_request=0.2,
            cpu_workers=8,
            runtime_overhead_gb=1.5,
            weights_gb=0.7,
            activation_gb_per_request=0.03,
        ),
        ModelProfile(
            name="mobilenetv4-rtx3080-triton",
            description="MobileNetV4 (ONNX) behind Triton on an RTX 3080 without dynamic batching: the KIS-S setting.",
            source="KIS-S (arXiv 2507.07932) and its KISim repository: Triton max_batch_size 0 (no batching), one "
            "GPU instance per pod, about 6-12 requests/s observed; per-request time calibrated to that order "
            "(60 ms), not a kernel microbenchmark",
            gpu="rtx3080",
            batch_latency_ms=[(1, 60.0)],
            max_batch_size=1,
            jitter="lognormal",
            jitter_cv=0.15,
            cpu_ms_per_request=5.0,
            cpu_workers=2,
            runtime_overhead_gb=1.0,
            weights_gb=0.05,
            activation_gb_per_request=0.2,
        ),
        ModelProfile(
            name="resnet50-a100-cpu-preprocess",
            description="ResNet-50 on an A100 whose JPEG decode and resize run on 2 CPU workers: the CPU, not the "
            "GPU, bounds throughput (about 80 requests/s while SM utilization stays under 20 %).",
            source="GPU batch curve as resnet50-a100-triton; 25 ms CPU per request assumed (seed 004: low SM "
            "utilization can coexist with high latency when CPU preprocessing is the bottleneck)",
            gpu="a100-80gb",
            batch_latency_ms=_per_batch(
                [(1, 469.1), (2, 910.0), (4, 1447.6), (8, 2051.2), (16, 2760.0), (32, 2857.6), (64, 2534.4), (128, 2662.4)]
            ),
            max_batch_size=32,
            max_queue_delay_ms=1.0,
            cpu_ms_per_request=25.0,
            cpu_workers=2,
            runtime_overhead_gb=1.5,
            weights_gb=0.05,
            activation_gb_per_request=0.025,
        ),
        ModelProfile(
            name="resnet50-h100-measured",
            description="ResNet-50 (FP16, channels-last, 224x224) on one H100-SXM-80GB, served from CUDA graphs "
            "(as TensorRT and Triton's PyTorch backend with graphs serve it).",
            source="measured with scripts/profile_model.py --cuda-graphs on an NVIDIA H100 80GB HBM3 (PyTorch "
            "2.11, random weights, 2026-11-22): median of 50 replays per batch size, CV 0.1-0.6 %; CUDA context "
            "0.55 GB, weights 0.05 GB, activations 6.7 MB per image (peak-allocated slope); docs/profiling.md",
            gpu="h100-80gb",
            batch_latency_ms=[
                (1, 0.925), (2, 0.955), (4, 1.046), (8, 1.206), (16, 1.600), (32, 2.640), (64, 4.917),
                (128, 9.446), (256, 18.240),
            ],
            max_batch_size=128,
            max_queue_delay_ms=1.0,
            preferred_batch_sizes=[32, 64, 128],
            jitter="lognormal",
            jitter_cv=0.01,
            cpu_ms_per_request=0.0,
            runtime_overhead_gb=0.55,
            weights_gb=0.05,
            activation_gb_per_request=0.0067,
        ),
        ModelProfile(
            name="bert-large-h100-measured",
            description="BERT-Large (FP16, sequence 384, PyTorch SDPA attention) on one H100-SXM-80GB, served "
            "without per-kernel launch cost (CUDA graphs or a compiled engine).",
            source="measured with scripts/profile_model.py bert-large --cuda-graphs on an NVIDIA H100 80GB HBM3 "
            "(PyTorch 2.11, transformers 5.17, random weights, 2026-11-22): GPU kernel time per batch, CV under "
            "1 %; weights 0.67 GB, activations 8.7 MB per sequence; 1,860 sequences/s at batch 128, about a "
            "fifth of the TensorRT FP8/INT8 figure of bert-large-h100-mlperf; docs/profiling.md",
            gpu="h100-80gb",
            batch_latency_ms=[
                (1, 1.499), (2, 1.783), (4, 2.659), (8, 4.676), (16, 8.813), (32, 16.992), (64, 34.088),
                (128, 68.821),
            ],
            max_batch_size=64,
            max_queue_delay_ms=2.0,
            preferred_batch_sizes=[16, 32, 64],
            jitter="lognormal",
            jitter_cv=0.01,
            cpu_ms_per_request=0.2,
            cpu_workers=8,
            runtime_overhead_gb=0.55,
            weights_gb=0.67,
            activation_gb_per_request=0.0087,
        ),
        ModelProfile(
            name="llama3-8b-h100-measured",
            description="A Llama-3-8B-shaped decoder (BF16, GQA 32/8 heads) on one H100-SXM-80GB; a request's "
            "whole generation (512-token prompt, 211 output tokens) as one batched unit, the static-batching "
            "view of continuous batching; memory preallocated as vLLM does.",
            source="measured with scripts/profile_model.py llama-8b --cuda-graphs on an NVIDIA H100 80GB HBM3 "
            "(PyTorch 2.11, transformers SDPA, random weights, 2026-11-22): GPU kernel time of prefill 16.8 / "
            "231.6 / 930.1 ms and of a decode step 8.36 / 13.14 / 26.62 ms at batch 1 / 16 / 64; latency(b) "
            "= prefill(b) + 211 x step(b); weights 16.06 GB, KV cache 0.095 GB per request; docs/profiling.md",
            gpu="h100-80gb",
            batch_latency_ms=[(1, 1779.6), (16, 3004.5), (64, 6546.5)],
            max_batch_size=64,
            max_queue_delay_ms=0.0,
            jitter="lognormal",
            jitter_cv=0.1,
            cpu_ms_per_request=1.0,
            cpu_workers=4,
            runtime_overhead_gb=0.55,
            weights_gb=16.06,
            activation_gb_per_request=0.095,
            allocator="preallocate",
        ),
        ModelProfile(
            name="llama2-70b-h100x8-vllm",
            description="Llama-2-70B on a DGX-H100 (8 GPUs, TP8); a request's whole generation (512-token prompt, "
            "~210 output tokens) as one batched unit, the static-batching view of continuous batching.",
            source="SplitwiseSim perf_model.csv (DGX-H100, TP8, 512-token prompts): prompt 55.5 / 805 ms and token "
            "30.5 / 34.2 / 50.0 ms at batch 1 / 16 / 64; latency(b) = prompt(b) + 211 x token(b) (211 = mean "
            "output of the Azure conversation trace); vLLM preallocates 90 % of memory",
            gpu="h100-80gb",
            gpus_per_pod=8,
            batch_latency_ms=[(1, 6491.0), (16, 8021.0), (64, 13770.0)],
            max_batch_size=64,
            max_queue_delay_ms=0.0,
            jitter="lognormal",
            jitter_cv=0.2,
            cpu_ms_per_request=1.0,
            cpu_workers=8,
            runtime_overhead_gb=10.0,
            weights_gb=140.0,
            activation_gb_per_request=1.0,
            allocator="preallocate",
        ),
        ModelProfile(
            name="llama3-8b-h100-vllm",
            description="Llama-3-8B (BF16, 32 layers, GQA 32/8 heads) behind vLLM on one H100-SXM-80GB, served "
            "token by token: continuous batching, chunked prefill, a paged KV cache (docs/llm.md).",
            source="Shape: Llama-3-8B config (32 layers, 8 KV heads, head_dim 128, BF16: 2 x 32 x 8 x 128 x 2 = "
            "131,072 bytes per token); weights 16.06 GB and CUDA context 0.55 GB measured (docs/profiling.md). "
            "Iteration time fitted to the project's own H100 kernel times of a plain PyTorch decoder of this "
            "shape (transformers SDPA, CUDA graphs), NOT vLLM's kernels: decode step at context 617 of "
            "8.36 / 13.14 / 26.62 ms at batch 1 / 16 / 64, least squares 8.27 ms + 0.2876 ms per sequence; "
            "beta0 = 8.27 ms (the weight read every iteration pays); the per-sequence 0.2876 ms split into "
            "a per-context-token term of KV bytes / HBM bandwidth = 131,072 B / 3.35 TB/s = 0.0391 ms per "
            "1,000 tokens (0.0241 ms at 617) and a per-decode-token 0.2635 ms; prefill of 512 tokens at "
            "batch 1 / 16 / 64 of 16.8 / 231.6 / 930.1 ms gives 0.02808 ms per token over beta0 (least "
            "squares through the three points; 22.6 / 238.3 / 928.3 ms fitted), less the KV term: 0.02804 ms "
            "per prefill token. activation_reserve_gb 1.5 is assumed (vLLM's profiling pass of 8,192 "
            "tokens); max_model_len 8,192 is Llama-3-8B's context; scheduler settings are vLLM's defaults. "
            "KV cache: (0.9 x 80 - 16.06 - 0.55 - 1.5) GB / (16 x 131,072 B) = 25,696 blocks = 411,136 tokens",
            gpu="h100-80gb",
            jitter="none",
            cpu_ms_per_request=1.0,
            cpu_workers=4,
            runtime_overhead_gb=0.55,
            weights_gb=16.06,
            allocator="preallocate",
            llm=LlmEngineConfig(
                num_layers=32, num_kv_heads=8, head_dim=128, kv_dtype_bytes=2, params_b=8.03,
                activation_reserve_gb=1.5, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192,
                chunked_prefill=True, max_model_len=8192,
                beta0_ms=8.27, beta_prefill_ms_per_token=0.02804, beta_decode_ms_per_token=0.2635,
                beta_kv_ms_per_1k_tokens=0.0391,
            ),
        ),
        ModelProfile(
            name="llama2-70b-h100x8-mlperf",
            description="Llama-2-70B (FP8 weights and KV cache) on a DGX-H100 (8x H100-SXM-80GB, TensorRT-LLM) as one "
            "pod, served token by token; calibrated to NVIDIA's MLPerf Inference v4.0 closed result.",
            source="MLPerf Inference v4.0 closed, NVIDIA DGX-H100 (8x H100-SXM-80GB, TensorRT-LLM), "
            "llama2-70b-99.9: Offline 21,805.8 tokens/s (74.7 samples/s); Server 20,556.4 tokens/s at 70.42 "
            "samples/s, TTFT p50 382 / p99 568 ms, TPOT p50 139 / p99 156 ms. Mean output O = 21,805.8 / "
            "74.7 = 291.9 tokens (the reference FP16 run: 294.45 tokens per sample, mlcommons/inference "
            "language/llama2-70b README); mean prompt P = 300 tokens ASSUMED (OpenOrca subset of 24,576 "
            "samples, prompts capped at 1,024 tokens by processorca.py --seqlen_limit=1024; the mean was not "
            "found in the sources consulted). Shape: 80 layers, 8 KV heads, head_dim 128, FP8 KV: 163,840 B "
            "per token; beta_kv = 163,840 B / (8 x 3.35 TB/s) = 0.00611 ms per 1,000 tokens. Fit (prefill "
            "and decode tokens cost the same, 2 x parameters FLOPs each): per output token a = beta_tok x "
            "(1 + P/O) + beta_kv x (P + O/2 + P/O); an iteration of d s emits X x d tokens at X tokens/s, so "
            "X = (1 - beta0/d)/a. Server: d = TPOT p50 = 139 ms at X = 20,556.4 (about 20,556 x 0.139 = "
            "2,857 requests decoding); Offline: max_num_seqs = 4,096 decoding, d = 4,096 / 21,805.8 = "
            "187.8 ms. Solving both: beta0 = 26.34 ms, a = 39.43 us, beta_tok = 0.01810 ms (about 48 % of "
            "the FP8 dense peak, 8 x 1,979 TFLOPS); an iteration then holds about 8,300 tokens offline, so "
            "max_num_batched_tokens = 16,384. A calibrated fit of one published system, not a measurement "
            "of its kernels; max_model_len 2,048 (1,024 in + 1,024 out); activation_reserve_gb 16 and "
            "runtime 8 GB (1 GB per GPU) assumed",
            gpu="h100-80gb",
            gpus_per_pod=8,
            jitter="none",
            cpu_ms_per_request=1.0,
            cpu_workers=8,
            runtime_overhead_gb=8.0,
            weights_gb=69.0,
            allocator="preallocate",
            llm=LlmEngineConfig(
                num_layers=80, num_kv_heads=8, head_dim=128, kv_dtype_bytes=1, params_b=68.98,
                activation_reserve_gb=16.0, block_size=16, max_num_seqs=4096, max_num_batched_tokens=16384,
                chunked_prefill=True, max_model_len=2048,
                beta0_ms=26.34, beta_prefill_ms_per_token=0.0181, beta_decode_ms_per_token=0.0181,
                beta_kv_ms_per_1k_tokens=0.00611, peak_tflops=8 * 1979.0,
            ),
        ),
    )
}  # fmt: skip
