"""One GDN decode step (T = 1, B = 1, 16 heads x 128, bf16) repeated 11 times, by our serial kernel or by
the MLX-ops path, for GPU-time measurement under a profiler:

    ncu --csv --metrics gpu__time_duration.sum python bench/gpu_decode.py kernel|ops
"""

from __future__ import annotations

import sys

import mlx.core as mx

from kernels import gpu
from kernels.serial import gated_delta_serial

H, D, STEPS = 16, 128, 11

q = (mx.random.normal((1, 1, H, D)) / 11.3).astype(mx.bfloat16)
k = (mx.random.normal((1, 1, H, D)) / 11.3).astype(mx.bfloat16)
v = mx.random.normal((1, 1, H, D)).astype(mx.bfloat16)
g, beta = -mx.random.uniform(0, 2, (1, 1, H)), mx.random.uniform(0, 1, (1, 1, H))
state = mx.zeros((1, H, D, D))
mx.eval(q, k, v, g, beta, state)
backend = gpu.gpu_backend()
for _ in range(STEPS):
    if sys.argv[1] == "kernel":
        out, state = gpu.serial(q, k, v, g, beta, state, backend=backend)
    else:
        out, state = gated_delta_serial(q, k, v, g, beta, state)
    mx.eval(out, state)
mx.synchronize()
