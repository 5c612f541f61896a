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
