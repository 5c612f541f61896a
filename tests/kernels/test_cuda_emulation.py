"""The CUDA form of the GDN kernels, run on the CPU (tests/kernels/emulator/cuda_emulate.py): the text MLX's
cuda_kernel would compile, with the launches gpu plans for an NVIDIA GPU, against the float64 oracle; the
chunked kernels also under ThreadSanitizer. The products go through the PTX shim's mma.sync, so the CUDA-only
paths (3xTF32 splitting, plain TF32 with operands stored rounded, the staging) are checked without a card."""

from __future__ import annotations

import shutil

import mlx.core as mx
import numpy as np
import pytest

from kernels import attention, gpu
from tests.kernels import oracle
from tests.kernels.emulator.cuda_emulate import as_float, record_launches, run_launches
from tests.kernels.inputs import DECODE_EPS, decode_inputs, make_gdn_inputs, prologue_inputs
from tests.kernels.test_attention import decode_attention_case, flat_rows
from tests.kernels.test_attention import inputs as attention_inputs
from tests.kernels.test_attention import oracle as attention_oracle
from tests.numerics import assert_close_to_scale

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
SHAPE = dict(B=1, T=150, Hk=1, Hv=2, Dk=64, Dv=48, seed=7)  # Hk != Hv, Dk != Dv, a ragged last chunk


def _chunked(tmp_path, dtype, chunk: int, sanitize: bool = False, shape: dict = SHAPE, decay: str = "real"):
    ref, (q, k, v, g, beta, s0) = make_gdn_inputs(**shape, dtype=dtype, decay=decay)
    (out, state), launches = record_launches(
        lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=chunk, backend="cuda"))
    assert [launch.name for launch in launches] == ["chunk_prep", "chunk_state", "chunk_out"]
    results = run_launches(launches, tmp_path, sanitize)
    return ref, as_float(results[id(out)], out.dtype), as_float(results[id(state)], state.dtype)


@pytest.mark.parametrize(("chunk", "decay"), [(16, "real"), (64, "real"), (64, "weak")],
                         ids=lambda x: f"C{x}" if isinstance(x, int) else x)
def test_fp32_cuda_kernels_match_the_oracle(tmp_path, monkeypatch, chunk, decay):
    """fp32 outputs: 3xTF32 products, fp32-level accuracy. Weak decay keeps a chunk's tokens coupled, so the
    blocked inverse's merges (off-diagonal blocks of T) carry weight; the model-like decays leave them ~0."""
    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    ref, out, state = _chunked(tmp_path, mx.float32, chunk, decay=decay)
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=1e-5)
    assert_close_to_scale("state", state, ref_state, rel=1e-5)


SHAPES = {
    "small": SHAPE,
    # the model's key size: the state pass runs 6 rounds a chunk in a 3-slot ring, which Dk 64's plans do not reach
    "Dk128": dict(B=1, T=150, Hk=1, Hv=1, Dk=128, Dv=32, seed=3),
    # a batch, and two key heads shared by four value heads: the offsets SHAPE leaves at zero
    "B2-grouped": dict(B=2, T=70, Hk=2, Hv=4, Dk=64, Dv=32, seed=5),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("tf32", ["1", "0"], ids=["TF32", "3xTF32"])
def test_bf16_cuda_kernels_match_the_oracle(tmp_path, monkeypatch, tf32, shape):
    """bf16 inputs and outputs: plain TF32 products (the model's path on a card) or 3xTF32."""
    monkeypatch.setenv("MLX_ENABLE_TF32", tf32)
    ref, out, state = _chunked(tmp_path, mx.bfloat16, 64, shape=SHAPES[shape])
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=1e-2)  # bf16 output rounding
    assert_close_to_scale("state", state, ref_state, rel=5e-3 if tf32 == "1" else 1e-5)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("tf32", ["1", "0"], ids=["TF32", "3xTF32"])
