"""Time each phase of the chunked GDN kernels separately (B = 1, 16 heads x 128, bf16), for profiling.

Usage: python bench/gpu_phases.py [T,T,...]
"""

from __future__ import annotations

import sys

import mlx.core as mx
from gpu_kernels import D, H, time_mlx  # bench/ is on sys.path when a bench script runs

from kernels import gpu


def timed(fn, reps: int = 20, samples: int = 5) -> float:
    """Median ms per call over `samples` batches of `reps` back-to-back calls (this card's clocks vary)."""
    return time_mlx(fn, samples, reps) * 1e3


def layer_inputs(T: int) -> tuple[mx.array, ...]:
    """q, k, v (bf16, q / k at unit-norm scale), g, beta and a zero state for one layer at the 0.8B head shape."""
    q = (mx.random.normal((1, T, H, D)) / 11.3).astype(mx.bfloat16)
    k = (mx.random.normal((1, T, H, D)) / 11.3).astype(mx.bfloat16)
    v = mx.random.normal((1, T, H, D)).astype(mx.bfloat16)
    g, beta = -mx.random.uniform(0, 2, (1, T, H)), mx.random.uniform(0, 1, (1, T, H))
    return q, k, v, g, beta, mx.zeros((1, H, D, D))


def main() -> None:
    backend = gpu.gpu_backend()
    for T in (int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "4096,16384").split(",")):
        q, k, v, g, beta, s0 = layer_inputs(T)
        plan = gpu.ChunkPlan(q, v, 64, backend)
        w, u, p, gc = plan.prep(q, k, v, g, beta)
        hs, r, _ = plan.states(k, w, u, gc, s0)
        mx.eval(w, u, p, gc, hs, r)
        times = {
            "prep": timed(lambda: plan.prep(q, k, v, g, beta)),  # noqa: B023 - timed in this iteration
            "state pass": timed(lambda: plan.states(k, w, u, gc, s0)),  # noqa: B023
            "outputs": timed(lambda: plan.outputs(q, hs, r, p, gc, v.dtype)),  # noqa: B023
            "all": timed(lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=64, backend=backend)),  # noqa: B023
        }
        print(f"T={T}: " + ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items()))


if __name__ == "__main__":
    main()
