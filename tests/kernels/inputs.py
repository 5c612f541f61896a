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
