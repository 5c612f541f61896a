"""Causal prefill attention of one Qwen3.5-0.8B attention layer on an NVIDIA GPU (8 query heads over 2 key/value
heads, head_dim 256, bf16): the fused kernel (kernels/attention.py) against MLX's own path as the model ran it
before (MLX's unfused fallback in query blocks of QUERY_BLOCK), with the largest difference between the two.

Usage: python bench/attention.py [--contexts 512,2048,8192] [--runs 5]
"""

from __future__ import annotations

import argparse

import mlx.core as mx
from gpu_kernels import time_mlx  # bench/ is on sys.path when a bench script runs

from engine.backend import configure_long_running
from engine.model import mlx_attention
from kernels import attention

HQ, HKV, D = 8, 2, 256


def mlx_path(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
    """The model's attention without the kernel (`engine.model.mlx_attention`), as [B, T, H, D]."""
    return mlx_attention(q, k, v, D**-0.5, "causal").transpose(0, 2, 1, 3)


def main() -> None:
    configure_long_running()  # the server's process settings (CUDA-graph and buffer caches)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="512,2048,8192")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"causal attention, B=1, {HQ}x{HKV} heads x {D}, bf16; device: {mx.device_info().get('device_name')}")
    print("| T | fused ms | fused TFLOP/s | MLX path ms | MLX / fused | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for T in (int(t) for t in args.contexts.split(",")):
        q, k, v = (mx.random.normal((1, h, T, D)).astype(mx.bfloat16) for h in (HQ, HKV, HKV))
        mx.eval(q, k, v)
        fused = time_mlx(lambda: attention.causal_attention(q, k, v, D**-0.5), args.runs, 5)  # noqa: B023
        ref = time_mlx(lambda: mlx_path(q, k, v), args.runs, 5)  # noqa: B023
        diff = mx.abs(attention.causal_attention(q, k, v, D**-0.5).astype(mx.float32)
                      - mlx_path(q, k, v).astype(mx.float32)).max().item()
        flop = 4 * HQ * D * T * (T + 1) / 2  # QK^T and PV over the visible pairs
        print(f"| {T} | {fused * 1e3:.3f} | {flop / fused / 1e12:.0f} | {ref * 1e3:.3f} | {ref / fused:.2f}x | "
              f"{diff:.2e} |")


if __name__ == "__main__":
    main()
