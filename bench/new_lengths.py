"""What a prompt length costs the first time the engine meets it: per-token wall times of streamed generation
(`Engine.generate`, greedy, after the engine's warm-up), each length twice with different prompts, as a table of
the first request's and the repeat's prefill (first token) and second-token gap. A repeat that is much faster
means something was set up for that length on first use (a cuBLAS plan, a CUDA graph, a compiled decode trace
for a new KV buffer length); lengths in one 64-row bucket / 1024-token KV buffer share most of it, so list
neighbours to tell them apart. Also prints the warm-up's time.

Usage: python bench/new_lengths.py [--model demo-0.8b] [--lengths 300,301,1000,1001,2100,2101,5000,9000]
                                   [--warm-buckets]
  --warm-buckets: after the warm-up, also prefill one prompt in every GEMM row bucket of a prefill step (NVIDIA
  GPUs; bucket - 1 tokens, padded as most lengths are), printing what that costs in time and host memory: whether
  warming each bucket's whole prefill (its CUDA graphs, not only its GEMM plans) removes a new length's cost.
  (`tools/device-checks.sh lengths` runs it with CUDA graphs and without, and with --warm-buckets)
"""

from __future__ import annotations

import argparse
import resource
import time

import mlx.core as mx

from engine.backend import configure_long_running
from engine.engine import Engine
from engine.generate import PrefillOptions, prefill
from engine.sampling import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--lengths", default="300,301,1000,1001,2100,2101,5000,9000")
    parser.add_argument("--tokens", type=int, default=4, help="tokens generated per request")
    parser.add_argument("--warm-buckets", action="store_true", help="prefill once in every row bucket first")
    args = parser.parse_args()
    if args.tokens < 3:
        parser.error("--tokens: at least 3 (a prefill, a second token, later ones)")
    configure_long_running()
    engine = Engine.load(args.model, prefill=PrefillOptions("chunked"))
    t0 = time.perf_counter()
    engine.warm_up()
    print(f"{args.model} on {mx.default_device()}: warm-up {time.perf_counter() - t0:.2f} s")
    if args.warm_buckets:
        warm_buckets(engine)
    print("ms, first request / repeat (another prompt of the same length)")
    print("| tokens | prefill (1st token) | 2nd token | later tokens (median) |")
    print("|---:|---:|---:|---:|")
    V = engine.model.args.vocab_size
    for n in (int(x) for x in args.lengths.split(",")):
        runs = []
        for rep in range(2):
            prompt = [(7 * i + n + rep) % (V - 1) + 1 for i in range(n)]
            stamps, t0 = [], time.perf_counter()
            for _ in engine.generate(prompt, SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)):
                stamps.append(time.perf_counter())
            gaps = [(b - a) * 1e3 for a, b in zip([t0, *stamps], stamps, strict=False)]
            runs.append((gaps[0], gaps[1], sorted(gaps[2:])[len(gaps[2:]) // 2]))
        print(f"| {n} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(*runs, strict=True)) + " |")


def warm_buckets(engine: Engine) -> None:
    """One prefill in each row bucket of a step (none without a bucket: the CPU's, Metal's), timed, with the
    process's peak host memory before and after."""
    bucket, p = engine.model.model.row_bucket, engine.info.prefill
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, lengths = time.perf_counter(), range(bucket - 1, p.step_size, bucket) if bucket else ()
    for n in lengths:
        cache = engine.model.make_cache()
        mx.eval(prefill(engine.model, mx.array([[i % 97 + 1 for i in range(n)]]), cache, p))
    print(f"bucket warm-up: {len(lengths)} prefills in {time.perf_counter() - t0:.2f} s; peak host memory "
          f"{rss:.0f} -> {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
