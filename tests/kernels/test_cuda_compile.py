"""The CUDA form of the kernels compiles under NVRTC's rules, checked offline with nvcc where installed.

The text mirrors what MLX's `cuda_kernel` generates (ml-explore/mlx mlx/backend/cuda/custom_kernel.cpp):
header, then `__global__ void custom_kernel_<name>(const T* inputs..., T* outputs...)` with template
arguments as `constexpr int` / `using` lines before the body. `uint` is poisoned because NVRTC lacks it
(nvcc would accept it through host headers).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import mlx.core as mx
import numpy as np
import pytest

from kernels import gpu
from tests.kernels.emulator.cuda_emulate import SHAPE_STRUCT, cuda_kernel_text

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
CUDA_TYPES = {"float32": "float", "bfloat16": "__nv_bfloat16", "float16": "__half", "int32": "int32_t"}
STUB = """#include <cstdint>
#include <cooperative_groups.h>
#define uint uint_is_not_available_under_NVRTC
""" + SHAPE_STRUCT


def cuda_text(body: str, in_types: dict[str, str], out_types: dict[str, str], template: dict) -> str:
    """One GDN body as MLX's `cuda_kernel` wraps it (prelude + body, GDN helpers as the header)."""
    inputs, outputs = gpu.BODIES[body]
    return kernel_text(body, *gpu.kernel_sources("cuda", f"gdn_{body}.body"), inputs, outputs,
                       in_types | out_types, template)


def kernel_text(name: str, source: str, header: str, inputs, outputs, types: dict[str, str], template: dict) -> str:
    """A kernel's source as MLX's `cuda_kernel` generates it for NVRTC (dtype names in `types` and as str template
    values), with `header` before it."""
    ctypes = {n: CUDA_TYPES[t] for n, t in types.items()}
    consts = {k: CUDA_TYPES[v] if isinstance(v, str) else v for k, v in template.items()}
    return cuda_kernel_text(name, source, header, inputs, outputs, ctypes, consts, STUB)


SIZES = dict(DK=128, DV=128, HK=16, HV=16)
PLAN = ("WS", "KR", "SPAD", "NBUF")
STAGING = dict(zip(PLAN, gpu.state_staging("cuda", 64, 128, 128), strict=True))  # bf16 keys, fp32 w
STAGING16 = dict(zip(PLAN, gpu.state_staging("cuda", 64, 128, 128, 2, 2), strict=True))  # 16-bit products
CASES = {
    f"{body}-bf16-{'tf32' if tf else '3xtf32'}": (body, "bfloat16", {"TF": tf, **template})
    for tf in (True, False)
    for body, template in [
        ("chunk_prep", dict(IX=True, KT="bfloat16", VT="bfloat16", WT="bfloat16" if tf else "float32", KX=True,
                            VX=True, C=64, **SIZES, KS=gpu.SLICE["cuda"], NT=gpu.PREP_THREADS)),
        ("chunk_state", dict(KT="bfloat16", WT="bfloat16" if tf else "float32", KX=True, C=64, **SIZES, TV=16,
                             **(STAGING16 if tf else STAGING), NT=gpu.STATE_THREADS)),
        ("chunk_out", dict(OutT="bfloat16", QT="bfloat16", HT="bfloat16" if tf else "float32", QX=True, C=64,
                           **SIZES, TO=64, KS=32, NT=gpu.OUT_THREADS)),
    ]
} | {
    "serial-fp32": ("serial", "float32", dict(OutT="float32", **SIZES, RPW=gpu.SERIAL_ROWS)),
    # fp16 inputs: the __half loads, copies and conversions
    "chunk_prep-fp16-tf32": ("chunk_prep", "float16", dict(IX=True, KT="float16", VT="float16", WT="float16", KX=True,
                                                          VX=True, TF=True, C=64, **SIZES, KS=32, NT=gpu.PREP_THREADS)),
    "chunk_state-fp16-tf32": ("chunk_state", "float16", dict(KT="float16", WT="float16", KX=True, TF=True, C=64,
                                                            **SIZES, TV=16, **STAGING16, NT=gpu.STATE_THREADS)),
    # bf16 keys with an fp32 w (the TF32 products: a plan too large for 16-bit ones, or MLX_ENABLE_TF32=0)
    "chunk_state-bf16-tf32-fp32w": ("chunk_state", "bfloat16", dict(KT="bfloat16", WT="float32", KX=True, TF=True,
                                                                   C=64, **SIZES, TV=16, **STAGING,
                                                                   NT=gpu.STATE_THREADS)),
    "chunk_out-fp16-tf32": ("chunk_out", "float16", dict(OutT="float16", QT="float16", HT="float16", QX=True, TF=True,
                                                        C=64, **SIZES, TO=64, KS=32, NT=gpu.OUT_THREADS)),
    "serial-fp16": ("serial", "float16", dict(OutT="float16", **SIZES, RPW=gpu.SERIAL_ROWS)),
    "decode-bf16": ("decode", "bfloat16", dict(OutT="bfloat16", WT="bfloat16", CK=4, **SIZES,
                                               RPW=gpu.decode_rows(128), EPS=gpu.float_bits(1e-6))),
    "decode-fp32": ("decode", "float32", dict(OutT="float32", WT="float32", CK=4, **SIZES, RPW=gpu.decode_rows(128),
                                              EPS=gpu.float_bits(1e-6))),
    # QP: qkv read in place from the fused projection (q | k | v, z, b, a) of the model's widths / a small one
    "prologue-bf16": ("prologue", "bfloat16", dict(OutT="bfloat16", CK=4, **SIZES, WPG=gpu.PROLOGUE_GROUPS,
                                                   QP=6144 + 2048 + 2 * 16)),
    "prologue-fp16-odd-dims": ("prologue", "float16", dict(OutT="float16", CK=4, DK=16, DV=24, HK=2, HV=2,
                                                           WPG=gpu.PROLOGUE_GROUPS, QP=112 + 48 + 2 * 2)),
}
# fp32 q / k with bf16 v (what the bf16 model passed before its prologue rounded q / k to bf16), TF32 products.
MODEL_MIX = {"q": "float32", "k": "float32"}
STAGING_FP32_KEYS = dict(zip(PLAN, gpu.state_staging("cuda", 64, 128, 128, 4), strict=True))
CASES |= {
    "chunk_prep-model-mix": ("chunk_prep", "bfloat16", dict(IX=False, KT="float32", VT="bfloat16", WT="float32",
                                                           KX=False, VX=True, TF=True, C=64, **SIZES, KS=32,
                                                           NT=gpu.PREP_THREADS)),
    "chunk_state-model-mix": ("chunk_state", "bfloat16", dict(KT="float32", WT="float32", KX=False, TF=True, C=64,
                                                             **SIZES, TV=16, **STAGING_FP32_KEYS,
                                                             NT=gpu.STATE_THREADS)),
    "chunk_out-model-mix": ("chunk_out", "bfloat16", dict(OutT="bfloat16", QT="float32", HT="float32", QX=False,
                                                         TF=True, C=64, **SIZES, TO=64, KS=32,
                                                         NT=gpu.OUT_THREADS)),
}


