"""The decode MLP's fused residual add + RMSNorm + input projections + SwiGLU (kernels/gemv.py): its CUDA form on
the CPU emulator and on an NVIDIA GPU against a float64 oracle and the model's own MLX ops, its fallback rule
everywhere, and its CUDA text compiled without spills where nvcc is installed."""

from __future__ import annotations

import shutil

import mlx.core as mx
import numpy as np
import pytest

from engine.model import _swiglu
from kernels import gemv, gpu
from tests.numerics import assert_close_to_scale

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
EPS = 1e-6


def case(rows, K, I, dtype, seed=0):
    """Arguments (x, r [1, rows, K], norm weight [K], eps, fused weight [2I, K]) in `dtype`; the float64 oracle of
    y; the model's ops on them (MLX's add and rms_norm, matmul, split, compiled SwiGLU): (h, y)."""
    rng = np.random.default_rng(seed)
    x, r = (mx.array(rng.normal(size=(1, rows, K)).astype(np.float32)).astype(dtype) for _ in range(2))
    nw = mx.array(rng.uniform(0.5, 1.5, K).astype(np.float32)).astype(dtype)
    w = mx.array((rng.normal(size=(2 * I, K)) / np.sqrt(K) * 2).astype(np.float32)).astype(dtype)
    ex, er, enw, ew = (np.array(a.astype(mx.float32)).astype(np.float64) for a in (x, r, nw, w))
    eh = ex + er
    n = eh / np.sqrt((eh * eh).mean(-1, keepdims=True) + EPS) * enw
    g, u = n @ ew[:I].T, n @ ew[I:].T
    h = x + r
    ops = _swiglu(*mx.split(mx.fast.rms_norm(h, nw, EPS) @ w.T, [I], axis=-1))
    return (x, r, nw, EPS, w), g / (1 + np.exp(-g)) * u, (h, ops)


def as_np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def test_the_kernel_is_used_only_where_it_applies(monkeypatch):
    x, nw, w = mx.zeros((1, 1, 256), mx.bfloat16), mx.zeros((256,), mx.bfloat16), mx.zeros((64, 256), mx.bfloat16)
    monkeypatch.setenv(gemv.ENV, "mlx")
    assert "DELTASERVE_GEMV" in gemv.unsupported(x, x, nw, w)
    monkeypatch.delenv(gemv.ENV)
    if not ON_CUDA:
        assert "NVIDIA" in gemv.unsupported(x, x, nw, w) and gemv.add_norm_swiglu(x, x, nw, EPS, w) is None
        return
    assert gemv.unsupported(x, x, nw, w) is None
    big = mx.zeros((1, 5, 256), mx.bfloat16)
    assert "rows" in gemv.unsupported(big, big, nw, w)  # prefill: the separate ops
    x200 = mx.zeros((1, 1, 200), mx.bfloat16)
    assert "shapes" in gemv.unsupported(x200, x200, mx.zeros((200,), mx.bfloat16), mx.zeros((64, 200), mx.bfloat16))
    assert "dtypes" in gemv.unsupported(x, x, nw, w.astype(mx.float32))


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 3])
def test_cuda_form_matches_the_oracle_and_the_model_ops(tmp_path, monkeypatch, rows, dtype):
    """K = 384 / 512 leaves threads of the norm without a second element; I = 21 leaves the last block's warps
    without a column; h must be MLX's add bit for bit."""
    from tests.kernels.emulator.cuda_emulate import as_float, record_launches, run_launches

    monkeypatch.setattr(gemv, "unsupported", lambda *a: None)  # the CPU: the kernel would not be chosen
    K = 384 if dtype == mx.float32 else 512  # multiples of a warp's 16-byte loads (128 / 256 elements)
    args, want, (h_ops, y_ops) = case(rows, K, 21, dtype, seed=rows)
    _, launches = record_launches(lambda: list(gemv.add_norm_swiglu(*args)))
    assert [launch.name for launch in launches] == ["add_norm_swiglu"]
    results = run_launches(launches, tmp_path)
    h, y = (as_float(results[id(o)], o.dtype) for o in launches[0].outputs)
    np.testing.assert_array_equal(h.reshape(h_ops.shape), as_np(h_ops))
    rel = 1e-5 if dtype == mx.float32 else 2e-2  # bf16: the norm, each product, silu and the output rounded
    assert_close_to_scale("y", y.reshape(want.shape), want, rel=rel)
    assert_close_to_scale("y vs the model's ops", y.reshape(want.shape), as_np(y_ops), rel=rel)


@pytest.mark.skipif(not ON_CUDA, reason="the kernel runs on NVIDIA GPUs")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_on_the_card_at_the_model_shape(rows, dtype):
    """The 0.8B MLP (K = 1024, I = 3584) against the oracle and MLX's own ops; h and the norm as our
    add_rms_norm kernel gives them."""
    from kernels.norm import add_rms_norm

    args, want, (h_ops, y_ops) = case(rows, 1024, 3584, dtype, seed=rows)
    got = gemv.add_norm_swiglu(*args)
    assert got is not None
    h, y = (as_np(a) for a in got)
    np.testing.assert_array_equal(h, as_np(add_rms_norm(*args[:4])[0]))
    rel = {mx.bfloat16: 2e-2, mx.float16: 3e-3, mx.float32: 1e-5}[dtype]
    assert_close_to_scale("y", y, want, rel=rel)
    assert_close_to_scale("y vs MLX", y, as_np(y_ops), rel=2 * rel)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [1, 4])
def test_cuda_text_compiles_without_spills(tmp_path, rows, dtype):
    from tests.kernels.test_cuda_compile import kernel_text, nvcc

    inputs, outputs = gemv.NAMES
    text = kernel_text("add_norm_swiglu", *gpu.kernel_sources("cuda", "add_norm_swiglu_cuda.body"), inputs, outputs,
                       dict.fromkeys(inputs + outputs, dtype),
                       dict(DT=dtype, K=1024, I=3584, M=rows, NW=gemv.WARPS, EPS=gpu.float_bits(EPS)))
    r = nvcc(tmp_path, text, "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]
