"""Building and launching the GDN kernels on Apple GPUs (Metal) and NVIDIA GPUs (CUDA) from one body each.

`source = prelude[backend] + body`, `header = helpers[backend]` (kernels/src). Kernel objects are created
lazily on first use and cached per (backend, body); the output dtype and sizes are template arguments (MLX
types the input pointers itself; bodies convert every load with static_cast<float>), and the prompt length is
read from an input's shape (`q_shape[1]`: MLX passes it with the launch), so one compiled kernel serves every
length. (It was a 1-element int32 input: MLX keeps arrays of <= 8 bytes in a small managed-memory pool, and
reading one from a kernel cost ~20 us a launch on an H200.) Importing this module compiles nothing and queries
no GPU.
"""

from __future__ import annotations

import functools
import os
import struct
from importlib import resources

import mlx.core as mx

PREP_THREADS = 256
STATE_THREADS = 256
OUT_THREADS = 256
STATE_TILE = 16  # DV columns per threadgroup in the sequential state pass
SERIAL_ROWS = 4  # state rows per 32-thread group in the serial kernel (they share the q / k loads)
DECODE_THREADS = 512  # at most, per threadgroup of the decode kernel: one head's DV rows (its norm reads them all)
PROLOGUE_GROUPS = 8  # tokens (32-thread groups) per threadgroup of the prefill prologue: neighbours share rows
SMEM_BYTES = {"cuda": 48 * 1024, "metal": 32 * 1024}  # static shared / threadgroup memory per group
# Shared memory one block may opt into, by compute capability (KB; CUDA programming guide), for sm_80+ cards
# (ldmatrix, cp.async and bf16 tensor cores).
OPT_IN_SMEM_KB = {(8, 0): 163, (8, 6): 99, (8, 7): 163, (8, 9): 99, (9, 0): 227, (10, 0): 227, (12, 0): 99}
# The state pass's threadgroup memory on CUDA, at most (its ring of round slots in dynamic shared memory): two
# blocks an SM still fit on sm_80 / sm_90 (B * Hv * Dv / 16 blocks can outnumber the SMs: B > 1).
STATE_SMEM_CAP = 96 * 1024
MLX_OPT_IN_ABOVE = 48000  # MLX raises a custom kernel's shared-memory limit only for dynamic requests above this
SLICE = {"cuda": 32, "metal": 16}  # operand columns staged per step (Metal: 32 KB of threadgroup memory)
HALF = (mx.bfloat16, mx.float16)  # 16-bit inputs: exact in TF32 (one tensor-core product, no split)
GPU_CHUNK_SIZES = (16, 32, 64)  # T (C x C fp32) must fit threadgroup memory next to the operand slices
BODIES = {
    "chunk_prep": (("q", "k", "v", "g", "beta"), ("w", "u", "p", "gc")),
    "chunk_state": (("k", "w", "u", "gc", "state_in"), ("hs", "r", "state_out")),
    "chunk_out": (("q", "hs", "r", "p", "gc"), ("out",)),
    "serial": (("q", "k", "v", "g", "beta", "state_in"), ("out", "state_out")),
    "prologue": (("qkv", "conv_state", "conv_w"), ("q", "k", "v", "conv_out")),
    "decode": (("qkv", "conv_state", "conv_w", "a_proj", "b_proj", "a_log", "dt_bias", "state_in", "z", "norm_w"),
               ("out", "conv_out", "state_out")),
}


def gpu_backend() -> str | None:
    """'metal' or 'cuda' when the default device is such a GPU, else None (CPU: the ops path)."""
    if mx.default_device() != mx.gpu:
        return None
    if mx.metal.is_available():
        return "metal"
    return "cuda" if mx.cuda.is_available() else None


def cuda_off(env: str) -> str | None:
    """Why CUDA-only kernels switched by `env` (="mlx": off) do not run here, or None."""
    if os.environ.get(env, "").strip().lower() == "mlx":
        return f"{env}=mlx"
    if mx.default_device() != mx.gpu or not mx.cuda.is_available():
        return "not an NVIDIA GPU"
    return None


