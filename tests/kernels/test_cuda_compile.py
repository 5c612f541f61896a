"""The CUDA form of the kernels compiles under NVRTC's rules, checked offline with nvcc where installed.

The text mirrors what MLX's `cuda_kernel` generates (ml-explore/mlx mlx/backend/cuda/custom_kernel.cpp):
header, then `__global__ void custom_kernel_<name>(const T* inputs..., T* outputs...)` with template
arguments as `constexpr int` / `using` lines before the body. `uint` is poisoned because NVRTC lacks it
(nvcc would accept it through host headers).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kernels import gpu

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
CUDA_TYPES = {"float32": "float", "bfloat16": "__nv_bfloat16", "float16": "__half", "int32": "int32_t"}
STUB = """#include <cstdint>
#include <cooperative_groups.h>
#define uint uint_is_not_available_under_NVRTC
"""


def cuda_text(body: str, in_types: dict[str, str], out_types: dict[str, str], template: dict) -> str:
    inputs, outputs = gpu.BODIES[body]
    params = [f"    const {CUDA_TYPES[in_types[n]]}* {n}" for n in inputs]
    params += [f"    {CUDA_TYPES[out_types[n]]}* {n}" for n in outputs]
    consts = [f"  using {k} = {CUDA_TYPES[v]};" if isinstance(v, str) else f"  constexpr int {k} = {v};"
              for k, v in template.items()]
    return (STUB + gpu.read_source("helpers_cuda.h") + "namespace mlx::core::cu {\n"
            + f"__global__ void custom_kernel_{body}(\n" + ",\n".join(params) + ") {\n" + "\n".join(consts) + "\n"
            + gpu.read_source("prelude_cuda.h") + gpu.read_source(f"gdn_{body}.body") + "\n}\n}\n")


SIZES = dict(DK=128, DV=128, HK=16, HV=16)
CASES = {
    "chunk_prep-bf16": ("chunk_prep", "bfloat16", dict(C=64, **SIZES, KS=gpu.SLICE["cuda"], NT=gpu.PREP_THREADS)),
    "chunk_state-bf16": ("chunk_state", "bfloat16", dict(C=64, **SIZES, TV=16, WS=128, KR=64,
                                                         NT=gpu.STATE_THREADS)),
    "chunk_out-bf16": ("chunk_out", "bfloat16", dict(OutT="bfloat16", C=64, **SIZES, TO=64, KS=32,
                                                     NT=gpu.OUT_THREADS)),
    "serial-fp32": ("serial", "float32", dict(OutT="float32", **SIZES)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_form_compiles(case, tmp_path):
    body, dtype, template = CASES[case]
    fp32 = {"g", "beta", "w", "u", "p", "gc", "hs", "r", "state_in", "state_out"}
    types = {n: "int32" if n == "t_len" else ("float32" if n in fp32 else dtype)
             for n in gpu.BODIES[body][0] + gpu.BODIES[body][1]}
    src = tmp_path / f"{body}.cu"
    src.write_text(cuda_text(body, types, types, template))
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(src), "-o", str(tmp_path / f"{body}.o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
