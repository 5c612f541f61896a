// CPU stand-ins for the PTX primitives of the CUDA kernels' helpers (kernels/src/helpers_cuda.h and
// attention_cuda.h compile theirs only without DS_EMULATE_PTX), so their warp-level tensor-core code runs on
// the CPU: 32 std::threads are one warp and meet at a std::barrier in every warp-collective primitive
// (mma.sync, ldmatrix, shfl), as the hardware's lanes do.
// Fragment layouts follow the PTX ISA (mma.m16n8k8 tf32, mma.m16n8k16 bf16 / f16, ldmatrix .m8n8 .b16).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>

#define DS_EMULATE_PTX 1
#define __device__

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
struct __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
  explicit __nv_bfloat16(float f) {  // round to nearest even (__float2bfloat16_rn)
    const unsigned u = __float_as_uint(f);
    bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  operator float() const { return __uint_as_float(static_cast<unsigned>(bits) << 16); }
};
struct __half {
  uint16_t bits;
  __half() = default;
  explicit __half(float f) {  // round to nearest even
    const _Float16 h = static_cast<_Float16>(f);
    std::memcpy(&bits, &h, 2);
  }
  operator float() const {  // IEEE binary16 -> binary32 (exact)
    const int e = (bits >> 10) & 31, m = bits & 1023;
    const float s = (bits & 0x8000) ? -1.0f : 1.0f;
    if (e == 0) return s * std::ldexp(static_cast<float>(m), -24);
    if (e == 31) return m ? NAN : s * INFINITY;
    return s * std::ldexp(static_cast<float>(m | 1024), e - 25);
  }
};
inline __half __ushort_as_half(unsigned short b) {
  __half h;
  h.bits = b;
  return h;
}
inline float __half2float(__half h) { return static_cast<float>(h); }
struct uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

// The warp the calling thread is a lane of (set by the harness before it calls into the helpers).
struct ds_warp {
  std::barrier<>* bar;
  unsigned a[32][4], b[32][2];
  float c[32][4], f[32];
  const void* addr[32];  // ldmatrix row addresses
};
inline thread_local ds_warp* ds_w = nullptr;
inline thread_local int ds_lane = 0;

inline unsigned ds_cvt_tf32(float x) {  // cvt.rna.tf32.f32: nearest, ties away from zero (finite x)
  return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}
inline float ds_shfl_xor(float x, int offset) {
  ds_w->f[ds_lane] = x;
  ds_w->bar->arrive_and_wait();
  const float y = ds_w->f[ds_lane ^ offset];
  ds_w->bar->arrive_and_wait();
  return y;
}
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d = a b + c (c in place). A(r, k) lives in lane
// 4 (r % 8) + k % 4, register (r >= 8) + 2 (k >= 4); B(k, n) in lane 4 n + k % 4, register (k >= 4); C(r, n)
// in lane 4 (r % 8) + n / 2, register 2 (r >= 8) + n % 2. The tensor cores read operands as TF32 (the low 13
// bits ignored) and accumulate in fp32 (here: k in order).
inline void ds_mma_tf32(float* c, const unsigned* a, const unsigned* b) {
  ds_warp& w = *ds_w;
  const int L = ds_lane;
  for (int i = 0; i < 4; ++i) w.a[L][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[L][i] = b[i];
  w.bar->arrive_and_wait();
  const int g = L >> 2, t = L & 3;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    float acc = c[e];
    for (int k = 0; k < 8; ++k) {
      const float av = __uint_as_float(w.a[4 * (r % 8) + k % 4][(r >= 8) + 2 * (k >= 4)] & 0xffffe000u);
      const float bv = __uint_as_float(w.b[4 * n + k % 4][k >= 4] & 0xffffe000u);
      acc += av * bv;
    }
    out[e] = acc;
  }
  w.bar->arrive_and_wait();  // every lane has read the operands
  for (int e = 0; e < 4; ++e) c[e] = out[e];
}
// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: lane 8 i + r gives the address of row r of matrix i;
// lane 4 g + t gets, per matrix, elements (g, 2t), (g, 2t + 1) packed low | high (.trans: (2t, g), (2t + 1, g)).
inline void ds_ldmatrix(unsigned* r, const void* p, int count, bool trans) {
  ds_warp& w = *ds_w;
  const int L = ds_lane;
  w.addr[L] = p;
  w.bar->arrive_and_wait();
  const int g = L >> 2, t = L & 3;
  for (int i = 0; i < count; ++i) {
    uint16_t e[2];
    for (int h = 0; h < 2; ++h) {
      const uint16_t* row = static_cast<const uint16_t*>(w.addr[8 * i + (trans ? 2 * t + h : g)]);
      e[h] = row[trans ? g : 2 * t + h];
    }
    r[i] = static_cast<unsigned>(e[0]) | (static_cast<unsigned>(e[1]) << 16);
  }
  w.bar->arrive_and_wait();
}
inline void ds_ldmatrix_x2(unsigned* r, const void* p) { ds_ldmatrix(r, p, 2, false); }
inline void ds_ldmatrix_x2_trans(unsigned* r, const void* p) { ds_ldmatrix(r, p, 2, true); }


// cp.async, done synchronously here: the data is in shared memory when the call returns (the kernels' wait
// and barrier then only order it, as on the GPU). valid = false writes zeros and reads nothing.
inline void ds_copy16_now(void* dst, const void* src, bool valid) {
  if (valid) {
    std::memcpy(dst, src, 16);
  } else {
    std::memset(dst, 0, 16);
  }
}
template <typename T>
inline void ds_copy16_async(T* dst, const T* src, bool valid) {
  ds_copy16_now(dst, src, valid);
}
inline void ds_async_commit() {}
inline void ds_async_wait_all() {}
template <int N>
inline void ds_async_wait() {}

// The fused attention kernel's primitives (kernels/src/attention_cuda.h).
template <bool TRANS>
inline void fa_ldmatrix_x4(unsigned* r, const void* p) {
  ds_ldmatrix(r, p, 4, TRANS);
}
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: A(r, k) is half k % 2 of register (r >= 8) + 2 (k >= 8)
// of lane 4 (r % 8) + (k % 8) / 2; B(k, n) half k % 2 of register (k >= 8) of lane 4 n + (k % 8) / 2; C as
// m16n8k8. Products and sums in fp32 (k in order).
template <typename T>
inline void fa_mma(float* c, const unsigned* a, const unsigned* b) {
  ds_warp& w = *ds_w;
  const int L = ds_lane;
  for (int i = 0; i < 4; ++i) w.a[L][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[L][i] = b[i];
  w.bar->arrive_and_wait();
  auto half = [](unsigned reg, int k) {
    T v;
    v.bits = static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xffffu);
    return static_cast<float>(v);
  };
  const int g = L >> 2, t = L & 3;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    float acc = c[e];
    for (int k = 0; k < 16; ++k) {
      acc += half(w.a[4 * (r % 8) + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k) *
             half(w.b[4 * n + (k % 8) / 2][k >= 8], k);
    }
    out[e] = acc;
  }
  w.bar->arrive_and_wait();
  for (int e = 0; e < 4; ++e) c[e] = out[e];
}
template <typename T>
inline unsigned fa_pack(float lo, float hi) {  // two floats rounded to nearest even, lo in the low half
  return static_cast<unsigned>(T(lo).bits) | (static_cast<unsigned>(T(hi).bits) << 16);
}
inline void fa_copy16(void* dst, const void* src, bool valid) { ds_copy16_now(dst, src, valid); }
