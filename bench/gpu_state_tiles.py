"""The state pass's tiling, measured: value columns per threadgroup (TV) and threads per threadgroup (NT) of the
sequential state pass (B = 1, 16 heads x 128, bf16 inputs, C = 64), each against the shipped setting on the same
card and run, with its result checked against the shipped setting's.

Usage: python bench/gpu_state_tiles.py [--contexts 4096,16384] [--tiles 16x256,16x512,8x128,8x256,8x64,16x128,32x256]
"""

from __future__ import annotations

import argparse

import mlx.core as mx
from gpu_phases import layer_inputs, timed  # bench/ is on sys.path when a bench script runs

from kernels import gpu


def set_tile(tv: int, nt: int, **shape) -> bool:
    """Switch the state pass to TV x NT; its staging plan depends on TV, so the cached plans are dropped. With a
    shape, False (and the tile before back) when that tile's plan does not fit the state pass's shared memory."""
    shipped = (gpu.STATE_TILE, gpu.STATE_THREADS)
    gpu.STATE_TILE, gpu.STATE_THREADS = tv, nt
    gpu.plan_staging.cache_clear()
    if not shape:
        return True
    C, Dk, Dv, kb, wb = (shape[x] for x in ("C", "Dk", "Dv", "key_bytes", "w_bytes"))
    plan = gpu.state_staging("cuda", C, Dk, Dv, kb, wb)
    if Dv % tv == 0 and gpu._state_bytes(C, Dk, *plan, kb, wb) <= gpu.state_budget("cuda"):
        return True
    set_tile(*shipped)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="4096,16384")
    parser.add_argument("--tiles", default="16x256,16x512,8x128,8x256,8x64,16x128,32x256")
    args = parser.parse_args()
    backend = gpu.gpu_backend()
    shipped = (gpu.STATE_TILE, gpu.STATE_THREADS)
    tiles = [tuple(int(x) for x in t.split("x")) for t in args.tiles.split(",")]
    print(f"state pass by (TV, NT) on {backend}; shipped {shipped}; ms (median of 5 x 20 calls)")
    for T in (int(t) for t in args.contexts.split(",")):
        q, k, v, g, beta, s0 = layer_inputs(T)
        plan = gpu.ChunkPlan(q, v, 64, backend)
        w, u, p, gc = plan.prep(q, k, v, g, beta)
        mx.eval(w, u, p, gc)
        set_tile(*shipped)
        _, _, reference = plan.states(k, w, u, gc, s0)
        mx.eval(reference)
        cells = []
        for tv, nt in tiles:
            if not set_tile(tv, nt, C=64, Dk=q.shape[-1], Dv=v.shape[-1], key_bytes=k.dtype.size,
                            w_bytes=w.dtype.size):
                cells.append(f"{tv}x{nt}: does not fit")
                continue
            _, _, state = plan.states(k, w, u, gc, s0)
            diff = float(mx.abs(state - reference).max() / mx.abs(reference).max())
            ms = timed(lambda: plan.states(k, w, u, gc, s0))  # noqa: B023 - timed in this iteration
            cells.append(f"{tv}x{nt}: {ms:.3f}" + ("" if diff < 1e-3 else f" (DIFFERS {diff:.1e})"))
        set_tile(*shipped)
        print(f"T={T}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
