#!/usr/bin/env python3
"""Measure a model on the GPU at hand and print a gpuscale model profile (YAML) plus the raw figures.

Run it on the machine whose GPU you want to simulate; it needs PyTorch with CUDA (and torchvision or
transformers for the built-in model shapes), none of which gpuscale itself depends on::

    python3 scripts/profile_model.py resnet50 --gpu h100-80gb --out resnet50.json
    python3 scripts/profile_model.py bert-large --seq-len 384
    python3 scripts/profile_model.py llama-8b --prompt-tokens 512 --output-tokens 211

Weights are random (same shapes and arithmetic as the trained model, so the same time and memory);
nothing is downloaded. What is measured, per model:

* ``batch_latency_ms``: the median of ``--reps`` timed forward passes per batch size (CUDA events,
  after ``--warmup`` untimed passes), and the coefficient of variation across them (``jitter_cv``);
* ``weights_gb``: memory allocated by the weights; ``activation_gb_per_request``: the slope of peak
  allocated memory over batch size (least squares); ``runtime_overhead_gb``: device memory in use
  after CUDA initialisation before any tensor (the CUDA context), plus the caching allocator's
  reserve at the largest batch;
* cold-start parts: CUDA initialisation, loading the weights from a local safetensors file to the
  GPU (file in the page cache: a lower bound on a cold disk or a network volume), and the first
  forward pass (kernel selection, cuDNN autotuning) -- the ``load`` and ``warmup`` of a scenario.

For a decoder LLM the profile is gpuscale's static-batching view of continuous batching:
``latency(b) = prefill(b, prompt) + output_tokens x decode_step(b)``. Eager PyTorch launches each
kernel from Python, which dominates small batches; ``--cuda-graphs`` replays captured graphs for the
fixed-shape models and, for the decoder (whose cache grows every step), records GPU kernel time
(torch.profiler): the floor a graph-captured server such as vLLM approaches. docs/profiling.md has
the figures measured on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

GB = 1e9


def _timed(fn: Callable[[], Any], warmup: int, reps: int) -> tuple[float, float]:
    """Median milliseconds of ``fn`` on the GPU and the coefficient of variation of the reps."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    med = statistics.median(times)
    cv = statistics.pstdev(times) / statistics.fmean(times) if len(times) > 1 else 0.0
    return med, cv


