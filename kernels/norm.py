"""Residual add + RMSNorm in one kernel on GPUs (kernels/src/add_rms_norm.body): `h = x + r` and
`mx.fast.rms_norm(h, w, eps)` computed as MLX computes them, in one launch instead of two. Decode is bound by
launches (~400 a token on CUDA), and every decoder layer has one such pair. Elsewhere (the CPU, or shapes the
kernel does not take) the two MLX ops run.
"""

from __future__ import annotations

import functools
import struct

import mlx.core as mx

from kernels.gpu import gpu_backend, read_source

THREADS = 256
MAX_PER_THREAD = 16  # row elements a thread holds (D <= 4096)


@functools.cache
def _kernel(backend: str):
    names = dict(name="deltaserve_add_rms_norm", input_names=["x", "r", "w"], output_names=["h", "y"],
                 source=read_source(f"prelude_{backend}.h") + read_source("add_rms_norm.body"),
                 header=read_source(f"helpers_{backend}.h"))
    return mx.fast.metal_kernel(**names) if backend == "metal" else mx.fast.cuda_kernel(**names)


def add_rms_norm(x: mx.array, r: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    """(h, y) = (x + r, rms_norm(x + r) * weight) over the last axis."""
    backend = gpu_backend()
    D = x.shape[-1]
    if (backend is None or x.dtype != r.dtype or weight.dtype != x.dtype or x.shape != r.shape
            or weight.shape != (D,) or D > THREADS * MAX_PER_THREAD or x.size == 0):
        h = x + r
        return h, mx.fast.rms_norm(h, weight, eps)
    rows = x.size // D
    eps_bits = struct.unpack("<i", struct.pack("<f", eps))[0]
    h, y = _kernel(backend)(
        inputs=[x, r, weight], output_shapes=[x.shape, x.shape], output_dtypes=[x.dtype, x.dtype],
        grid=(rows * THREADS, 1, 1), threadgroup=(THREADS, 1, 1),
        template=[("OutT", x.dtype), ("D", D), ("NT", THREADS), ("EPS", eps_bits)])
    return h, y
