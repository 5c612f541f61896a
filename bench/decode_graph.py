"""The compiled decode step's graph, counted by primitive: what MLX's host evaluates each token. On the CPU the
NVIDIA path runs with every custom kernel stood in for by one node (`mx.depends` of zeros shaped as the kernel's
outputs, on all its inputs), so the count is the CUDA step's, the wrappers' own reshapes and casts included. The
stand-ins, the matmuls, the gather and the argmax launch kernels there; the rest (views: reshape, transpose,
split, ...) cost the host per node and launch nothing.

With --prefill T: the graph of a T-token chunked prefill instead (one step of the backend's size, submitted
whole), and the host's time to build it.

Also (--calls N) the host's time to build the step: the compiled function's call, which replays the graph node by
node (median over N calls from the same cache state), on this CPU.

Usage: python bench/decode_graph.py [--model demo-0.8b] [--calls 200] [--prefill T]
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx

import kernels.attention
import kernels.gemv
import kernels.gpu
import kernels.norm
from engine.cache import cache_arrays
from engine.decode import CompiledDecode
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions, prefill
from engine.loading import load_model


def stand_in_kernel(*_args, **_kwargs):
    """A custom-kernel object whose calls return one graph node with the kernel's outputs."""
    def call(*, inputs, output_shapes, output_dtypes, **_launch):
        zeros = [mx.zeros(s, d) for s, d in zip(output_shapes, output_dtypes, strict=True)]
        return mx.depends(zeros, list(inputs))
    return call


def take_the_cuda_path() -> None:
    """Every kernel factory and device check of the NVIDIA path, as if on an NVIDIA GPU."""
    kernels.gpu.gpu_backend = kernels.norm.gpu_backend = lambda: "cuda"
    kernels.attention.kernels_off = kernels.gemv.kernels_off = lambda: None
    kernels.gpu.opt_in_shared_bytes = lambda: kernels.gpu.opt_in_bytes((9, 0))  # an H100 / H200
    for owner, name in ((kernels.gpu, "kernel"), (kernels.norm, "_kernel"), (kernels.attention, "_kernel"),
                        (kernels.attention, "_decode_kernel"), (kernels.attention, "_qk_kernel"),
                        (kernels.gemv, "_kernel")):
        setattr(owner, name, stand_in_kernel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--calls", type=int, default=200, help="calls timed for the build time (0: none)")
    parser.add_argument("--prefill", type=int, default=0, metavar="T", help="count a T-token prefill instead")
    args = parser.parse_args()
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    if args.prefill:
        return count_prefill(model, args)
    cache = model.make_cache()
    token = mx.argmax(prefill(model, mx.array([[1] * 8]), cache, PrefillOptions("chunked", 64)), axis=-1)
    mx.eval(token, cache_arrays(cache))
    take_the_cuda_path()
    step = CompiledDecode(model)
    state = [(c, dict(c.__dict__)) for c in cache]  # each timed call starts from the same cache (arrays, offset)
    mx.eval(step(token, cache))  # the first step traces
    seconds = []
    for _ in range(args.calls):
        for c, saved in state:
            c.__dict__.update(saved)
        t0 = time.perf_counter()
        step(token, cache)
        seconds.append(time.perf_counter() - t0)
    for c, saved in state:
        c.__dict__.update(saved)
    y = mx.argmax(step(token, cache), axis=-1)  # the token, as generate_step's greedy sampler takes it
    print_counts(f"{args.model}: {{}} nodes in one compiled decode step (greedy token)", [y, *cache_arrays(cache)],
                 seconds, "us", 1e6)


def count_prefill(model, args) -> None:
    take_the_cuda_path()
    ids = mx.array([[1] * args.prefill])
    options = PrefillOptions("chunked", 64, submit_every=0)  # submitted whole: the graph is one piece
    seconds, out = [], []
    for i in range(max(args.calls, 1) + 1):
        cache = model.make_cache()
        t0 = time.perf_counter()
        out = [prefill(model, ids, cache, options), *cache_arrays(cache)]
        if i:  # the first builds the kernels' and compiled functions' caches
            seconds.append(time.perf_counter() - t0)
    print_counts(f"{args.model}: {{}} nodes in a {args.prefill}-token chunked prefill (steps of {options.step_size})",
                 out, seconds if args.calls else [], "ms", 1e3)


def print_counts(title: str, outputs: list[mx.array], seconds: list[float], unit: str, scale: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dot = Path(tmp) / "graph.dot"
        mx.export_to_dot(str(dot), *outputs)
        labels = re.findall(r'\[label ="([^"]*)"', dot.read_text())
    counts = collections.Counter("custom kernel (stand-in)" if x == "Depends" else x for x in labels
                                 if x not in ("Full", "Broadcast"))  # (the stand-ins' zeros)
    print(title.format(sum(counts.values()))
          + (f"; the host builds it in {statistics.median(seconds) * scale:.{0 if unit == 'us' else 2}f} {unit} "
             f"(median of {len(seconds)} calls)" if seconds else ""))
    print("| primitive | nodes |\n|---|---:|")
    for name, n in counts.most_common():
        print(f"| {name} | {n} |")


if __name__ == "__main__":
    main()