def unsupported(q: mx.array, v: mx.array, chunk_size: int | None, backend: str) -> str | None:
    """Why the kernels cannot take these shapes (the caller falls back to the ops path), or None."""
    return unsupported_dims(q.shape[-1], v.shape[-1], chunk_size, backend, q.dtype.size)


def unsupported_dims(Dk: int, Dv: int, chunk_size: int | None, backend: str, key_bytes: int = 4) -> str | None:
    """`unsupported` from the head dims (and, for the chunked kernels, the chunk size and key element size)."""
    if Dk % 32 or Dk > 256:
        return f"Dk={Dk} (kernels need a multiple of 32, at most 256)"
    if Dv % max(STATE_TILE, 16):  # the state pass's value tile and the output kernel's 16-column warp tiles
        return f"Dv={Dv} (kernels need a multiple of {max(STATE_TILE, 16)})"
    if chunk_size is not None and chunk_size not in GPU_CHUNK_SIZES:
        return f"chunk size {chunk_size} (GPU kernels take {GPU_CHUNK_SIZES})"
    if chunk_size is not None:
        plan = state_staging(backend, chunk_size, Dk, Dv, key_bytes)
        if _state_bytes(chunk_size, Dk, *plan, key_bytes) > state_budget(backend):
            return f"Dk={Dk} with chunk size {chunk_size} ({backend} threadgroup memory)"
    return None


def tf32(backend: str, out_dtype: mx.Dtype) -> bool:
    """Whether the chunked kernels' products run in plain TF32 on tensor cores: on CUDA when the outputs are
    16-bit (rounded to 8 or 11 bits anyway; the model passes bf16 q / k / v), unless MLX_ENABLE_TF32=0,
    the switch that also keeps MLX's own fp32 matmuls off TF32 and that the numerics gates set. Otherwise
    3xTF32: fp32-level products."""
    enabled = os.environ.get("MLX_ENABLE_TF32", "1").strip().lower() not in ("0", "false", "off", "no")
    return backend == "cuda" and enabled and out_dtype in HALF


def read_source(name: str) -> str:
    return resources.files("kernels.src").joinpath(name).read_text()


def float_bits(x: float) -> int:
    """An fp32 value as the int its bits spell (template arguments are integers; DS_BITS_FLOAT reads it back)."""
    return struct.unpack("<i", struct.pack("<f", x))[0]


def kernel_sources(backend: str, body_file: str) -> tuple[str, str]:
    """(source, header) of a kernel body as MLX compiles it on `backend`: the prelude then the body, and the
    helpers header."""
    return read_source(f"prelude_{backend}.h") + read_source(body_file), read_source(f"helpers_{backend}.h")


def build_kernel(backend: str, name: str, body_file: str, inputs, outputs, shared: int = 0):
    """An MLX custom-kernel object (`deltaserve_<name>`) for one body file on one backend; `shared`: the bytes of
    dynamic shared memory its launches get (CUDA)."""
    source, header = kernel_sources(backend, body_file)
    kw = dict(name=f"deltaserve_{name}", input_names=list(inputs), output_names=list(outputs), source=source,
              header=header)
    if backend == "metal":
        return mx.fast.metal_kernel(**kw)
    return mx.fast.cuda_kernel(**kw, shared_memory=shared)


@functools.cache
def kernel(backend: str, body: str, shared: int = 0):
    """The MLX custom-kernel object for one GDN body on one backend (built on first use), per dynamic shared
    memory size (CUDA: the state pass's ring)."""
    return build_kernel(backend, f"gdn_{body}", f"gdn_{body}.body", *BODIES[body], shared)


def _sizes(q: mx.array, v: mx.array) -> list[tuple[str, int]]:
    return [("DK", q.shape[-1]), ("DV", v.shape[-1]), ("HK", q.shape[2]), ("HV", v.shape[2])]


def out_tile(Dv: int) -> int:
    """Value columns per threadgroup of the output kernel (its warp tiles are 16 columns wide)."""
    return 64 if Dv % 64 == 0 else 16


