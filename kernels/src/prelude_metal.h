// Metal prelude: prepended to every kernel body (MLX injects the thread attributes named here).
#define DS_TID ((int)thread_position_in_threadgroup.x)
#define DS_BID_X ((int)threadgroup_position_in_grid.x)
#define DS_BID_Y ((int)threadgroup_position_in_grid.y)
#define DS_BID_Z ((int)threadgroup_position_in_grid.z)
#define DS_LANE ((int)thread_index_in_simdgroup)
#define DS_SYNC() threadgroup_barrier(mem_flags::mem_threadgroup)
#define DS_SHARED threadgroup
#define DS_SHARED16 threadgroup  // threadgroup memory that 16-byte copies land in (copied synchronously here)
#ifndef DS_SHARED_PTR  // (the CPU emulator maps address spaces itself)
#define DS_SHARED_PTR(T) threadgroup T*
#endif
#define DS_WARP_SUM(x) simd_sum(x)
#define DS_EXP(x) metal::exp(x)
#define DS_LOG(x) metal::log(x)
#define DS_RSQRT(x) metal::rsqrt(x)
#define DS_MAX(a, b) metal::max(a, b)
#define DS_BITS_FLOAT(i) as_type<float>(i)  // a float passed as its bits (template arguments are integers)
#define DS_MMA16 0  // no 16-bit tensor-core tiles: the bodies keep their fp32 products
#define DS_DYNAMIC_SHARED 0  // threadgroup memory is static
