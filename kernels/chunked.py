"""Chunkwise-parallel Gated DeltaNet in MLX ops (any backend, including the Linux CPU wheel).

Exact algebra (kernels/README.md): per chunk of C tokens, with G the chunk-local cumsum of log decays and
D_rs = exp(G_r - G_s) (s <= r),
    A = strict_lower(beta_r (k_r . k_s) D_rs),  T = (I + A)^-1  (formed as D * (I + A0)^-1)
    U = T diag(beta) V,   W = T diag(beta exp(G)) K,   K~_r = exp(G_C - G_r) k_r
then sequentially over chunks, with the state S [Dk, Dv]:
    R = U - W S,   S <- exp(G_C) S + K~^T R
and, for all chunks at once, O = exp(G) (Q S_start) + (Q K^T * D) R.
Everything is fp32. Tensors are laid out chunk-major [N, B, Hk, m, C, .] with Hv = m * Hk: slicing chunk n
is a contiguous view, and key-head quantities ([N, B, Hk, 1, C, .]) broadcast over the m value heads that
read them without materialising repeats. Inside, the state is kept in HF orientation S = H^T [Dk, Dv], so
no matmul needs a transposed operand.
"""

from __future__ import annotations

import mlx.core as mx

CHUNK_SIZES = (16, 32, 64, 128)
BLOCK = 16  # diagonal blocks inverted by row substitution, then merged pairwise
LOG_DECAY_FLOOR = -88.0  # exp(-88) ~ 6e-39 loses nothing, and keeps -inf - -inf = NaN out of G_r - G_s
# Decay factors below exp(-40) ~ 4e-18 are set to exactly 0: far below fp32 resolution of the O(1) terms
# they are added to, and it keeps subnormal floats out of the matmuls (2x slower on x86 CPUs when present).
EXP_FLUSH = -40.0


def decay_exp(x: mx.array) -> mx.array:
    """exp(x) for log-decay arguments x <= 0, flushed to exactly 0 below exp(EXP_FLUSH)."""
    return mx.exp(mx.where(x < EXP_FLUSH, -mx.inf, x))


