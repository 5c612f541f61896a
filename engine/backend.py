"""Which MLX backend runs the model, which dtype `auto` means there, and which BLAS the CPU backend uses."""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from pathlib import Path

import mlx.core as mx

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
# Debian/Ubuntu (libopenblas0-pthread), Fedora and Homebrew-on-Linux locations of the threaded OpenBLAS.
OPENBLAS_GLOBS = (
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas*.so.0",
    "/usr/lib/libopenblas.so.0",
)


# MLX's CUDA backend replays recorded CUDA graphs from an LRU cache of MLX_CUDA_GRAPH_CACHE_SIZE (default 100)
# graphs of up to 20 kernels. A decode token alone is ~15 of them and each prefill shape adds dozens more, so
# after a few chunked prefills the default evicts the decode step's graphs and every token re-instantiates
# them: on an H200 decode after 512 / 2048 / 8192-token prefills ran at 307 / 264 tok/s with 100 and 403 / 345
# with 1000 (docs/BENCHMARKS.md, seventh pass). Beyond that MLX aborts the process ("Cache thrashing is
# happening") once the cache has missed more than twice its capacity over the process's life (the counter never
# resets): a server that sees many prompt lengths reaches that. Both are read when MLX first records a graph, so
# they are set before any GPU work.
LONG_RUNNING_ENV = {"MLX_ENABLE_CACHE_THRASHING_CHECK": "0", "MLX_CUDA_GRAPH_CACHE_SIZE": "1000"}


CACHE_FRACTION = 4  # MLX's buffer cache may hold up to 1/4 of the GPU's memory (prefill steps reuse it)


def configure_long_running() -> None:
    """Environment a long-running MLX process needs (a value the user set is kept), and a bound on MLX's buffer
    cache: prefill keeps freed buffers for the next step (freeing them costs time on CUDA), so the cache, not
    per-step frees, is what keeps a server's memory bounded."""
    for name, value in LONG_RUNNING_ENV.items():
        os.environ.setdefault(name, value)
    memory = (mx.device_info() if hasattr(mx, "device_info") else {}).get("memory_size")
    if memory:  # GPUs report it; the CPU backend keeps MLX's own small cache limit
        limit = memory // CACHE_FRACTION
        previous = mx.set_cache_limit(limit)
        mx.set_cache_limit(min(previous, limit))


def backend_name() -> str:
    """'metal', 'cuda' or 'cpu': the device MLX runs the model on."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    return "cuda" if mx.cuda.is_available() else "cpu"


def resolve_dtype(name: str, backend: str | None = None) -> mx.Dtype:
    """`auto` is bfloat16 on GPUs and float32 on the CPU (MLX's CPU bf16 matmul has no BLAS: ~35x slower)."""
    if name == "auto":
        return mx.float32 if (backend or backend_name()) == "cpu" else mx.bfloat16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: mx.Dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def find_openblas() -> str | None:
    """Path of a system OpenBLAS shared library, if one is installed (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    for pattern in OPENBLAS_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    found = ctypes.util.find_library("openblas")
    return found if found and os.path.isabs(found) else None


def loaded_openblas() -> str | None:
    """Path of the OpenBLAS mapped into this process, if any (Linux)."""
    maps = Path("/proc/self/maps")
    text = maps.read_text() if maps.exists() else ""
    return next((line.split()[-1] for line in text.splitlines() if "libopenblas" in line), None)


def loaded_blas() -> str:
    """Human-readable name of the BLAS this process uses for MLX's CPU matmuls."""
    if sys.platform == "darwin":
        return "Accelerate"
    path = loaded_openblas()
    if path:
        return f"OpenBLAS ({path})"
    return "MLX's bundled reference BLAS (slow: install libopenblas0-pthread for ~30x faster CPU matmuls)"


def describe() -> str:
    """One line for start-up logs: backend, device and BLAS."""
    backend = backend_name()
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    device = info.get("device_name") or info.get("architecture") or "unknown device"
    blas = f", BLAS: {loaded_blas()}" if backend == "cpu" else ""
    return f"backend: {backend} ({device}){blas}"
