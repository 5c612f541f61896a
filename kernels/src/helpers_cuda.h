// Helpers for the CUDA form of the GDN kernels (passed as `header`; NVRTC rules: no `uint`, explicit
// float conversions from __nv_bfloat16 / __half).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// exp of a log-decay argument (<= 0), flushed to exactly 0 below exp(-40): the same rule as
// kernels/chunked.py, far below fp32 resolution of the O(1) terms it joins.
__device__ inline float ds_decay(float x) { return x < -40.0f ? 0.0f : expf(x); }

// Sum over the 32 lanes of a warp; every lane gets the result (the order is fixed: deterministic).
__device__ inline float ds_warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}
