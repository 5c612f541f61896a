// Helpers of the fused causal attention kernel (CUDA only), compiled after helpers_cuda.h (its 16-bit tensor-core
// tiles: fa_ldmatrix_x4, fa_mma, fa_pack). PTX: tests/kernels/emulator/ptx_shim.h defines CPU stand-ins
// (DS_EMULATE_PTX).
#ifndef DS_EMULATE_PTX
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// 16 bytes global -> shared without registers (cp.async); valid = false writes zeros. (Groups close and are
// waited for with helpers_cuda.h's ds_async_commit / ds_async_wait; ds_copy16_async's alignment check is not
// needed here: every row of these tiles is 16-byte aligned.)
__device__ inline void fa_copy16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
#endif
