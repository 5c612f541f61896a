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


def chunked(q, k, v, g, beta, state, C):
    """The chunk algebra of DESIGN.md section 2.2 in float64, stage by stage, per (batch, value head).

    Returns a dict of every stage ([B, Hv, N, ...] arrays; O is the per-chunk output) plus `out`
    [B, T, Hv, Dv] and the final `state` [B, Hv, Dv, Dk].
    """
    q, k, v, g, beta = (np.asarray(x, dtype=np.float64) for x in (q, k, v, g, beta))
    B, T, Hk, Dk = k.shape
    Hv, Dv = v.shape[2:]
    N = -(-T // C)
    pad = N * C - T

    def chunks(x):  # [T, ...] -> [N, C, ...] with zero padding (beta = 0 and g = 0 make padding exact)
        return np.concatenate([x, np.zeros((pad, *x.shape[1:]))]).reshape(N, C, *x.shape[1:])

    names = ("G", "D", "Tinv", "U", "W", "R", "starts", "O")
    st = {n: [[None] * Hv for _ in range(B)] for n in names}
    final = np.zeros((B, Hv, Dk, Dv))
    for b in range(B):
        for h in range(Hv):
            kh = h * Hk // Hv
            Q, K, V, gb, bb = chunks(q[b, :, kh]), chunks(k[b, :, kh]), chunks(v[b, :, h]), chunks(g[b, :, h]), chunks(
                beta[b, :, h]
            )
            S = np.asarray(state[b, h], dtype=np.float64).T.copy()  # [Dk, Dv]
            res = {n: [] for n in names}
            for n in range(N):
                G = np.cumsum(gb[n])
                with np.errstate(over="ignore"):
                    D = np.where(np.tril(np.ones((C, C))) > 0, np.exp(np.minimum(G[:, None] - G[None, :], 0)), 0.0)
                A = np.tril(bb[n][:, None] * (K[n] @ K[n].T) * D, -1)
                Tinv = np.eye(C)
                for r in range(1, C):  # forward substitution: T_r = e_r - A_r T
                    Tinv[r] = np.eye(C)[r] - A[r] @ Tinv
                U = Tinv @ (bb[n][:, None] * V[n])
                W = Tinv @ ((bb[n] * np.exp(G))[:, None] * K[n])
                R = U - W @ S
                out = np.exp(G)[:, None] * (Q[n] @ S) + ((Q[n] @ K[n].T) * D) @ R
                for name, val in zip(names, (G, D, Tinv, U, W, R, S.copy(), out), strict=True):
                    res[name].append(val)
                S = np.exp(G[-1]) * S + (np.exp(G[-1] - G)[:, None] * K[n]).T @ R
            for name in names:
                st[name][b][h] = np.stack(res[name])
            final[b, h] = S
    result = {n: np.array(st[n]) for n in names}
    result["out"] = result["O"].reshape(B, Hv, N * C, Dv)[:, :, :T].transpose(0, 2, 1, 3)
    result["state"] = final.transpose(0, 1, 3, 2)
    return result


def prologue(qkv, conv_state, conv_w, Hk, Dk, Hv):
    """What a Qwen3.5 GDN layer's core reads, in float64, from the layer's definition (transformers'
    Qwen3_5GatedDeltaNet): depthwise causal conv over [cached K-1 rows, T new rows], SiLU, split into q | k | v,
    l2-norm q and k (eps 1e-6 on the sum), q / sqrt(Dk). qkv [B, T, CD]; conv_state [B, K-1, CD]; conv_w
    [CD, K, 1]. Returns (q, k [B, T, Hk, Dk], v [B, T, Hv, Dv], the last K-1 rows of the window)."""
    qkv, conv_state, conv_w = (np.asarray(x, dtype=np.float64) for x in (qkv, conv_state, conv_w))
    B, T, CD = qkv.shape
    K = conv_w.shape[1]
    window = np.concatenate([conv_state, qkv], axis=1)  # [B, K-1+T, CD]
    y = sum(window[:, j : j + T] * conv_w[:, j, 0] for j in range(K))
    y = y / (1 + np.exp(-y))
    q = y[..., : Hk * Dk].reshape(B, T, Hk, Dk)
    k = y[..., Hk * Dk : 2 * Hk * Dk].reshape(B, T, Hk, Dk)
    v = y[..., 2 * Hk * Dk :].reshape(B, T, Hv, -1)
    q = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6) / np.sqrt(Dk)
    k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6)
    return q, k, v, window[:, window.shape[1] - (K - 1) :]


def gated_norm(o, z, w, eps):
    """Qwen3.5's gated RMSNorm of a GDN output in float64: w * o / sqrt(mean(o^2) + eps) * silu(z) per head."""
    o, z, w = (np.asarray(x, dtype=np.float64) for x in (o, z, w))
    return w * o / np.sqrt((o * o).mean(-1, keepdims=True) + eps) * z / (1 + np.exp(-z))


def decode_step(qkv, conv_state, conv_w, a, b, a_log, dt_bias, state, z, norm_w, Hk, Dk, eps=1e-6):
    """One decode token of a Qwen3.5 GDN layer in float64: `prologue` of one row, g = -exp(A_log)
    softplus(a + dt_bias), beta = sigmoid(b), the recurrence, then `gated_norm` of its output. qkv [B, 1, CD];
    conv_state [B, K-1, CD]; conv_w [CD, K, 1]; a, b [B, 1, Hv]; state [B, Hv, Dv, Dk]; z [B, 1, Hv, Dv]; norm_w
    [Dv]. Returns (normed output [B, 1, Hv, Dv], conv_state', state')."""
    a, b, a_log, dt_bias = (np.asarray(x, dtype=np.float64) for x in (a, b, a_log, dt_bias))
    Hv = a.shape[-1]
    q, k, v, conv = prologue(qkv, conv_state, conv_w, Hk, Dk, Hv)
    x = a + dt_bias
    g = -np.exp(a_log) * np.where(x > 20, x, np.logaddexp(x, 0))
    beta = 1 / (1 + np.exp(-b))
    out, new_state = serial(q, k, v, g, beta, state)
    return gated_norm(out, z, norm_w, eps), conv, new_state
