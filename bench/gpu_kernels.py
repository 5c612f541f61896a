"""GDN core per layer on an NVIDIA GPU (B = 1, 16 heads x 128, bf16 q/k/v, fp32 gates and state):
our chunked and serial CUDA kernels vs flash-linear-attention's `chunk_gated_delta_rule` (Triton, PyTorch,
same GPU; CUDA-event time of back-to-back calls, and its kernels' durations alone from the torch profiler)
vs MLX's built-in `mx.fast.gated_delta_update`; plus one decode step (T = 1) of our serial kernel vs the
MLX-ops path and the built-in. Our times include MLX's launch cost (no kernel-only timer in MLX), so the
"ours / fla kernels" ratio is the strict one. A correctness gate (chunked vs serial kernel, and vs fla)
runs first for every length; a red gate prints FAIL and no ratio.

Usage: python bench/gpu_kernels.py [--contexts 4096,16384] [--runs 10] [--qk-dtype float32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

import mlx.core as mx
import numpy as np

from engine.backend import configure_long_running
from kernels import ENV_OPS, gated_delta_decode, gpu
from kernels.serial import gated_delta_serial

H, D = 16, 128


def inputs(T: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(1, T, H, D))
    k = rng.normal(size=(1, T, H, D))
    q /= np.linalg.norm(q, axis=-1, keepdims=True) * np.sqrt(D)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    a_log = np.log(rng.uniform(0.5, 16, H))
    g = -np.exp(a_log) * np.logaddexp(0, rng.normal(size=(1, T, H)) + rng.normal(size=H))
    beta = 1 / (1 + np.exp(-rng.normal(size=(1, T, H))))
    return {"q": q, "k": k, "v": rng.normal(size=(1, T, H, D)), "g": g, "beta": beta}


def time_mlx(fn, runs: int, reps: int) -> float:
    """Median seconds per call over `runs` batches of `reps` back-to-back calls evaluated together (device
    synchronised): the GPU time of the kernels plus MLX's launch cost, comparable to CUDA-event timing."""
    mx.eval(fn())
    mx.synchronize()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(reps)])
        mx.synchronize()
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def time_torch(fn, runs: int, reps: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(samples)


def time_torch_kernels(fn, reps: int) -> float:
    """Seconds per call of the CUDA kernels alone (torch profiler durations summed), without the Python launch
    gaps that CUDA-event timing of back-to-back calls includes: the strict reading of "its GPU time"."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / reps / 1e6


def fla_runner(x: dict[str, np.ndarray]):
    try:
        import torch
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    t = {n: torch.tensor(a, device="cuda", dtype=torch.bfloat16 if n in "qkv" else torch.float32)
         for n, a in x.items()}
    state = torch.zeros(1, H, D, D, device="cuda", dtype=torch.float32)

    def run():
        return chunk_gated_delta_rule(t["q"], t["k"], t["v"], t["g"], t["beta"], scale=1.0, initial_state=state,
                                      output_final_state=True)

    return run


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def row(T: int, runs: int, backend: str, qk_dtype: mx.Dtype = mx.bfloat16) -> dict:
    x = inputs(T)
    q, k, v = (mx.array(x[n].astype(np.float32)).astype(mx.bfloat16) for n in "qkv")
    q, k = q.astype(qk_dtype), k.astype(qk_dtype)  # float32: fp32 q / k (the model passes its dtype's)
    g, beta = mx.array(x["g"].astype(np.float32)), mx.array(x["beta"].astype(np.float32))
    s0 = mx.zeros((1, H, D, D), dtype=mx.float32)
    chunked = lambda: gpu.chunked(q, k, v, g, beta, s0, chunk_size=64, backend=backend)  # noqa: E731
    serial = lambda: gpu.serial(q, k, v, g, beta, s0, backend=backend)  # noqa: E731
    out_c, st_c = chunked()
    out_s, st_s = serial()
    res = {"T": T, "gate_serial": max(rel_err(out_c.astype(mx.float32), out_s.astype(mx.float32)),
                                      rel_err(st_c, st_s))}
    reps = max(10, 65536 // T)  # back-to-back calls per timing: MLX's per-evaluation overhead amortised
    res["chunked_ms"] = time_mlx(chunked, runs, reps) * 1e3
    res["serial_ms"] = time_mlx(serial, runs, reps) * 1e3
    builtin = lambda: mx.fast.gated_delta_update(q, k, v, mx.exp(g), beta, s0)  # noqa: E731
    res["builtin_ms"] = time_mlx(builtin, max(2, runs // 4), 1) * 1e3
    fla = fla_runner(x)
    if fla is not None:
        o_f, _ = fla()
        res["gate_fla"] = rel_err(out_c.astype(mx.float32), o_f.float().cpu().numpy())
        res["fla_ms"] = time_torch(fla, runs, reps) * 1e3
        res["fla_kernels_ms"] = time_torch_kernels(fla, reps) * 1e3
    return res


def decode_row(runs: int, backend: str) -> dict:
    x = inputs(1, seed=1)
    q, k, v = (mx.array(x[n].astype(np.float32)).astype(mx.bfloat16) for n in "qkv")
    g, beta = mx.array(x["g"].astype(np.float32)), mx.array(x["beta"].astype(np.float32))
    s0 = mx.array(np.random.default_rng(2).normal(size=(1, H, D, D)).astype(np.float32))
    kern = lambda: gpu.serial(q, k, v, g, beta, s0, backend=backend)  # noqa: E731
    ops = lambda: gated_delta_serial(q, k, v, g, beta, s0)  # noqa: E731
    builtin = lambda: mx.fast.gated_delta_update(q, k, v, mx.exp(g), beta, s0)  # noqa: E731
    gate = max(rel_err(a.astype(mx.float32), b.astype(mx.float32)) for a, b in zip(kern(), ops(), strict=True))
    res = {"kernel_ms": time_mlx(kern, runs, 50) * 1e3, "ops_ms": time_mlx(ops, runs, 50) * 1e3,
           "builtin_ms": time_mlx(builtin, runs, 50) * 1e3, "gate": gate}
    # The whole layer's decode step from its projections (conv, norms, gates, step): one fused kernel vs the same
    # as MLX ops (kernels/prologue.py + the serial ops step), bf16 like the model.
    rng = np.random.default_rng(3)
    cd = 3 * H * D
    row, past = (mx.array(rng.normal(size=s).astype(np.float32)).astype(mx.bfloat16) for s in ((1, 1, cd), (1, 3, cd)))
    w = mx.array((rng.normal(size=(cd, 4, 1)) * 0.5).astype(np.float32)).astype(mx.bfloat16)
    a, b = (mx.array(rng.normal(size=(1, 1, H)).astype(np.float32)).astype(mx.bfloat16) for _ in range(2))
    a_log, dt_bias = mx.array(np.log(rng.uniform(0.5, 16, H)).astype(np.float32)), mx.zeros((H,))
    z = mx.array(rng.normal(size=(1, 1, H, D)).astype(np.float32)).astype(mx.bfloat16)
    nw = mx.array(rng.uniform(0.5, 1.5, D).astype(np.float32)).astype(mx.bfloat16)

    def layer_ops():
        os.environ[ENV_OPS] = "1"  # the serial step as MLX ops as well (the gated norm: its own kernel)
        try:
            return gated_delta_decode(row, past, w, a, b, a_log, dt_bias, s0, z, nw, num_k_heads=H, head_k_dim=D,
                                      eps=1e-6)
        finally:
            del os.environ[ENV_OPS]

    fused = lambda: gpu.decode(row, past, w, a, b, a_log, dt_bias, s0, z, nw, num_k_heads=H,  # noqa: E731
                               head_k_dim=D, eps=1e-6, backend=backend)
    o_f, c_f, s_f = fused()
    o_o, c_o, s_o = layer_ops()
    res["layer_gate"] = max(rel_err(o_f.astype(mx.float32), o_o.astype(mx.float32)), rel_err(s_f, s_o),
                            rel_err(c_f.astype(mx.float32), c_o.astype(mx.float32)))
    res["fused_ms"] = time_mlx(fused, runs, 50) * 1e3
    res["layer_ops_ms"] = time_mlx(layer_ops, runs, 50) * 1e3
    return res


def main() -> None:
    configure_long_running()  # the server's process settings (CUDA-graph and buffer caches)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="4096,16384")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--qk-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="float32: fp32 q and k with bf16 v (fla still gets bf16)")
    args = parser.parse_args()
    backend = gpu.gpu_backend()
    assert backend == "cuda", "run this on an NVIDIA GPU with MLX's CUDA backend"
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    versions = f"MLX {mx.__version__}, Python {platform.python_version()}"
    try:
        import fla
        import torch

        versions += f", torch {torch.__version__}, fla {fla.__version__}"
    except ImportError:
        versions += ", fla not installed"
    print(f"GDN core per layer, B=1, {H} heads x {D}, {args.qk_dtype} q/k, bf16 v, fp32 gates and state, C=64; "
          f"{smi}; {versions}")
    print("| T | ours chunked ms | fla chunk ms | ours / fla | fla kernels only ms | ours / fla kernels "
          "| MLX built-in ms | built-in / ours | ours serial ms | gate vs serial | gate vs fla |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for T in (int(t) for t in args.contexts.split(",")):
        r = row(T, args.runs, backend, getattr(mx, args.qk_dtype))
        ok = r["gate_serial"] < 2e-2 and r.get("gate_fla", 0.0) < 5e-2
        fla_ms = r.get("fla_ms", float("nan"))
        ratio = f"{r['chunked_ms'] / fla_ms:.2f}x" if ok else "FAIL"
        fla_k = r.get("fla_kernels_ms", float("nan"))
        ratio_k = f"{r['chunked_ms'] / fla_k:.2f}x" if ok else "FAIL"
        speedup = f"{r['builtin_ms'] / r['chunked_ms']:.0f}x" if ok else "FAIL"
        print(f"| {T} | {r['chunked_ms']:.3f} | {fla_ms:.3f} | {ratio} | {fla_k:.3f} | {ratio_k} "
              f"| {r['builtin_ms']:.1f} | {speedup} "
              f"| {r['serial_ms']:.3f} | {r['gate_serial']:.1e} | {r.get('gate_fla', float('nan')):.1e} |")
    d = decode_row(args.runs, backend)
    verdict = f"{d['ops_ms'] / d['kernel_ms']:.0f}x" if d["gate"] < 1e-2 else "FAIL"
    builtin = f"{d['builtin_ms'] / d['kernel_ms']:.0f}x" if d["gate"] < 1e-2 else "FAIL"
    print(f"\ndecode step (T=1, wall time per step, 50 steps per evaluation): serial kernel "
          f"{d['kernel_ms'] * 1e3:.1f} us, MLX-ops path {d['ops_ms'] * 1e3:.1f} us ({verdict}), "
          f"MLX built-in {d['builtin_ms'] * 1e3:.1f} us ({builtin}); gate {d['gate']:.1e}")
    fused = f"{d['layer_ops_ms'] / d['fused_ms']:.0f}x" if d["layer_gate"] < 2e-2 else "FAIL"
    print(f"layer decode step from the projections (conv, norms, gates, step): fused kernel "
          f"{d['fused_ms'] * 1e3:.1f} us, MLX ops {d['layer_ops_ms'] * 1e3:.1f} us ({fused}); "
          f"gate {d['layer_gate']:.1e}")


if __name__ == "__main__":
    main()
