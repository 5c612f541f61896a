"""Run the CUDA form of our kernels on the CPU: the same prelude + body + helpers MLX's `cuda_kernel` compiles,
built by g++ against cuda_shim.h (one OS thread per GPU thread, a barrier per block, ptx_shim.h's warp
primitives per 32 threads), optionally under ThreadSanitizer.

`record_launches(fn)` runs `fn` with the kernel factories (`kernels.gpu.kernel`, `kernels.attention._kernel`,
`kernels.norm._kernel`) replaced by a recorder, so the launches come from the real planning code (templates,
grids, chained intermediates) without a GPU; `run_launches` then executes them in order, feeding each kernel's
emulated outputs to the launches that read them.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from kernels import attention, gemv, gpu, norm

HERE = Path(__file__).resolve().parent
CTYPES = {mx.float32: "float", mx.bfloat16: "__nv_bfloat16", mx.float16: "__half", mx.int32: "int32_t"}
NP = {"float": np.float32, "__nv_bfloat16": np.uint16, "__half": np.uint16, "int32_t": np.int32}  # raw bits


@dataclass
class Launch:
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str  # the kernel body (prelude included) and the header MLX compiles before it
    header: str
    shared: int  # launch-sized shared memory (bytes)
    inputs: list[mx.array]
    outputs: list[mx.array]  # placeholders standing for the kernel's outputs
    template: list[tuple[str, object]]
    blocks: tuple[int, int, int]
    threads: int


def record_launches(fn: Callable[[], object]) -> tuple[object, list[Launch]]:
    """fn()'s result (its arrays are placeholders) and the kernel launches it made, in order."""
    launches: list[Launch] = []

    def recorder(name, names, source, header, shared=0):
        def launch(*, inputs, output_shapes, output_dtypes, grid, threadgroup, template, verbose=False):
            outs = [mx.zeros(s, dtype=d) for s, d in zip(output_shapes, output_dtypes, strict=True)]
            blocks = tuple(g // t for g, t in zip(grid, threadgroup, strict=True))
            launches.append(Launch(name, *names, source, header, shared, list(inputs), outs, list(template), blocks,
                                   threadgroup[0]))
            return outs
        return launch

    def gdn_kernel(backend: str, body: str, shared: int = 0):
        return recorder(body, gpu.BODIES[body], *gpu.kernel_sources("cuda", f"gdn_{body}.body"), shared)

    def attention_kernel(shared: int):
        return recorder("attention", (("q", "k", "v"), ("out",)), gpu.read_source("attention_cuda.body"),
                        gpu.read_source("helpers_cuda.h") + gpu.read_source("attention_cuda.h"), shared)

    def norm_kernel(backend: str, body: str = "add_rms_norm"):
        return recorder(body, norm.BODIES[body], *gpu.kernel_sources("cuda", f"{body}.body"))

    def decode_attention_kernel(body: str):
        return recorder(body, attention.DECODE_BODIES[body], *gpu.kernel_sources("cuda", f"{body}_cuda.body"))

    def qk_kernel():
        return recorder("qk_norm_rope", attention.QK_NAMES, *gpu.kernel_sources("cuda", "qk_norm_rope_cuda.body"))

    def gemv_kernel():
        return recorder("add_norm_gemv", gemv.NAMES, *gpu.kernel_sources("cuda", "add_norm_gemv_cuda.body"))

    recorders = [(gpu, "kernel", gdn_kernel), (attention, "_kernel", attention_kernel), (norm, "_kernel", norm_kernel),
                 (attention, "_decode_kernel", decode_attention_kernel), (attention, "_qk_kernel", qk_kernel),
                 (gemv, "_kernel", gemv_kernel)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in recorders]
    for owner, name, recorder_fn in recorders:
        setattr(owner, name, recorder_fn)
    try:
        return fn(), launches
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _bits(a: mx.array) -> np.ndarray:
    if a.dtype in (mx.bfloat16, mx.float16):
        return np.array(a.view(mx.uint16))
    return np.array(a)


SHAPE_STRUCT = """struct Shape {  // mlx/backend/cuda/device/utils.cuh: cuda::std::array<int32_t, MAX_NDIM>
  int32_t v[8];
  __device__ const int32_t& operator[](int i) const { return v[i]; }
};
"""


def cuda_kernel_text(name: str, source: str, header: str, inputs, outputs, types: dict[str, str],
                     template: dict[str, str | bool | int], prefix: str) -> str:
    """A kernel's source as MLX's `cuda_kernel` generates it around `source` (C types in `types`; a str template
    value is a C type), with `prefix` (includes, the Shape struct) and `header` before it."""
    params = []
    for n in inputs:  # MLX adds `const __grid_constant__ Shape x_shape` after x when the source names it
        params.append(f"    const {types[n]}* {n}")
        if f"{n}_shape" in source:
            params.append(f"    const __grid_constant__ Shape {n}_shape")
    params += [f"    {types[n]}* {n}" for n in outputs]
    consts = [f"  using {k} = {v};" if isinstance(v, str)
              else f"  constexpr bool {k} = {str(v).lower()};" if isinstance(v, bool)
              else f"  constexpr int {k} = {v};" for k, v in template.items()]
    return (prefix + header + "namespace mlx::core::cu {\n"
            + f"__global__ void custom_kernel_{name}(\n" + ",\n".join(params) + ") {\n" + "\n".join(consts) + "\n"
            + source + "\n}\n}\n")


def kernel_source(launch: Launch, types: dict[str, str]) -> str:
    """The kernel as MLX wraps it for NVRTC, with the CPU shim in front instead of the CUDA headers (dynamic shared
    memory becomes a static array of the launch's size: blocks run one at a time)."""
    source = launch.source
    if launch.shared:
        source = re.sub(r"extern __shared__ __align__\(16\) unsigned char (\w+)\[\];",
                        rf"__shared__ __align__(16) unsigned char \1[{launch.shared}];", source)
    template = {k: CTYPES[v] if isinstance(v, mx.Dtype) else v for k, v in launch.template}
    return cuda_kernel_text(launch.name, source, launch.header, launch.input_names, launch.output_names, types,
                            template, f'#include "{HERE / "cuda_shim.h"}"\n' + SHAPE_STRUCT)


def driver_source(launch: Launch, types: dict[str, str], kernel: Path) -> str:
    inputs, outputs = launch.input_names, launch.output_names
    names = [*inputs, *outputs]
    loads = "\n".join(f'  auto b{i} = load(dir + "/{n}.bin");' for i, n in enumerate(names))
    saves = "\n".join(f'  save(dir + "/{n}.bin", b{i});' for i, n in enumerate(names) if n in outputs)
    shapes = {n: [int(x) for x in a.shape] for n, a in zip(inputs, launch.inputs, strict=True)}
    args = []
    for i, n in enumerate(names):
        args.append(f"({'const ' if n in inputs else ''}{types[n]}*)b{i}.data()")
        if n in inputs and f"{n}_shape" in kernel.read_text():
            args.append("Shape{{" + ", ".join(map(str, shapes[n] + [0] * (8 - len(shapes[n])))) + "}}")
    gx, gy, gz = launch.blocks
    return f"""
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include "{kernel}"

static std::vector<char> load(const std::string& path) {{
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {{}});
}}
static void save(const std::string& path, const std::vector<char>& data) {{
  std::ofstream(path, std::ios::binary).write(data.data(), data.size());
}}

int main(int, char** argv) {{
  const std::string dir = argv[1];
  const unsigned nt = {launch.threads};
{loads}
  for (unsigned z = 0; z < {gz}; ++z)
    for (unsigned y = 0; y < {gy}; ++y)
      for (unsigned x = 0; x < {gx}; ++x) {{
        std::barrier<> block(nt);
        std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
        std::vector<std::unique_ptr<ds_warp>> warps;
        for (unsigned s = 0; s < nt; s += 32) {{
          warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
          warps.push_back(std::make_unique<ds_warp>());
          warps.back()->bar = warp_barriers.back().get();
        }}
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < nt; ++t)
          threads.emplace_back([&, t] {{
            threadIdx = dim3{{t, 0, 0}};
            blockIdx = dim3{{x, y, z}};
            ds_block_barrier = &block;
            ds_w = warps[t / 32].get();
            ds_lane = static_cast<int>(t % 32);
            mlx::core::cu::custom_kernel_{launch.name}({", ".join(args)});
          }});
        for (auto& th : threads) th.join();
      }}
{saves}
  return 0;
}}
"""


def run_launches(launches: list[Launch], workdir: Path, sanitize: bool = False) -> dict[int, np.ndarray]:
    """Emulate the launches in order; returns {id(placeholder): raw NumPy output} for every output."""
    results: dict[int, np.ndarray] = {}
    for n, launch in enumerate(launches):
        inputs, outputs = launch.input_names, launch.output_names
        types = {name: CTYPES[a.dtype] for name, a in zip(inputs, launch.inputs, strict=True)}
        types |= {name: CTYPES[a.dtype] for name, a in zip(outputs, launch.outputs, strict=True)}
        source = kernel_source(launch, types)
        tag = hashlib.sha1((source + str(sanitize)).encode()).hexdigest()[:12]
        build = workdir / f"{launch.name}-{tag}"
        build.mkdir(parents=True, exist_ok=True)
        kernel = build / "kernel.h"
        kernel.write_text(source)
        exe = build / "emulate"
        if not exe.exists():
            (build / "driver.cpp").write_text(driver_source(launch, types, kernel))
            flags = ["-fsanitize=thread", "-g", "-O1"] if sanitize else ["-O2"]
            cmd = ["g++", "-std=c++20", *flags, str(build / "driver.cpp"), "-o", str(exe), "-lpthread"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-4000:]
        data = workdir / f"data-{n}"
        data.mkdir(exist_ok=True)
        for name, a in zip(inputs, launch.inputs, strict=True):
            raw = results[id(a)] if id(a) in results else _bits(a)
            np.ascontiguousarray(raw, dtype=NP[types[name]]).tofile(data / f"{name}.bin")
        for name, a in zip(outputs, launch.outputs, strict=True):
            np.full(a.shape, np.nan if a.dtype == mx.float32 else 0, NP[types[name]]).tofile(data / f"{name}.bin")
        done = subprocess.run([str(exe), str(data)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and "ThreadSanitizer" not in done.stderr, done.stderr[-4000:]
        for name, a in zip(outputs, launch.outputs, strict=True):
            results[id(a)] = np.fromfile(data / f"{name}.bin", dtype=NP[types[name]]).reshape(a.shape)
    return results


def as_float(raw: np.ndarray, dtype: mx.Dtype) -> np.ndarray:
    """An emulated output's raw bits as float64."""
    if dtype == mx.bfloat16:
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype == mx.float16:
        return raw.view(np.float16).astype(np.float64)
    return raw.astype(np.float64)
