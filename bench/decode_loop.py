"""Where a decode token's time goes between the model step and the token loop: ms per token of the step alone
(op by op and compiled, each evaluated before the next, then pipelined as generation runs it), of the real
`generate_step` loop (compiled and op by op), and, for the compiled loop, the host's share per token (building
the step and the sampler's graph, submitting it, waiting for the token).

Usage: python bench/decode_loop.py [--model demo-0.8b] [--context 512] [--tokens 64] [--short] [--repeats 3]
  --short: the compiled rows only (pipelined step, `generate_step`) and the host's share, for A/B runs of two
  trees (`tools/device-checks.sh ab-decode` runs this script against another tree's engine)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import mlx.core as mx

from engine.backend import configure_long_running
from engine.decode import ENV_COMPILE, CompiledDecode, decode_step
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions, generate_step, prefill
from engine.loading import load_model
from engine.sampling import SamplingParams, make_key, make_sampler


def prefilled(model, context: int, opts: PrefillOptions) -> tuple[list, mx.array]:
    cache = model.make_cache()
    token = mx.argmax(prefill(model, mx.array([[1] * context]), cache, opts), axis=-1)
    mx.eval(token)
    return cache, token


def per_token(run: Callable[[int], float], tokens: int, repeats: int = 3) -> float:
    """Median over repeats of ms per token, where `run(n)` decodes n tokens and returns the seconds they took
    (after one untimed run that compiles)."""
    run(4)
    return statistics.median(run(tokens) * 1e3 / tokens for _ in range(repeats))


def stepwise(model, step, context: int, opts: PrefillOptions) -> Callable[[int], float]:
    """Decode n tokens, each step evaluated before the next is built."""
    def run(n: int) -> float:
        cache, token = prefilled(model, context, opts)
        t0 = time.perf_counter()
        for _ in range(n):
            token = mx.argmax(step(token, cache), axis=-1)
            mx.eval(token)
        return time.perf_counter() - t0
    return run


def pipelined(model, step, context: int, opts: PrefillOptions) -> Callable[[int], float]:
    """Decode n tokens, step n + 1 submitted before token n is waited for (argmax only, no logprobs)."""
    def run(n: int) -> float:
        cache, token = prefilled(model, context, opts)
        t0 = time.perf_counter()
        token = mx.argmax(step(token, cache), axis=-1)
        mx.async_eval(token)
        for _ in range(n - 1):
            nxt = mx.argmax(step(token, cache), axis=-1)
            mx.async_eval(nxt)
            token.item()
            token = nxt
        token.item()
        return time.perf_counter() - t0
    return run


def generation(model, context: int, opts: PrefillOptions, compiled: bool = True) -> Callable[[int], float]:
    """The real token loop (`generate_step`, greedy), timed after the prefill's token."""
    greedy = make_sampler(SamplingParams(temperature=0))

    def run(n: int) -> float:
        saved = os.environ.pop(ENV_COMPILE, None)
        if not compiled:
            os.environ[ENV_COMPILE] = "0"
        try:
            gen = generate_step(model, [1] * context, model.make_cache(), sampler=greedy, logits_processors=[],
                                key=make_key(0), max_tokens=n + 1, options=opts)
            next(gen)  # the prefill's token
            t0 = time.perf_counter()
            for _ in gen:
                pass
            return time.perf_counter() - t0
        finally:
            os.environ.pop(ENV_COMPILE, None)
            if saved is not None:
                os.environ[ENV_COMPILE] = saved
    return run


def host_share(model, step, context: int, opts: PrefillOptions, tokens: int) -> tuple[float, float, float]:
    """ms per token of the generation pattern's host work: build (step + sampler graph), submit (the token only,
    as `generate_step` does: log-probabilities stay lazy), wait."""
    cache, token = prefilled(model, context, opts)
    build = submit = wait = 0.0
    nxt = None
    for i in range(tokens + 4):
        t0 = time.perf_counter()
        logits = step(token, cache).astype(mx.float32)
        _ = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # built, not evaluated: generate_step's lazy lp
        y = mx.argmax(logits, axis=-1)
        t1 = time.perf_counter()
        mx.async_eval(y)
        t2 = time.perf_counter()
        if nxt is not None:
            nxt.item()
        t3 = time.perf_counter()
        if i >= 4:  # the first steps compile
            build, submit, wait = build + t1 - t0, submit + t2 - t1, wait + t3 - t2
        nxt, token = y, y
    return build * 1e3 / tokens, submit * 1e3 / tokens, wait * 1e3 / tokens


def main() -> None:
    configure_long_running()  # the server's process settings (CUDA-graph and buffer caches)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--short", action="store_true", help="compiled rows and host share only")
    parser.add_argument("--repeats", type=int, default=3, help="runs each row's median is taken over")
    args = parser.parse_args()
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    opts, compiled, ctx = PrefillOptions("chunked", 64), CompiledDecode(model), args.context
    rows = {
        "step op by op, each evaluated": stepwise(model, lambda t, c: decode_step(model, t, c), ctx, opts),
        "step compiled, each evaluated": stepwise(model, compiled, ctx, opts),
        "step compiled, pipelined (argmax only)": pipelined(model, compiled, ctx, opts),
        "generate_step (compiled step)": generation(model, ctx, opts),
        "generate_step (op by op)": generation(model, ctx, opts, compiled=False),
    }
    if args.short:
        rows = {k: v for k, v in rows.items() if "compiled" in k and "each evaluated" not in k}
    ms = {name: per_token(run, args.tokens, args.repeats) for name, run in rows.items()}
    print(f"{args.model}, context {ctx}, {args.tokens} tokens, device {mx.default_device()}; "
          f"compiled step broken: {compiled.broken}")
    print("| decode loop | ms / token | tok/s |\n|---|---:|---:|")
    for name, m in ms.items():
        print(f"| {name} | {m:.2f} | {1e3 / m:.1f} |")
    build, submit, wait = host_share(model, compiled, ctx, opts, args.tokens)
    print(f"\ngeneration pattern, host ms per token: build {build:.2f}, submit (async_eval) {submit:.2f}, "
          f"wait for the previous token {wait:.2f}")


if __name__ == "__main__":
    main()
