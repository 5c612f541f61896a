"""Serial Gated DeltaNet recurrence in MLX ops: the reference every faster path is gated against.

Per value head, MLX orientation (state H is [Dv, Dk]), one token at a time:
    H <- exp(g) * H;   u = beta * (v - H k);   H <- H + u k^T;   o = H q
The decay is applied first and the output reads the updated state (HF, fla and mlx-lm agree).
"""

from __future__ import annotations

import mlx.core as mx


@mx.compile
def _step(
    state: mx.array, q: mx.array, k: mx.array, v: mx.array, decay: mx.array, beta: mx.array
) -> tuple[mx.array, mx.array]:
    """One token. state [B, Hv, Dv, Dk]; q, k [B, Hv, Dk]; v [B, Hv, Dv]; decay, beta [B, Hv] (all fp32)."""
    state = state * decay[..., None, None]
    predicted = (state @ k[..., None])[..., 0]  # [B, Hv, Dv]
    delta = beta[..., None] * (v - predicted)
    state = state + delta[..., None] * k[..., None, :]
    out = (state @ q[..., None])[..., 0]  # [B, Hv, Dv]
    return out, state


def gated_delta_serial(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    g: mx.array,
    beta: mx.array,
    state: mx.array,
    *,
    chunk_size: int = 64,
) -> tuple[mx.array, mx.array]:
    """Token-by-token recurrence (`chunk_size` is accepted for a uniform signature and ignored).

    q, k [B, T, Hk, Dk] (normalised, q scaled); v [B, T, Hv, Dv]; g (log decay) and beta [B, T, Hv] fp32;
    state [B, Hv, Dv, Dk] fp32. Returns (out [B, T, Hv, Dv] in v's dtype, as every path does, and as
    transformers' bf16 model rounds its core output; new state fp32). The recurrence itself runs in fp32.
    """
    groups = v.shape[2] // k.shape[2]
    if groups > 1:  # value head h reads key head h // groups
        q, k = mx.repeat(q, groups, axis=2), mx.repeat(k, groups, axis=2)
    out_dtype = v.dtype
    q, k, v = (x.astype(mx.float32) for x in (q, k, v))
    decay = mx.exp(g.astype(mx.float32))
    beta = beta.astype(mx.float32)
    outs = []
    for t in range(v.shape[1]):
        o, state = _step(state, q[:, t], k[:, t], v[:, t], decay[:, t], beta[:, t])
        outs.append(o)
    out = mx.stack(outs, axis=1) if outs else mx.zeros(v.shape, mx.float32)
    return out.astype(out_dtype), state
