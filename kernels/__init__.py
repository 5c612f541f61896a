"""The Gated DeltaNet core behind one function, `gated_delta`.

State layout everywhere: [B, Hv, Dv, Dk] fp32 (MLX orientation, o = H q).
"""

from __future__ import annotations

import mlx.core as mx

from kernels.chunked import CHUNK_SIZES, gated_delta_chunked
from kernels.serial import gated_delta_serial

METHODS = ("serial", "chunked")
__all__ = ["CHUNK_SIZES", "METHODS", "gated_delta"]


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
    if method == "serial":
        return gated_delta_serial(q, k, v, g, beta, state, chunk_size=chunk_size)
    if method == "chunked":
        return gated_delta_chunked(q, k, v, g, beta, state, chunk_size=chunk_size)
    raise ValueError(f"unknown GDN method {method!r}; expected one of {METHODS}")
