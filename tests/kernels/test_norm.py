"""kernels.norm.add_rms_norm: the residual add and MLX's RMSNorm in one kernel. Its CUDA form runs on the CPU
(tests/kernels/emulator/cuda_emulate.py) against MLX's own add and mx.fast.rms_norm; elsewhere it is those ops."""

from __future__ import annotations

import shutil

import mlx.core as mx
import numpy as np
import pytest

from kernels import norm
from kernels.gpu import gpu_backend
from tests.kernels.emulator.cuda_emulate import as_float, record_launches, run_launches
from tests.numerics import assert_close_to_scale

EPS = 1e-6


def _inputs(rows: int, D: int, dtype: mx.Dtype, seed: int):
    rng = np.random.default_rng(seed)
    x, r = (mx.array(rng.normal(size=(1, rows, D)).astype(np.float32) * s).astype(dtype) for s in (1.0, 3.0))
    w = mx.array(rng.uniform(0.5, 1.5, D).astype(np.float32)).astype(dtype)
    return x, r, w


@pytest.mark.parametrize("where", ["cpu", "switched-off"])
def test_off_the_gpu_or_switched_off_it_is_mlx_add_and_rms_norm(monkeypatch, where):
    if where == "switched-off":  # DELTASERVE_NORM=mlx wins over a GPU backend
        monkeypatch.setattr(norm, "gpu_backend", lambda: "cuda")
        monkeypatch.setenv(norm.ENV, "mlx")
    else:  # what the CPU gets, whatever this machine has
        monkeypatch.setattr(norm, "gpu_backend", lambda: None)
    x, r, w = _inputs(3, 200, mx.bfloat16, 1)
    (h, y), launches = record_launches(lambda: norm.add_rms_norm(x, r, w, EPS))
    assert launches == []
    assert mx.array_equal(h, x + r).item() and mx.array_equal(y, mx.fast.rms_norm(x + r, w, EPS)).item()