def test_16_bit_products_take_the_inputs_dtype_only_under_plain_tf32(tmp_path, monkeypatch, tf32, dtype):
    """The intermediates that only feed tensor cores (w, p, the chunk-start states, r) are 16-bit exactly where
    the later kernels multiply in 16 bits (plain TF32 allowed), in the inputs' own dtype; the results still meet
    the oracle (fp16: the __half fragments of the same path). Weak decay: the tokens of a chunk stay coupled, so
    the rounded intra-chunk terms (P, R, the chunk-start states) carry weight (the model's decays hide them)."""
    monkeypatch.setenv("MLX_ENABLE_TF32", tf32)
    shape = SHAPES["Dk128"]
    ref, (q, k, v, g, beta, s0) = make_gdn_inputs(**shape, dtype=dtype, decay="weak")
    (out, state), launches = record_launches(
        lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=64, backend="cuda"))
    prep, states, _ = launches
    want = dtype if tf32 == "1" else mx.float32
    assert [prep.outputs[0].dtype, prep.outputs[2].dtype] == [want, want]  # w, p
    assert [states.outputs[0].dtype, states.outputs[1].dtype] == [want, want]  # hs, r
    results = run_launches(launches, tmp_path)
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", as_float(results[id(out)], out.dtype), ref_out, rel=1e-2)
    assert_close_to_scale("state", as_float(results[id(state)], state.dtype), ref_state,
                          rel=5e-3 if tf32 == "1" else 1e-5)


SM90 = gpu.opt_in_bytes((9, 0))  # what an H100 / H200 block may opt into


@pytest.mark.parametrize("tf32", ["1", "0"], ids=["TF32", "3xTF32"])
def test_cuda_kernels_with_an_h200_sized_ring_match_the_oracle(tmp_path, monkeypatch, tf32):
    """On a card with more shared memory than the 48 KB of static, the state pass's ring is dynamic shared
    memory and its rounds are wider (a chunk of the model's Dk 128 in 2 rounds instead of 4 with 16-bit
    products, fewer with fp32 ones too): the same results. Weak decay, so R and the chunk-start states carry
    weight."""
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: SM90)
    monkeypatch.setenv("MLX_ENABLE_TF32", tf32)
    wb = 2 if tf32 == "1" else 4
    ws, kr, _, nbuf = gpu.state_staging("cuda", 64, 128, 32, 2, wb)
    assert gpu.ring_bytes(64, 128, ws, kr, nbuf, 2, wb) > gpu.SMEM_BYTES["cuda"] // 2
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: 0)
    small = gpu.state_staging("cuda", 64, 128, 32, 2, wb)
    assert 128 // ws + 64 // kr < 128 // small[0] + 64 // small[1]  # fewer rounds a chunk than in 48 KB
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: SM90)
    ref, out, state = _chunked(tmp_path, mx.bfloat16, 64, shape=SHAPES["Dk128"], decay="weak")
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=1e-2)
    assert_close_to_scale("state", state, ref_state, rel=5e-3 if tf32 == "1" else 1e-5)


def test_thread_sanitizer_is_silent_on_the_h200_sized_ring(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: SM90)
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    _chunked(tmp_path, mx.bfloat16, 64, sanitize=True, shape=SHAPES["Dk128"])


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


def _run(tmp_path, fn):
    """fn()'s outputs (kernels launched through gpu) emulated on the CPU, as float64 arrays."""
    outputs, launches = record_launches(fn)
    results = run_launches(launches, tmp_path)
    return [as_float(results[id(o)], o.dtype) for o in outputs]


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
def test_cuda_serial_kernel_matches_the_oracle(tmp_path, dtype):
    ref, (q, k, v, g, beta, s0) = make_gdn_inputs(**SHAPE, dtype=dtype)
    out, state = _run(tmp_path, lambda: gpu.serial(q, k, v, g, beta, s0, backend="cuda"))
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=1e-5 if dtype == mx.float32 else 1e-2)
    assert_close_to_scale("state", state, ref_state, rel=1e-5)


# gpu.decode_rows: 4 rows a group at Dv 48 (one round of the kernel's 8-row prefetch), 32 at Dv 512 (four rounds),
# 12 at Dv 192 (a partial second round)
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dims", [(SHAPE["Hk"], SHAPE["Hv"], SHAPE["Dk"], SHAPE["Dv"]), (2, 2, 32, 512),
                                  (2, 2, 32, 192)], ids=["Dv48", "Dv512", "Dv192"])
