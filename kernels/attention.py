"""Fused causal attention for prefill on NVIDIA GPUs (kernels/src/attention_cuda.body).

MLX has no fused attention at head_dim 256 on CUDA (its cuDNN path stops at 128), so its fallback writes and
reads a [heads, queries, keys] score matrix per call: at 8192 tokens that was ~3.5 ms of each attention layer's
prefill on an H200. This kernel keeps scores on chip (FlashAttention-2's online softmax). It serves causal
prefill. `decode_attention` serves a decode step's one query against the compiled step's whole cache buffers
(their first n positions filled): MLX's vector kernel takes no array mask, so that masked call falls back to
matmul, select, softmax and matmul a layer, after a select a buffer for the KV write and before the output gate's
copy and multiply; here all of it is two launches (keys split over blocks, each also writing its positions of the
new buffers, then a combine that applies the gate) and no mask. Both return None wherever they do not apply, so
the caller falls back to `mx.fast.scaled_dot_product_attention`. DELTASERVE_ATTENTION=mlx switches them off.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from kernels import gpu
from kernels.gpu import build_kernel, cuda_off, float_bits, read_source

ENV = "DELTASERVE_ATTENTION"  # "mlx": always MLX's own attention (for comparison)
TILE = 64  # queries (and keys) per tile; 4 warps of 16 query rows
THREADS = 128
DECODE_KEYS = 64  # keys one block of the split decode attention walks (16 a warp: a few memory round trips)
DECODE_THREADS = 128
DECODE_BODIES = {"attention_decode": (("q", "kn", "vn", "k", "v", "n", "wq", "wk"), ("po", "pm", "pl", "ko", "vo")),
                 "attention_combine": (("po", "pm", "pl", "qg"), ("out",))}
QK_ROWS = 8  # (token, head) rows a threadgroup of qk_norm_rope: one 32-lane group each
QK_NAMES = (("qg", "k", "wq", "wk", "pos"), ("qo", "ko"))  # its inputs, outputs


def shared_bytes(head_dim: int, itemsize: int = 2) -> int:
    """Dynamic shared memory of one block: the Q, K and V tiles, rows padded by 8 elements."""
    return 3 * TILE * (head_dim + 8) * itemsize


def unsupported(q: mx.array, k: mx.array, v: mx.array, scale: float) -> str | None:
    """Why the kernel cannot take this call (the caller uses MLX's attention), or None."""
    if off := kernels_off():
        return off
    if q.dtype not in (mx.bfloat16, mx.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} (the kernel takes bf16 / fp16)"
    D = q.shape[-1]
    if D % 16 or D > 256 or k.shape[-1] != D or v.shape[-1] != D:
        return f"head dims q {D} / k {k.shape[-1]} / v {v.shape[-1]} (equal, a multiple of 16, at most 256)"
    if q.shape[1] % k.shape[1] or k.shape[1] != v.shape[1]:
        return f"{q.shape[1]} query heads over {k.shape[1]} key / value heads"
    if abs(scale * D**0.5 - 1) > 1e-6:
        return f"scale {scale} (the kernel uses head_dim^-1/2)"
    if k.shape[2] < q.shape[2]:
        return "fewer keys than queries"
    if shared_bytes(D) > gpu.opt_in_shared_bytes():
        return f"{shared_bytes(D)} bytes of shared memory a block (this card allows {gpu.opt_in_shared_bytes()})"
    return None


def describe(dtype: mx.Dtype, n_heads: int, n_kv_heads: int, head_dim: int) -> str:
    """Which attention a causal prefill of this model runs here, for the start-up log."""
    q = mx.zeros((1, n_heads, 2, head_dim), dtype=dtype)
    kv = mx.zeros((1, n_kv_heads, 2, head_dim), dtype=dtype)
    why = unsupported(q, kv, kv, head_dim**-0.5)
    return "fused CUDA kernel" if why is None else f"MLX's ({why})"


@functools.cache
def _kernel(shared: int):
    return mx.fast.cuda_kernel(
        name="deltaserve_causal_attention", input_names=["q", "k", "v"], output_names=["out"],
        source=read_source("attention_cuda.body"), shared_memory=shared,
        header=read_source("helpers_cuda.h") + read_source("attention_cuda.h"))  # its 16-bit tiles are in the first


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array | None:
    """softmax(q k^T * scale, causal) v for q [B, Hq, T, D] against k, v [B, Hkv, L, D] (the T queries are
    the cache's last positions), as out [B, T, Hq, D]; None where `unsupported`."""
    if unsupported(q, k, v, scale) is not None:
        return None
    B, Hq, T, D = q.shape
    (out,) = _kernel(shared_bytes(D))(
        inputs=[q, k, v], output_shapes=[(B, T, Hq, D)], output_dtypes=[q.dtype],
        grid=(-(-T // TILE) * THREADS, Hq, B), threadgroup=(THREADS, 1, 1),
        template=[("DT", q.dtype), ("D", D), ("HQ", Hq), ("HKV", k.shape[1])])
    return out


@dataclass(frozen=True)
class QKNorm:
    """An attention layer's q / k RMSNorm weights [D] (one eps) and NeoX RoPE (rotary dims, base): what
    `qk_norm_rope` applies, for `decode_attention` to apply itself."""

    wq: mx.array
    wk: mx.array
    eps: float
    rotary_dim: int
    base: float

    def unsupported(self, D: int, dtype: mx.Dtype) -> str | None:
        """Why the kernels cannot apply these to rows of D elements of `dtype`, or None."""
        R, vpt = self.rotary_dim, D // 32
        half = R // 2
        if D % 32 or R % 2 or not 0 < R <= D or half % vpt or (half // vpt) & (half // vpt - 1):
            return f"rotary dims {R} of head dim {D} (rotary partners one xor shuffle apart)"
        if self.wq.shape != (D,) or self.wk.shape != (D,) or {self.wq.dtype, self.wk.dtype} != {dtype}:
            return f"norm weights {self.wq.shape} / {self.wk.shape} of {self.wq.dtype} / {self.wk.dtype}"
        return None

    def template(self) -> list[tuple[str, int]]:
        return [("R", self.rotary_dim), ("EPS", float_bits(self.eps)),
                ("LB", float_bits(float(np.log2(np.float32(self.base)))))]


def kernels_off() -> str | None:
    """Why no attention kernel of this module runs here (switched off, not an NVIDIA GPU), or None."""
    return cuda_off(ENV)


def decode_unsupported(q: mx.array, k: mx.array, v: mx.array, scale: float) -> str | None:
    """Why the decode kernels cannot take this call (the caller uses MLX's attention), or None."""
    return _decode_unsupported(q.shape[1], q.shape[2], q.shape[-1], q.dtype, k, v, scale)


def _decode_unsupported(Hq: int, T: int, D: int, dtype: mx.Dtype, k: mx.array, v: mx.array, scale: float) -> str | None:
    if off := kernels_off():
        return off
    if T != 1:
        return f"{T} queries (the kernels take one)"
    if k.dtype != dtype or v.dtype != dtype or not mx.issubdtype(dtype, mx.floating):
        return f"dtypes q {dtype} / k {k.dtype} / v {v.dtype}"
    if D % 32 or k.shape[-1] != D or v.shape[-1] != D:
        return f"head dims q {D} / k {k.shape[-1]} / v {v.shape[-1]} (equal, a multiple of 32)"
    if Hq % k.shape[1] or k.shape[1] != v.shape[1]:
        return f"{Hq} query heads over {k.shape[1]} key / value heads"
    if abs(scale * D**0.5 - 1) > 1e-6:
        return f"scale {scale} (the kernels use head_dim^-1/2)"
    return None


@functools.cache
def _decode_kernel(body: str):
    return build_kernel("cuda", body, f"{body}_cuda.body", *DECODE_BODIES[body])


def decode_attention(q: mx.array | None, k: mx.array, v: mx.array, k_cache: mx.array, v_cache: mx.array,
                     n_keys: mx.array, qg: mx.array, scale: float,
                     norm: QKNorm | None = None) -> tuple[mx.array, mx.array, mx.array] | None:
    """One decode token of Qwen3.5's gated attention on the compiled step's whole cache buffers: writes this token's
    key / value rows k, v [B, Hkv, 1, D] (either also as the projection gives it, [B, 1, Hkv * D]: one layout in
    memory at one token) at position n - 1 of k_cache, v_cache [B, Hkv, L, D] (n = n_keys, int32,
    one element, on the device: the positions filled after the write), then softmax(q kc[:n]^T * scale) vc[:n]
    for q [B, Hq, 1, D], times sigmoid of each head's gate (qg [B, 1, Hq * 2D]: each head's query, then its gate).
    With `norm`, q is None and k the raw key projection: the kernel takes each head's query from qg and applies
    the layer's q / k norms and RoPE at position n - 1 itself, as `qk_norm_rope` would (no launch for them).
    Returns (out [B, 1, Hq * D], the new k_cache, the new v_cache); None where `decode_unsupported` (the caller
    writes the cache and runs MLX's attention and gate)."""
    B, D, Hkv, L = qg.shape[0], k_cache.shape[-1], k_cache.shape[1], k_cache.shape[2]
    if norm is None:
        if q is None or decode_unsupported(q, k_cache, v_cache, scale) is not None or q.shape[0] != B:
            return None
        Hq = q.shape[1]
    else:
        Hq = qg.shape[-1] // (2 * D) if qg.ndim == 3 else 0
        if (not Hq or qg.shape[1] != 1 or _decode_unsupported(Hq, 1, D, qg.dtype, k_cache, v_cache, scale)
                or norm.unsupported(D, qg.dtype)):
            return None
        q = qg
    if (k.shape not in ((B, Hkv, 1, D), (B, 1, Hkv * D)) or v.shape not in ((B, Hkv, 1, D), (B, 1, Hkv * D))
            or k.dtype != q.dtype or v.dtype != q.dtype or qg.shape != (B, 1, Hq * 2 * D) or qg.dtype != q.dtype):
        return None
    S = -(-L // DECODE_KEYS)
    prep = [("PREP", 0), ("R", 0), ("EPS", 0), ("LB", 0)] if norm is None else [("PREP", 1), *norm.template()]
    wq, wk = (qg, qg) if norm is None else (norm.wq, norm.wk)  # unread without norm: any array
    po, pm, pl, k_cache, v_cache = _decode_kernel("attention_decode")(
        inputs=[q, k, v, k_cache, v_cache, n_keys.astype(mx.int32), wq, wk],
        output_shapes=[(B, Hq, S, D), (B, Hq, S), (B, Hq, S), k_cache.shape, v_cache.shape],
        output_dtypes=[mx.float32] * 3 + [q.dtype] * 2, grid=(S * DECODE_THREADS, Hq, B),
        threadgroup=(DECODE_THREADS, 1, 1),
        template=[("DT", q.dtype), ("D", D), ("HQ", Hq), ("HKV", Hkv), ("CH", DECODE_KEYS), ("NT", DECODE_THREADS),
                  *prep])
    (out,) = _decode_kernel("attention_combine")(
        inputs=[po, pm, pl, qg], output_shapes=[(B, 1, Hq * D)], output_dtypes=[q.dtype],
        grid=(Hq * DECODE_THREADS, B, 1), threadgroup=(DECODE_THREADS, 1, 1),
        template=[("DT", q.dtype), ("D", D), ("HQ", Hq), ("NT", DECODE_THREADS)])
    return out, k_cache, v_cache


@functools.cache
def _qk_kernel():
    return build_kernel("cuda", "qk_norm_rope", "qk_norm_rope_cuda.body", *QK_NAMES)


def qk_norm_rope(qg: mx.array, k: mx.array, norm: QKNorm, position: int | mx.array, n_heads: int,
                 n_kv_heads: int) -> tuple[mx.array, mx.array] | None:
    """An attention layer's q / k from its projections: per head RMSNorm (weights norm.wq / norm.wk [D]) then NeoX
    RoPE on the first `norm.rotary_dim` dims from `position` (an int, or an int32 device scalar), as MLX's rms_norm
    and rope compute them; qg [B, T, n_heads * 2D] holds each head's query then its gate (not read), k [B, T,
    n_kv_heads * D]. Returns (q [B, n_heads, T, D], k [B, n_kv_heads, T, D]), one launch on NVIDIA GPUs; None
    elsewhere or for shapes it does not take (the caller runs MLX's ops)."""
    if kernels_off() is not None:
        return None
    D = norm.wq.shape[0]
    if (norm.unsupported(D, qg.dtype) or qg.ndim != 3 or qg.shape[-1] != n_heads * 2 * D
            or k.shape != (*qg.shape[:2], n_kv_heads * D) or k.dtype != qg.dtype
            or not mx.issubdtype(qg.dtype, mx.floating) or qg.size == 0):
        return None
    B, T, _ = qg.shape
    pos = position.reshape(1) if isinstance(position, mx.array) else mx.array([position])
    rows = B * T * (n_heads + n_kv_heads)
    qo, ko = _qk_kernel()(
        inputs=[qg, k, norm.wq, norm.wk, pos.astype(mx.int32)],
        output_shapes=[(B, n_heads, T, D), (B, n_kv_heads, T, D)],
        output_dtypes=[qg.dtype, qg.dtype], grid=(-(-rows // QK_ROWS) * 32 * QK_ROWS, 1, 1),
        threadgroup=(32 * QK_ROWS, 1, 1),
        template=[("OutT", qg.dtype), ("D", D), ("HQ", n_heads), ("HKV", n_kv_heads), ("RPG", QK_ROWS),
                  *norm.template()])
    return qo, ko
