"""Per-request, per-layer caches: GDN conv + recurrent state, and a growing attention KV cache."""

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
    """Keys and values [B, Hkv, T, D], grown in steps of `step` tokens to avoid a copy per token."""

    step = 256

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        prev, n = self.offset, k.shape[2]
        if self.keys is None or prev + n > self.keys.shape[2]:
            B, H, _, D = k.shape
            grow = ((n + self.step - 1) // self.step) * self.step
            new_k = mx.zeros((B, H, grow, D), k.dtype)
            new_v = mx.zeros((B, H, grow, v.shape[3]), v.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :prev, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :prev, :], new_v], axis=2)
        self.offset += n
        self.keys[..., prev : self.offset, :] = k
        self.values[..., prev : self.offset, :] = v
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @property
    def arrays(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values) if a is not None]


def set_gdn_path(cache: list[GDNCache | KVCache], method: str, chunk_size: int) -> None:
    """Choose the GDN core path of every GDN layer for the next multi-token call."""
    for c in cache:
        if isinstance(c, GDNCache):
            c.method, c.chunk_size = method, chunk_size


def cache_arrays(cache: list[GDNCache | KVCache]) -> list[mx.array]:
    """Every array held by a model cache, for `mx.eval` between prefill steps."""
    return [a for c in cache for a in c.arrays]
