"""One prefill step's time split by layer component, at the loaded model's own shapes and weights: the GDN mixer
piece by piece (projections, the prologue fused and as ops, gates, the core as the model feeds it, with fp32 q / k
and with a contiguous v), the attention mixer, the MLP, one whole layer of each kind, and the whole step, each
timed alone (back-to-back calls, device synchronised). Complements bench/e2e_profile.py (no-op ablation in
the model).

Usage: python bench/e2e_layers.py [--model demo-0.8b] [--tokens 2048] [--method chunked]
"""

from __future__ import annotations

import argparse

import mlx.core as mx
from gpu_kernels import time_mlx  # bench/ is on sys.path when a bench script runs

from engine.backend import configure_long_running
from engine.cache import GDNCache, KVCache
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.loading import load_model
from kernels import gated_delta, gated_delta_prologue
from kernels.prologue import causal_conv_silu, conv_split, decay_and_beta


def main() -> None:
    configure_long_running()  # the server's process settings (CUDA-graph and buffer caches)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--method", default="chunked")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    model = load_model(ensure_demo(args.model), DEMO_DTYPES.get(args.model, mx.bfloat16))
    layers = model.layers
    gdn_layer = next(layer for layer in layers if layer.is_linear)
    attn_layer = next(layer for layer in layers if not layer.is_linear)
    m, T = gdn_layer.linear_attn, args.tokens
    x = (mx.random.normal((1, T, model.args.hidden_size)) * 0.5).astype(mx.bfloat16)
    ids = mx.random.randint(0, model.args.vocab_size, (1, T))

    qkv, _, b, a = m.project(x)  # the model's projections (one fused matmul once loaded)
    heads = dict(num_k_heads=m.num_k_heads, head_k_dim=m.head_k_dim, num_v_heads=m.num_v_heads)
    q, k, v, _ = gated_delta_prologue(qkv, None, m.conv1d.weight, **heads)
    g, beta = decay_and_beta(a, b, m.A_log, m.dt_bias)
    s0 = mx.zeros((1, m.num_v_heads, m.head_v_dim, m.head_k_dim), dtype=mx.float32)
    qf, kf, vc = q.astype(mx.float32), k.astype(mx.float32), mx.contiguous(v)
    z = vc.reshape(1, T, m.value_dim)
    mx.eval(qkv, a, b, q, k, v, g, beta, qf, kf, vc, z)

    def gdn_cache():
        return GDNCache(args.method)

    def kv_cache():
        return KVCache()

    def core(qq, kk, vv):
        return lambda: gated_delta(qq, kk, vv, g, beta, s0, method=args.method)

    cases = {
        "GDN projections (qkv, z, b, a, out)": lambda: [*m.project(x), m.out_proj(z)],
        "GDN prologue (conv, SiLU, split, q / k norms), as the model runs it": lambda: gated_delta_prologue(
            qkv, None, m.conv1d.weight, **heads),
        "GDN prologue as MLX ops": lambda: conv_split(qkv, None, m.conv1d.weight, m.num_k_heads, m.num_v_heads,
                                                      m.head_k_dim),
        "GDN conv + SiLU as MLX ops": lambda: causal_conv_silu(qkv, None, m.conv1d.weight),
        "GDN decay + beta": lambda: decay_and_beta(a, b, m.A_log, m.dt_bias),
        "GDN core, model inputs": core(q, k, v),
        "GDN core, fp32 q / k": core(qf, kf, v),
        "GDN core, contiguous v": core(q, k, vc),
        "GDN gated norm": lambda: m.norm(vc, vc),
        "GDN mixer (all of the above)": lambda: m(x, gdn_cache()),
        "attention mixer": lambda: attn_layer.self_attn(x, kv_cache()),
        "MLP": lambda: gdn_layer.mlp(x),
        "GDN decoder layer": lambda: gdn_layer(x, gdn_cache()),
        "attention decoder layer": lambda: attn_layer(x, kv_cache()),
        "whole step (all layers, no head)": lambda: model.hidden(ids, model.make_cache(args.method)),
    }
    n_gdn = sum(layer.is_linear for layer in layers)
    print(f"{args.model}, {T} tokens in one step, {args.method} GDN path, device {mx.default_device()}; "
          f"{n_gdn} GDN + {len(layers) - n_gdn} attention layers")
    print("| component | ms per call |\n|---|---:|")
    for name, fn in cases.items():
        print(f"| {name} | {time_mlx(fn, args.runs, args.reps) * 1e3:.3f} |")


if __name__ == "__main__":
    main()
