"""Per-request, per-layer caches: GDN conv + recurrent state, and a growing attention KV cache (and the fixed-shape
view of it that a compiled decode step writes)."""

from __future__ import annotations

import mlx.core as mx


class GDNCache:
    """Gated DeltaNet layer state: last K-1 pre-conv rows [B, K-1, C] and the fp32 state [B, Hv, Dv, Dk].

    Also carries the GDN core path for multi-token calls (set per prefill step by `set_gdn_path`);
    single-token calls always take the serial step.
    """

    def __init__(self, method: str = "serial", chunk_size: int = 64):
        self.conv_state: mx.array | None = None
        self.state: mx.array | None = None
        self.method = method
        self.chunk_size = chunk_size

    @property
    def arrays(self) -> list[mx.array]:
        return [a for a in (self.conv_state, self.state) if a is not None]


class KVCache:
    """Keys and values [B, Hkv, T, D], grown in steps of `step` tokens to avoid a copy per token. The compiled
    decode step traces once per buffer length (engine.decode) and reads and rewrites the whole buffers each token,
    so the step trades the two: `CUDA_STEP` on NVIDIA GPUs (the loader sets it on the model), where a trace at a
    new length also sets up CUDA graphs and a buffer's copy is cheap; `step` elsewhere."""

    step = 256
    CUDA_STEP = 1024

    def __init__(self, step: int | None = None):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        if step:
            self.step = step

    def reserve(self, n: int, like_k: mx.array, like_v: mx.array, step: int | None = None) -> None:
        """Make room for n more tokens, growing in multiples of `step` (default this cache's `step`) tokens (buffers
        shaped like like_k / like_v except along T)."""
        prev, step = self.offset, step or self.step
        if self.keys is not None and prev + n <= self.keys.shape[2]:
            return
        B, H, _, D = like_k.shape
        grow = ((n + step - 1) // step) * step
        new_k = mx.zeros((B, H, grow, D), like_k.dtype)
        new_v = mx.zeros((B, H, grow, like_v.shape[3]), like_v.dtype)
        if self.keys is None:
            self.keys, self.values = new_k, new_v
        else:
            self.keys = mx.concatenate([self.keys[..., :prev, :], new_k], axis=2)
            self.values = mx.concatenate([self.values[..., :prev, :], new_v], axis=2)

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        prev, n = self.offset, k.shape[2]
        self.reserve(n, k, v)
        self.offset += n
        self.keys[..., prev : self.offset, :] = k
        self.values[..., prev : self.offset, :] = v
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def mask(self, n: int) -> str | None:
        """The attention mask for n new queries against what `update_and_fetch` returned."""
        return "causal" if n > 1 else None  # lower-right aligned: correct against a filled cache

    @property
    def arrays(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values) if a is not None]


class FixedKV:
    """A KV cache as a traced decode step sees it: whole buffers written at an array offset and read whole with
    a mask of the filled positions, so the step's shapes stay the same from token to token (one compiled trace
    serves until the buffers grow). Layers given the same `shared` dict (same offset, same buffer length) build
    the position masks once per step, not once per layer: decode is bound by the kernels it launches."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array, shared: dict | None = None):
        self.keys, self.values, self.offset = keys, values, offset  # offset: int32 scalar, tokens already held
        self._shared = {} if shared is None else shared

    def _memo(self, key: tuple, make) -> mx.array:
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        L = self.keys.shape[2]
        if k.shape[2] == 1:  # one token: a select writes it (one fused kernel a buffer, where a slice update at
            # a dynamic offset took three: offset, copy, update)
            at = self._memo(("at", L), lambda: (mx.arange(L) == self.offset)[:, None])
            self.keys, self.values = mx.where(at, k, self.keys), mx.where(at, v, self.values)
        else:
            at = self.offset.reshape(1)
            self.keys = mx.slice_update(self.keys, k, at, axes=(2,))
            self.values = mx.slice_update(self.values, v, at, axes=(2,))
        return self.keys, self.values

    def written(self, keys: mx.array, values: mx.array) -> None:
        """Take buffers that already hold this step's rows (a fused kernel wrote them)."""
        self.keys, self.values = keys, values

    def filled(self, n: int) -> mx.array:
        """[1] int32: positions filled once the n new tokens are written (shared by the layers)."""
        return self._memo(("filled", n), lambda: (self.offset + n).reshape(1))

    def mask(self, n: int) -> mx.array:
        """[1, 1, n, L] bool: query i (at position offset + i) sees keys at positions <= offset + i."""
        L = self.keys.shape[2]
        return self._memo(("mask", L, n), lambda: (mx.arange(L)[None, :] <= self.offset + mx.arange(n)[:, None])[
            None, None])

    @property
    def arrays(self) -> list[mx.array]:
        return [self.keys, self.values]


def set_gdn_path(cache: list[GDNCache | KVCache], method: str, chunk_size: int) -> None:
    """Choose the GDN core path of every GDN layer for the next multi-token call."""
    for c in cache:
        if isinstance(c, GDNCache):
            c.method, c.chunk_size = method, chunk_size


def cache_arrays(cache: list[GDNCache | KVCache | FixedKV]) -> list[mx.array]:
    """Every array held by a model cache, for `mx.eval` between prefill steps."""
    return [a for c in cache for a in c.arrays]
