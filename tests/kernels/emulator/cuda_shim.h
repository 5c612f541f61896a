// Just enough of the CUDA runtime for g++ to compile the CUDA form of our kernels (the text MLX's cuda_kernel
// would compile) and run it on the CPU: one OS thread per GPU thread, a std::barrier per block for
// __syncthreads, the warp primitives of ptx_shim.h per 32 threads. Blocks run one at a time, so __shared__
// arrays are plain statics (dynamic shared memory is made one by cuda_emulate.py).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>

#include "ptx_shim.h"

#define __global__
#define __grid_constant__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
};
inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local std::barrier<>* ds_block_barrier = nullptr;
inline void __syncthreads() { ds_block_barrier->arrive_and_wait(); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(unsigned u) { return __uint_as_float(u); }
inline float __shfl_xor_sync(unsigned, float x, int offset) { return ds_shfl_xor(x, offset); }
using std::max;
using std::min;
