"""Where end-to-end time goes: prefill and decode of one model with one component at a time replaced by a no-op
of the same shapes (the GDN core, the attention core, the GDN layers' prologue: conv, SiLU, q / k norms), so the
drop in time is that component's cost, measured inside the whole model on the same card and run.

Usage: python bench/e2e_profile.py [--model demo-0.8b] [--contexts 2048,8192] [--method chunked] [--step-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from functools import partial

import mlx.core as mx
import numpy as np

import engine.model as model_module
from engine.backend import configure_long_running
from engine.cache import cache_arrays
from engine.decode import CompiledDecode, decode_step
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions, default_prefill_step, prefill
from engine.loading import load_model


def _no_gdn_core(q, k, v, g, beta, state, **_):
    return mx.zeros(v.shape, v.dtype), state


def _no_gdn_decode(qkv, conv_state, conv_w, a, b, a_log, dt_bias, state, z, norm_w, **_):
    return z, conv_state, state  # [B, 1, Hv, Dv] in the model's dtype, the output's shape


def _no_attention_core(q, k, v, scale, mask=None):
    return q  # [B, H, T, D], the output's shape


def _no_fused_attention(q, k, v, scale):
    return q.transpose(0, 2, 1, 3)  # [B, T, H, D], the fused kernel's output shape


def _no_prologue(qkv, conv_state, conv_w, *, num_k_heads, head_k_dim, num_v_heads):
    B, T, _ = qkv.shape
    qkv = qkv[..., : conv_w.shape[0]]  # (it may be the layer's whole fused projection: q | k | v first)
    qk = mx.zeros((B, T, num_k_heads, head_k_dim), qkv.dtype)  # the prologue's outputs are in qkv's dtype
    v = qkv[..., 2 * num_k_heads * head_k_dim :].reshape(B, T, num_v_heads, -1)
    return qk, qk, v, qkv[:, -(conv_w.shape[1] - 1) :]


@contextlib.contextmanager
def without(component: str) -> Iterator[None]:
    """Replace components of the model by no-ops of the same shapes for the duration. MLX evaluates lazily, so
    what only feeds a no-op is skipped too ("GDN core" also drops its prologue). The GDN
    prologue (conv, SiLU, split, q / k norms) is fused into the decode step's kernel, so that row is prefill's."""
    targets = {
        "GDN core": [(model_module, "gated_delta", _no_gdn_core), (model_module, "gated_delta_decode", _no_gdn_decode)],
        "attention core": [(model_module.mx.fast, "scaled_dot_product_attention", _no_attention_core),
                           (model_module, "causal_attention", _no_fused_attention)],
        "GDN prologue": [(model_module, "gated_delta_prologue", _no_prologue)],
    }
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets.get(component, [])]
    for owner, name, replacement in targets.get(component, []):
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


PEAK_GB: dict[tuple[str, int], float] = {}  # (component turned off, T) -> peak MLX memory of that prefill


def time_prefill(model, T: int, opts: PrefillOptions, runs: int, label: str = "") -> float:
    ids = mx.array(np.random.default_rng(T).integers(0, 256, (1, T)))
    times = []
    for i in range(runs + 1):  # the first run compiles
        cache = model.make_cache()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        mx.eval(prefill(model, ids, cache, opts), cache_arrays(cache))
        if i:
            times.append(time.perf_counter() - t0)
        PEAK_GB[label, T] = mx.get_peak_memory() / 1e9  # weights included
        mx.clear_cache()
    return statistics.median(times)


def time_decode(model, context: int, opts: PrefillOptions, steps: int, compiled: bool = True) -> float:
    """Seconds per decode step (each evaluated before the next), by default the compiled step generation uses
    (a fresh one per call, so its trace sees the no-ops patched in for this row), else op by op."""
    cache = model.make_cache()
    token = mx.argmax(prefill(model, mx.array([[1] * context]), cache, opts), axis=-1)
    mx.eval(token)
    step = CompiledDecode(model) if compiled else partial(decode_step, model)
    t0 = time.perf_counter()
    for i in range(steps + 2):
        if i == 2:  # two steps to compile
            t0 = time.perf_counter()
        token = mx.argmax(step(token, cache), axis=-1)
        mx.eval(token)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    configure_long_running()  # the server's process settings (CUDA-graph and buffer caches)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--contexts", default="2048,8192")
    parser.add_argument("--method", default="chunked")
    parser.add_argument("--step-size", type=int, default=None,
                        help="tokens per prefill step (default: the backend's)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--decode-context", type=int, default=512)
    parser.add_argument("--decode-steps", type=int, default=20)
    parser.add_argument("--step-sweep", default="1024,2048,4096,8192",
                        help="prefill step sizes to time on the longest context (empty: skip)")
    args = parser.parse_args()
    args.step_size = args.step_size or default_prefill_step()
    contexts = [int(t) for t in args.contexts.split(",")]
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    opts = PrefillOptions(args.method, 64, args.step_size)
    print(f"{args.model}, {args.method} prefill, step {args.step_size}, device {mx.default_device()}; ms, and the "
          "drop when the component is a no-op")
    print("| replaced by a no-op | " + " | ".join(f"prefill @{T}" for T in contexts)
          + f" | decode step @{args.decode_context} |")
    print("|---" + "|---:" * (len(contexts) + 1) + "|")
    base = None
    for component in ("nothing", "GDN core", "attention core", "GDN prologue"):
        with without(component):
            ms = [time_prefill(model, T, opts, args.runs, component) * 1e3 for T in contexts]
            ms.append(time_decode(model, args.decode_context, opts, args.decode_steps) * 1e3)
        base = base or ms
        cells = [f"{m:.2f}" if component == "nothing" else f"{m:.2f} ({m - b:+.2f})"
                 for m, b in zip(ms, base, strict=True)]
        print(f"| {component} | " + " | ".join(cells) + " |")
    op_by_op = time_decode(model, args.decode_context, opts, args.decode_steps, compiled=False) * 1e3
    print(f"\ndecode step @{args.decode_context}: compiled {base[-1]:.2f} ms (the rows above), op by op "
          f"{op_by_op:.2f} ms")
    print("\npeak MLX memory of one prefill (GB, weights included): " + "; ".join(
        f"{c}: " + ", ".join(f"@{T} {PEAK_GB[c, T]:.2f}" for T in contexts)
        for c in dict.fromkeys(c for c, _ in PEAK_GB)))
    if args.step_sweep:
        T = max(contexts)
        steps = [int(s) for s in args.step_sweep.split(",") if int(s) <= T]
        ms = [time_prefill(model, T, PrefillOptions(args.method, 64, s), args.runs, f"step {s}") * 1e3 for s in steps]
        print(f"\nprefill of {T} tokens by step size: " + ", ".join(
            f"{s}: {m:.2f} ms (peak {PEAK_GB[f'step {s}', T]:.2f} GB)" for s, m in zip(steps, ms, strict=True)))


if __name__ == "__main__":
    main()
