"""A decode step's residual add and RMSNorm fused with the linear layer that reads the norm, on NVIDIA GPUs
(kernels/src/add_norm_gemv_cuda.body): a mixer's fused input projections, or the MLP's gate | up projections with
their SwiGLU. One launch instead of two (the fused add + norm, MLX's matrix-vector product) or three (and the
compiled silu(gate) * up); decode is bound by launches, and this is three a layer. It takes the few rows of a
decode step; prefill's many rows stay with the separate kernels and MLX's matmul. DELTASERVE_GEMV=mlx switches
it off.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from kernels import norm
from kernels.gpu import build_kernel, cuda_off, float_bits

ENV = "DELTASERVE_GEMV"  # "mlx": always the separate kernels and MLX's matmul (for comparison)
WARPS = norm.THREADS // 32  # output columns a block (a warp each); its threads sum the norm as add_rms_norm does
MAX_ROWS = 4  # rows the kernel takes (a decode step's batch)
SHARED_BYTES = 32 * 1024  # the normed rows staged in shared memory: rows * K * itemsize at most
NAMES = (("x", "r", "nw", "w"), ("h", "y"))


@functools.cache
def _kernel():
    return build_kernel("cuda", "add_norm_gemv", "add_norm_gemv_cuda.body", *NAMES)


def kernels_off() -> str | None:
    """Why the kernel does not run here (switched off, not an NVIDIA GPU), or None."""
    return cuda_off(ENV)


def unsupported(x: mx.array, r: mx.array, norm_w: mx.array, w: mx.array, glu: bool = False) -> str | None:
    """Why the kernel cannot take these (the caller runs the separate ops), or None."""
    if off := kernels_off():
        return off
    if len({x.dtype, r.dtype, norm_w.dtype, w.dtype}) != 1 or x.dtype not in (mx.bfloat16, mx.float16, mx.float32):
        return f"dtypes x {x.dtype} / r {r.dtype} / norm {norm_w.dtype} / w {w.dtype}"
    K = x.shape[-1]
    rows = x.size // K if K else 0
    if (r.shape != x.shape or norm_w.shape != (K,) or w.ndim != 2 or w.shape[1] != K or (glu and w.shape[0] % 2)
            or K % (32 * 16 // x.dtype.size)):
        return f"shapes x {x.shape} / r {r.shape} / norm {norm_w.shape} / w {w.shape}"
    if not 0 < rows <= MAX_ROWS or rows * K * x.dtype.size > SHARED_BYTES:
        return f"{rows} rows of {K}"
    return None


def add_norm_gemv(x: mx.array, r: mx.array, norm_w: mx.array, eps: float, w: mx.array,
                  glu: bool = False) -> tuple[mx.array, mx.array] | None:
    """(h, y) for the few rows of x, r [..., K]: h = x + r and n = rms_norm(h) * norm_w (as `norm.add_rms_norm`
    computes both, bit for bit), then y = n @ w.T for w [I, K], or with `glu` y = silu(n @ w[:I].T) *
    (n @ w[I:].T) for w [2I, K]; w is a model parameter (its own 16-byte aligned allocation). Rounded as MLX's
    matmul and the model's compiled SwiGLU round them; y [..., I]. None where `unsupported`."""
    if unsupported(x, r, norm_w, w, glu) is not None:
        return None
    K, I = x.shape[-1], w.shape[0] // 2 if glu else w.shape[0]
    rows = x.size // K
    # the rows as they come ([B, 1, K] in a decode step: the kernel reads them flat, and a reshape each way
    # would be four more graph nodes a call for the host to evaluate)
    h, y = _kernel()(
        inputs=[x, r, norm_w, w], output_shapes=[x.shape, (*x.shape[:-1], I)], output_dtypes=[x.dtype, x.dtype],
        grid=(-(-I // WARPS) * 32 * WARPS, 1, 1), threadgroup=(32 * WARPS, 1, 1),
        template=[("DT", x.dtype), ("K", K), ("I", I), ("M", rows), ("NW", WARPS), ("EPS", float_bits(eps)),
                  ("GLU", glu)])
    return h, y
