// Helpers for the Metal form of the GDN kernels (passed as `header`, before the kernel).

// exp of a log-decay argument (<= 0), flushed to exactly 0 below exp(-40): the same rule as
// kernels/chunked.py, far below fp32 resolution of the O(1) terms it joins.
inline float ds_decay(float x) { return x < -40.0f ? 0.0f : metal::exp(x); }

// 16 raw bytes loaded from device memory and held in registers until used: a prefetch that costs one
// instruction and no wait (the consumer unpacks it with ds_unpack16). p must be 16-byte aligned.
struct ds_raw16 {
  uint x, y, z, w;
};
template <typename T>
inline ds_raw16 ds_load16(const device T* p) {
  const uint4 v = *reinterpret_cast<const device uint4*>(p);
  return {v.x, v.y, v.z, v.w};
}
// The 16 / sizeof(T) values of a ds_raw16 as floats (T picks the element type; the pointer is not read).
inline void ds_unpack16(thread const ds_raw16& v, const device float*, thread float* out) {
  out[0] = as_type<float>(v.x);
  out[1] = as_type<float>(v.y);
  out[2] = as_type<float>(v.z);
  out[3] = as_type<float>(v.w);
}
inline void ds_unpack16(thread const ds_raw16& v, const device bfloat16_t*, thread float* out) {
  const uint u[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {  // little-endian: element 2i is the low half
    out[2 * i] = as_type<float>(u[i] << 16);
    out[2 * i + 1] = as_type<float>(u[i] & 0xffff0000u);
  }
}
inline void ds_unpack16(thread const ds_raw16& v, const device half*, thread float* out) {
  const uint u[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {
    const half2 h = as_type<half2>(u[i]);
    out[2 * i] = static_cast<float>(h.x);
    out[2 * i + 1] = static_cast<float>(h.y);
  }
}

// One SIMD group, one k-step of 8: acc (MT x NB tiles of 16 x 8, fp32) += A (16 MT x 8) B (8 x 8 NB), with
// A(m, k) = a[m * am + k * ak], B(k, n) = b[k * bk + n * bn] in threadgroup memory. acc[(mt * NB + nb) * 4 + e]
// holds, for lane 4 g + t, C(16 mt + g + 8 (e / 2), 8 nb + 2 t + e % 2): the layout of the CUDA helper (PTX
// m16n8k8), computed here with plain FMAs, k in order (AEXACT / BEXACT / FAST only matter to the CUDA form).
// (simdgroup_matrix would be the Metal tensor path; it needs a Mac to validate, so it is not used yet.)
// (ALOAD, how the CUDA form fetches A, does not change what is computed: ignored here.)
static constant constexpr const int DS_A_SCALAR = 0;
static constant constexpr const int DS_A_ROWS32 = 1;
static constant constexpr const int DS_A_COLS16 = 2;
static constant constexpr const int DS_A_ROWS16 = 3;
template <int MT, int NB, bool AEXACT, bool BEXACT, bool FAST = false, int ALOAD = DS_A_SCALAR, typename Acc,
          typename PA, typename PB>
inline void ds_mma_block(Acc acc, PA a, int am, int ak, PB b, int bk, int bn, int lane) {
  const int g = lane >> 2;
  const int t = lane & 3;
  for (int k = 0; k < 8; ++k) {
    float av[MT][2];
    float bv[NB][2];
    for (int m = 0; m < MT; ++m) {
      av[m][0] = static_cast<float>(a[(16 * m + g) * am + k * ak]);
      av[m][1] = static_cast<float>(a[(16 * m + g + 8) * am + k * ak]);
    }
    for (int n = 0; n < NB; ++n) {
      bv[n][0] = static_cast<float>(b[k * bk + (8 * n + 2 * t) * bn]);
      bv[n][1] = static_cast<float>(b[k * bk + (8 * n + 2 * t + 1) * bn]);
    }
    for (int m = 0; m < MT; ++m) {
      for (int n = 0; n < NB; ++n) {
        acc[(m * NB + n) * 4 + 0] += av[m][0] * bv[n][0];
        acc[(m * NB + n) * 4 + 1] += av[m][0] * bv[n][1];
        acc[(m * NB + n) * 4 + 2] += av[m][1] * bv[n][0];
        acc[(m * NB + n) * 4 + 3] += av[m][1] * bv[n][1];
      }
    }
  }
}

// x rounded to TF32 (round to nearest, ties away from zero, as CUDA's cvt.rna) when R, else x. (The bodies
// set R only on CUDA; the Metal form rounds the same way should it be set.)
template <bool R>
inline float ds_tf32_if(float x) {
  return R ? as_type<float>((as_type<uint>(x) + 0x1000u) & 0xffffe000u) : x;
}

// 16 bytes from p to q, both 16-byte aligned.
template <typename D, typename S>
inline void ds_copy16(D q, S p) {
  for (int i = 0; i < 16 / (int)sizeof(p[0]); ++i) q[i] = p[i];
}

// The CUDA helpers' asynchronous 16-byte copy, done synchronously here (Metal has no cp.async): the data is
// in threadgroup memory when the call returns; the barrier the body places after ds_async_wait_all publishes
// it. valid = false writes zeros and reads nothing.
template <typename D, typename S>
inline void ds_copy16_async(D dst, S src, bool valid) {
  constexpr int n = 16 / sizeof(src[0]);
  for (int i = 0; i < n; ++i) {
    if (valid) {
      dst[i] = src[i];
    } else {
      dst[i] = 0.0f;
    }
  }
}
inline void ds_async_commit() {}
inline void ds_async_wait_all() {}
template <int N>
inline void ds_async_wait() {}

// SiLU of one causal-conv sum, with the conv and the SiLU results rounded to OutT as the MLX-ops path
// (kernels/prologue.py) rounds them, so prefill's fused prologue, decode's fused step and the ops agree.
template <typename OutT>
inline float ds_silu_rounded(float acc) {
  const float y = static_cast<float>(static_cast<OutT>(acc));
  const float sg = static_cast<float>(static_cast<OutT>(1.0f / (1.0f + metal::exp(-y))));
  return static_cast<float>(static_cast<OutT>(y * sg));
}

// Channel c of SiLU(causal depthwise conv) for one new row: w [CD, CK] against the cached CK - 1 rows past
// [CK - 1, CD] then row [CD], rounded as ds_silu_rounded.
template <typename OutT, typename PR, typename PP, typename PW>
inline float ds_conv_silu(PR row, PP past, PW w, int c, int CK, int CD) {
  float acc = static_cast<float>(w[c * CK + CK - 1]) * static_cast<float>(row[c]);
  for (int j = 0; j < CK - 1; ++j) {
    acc += static_cast<float>(w[c * CK + j]) * static_cast<float>(past[j * CD + c]);
  }
  return ds_silu_rounded<OutT>(acc);
}