def _slice(backend: str, C: int, Dk: int, Dv: int) -> int:
    """Operand slice width: the backend's, unless the chunk or a head dim is not a multiple of it."""
    ks = min(SLICE[backend], C)
    return ks if Dk % ks == 0 and Dv % ks == 0 else 16


def opt_in_bytes(cc: tuple[int, int] | None) -> int:
    """Shared memory a block may use on a card of compute capability `cc` (0 where unknown or older than sm_80)."""
    if cc is None or cc < (8, 0):
        return 0
    return (OPT_IN_SMEM_KB.get(cc, 99) - 1) * 1024  # 1 KB per block is the driver's


@functools.cache
def opt_in_shared_bytes() -> int:
    """`opt_in_bytes` of this CUDA device."""
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    cc = (info.get("compute_capability_major"), info.get("compute_capability_minor"))
    return opt_in_bytes(None if None in cc else cc)


def state_budget(backend: str) -> int:
    """Threadgroup memory the state pass may plan with: Metal's 32 KB; on CUDA the 48 KB of static shared memory
    every card gives, or more where the card lets a block opt into more (up to STATE_SMEM_CAP): the ring of round
    slots is the launch's dynamic shared memory."""
    if backend != "cuda":
        return SMEM_BYTES[backend]
    return max(SMEM_BYTES[backend], min(opt_in_shared_bytes(), STATE_SMEM_CAP))


def dynamic_request(total: int, dynamic: int) -> int:
    """The dynamic shared memory to ask MLX for, for a kernel that needs `total` bytes of which `dynamic` are
    dynamic. MLX opts a kernel into more than 48 KB a block only where the dynamic part alone passes
    MLX_OPT_IN_ABOVE (mlx/backend/cuda/custom_kernel.cpp), and a launch over the limit fails without an error
    reaching Python (its outputs are left unwritten): where the total passes 48 KB, ask for at least just over
    that."""
    if total > SMEM_BYTES["cuda"]:
        return max(dynamic, MLX_OPT_IN_ABOVE + 16)
    return dynamic