def to_chunks(x: mx.array, groups: int, chunk_size: int) -> mx.array:
    """[B, T, Hk * groups, ...] -> fp32 [N, B, Hk, groups, C, ...], T right-padded with zeros to N * C.

    Zero padding is exact for every input: q = k = v = 0, beta = 0 and g = 0 (decay 1) are no-ops.
    """
    B, T, H = x.shape[:3]
    rest = x.shape[3:]
    pad = -T % chunk_size
    x = x.astype(mx.float32).reshape(B, T, H // groups, groups, *rest)
    if pad:
        x = mx.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(B, (T + pad) // chunk_size, chunk_size, H // groups, groups, *rest)
    return mx.contiguous(x.transpose(1, 0, 3, 4, 2, *range(5, x.ndim)))


def from_chunks(o: mx.array, T: int) -> mx.array:
    """[N, B, Hk, m, C, Dv] -> [B, T, Hk * m, Dv] (padding dropped)."""
    N, B, Hk, m, C, Dv = o.shape
    return o.transpose(1, 0, 4, 2, 3, 5).reshape(B, N * C, Hk * m, Dv)[:, :T]


def gate_cumsum(g: mx.array) -> mx.array:
    """G_r = g_1 + ... + g_r within each chunk (chunk-local keeps exp arguments small). [..., N, C]."""
    return mx.cumsum(mx.maximum(g, LOG_DECAY_FLOOR), axis=-1)


def decay_matrix(G: mx.array) -> mx.array:
    """D_rs = exp(G_r - G_s) for s <= r, else 0. [..., C] -> [..., C, C].

    exp is costly on CPUs, so only the 16x16 diagonal blocks take C*16 of them; a row block i > 0 left of its
    diagonal factors through e, the last index of block i-1: exp(G_r - G_e) * exp(G_e - G_s), both
    arguments <= 0, so nothing overflows (ratios exp(G_r) / exp(G_s) would give 0/0 under strong decay).
    """
    C = G.shape[-1]
    b, nb = min(C, BLOCK), max(C // BLOCK, 1)
    causal = mx.tril(mx.ones((b, b), dtype=mx.bool_))
    rows = []
    for i in range(nb):
        Gi = G[..., i * b : (i + 1) * b]
        parts = []
        if i:
            Ge = G[..., i * b - 1 : i * b]
            parts.append(decay_exp(Gi - Ge)[..., :, None] * decay_exp(Ge - G[..., : i * b])[..., None, :])
        parts.append(decay_exp(mx.where(causal, Gi[..., :, None] - Gi[..., None, :], -mx.inf)))
        if i + 1 < nb:
            parts.append(mx.zeros((*G.shape[:-1], b, C - (i + 1) * b), dtype=mx.float32))
        rows.append(mx.concatenate(parts, axis=-1))
    return mx.concatenate(rows, axis=-2)


def invert_unit_lower(A: mx.array) -> mx.array:
    """(I + A)^-1 for strictly lower-triangular A [..., C, C], by forward substitution (never by Neumann
    series / repeated squaring, unstable in fp32 from C = 32). On the CPU stream LAPACK's triangular inverse
    does it fastest; `mx.linalg` runs nowhere else, so GPUs use `invert_by_substitution`."""
    if mx.default_device() == mx.cpu:
        return mx.linalg.tri_inv(A + mx.eye(A.shape[-1], dtype=A.dtype), upper=False)
    return invert_by_substitution(A)


def invert_by_substitution(A: mx.array) -> mx.array:
    """(I + A)^-1 with ordinary ops: 16x16 diagonal blocks row by row (T_r = e_r - A_r T, which reads only
    finished rows), then pairwise merges [[T0, 0], [-T1 A10 T0, T1]] up to C."""
    C = A.shape[-1]
    b = min(C, BLOCK)
    blocks = mx.stack([A[..., i * b : (i + 1) * b, i * b : (i + 1) * b] for i in range(C // b)], axis=-3)
    T = mx.broadcast_to(mx.eye(b), blocks.shape)
    for r in range(1, b):
        T[..., r : r + 1, :] = T[..., r : r + 1, :] - blocks[..., r : r + 1, :] @ T
    while T.shape[-3] > 1:
        s, n = T.shape[-1], T.shape[-3] // 2
        lower = mx.stack([A[..., (2 * i + 1) * s : (2 * i + 2) * s, 2 * i * s : (2 * i + 1) * s] for i in range(n)], -3)
        T0, T1 = T[..., 0::2, :, :], T[..., 1::2, :, :]
        top = mx.concatenate([T0, mx.zeros_like(T0)], axis=-1)
        bottom = mx.concatenate([-(T1 @ lower @ T0), T1], axis=-1)
        T = mx.concatenate([top, bottom], axis=-2)
    return T[..., 0, :, :]


def solve_wy(k: mx.array, v: mx.array, beta: mx.array, G: mx.array, D: mx.array) -> tuple[mx.array, mx.array]:
    """Intra-chunk WY form: U = T diag(beta) V [.., C, Dv] and W = T diag(beta exp(G)) K [.., C, Dk].

    T = (I + A)^-1 is formed from the decay-free inverse T0 = (I + A0)^-1, A0 = strict_lower(beta_r k_r.k_s):
    since A = diag(e^G) A0 diag(e^-G), T = D * T0 elementwise and W = diag(e^G) T0 diag(beta) K.
    T0 has O(1) entries, so no product of two tiny decays (a subnormal, 2x slower on CPUs) is ever formed.
    """
    C = k.shape[-2]
    strict = mx.tril(mx.ones((C, C), dtype=mx.bool_), k=-1)
    T0 = invert_unit_lower(mx.where(strict, beta[..., :, None] * (k @ k.swapaxes(-1, -2)), 0.0))
    U = (D * T0) @ (beta[..., None] * v)
    W = decay_exp(G)[..., None] * (T0 @ (beta[..., None] * k))
    return U, W


def chunk_states(
    U: mx.array, W: mx.array, k: mx.array, G: mx.array, S: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    """The only sequential stage, over chunks n: R_n = U_n - W_n S_n;  S_{n+1} = exp(G_C) S_n + K~_n^T R_n.

    S [B, Hk, m, Dk, Dv] (HF orientation). Returns (R [N, .., C, Dv], chunk-start states [N, .., Dk, Dv],
    final state).
    """
    G_last = G[..., -1:]
    k_tilde = decay_exp(G_last - G)[..., None] * k  # [N, .., C, Dk]: decay from each token to the chunk end
    decay_last = decay_exp(G_last)[..., None]  # [N, .., 1, 1]
    R, starts = [], []
    for n in range(U.shape[0]):
        starts.append(S)
        R.append(U[n] - W[n] @ S)
        S = decay_last[n] * S + k_tilde[n].swapaxes(-1, -2) @ R[-1]  # BLAS reads the transposed view as is
    return mx.stack(R), mx.stack(starts), S


def chunk_outputs(q: mx.array, k: mx.array, G: mx.array, D: mx.array, starts: mx.array, R: mx.array) -> mx.array:
    """O = exp(G) (Q S_start) + ((Q K^T) * D) R for every chunk at once; D includes the diagonal."""
    inter = decay_exp(G)[..., None] * (q @ starts)
    intra = ((q @ k.swapaxes(-1, -2)) * D) @ R
    return inter + intra


def gated_delta_chunked(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    g: mx.array,
    beta: mx.array,
    state: mx.array,
    *,
    chunk_size: int = 64,
) -> tuple[mx.array, mx.array]:
    """Same contract as `gated_delta_serial`; state [B, Hv, Dv, Dk] fp32, any T >= 1."""
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")
    B, T, Hk, Dk = k.shape
    Hv, Dv = v.shape[2:]
    m, out_dtype = Hv // Hk, v.dtype
    q, k = to_chunks(q, 1, chunk_size), to_chunks(k, 1, chunk_size)
    v, g, beta = (to_chunks(x, m, chunk_size) for x in (v, g, beta))
    G = gate_cumsum(g)
    D = decay_matrix(G)
    U, W = solve_wy(k, v, beta, G, D)
    S0 = state.astype(mx.float32).reshape(B, Hk, m, Dv, Dk).swapaxes(-1, -2)
    R, starts, final = chunk_states(U, W, k, G, S0)
    out = chunk_outputs(q, k, G, D, starts, R)
    return from_chunks(out, T).astype(out_dtype), final.swapaxes(-1, -2).reshape(B, Hv, Dv, Dk)