@pytest.mark.skipif(gpu_backend() is None, reason="needs a Metal or CUDA GPU backend")
@pytest.mark.parametrize("D", [1024, 200, 4096], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
def test_on_the_gpu_both_kernels_match_mlx_ops(monkeypatch, dtype, D):
    """The kernels on this machine's GPU against MLX's ops on it: many rows (more blocks than SMs), the model's
    hidden size, a ragged one and the largest a thread row takes; the gated norm at the model's head size."""

    monkeypatch.delenv(norm.ENV, raising=False)
    x, r, w = _inputs(1000, D, dtype, 7)
    h, y = norm.add_rms_norm(x, r, w, EPS)
    assert mx.array_equal(h, x + r).item()
    rel = {mx.bfloat16: 8e-3, mx.float16: 1e-3, mx.float32: 1e-6}[dtype]
    assert_close_to_scale("y", np.array(y.astype(mx.float32)),
                          np.array(mx.fast.rms_norm(x + r, w, EPS).astype(mx.float32)), rel=rel)
    xg, zg = (mx.array(np.random.default_rng(8).normal(size=(2, 37, 16, 128)).astype(np.float32) * s).astype(dtype)
              for s in (0.3, 2.0))
    wg = w[:128]
    got = norm.gated_rms_norm(xg, zg, wg, EPS)
    want = norm.gated_tail(mx.fast.rms_norm(xg, None, EPS), wg, zg)
    assert_close_to_scale("gated", np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)), rel=rel)
    flat = norm.gated_rms_norm(xg, zg.reshape(2, 37, 16 * 128), wg, EPS)  # the gate in the projection's layout
    assert flat.shape == (2, 37, 16 * 128) and mx.array_equal(flat, got.reshape(flat.shape)).item()
    pad = mx.zeros((2, 37, 24), dtype)  # ... and as columns 24 .. of a wider row, read in place
    wide = norm.gated_rms_norm(xg, mx.concatenate([pad, zg.reshape(2, 37, -1), pad], -1), wg, EPS, 24)
    assert mx.array_equal(wide, flat).item()


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("D", [1024, 200, 64], ids=lambda d: f"D{d}")  # the model's hidden size; ragged; small
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=["bf16", "fp16", "fp32"])
def test_cuda_form_matches_mlx_add_and_rms_norm(tmp_path, monkeypatch, dtype, D):
    """h is MLX's add bit for bit; y is MLX's RMSNorm to within one rounding of the output (the sum of squares
    is reduced in another order)."""
    monkeypatch.setattr(norm, "gpu_backend", lambda: "cuda")
    monkeypatch.delenv(norm.ENV, raising=False)
    x, r, w = _inputs(5, D, dtype, D)
    (h, y), launches = record_launches(lambda: norm.add_rms_norm(x, r, w, EPS))
    results = run_launches(launches, tmp_path)
    got_h, got_y = as_float(results[id(h)], dtype), as_float(results[id(y)], dtype)
    ref_h = x + r
    np.testing.assert_array_equal(got_h, np.array(ref_h.astype(mx.float32)))
    ref_y = np.array(mx.fast.rms_norm(ref_h, w, EPS).astype(mx.float32))
    rel = {mx.bfloat16: 8e-3, mx.float16: 1e-3, mx.float32: 1e-6}[dtype]
    assert_close_to_scale("y", got_y, ref_y, rel=rel)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("body", list(norm.BODIES))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_cuda_form_compiles_under_nvrtc_rules(tmp_path, dtype, body):
    from kernels.gpu import kernel_sources
    from tests.kernels.test_cuda_compile import kernel_text, nvcc

    inputs, outputs = norm.BODIES[body]
    template = (dict(OutT=dtype, D=1024, NT=norm.THREADS, EPS=0x358637BD) if body == "add_rms_norm"
                else dict(OutT=dtype, WT=dtype, D=128, RPG=norm.GATED_ROWS, EPS=0x358637BD, ZP=8224, ZO=6144))
    text = kernel_text(body, *kernel_sources("cuda", f"{body}.body"), inputs, outputs,
                       dict.fromkeys(inputs + outputs, dtype), template)
    r = nvcc(tmp_path, text)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_metal_form_matches_mlx_add_and_rms_norm(tmp_path):
    """The exact MSL MLX generates (fp32, D = 200: a ragged last round of threads), run by the Metal emulator."""
    from tests.kernels.emulator.emulate import Emulator, extract_metal_sources

    source = extract_metal_sources(dict(B=1, T=20, Hk=1, Hv=2, Dk=32, Dv=16, seed=1), 16, tmp_path)["add_rms_norm"]
    x, r, w = _inputs(3, 200, mx.float32, 3)
    bufs = {"x": np.array(x), "r": np.array(r), "w": np.array(w), "h": np.full((1, 3, 200), np.nan, np.float32),
            "y": np.full((1, 3, 200), np.nan, np.float32)}
    run = Emulator(source, tmp_path).run(bufs, (3, 1, 1), norm.THREADS)
    assert run.returncode == 0, run.stderr
    ref_h = x + r
    np.testing.assert_array_equal(bufs["h"], np.array(ref_h))
    assert_close_to_scale("y", bufs["y"], np.array(mx.fast.rms_norm(ref_h, w, EPS)), rel=1e-6)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("layout", ["heads", "flat", "wide"], ids=lambda s: f"gate-{s}")
