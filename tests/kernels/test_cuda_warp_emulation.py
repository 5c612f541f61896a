"""The CUDA helpers' tensor-core block product, run on the CPU: helpers_cuda.h compiled by g++ against
tests/kernels/emulator/cuda_shim.h (its CUDA names, and ptx_shim.h: 32 threads a warp; mma.sync and ldmatrix as
the PTX ISA lays out their fragments), every way ds_mma_block fetches its A operand, checked against a float64
product of the same values. A wrong fragment index in a fetch path is an O(1) error; rounding to TF32 is ~1e-3."""

from __future__ import annotations

import shutil
import subprocess
import zlib

import numpy as np
import pytest

from tests.kernels.emulator.emulate import HERE, REPO

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")

# (name, A element type, A layout, ALOAD)
MODES = [
    ("scalar-fp32-rows", "float", "rows", "DS_A_SCALAR"),
    ("scalar-bf16-cols", "__nv_bfloat16", "cols", "DS_A_SCALAR"),
    ("ldmatrix-fp32-rows", "float", "rows", "DS_A_ROWS32"),
    ("ldmatrix-bf16-rows", "__nv_bfloat16", "rows", "DS_A_ROWS16"),
    ("ldmatrix-fp16-rows", "__half", "rows", "DS_A_ROWS16"),
    ("ldmatrix-bf16-cols", "__nv_bfloat16", "cols", "DS_A_COLS16"),
    ("ldmatrix-fp16-cols", "__half", "cols", "DS_A_COLS16"),
]
HARNESS = r"""
#include <cstdio>
#include <thread>
#include <vector>
#include "{shim}"
#include "{helpers}"

// C (16 MT x 8 NB, row-major) = A B through one warp's ds_mma_block;
// A(m, k) = a[m am + k ak], B(k, n) = b[k bk + n bn].
template <int MT, int NB, bool AE, bool FAST, int ALOAD, typename TA>
void product(const TA* a, int am, int ak, const float* b, int bk, int bn, float* C) {{
  std::barrier<> bar(32);
  ds_warp w{{}};
  w.bar = &bar;
  std::vector<std::thread> lanes;
  for (int L = 0; L < 32; ++L) {{
    lanes.emplace_back([&, L] {{
      ds_w = &w;
      ds_lane = L;
      float acc[MT * NB * 4] = {{}};
      ds_mma_block<MT, NB, AE, false, FAST, ALOAD>(acc, a, am, ak, b, bk, bn, L);
      const int g = L >> 2, t = L & 3;
      for (int m = 0; m < MT; ++m)
        for (int n = 0; n < NB; ++n)
          for (int e = 0; e < 4; ++e)
            C[(16 * m + g + 8 * (e / 2)) * 8 * NB + 8 * n + 2 * t + e % 2] = acc[(m * NB + n) * 4 + e];
    }});
  }}
  for (auto& th : lanes) th.join();
}}

int main() {{
  constexpr int MT = {mt}, NB = {nb}, M = 16 * MT, N = 8 * NB;
  static {ta} a[{a_size}] __attribute__((aligned(16)));
  static float b[{b_size}] __attribute__((aligned(16)));
  static float C[M * N];
  std::FILE* f = std::fopen("{inputs}", "rb");
  if (std::fread(a, sizeof(a), 1, f) != 1 || std::fread(b, sizeof(b), 1, f) != 1) return 2;
  std::fclose(f);
  product<MT, NB, {aexact}, {fast}, {aload}>(a, {am}, {ak}, b, {bk}, {bn}, C);
  f = std::fopen("{outputs}", "wb");
  std::fwrite(C, sizeof(C), 1, f);
  std::fclose(f);
  return 0;
}}
"""


def _as_bits(x: np.ndarray, ctype: str) -> np.ndarray:
    if ctype == "float":
        return x.astype(np.float32)
    if ctype == "__half":
        return x.astype(np.float16).view(np.uint16)
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # bf16 of a value already bf16-exact


MT, NB = 2, 2  # two row tiles and two column tiles: each fragment is reused, as the kernels reuse them
M, N, K = 16 * MT, 8 * NB, 8


def _operands(ctype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A [M, K] of values the element type holds exactly, B [K, N] of fp32 values (float64 arrays)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K))
    if ctype == "__nv_bfloat16":
        A = (A.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    elif ctype == "__half":
        A = A.astype(np.float16).astype(np.float64)
    return A, rng.standard_normal((K, N)).astype(np.float32).astype(np.float64)


def _stores(A, B, ctype: str, layout: str, b_transposed: bool):
    """A and B laid out as the kernels keep them in shared memory (rows padded to 16 bytes past their end; "cols":
    A stored transposed), with the strides ds_mma_block takes: (a bits, am, ak, b, bk, bn)."""
    if layout == "rows":
        pitch = K + (4 if ctype == "float" else 8)
        store, am, ak = np.zeros((M, pitch)), pitch, 1
        store[:, :K] = A
    else:
        pitch = M + 8
        store, am, ak = np.zeros((K, pitch)), 1, pitch
        store[:, :M] = A.T
    if b_transposed:
        bstore, bk, bn = np.zeros((N, K + 4)), 1, K + 4
        bstore[:, :K] = B.T
    else:
        bstore, bk, bn = np.zeros((K, N + 4)), N + 4, 1
        bstore[:, :N] = B
    return _as_bits(store.ravel(), ctype), am, ak, bstore.ravel().astype(np.float32), bk, bn


@pytest.mark.parametrize("b_transposed", [False, True], ids=["B-rows", "B-cols"])
@pytest.mark.parametrize("fast", [False, True], ids=["3xTF32", "TF32"])
@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_block_product_matches_float64(tmp_path, mode, fast, b_transposed):
    name, ctype, layout, aload = mode
    A, B = _operands(ctype, zlib.crc32(f"{name}-{fast}-{b_transposed}".encode()))
    a_bits, am, ak, b_bits, bk, bn = _stores(A, B, ctype, layout, b_transposed)
    inputs, outputs = tmp_path / "in.bin", tmp_path / "out.bin"
    inputs.write_bytes(a_bits.tobytes() + b_bits.tobytes())
    src, exe = tmp_path / "harness.cpp", tmp_path / "harness"
    src.write_text(HARNESS.format(
        shim=HERE / "cuda_shim.h", helpers=REPO / "kernels" / "src" / "helpers_cuda.h", ta=ctype,
        a_size=a_bits.size, b_size=b_bits.size, inputs=inputs, outputs=outputs,
        aexact=str(ctype != "float").lower(), fast=str(fast).lower(), aload=aload, am=am, ak=ak, bk=bk, bn=bn,
        mt=MT, nb=NB))
    build = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", str(src), "-o", str(exe)], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = np.frombuffer(outputs.read_bytes(), dtype=np.float32).reshape(M, N)
    want = A @ B
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < (4e-3 if fast else 1e-5), f"max error {rel:.2e} of the product's scale"
