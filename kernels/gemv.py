"""A decode step's MLP input projections fused with their SwiGLU on NVIDIA GPUs (kernels/src/swiglu_gemv_cuda.body):
one launch instead of MLX's matrix-vector product and the compiled silu(gate) * up (decode is bound by launches:
this is one a layer). It takes the few rows of a decode step; prefill's many rows stay with MLX's matmul.
DELTASERVE_GEMV=mlx switches it off.
"""

from __future__ import annotations

import functools
import os

import mlx.core as mx

from kernels.gpu import build_kernel

ENV = "DELTASERVE_GEMV"  # "mlx": always MLX's matmul and ops (for comparison)
WARPS = 8  # output columns a block (one warp each)
MAX_ROWS = 4  # rows of x the kernel takes (a decode step's batch)
SHARED_BYTES = 32 * 1024  # x staged in shared memory: rows * K * itemsize at most
NAMES = (("x", "w"), ("y",))


@functools.cache
def _kernel():
    return build_kernel("cuda", "swiglu_gemv", "swiglu_gemv_cuda.body", *NAMES)


def unsupported(x: mx.array, w: mx.array) -> str | None:
    """Why the kernel cannot take x [..., K] against w [2I, K] (the caller runs MLX's ops), or None."""
    if os.environ.get(ENV, "").strip().lower() == "mlx":
        return f"{ENV}=mlx"
    if mx.default_device() != mx.gpu or not mx.cuda.is_available():
        return "not an NVIDIA GPU"
    if x.dtype != w.dtype or x.dtype not in (mx.bfloat16, mx.float16, mx.float32):
        return f"dtypes x {x.dtype} / w {w.dtype}"
    K = x.shape[-1]
    rows = x.size // K if K else 0
    if w.ndim != 2 or w.shape[1] != K or w.shape[0] % 2 or K % (32 * 16 // x.dtype.size):
        return f"shapes x {x.shape} / w {w.shape}"
    if not 0 < rows <= MAX_ROWS or rows * K * x.dtype.size > SHARED_BYTES:
        return f"{rows} rows of {K}"
    return None


def swiglu_gemv(x: mx.array, w: mx.array) -> mx.array | None:
    """silu(x @ w[:I].T) * (x @ w[I:].T) for the few rows of x [..., K] and the fused gate | up weight w [2I, K]
    (a model parameter: its own 16-byte aligned allocation), rounded as MLX's matmul and the model's compiled
    SwiGLU round them; out [..., I]. None where `unsupported`."""
    if unsupported(x, w) is not None:
        return None
    K, I = x.shape[-1], w.shape[0] // 2
    rows = x.size // K
    (y,) = _kernel()(
        inputs=[x.reshape(rows, K), w], output_shapes=[(rows, I)], output_dtypes=[x.dtype],
        grid=(-(-I // WARPS) * 32 * WARPS, 1, 1), threadgroup=(32 * WARPS, 1, 1),
        template=[("DT", x.dtype), ("K", K), ("I", I), ("M", rows), ("NW", WARPS)])
    return y.reshape(*x.shape[:-1], I)
