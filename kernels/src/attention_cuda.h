// Helpers of the fused causal attention kernel (CUDA only), compiled after helpers_cuda.h (its 16-bit tensor-core
// tiles: fa_ldmatrix_x4, fa_mma, fa_pack). PTX: tests/kernels/emulator/ptx_shim.h defines CPU stand-ins
// (DS_EMULATE_PTX).
#ifndef DS_EMULATE_PTX
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// 16 bytes global -> shared without registers (cp.async); valid = false writes zeros.
__device__ inline void fa_copy16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ inline void fa_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ inline void fa_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif
