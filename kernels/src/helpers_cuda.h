// Helpers for the CUDA form of the GDN kernels (passed as `header`; NVRTC rules: no `uint`, explicit
// float conversions from __nv_bfloat16 / __half).
#ifndef DS_EMULATE_PTX
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// The PTX primitives, the only inline assembly here. tests/kernels/emulator/ptx_shim.h defines the same
// functions for 32 CPU threads standing in for a warp, so the tensor-core paths can be checked without a GPU.
__device__ inline unsigned ds_cvt_tf32(float x) {  // round to TF32: nearest, ties away from zero
  unsigned u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
  return u;
}
__device__ inline float ds_shfl_xor(float x, int offset) { return __shfl_xor_sync(0xffffffffu, x, offset); }
__device__ inline void ds_mma_tf32(float* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// ldmatrix (sm_75+): 8 x 8 matrices of 16-bit elements from shared memory, lane 8i + r giving row r's address of
// matrix i; lane 4g + t receives elements (g, 2t), (g, 2t + 1) of each (.trans: (2t, g), (2t + 1, g)), packed.
__device__ inline void ds_ldmatrix_x2(unsigned* r, const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
__device__ inline void ds_ldmatrix_x2_trans(unsigned* r, const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
// 16-bit tensor-core tiles (bf16 / fp16 operands, fp32 accumulation): the fused attention kernel's, and the
// chunked GDN state pass's when its operands are 16-bit.
// Four 8 x 8 matrices of 16-bit elements from shared memory (each lane gives one row address: lanes 8i..8i+7
// the rows of matrix i); `trans` hands each lane a column pair instead of a row pair.
template <bool TRANS>
__device__ inline void fa_ldmatrix_x4(unsigned* r, const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  }
}

// c (16 x 8, fp32) += A (16 x 16) B (16 x 8), 16-bit operands in PTX's m16n8k16 fragment layout.
template <typename T>
__device__ inline void fa_mma(float* c, const unsigned* a, const unsigned* b);
template <>
__device__ inline void fa_mma<__nv_bfloat16>(float* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ inline void fa_mma<__half>(float* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two floats as one register of two 16-bit values (lo in the low half: the lower column of an A fragment).
template <typename T>
__device__ inline unsigned fa_pack(float lo, float hi);
template <>
__device__ inline unsigned fa_pack<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}
template <>
__device__ inline unsigned fa_pack<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}

// 16 bytes from global to shared memory without passing through registers (cp.async, sm_80+): the copy runs
// while the thread goes on; ds_async_commit closes a group, ds_async_wait_all waits for this thread's groups
// (a barrier then publishes them to the block). valid = false writes zeros and reads nothing. A pointer off
// 16-byte alignment (an input array's view may start anywhere) takes a plain element-wise copy instead.
template <typename T>
__device__ inline void ds_copy16_async(T* dst, const T* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if (((reinterpret_cast<unsigned long long>(src) | d) & 15) == 0) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
  } else {
    for (int i = 0; i < 16 / static_cast<int>(sizeof(T)); ++i) dst[i] = valid ? src[i] : static_cast<T>(0.0f);
  }
}
__device__ inline void ds_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ inline void ds_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight (the older ones are complete).
template <int N>
__device__ inline void ds_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif

// The 16-bit operand type of T: T itself where it is __half, else bf16 (an fp32 instantiation names one in the
// code it discards: NVRTC compiles the whole program, so every fa_mma it names must exist).
template <typename T>
struct ds_mma16_type {
  using type = __nv_bfloat16;
};
template <>
struct ds_mma16_type<__half> {
  using type = __half;
};

// exp of a log-decay argument (<= 0), flushed to exactly 0 below exp(-40): the same rule as
// kernels/chunked.py, far below fp32 resolution of the O(1) terms it joins.
__device__ inline float ds_decay(float x) { return x < -40.0f ? 0.0f : expf(x); }

// Sum over the 32 lanes of a warp; every lane gets the result (the order is fixed: deterministic).
__device__ inline float ds_warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += ds_shfl_xor(x, offset);
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

// x = hi + lo with hi, lo TF32 (round to nearest): the 3xTF32 split that keeps fp32 accuracy on tensor cores.
__device__ inline void ds_split_tf32(float x, unsigned& hi, unsigned& lo) {
  hi = ds_cvt_tf32(x);
  lo = ds_cvt_tf32(x - __uint_as_float(hi));
}

// x rounded to TF32 (round to nearest, ties away: cvt.rna) when R, else x. Operands stored rounded where they
// are made are passed to ds_mma_block as exact (no conversion per use): the same products, fewer instructions.
template <bool R>
__device__ inline float ds_tf32_if(float x) {
  return R ? __uint_as_float(ds_cvt_tf32(x)) : x;
}

// 16 bytes from p to q, both 16-byte aligned (one vector load and one vector store).
template <typename D, typename S>
__device__ inline void ds_copy16(D* q, const S* p) {
  *reinterpret_cast<uint4*>(q) = *reinterpret_cast<const uint4*>(p);
}

// How ds_mma_block fetches its A operand from shared memory (the product is the same; the k-steps' order
// inside one mma may differ, which only moves fp32 rounding):
//   DS_A_SCALAR  one 4-byte (or 2-byte) load per element, any strides;
//   DS_A_ROWS32  fp32 rows (ak == 1, rows 16-byte aligned): one ldmatrix.x4 per 16 x 8 tile (8 x 8 b16 tiles
//                of 32-bit pairs are 8 x 4 fp32 tiles in the m16n8k8 A layout);
//   DS_A_ROWS16  16-bit rows (ak == 1, rows 16-byte aligned): one ldmatrix.x2 per tile, which hands lane 4g + t
//                the pair (k = 2t, 2t + 1) of row g: k-slots paired (t -> 2t, t + 4 -> 2t + 1), B read in that order;
//   DS_A_COLS16  16-bit A stored transposed (am == 1: A(m, k) = a[k * ak + m], rows of the store 16-byte
//                aligned): one ldmatrix.x2.trans per tile, which hands lane 4g + t the pair (k = 2t, 2t + 1) of
//                row g: the k-slots are paired (t -> 2t, t + 4 -> 2t + 1) and B is read in the same order.
constexpr int DS_A_SCALAR = 0;
constexpr int DS_A_ROWS32 = 1;
constexpr int DS_A_COLS16 = 2;
constexpr int DS_A_ROWS16 = 3;

// The two 16-bit values of a packed pair as floats (little-endian: the first element is the low half).
__device__ inline void ds_unpack_pair(unsigned v, const __nv_bfloat16*, float& lo, float& hi) {
  lo = __uint_as_float(v << 16);
  hi = __uint_as_float(v & 0xffff0000u);
}
__device__ inline void ds_unpack_pair(unsigned v, const __half*, float& lo, float& hi) {
  lo = __half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xffffu)));
  hi = __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16)));
}

// One warp, one k-step of 8: acc (MT x NB tiles of 16 x 8, fp32) += A (16 MT x 8) B (8 x 8 NB), with
// A(m, k) = a[m * am + k * ak], B(k, n) = b[k * bk + n * bn] in shared memory. acc[(mt * NB + nb) * 4 + e] holds,
// for lane 4 g + t, C(16 mt + g + 8 (e / 2), 8 nb + 2 t + e % 2): PTX's m16n8k8 layout, which the Metal helper
// of the same name reproduces. Tensor cores with the 3xTF32 split (fp32-level accuracy; the lo x lo term,
// ~2^-22 relative, is dropped), each fragment split once and reused by MT x NB tiles. AEXACT / BEXACT: that
// operand holds bf16 / fp16 values, exact in TF32, so its lo part is zero: 2 products per tile, or 1 if both.
// FAST: plain TF32 (operands rounded to 10 mantissa bits, fp32 accumulation: what MLX's own fp32 matmuls do
// on CUDA unless MLX_ENABLE_TF32=0): one product per tile. ALOAD: how A is fetched (DS_A_* above).
template <int MT, int NB, bool AEXACT, bool BEXACT, bool FAST = false, int ALOAD = DS_A_SCALAR, typename PA,
          typename PB>
__device__ inline void ds_mma_block(float* acc, PA a, int am, int ak, PB b, int bk, int bn, int lane) {
  const int g = lane >> 2;
  const int t = lane & 3;
  constexpr bool KP = ALOAD == DS_A_COLS16 || ALOAD == DS_A_ROWS16;  // k-slots paired: t -> 2t, t + 4 -> 2t + 1
  unsigned ah[MT][4], al[MT][4], bh[NB][2], bl[NB][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    float v[4];
    if constexpr (ALOAD == DS_A_ROWS32) {
      // lanes 8i..8i+7 address matrix i: rows (i & 1) * 8 + 0..7, fp32 columns (i >> 1) * 4 .. + 3
      unsigned r[4];
      fa_ldmatrix_x4<false>(r, a + (16 * m + (lane & 7) + ((lane >> 3) & 1) * 8) * am + (lane >> 4) * 4);
      for (int e = 0; e < 4; ++e) v[e] = __uint_as_float(r[e]);
    } else if constexpr (ALOAD == DS_A_ROWS16) {
      // matrix 0: rows 0..7 (lanes 0..7 address them), matrix 1: rows 8..15; 8 16-bit columns k = 0..7 each
      unsigned r[2];
      ds_ldmatrix_x2(r, a + (16 * m + (lane & 7) + ((lane >> 3) & 1) * 8) * am);
      ds_unpack_pair(r[0], a, v[0], v[2]);  // row g: k = 2t (slot t), 2t + 1 (slot t + 4)
      ds_unpack_pair(r[1], a, v[1], v[3]);  // row g + 8
    } else if constexpr (ALOAD == DS_A_COLS16) {
      // matrix 0: stored rows k = 0..7, columns m = 0..7; matrix 1: columns m = 8..15 (lanes 8..15 address it)
      unsigned r[2];
      ds_ldmatrix_x2_trans(r, a + (lane & 7) * ak + 16 * m + ((lane >> 3) & 1) * 8);
      ds_unpack_pair(r[0], a, v[0], v[2]);  // row g: k = 2t (slot t), 2t + 1 (slot t + 4)
      ds_unpack_pair(r[1], a, v[1], v[3]);  // row g + 8
    } else {
      v[0] = static_cast<float>(a[(16 * m + g) * am + t * ak]);
      v[1] = static_cast<float>(a[(16 * m + g + 8) * am + t * ak]);
      v[2] = static_cast<float>(a[(16 * m + g) * am + (t + 4) * ak]);
      v[3] = static_cast<float>(a[(16 * m + g + 8) * am + (t + 4) * ak]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (AEXACT) {
        ah[m][e] = __float_as_uint(v[e]);
        al[m][e] = 0u;
      } else if (FAST) {
        ah[m][e] = ds_cvt_tf32(v[e]);
        al[m][e] = 0u;
      } else {
        ds_split_tf32(v[e], ah[m][e], al[m][e]);
      }
    }
  }
#pragma unroll
  for (int n = 0; n < NB; ++n) {
    const float v[2] = {static_cast<float>(b[(KP ? 2 * t : t) * bk + (8 * n + g) * bn]),
                        static_cast<float>(b[(KP ? 2 * t + 1 : t + 4) * bk + (8 * n + g) * bn])};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (BEXACT) {
        bh[n][e] = __float_as_uint(v[e]);
        bl[n][e] = 0u;
      } else if (FAST) {
        bh[n][e] = ds_cvt_tf32(v[e]);
        bl[n][e] = 0u;
      } else {
        ds_split_tf32(v[e], bh[n][e], bl[n][e]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      float* c = acc + (m * NB + n) * 4;
      if (!AEXACT && !FAST) ds_mma_tf32(c, al[m], bh[n]);  // small terms first
      if (!BEXACT && !FAST) ds_mma_tf32(c, ah[m], bl[n]);
      ds_mma_tf32(c, ah[m], bh[n]);
    }
  }
}

// SiLU of one causal-conv sum, with the conv and the SiLU results rounded to OutT as the MLX-ops path
// (kernels/prologue.py) rounds them, so prefill's fused prologue, decode's fused step and the ops agree.
template <typename OutT>
__device__ inline float ds_silu_rounded(float acc) {
  const float y = static_cast<float>(static_cast<OutT>(acc));
  const float sg = static_cast<float>(static_cast<OutT>(1.0f / (1.0f + expf(-y))));
  return static_cast<float>(static_cast<OutT>(y * sg));
}

// Channel c of SiLU(causal depthwise conv) for one new row: w [CD, CK] against the cached CK - 1 rows past
// [CK - 1, CD] then row [CD], rounded as ds_silu_rounded.
template <typename OutT, typename PR, typename PP, typename PW>
__device__ inline float ds_conv_silu(PR row, PP past, PW w, int c, int CK, int CD) {
  float acc = static_cast<float>(w[c * CK + CK - 1]) * static_cast<float>(row[c]);
  for (int j = 0; j < CK - 1; ++j) {
    acc += static_cast<float>(w[c * CK + j]) * static_cast<float>(past[j * CD + c]);
  }
  return ds_silu_rounded<OutT>(acc);
}

// One attention head's q or k row (qk_norm_rope_cuda.body, and decode attention applying them itself): a 32-lane
// group holds the row's D elements, D / 32 contiguous a lane, in x (fp32). RMSNorm with its weight w [D] as
// MLX's rms_norm computes it (w * OutT(x * rsqrt(mean x^2 + eps))), then NeoX RoPE on the first R dims as MLX's
// rope does (theta = position * exp2(-(i / (R / 2)) * log2(base)), pairs (i, i + R / 2), the rotation in fp32
// on the normed values); x holds the result, not yet rounded. A rotary partner sits (R / 2) / (D / 32) lanes
// away (a power of two: one xor shuffle, in step on every lane before any lane rotates that element).
template <typename OutT, int D, int R, typename WT>
__device__ inline void ds_norm_rope_row(float* x, const WT* w, float eps, float log2base, float position, int lane) {
  constexpr int VPT = D / 32;
  constexpr int HALF = R / 2;
  constexpr int SH = HALF / VPT;
  float ss = 0.0f;
  for (int i = 0; i < VPT; ++i) ss += x[i] * x[i];
  ss = ds_warp_sum(ss);
  const float normalizer = rsqrtf(ss / D + eps);
  for (int i = 0; i < VPT; ++i) {
    const float wi = static_cast<float>(w[lane * VPT + i]);
    x[i] = static_cast<float>(static_cast<OutT>(wi * static_cast<float>(static_cast<OutT>(x[i] * normalizer))));
  }
  for (int i = 0; i < VPT; ++i) {
    const int c = lane * VPT + i;
    const float partner = ds_shfl_xor(x[i], SH);  // every lane shuffles; lanes past R ignore it
    if (c < R) {
      const int f = c < HALF ? c : c - HALF;
      const float theta = position * exp2f(-(static_cast<float>(f) / static_cast<float>(HALF)) * log2base);
      const float cs = cosf(theta), sn = sinf(theta);
      x[i] = c < HALF ? x[i] * cs - partner * sn : partner * sn + x[i] * cs;
    }
  }
}