def test_cuda_decode_kernel_matches_the_oracle(tmp_path, dtype, dims):
    """The fused decode step (conv, SiLU, norms, gates, serial step, conv-cache shift, the output's gated norm),
    rounding as the ops."""
    Hk, Hv, Dk, Dv = dims
    ref, arrays = decode_inputs(B=2, Hk=Hk, Hv=Hv, Dk=Dk, Dv=Dv, seed=11, dtype=dtype)
    if Dv == 192:  # the gate as the model's projection gives it, [B, 1, Hv * Dv]: the output comes back so
        arrays[8] = arrays[8].reshape(2, 1, Hv * Dv)
    out, conv, state = _run(tmp_path, lambda: gpu.decode(*arrays, num_k_heads=Hk, head_k_dim=Dk, eps=DECODE_EPS,
                                                         backend="cuda"))
    assert out.shape == arrays[8].shape
    rel = 1e-5 if dtype == mx.float32 else 1e-2  # bf16: the projections' and outputs' rounding
    for name, got, want in zip(("out", "conv cache", "state"), (out, conv, state),
                               oracle.decode_step(*ref, Hk, Dk), strict=True):
        assert_close_to_scale(name, got.reshape(want.shape), want, rel=rel)


@pytest.mark.parametrize("extra", [0, 37], ids=["qkv", "fused-row"])
def test_cuda_prologue_kernel_matches_the_oracle(tmp_path, extra):
    """The prefill prologue (conv, SiLU, split, norms, the conv cache's next rows) for 13 tokens, B = 2; qkv alone
    or as the first columns of a wider row (the fused projection, read in place: its other columns are NaN)."""
    Hk, Hv, Dk, Dv = SHAPE["Hk"], SHAPE["Hv"], SHAPE["Dk"], SHAPE["Dv"]
    ref, arrays = prologue_inputs(B=2, T=13, Hk=Hk, Hv=Hv, Dk=Dk, Dv=Dv, seed=12)
    if extra:
        arrays[0] = mx.concatenate([arrays[0], mx.full((2, 13, extra), float("nan"), arrays[0].dtype)], axis=-1)
    got = _run(tmp_path, lambda: gpu.prologue(*arrays, num_k_heads=Hk, head_k_dim=Dk, num_v_heads=Hv,
                                              backend="cuda"))
    for name, g, want in zip(("q", "k", "v", "conv_out"), got, oracle.prologue(*ref, Hk, Dk, Hv), strict=True):
        assert_close_to_scale(name, g, want, rel=1e-5)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [dict(T=70, L=70), dict(T=30, L=100)], ids=lambda s: f"T{s['T']}-L{s['L']}")
def test_cuda_attention_kernel_matches_the_oracle(tmp_path, monkeypatch, shape, dtype):
    """The fused causal attention (mma.m16n8k16 fed by ldmatrix, its .trans form for V) on the CPU: a ragged query
    tile, a later prefill step's offset, grouped heads. The kernel is proven on the card, so this also checks the
    shim's ldmatrix and m16n8k16 layouts that other CPU checks rely on."""
    monkeypatch.setattr(attention, "unsupported", lambda *a: None)  # the CPU: the kernel would not be chosen
    (q, k, v), exact = attention_inputs(B=1, Hq=4, Hkv=2, D=64, **shape, dtype=dtype, seed=5)
    (out,) = _run(tmp_path, lambda: [attention.causal_attention(q, k, v, 64**-0.5)])
    rel = 2e-2 if dtype == mx.bfloat16 else 3e-3  # P rounded to the input dtype, as on the card
    assert_close_to_scale("out", out, attention_oracle(*exact), rel=rel)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 600], ids=lambda n: f"n{n}")
def test_cuda_decode_attention_matches_the_oracle(tmp_path, monkeypatch, n, dtype):
    """The split decode attention with its KV write and output gate against a 600-position buffer (three key
    blocks: empty, partial and full ones): the new row lands at n - 1 (the buffers hold junk there and past it,
    large enough that a leaked position would dominate), grouped heads, B = 2."""
    monkeypatch.setattr(attention, "decode_unsupported", lambda *a: None)  # the CPU: the kernels would not be chosen
    args, ref, (kc, vc) = decode_attention_case(B=2, Hq=4, Hkv=2, L=600, D=64, n=n, dtype=dtype, seed=n)
    if n == 255:  # v as the model's projection gives it, [B, 1, Hkv * D]
        args = (*args[:2], flat_rows(args[2]), *args[3:])
    out, ko, vo = _run(tmp_path, lambda: list(attention.decode_attention(*args, 64**-0.5)))
    assert out.shape == (2, 1, 4 * 64)
    assert_close_to_scale("out", out, ref, rel=1e-5 if dtype == mx.float32 else 1.2e-2)  # o, gate, product rounded
    np.testing.assert_array_equal(ko, kc)  # the write is a copy: exact
    np.testing.assert_array_equal(vo, vc)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", [1, 70, 600], ids=lambda n: f"n{n}")
