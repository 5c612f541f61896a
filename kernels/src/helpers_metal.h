// Helpers for the Metal form of the GDN kernels (passed as `header`, before the kernel).

// exp of a log-decay argument (<= 0), flushed to exactly 0 below exp(-40): the same rule as
// kernels/chunked.py, far below fp32 resolution of the O(1) terms it joins.
inline float ds_decay(float x) { return x < -40.0f ? 0.0f : metal::exp(x); }