def nvcc(tmp_path, text: str, *flags: str) -> subprocess.CompletedProcess:
    """Compile one kernel text for the H100/H200 architecture; returns the finished process."""
    src = tmp_path / "kernel.cu"
    src.write_text(text)
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", *flags, "-c", str(src), "-o", str(tmp_path / "kernel.o")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_form_compiles(case, tmp_path):
    body, dtype, template = CASES[case]
    fp32 = {"g", "beta", "w", "u", "p", "gc", "hs", "r", "state_in", "state_out", "a_log", "dt_bias"}
    mix = MODEL_MIX if case.endswith("model-mix") else {}
    types = {n: "float32" if n in fp32 else mix.get(n, dtype)
             for n in gpu.BODIES[body][0] + gpu.BODIES[body][1]}
    wt = template.get("WT", template.get("HT", "float32"))  # the intermediates feeding only tensor cores
    types |= {n: wt for n in ("w", "p", "hs", "r") if n in types}
    r = nvcc(tmp_path, cuda_text(body, types, types, template))
    assert r.returncode == 0, r.stderr[-4000:]


# What a block may opt into: none known (48 KB of static shared memory, the CPU's answer) and an H100 / H200's
OPT_IN = {"48K": 0, "sm90": gpu.opt_in_bytes((9, 0))}


