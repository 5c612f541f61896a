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

// 16 raw bytes loaded from global memory and held in registers until used: a prefetch that costs one
// instruction and no wait (the consumer unpacks it with ds_unpack16). p must be 16-byte aligned.
struct ds_raw16 {
  unsigned x, y, z, w;
};
template <typename T>
__device__ inline ds_raw16 ds_load16(const T* p) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  return {v.x, v.y, v.z, v.w};
}
// The 16 / sizeof(T) values of a ds_raw16 as floats (T picks the element type; the pointer is not read).
__device__ inline void ds_unpack16(const ds_raw16& v, const float*, float* out) {
  out[0] = __uint_as_float(v.x);
  out[1] = __uint_as_float(v.y);
  out[2] = __uint_as_float(v.z);
  out[3] = __uint_as_float(v.w);
}
__device__ inline void ds_unpack16(const ds_raw16& v, const __nv_bfloat16*, float* out) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {  // little-endian: element 2i is the low half
    out[2 * i] = __uint_as_float(u[i] << 16);
    out[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ inline void ds_unpack16(const ds_raw16& v, const __half*, float* out) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[i] & 0xffffu)));
    out[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[i] >> 16)));
  }
}