@pytest.mark.parametrize("wdtype", [mx.bfloat16, mx.float32], ids=["w-bf16", "w-fp32"])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
def test_cuda_gated_norm_matches_the_model_ops(tmp_path, monkeypatch, dtype, wdtype, layout):
    """The GDN output's norm and gate (engine.model.RMSNormGated's ops: mx.fast.rms_norm, then the compiled
    tail) against those ops run by MLX, for the model's head size and the weight's dtype either way; the gate
    as x, flat (the output then flat too) or as columns of a wider row (the fused projection, read in place; its
    other columns NaN), one launch each way."""

    monkeypatch.setattr(norm, "gpu_backend", lambda: "cuda")
    rng = np.random.default_rng(4)
    x, z = (mx.array(rng.normal(size=(2, 3, 5, 128)).astype(np.float32) * s).astype(dtype) for s in (0.3, 2.0))
    w = mx.array(rng.uniform(0.5, 1.5, 128).astype(np.float32)).astype(wdtype)
    flat = z.reshape(2, 3, 5 * 128)
    nan = mx.full((2, 3, 7), float("nan"), dtype)
    gate, offset = {"heads": (z, 0), "flat": (flat, 0), "wide": (mx.concatenate([nan, flat, nan], -1), 7)}[layout]
    (y,), launches = record_launches(lambda: [norm.gated_rms_norm(x, gate, w, EPS, offset)])
    assert [launch.name for launch in launches] == ["gated_rms_norm"]
    assert y.shape == (z.shape if layout == "heads" else flat.shape)
    got = as_float(run_launches(launches, tmp_path)[id(y)], dtype).reshape(x.shape)
    want = np.array(norm.gated_tail(mx.fast.rms_norm(x, None, EPS), w, z).astype(mx.float32))
    assert_close_to_scale("y", got, want, rel=8e-3 if dtype == mx.bfloat16 else 1e-6)


def test_off_the_gpu_a_flat_or_wide_gate_gives_the_same_norm_flat(monkeypatch):
    monkeypatch.setattr(norm, "gpu_backend", lambda: None)
    rng = np.random.default_rng(6)
    x, z = (mx.array(rng.normal(size=(2, 3, 4, 16)).astype(np.float32)) for _ in range(2))
    w = mx.array(rng.uniform(0.5, 1.5, 16).astype(np.float32))
    heads = norm.gated_rms_norm(x, z, w, EPS)
    flat = norm.gated_rms_norm(x, z.reshape(2, 3, 64), w, EPS)
    assert flat.shape == (2, 3, 64) and mx.array_equal(flat, heads.reshape(2, 3, 64)).item()
    wide = mx.concatenate([mx.zeros((2, 3, 5)), z.reshape(2, 3, 64), mx.ones((2, 3, 2))], axis=-1)
    assert mx.array_equal(norm.gated_rms_norm(x, wide, w, EPS, 5), flat).item()
    for bad, offset in ((z.reshape(2, 3, 8, 8), 0), (wide, 8), (z, 1)):
        with pytest.raises(ValueError, match="gate shape"):
            norm.gated_rms_norm(x, bad, w, EPS, offset)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_metal_gated_norm_matches_the_model_ops(tmp_path):
    """The gated norm's MSL, as MLX generates it (fp32; 15 head rows: a partly idle last threadgroup), emulated."""
    from tests.kernels.emulator.emulate import Emulator, extract_metal_sources

    source = extract_metal_sources(dict(B=1, T=20, Hk=1, Hv=2, Dk=32, Dv=16, seed=1), 16, tmp_path)["gated_rms_norm"]
    rng = np.random.default_rng(6)
    x, z = (rng.normal(size=(1, 3, 5, 128)).astype(np.float32) * s for s in (0.3, 2.0))
    w = rng.uniform(0.5, 1.5, 128).astype(np.float32)
    bufs = {"x": x, "z": z, "w": w, "y": np.full(x.shape, np.nan, np.float32)}
    run = Emulator(source, tmp_path).run(bufs, (2, 1, 1), 32 * norm.GATED_ROWS)
    assert run.returncode == 0, run.stderr
    want = np.array(norm.gated_tail(mx.fast.rms_norm(mx.array(x), None, EPS), mx.array(w), mx.array(z)))
    assert_close_to_scale("y", bufs["y"], want, rel=1e-6)
