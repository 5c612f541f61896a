"""The decode MLP's fused projections + SwiGLU (kernels/gemv.py): its CUDA form on the CPU emulator and on an
NVIDIA GPU against a float64 oracle and the model's own MLX ops, its fallback rule everywhere, and its CUDA text
compiled without spills where nvcc is installed."""

from __future__ import annotations

import shutil

import mlx.core as mx
import numpy as np
import pytest

from engine.model import _swiglu
from kernels import gemv, gpu
from tests.numerics import assert_close_to_scale

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()


def case(rows, K, I, dtype, seed=0):
    """x [1, rows, K] and the fused weight [2I, K] in `dtype`, their float64 values, the float64 oracle
    silu(x wg^T) * (x wu^T) and the model's ops on them (MLX's matmul, split, compiled SwiGLU)."""
    rng = np.random.default_rng(seed)
    x = mx.array(rng.normal(size=(1, rows, K)).astype(np.float32)).astype(dtype)
    w = mx.array((rng.normal(size=(2 * I, K)) / np.sqrt(K) * 2).astype(np.float32)).astype(dtype)
    ex, ew = (np.array(a.astype(mx.float32)).astype(np.float64) for a in (x, w))
    g, u = ex @ ew[:I].T, ex @ ew[I:].T
    ops = _swiglu(*mx.split(x @ w.T, [I], axis=-1))
    return x, w, g / (1 + np.exp(-g)) * u, np.array(ops.astype(mx.float32))


def test_the_kernel_is_used_only_where_it_applies(monkeypatch):
    x, w = mx.zeros((1, 1, 256), mx.bfloat16), mx.zeros((64, 256), mx.bfloat16)
    monkeypatch.setenv(gemv.ENV, "mlx")
    assert "DELTASERVE_GEMV" in gemv.unsupported(x, w)
    monkeypatch.delenv(gemv.ENV)
    if not ON_CUDA:
        assert "NVIDIA" in gemv.unsupported(x, w) and gemv.swiglu_gemv(x, w) is None
        return
    assert gemv.unsupported(x, w) is None
    assert "rows" in gemv.unsupported(mx.zeros((1, 5, 256), mx.bfloat16), w)  # prefill: MLX's matmul
    assert "shapes" in gemv.unsupported(mx.zeros((1, 1, 200), mx.bfloat16), mx.zeros((64, 200), mx.bfloat16))
    assert "dtypes" in gemv.unsupported(x, w.astype(mx.float32))


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 3])
def test_cuda_form_matches_the_oracle_and_the_model_ops(tmp_path, monkeypatch, rows, dtype):
    """I = 21 leaves the last block's warps without a column; K = 256 is one 16-byte load a lane (bf16)."""
    from tests.kernels.emulator.cuda_emulate import as_float, record_launches, run_launches

    monkeypatch.setattr(gemv, "unsupported", lambda *a: None)  # the CPU: the kernel would not be chosen
    x, w, want, ops = case(rows, 256, 21, dtype, seed=rows)
    (y,), launches = record_launches(lambda: [gemv.swiglu_gemv(x, w)])
    assert [launch.name for launch in launches] == ["swiglu_gemv"] and y.shape == (1, rows, 21)
    out = launches[0].outputs[0]  # the kernel's [rows, I] (y is its reshape)
    got = as_float(run_launches(launches, tmp_path)[id(out)], out.dtype).reshape(y.shape)
    rel = 1e-5 if dtype == mx.float32 else 2e-2  # bf16: each product, silu and the output rounded
    assert_close_to_scale("out", got, want, rel=rel)
    assert_close_to_scale("vs the model's ops", got, ops, rel=rel)


@pytest.mark.skipif(not ON_CUDA, reason="the kernel runs on NVIDIA GPUs")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_on_the_card_at_the_model_shape(rows, dtype):
    """The 0.8B MLP (K = 1024, I = 3584) against the oracle and MLX's own ops."""
    x, w, want, ops = case(rows, 1024, 3584, dtype, seed=rows)
    y = gemv.swiglu_gemv(x, w)
    assert y is not None
    got = np.array(y.astype(mx.float32))
    rel = {mx.bfloat16: 2e-2, mx.float16: 3e-3, mx.float32: 1e-5}[dtype]
    assert_close_to_scale("out", got, want, rel=rel)
    assert_close_to_scale("vs MLX", got, ops, rel=2 * rel)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [1, 4])
def test_cuda_text_compiles_without_spills(tmp_path, rows, dtype):
    from tests.kernels.test_cuda_compile import kernel_text, nvcc

    text = kernel_text("swiglu_gemv", *gpu.kernel_sources("cuda", "swiglu_gemv_cuda.body"), *gemv.NAMES,
                       {"x": dtype, "w": dtype, "y": dtype}, dict(DT=dtype, K=1024, I=3584, M=rows, NW=gemv.WARPS))
    r = nvcc(tmp_path, text, "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]