def test_cuda_decode_attention_applies_the_qk_norms_as_their_own_kernel_does(tmp_path, monkeypatch, n, dtype):
    """Given the layer's norms (`QKNorm`), the decode attention takes the raw query | gate and key projections and
    applies the q / k RMSNorm and RoPE itself at position n - 1: its gated output and both buffers equal, bit for
    bit, those of `qk_norm_rope` at that position followed by the decode attention on the prepared q / k (4 query
    heads over 2 key heads, D = 64, 16 rotary dims, B = 2, a 600-position buffer: the new row in the first, a
    middle and the last key block)."""
    monkeypatch.setattr(attention, "kernels_off", lambda: None)  # the CPU: the kernels would not be chosen
    H, Hkv, D, L, R, base, eps = 4, 2, 64, 600, 16, 10_000_000.0, 1e-6
    rng = np.random.default_rng(n)

    def rand(*shape, scale=3.0):
        return mx.array(rng.normal(size=shape).astype(np.float32) * scale).astype(dtype)

    qg, k, v, kc, vc = rand(2, 1, H * 2 * D), rand(2, 1, Hkv * D), rand(2, 1, Hkv * D), rand(2, Hkv, L, D), rand(
        2, Hkv, L, D)
    wq, wk = (mx.array(rng.uniform(0.5, 1.5, D).astype(np.float32)).astype(dtype) for _ in range(2))
    filled = mx.array([n])

    norm = attention.QKNorm(wq, wk, eps, R, base)

    def separate():
        q, kr = attention.qk_norm_rope(qg, k, norm, mx.array([n - 1]), H, Hkv)
        return list(attention.decode_attention(q, kr, v, kc, vc, filled, qg, D**-0.5))
    fused = _run(tmp_path / "fused", lambda: list(attention.decode_attention(None, k, v, kc, vc, filled, qg, D**-0.5,
                                                                             norm)))
    for name, a, b in zip(("out", "k buffer", "v buffer"), fused, _run(tmp_path / "separate", separate), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("T,position", [(1, 517), (5, 0), (3, 4000)], ids=lambda x: str(x))
def test_cuda_qk_norm_rope_matches_mlx_norm_and_rope(tmp_path, monkeypatch, T, position, dtype):
    """An attention layer's q / k preparation in one kernel against the model's own ops (mx.fast.rms_norm per
    head, transpose, nn.RoPE with the model's partial rotary dims and base) run by MLX: decode at a late position,
    a first prefill step, a later one; 4 query heads (each followed by its gate) over 2 key heads, D = 64."""
    import mlx.nn as nn

    monkeypatch.setattr(attention, "kernels_off", lambda: None)  # the CPU: the kernel would not be chosen
    H, Hkv, D, R, base, eps = 4, 2, 64, 16, 10_000_000.0, 1e-6
    rng = np.random.default_rng(T + position)
    qg, k = (mx.array(rng.normal(size=(2, T, n * D)).astype(np.float32) * 3).astype(dtype) for n in (2 * H, Hkv))
    wq, wk = (mx.array(rng.uniform(0.5, 1.5, D).astype(np.float32)).astype(dtype) for _ in range(2))
    pos = mx.array([position])
    got = _run(tmp_path, lambda: attention.qk_norm_rope(qg, k, attention.QKNorm(wq, wk, eps, R, base), pos, H, Hkv))
    rope = nn.RoPE(R, traditional=False, base=base)
    q = mx.split(qg.reshape(2, T, H, 2 * D), 2, axis=-1)[0]
    want = [rope(mx.fast.rms_norm(x, w, eps).transpose(0, 2, 1, 3), offset=position)
            for x, w in ((q, wq), (k.reshape(2, T, Hkv, D), wk))]
    for name, g, w in zip(("q", "k"), got, want, strict=True):
        assert g.shape == w.shape
        # the rotation of rounded normed values: one rounding of the output apart (cos / sin libraries differ)
        assert_close_to_scale(name, g, np.array(w.astype(mx.float32)), rel=8e-3 if dtype == mx.bfloat16 else 2e-5)
