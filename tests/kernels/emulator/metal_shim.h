// Just enough Metal for g++ to compile MLX-generated kernel source on a CPU: address spaces, attribute
// types, bfloat16_t, the metal:: math used, and barrier / SIMD primitives backed by an emulated
// threadgroup (one OS thread per GPU thread, a std::barrier per threadgroup).
// Only real MSL names are defined, so a misspelt intrinsic still fails to compile.
// Standard headers come first: the address-space macros below would break them.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

struct uint3 {
  unsigned x, y, z;
};
using uint = unsigned int;

struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  bfloat16_t(float f) {  // round to nearest even, as Metal's conversion does
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
using float16_t = _Float16;
using half = _Float16;
struct half2 {
  half x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
template <typename T, typename U>
inline T as_type(const U& u) {  // Metal's bit cast
  static_assert(sizeof(T) == sizeof(U));
  T t;
  std::memcpy(&t, &u, sizeof(T));
  return t;
}

namespace metal {
using std::exp;
using std::log;
using std::max;
using std::min;
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
}  // namespace metal

namespace mem_flags {
constexpr int mem_none = 0;
constexpr int mem_device = 1;
constexpr int mem_threadgroup = 2;
}  // namespace mem_flags

// The emulated threadgroup this OS thread belongs to (set by the driver before calling the kernel).
struct EmuGroup {
  std::barrier<>* barrier;
  std::barrier<>* simd_barrier;  // this thread's simdgroup only: a SIMD reduction waits for its own lanes
  float* simd_scratch;  // one slot per thread of the group
  int tid;
  int simd_width;
};
inline thread_local EmuGroup emu_group;

inline void threadgroup_barrier(int) { emu_group.barrier->arrive_and_wait(); }

// Every lane of a simdgroup calls it the same number of times (uniform control flow within the simdgroup),
// as on the GPU; other simdgroups of the threadgroup may have returned.
inline float simd_sum(float x) {
  EmuGroup& g = emu_group;
  g.simd_scratch[g.tid] = x;
  g.simd_barrier->arrive_and_wait();  // all lanes have published their value
  const int base = g.tid - g.tid % g.simd_width;
  float sum = 0.0f;
  for (int lane = 0; lane < g.simd_width; ++lane) sum += g.simd_scratch[base + lane];
  g.simd_barrier->arrive_and_wait();  // all lanes have read before the scratch is reused
  return sum;
}

#define device
#define constant
#define thread
#define kernel
// threadgroup memory: one instance shared by the threads of the group being emulated; groups run one
// after another, and each kernel writes its threadgroup arrays before reading them.
#define threadgroup static
#define DS_SHARED_PTR(T) T*  // a pointer into threadgroup memory: a plain pointer here
