"""The model's work, run once for a profiler to record (everything the process launches is recorded, warm-up
included), on the loaded demo model:

    ncu --csv --metrics gpu__time_duration.sum python bench/profile_run.py prefill 2048 --repeat 2 \
        | python bench/ncu_sum.py
    ncu ... python bench/profile_run.py decode 8  # compiled decode steps after a 512-token prefill
    ncu --cache-control none --clock-control none ... python bench/profile_run.py gdn 16384 --repeat 3
        # one layer's chunked GDN core (B = 1, 16 heads x 128, bf16): our kernels' GPU time alone, the reading
        # bench/gpu_kernels.py gives for fla's ("kernels only"); the first call of the three is the warm-up
"""

from __future__ import annotations

import argparse

import mlx.core as mx
from gpu_phases import layer_inputs  # bench/ is on sys.path when a bench script runs

from engine.decode import CompiledDecode
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions, prefill
from engine.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["prefill", "decode", "gdn"])
    parser.add_argument("n", type=int, help="prompt tokens (prefill, gdn) or decode steps (decode)")
    parser.add_argument("--repeat", type=int, default=1, help="prefills (or GDN core calls) of n tokens")
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--step-size", type=int, default=None,
                        help="tokens per prefill step (default: the backend's)")
    args = parser.parse_args()
    if args.what == "gdn":
        from kernels import gated_delta

        q, k, v, g, beta, state = layer_inputs(args.n)
        mx.eval(q, k, v, g, beta, state)
        for _ in range(args.repeat):
            mx.eval(gated_delta(q, k, v, g, beta, state, method="chunked", chunk_size=64))
        return
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    opts = PrefillOptions("chunked", 64, args.step_size)
    if args.what == "prefill":
        ids = mx.random.randint(0, 1000, (1, args.n))
        for _ in range(args.repeat):
            mx.eval(prefill(model, ids, model.make_cache("chunked"), opts))
        return
    cache, step = model.make_cache("chunked"), CompiledDecode(model)
    token = mx.argmax(prefill(model, mx.array([[1] * 512]), cache, opts), axis=-1)
    for _ in range(args.n):
        token = mx.argmax(step(token, cache), axis=-1)
        mx.eval(token)


if __name__ == "__main__":
    main()
