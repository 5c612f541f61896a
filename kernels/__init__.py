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
from kernels.norm import gated_rms_norm
from kernels.prologue import conv_split, decay_and_beta
from kernels.serial import gated_delta_serial

METHODS = ("serial", "chunked")
ENV_OPS = "DELTASERVE_GDN_OPS"  # "1": force the MLX-ops path on a GPU (for comparison)
__all__ = ["CHUNK_SIZES", "ENV_OPS", "METHODS", "gated_delta", "gated_delta_decode", "gated_delta_decode_ops",
           "gated_delta_prologue", "implementation"]
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
    beta fp32 [B, T, Hv]; state fp32 [B, Hv, Dv, Dk]. Returns (out [B, T, Hv, Dv] in v's dtype; new state).
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


def gated_delta_prologue(
    qkv: mx.array, conv_state: mx.array | None, conv_w: mx.array, *, num_k_heads: int, head_k_dim: int,
    num_v_heads: int,
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """What a multi-token step's GDN core reads, from the projections qkv [B, T, CD] (CD = 2 Hk Dk + Hv Dv =
    conv_w.shape[0]; or wider, the q | k | v columns first: the layer's fused projection, which the GPU kernel
    reads in place where a column slice would be copied first): causal conv + SiLU continuing from conv_state
    [B, K-1, CD] (None: zeros; conv_w [CD, K, 1]), split into q, k [B, T, Hk, Dk] (l2-normed in fp32, q scaled
    by Dk^-1/2) and v [B, T, Hv, Dv], all in qkv's dtype, and the new conv rows. One kernel on GPUs (the ops
    take 8-10 launches and a slow grouped conv); kernels/prologue.py elsewhere, the reference it reproduces."""
    B, T, width = qkv.shape
    CD = conv_w.shape[0]
    if width < CD:
        raise ValueError(f"qkv has {width} channels; the conv takes {CD}")
    if conv_state is None:
        conv_state = mx.zeros((B, conv_w.shape[1] - 1, CD), dtype=qkv.dtype)
    backend = _backend()
    if backend and 0 < B * T * width < 2**31:  # the kernel indexes with 32-bit ints
        return gpu.prologue(qkv, conv_state, conv_w, num_k_heads=num_k_heads, head_k_dim=head_k_dim,
                            num_v_heads=num_v_heads, backend=backend)
    return conv_split(qkv[..., :CD] if width > CD else qkv, conv_state, conv_w, num_k_heads, num_v_heads,
                      head_k_dim)


def gated_delta_decode(
    qkv: mx.array,
    conv_state: mx.array | None,
    conv_w: mx.array,
    a: mx.array,
    b: mx.array,
    a_log: mx.array,
    dt_bias: mx.array,
    state: mx.array | None,
    z: mx.array,
    norm_w: mx.array,
    *,
    num_k_heads: int,
    head_k_dim: int,
    eps: float,
) -> tuple[mx.array, mx.array, mx.array]:
    """One decode token of a GDN layer, from its projections to the input of its output projection: causal conv
    + SiLU of qkv [B, 1, 2 Hk Dk + Hv Dv] against the cached K-1 rows conv_state [B, K-1, ·] (None: zeros; conv_w
    [·, K, 1]), the q / k l2-norm, the decay and beta from a, b [B, 1, Hv], the serial step of state [B, Hv, Dv,
    Dk] (None: zeros), then the output's gated RMSNorm (`norm.gated_rms_norm` with gate z [B, 1, Hv, Dv] or, as
    the projection gives it, [B, 1, Hv * Dv]; weight norm_w [Dv], eps). Returns (out shaped like z, in qkv's
    dtype, the new conv rows, the new state). One kernel on GPUs (decode is bound by launches); kernels/prologue.py,
    the serial core and the norm elsewhere, which the kernel reproduces."""
    B, _, CD = qkv.shape
    Hv = a.shape[-1]
    Dv = (CD - 2 * num_k_heads * head_k_dim) // Hv
    if state is None:
        state = mx.zeros((B, Hv, Dv, head_k_dim), dtype=mx.float32)
    if conv_state is None:
        conv_state = mx.zeros((B, conv_w.shape[1] - 1, CD), dtype=qkv.dtype)
    backend = _backend()
    if (backend and qkv.shape[1] == 1 and not gpu.unsupported_dims(head_k_dim, Dv, None, backend)
            and z.shape in ((B, 1, Hv, Dv), (B, 1, Hv * Dv)) and norm_w.shape == (Dv,)):
        return gpu.decode(qkv, conv_state, conv_w, a, b, a_log, dt_bias, state, z, norm_w, num_k_heads=num_k_heads,
                          head_k_dim=head_k_dim, eps=eps, backend=backend)
    out, conv_state, state = gated_delta_decode_ops(qkv, conv_state, conv_w, a, b, a_log, dt_bias, state,
                                                    num_k_heads=num_k_heads, head_k_dim=head_k_dim)
    return gated_rms_norm(out, z, norm_w, eps), conv_state, state  # shaped like z


def gated_delta_decode_ops(qkv, conv_state, conv_w, a, b, a_log, dt_bias, state, *, num_k_heads: int,
                           head_k_dim: int) -> tuple[mx.array, mx.array, mx.array]:
    """The GDN core of `gated_delta_decode` (its norm left out) as the prologue's ops plus one serial step (the
    reference of the fused kernel; caches must be given)."""
    q, k, v, conv_state = conv_split(qkv, conv_state, conv_w, num_k_heads, a.shape[-1], head_k_dim)
    g, beta = decay_and_beta(a, b, a_log, dt_bias)
    out, state = gated_delta(q, k, v, g, beta, state, method="serial")
    return out, conv_state, state