def _graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` captured once as a CUDA graph; the result replays it (no per-kernel launch cost)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _slope(points: list[tuple[int, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(b for b, _ in points) / n
    my = sum(m for _, m in points) / n
    den = sum((b - mx) ** 2 for b, _ in points)
    return sum((b - mx) * (m - my) for b, m in points) / den if den else 0.0


def _cold_start_load(model: Any) -> float:
    """Seconds to read the model's weights from a local safetensors file onto the GPU."""
    import torch
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.safetensors")
        save_file({k: v.cpu() for k, v in state.items()}, path)
        del state
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loaded = load_file(path, device="cuda")
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        del loaded
    return seconds


def _cuda_init() -> tuple[float, float]:
    """Seconds to initialise CUDA, and the GB of device memory in use right after (the context)."""
    import torch

    t0 = time.perf_counter()
    torch.cuda.init()
    torch.empty(1, device="cuda")
    seconds = time.perf_counter() - t0
    free, total = torch.cuda.mem_get_info()
    return seconds, (total - free) / GB


def _encoder(args: argparse.Namespace) -> tuple[Any, Callable[[int], Callable[[], Any]], str]:
    import torch

    dtype = torch.float16
    if args.model == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None).eval().to("cuda", dtype)
        model = model.to(memory_format=torch.channels_last)

        def make(b: int) -> Callable[[], Any]:
            x = torch.randn(b, 3, 224, 224, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
            return lambda: model(x)

        return model, make, "ResNet-50 (torchvision), FP16, channels-last, 224x224"
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    )
    model = BertModel(config).eval().to("cuda", dtype)

    def make(b: int) -> Callable[[], Any]:
        ids = torch.randint(0, config.vocab_size, (b, args.seq_len), device="cuda")
        return lambda: model(input_ids=ids)

    return model, make, f"BERT-Large (transformers BertModel, SDPA), FP16, sequence {args.seq_len}"


def profile_encoder(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.backends.cudnn.benchmark = True
    cuda_init_s, context_gb = _cuda_init()
    with torch.inference_mode():
        model, make, what = _encoder(args)
        torch.cuda.synchronize()
        weights_gb = torch.cuda.memory_allocated() / GB
        first = make(1)
        t0 = time.perf_counter()
        first()
        torch.cuda.synchronize()
        first_pass_s = time.perf_counter() - t0
        rows = []
        peaks = []
        for b in args.batch_sizes:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            fn = make(b)
            if args.cuda_graphs and args.model == "bert-large":
                # Under graph capture transformers keeps the all-ones attention mask it drops
                # when eager (it cannot look at the data while capturing), which selects a much
                # slower attention kernel; the eager pass's kernel time is what a graph would replay.
                ms, cv = _kernel_ms(fn, steps=3, repeats=5)
            elif args.cuda_graphs:
                ms, cv = _timed(_graphed(fn), args.warmup, args.reps)
            else:
                ms, cv = _timed(fn, args.warmup, args.reps)
            peak = torch.cuda.max_memory_allocated() / GB
            rows.append({"batch": b, "ms": round(ms, 3), "cv": round(cv, 4), "per_s": round(b / ms * 1e3, 1)})
            peaks.append((b, peak - weights_gb))
            del fn
        reserved_gb = torch.cuda.memory_reserved() / GB
    load_s = _cold_start_load(model)
    return {
        "model": args.model,
        "what": what
        + (
            ", eager"
            if not args.cuda_graphs
            else ", kernel time"
            if args.model == "bert-large"
            else ", CUDA graphs"
        ),
        "rows": rows,
        "weights_gb": weights_gb,
        "activation_gb_per_request": max(0.0, _slope(peaks)),
        "context_gb": context_gb,
        "reserved_gb": reserved_gb,
        "cold_start_s": {"cuda_init": cuda_init_s, "load_weights": load_s, "first_pass": first_pass_s},
    }


def _kernel_ms(fn: Callable[[], Any], steps: int = 10, repeats: int = 1) -> tuple[float, float]:
    """Milliseconds of GPU kernel time per call of ``fn`` (torch.profiler): the time a CUDA-graph
    replay approaches, with the host's per-kernel launch cost taken out; the mean of ``repeats``
    profiles of ``steps`` calls each, and the coefficient of variation between them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    means = []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
        total_us = sum(e.device_time for e in prof.events() if e.device_type.name == "CUDA")
        means.append(float(total_us) / 1e3 / steps)
    mean = statistics.fmean(means)
    cv = statistics.pstdev(means) / mean if len(means) > 1 and mean > 0 else 0.0
    return mean, cv


def profile_llm(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    cuda_init_s, context_gb = _cuda_init()
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    torch.cuda.synchronize()
    weights_gb = torch.cuda.memory_allocated() / GB
    p, out = args.prompt_tokens, args.output_tokens
    ctx = p + out // 2  # decode steps timed at the mean context of a generation
    rows = []
    first_pass_s = None
    with torch.inference_mode():
        for b in args.batch_sizes:
            ids = torch.randint(0, config.vocab_size, (b, p), device="cuda")

            def prefill(ids: Any = ids) -> Any:
                return model(input_ids=ids, use_cache=False, logits_to_keep=1)

            if first_pass_s is None:
                t0 = time.perf_counter()
                prefill()
                torch.cuda.synchronize()
                first_pass_s = time.perf_counter() - t0
            pre_ms, pre_cv = _timed(prefill, args.warmup, args.reps)
            if args.cuda_graphs:
                pre_ms, pre_cv = _kernel_ms(prefill, 3)
            cache = DynamicCache()
            long_ids = torch.randint(0, config.vocab_size, (b, ctx), device="cuda")
            model(input_ids=long_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            seq_len = cache.get_seq_length()
            step_ids = torch.randint(0, config.vocab_size, (b, 1), device="cuda")

            def decode(cache: Any = cache, step_ids: Any = step_ids, seq_len: int = seq_len) -> Any:
                r = model(input_ids=step_ids, past_key_values=cache, use_cache=True)
                cache.crop(seq_len)  # the same context every step
                return r

            dec_ms, dec_cv = _timed(decode, args.warmup, args.reps)
            decode_mode = "eager"
            if args.cuda_graphs:  # the decode step's kernel time: eager launches cannot keep up
                (dec_ms, dec_cv), decode_mode = _kernel_ms(decode, repeats=3), "kernel-time"
            total_ms = pre_ms + out * dec_ms
            rows.append(
                {
                    "batch": b, "prefill_ms": round(pre_ms, 3), "prefill_cv": round(pre_cv, 4),
                    "decode_step_ms": round(dec_ms, 3), "decode_cv": round(dec_cv, 4),
                    "ms": round(total_ms, 1), "per_s": round(b / total_ms * 1e3, 2),
                    "decode_mode": decode_mode,
                }
            )  # fmt: skip
            del cache, long_ids, ids
            torch.cuda.empty_cache()
    kv_gb_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * 128 * 2 / GB
    load_s = _cold_start_load(model)
    return {
        "model": args.model,
        "what": f"Llama-3-8B-shaped decoder (transformers, SDPA), BF16, prompt {p}, output {out}",
        "rows": rows,
        "weights_gb": weights_gb,
        "kv_gb_per_request": kv_gb_per_token * (p + out),
        "activation_gb_per_request": kv_gb_per_token * (p + out),
        "context_gb": context_gb,
        "reserved_gb": 0.0,
        "cold_start_s": {"cuda_init": cuda_init_s, "load_weights": load_s, "first_pass": first_pass_s},
    }


def profile_yaml(result: dict[str, Any], gpu: str, name: str) -> str:
    rows = result["rows"]
    cvs = [r.get("cv", r.get("decode_cv", 0.0)) for r in rows]
    table = ", ".join(f"[{r['batch']}, {r['ms']:.3f}]" for r in rows)
    return "\n".join(
        [
            f"name: {name}",
            f"description: {result['what']}",
            f"source: measured with scripts/profile_model.py on {result['device']}",
            f"gpu: {gpu}",
            f"batch_latency_ms: [{table}]",
            f"max_batch_size: {rows[-1]['batch']}",
            "jitter: lognormal",
            f"jitter_cv: {max(0.01, statistics.median(cvs)):.3f}",
            f"runtime_overhead_gb: {result['context_gb']:.2f}",
            f"weights_gb: {result['weights_gb']:.2f}",
            f"activation_gb_per_request: {result['activation_gb_per_request']:.4f}",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["resnet50", "bert-large", "llama-8b"])
    parser.add_argument("--gpu", default="h100-80gb", help="gpuscale GPU type of this machine")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--seq-len", type=int, default=384)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=211)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="time CUDA-graph replays (as TensorRT / Triton / vLLM serve) instead of eager launches",
    )
    parser.add_argument("--out", help="also write the raw figures as JSON here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    defaults = {
        "resnet50": [1, 2, 4, 8, 16, 32, 64, 128, 256],
        "bert-large": [1, 2, 4, 8, 16, 32, 64, 128],
        "llama-8b": [1, 4, 16, 32, 64],
    }
    args.batch_sizes = args.batch_sizes or defaults[args.model]
    result = profile_llm(args) if args.model == "llama-8b" else profile_encoder(args)
    result["device"] = f"{torch.cuda.get_device_name()} (PyTorch {torch.__version__})"
    result["gpu"] = args.gpu
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    print(json.dumps(result, indent=2, sort_keys=True))
    print(profile_yaml(result, args.gpu, f"{args.model}-{args.gpu}-measured"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
