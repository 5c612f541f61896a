// Helpers of the fused causal attention kernel (CUDA only): bf16 / fp16 tensor-core tiles fed by ldmatrix.
// All of them are PTX: tests/kernels/emulator/ptx_shim.h defines CPU stand-ins (DS_EMULATE_PTX).
#ifndef DS_EMULATE_PTX
#include <cuda_bf16.h>
#include <cuda_fp16.h>

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

// 16 bytes global -> shared without registers (cp.async); valid = false writes zeros.
__device__ inline void fa_copy16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ inline void fa_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ inline void fa_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif
