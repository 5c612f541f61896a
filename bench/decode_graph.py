"""The compiled decode step's graph, counted by primitive: what MLX's host evaluates each token. On the CPU the
NVIDIA path's fused kernels (kernels.gemv, kernels.attention, the GDN decode kernel, the norms) are stood in for
by one node each (`mx.depends` of zeros shaped as their outputs), so the count is the CUDA step's; real kernels
there are those nodes, the matmuls, the gather and the argmax; the rest (views: reshape, transpose, split, ...)
cost the host per node and launch nothing.

Usage: python bench/decode_graph.py [--model demo-0.8b]
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from pathlib import Path

import mlx.core as mx

import engine.model as model_module
from engine.cache import cache_arrays
from engine.decode import CompiledDecode
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions, prefill
from engine.loading import load_model


def stand_in(outputs: list[tuple[tuple[int, ...], mx.Dtype]], *inputs) -> list[mx.array]:
    """One graph node with these outputs that depends on every array input (as a custom kernel is)."""
    return mx.depends([mx.zeros(s, d) for s, d in outputs], [x for x in inputs if isinstance(x, mx.array)])


STAND_INS = {
    "add_norm_gemv": lambda x, r, nw, eps, w, glu=False: stand_in(
        [(x.shape, x.dtype), ((*x.shape[:-1], w.shape[0] // (2 if glu else 1)), x.dtype)], x, r, nw, w),
    "add_rms_norm": lambda h, r, w, eps: stand_in([(h.shape, h.dtype)] * 2, h, r, w),
    "gated_delta_decode": lambda qkv, cs, cw, a, b, al, dt, s, z, nw, **kw: stand_in(
        [(z.shape, z.dtype), (cs.shape, cs.dtype), (s.shape, s.dtype)], qkv, cs, cw, a, b, al, dt, s, z, nw),
    "qk_norm_rope": lambda qg, k, wq, wk, eps, r, base, pos, h, hkv: stand_in(
        [((qg.shape[0], h, qg.shape[1], wq.shape[0]), qg.dtype), ((qg.shape[0], hkv, qg.shape[1], wq.shape[0]),
                                                                   qg.dtype)], qg, k, wq, wk, pos),
    "decode_attention": lambda q, k, v, kc, vc, n, qg, scale: stand_in(
        [((q.shape[0], 1, q.shape[1] * q.shape[3]), q.dtype), (kc.shape, kc.dtype), (vc.shape, vc.dtype)],
        q, k, v, kc, vc, n, qg),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    args = parser.parse_args()
    for name, fn in STAND_INS.items():
        setattr(model_module, name, fn)
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    cache = model.make_cache()
    token = mx.argmax(prefill(model, mx.array([[1] * 8]), cache, PrefillOptions("chunked", 64)), axis=-1)
    step = CompiledDecode(model)
    mx.eval(step(token, cache), cache_arrays(cache))  # the first step traces
    y = mx.argmax(step(token, cache), axis=-1)  # the sampler's argmax, as generate_step's greedy token
    with tempfile.TemporaryDirectory() as tmp:
        dot = Path(tmp) / "step.dot"
        mx.export_to_dot(str(dot), y, *cache_arrays(cache))
        labels = re.findall(r'\[label ="([^"]*)"', dot.read_text())
    counts = collections.Counter("kernel stand-in (Depends)" if x == "Depends" else x for x in labels
                                 if x not in ("Full", "Broadcast"))  # the stand-ins' zeros
    print(f"{args.model}: {sum(counts.values())} nodes in one compiled decode step (greedy token)")
    print("| primitive | nodes |\n|---|---:|")
    for name, n in counts.most_common():
        print(f"| {name} | {n} |")


if __name__ == "__main__":
    main()
