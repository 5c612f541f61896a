"""The fused decode step of a GDN layer (`kernels.gated_delta_decode`) against the float64 oracle: the ops path
here, the Metal / CUDA kernel where there is a GPU (and its Metal form in test_metal_emulation.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernels import gated_delta_decode
from tests.kernels import oracle
from tests.numerics import assert_close_to_scale


def decode_inputs(B=1, Hk=2, Hv=4, Dk=64, Dv=32, K=4, seed=0, dtype=mx.float32, empty=False):
    """float64 arrays (qkv, conv_state, conv_w, a, b, a_log, dt_bias, state) and MLX arrays in `dtype` (the
    model's projections and weights; gates' parameters and the state fp32), rounded first so both see the same."""
    rng = np.random.default_rng(seed)
    CD = 2 * Hk * Dk + Hv * Dv
    x = [rng.normal(size=(B, 1, CD)), rng.normal(size=(B, K - 1, CD)) * (0 if empty else 1),
         rng.normal(size=(CD, K, 1)) * 0.5, rng.normal(size=(B, 1, Hv)), rng.normal(size=(B, 1, Hv)),
         np.log(rng.uniform(0.5, 16, Hv)), rng.normal(size=Hv), rng.normal(size=(B, Hv, Dv, Dk)) * 0.5]
    arrays = [mx.array(a.astype(np.float32)).astype(dtype if i < 5 else mx.float32) for i, a in enumerate(x)]
    ref = [np.array(a.astype(mx.float32)).astype(np.float64) for a in arrays]
    return ref, arrays


@pytest.mark.parametrize("case", ["base", "grouped-B2", "empty-caches", "Dk128"])
def test_decode_step_matches_the_oracle(case):
    kw = {"base": {}, "grouped-B2": dict(B=2, Hk=1, Hv=4), "empty-caches": dict(empty=True),
          "Dk128": dict(Hk=2, Hv=2, Dk=128, Dv=128)}[case]
    Hk, Dk = kw.get("Hk", 2), kw.get("Dk", 64)
    ref, arrays = decode_inputs(seed=3, **kw)
    ref_out, ref_conv, ref_state = oracle.decode_step(*ref, Hk, Dk)
    if case == "empty-caches":  # None caches mean zeros
        arrays[1] = arrays[7] = None
        ref_out, ref_conv, ref_state = oracle.decode_step(*ref[:7], np.zeros_like(ref[7]), Hk, Dk)
    out, conv, state = gated_delta_decode(*arrays, num_k_heads=Hk, head_k_dim=Dk)
    assert_close_to_scale("out", np.array(out), ref_out, rel=1e-5)
    assert_close_to_scale("conv state", np.array(conv), ref_conv, rel=1e-6)
    assert_close_to_scale("state", np.array(state), ref_state, rel=1e-5)


def test_bf16_decode_step_stays_at_bf16_rounding():
    ref, arrays = decode_inputs(seed=5, dtype=mx.bfloat16)
    ref_out, ref_conv, ref_state = oracle.decode_step(*ref, 2, 64)
    out, conv, state = gated_delta_decode(*arrays, num_k_heads=2, head_k_dim=64)
    assert conv.dtype == mx.bfloat16  # the cache keeps the projections' dtype
    assert_close_to_scale("out", np.array(out.astype(mx.float32)), ref_out, rel=2e-2)
    assert_close_to_scale("conv state", np.array(conv.astype(mx.float32)), ref_conv, rel=1e-6)
    assert_close_to_scale("state", np.array(state), ref_state, rel=2e-2)
