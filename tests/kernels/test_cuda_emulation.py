"""The CUDA form of the chunked GDN kernels, run on the CPU (tests/kernels/emulator/cuda_emulate.py): the text
MLX's cuda_kernel would compile, with the launches gpu.chunked plans for an NVIDIA GPU, against the float64
oracle; and once under ThreadSanitizer. The products go through the PTX shim's mma.sync, so the CUDA-only
paths (3xTF32 splitting, plain TF32 with operands stored rounded, the staging) are checked without a card."""

from __future__ import annotations

import shutil

import mlx.core as mx
import pytest

from kernels import gpu
from tests.kernels import oracle
from tests.kernels.emulator.cuda_emulate import as_float, record_launches, run_launches
from tests.kernels.inputs import make_gdn_inputs
from tests.numerics import assert_close_to_scale

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
SHAPE = dict(B=1, T=150, Hk=1, Hv=2, Dk=64, Dv=48, seed=7)  # Hk != Hv, Dk != Dv, a ragged last chunk


def _chunked(tmp_path, dtype, chunk: int, sanitize: bool = False):
    ref, (q, k, v, g, beta, s0) = make_gdn_inputs(**SHAPE, dtype=dtype)
    (out, state), launches = record_launches(
        lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=chunk, backend="cuda"))
    assert [launch.body for launch in launches] == ["chunk_prep", "chunk_state", "chunk_out"]
    results = run_launches(launches, tmp_path, sanitize)
    return ref, as_float(results[id(out)], out.dtype), as_float(results[id(state)], state.dtype)


@pytest.mark.parametrize("chunk", [16, 64], ids=lambda c: f"C{c}")
def test_fp32_cuda_kernels_match_the_oracle(tmp_path, monkeypatch, chunk):
    """fp32 outputs: 3xTF32 products, fp32-level accuracy."""
    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    ref, out, state = _chunked(tmp_path, mx.float32, chunk)
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=1e-5)
    assert_close_to_scale("state", state, ref_state, rel=1e-5)


@pytest.mark.parametrize("tf32", ["1", "0"], ids=["TF32", "3xTF32"])
def test_bf16_cuda_kernels_match_the_oracle(tmp_path, monkeypatch, tf32):
    """bf16 inputs and outputs: plain TF32 products (the model's path on a card) or 3xTF32."""
    monkeypatch.setenv("MLX_ENABLE_TF32", tf32)
    ref, out, state = _chunked(tmp_path, mx.bfloat16, 64)
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=1e-2)  # bf16 output rounding
    assert_close_to_scale("state", state, ref_state, rel=5e-3 if tf32 == "1" else 1e-5)


def test_thread_sanitizer_is_silent_on_the_cuda_form(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    _chunked(tmp_path, mx.bfloat16, 64, sanitize=True)  # run_launches fails on any ThreadSanitizer report


def test_removing_one_barrier_is_caught_in_the_cuda_form(tmp_path, monkeypatch):
    """The state pass without the barrier that publishes a staged round: ThreadSanitizer reports the race."""
    marker = "DS_SYNC();  // round jj is in for everyone"
    read = gpu.read_source

    def broken(name: str) -> str:
        text = read(name)
        if name == "gdn_chunk_state.body":
            assert text.count(marker) == 1
            text = text.replace(marker, "// barrier removed by the test")
        return text

    monkeypatch.setattr(gpu, "read_source", broken)
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    with pytest.raises(AssertionError, match="ThreadSanitizer: data race"):
        _chunked(tmp_path, mx.bfloat16, 64, sanitize=True)
