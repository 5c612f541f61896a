"""Run the Metal form of our kernels on the CPU: the exact MSL MLX would compile, one OS thread per GPU
thread meeting at a real std::barrier, built by g++ (optionally under ThreadSanitizer).

1. `extract_metal_sources` traces the kernels inside `mx.export_function` (no Metal device needed since
   MLX 0.32) with verbose=True and captures the generated source MLX prints to C++ stdout.
2. `Emulator` parses the kernel signature, writes a driver that feeds it NumPy buffers, compiles it with
   metal_shim.h, and runs every threadgroup of a grid.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TYPES = {"float": np.float32, "int32_t": np.int32, "int": np.int32, "bfloat16_t": np.uint16}  # bf16 as raw bits
PARAM = re.compile(r"(?:const )?(?:device|constant) (\w+)\* (\w+) \[\[buffer\((\d+)\)\]\]")
ATTR = re.compile(r"(uint3|uint) (\w+) \[\[(\w+)\]\]")
ATTR_VALUES = {
    "thread_position_in_threadgroup": "uint3{t, 0, 0}",
    "threadgroup_position_in_grid": "uint3{x, y, z}",
    "thread_index_in_simdgroup": "(uint)(t % 32)",
    "simdgroup_index_in_threadgroup": "(uint)(t / 32)",
    "thread_position_in_grid": "uint3{x * tg + t, y, z}",
}

TRACE_SCRIPT = textwrap.dedent(
    """
    import sys, mlx.core as mx
    sys.path.insert(0, {repo!r})
    from kernels import gpu, norm
    from tests.kernels.inputs import make_gdn_inputs
    if {plan!r} is not None:  # a forced state-pass staging plan (WS, KR, SPAD, NBUF)
        gpu.state_staging = lambda *a: {plan!r}
    if {tiles!r} is not None:  # a forced state-pass tiling (TV, NT)
        gpu.STATE_TILE, gpu.STATE_THREADS = {tiles!r}
    _, (q, k, v, g, b, s) = make_gdn_inputs(**{shape!r})
    def f(q, k, v, g, b, s):
        B, _, Hk, Dk = q.shape
        Hv, Dv = v.shape[2:]
        cd = 2 * Hk * Dk + Hv * Dv  # the decode kernel's inputs: only their shapes and dtypes matter here
        row, past, w, ab, hv = (mx.zeros(x) for x in ((B, 1, cd), (B, 3, cd), (cd, 4, 1), (B, 1, Hv), (Hv,)))
        return [*gpu.chunked(q, k, v, g, b, s, chunk_size={C}, backend="metal", verbose=True),
                *gpu.serial(q, k, v, g, b, s, backend="metal", verbose=True),
                *gpu.decode(row, past, w, ab, ab, hv, hv, s, mx.zeros((B, 1, Hv, Dv)), mx.zeros((Dv,)),
                            num_k_heads=Hk, head_k_dim=Dk, eps=1e-6, backend="metal", verbose=True),
                *gpu.prologue(mx.zeros((B, 5, cd)), past, w, num_k_heads=Hk, head_k_dim=Dk, num_v_heads=Hv,
                              backend="metal", verbose=True),
                *norm._kernel("metal")(inputs=[mx.zeros((1, 3, 200))] * 2 + [mx.zeros((200,))],
                                       output_shapes=[(1, 3, 200)] * 2, output_dtypes=[mx.float32] * 2,
                                       grid=(3 * norm.THREADS, 1, 1), threadgroup=(norm.THREADS, 1, 1),
                                       template=[("OutT", mx.float32), ("D", 200), ("NT", norm.THREADS),
                                                 ("EPS", 0x358637BD)], verbose=True),
                *norm._kernel("metal", "gated_rms_norm")(
                    inputs=[mx.zeros((1, 3, 5, 128))] * 2 + [mx.zeros((128,))], output_shapes=[(1, 3, 5, 128)],
                    output_dtypes=[mx.float32], grid=(2 * 32 * norm.GATED_ROWS, 1, 1),
                    threadgroup=(32 * norm.GATED_ROWS, 1, 1),
                    template=[("OutT", mx.float32), ("WT", mx.float32), ("D", 128), ("RPG", norm.GATED_ROWS),
                              ("EPS", 0x358637BD), ("ZP", 5 * 128), ("ZO", 0)], verbose=True)]
    mx.export_function({out!r}, f, q, k, v, g, b, s)
    """
)


def extract_metal_sources(shape: dict, chunk_size: int, workdir: Path, plan: tuple | None = None,
                          tiles: tuple | None = None) -> dict[str, str]:
    """{kernel name: generated MSL} for the chunked (prep, state, out), serial, decode and prologue kernels at `shape`
    (`plan`: force the state pass's staging plan, e.g. CUDA's deeper ring, which Metal's planner does not pick;
    `tiles`: its (TV, NT) tiling)."""
    script = TRACE_SCRIPT.format(repo=str(REPO), shape=shape, C=chunk_size, out=str(workdir / "trace.mlxfn"),
                                 plan=plan, tiles=tiles)
    # MLX prints from C++: only the child process's real stdout sees it
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = re.findall(r"Generated source code for `([^`]+)`:\n```\n(.*?)\n```", run.stdout, flags=re.S)
    return {name.removeprefix("deltaserve_gdn_").removeprefix("deltaserve_"): source for name, source in found}


@dataclass
class Signature:
    function: str  # instantiated name, e.g. custom_kernel_x<16, 32>
    params: list[tuple[str, str]]  # (type, name) in argument order
    attrs: list[str]  # attribute parameter names in order


def parse_signature(source: str) -> Signature:
    inst = re.search(r"decltype\((custom_kernel_\w+<[^>]*>)\)", source)
    function = inst.group(1) if inst else re.search(r"void (custom_kernel_\w+)\(", source).group(1)
    start = source.index("[[kernel]] void")
    header = source[start : source.index(") {", start)]
    params = [(t, n) for t, n, _ in PARAM.findall(header)]
    attrs = [n for _, n, _ in ATTR.findall(header)]
    return Signature(function, params, attrs)


def driver_source(sig: Signature, kernel_file: Path) -> str:
    loads = "\n".join(f'  auto b{i} = load(dir + "/{n}.bin");' for i, (_, n) in enumerate(sig.params))
    saves = "\n".join(f'  save(dir + "/{n}.bin", b{i});' for i, (_, n) in enumerate(sig.params))
    args = [f"({t}*)b{i}.data()" for i, (t, _) in enumerate(sig.params)]
    args += [ATTR_VALUES[a] for a in sig.attrs]
    return f"""
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <iterator>
#include <string>
#include <thread>
#include <vector>
using EmuThread = std::thread;  // the shim's address-space macros make `thread` vanish below
#include "{HERE / 'metal_shim.h'}"
#include "{kernel_file}"

