"""What a prompt length costs the first time the engine meets it: per-token wall times of streamed generation
(`Engine.generate`, greedy, after the engine's warm-up), each length twice with different prompts, as a table of
the first request's and the repeat's prefill (first token) and second-token gap. A repeat that is much faster
means something was set up for that length on first use (a cuBLAS plan, a CUDA graph, a compiled decode trace
for a new KV buffer length); lengths in one 64-row bucket / 1024-token KV buffer share most of it, so list
neighbours to tell them apart. Also prints the warm-up's time and that of its later parts (the GEMMs and a
prefill at each row bucket, the head's rows, the decode step's KV lengths), which exist to make a first request
cost what a repeat does.

Usage: python bench/new_lengths.py [--model demo-0.8b] [--lengths 300,301,1000,1001,2100,2101,5000,9000]
  (`tools/device-checks.sh lengths` runs it with CUDA graphs and without)
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

import engine.engine as engine_module
from engine.backend import configure_long_running
from engine.engine import Engine
from engine.generate import PrefillOptions
from engine.sampling import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--lengths", default="300,301,1000,1001,2100,2101,5000,9000")
    parser.add_argument("--tokens", type=int, default=4, help="tokens generated per request")
    args = parser.parse_args()
    if args.tokens < 3:
        parser.error("--tokens: at least 3 (a prefill, a second token, later ones)")
    configure_long_running()
    engine = Engine.load(args.model, prefill=PrefillOptions("chunked"))
    parts = time_warm_up_parts()
    t0 = time.perf_counter()
    engine.warm_up()
    print(f"{args.model} on {mx.default_device()}: warm-up {time.perf_counter() - t0:.2f} s (of which "
          + ", ".join(f"{name} {s:.2f} s" for name, s in parts.items()) + ")")
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


def time_warm_up_parts() -> dict[str, float]:
    """Seconds `Engine.warm_up` spends in each of its later parts (the GEMMs and a prefill at each row bucket, the
    scoring head's rows, the decode step's KV lengths), filled in as it runs: the parts are wrapped where the engine
    module looks them up."""
    parts: dict[str, float] = {}

    def timed(name: str, fn):
        def run(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return run

    for name in ("warm_row_buckets", "warm_prefill_buckets", "warm_head_rows", "warm_decode_lengths"):
        setattr(engine_module, name, timed(name, getattr(engine_module, name)))
    return parts


if __name__ == "__main__":
    main()
