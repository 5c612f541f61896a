"""A decode step's fused residual add + RMSNorm + linear layer (kernels/gemv.py): a mixer's input projections, or
the MLP's with their SwiGLU (`glu`). Its CUDA form on the CPU emulator and on an NVIDIA GPU against a float64
oracle and the model's own MLX ops, its fallback rule everywhere, and its CUDA text compiled without spills where
nvcc is installed."""

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


def case(rows, K, I, dtype, glu, seed=0):
    """Arguments (x, r [1, rows, K], norm weight [K], eps, weight [2I or I, K], glu) in `dtype`; the float64
    oracle of y; the model's ops on them (MLX's add and rms_norm, matmul, split, compiled SwiGLU): (h, y)."""
    rng = np.random.default_rng(seed)
    x, r = (mx.array(rng.normal(size=(1, rows, K)).astype(np.float32)).astype(dtype) for _ in range(2))
    nw = mx.array(rng.uniform(0.5, 1.5, K).astype(np.float32)).astype(dtype)
    w = mx.array((rng.normal(size=((2 if glu else 1) * I, K)) / np.sqrt(K) * 2).astype(np.float32)).astype(dtype)
    ex, er, enw, ew = (np.array(a.astype(mx.float32)).astype(np.float64) for a in (x, r, nw, w))
    eh = ex + er
    n = eh / np.sqrt((eh * eh).mean(-1, keepdims=True) + EPS) * enw
    h, y = x + r, mx.fast.rms_norm(x + r, nw, EPS) @ w.T
    if not glu:
        return (x, r, nw, EPS, w, glu), n @ ew.T, (h, y)
    g, u = n @ ew[:I].T, n @ ew[I:].T
    return (x, r, nw, EPS, w, glu), g / (1 + np.exp(-g)) * u, (h, _swiglu(*mx.split(y, [I], axis=-1)))


def as_np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def test_the_kernel_is_used_only_where_it_applies(monkeypatch):
    x, nw, w = mx.zeros((1, 1, 256), mx.bfloat16), mx.zeros((256,), mx.bfloat16), mx.zeros((64, 256), mx.bfloat16)
    monkeypatch.setenv(gemv.ENV, "mlx")
    assert "DELTASERVE_GEMV" in gemv.unsupported(x, x, nw, w)
    monkeypatch.delenv(gemv.ENV)
    if not ON_CUDA:
        assert "NVIDIA" in gemv.unsupported(x, x, nw, w) and gemv.add_norm_gemv(x, x, nw, EPS, w) is None
        return
    assert gemv.unsupported(x, x, nw, w) is None
    big = mx.zeros((1, 5, 256), mx.bfloat16)
    assert "rows" in gemv.unsupported(big, big, nw, w)  # prefill: the separate ops
    x200 = mx.zeros((1, 1, 200), mx.bfloat16)
    assert "shapes" in gemv.unsupported(x200, x200, mx.zeros((200,), mx.bfloat16), mx.zeros((64, 200), mx.bfloat16))
    assert "dtypes" in gemv.unsupported(x, x, nw, w.astype(mx.float32))
    assert "shapes" in gemv.unsupported(x, x, nw, mx.zeros((63, 256), mx.bfloat16), glu=True)  # no halves


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("glu", [False, True], ids=["proj", "swiglu"])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 3])
def test_cuda_form_matches_the_oracle_and_the_model_ops(tmp_path, monkeypatch, rows, dtype, glu):
    """K = 384 / 512 leaves threads of the norm without a second element; I = 21 leaves the last block's warps
    without a column; h must be MLX's add bit for bit."""
    from tests.kernels.emulator.cuda_emulate import as_float, record_launches, run_launches

    monkeypatch.setattr(gemv, "unsupported", lambda *a: None)  # the CPU: the kernel would not be chosen
    K = 384 if dtype == mx.float32 else 512  # multiples of a warp's 16-byte loads (128 / 256 elements)
    args, want, (h_ops, y_ops) = case(rows, K, 21, dtype, glu, seed=rows)
    _, launches = record_launches(lambda: list(gemv.add_norm_gemv(*args)))
    assert [launch.name for launch in launches] == ["add_norm_gemv"]
    results = run_launches(launches, tmp_path)
    h, y = (as_float(results[id(o)], o.dtype) for o in launches[0].outputs)
    np.testing.assert_array_equal(h.reshape(h_ops.shape), as_np(h_ops))
    rel = 1e-5 if dtype == mx.float32 else 2e-2  # bf16: the norm, each product, silu and the output rounded
    assert_close_to_scale("y", y.reshape(want.shape), want, rel=rel)
    assert_close_to_scale("y vs the model's ops", y.reshape(want.shape), as_np(y_ops), rel=rel)


@pytest.mark.skipif(not ON_CUDA, reason="the kernel runs on NVIDIA GPUs")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("glu,I", [(True, 3584), (False, 8224), (False, 5120)], ids=["mlp", "gdn-in", "attn-in"])
def test_on_the_card_at_the_model_shapes(rows, dtype, glu, I):
    """The 0.8B shapes (K = 1024: the MLP's I = 3584, the GDN and attention input projections' 8224 and 5120
    rows) against the oracle and MLX's own ops; h as our add_rms_norm kernel gives it."""
    from kernels.norm import add_rms_norm

    args, want, (h_ops, y_ops) = case(rows, 1024, I, dtype, glu, seed=rows)
    got = gemv.add_norm_gemv(*args)
    assert got is not None
    h, y = (as_np(a) for a in got)
    np.testing.assert_array_equal(h, as_np(add_rms_norm(*args[:4])[0]))
    rel = {mx.bfloat16: 2e-2, mx.float16: 3e-3, mx.float32: 1e-5}[dtype]
    assert_close_to_scale("y", y, want, rel=rel)
    assert_close_to_scale("y vs MLX", y, as_np(y_ops), rel=2 * rel)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("glu", [False, True], ids=["proj", "swiglu"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [1, 4])
def test_cuda_text_compiles_without_spills(tmp_path, rows, dtype, glu):
    from tests.kernels.test_cuda_compile import kernel_text, nvcc

    inputs, outputs = gemv.NAMES
    text = kernel_text("add_norm_gemv", *gpu.kernel_sources("cuda", "add_norm_gemv_cuda.body"), inputs, outputs,
                       dict.fromkeys(inputs + outputs, dtype), dict(DT=dtype, K=1024, I=3584, M=rows, NW=gemv.WARPS,
                                                                    EPS=gpu.float_bits(EPS), GLU=glu))
    r = nvcc(tmp_path, text, "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]
