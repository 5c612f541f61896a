"""The one input factory for GDN-core tests: normalised q/k, realistic gates, optional initial state."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

# log-decay regimes: from real-looking A_log / dt_bias draws, strong (per-token decay down to ~1e-4),
# weak (decay ~1), none (g = 0) and underflowing (exp(g) == 0 in fp32).
DECAYS = ("real", "strong", "weak", "zero", "underflow")


def _log_decay(rng, shape, decay: str) -> np.ndarray:
    if decay == "real":
        a_log = np.log(rng.uniform(0.5, 16, shape[-1]))
        x = rng.normal(size=shape) + rng.normal(size=shape[-1])
        return -np.exp(a_log) * np.logaddexp(0, x)
    if decay == "strong":
        return -rng.uniform(4.0, 9.2, shape)  # exp(-9.2) ~ 1e-4
    if decay == "weak":
        return -rng.uniform(0.0, 1e-3, shape)
    if decay == "zero":
        return np.zeros(shape)
    return -rng.uniform(100.0, 200.0, shape)


def make_gdn_inputs(B=1, T=16, Hk=2, Hv=4, Dk=32, Dv=16, dtype=mx.float32, decay="real", seed=0, state=True):
    """Returns numpy float64 arrays (q, k, v, g, beta, state) and the matching MLX arrays."""
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(B, T, Hk, Dk)), rng.normal(size=(B, T, Hk, Dk))
    q = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6) / np.sqrt(Dk)
    k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6)
    v = rng.normal(size=(B, T, Hv, Dv))
    g = _log_decay(rng, (B, T, Hv), decay)
    beta = 1 / (1 + np.exp(-rng.normal(size=(B, T, Hv))))
    s0 = rng.normal(size=(B, Hv, Dv, Dk)) * 0.5 if state else np.zeros((B, Hv, Dv, Dk))
    # inputs in `dtype` are the truth: round them there first so the oracle sees the same values
    mlx = [mx.array(x.astype(np.float32)).astype(dtype) for x in (q, k, v)]
    q, k, v = (np.array(x.astype(mx.float32)).astype(np.float64) for x in mlx)
    mlx += [mx.array(x.astype(np.float32)) for x in (g, beta, s0)]
    g, beta, s0 = (np.array(x).astype(np.float64) for x in mlx[3:])
    return (q, k, v, g, beta, s0), tuple(mlx)


def prologue_inputs(B=1, T=16, Hk=2, Hv=4, Dk=64, Dv=32, K=4, seed=0, dtype=mx.float32, empty=False):
    """float64 arrays (qkv [B, T, CD], conv_state [B, K-1, CD], conv_w [CD, K, 1]) and MLX arrays in `dtype`
    (the model's projections and conv weight), rounded first so both see the same."""
    rng = np.random.default_rng(seed)
    CD = 2 * Hk * Dk + Hv * Dv
    x = [rng.normal(size=(B, T, CD)), rng.normal(size=(B, K - 1, CD)) * (0 if empty else 1),
         rng.normal(size=(CD, K, 1)) * 0.5]
    arrays = [mx.array(a.astype(np.float32)).astype(dtype) for a in x]
    return [np.array(a.astype(mx.float32)).astype(np.float64) for a in arrays], arrays


DECODE_EPS = 1e-6  # the gated norm's eps in the decode inputs


def decode_inputs(B=1, Hk=2, Hv=4, Dk=64, Dv=32, K=4, seed=0, dtype=mx.float32, empty=False):
    """float64 arrays (qkv, conv_state, conv_w, a, b, a_log, dt_bias, state, z, norm_w) and MLX arrays in `dtype`
    (the model's projections and weights; gates' parameters and the state fp32), rounded first so both see the
    same. z [B, 1, Hv, Dv] and norm_w [Dv] are the output norm's gate and weight (eps DECODE_EPS)."""
    ref, arrays = prologue_inputs(B, 1, Hk, Hv, Dk, Dv, K, seed, dtype, empty)
    rng = np.random.default_rng(seed + 1)
    x = [rng.normal(size=(B, 1, Hv)), rng.normal(size=(B, 1, Hv)),
         np.log(rng.uniform(0.5, 16, Hv)), rng.normal(size=Hv), rng.normal(size=(B, Hv, Dv, Dk)) * 0.5,
         rng.normal(size=(B, 1, Hv, Dv)) * 2, rng.uniform(0.5, 1.5, Dv)]
    arrays += [mx.array(a.astype(np.float32)).astype(mx.float32 if 2 <= i <= 4 else dtype) for i, a in enumerate(x)]
    ref += [np.array(a.astype(mx.float32)).astype(np.float64) for a in arrays[3:]]
    return ref, arrays
