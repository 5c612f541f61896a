"""The GPU kernels' launch plans, checked without a GPU: the TF32 rule and the state pass's staging plans."""

from __future__ import annotations

import mlx.core as mx
import pytest

from kernels import gpu


@pytest.mark.parametrize("env", [None, "1", "0", "false"])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("backend", ["cuda", "metal"])
def test_plain_tf32_only_on_cuda_for_16_bit_outputs_unless_switched_off(monkeypatch, env, dtype, backend):
    if env is None:
        monkeypatch.delenv("MLX_ENABLE_TF32", raising=False)
    else:
        monkeypatch.setenv("MLX_ENABLE_TF32", env)
    expected = backend == "cuda" and dtype != mx.float32 and env in (None, "1")
    assert gpu.tf32(backend, dtype) is expected


@pytest.mark.parametrize("opt_in_kb", [0, 99, 227], ids=["48K", "sm89", "sm90"])  # what a CUDA block may opt into
@pytest.mark.parametrize("key_bytes", [2, 4])
@pytest.mark.parametrize("C", gpu.GPU_CHUNK_SIZES)
@pytest.mark.parametrize("dk", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("backend", ["cuda", "metal"])
def test_state_staging_plans_tile_the_chunk_and_fit_where_the_kernels_run(backend, dk, C, key_bytes, opt_in_kb,
                                                                         monkeypatch):
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: max(opt_in_kb - 1, 0) * 1024)
    ws, kr, pad, nbuf = gpu.state_staging(backend, C, dk, 128, key_bytes)
    assert dk % ws == 0 and C % kr == 0 and ws % 8 == 0 and kr % 8 == 0  # whole rounds of whole k-steps
    assert pad in (0, 8) and nbuf >= 2
    budget = gpu.state_budget(backend)
    assert budget == (32 * 1024 if backend == "metal" else max(48 * 1024, min((opt_in_kb - 1) * 1024, 96 * 1024)))
    fits = gpu._state_bytes(C, dk, ws, kr, pad, nbuf, key_bytes) <= budget
    dtype = mx.bfloat16 if key_bytes == 2 else mx.float32
    q, v = mx.zeros((1, 1, 1, dk), dtype=dtype), mx.zeros((1, 1, 1, 128))
    assert (gpu.unsupported(q, v, C, backend) is None) == fits
    if backend == "cuda" and dk <= 128:
        assert fits and nbuf >= 3  # the model's shapes: a ring that runs at least two rounds ahead
    if backend == "metal":
        assert nbuf == 2  # synchronous copies: a deeper ring would only cost memory
