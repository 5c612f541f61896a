"""The GPU kernels themselves (Metal or CUDA), on the GPU: the chunked-ops gates at kernel-supported shapes.

Skipped where no GPU backend is available; run on an NVIDIA card with MLX's CUDA wheel, or on a Mac.
"""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import pytest

from kernels import gated_delta, gpu, implementation
from tests.kernels import oracle
from tests.kernels.inputs import DECAYS, make_gdn_inputs
from tests.numerics import assert_close_to_scale

pytestmark = pytest.mark.skipif(gpu.gpu_backend() is None, reason="needs a Metal or CUDA GPU backend")
REL = 1e-5
DEFAULT = dict(B=1, Hk=2, Hv=4, Dk=64, Dv=32)  # kernel-supported shape with Hk != Hv and Dk != Dv


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def test_the_kernels_are_in_use():
    assert implementation().endswith("kernels")


@pytest.mark.parametrize("C", [16, 32, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("T", ["1", "2", "C-1", "C", "C+1", "2C+3", "1009"])
def test_chunked_kernel_matches_float64_oracle(T, C):
    n = {"1": 1, "2": 2, "C-1": C - 1, "C": C, "C+1": C + 1, "2C+3": 2 * C + 3, "1009": 1009}[T]
    seed = fresh_seed()
    ref, args = make_gdn_inputs(**DEFAULT, T=n, seed=seed)
    out, state = gated_delta(*args, method="chunked", chunk_size=C)
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale(f"out (seed {seed})", np.array(out), ref_out, rel=REL)
    assert_close_to_scale(f"state (seed {seed})", np.array(state), ref_state, rel=REL)


@pytest.mark.parametrize("case", [*(f"decay-{d}" for d in DECAYS), "bf16", "B2", "real-shape", "T1-decode",
                                  "Dk96", "Dk256"])
def test_kernels_match_oracle_across_inputs(case):
    kw = {**DEFAULT, "T": 100, "seed": fresh_seed()}
    if case.startswith("decay-"):
        kw["decay"] = case.removeprefix("decay-")
    kw.update({"bf16": dict(dtype=mx.bfloat16), "B2": dict(B=2), "T1-decode": dict(T=1),
               "real-shape": dict(Hk=16, Hv=16, Dk=128, Dv=128, T=300),
               "Dk96": dict(Dk=96, Dv=48),  # thread shares that do not divide evenly
               "Dk256": dict(Dk=256, Dv=64)}.get(case, {}))  # the state pass's sliced staging plan on CUDA
    ref, args = make_gdn_inputs(**kw)
    ref_out, ref_state = oracle.serial(*ref)
    for method in ("serial", "chunked"):
        out, state = gated_delta(*args, method=method, chunk_size=64)
        rel = REL if kw.get("dtype", mx.float32) == mx.float32 else 1e-2  # bf16 output rounding
        assert_close_to_scale(f"{method} out", np.array(out.astype(mx.float32)), ref_out, rel=rel)
        assert_close_to_scale(f"{method} state", np.array(state), ref_state, rel=REL)


@pytest.mark.parametrize("decay", ["real", "weak"])
@pytest.mark.parametrize("mix", ["bf16", "model"], ids=lambda m: f"{m}-inputs")
@pytest.mark.parametrize("T", [100, 1009], ids=lambda t: f"T{t}")
def test_plain_tf32_products_stay_within_bf16_output_precision(monkeypatch, T, mix, decay):
    """16-bit outputs with MLX_ENABLE_TF32 on (the default outside the tests): on CUDA the products run in plain
    TF32, or with 16-bit q / k on 16-bit tensor cores. The outputs must stay at bf16 rounding of the float64
    oracle and the fp32 state within 5e-3 of its scale; "model" passes fp32 q / k (l2-normed in fp32) with bf16
    v, as the bf16 model did before its prologue rounded q / k to bf16 (the kernels still take the mix). Weak
    decay keeps a chunk's tokens coupled, so the rounded intra-chunk terms carry weight."""
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    ref, args = make_gdn_inputs(B=1, Hk=4, Hv=8, Dk=128, Dv=128, T=T, seed=fresh_seed(), dtype=mx.bfloat16,
                                decay=decay)
    if mix == "model":
        q, k, *rest = args
        args = [q.astype(mx.float32), k.astype(mx.float32), *rest]
    ref_out, ref_state = oracle.serial(*ref)
    for method in ("serial", "chunked"):
        out, state = gated_delta(*args, method=method, chunk_size=64)
        assert_close_to_scale(f"{method} out", np.array(out.astype(mx.float32)), ref_out, rel=1e-2)
        assert_close_to_scale(f"{method} state", np.array(state), ref_state, rel=5e-3)


def test_kernels_are_bitwise_deterministic_over_20_runs():
    _, args = make_gdn_inputs(B=1, Hk=16, Hv=16, Dk=128, Dv=128, T=777, seed=fresh_seed())
    for method in ("chunked", "serial"):
        first = [np.array(x) for x in gated_delta(*args, method=method, chunk_size=64)]
        for _ in range(19):
            again = [np.array(x) for x in gated_delta(*args, method=method, chunk_size=64)]
            assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)), method


def test_ops_path_can_be_forced_for_comparison(monkeypatch):
    ref, args = make_gdn_inputs(**DEFAULT, T=70, seed=fresh_seed())
    kernel_out, _ = gated_delta(*args, method="chunked", chunk_size=32)
    monkeypatch.setenv("DELTASERVE_GDN_OPS", "1")
    assert implementation() == "mlx ops"
    ops_out, _ = gated_delta(*args, method="chunked", chunk_size=32)
    assert_close_to_scale("kernel vs ops", np.array(kernel_out), np.array(ops_out), rel=REL)
