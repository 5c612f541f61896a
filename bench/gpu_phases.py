# ruff: noqa: B023  -- the closures are timed within the loop iteration that defines them
"""Time each phase of the chunked GDN kernels separately (B = 1, 16 heads x 128, bf16), for profiling."""

from __future__ import annotations

import sys
import time

import mlx.core as mx

from kernels import gpu

H, D = 16, 128


def timed(fn, reps=20) -> float:
    mx.eval(fn())
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval([fn() for _ in range(reps)])
    mx.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


for T in (int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "4096,16384").split(",")):
    q = (mx.random.normal((1, T, H, D)) / 11.3).astype(mx.bfloat16)
    k = (mx.random.normal((1, T, H, D)) / 11.3).astype(mx.bfloat16)
    v = mx.random.normal((1, T, H, D)).astype(mx.bfloat16)
    g = -mx.random.uniform(0, 2, (1, T, H))
    beta = mx.random.uniform(0, 1, (1, T, H))
    s0 = mx.zeros((1, H, D, D))
    C, N, t_len = 64, -(-T // 64), mx.array([T], dtype=mx.int32)
    sizes = [("DK", D), ("DV", D), ("HK", H), ("HV", H)]
    prep = gpu.kernel("cuda", "chunk_prep")
    state = gpu.kernel("cuda", "chunk_state")
    out = gpu.kernel("cuda", "chunk_out")

    def a():
        return prep(inputs=[q, k, v, g, beta, t_len], output_shapes=[(H, N, C, D), (H, N, C, D), (H, N, C, D),
                    (H, N, C, C), (H, N, C)], output_dtypes=[mx.float32] * 5, grid=(N * gpu.PREP_THREADS, H, 1),
                    threadgroup=(gpu.PREP_THREADS, 1, 1),
                    template=[("C", C), *sizes, ("KS", gpu.SLICE["cuda"]), ("NT", gpu.PREP_THREADS)])

    w, u, kt, p, gc = a()
    mx.eval(w, u, kt, p, gc)

    def b():
        return state(inputs=[w, kt, u, gc, s0, t_len], output_shapes=[(H, N, D, D), (H, N, C, D), (1, H, D, D)],
                     output_dtypes=[mx.float32] * 3, grid=(D // 16 * gpu.STATE_THREADS, H, 1),
                     threadgroup=(gpu.STATE_THREADS, 1, 1),
                     template=[("C", C), ("DK", D), ("DV", D), ("HV", H), ("TV", 16), ("NT", gpu.STATE_THREADS)])

    hs, r, _ = b()
    mx.eval(hs, r)

    def c():
        return out(inputs=[q, hs, r, p, gc, t_len], output_shapes=[v.shape], output_dtypes=[v.dtype],
                   grid=(N * gpu.OUT_THREADS, D // 16, H), threadgroup=(gpu.OUT_THREADS, 1, 1),
                   template=[("OutT", v.dtype), ("C", C), *sizes, ("TV", 16), ("NT", gpu.OUT_THREADS)])

    print(f"T={T}: prep {timed(a):.3f} ms, state pass {timed(b):.3f} ms, outputs {timed(c):.3f} ms, "
          f"all {timed(lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=64, backend='cuda')):.3f} ms")