static std::vector<char> load(const std::string& path) {{
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {{}});
}}
static void save(const std::string& path, const std::vector<char>& data) {{
  std::ofstream(path, std::ios::binary).write(data.data(), data.size());
}}

int main(int argc, char** argv) {{
  const std::string dir = argv[1];
  const unsigned gx = std::atoi(argv[2]), gy = std::atoi(argv[3]), gz = std::atoi(argv[4]);
  const unsigned tg = std::atoi(argv[5]);
{loads}
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {{
        std::barrier<> group_barrier(tg);
        std::vector<std::unique_ptr<std::barrier<>>> simd_barriers;  // one per 32-lane simdgroup
        for (unsigned s = 0; s < tg; s += 32)
          simd_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, tg - s)));
        std::vector<float> scratch(tg);
        std::vector<EmuThread> threads;
        for (unsigned t = 0; t < tg; ++t)
          threads.emplace_back([&, t] {{
            emu_group = EmuGroup{{&group_barrier, simd_barriers[t / 32].get(), scratch.data(), (int)t, 32}};
            {sig.function}({", ".join(args)});
          }});
        for (auto& th : threads) th.join();
      }}
{saves}
  return 0;
}}
"""


class Emulator:
    """One compiled kernel: `run(buffers, groups, threads)` -> buffers after the kernel."""

    def __init__(self, source: str, workdir: Path, sanitize: bool = False):
        self.sig = parse_signature(source)
        tag = hashlib.sha1((source + str(sanitize)).encode()).hexdigest()[:12]
        self.workdir = workdir / tag
        self.workdir.mkdir(parents=True, exist_ok=True)
        kernel_file = self.workdir / "kernel.metal"
        kernel_file.write_text(source)
        driver = self.workdir / "driver.cpp"
        driver.write_text(driver_source(self.sig, kernel_file))
        self.exe = self.workdir / "emulate"
        flags = ["-fsanitize=thread", "-g", "-O1"] if sanitize else ["-O2"]
        cmd = ["g++", "-std=c++20", "-Wno-attributes", *flags, str(driver), "-o", str(self.exe), "-lpthread"]
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert build.returncode == 0, build.stderr[-4000:]

    def run(self, buffers: dict[str, np.ndarray], groups: tuple[int, int, int], threads: int,
            env: dict | None = None) -> subprocess.CompletedProcess:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        for _, name in self.sig.params:  # `x_shape` parameters: MLX passes the input's shape
            if name.endswith("_shape") and name not in buffers:
                buffers[name] = np.array(buffers[name.removesuffix("_shape")].shape, np.int32)
        for t, name in self.sig.params:
            np.ascontiguousarray(buffers[name], dtype=TYPES[t]).tofile(data / f"{name}.bin")
        cmd = [str(self.exe), str(data), *map(str, groups), str(threads)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        for t, name in self.sig.params:
            raw = np.fromfile(data / f"{name}.bin", dtype=TYPES[t])
            buffers[name] = raw.reshape(buffers[name].shape)
        return result
