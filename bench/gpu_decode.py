"""One GDN decode step (T = 1, B = 1, 16 heads x 128, bf16) repeated 11 times, for GPU-time measurement under a
profiler: the core's step by our serial kernel (`kernel`) or the MLX-ops path (`ops`), or a whole layer's step
from its projections (conv, SiLU, q / k norms, decay, beta, the step, the conv-cache shift, the output's gated
norm) by the fused decode kernel (`fused`) or as MLX ops (`layer-ops`; the norm by its own kernel); or a kernel
that copies one float (`empty`): the GPU time one launch takes, the floor of a one-kernel step:

    ncu --csv --metrics gpu__time_duration.sum python bench/gpu_decode.py kernel|ops|fused|layer-ops|empty [STEPS]

The set-up's kernels (random inputs) are in the profile too: the difference between runs of 11 and 1 steps, over
10, is one step's GPU time and kernel count (tools/device-checks.sh decode does this).
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx

from kernels import ENV_OPS, gated_delta_decode, gpu
from kernels.serial import gated_delta_serial

H, D, K = 16, 128, 4
mode = sys.argv[1]
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 11
if mode == "layer-ops":
    os.environ[ENV_OPS] = "1"  # the serial step as MLX ops as well
q = (mx.random.normal((1, 1, H, D)) / 11.3).astype(mx.bfloat16)
k = (mx.random.normal((1, 1, H, D)) / 11.3).astype(mx.bfloat16)
v = mx.random.normal((1, 1, H, D)).astype(mx.bfloat16)
g, beta = -mx.random.uniform(0, 2, (1, 1, H)), mx.random.uniform(0, 1, (1, 1, H))
qkv, past = mx.random.normal((1, 1, 3 * H * D)).astype(mx.bfloat16), mx.zeros((1, K - 1, 3 * H * D), mx.bfloat16)
conv_w = (mx.random.normal((3 * H * D, K, 1)) * 0.5).astype(mx.bfloat16)
a, b = mx.random.normal((1, 1, H)).astype(mx.bfloat16), mx.random.normal((1, 1, H)).astype(mx.bfloat16)
a_log, dt_bias = mx.log(mx.random.uniform(0.5, 16, (H,))), mx.zeros((H,))
z, norm_w = mx.random.normal((1, 1, H, D)).astype(mx.bfloat16), mx.ones((D,), mx.bfloat16)
state = mx.zeros((1, H, D, D))
mx.eval(q, k, v, g, beta, qkv, past, conv_w, a, b, a_log, dt_bias, z, norm_w, state)
backend = gpu.gpu_backend()
if mode == "empty":  # (its input, g, is an fp32 array already on the device)
    empty = mx.fast.cuda_kernel(name="deltaserve_empty", input_names=["x"], output_names=["y"],
                                source="if (threadIdx.x == 0 && blockIdx.x == 0) y[0] = x[0];")
for _ in range(STEPS):
    if mode == "empty":
        (out,) = empty(inputs=[g], output_shapes=[(1,)], output_dtypes=[mx.float32], grid=(32, 1, 1),
                       threadgroup=(32, 1, 1))
    elif mode == "kernel":
        out, state = gpu.serial(q, k, v, g, beta, state, backend=backend)
    elif mode == "ops":
        out, state = gated_delta_serial(q, k, v, g, beta, state)
    else:  # fused / layer-ops: kernels.gated_delta_decode takes the kernel unless ENV_OPS is set
        out, past, state = gated_delta_decode(qkv, past, conv_w, a, b, a_log, dt_bias, state, z, norm_w,
                                              num_k_heads=H, head_k_dim=D, eps=1e-6)
    mx.eval(out, state, past)
mx.synchronize()
