"""Prefill wall time by how often a step's graph is handed to the device (`PrefillOptions.submit_every`: every
that many layers, 0 = the step whole), alternating the settings prompt by prompt in one process so drift on a
lent machine falls on all of them alike; each setting's logits must equal the first's bit for bit (the same
ops, only submitted in parts). Median and min over `--rounds` prompts after one unmeasured round.

Usage: python bench/prefill_submit.py [--model demo-0.8b] [--contexts 512,1024,2048,8192] [--every 0,2,4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx
from e2e_gpu import our_prefill  # (bench/ is this script's directory: first on sys.path)

from engine.backend import configure_long_running
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions
from engine.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--contexts", default="512,1024,2048,8192")
    parser.add_argument("--every", default="0,2,4", help="submit_every settings (layers; 0: a step whole)")
    parser.add_argument("--min-tokens", type=int, default=0,
                        help="shortest step submitted in parts (the engine's: engine.generate.SUBMIT_MIN_TOKENS)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args()
    configure_long_running()
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    contexts = [int(t) for t in args.contexts.split(",")]
    settings = [int(k) for k in args.every.split(",")]

    def once(T: int, every: int) -> tuple[float, mx.array]:
        options = PrefillOptions("chunked", args.chunk_size, submit_every=every, submit_min_tokens=args.min_tokens)
        run = our_prefill(model, options, T)  # e2e_gpu's timed prefill: its prompt, state materialised
        t0 = time.perf_counter()
        logits = run()
        return time.perf_counter() - t0, logits

    print(f"{args.model}, chunked prefill, step {PrefillOptions().step_size} tokens; ms a prompt (median / min of "
          f"{args.rounds}) by layers between submissions (device: {mx.default_device()})")
    print("| tokens | " + " | ".join(f"submitted every {k}" if k else "step whole" for k in settings) + " |")
    print("|---:|" + "---:|" * len(settings))
    for T in contexts:
        seconds: dict[int, list[float]] = {k: [] for k in settings}
        first = None
        for r in range(args.rounds + 1):
            for k in settings:
                s, logits = once(T, k)
                first = logits if first is None else first
                if not mx.array_equal(logits, first).item():
                    raise SystemExit(f"{T} tokens, every {k}: logits differ from the first setting's")
                if r:
                    seconds[k].append(s * 1e3)
        print(f"| {T} | " + " | ".join(f"{statistics.median(v):.2f} / {min(v):.2f}" for v in seconds.values()) + " |")


if __name__ == "__main__":
    main()