def _slot_floats(C: int, Dk: int, ws: int, kr: int, key_bytes: int, w_bytes: int = 4) -> int:
    """One round slot of the state pass: WS columns of W (C rows, pitch WS + 16 / w_bytes elements) or KR rows
    of keys (pitch Dk + 8), in floats; both pitches keep rows 16-byte aligned."""
    return max(C * (ws + 16 // w_bytes) * w_bytes // 4, kr * (Dk + 8) * key_bytes // 4)


def _state_bytes(C: int, Dk: int, ws: int, kr: int, pad: int, nbuf: int, key_bytes: int = 2,
                 w_bytes: int = 4) -> int:
    """Threadgroup memory of the state pass (gdn_chunk_state.body): S and kdec R (rows padded by `pad` floats
    against bank conflicts; with 16-bit products, kdec R and a copy of S in 16 bits instead) and the ring of
    `nbuf` round slots."""
    rp = STATE_TILE + 4 if key_bytes == 2 else STATE_TILE + pad  # kdec R's pitch (16-bit keys: ldmatrix order)
    rs = 2 * (C + Dk) * (STATE_TILE + 8) if w_bytes == 2 else 4 * C * rp
    return 4 * Dk * (STATE_TILE + pad) + rs + ring_bytes(C, Dk, ws, kr, nbuf, key_bytes, w_bytes)


def ring_bytes(C: int, Dk: int, ws: int, kr: int, nbuf: int, key_bytes: int = 2, w_bytes: int = 4) -> int:
    """The state pass's ring of `nbuf` round slots (on CUDA its dynamic shared memory)."""
    return 4 * nbuf * _slot_floats(C, Dk, ws, kr, key_bytes, w_bytes)


def w_dtype(backend: str, tf: bool, q: mx.array, k: mx.array, v: mx.array, C: int) -> mx.Dtype:
    """The dtype of the intermediates that feed only tensor cores (W, P, the chunk-start states, R): k's 16-bit
    dtype where phase A's W / U products, the state pass and the output kernel multiply on 16-bit tensor cores
    (CUDA, plain TF32 allowed, q, k and v of one 16-bit dtype, the state pass's plan in shared memory), else
    fp32."""
    if backend != "cuda" or not tf or k.dtype not in HALF or not q.dtype == k.dtype == v.dtype:
        return mx.float32
    Dk, Dv = k.shape[-1], v.shape[-1]
    fits = _state_bytes(C, Dk, *state_staging(backend, C, Dk, Dv, 2, 2), 2, 2) <= state_budget(backend)
    return k.dtype if fits else mx.float32


def state_staging(backend: str, C: int, Dk: int, Dv: int, key_bytes: int = 2,
                  w_bytes: int = 4) -> tuple[int, int, int, int]:
    """(W columns, key rows, S row padding, ring slots) of the state pass within `state_budget(backend)`."""
    return plan_staging(backend, C, Dk, Dv, key_bytes, w_bytes, state_budget(backend))


@functools.cache  # a search over ~80 plans (~75 us on a CPU): run once per shape, not twice a GDN layer call
def plan_staging(backend: str, C: int, Dk: int, Dv: int, key_bytes: int, w_bytes: int,
                 budget: int) -> tuple[int, int, int, int]:
    """The state pass's staging plan in `budget` bytes of threadgroup memory. The ring hides global-memory
    latency by running NBUF - 1 rounds ahead and each round costs a barrier on this sequential path, so: a ring
    of at least 3 (with 2, one round ahead, the latency shows every round), then the fewest rounds per chunk,
    then padding, then the deeper ring (up to 4). (H200, 16384 tokens, bf16, Dk = 128: (32, 32, 8, 3) 0.70 ms;
    (32, 32, 0, 4) 0.83; (64, 64, 0, 2) 0.66-0.99; (16, 16, 8, 4) 0.90.) Metal copies synchronously (no
    cp.async), so there only the fewest rounds count: a ring of 2. With 16-bit products (w_bytes = 2) rounds are
    whole k-steps of 16."""
    plans = []
    step = 16 if w_bytes == 2 else 8
    for ws in (w for w in (Dk, 64, 32, 16, 8) if step <= w <= Dk and Dk % w == 0):
        for kr in (r for r in (C, 32, 16, 8) if step <= r <= C and C % r == 0):
            for pad in (8, 0):
                free = budget - _state_bytes(C, Dk, ws, kr, pad, 0, key_bytes, w_bytes)
                nbuf = min(4, max(free, 0) // ring_bytes(C, Dk, ws, kr, 1, key_bytes, w_bytes))
                rounds = Dk // ws + C // kr
                if backend == "metal":
                    nbuf = 2
                plans.append((nbuf < 3 and backend == "cuda", rounds, -pad, -nbuf, (ws, kr, pad, max(nbuf, 2))))
    plans.sort()
    fits = [p[-1] for p in plans if _state_bytes(C, Dk, *p[-1], key_bytes, w_bytes) <= budget]
    return fits[0] if fits else min((p[-1] for p in plans),
                                    key=lambda p: _state_bytes(C, Dk, *p, key_bytes, w_bytes))


def chunked(q, k, v, g, beta, state, *, chunk_size: int, backend: str, verbose: bool = False):
    """Phase A over (chunk, head) in parallel; phase B over (head, DV tile), sequential over chunks, keeping
    the state on chip; then every chunk's outputs in parallel from the chunk-start states."""
    plan = ChunkPlan(q, v, chunk_size, backend, verbose)
    w, u, p, gc = plan.prep(q, k, v, g, beta)
    hs, r, new_state = plan.states(k, w, u, gc, state)
    return plan.outputs(q, hs, r, p, gc, v.dtype), new_state


class ChunkPlan:
    """Shapes, template arguments and launch geometry of the three chunked kernels for one call."""

    def __init__(self, q: mx.array, v: mx.array, chunk_size: int, backend: str, verbose: bool = False):
        B, T, _, Dk = q.shape
        Hv, Dv = v.shape[2:]
        self.backend, self.verbose, self.shape_v = backend, verbose, v.shape
        self.B, self.Hv, self.Dk, self.Dv = B, Hv, Dk, Dv
        self.C, self.N, self.BH = chunk_size, -(-T // chunk_size), B * Hv
        self.ks = _slice(backend, chunk_size, Dk, Dv)
        self.to = out_tile(Dv)
        self.sizes = _sizes(q, v)
        self.tf = ("TF", tf32(backend, v.dtype))  # the outputs take v's dtype

    def _call(self, body: str, inputs, shapes, dtypes, grid, threads, template, shared: int = 0):
        return kernel(self.backend, body, shared)(inputs=inputs, output_shapes=shapes, output_dtypes=dtypes,
                                                  grid=grid, threadgroup=(threads, 1, 1), template=template,
                                                  verbose=self.verbose)

    def prep(self, q, k, v, g, beta):
        C, N, BH, Dk, Dv = self.C, self.N, self.BH, self.Dk, self.Dv
        wt = w_dtype(self.backend, self.tf[1], q, k, v, C)
        if q.dtype != k.dtype:  # the body stages q and k slices as stored, in one element type: widen (exact)
            q, k = q.astype(mx.float32), k.astype(mx.float32)
        return self._call(
            "chunk_prep", [q, k, v, g.astype(mx.float32), beta.astype(mx.float32)],
            [(BH, N, C, Dk), (BH, N, C, Dv), (BH, N, C, C), (BH, N, C)], [wt, mx.float32, wt, mx.float32],
            (N * PREP_THREADS, BH, 1), PREP_THREADS,
            [("IX", q.dtype in HALF and k.dtype in HALF), ("KT", k.dtype), ("VT", v.dtype), ("WT", wt),
             ("KX", k.dtype in HALF),
             ("VX", v.dtype in HALF), self.tf, ("C", C), *self.sizes, ("KS", self.ks),
             ("NT", PREP_THREADS)],
        )

    def states(self, k, w, u, gc, state):
        C, N, BH, Dk, Dv = self.C, self.N, self.BH, self.Dk, self.Dv
        ws, kr, pad, nbuf = state_staging(self.backend, C, Dk, Dv, k.dtype.size, w.dtype.size)
        # CUDA: the ring of round slots is dynamic shared memory (past the 48 KB a block gets statically)
        ring = 0
        if self.backend == "cuda":
            ring = dynamic_request(_state_bytes(C, Dk, ws, kr, pad, nbuf, k.dtype.size, w.dtype.size),
                                   ring_bytes(C, Dk, ws, kr, nbuf, k.dtype.size, w.dtype.size))
        return self._call(
            "chunk_state", [k, w, u, gc, state.astype(mx.float32)],
            [(BH, N, Dk, Dv), (BH, N, C, Dv), (self.B, self.Hv, Dv, Dk)], [w.dtype, w.dtype, mx.float32],
            (Dv // STATE_TILE * STATE_THREADS, BH, 1), STATE_THREADS,
            [("KT", k.dtype), ("WT", w.dtype), ("KX", k.dtype in HALF), self.tf, ("C", C), *self.sizes,
             ("TV", STATE_TILE), ("WS", ws), ("KR", kr), ("SPAD", pad), ("NBUF", nbuf), ("NT", STATE_THREADS)],
            ring,
        )

    def outputs(self, q, hs, r, p, gc, dtype):
        (out,) = self._call(
            "chunk_out", [q, hs, r, p, gc], [self.shape_v], [dtype],
            (self.N * OUT_THREADS, self.Dv // self.to, self.BH), OUT_THREADS,
            [("OutT", dtype), ("QT", q.dtype), ("HT", hs.dtype), ("QX", q.dtype in HALF), self.tf, ("C", self.C),
             *self.sizes, ("TO", self.to), ("KS", self.ks), ("NT", OUT_THREADS)],
        )
        return out


def serial(q, k, v, g, beta, state, *, backend: str, verbose: bool = False):
    """One warp per (SERIAL_ROWS value rows, head) walks the T tokens with its state rows in registers."""
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2:]
    out, new_state = kernel(backend, "serial")(
        inputs=[q, k, v, g.astype(mx.float32), beta.astype(mx.float32), state.astype(mx.float32)],
        output_shapes=[v.shape, (B, Hv, Dv, Dk)],
        output_dtypes=[v.dtype, mx.float32],
        grid=(Dv // SERIAL_ROWS * 32, B * Hv, 1),
        threadgroup=(32, 1, 1),
        template=[("OutT", v.dtype), *_sizes(q, v), ("RPW", SERIAL_ROWS)],
        verbose=verbose,
    )
    return out, new_state


def decode_rows(Dv: int) -> int:
    """State rows per 32-thread group of the decode kernel: SERIAL_ROWS, or more where one head's Dv rows would
    need more than DECODE_THREADS threads (a divisor of Dv either way: Dv is a multiple of 16)."""
    return max(SERIAL_ROWS, Dv * 32 // DECODE_THREADS)


def decode(qkv, conv_state, conv_w, a, b, a_log, dt_bias, state, z, norm_w, *, num_k_heads: int, head_k_dim: int,
           eps: float, backend: str, verbose: bool = False):
    """One decode token of a GDN layer in one kernel, its output's gated RMSNorm included (see
    kernels.gated_delta_decode; out shaped like z, [B, 1, Hv, Dv] or [B, 1, Hv * Dv]: one layout in memory):
    one threadgroup per (head, sequence), `decode_rows` value rows a 32-thread group."""
    B, _, CD = qkv.shape
    Hv, Dv = state.shape[1], state.shape[2]
    CK = conv_w.shape[1]
    rows = decode_rows(Dv)
    out, conv_out, new_state = kernel(backend, "decode")(
        inputs=[qkv, conv_state.astype(qkv.dtype), conv_w, a, b, a_log.astype(mx.float32),
                dt_bias.astype(mx.float32), state.astype(mx.float32), z, norm_w],
        output_shapes=[z.shape, (B, CK - 1, CD), state.shape],
        output_dtypes=[qkv.dtype, qkv.dtype, mx.float32],
        grid=(Dv // rows * 32, B * Hv, 1),
        threadgroup=(Dv // rows * 32, 1, 1),
        template=[("OutT", qkv.dtype), ("WT", norm_w.dtype), ("CK", CK), ("DK", head_k_dim), ("DV", Dv),
                  ("HK", num_k_heads), ("HV", Hv), ("RPW", rows), ("EPS", float_bits(eps))],
        verbose=verbose,
    )
    return out, conv_out, new_state


def prologue(qkv, conv_state, conv_w, *, num_k_heads: int, head_k_dim: int, num_v_heads: int, backend: str,
             verbose: bool = False):
    """A prefill step's conv + SiLU, split and q / k l2-norm in one kernel (see kernels.gated_delta_prologue): one
    32-thread group per (token, head segment, sequence). qkv may be wider than the conv's CD channels (the fused
    projection): the kernel reads its first CD columns in place."""
    B, T, QP = qkv.shape
    CD = conv_w.shape[0]
    Hk, Dk, Hv = num_k_heads, head_k_dim, num_v_heads
    Dv = (CD - 2 * Hk * Dk) // Hv
    CK = conv_w.shape[1]
    return kernel(backend, "prologue")(
        inputs=[qkv, conv_state.astype(qkv.dtype), conv_w],
        output_shapes=[(B, T, Hk, Dk), (B, T, Hk, Dk), (B, T, Hv, Dv), (B, CK - 1, CD)],
        output_dtypes=[qkv.dtype] * 4,
        grid=(-(-T // PROLOGUE_GROUPS) * 32 * PROLOGUE_GROUPS, 2 * Hk + Hv, B),
        threadgroup=(32 * PROLOGUE_GROUPS, 1, 1),
        template=[("OutT", qkv.dtype), ("CK", CK), ("DK", Dk), ("DV", Dv), ("HK", Hk), ("HV", Hv),
                  ("WPG", PROLOGUE_GROUPS), ("QP", QP)],
        verbose=verbose,
    )
