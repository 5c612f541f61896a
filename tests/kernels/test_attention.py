"""The fused causal attention kernel (kernels/attention.py): against a float64 NumPy oracle and MLX's own attention
on an NVIDIA GPU; its fallback rule everywhere (on the CPU it never runs)."""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import pytest

from kernels import attention
from tests.numerics import assert_close_to_scale

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
gpu_only = pytest.mark.skipif(not ON_CUDA, reason="the kernel runs on NVIDIA GPUs")


def oracle(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64 causal attention, queries at the last T of L positions; out [B, T, Hq, D]."""
    B, Hq, T, D = q.shape
    L, rep = k.shape[2], Hq // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("bhtd,bhld->bhtl", q, k) / np.sqrt(D)
    visible = np.arange(L)[None, :] <= (L - T + np.arange(T))[:, None]
    s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhtl,bhld->bthd", p, v)


def inputs(B, Hq, Hkv, T, L, D, dtype, seed):
    rng = np.random.default_rng(seed)
    # q k^T / sqrt(D) of order a few: peaked and flat rows both occur
    q = rng.normal(size=(B, Hq, T, D)) * 1.5
    k = rng.normal(size=(B, Hkv, L, D))
    v = rng.normal(size=(B, Hkv, L, D))
    as_mx = [mx.array(x.astype(np.float32)).astype(dtype) for x in (q, k, v)]
    exact = [np.array(x.astype(mx.float32)).astype(np.float64) for x in as_mx]  # the rounded inputs
    return as_mx, exact


def flat_rows(x: mx.array) -> mx.array:
    """A token's key / value rows [B, Hkv, 1, D] in the projection's layout [B, 1, Hkv * D]."""
    return x.transpose(0, 2, 1, 3).reshape(x.shape[0], 1, -1)


def decode_attention_case(B, Hq, Hkv, L, D, n, dtype, seed):
    """Arguments of `attention.decode_attention` (less the scale) for one decode token at position n - 1 of
    L-position buffers that hold junk from n - 1 on (1e3: a leaked position would dominate); the float64 oracle
    of its gated output [B, 1, Hq * D]; and the buffers it must return (row n - 1 replaced, as float64)."""
    (q, k, v), (eq, ek, ev) = inputs(B=B, Hq=Hq, Hkv=Hkv, T=1, L=L, D=D, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    qg = mx.array(rng.normal(size=(B, 1, Hq * 2 * D)).astype(np.float32) * 2).astype(dtype)
    junk = (mx.arange(L) >= n - 1)[None, None, :, None]
    kc, vc = (mx.where(junk, 1e3, x).astype(dtype) for x in (k, v))
    kn, vn = k[:, :, n - 1 : n], v[:, :, n - 1 : n]
    gate = np.array(qg.astype(mx.float32)).astype(np.float64).reshape(B, 1, Hq, 2 * D)[..., D:]
    o = oracle(eq, ek[:, :, :n], ev[:, :, :n]) / (1 + np.exp(-gate))
    written = [np.array(x.astype(mx.float32)).astype(np.float64) for x in (kc, vc)]
    for w, e in zip(written, (ek, ev), strict=True):
        w[:, :, n - 1] = e[:, :, n - 1]
    return (q, kn, vn, kc, vc, mx.array([n]), qg), o.reshape(B, 1, Hq * D), written


@gpu_only
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [
    dict(T=1, L=1), dict(T=2, L=2), dict(T=63, L=63), dict(T=64, L=64), dict(T=65, L=65), dict(T=300, L=300),
    dict(T=100, L=357),  # a later prefill step: the queries are the last 100 of 357 positions
    dict(T=64, L=4096),
], ids=lambda s: f"T{s['T']}-L{s['L']}")
@pytest.mark.parametrize("dims", [dict(Hq=8, Hkv=2, D=256), dict(Hq=4, Hkv=4, D=128), dict(Hq=6, Hkv=3, D=64)],
                         ids=lambda d: f"{d['Hq']}x{d['Hkv']}x{d['D']}")
def test_matches_float64_oracle(shape, dims, dtype):
    seed = int.from_bytes(os.urandom(4), "little")
    (q, k, v), exact = inputs(B=2, **dims, **shape, dtype=dtype, seed=seed)
    out = attention.causal_attention(q, k, v, dims["D"] ** -0.5)
    assert out is not None
    ref = oracle(*exact)
    # P is rounded to the input dtype for P V, as MLX's own path rounds its softmax output: error ~ 2^-8 (bf16)
    rel = 2e-2 if dtype == mx.bfloat16 else 3e-3
    assert_close_to_scale(f"out (seed {seed})", np.array(out.astype(mx.float32)), ref, rel=rel)
    mlx_out = mx.fast.scaled_dot_product_attention(q, k, v, scale=dims["D"] ** -0.5,
                                                   mask="causal" if shape["T"] > 1 else None)
    assert_close_to_scale("vs MLX", np.array(out.astype(mx.float32)),
                          np.array(mlx_out.transpose(0, 2, 1, 3).astype(mx.float32)), rel=rel)


@gpu_only
def test_is_deterministic():
    (q, k, v), _ = inputs(B=1, Hq=8, Hkv=2, T=200, L=200, D=256, dtype=mx.bfloat16, seed=1)
    first = np.array(attention.causal_attention(q, k, v, 256**-0.5).astype(mx.float32))
    for _ in range(5):
        again = np.array(attention.causal_attention(q, k, v, 256**-0.5).astype(mx.float32))
        assert np.array_equal(first, again)


def test_falls_back_where_it_does_not_apply(monkeypatch):
    def reason(**kw):
        shapes = dict(q=(1, 8, 4, 256), k=(1, 2, 4, 256), v=(1, 2, 4, 256)) | kw.pop("shapes", {})
        dtype = kw.pop("dtype", mx.bfloat16)
        arrays = [mx.zeros(s, dtype=dtype) for s in shapes.values()]
        return attention.unsupported(*arrays, kw.pop("scale", 256**-0.5))

    monkeypatch.setenv(attention.ENV, "mlx")
    assert "DELTASERVE_ATTENTION" in reason()
    monkeypatch.delenv(attention.ENV)
    if not ON_CUDA:
        assert "NVIDIA" in reason()
        return
    assert reason() is None
    assert "dtype" in reason(dtype=mx.float32)
    assert "scale" in reason(scale=1.0)
    assert "head dims" in reason(shapes=dict(q=(1, 8, 4, 72), k=(1, 2, 4, 72), v=(1, 2, 4, 72)))
    assert "heads" in reason(shapes=dict(q=(1, 3, 4, 256)))
    assert "fewer keys" in reason(shapes=dict(q=(1, 8, 9, 256)))


def test_decode_kernels_fall_back_where_they_do_not_apply(monkeypatch):
    def reason(**kw):
        shapes = dict(q=(1, 8, 1, 256), k=(1, 2, 64, 256), v=(1, 2, 64, 256)) | kw.pop("shapes", {})
        dtype = kw.pop("dtype", mx.bfloat16)
        arrays = [mx.zeros(s, dtype=dtype) for s in shapes.values()]
        return attention.decode_unsupported(*arrays, kw.pop("scale", 256**-0.5))

    monkeypatch.setenv(attention.ENV, "mlx")
    assert "DELTASERVE_ATTENTION" in reason()
    monkeypatch.delenv(attention.ENV)
    if not ON_CUDA:
        assert "NVIDIA" in reason()
        kv = mx.zeros((1, 2, 1, 64))
        assert attention.decode_attention(kv, kv, kv, kv, kv, mx.array([1]), mx.zeros((1, 1, 256)), 0.125) is None
        return
    assert reason() is None and reason(dtype=mx.float32) is None
    assert "queries" in reason(shapes=dict(q=(1, 8, 2, 256)))
    assert "scale" in reason(scale=1.0)
    assert "head dims" in reason(shapes=dict(q=(1, 8, 1, 80), k=(1, 2, 64, 80), v=(1, 2, 64, 80)))
    assert "heads" in reason(shapes=dict(q=(1, 3, 1, 256)))


@gpu_only
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("n", [1, 256, 257, 513, 3000, 4096], ids=lambda n: f"n{n}")
def test_decode_attention_matches_float64_oracle_and_mlx(n, dtype):
    """The split decode attention with its KV write and output gate on the card: the model's heads (8 over 2,
    D = 256), a 4096-position buffer, the new row at n - 1, against the float64 oracle and the model's MLX ops
    (a select, masked attention, sigmoid gate)."""
    seed = int.from_bytes(os.urandom(4), "little")
    args, ref, written = decode_attention_case(B=2, Hq=8, Hkv=2, L=4096, D=256, n=n, dtype=dtype, seed=seed)
    if n == 257:  # v as the model's projection gives it, [B, 1, Hkv * D]
        args = (*args[:2], flat_rows(args[2]), *args[3:])
    got = attention.decode_attention(*args, 256**-0.5)
    assert got is not None and got[0].shape == (2, 1, 8 * 256)
    out, ko, vo = (np.array(x.astype(mx.float32)) for x in got)
    rel = {mx.bfloat16: 1.2e-2, mx.float16: 2e-3, mx.float32: 1e-5}[dtype]  # o, the gate and the product rounded
    assert_close_to_scale(f"out (seed {seed})", out, ref, rel=rel)
    np.testing.assert_array_equal(ko, written[0])
    np.testing.assert_array_equal(vo, written[1])
    q, kn, vn, kc, vc, _, qg = args
    vn = vn.reshape(2, 1, 2, 256).transpose(0, 2, 1, 3)
    at = (mx.arange(4096) == n - 1)[:, None]
    kc, vc = mx.where(at, kn, kc), mx.where(at, vn, vc)
    mask = (mx.arange(4096) < n)[None, None, None, :]
    o = mx.fast.scaled_dot_product_attention(q, kc, vc, scale=256**-0.5, mask=mask).transpose(0, 2, 1, 3)
    mlx_out = o.reshape(2, 1, -1) * mx.sigmoid(qg.reshape(2, 1, 8, 512)[..., 256:].reshape(2, 1, -1))
    assert_close_to_scale("vs MLX", out, np.array(mlx_out.astype(mx.float32)), rel=2 * rel + 8e-3)


def test_the_qk_norms_say_which_rows_the_kernels_cannot_take():
    """`QKNorm.unsupported`: rotary partners must be one xor shuffle apart (R / 2 a power-of-two multiple of a
    lane's D / 32 elements) and the weights [D] of the rows' dtype; else the callers fall back to MLX's ops."""
    w = mx.zeros((256,), mx.bfloat16)
    assert attention.QKNorm(w, w, 1e-6, 64, 1e7).unsupported(256, mx.bfloat16) is None
    assert attention.QKNorm(w, w, 1e-6, 256, 1e7).unsupported(256, mx.bfloat16) is None
    for R in (0, 63, 48, 8, 512):  # odd, partners 3 lanes apart, within a lane, wider than the head
        assert "rotary" in attention.QKNorm(w, w, 1e-6, R, 1e7).unsupported(256, mx.bfloat16), R
    assert "weights" in attention.QKNorm(w, w.astype(mx.float32), 1e-6, 64, 1e7).unsupported(256, mx.bfloat16)
    assert "weights" in attention.QKNorm(w[:128], w[:128], 1e-6, 64, 1e7).unsupported(256, mx.bfloat16)
    if not ON_CUDA:  # and nothing runs off an NVIDIA GPU
        kv, raw = mx.zeros((1, 2, 64, 256), mx.bfloat16), mx.zeros((1, 1, 512), mx.bfloat16)
        assert attention.decode_attention(None, raw, raw, kv, kv, mx.array([1]), mx.zeros((1, 1, 4096), mx.bfloat16),
                                          256**-0.5, attention.QKNorm(w, w, 1e-6, 64, 1e7)) is None


@gpu_only
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", [1, 257, 4096], ids=lambda n: f"n{n}")
def test_decode_attention_with_the_qk_norms_equals_the_separate_kernels_on_the_card(n, dtype):
    """The model's decode path on the card: the decode attention applying the q / k norms and RoPE itself (from
    the raw projections, position n - 1) against `qk_norm_rope` then the decode attention, at the model's shapes
    (8 query heads over 2 key heads, D = 256, 64 rotary dims, base 1e7, a 4096-position buffer), B = 2. The same
    arithmetic: equal but for the compiler's contraction choices (one rounding)."""
    rng = np.random.default_rng(n)

    def rand(*shape):
        return mx.array(rng.normal(size=shape).astype(np.float32) * 3).astype(dtype)

    qg, k, v, kc, vc = rand(2, 1, 16 * 256), rand(2, 1, 512), rand(2, 1, 512), rand(2, 2, 4096, 256), rand(
        2, 2, 4096, 256)
    wq, wk = (mx.array(rng.uniform(0.5, 1.5, 256).astype(np.float32)).astype(dtype) for _ in range(2))
    filled = mx.array([n])
    q, kr = attention.qk_norm_rope(qg, k, attention.QKNorm(wq, wk, 1e-6, 64, 1e7), mx.array([n - 1]), 8, 2)
    separate = attention.decode_attention(q, kr, v, kc, vc, filled, qg, 256**-0.5)
    fused = attention.decode_attention(None, k, v, kc, vc, filled, qg, 256**-0.5,
                                       attention.QKNorm(wq, wk, 1e-6, 64, 1e7))
    assert fused is not None and separate is not None
    rel = 1.2e-2 if dtype == mx.bfloat16 else 1e-5
    for name, a, b in zip(("out", "k buffer", "v buffer"), fused, separate, strict=True):
        assert_close_to_scale(name, np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)), rel=rel)


