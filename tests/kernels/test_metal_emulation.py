"""The Metal form of the GDN kernels, checked without a Mac: the exact MSL MLX generates is syntax-checked
by g++ through a shim and executed on CPU threads meeting at real barriers, against the float64 oracle;
a ThreadSanitizer build must stay silent, and must speak up when one barrier is removed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from kernels import gpu
from tests.kernels import oracle
from tests.kernels.emulator.emulate import HERE, Emulator, extract_metal_sources
from tests.kernels.inputs import decode_inputs, make_gdn_inputs, prologue_inputs
from tests.numerics import assert_close_to_scale

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
SHAPE = dict(B=1, T=150, Hk=1, Hv=2, Dk=64, Dv=48, seed=7)  # Hk != Hv, Dk != Dv, a ragged last chunk
REL = 1e-5


@pytest.fixture(scope="module", params=[16, 64], ids=lambda c: f"C{c}")
def chunk(request):
    return request.param  # 64 exercises both merge levels of the blocked inverse


@pytest.fixture(scope="module")
def sources(tmp_path_factory, chunk):
    return extract_metal_sources(SHAPE, chunk, tmp_path_factory.mktemp("trace"))


@pytest.fixture(scope="module")
def case():
    ref, arrays = make_gdn_inputs(**SHAPE)
    q, k, v, g, beta, s0 = (np.array(a) for a in arrays)
    return ref, dict(q=q, k=k, v=v, g=g, beta=beta, state_in=s0)


def _nan(*shape):
    return np.full(shape, np.nan, np.float32)  # unwritten outputs fail the comparison


def run_chunked(sources, case, workdir, C, sanitize=False, broken=None):
    """Phase A, the sequential state pass and the outputs, as the GPU would run them (`broken` replaces
    one kernel's source)."""
    _, bufs = case
    B, T, Hk, Dk = bufs["q"].shape
    Hv, Dv = bufs["v"].shape[2:]
    N, BH = -(-T // C), B * Hv
    src = {**sources, **(broken or {})}
    a = {**bufs, "w": _nan(BH, N, C, Dk), "u": _nan(BH, N, C, Dv),
         "p": _nan(BH, N, C, C), "gc": _nan(BH, N, C), "hs": _nan(BH, N, Dk, Dv), "r": _nan(BH, N, C, Dv),
         "out": _nan(*bufs["v"].shape), "state_out": _nan(B, Hv, Dv, Dk)}
    to = gpu.out_tile(Dv)
    plan = [("chunk_prep", (N, BH, 1), gpu.PREP_THREADS),
            ("chunk_state", (Dv // gpu.STATE_TILE, BH, 1), gpu.STATE_THREADS),
            ("chunk_out", (N, Dv // to, BH), gpu.OUT_THREADS)]
    runs = [Emulator(src[name], workdir, sanitize).run(a, groups, threads) for name, groups, threads in plan]
    return a["out"], a["state_out"], runs


@pytest.mark.parametrize("kernel", ["chunk_prep", "chunk_state", "chunk_out", "serial", "decode", "prologue"])
def test_generated_msl_passes_a_syntax_check(sources, tmp_path, kernel):
    src = tmp_path / "check.cpp"
    src.write_text(f'#include "{HERE / "metal_shim.h"}"\n{sources[kernel]}\n')
    r = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", "-Wno-attributes", str(src)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_emulated_chunked_kernels_match_the_oracle(sources, case, tmp_path, chunk):
    ref, _ = case
    out, state, runs = run_chunked(sources, case, tmp_path, chunk)
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=REL)
    assert_close_to_scale("state", state, ref_state, rel=REL)


def test_emulated_chunked_kernels_match_the_oracle_with_weak_decay(sources, tmp_path, chunk):
    """Weak decay keeps a chunk's tokens coupled: the blocked inverse's merges (T's off-diagonal blocks) carry
    weight here, where the model-like decays of `case` leave them ~0 (dropping a merge's k-step passed those)."""
    ref, arrays = make_gdn_inputs(**SHAPE, decay="weak")
    q, k, v, g, beta, s0 = (np.array(a) for a in arrays)
    out, state, runs = run_chunked(sources, (ref, dict(q=q, k=k, v=v, g=g, beta=beta, state_in=s0)), tmp_path,
                                   chunk)
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=REL)
    assert_close_to_scale("state", state, ref_state, rel=REL)


@pytest.mark.parametrize("plan", [(16, 16, 8, 3), (32, 16, 0, 4)], ids=lambda p: f"ring{p[3]}")
def test_emulated_state_pass_with_cuda_style_rings(case, tmp_path, plan):
    """CUDA's planner runs the state pass's ring 2-3 rounds ahead (Metal's: 1); the slot arithmetic of deeper
    rings, wrapping mid-chunk, must give the same result, with ThreadSanitizer silent."""
    ref, _ = case
    sources = extract_metal_sources(SHAPE, 64, tmp_path, plan=plan)
    assert "_".join(map(str, plan)) in sources["chunk_state"]  # the forced plan is in the instantiation
    out, state, runs = run_chunked(sources, case, tmp_path, 64, sanitize=True)
    assert all(r.returncode == 0 and "ThreadSanitizer" not in r.stderr for r in runs), [r.stderr for r in runs]
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=REL)
    assert_close_to_scale("state", state, ref_state, rel=REL)


@pytest.mark.parametrize("tiles", [(8, 128), (8, 256), (16, 128)], ids=lambda t: f"TV{t[0]}-NT{t[1]}")
def test_emulated_state_pass_with_other_tilings(case, tmp_path, monkeypatch, tiles):
    """bench/gpu_state_tiles.py times other (TV, NT) tilings of the state pass: the body must stay correct for
    them (R and S tiles per warp change, some warps idle; TV divides this case's Dv = 48)."""
    ref, _ = case
    sources = extract_metal_sources(SHAPE, 64, tmp_path, tiles=tiles)
    monkeypatch.setattr(gpu, "STATE_TILE", tiles[0])
    monkeypatch.setattr(gpu, "STATE_THREADS", tiles[1])
    out, state, runs = run_chunked(sources, case, tmp_path, 64)
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", out, ref_out, rel=REL)
    assert_close_to_scale("state", state, ref_state, rel=REL)


def _decode(source: str, tmp_path, sanitize: bool = False):
    """The decode kernel on the test shape: (its buffers after the run, the run, the oracle's inputs)."""
    B, Hk, Hv, Dk, Dv = SHAPE["B"], SHAPE["Hk"], SHAPE["Hv"], SHAPE["Dk"], SHAPE["Dv"]
    ref, arrays = decode_inputs(B=B, Hk=Hk, Hv=Hv, Dk=Dk, Dv=Dv, seed=11)
    bufs = {n: np.array(a) for n, a in zip(gpu.BODIES["decode"][0], arrays, strict=True)}
    CD = bufs["qkv"].shape[-1]
    bufs |= {"out": _nan(B, 1, Hv, Dv), "conv_out": _nan(B, 3, CD), "state_out": _nan(B, Hv, Dv, Dk)}
    r = Emulator(source, tmp_path, sanitize).run(bufs, (1, B * Hv, 1), Dv // gpu.decode_rows(Dv) * 32)
    return bufs, r, ref


def test_emulated_decode_kernel_matches_the_oracle(sources, tmp_path):
    """The fused decode step (conv, SiLU, norms, gates, serial step, conv-cache shift, the output's gated norm:
    one threadgroup a head, its groups meeting at a barrier) at the test shape, silent under ThreadSanitizer."""
    Hk, Dk = SHAPE["Hk"], SHAPE["Dk"]
    bufs, r, ref = _decode(sources["decode"], tmp_path, sanitize=True)
    assert r.returncode == 0 and "ThreadSanitizer" not in r.stderr, r.stderr[-3000:]
    ref_out, ref_conv, ref_state = oracle.decode_step(*ref, Hk, Dk)
    assert_close_to_scale("out", bufs["out"], ref_out, rel=REL)
    assert_close_to_scale("conv cache", bufs["conv_out"], ref_conv, rel=REL)
    assert_close_to_scale("state", bufs["state_out"], ref_state, rel=REL)


def test_removing_the_decode_kernels_barrier_is_caught(sources, tmp_path):
    """Without the barrier before the gated norm, a group reads other groups' outputs while they are written."""
    marker = "DS_SYNC();  // every group's rows of orow are in"
    assert sources["decode"].count(marker) == 1
    _, r, _ = _decode(sources["decode"].replace(marker, "// barrier removed by the test"), tmp_path, sanitize=True)
    assert "ThreadSanitizer: data race" in r.stderr


def test_emulated_prologue_kernel_matches_the_oracle(sources, tmp_path):
    """The prefill prologue (conv, SiLU, split, norms, the conv cache's next rows) for 13 tokens: a ragged last
    threadgroup, and rows of the old cache inside the window."""
    B, T, Hk, Hv, Dk, Dv = SHAPE["B"], 13, SHAPE["Hk"], SHAPE["Hv"], SHAPE["Dk"], SHAPE["Dv"]
    ref, arrays = prologue_inputs(B=B, T=T, Hk=Hk, Hv=Hv, Dk=Dk, Dv=Dv, seed=12)
    bufs = {n: np.array(a) for n, a in zip(gpu.BODIES["prologue"][0], arrays, strict=True)}
    bufs |= {"q": _nan(B, T, Hk, Dk), "k": _nan(B, T, Hk, Dk), "v": _nan(B, T, Hv, Dv),
             "conv_out": _nan(B, 3, bufs["qkv"].shape[-1])}
    groups = (-(-T // gpu.PROLOGUE_GROUPS), 2 * Hk + Hv, B)
    r = Emulator(sources["prologue"], tmp_path).run(bufs, groups, 32 * gpu.PROLOGUE_GROUPS)
    assert r.returncode == 0, r.stderr
    for name, want in zip(("q", "k", "v", "conv_out"), oracle.prologue(*ref, Hk, Dk, Hv), strict=True):
        assert_close_to_scale(name, bufs[name], want, rel=REL)


def test_emulated_serial_kernel_matches_the_oracle(sources, case, tmp_path):
    ref, bufs = case
    B, T, Hk, Dk = bufs["q"].shape
    Hv, Dv = bufs["v"].shape[2:]
    emu = Emulator(sources["serial"], tmp_path)
    b = {**bufs, "out": _nan(*bufs["v"].shape), "state_out": _nan(B, Hv, Dv, Dk)}
    r = emu.run(b, (Dv // gpu.SERIAL_ROWS, B * Hv, 1), 32)
    assert r.returncode == 0, r.stderr
    ref_out, ref_state = oracle.serial(*ref)
    assert_close_to_scale("out", b["out"], ref_out, rel=REL)
    assert_close_to_scale("state", b["state_out"], ref_state, rel=REL)


def test_thread_sanitizer_is_silent_on_the_real_kernels(sources, case, tmp_path, chunk):
    _, _, runs = run_chunked(sources, case, tmp_path, chunk, sanitize=True)
    for r in runs:
        assert r.returncode == 0 and "ThreadSanitizer" not in r.stderr, r.stderr[-3000:]


def test_removing_one_barrier_is_caught(sources, case, tmp_path, chunk):
    """Drop the barrier that publishes a staged round before it is read: ThreadSanitizer reports it."""
    marker = "DS_SYNC();  // round jj is in for everyone"
    assert sources["chunk_state"].count(marker) == 1
    broken = sources["chunk_state"].replace(marker, "// barrier removed by the test")
    _, _, runs = run_chunked(sources, case, tmp_path, chunk, sanitize=True, broken={"chunk_state": broken})
    assert "ThreadSanitizer: data race" in runs[1].stderr
