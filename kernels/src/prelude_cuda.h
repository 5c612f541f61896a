// CUDA prelude: prepended to every kernel body.
#define DS_TID ((int)threadIdx.x)
#define DS_BID_X ((int)blockIdx.x)
#define DS_BID_Y ((int)blockIdx.y)
#define DS_BID_Z ((int)blockIdx.z)
#define DS_LANE ((int)(threadIdx.x & 31))
#define DS_SYNC() __syncthreads()
#define DS_SHARED __shared__
#define DS_SHARED16 __shared__ __align__(16)  // threadgroup memory that 16-byte copies land in
#define DS_SHARED_PTR(T) T*
#define DS_WARP_SUM(x) ds_warp_sum(x)
#define DS_EXP(x) expf(x)
#define DS_LOG(x) logf(x)
#define DS_RSQRT(x) rsqrtf(x)
#define DS_MAX(a, b) fmaxf(a, b)
#define DS_BITS_FLOAT(i) __int_as_float(i)  // a float passed as its bits (template arguments are integers)
#define DS_MMA16 1  // 16-bit tensor-core tiles (fa_mma, fa_ldmatrix_x4 in helpers_cuda.h)
#define DS_DYNAMIC_SHARED 1  // dynamic shared memory (`extern __shared__`, sized at launch)