@pytest.mark.parametrize("card", list(OPT_IN))
@pytest.mark.parametrize("dk", [64, 128, 256])
@pytest.mark.parametrize("backend", ["cuda", "metal"])
def test_state_pass_staging_plan_matches_the_compiled_shared_memory(dk, backend, card, tmp_path, monkeypatch):
    """The plan `unsupported` and the launch rely on: ptxas's own shared-memory count of the state pass equals
    the byte count the plan is checked with, for CUDA's and Metal's plans (the body is the same)."""
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: OPT_IN[card])
    ws, kr, pad, nbuf = gpu.state_staging(backend, 64, dk, 128, 4)  # fp32 keys (KT = float32 below)
    template = dict(KT="float32", WT="float32", KX=False, TF=False, C=64, DK=dk, DV=128, HK=16, HV=16,
                    TV=gpu.STATE_TILE, WS=ws, KR=kr, SPAD=pad, NBUF=nbuf, NT=gpu.STATE_THREADS)
    types = dict.fromkeys(gpu.BODIES["chunk_state"][0] + gpu.BODIES["chunk_state"][1], "float32")
    r = nvcc(tmp_path, cuda_text("chunk_state", types, types, template), "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    # ptxas counts the static part; the CUDA form's ring is the launch's dynamic shared memory
    smem = int(re.search(r"(\d+) bytes smem", r.stderr).group(1)) + gpu.ring_bytes(64, dk, ws, kr, nbuf, 4, 4)
    assert smem == gpu._state_bytes(64, dk, ws, kr, pad, nbuf, 4)
    fits = smem <= gpu.state_budget(backend)
    q, v = mx.zeros((1, 1, 1, dk)), mx.zeros((1, 1, 1, 128))
    assert (gpu.unsupported(q, v, 64, backend) is None) == fits


@pytest.mark.parametrize("card", list(OPT_IN))
@pytest.mark.parametrize("C", [16, 32, 64])
@pytest.mark.parametrize("dk", [64, 128, 256])
def test_16_bit_state_pass_plan_matches_the_compiled_shared_memory(dk, C, card, tmp_path, monkeypatch):
    """The same for the 16-bit products (bf16 keys and w): where ptxas's count fits, gpu.w_dtype picks them; where
    it does not (the copy of S in 16 bits beside the fp32 one), it keeps an fp32 w and the TF32 products."""
    monkeypatch.setattr(gpu, "opt_in_shared_bytes", lambda: OPT_IN[card])
    ws, kr, pad, nbuf = gpu.state_staging("cuda", C, dk, 128, 2, 2)
    template = dict(KT="bfloat16", WT="bfloat16", KX=True, TF=True, C=C, DK=dk, DV=128, HK=16, HV=16,
                    TV=gpu.STATE_TILE, WS=ws, KR=kr, SPAD=pad, NBUF=nbuf, NT=gpu.STATE_THREADS)
    types = dict.fromkeys(gpu.BODIES["chunk_state"][0] + gpu.BODIES["chunk_state"][1], "float32")
    types |= {"k": "bfloat16", "w": "bfloat16"}
    r = nvcc(tmp_path, cuda_text("chunk_state", types, types, template), "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]  # the state and R accumulators stay in registers
    smem = int(re.search(r"(\d+) bytes smem", r.stderr).group(1)) + gpu.ring_bytes(C, dk, ws, kr, nbuf, 2, 2)
    assert smem == gpu._state_bytes(C, dk, ws, kr, pad, nbuf, 2, 2)
    k, v = mx.zeros((1, 1, 1, dk), dtype=mx.bfloat16), mx.zeros((1, 1, 1, 128), dtype=mx.bfloat16)
    want = mx.bfloat16 if smem <= gpu.state_budget("cuda") else mx.float32
    assert gpu.w_dtype("cuda", True, k, k, v, C) == want


@pytest.mark.parametrize("dtype,D", [("bfloat16", 256), ("float16", 128), ("bfloat16", 64)])
def test_attention_kernel_compiles_without_spills(dtype, D, tmp_path):
    """The fused attention kernel (CUDA only) as MLX would wrap it: compiles for sm_90, and its O tile (D / 2
    floats a thread at D = 256) stays in registers (a spill would put it in local memory every key tile)."""
    header = gpu.read_source("helpers_cuda.h") + gpu.read_source("attention_cuda.h")
    text = kernel_text("attn", gpu.read_source("attention_cuda.body"), header,
                       ("q", "k", "v"), ("out",), dict.fromkeys(("q", "k", "v", "out"), dtype),
                       dict(DT=dtype, D=D, HQ=8, HKV=2))
    r = nvcc(tmp_path, text, "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("body", ["attention_decode", "attention_decode+norms", "attention_combine"])
def test_decode_attention_kernels_compile_without_spills(body, dtype, tmp_path):
    """The split decode attention's two kernels at the model's head size (D = 256: 8 floats of q and of the
    output a lane) compile for sm_90 with nothing in local memory; the first also where it applies the q / k
    norms and RoPE itself (64 rotary dims)."""
    from kernels import attention

    body, norms = body.split("+")[0], body.endswith("+norms")
    inputs, outputs = attention.DECODE_BODIES[body]
    types = {n: "int32" if n == "n" else "float32" if n in ("po", "pm", "pl") else dtype for n in inputs + outputs}
    template = dict(DT=dtype, D=256, HQ=8, NT=attention.DECODE_THREADS)
    if body == "attention_decode":
        norm = attention.QKNorm(mx.zeros(256), mx.zeros(256), 1e-6, 64, 1e7)
        template |= dict(HKV=2, CH=attention.DECODE_KEYS, PREP=int(norms))
        template |= dict(norm.template()) if norms else dict(R=0, EPS=0, LB=0)
    text = kernel_text(body, *gpu.kernel_sources("cuda", f"{body}_cuda.body"), inputs, outputs, types, template)
    r = nvcc(tmp_path, text, "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_qk_norm_rope_kernel_compiles_without_spills(dtype, tmp_path):
    """The q / k preparation kernel at the model's shapes (D = 256, 64 rotary dims, 8 over 2 heads)."""
    from kernels import attention

    inputs, outputs = attention.QK_NAMES
    types = {n: "int32" if n == "pos" else dtype for n in inputs + outputs}
    template = dict(OutT=dtype, D=256, R=64, HQ=8, HKV=2, RPG=attention.QK_ROWS,
                    EPS=gpu.float_bits(1e-6), LB=gpu.float_bits(float(np.log2(np.float32(1e7)))))
    text = kernel_text("qk_norm_rope", *gpu.kernel_sources("cuda", "qk_norm_rope_cuda.body"), inputs, outputs,
                       types, template)
    r = nvcc(tmp_path, text, "-Xptxas", "-v")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]