@gpu_only
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("T,position", [(1, 9000), (300, 0), (64, 4096)], ids=lambda x: str(x))
def test_qk_norm_rope_matches_mlx_ops_on_the_card(T, position, dtype):
    """The q / k preparation kernel on the card against MLX's rms_norm and rope at the model's shapes (8 query
    heads with their gates over 2 key heads, D = 256, 64 rotary dims, base 1e7), B = 2."""
    rng = np.random.default_rng(T)
    qg, k = (mx.array(rng.normal(size=(2, T, n * 256)).astype(np.float32) * 3).astype(dtype) for n in (16, 2))
    wq, wk = (mx.array(rng.uniform(0.5, 1.5, 256).astype(np.float32)).astype(dtype) for _ in range(2))
    got = attention.qk_norm_rope(qg, k, attention.QKNorm(wq, wk, 1e-6, 64, 1e7), position, 8, 2)
    assert got is not None
    q = qg.reshape(2, T, 8, 512)[..., :256]

    def ops(x, w):
        return mx.fast.rope(mx.fast.rms_norm(x, w, 1e-6).transpose(0, 2, 1, 3), 64, traditional=False, base=1e7,
                            scale=1.0, offset=position)

    rel = {mx.bfloat16: 8e-3, mx.float16: 1e-3, mx.float32: 2e-5}[dtype]
    for name, g, w in zip(("q", "k"), got, (ops(q, wq), ops(k.reshape(2, T, 2, 256), wk)), strict=True):
        assert_close_to_scale(name, np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)), rel=rel)
