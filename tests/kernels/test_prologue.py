"""The prefill prologue of a GDN layer (`kernels.gated_delta_prologue`: conv + SiLU, split, q / k l2-norm, the
conv cache's next rows) against the float64 oracle: the ops path here, the Metal / CUDA kernel where there is
a GPU (and its Metal form in test_metal_emulation.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernels import gated_delta_prologue, gpu
from kernels.prologue import conv_split
from tests.kernels import oracle
from tests.kernels.inputs import prologue_inputs
from tests.numerics import assert_close, assert_close_to_scale

CASES = {
    "base": {},
    "grouped-B2": dict(B=2, Hk=1, Hv=4),
    "empty-cache": dict(empty=True),
    "short-step": dict(T=2),  # fewer new rows than the conv's K-1: the next cache keeps old rows
    "one-token": dict(T=1),
    "model-heads": dict(T=70, Hk=2, Hv=2, Dk=128, Dv=128),
    "odd-dims": dict(T=9, Hk=2, Hv=2, Dk=16, Dv=24),  # the test checkpoints' heads: narrower than 32 lanes
    "K3": dict(K=3, Dk=48, Dv=40),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prologue_matches_the_oracle(case):
    kw = {"B": 1, "T": 16, "Hk": 2, "Hv": 4, "Dk": 64, "Dv": 32, **CASES[case]}
    ref, (qkv, conv_state, conv_w) = prologue_inputs(seed=4, **kw)
    empty = kw.get("empty", False)
    q, k, v, conv = gated_delta_prologue(qkv, None if empty else conv_state, conv_w, num_k_heads=kw["Hk"],
                                         head_k_dim=kw["Dk"], num_v_heads=kw["Hv"])
    assert q.dtype == k.dtype == v.dtype == conv.dtype == qkv.dtype
    for name, got, want in zip(("q", "k", "v", "conv cache"), (q, k, v, conv),
                               oracle.prologue(*ref, kw["Hk"], kw["Dk"], kw["Hv"]), strict=True):
        assert got.shape == want.shape, name
        assert_close_to_scale(name, np.array(got), want, rel=1e-5)


@pytest.mark.skipif(gpu.gpu_backend() is None, reason="the kernel runs on a Metal or CUDA GPU (here: the ops path)")
def test_bf16_kernel_prologue_rounds_like_the_ops_path():
    """The model's dtype: conv and SiLU results rounded to bf16 as MLX's ops round them, so prefill (this),
    decode (the fused step) and the ops path see the same q / k / v, and the conv cache exactly the projections.
    Two roundings separate them where the fp32 sum orders differ: a conv output one bf16 ulp apart moves its
    q / k element by one ulp of itself (2^-7 relative) and the l2-norm of the row slightly, and q / k are rounded
    again (an ulp of the row's largest values, 2^-8 of scale). On an H200: up to 2 ulps on small elements, 1 on
    the largest. A wrong tap, gate or norm is off by the order of the scale."""
    ref, (qkv, conv_state, conv_w) = prologue_inputs(B=1, T=40, Hk=2, Hv=2, Dk=128, Dv=128, seed=6,
                                                     dtype=mx.bfloat16)
    got = gated_delta_prologue(qkv, conv_state, conv_w, num_k_heads=2, head_k_dim=128, num_v_heads=2)
    ops = conv_split(qkv, conv_state, conv_w, 2, 2, 128)
    for name, a, b in zip(("q", "k", "v", "conv cache"), got, ops, strict=True):
        a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
        assert_close(name, a, b, rtol=2**-7, atol=2**-8 * float(np.abs(b).max()))
    np.testing.assert_array_equal(np.array(got[3].astype(mx.float32)), ref[0][:, -3:])
