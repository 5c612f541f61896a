"""The serial MLX recurrence (the reference path) against the float64 oracle."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import kernels
from kernels import gated_delta
from tests.kernels import oracle
from tests.kernels.inputs import DECAYS, make_gdn_inputs
from tests.numerics import assert_close

DEFAULT = dict(B=1, T=33, Hk=2, Hv=4, Dk=32, Dv=16)
CASES = {  # one axis at a time from DEFAULT
    "default": {},
    "T1": dict(T=1),
    "B2": dict(B=2),
    "Hk4-Hv4": dict(Hk=4, Hv=4),
    "Dk16-Dv48": dict(Dk=16, Dv=48),
    **{f"decay-{d}": dict(decay=d) for d in DECAYS},
    "zero-state": dict(state=False),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_serial_matches_float64_oracle(case):
    ref, args = make_gdn_inputs(**{**DEFAULT, **CASES[case]})
    out, state = gated_delta(*args, method="serial")
    ref_out, ref_state = oracle.serial(*ref)
    assert_close("out", np.array(out), ref_out, atol=1e-6, rtol=1e-5)
    assert_close("state", np.array(state), ref_state, atol=1e-6, rtol=1e-5)


def test_serial_continues_from_a_returned_state():
    ref, args = make_gdn_inputs(T=20)
    q, k, v, g, beta, s0 = args
    _, mid = gated_delta(q[:, :7], k[:, :7], v[:, :7], g[:, :7], beta[:, :7], s0)
    out2, s2 = gated_delta(q[:, 7:], k[:, 7:], v[:, 7:], g[:, 7:], beta[:, 7:], mid)
    ref_out, ref_state = oracle.serial(*ref)
    assert_close("out", np.array(out2), ref_out[:, 7:], atol=1e-6, rtol=1e-5)
    assert_close("state", np.array(s2), ref_state, atol=1e-6, rtol=1e-5)


def test_public_signature_is_tensors_positional_options_keyword_only():
    params = inspect.signature(kernels.gated_delta).parameters
    assert list(params)[:6] == ["q", "k", "v", "g", "beta", "state"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(params)[6:])
