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


@pytest.mark.parametrize("cc", [None, (8, 9), (9, 0)], ids=["48K", "sm89", "sm90"])  # the card's compute capability
@pytest.mark.parametrize("key_bytes", [2, 4])
@pytest.mark.parametrize("C", gpu.GPU_CHUNK_SIZES)
@pytest.mark.parametrize("dk", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("backend", ["cuda", "metal"])
def test_state_staging_plans_tile_the_chunk_and_fit_where_the_kernels_run(backend, dk, C, key_bytes, cc, monkeypatch):
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: gpu.opt_in_bytes(cc))
    ws, kr, pad, nbuf = gpu.state_staging(backend, C, dk, 128, key_bytes)
    assert dk % ws == 0 and C % kr == 0 and ws % 8 == 0 and kr % 8 == 0  # whole rounds of whole k-steps
    assert pad in (0, 8) and nbuf >= 2
    budget = gpu.state_budget(backend)
    assert budget == (32 * 1024 if backend == "metal" else max(48 * 1024, min(gpu.opt_in_bytes(cc), 96 * 1024)))
    fits = gpu._state_bytes(C, dk, ws, kr, pad, nbuf, key_bytes) <= budget
    dtype = mx.bfloat16 if key_bytes == 2 else mx.float32
    q, v = mx.zeros((1, 1, 1, dk), dtype=dtype), mx.zeros((1, 1, 1, 128))
    assert (gpu.unsupported(q, v, C, backend) is None) == fits
    if backend == "cuda" and dk <= 128:
        assert fits and nbuf >= 3  # the model's shapes: a ring that runs at least two rounds ahead
    if backend == "metal":
        assert nbuf == 2  # synchronous copies: a deeper ring would only cost memory


@pytest.mark.parametrize(("dk", "dv", "dtype", "tf32"), [(32, 16, mx.float32, "0"), (64, 32, mx.float32, "0"),
                                                        (128, 128, mx.bfloat16, "1"), (128, 32, mx.bfloat16, "0"),
                                                        (256, 64, mx.bfloat16, "1")])
@pytest.mark.parametrize("cc", [None, (8, 9), (9, 0)], ids=["48K", "sm89", "sm90"])
def test_the_state_pass_launch_asks_for_shared_memory_mlx_will_grant(monkeypatch, dk, dv, dtype, tf32, cc):
    """The ring's dynamic shared memory covers the plan, and wherever static + dynamic pass the 48 KB a block
    gets by default, the request is one MLX opts the kernel in for (dynamic alone above 48000 bytes, as
    mlx/backend/cuda/custom_kernel.cpp sets CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES): a launch over the
    limit would fail without an error, its outputs unwritten (found on an H200: Dk 32, fp32, chunk 64)."""
    from tests.kernels.emulator.cuda_emulate import record_launches
    from tests.kernels.inputs import make_gdn_inputs

    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: gpu.opt_in_bytes(cc))
    monkeypatch.setenv("MLX_ENABLE_TF32", tf32)
    _, (q, k, v, g, beta, s0) = make_gdn_inputs(B=1, T=70, Hk=1, Hv=2, Dk=dk, Dv=dv, seed=0, dtype=dtype)
    _, launches = record_launches(lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=64, backend="cuda"))
    state = launches[1]
    t = dict(state.template)
    kb, wb = t["KT"].size, t["WT"].size
    ring = gpu.ring_bytes(64, dk, t["WS"], t["KR"], t["NBUF"], kb, wb)
    static = gpu._state_bytes(64, dk, t["WS"], t["KR"], t["SPAD"], t["NBUF"], kb, wb) - ring
    assert state.shared >= ring
    assert static + state.shared <= gpu.state_budget("cuda") or state.shared == gpu.MLX_OPT_IN_ABOVE + 16
    if static + state.shared > 48 * 1024:
        assert state.shared > 48000
