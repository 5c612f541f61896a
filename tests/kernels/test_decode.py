"""The fused decode step of a GDN layer (`kernels.gated_delta_decode`) against the float64 oracle: the ops path
here, the Metal / CUDA kernel where there is a GPU (and its Metal form in test_metal_emulation.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernels import gated_delta_decode
from tests.kernels import oracle
from tests.kernels.inputs import DECODE_EPS, decode_inputs
from tests.numerics import assert_close_to_scale


@pytest.mark.parametrize("case", ["base", "grouped-B2", "empty-caches", "Dk128", "flat-z"])
def test_decode_step_matches_the_oracle(case):
    kw = {"base": {}, "grouped-B2": dict(B=2, Hk=1, Hv=4), "empty-caches": dict(empty=True),
          "Dk128": dict(Hk=2, Hv=2, Dk=128, Dv=128), "flat-z": dict(B=2)}[case]
    Hk, Dk = kw.get("Hk", 2), kw.get("Dk", 64)
    ref, arrays = decode_inputs(seed=3, **kw)
    ref_out, ref_conv, ref_state = oracle.decode_step(*ref, Hk, Dk)
    if case == "empty-caches":  # None caches mean zeros
        arrays[1] = arrays[7] = None
        ref_out, ref_conv, ref_state = oracle.decode_step(*ref[:7], np.zeros_like(ref[7]), *ref[8:], Hk, Dk)
    if case == "flat-z":  # the gate as the projection gives it, [B, 1, Hv * Dv]: the output comes back so
        arrays[8] = arrays[8].reshape(*arrays[8].shape[:2], -1)
        ref_out = ref_out.reshape(arrays[8].shape)
    out, conv, state = gated_delta_decode(*arrays, num_k_heads=Hk, head_k_dim=Dk, eps=DECODE_EPS)
    assert_close_to_scale("out", np.array(out), ref_out, rel=1e-5)
    assert_close_to_scale("conv state", np.array(conv), ref_conv, rel=1e-6)
    assert_close_to_scale("state", np.array(state), ref_state, rel=1e-5)


def test_bf16_decode_step_stays_at_bf16_rounding():
    ref, arrays = decode_inputs(seed=5, dtype=mx.bfloat16)
    ref_out, ref_conv, ref_state = oracle.decode_step(*ref, 2, 64)
    out, conv, state = gated_delta_decode(*arrays, num_k_heads=2, head_k_dim=64, eps=DECODE_EPS)
    assert conv.dtype == mx.bfloat16  # the cache keeps the projections' dtype
    assert_close_to_scale("out", np.array(out.astype(mx.float32)), ref_out, rel=2e-2)
    assert_close_to_scale("conv state", np.array(conv.astype(mx.float32)), ref_conv, rel=1e-6)
    assert_close_to_scale("state", np.array(state), ref_state, rel=2e-2)
