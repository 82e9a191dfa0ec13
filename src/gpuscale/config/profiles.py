"""Model profiles and GPU types: how a pod serves (batch latency, memory, CPU work) and what it costs.

Every built-in number cites its source. Latency tables are per *batch*: a batch of b requests
occupies the GPU for latency(b) ms. Where a source gives throughput per batch size, latency(b) =
b / throughput(b).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gpuscale.config.loading import StrictModel


class GpuType(StrictModel):
    name: str
    memory_gb: float = Field(gt=0, description="Device memory, GB.")
    usd_per_gpu_hour: float = Field(ge=0, description="On-demand price of one GPU for an hour, USD.")
    price_source: str = Field(description="Where the price comes from.")


GPU_TYPES: dict[str, GpuType] = {
    g.name: g
    for g in (
        GpuType(
            name="a100-80gb", memory_gb=80, usd_per_gpu_hour=2.21,
            price_source="inference-fleet-sim (arXiv 2603.16054) default A100 80 GB cost",
        ),
        GpuType(
            name="a100-40gb", memory_gb=40, usd_per_gpu_hour=3.67,
            price_source="GCP a2-highgpu-1g on-demand, $3.67/h for 1x A100 (seed 001 price table)",
        ),
        GpuType(
            name="h100-80gb", memory_gb=80, usd_per_gpu_hour=4.02,
            price_source="inference-fleet-sim (arXiv 2603.16054) default H100 80 GB cost",
        ),
        GpuType(
            name="a10g", memory_gb=24, usd_per_gpu_hour=1.01,
            price_source="AWS g5.xlarge on-demand, $1.01/h for 1x A10G (seed 001 price table)",
        ),
        GpuType(
            name="t4", memory_gb=16, usd_per_gpu_hour=0.526,
            price_source="AWS g4dn.xlarge on-demand list price, us-east-1, $0.526/h for 1x T4",
        ),
        GpuType(
            name="rtx3080", memory_gb=10, usd_per_gpu_hour=0.25,
            price_source="no cloud list price: an assumed amortised on-premises cost; set your own",
        ),
    )
}  # fmt: skip


class ModelProfile(StrictModel):
    """How one pod of the model serves requests on one GPU type."""

    name: str = Field(description="Profile name.")
    description: str = Field(default="", description="What this profile models.")
    source: str = Field(default="", description="Where the numbers come from.")
    gpu: str = Field(description=f"GPU type; one of {', '.join(GPU_TYPES)}.")
    gpus_per_pod: int = Field(default=1, ge=1, description="Whole GPUs each pod requests (nvidia.com/gpu).")
    batch_latency_ms: list[tuple[int, float]] = Field(
        min_length=1,
        description="Measured (batch size, milliseconds per batch) points, increasing batch size; "
        "interpolated linearly in between.",
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
            raise ValueError(f"unknown GPU type {v!r}; allowed: {', '.join(GPU_TYPES)}")
        return v

    @model_validator(mode="after")
    def _batch_sizes(self) -> ModelProfile:
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
    )
}  # fmt: skip
