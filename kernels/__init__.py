"""The Gated DeltaNet core behind one function, `gated_delta`.

State layout everywhere: [B, Hv, Dv, Dk] fp32 (MLX orientation, o = H q). On Apple and NVIDIA GPUs the
serial and chunked paths run as custom kernels (kernels/gpu.py); on the CPU, or with
DELTASERVE_GDN_OPS=1, as MLX ops (serial.py, chunked.py).
"""

from __future__ import annotations

import logging
import os

import mlx.core as mx

from kernels import gpu
from kernels.chunked import CHUNK_SIZES, gated_delta_chunked
from kernels.serial import gated_delta_serial

METHODS = ("serial", "chunked")
ENV_OPS = "DELTASERVE_GDN_OPS"  # "1": force the MLX-ops path on a GPU (for comparison)
__all__ = ["CHUNK_SIZES", "ENV_OPS", "METHODS", "gated_delta", "implementation"]
log = logging.getLogger("deltaserve")
_warned: set[str] = set()


def _backend() -> str | None:
    """The GPU backend the kernels run on, or None for the MLX-ops path (CPU, or forced by ENV_OPS)."""
    return None if os.environ.get(ENV_OPS) == "1" else gpu.gpu_backend()


def implementation() -> str:
    """What runs the core here: 'metal kernels', 'cuda kernels' or 'mlx ops'."""
    backend = _backend()
    return f"{backend} kernels" if backend else "mlx ops"


def gated_delta(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    g: mx.array,
    beta: mx.array,
    state: mx.array,
    *,
    method: str = "serial",
    chunk_size: int = 64,
) -> tuple[mx.array, mx.array]:
    """Run the GDN core over T tokens.

    q, k [B, T, Hk, Dk] (l2-normalised, q scaled by Dk^-1/2); v [B, T, Hv, Dv]; g fp32 log decay [B, T, Hv];
    beta fp32 [B, T, Hv]; state fp32 [B, Hv, Dv, Dk]. Returns (out [B, T, Hv, Dv] in v's dtype, new state).
    `method="chunked"` runs the chunkwise-parallel form with `chunk_size` tokens per chunk.
    """
    if method not in METHODS:
        raise ValueError(f"unknown GDN method {method!r}; expected one of {METHODS}")
    if q.shape[1] == 0:  # nothing to run (and no zero-sized launch or empty chunk stack)
        return mx.zeros(v.shape, v.dtype), state.astype(mx.float32)
    backend = _backend()
    reason = backend and gpu.unsupported(q, v, chunk_size if method == "chunked" else None, backend)
    if reason and reason not in _warned:
        _warned.add(reason)
        log.warning("GDN %s kernel cannot take %s: using the MLX-ops path", method, reason)
    if backend and not reason:
        if method == "chunked":
            return gpu.chunked(q, k, v, g, beta, state, chunk_size=chunk_size, backend=backend)
        return gpu.serial(q, k, v, g, beta, state, backend=backend)
    ops = gated_delta_chunked if method == "chunked" else gated_delta_serial
    return ops(q, k, v, g, beta, state, chunk_size=chunk_size)
