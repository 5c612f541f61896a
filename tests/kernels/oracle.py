"""Float64 NumPy oracle of the GDN recurrence, written independently of the MLX code.

HF orientation per head: S is [Dk, Dv]; S <- a S; u = beta (v - S^T k); S <- S + k u^T; o = S^T q.
Returned states are transposed to the engine's [B, Hv, Dv, Dk] layout.
"""

from __future__ import annotations

import numpy as np


def serial(q, k, v, g, beta, state):
    """q, k [B,T,Hk,Dk]; v [B,T,Hv,Dv]; g, beta [B,T,Hv]; state [B,Hv,Dv,Dk] -> (o [B,T,Hv,Dv], state)."""
    q, k, v, g, beta = (np.asarray(x, dtype=np.float64) for x in (q, k, v, g, beta))
    B, T, Hk, _ = k.shape
    Hv = v.shape[2]
    S = np.asarray(state, dtype=np.float64).transpose(0, 1, 3, 2).copy()  # -> [B, Hv, Dk, Dv]
    out = np.zeros(v.shape)
    for b in range(B):
        for h in range(Hv):
            kh = h * Hk // Hv  # value head h reads key head h // (Hv / Hk)
            for t in range(T):
                S[b, h] *= np.exp(g[b, t, h])
                u = beta[b, t, h] * (v[b, t, h] - S[b, h].T @ k[b, t, kh])
                S[b, h] += np.outer(k[b, t, kh], u)
                out[b, t, h] = S[b, h].T @ q[b, t, kh]
    return out, S.transpose(0, 1, 3, 2)
