"""A small run of every GDN kernel, for `compute-sanitizer --tool racecheck|memcheck` on an NVIDIA GPU.

Exits non-zero when the kernels disagree with the MLX-ops path, so a sanitizer run also checks results.
Usage: compute-sanitizer --tool racecheck python bench/gdn_sanitize.py
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLX_ENABLE_TF32", "0")  # the ops reference must not run its matmuls in TF32

import mlx.core as mx
import numpy as np

from kernels import ENV_OPS, gated_delta_decode, gpu
from kernels.chunked import gated_delta_chunked
from kernels.serial import gated_delta_serial


def main() -> int:
    backend = gpu.gpu_backend()
    if backend is None:
        print("no GPU backend", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    B, T, Hk, Hv, Dk, Dv = 1, 70, 2, 4, 64, 32  # ragged last chunk, grouped heads, Dk != Dv
    q = rng.normal(size=(B, T, Hk, Dk)).astype(np.float32)
    k = rng.normal(size=(B, T, Hk, Dk)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True) * np.sqrt(Dk)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(B, T, Hv, Dv)).astype(np.float32)
    g = -rng.uniform(0, 3, size=(B, T, Hv)).astype(np.float32)
    beta = rng.uniform(0, 1, size=(B, T, Hv)).astype(np.float32)
    s0 = rng.normal(size=(B, Hv, Dv, Dk)).astype(np.float32)
    args = [mx.array(x) for x in (q, k, v, g, beta, s0)]
    worst = 0.0
    for C in (16, 32, 64):
        out, state = gpu.chunked(*args, chunk_size=C, backend=backend)
        ref_out, ref_state = gated_delta_chunked(*args, chunk_size=C)  # ops path, GPU substitution inverse
        worst = max(worst, _err(out, ref_out), _err(state, ref_state))
    out, state = gpu.serial(*args, backend=backend)
    ref_out, ref_state = gated_delta_serial(*args)
    worst = max(worst, _err(out, ref_out), _err(state, ref_state))
    # the fused decode step against its ops reference
    cd = 2 * Hk * Dk + Hv * Dv

    def normal(*shape, scale=1.0):
        return mx.array((rng.normal(size=shape) * scale).astype(np.float32))

    row, past, w = normal(B, 1, cd), normal(B, 3, cd), normal(cd, 4, 1, scale=0.5)
    a_, b_ = normal(B, 1, Hv), normal(B, 1, Hv)
    a_log, dt_bias = mx.array(np.log(rng.uniform(0.5, 16, Hv)).astype(np.float32)), mx.zeros((Hv,))
    z, nw = normal(B, 1, Hv, Dv), mx.array(rng.uniform(0.5, 1.5, Dv).astype(np.float32))
    out, conv, state = gpu.decode(row, past, w, a_, b_, a_log, dt_bias, args[5], z, nw, num_k_heads=Hk,
                                  head_k_dim=Dk, eps=1e-6, backend=backend)
    os.environ[ENV_OPS] = "1"  # the reference's serial step as MLX ops too
    ref_out, ref_conv, ref_state = gated_delta_decode(row, past, w, a_, b_, a_log, dt_bias, args[5], z, nw,
                                                      num_k_heads=Hk, head_k_dim=Dk, eps=1e-6)
    del os.environ[ENV_OPS]
    worst = max(worst, _err(out, ref_out), _err(conv, ref_conv), _err(state, ref_state))
    # bf16 q / k / v: the 16-bit key staging, and (on CUDA) the plain-TF32 products; checked against the fp32
    # result at bf16 output precision
    half = [a.astype(mx.bfloat16) if i < 3 else a for i, a in enumerate(args)]
    os.environ["MLX_ENABLE_TF32"] = "1"  # read per call by gpu.tf32; the ops reference above is done
    worst_half = 0.0
    for C in (16, 64):
        out, state = gpu.chunked(*half, chunk_size=C, backend=backend)
        ref_out, ref_state = gpu.serial(*half, backend=backend)
        worst_half = max(worst_half, _err(out.astype(mx.float32), ref_out.astype(mx.float32)), _err(state, ref_state))
    print(f"max relative error vs MLX ops: {worst:.2e}; bf16 inputs, chunked vs serial kernel: {worst_half:.2e}")
    return 0 if worst < 1e-4 and worst_half < 1e-2 else 1


def _err(a: mx.array, b: mx.array) -> float:
    a, b = np.array(a), np.array(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


if __name__ == "__main__":
    sys.exit(main())
