"""Norms fused with their neighbours, one kernel each on GPUs instead of two MLX launches (decode is bound by
launches: ~400 a token on CUDA). `add_rms_norm`: a residual add and the RMSNorm that reads its sum;
`gated_rms_norm`: the GDN output's RMSNorm and its SiLU gate. Each computes what the MLX ops compute; elsewhere
(the CPU, shapes a kernel does not take) those ops run.
"""

from __future__ import annotations

import functools
import os

import mlx.core as mx

from kernels.gpu import build_kernel, float_bits, gpu_backend

ENV = "DELTASERVE_NORM"  # "mlx": always MLX's two ops (for comparison)
THREADS = 256
MAX_PER_THREAD = 16  # row elements a thread holds: D <= 4096 (add_rms_norm), D <= 512 (gated_rms_norm)
GATED_ROWS = 8  # head rows (32-thread groups) per threadgroup of gated_rms_norm
BODIES = {"add_rms_norm": (("x", "r", "w"), ("h", "y")), "gated_rms_norm": (("x", "z", "w"), ("y",))}


def _backend() -> str | None:
    return None if os.environ.get(ENV, "").strip().lower() == "mlx" else gpu_backend()


@functools.cache
def _kernel(backend: str, body: str = "add_rms_norm"):
    return build_kernel(backend, body, f"{body}.body", *BODIES[body])


def add_rms_norm(x: mx.array, r: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    """(h, y) = (x + r, rms_norm(x + r) * weight) over the last axis."""
    backend = _backend()
    D = x.shape[-1]
    if (backend is None or x.dtype != r.dtype or weight.dtype != x.dtype or x.shape != r.shape
            or weight.shape != (D,) or D > THREADS * MAX_PER_THREAD or x.size == 0):
        h = x + r
        return h, mx.fast.rms_norm(h, weight, eps)
    rows = x.size // D
    h, y = _kernel(backend)(
        inputs=[x, r, weight], output_shapes=[x.shape, x.shape], output_dtypes=[x.dtype, x.dtype],
        grid=(rows * THREADS, 1, 1), threadgroup=(THREADS, 1, 1),
        template=[("OutT", x.dtype), ("D", D), ("NT", THREADS), ("EPS", float_bits(eps))])
    return h, y


@functools.partial(mx.compile, shapeless=True)
def gated_tail(normed: mx.array, weight: mx.array, gate: mx.array) -> mx.array:
    """weight * normed * silu(gate) in fp32, back to normed's dtype: one fused kernel where MLX compiles."""
    g = gate.astype(mx.float32)
    return (weight * normed * (g * mx.sigmoid(g))).astype(normed.dtype)


def gated_rms_norm(x: mx.array, gate: mx.array, weight: mx.array, eps: float, gate_offset: int = 0) -> mx.array:
    """Qwen3.5's gated norm of the GDN output, `gated_tail(mx.fast.rms_norm(x, None, eps), weight, gate)` for x
    [B, T, H, D]; the gate either as x, or flat [B, T, W] with its H * D columns from `gate_offset` (W > H * D:
    the layer's fused projection) and then the output flat [B, T, H * D]. One kernel on GPUs, which reads the
    gate where it lies (a column slice would be copied for it first)."""
    backend = _backend()
    D = x.shape[-1]
    HD = x.shape[-2] * D if x.ndim > 1 else D
    as_x = gate.shape == x.shape
    if not (as_x and gate_offset == 0) and (gate.shape[:-1] != x.shape[:-2]
                                            or not 0 <= gate_offset <= gate.shape[-1] - HD):
        raise ValueError(f"gate shape {gate.shape} (offset {gate_offset}) for x {x.shape}")
    out_shape = x.shape if as_x else (*x.shape[:-2], HD)
    if backend is None or x.ndim != 4 or weight.shape != (D,) or D > 32 * MAX_PER_THREAD or x.size == 0:
        if not as_x and gate.shape[-1] != HD:
            gate = gate[..., gate_offset : gate_offset + HD]
        return gated_tail(mx.fast.rms_norm(x, None, eps), weight, gate.reshape(x.shape)).reshape(out_shape)
    rows = x.size // D
    (y,) = _kernel(backend, "gated_rms_norm")(
        inputs=[x, gate, weight], output_shapes=[out_shape], output_dtypes=[x.dtype],
        grid=(-(-rows // GATED_ROWS) * 32 * GATED_ROWS, 1, 1), threadgroup=(32 * GATED_ROWS, 1, 1),
        template=[("OutT", x.dtype), ("WT", weight.dtype), ("D", D), ("RPG", GATED_ROWS), ("EPS", float_bits(eps)),
                  ("ZP", HD if as_x else gate.shape[-1]), ("ZO", gate_offset)])
    return y
