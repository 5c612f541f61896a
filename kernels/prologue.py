"""What feeds the GDN core in a Qwen3.5 GDN layer, as MLX ops: the causal depthwise conv + SiLU over the
concatenated q | k | v projections, the q / k l2-norm, and the fp32 decay and beta. The reference of the fused
kernels: `kernels.gated_delta_prologue` (conv, SiLU, split and norms of a prefill step) and
`kernels.gated_delta_decode` (all of it and the core's serial step, for one decode token)."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn


def causal_conv_silu(qkv: mx.array, conv_state: mx.array | None, weight: mx.array) -> tuple[mx.array, mx.array]:
    """SiLU(depthwise conv) of qkv [B, T, C] continuing from the cached K-1 pre-conv rows [B, K-1, C] (None:
    zeros); weight [C, K, 1] (nn.Conv1d's layout, no flip). Returns (outputs [B, T, C], the new cache rows)."""
    B, _, C = qkv.shape
    K = weight.shape[1]
    if conv_state is None:
        conv_state = mx.zeros((B, K - 1, C), dtype=qkv.dtype)
    window = mx.concatenate([conv_state.astype(qkv.dtype), qkv], axis=1)
    out = mx.conv1d(window, weight, groups=C)  # "valid": exactly T outputs
    return nn.silu(out), window[:, -(K - 1) :]


def l2_normalize(x: mx.array, eps: float = 1e-6, scale: float = 1.0) -> mx.array:
    """scale * x * rsqrt(sum(x^2) + eps) over the last axis (eps on the sum, as transformers and fla), as one
    fused rms_norm: mean(x^2) + eps / D = (sum(x^2) + eps) / D, so rms_norm(x) = sqrt(D) * l2_normalize(x)."""
    D = x.shape[-1]
    return (scale * D**-0.5) * mx.fast.rms_norm(x, None, eps / D)


@partial(mx.compile, shapeless=True)
def decay_and_beta(a: mx.array, b: mx.array, a_log: mx.array, dt_bias: mx.array) -> tuple[mx.array, mx.array]:
    """fp32 log decay g = -exp(A_log) * softplus(a + dt_bias) (softplus thresholded at 20, g floored at -88:
    exp(-88) is already ~0) and beta = sigmoid(b); one fused kernel where MLX compiles."""
    x = a.astype(mx.float32) + dt_bias.astype(mx.float32)
    softplus = mx.where(x > 20.0, x, mx.logaddexp(x, 0.0))
    g = -mx.exp(a_log.astype(mx.float32)) * softplus
    return mx.maximum(g, -88.0), mx.sigmoid(b.astype(mx.float32))


def split_heads(mixed: mx.array, hk: int, hv: int, dk: int, dv: int) -> tuple[mx.array, mx.array, mx.array]:
    """The conv outputs [B, T, 2 Hk Dk + Hv Dv] as q, k [B, T, Hk, Dk] (l2-normed in fp32, q scaled by Dk^-1/2,
    then in the outputs' dtype) and v [B, T, Hv, Dv] (as computed)."""
    B, T, _ = mixed.shape
    q, k, v = mx.split(mixed, [hk * dk, 2 * hk * dk], axis=-1)
    # normed in fp32, then in the model's dtype as transformers and fla keep them (the GDN kernels read 16-bit q / k
    # exactly on tensor cores, and half the bytes); q is scaled here only
    q = l2_normalize(q.reshape(B, T, hk, dk).astype(mx.float32), scale=dk**-0.5).astype(mixed.dtype)
    k = l2_normalize(k.reshape(B, T, hk, dk).astype(mx.float32)).astype(mixed.dtype)
    return q, k, v.reshape(B, T, hv, dv)


def conv_split(qkv: mx.array, conv_state: mx.array | None, weight: mx.array, hk: int, hv: int, dk: int
               ) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """`causal_conv_silu` then `split_heads`: (q, k, v, the new conv cache rows) of a multi-token step."""
    mixed, conv_state = causal_conv_silu(qkv, conv_state, weight)
    return *split_heads(mixed, hk, hv, dk, (qkv.shape[-1] - 2 * hk * dk) // hv), conv_state
