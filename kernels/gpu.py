"""Building and launching the GDN kernels on Apple GPUs (Metal) and NVIDIA GPUs (CUDA) from one body each.

`source = prelude[backend] + body`, `header = helpers[backend]` (kernels/src). Kernel objects are created
lazily on first use and cached per (backend, body); the output dtype and sizes are template arguments (MLX
types the input pointers itself; bodies convert every load with static_cast<float>), and the prompt length is
a 1-element int32 input, so one compiled kernel serves every length. Importing this module
compiles nothing and queries no GPU.
"""

from __future__ import annotations

import functools
from importlib import resources

import mlx.core as mx

PREP_THREADS = 256
STATE_THREADS = 128
OUT_THREADS = 256
STATE_TILE = 16  # DV columns per threadgroup in the sequential state pass
SLICE = {"cuda": 32, "metal": 16}  # operand columns staged per step (Metal: 32 KB of threadgroup memory)
GPU_CHUNK_SIZES = (16, 32, 64)  # T (C x C fp32) must fit threadgroup memory next to the operand slices
BODIES = {
    "chunk_prep": (("q", "k", "v", "g", "beta", "t_len"), ("w", "u", "kt", "p", "gc")),
    "chunk_state": (("w", "kt", "u", "gc", "state_in", "t_len"), ("hs", "r", "state_out")),
    "chunk_out": (("q", "hs", "r", "p", "gc", "t_len"), ("out",)),
    "serial": (("q", "k", "v", "g", "beta", "state_in", "t_len"), ("out", "state_out")),
}


def gpu_backend() -> str | None:
    """'metal' or 'cuda' when the default device is such a GPU, else None (CPU: the ops path)."""
    if mx.default_device() != mx.gpu:
        return None
    if mx.metal.is_available():
        return "metal"
    return "cuda" if mx.cuda.is_available() else None


def unsupported(q: mx.array, v: mx.array, chunk_size: int | None) -> str | None:
    """Why the kernels cannot take these shapes (the caller falls back to the ops path), or None."""
    Dk, Dv = q.shape[-1], v.shape[-1]
    if Dk % 32 or Dk > 256:
        return f"Dk={Dk} (kernels need a multiple of 32, at most 256)"
    if Dv % STATE_TILE:
        return f"Dv={Dv} (kernels need a multiple of {STATE_TILE})"
    if chunk_size is not None and chunk_size not in GPU_CHUNK_SIZES:
        return f"chunk size {chunk_size} (GPU kernels take {GPU_CHUNK_SIZES})"
    return None


def read_source(name: str) -> str:
    return resources.files("kernels.src").joinpath(name).read_text()


@functools.cache
def kernel(backend: str, body: str):
    """The MLX custom-kernel object for one body on one backend (built on first use)."""
    inputs, outputs = BODIES[body]
    source = read_source(f"prelude_{backend}.h") + read_source(f"gdn_{body}.body")
    header = read_source(f"helpers_{backend}.h")
    factory = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
    return factory(name=f"deltaserve_gdn_{body}", input_names=list(inputs), output_names=list(outputs),
                   source=source, header=header)


def _sizes(q: mx.array, v: mx.array) -> list[tuple[str, int]]:
    return [("DK", q.shape[-1]), ("DV", v.shape[-1]), ("HK", q.shape[2]), ("HV", v.shape[2])]


@functools.cache
def _length(T: int) -> mx.array:
    """The prompt length as a 1-element int32 array, made once per length (no upload per call)."""
    t = mx.array([T], dtype=mx.int32)
    mx.eval(t)
    return t


def _slice(backend: str, C: int, Dk: int, Dv: int) -> int:
    """Operand slice width: the backend's, unless the chunk or a head dim is not a multiple of it."""
    ks = min(SLICE[backend], C)
    return ks if Dk % ks == 0 and Dv % ks == 0 else 16


def chunked(q, k, v, g, beta, state, *, chunk_size: int, backend: str, verbose: bool = False):
    """Phase A over (chunk, head) in parallel; phase B over (head, DV tile), sequential over chunks, keeping
    the state on chip; then every chunk's outputs in parallel from the chunk-start states."""
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2:]
    C, N, BH = chunk_size, -(-T // chunk_size), B * Hv
    t_len, ks = _length(T), _slice(backend, chunk_size, Dk, Dv)
    to = 64 if Dv % 64 == 0 else STATE_TILE  # output columns per threadgroup
    sizes = _sizes(q, v)
    w, u, kt, p, gc = kernel(backend, "chunk_prep")(
        inputs=[q, k, v, g.astype(mx.float32), beta.astype(mx.float32), t_len],
        output_shapes=[(BH, N, C, Dk), (BH, N, C, Dv), (BH, N, C, Dk), (BH, N, C, C), (BH, N, C)],
        output_dtypes=[mx.float32] * 5,
        grid=(N * PREP_THREADS, BH, 1),
        threadgroup=(PREP_THREADS, 1, 1),
        template=[("C", C), *sizes, ("KS", ks), ("NT", PREP_THREADS)],
        verbose=verbose,
    )
    hs, r, new_state = kernel(backend, "chunk_state")(
        inputs=[w, kt, u, gc, state.astype(mx.float32), t_len],
        output_shapes=[(BH, N, Dk, Dv), (BH, N, C, Dv), (B, Hv, Dv, Dk)],
        output_dtypes=[mx.float32] * 3,
        grid=(Dv // STATE_TILE * STATE_THREADS, BH, 1),
        threadgroup=(STATE_THREADS, 1, 1),
        template=[("C", C), ("DK", Dk), ("DV", Dv), ("HV", Hv), ("TV", STATE_TILE), ("KS", ks),
                  ("NT", STATE_THREADS)],
        verbose=verbose,
    )
    (out,) = kernel(backend, "chunk_out")(
        inputs=[q, hs, r, p, gc, t_len],
        output_shapes=[v.shape],
        output_dtypes=[v.dtype],
        grid=(N * OUT_THREADS, Dv // to, BH),
        threadgroup=(OUT_THREADS, 1, 1),
        template=[("OutT", v.dtype), ("C", C), *sizes, ("TO", to), ("KS", ks), ("NT", OUT_THREADS)],
        verbose=verbose,
    )
    return out, new_state


def serial(q, k, v, g, beta, state, *, backend: str, verbose: bool = False):
    """One warp per (value row, head) walks the T tokens with its state row in registers."""
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2:]
    out, new_state = kernel(backend, "serial")(
        inputs=[q, k, v, g.astype(mx.float32), beta.astype(mx.float32), state.astype(mx.float32), _length(T)],
        output_shapes=[v.shape, (B, Hv, Dv, Dk)],
        output_dtypes=[v.dtype, mx.float32],
        grid=(Dv * 32, B * Hv, 1),
        threadgroup=(32, 1, 1),
        template=[("OutT", v.dtype), *_sizes(q, v)],
        verbose=verbose,
    )
    return out, new_state
